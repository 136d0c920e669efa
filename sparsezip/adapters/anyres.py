"""LLaVA-NeXT's any-resolution crops: which crop belongs to which image, how an image's budget is spread over its
crops, and how compressed crops are laid out for the LLM.

An image becomes a base view (the whole image at the crop size) plus ``rows x cols`` tiles of its best-fitting
``image_grid_pinpoints`` resolution; each crop is one CLIP view with its own CLS token.

**Budget.** ``K`` visual tokens per image are spread *equally* over its ``n`` crops: ``K // n`` each, the
``K % n`` left over going to the first crops (base view first), so the image gets exactly ``K``. This is
VisionZip's LLaVA-NeXT port (dvlab-research/VisionZip ``visionzip/clip_encoder.py``: one dominant + contextual
setting applied to every crop alike); it has no proportional split. SparseVLM prunes inside the LLM over the
whole image sequence, so it offers no per-crop rule to follow for vision-side methods.

**Layout after compression** (VisionZip's ``restore_image_features_sorted``, ``visionzip/llava_arch.py``): the
base view's tokens in the method's own order; then the tiles' kept patches in raster order of the stitched
``(rows * side) x (cols * side)`` tile grid (*not* unpadded); then the tiles' kept prefix (CLS) tokens, tile by
tile; then the tiles' merged (contextual) tokens, tile by tile. No image-newline token is inserted: VisionZip's
port computes the newline embedding but never uses it, so the LLM sequence holds exactly ``K`` visual tokens and
every position id is renumbered contiguously (LLaVA's own ``prepare_inputs_labels_for_multimodal``).
A result that keeps every patch of every crop verbatim in raster order (``none``) is laid out exactly as
transformers' ``LlavaNextModel.pack_image_features`` does (unpadding + one newline per row), so ``none``
reproduces the plain model.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch

from sparsezip.context import CompressionResult


@dataclass(frozen=True)
class Crops:
    """Where each crop row of a batch belongs.

    Attributes:
        per_image: ``[B]`` int64, crops of each image (base view included).
        tile_grid: ``[B, 2]`` int64, ``(rows, cols)`` of each image's tiles.
        image_index: ``[R]`` int64, the image of each crop row (``R = per_image.sum()``).
        crop_in_image: ``[R]`` int64, 0 for the base view, ``1 + j`` for tile ``j`` (row-major).
    """

    per_image: torch.Tensor
    tile_grid: torch.Tensor
    image_index: torch.Tensor
    crop_in_image: torch.Tensor

    @property
    def rows(self) -> int:
        """Crop rows of the batch."""
        return int(self.image_index.numel())


def crops_for(image_sizes: torch.Tensor, pinpoints: Sequence[Sequence[int]], crop_size: int) -> Crops:
    """The crops transformers makes for images of ``image_sizes [B, 2]`` ``(height, width)``: the tile grid of
    each image's best pinpoint (``get_anyres_image_grid_shape``, transformers' own selection) plus the base view.
    A pinpoint that is not a multiple of ``crop_size`` is a ``ValueError`` (the model's tiling would not cover it).
    """
    from transformers.models.llava_next.modeling_llava_next import get_anyres_image_grid_shape

    bad = [list(p) for p in pinpoints if len(p) != 2 or p[0] % crop_size or p[1] % crop_size or min(p) <= 0]
    if bad:
        raise ValueError(f"image_grid_pinpoints {bad} are not positive multiples of the {crop_size} px crop size")
    # Per-image metadata (python ints), computed by transformers' own pinpoint selection as its model does.
    grids = [get_anyres_image_grid_shape(size.tolist(), [list(p) for p in pinpoints], crop_size)
             for size in image_sizes.cpu()]
    tile_grid = torch.tensor(grids, dtype=torch.long).reshape(-1, 2)
    per_image = tile_grid.prod(dim=1) + 1
    image_index = torch.repeat_interleave(torch.arange(per_image.numel()), per_image)
    first_row = torch.cumsum(per_image, 0) - per_image
    crop_in_image = torch.arange(image_index.numel()) - first_row[image_index]
    return Crops(per_image, tile_grid, image_index, crop_in_image)


def per_crop_budgets(budget: int, crops: Crops) -> torch.Tensor:
    """``[R]`` int64: ``budget // n`` per crop of an ``n``-crop image, the remainder on its first crops (base view
    first), so each image's crops sum to ``budget``. ``ValueError`` when an image has more crops than tokens."""
    n = crops.per_image
    if bool((n > budget).any()):
        raise ValueError(f"budget {budget} cannot be spread over images of {n.tolist()} crops: every crop needs "
                         "at least one token")
    share, extra = budget // n, budget % n
    img = crops.image_index
    return share[img] + (crops.crop_in_image < extra[img]).long()


