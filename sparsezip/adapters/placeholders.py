"""Shorten each prompt's run of ``<image>`` placeholder tokens to that image's compressed token count.

The processor expands one ``<image>`` into that image's uncompressed visual token count: 576 for every
LLaVA-1.5 image, but per image for models whose count depends on the image (LLaVA-NeXT's anyres tiles), so each
row states its own expected run length. After compression image ``b`` contributes ``counts[b]`` tokens, so its
run keeps its first ``counts[b]`` placeholders; rows are then re-packed to the left-padded layout batched
generation needs, with a rebuilt attention mask. Text tokens are untouched, so tokenization is exactly the
processor's.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch


def shorten_image_runs(
    input_ids: torch.Tensor,
    attention_mask: torch.Tensor,
    counts: torch.Tensor,
    *,
    image_token_id: int,
    pad_token_id: int,
    expected_runs: torch.Tensor | Sequence[int] | int,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Keep ``counts[b]`` of row ``b``'s ``expected_runs[b]`` image placeholders, re-pack rows left-padded.

    input_ids, attention_mask: ``[B, S]`` (left or right padded; padding = mask 0); counts: ``[B]`` int;
    expected_runs: ``[B]`` int, the placeholders the processor put in each row (one int = the same for every
    row), with ``0 <= counts[b] <= expected_runs[b]``. Returns ``(ids [B, S'], mask [B, S'])`` with
    ``S' = max_b`` of the new row lengths, real tokens right-aligned and ``pad_token_id`` / 0 on the left.
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
    runs = torch.as_tensor(expected_runs, device=input_ids.device).long()
    if runs.ndim == 0:
        runs = runs.expand(batch)
    if tuple(runs.shape) != (batch,):
        raise ValueError(f"expected_runs must be one int or [B={batch}], got shape {tuple(runs.shape)}")
    if bool((counts < 0).any()) or bool((counts > runs).any()):
        raise ValueError(f"counts must lie in [0, expected_runs]: got counts {counts.tolist()} for runs {runs.tolist()}")
    real = attention_mask.bool()
    is_image = (input_ids == image_token_id) & real
    found = is_image.sum(dim=1)
    if bool((found != runs).any()):
        raise ValueError(
            f"each prompt must hold exactly its expected image placeholders after processing: expected "
            f"{runs.tolist()}, got {found.tolist()}"
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
