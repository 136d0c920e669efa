"""SparseZip: output layout, budgets, dynamic K, calibration, and that each ablation switch does what it says."""

import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

from sparsezip import VisionContext, get_method, scoring
from sparsezip.merging import visionzip_merge
from sparsezip.methods.sparsezip import SparseZip
from sparsezip.testing.strategies import seeds, vision_contexts


def _ctx(b: int, grid: int, seed: int = 0, c: int = 8, dk: int = 6, text: bool = True) -> VisionContext:
    g = torch.Generator().manual_seed(seed)
    n = grid * grid + 1
    return VisionContext(
        hidden=torch.randn(b, n, c, generator=g),
        keys=torch.randn(b, n, dk, generator=g),
        cls_attn=torch.softmax(2 * torch.randn(b, 3, n, generator=g), dim=-1),
        text_query=torch.randn(b, c, generator=g) if text else None,
    )


def _check_layout(method: SparseZip, ctx: VisionContext) -> None:
    """[prefix?, K dominant ascending, contextual ordered by first member], each contextual = weighted mean."""
    res = method(ctx)
    cfg = method.config_for(ctx.prefix)
    scores = method.scores(ctx)
    prefix = ctx.prefix
    cls = prefix if cfg.keep_cls else 0
    attn = scoring.cls_attention(ctx.cls_attn, prefix=prefix)
    for b in range(ctx.batch_size):
        k = int(res.k[b])
        order = torch.argsort(scores[b], descending=True, stable=True)[:k]
        dominant = torch.sort(order).values + prefix
        expected_kept = torch.cat([torch.arange(cls, dtype=torch.long), dominant])
        assert torch.equal(res.kept_index[b, : cls + k], expected_kept)
        assert torch.equal(res.tokens[b, : cls + k], ctx.hidden[b, expected_kept])
        n_ctx = int(res.lengths[b]) - cls - k
        assert 0 <= n_ctx <= cfg.merging.contextual_num
        remaining = torch.ones(ctx.num_tokens, dtype=torch.bool)
        remaining[expected_kept] = False
        remaining[:prefix] = False
        if cfg.merging.contextual_num:  # every remaining patch is merged somewhere, none silently dropped
            assert bool((res.assignment[b][remaining] >= cls + k).all())
        firsts = []
        for j in range(n_ctx):
            members = torch.nonzero(res.assignment[b] == cls + k + j).flatten()
            assert members.numel() > 0 and bool(remaining[members].all())
            firsts.append(int(members[0]))
            w = attn[b, members - prefix] if cfg.merging.attention_weighted else torch.ones(len(members))
            w = w / w.sum() if w.sum() > 0 else torch.full_like(w, 1 / len(w))
            expected = (w[:, None] * ctx.hidden[b, members].float()).sum(0)
            assert torch.allclose(res.tokens[b, cls + k + j].float(), expected, atol=1e-4)
        assert firsts == sorted(firsts)


@given(data=st.data())
def test_output_layout_on_random_inputs(data: st.DataObject) -> None:
    ctx = data.draw(vision_contexts(min_grid=2, max_grid=7, dtype=torch.float32))
    budget = data.draw(st.integers(1, ctx.num_patches), label="budget")
    cfg = dict(
        keep_cls=data.draw(st.booleans(), label="keep_cls"),
        merging=dict(agglomerative=data.draw(st.booleans(), label="agglomerative"),
                     attention_weighted=data.draw(st.booleans(), label="attention_weighted"),
                     kmeans_iters=data.draw(st.integers(0, 3), label="kmeans_iters")),
    )
    method = get_method("sparsezip", budget=budget, **cfg)
    _check_layout(method, ctx)
    assert int(method(ctx).lengths.max()) <= budget


