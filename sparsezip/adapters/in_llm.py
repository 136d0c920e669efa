"""In-LLM methods (stage ``"llm"``, a :class:`~sparsezip.methods.base.LayerPruner`) on the LLaVA-NeXT and
Qwen2.5-VL adapters: the image goes to the LLM uncompressed (the adapter's ``none`` path, which reproduces the
plain model), then the generic batched layer-wise loop (:mod:`sparsezip.adapters.layerwise`) runs the family's own
decoder with the method pruning between layers. What the loop returns becomes one
:class:`~sparsezip.adapters.api.GenerationOutput` per row, as LLaVA-1.5's adapter reports it: the visual tokens
in every layer's KV cache and their layer average, prefill FLOPs over the per-layer sequence lengths.

Which tokens are "visual" is the family's placeholder run: LLaVA-NeXT's holds the base view, the unpadded tiles
and the image-newline tokens (the newlines are visual tokens to the method, as in the field's NeXT ports that
prune the LLM's image run), Qwen2.5-VL's the merger's tokens.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING

import torch

from sparsezip.adapters.api import GenerationOutput
from sparsezip.adapters.common import prefill_flops
from sparsezip.methods.base import CompressionMethod, LayerPruner

if TYPE_CHECKING:
    from torch import nn

    from sparsezip.adapters.layerwise import LayerwiseGeneration


def check_in_llm(method: CompressionMethod, num_beams: int) -> LayerPruner:
    """``method`` as a :class:`LayerPruner` with greedy decoding; ``ValueError`` otherwise."""
    if not isinstance(method, LayerPruner):
        raise ValueError(f"method {method.name!r} declares stage 'llm' but is not a LayerPruner, so it has no "
                         "in-LLM implementation")
    if num_beams != 1:
        raise ValueError(f"method {method.name!r} prunes inside the LLM with greedy decoding only; got "
                         f"num_beams={num_beams}")
    return method


def run_in_llm(
    decoder: nn.Module,
    lm_head: nn.Module,
    method: LayerPruner,
    *,
    inputs_embeds: torch.Tensor,
    attention_mask: torch.Tensor,
    visual_mask: torch.Tensor,
    num_patches: int,
    max_new_tokens: int,
    eos: set[int],
    clock: Callable[[], float],
    rope_positions: torch.Tensor | None = None,
    record_logits: bool = False,
) -> LayerwiseGeneration:
    """The layer-wise loop on a prepared, left-padded batch (``inputs_embeds [B, S, D]``, ``attention_mask [B, S]``,
    ``visual_mask [B, S]`` bool; ``rope_positions [3, B, S]`` for M-RoPE)."""
    from sparsezip.adapters.layerwise import generate_layerwise

    return generate_layerwise(
        decoder, lm_head, inputs_embeds, attention_mask, visual_mask & attention_mask.bool(), method,
        num_patches=num_patches, max_new_tokens=max_new_tokens, eos_token_ids=eos, clock=clock,
        rope_positions=rope_positions, record_logits=record_logits,
    )


def in_llm_outputs(
    run: LayerwiseGeneration,
    *,
    tokenizer: object,
    text_config: object,
    uncompressed: torch.Tensor,
    attention_mask: torch.Tensor,
    timings: dict[str, float],
) -> list[GenerationOutput]:
    """One output per row: text, the layer-averaged visual tokens (``visual_tokens``) and the per-layer counts,
    each image's uncompressed count (``uncompressed [B]``), the prefill length (``attention_mask [B, S]``) and the
    prefill FLOPs over the tokens each layer processed."""
    batch = len(run.tokens)
    outputs = []
    for b, tokens in enumerate(run.tokens):
        per_layer = run.visual_tokens_per_layer[b]
        outputs.append(GenerationOutput(
            text=tokenizer.decode(tokens, skip_special_tokens=True),
            new_tokens=len(tokens),
            visual_tokens=sum(per_layer) / len(per_layer),
            uncompressed_visual_tokens=int(uncompressed[b]),
            prefill_tokens=int(attention_mask[b].sum()),
            timings=dict(timings),
            visual_tokens_per_layer=per_layer,
            batch_size=batch,
            extra={
                "token_ids": tokens,
                "counts_after_pruning": run.counts_after_pruning[b],
                "nominal_visual_tokens": run.nominal_visual_tokens,
                "prefill_flops": prefill_flops(text_config, run.prefill_tokens_per_layer[b]),
            },
        ))
    return outputs
