"""SparseVLM's layer schedule: where it prunes, how many tokens each pruning layer keeps, and what every layer's
KV cache then holds, for the paper's own settings (``budget_mode="nominal"``, :func:`paper_plan`) and for a
layer-averaged budget (:func:`scaled_plan`). Pure integer arithmetic; the method is ``sparsevlm.py``."""

from __future__ import annotations

import math
from dataclasses import dataclass
from itertools import pairwise

from sparsezip.methods.llm_budget import cache_counts, layer_averaged

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
    return cache_counts(plan.layers, counts_after_pruning(plan, num_patches), num_patches, num_layers)


def schedule_layers(num_layers: int) -> tuple[int, ...]:
    """The paper's pruning layers (2, 6, 15 of 32) moved to the same fraction of ``num_layers`` layers
    (``floor(l * num_layers / 32)``, pushed apart to stay strictly increasing)."""
    if num_layers < len(SPEC_LAYERS):
        raise ValueError(
            f"sparsevlm prunes at {len(SPEC_LAYERS)} layers; a {num_layers}-layer language model is too shallow"
        )
    layers: list[int] = []
    for spec_layer in SPEC_LAYERS:
        layer = spec_layer * num_layers // SPEC_NUM_LAYERS
        # Pushing apart never overflows: floor(15 L / 32) < L and the push adds at most 2 for L >= 3.
        layers.append(max(layer, layers[-1] + 1) if layers else layer)
    return tuple(layers)


def reference_budget(budget: float, num_patches: int) -> int:
    """The paper budget (64, 128 or 192 of 576) whose fraction of the tokens is nearest ``budget / num_patches``."""
    if num_patches < 1:
        raise ValueError(f"num_patches must be >= 1, got {num_patches}")
    fraction = budget / num_patches
    return min(SPEC_KEEP, key=lambda b: abs(b / SPEC_NUM_PATCHES - fraction))


def paper_plan(budget: int, num_patches: int, num_layers: int) -> PruningPlan:
    """The paper's own ``budget``-token setting (``budget_mode="nominal"``) on a model with ``num_patches`` visual
    tokens and ``num_layers`` decoder layers: the schedule of the nearest paper budget ``N_paper`` (by fraction
    of the tokens), its kept counts times ``budget / N_paper`` (rounded, at least 1, at most ``num_patches``).
    For 64 / 128 / 192 of 576 these are the paper's counts exactly, on any depth."""
    layers = schedule_layers(num_layers)
    reference = reference_budget(budget, num_patches)
    keep = tuple(min(num_patches, max(1, round(k * budget / reference))) for k in SPEC_KEEP[reference])
    return PruningPlan(layers=layers, keep=keep)


def _scaled(budget: float, num_patches: int, num_layers: int) -> tuple[PruningPlan, float, tuple[float, float]]:
    """:func:`scaled_plan`, its nominal count (the scale factor times the reference's ``N_paper``, in the model's
    tokens: the budget :func:`paper_plan` would give these kept counts for) and the reachable range."""
    layers = schedule_layers(num_layers)
    reference = reference_budget(budget, num_patches)
    spec = SPEC_KEEP[reference]

    def plan_for(factor: float) -> PruningPlan:
        keep = tuple(min(num_patches, max(1, round(factor * k * num_patches / SPEC_NUM_PATCHES))) for k in spec)
        return PruningPlan(layers=layers, keep=keep)

    def equivalent(factor: float) -> float:
        return layer_averaged(visual_tokens_per_layer(plan_for(factor), num_patches, num_layers))

    high = SPEC_NUM_PATCHES / min(spec)  # every kept count reaches num_patches: nothing is pruned
    reach = (equivalent(0.0), equivalent(high))
    if not reach[0] - 0.5 <= budget <= reach[1]:
        raise ValueError(
            f"sparsevlm budget {budget} (layer-averaged visual tokens) is out of reach on a model with "
            f"{num_patches} visual tokens and {num_layers} layers: pruning at layers {layers} gives "
            f"{reach[0]:.2f} to {reach[1]:.2f}"
        )
    low = 0.0
    for _ in range(60):
        mid = (low + high) / 2
        low, high = (mid, high) if equivalent(mid) < budget else (low, mid)
    factor = min((low, high), key=lambda f: abs(equivalent(f) - budget))
    return plan_for(factor), round(factor * reference * num_patches / SPEC_NUM_PATCHES, 2), reach


def scaled_plan(budget: float, num_patches: int, num_layers: int) -> PruningPlan:
    """The pruning plan whose layer-averaged equivalent is ``budget`` visual tokens on a model with
    ``num_patches`` visual tokens and ``num_layers`` decoder layers (``budget_mode="layer_averaged"``).

    The nearest paper schedule's kept counts are multiplied by the factor (found by bisection; the equivalent is
    monotone in it) that brings the equivalent closest to ``budget``. A budget outside what pruning at those
    layers can reach (every layer up to and including the first pruning layer holds every token) is a
    ``ValueError`` naming the range.
    """
    return _scaled(budget, num_patches, num_layers)[0]


def scaled_nominal(budget: float, num_patches: int, num_layers: int) -> float:
    """The nominal count of :func:`scaled_plan`'s schedule (the budget :func:`paper_plan` scales by the same
    factor)."""
    return _scaled(budget, num_patches, num_layers)[1]


def reachable(num_patches: int, num_layers: int) -> tuple[float, float]:
    """The lowest and highest layer-averaged equivalents :func:`scaled_plan` reaches on such a model (one token
    kept at every pruning layer; nothing pruned)."""
    layers = schedule_layers(num_layers)
    lowest = PruningPlan(layers=layers, keep=(1,) * len(layers))
    return layer_averaged(visual_tokens_per_layer(lowest, num_patches, num_layers)), float(num_patches)