@pytest.mark.parametrize(("patches", "budgets"), [(144, (16, 32, 48)), (64, (7, 14, 21)), (576, (64, 128, 192))])
@pytest.mark.parametrize("agglomerative", [False, True])
def test_fixed_k_budgets_are_exact_on_generic_inputs(patches: int, budgets: tuple[int, ...], agglomerative: bool) -> None:
    ctx = _ctx(2, int(patches**0.5), seed=patches)
    for budget in budgets:
        res = get_method("sparsezip", budget=budget, merging={"agglomerative": agglomerative})(ctx)
        assert res.lengths.tolist() == [budget, budget]


def test_default_is_87_tokens_at_llava_shapes() -> None:
    res = get_method("sparsezip")(_ctx(2, 24, c=16, dk=8))
    assert res.lengths.tolist() == [87, 87] and res.k.tolist() == [54, 54]
    assert bool((res.assignment >= 0).all())  # CLS kept, 54 dominant, everything else merged


@given(seed=seeds)
def test_is_batch_independent(seed: int) -> None:
    ctx = _ctx(3, 6, seed=seed)
    method = get_method("sparsezip", budget=20, merging={"agglomerative": seed % 2 == 0})
    batch = method(ctx)
    for b in range(3):
        alone = method(VisionContext(hidden=ctx.hidden[b : b + 1], keys=ctx.keys[b : b + 1],
                                     cls_attn=ctx.cls_attn[b : b + 1], text_query=ctx.text_query[b : b + 1]))
        n = int(alone.lengths[0])
        assert n == int(batch.lengths[b]) and torch.equal(alone.tokens[0, :n], batch.tokens[b, :n])
        assert torch.equal(alone.assignment[0], batch.assignment[b])


def _results_equal(a, b) -> bool:
    return all(torch.equal(getattr(a, f), getattr(b, f)) for f in ("tokens", "lengths", "kept_index", "assignment"))


def test_skip_hybrid_attn_scores_with_attention_only() -> None:
    ctx = _ctx(2, 6)
    skip = get_method("sparsezip", skip_hybrid_attn=True)
    attention_only = get_method("sparsezip", alphas={"attn": 1.0, "entropy": 0.0, "mutual": 0.0})
    expected = scoring.zscore(scoring.cls_attention(ctx.cls_attn, prefix=1)) + 0.3 * scoring.zscore(
        scoring.text_relevance(ctx.hidden[:, 1:], ctx.text_query))
    assert torch.allclose(skip.scores(ctx), expected, atol=1e-6)  # text term still follows cross_beta
    assert _results_equal(skip(ctx), attention_only(ctx))
    assert not torch.equal(skip.scores(ctx), get_method("sparsezip").scores(ctx))


def test_cross_beta_zero_ignores_the_text() -> None:
    ctx = _ctx(2, 6)
    no_text = VisionContext(hidden=ctx.hidden, keys=ctx.keys, cls_attn=ctx.cls_attn)
    blind = get_method("sparsezip", cross_beta=0.0)
    assert _results_equal(blind(ctx), blind(no_text))
    aware = get_method("sparsezip", cross_beta=0.3)
    assert torch.equal(aware.scores(no_text), blind.scores(ctx))  # no question given: no text term
    delta = aware.scores(ctx) - blind.scores(ctx)
    expected = 0.3 * scoring.zscore(scoring.text_relevance(ctx.hidden[:, 1:], ctx.text_query))
    assert torch.allclose(delta, expected, atol=1e-5)


def test_skip_dynamic_k_fixes_k_at_dominant() -> None:
    ctx = _ctx(2, 8)
    dynamic = get_method("sparsezip", dynamic_k=True, k_min=5, k_max=30, dynk={"c": 20.0, "scale": 8.0})
    skipped = get_method("sparsezip", dynamic_k=True, skip_dynamic_k=True, k_min=5, k_max=30, dominant=12)
    assert skipped(ctx).k.tolist() == [12, 12]
    assert _results_equal(skipped(ctx), get_method("sparsezip", dominant=12, k_min=5, k_max=30)(ctx))
    k = dynamic(ctx).k
    assert bool(((k >= 5) & (k <= 30)).all())


