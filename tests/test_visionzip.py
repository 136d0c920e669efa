"""VisionZip against the spec's test vector and the official algorithm, plus its budget mapping."""

import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

from sparsezip import VisionContext, get_method
from sparsezip.testing.strategies import seeds


def _llava_like(b: int, n: int, seed: int, c: int = 32, dk: int = 8, heads: int = 4) -> VisionContext:
    g = torch.Generator().manual_seed(seed)
    return VisionContext(
        hidden=torch.randn(b, n, c, generator=g),
        keys=torch.randn(b, n, dk, generator=g),
        cls_attn=torch.softmax(3 * torch.randn(b, heads, n, generator=g), dim=-1),
    )


def _official(x: torch.Tensor, keys: torch.Tensor, attn: torch.Tensor, dominant: int, contextual: int):
    """One image, the official VisionZip steps written out plainly (the test's independent reference)."""
    n = x.shape[0]
    top = torch.argsort(attn[:, 1:].sum(0), descending=True, stable=True)[: dominant - 1] + 1
    kept = torch.cat([torch.tensor([0]), torch.sort(top).values])
    rest = torch.tensor([i for i in range(n) if i not in set(kept.tolist())])
    if contextual == 0:  # (the official code divides by zero here; we keep the dominant tokens only)
        return x[kept], kept, None
    metric = keys[rest] / keys[rest].norm(dim=-1, keepdim=True)
    step = max(1, len(rest) // contextual)
    targets = torch.arange(0, len(rest), step)[:contextual]
    others = ~torch.isin(torch.arange(len(rest)), targets)
    assign = (metric[others] @ metric[targets].T).argmax(1)
    merged = torch.stack([x[rest][others][assign == j].mean(0) if (assign == j).any() else torch.zeros(x.shape[1])
                          for j in range(len(targets))])
    return torch.cat([x[kept], x[rest][targets] + merged]), kept, step


def test_spec_test_vector_llava_shapes() -> None:
    ctx = _llava_like(2, 577, seed=0)
    res = get_method("visionzip", dominant=54, contextual=10)(ctx)
    assert res.tokens.shape == (2, 64, 32) and res.lengths.tolist() == [64, 64] and res.k.tolist() == [53, 53]
    for b in range(2):
        expected, kept, step = _official(ctx.hidden[b], ctx.keys[b], ctx.cls_attn[b], 54, 10)
        assert step == 52
        assert torch.equal(res.tokens[b, 0], ctx.hidden[b, 0])  # output[0] = CLS
        top53 = torch.sort(torch.topk(ctx.cls_attn[b, :, 1:].sum(0), 53).indices + 1).values
        assert torch.equal(res.kept_index[b], torch.cat([torch.tensor([0]), top53]))
        assert torch.equal(res.kept_index[b], kept)
        assert torch.equal(res.tokens[b, 1:54], ctx.hidden[b, top53])  # outputs 1..53 = top-53, ascending
        assert torch.allclose(res.tokens[b], expected, atol=1e-5)


@given(seed=seeds, g=st.integers(2, 8), data=st.data())
def test_matches_the_official_algorithm_on_small_grids(seed: int, g: int, data: st.DataObject) -> None:
    n = g * g + 1
    budget = data.draw(st.integers(1, n - 1), label="budget")
    ctx = _llava_like(2, n, seed, c=6, dk=3, heads=2)
    method = get_method("visionzip", budget=budget)
    res = method(ctx)
    assert res.lengths.tolist() == [budget, budget]  # exactly the budget, always
    for b in range(2):
        expected, _, _ = _official(ctx.hidden[b], ctx.keys[b], ctx.cls_attn[b], method.dominant, method.contextual)
        assert torch.allclose(res.tokens[b], expected, atol=1e-5)


@pytest.mark.parametrize(("budget", "split"), [(64, (54, 10)), (128, (108, 20)), (192, (162, 30)), (1, (1, 0))])
def test_budget_maps_to_the_papers_splits(budget: int, split: tuple[int, int]) -> None:
    method = get_method("visionzip", budget=budget)
    assert (method.dominant, method.contextual) == split
    assert get_method("visionzip", budget=budget, dominant=split[0]).contextual == split[1]


@pytest.mark.parametrize(("patches", "budgets"), [(144, (16, 32, 48)), (64, (7, 14, 21)), (576, (64, 128, 192))])
def test_small_model_budgets_are_exact(patches: int, budgets: tuple[int, ...]) -> None:
    ctx = _llava_like(3, patches + 1, seed=1, c=8, dk=4)
    for budget in budgets:
        res = get_method("visionzip", budget=budget)(ctx)
        assert res.lengths.tolist() == [budget] * 3
        assert bool((res.assignment >= 0).all())  # VisionZip accounts for every token, CLS included


def test_bad_configurations_are_value_errors() -> None:
    with pytest.raises(ValueError, match=r"budget=64 implies dominant=54, contextual=10; got dominant=50"):
        get_method("visionzip", budget=64, dominant=50)
    with pytest.raises(ValueError, match="budget=0"):
        get_method("visionzip", budget=0)
    with pytest.raises(ValueError, match="dominant=0"):
        get_method("visionzip", dominant=0)
    with pytest.raises(ValueError, match="budget=65 exceeds the 64 patches"):
        get_method("visionzip", budget=65)(_llava_like(1, 65, seed=0))
