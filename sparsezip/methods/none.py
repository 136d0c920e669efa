"""``none``: the unmodified model. LLaVA's default feature selection: every patch, CLS dropped."""

from __future__ import annotations

import torch

from sparsezip.context import CompressionResult, VisionContext
from sparsezip.methods.base import CompressionMethod, register_method
from sparsezip.methods.rows import FULL_BUDGET, BenchmarkRows


@register_method
class NoCompression(CompressionMethod):
    """Feed all ``N - 1`` patch tokens in raster order, exactly what LLaVA-1.5 does (576 tokens)."""

    name = "none"
    benchmark = BenchmarkRows(budgets=(FULL_BUDGET,), order=0)  # the reference row: every patch

    def __init__(self, budget: int | None = None) -> None:
        # `budget` is accepted so the benchmark matrix can pass it uniformly; it must be None or the full count.
        self.budget = budget

    def compress(self, ctx: VisionContext) -> CompressionResult:
        b, n, _ = ctx.hidden.shape
        if self.budget is not None and self.budget != n - 1:
            raise ValueError(f"method 'none' keeps all {n - 1} patches; got budget={self.budget}")
        device = ctx.hidden.device
        patches = torch.arange(1, n, device=device).expand(b, n - 1)
        assignment = torch.cat(
            [torch.full((b, 1), -1, device=device, dtype=torch.long), patches - 1], dim=1
        )
        full = torch.full((b,), n - 1, device=device, dtype=torch.long)
        return CompressionResult(
            tokens=ctx.hidden[:, 1:],
            lengths=full,
            kept_index=patches.clone(),
            assignment=assignment,
            k=full.clone(),
        )

    def config(self) -> dict:
        return {"budget": self.budget}
