"""``sparsezip compare``: refusals on the fake model, and the done-means of issue 13 on the embedded model."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from sparsezip.cli import main
from sparsezip.data import load_dataset
from sparsezip.eval.runner import evaluate
from sparsezip.methods import get_method
from sparsezip.testing.fake import FakeVisionLanguageModel
from sparsezip.testing.trees import write_tree

ROOT = Path(__file__).resolve().parents[1]


def _fake_run(samples: list, out: Path, answer: str, dataset: str = "pope") -> Path:
    model = FakeVisionLanguageModel(answer=lambda image, question: answer)
    evaluate(model, get_method("none"), samples, out, dataset=dataset, progress=False)
    return out


def test_compare_prints_json_with_the_issue_keys(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    samples = list(load_dataset("pope", write_tree("pope", "files", tmp_path / "data")))
    a = _fake_run(samples, tmp_path / "a", "Yes")
    b = _fake_run(samples, tmp_path / "b", "No")
    assert main(["compare", str(a), str(b), "--json", "--resamples", "500"]) == 0
    result = json.loads(capsys.readouterr().out)
    for key in ("metric", "a", "b", "delta", "ci_low", "ci_high", "p_value", "n", "discordant", "loyalty",
                "retained_correct"):
        assert key in result
    assert result["loyalty"] == 0.0 and result["n"] == len(samples)
    assert set(result["categories"]) == {"random", "adversarial"}
    assert main(["compare", str(a), str(b)]) == 0
    assert "McNemar p" in capsys.readouterr().out


def test_compare_refuses_runs_of_different_datasets_or_questions(tmp_path: Path, capsys) -> None:
    pope = list(load_dataset("pope", write_tree("pope", "files", tmp_path / "data")))
    mme = list(load_dataset("mme", write_tree("mme", "files", tmp_path / "data")))
    a = _fake_run(pope, tmp_path / "a", "Yes")
    assert main(["compare", str(a), str(_fake_run(mme, tmp_path / "m", "Yes", "mme"))]) == 2
    assert "differ in dataset" in capsys.readouterr().err
    assert main(["compare", str(a), str(_fake_run(pope[:3], tmp_path / "short", "Yes"))]) == 2
    assert "different question sets" in capsys.readouterr().err
    assert main(["compare", str(a), str(tmp_path / "nowhere")]) == 2
    assert "not a sparsezip eval run folder" in capsys.readouterr().err


@pytest.mark.slow
def test_none_vs_random_is_significant_on_the_embedded_model(tmp_path: Path, embedded_vlm) -> None:
    """Issue 13's done-means: at 1/9 of the tokens random selection is clearly worse than all tokens."""
    from sparsezip.data.subsets import limit_samples
    from sparsezip.eval.compare import compare_runs

    samples = limit_samples(list(load_dataset("pope-adversarial", ROOT / "fixtures" / "data" / "pope")), 120)
    budget = round(embedded_vlm.num_patches / 9)
    for name, method in (("none", get_method("none")), ("random", get_method("random", budget=budget))):
        evaluate(embedded_vlm, method, samples, tmp_path / name, dataset="pope-adversarial", batch_size=40,
                 max_new_tokens=4, progress=False)
    result = compare_runs(tmp_path / "none", tmp_path / "random", n_resamples=2000)
    assert result["ci_high"] < 0 and result["p_value"] < 0.01, result
