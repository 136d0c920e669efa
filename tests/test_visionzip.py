"""VisionZip against golden outputs of its authors' code, the spec's test vector, and its budget mapping."""

from pathlib import Path

import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st
from safetensors import safe_open
from safetensors.torch import load_file

from sparsezip import VisionContext, get_method
from sparsezip.testing.strategies import seeds


def _llava_like(b: int, n: int, seed: int, c: int = 32, dk: int = 8, heads: int = 4) -> VisionContext:
    g = torch.Generator().manual_seed(seed)
    return VisionContext(
        hidden=torch.randn(b, n, c, generator=g),
        keys=torch.randn(b, n, dk, generator=g),
        cls_attn=torch.softmax(3 * torch.randn(b, heads, n, generator=g), dim=-1),
    )


GOLDEN = sorted((Path(__file__).resolve().parent.parent / "fixtures" / "golden" / "visionzip").glob("*.safetensors"))


@pytest.mark.parametrize("path", GOLDEN, ids=lambda p: p.stem)
def test_matches_the_authors_code(path: Path) -> None:
    """Golden outputs of VisionZip's own tower forward on fixed inputs (fixtures/golden/visionzip/SOURCE.md)."""
    golden = load_file(path)
    with safe_open(path, "pt") as f:
        meta = f.metadata()
    dominant, contextual = int(meta["dominant"]), int(meta["contextual"])
    ctx = VisionContext(hidden=golden["hidden"], keys=golden["keys"], cls_attn=golden["cls_attn"])
    res = get_method("visionzip", dominant=dominant, contextual=contextual)(ctx)
    assert res.lengths.tolist() == [dominant + contextual] * ctx.batch_size
    assert torch.equal(res.kept_index, torch.sort(golden["all_indices"], dim=1).values)  # theirs: CLS, then top-k order
    torch.testing.assert_close(res.tokens, golden["tokens"], rtol=1e-5, atol=1e-5)


def test_golden_covers_the_paper_budgets_and_a_step_of_one() -> None:
    names = {p.stem for p in GOLDEN}
    assert {"b2_n577_d54_c10", "b1_n577_d108_c20", "b1_n577_d162_c30", "b2_n17_d5_c11"} <= names


def test_spec_test_vector_llava_shapes() -> None:
    ctx = _llava_like(2, 577, seed=0)
    res = get_method("visionzip", dominant=54, contextual=10)(ctx)
    assert res.tokens.shape == (2, 64, 32) and res.lengths.tolist() == [64, 64] and res.k.tolist() == [53, 53]
    for b in range(2):
        assert torch.equal(res.tokens[b, 0], ctx.hidden[b, 0])  # output[0] = CLS
        top53 = torch.sort(torch.topk(ctx.cls_attn[b, :, 1:].sum(0), 53).indices + 1).values
        assert torch.equal(res.kept_index[b], torch.cat([torch.tensor([0]), top53]))
        assert torch.equal(res.tokens[b, 1:54], ctx.hidden[b, top53])  # outputs 1..53 = top-53, ascending
        rest = torch.tensor([i for i in range(577) if i not in set(res.kept_index[b].tolist())])
        # 523 remaining tokens, step 523 // 10 = 52: contextual token j is anchored at rest[52 * j]
        anchors = rest[torch.arange(10) * 52]
        members = [rest[(res.assignment[b, rest] == 54 + j)] for j in range(10)]
        for j in range(10):
            others = members[j][members[j] != anchors[j]]
            mean = ctx.hidden[b, others].mean(0) if len(others) else torch.zeros(32)
            assert torch.allclose(res.tokens[b, 54 + j], ctx.hidden[b, anchors[j]] + mean, atol=1e-5)


@given(seed=seeds, g=st.integers(2, 8), data=st.data())
def test_every_budget_gives_exactly_its_tokens_and_accounts_for_every_token(seed: int, g: int, data: st.DataObject) -> None:
    n = g * g + 1
    budget = data.draw(st.integers(1, n - 1), label="budget")
    ctx = _llava_like(2, n, seed, c=6, dk=3, heads=2)
    method = get_method("visionzip", budget=budget)
    res = method(ctx)
    assert res.lengths.tolist() == [budget, budget]  # exactly the budget, always
    # with contextual tokens every token lands in an output slot; without (tiny budgets) the rest is dropped
    assert bool((res.assignment >= 0).all()) == (method.contextual > 0)


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
