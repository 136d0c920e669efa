"""``pool``: average-pool the square patch grid down to the budget (methods.md section 4).

The g x g grid is pooled to h x w cells with ``h * w == budget``, ``h`` the largest divisor of the budget with
``h <= sqrt(budget)`` (64 -> 8x8, 128 -> 8x16, 192 -> 12x16, 16 -> 4x4). Cell (i, j) covers grid rows
``r`` with ``floor(r * h / g) == i`` and columns likewise: a partition, so every patch belongs to exactly one
cell and ``assignment`` is exact. When h and w divide g this is ``F.adaptive_avg_pool2d``; otherwise PyTorch's
adaptive pooling uses overlapping windows and this does not (24 -> 16 columns: cells of 1 or 2 columns).
No source token is kept as-is (``kept_index`` is ``[B, 0]``, ``k`` is 0) and the prefix (CLS) is dropped.
"""

from __future__ import annotations

import math

import torch

from sparsezip.budget import check_budget_fits, check_budget_positive
from sparsezip.context import CompressionResult, VisionContext
from sparsezip.layout import assemble, with_prefix
from sparsezip.merging import weighted_merge
from sparsezip.methods.base import CompressionMethod, register_method
from sparsezip.methods.rows import BenchmarkRows

DEFAULT_BUDGET = 64


def pooled_grid(budget: int) -> tuple[int, int]:
    """``(h, w)`` with ``h * w == budget`` and h the largest divisor of the budget not above its square root."""
    check_budget_positive("pool", budget)
    h = max(d for d in range(1, math.isqrt(budget) + 1) if budget % d == 0)
    return h, budget // h


def grid_cells(grid: int, h: int, w: int, device: torch.device | str = "cpu") -> torch.Tensor:
    """Cell index ``[grid * grid]`` (row-major in the h x w grid) of every patch of a grid x grid raster."""
    if not (1 <= h <= grid and 1 <= w <= grid):
        raise ValueError(f"pool: cannot pool a {grid}x{grid} patch grid to {h}x{w} cells")
    rows = torch.arange(grid, device=device) * h // grid
    cols = torch.arange(grid, device=device) * w // grid
    return (rows[:, None] * w + cols[None, :]).flatten()


@register_method
class GridPool(CompressionMethod):
    """Average-pool the patch grid to ``budget`` (default 64) tokens, row-major cell order."""

    name = "pool"
    benchmark = BenchmarkRows(budgets=(64,), order=50)  # a control: one budget is enough

    def __init__(self, budget: int | None = None) -> None:
        self.budget = budget
        self.grid = pooled_grid(DEFAULT_BUDGET if budget is None else budget)

    def compress(self, ctx: VisionContext) -> CompressionResult:
        """hidden ``[B, N, C]`` (square patch grid) -> tokens ``[B, h * w, C]``."""
        h, w = self.grid
        check_budget_fits(self.name, h * w, ctx.num_patches)
        b, n, _ = ctx.hidden.shape
        device = ctx.hidden.device
        cells = grid_cells(ctx.grid_size, h, w, device)
        labels = with_prefix(cells.expand(b, -1), ctx.prefix, -1)  # the prefix (CLS) joins no cell
        pooled = weighted_merge(ctx.hidden, labels, h * w)
        return assemble(
            ctx.hidden,
            keep=torch.zeros(b, n, dtype=torch.bool, device=device),
            k=torch.zeros(b, dtype=torch.long, device=device),
            contextual=pooled,
            contextual_valid=torch.ones(b, h * w, dtype=torch.bool, device=device),
            contextual_labels=labels,
            info={"grid": [h, w]},
        )

    def config(self) -> dict:
        return {"budget": self.budget}
