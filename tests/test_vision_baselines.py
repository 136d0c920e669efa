"""DivPrune, VisPruner, CDPruner, PruMerge+: budgets, their configuration knobs, batch independence, the
protected prefix (CLS count) read from the context, and PruMerge+'s adaptive rule and budgeted mode."""

from __future__ import annotations

import dataclasses

import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

from sparsezip import VisionContext, get_method
from sparsezip.scoring import cosine_similarity_matrix, iqr_outliers
from sparsezip.selection import dpp_greedy_map, topk_indices
from sparsezip.testing.strategies import seeds, vision_contexts

SELECTORS = ("divprune", "vispruner", "cdpruner")


def _ctx(b: int, n: int, seed: int, c: int = 16, text: bool = True) -> VisionContext:
    g = torch.Generator().manual_seed(seed)
    return VisionContext(
        hidden=torch.randn(b, n, c, generator=g),
        keys=torch.randn(b, n, 8, generator=g),
        cls_attn=torch.softmax(3 * torch.randn(b, 4, n, generator=g), dim=-1),
        text_query=torch.randn(b, c, generator=g) if text else None,
    )


@pytest.mark.parametrize("name", [*SELECTORS, "tome", "prumerge_plus"])
def test_budget_is_exact_and_images_do_not_depend_on_their_batch(name: str) -> None:
    ctx = _ctx(3, 82, seed=0)
    res = get_method(name, budget=20)(ctx)
    assert res.lengths.tolist() == [20, 20, 20]
    alone = get_method(name, budget=20)(VisionContext(hidden=ctx.hidden[2:], keys=ctx.keys[2:],
                                                      cls_attn=ctx.cls_attn[2:], text_query=ctx.text_query[2:]))
    torch.testing.assert_close(res.tokens[2:], alone.tokens)
    assert torch.equal(res.assignment[2:], alone.assignment)


@pytest.mark.parametrize("name", [*SELECTORS, "tome", "prumerge_plus"])
def test_prefix_comes_from_the_context(name: str) -> None:
    ctx = _ctx(2, 50, seed=1)
    no_cls = dataclasses.replace(ctx, prefix=0)  # a tower without CLS (Qwen2.5-VL)
    with_cls, without = get_method(name, budget=49)(ctx), get_method(name, budget=50)(no_cls)
    assert bool((with_cls.assignment[:, 0] == -1).all())  # CLS never reaches the LLM
    assert bool((without.assignment[:, 0] >= 0).all())  # without CLS, token 0 is an ordinary patch
    assert without.lengths.tolist() == [50, 50]


def test_selectors_keep_source_tokens_in_raster_order() -> None:
    ctx = _ctx(2, 65, seed=2)
    for name in SELECTORS:
        res = get_method(name, budget=16)(ctx)
        assert bool((res.kept_index[:, 1:] > res.kept_index[:, :-1]).all()) and bool((res.kept_index > 0).all())
        assert res.k.tolist() == [16, 16]


def test_vispruner_important_ratio_one_is_top_attention() -> None:
    ctx = _ctx(2, 65, seed=3)
    res = get_method("vispruner", budget=12, important_ratio=1.0)(ctx)
    assert torch.equal(res.kept_index, topk_indices(ctx.cls_attn[:, :, 1:].mean(1), 12) + 1)
    assert res.info == {"important": 12, "diverse": 0}
    with pytest.raises(ValueError, match=r"important_ratio=1\.5"):
        get_method("vispruner", important_ratio=1.5)


def test_cdpruner_without_text_is_the_plain_similarity_dpp() -> None:
    ctx = _ctx(2, 65, seed=4, text=False)
    res = get_method("cdpruner", budget=10)(ctx)
    picks = torch.sort(dpp_greedy_map(cosine_similarity_matrix(ctx.hidden[:, 1:]), 10), dim=1).values + 1
    assert torch.equal(res.kept_index, picks)