def keeps_every_patch(result: CompressionResult, prefix: int, patches: int) -> bool:
    """True when every row's output is exactly its ``patches`` patch tokens in raster order (what ``none`` does)."""
    rows = result.tokens.shape[0]
    if result.tokens.shape[1] != patches or bool((result.lengths != patches).any()):
        return False
    if result.kept_index.shape[1] < patches:
        return False
    raster = torch.arange(prefix, prefix + patches, device=result.kept_index.device).expand(rows, patches)
    slots = torch.arange(patches, device=result.assignment.device).expand(rows, patches)
    return torch.equal(result.kept_index[:, :patches], raster) and torch.equal(
        result.assignment[:, prefix: prefix + patches], slots
    )


def visionzip_layout(
    result: CompressionResult, crops: Crops, side: int, prefix: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """Compressed crops laid out per image as VisionZip's LLaVA-NeXT port does (module docstring).

    result: ``[R, T, C]`` tokens of the ``R`` crop rows; side: patches per crop side (24 for CLIP-L/336).
    Returns ``(tokens [L, C], counts [B])``: every image's tokens, images in batch order, ``L = counts.sum()``.
    """
    rows, width, _ = result.tokens.shape
    device = result.tokens.device
    slot = torch.arange(width, device=device)
    valid = slot[None, :] < result.lengths[:, None]
    # Source index of every output slot that holds a kept (verbatim) token, -1 for merged slots.
    kept = result.kept_index
    kept_valid = kept >= 0
    kept_slot = result.assignment.gather(1, kept.clamp_min(0))
    slot_source = torch.full((rows, width + 1), -1, dtype=torch.long, device=device)
    slot_source.scatter_(1, torch.where(kept_valid, kept_slot, width), torch.where(kept_valid, kept, -1))
    slot_source = slot_source[:, :width]

    image = crops.image_index.to(device)
    crop = crops.crop_in_image.to(device)
    tile = (crop - 1).clamp_min(0)
    grid_cols = crops.tile_grid.to(device)[image, 1]
    tile_row, tile_col = tile // grid_cols, tile % grid_cols
    patch = slot_source - prefix  # >= 0: a kept patch; in [-prefix, 0): a kept prefix token; < -prefix: merged
    patch_row, patch_col = patch.clamp_min(0) // side, patch.clamp_min(0) % side
    stitched = ((tile_row[:, None] * side + patch_row) * (grid_cols[:, None] * side)
                + tile_col[:, None] * side + patch_col)
    is_base = (crop == 0)[:, None].expand(rows, width)
    kind = torch.where(is_base, 0, torch.where(patch >= 0, 1, torch.where(slot_source >= 0, 2, 3)))
    in_tile_order = tile[:, None] * width + slot[None, :]
    within = torch.where(kind == 0, slot[None, :].expand(rows, width),
                         torch.where(kind == 1, stitched, in_tile_order))
    # One sortable key per token: image, then kind, then position within the kind (all bounded, no overflow).
    span = int(within.max()) + 1 if within.numel() else 1
    key = (image[:, None] * 4 + kind) * span + within
    key = torch.where(valid, key, torch.iinfo(torch.long).max)
    order = torch.argsort(key.flatten(), stable=True)[: int(valid.sum())]
    tokens = result.tokens.flatten(0, 1)[order]
    counts = torch.zeros(int(crops.per_image.numel()), dtype=torch.long, device=device)
    counts.scatter_add_(0, image, result.lengths)
    return tokens, counts
