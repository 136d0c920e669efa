"""SparseVLM (ICML 2025, code version 1.5): text-guided visual-token pruning inside the LLM (methods.md 3).

This module holds the model-independent parts: the layer schedule, the rater selection, the per-token score
from the raters' attention, and the recycling of pruned tokens by density-peak kNN clustering. Running them
inside the LLM (caches, positions, batching, decoding) is the generic layer-wise loop of
``sparsezip.adapters.layerwise``; :class:`SparseVLM` plugs into it as a :class:`~sparsezip.methods.base.LayerPruner`.

Budget. Like every method's, ``budget`` is the visual tokens the LLM sees per image; for an in-LLM method that
is the *layer-averaged equivalent* (the mean over decoder layers of the visual tokens in each layer's cache).
For 576 visual tokens and budgets 64 / 128 / 192 the method uses the paper's schedules exactly: tokens kept
at decoder layers (2, 6, 15) = (66, 30, 17), (303, 110, 36), (300, 200, 110), each pruning layer also
re-inserting ``floor(n/10) + 1`` merged tokens recycled from the ``n = floor(0.3 * pruned) + 1`` best pruned
ones. That leaves 82 / 32 / 18, 312 / 117 / 39 and 309 / 204 / 113 tokens after layers 2 / 6 / 15, whose
layer-averaged equivalents on 32 layers are 82.25, 145.41 and 206.50 (the paper's names 64 / 128 / 192 follow
its own count, in which a pruning layer already holds the pruned set). On a model of another depth the pruning layers move to the same
fraction of depth (``floor(l * num_layers / 32)``, pushed apart to stay strictly increasing). Any other budget
or token count (an approximation, documented rather than tuned): the paper schedule of the nearest relative
budget (1/9, 2/9 or 1/3 of the tokens), its kept counts scaled by one common factor chosen so the
layer-averaged equivalent lands as close to ``budget`` as whole tokens allow (:func:`scaled_plan`). Budgets
below what the first pruning layer allows are refused (every layer up to and including it holds all tokens:
at least 57.94 on LLaVA-1.5's 576 tokens x 32 layers, 38.50 on the embedded 144 x 4 model).

Token accounting (as upstream v1.5). A pruning layer runs on all its input tokens and its own KV cache keeps
them; pruning acts on its output, i.e. on the sequence entering the next layer. With pruning layers
``p_1 < ... < p_k``, ``c_i`` visual tokens leaving ``p_i`` and ``N`` patches, layer ``l``'s cache holds
``n_l = N`` for ``l <= p_1`` and ``n_l = c_i`` for ``p_i < l <= p_{i+1}`` (``p_{k+1} = L - 1``), what decoding
attends to and what occupies memory. ``visual_tokens_per_layer`` counts that; the layer-averaged equivalent is

    E = (1/L) sum_l n_l = ((p_1 + 1) N + sum_{i<k} (p_{i+1} - p_i) c_i + (L - 1 - p_k) c_k) / L,

for the 192 setting on LLaVA-1.5 (3 x 576 + 4 x 309 + 9 x 204 + 16 x 113) / 32 = 6608 / 32 = 206.50.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from itertools import pairwise

import torch

from sparsezip.context import CompressionResult, VisionContext
from sparsezip.merging import density_peak_clusters, weighted_merge
from sparsezip.methods.base import LayerDecision, LayerPruner, LayerState, register_method
from sparsezip.methods.none import NoCompression
from sparsezip.methods.rows import LLAVA15_BUDGETS, BenchmarkRows
from sparsezip.selection import gather_tokens, mask_to_indices, topk_mask

SPEC_NUM_PATCHES = 576
SPEC_NUM_LAYERS = 32
SPEC_LAYERS: tuple[int, ...] = (2, 6, 15)
SPEC_KEEP: dict[int, tuple[int, ...]] = {64: (66, 30, 17), 128: (303, 110, 36), 192: (300, 200, 110)}
RECYCLE_RATIO = 0.3
TOKENS_PER_CLUSTER = 10
DEFAULT_FRACTION = 192 / SPEC_NUM_PATCHES  # without a budget: the paper's 192 setting, relative to the model


@dataclass(frozen=True)
class PruningPlan:
    """Where and how hard to prune: after decoder layer ``layers[i]`` keep the top ``keep[i]`` visual tokens
    (before the recycled ones are added). ``layers`` is strictly increasing, 0-based."""

    layers: tuple[int, ...]
    keep: tuple[int, ...]

    def __post_init__(self) -> None:
        if len(self.layers) != len(self.keep) or not self.layers:
            raise ValueError(f"PruningPlan needs one keep count per layer, got layers={self.layers} keep={self.keep}")
        if any(b <= a for a, b in pairwise(self.layers)) or self.layers[0] < 0:
            raise ValueError(f"PruningPlan layers must be strictly increasing and >= 0, got {self.layers}")
        if any(k < 1 for k in self.keep):
            raise ValueError(f"PruningPlan keep counts must be >= 1, got {self.keep}")


def recycle_sizes(num_pruned: int) -> tuple[int, int]:
    """``(tokens recycled, clusters)`` for ``num_pruned`` pruned tokens: ``floor(0.3 p) + 1`` and
    ``floor(n / 10) + 1``, capped so neither exceeds what exists (``(0, 0)`` when nothing was pruned)."""
    if num_pruned < 0:
        raise ValueError(f"num_pruned must be >= 0, got {num_pruned}")
    if num_pruned == 0:
        return 0, 0
    recycled = min(num_pruned, math.floor(RECYCLE_RATIO * num_pruned) + 1)
    return recycled, min(recycled, recycled // TOKENS_PER_CLUSTER + 1)


def counts_after_pruning(plan: PruningPlan, num_patches: int) -> list[int]:
    """Visual tokens left after each pruning layer of ``plan``, starting from ``num_patches``.
    A layer whose ``keep`` is not below the current count prunes nothing."""
    counts, current = [], num_patches
    for keep in plan.keep:
        if keep < current:
            current = keep + recycle_sizes(current - keep)[1]
        counts.append(current)
    return counts


def visual_tokens_per_layer(plan: PruningPlan, num_patches: int, num_layers: int) -> list[int]:
    """Visual tokens in each decoder layer's KV cache after prefill.

    A pruning layer runs on, and caches, all its input tokens; pruning shortens only the sequence leaving it.
    So with pruning layers ``p_1 < ... < p_k`` and ``c_i`` tokens left after ``p_i``, layer ``l`` holds
    ``num_patches`` for ``l <= p_1`` and ``c_i`` for ``p_i < l <= p_{i+1}`` (``p_{k+1} = num_layers - 1``).
    """
    if plan.layers[-1] >= num_layers:
        raise ValueError(f"pruning layer {plan.layers[-1]} does not exist in a {num_layers}-layer model")
    per_layer, current = [], num_patches
    after = dict(zip(plan.layers, counts_after_pruning(plan, num_patches), strict=True))
    for layer in range(num_layers):
        per_layer.append(current)
        current = after.get(layer, current)
    return per_layer


def layer_averaged(per_layer: list[int]) -> float:
    """The layer-averaged equivalent visual token count: the mean of ``per_layer`` (the visual tokens in each
    layer's KV cache), ``E = (1/L) sum_l n_l``."""
    if not per_layer:
        raise ValueError("per_layer is empty")
    return sum(per_layer) / len(per_layer)


def scaled_plan(budget: float, num_patches: int, num_layers: int) -> PruningPlan:
    """The pruning plan whose layer-averaged equivalent is ``budget`` visual tokens on a model with
    ``num_patches`` visual tokens and ``num_layers`` decoder layers (see the module docstring).

    With 576 visual tokens and budget 64, 128 or 192 the paper's kept counts are used unchanged (at layers moved
    to the same fraction of depth: the spec's counts hold on any depth, the equivalent is exact on 32 layers, e.g.
    189.2 instead of 192.03 on 16). Otherwise the reference
    schedule's kept counts are multiplied by the factor (found by bisection; the equivalent is monotone in it)
    that brings the equivalent closest to ``budget``. A budget outside what pruning at those layers can reach
    (every layer up to and including the first pruning layer holds every token) is a ``ValueError`` naming the
    range.
    """
    if num_patches < 1:
        raise ValueError(f"num_patches must be >= 1, got {num_patches}")
    if num_layers < len(SPEC_LAYERS):
        raise ValueError(
            f"sparsevlm prunes at {len(SPEC_LAYERS)} layers; a {num_layers}-layer language model is too shallow"
        )
    layers: list[int] = []
    for spec_layer in SPEC_LAYERS:
        layer = spec_layer * num_layers // SPEC_NUM_LAYERS
        # Pushing apart never overflows: floor(15 L / 32) < L and the push adds at most 2 for L >= 3.
        layers.append(max(layer, layers[-1] + 1) if layers else layer)
    if num_patches == SPEC_NUM_PATCHES and budget in SPEC_KEEP:
        return PruningPlan(layers=tuple(layers), keep=SPEC_KEEP[int(budget)])
    fraction = budget / num_patches
    reference = SPEC_KEEP[min(SPEC_KEEP, key=lambda b: abs(b / SPEC_NUM_PATCHES - fraction))]

    def plan_for(factor: float) -> PruningPlan:
        keep = tuple(min(num_patches, max(1, round(factor * k * num_patches / SPEC_NUM_PATCHES))) for k in reference)
        return PruningPlan(layers=tuple(layers), keep=keep)

    def equivalent(factor: float) -> float:
        return layer_averaged(visual_tokens_per_layer(plan_for(factor), num_patches, num_layers))

    high = SPEC_NUM_PATCHES / min(reference)  # every kept count reaches num_patches: nothing is pruned
    lowest, highest = equivalent(0.0), equivalent(high)
    if not lowest - 0.5 <= budget <= highest:
        raise ValueError(
            f"sparsevlm budget {budget} (layer-averaged visual tokens) is out of reach on a model with "
            f"{num_patches} visual tokens and {num_layers} layers: pruning at layers {tuple(layers)} gives "
            f"{lowest:.2f} to {highest:.2f}"
        )
    low = 0.0
    for _ in range(60):
        mid = (low + high) / 2
        low, high = (mid, high) if equivalent(mid) < budget else (low, mid)
    return min((plan_for(low), plan_for(high)), key=lambda plan: abs(
        layer_averaged(visual_tokens_per_layer(plan, num_patches, num_layers)) - budget))


def select_raters(
    visual: torch.Tensor, visual_valid: torch.Tensor, text: torch.Tensor, text_valid: torch.Tensor
) -> torch.Tensor:
    """Which text tokens rate the visual tokens (SparseVLM step 1), per row.

    visual: ``[B, V, D]`` and text: ``[B, T, D]`` layer-0 input embeddings with ``[B, V]`` / ``[B, T]`` bool
    validity masks. ``S = visual text^T``, softmax over the row's text tokens per visual token, mean over its
    visual tokens gives ``r [T]``; raters are ``r_j > mean(r)``. When no token is above the mean (all equal, e.g.
    ``T == 1``), every text token rates. Returns ``[B, T]`` bool.
    """
    if visual.ndim != 3 or text.ndim != 3 or visual.shape[0] != text.shape[0] or visual.shape[2] != text.shape[2]:
        raise ValueError(f"visual [B, V, D] and text [B, T, D] must share B and D, got {tuple(visual.shape)} and "
                         f"{tuple(text.shape)}")
    if visual_valid.shape != visual.shape[:2] or text_valid.shape != text.shape[:2]:
        raise ValueError(f"masks must be [B, V] and [B, T], got {tuple(visual_valid.shape)} and "
                         f"{tuple(text_valid.shape)}")
    text_count, visual_count = text_valid.sum(dim=1), visual_valid.sum(dim=1)
    if bool((text_count == 0).any()) or bool((visual_count == 0).any()):
        raise ValueError(f"sparsevlm needs visual tokens and text after the image, got V={visual_count.tolist()} "
                         f"T={text_count.tolist()}")
    logits = (visual.float() @ text.float().transpose(1, 2)).masked_fill(~text_valid[:, None, :], float("-inf"))
    weights = torch.where(visual_valid[:, :, None], logits.softmax(dim=2), 0.0)
    relevance = weights.sum(dim=1) / visual_count[:, None]  # [B, T], 0 at padding
    mean = relevance.sum(dim=1) / text_count
    raters = (relevance > mean[:, None]) & text_valid
    return torch.where(raters.any(dim=1, keepdim=True), raters, text_valid)


def recycle(
    states: torch.Tensor, scores: torch.Tensor, pruned: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """SparseVLM step 3, per row: of the pruned tokens take the top ``floor(0.3 p) + 1`` by score and cluster
    them into ``floor(n / 10) + 1`` groups (:func:`sparsezip.merging.density_peak_clusters` on ``states``, in
    ascending index order).

    states: ``[B, V, D]`` the pruning layer's output at the visual tokens; scores: ``[B, V]``; pruned: ``[B, V]``
    bool. Returns ``(labels [B, V] int64, the merged slot of each recycled token, -1 elsewhere; groups [B])``.
    """
    if states.ndim != 3 or scores.shape != states.shape[:2] or pruned.shape != states.shape[:2]:
        raise ValueError(f"need states [B, V, D], scores and pruned [B, V], got {tuple(states.shape)}, "
                         f"{tuple(scores.shape)} and {tuple(pruned.shape)}")
    num_pruned = pruned.sum(dim=1)
    # recycle_sizes, batched: the same float64 arithmetic as the scalar version
    recycled = torch.minimum(num_pruned, torch.floor(RECYCLE_RATIO * num_pruned.double()).long() + 1)
    recycled = torch.where(num_pruned > 0, recycled, 0)
    groups = torch.minimum(recycled, torch.where(recycled > 0, recycled // TOKENS_PER_CLUSTER + 1, 0))
    member_index = mask_to_indices(topk_mask(scores, recycled, valid=pruned))  # [B, R] ascending, -1 padded
    member_labels = density_peak_clusters(gather_tokens(states, member_index), member_index >= 0, groups)
    v = states.shape[1]
    labels = torch.full((states.shape[0], v + 1), -1, dtype=torch.long, device=states.device)
    labels.scatter_(1, torch.where(member_index >= 0, member_index, v), member_labels)
    return labels[:, :v], groups


@dataclass(frozen=True)
class _BatchPlan:
    """What :meth:`SparseVLM.begin` works out once per batch."""

    keep_at: dict[int, int]
    rater_columns: torch.Tensor  # [B, R] indices into each row's text-after-image list, ascending, -1 padded


@register_method
class SparseVLM(LayerPruner):
    """SparseVLM v1.5: prunes visual tokens inside the LLM at three decoder layers, guided by the prompt's text
    tokens after the image (it needs no ``text_query``: its raters are the prompt's own tokens).

    ``budget``: the layer-averaged visual tokens per image on the model it runs in (default: a third of the
    model's visual tokens, 192 on LLaVA-1.5, where 64 / 128 / 192 are the paper's schedules; see
    :func:`scaled_plan`). ``keep`` / ``layers`` override the schedule (ablations, tests); given, they are used
    as is, unscaled. Greedy decoding only; batched (rows are independent).
    """

    name = "sparsevlm"
    needs_text = True
    benchmark = BenchmarkRows(budgets=LLAVA15_BUDGETS, order=30)  # budgets = layer-averaged tokens
    position_policy = "renumber"  # v1.5 renumbers the surviving sequence contiguously

    def __init__(
        self,
        budget: int | None = None,
        keep: tuple[int, ...] | None = None,
        layers: tuple[int, ...] | None = None,
    ) -> None:
        if budget is not None and (isinstance(budget, bool) or not isinstance(budget, int) or budget < 1):
            raise ValueError(f"sparsevlm budget must be a positive integer, got {budget!r}")
        self.budget = budget
        if (keep is None) != (layers is None):
            raise ValueError(f"sparsevlm: give both keep and layers or neither, got keep={keep} layers={layers}")
        self.override = None if keep is None else PruningPlan(layers=tuple(layers), keep=tuple(keep))

    def plan(self, num_patches: int, num_layers: int) -> PruningPlan:
        """The pruning plan for a model with ``num_patches`` visual tokens and ``num_layers`` decoder layers."""
        if self.override is None:
            budget = round(num_patches * DEFAULT_FRACTION) if self.budget is None else self.budget
            if budget > num_patches:
                raise ValueError(f"sparsevlm budget {budget} exceeds the model's {num_patches} visual tokens")
            return scaled_plan(budget, num_patches, num_layers)
        if self.override.layers[-1] >= num_layers:
            raise ValueError(f"sparsevlm layers {self.override.layers} exceed the model's {num_layers} layers")
        return self.override

    def pruning_layers(self, num_patches: int, num_layers: int) -> tuple[int, ...]:
        return self.plan(num_patches, num_layers).layers

    def begin(self, state: LayerState) -> _BatchPlan:
        """The schedule and the raters (step 1, from the layer-0 input embeddings)."""
        plan = self.plan(state.num_patches, state.num_layers)
        text_valid = state.text_index >= 0
        raters = select_raters(gather_tokens(state.hidden, state.visual_index), state.visual_valid,
                               gather_tokens(state.hidden, state.text_index), text_valid)
        return _BatchPlan(dict(zip(plan.layers, plan.keep, strict=True)), mask_to_indices(raters))

    def prune(self, layer_index: int, state: LayerState) -> LayerDecision:
        """Step 2 (score by the raters' attention, keep the top ``k``) and step 3 (recycle the best pruned)."""
        memo: _BatchPlan = state.memo
        keep = memo.keep_at[layer_index]
        count = state.visual_count
        valid = state.visual_valid
        if not bool((count > keep).any()):
            return LayerDecision(keep=valid)
        columns = memo.rater_columns
        rows = torch.where(columns >= 0, state.text_index.gather(1, columns.clamp_min(0)), -1)  # [B, R]
        probs = state.attention(rows)  # [B, H, R, S]
        b, h, r, _ = probs.shape
        visual = state.visual_index.clamp_min(0)[:, None, None, :].expand(b, h, r, -1)
        rater_weight = (rows >= 0)[:, None, :, None].float()
        # mean over heads and raters (a sum over both, then one division, as torch.mean does on one row)
        scores = (probs.gather(3, visual) * rater_weight).sum(dim=(1, 2)) / (h * (rows >= 0).sum(dim=1))[:, None]
        prunes = count > keep
        kept = torch.where(prunes[:, None], topk_mask(scores, count.clamp_max(keep), valid=valid), valid)
        states = gather_tokens(state.hidden, state.visual_index)
        labels, groups = recycle(states, scores, valid & ~kept)
        slots = int(groups.max())
        merged = weighted_merge(states, labels, slots).to(state.hidden.dtype)
        return LayerDecision(keep=kept, merged=merged, merged_count=groups)

    def compress(self, ctx: VisionContext) -> CompressionResult:
        """The vision side of an in-LLM method: every patch, CLS dropped (LLaVA's default selection)."""
        result = NoCompression().compress(ctx)
        result.info["stage"] = "llm"
        return result

    def config(self) -> dict:
        if self.override is None:
            return {"budget": self.budget}
        return {"budget": self.budget, "keep": list(self.override.keep), "layers": list(self.override.layers)}
