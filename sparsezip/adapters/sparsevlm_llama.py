"""SparseVLM inside a Hugging Face Llama decoder: pruned prefill plus a greedy decoding loop (methods.md 3).

HF ``generate`` assumes one sequence length shared by every layer; SparseVLM gives each layer its own, so this
runs the model's own decoder layers directly (their attention kernel, SDPA by default, is untouched) with a
:class:`LayerwiseKVCache`:

* prefill: layer ``l`` runs on all its input tokens. At a pruning layer the rater rows' attention is recomputed
  for those rows only (their queries against the layer's cached keys, softmax over the full causal row), the
  visual tokens are scored, the top ``keep`` survive in order, the best pruned ones are recycled into merged
  tokens inserted right after them, and both the layer's output and its own KV cache are cut the same way
  (merged cache entries are the group mean of the members' cached keys / values: an approximation, since those
  keys carry their old rotary positions). The surviving sequence is renumbered contiguously (v1.5) for the
  layers after it.
* decoding: every layer uses its own cache length as the new token's position.

Batch size 1 (one prompt at a time), greedy decoding.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import nn

from sparsezip.methods.sparsevlm import (
    PruningPlan,
    RecyclePlan,
    group_mean,
    plan_recycling,
    select_raters,
    split_by_score,
)


class LayerwiseKVCache:
    """A KV cache where every decoder layer has its own length. Implements the one method HF attention
    modules call, ``update(key_states, value_states, layer_idx, ...)``; keys / values: ``[1, Hkv, S_l, Dh]``."""

    def __init__(self, num_layers: int) -> None:
        self.keys: list[torch.Tensor | None] = [None] * num_layers
        self.values: list[torch.Tensor | None] = [None] * num_layers

    def update(
        self, key_states: torch.Tensor, value_states: torch.Tensor, layer_idx: int, *args: object, **kwargs: object
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Append ``[1, Hkv, s, Dh]`` states to layer ``layer_idx`` and return the layer's full K and V."""
        if self.keys[layer_idx] is not None:
            key_states = torch.cat([self.keys[layer_idx], key_states], dim=2)
            value_states = torch.cat([self.values[layer_idx], value_states], dim=2)
        self.keys[layer_idx], self.values[layer_idx] = key_states, value_states
        return key_states, value_states

    def length(self, layer_idx: int) -> int:
        """Tokens cached for layer ``layer_idx``."""
        keys = self.keys[layer_idx]
        return 0 if keys is None else keys.shape[2]


@dataclass
class SparseVLMGeneration:
    """One prompt's result. ``tokens``: generated ids (EOS included if produced); ``first_token_time``: the
    ``clock()`` reading when the first token was chosen; ``visual_tokens_per_layer``: visual tokens in each
    layer's cache after prefill; ``counts_after_pruning``: visual tokens after each pruning layer;
    ``prefill_tokens_per_layer``: sequence length each layer processed during prefill."""

    tokens: list[int]
    first_token_time: float
    visual_tokens_per_layer: list[int]
    counts_after_pruning: list[int]
    prefill_tokens_per_layer: list[int]


def check_llama_like(decoder: nn.Module) -> None:
    """Raise ``ValueError`` unless ``decoder`` looks like a HF Llama decoder (what this module drives)."""
    needed = ("embed_tokens", "layers", "norm", "rotary_emb")
    missing = [name for name in needed if not hasattr(decoder, name)]
    layer = decoder.layers[0] if hasattr(decoder, "layers") and len(decoder.layers) else None
    if layer is None or not all(hasattr(layer, n) for n in ("self_attn", "input_layernorm")):
        missing.append("layers[i].self_attn / input_layernorm")
    elif not all(hasattr(layer.self_attn, n) for n in ("q_proj", "head_dim", "scaling", "num_key_value_groups")):
        missing.append("self_attn.q_proj / head_dim / scaling / num_key_value_groups")
    if missing:
        raise ValueError(
            f"sparsevlm runs inside Llama-architecture decoders; {type(decoder).__name__} lacks {', '.join(missing)}"
        )


