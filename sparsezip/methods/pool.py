"""``pool``: average-pool the square patch grid down to the budget (methods.md section 4).

The g x g grid is pooled to h x w cells with ``h * w == budget``, ``h`` the largest divisor of the budget with
``h <= sqrt(budget)`` (64 -> 8x8, 128 -> 8x16, 192 -> 12x16, 16 -> 4x4). Cell (i, j) covers grid rows
``r`` with ``floor(r * h / g) == i`` and columns likewise: a partition, so every patch belongs to exactly one
cell and ``assignment`` is exact. When h and w divide g this is ``F.adaptive_avg_pool2d``; otherwise PyTorch's
adaptive pooling uses overlapping windows and this does not (24 -> 16 columns: cells of 1 or 2 columns).
No source token is kept as-is (``kept_index`` is ``[B, 0]``, ``k`` is 0) and the prefix (CLS) is dropped.

A non-square raster (``VisionContext.grid``, e.g. Qwen2.5-VL's ``rows x cols`` merged tokens) is pooled to the
``h x w = budget`` cells that fit it with the aspect closest to the grid's (a 6 x 12 grid at budget 8 -> 2 x 4;
on a square grid this is the rule above).

When no ``h x w = budget`` cell grid fits the raster (a prime budget such as 107, which LLaVA-NeXT's per-crop
split of 320 tokens over 3 crops gives), the raster is cut into ``h`` bands of rows (``h`` near
``sqrt(budget * rows / cols)``, cells roughly square) and band ``i`` into ``budget // h`` or ``budget // h + 1``
columns of cells (the larger counts on the first bands): still an exact partition into ``budget`` rectangles
(``info`` then holds ``cells_per_band`` instead of ``grid``).
"""

from __future__ import annotations

import math
from fractions import Fraction

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


def pooled_grid_for(budget: int, rows: int, cols: int) -> tuple[int, int]:
    """``(h, w)`` with ``h * w == budget``, ``h <= rows``, ``w <= cols`` and ``h / w`` closest to ``rows / cols``
    (ties: the smaller ``h``); equals :func:`pooled_grid` on a square grid. ``ValueError`` if none fits."""
    check_budget_positive("pool", budget)
    pairs = [(d, budget // d) for d in range(1, budget + 1) if budget % d == 0 and d <= rows and budget // d <= cols]
    if not pairs:
        raise ValueError(f"pool: no h x w = {budget} cells fit a {rows}x{cols} patch grid")
    # Aspect mismatch as an exact ratio >= 1 (floating logs would break ties by rounding).
    def mismatch(hw: tuple[int, int]) -> Fraction:
        a, b = hw[0] * cols, hw[1] * rows
        return Fraction(max(a, b), min(a, b))

    return min(pairs, key=lambda hw: (mismatch(hw), hw[0]))


def grid_cells(
    grid: int | tuple[int, int], h: int, w: int, device: torch.device | str = "cpu"
) -> torch.Tensor:
    """Cell index ``[rows * cols]`` (row-major in the h x w grid) of every patch of a ``grid`` raster
    (``grid`` = ``(rows, cols)``, or one int for a square)."""
    grid_rows, grid_cols = (grid, grid) if isinstance(grid, int) else grid
    if not (1 <= h <= grid_rows and 1 <= w <= grid_cols):
        raise ValueError(f"pool: cannot pool a {grid_rows}x{grid_cols} patch grid to {h}x{w} cells")
    rows = torch.arange(grid_rows, device=device) * h // grid_rows
    cols = torch.arange(grid_cols, device=device) * w // grid_cols
    return (rows[:, None] * w + cols[None, :]).flatten()


def banded_cells(
    grid: tuple[int, int], budget: int, device: torch.device | str = "cpu"
) -> tuple[torch.Tensor, list[int]]:
    """Cell index ``[rows * cols]`` of every patch when ``budget`` cells are cut as bands of rows, each band into
    ``budget // h`` or one more columns of cells; returns the cells and the cells per band (module docstring)."""
    rows, cols = grid
    if not 1 <= budget <= rows * cols:
        raise ValueError(f"pool: cannot cut a {rows}x{cols} patch grid into {budget} cells")
    bands = min(rows, budget, max(1, round(math.sqrt(budget * rows / cols))))
    while -(-budget // bands) > cols:  # a band cannot hold more cells than columns
        bands += 1
    per_band = torch.full((bands,), budget // bands, dtype=torch.long)
    per_band[: budget % bands] += 1
    offsets = torch.cumsum(per_band, 0) - per_band
    band = torch.arange(rows) * bands // rows  # [rows]
    width = per_band[band]  # cells in each grid row's band
    col_cell = torch.arange(cols)[None, :] * width[:, None] // cols  # [rows, cols]
    cells = offsets[band][:, None] + col_cell
    return cells.flatten().to(device), per_band.tolist()


@register_method
class GridPool(CompressionMethod):
    """Average-pool the patch grid to ``budget`` (default 64) tokens, row-major cell order."""

    name = "pool"
    benchmark = BenchmarkRows(budgets=(64,), order=50)  # a control: one budget is enough

    def __init__(self, budget: int | None = None) -> None:
        self.budget = budget
        self.grid = pooled_grid(DEFAULT_BUDGET if budget is None else budget)

    def compress(self, ctx: VisionContext) -> CompressionResult:
        """hidden ``[B, N, C]`` (a ``ctx.grid_shape`` patch raster) -> tokens ``[B, h * w, C]``."""
        h, w = self.grid
        budget = h * w
        check_budget_fits(self.name, budget, ctx.num_patches)
        b, n, _ = ctx.hidden.shape
        device = ctx.hidden.device
        grid = ctx.grid_shape
        if grid[0] != grid[1] or h > grid[0] or w > grid[1]:
            try:
                h, w = pooled_grid_for(budget, *grid)
            except ValueError:  # no rectangle of cells fits: bands of rows (module docstring)
                h, w = 0, 0
        if h:
            cells, info = grid_cells(grid, h, w, device), {"grid": [h, w]}
        else:
            cells, per_band = banded_cells(grid, budget, device)
            info = {"cells_per_band": per_band}
        labels = with_prefix(cells.expand(b, -1), ctx.prefix, -1)  # the prefix (CLS) joins no cell
        pooled = weighted_merge(ctx.hidden, labels, budget)
        return assemble(
            ctx.hidden,
            keep=torch.zeros(b, n, dtype=torch.bool, device=device),
            k=torch.zeros(b, dtype=torch.long, device=device),
            contextual=pooled,
            contextual_valid=torch.ones(b, budget, dtype=torch.bool, device=device),
            contextual_labels=labels,
            info=info,
            kept_per_row=0,
            width=budget,
            valid_slots_first=True,
        )

    def config(self) -> dict:
        return {"budget": self.budget}
