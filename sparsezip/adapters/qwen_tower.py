"""Run Qwen2.5-VL's vision tower (window attention, 2D RoPE, 2 x 2 patch merger) and read the attention signal
that stands in for a CLS row, with hooks.

The tower has no CLS token, so CLS-attention methods get the substitute the field's Qwen2.5-VL ports use
(ModelTC/LightCompress ``token_reduction/visionzip.py`` and ``vispruner.py``, ``Qwen2_5_VLVisionAttention_forward``
+ ``merger_hook``): the softmax attention of the tower's last full-attention block (``max(fullatt_block_indexes)``,
the last block of every released checkpoint), for each key token the mean over all query tokens of its image
(per head here; the ports sum over queries and average heads, a constant factor per image), then averaged over
the 4 patches that the merger fuses into one LLM token, and put back from the tower's window order into raster
order. The keys (after the vision RoPE, as in that port) are averaged over heads and over the same 4 patches.

Only that block's ``qkv`` output and the RoPE tables / sequence bounds it receives are captured (a forward hook on
``attn.qkv`` and a keyword pre-hook on ``attn``, registered on this tower's modules for one call, always removed);
the attention map is recomputed for that block alone, in float32 and in blocks of queries so memory stays bounded
(``CHUNK_ELEMENTS``). The block itself, and every other block, keeps its own kernel (SDPA); nothing is patched.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

# Largest [heads, queries, keys] block of attention probabilities materialised at once (float32: 256 MiB).
CHUNK_ELEMENTS = 2**26


@dataclass(frozen=True)
class QwenFeatures:
    """What the tower yields for a batch of images (all images concatenated, each in raster order).

    Attributes:
        tokens: ``[L, D]`` the merger's output (LLM hidden size): what the LLM receives uncompressed.
        counts: ``[B]`` int64, tokens of each image (``L = counts.sum()``).
        grids: ``[B, 2]`` int64, each image's merged-token grid ``(rows, cols)``.
        received: ``[H, L]`` float32 mean attention each token receives (module docstring), or ``None``.
        keys: ``[L, Dk]`` head- and merge-averaged keys, or ``None``.
    """

    tokens: torch.Tensor
    counts: torch.Tensor
    grids: torch.Tensor
    received: torch.Tensor | None
    keys: torch.Tensor | None


class QwenTowerTap:
    """Runs ``visual`` (a ``Qwen2_5_VisionTransformerPretrainedModel``) and taps its last full-attention block.

    ``attention_unavailable`` is ``None`` when that block's attention can be read, else the reason (for errors).
    """

    def __init__(self, visual: nn.Module) -> None:
        config = getattr(visual, "config", None)
        blocks = getattr(visual, "blocks", None)
        full = list(getattr(config, "fullatt_block_indexes", None) or [])
        if config is None or blocks is None:
            raise ValueError(f"expected a Qwen2.5-VL vision tower, got {type(visual).__name__}")
        self.visual = visual
        self.merge = int(config.spatial_merge_size)
        self.unit = self.merge**2
        self.patch_size = int(config.patch_size)
        self.window_size = int(config.window_size)
        self.layer_index = max(full) if full else None
        self.attention_unavailable = self._check(blocks, full)

    def _check(self, blocks: nn.ModuleList, full: list[int]) -> str | None:
        if not full:
            return "its vision config lists no full-attention block (fullatt_block_indexes is empty)"
        if not 0 <= max(full) < len(blocks):
            return f"fullatt_block_indexes {full} name blocks outside the tower's {len(blocks)}"
        attn = getattr(blocks[max(full)], "attn", None)
        if not isinstance(getattr(attn, "qkv", None), nn.Linear) or not isinstance(getattr(attn, "num_heads", None), int):
            return f"block {max(full)} has no attn.qkv linear / num_heads to read"
        return None

    @torch.no_grad()
    def __call__(self, pixel_values: torch.Tensor, grid_thw: torch.Tensor, attention: bool = True) -> QwenFeatures:
        """pixel_values ``[P, patch_dim]`` and grid_thw ``[B, 3]`` as the image processor returns them ->
        :class:`QwenFeatures`. The keys are always read (cheap); ``attention=False`` skips the attention map
        (``received`` is ``None``), which costs one extra attention pass of the tapped block."""
        if grid_thw.ndim != 2 or grid_thw.shape[1] != 3:
            raise ValueError(f"image_grid_thw must be [B, 3], got shape {tuple(grid_thw.shape)}")
        if bool((grid_thw[:, 0] != 1).any()):
            raise ValueError(f"images must have one temporal patch (t = 1), got image_grid_thw {grid_thw.tolist()}")
        if bool(((grid_thw[:, 1:] % self.merge) != 0).any()):
            raise ValueError(f"image_grid_thw {grid_thw.tolist()} is not a multiple of the {self.merge} x {self.merge} "
                             "merge: the config does not allow this patch grid")
        tap = self.attention_unavailable is None
        captured: dict[str, object] = {}
        handles = []
        if tap:
            attn = self.visual.blocks[self.layer_index].attn
            handles.append(attn.register_forward_pre_hook(_capture_kwargs(captured), with_kwargs=True))
            handles.append(attn.qkv.register_forward_hook(_capture_output(captured)))
        try:
            tokens = self.visual(pixel_values, grid_thw=grid_thw).pooler_output
        finally:
            for handle in handles:
                handle.remove()
        counts = (grid_thw.prod(dim=1) // self.unit).long().cpu()
        grids = (grid_thw[:, 1:] // self.merge).long().cpu()
        if not tap:
            return QwenFeatures(tokens, counts, grids, None, None)
        received, keys = self._received_attention(captured, grid_thw, attention)
        return QwenFeatures(tokens, counts, grids, received, keys)

    def _received_attention(
        self, captured: dict, grid_thw: torch.Tensor, attention: bool
    ) -> tuple[torch.Tensor | None, torch.Tensor]:
        from transformers.models.qwen2_5_vl.modeling_qwen2_5_vl import apply_rotary_pos_emb_vision
        from transformers.vision_utils import get_vision_window_index

        attn = self.visual.blocks[self.layer_index].attn
        qkv = captured["qkv"]  # [S, 3 * dim], window order
        seq = qkv.shape[0]
        q, k, _ = qkv.reshape(seq, 3, attn.num_heads, -1).permute(1, 0, 2, 3).unbind(0)
        cos, sin = captured["position_embeddings"]
        q, k = apply_rotary_pos_emb_vision(q, k, cos, sin)
        window_index, _ = get_vision_window_index(grid_thw, self.merge, self.window_size, self.patch_size)
        raster = torch.argsort(window_index.to(qkv.device))  # merged token in raster order -> its window slot
        keys = k.float().mean(dim=1).reshape(seq // self.unit, self.unit, -1).mean(dim=1)[raster]
        if not attention:
            return None, keys
        received = mean_received_attention(q.float(), k.float(), captured["cu_seqlens"].long(), float(attn.scaling))
        heads = received.shape[0]
        received = received.reshape(heads, seq // self.unit, self.unit).mean(dim=2)[:, raster]
        return received, keys


def mean_received_attention(
    queries: torch.Tensor, keys: torch.Tensor, cu_seqlens: torch.Tensor, scale: float
) -> torch.Tensor:
    """For every key token, the mean over the queries of its own segment of ``softmax(q k^T * scale)``.

    queries, keys: ``[S, H, d]`` (float32); cu_seqlens: ``[n + 1]`` int64 segment bounds (one segment per image,
    attention never crosses them). Returns ``[H, S]`` float32. Queries are processed in blocks of at most
    ``CHUNK_ELEMENTS / (H * S)`` rows (a fixed tiling for memory, not a loop over tokens' logic); each block
    attends only to the key span of the segments it touches.
    """
    if queries.ndim != 3 or queries.shape != keys.shape:
        raise ValueError(f"queries and keys must both be [S, H, d], got {tuple(queries.shape)} and {tuple(keys.shape)}")
    seq, heads, _ = queries.shape
    bounds = cu_seqlens.to(queries.device)
    if int(bounds[0]) != 0 or int(bounds[-1]) != seq:
        raise ValueError(f"cu_seqlens must run from 0 to S={seq}, got {bounds.tolist()}")
    segment = torch.bucketize(torch.arange(seq, device=queries.device), bounds[1:], right=True)  # [S]
    size = (bounds[1:] - bounds[:-1])[segment].float()  # [S] tokens in each token's segment
    received = queries.new_zeros(heads, seq)
    step = max(1, CHUNK_ELEMENTS // (heads * seq))
    for start in range(0, seq, step):
        stop = min(seq, start + step)
        first, last = int(segment[start]), int(segment[stop - 1])
        lo, hi = int(bounds[first]), int(bounds[last + 1])
        logits = torch.einsum("qhd,khd->hqk", queries[start:stop], keys[lo:hi]) * scale
        same = segment[start:stop, None] == segment[None, lo:hi]
        probs = logits.masked_fill(~same, float("-inf")).softmax(dim=-1)
        received[:, lo:hi] += (probs / size[start:stop, None]).sum(dim=1)
    return received


def _capture_kwargs(store: dict):
    def hook(module: nn.Module, args: tuple, kwargs: dict) -> None:
        store["cu_seqlens"] = kwargs["cu_seqlens"]
        store["position_embeddings"] = kwargs["position_embeddings"]

    return hook


def _capture_output(store: dict):
    def hook(module: nn.Module, args: tuple, output: torch.Tensor) -> None:
        store["qkv"] = output

    return hook
