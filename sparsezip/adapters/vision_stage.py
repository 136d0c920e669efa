"""Generation after a vision-stage method, the same in the three adapters: transformers' own ``generate`` on the
prepared input embeddings, timed to the first token, then one :class:`GenerationOutput` per row.

Each adapter prepares its batch its own way (placeholder shortening, anyres layout, M-RoPE repacking); what
happens after that does not depend on the family, so it lives here once.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import torch

from sparsezip.adapters.api import GenerationOutput
from sparsezip.adapters.common import prefill_flops, stage_timings, trim_at_eos
from sparsezip.profiling import FirstCallClock, StageTimer


def generate_on_embeds(
    model: torch.nn.Module,
    *,
    inputs_embeds: torch.Tensor,
    attention_mask: torch.Tensor,
    max_new_tokens: int,
    num_beams: int,
    pad_token_id: int,
    timer: StageTimer,
    start: float,
    compress_end: float,
    position_ids: torch.Tensor | None = None,
) -> tuple[list[list[int]], dict[str, float]]:
    """Greedy (``num_beams`` 1) or beam generation from ``inputs_embeds [B, S, D]`` / ``attention_mask [B, S]``
    (left-padded; ``position_ids`` where the family needs its own, e.g. Qwen2.5-VL's ``[4, B, S]``).

    Returns the generated ids per row (read from the device once for the whole batch, after the end mark) and
    the call's stage timings (:func:`~sparsezip.adapters.common.stage_timings`: prefill ends at the first
    token's logits, marked by a :class:`FirstCallClock` inside ``generate``).
    """
    if max_new_tokens < 1 or num_beams < 1:
        raise ValueError(f"max_new_tokens and num_beams must be >= 1, got {max_new_tokens} and {num_beams}")
    first_token = FirstCallClock(inputs_embeds.device)
    extra = {} if position_ids is None else {"position_ids": position_ids}
    with torch.inference_mode():
        sequences = model.generate(
            inputs_embeds=inputs_embeds, attention_mask=attention_mask, max_new_tokens=max_new_tokens,
            num_beams=num_beams, do_sample=False, logits_processor=[first_token], pad_token_id=pad_token_id,
            **extra,
        )
    end = timer.now()
    return sequences.tolist(), stage_timings(timer, start, compress_end, first_token.first_call, end)


def vision_stage_outputs(
    generated: Sequence[list[int]],
    *,
    tokenizer: object,
    eos: set[int],
    text_config: object,
    visual: Sequence[float] | torch.Tensor,
    uncompressed: Sequence[int] | torch.Tensor,
    prefill_tokens: Sequence[int],
    timings: Mapping[str, float],
    extras: Sequence[Mapping[str, object]],
) -> list[GenerationOutput]:
    """One output per row of a batch of ``B``: the answer up to its first EOS, the visual tokens fed to the LLM
    (``visual [B]``) and before compression (``uncompressed [B]``), the prompt's real tokens (``prefill_tokens
    [B]``) and their analytic prefill FLOPs, the batch's stage timings, and each row's family-specific
    ``extras[b]`` (``k``, crops) merged into ``extra`` beside ``token_ids`` and ``prefill_flops``."""
    rows = len(generated)
    if not len(visual) == len(uncompressed) == len(prefill_tokens) == len(extras) == rows:
        raise ValueError(
            f"per-row inputs disagree on the batch size: {rows} generated rows, {len(visual)} visual counts, "
            f"{len(uncompressed)} uncompressed counts, {len(prefill_tokens)} prefill lengths, {len(extras)} extras"
        )
    outputs = []
    for b, row in enumerate(generated):
        tokens = trim_at_eos(row, eos)
        prefill = int(prefill_tokens[b])
        outputs.append(GenerationOutput(
            text=tokenizer.decode(tokens, skip_special_tokens=True),
            new_tokens=len(tokens),
            visual_tokens=float(visual[b]),
            uncompressed_visual_tokens=int(uncompressed[b]),
            prefill_tokens=prefill,
            timings=dict(timings),
            batch_size=rows,
            extra={"token_ids": tokens, **extras[b], "prefill_flops": prefill_flops(text_config, prefill)},
        ))
    return outputs
