"""``prumerge_plus``: LLaVA-PruMerge+ (Shang et al., 2024; 42Shawn/LLaVA-PruMerge), adaptive prune and merge.

1. Important patches: the IQR outliers of the CLS attention (``a > Q3 + 1.5 IQR``,
   :func:`sparsezip.scoring.iqr_outliers`), taken as the top-``n`` patches by attention (descending).
2. "+": spatially uniform samples supplement them, in ascending index, skipping the important ones.
3. Merge: each selected patch ``i`` becomes ``x_i + sum_j a_j x_j`` over its 32 most key-similar other patches
   (:func:`sparsezip.merging.neighbourhood_merge`; an unnormalised attention-weighted sum, as the authors'
   code has it), and one extra token ``sum_j a_j x_j`` sums every patch that was not selected.
4. Output ``[important (descending attention), samples (ascending), extra]``; CLS is dropped.

Budget:
- ``budget=None`` (default): the authors' adaptive rule, a different count per image. With ``n`` outliers of
  ``M`` patches, ``ratio = n / M``, ``int(M * ratio)`` important patches, and samples at ``0, s, 2s, ...
  < M - 1`` with ``s = int(int(1 / ratio) / 3)``; ``n + ~3n`` tokens (the paper reports ~25 % of 576).
- ``budget=K``: ours, so rows can be compared at equal token counts: ``K - 1`` selected patches plus the
  extra token. The important ones stay the IQR outliers (at most ``K - 1``, top by attention); the remaining
  ``K - 1 - n`` are spread uniformly over the other patches in raster order (list positions
  ``floor(j L / (K - 1 - n))`` of the ``L`` non-important patches). The authors' code has no fixed-count
  inference mode (its non-adaptive branch, "for training", samples with a fixed stride and can repeat a patch).

Fidelity notes:
- **Attention and keys**: the authors compute a single full-width "head" ``softmax(q k^T / sqrt(1024))`` from
  the *last* layer's (23) ``q_proj``/``k_proj`` of the layer -2 output, and use those 1024-d keys for
  similarity. A :class:`VisionContext` holds the tapped layer's (22) CLS attention per head and its
  head-averaged keys, so we use their mean over heads and those keys. Given the authors' row and keys (one
  head, full-width keys) the computation is theirs, which is what the golden test checks.
- IQR per image (the authors flatten the batch; their adaptive branch only runs at batch size 1). The
  authors' hard-coded ``575`` is ``M - 1``. A stride below 1 (more than a third of the patches are outliers;
  the authors' ``arange`` fails) is 1; with no outlier (division by zero there) the limit applies: no
  important patch and one sample, patch 0. The extra token is left out when every patch is selected (theirs is
  then a zero vector). Neighbour and top-``n`` ties: lower index (stable sorts; theirs unspecified). Float32.
- ``kept_index`` is empty and ``k`` counts the selected patches: every output token is a merge, not a copy.
"""

from __future__ import annotations

import torch

from sparsezip.budget import check_budget_fits, check_budget_positive
from sparsezip.context import CompressionResult, VisionContext
from sparsezip.layout import assemble
from sparsezip.merging import neighbourhood_merge
from sparsezip.methods.base import CompressionMethod, register_method
from sparsezip.methods.rows import LLAVA15_BUDGETS, BenchmarkRows
from sparsezip.scoring import iqr_outliers
from sparsezip.selection import mask_to_indices, rank_order

# Neighbours merged into every selected token, fixed in the authors' code.
NEIGHBOURS = 32


def _adaptive(outliers: torch.Tensor, m: int) -> tuple[torch.Tensor, torch.Tensor]:
    """The authors' adaptive rule, in float64 like their Python floats: (important counts ``[B]`` int64,
    candidate sample positions ``[B, M]`` bool -- ``0, s, 2s, ... < M - 1`` -- before skipping important ones)."""
    ratio = outliers.double() / m
    important = torch.floor(m * ratio).long()
    stride = torch.floor(torch.floor(1.0 / ratio) / 3)  # inf when there is no outlier: only position 0
    stride = torch.where(torch.isinf(stride), float(m), stride.clamp_min(1)).long()
    position = torch.arange(m, device=outliers.device)
    samples = (position[None, :] % stride[:, None] == 0) & (position[None, :] < m - 1)
    return important, samples


