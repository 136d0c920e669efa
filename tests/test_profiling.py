"""Stage timers, the first-token clock and the analytic prefill FLOPs."""

from __future__ import annotations

import pytest
import torch

from sparsezip.profiling import FirstCallClock, StageTimer, decoder_prefill_flops


def test_stage_timer_accumulates_per_stage() -> None:
    timer = StageTimer("cpu")
    with timer.stage("a"):
        pass
    timer.add("a", 0.5)
    timer.add("b", 0.25)
    assert timer.ms["a"] >= 500.0 and timer.ms["b"] == 250.0
    with pytest.raises(ValueError, match="negative"):
        timer.add("a", -1.0)


def test_stage_is_recorded_even_when_the_block_raises() -> None:
    timer = StageTimer("cpu")
    with pytest.raises(RuntimeError), timer.stage("x"):
        raise RuntimeError
    assert "x" in timer.ms


def test_first_call_clock_keeps_the_first_timestamp_and_passes_scores_through() -> None:
    clock = FirstCallClock("cpu")
    scores = torch.randn(2, 5)
    assert clock(torch.zeros(2, 3, dtype=torch.long), scores) is scores
    first = clock.first_call
    clock(torch.zeros(2, 4, dtype=torch.long), scores)
    assert first is not None and clock.first_call == first


def test_prefill_flops_by_hand() -> None:
    # one layer, S=2, hidden 4, 2 heads (kv = all heads), intermediate 8, vocab 10:
    # projections 2*2*(2*16 + 2*16) = 256, attention 2*4*4 = 32, MLP 6*2*4*8 = 384, head 2*4*10 = 80
    assert decoder_prefill_flops(2, num_layers=1, hidden=4, intermediate=8, num_heads=2, vocab_size=10) == 752
    assert decoder_prefill_flops([2, 2], num_layers=2, hidden=4, intermediate=8, num_heads=2) == 2 * 672
    gqa = decoder_prefill_flops(2, num_layers=1, hidden=4, intermediate=8, num_heads=2, num_kv_heads=1)
    assert gqa == 672 - 2 * 2 * 2 * 8  # k and v projections halve
    with pytest.raises(ValueError, match="entries"):
        decoder_prefill_flops([1], num_layers=2, hidden=4, intermediate=8, num_heads=2)
    with pytest.raises(ValueError, match="divisible"):
        decoder_prefill_flops(1, num_layers=1, hidden=5, intermediate=8, num_heads=2)
