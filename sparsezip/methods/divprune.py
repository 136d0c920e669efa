"""``divprune``: DivPrune (Alvar et al., CVPR 2025; vbdi/divprune), max-min diversity subset selection.

The visual tokens' pairwise cosine distances ``d = 1 - cos`` define a max-min diversity problem; DivPrune
solves it greedily (:func:`sparsezip.selection.max_min_greedy`): first the token whose nearest neighbour is
farthest, then repeatedly the token farthest from everything picked so far. The picked patches are kept as-is
in raster order; CLS and the rest are dropped. No attention, no text.

Budget: ``budget`` = tokens fed to the LLM per image (default 64) = DivPrune's ``threshold_terms``
(``round(SUBSET_RATIO * 576)``; the paper's 64/128/192 settings are ratios 0.111/0.222/0.333).

Fidelity notes:
- **Features**: the authors select on the *projected* visual tokens (LLM input embeddings, after
  ``mm_projector``); a :class:`VisionContext` holds the pre-projector features of the tapped layer, so we select
  on those (patches only). The algorithm is the same; on a real model the chosen patches can differ because
  the projector is a non-linear MLP.
- Batched over images and float32 (the authors: one image, the model's fp16). A picked token is excluded from
  later picks explicitly; the authors rely on its self-distance (~0) and can pick a token twice when every
  remaining token duplicates a picked one. Ties: lower index (``argmax``'s first maximum, as theirs on CPU).
"""

from __future__ import annotations

import torch

from sparsezip.budget import check_budget_fits, check_budget_positive
from sparsezip.context import CompressionResult, VisionContext
from sparsezip.layout import assemble
from sparsezip.methods.base import CompressionMethod, register_method
from sparsezip.methods.rows import LLAVA15_BUDGETS, BenchmarkRows
from sparsezip.scoring import cosine_similarity_matrix
from sparsezip.selection import max_min_greedy

DEFAULT_BUDGET = 64


def divprune_order(patches: torch.Tensor, k: int) -> torch.Tensor:
    """DivPrune's picks in greedy order. patches: ``[B, M, C]`` -> ``[B, k]`` int64 patch indices."""
    return max_min_greedy(1.0 - cosine_similarity_matrix(patches), k)


@register_method
class DivPrune(CompressionMethod):
    """Keep ``budget`` (default 64) patches chosen by greedy max-min cosine diversity, raster order."""

    name = "divprune"
    benchmark = BenchmarkRows(budgets=LLAVA15_BUDGETS, order=61)

    def __init__(self, budget: int | None = None) -> None:
        if budget is not None:
            check_budget_positive(self.name, budget)
        self.budget = budget

    def compress(self, ctx: VisionContext) -> CompressionResult:
        """hidden ``[B, N, C]`` -> tokens ``[B, budget, C]``: the picked patches, ascending index."""
        budget = DEFAULT_BUDGET if self.budget is None else self.budget
        prefix = ctx.prefix  # protected leading tokens (CLS): never selected or merged
        b, n, _ = ctx.hidden.shape
        check_budget_fits(self.name, budget, n - prefix)
        picks = divprune_order(ctx.hidden[:, prefix:], budget) + prefix
        keep = torch.zeros(b, n, dtype=torch.bool, device=ctx.hidden.device).scatter_(1, picks, True)
        return assemble(ctx.hidden, keep, torch.full((b,), budget, dtype=torch.long, device=ctx.hidden.device),
                        kept_per_row=budget, width=budget)

    def config(self) -> dict:
        return {"budget": self.budget}
