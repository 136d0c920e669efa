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
from sparsezip.selection import gather_tokens, mask_to_indices


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
) -> CompressionResult:
    """Build the padded output of a vision-side method.

    hidden: ``[B, N, C]`` source tokens; keep: ``[B, N]`` bool, tokens passed through as-is (output in
    ascending index order); k: ``[B]`` dominant tokens per image (recorded as ``CompressionResult.k``);
    contextual: ``[B, S, C]`` merged tokens (any float dtype, cast to hidden's) in output order;
    contextual_valid: ``[B, S]`` bool, which slots exist (the others are dropped, later ones move up);
    contextual_labels: ``[B, N]`` int64 slot in ``[0, S)`` of every merged source token, ``-1`` otherwise.

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

    kept_index = mask_to_indices(keep)  # [B, Kmax]
    n_keep = keep.sum(1)
    lengths = n_keep + contextual_valid.sum(1)
    width = int(lengths.max()) if b else 0
    # A trailing -1 column lets out-of-range positions gather "nothing" without special cases for empty sets.
    kept_padded = F.pad(kept_index, (0, 1), value=-1)
    slot_padded = F.pad(mask_to_indices(contextual_valid), (0, 1), value=-1)  # valid slots, in order

    # Output position t of image b holds kept token t (t < n_keep), else contextual slot number t - n_keep.
    t = torch.arange(width, device=device).expand(b, width)
    kept_src = kept_padded.gather(1, t.clamp_max(kept_padded.shape[1] - 1))
    ctx_pos = (t - n_keep[:, None]).clamp(0, slot_padded.shape[1] - 1)
    slot = slot_padded.gather(1, ctx_pos)
    is_kept = t < n_keep[:, None]
    tokens = torch.where(
        is_kept[:, :, None],
        gather_tokens(hidden, torch.where(is_kept, kept_src, -1)),
        gather_tokens(contextual.to(hidden.dtype), torch.where(is_kept, -1, slot)),
    )

    # Source token -> output slot: kept tokens by their rank, merged tokens by their slot's rank.
    keep_slot = keep.long().cumsum(1) - 1
    valid_padded = F.pad(contextual_valid, (0, 1), value=False)
    rank_padded = valid_padded.long().cumsum(1) - 1
    label = torch.where(contextual_labels >= 0, contextual_labels, s)
    merged = valid_padded.gather(1, label) & ~keep
    merged_slot = n_keep[:, None] + rank_padded.gather(1, label)
    assignment = torch.where(keep, keep_slot, torch.where(merged, merged_slot, -1))
    return CompressionResult(
        tokens=tokens, lengths=lengths, kept_index=kept_index, assignment=assignment, k=k.long(), info=info or {}
    )