def _budgeted(important_mask: torch.Tensor, spatial: torch.Tensor) -> torch.Tensor:
    """``spatial[b]`` positions spread uniformly over the non-important patches in raster order.
    important_mask: ``[B, M]`` bool; spatial: ``[B]`` int64 -> ``[B, M]`` bool sample mask."""
    b, m = important_mask.shape
    others = mask_to_indices(~important_mask, width=m)  # ascending, -1 padded
    count = (~important_mask).sum(1)
    j = torch.arange(m, device=important_mask.device)
    position = (j[None, :] * count[:, None]) // spatial.clamp_min(1)[:, None]
    chosen = others.gather(1, position.clamp_max(m - 1))
    chosen = torch.where(j[None, :] < spatial[:, None], chosen, m)  # unused -> spare column
    return torch.zeros(b, m + 1, dtype=torch.bool, device=important_mask.device).scatter_(1, chosen, True)[:, :m]


@register_method
class PruMergePlus(CompressionMethod):
    """PruMerge+: IQR-important + spatially sampled patches, each merged with its key neighbours, + 1 token."""

    name = "prumerge_plus"
    needs_attention = True
    benchmark = BenchmarkRows(budgets=LLAVA15_BUDGETS, order=62)

    def __init__(self, budget: int | None = None) -> None:
        if budget is not None:
            check_budget_positive(self.name, budget)
        self.budget = budget

    def compress(self, ctx: VisionContext) -> CompressionResult:
        """hidden ``[B, N, C]`` -> tokens ``[B, T, C]``: selected-and-merged patches, then the extra token."""
        prefix = ctx.prefix  # protected leading tokens (CLS): never selected or merged
        b, n, _c = ctx.hidden.shape
        m = n - prefix
        device = ctx.hidden.device
        if self.budget is not None:
            check_budget_fits(self.name, self.budget, m)
        attn = ctx.cls_attn[:, :, prefix:].float().mean(dim=1)  # [B, M]
        outliers = iqr_outliers(attn).sum(1)
        rank = torch.empty_like(attn, dtype=torch.long).scatter_(
            1, rank_order(attn), torch.arange(m, device=device).expand(b, m).contiguous())
        if self.budget is None:
            n_important, samples = _adaptive(outliers, m)
        else:
            n_important = outliers.clamp_max(self.budget - 1)
        important = rank < n_important[:, None]
        if self.budget is not None:
            samples = _budgeted(important, self.budget - 1 - n_important)
        samples = samples & ~important
        selected_mask = important | samples
        n_selected = selected_mask.sum(1)

        # The one host sync: per-image counts for `info`, and the output width with them.
        important_list, selected_list = torch.stack([n_important, n_selected]).tolist() if b else ([], [])
        width = max(selected_list, default=0)
        # Output order: important by descending attention, then samples by ascending index.
        index = torch.arange(m, device=device)
        key = torch.where(important, rank, torch.where(samples, m + index, 2 * m + index))
        order = torch.sort(key, dim=1).indices[:, :width]
        slot_used = torch.arange(width, device=device)[None, :] < n_selected[:, None]
        selected = torch.where(slot_used, order, -1)

        patches, keys = ctx.hidden[:, prefix:], ctx.keys[:, prefix:]
        merged = neighbourhood_merge(patches, keys, attn, selected, NEIGHBOURS)
        rest = (~selected_mask).float() * attn
        extra = torch.bmm(rest[:, None, :], patches.float())  # [B, 1, C]
        tokens = torch.cat([merged, extra], dim=1)
        valid = torch.cat([slot_used, (n_selected < m)[:, None]], dim=1)

        # Selected patch -> its slot; every other patch -> the extra token's slot (padding writes a spare column).
        slot_of_patch = torch.full((b, m + 1), width, dtype=torch.long, device=device)
        slot_of_patch.scatter_(1, torch.where(slot_used, selected, m), index[:width].expand(b, -1).contiguous())
        slot_of_patch = slot_of_patch[:, :m]
        labels = torch.cat([torch.full((b, prefix), -1, dtype=torch.long, device=device), slot_of_patch], dim=1)
        return assemble(
            ctx.hidden,
            keep=torch.zeros(b, n, dtype=torch.bool, device=device),
            k=n_selected,
            contextual=tokens,
            contextual_valid=valid,
            contextual_labels=labels,
            info={"important": important_list,
                  "spatial": [s - i for s, i in zip(selected_list, important_list, strict=True)]},
            kept_per_row=0,
            width=max((s + (s < m) for s in selected_list), default=0),
        )

    def config(self) -> dict:
        return {"budget": self.budget}
