"""``visionzip``: VisionZip (CVPR 2025), a faithful port of the official implementation (methods.md section 2).

Dominant: CLS plus the top-(D-1) patches by CLS attention summed over heads, ascending index order.
Contextual: :func:`sparsezip.merging.visionzip_merge` over the remaining tokens (``target + mean(members)``).
Output ``[dominant, contextual]`` = D + Cx tokens per image (CLS is kept, unlike LLaVA's default selection).
On a tower with ``VisionContext.prefix`` protected tokens, all of them are kept and count in D (D - prefix
patches are selected); with ``prefix = 0`` (no CLS) D patches are selected by the adapter's attention row: on
Qwen2.5-VL the mean attention each merged token receives in the tower's last full-attention layer
(``attention_source = "mean_received"``), the substitute ModelTC/LightCompress's Qwen2.5-VL port of VisionZip
uses (VisionZip's authors have no Qwen port).
Numerics differ from the official code only in that scores and merges are computed in float32 and top-K ties
are broken by the lower index (the official ``torch.topk`` leaves ties unspecified).
"""

from __future__ import annotations

import torch

from sparsezip.budget import check_budget_fits, check_budget_positive
from sparsezip.context import CompressionResult, VisionContext
from sparsezip.layout import assemble, with_prefix
from sparsezip.merging import visionzip_merge
from sparsezip.methods.base import CompressionMethod, register_method
from sparsezip.methods.rows import LLAVA15_BUDGETS, BenchmarkRows
from sparsezip.selection import rank_mask

# The paper's LLaVA-1.5 settings 64 = 54+10, 128 = 108+20, 192 = 162+30 all use this split.
DOMINANT_SHARE = 54 / 64


@register_method
class VisionZip(CompressionMethod):
    """VisionZip with ``dominant`` D (CLS included) and ``contextual`` Cx tokens, or a total ``budget``.

    ``budget=K`` gives ``D = round(K * 54 / 64)``, ``Cx = K - D`` (64 -> 54+10, 128 -> 108+20, 192 -> 162+30).
    With nothing given: 54 + 10.
    """

    name = "visionzip"
    needs_attention = True
    attention_sources = ("cls", "mean_received")
    benchmark = BenchmarkRows(budgets=LLAVA15_BUDGETS, order=20)

    def __init__(self, dominant: int | None = None, contextual: int | None = None, budget: int | None = None):
        if budget is not None:
            check_budget_positive(self.name, budget)
            implied = max(1, round(budget * DOMINANT_SHARE))
            if dominant not in (None, implied) or contextual not in (None, budget - implied):
                raise ValueError(f"visionzip: budget={budget} implies dominant={implied}, "
                                 f"contextual={budget - implied}; got dominant={dominant}, contextual={contextual}")
            dominant, contextual = implied, budget - implied
        dominant = 54 if dominant is None else dominant
        contextual = 10 if contextual is None else contextual
        if dominant < 1:
            raise ValueError(f"visionzip: dominant counts CLS and must be >= 1, got dominant={dominant}")
        if contextual < 0:
            raise ValueError(f"visionzip: contextual must be >= 0, got contextual={contextual}")
        self.dominant = dominant
        self.contextual = contextual
        self.budget = budget

    def compress(self, ctx: VisionContext) -> CompressionResult:
        """hidden ``[B, N, C]`` -> tokens ``[B, D + Cx, C]``: the prefix (CLS), top D - prefix patches ascending,
        Cx merged."""
        check_budget_fits(self.name, self.dominant + self.contextual, ctx.num_patches)
        prefix = ctx.prefix
        if self.dominant < prefix:
            raise ValueError(f"visionzip: dominant={self.dominant} must count the model's {prefix} prefix token(s)")
        b = ctx.batch_size
        scores = ctx.cls_attn[:, :, prefix:].float().sum(dim=1)  # [B, M] summed over heads, as the paper does
        keep = with_prefix(rank_mask(scores, self.dominant - prefix), prefix, True)
        # Only patches are merged: the prefix is kept, so it is never among the remaining tokens.
        contextual, slot_valid, labels = visionzip_merge(ctx.hidden, ctx.keys, ~keep, self.contextual)
        k = torch.full((b,), self.dominant - prefix, dtype=torch.long, device=ctx.hidden.device)
        # Every row keeps D tokens and merges the same number of remaining ones, so the widths are known here.
        remaining = ctx.num_patches - (self.dominant - prefix)
        step = max(1, remaining // self.contextual) if self.contextual else 1
        slots = sum(1 for j in range(self.contextual) if j * step < remaining)
        return assemble(ctx.hidden, keep, k, contextual, slot_valid, labels, kept_per_row=self.dominant,
                        width=self.dominant + slots, valid_slots_first=True)

    def config(self) -> dict:
        return {"dominant": self.dominant, "contextual": self.contextual, "budget": self.budget}
