"""FastV (ECCV 2024, "An Image is Worth 1/2 Tokens After Layer 2"; pkunlp-icler/FastV): after decoder layer
``K - 1`` drop the visual tokens the last prompt token attends to least, for every later layer.

What it does, as the authors' code does it (``LlamaModel.forward`` of their transformers copy and the KV-cache
variant ``fastv_forward``, commit d1659729; golden outputs in ``fixtures/golden/fastv/``):

* layers ``0 .. K-1`` run on every token (their caches keep them all); after layer ``K - 1`` the visual tokens are
  ranked by layer ``K - 1``'s softmax attention of the **last prompt token** (the ``:`` of ``ASSISTANT:``), mean
  over heads, at the visual columns, not renormalised; the top ``k`` survive, in sequence order;
* survivors keep their **original** position ids and decoded tokens continue the unpruned numbering in every
  layer (``position_policy = "original"``); layers ``>= K`` cache only the survivors.

Budget (:mod:`sparsezip.methods.llm_budget`). The paper's "N tokens" is the kept count ``k = N`` (``R = 1 -
N/576``). ``budget_mode="layer_averaged"`` (default): ``budget`` is the layer-averaged equivalent
``(K N_all + (L - K) k) / L``, so ``k = round((L b - K N_all) / (L - K))`` (LLaVA-1.5, K = 2: 30 / 98 / 166 kept
for 64 / 128 / 192). It cannot go below ``(K N_all + (L - K)) / L`` (72.5 of 144 on the embedded 4-layer model):
then, and with ``budget_mode="nominal"``, ``budget`` is the kept count ``k`` itself (64 / 128 / 192 on LLaVA-1.5
average 96 / 156 / 216; 16 of 144 on the embedded model averages 80), with a warning in the first case.
Default (no budget): the paper's R = 50%, ``k = round(N_all / 2)``.

Fidelity notes:

* The paper describes the score as "the average attention a token receives"; every copy of the authors' code
  ranks by the last prompt token's attention row only. We follow the code.
* Upstream applies batch row 0's ranking to every row (correct only at batch size 1); ours ranks each row by
  its own attention (left-padded rows, per-row counts).
* Upstream's softmax runs in float32 and is cast back to the model dtype before the head mean; ours keeps
  float32 throughout (:func:`sparsezip.adapters.layer_cache.query_attention`, recomputed for that one query row
  from the cached keys, so every layer keeps SDPA). Ties: lower index wins (upstream: ``torch.topk``, unspecified).
* The kept count is an integer budget; upstream's ``round(N (1 - R))`` from a ratio is the same count.
"""

from __future__ import annotations

import torch

from sparsezip.context import CompressionResult, VisionContext
from sparsezip.methods.base import LayerDecision, LayerPruner, LayerState, register_method
from sparsezip.methods.llm_budget import (
    BudgetPlan,
    Setting,
    WarnOnce,
    check_budget,
    check_budget_mode,
    default_plan,
    plan_budget,
)
from sparsezip.methods.none import NoCompression
from sparsezip.methods.rows import LLAVA15_BUDGETS, PAPER_ABLATION, BenchmarkRows
from sparsezip.selection import topk_mask

DEFAULT_LAYER = 2  # K: the first decoder layer that sees only the kept tokens (the paper's "after layer 2")
DEFAULT_KEEP_FRACTION = 0.5  # the paper's R = 50%


def last_token_scores(probs: torch.Tensor, visual_index: torch.Tensor) -> torch.Tensor:
    """FastV's / PyramidDrop's score: one query row's attention, mean over heads, at the visual columns.

    probs: ``[B, H, 1, S]`` softmax attention of each row's last prompt token; visual_index: ``[B, V]``
    sequence indices of the visual tokens (``-1`` padded) -> ``[B, V]`` float32 (0 at padding columns).
    """
    if probs.ndim != 4 or probs.shape[2] != 1 or probs.shape[0] != visual_index.shape[0]:
        raise ValueError(f"need probs [B, H, 1, S] and visual_index [B, V], got {tuple(probs.shape)} and "
                         f"{tuple(visual_index.shape)}")
    mean = probs[:, :, 0].float().mean(dim=1)  # [B, S]
    return torch.where(visual_index >= 0, mean.gather(1, visual_index.clamp_min(0)), 0.0)


