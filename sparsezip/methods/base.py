"""The method interfaces and the registry (timm-style): the only way the suite finds methods.

A new method subclasses :class:`CompressionMethod` (vision side: ``compress``) or :class:`LayerPruner` (inside
the language model: ``pruning_layers`` + ``prune``), decorates itself with :func:`register_method` and is
imported in ``sparsezip/methods/__init__.py``; it then gets every contract test and its benchmark rows
(declared in its ``benchmark`` attribute) for free.
"""

from __future__ import annotations

import abc
from collections.abc import Callable
from dataclasses import dataclass
from typing import ClassVar, Literal

import torch

from sparsezip.context import CompressionResult, VisionContext, check_finite, finite_check_enabled
from sparsezip.methods.llm_budget import BudgetPlan
from sparsezip.methods.rows import BenchmarkRows

Stage = Literal["vision", "llm"]
PositionPolicy = Literal["renumber", "original"]

_REGISTRY: dict[str, type[CompressionMethod]] = {}


class CompressionMethod(abc.ABC):
    """A visual-token compression method.

    Class attributes declare what the method needs, so callers can refuse early and clearly:
        name: registry key.
        needs_attention: reads ``VisionContext.cls_attn``.
        needs_text: can use ``VisionContext.text_query`` (it still works without one).
        stage: ``"vision"`` compresses between the vision tower and the projector; ``"llm"`` prunes inside
            the language model: such a method is a :class:`LayerPruner` (its ``compress`` only does the
            vision-side part, usually nothing) and adapters run it through their layer-wise decoder loop.
        attention_sources: for ``needs_attention`` methods, the kinds of ``VisionContext.cls_attn`` the method
            runs on (``sparsezip.context.ATTENTION_SOURCES``): ``("cls",)`` = CLIP's CLS row only, so a tower
            without CLS (Qwen2.5-VL) is refused; add ``"mean_received"`` where the method's authors (or the
            field's ports of it) substitute the mean attention each token receives.
        benchmark: the method's rows in the benchmark matrix (budgets, ablations, report order; see
            ``sparsezip/methods/rows.py``); by default one row at the 64-token budget.

    Every method accepts ``budget``: the number of visual tokens fed to the LLM per image (for ``"llm"``
    methods, the layer-averaged equivalent where the model allows it, else the paper's nominal count, with a
    warning: :mod:`sparsezip.methods.llm_budget`). ``None`` means the method's own default configuration.
    """

    name: ClassVar[str]
    needs_attention: ClassVar[bool] = False
    needs_text: ClassVar[bool] = False
    stage: ClassVar[Stage] = "vision"
    attention_sources: ClassVar[tuple[str, ...]] = ("cls",)
    benchmark: ClassVar[BenchmarkRows] = BenchmarkRows()

    def __call__(self, ctx: VisionContext, *, check_finite_inputs: bool | None = None) -> CompressionResult:
        """Validate ``ctx`` against the declared needs, then :meth:`compress` it.

        ``check_finite_inputs`` (default: on unless ``$SPARSEZIP_CHECK_FINITE=0``) refuses a context whose float
        tensors hold NaN/inf, naming the tensor (:func:`sparsezip.context.check_finite`; one reduction per tensor).
        """
        if not isinstance(ctx, VisionContext):
            raise ValueError(f"{self.name}: expected a VisionContext, got {type(ctx).__name__}")
        if self.needs_attention and ctx.cls_attn is None:
            raise ValueError(
                f"method {self.name!r} needs the CLS attention row (VisionContext.cls_attn), "
                "but the caller did not provide it"
            )
        if finite_check_enabled() if check_finite_inputs is None else check_finite_inputs:
            try:
                check_finite(ctx)
            except ValueError as err:
                raise ValueError(f"method {self.name!r}: {err}") from None
        if self.needs_attention and ctx.attention_source not in type(self).attention_sources:
            raise ValueError(
                f"method {self.name!r} needs attention of kind {type(self).attention_sources}, but this context's "
                f"cls_attn is {ctx.attention_source!r} (a vision tower without CLS); the method declares no "
                "substitute for it"
            )
        return self.compress(ctx)

    def with_budget(self, budget: int) -> CompressionMethod:
        """The same method and configuration with another ``budget``: what multi-crop adapters (LLaVA-NeXT)
        use to spread an image's budget over its crops. Works for methods built by :func:`get_method` (which
        records their arguments) and for those built with a budget alone; otherwise a ``ValueError``."""
        if getattr(self, "budget", None) == budget:
            return self
        arguments = getattr(self, "_built_with", None)
        if arguments is None:
            try:
                plain = type(self)(budget=getattr(self, "budget", None))
            except (TypeError, ValueError):
                plain = None
            if plain is None or plain.config() != self.config():
                raise ValueError(
                    f"method {self.name!r} was not built by get_method, so it cannot be re-budgeted "
                    f"(budget={budget}); build it with sparsezip.methods.get_method"
                )
            arguments = {}
        rebuilt = type(self)(**{**arguments, "budget": budget})
        rebuilt._built_with = {**arguments, "budget": budget}
        return rebuilt

    @abc.abstractmethod
    def compress(self, ctx: VisionContext) -> CompressionResult:
        """Compress ``ctx.hidden [B, N, C]`` to ``CompressionResult.tokens [B, T, C]``."""

    def config(self) -> dict:
        """JSON-serialisable configuration, recorded next to every result."""
        return {}

    def __repr__(self) -> str:
        args = ", ".join(f"{k}={v!r}" for k, v in self.config().items())
        return f"{type(self).__name__}({args})"


