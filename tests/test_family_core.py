"""Core contract additions for the new model families: a non-square patch grid and the kind of attention row in
VisionContext, per-method declared attention substitutes, re-budgeting a method, GQA-aware KV and FLOPs arithmetic."""

from __future__ import annotations

from types import SimpleNamespace

import pytest
import torch

from sparsezip import VisionContext, get_method
from sparsezip.memory import kv_cache_bytes, kv_width
from sparsezip.methods.visionzip import VisionZip
from sparsezip.profiling import decoder_prefill_flops
from sparsezip.testing.methods import KeepFirst


def _ctx(**kw) -> VisionContext:
    base = {"hidden": torch.zeros(2, 12, 3), "keys": torch.zeros(2, 12, 2), "prefix": 0}
    return VisionContext(**{**base, **kw})


def test_grid_and_attention_source_are_checked() -> None:
    assert _ctx(grid=(3, 4)).grid_shape == (3, 4)
    assert VisionContext(hidden=torch.zeros(1, 10, 2), keys=torch.zeros(1, 10, 1)).grid_shape == (3, 3)
    with pytest.raises(ValueError, match=r"grid=\(3, 5\) must hold the N - prefix = 12 patches"):
        _ctx(grid=(3, 5))
    with pytest.raises(ValueError, match="not square; use grid_shape"):
        _ = _ctx(grid=(3, 4)).grid_size
    with pytest.raises(ValueError, match="attention_source must be one of"):
        _ctx(attention_source="gradcam")


def test_a_method_refuses_an_attention_row_it_declares_no_substitute_for() -> None:
    attn = torch.full((2, 1, 12), 1 / 12)
    ctx = _ctx(cls_attn=attn, attention_source="mean_received")
    with pytest.raises(ValueError, match=r"'test-keep-first' needs attention of kind \('cls',\).*no substitute"):
        KeepFirst(budget=2, needs_attention=True)(ctx)
    assert get_method("visionzip", budget=4)(ctx).lengths.tolist() == [4, 4]  # declared ("cls", "mean_received")


def test_with_budget_rebuilds_the_same_configuration() -> None:
    method = get_method("sparsezip", budget=64, cross_beta=0.0)
    smaller = method.with_budget(20)
    assert smaller.budget == 20 and smaller.cfg.cross_beta == 0.0
    assert smaller.cfg == get_method("sparsezip", budget=20, cross_beta=0.0).cfg
    assert method.with_budget(64) is method
    assert VisionZip(budget=64).with_budget(16).config() == get_method("visionzip", budget=16).config()
    with pytest.raises(ValueError, match="not built by get_method"):
        VisionZip(dominant=30, contextual=5).with_budget(16)


def test_kv_width_and_flops_follow_grouped_query_attention() -> None:
    llava = SimpleNamespace(hidden_size=4096, num_attention_heads=32, num_key_value_heads=32)
    qwen7b = SimpleNamespace(hidden_size=3584, num_attention_heads=28, num_key_value_heads=4)
    assert kv_width(llava) == 4096 and kv_width(qwen7b) == 512
    assert kv_width(SimpleNamespace(hidden_size=64, num_attention_heads=4, head_dim=32)) == 128
    assert kv_cache_bytes(1, 28, kv_width(qwen7b), 2) == 56 * 1024  # Qwen2.5-VL-7B, fp16
    with pytest.raises(ValueError, match="kv_width: the config needs positive hidden_size"):
        kv_width(SimpleNamespace(hidden_size=64))
    mha = decoder_prefill_flops(10, num_layers=1, hidden=64, intermediate=128, num_heads=4)
    gqa = decoder_prefill_flops(10, num_layers=1, hidden=64, intermediate=128, num_heads=4, num_kv_heads=1)
    assert mha - gqa == 2 * 10 * 2 * 64 * (64 - 16)  # K and V projections shrink from 64 to 16 wide
    wide = decoder_prefill_flops(10, num_layers=1, hidden=64, intermediate=128, num_heads=4, head_dim=32)
    assert wide - mha == 2 * 10 * 4 * 64 * 64 + 2 * 100 * 64  # q/k/v/o twice as wide, attention too
