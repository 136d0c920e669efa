"""SparseVLM (ICML 2025, code version 1.5): text-guided visual-token pruning inside the LLM (methods.md 3).

This module holds the model-independent parts: the layer schedule, the rater selection, the per-token score
from the raters' attention, and the recycling of pruned tokens by density-peak kNN clustering. Running them
inside a Llama decoder (caches, positions, decoding) is ``sparsezip.adapters.sparsevlm_llama``.

Budget. Like every method's, ``budget`` is the visual tokens the LLM sees per image; for an in-LLM method that
is the *layer-averaged equivalent* (the mean over decoder layers of the visual tokens in each layer's cache).
For 576 visual tokens and budgets 64 / 128 / 192 the method uses the paper's schedules exactly: tokens kept at decoder layers (2, 6, 15) = (66, 30, 17), (303, 110, 36), (300, 200, 110),
each pruning layer also re-inserting ``floor(n/10) + 1`` merged tokens recycled from the
``n = floor(0.3 * pruned) + 1`` best pruned ones (192 leaves 309 / 204 / 113 tokens, equivalent 192.03;
64 and 128 give 64.8 and 128.6 on 32 layers). On a model of another depth the pruning layers move to the same
fraction of depth (``floor(l * num_layers / 32)``, pushed apart to stay strictly increasing). Any other budget
or token count (an approximation, documented rather than tuned): the paper schedule of the nearest relative
budget (1/9, 2/9 or 1/3 of the tokens), its kept counts scaled by one common factor chosen so the
layer-averaged equivalent lands as close to ``budget`` as whole tokens allow (:func:`scaled_plan`).

Token accounting. A pruning layer runs on all its input tokens, then its own KV cache and its output are
pruned, so every layer from the pruning layer on holds the pruned count in its cache (what decoding attends
to and what occupies memory). ``visual_tokens_per_layer`` counts that; its mean over layers is the
"layer-averaged equivalent" (192.03 for the 192 setting on LLaVA-1.5: 2 x 576 + 4 x 309 + 9 x 204 + 17 x 113
over 32 layers).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from itertools import pairwise

import torch

from sparsezip.context import CompressionResult, VisionContext
from sparsezip.methods.base import CompressionMethod, register_method
from sparsezip.methods.none import NoCompression
from sparsezip.methods.rows import LLAVA15_BUDGETS, BenchmarkRows

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
    """Visual tokens in each decoder layer's KV cache after prefill (a pruning layer holds its pruned count)."""
    if plan.layers[-1] >= num_layers:
        raise ValueError(f"pruning layer {plan.layers[-1]} does not exist in a {num_layers}-layer model")
    per_layer, current = [], num_patches
    after = dict(zip(plan.layers, counts_after_pruning(plan, num_patches), strict=True))
    for layer in range(num_layers):
        current = after.get(layer, current)
        per_layer.append(current)
    return per_layer


def layer_averaged(per_layer: list[int]) -> float:
    """The layer-averaged equivalent visual token count."""
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
    (the layers before the first pruning layer always see every token) is a ``ValueError`` naming the range.
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


def select_raters(visual: torch.Tensor, text: torch.Tensor) -> torch.Tensor:
    """Indices of the rater text tokens (SparseVLM step 1).

    visual: ``[V, D]`` and text: ``[T, D]`` layer-0 input embeddings. ``S = visual text^T``, softmax over the
    text axis per visual token, mean over visual tokens gives ``r [T]``; raters are ``r_j > mean(r)``,
    ascending. When no token is above the mean (all equal, e.g. ``T == 1``), every text token rates.
    """
    if visual.ndim != 2 or text.ndim != 2 or visual.shape[1] != text.shape[1]:
        raise ValueError(f"visual [V, D] and text [T, D] must share D, got {tuple(visual.shape)} and {tuple(text.shape)}")
    if text.shape[0] == 0 or visual.shape[0] == 0:
        raise ValueError(f"sparsevlm needs visual tokens and text after the image, got V={visual.shape[0]} T={text.shape[0]}")
    relevance = (visual.float() @ text.float().T).softmax(dim=1).mean(dim=0)
    raters = torch.nonzero(relevance > relevance.mean()).flatten()
    return raters if raters.numel() else torch.arange(text.shape[0], device=text.device)


def split_by_score(scores: torch.Tensor, keep: int) -> tuple[torch.Tensor, torch.Tensor]:
    """``(kept, pruned)`` index tensors, both ascending: the top ``keep`` of ``scores [V]`` (ties: lower index
    wins) and the rest."""
    if scores.ndim != 1 or not 0 <= keep <= scores.shape[0]:
        raise ValueError(f"need scores [V] and 0 <= keep <= V, got shape {tuple(scores.shape)} and keep={keep}")
    order = torch.sort(scores, descending=True, stable=True).indices
    return order[:keep].sort().values, order[keep:].sort().values


