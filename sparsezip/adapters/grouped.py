"""Run a vision-side method on rows that cannot share one call, and stitch the results back into one.

Two families need it. LLaVA-NeXT spreads an image's budget over its crops, so crops of images with different
crop counts get different per-crop budgets; Qwen2.5-VL images of different sizes have different token counts and
grids. Rows that share a shape and a per-row budget form one group and get one batched call
(``method.with_budget(budget)``), so the method itself stays a plain batched ``[B, N, C]`` function. The loop is
over the distinct (shape, budget) pairs of a batch, never over images inside a group.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch

from sparsezip.context import CompressionResult, VisionContext
from sparsezip.methods.base import CompressionMethod


@dataclass(frozen=True)
class RowGroup:
    """Rows that one method call handles.

    Attributes:
        rows: ``[G]`` int64, which rows of the whole batch this group holds (in the group's row order).
        context: the group's :class:`VisionContext` (``G`` rows of one shape).
        budget: the budget every row of the group gets (``None``: the method as configured).
    """

    rows: torch.Tensor
    context: VisionContext
    budget: int | None = None


def compress_grouped(method: CompressionMethod, groups: Sequence[RowGroup], total_rows: int) -> CompressionResult:
    """Call ``method`` (re-budgeted per group) on each group and stitch the results into one
    :class:`CompressionResult` over ``total_rows`` rows: tokens ``[R, T, C]`` zero-padded to the largest group
    ``T``, ``kept_index`` ``-1``-padded, ``assignment`` ``[R, N_max]`` with ``-1`` beyond a row's own ``N``.
    ``info`` is the single group's, or ``{"groups": [...]}`` in group order. Every row must belong to exactly one
    group."""
    if not groups:
        raise ValueError("compress_grouped needs at least one group")
    covered = torch.cat([g.rows.cpu() for g in groups])
    if covered.numel() != total_rows or not torch.equal(covered.sort().values, torch.arange(total_rows)):
        raise ValueError(f"the groups must cover rows 0..{total_rows - 1} exactly once, got {covered.tolist()}")
    results = [
        (method if g.budget is None else method.with_budget(g.budget))(g.context) for g in groups
    ]
    first = results[0].tokens
    device = first.device
    width = max(r.tokens.shape[1] for r in results)
    sources = max(r.assignment.shape[1] for r in results)
    kept = max(r.kept_index.shape[1] for r in results)
    tokens = first.new_zeros(total_rows, width, first.shape[2])
    kept_index = torch.full((total_rows, kept), -1, dtype=torch.long, device=device)
    assignment = torch.full((total_rows, sources), -1, dtype=torch.long, device=device)
    lengths = torch.zeros(total_rows, dtype=torch.long, device=device)
    k = torch.zeros(total_rows, dtype=torch.long, device=device)
    for group, result in zip(groups, results, strict=True):
        rows = group.rows.to(device)
        tokens[rows, : result.tokens.shape[1]] = result.tokens
        kept_index[rows, : result.kept_index.shape[1]] = result.kept_index
        assignment[rows, : result.assignment.shape[1]] = result.assignment
        lengths[rows] = result.lengths
        k[rows] = result.k
    info = results[0].info if len(results) == 1 else {"groups": [r.info for r in results]}
    return CompressionResult(tokens, lengths, kept_index, assignment, k, info=info)


def budget_groups(per_row_budget: torch.Tensor | None, total_rows: int) -> list[tuple[torch.Tensor, int | None]]:
    """``(rows, budget)`` for each distinct value of ``per_row_budget [R]`` (ascending), or one group of all rows
    with ``None`` when no budget is set."""
    if per_row_budget is None:
        return [(torch.arange(total_rows), None)]
    values = torch.unique(per_row_budget.cpu())
    return [(torch.nonzero(per_row_budget.cpu() == v).flatten(), int(v)) for v in values]