def _rotate_half(x: torch.Tensor) -> torch.Tensor:
    half = x.shape[-1] // 2
    return torch.cat((-x[..., half:], x[..., :half]), dim=-1)


def rater_attention(
    attention: nn.Module,
    normed_rows: torch.Tensor,
    cos: torch.Tensor,
    sin: torch.Tensor,
    keys: torch.Tensor,
    row_index: torch.Tensor,
) -> torch.Tensor:
    """Softmax attention probabilities of a few query rows over all keys of one Llama attention layer.

    normed_rows: ``[1, R, D]`` the rows' layer input after ``input_layernorm``; cos / sin: ``[1, R, Dh]`` their
    rotary embedding; keys: ``[1, Hkv, S, Dh]`` the layer's cached (rotated) keys; row_index: ``[R]`` each row's
    index in the sequence (causal: it sees keys ``0..row_index``). Returns ``[H, R, S]`` float32.
    """
    _, r, _ = normed_rows.shape
    q = attention.q_proj(normed_rows).view(1, r, -1, attention.head_dim).transpose(1, 2)  # [1, H, R, Dh]
    q = q * cos.unsqueeze(1) + _rotate_half(q) * sin.unsqueeze(1)
    k = keys.repeat_interleave(attention.num_key_value_groups, dim=1)  # [1, H, S, Dh]
    logits = (q.float() @ k.float().transpose(-1, -2)) * attention.scaling
    visible = torch.arange(k.shape[2], device=k.device)[None, :] <= row_index[:, None]  # [R, S]
    return logits.masked_fill(~visible, float("-inf")).softmax(dim=-1)[0]


def _causal_mask(attn_implementation: str, length: int, like: torch.Tensor) -> torch.Tensor | None:
    # SDPA / flash kernels apply causality themselves when no mask is given (and are fastest that way);
    # eager attention needs an explicit additive mask.
    if attn_implementation != "eager":
        return None
    future = torch.ones(length, length, dtype=torch.bool, device=like.device).triu(1)
    mask = torch.zeros(length, length, dtype=like.dtype, device=like.device)
    return mask.masked_fill(future, torch.finfo(like.dtype).min)[None, None]


def _cut(states: torch.Tensor, dim: int, start: int, count: int, kept: torch.Tensor, merged: torch.Tensor) -> torch.Tensor:
    """Replace the ``count`` visual entries at ``start`` along ``dim`` by ``kept`` ones followed by ``merged``."""
    visual = states.narrow(dim, start, count)
    prefix, suffix = states.narrow(dim, 0, start), states.narrow(dim, start + count, states.shape[dim] - start - count)
    return torch.cat([prefix, visual.index_select(dim, kept), merged, suffix], dim=dim)


def _merge_along(
    states: torch.Tensor, dim: int, start: int, pruned: torch.Tensor, recycle: RecyclePlan
) -> torch.Tensor:
    """The merged tokens: group means of the recycled pruned visual entries of ``states`` along ``dim``."""
    members = states.index_select(dim, start + pruned[recycle.members]).movedim(dim, 0)
    return group_mean(members, recycle.assignment, recycle.num_groups).movedim(0, dim)


