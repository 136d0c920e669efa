"""Shorten each prompt's run of ``<image>`` placeholder tokens to that image's compressed token count.

The processor expands one ``<image>`` into ``num_patches`` placeholders (576 for LLaVA-1.5). After compression
image ``b`` contributes ``counts[b]`` tokens, so its run keeps its first ``counts[b]`` placeholders; rows are
then re-packed to the left-padded layout batched generation needs, with a rebuilt attention mask. Text tokens
are untouched, so tokenization is exactly the processor's.
"""

from __future__ import annotations

import torch


def shorten_image_runs(
    input_ids: torch.Tensor,
    attention_mask: torch.Tensor,
    counts: torch.Tensor,
    *,
    image_token_id: int,
    pad_token_id: int,
    expected_run: int,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Keep ``counts[b]`` of row ``b``'s ``expected_run`` image placeholders, re-pack rows left-padded.

    input_ids, attention_mask: ``[B, S]`` (left or right padded; padding = mask 0); counts: ``[B]`` int with
    ``0 <= counts[b] <= expected_run``. Returns ``(ids [B, S'], mask [B, S'])`` with ``S' = max_b`` of the new
    row lengths, real tokens right-aligned and ``pad_token_id`` / 0 on the left.
    """
    if input_ids.ndim != 2 or attention_mask.shape != input_ids.shape:
        raise ValueError(
            f"input_ids and attention_mask must both be [B, S], got {tuple(input_ids.shape)} and "
            f"{tuple(attention_mask.shape)}"
        )
    batch = input_ids.shape[0]
    counts = torch.as_tensor(counts, device=input_ids.device)
    if tuple(counts.shape) != (batch,):
        raise ValueError(f"counts must be [B={batch}], got shape {tuple(counts.shape)}")
    if bool((counts < 0).any()) or bool((counts > expected_run).any()):
        raise ValueError(f"counts must lie in [0, {expected_run}], got {counts.tolist()}")
    real = attention_mask.bool()
    is_image = (input_ids == image_token_id) & real
    found = is_image.sum(dim=1)
    if bool((found != expected_run).any()):
        raise ValueError(
            f"each prompt must hold exactly {expected_run} image placeholders after processing, got {found.tolist()}"
        )
    rank_in_run = is_image.long().cumsum(dim=1) - 1
    keep = real & (~is_image | (rank_in_run < counts[:, None]))
    new_lengths = keep.sum(dim=1)
    width = int(new_lengths.max())
    # Destination column of each kept token: right-aligned, so row b starts at width - new_lengths[b].
    dest = (width - new_lengths)[:, None] + keep.long().cumsum(dim=1) - 1
    rows = torch.arange(batch, device=input_ids.device)[:, None].expand_as(keep)
    ids = torch.full((batch, width), pad_token_id, dtype=input_ids.dtype, device=input_ids.device)
    ids[rows[keep], dest[keep]] = input_ids[keep]
    mask = (torch.arange(width, device=input_ids.device)[None, :] >= (width - new_lengths)[:, None]).long()
    return ids, mask.to(attention_mask.dtype)
