"""Where Qwen2.5-VL's compressed visual tokens sit in the LLM sequence, and which M-RoPE position ids they carry.

Rule (the Qwen2.5-VL ports of VisionZip and VisPruner in ModelTC/LightCompress, ``prune_qwenv25vl_hook``: they
cut ``inputs_embeds``, ``attention_mask`` and ``position_ids[:, :, keep]`` of the full sequence): every visual
token keeps the 3-D (temporal, height, width) position id of the placeholder it stands on in the uncompressed
sequence, and every text token keeps its own, so the text after the image keeps its original numbering and
decoding continues from the last original position + 1, exactly as without compression. Nothing is renumbered.

Which placeholder a compressed token stands on (its *anchor*): a kept token's own source; a merged token (VisionZip's
contextual tokens, pool cells, ToMe) the lowest-index source token merged into it. Tokens are ordered by anchor,
i.e. raster order, as in those ports. *Fidelity note:* LightCompress puts a VisionZip contextual token on its
target token's slot; a generic :class:`~sparsezip.context.CompressionResult` does not record the target, and the
lowest-index member lies at or before it in raster order.

The first row of the ``[4, B, S]`` position ids generation uses (transformers' ``_prepare_position_ids_for_generation``:
plain text positions, ``cumsum(mask) - 1``, for the attention mask only) is rebuilt for the packed sequence.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from sparsezip.context import CompressionResult


def expand_image_runs(prompts: Sequence[str], counts: Sequence[int], image_pad: str) -> list[str]:
    """Each prompt's single ``image_pad`` token repeated ``counts[i]`` times (what ``Qwen2_5_VLProcessor``'s
    ``replace_image_token`` does, ``grid_thw.prod() // merge**2`` copies)."""
    if len(prompts) != len(counts):
        raise ValueError(f"got {len(counts)} image token counts for {len(prompts)} prompts")
    return [prompt.replace(image_pad, image_pad * int(n)) for prompt, n in zip(prompts, counts, strict=True)]


def anchors(result: CompressionResult) -> torch.Tensor:
    """``[B, T]`` int64 anchor source index of every output slot (module docstring); ``N`` (one past the last
    source) at padding slots. Kept and merged slots alike: the smallest source index assigned to the slot."""
    rows, width = result.lengths.shape[0], result.tokens.shape[1]
    sources = result.assignment.shape[1]
    device = result.assignment.device
    anchor = torch.full((rows, width + 1), sources, dtype=torch.long, device=device)
    index = torch.arange(sources, device=device).expand(rows, sources)
    slot = torch.where(result.assignment >= 0, result.assignment, width)
    anchor.scatter_reduce_(1, slot, index, reduce="amin")
    anchor = anchor[:, :width]
    real = torch.arange(width, device=device)[None, :] < result.lengths[:, None]
    return torch.where(real, anchor, sources)


def raster_order(result: CompressionResult) -> tuple[torch.Tensor, torch.Tensor]:
    """Output tokens reordered by anchor: ``(tokens [B, T, C], anchors [B, T])``, real tokens first per row."""
    anchor = anchors(result)
    anchor, order = anchor.sort(dim=1, stable=True)
    tokens = result.tokens.gather(1, order[:, :, None].expand(-1, -1, result.tokens.shape[2]))
    return tokens, anchor


def keep_mask(is_image: torch.Tensor, real: torch.Tensor, anchor: torch.Tensor, run_length: torch.Tensor) -> torch.Tensor:
    """``[B, S]`` bool: the tokens the compressed sequence keeps: every real text token and, of row ``b``'s run of
    ``run_length[b]`` image placeholders, those at the run offsets listed in ``anchor [B, T]`` (values ``>=
    run_length[b]`` are padding)."""
    rows = is_image.shape[0]
    width = int(run_length.max()) if rows else 0
    anchored = torch.zeros(rows, width + 1, dtype=torch.bool, device=is_image.device)
    anchored.scatter_(1, anchor.clamp_max(width), True)
    image = is_image & real
    offset = (image.long().cumsum(dim=1) - 1).clamp(0, width)
    return real & (~image | (image & anchored.gather(1, offset)))


def repack(keep: torch.Tensor, input_ids: torch.Tensor, positions: torch.Tensor, pad_token_id: int):
    """Keep the ``keep [B, S]`` tokens of each row, right-aligned (left padding): ``(ids [B, S'], mask [B, S'],
    position_ids [4, B, S'])``. positions: ``[3, B, S]`` M-RoPE ids of the full sequence, carried along unchanged;
    row 0 of the result is the packed sequence's text positions ``cumsum(mask) - 1`` (0 at padding), and padding
    positions are 0, as transformers builds them."""
    rows = input_ids.shape[0]
    device = input_ids.device
    new_lengths = keep.sum(dim=1)
    width = int(new_lengths.max())
    dest = (width - new_lengths)[:, None] + keep.long().cumsum(dim=1) - 1
    row = torch.arange(rows, device=device)[:, None].expand_as(keep)
    ids = torch.full((rows, width), pad_token_id, dtype=input_ids.dtype, device=device)
    ids[row[keep], dest[keep]] = input_ids[keep]
    mask = (torch.arange(width, device=device)[None, :] >= (width - new_lengths)[:, None]).long()
    packed = positions.new_zeros(3, rows, width)
    packed[:, row[keep], dest[keep]] = positions[:, keep]
    text = (mask.cumsum(dim=1) - 1).masked_fill(mask == 0, 0)
    return ids, mask, torch.cat([text[None].to(packed.dtype), packed], dim=0)
