"""What ``budget`` means for an in-LLM method, the same rule for every one (SparseVLM, FastV, PyramidDrop, DART).

A vision-side method's budget is the visual tokens fed to the LLM. An in-LLM method feeds all of them and drops
some between decoder layers, so each layer's KV cache holds its own count ``n_l``; what compares with a vision-side
budget is the *layer-averaged equivalent* ``E = (1/L) sum_l n_l`` (the mean, over the ``L`` decoder layers, of the
visual tokens each layer's cache holds: the same attention and KV memory cost).

* ``budget_mode="layer_averaged"`` (the default): ``budget`` is ``E``. The method picks its own parameter (kept
  count, ratio, truncation) so that ``E`` lands as close to ``budget`` as whole tokens allow. On a shallow LM a
  small ``E`` can be out of reach (every layer up to the first pruning layer holds all tokens: FastV after
  layer 2 of the embedded model's 4 layers averages at least 72.5 of 144 tokens); then ``budget`` falls back to
  the nominal meaning below, with a :class:`BudgetWarning` (not an error) naming the ``E`` it gives.
* ``budget_mode="nominal"``: ``budget`` is the count the method's paper uses for an "N-token" setting (FastV:
  tokens kept after layer K; DART: its ``max_num_trunction``; SparseVLM: its per-setting schedule; PyramidDrop,
  whose paper already counts ``E``: the tokens left after the first drop). The published settings run this way.

Every run records both numbers and the per-layer list (:class:`BudgetPlan`).
"""

from __future__ import annotations

import warnings
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from itertools import pairwise
from typing import Literal

BudgetMode = Literal["layer_averaged", "nominal"]
BUDGET_MODES: tuple[str, ...] = ("layer_averaged", "nominal")
# A layer-averaged budget this far below the lowest reachable equivalent still counts as reached (whole tokens).
REACH_SLACK = 0.5


class BudgetWarning(UserWarning):
    """A layer-averaged budget is out of reach on this model; the method runs its nominal setting instead."""


@dataclass(frozen=True)
class Setting:
    """One concrete configuration of an in-LLM method on one model.

    Attributes:
        layers: 0-based decoder layers after which the method prunes (``LayerPruner.pruning_layers``).
        counts: visual tokens left after each of ``layers`` (per image, before any per-row cap).
        nominal: the paper's "N tokens" for this configuration.
        params: the method's own parameters of it (kept count, ratio, truncation, ...), JSON values.
    """

    layers: tuple[int, ...]
    counts: tuple[int, ...]
    nominal: float
    params: Mapping[str, object] = field(default_factory=dict)


@dataclass(frozen=True)
class BudgetPlan:
    """How an in-LLM method spends its budget on a model with ``num_patches`` visual tokens and ``num_layers``
    decoder layers (recorded next to every result).

    Attributes:
        method: the method's registry name.
        budget: the budget asked for (``None``: the method's default setting).
        mode: the budget mode asked for.
        applied: ``"layer_averaged"``, ``"nominal"`` (asked for, or the fallback) or ``"default"``.
        setting: the configuration that runs.
        per_layer: visual tokens in each decoder layer's KV cache after prefill.
        reachable: ``(lowest, highest)`` layer-averaged equivalents the method can reach on the model.
        warning: why the layer-averaged budget fell back to the nominal one, else ``None``.
    """

    method: str
    budget: float | None
    mode: str
    applied: str
    setting: Setting
    per_layer: tuple[int, ...]
    reachable: tuple[float, float]
    warning: str | None = None

    @property
    def nominal(self) -> float:
        """The paper's "N tokens" of the configuration that runs."""
        return self.setting.nominal

    @property
    def layer_averaged(self) -> float:
        """``E = (1/L) sum_l n_l``."""
        return layer_averaged(list(self.per_layer))

    def to_json(self) -> dict:
        """A JSON dict: budget, mode, applied, nominal, layer_averaged, per_layer, pruning layers, counts,
        params, reachable range, warning."""
        return {
            "method": self.method, "budget": self.budget, "mode": self.mode, "applied": self.applied,
            "nominal": self.nominal, "layer_averaged": self.layer_averaged, "per_layer": list(self.per_layer),
            "pruning_layers": list(self.setting.layers), "counts_after_pruning": list(self.setting.counts),
            "params": dict(self.setting.params), "reachable": list(self.reachable), "warning": self.warning,
        }


def layer_averaged(per_layer: Sequence[int]) -> float:
    """The layer-averaged equivalent visual token count: the mean of ``per_layer``, ``E = (1/L) sum_l n_l``."""
    if not per_layer:
        raise ValueError("per_layer is empty")
    return sum(per_layer) / len(per_layer)