def test_skip_ctx_merge_swaps_in_visionzip_merging_only() -> None:
    ctx = _ctx(2, 8)
    default = get_method("sparsezip", budget=24)(ctx)
    swapped_method = get_method("sparsezip", budget=24, skip_ctx_merge=True)
    swapped = swapped_method(ctx)
    k = int(default.k[0])
    assert torch.equal(default.kept_index, swapped.kept_index)  # dominant selection untouched
    assert torch.equal(default.tokens[:, : 1 + k], swapped.tokens[:, : 1 + k])
    remaining = swapped.assignment[:, 1:] > k  # non-dominant patches
    tokens, valid, _ = visionzip_merge(ctx.hidden[:, 1:], ctx.keys[:, 1:], remaining,
                                       swapped_method.cfg.merging.contextual_num)
    assert bool(valid.all()) and swapped.lengths.tolist() == [24, 24]
    assert torch.allclose(swapped.tokens[:, 1 + k :], tokens, atol=1e-6)
    assert not torch.allclose(default.tokens[:, 1 + k :], swapped.tokens[:, 1 + k :])


def test_keep_cls_false_drops_cls_and_gives_its_slot_to_the_split() -> None:
    ctx = _ctx(2, 8)
    res = get_method("sparsezip", budget=20, keep_cls=False)(ctx)
    assert res.lengths.tolist() == [20, 20] and bool((res.assignment[:, 0] == -1).all())
    assert bool((res.kept_index >= 1).all()) and res.k.tolist() == [round(20 * 54 / 86)] * 2


def test_dynamic_k_with_budget_and_calibration_hits_the_target() -> None:
    contexts = [_ctx(4, 12, seed=s) for s in range(4)]
    # Vary the score variance across images the way real images do: sharper or flatter attention.
    contexts = [VisionContext(hidden=c.hidden, keys=c.keys, cls_attn=torch.softmax(
        (s + 1) * torch.log(c.cls_attn), dim=-1), text_query=c.text_query) for s, c in enumerate(contexts)]
    base = get_method("sparsezip", budget=48, dynamic_k=True, k_min=16, k_max=40)
    target = base.cfg.dominant
    calibration = base.calibrate(contexts)
    assert calibration.target_mean_k == target and abs(calibration.mean_k - target) <= 0.5
    assert calibration.std_k > 0
    tuned = get_method("sparsezip", budget=48, dynamic_k=True, k_min=16, k_max=40, dynk=calibration.as_config())
    ks = torch.cat([tuned(c).k for c in contexts]).double()
    assert float(ks.mean()) == pytest.approx(calibration.mean_k)
    lengths = torch.cat([tuned(c).lengths for c in contexts]).double()
    assert abs(float(lengths.mean()) - 48) <= 0.5  # the budget is met on average, per image it varies


def test_budget_validation() -> None:
    with pytest.raises(ValueError, match="budget=0"):
        get_method("sparsezip", budget=0)
    with pytest.raises(ValueError, match=r"budget=65 exceeds the 64 patches"):
        get_method("sparsezip", budget=65)(_ctx(1, 8))
    with pytest.raises(ValueError, match=r"targets 120 dominant tokens, outside the dynamic-K range \[k_min=32"):
        get_method("sparsezip", budget=192, dynamic_k=True)
    with pytest.raises(ValueError, match=r"unknown config key 'model\.sparsezip\.budgett'"):
        get_method("sparsezip", budgett=64)
    assert get_method("sparsezip", budget=1)(_ctx(1, 4)).lengths.tolist() == [1]  # CLS only


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_half_precision_inputs(dtype: torch.dtype) -> None:
    ctx32 = _ctx(2, 8)
    ctx = VisionContext(hidden=ctx32.hidden.to(dtype), keys=ctx32.keys.to(dtype), cls_attn=ctx32.cls_attn.to(dtype),
                        text_query=ctx32.text_query.to(dtype))
    res = get_method("sparsezip", budget=24)(ctx)
    assert res.tokens.dtype == dtype and bool(torch.isfinite(res.tokens).all()) and res.lengths.tolist() == [24, 24]
