"""SparseVLM (ICML 2025, code version 1.5): text-guided visual-token pruning inside the LLM (methods.md 3).

This module holds the rater selection, the per-token score from the raters' attention and the recycling of
pruned tokens by density-peak kNN clustering; the layer schedule is ``sparsevlm_schedule.py``. Running them
inside the LLM (caches, positions, batching, decoding) is the generic layer-wise loop of
``sparsezip.adapters.layerwise``; :class:`SparseVLM` plugs into it as a :class:`~sparsezip.methods.base.LayerPruner`.

Budget (the rule of every in-LLM method, :mod:`sparsezip.methods.llm_budget`). ``budget_mode="layer_averaged"``
(default): ``budget`` is the *layer-averaged equivalent* (the mean over decoder layers of the visual tokens in
each layer's cache): the paper schedule of the nearest relative budget (1/9, 2/9 or 1/3 of the tokens), its kept
counts scaled by one common factor chosen so the equivalent lands as close to ``budget`` as whole tokens allow
(:func:`scaled_plan`; an approximation, documented rather than tuned). Below what the first pruning layer allows
(every layer up to and including it holds all tokens: at least 57.94 on LLaVA-1.5's 576 tokens x 32 layers,
38.50 on the embedded 144 x 4 model) ``budget`` falls back to the nominal meaning, with a warning.
``budget_mode="nominal"``: the paper's own "N-token" setting (:func:`paper_plan`). For 576 visual tokens and
budgets 64 / 128 / 192 these are the paper's schedules exactly: tokens kept at decoder layers (2, 6, 15) = (66,
30, 17), (303, 110, 36), (300, 200, 110), each pruning layer also re-inserting ``floor(n/10) + 1`` merged tokens
recycled from the ``n = floor(0.3 * pruned) + 1`` best pruned ones. That leaves 82 / 32 / 18, 312 / 117 / 39 and
309 / 204 / 113 tokens after layers 2 / 6 / 15, whose layer-averaged equivalents on 32 layers are 82.25, 145.41
and 206.50 (the paper's names 64 / 128 / 192 follow its own count, in which a pruning layer already holds the
pruned set). Another budget ``b`` or token count: the nearest paper schedule with its kept counts times
``b / N_paper`` (16 of 144 keeps 16 / 8 / 4). On a model of another depth the pruning layers move to the same
fraction of depth (``floor(l * num_layers / 32)``, pushed apart to stay strictly increasing). Without a budget:
the paper's 192 setting (a third of the tokens), nominal.

Token accounting (as upstream v1.5). A pruning layer runs on all its input tokens and its own KV cache keeps
them; pruning acts on its output, i.e. on the sequence entering the next layer. With pruning layers
``p_1 < ... < p_k``, ``c_i`` visual tokens leaving ``p_i`` and ``N`` patches, layer ``l``'s cache holds
``n_l = N`` for ``l <= p_1`` and ``n_l = c_i`` for ``p_i < l <= p_{i+1}`` (``p_{k+1} = L - 1``), what decoding
attends to and what occupies memory. ``visual_tokens_per_layer`` counts that; the layer-averaged equivalent is

    E = (1/L) sum_l n_l = ((p_1 + 1) N + sum_{i<k} (p_{i+1} - p_i) c_i + (L - 1 - p_k) c_k) / L,

for the 192 setting on LLaVA-1.5 (3 x 576 + 4 x 309 + 9 x 204 + 16 x 113) / 32 = 6608 / 32 = 206.50.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from sparsezip.context import CompressionResult, VisionContext
from sparsezip.merging import density_peak_clusters, weighted_merge
from sparsezip.methods.base import LayerDecision, LayerPruner, LayerState, register_method
from sparsezip.methods.llm_budget import (
    BudgetPlan,
    Setting,
    WarnOnce,
    check_budget,
    check_budget_mode,
    default_plan,
    layer_averaged,
    plan_budget,
)
from sparsezip.methods.none import NoCompression
from sparsezip.methods.rows import LLAVA15_BUDGETS, PAPER_ABLATION, BenchmarkRows
from sparsezip.methods.sparsevlm_schedule import (  # noqa: F401  (re-exported: the schedule is part of the method)
    DEFAULT_FRACTION,
    RECYCLE_RATIO,
    SPEC_KEEP,
    SPEC_LAYERS,
    TOKENS_PER_CLUSTER,
    PruningPlan,
    counts_after_pruning,
    paper_plan,
    reachable,
    recycle_sizes,
    scaled_nominal,
    scaled_plan,
    schedule_layers,
    visual_tokens_per_layer,
)
from sparsezip.selection import gather_tokens, mask_to_indices, topk_mask


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
    tokens after the image (it needs no ``text_query``: its raters are the prompt's own tokens, the text
    positions ``LayerState.text_index``).

    ``budget``: the layer-averaged visual tokens per image on the model it runs in, or with
    ``budget_mode="nominal"`` (or where the layer average is out of reach, with a warning) the paper's own
    ``budget``-token schedule (module docstring). Default: the paper's 192 setting relative to the model's
    tokens. ``keep`` / ``layers`` override the schedule (ablations, tests); given, they are used as is.
    Greedy decoding only; batched (rows are independent).
    """

    name = "sparsevlm"
    needs_text = True
    # budgets = layer-averaged tokens; the `paper` row runs the paper's own N-token schedules
    benchmark = BenchmarkRows(budgets=LLAVA15_BUDGETS, ablations=(PAPER_ABLATION,), order=30)
    position_policy = "renumber"  # v1.5 renumbers the surviving sequence contiguously

    def __init__(
        self,
        budget: int | None = None,
        keep: tuple[int, ...] | None = None,
        layers: tuple[int, ...] | None = None,
        budget_mode: str = "layer_averaged",
    ) -> None:
        self.budget = check_budget("sparsevlm", budget)
        self.budget_mode = check_budget_mode("sparsevlm", budget_mode)
        if (keep is None) != (layers is None):
            raise ValueError(f"sparsevlm: give both keep and layers or neither, got keep={keep} layers={layers}")
        self.override = None if keep is None else PruningPlan(layers=tuple(layers), keep=tuple(keep))
        self._warn = WarnOnce()

    def budget_plan(self, num_patches: int, num_layers: int) -> BudgetPlan:
        """The schedule that runs and what it costs (nominal count, per-layer tokens, layer-averaged)."""
        if self.override is not None:
            if self.override.layers[-1] >= num_layers:
                raise ValueError(f"sparsevlm layers {self.override.layers} exceed the model's {num_layers} layers")
            # an explicit schedule has no paper count: its nominal count is its layer-averaged one
            per_layer = visual_tokens_per_layer(self.override, num_patches, num_layers)
            setting = self._setting(self.override, num_patches, layer_averaged(per_layer))
            return default_plan(self.name, setting, self.budget_mode, num_patches, num_layers,
                                (float(min(per_layer)), float(num_patches)))
        reach = reachable(num_patches, num_layers)
        if self.budget is None:
            budget = round(num_patches * DEFAULT_FRACTION)
            setting = self._setting(paper_plan(budget, num_patches, num_layers), num_patches, budget)
            return default_plan(self.name, setting, self.budget_mode, num_patches, num_layers, reach)
        plan = plan_budget(
            self.name, self.budget, self.budget_mode, num_patches, num_layers,
            nominal=lambda b: self._setting(paper_plan(b, num_patches, num_layers), num_patches, b),
            averaged=lambda b: self._setting(scaled_plan(b, num_patches, num_layers), num_patches,
                                             scaled_nominal(b, num_patches, num_layers)),
            reachable=reach,
        )
        return self._warn(plan, num_patches, num_layers)

    @staticmethod
    def _setting(plan: PruningPlan, num_patches: int, nominal: float) -> Setting:
        return Setting(plan.layers, tuple(counts_after_pruning(plan, num_patches)), float(nominal),
                       {"keep": list(plan.keep), "layers": list(plan.layers)})

    def plan(self, num_patches: int, num_layers: int) -> PruningPlan:
        """The pruning plan for a model with ``num_patches`` visual tokens and ``num_layers`` decoder layers."""
        params = self.budget_plan(num_patches, num_layers).setting.params
        return PruningPlan(layers=tuple(params["layers"]), keep=tuple(params["keep"]))

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
        config = {"budget": self.budget, "budget_mode": self.budget_mode}
        if self.override is not None:
            config.update(keep=list(self.override.keep), layers=list(self.override.layers))
        return config
