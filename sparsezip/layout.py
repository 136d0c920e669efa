"""Lay out ``[kept tokens (ascending source index), contextual tokens]`` as a padded CompressionResult.

Shared by every vision-side method: selection methods pass a keep mask, merging methods add contextual tokens
and the source-token -> contextual-slot labels. The ``prefix`` protected tokens (CLS) are the first source
indices, so kept prefix tokens always come first; :func:`with_prefix` puts a patch-level mask or label row back
in front of them.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from sparsezip.context import CompressionResult


def with_prefix(patch_values: torch.Tensor, prefix: int, value: bool | int) -> torch.Tensor:
    """Prepend ``prefix`` columns filled with ``value`` to a per-patch row, giving a per-source-token row.

    patch_values: ``[B, M]`` (a bool keep mask or int64 slot labels over the patches) -> ``[B, prefix + M]``
    of the same dtype. E.g. ``with_prefix(dominant, ctx.prefix, True)`` keeps CLS; ``with_prefix(labels,
    ctx.prefix, -1)`` leaves the prefix tokens unmerged.
    """
    if patch_values.ndim != 2:
        raise ValueError(f"patch_values must be [B, M], got shape {tuple(patch_values.shape)}")
    if isinstance(prefix, bool) or not isinstance(prefix, int) or prefix < 0:
        raise ValueError(f"prefix must be an int >= 0, got prefix={prefix!r}")
    head = torch.full((patch_values.shape[0], prefix), value, dtype=patch_values.dtype, device=patch_values.device)
    return torch.cat([head, patch_values], dim=1)


def assemble(
    hidden: torch.Tensor,
    keep: torch.Tensor,
    k: torch.Tensor,
    contextual: torch.Tensor | None = None,
    contextual_valid: torch.Tensor | None = None,
    contextual_labels: torch.Tensor | None = None,
    info: dict | None = None,
    *,
    kept_width: int | None = None,
    width: int | None = None,
    valid_slots_first: bool = False,
    kept_per_row: int | None = None,
) -> CompressionResult:
    """Build the padded output of a vision-side method.

    hidden: ``[B, N, C]`` source tokens; keep: ``[B, N]`` bool, tokens passed through as-is (output in
    ascending index order); k: ``[B]`` dominant tokens per image (recorded as ``CompressionResult.k``);
    contextual: ``[B, S, C]`` merged tokens (any float dtype, cast to hidden's) in output order;
    contextual_valid: ``[B, S]`` bool, which slots exist (the others are dropped, later ones move up);
    contextual_labels: ``[B, N]`` int64 slot in ``[0, S)`` of every merged source token, ``-1`` otherwise.
    kept_width / width: the largest kept count and the largest output length over the batch, when the caller
    knows them without looking at the data (a fixed budget); whatever is not given is read from the device in
    one host sync. valid_slots_first: the caller's ``contextual_valid`` is True on a prefix of every row (no
    compaction needed). kept_per_row: every row keeps exactly this many tokens (implies ``kept_width``).

    Returns tokens ``[B, T, C]`` (zero padded, hidden's dtype), lengths = kept + valid slots, ``kept_index``
    = ascending kept indices, and ``assignment`` mapping kept and merged source tokens to their output slot.
    """
    if hidden.ndim != 3 or tuple(keep.shape) != tuple(hidden.shape[:2]) or keep.dtype != torch.bool:
        raise ValueError(f"need hidden [B, N, C] and a bool keep [B, N], got {tuple(hidden.shape)}, "
                         f"{keep.dtype} {tuple(keep.shape)}")
    b, n, c = hidden.shape
    device = hidden.device
    if contextual is None:
        contextual = hidden.new_zeros(b, 0, c)
        contextual_valid = torch.zeros(b, 0, dtype=torch.bool, device=device)
        contextual_labels = torch.full((b, n), -1, dtype=torch.long, device=device)
    if contextual_valid is None or contextual_labels is None:
        raise ValueError("contextual tokens need both contextual_valid and contextual_labels")
    s = contextual.shape[1]
    if tuple(contextual_valid.shape) != (b, s) or tuple(contextual_labels.shape) != (b, n):
        raise ValueError(f"contextual_valid must be [B, S] = {(b, s)} and contextual_labels [B, N] = {(b, n)}, "
                         f"got {tuple(contextual_valid.shape)} and {tuple(contextual_labels.shape)}")

    if s and not valid_slots_first:  # compact: valid slots first, in order, and the labels renumbered to match
        order = torch.sort(~contextual_valid, dim=1, stable=True).indices  # [B, S]
        contextual = contextual.gather(1, order[:, :, None].expand(-1, -1, c))
        rank = contextual_valid.cumsum(1) - 1  # new slot of every valid old slot
        contextual_labels = torch.where(contextual_labels >= 0, rank.gather(1, contextual_labels.clamp_min(0)), -1)
    if kept_per_row is not None:
        kept_width = kept_per_row
    n_keep = keep.sum(1)
    n_slots = contextual_valid.sum(1)
    lengths = n_keep + n_slots
    if b and (kept_width is None or width is None):
        # The one host sync: both maxima in one transfer.
        most_kept, longest = torch.stack([n_keep.max(), lengths.max()]).tolist()
        kept_width = most_kept if kept_width is None else kept_width
        width = longest if width is None else width
    kept_width, width = kept_width or 0, width or 0
    n_keep_col, n_slots_col = n_keep[:, None], n_slots[:, None]

    # Kept tokens in ascending index order: a stable sort puts them (key False) first.
    kept_order = torch.sort(~keep, dim=1, stable=True).indices[:, :kept_width]
    kept_index = torch.where(torch.arange(kept_width, device=device) < n_keep_col, kept_order, -1)

    # Output position t of image b holds kept token t (t < n_keep), else contextual slot t - n_keep (while
    # t < lengths[b]), else zeros. Rows are picked by index_select on flattened tensors (a copy per row, many
    # times faster than an elementwise gather); slot index s (one past the real slots) is a zero row.
    rows = hidden.reshape(b * n, c)
    slots = torch.cat([contextual.to(hidden.dtype), hidden.new_zeros(b, 1, c)], dim=1).view(b * (s + 1), c)
    if kept_per_row is not None:  # every row keeps the same count: kept part, then slots, no per-position choice
        kept = rows.index_select(0, (kept_order + torch.arange(0, b * n, n, device=device)[:, None]).view(-1))
        t = torch.arange(width - kept_width, device=device)
        slot_src = torch.where(t < n_slots_col, t, s) + torch.arange(0, b * (s + 1), s + 1, device=device)[:, None]
        tokens = torch.cat([kept.view(b, kept_width, c), slots.index_select(0, slot_src.view(-1)).view(b, -1, c)], 1)
    else:
        t = torch.arange(width, device=device)
        is_kept = (t < n_keep_col)[:, :, None]
        kept_src = F.pad(kept_order, (0, width - kept_width)) + torch.arange(0, b * n, n, device=device)[:, None]
        slot_pos = t - n_keep_col
        slot_src = torch.where((slot_pos >= 0) & (slot_pos < n_slots_col), slot_pos, s) \
            + torch.arange(0, b * (s + 1), s + 1, device=device)[:, None]
        tokens = torch.where(is_kept, rows.index_select(0, kept_src.view(-1)).view(b, width, c),
                             slots.index_select(0, slot_src.view(-1)).view(b, width, c))

    # Source token -> output slot: kept tokens by their rank, merged tokens by their (valid) slot.
    merged = (contextual_labels >= 0) & (contextual_labels < n_slots_col)
    assignment = torch.where(keep, keep.cumsum(1) - 1,
                             torch.where(merged, contextual_labels + n_keep_col, -1))
    return CompressionResult(
        tokens=tokens, lengths=lengths, kept_index=kept_index, assignment=assignment, k=k if k.dtype == torch.long else k.long(), info=info or {}
    )
