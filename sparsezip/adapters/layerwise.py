"""Layer-wise prefill and greedy decoding with a per-layer KV cache: the loop every in-LLM method plugs into.

HF ``generate`` assumes one sequence length shared by every layer; in-LLM pruning gives each layer its own.
This module runs the model's own decoder layers directly (nothing is patched; their attention kernel, SDPA by
default, is untouched) on a left-padded batch, with a :class:`LayerwiseKVCache`:

* prefill: layer ``l`` runs on all its input tokens and caches them. After each of the method's
  ``pruning_layers`` the method gets a :class:`~sparsezip.methods.base.LayerState` and returns a
  :class:`~sparsezip.methods.base.LayerDecision`; the surviving tokens, with any merged ones inserted right
  after each row's kept visual tokens, are re-packed left-padded (rows may now differ in length) for the layers
  after it. Position ids follow the method's ``position_policy`` (:mod:`sparsezip.adapters.layer_positions`:
  1-D RoPE and Qwen2.5-VL's M-RoPE).
* decoding: every row's new token runs through every layer against that layer's own cache; its position is
  one past the largest position id in that layer's cache (``"renumber"`` on 1-D RoPE: the layer's per-row cache
  length; ``"original"``: the unpruned continuation). Rows that produced EOS keep running (their later tokens
  are dropped) until every row is done or ``max_new_tokens``.

Decoders: HF Llama-architecture ones (``embed_tokens``, ``layers``, ``norm``, ``rotary_emb``; attention with
``q_proj`` / ``k_proj``, biases allowed, grouped-query attention read from ``num_key_value_groups``): Llama and
Mistral (LLaVA-1.5, LLaVA-NeXT) and Qwen2.5-VL's text model, whose rotary embedding takes ``[3, B, S]`` M-RoPE
ids. Sliding-window layers are refused when the window could matter.

Exactness: with a method that keeps everything, the loop reproduces HF ``generate``'s greedy tokens and logits
on each family (tested).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from itertools import pairwise

import torch
from torch import nn

from sparsezip.adapters.layer_cache import (
    LayerwiseKVCache,
    check_llama_like,
    check_window,
    decode_mask,
    prefill_mask,
    query_attention,
    rotate_half,
)
from sparsezip.adapters.layer_positions import decode_positions, initial_positions, renumbered
from sparsezip.methods.base import LayerDecision, LayerPruner, LayerState
from sparsezip.methods.llm_budget import BudgetPlan
from sparsezip.selection import gather_tokens, mask_to_indices

# Segment of every sequence position: prompt text before the image, the image's visual tokens, text after it.
BEFORE, VISUAL, AFTER = 0, 1, 2


@dataclass
class LayerwiseGeneration:
    """A batch's result; every list holds one entry per row.

    Attributes:
        tokens: generated ids, up to and including the first EOS.
        first_token_time: the ``clock()`` reading when the first tokens were chosen.
        visual_tokens_per_layer: ``[B][L]`` visual entries in each layer's KV cache after prefill.
        cache_tokens_per_layer: ``[B][L]`` all entries in each layer's KV cache after prefill.
        prefill_tokens_per_layer: ``[B][L]`` tokens each layer processed during prefill.
        counts_after_pruning: ``[B][P]`` visual tokens leaving each of the method's pruning layers.
        budget: the method's :class:`~sparsezip.methods.llm_budget.BudgetPlan` on this model (nominal count,
            planned per-layer counts, layer-averaged equivalent), or ``None`` if the method gives none.
        logits: ``[B, T, V]`` the next-token logits of every step (``T`` = steps run), with ``record_logits``;
            else ``None``.
    """

    tokens: list[list[int]]
    first_token_time: float
    visual_tokens_per_layer: list[list[int]]
    cache_tokens_per_layer: list[list[int]]
    prefill_tokens_per_layer: list[list[int]]
    counts_after_pruning: list[list[int]]
    budget: BudgetPlan | None = None
    logits: torch.Tensor | None = None

    @property
    def nominal_visual_tokens(self) -> float | None:
        """The method's nominal ("N-token") count of this run, ``None`` if it gives none."""
        return None if self.budget is None else self.budget.nominal