def cache_counts(layers: Sequence[int], counts: Sequence[int], num_patches: int, num_layers: int) -> list[int]:
    """Visual tokens in each decoder layer's KV cache after prefill when ``counts[i]`` tokens leave layer
    ``layers[i]`` (strictly increasing). A pruning layer runs on and caches its whole input: layer ``l`` holds
    ``num_patches`` for ``l <= layers[0]`` and ``counts[i]`` for ``layers[i] < l <= layers[i + 1]``."""
    if len(layers) != len(counts):
        raise ValueError(f"need one count per pruning layer, got layers={list(layers)} counts={list(counts)}")
    if any(not 0 <= layer < num_layers for layer in layers) or any(b <= a for a, b in pairwise(layers)):
        raise ValueError(f"pruning layers {list(layers)} must be strictly increasing in [0, {num_layers})")
    after = dict(zip(layers, counts, strict=True))
    per_layer, current = [], num_patches
    for layer in range(num_layers):
        per_layer.append(current)
        current = after.get(layer, current)
    return per_layer


def check_budget_mode(name: str, budget_mode: str) -> str:
    """``budget_mode`` if it is one of :data:`BUDGET_MODES`, else a ``ValueError`` naming it."""
    if budget_mode not in BUDGET_MODES:
        raise ValueError(f"{name}: budget_mode must be one of {', '.join(BUDGET_MODES)}, got {budget_mode!r}")
    return budget_mode


def check_budget(name: str, budget: object) -> int | None:
    """``budget`` if it is ``None`` or a positive int, else a ``ValueError`` naming it."""
    if budget is not None and (isinstance(budget, bool) or not isinstance(budget, int) or budget < 1):
        raise ValueError(f"{name} budget must be a positive integer, got {budget!r}")
    return budget


def plan_budget(
    name: str,
    budget: int,
    mode: str,
    num_patches: int,
    num_layers: int,
    *,
    nominal: Callable[[int], Setting],
    averaged: Callable[[float], Setting],
    reachable: tuple[float, float],
) -> BudgetPlan:
    """The :class:`BudgetPlan` of ``budget`` under ``mode`` (see the module docstring).

    nominal: the paper's setting for an ``N``-token budget; averaged: the setting whose equivalent is closest
    to a reachable layer-averaged budget; reachable: the lowest and highest equivalents ``averaged`` can give.
    A budget above ``num_patches`` is a ``ValueError``.
    """
    if budget > num_patches:
        raise ValueError(f"{name} budget {budget} exceeds the model's {num_patches} visual tokens")
    lowest = reachable[0]
    if mode == "nominal":
        setting, applied, warning = nominal(budget), "nominal", None
    elif budget >= lowest - REACH_SLACK:
        setting, applied, warning = averaged(float(budget)), "layer_averaged", None
    else:
        setting, applied = nominal(budget), "nominal"
        per_layer = cache_counts(setting.layers, setting.counts, num_patches, num_layers)
        warning = (
            f"{name} budget {budget} (layer-averaged visual tokens) is out of reach on a model with {num_patches} "
            f"visual tokens and {num_layers} layers (reachable: {lowest:.2f} to {reachable[1]:.2f}); running the "
            f"paper's nominal {budget}-token setting instead, layer-averaged {layer_averaged(per_layer):.2f} "
            f"(per layer {per_layer})"
        )
    per_layer = cache_counts(setting.layers, setting.counts, num_patches, num_layers)
    return BudgetPlan(name, budget, mode, applied, setting, tuple(per_layer), reachable, warning)


def default_plan(name: str, setting: Setting, mode: str, num_patches: int, num_layers: int,
                 reachable: tuple[float, float]) -> BudgetPlan:
    """The :class:`BudgetPlan` of a method's default setting (no budget given) or of explicit overrides."""
    per_layer = cache_counts(setting.layers, setting.counts, num_patches, num_layers)
    return BudgetPlan(name, None, mode, "default", setting, tuple(per_layer), reachable)


def closest(candidates: Sequence[Setting], budget: float, num_patches: int, num_layers: int) -> Setting:
    """The candidate whose layer-averaged equivalent is closest to ``budget`` (the first on ties)."""
    if not candidates:
        raise ValueError("no candidate settings")
    return min(candidates, key=lambda s: abs(
        layer_averaged(cache_counts(s.layers, s.counts, num_patches, num_layers)) - budget))


class WarnOnce:
    """Issues each plan's :class:`BudgetWarning` once per method instance and model geometry (a method plans
    once per batch)."""

    def __init__(self) -> None:
        self._seen: set[tuple[int, int]] = set()

    def __call__(self, plan: BudgetPlan, num_patches: int, num_layers: int) -> BudgetPlan:
        if plan.warning is not None and (num_patches, num_layers) not in self._seen:
            self._seen.add((num_patches, num_layers))
            warnings.warn(plan.warning, BudgetWarning, stacklevel=3)
        return plan
