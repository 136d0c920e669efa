"""``tome``: Token Merging (ToMe, Bolya et al., ICLR 2023; facebookresearch/ToMe), at the tapped layer.

Bipartite soft matching on the layer's head-averaged keys (ToMe's metric), repeated in rounds of at most
half the tokens until ``budget`` tokens plus the protected CLS remain (:mod:`sparsezip.matching`); every
output token is the size-weighted average of the source patches merged into it; CLS is protected from merging
and then dropped, as LLaVA's ``patch`` feature selection drops it. Output order is ToMe's own (unmerged A
tokens, then B tokens, per round). Nothing is dropped: every patch is in exactly one output token, so mass is
conserved (``sum_s size_s * token_s = sum of the patches``).

Budget: ``budget`` = tokens fed to the LLM per image (default 64); ToMe's own parameter, the number ``r`` of
tokens merged per layer, becomes ``N - 1 - budget`` merges at one layer, split into rounds
``r_i = min(left, (T_i - 1) // 2)`` (ToMe's cap: a round can merge at most half). LLaVA-1.5's 576 -> 64 takes
4 rounds (288, 144, 72, 8).

Fidelity notes:
- **Where**: the paper merges ``r`` tokens inside *every* transformer block (between attention and MLP, with
  proportional attention in later blocks). We merge once, at the tapped layer (LLaVA's layer -2), on its output
  and its keys, because a :class:`VisionContext` holds one layer; the tower itself runs unmodified. Later
  rounds match on the size-weighted mean of the members' keys (``merge_wavg`` applied to the metric) instead
  of keys recomputed by a next layer.
- Matching ties (equal best similarities) go to the lower A index (ToMe's ``argsort`` leaves them unspecified);
  a merged token is computed directly as the mean of its members in float32 rather than by ToMe's chained
  ``x * size`` sums, equal up to float rounding.
"""

from __future__ import annotations

import torch

from sparsezip.budget import check_budget_fits, check_budget_positive
from sparsezip.context import CompressionResult, VisionContext
from sparsezip.layout import assemble
from sparsezip.matching import bipartite_merge_labels
from sparsezip.merging import weighted_merge
from sparsezip.methods.base import CompressionMethod, register_method
from sparsezip.methods.rows import LLAVA15_BUDGETS, BenchmarkRows

DEFAULT_BUDGET = 64


@register_method
class ToMe(CompressionMethod):
    """Merge the patches down to ``budget`` (default 64) tokens by repeated bipartite soft matching."""

    name = "tome"
    benchmark = BenchmarkRows(budgets=LLAVA15_BUDGETS, order=60)

    def __init__(self, budget: int | None = None) -> None:
        if budget is not None:
            check_budget_positive(self.name, budget)
        self.budget = budget

    def compress(self, ctx: VisionContext) -> CompressionResult:
        """hidden ``[B, N, C]`` -> tokens ``[B, budget, C]``, each the mean of the patches merged into it."""
        budget = DEFAULT_BUDGET if self.budget is None else self.budget
        prefix = ctx.prefix  # protected leading tokens (CLS): never selected or merged
        b, n, _ = ctx.hidden.shape
        check_budget_fits(self.name, budget, n - prefix)
        device = ctx.hidden.device
        labels = bipartite_merge_labels(ctx.keys, budget + prefix, prefix) - prefix  # prefix -> negative
        labels = torch.where(labels >= 0, labels, -1)
        merged = weighted_merge(ctx.hidden, labels, budget)
        return assemble(
            ctx.hidden,
            keep=torch.zeros(b, n, dtype=torch.bool, device=device),
            k=torch.zeros(b, dtype=torch.long, device=device),
            contextual=merged,
            contextual_valid=torch.ones(b, budget, dtype=torch.bool, device=device),
            contextual_labels=labels,
            kept_per_row=0,
            width=budget,
            valid_slots_first=True,
        )

    def config(self) -> dict:
        return {"budget": self.budget}
