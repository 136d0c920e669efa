"""FastV against the outputs of its authors' code (fixtures/golden/fastv/, see SOURCE.md there): the ranking row,
the kept set, original positions, per-layer caches, greedy tokens and step logits on the stored tiny Llama; the
selection from stored LLaVA-scale scores; the budget in both modes."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from sparsezip.methods import get_method
from sparsezip.methods.fastv import last_prompt_row, last_token_scores
from sparsezip.methods.llm_budget import BudgetWarning
from sparsezip.selection import topk_mask
from sparsezip.testing.golden_llm import load_golden, run_golden

GOLDEN = Path(__file__).resolve().parents[1] / "fixtures" / "golden" / "fastv"
CASE = "small_k2_keep8"
LOGITS_ATOL = 1e-4  # the unpruned tiny model agrees to 1.3e-5 between transformers 4.37 (upstream) and 5.24


@pytest.fixture(scope="module")
def golden():
    return load_golden(GOLDEN / "small.safetensors")


def _ranking_row(layer_index, state):
    """What FastV ranks by: layer K-1's attention of the last prompt token, mean over heads."""
    probs = state.attention(last_prompt_row(state))
    return probs[:, :, 0].mean(dim=1), last_token_scores(probs, state.visual_index)


@pytest.mark.parametrize("pad", [0, 3])
def test_golden_small_case_batched_and_left_padded(golden, pad: int) -> None:
    run = run_golden(golden, golden.rows(), get_method("fastv", keep=8), pad=pad, inspect=_ranking_row)
    [(attention, scores)] = run.inspected
    for r in range(2):
        g = {k.split(".", 2)[2]: v for k, v in golden.tensors.items() if k.startswith(f"{CASE}.row{r}.")}
        torch.testing.assert_close(attention[r, pad:], g["attn_layer_k_minus_1_headmean_lastrow"], atol=1e-5, rtol=0)
        torch.testing.assert_close(scores[r], g["visual_scores"], atol=1e-5, rtol=0)
        assert torch.equal(run.kept_positions[0][r], g["kept_visual_positions"])
        assert run.generation.cache_tokens_per_layer[r] == g["kv_cache_len_per_layer_after_prefill"].tolist()
        assert run.generation.tokens[r][:6] == g["kv_greedy_tokens"].tolist()
        torch.testing.assert_close(run.step_logits[r], g["kv_step_logits"], atol=LOGITS_ATOL, rtol=0)
        torch.testing.assert_close(run.step_logits[r, 0], g["last_token_logits"], atol=LOGITS_ATOL, rtol=0)


def test_batched_equals_batch_size_one(golden) -> None:
    """Upstream applies row 0's ranking to every row; ours ranks each row by its own attention."""
    both = run_golden(golden, golden.rows(), get_method("fastv", keep=8))
    for r, row in enumerate(golden.rows()):
        one = run_golden(golden, [row], get_method("fastv", keep=8))
        assert one.generation.tokens[0] == both.generation.tokens[r]
        assert torch.equal(one.kept_positions[0][0], both.kept_positions[0][r])
        torch.testing.assert_close(one.step_logits[0], both.step_logits[r], atol=1e-4, rtol=0)  # matmul order
    assert not torch.equal(both.kept_positions[0][0], both.kept_positions[0][1])  # the rows really differ


@pytest.mark.parametrize("keep", [64, 128, 192])
def test_selection_from_stored_llava_scale_scores(keep: int) -> None:
    g = load_file(str(GOLDEN / "llava.safetensors"))
    scores = g[f"llava_k2_keep{keep}.row0.visual_scores"][None]
    kept = torch.nonzero(topk_mask(scores, keep)[0])[:, 0] + 35  # the image starts at position 35
    assert torch.equal(kept, g[f"llava_k2_keep{keep}.row0.kept_visual_positions"])


def test_budget_on_llava15_and_on_the_embedded_model() -> None:
    for budget, kept, average in ((64, 30, 64.125), (128, 98, 127.875), (192, 166, 191.625)):
        plan = get_method("fastv", budget=budget).budget_plan(576, 32)  # layer-averaged: reachable
        assert plan.applied == "layer_averaged" and plan.setting.counts == (kept,)
        assert plan.layer_averaged == average and plan.nominal == kept
        nominal = get_method("fastv", budget=budget, budget_mode="nominal").budget_plan(576, 32)
        assert nominal.per_layer == (576,) * 2 + (budget,) * 30 and nominal.layer_averaged == (1152 + 30 * budget) / 32
    # 4 layers: layers 0 and 1 hold all 144, so the average is at least 72.5; 16 is the kept count
    with pytest.warns(BudgetWarning, match=r"fastv budget 16.*72\.50 to 144\.00.*80\.00"):
        plan = get_method("fastv", budget=16).budget_plan(144, 4)
    assert plan.applied == "nominal" and plan.per_layer == (144, 144, 16, 16) and plan.nominal == 16
    assert get_method("fastv").budget_plan(144, 4).setting.counts == (72,)  # the paper's R = 50%
    assert get_method("fastv").pruning_layers(576, 32) == (1,)


def test_bad_configurations_are_refused() -> None:
    with pytest.raises(ValueError, match="layer"):
        get_method("fastv", layer=0)
    with pytest.raises(ValueError, match="no layer after it"):
        get_method("fastv", budget=16, layer=4).budget_plan(144, 4)
    with pytest.raises(ValueError, match="exceeds the model's 144"):
        get_method("fastv", budget=145).budget_plan(144, 4)
    with pytest.raises(ValueError, match="positive integer"):
        get_method("fastv", budget=0)


def test_eval_command_takes_a_budget_mode_for_in_llm_methods(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    import json

    from sparsezip.cli import main

    root = Path(__file__).resolve().parents[1] / "fixtures"
    args = ["eval", "--dataset", "pope-adversarial", "--data", str(root / "data"), "--model-path",
            str(root / "tiny-llava"), "--limit", "4", "--batch-size", "4", "--no-progress", "--device", "cpu"]
    assert main([*args, "--method", "visionzip", "--budget", "16", "--budget-mode", "nominal",
                 "--out", str(tmp_path / "vz")]) == 2
    assert "--budget-mode is for in-LLM methods" in capsys.readouterr().err
    assert main([*args, "--method", "fastv", "--budget", "16", "--budget-mode", "nominal",
                 "--out", str(tmp_path / "fastv")]) == 0
    run = json.loads((tmp_path / "fastv" / "run.json").read_text())
    assert run["method"] == "fastv" and run["method_config"]["budget_mode"] == "nominal"
    record = json.loads((tmp_path / "fastv" / "predictions.jsonl").read_text().splitlines()[0])
    assert record["visual_tokens"] == 80 and record["extra"]["nominal_visual_tokens"] == 16
    assert record["visual_tokens_per_layer"] == [144, 144, 16, 16]