@torch.inference_mode()
def generate_sparsevlm(
    model: nn.Module,
    inputs_embeds: torch.Tensor,
    visual_start: int,
    num_visual: int,
    plan: PruningPlan,
    *,
    max_new_tokens: int,
    eos_token_ids: set[int],
    clock: Callable[[], float],
) -> SparseVLMGeneration:
    """Greedy generation with SparseVLM pruning for one prompt.

    model: a ``LlavaForConditionalGeneration`` (its ``model.language_model`` Llama decoder and ``lm_head`` are
    used); inputs_embeds: ``[1, S, D]`` the layer-0 input with the visual tokens at
    ``[visual_start, visual_start + num_visual)`` and the text after them; ``clock`` returns a synchronised time.
    """
    decoder, lm_head = model.model.language_model, model.lm_head
    check_llama_like(decoder)
    if inputs_embeds.ndim != 3 or inputs_embeds.shape[0] != 1:
        raise ValueError(f"sparsevlm runs one prompt at a time: inputs_embeds must be [1, S, D], got {tuple(inputs_embeds.shape)}")
    if max_new_tokens < 1:
        raise ValueError(f"max_new_tokens must be >= 1, got {max_new_tokens}")
    layers = decoder.layers[: decoder.config.num_hidden_layers]
    if plan.layers[-1] >= len(layers):
        raise ValueError(f"pruning layer {plan.layers[-1]} does not exist in a {len(layers)}-layer decoder")
    attn_impl = decoder.config._attn_implementation
    text_start = visual_start + num_visual
    if text_start >= inputs_embeds.shape[1]:
        raise ValueError("sparsevlm needs prompt text after the image (its raters), found none")
    raters = select_raters(inputs_embeds[0, visual_start:text_start], inputs_embeds[0, text_start:])
    keep_at = dict(zip(plan.layers, plan.keep, strict=True))

    cache = LayerwiseKVCache(len(layers))
    hidden = inputs_embeds
    visual_per_layer: list[int] = []
    counts_after: list[int] = []
    prefill_per_layer: list[int] = []
    positions, rope, mask = None, None, None
    for index, layer in enumerate(layers):
        if positions is None or positions.shape[1] != hidden.shape[1]:  # contiguous renumbering after a prune
            positions = torch.arange(hidden.shape[1], device=hidden.device)[None]
            rope = decoder.rotary_emb(hidden, position_ids=positions)
            mask = _causal_mask(attn_impl, hidden.shape[1], hidden)
        layer_input = hidden
        hidden = layer(hidden, attention_mask=mask, position_ids=positions, cache=cache, use_cache=True,
                       position_embeddings=rope)
        prefill_per_layer.append(layer_input.shape[1])
        if index in keep_at and keep_at[index] < num_visual:
            rows = text_start + raters
            probs = rater_attention(
                layer.self_attn, layer.input_layernorm(layer_input[:, rows]), rope[0][:, rows], rope[1][:, rows],
                cache.keys[index], rows,
            )
            scores = probs.mean(dim=(0, 1))[visual_start:text_start]
            kept, pruned = split_by_score(scores, keep_at[index])
            recycle = plan_recycling(hidden[0, visual_start + pruned], scores[pruned])
            merged = _merge_along(hidden, 1, visual_start, pruned, recycle)
            hidden = _cut(hidden, 1, visual_start, num_visual, kept, merged)
            for store in (cache.keys, cache.values):
                merged_kv = _merge_along(store[index], 2, visual_start, pruned, recycle)
                store[index] = _cut(store[index], 2, visual_start, num_visual, kept, merged_kv)
            num_visual = kept.numel() + recycle.num_groups
            text_start = visual_start + num_visual
        if index in keep_at:
            counts_after.append(num_visual)
        visual_per_layer.append(num_visual)

    next_token = lm_head(decoder.norm(hidden[:, -1:])).argmax(dim=-1)  # [1, 1]
    first_token_time = clock()
    tokens = [int(next_token)]
    while len(tokens) < max_new_tokens and tokens[-1] not in eos_token_ids:
        hidden = decoder.embed_tokens(next_token)
        for index, layer in enumerate(layers):
            position = torch.tensor([[cache.length(index)]], device=hidden.device)  # each layer's own length
            hidden = layer(hidden, attention_mask=None, position_ids=position, cache=cache, use_cache=True,
                           position_embeddings=decoder.rotary_emb(hidden, position_ids=position))
        next_token = lm_head(decoder.norm(hidden)).argmax(dim=-1)
        tokens.append(int(next_token))
    return SparseVLMGeneration(
        tokens=tokens,
        first_token_time=first_token_time,
        visual_tokens_per_layer=visual_per_layer,
        counts_after_pruning=counts_after,
        prefill_tokens_per_layer=prefill_per_layer,
    )