def test_cdpruner_relevance_sign_conditions_the_selection() -> None:
    # Patches along the text direction are the most relevant for +cos, the least for the authors' -cos.
    g = torch.Generator().manual_seed(5)
    text = torch.randn(1, 16, generator=g)
    hidden = torch.randn(1, 65, 16, generator=g)
    hidden[0, 1:9] = text + 0.3 * torch.randn(8, 16, generator=g)  # 8 patches close to the question
    ctx = VisionContext(hidden=hidden, keys=hidden[:, :, :2], text_query=text)
    plus = set(get_method("cdpruner", budget=4, negate_relevance=False)(ctx).kept_index[0].tolist())
    minus = set(get_method("cdpruner", budget=4)(ctx).kept_index[0].tolist())
    assert plus & set(range(1, 9)) and not minus & set(range(1, 9))


def _authors_adaptive_count(attn: torch.Tensor) -> int:
    """PruMerge+'s adaptive token count, written out with Python numbers as the authors' code does it (their
    extra token, a zero vector when every patch is selected, is left out then, as ours does)."""
    m = attn.numel()
    ratio = int(iqr_outliers(attn[None]).sum()) / m
    top = set(torch.argsort(attn, descending=True, stable=True)[: int(m * ratio)].tolist())
    samples = [x for x in range(0, m - 1, int(int(1 / ratio) / 3)) if x not in top]
    selected = len(top) + len(samples)
    return selected + (selected < m)


@given(seed=seeds, sharpness=st.floats(1.0, 6.0))
def test_prumerge_plus_adaptive_count_follows_the_authors_rule(seed: int, sharpness: float) -> None:
    g = torch.Generator().manual_seed(seed)
    attn = torch.softmax(sharpness * torch.randn(1, 2, 145, generator=g), dim=-1)
    ctx = VisionContext(hidden=torch.randn(1, 145, 8, generator=g), keys=torch.randn(1, 145, 4, generator=g),
                        cls_attn=attn)
    outliers = int(iqr_outliers(attn[:, :, 1:].mean(1)).sum())
    res = get_method("prumerge_plus")(ctx)
    if 0 < outliers <= 144 // 3:  # where the authors' code runs at all
        assert int(res.lengths[0]) == _authors_adaptive_count(attn[0, :, 1:].mean(0))
    assert res.info["important"][0] == outliers


@given(data=st.data())
def test_prumerge_plus_budget_mode_is_exact_and_accounts_for_every_patch(data: st.DataObject) -> None:
    ctx = data.draw(vision_contexts(dtype=torch.float32, max_grid=7))
    budget = data.draw(st.integers(1, ctx.num_patches), label="budget")
    res = get_method("prumerge_plus", budget=budget)(ctx)
    p = ctx.prefix
    assert res.lengths.tolist() == [budget] * ctx.batch_size
    assert bool((res.assignment[:, p:] >= 0).all())  # merged, never silently dropped
    attn = ctx.cls_attn[:, :, p:].float().mean(1)
    n_out = iqr_outliers(attn).sum(1).clamp_max(budget - 1)
    assert res.info["important"] == n_out.tolist() and res.k.tolist() == [budget - 1] * ctx.batch_size
    # The last token sums the unselected patches weighted by attention (they all point to it).
    last = budget - 1
    members = (res.assignment[:, p:] == last).float() * attn
    torch.testing.assert_close(res.tokens[:, last], torch.einsum("bm,bmc->bc", members, ctx.hidden[:, p:].float()),
                               rtol=1e-5, atol=1e-5)


def test_prumerge_plus_budget_mode_takes_the_outliers_first() -> None:
    ctx = _ctx(2, 577, seed=6, c=8)
    res = get_method("prumerge_plus", budget=128)(ctx)
    attn = ctx.cls_attn[:, :, 1:].mean(1)
    n_out = res.info["important"]
    for b in range(2):
        order = torch.argsort(attn[b], descending=True, stable=True)
        selected_in_order = [int(torch.nonzero(res.assignment[b, 1:] == s)[0]) for s in range(n_out[b])]
        assert selected_in_order == order[: n_out[b]].tolist()
        assert res.info["spatial"][b] == 127 - n_out[b]
