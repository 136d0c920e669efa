"""The protected prefix (``VisionContext.prefix``: 1 = CLIP's CLS, 0 = a tower without one) and multi-crop rows
(``image_index``): every vision method reads the prefix from the context instead of assuming CLS at index 0."""

import dataclasses

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from sparsezip import VisionContext, get_method
from sparsezip.context import CompressionResult
from sparsezip.layout import with_prefix
from sparsezip.methods.base import CompressionMethod
from sparsezip.testing.contract import ContractError, check_result
from sparsezip.testing.strategies import vision_contexts

# Methods that drop the prefix: on a CLIP context they must give exactly what they give on the same patches
# from a tower without CLS (indices shifted by one). sparsezip only with keep_cls off.
PREFIX_DROPPING = [
    ("none", {}),
    ("random", {"budget": 5}),
    ("pool", {"budget": 4}),
    ("sparsezip", {"budget": 6, "keep_cls": False}),
    ("sparsevlm", {}),
]


def _strip_prefix(ctx: VisionContext) -> VisionContext:
    """The same patches as a prefix-0 context: CLS removed from hidden, keys and the attention row."""
    return dataclasses.replace(ctx, hidden=ctx.hidden[:, 1:], keys=ctx.keys[:, 1:], cls_attn=ctx.cls_attn[:, :, 1:],
                               prefix=0)


@pytest.mark.parametrize(("name", "config"), PREFIX_DROPPING, ids=[n for n, _ in PREFIX_DROPPING])
@settings(max_examples=20)
@given(data=st.data())
def test_methods_dropping_the_prefix_see_only_patches(name: str, config: dict, data: st.DataObject) -> None:
    ctx = data.draw(vision_contexts(min_grid=3, max_grid=5, prefixes=(1,), dtype=torch.float32))
    method = get_method(name, **config)
    with_cls, without = method(ctx), method(_strip_prefix(ctx))
    assert torch.equal(with_cls.tokens, without.tokens) and torch.equal(with_cls.lengths, without.lengths)
    assert torch.equal(with_cls.kept_index, torch.where(without.kept_index >= 0, without.kept_index + 1, -1))
    assert bool((with_cls.assignment[:, 0] == -1).all())
    assert torch.equal(with_cls.assignment[:, 1:], without.assignment)


@pytest.mark.parametrize("budget", [1, 8, 16])
def test_visionzip_without_cls_selects_all_dominant_tokens_from_patches(budget: int) -> None:
    ctx = _strip_prefix(_clip_ctx(2, 5))
    res = get_method("visionzip", budget=budget)(ctx)
    dominant = max(1, round(budget * 54 / 64))
    assert res.lengths.tolist() == [budget, budget] and res.k.tolist() == [dominant, dominant]
    # The D dominant tokens are the top-D patches by attention (index 0 is a patch now, not CLS).
    top = torch.sort(torch.topk(ctx.cls_attn.sum(1), dominant, dim=1).indices, dim=1).values
    assert torch.equal(res.kept_index, top)


def test_visionzip_with_cls_keeps_it_and_counts_it_in_d() -> None:
    res = get_method("visionzip", budget=16)(_clip_ctx(2, 5))
    assert res.kept_index[:, 0].tolist() == [0, 0] and res.k.tolist() == [13, 13]  # D = round(13.5) = 14 = CLS + 13
    assert res.lengths.tolist() == [16, 16]


@pytest.mark.parametrize("budget", [3, 20, 64])
@pytest.mark.parametrize("keep_cls", [True, False])
def test_sparsezip_budget_is_exact_with_and_without_cls(budget: int, keep_cls: bool) -> None:
    clip = _clip_ctx(2, 9)
    method = get_method("sparsezip", budget=budget, keep_cls=keep_cls)
    for ctx in (clip, _strip_prefix(clip)):
        res = method(ctx)
        assert res.lengths.tolist() == [budget, budget]
        kept_prefix = ctx.prefix if keep_cls else 0
        assert bool((res.kept_index[:, :kept_prefix] == torch.arange(kept_prefix)).all())
        dominant = method.config_for(ctx.prefix).dominant
        assert res.k.tolist() == [dominant, dominant]
    # 64 = 1 + 40 + 23 with CLS, 0 + 40 + 24 without: the same 54:32 ratio, split again.
    if budget == 64 and keep_cls:
        assert (method.cfg.dominant, method.cfg.merging.contextual_num) == (40, 23)
        assert (method.config_for(0).dominant, method.config_for(0).merging.contextual_num) == (40, 24)