def last_prompt_row(state: LayerState) -> torch.Tensor:
    """``[B, 1]`` each row's last prompt token (the rows are left-padded: the last position is real)."""
    b, s = state.real.shape
    return torch.full((b, 1), s - 1, dtype=torch.long, device=state.real.device)


@register_method
class FastV(LayerPruner):
    """FastV: after decoder layer ``layer - 1`` keep the ``k`` visual tokens the last prompt token attends to
    most (module docstring for the budget and the fidelity notes).

    Args:
        budget: layer-averaged visual tokens (default mode) or the kept count ``k`` (``budget_mode="nominal"``,
            or where the average is out of reach, with a warning); ``None``: the paper's R = 50%.
        budget_mode: ``"layer_averaged"`` or ``"nominal"``.
        layer: FastV's ``K`` (>= 1): layers ``0 .. K-1`` see every token, ranking uses layer ``K - 1``.
        keep: an explicit kept count (tests, ablations); overrides ``budget``.
    """

    name = "fastv"
    needs_text = True  # ranks by the prompt's last token (LayerState), not by VisionContext.text_query
    benchmark = BenchmarkRows(budgets=LLAVA15_BUDGETS, ablations=(PAPER_ABLATION,), order=32)
    position_policy = "original"

    def __init__(self, budget: int | None = None, budget_mode: str = "layer_averaged", layer: int = DEFAULT_LAYER,
                 keep: int | None = None) -> None:
        self.budget = check_budget("fastv", budget)
        self.budget_mode = check_budget_mode("fastv", budget_mode)
        if isinstance(layer, bool) or not isinstance(layer, int) or layer < 1:
            raise ValueError(f"fastv layer (K) must be an integer >= 1, got {layer!r}")
        self.layer = layer
        self.keep = check_budget("fastv keep", keep)
        self._warn = WarnOnce()

    def _setting(self, keep: int, num_patches: int) -> Setting:
        keep = min(keep, num_patches)
        return Setting((self.layer - 1,), (keep,), float(keep), {"layer": self.layer, "keep": keep})

    def budget_plan(self, num_patches: int, num_layers: int) -> BudgetPlan:
        """The kept count that runs and what it costs (nominal = kept, per-layer tokens, layer-averaged)."""
        k, n, L = self.layer, num_patches, num_layers
        if k >= L:
            raise ValueError(f"fastv prunes after layer K - 1 = {k - 1}; a {L}-layer language model has no layer "
                             f"after it")
        reach = ((k * n + (L - k)) / L, float(n))
        if self.keep is not None or self.budget is None:
            keep = self.keep if self.keep is not None else round(n * DEFAULT_KEEP_FRACTION)
            return default_plan(self.name, self._setting(keep, n), self.budget_mode, n, L, reach)

        def averaged(budget: float) -> Setting:
            return self._setting(min(n, max(1, round((L * budget - k * n) / (L - k)))), n)

        plan = plan_budget(self.name, self.budget, self.budget_mode, n, L,
                           nominal=lambda b: self._setting(b, n), averaged=averaged, reachable=reach)
        return self._warn(plan, n, L)

    def pruning_layers(self, num_patches: int, num_layers: int) -> tuple[int, ...]:
        return self.budget_plan(num_patches, num_layers).setting.layers

    def begin(self, state: LayerState) -> int:
        """The kept count for this batch."""
        return self.budget_plan(state.num_patches, state.num_layers).setting.counts[0]

    def prune(self, layer_index: int, state: LayerState) -> LayerDecision:
        """Keep each row's top-``k`` visual tokens by layer ``K - 1``'s last-token attention."""
        scores = last_token_scores(state.attention(last_prompt_row(state)), state.visual_index)
        keep = topk_mask(scores, state.visual_count.clamp_max(state.memo), valid=state.visual_valid)
        return LayerDecision(keep=keep)

    def compress(self, ctx: VisionContext) -> CompressionResult:
        """The vision side of an in-LLM method: every patch, CLS dropped (LLaVA's default selection)."""
        result = NoCompression().compress(ctx)
        result.info["stage"] = "llm"
        return result

    def config(self) -> dict:
        config = {"budget": self.budget, "budget_mode": self.budget_mode, "layer": self.layer}
        if self.keep is not None:
            config["keep"] = self.keep
        return config