def density_peak_clusters(x: torch.Tensor, num_clusters: int) -> torch.Tensor:
    """Density-peak kNN clustering (DPC-kNN, as in TCFormer / SparseVLM): cluster id of each row of ``x``.

    x: ``[M, D]`` -> ``[M]`` int64 in ``[0, num_clusters)``. Distance ``||x_i - x_j|| / sqrt(D)``; density
    ``exp(-mean squared distance to the k = num_clusters nearest, self included)``; ``delta`` = distance to the
    nearest denser point (the densest point: the largest distance); centres = top ``num_clusters`` by
    ``density * delta``, cluster id = the centre's rank; every point joins its nearest centre. Ties are broken by
    index (no random noise), so the result is deterministic.
    """
    if x.ndim != 2 or not 1 <= num_clusters <= x.shape[0]:
        raise ValueError(f"need x [M, D] and 1 <= num_clusters <= M, got {tuple(x.shape)} and {num_clusters}")
    m, d = x.shape
    x = x.float()
    dist = torch.cdist(x, x) / math.sqrt(d)
    nearest = torch.topk(dist, k=num_clusters, dim=1, largest=False).values
    density = torch.exp(-(nearest**2).mean(dim=1))
    index = torch.arange(m, device=x.device)
    # j is denser than i: higher density, or equal density and a lower index (a strict total order).
    denser = (density[None, :] > density[:, None]) | (
        (density[None, :] == density[:, None]) & (index[None, :] < index[:, None])
    )
    delta = torch.where(denser, dist, dist.max()).min(dim=1).values
    centres = torch.sort(density * delta, descending=True, stable=True).indices[:num_clusters]
    assignment = dist[:, centres].argmin(dim=1)
    assignment[centres] = torch.arange(num_clusters, device=x.device)
    return assignment


def group_mean(values: torch.Tensor, assignment: torch.Tensor, num_groups: int) -> torch.Tensor:
    """Mean of ``values [M, ...]`` per group: ``[num_groups, ...]``; ``assignment [M]`` in ``[0, num_groups)``,
    every group non-empty."""
    if assignment.shape != values.shape[:1]:
        raise ValueError(f"assignment must be [M={values.shape[0]}], got {tuple(assignment.shape)}")
    sums = values.new_zeros((num_groups, *values.shape[1:]), dtype=torch.float32)
    sums.index_add_(0, assignment, values.float())
    sizes = torch.bincount(assignment, minlength=num_groups).clamp(min=1)
    return (sums / sizes.view(-1, *([1] * (values.ndim - 1)))).to(values.dtype)


@dataclass
class RecyclePlan:
    """Which pruned tokens are recycled and into which merged token: ``members`` indexes the pruned list,
    ``assignment[i]`` is the merged slot of ``members[i]``."""

    members: torch.Tensor
    assignment: torch.Tensor
    num_groups: int


def plan_recycling(pruned_states: torch.Tensor, pruned_scores: torch.Tensor) -> RecyclePlan:
    """SparseVLM step 3: of the pruned tokens, take the top ``floor(0.3 p) + 1`` by score (ascending index order)
    and cluster them into ``floor(n / 10) + 1`` groups on ``pruned_states [P, D]`` (the pruning layer's output).
    pruned_scores: ``[P]``."""
    if pruned_states.ndim != 2 or pruned_scores.shape != pruned_states.shape[:1]:
        raise ValueError(
            f"need pruned_states [P, D] and pruned_scores [P], got {tuple(pruned_states.shape)} and "
            f"{tuple(pruned_scores.shape)}"
        )
    recycled, groups = recycle_sizes(pruned_states.shape[0])
    members, _ = split_by_score(pruned_scores, recycled)
    if recycled == 0:
        return RecyclePlan(members=members, assignment=members.clone(), num_groups=0)
    return RecyclePlan(members, density_peak_clusters(pruned_states[members], groups), groups)


@register_method
class SparseVLM(CompressionMethod):
    """SparseVLM v1.5: prunes visual tokens inside the LLM at three decoder layers, guided by the prompt's text
    tokens after the image (it needs no ``text_query``: its raters are the prompt's own tokens).

    ``budget``: the layer-averaged visual tokens per image on the model it runs in (default: a third of the
    model's visual tokens, 192 on LLaVA-1.5, where 64 / 128 / 192 are the paper's schedules; see
    :func:`scaled_plan`). ``keep`` / ``layers`` override the schedule (ablations, tests); given, they are used
    as is, unscaled.
    Greedy decoding only; the adapter runs one sample at a time.
    """

    name = "sparsevlm"
    stage = "llm"
    needs_text = True
    benchmark = BenchmarkRows(budgets=LLAVA15_BUDGETS, order=30)  # budgets = layer-averaged tokens

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

    def compress(self, ctx: VisionContext) -> CompressionResult:
        """The vision side of an in-LLM method: every patch, CLS dropped (LLaVA's default selection)."""
        result = NoCompression().compress(ctx)
        result.info["stage"] = "llm"
        return result

    def config(self) -> dict:
        if self.override is None:
            return {"budget": self.budget}
        return {"budget": self.budget, "keep": list(self.override.keep), "layers": list(self.override.layers)}
