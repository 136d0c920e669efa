"""The two data contracts every compression method speaks: what it gets, what it returns.

Shapes use B = batch rows (one image, or one crop of an image, per row), N = vision tokens per row: ``prefix``
protected tokens first (CLIP's CLS: 1; 0 for towers without one), then the patches (577 = 1 + 576 for CLIP
ViT-L/14-336), C = vision hidden size (1024), Dk = head dim of the averaged keys (64), H = attention heads (16).
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass, field

import torch

# What ``VisionContext.cls_attn`` holds: CLIP's CLS query row ("cls"), or, for a tower without CLS, the mean
# attention each token receives from every query of one full-attention layer ("mean_received": the substitute
# the Qwen2.5-VL ports of VisionZip / VisPruner use). Methods declare which ones they accept
# (``CompressionMethod.attention_sources``).
ATTENTION_SOURCES: tuple[str, ...] = ("cls", "mean_received")


@dataclass(frozen=True)
class VisionContext:
    """Everything a method may read from the vision tower's selected layer (layer -2 by default).

    Attributes:
        hidden: ``[B, N, C]`` the layer's output hidden states: ``prefix`` protected tokens (CLS) first, then
            the patches in raster order. This is what gets selected / merged and then projected into the LLM.
        keys: ``[B, N, Dk]`` the layer's key projection (bias included, no scaling), reshaped to heads
            and averaged over heads.
        cls_attn: ``[B, H, N]`` the CLS query's softmax attention row over all keys inside that layer (for a
            tower without CLS, ``prefix == 0``, the adapter's substitute row), or ``None`` when the caller
            could not provide it (methods with ``needs_attention`` refuse).
        text_query: ``[B, C]`` the question already mapped into vision hidden space (see
            ``sparsezip.adapters.llava``), or ``None`` for no text awareness.
        sample_seeds: ``[B]`` int64, one seed per image for methods that draw random numbers, so an image's
            result does not depend on the batch it is in (the LLaVA adapter derives them from the image's
            pixels); ``None`` = every image uses seed 0.
        prefix: how many leading tokens of every row are protected, non-patch tokens (1 for CLIP's CLS, 0 for
            towers without one). Methods score, select and merge only the ``N - prefix`` patches and decide
            themselves whether to keep the prefix tokens verbatim or drop them; they never merge them.
        image_index: ``[B]`` int64, the image each row belongs to, for models that feed several crops of one
            image (LLaVA-NeXT's base view + tiles): non-decreasing, starting at 0, no gaps (an image's crops
            are adjacent rows). ``None`` = one image per row (``arange(B)``).
        grid: ``(rows, cols)`` of the patch raster shared by every row (``rows * cols == N - prefix``), for
            towers whose grid is not square (Qwen2.5-VL's dynamic resolution: 2 x 2-merged tokens of any
            aspect). ``None`` = a square grid (``grid_size``).
        attention_source: what ``cls_attn`` holds (one of :data:`ATTENTION_SOURCES`): ``"cls"`` (CLIP's CLS row)
            or ``"mean_received"`` (a tower without CLS: the mean attention each token receives).
    """

    hidden: torch.Tensor
    keys: torch.Tensor
    cls_attn: torch.Tensor | None = None
    text_query: torch.Tensor | None = None
    sample_seeds: torch.Tensor | None = None
    prefix: int = 1
    image_index: torch.Tensor | None = None
    grid: tuple[int, int] | None = None
    attention_source: str = "cls"

    def __post_init__(self) -> None:
        if self.hidden.ndim != 3:
            raise ValueError(f"VisionContext.hidden must be [B, N, C], got shape {tuple(self.hidden.shape)}")
        b, n, c = self.hidden.shape
        if isinstance(self.prefix, bool) or not isinstance(self.prefix, int) or self.prefix < 0:
            raise ValueError(f"VisionContext.prefix must be an int >= 0, got prefix={self.prefix!r}")
        if n < self.prefix + 1:
            raise ValueError(
                f"VisionContext.hidden needs its prefix={self.prefix} token(s) plus at least one patch, got N={n}"
            )
        if self.keys.ndim != 3 or self.keys.shape[:2] != (b, n):
            raise ValueError(
                f"VisionContext.keys must be [B={b}, N={n}, Dk], got shape {tuple(self.keys.shape)}"
            )
        if self.cls_attn is not None and (self.cls_attn.ndim != 3 or self.cls_attn.shape[0] != b
                                          or self.cls_attn.shape[2] != n):
            raise ValueError(
                f"VisionContext.cls_attn must be [B={b}, H, N={n}], got shape {tuple(self.cls_attn.shape)}"
            )
        if self.text_query is not None and tuple(self.text_query.shape) != (b, c):
            raise ValueError(
                f"VisionContext.text_query must be [B={b}, C={c}], got shape {tuple(self.text_query.shape)}"
            )
        if self.sample_seeds is not None and (
            tuple(self.sample_seeds.shape) != (b,) or self.sample_seeds.dtype != torch.long
        ):
            raise ValueError(
                f"VisionContext.sample_seeds must be int64 [B={b}], got {self.sample_seeds.dtype} "
                f"{tuple(self.sample_seeds.shape)}"
            )
        if self.image_index is not None:
            _check_image_index(self.image_index, b)
        if self.grid is not None:
            rows, cols = self.grid
            if rows < 1 or cols < 1 or rows * cols != n - self.prefix:
                raise ValueError(
                    f"VisionContext.grid={self.grid} must hold the N - prefix = {n - self.prefix} patches"
                )
        if self.attention_source not in ATTENTION_SOURCES:
            raise ValueError(
                f"VisionContext.attention_source must be one of {ATTENTION_SOURCES}, got {self.attention_source!r}"
            )

    @property
    def batch_size(self) -> int:
        return self.hidden.shape[0]

    @property
    def num_tokens(self) -> int:
        """N, the prefix (CLS) included."""
        return self.hidden.shape[1]

    @property
    def num_patches(self) -> int:
        """N - prefix: the patch tokens of a row, what LLaVA feeds the LLM uncompressed (576 for LLaVA-1.5)."""
        return self.hidden.shape[1] - self.prefix

    @property
    def images(self) -> torch.Tensor:
        """``[B]`` int64: the image of every row (``image_index``, or ``arange(B)`` for one image per row)."""
        if self.image_index is not None:
            return self.image_index
        return torch.arange(self.batch_size, device=self.hidden.device)

    @property
    def num_images(self) -> int:
        """How many distinct images the B rows hold."""
        return int(self.image_index[-1]) + 1 if self.image_index is not None else self.batch_size

    @property
    def grid_size(self) -> int:
        """Side of the square patch grid (24 for LLaVA-1.5). Raises if the patches are not a square."""
        if self.grid is not None and self.grid[0] != self.grid[1]:
            raise ValueError(f"the patch grid {self.grid} is not square; use grid_shape")
        side = math.isqrt(self.num_patches)
        if side * side != self.num_patches:
            raise ValueError(f"{self.num_patches} patches do not form a square grid")
        return side

    @property
    def grid_shape(self) -> tuple[int, int]:
        """``(rows, cols)`` of the patch raster: ``grid`` when given, else the square ``grid_size``."""
        if self.grid is not None:
            return (int(self.grid[0]), int(self.grid[1]))
        side = self.grid_size
        return (side, side)


# The float tensors of a VisionContext a method reads; `sample_seeds` / `image_index` are integers.
FLOAT_FIELDS = ("hidden", "keys", "cls_attn", "text_query")
# Set to 0 to skip the finiteness check at the method boundary (one reduction per tensor + one host sync).
CHECK_FINITE_ENV = "SPARSEZIP_CHECK_FINITE"


def finite_check_enabled() -> bool:
    """Whether methods check their inputs for NaN/inf: on unless ``$SPARSEZIP_CHECK_FINITE`` is ``0``/``false``/``off``."""
    return os.environ.get(CHECK_FINITE_ENV, "1").strip().lower() not in ("0", "false", "off", "no")


def check_finite(ctx: VisionContext) -> None:
    """Raise ``ValueError`` naming the tensor (and its rows) if ``hidden``, ``keys``, ``cls_attn`` or ``text_query``
    holds a NaN or an infinity: NaN scores would otherwise sort as if they were real (raster order, short results).

    One ``isfinite().all()`` reduction per tensor and a single host sync for all of them; the rows are located
    only when something is wrong.
    """
    named = [(name, t) for name in FLOAT_FIELDS
             if (t := getattr(ctx, name)) is not None and t.is_floating_point() and t.numel()]
    if not named:
        return
    flags = torch.stack([torch.isfinite(t).all() for _, t in named]).tolist()
    bad = [(name, t) for (name, t), ok in zip(named, flags, strict=True) if not ok]
    if not bad:
        return
    problems = []
    for name, t in bad:
        rows = (~torch.isfinite(t)).reshape(t.shape[0], -1).any(dim=1).nonzero().flatten().tolist()
        shown = f"{rows[:8]}{' ...' if len(rows) > 8 else ''}"
        problems.append(f"VisionContext.{name} {list(t.shape)} holds NaN/inf values in row(s) {shown}")
    raise ValueError("; ".join(problems))


def _check_image_index(image_index: torch.Tensor, batch: int) -> None:
    """``image_index`` must be int64 ``[B]``, start at 0 and step by 0 or 1 (an image's crops are adjacent)."""
    if tuple(image_index.shape) != (batch,) or image_index.dtype != torch.long:
        raise ValueError(
            f"VisionContext.image_index must be int64 [B={batch}], got {image_index.dtype} "
            f"{tuple(image_index.shape)}"
        )
    steps = image_index[1:] - image_index[:-1]
    if batch and (int(image_index[0]) != 0 or bool(((steps < 0) | (steps > 1)).any())):
        raise ValueError(
            "VisionContext.image_index must start at 0 and be non-decreasing without gaps (an image's crops on "
            f"adjacent rows), got {image_index.tolist()}"
        )


@dataclass
class CompressionResult:
    """What a method hands to the projector.

    Attributes:
        tokens: ``[B, T, C]`` compressed pre-projector tokens, image b's real tokens first, zero-padded to
            the width T.
        lengths: ``[B]`` int64, real tokens per image (``<= T``; ``T`` is ``lengths.max()`` unless the method
            fixes its width from the counts alone, to skip a host sync: then a row may end in zero pad slots).
        kept_index: ``[B, Kmax]`` int64, source index (into N, prefix tokens first) of each dominant / kept
            token, in output order, ``-1`` padded.
        assignment: ``[B, N]`` int64, the output slot (into T) every source token went to; ``-1`` = dropped.
        k: ``[B]`` int64, number of dominant tokens chosen per row (excluding prefix and merged tokens).
        info: free-form per-call statistics (e.g. per-layer counts for in-LLM methods); JSON-friendly values.
    """

    tokens: torch.Tensor
    lengths: torch.Tensor
    kept_index: torch.Tensor
    assignment: torch.Tensor
    k: torch.Tensor
    info: dict = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.tokens.ndim != 3:
            raise ValueError(f"CompressionResult.tokens must be [B, T, C], got {tuple(self.tokens.shape)}")
        b = self.tokens.shape[0]
        for name in ("lengths", "k"):
            value = getattr(self, name)
            if tuple(value.shape) != (b,):
                raise ValueError(f"CompressionResult.{name} must be [B={b}], got {tuple(value.shape)}")
        for name in ("kept_index", "assignment"):
            value = getattr(self, name)
            if value.ndim != 2 or value.shape[0] != b:
                raise ValueError(f"CompressionResult.{name} must be [B={b}, *], got {tuple(value.shape)}")

    def per_image(self) -> list[torch.Tensor]:
        """The real tokens of each image, unpadded: a list of B tensors ``[lengths[b], C]``."""
        return [self.tokens[b, : int(n)] for b, n in enumerate(self.lengths.tolist())]
