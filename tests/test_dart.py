"""DART against the outputs of its authors' code (fixtures/golden/dart/, see SOURCE.md there): key L1 norms,
pivots, CPython-set pivot order and kept sets from the stored tensors; the end-to-end run on the stored tiny Llama
(final norm, original positions, caches, greedy tokens, step logits); the set-order emulation against the
interpreter's own ``set``; the budget in both modes."""

from __future__ import annotations

import platform
from pathlib import Path

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from safetensors.torch import load_file

from sparsezip.methods import get_method
from sparsezip.methods.dart import dart_select
from sparsezip.methods.llm_budget import BudgetWarning
from sparsezip.methods.set_order import cpython_set_order
from sparsezip.testing.golden_llm import load_golden, run_golden

GOLDEN = Path(__file__).resolve().parents[1] / "fixtures" / "golden" / "dart"
LOGITS_ATOL = 1e-4  # the unpruned tiny model agrees to 1.3e-5 between transformers 4.37 (upstream) and 5.24
SMALL_CASES = {"small_k2_m8_p4-4": (4, 4), "small_k2_m8_p2-2": (2, 2)}


@pytest.fixture(scope="module")
def golden():
    return load_golden(GOLDEN / "small.safetensors")


def _select(g: dict, source: str, row: int, seq: int, vis_start: int, vis_len: int, pivots, picks):
    keys = g[f"{source}.row{row}.keys_layer_k_minus_1"]  # [H, S, Dh]
    key_l1 = keys.abs().sum(dim=(0, 2))[None]
    visual = torch.arange(vis_start, vis_start + vis_len)[None]
    text = torch.arange(vis_start + vis_len, seq)[None]
    selection = dart_select(key_l1, g[f"{source}.row{row}.normed_hidden_layer_k_minus_1"][None], visual, text,
                            torch.arange(seq)[None], pivots=pivots, picks=picks)
    return key_l1[0], visual[0], selection