@dataclass(frozen=True)
class LayerState:
    """What an in-LLM method sees at one decoder layer during prefill (built by ``sparsezip.adapters.layerwise``).

    Rows are left-padded: ``real`` marks each row's tokens, padding sits on the left. Every layer may hold a
    different sequence length ``S``; all positions below index that layer's sequence axis.

    Attributes:
        layer_index: the decoder layer that just ran on ``layer_input`` (``-1`` in :meth:`LayerPruner.begin`,
            before layer 0: then ``hidden`` = ``layer_input`` = the input embeddings and ``keys``, ``values``,
            ``attention`` and ``next_attention`` are ``None``).
        num_layers: decoder layers of the model.
        num_patches: visual tokens per image before any pruning (the model's patch count, 576 for LLaVA-1.5).
        hidden: ``[B, S, D]`` the layer's output: what pruning acts on (it becomes the next layer's input).
        layer_input: ``[B, S, D]`` the layer's input.
        keys, values: ``[B, Hkv, S, Dh]`` the layer's own KV cache (keys rotated); it keeps the full sequence.
        real: ``[B, S]`` bool, True at real (non-padding) tokens.
        positions: ``[B, S]`` int64 1-D sequence position ids the layer used (on Qwen2.5-VL, whose rotary
            embedding takes M-RoPE (t, h, w) ids, these are its text positions; the M-RoPE ids stay in the loop:
            ``sparsezip.adapters.layer_positions``).
        visual_index: ``[B, V]`` int64 sequence indices of each row's current visual tokens, ascending,
            ``-1`` padded (rows may hold different counts after earlier pruning).
        text_index: ``[B, T]`` int64 sequence indices of each row's text after the image, ascending, ``-1`` padded.
        attention: ``rows [B, R] -> [B, H, R, S]`` float32: softmax attention probabilities of the query rows
            at sequence indices ``rows`` over all keys of this layer (causal, padding masked), recomputed for
            those rows only from the cached keys, so the layer itself keeps its fast kernel (SDPA). ``-1`` rows
            give unspecified values: mask them.
        next_attention: the same for the *next* layer's attention projections applied to ``hidden`` at the
            same positions (what the next layer would compute if nothing were pruned; ``None`` after the last
            layer). PyramidDrop ranks this way.
        memo: what :meth:`LayerPruner.begin` returned for this batch.
        final_norm: the decoder's final norm (the one before ``lm_head``), ``[..., D] -> [..., D]``; DART compares
            hidden states after it. ``None`` when the caller has none to give.
    """

    layer_index: int
    num_layers: int
    num_patches: int
    hidden: torch.Tensor
    layer_input: torch.Tensor
    keys: torch.Tensor | None
    values: torch.Tensor | None
    real: torch.Tensor
    positions: torch.Tensor
    visual_index: torch.Tensor
    text_index: torch.Tensor
    attention: Callable[[torch.Tensor], torch.Tensor] | None
    next_attention: Callable[[torch.Tensor], torch.Tensor] | None
    memo: object = None
    final_norm: Callable[[torch.Tensor], torch.Tensor] | None = None

    @property
    def visual_valid(self) -> torch.Tensor:
        """``[B, V]`` bool: which columns of ``visual_index`` are real visual tokens."""
        return self.visual_index >= 0

    @property
    def visual_count(self) -> torch.Tensor:
        """``[B]`` int64 visual tokens per row."""
        return self.visual_valid.sum(dim=1)


