"""The primitives of the layer-wise loop (:mod:`sparsezip.adapters.layerwise`): a KV cache where every layer has
its own left-padded length, the attention masks for it, and attention rows recomputed from a layer's cached
keys (so the layer itself keeps its fast kernel)."""

from __future__ import annotations

import torch
from torch import nn


class LayerwiseKVCache:
    """A KV cache where every decoder layer has its own (left-padded) length. Implements the one method HF
    attention modules call, ``update(key_states, value_states, layer_idx, ...)``.

    Per layer: ``keys`` / ``values`` ``[B, Hkv, S_l, Dh]``, ``real`` ``[B, S_l]`` bool (False = padding) and
    ``visual`` ``[B, S_l]`` bool (which prefill entries are visual tokens), kept by the loop.
    """

    def __init__(self, num_layers: int) -> None:
        self.keys: list[torch.Tensor | None] = [None] * num_layers
        self.values: list[torch.Tensor | None] = [None] * num_layers
        self.real: list[torch.Tensor | None] = [None] * num_layers
        self.visual: list[torch.Tensor | None] = [None] * num_layers

    def update(
        self, key_states: torch.Tensor, value_states: torch.Tensor, layer_idx: int, *args: object, **kwargs: object
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Append ``[B, Hkv, s, Dh]`` states to layer ``layer_idx`` and return the layer's full K and V."""
        if self.keys[layer_idx] is not None:
            key_states = torch.cat([self.keys[layer_idx], key_states], dim=2)
            value_states = torch.cat([self.values[layer_idx], value_states], dim=2)
        self.keys[layer_idx], self.values[layer_idx] = key_states, value_states
        return key_states, value_states

    def tokens(self, layer_idx: int) -> torch.Tensor:
        """``[B]`` int64 real tokens cached for layer ``layer_idx``."""
        real = self.real[layer_idx]
        if real is None:
            raise ValueError(f"layer {layer_idx} has no cache yet")
        return real.sum(dim=1)


def check_llama_like(decoder: nn.Module) -> None:
    """Raise ``ValueError`` unless ``decoder`` looks like a HF Llama decoder (what this module drives)."""
    needed = ("embed_tokens", "layers", "norm", "rotary_emb")
    missing = [name for name in needed if not hasattr(decoder, name)]
    layer = decoder.layers[0] if hasattr(decoder, "layers") and len(decoder.layers) else None
    if layer is None or not all(hasattr(layer, n) for n in ("self_attn", "input_layernorm")):
        missing.append("layers[i].self_attn / input_layernorm")
    elif not all(hasattr(layer.self_attn, n) for n in ("q_proj", "k_proj", "head_dim", "scaling",
                                                       "num_key_value_groups")):
        missing.append("self_attn.q_proj / k_proj / head_dim / scaling / num_key_value_groups")
    if missing:
        raise ValueError(
            f"in-LLM methods run inside Llama-architecture decoders; {type(decoder).__name__} lacks {', '.join(missing)}"
        )


def check_window(layers: nn.ModuleList, longest: int) -> None:
    """Refuse decoder layers with sliding-window attention whose window is shorter than ``longest`` tokens (the
    loop's masks are plainly causal; a window that never bites changes nothing)."""
    windows = {getattr(layer.self_attn, "sliding_window", None) for layer in layers} - {None}
    short = sorted(w for w in windows if isinstance(w, int) and w < longest)
    if short:
        raise ValueError(f"in-LLM pruning uses plain causal masks, but this decoder has sliding-window attention "
                         f"(window {short[0]} < {longest} tokens of prompt and answer)")


def rotate_half(x: torch.Tensor) -> torch.Tensor:
    """Llama's rotary helper: ``[..., Dh] -> [..., Dh]``, the halves swapped and the second negated."""
    half = x.shape[-1] // 2
    return torch.cat((-x[..., half:], x[..., :half]), dim=-1)


def query_attention(
    attention: nn.Module,
    query_rows: torch.Tensor,
    cos: torch.Tensor,
    sin: torch.Tensor,
    keys: torch.Tensor,
    key_real: torch.Tensor,
    row_index: torch.Tensor,
) -> torch.Tensor:
    """Softmax attention probabilities of a few query rows over all keys of one Llama attention layer.

    query_rows: ``[B, R, D]`` the rows' layer input after ``input_layernorm``; cos / sin: ``[B, R, Dh]`` their
    rotary embedding; keys: ``[B, Hkv, S, Dh]`` the layer's (rotated) keys; key_real: ``[B, S]`` bool;
    row_index: ``[B, R]`` each row's sequence index (causal: it sees real keys ``0..row_index``), ``-1`` for a
    padding row (its values are unspecified but finite). Returns ``[B, H, R, S]`` float32.
    """
    b, r, _ = query_rows.shape
    q = attention.q_proj(query_rows).view(b, r, -1, attention.head_dim).transpose(1, 2)  # [B, H, R, Dh]
    q = q * cos.unsqueeze(1) + rotate_half(q) * sin.unsqueeze(1)
    k = keys.repeat_interleave(attention.num_key_value_groups, dim=1)  # [B, H, S, Dh]
    logits = (q.float() @ k.float().transpose(-1, -2)) * attention.scaling
    columns = torch.arange(k.shape[2], device=k.device)
    visible = (columns[None, None, :] <= row_index[:, :, None]) & key_real[:, None, :]  # [B, R, S]
    visible = torch.where((row_index >= 0)[:, :, None], visible, key_real[:, None, :])
    return logits.masked_fill(~visible[:, None], float("-inf")).softmax(dim=-1)


def prefill_mask(real: torch.Tensor, dtype: torch.dtype, attn_implementation: str) -> torch.Tensor | None:
    """Additive ``[B, 1, S, S]`` mask: causal, padding keys hidden (a padding query sees itself, so no row of
    the softmax is empty). ``None`` when nothing is padded and the kernel applies causality itself."""
    padded = not bool(real.all())
    if not padded and attn_implementation != "eager":
        return None  # SDPA / flash kernels are causal without a mask, and fastest that way
    if padded and attn_implementation not in ("eager", "sdpa"):
        raise ValueError(
            f"batched in-LLM pruning with padding needs 'sdpa' or 'eager' attention, got {attn_implementation!r}"
        )
    s = real.shape[1]
    index = torch.arange(s, device=real.device)
    allowed = (index[None, :] <= index[:, None])[None] & (real[:, None, :] | (index[None, :] == index[:, None])[None])
    mask = torch.zeros(allowed.shape, dtype=dtype, device=real.device)
    return mask.masked_fill(~allowed, torch.finfo(dtype).min)[:, None]


def decode_mask(cached_real: torch.Tensor, dtype: torch.dtype, attn_implementation: str) -> torch.Tensor | None:
    """Additive ``[B, 1, 1, S + 1]`` mask for one new token over a layer's cache plus itself; ``None`` when the
    cache holds no padding."""
    if bool(cached_real.all()):
        return None
    if attn_implementation not in ("eager", "sdpa"):
        raise ValueError(
            f"batched in-LLM pruning with padding needs 'sdpa' or 'eager' attention, got {attn_implementation!r}"
        )
    allowed = torch.cat([cached_real, cached_real.new_ones(cached_real.shape[0], 1)], dim=1)
    mask = torch.zeros(allowed.shape, dtype=dtype, device=allowed.device)
    return mask.masked_fill(~allowed, torch.finfo(dtype).min)[:, None, None]