@pytest.mark.parametrize("case", sorted(SMALL_CASES))
@pytest.mark.parametrize("row", [0, 1])
def test_selection_from_the_stored_small_tensors(golden, case: str, row: int) -> None:
    g, pivots = golden.tensors, SMALL_CASES[case]
    key_l1, visual, sel = _select(g, case, row, 40, 5, 24, pivots, 8 // sum(pivots))
    prefix = f"{case}.row{row}"
    torch.testing.assert_close(key_l1[5:29], g[f"{prefix}.image_key_l1"], atol=1e-5, rtol=1e-6)
    torch.testing.assert_close(key_l1[29:], g[f"{prefix}.text_key_l1"], atol=1e-5, rtol=1e-6)
    assert torch.equal(sel.image_pivots[0], g[f"{prefix}.image_pivots"])
    assert torch.equal(sel.text_pivots[0], g[f"{prefix}.text_pivots"])
    assert torch.equal(sel.order[0], g[f"{prefix}.pivot_processing_order"])
    assert torch.equal(visual[sel.keep[0]], g[f"{prefix}.kept_visual_positions"])


@pytest.mark.parametrize("m", [64, 128, 192])
def test_selection_from_the_stored_llava_scale_tensors(m: int) -> None:
    """576 visual tokens at 35; the order matters here (ascending order changes the 128 and 192 sets)."""
    g = load_file(str(GOLDEN / "llava.safetensors"))
    _, visual, sel = _select(g, "llava_k2_m128_p4-4", 0, 635, 35, 576, (4, 4), m // 8)  # tensors stored once
    prefix = f"llava_k2_m{m}_p4-4.row0"
    assert torch.equal(sel.order[0], g[f"{prefix}.pivot_processing_order"])
    assert torch.equal(visual[sel.keep[0]], g[f"{prefix}.kept_visual_positions"])
    assert int(sel.keep.sum()) == m + 4


@pytest.mark.parametrize(("case", "pad"), [("small_k2_m8_p4-4", 0), ("small_k2_m8_p4-4", 3), ("small_k2_m8_p2-2", 3)])
def test_golden_small_case_end_to_end(golden, case: str, pad: int) -> None:
    p_img, p_txt = SMALL_CASES[case]
    method = get_method("dart", max_num_truncation=8, pivot_image=p_img, pivot_text=p_txt)
    run = run_golden(golden, golden.rows(), method, pad=pad,
                     inspect=lambda layer, state: state.final_norm(state.hidden))
    [normed] = run.inspected
    for r in range(2):
        prefix = f"{case}.row{r}"
        torch.testing.assert_close(normed[r, pad:], golden.tensors[f"{prefix}.normed_hidden_layer_k_minus_1"],
                                   atol=1e-5, rtol=0)
        assert torch.equal(run.kept_positions[0][r], golden.tensors[f"{prefix}.kept_visual_positions"])
        cache = golden.tensors[f"{prefix}.cache_len_per_layer_after_prefill"].tolist()
        assert run.generation.cache_tokens_per_layer[r] == cache
        assert run.generation.tokens[r][:6] == golden.tensors[f"{prefix}.greedy_tokens"].tolist()
        torch.testing.assert_close(run.step_logits[r], golden.tensors[f"{prefix}.step_logits"],
                                   atol=LOGITS_ATOL, rtol=0)


def test_batched_equals_batch_size_one(golden) -> None:
    both = run_golden(golden, golden.rows(), get_method("dart", max_num_truncation=8, pivot_image=2, pivot_text=2))
    for r, row in enumerate(golden.rows()):
        one = run_golden(golden, [row], get_method("dart", max_num_truncation=8, pivot_image=2, pivot_text=2))
        assert one.generation.tokens[0] == both.generation.tokens[r]
        assert torch.equal(one.kept_positions[0][0], both.kept_positions[0][r])
        torch.testing.assert_close(one.step_logits[0], both.step_logits[r], atol=1e-4, rtol=0)  # matmul order


@pytest.mark.skipif(platform.python_implementation() != "CPython", reason="emulates CPython's set")
@settings(max_examples=150, deadline=None)
@given(data=st.data())
def test_set_order_is_the_interpreters(data: st.DataObject) -> None:
    rows = data.draw(st.integers(1, 4), label="rows")
    size = data.draw(st.integers(1, 24), label="values per row")
    high = data.draw(st.sampled_from([32, 700, 5000, 2**40]), label="range")
    values = [data.draw(st.lists(st.integers(0, high), min_size=size, max_size=size, unique=True)) for _ in range(rows)]
    ordered = cpython_set_order(torch.tensor(values))
    assert ordered.tolist() == [list(set(v)) for v in values]


def test_set_order_refuses_what_it_cannot_emulate() -> None:
    with pytest.raises(ValueError, match="distinct"):
        cpython_set_order(torch.tensor([[3, 3]]))
    with pytest.raises(ValueError, match="2\\*\\*61"):
        cpython_set_order(torch.tensor([[-1, 2]]))


def test_budget_on_llava15_and_on_the_embedded_model() -> None:
    for m in (64, 128, 192):  # the paper's N = M; kept M + 4
        plan = get_method("dart", budget=m, budget_mode="nominal").budget_plan(576, 32)
        assert plan.setting.counts == (m + 4,) and plan.layer_averaged == (1152 + 30 * (m + 4)) / 32
    for budget, m, average in ((64, 24, 62.25), (128, 96, 129.75), (192, 160, 189.75)):
        plan = get_method("dart", budget=budget).budget_plan(576, 32)
        assert plan.applied == "layer_averaged" and plan.nominal == m and plan.layer_averaged == average
    with pytest.warns(BudgetWarning, match=r"dart budget 16.*78\.00.*82\.00"):
        plan = get_method("dart", budget=16).budget_plan(144, 4)
    assert plan.applied == "nominal" and plan.per_layer == (144, 144, 20, 20)
    assert get_method("dart").budget_plan(576, 32).nominal == 128  # the authors' default M


def test_bad_configurations_are_refused() -> None:
    with pytest.raises(ValueError, match="keeps 148 tokens"):
        get_method("dart", budget=144, budget_mode="nominal").budget_plan(144, 4)
    with pytest.raises(ValueError, match="pivot_image"):
        get_method("dart", pivot_image=0)
    # a row with fewer visual tokens than the nominal image (multi-size families): each pivot picks an equal
    # share of the row's pool at most (here 3 // 2 = 1 instead of 2)
    short = dart_select(torch.ones(1, 8), torch.ones(1, 8, 2), torch.arange(1, 5)[None], torch.arange(5, 8)[None],
                        torch.arange(8)[None], pivots=(1, 1), picks=2)
    assert int(short.keep.sum()) == 1 + 2 * 1
    with pytest.raises(ValueError, match="text tokens after the image"):
        dart_select(torch.ones(1, 8), torch.ones(1, 8, 2), torch.arange(1, 7)[None], torch.tensor([[7, -1]]),
                    torch.arange(8)[None], pivots=(1, 2), picks=1)