@dataclass(frozen=True)
class LayerDecision:
    """Which visual tokens survive a layer: the output of :meth:`LayerPruner.prune`.

    Attributes:
        keep: ``[B, V]`` bool over ``LayerState.visual_index`` (False at its ``-1`` padding): the surviving
            visual tokens, in their order. Rows may keep different numbers of tokens.
        merged: ``[B, G, D]`` hidden states inserted right after each row's kept visual tokens (they count as
            visual tokens from then on), or ``None``.
        merged_count: ``[B]`` int64, how many of ``merged``'s slots are real per row (``None``: all ``G``).
    """

    keep: torch.Tensor
    merged: torch.Tensor | None = None
    merged_count: torch.Tensor | None = None


class LayerPruner(CompressionMethod):
    """An in-LLM method: prunes visual tokens between decoder layers during prefill.

    The adapter's layer-wise loop (``sparsezip.adapters.layerwise``) runs the model's own decoder layers with a
    per-layer KV cache. After each layer in :meth:`pruning_layers` ran on *all* its input tokens (its own cache
    keeps them), it calls :meth:`prune`; the decision shapes the sequence entering the next layer and every
    layer after it. Decoding then attends to each layer's own cache.

    Declarations (class attributes):
        position_policy: position ids after a prune. ``"renumber"``: each row's surviving sequence is numbered
            contiguously from 0 and a decoded token's position in layer ``l`` is the number of tokens in layer
            ``l``'s cache for that row (SparseVLM v1.5, PyramidDrop). ``"original"``: survivors keep their
            original position ids and decoded tokens continue the unpruned numbering in every layer (FastV,
            DART); merged tokens have no original position, so this policy refuses them. On M-RoPE models
            (Qwen2.5-VL) ``"renumber"`` is the model's own position rule on the surviving sequence: visual
            tokens keep their grid cells, the text after the image starts one past the largest surviving id
            (``sparsezip.adapters.layer_positions``).
    """

    stage: ClassVar[Stage] = "llm"
    position_policy: ClassVar[PositionPolicy] = "renumber"

    @abc.abstractmethod
    def pruning_layers(self, num_patches: int, num_layers: int) -> tuple[int, ...]:
        """0-based decoder layers after which :meth:`prune` is called, strictly increasing, on a model with
        ``num_patches`` visual tokens per image and ``num_layers`` decoder layers. Raises ``ValueError`` when the
        method's configuration cannot run on such a model (e.g. a budget out of reach)."""

    def budget_plan(self, num_patches: int, num_layers: int) -> BudgetPlan | None:
        """How the method spends its budget on such a model: the nominal count, the per-layer visual tokens and
        their layer-averaged equivalent (:mod:`sparsezip.methods.llm_budget`; recorded with every result).
        ``None``: the method does not say (a throwaway test method)."""
        return None

    def begin(self, state: LayerState) -> object:
        """Called once per batch before layer 0 (``state.layer_index == -1``, ``hidden`` = input embeddings);
        the return value reaches every :meth:`prune` call of the batch as ``state.memo``. Default: ``None``."""
        return None

    @abc.abstractmethod
    def prune(self, layer_index: int, state: LayerState) -> LayerDecision:
        """Which visual tokens of ``state`` survive layer ``layer_index`` (one of :meth:`pruning_layers`)."""


def register_method(cls: type[CompressionMethod]) -> type[CompressionMethod]:
    """Class decorator: add ``cls`` to the registry under ``cls.name``."""
    name = getattr(cls, "name", None)
    if not isinstance(name, str) or not name:
        raise ValueError(f"{cls.__name__} needs a non-empty class attribute 'name' to be registered")
    if name in _REGISTRY and _REGISTRY[name] is not cls:
        raise ValueError(f"method name {name!r} is already registered by {_REGISTRY[name].__name__}")
    _REGISTRY[name] = cls
    return cls


def unregister_method(name: str) -> None:
    """Remove ``name`` from the registry (a test's throwaway method); ``ValueError`` if it is not there."""
    if name not in _REGISTRY:
        raise ValueError(f"method {name!r} is not registered")
    del _REGISTRY[name]


def get_method(name: str, **config: object) -> CompressionMethod:
    """Build the registered method ``name`` with ``config`` (unknown keys raise ``ValueError``)."""
    try:
        cls = _REGISTRY[name]
    except KeyError:
        raise ValueError(f"unknown method {name!r}; registered: {', '.join(list_methods())}") from None
    method = cls(**config)
    method._built_with = dict(config)  # what CompressionMethod.with_budget rebuilds from
    return method


def method_class(name: str) -> type[CompressionMethod]:
    """The registered class for ``name`` (to read ``needs_attention`` etc. without building it)."""
    if name not in _REGISTRY:
        raise ValueError(f"unknown method {name!r}; registered: {', '.join(list_methods())}")
    return _REGISTRY[name]


def list_methods() -> list[str]:
    """Names of all registered methods, sorted."""
    return sorted(_REGISTRY)
