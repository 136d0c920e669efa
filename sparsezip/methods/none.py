"""``none``: the unmodified model. LLaVA's default feature selection: every patch, the prefix (CLS) dropped."""

from __future__ import annotations

import torch

from sparsezip.context import CompressionResult, VisionContext
from sparsezip.layout import with_prefix
from sparsezip.methods.base import CompressionMethod, register_method
from sparsezip.methods.rows import FULL_BUDGET, BenchmarkRows


@register_method
class NoCompression(CompressionMethod):
    """Feed all ``N - prefix`` patch tokens in raster order, exactly what LLaVA-1.5 does (576 tokens)."""

    name = "none"
    benchmark = BenchmarkRows(budgets=(FULL_BUDGET,), order=0)  # the reference row: every patch

    def __init__(self, budget: int | None = None) -> None:
        # `budget` is accepted so the benchmark matrix can pass it uniformly; it must be None or the full count.
        self.budget = budget

    def compress(self, ctx: VisionContext) -> CompressionResult:
        b, n, _ = ctx.hidden.shape
        prefix, m = ctx.prefix, ctx.num_patches
        if self.budget is not None and self.budget != m:
            raise ValueError(f"method 'none' keeps all {m} patches; got budget={self.budget}")
        device = ctx.hidden.device
        patches = torch.arange(prefix, n, device=device).expand(b, m)
        assignment = with_prefix(patches - prefix, prefix, -1)
        full = torch.full((b,), m, device=device, dtype=torch.long)
        return CompressionResult(
            tokens=ctx.hidden[:, prefix:],
            lengths=full,
            kept_index=patches.clone(),
            assignment=assignment,
            k=full.clone(),
        )

    def config(self) -> dict:
        return {"budget": self.budget}
