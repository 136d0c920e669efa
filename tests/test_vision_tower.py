"""The feature-layer tap: same hidden states as the full tower, the CLS attention row and keys of the real
attention (checked against eager attention weights), hooks always removed, later layers never run."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from sparsezip.adapters.vision_tower import FeatureLayerTap, cls_attention_and_keys


@pytest.fixture(scope="module")
def eager_tower(tiny_llava_dir: Path):
    """The tower loaded with eager attention, so the full attention maps can be read as a reference."""
    from transformers import LlavaForConditionalGeneration

    model = LlavaForConditionalGeneration.from_pretrained(tiny_llava_dir, attn_implementation="eager")
    return model.model.vision_tower.eval()


@pytest.fixture(scope="module")
def pixels(eager_tower) -> torch.Tensor:
    size = eager_tower.config.image_size
    return torch.randn(2, 3, size, size, generator=torch.Generator().manual_seed(0))


def test_tap_matches_the_full_tower_and_its_attention(eager_tower, pixels: torch.Tensor) -> None:
    features = FeatureLayerTap(eager_tower, -2)(pixels)
    with torch.no_grad():
        full = eager_tower(pixels, output_hidden_states=True, output_attentions=True)
    torch.testing.assert_close(features.hidden, full.hidden_states[-2], rtol=0, atol=0)

    layer_index = len(eager_tower.encoder.layers) - 2  # the layer whose output is hidden_states[-2]
    torch.testing.assert_close(features.cls_attn, full.attentions[layer_index][:, :, 0, :].float(), rtol=1e-5, atol=1e-6)

    attn = eager_tower.encoder.layers[layer_index].self_attn
    layer_input = eager_tower.encoder.layers[layer_index].layer_norm1(full.hidden_states[layer_index])
    with torch.no_grad():
        keys = attn.k_proj(layer_input).view(2, -1, attn.num_heads, attn.head_dim).mean(dim=2)
    torch.testing.assert_close(features.keys, keys, rtol=1e-5, atol=1e-6)
    assert features.cls_attn.shape == (2, attn.num_heads, features.hidden.shape[1])
    torch.testing.assert_close(features.cls_attn.sum(-1), torch.ones(2, attn.num_heads))


def test_layers_after_the_feature_layer_never_run(eager_tower, pixels: torch.Tensor) -> None:
    calls = []
    handle = eager_tower.encoder.layers[-1].register_forward_hook(lambda *_: calls.append(1))
    try:
        FeatureLayerTap(eager_tower, -2)(pixels)
    finally:
        handle.remove()
    assert calls == []


def test_hooks_are_removed_even_when_the_tower_fails(eager_tower) -> None:
    tap = FeatureLayerTap(eager_tower, -2)
    wrong_size = torch.zeros(1, 3, 8, 8)
    with pytest.raises(ValueError, match="doesn't match model"):
        tap(wrong_size)
    assert not tap.attention.q_proj._forward_hooks and not tap.attention.k_proj._forward_hooks


def test_other_feature_layers(eager_tower, pixels: torch.Tensor) -> None:
    with torch.no_grad():
        full = eager_tower(pixels, output_hidden_states=True)
    for layer in (1, 2, -1):
        torch.testing.assert_close(FeatureLayerTap(eager_tower, layer)(pixels).hidden, full.hidden_states[layer],
                                   rtol=0, atol=0)


@pytest.mark.parametrize(("layer", "match"), [(0, "embedding output"), (99, "out of range"), ([-2, -1], "one int")])
def test_bad_feature_layers(eager_tower, layer, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        FeatureLayerTap(eager_tower, layer)


def test_unsupported_towers() -> None:
    with pytest.raises(ValueError, match="CLIP-style tower"):
        FeatureLayerTap(torch.nn.Linear(2, 2), -2)


def test_cls_attention_rejects_bad_shapes() -> None:
    with pytest.raises(ValueError, match="both be"):
        cls_attention_and_keys(torch.zeros(1, 5, 8), torch.zeros(1, 4, 8), 2, 1.0)
    with pytest.raises(ValueError, match="not divisible"):
        cls_attention_and_keys(torch.zeros(1, 5, 9), torch.zeros(1, 5, 9), 2, 1.0)
