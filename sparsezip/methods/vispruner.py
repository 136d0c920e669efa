"""``vispruner``: VisPruner (Zhang et al., ICCV 2025; Theia-4869/VisPruner), important + diverse tokens.

1. Important tokens: the ``T_imp = int(budget * important_ratio)`` patches with the highest CLS attention
   (mean over heads) of the tapped layer.
2. Diverse tokens: the other patches, in descending attention order, lose near-duplicates in rounds of up to 8
   (:func:`sparsezip.selection.remove_duplicates`: alternate split, each A token scored by its highest cosine
   similarity to any B token, the most similar A tokens dropped) until ``budget - T_imp`` remain.
3. Both sets are kept as-is, in raster order; CLS and the rest are dropped.

Budget: ``budget`` = tokens fed to the LLM per image (default 64) = VisPruner's ``visual_token_num``;
``important_ratio`` (default 0.5, the authors' default) splits it.

Fidelity notes:
- Same tensors as the authors: the tapped layer's (layer -2) CLS attention row over the patches averaged over
  heads, and the patch features of that layer's output for the similarities. On a tower without CLS
  (Qwen2.5-VL) the importance ranks by the mean attention each token receives in the last full-attention block
  (``attention_source="mean_received"``), the substitute ModelTC/LightCompress's Qwen2.5-VL port of VisPruner
  uses; the authors' code has no Qwen path.
- Cosine similarities are computed once per image in float32 (the authors: per round, in the model's fp16);
  sorting is stable, so equal scores keep list order (the authors' ``argsort`` leaves ties unspecified). An odd
  number of remaining candidates is handled (A takes the extra token); the authors' indexing needs it even.
"""

from __future__ import annotations

import torch

from sparsezip.budget import check_budget_fits, check_budget_positive
from sparsezip.context import CompressionResult, VisionContext
from sparsezip.layout import assemble
from sparsezip.methods.base import CompressionMethod, register_method
from sparsezip.methods.rows import LLAVA15_BUDGETS, BenchmarkRows
from sparsezip.scoring import cosine_similarity_matrix
from sparsezip.selection import rank_order, remove_duplicates

DEFAULT_BUDGET = 64
DEFAULT_IMPORTANT_RATIO = 0.5
# Near-duplicates removed per round, fixed in the authors' code.
DUPLICATES_PER_ROUND = 8


@register_method
class VisPruner(CompressionMethod):
    """Keep ``int(budget * important_ratio)`` most attended patches plus diverse ones, ``budget`` in all."""

    name = "vispruner"
    needs_attention = True
    # On a tower without CLS (Qwen2.5-VL): the mean attention each token receives, as ModelTC/LightCompress's
    # Qwen2.5-VL port of VisPruner substitutes it.
    attention_sources = ("cls", "mean_received")
    benchmark = BenchmarkRows(budgets=LLAVA15_BUDGETS, order=63)

    def __init__(self, budget: int | None = None, important_ratio: float = DEFAULT_IMPORTANT_RATIO) -> None:
        if budget is not None:
            check_budget_positive(self.name, budget)
        if not 0.0 <= important_ratio <= 1.0:
            raise ValueError(f"vispruner: important_ratio must lie in [0, 1], got important_ratio={important_ratio}")
        self.budget = budget
        self.important_ratio = important_ratio

    def compress(self, ctx: VisionContext) -> CompressionResult:
        """hidden ``[B, N, C]`` -> tokens ``[B, budget, C]``: important + diverse patches, ascending index."""
        budget = DEFAULT_BUDGET if self.budget is None else self.budget
        prefix = ctx.prefix  # protected leading tokens (CLS): never selected or merged
        b, n, _ = ctx.hidden.shape
        check_budget_fits(self.name, budget, n - prefix)
        important = int(budget * self.important_ratio)
        order = rank_order(ctx.cls_attn[:, :, prefix:].float().mean(dim=1))  # descending attention
        diverse = budget - important
        if diverse > 0:
            similarity = cosine_similarity_matrix(ctx.hidden[:, prefix:])
            rest = remove_duplicates(similarity, order[:, important:], diverse, DUPLICATES_PER_ROUND)
            picks = torch.cat([order[:, :important], rest], dim=1)
        else:
            picks = order[:, :important]
        keep = torch.zeros(b, n, dtype=torch.bool, device=ctx.hidden.device).scatter_(1, picks + prefix, True)
        return assemble(ctx.hidden, keep, torch.full((b,), budget, dtype=torch.long, device=ctx.hidden.device),
                        info={"important": important, "diverse": diverse}, kept_per_row=budget, width=budget)

    def config(self) -> dict:
        return {"budget": self.budget, "important_ratio": self.important_ratio}
