"""Score functions: ranges, degenerate inputs, dtypes, and the text-to-vision mapping."""

import math

import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

from sparsezip import scoring
from sparsezip.testing.strategies import dtypes, score_rows, seeds


def _keys(seed: int, b: int, m: int, dk: int, dtype: torch.dtype) -> torch.Tensor:
    return torch.randn(b, m, dk, generator=torch.Generator().manual_seed(seed)).to(dtype)


@given(values=score_rows())
def test_zscore_is_centred_scaled_and_finite(values: torch.Tensor) -> None:
    z = scoring.zscore(values)
    assert z.dtype == torch.float32 and bool(torch.isfinite(z).all())
    assert torch.allclose(z.mean(1), torch.zeros(z.shape[0]), atol=1e-4)
    std = values.float().std(1, correction=0)
    expected = torch.where(std > 1e-3, torch.ones_like(std), torch.zeros_like(std))
    assert torch.allclose(z.std(1, correction=0), expected, atol=1e-2)


@given(seed=seeds, b=st.integers(1, 3), m=st.integers(1, 20), dk=st.integers(1, 9), dtype=dtypes)
def test_entropy_and_mi_proxy_lie_in_unit_interval(seed: int, b: int, m: int, dk: int, dtype: torch.dtype) -> None:
    keys = _keys(seed, b, m, dk, dtype)
    for score in (scoring.channel_entropy(keys, 0.15), scoring.mutual_information_proxy(keys, 0.08)):
        assert score.shape == (b, m) and score.dtype == torch.float32
        assert bool(((score >= -1e-5) & (score <= 1 + 1e-5)).all())


def test_degenerate_keys_give_finite_extremes() -> None:
    zeros = torch.zeros(2, 6, 4)
    # Equal channels: uniform channel distribution, maximal entropy 1.
    assert torch.allclose(scoring.channel_entropy(zeros, 0.15), torch.ones(2, 6))
    # Equal similarities: uniform q over the other patches, MI proxy 0.
    assert torch.allclose(scoring.mutual_information_proxy(zeros, 0.08), torch.zeros(2, 6), atol=1e-6)
    assert torch.equal(scoring.mutual_information_proxy(zeros[:, :2], 0.08), torch.ones(2, 2))
    assert torch.equal(scoring.channel_entropy(torch.randn(1, 3, 1), 0.15), torch.zeros(1, 3))


def test_mi_proxy_is_high_for_a_patch_with_one_near_twin() -> None:
    keys = torch.eye(5)[None]  # five orthogonal keys ...
    keys[0, 1] = keys[0, 0] + 1e-3  # ... except patch 1 almost equals patch 0
    mi = scoring.mutual_information_proxy(keys, 0.08)
    assert mi[0, 0] > 0.9 and mi[0, 1] > 0.9 and bool((mi[0, 2:] < 0.5).all())


def test_cls_attention_means_heads_and_drops_the_prefix() -> None:
    attn = torch.tensor([[[0.5, 0.1, 0.4], [0.3, 0.5, 0.2]]])
    assert torch.allclose(scoring.cls_attention(attn, prefix=1), torch.tensor([[0.3, 0.3]]))
    assert torch.allclose(scoring.cls_attention(attn, prefix=0), torch.tensor([[0.4, 0.3, 0.3]]))


@given(seed=seeds, dtype=dtypes)
def test_text_relevance_is_a_cosine(seed: int, dtype: torch.dtype) -> None:
    g = torch.Generator().manual_seed(seed)
    patches, text = torch.randn(2, 5, 8, generator=g).to(dtype), torch.randn(2, 8, generator=g).to(dtype)
    r = scoring.text_relevance(patches, text)
    expected = torch.nn.functional.cosine_similarity(patches.float(), text.float()[:, None, :], dim=-1)
    assert torch.allclose(r, expected, atol=1e-5)
    assert torch.equal(scoring.text_relevance(torch.zeros(1, 3, 4), torch.zeros(1, 4)), torch.zeros(1, 3))


def test_text_to_vision_space_applies_the_projector_transposes() -> None:
    torch.manual_seed(0)  # only to initialise the nn.Linear layers below
    c, d = 6, 10
    linear1, linear2 = torch.nn.Linear(c, d), torch.nn.Linear(d, d)
    t = torch.randn(3, d)
    v = scoring.text_to_vision_space(t, linear1.weight, linear2.weight)
    expected = torch.stack([linear1.weight.T @ (linear2.weight.T @ row) for row in t])
    assert v.shape == (3, c) and torch.allclose(v, expected, atol=1e-5)
    with pytest.raises(ValueError, match="w1"):
        scoring.text_to_vision_space(t, linear1.weight.T, linear2.weight)


@given(seed=seeds)
def test_hybrid_score_skips_zero_weight_terms(seed: int) -> None:
    g = torch.Generator().manual_seed(seed)
    attn, keys = torch.rand(2, 9, generator=g), torch.randn(2, 9, 4, generator=g)
    kwargs = dict(alpha_attn=1.0, alpha_entropy=0.0, alpha_mutual=0.0, tau_feat=0.15, tau_sim=0.08)
    s = scoring.hybrid_score(attn, keys, **kwargs)
    assert torch.equal(s, scoring.zscore(attn))
    assert torch.equal(s, scoring.hybrid_score(attn, torch.zeros_like(keys), **kwargs))
    full = scoring.hybrid_score(attn, keys, alpha_attn=1.0, alpha_entropy=0.8, alpha_mutual=1.0, tau_feat=0.15,
                                tau_sim=0.08)
    expected = (scoring.zscore(attn) + 0.8 * scoring.zscore(scoring.channel_entropy(keys, 0.15))
                + scoring.zscore(scoring.mutual_information_proxy(keys, 0.08)))
    assert torch.allclose(full, expected, atol=1e-6)
    # Sum of |weights| bounds the score's std (z-scored terms), the fact behind dynamic K's pinning.
    assert bool((full.std(1, correction=0) <= 2.8 + 1e-4).all())


def test_bad_inputs_are_value_errors() -> None:
    with pytest.raises(ValueError, match=r"tau must be > 0, got 0"):
        scoring.channel_entropy(torch.zeros(1, 2, 3), 0)
    with pytest.raises(ValueError, match=r"\[B, H, N\]"):
        scoring.cls_attention(torch.zeros(2, 3), prefix=1)
    with pytest.raises(ValueError, match="prefix=3"):
        scoring.cls_attention(torch.zeros(1, 2, 3), prefix=3)
    with pytest.raises(ValueError, match="text_query"):
        scoring.text_relevance(torch.zeros(1, 3, 4), torch.zeros(1, 5))
    assert math.isclose(float(scoring.channel_entropy(torch.zeros(1, 1, 2), 1.0)), 1.0)
