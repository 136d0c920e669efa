"""The family-independent tail of vision-stage generation (``sparsezip.adapters.vision_stage``): what each row's
output holds, and the batch-size check. The adapters' own tests cover it end to end (``none`` reproduces plain
``generate``)."""

from __future__ import annotations

import pytest
import torch
from transformers import LlamaConfig

from sparsezip.adapters.vision_stage import vision_stage_outputs


class _Tokenizer:
    def decode(self, tokens: list[int], skip_special_tokens: bool = True) -> str:
        return " ".join(str(t) for t in tokens if not (skip_special_tokens and t == 2))


CONFIG = LlamaConfig(hidden_size=16, intermediate_size=32, num_hidden_layers=2, num_attention_heads=2,
                     vocab_size=50)


def test_each_row_is_trimmed_at_its_eos_and_keeps_its_own_counts() -> None:
    outputs = vision_stage_outputs(
        [[5, 6, 2, 0, 0], [7, 8, 9, 10, 11]], tokenizer=_Tokenizer(), eos={2}, text_config=CONFIG,
        visual=torch.tensor([3, 4]), uncompressed=[16, 16], prefill_tokens=[10, 12],
        timings={"total_ms": 1.0}, extras=[{"k": 1}, {"k": 2, "crops": 5}],
    )
    assert [o.extra["token_ids"] for o in outputs] == [[5, 6, 2], [7, 8, 9, 10, 11]]
    assert [o.text for o in outputs] == ["5 6", "7 8 9 10 11"]
    assert [o.new_tokens for o in outputs] == [3, 5]
    assert [(o.visual_tokens, o.uncompressed_visual_tokens, o.prefill_tokens) for o in outputs] == [
        (3.0, 16, 10), (4.0, 16, 12)]
    assert [o.batch_size for o in outputs] == [2, 2]
    assert outputs[1].extra["crops"] == 5 and outputs[0].extra["k"] == 1
    assert outputs[1].extra["prefill_flops"] > outputs[0].extra["prefill_flops"] > 0
    outputs[0].timings["total_ms"] = 9.0  # each row owns its copy
    assert outputs[1].timings["total_ms"] == 1.0


def test_rows_that_disagree_on_the_batch_size_are_refused() -> None:
    with pytest.raises(ValueError, match="disagree on the batch size: 2 generated rows, 1 visual"):
        vision_stage_outputs([[1], [2]], tokenizer=_Tokenizer(), eos={2}, text_config=CONFIG, visual=[3],
                             uncompressed=[4, 4], prefill_tokens=[5, 5], timings={}, extras=[{}, {}])


def test_generation_needs_at_least_one_token_and_one_beam() -> None:
    from sparsezip.adapters.vision_stage import generate_on_embeds
    from sparsezip.profiling import StageTimer

    embeds, mask = torch.zeros(1, 3, 16), torch.ones(1, 3, dtype=torch.long)
    for tokens, beams in ((0, 1), (4, 0)):
        with pytest.raises(ValueError, match="max_new_tokens and num_beams must be >= 1"):
            generate_on_embeds(torch.nn.Identity(), inputs_embeds=embeds, attention_mask=mask, max_new_tokens=tokens,
                               num_beams=beams, pad_token_id=0, timer=StageTimer(torch.device("cpu")), start=0.0,
                               compress_end=0.0)