@pytest.mark.parametrize("prefix", [0, 1, 2])
def test_none_feeds_every_patch_and_drops_every_prefix_token(prefix: int) -> None:
    hidden = torch.randn(2, prefix + 9, 4, generator=torch.Generator().manual_seed(prefix))
    res = get_method("none")(VisionContext(hidden=hidden, keys=hidden, prefix=prefix))
    assert res.lengths.tolist() == [9, 9] and torch.equal(res.tokens, hidden[:, prefix:])
    assert res.assignment[:, :prefix].eq(-1).all() and torch.equal(res.assignment[0, prefix:], torch.arange(9))
    with pytest.raises(ValueError, match="keeps all 9 patches"):
        get_method("none", budget=prefix + 9 if prefix else 8)(VisionContext(hidden=hidden, keys=hidden, prefix=prefix))


def test_methods_needing_cls_attention_refuse_without_it_at_prefix_zero() -> None:
    ctx = VisionContext(hidden=torch.zeros(1, 9, 4), keys=torch.zeros(1, 9, 2), prefix=0)
    for name in ("visionzip", "sparsezip"):
        with pytest.raises(ValueError, match="cls_attn"):
            get_method(name)(ctx)


class _MergesCls(CompressionMethod):
    """Broken on purpose: averages CLS into the first patch (never registered)."""

    name = "test-merges-cls"

    def compress(self, ctx: VisionContext) -> CompressionResult:
        b, n, _ = ctx.hidden.shape
        tokens = ctx.hidden[:, :2].mean(dim=1, keepdim=True)
        assignment = torch.full((b, n), -1, dtype=torch.long)
        assignment[:, :2] = 0
        one = torch.ones(b, dtype=torch.long)
        return CompressionResult(tokens, one, torch.zeros(b, 0, dtype=torch.long), assignment, one * 0)


def test_contract_catches_a_merged_prefix_token_but_allows_merging_patch_zero_without_one() -> None:
    hidden = torch.randn(1, 5, 3, generator=torch.Generator().manual_seed(0))
    ctx = VisionContext(hidden=hidden, keys=hidden)
    with pytest.raises(ContractError, match="prefix"):
        check_result(_MergesCls()(ctx), ctx)
    no_cls = dataclasses.replace(ctx, prefix=0)
    check_result(_MergesCls()(no_cls), no_cls)  # index 0 is a plain patch here


def test_vision_context_validates_prefix_and_image_index() -> None:
    hidden = torch.zeros(4, 5, 3)
    assert VisionContext(hidden=hidden, keys=hidden).num_patches == 4
    assert VisionContext(hidden=hidden, keys=hidden, prefix=0).num_patches == 5
    for bad in (-1, True, 1.0):
        with pytest.raises(ValueError, match="prefix must be an int"):
            VisionContext(hidden=hidden, keys=hidden, prefix=bad)
    with pytest.raises(ValueError, match="prefix=5"):
        VisionContext(hidden=hidden, keys=hidden, prefix=5)
    crops = VisionContext(hidden=hidden, keys=hidden, image_index=torch.tensor([0, 0, 1, 1]))
    assert crops.num_images == 2 and crops.images.tolist() == [0, 0, 1, 1]
    plain = VisionContext(hidden=hidden, keys=hidden)
    assert plain.num_images == 4 and plain.images.tolist() == [0, 1, 2, 3]
    for bad in ([1, 1, 2, 2], [0, 2, 2, 3], [0, 1, 0, 1]):
        with pytest.raises(ValueError, match="image_index must start at 0"):
            VisionContext(hidden=hidden, keys=hidden, image_index=torch.tensor(bad))
    with pytest.raises(ValueError, match=r"image_index must be int64 \[B=4\]"):
        VisionContext(hidden=hidden, keys=hidden, image_index=torch.tensor([0, 1]))


def test_with_prefix_puts_the_prefix_columns_in_front() -> None:
    mask = torch.tensor([[True, False]])
    assert with_prefix(mask, 2, True).tolist() == [[True, True, True, False]]
    assert with_prefix(torch.tensor([[3, -1]]), 0, -1).tolist() == [[3, -1]]
    with pytest.raises(ValueError, match="prefix must be an int"):
        with_prefix(mask, -1, True)


def _clip_ctx(b: int, grid: int, seed: int = 0) -> VisionContext:
    g = torch.Generator().manual_seed(seed)
    n = grid * grid + 1
    return VisionContext(hidden=torch.randn(b, n, 6, generator=g), keys=torch.randn(b, n, 4, generator=g),
                         cls_attn=torch.softmax(2 * torch.randn(b, 2, n, generator=g), dim=-1))
