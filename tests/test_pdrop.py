"""PyramidDrop against the outputs of its authors' code (fixtures/golden/pdrop/, see SOURCE.md there): per-stage
scores (the next layer's attention at renumbered positions), kept sets, per-layer caches, greedy tokens and step
logits (decode positions shifted per stage) on the stored tiny Llama; selection and cache lengths of the
LLaVA-scale cases; the budget in both modes."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from sparsezip.methods import get_method
from sparsezip.methods.fastv import last_prompt_row, last_token_scores
from sparsezip.methods.llm_budget import BudgetWarning
from sparsezip.methods.pdrop import depth_layers, stage_counts
from sparsezip.selection import topk_mask
from sparsezip.testing.golden_llm import load_golden, run_golden

GOLDEN = Path(__file__).resolve().parents[1] / "fixtures" / "golden" / "pdrop"
CASE = "small_l1-2-3_lam0p5"
LOGITS_ATOL = 1e-4  # the unpruned tiny model agrees to 1.3e-5 between transformers 4.37 (upstream) and 5.24


@pytest.fixture(scope="module")
def golden():
    return load_golden(GOLDEN / "small.safetensors")


def _golden_method():
    return get_method("pdrop", layer_list=(1, 2, 3), ratio=0.5)


def _scores(layer_index, state):
    return last_token_scores(state.next_attention(last_prompt_row(state)), state.visual_index)


@pytest.mark.parametrize("pad", [0, 3])
def test_golden_small_case_batched_and_left_padded(golden, pad: int) -> None:
    run = run_golden(golden, golden.rows(), _golden_method(), pad=pad, inspect=_scores)
    for r in range(2):
        for stage in range(3):
            prefix = f"{CASE}.row{r}.stage{stage}"
            count = golden.tensors[f"{prefix}.visual_positions_in"].numel()
            torch.testing.assert_close(run.inspected[stage][r, :count], golden.tensors[f"{prefix}.visual_scores"],
                                       atol=1e-5, rtol=0)
            assert torch.equal(run.kept_positions[stage][r], golden.tensors[f"{prefix}.kept_visual_positions"])
        row = f"{CASE}.row{r}"
        assert run.generation.cache_tokens_per_layer[r] == golden.tensors[f"{row}.cache_len_per_layer_after_prefill"].tolist()
        assert run.generation.counts_after_pruning[r] == [12, 6, 3]
        assert run.generation.tokens[r][:6] == golden.tensors[f"{row}.greedy_tokens"].tolist()
        torch.testing.assert_close(run.step_logits[r], golden.tensors[f"{row}.step_logits"], atol=LOGITS_ATOL, rtol=0)


def test_batched_equals_batch_size_one(golden) -> None:
    both = run_golden(golden, golden.rows(), _golden_method())
    for r, row in enumerate(golden.rows()):
        one = run_golden(golden, [row], _golden_method())
        assert one.generation.tokens[0] == both.generation.tokens[r]
        torch.testing.assert_close(one.step_logits[0], both.step_logits[r], atol=1e-4, rtol=0)  # matmul order


@pytest.mark.parametrize(("case", "layer_list", "ratio"), [
    ("llava_l8-16-24_lam0p5", (8, 16, 24), 0.5), ("llava_l2-8-16_lam0p19", (2, 8, 16), 0.19)])
def test_llava_scale_selection_and_cache_lengths(case: str, layer_list: tuple[int, ...], ratio: float) -> None:
    g = load_file(str(GOLDEN / "llava.safetensors"))
    counts = stage_counts(576, ratio, 3)
    for stage, keep in enumerate(counts):
        prefix = f"{case}.row0.stage{stage}"
        kept = topk_mask(g[f"{prefix}.visual_scores"][None], keep)[0]
        assert torch.equal(g[f"{prefix}.visual_positions_in"][kept], g[f"{prefix}.kept_visual_positions"])
    plan = get_method("pdrop", layer_list=layer_list, ratio=ratio).budget_plan(576, 32)
    text = 635 - 576
    assert [n + text for n in plan.per_layer] == g[f"{case}.row0.cache_len_per_layer_after_prefill"].tolist()


def test_budget_on_llava15_and_on_the_embedded_model() -> None:
    # the maintainer's recipe (layers 2 / 8 / 16, lambda solved for the layer average); per-layer as derived
    for budget, counts, average in ((64, (111, 21, 4), 64.0625), (128, (242, 102, 42), 127.875),
                                    (192, (322, 180, 101), 191.875)):
        plan = get_method("pdrop", budget=budget).budget_plan(576, 32)
        assert plan.applied == "layer_averaged" and plan.setting.counts == counts
        assert plan.per_layer == (576,) * 2 + (counts[0],) * 6 + (counts[1],) * 8 + (counts[2],) * 16
        assert plan.layer_averaged == average and plan.setting.params["layer_list"] == [2, 8, 16]
    default = get_method("pdrop").budget_plan(576, 32)  # the authors' default: 8 / 16 / 24, lambda 0.5
    assert default.setting.counts == (288, 144, 72) and default.layer_averaged == 270
    assert get_method("pdrop", budget=72).budget_plan(144, 4).per_layer == (144, 78, 43, 23)
    # 16 of 144 on 4 layers is out of reach (>= 36.25): the count after the first drop
    with pytest.warns(BudgetWarning, match=r"pdrop budget 16.*36\.25 to 144\.00.*40\.25"):
        plan = get_method("pdrop", budget=16).budget_plan(144, 4)
    assert plan.applied == "nominal" and plan.per_layer == (144, 16, 1, 0) and plan.nominal == 16
    nominal = get_method("pdrop", budget=64, budget_mode="nominal").budget_plan(576, 32)
    assert nominal.setting.counts == (64, 7, 0) and nominal.layer_averaged == 49.75


def test_layers_on_other_depths() -> None:
    assert depth_layers((2, 8, 16), 32) == (2, 8, 16)
    assert depth_layers((2, 8, 16), 4) == depth_layers((8, 16, 24), 4) == (1, 2, 3)
    assert depth_layers((2, 8, 16), 3) == (1, 2)  # a stage the model has no layer for is left out
    with pytest.raises(ValueError, match="too shallow"):
        depth_layers((2, 8, 16), 1)
    assert get_method("pdrop", budget=64).pruning_layers(576, 32) == (1, 7, 15)


def test_bad_configurations_are_refused() -> None:
    with pytest.raises(ValueError, match="both layer_list and ratio"):
        get_method("pdrop", layer_list=(1, 2))
    with pytest.raises(ValueError, match="strictly increasing"):
        get_method("pdrop", layer_list=(2, 2), ratio=0.5)
    with pytest.raises(ValueError, match="ratio"):
        get_method("pdrop", layer_list=(1,), ratio=1.5)
    with pytest.raises(ValueError, match="exceeds the model's 4 layers"):
        get_method("pdrop", layer_list=(1, 4), ratio=0.5).budget_plan(144, 4)