def segments(real: torch.Tensor, visual_mask: torch.Tensor) -> torch.Tensor:
    """``[B, S]`` int64 segment of every position (:data:`BEFORE`, :data:`VISUAL`, :data:`AFTER`; padding is
    :data:`BEFORE`), checking that each row's visual tokens form one contiguous run."""
    visual = visual_mask & real
    seen = visual.long().cumsum(dim=1)
    count = visual.sum(dim=1)
    if bool((count == 0).any()):
        raise ValueError(f"every row needs visual tokens, got counts {count.tolist()}")
    first = torch.argmax(visual.long(), dim=1)
    last = visual.shape[1] - 1 - torch.argmax(visual.long().flip(1), dim=1)
    if bool((last - first + 1 != count).any()):
        raise ValueError("each row's visual tokens must form one contiguous run (one image per prompt)")
    tags = torch.where(visual, VISUAL, torch.where(real & (seen > 0), AFTER, BEFORE))
    return tags.long()


def repack_index(
    keep: torch.Tensor, insert_count: torch.Tensor, insert_at: torch.Tensor, num_inserted: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """Left-padded layout of the kept positions with inserted ones, as a gather index.

    keep: ``[B, S]`` bool positions that survive; insert_count: ``[B]`` how many of ``num_inserted`` slots each
    row inserts; insert_at: ``[B]`` the position the inserted slots go right before (in slot order). Returns
    ``(index [B, S'], real [B, S'])``: ``index`` points into the concatenation of the ``S`` positions and the
    ``num_inserted`` slots; ``S'`` is the longest row, shorter rows are padded on the left (``real`` False there).
    """
    b, s = keep.shape
    g = num_inserted
    device = keep.device
    # Sort keys: position j -> j (g + 1) + g; slot m of row b -> insert_at[b] (g + 1) + m, i.e. just before
    # position insert_at[b] and after every earlier position. Dropped entries get -1 and sort to the left.
    key = torch.cat([
        (torch.arange(s, device=device) * (g + 1) + g).expand(b, s),
        insert_at[:, None] * (g + 1) + torch.arange(g, device=device)[None, :],
    ], dim=1)
    valid = torch.cat([keep, torch.arange(g, device=device)[None, :] < insert_count[:, None]], dim=1)
    order = torch.sort(torch.where(valid, key, -1), dim=1, stable=True).indices
    lengths = valid.sum(dim=1)
    width = int(lengths.max())
    index = order[:, order.shape[1] - width:]
    real = torch.arange(width, device=device)[None, :] >= (width - lengths)[:, None]
    return index, real


def _gather_seq(x: torch.Tensor, index: torch.Tensor) -> torch.Tensor:
    """``x [B, S, ...]`` at ``index [B, S']`` along dim 1."""
    shape = (*index.shape, *x.shape[2:])
    return x.gather(1, index.view(*index.shape, *([1] * (x.ndim - 2))).expand(shape))


class _Prefill:
    """The prefill's running state: the sequence entering the next layer and its bookkeeping (``gridded``: the
    visual tokens that came with the image, i.e. not merged ones)."""

    def __init__(self, hidden: torch.Tensor, real: torch.Tensor, tags: torch.Tensor,
                 rope_positions: torch.Tensor | None) -> None:
        self.hidden, self.real, self.tags = hidden, real, tags
        self.ids = initial_positions(real, rope_positions)
        self.gridded = tags == VISUAL

    @property
    def positions(self) -> torch.Tensor:
        """``[B, S]`` the 1-D sequence positions (``LayerState.positions``)."""
        return self.ids.text

    @property
    def visual(self) -> torch.Tensor:
        return (self.tags == VISUAL) & self.real

    def indices(self) -> tuple[torch.Tensor, torch.Tensor]:
        """``(visual_index [B, V], text_index [B, T])``, ascending, ``-1`` padded."""
        return mask_to_indices(self.visual), mask_to_indices((self.tags == AFTER) & self.real)


def _check_decision(decision: LayerDecision, state: LayerState, method: LayerPruner, layer: int) -> None:
    where = f"method {method.name!r} at layer {layer}"
    if not isinstance(decision, LayerDecision):
        raise ValueError(f"{where}: prune returned {type(decision).__name__}, expected a LayerDecision")
    keep = decision.keep
    if keep.dtype != torch.bool or keep.shape != state.visual_index.shape:
        raise ValueError(f"{where}: keep must be bool {tuple(state.visual_index.shape)}, got {keep.dtype} "
                         f"{tuple(keep.shape)}")
    if bool((keep & ~state.visual_valid).any()):
        raise ValueError(f"{where}: keep is True at padding columns of visual_index")
    merged = decision.merged
    if merged is None:
        return
    b, _, d = state.hidden.shape
    if merged.ndim != 3 or merged.shape[0] != b or merged.shape[2] != d:
        raise ValueError(f"{where}: merged must be [B={b}, G, D={d}], got {tuple(merged.shape)}")
    if method.position_policy == "original" and merged.shape[1] > 0:
        raise ValueError(f"{where}: position_policy 'original' cannot place merged tokens")
    count = decision.merged_count
    if count is not None and (count.shape != (b,) or bool(((count < 0) | (count > merged.shape[1])).any())):
        raise ValueError(f"{where}: merged_count must be [B={b}] in [0, {merged.shape[1]}], got {count.tolist()}")


def _apply(run: _Prefill, decision: LayerDecision, visual_index: torch.Tensor, policy: str) -> None:
    """Cut ``run`` (the sequence entering the next layer) to the decision's survivors; the pruning layer's own
    cache is untouched (it keeps the full sequence)."""
    b, s, _ = run.hidden.shape
    # Visual columns -> sequence positions; padding columns of visual_index write into a spare last column.
    target = torch.where(visual_index >= 0, visual_index, s)
    dropped = torch.zeros(b, s + 1, dtype=torch.bool, device=run.real.device)
    dropped.scatter_(1, target, (visual_index >= 0) & ~decision.keep)
    keep = run.real & ~dropped[:, :s]
    merged = decision.merged
    g = 0 if merged is None else merged.shape[1]
    count = decision.merged_count
    if count is None:  # every slot of merged is real (none when there is no merged)
        count = torch.full((b,), g, dtype=torch.long, device=keep.device)
    insert_at = s - ((run.tags == AFTER) & run.real).sum(dim=1)  # first text position after the image
    index, real = repack_index(keep, count, insert_at, g)
    with_merged = run.hidden if merged is None else torch.cat([run.hidden, merged.to(run.hidden.dtype)], dim=1)
    tags = torch.cat([run.tags, torch.full((b, g), VISUAL, dtype=run.tags.dtype, device=run.tags.device)], dim=1)
    gridded = torch.cat([run.gridded, run.gridded.new_zeros(b, g)], dim=1)
    # Merged slots borrow position ids from column 0 until they are renumbered ("original" has none).
    ids = run.ids.gather(torch.where(index < s, index, 0))
    run.hidden, run.real, run.tags = _gather_seq(with_merged, index), real, _gather_seq(tags, index)
    run.gridded = _gather_seq(gridded, index)
    run.ids = ids if policy == "original" else renumbered(ids, real, run.tags == BEFORE, run.gridded & real)


def _state(layer_index: int, num_layers: int, num_patches: int, run: _Prefill, layer_input: torch.Tensor,
           layers: nn.ModuleList, rope: tuple[torch.Tensor, torch.Tensor], cache: LayerwiseKVCache | None,
           memo: object, final_norm: nn.Module) -> LayerState:
    """The :class:`LayerState` after layer ``layer_index`` (``-1``: before layer 0), with its attention rows."""
    visual_index, text_index = run.indices()
    keys = values = attention = next_attention = None
    if layer_index >= 0:
        keys, values = cache.keys[layer_index], cache.values[layer_index]
        real, hidden = run.real, run.hidden

        def rows_of(module: nn.Module, source: torch.Tensor, layer_keys: torch.Tensor,
                    rows: torch.Tensor) -> torch.Tensor:
            safe = rows.clamp_min(0)
            normed = module.input_layernorm(gather_tokens(source, safe))
            cos, sin = gather_tokens(rope[0], safe), gather_tokens(rope[1], safe)
            return query_attention(module.self_attn, normed, cos, sin, layer_keys, real, rows)

        def attention(rows: torch.Tensor) -> torch.Tensor:
            return rows_of(layers[layer_index], layer_input, keys, rows)

        if layer_index + 1 < num_layers:
            nxt = layers[layer_index + 1]

            def next_attention(rows: torch.Tensor) -> torch.Tensor:
                k = nxt.self_attn.k_proj(nxt.input_layernorm(hidden))
                k = k.view(*k.shape[:2], -1, nxt.self_attn.head_dim).transpose(1, 2)  # [B, Hkv, S, Dh]
                cos, sin = rope[0].unsqueeze(1), rope[1].unsqueeze(1)
                return rows_of(nxt, hidden, k * cos + rotate_half(k) * sin, rows)

    return LayerState(
        layer_index=layer_index, num_layers=num_layers, num_patches=num_patches, hidden=run.hidden,
        layer_input=layer_input, keys=keys, values=values, real=run.real, positions=run.positions,
        visual_index=visual_index, text_index=text_index, attention=attention, next_attention=next_attention,
        memo=memo, final_norm=final_norm,
    )


@torch.inference_mode()
def generate_layerwise(
    decoder: nn.Module,
    lm_head: nn.Module,
    inputs_embeds: torch.Tensor,
    attention_mask: torch.Tensor,
    visual_mask: torch.Tensor,
    method: LayerPruner,
    *,
    num_patches: int,
    max_new_tokens: int,
    eos_token_ids: set[int],
    clock: Callable[[], float],
    rope_positions: torch.Tensor | None = None,
    record_logits: bool = False,
) -> LayerwiseGeneration:
    """Greedy generation for a left-padded batch with ``method`` pruning inside ``decoder``.

    decoder: a HF Llama-architecture decoder (``embed_tokens``, ``layers``, ``norm``, ``rotary_emb``; module
    docstring); lm_head: its output projection; inputs_embeds: ``[B, S, D]`` layer-0 input; attention_mask:
    ``[B, S]`` (1 = real, padding on the left); visual_mask: ``[B, S]`` bool, each row's one contiguous run of
    visual tokens; num_patches: visual tokens per image before pruning (for the method's schedule; on families
    whose images differ, the nominal image's, and methods cap their kept counts at each row's own); ``clock``
    returns a synchronised time; rope_positions: ``[3, B, S]`` M-RoPE ids of the inputs (Qwen2.5-VL's
    ``get_rope_index``), ``None`` for 1-D RoPE; record_logits: keep every step's logits (tests).
    """
    check_llama_like(decoder)
    if not isinstance(method, LayerPruner):
        raise ValueError(f"method {getattr(method, 'name', method)!r} is not a LayerPruner")
    if inputs_embeds.ndim != 3 or attention_mask.shape != inputs_embeds.shape[:2] or \
            visual_mask.shape != inputs_embeds.shape[:2]:
        raise ValueError(f"need inputs_embeds [B, S, D] with attention_mask and visual_mask [B, S], got "
                         f"{tuple(inputs_embeds.shape)}, {tuple(attention_mask.shape)}, {tuple(visual_mask.shape)}")
    if max_new_tokens < 1:
        raise ValueError(f"max_new_tokens must be >= 1, got {max_new_tokens}")
    real = attention_mask.bool()
    if not bool(real[:, -1].all()):
        raise ValueError("rows must be left-padded (every row's last position a real token)")
    layers = decoder.layers[: decoder.config.num_hidden_layers]
    check_window(layers, inputs_embeds.shape[1] + max_new_tokens)
    num_layers = len(layers)
    acting = tuple(method.pruning_layers(num_patches, num_layers))
    increasing = all(a < b for a, b in pairwise(acting))
    if not increasing or any(not 0 <= layer < num_layers for layer in acting):
        raise ValueError(f"method {method.name!r}: pruning layers {acting} must be strictly increasing in "
                         f"[0, {num_layers})")
    attn_impl = decoder.config._attn_implementation
    run = _Prefill(inputs_embeds, real, segments(real, visual_mask.bool()), rope_positions)
    rope = decoder.rotary_emb(run.hidden, position_ids=run.ids.rope)
    memo = method.begin(_state(-1, num_layers, num_patches, run, run.hidden, layers, rope, None, None, decoder.norm))

    cache = LayerwiseKVCache(num_layers)
    prefill_tokens, counts_after = [], []
    next_id: list[torch.Tensor] = []  # per layer: [B] one past the largest position id in its cache
    mask = prefill_mask(run.real, run.hidden.dtype, attn_impl)
    for index, layer in enumerate(layers):
        layer_input = run.hidden
        run.hidden = layer(layer_input, attention_mask=mask, position_ids=run.positions, cache=cache,
                           use_cache=True, position_embeddings=rope)
        cache.real[index], cache.visual[index] = run.real, run.visual
        next_id.append(run.ids.largest(run.real) + 1)
        prefill_tokens.append(run.real.sum(dim=1))
        if index not in acting:
            continue
        state = _state(index, num_layers, num_patches, run, layer_input, layers, rope, cache, memo, decoder.norm)
        decision = method.prune(index, state)
        _check_decision(decision, state, method, index)
        _apply(run, decision, state.visual_index, method.position_policy)
        counts_after.append(run.visual.sum(dim=1))
        rope = decoder.rotary_emb(run.hidden, position_ids=run.ids.rope)
        mask = prefill_mask(run.real, run.hidden.dtype, attn_impl)

    # What each layer's cache holds after prefill, read off the cached keys (a pruning layer keeps its whole
    # input: pruning shortens only the sequence that leaves it).
    if any(cache.keys[i].shape[2] != cache.real[i].shape[1] for i in range(num_layers)):
        raise ValueError("layer-wise cache out of step with its padding masks (a layer cached an unexpected length)")
    cached = [cache.keys[i].shape[2] - (~cache.real[i]).sum(dim=1) for i in range(num_layers)]
    cached_visual = [v.sum(dim=1) for v in cache.visual]

    logits = lm_head(decoder.norm(run.hidden[:, -1:]))
    next_token = logits.argmax(dim=-1)  # [B, 1]
    first_token_time = clock()
    generated, recorded = [next_token], [logits.float()] if record_logits else []
    eos = torch.tensor(sorted(eos_token_ids), dtype=next_token.dtype, device=next_token.device)
    done = torch.isin(next_token[:, 0], eos)
    for step in range(1, max_new_tokens):
        if bool(done.all()):
            break
        hidden = decoder.embed_tokens(next_token)
        for index, layer in enumerate(layers):
            position = decode_positions(next_id[index], step, run.ids.mrope)
            step_mask = decode_mask(cache.real[index], hidden.dtype, attn_impl)
            hidden = layer(hidden, attention_mask=step_mask, position_ids=position.text, cache=cache, use_cache=True,
                           position_embeddings=decoder.rotary_emb(hidden, position_ids=position.rope))
            cache.real[index] = torch.cat([cache.real[index], cache.real[index].new_ones(hidden.shape[0], 1)], dim=1)
        logits = lm_head(decoder.norm(hidden))
        next_token = logits.argmax(dim=-1)
        generated.append(next_token)
        if record_logits:
            recorded.append(logits.float())
        done |= torch.isin(next_token[:, 0], eos)

    tokens = torch.cat(generated, dim=1).tolist()
    per_row = [[int(t) for t in row] for row in tokens]
    trimmed = [row[: next((i + 1 for i, t in enumerate(row) if t in eos_token_ids), len(row))] for row in per_row]

    def per_layer(values: list[torch.Tensor]) -> list[list[int]]:
        return torch.stack(values, dim=1).tolist() if values else [[] for _ in range(real.shape[0])]

    return LayerwiseGeneration(
        tokens=trimmed,
        first_token_time=first_token_time,
        visual_tokens_per_layer=per_layer(cached_visual),
        cache_tokens_per_layer=per_layer(cached),
        prefill_tokens_per_layer=per_layer(prefill_tokens),
        counts_after_pruning=per_layer(counts_after),
        budget=method.budget_plan(num_patches, num_layers),
        logits=torch.cat(recorded, dim=1) if record_logits else None,
    )
