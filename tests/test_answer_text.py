"""Answers are stripped before parsing everywhere a run is scored (the runner's summary, ``sparsezip score``,
``sparsezip compare``), while the predictions file keeps the raw generated text."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from sparsezip.cli import main
from sparsezip.data import load_dataset
from sparsezip.data.records import answer_text, score_records, scored_records
from sparsezip.eval.compare import compare_records
from sparsezip.eval.runner import evaluate
from sparsezip.methods import get_method
from sparsezip.testing.fake import FakeVisionLanguageModel
from sparsezip.testing.trees import write_tree

# Each raw text means "no" once stripped; the official POPE parser, splitting on spaces, reads it as yes.
PADDED_NO = ["No\n", "\nNo", "\tNo", "No\r\n", "\n\nNo, there is not."]


def test_answer_text_strips_and_leaves_the_record_alone() -> None:
    record = {"question_id": 1, "prediction": " \tNo, there is not.\n"}
    assert answer_text(record) == "No, there is not."
    assert scored_records([record]) == [{"question_id": 1, "prediction": "No, there is not."}]
    assert record["prediction"] == " \tNo, there is not.\n"


@pytest.mark.parametrize("raw", PADDED_NO)
def test_padded_no_is_a_no(raw: str) -> None:
    records = [{"question_id": 1, "category": "random", "answers": ["no"], "prediction": raw},
               {"question_id": 2, "category": "random", "answers": ["yes"], "prediction": "Yes\n"}]
    metrics = score_records("pope", records)
    assert (metrics["accuracy"], metrics["yes_ratio"]) == (1.0, 0.5)


def test_runner_summary_scores_stripped_answers_and_keeps_the_raw_text(tmp_path: Path) -> None:
    samples = list(load_dataset("pope", write_tree("pope", "files", tmp_path / "data")))

    labels = {s.question: s.answers[0] for s in samples}  # the tree asks each question with one label

    def padded(image: object, question: str) -> str:  # the right answer, wrapped in whitespace
        return "\nNo\n" if labels[question] == "no" else "Yes\n"

    summary = evaluate(FakeVisionLanguageModel(answer=padded), get_method("none"), samples, tmp_path / "out",
                       dataset="pope", progress=False)
    lines = [json.loads(line) for line in (tmp_path / "out" / "predictions.jsonl").read_text().splitlines()]
    assert {r["prediction"] for r in lines} == {"\nNo\n", "Yes\n"}  # raw text kept
    for category in summary["metrics"]["categories"].values():
        assert category["accuracy"] == 1.0  # unstripped, every "\nNo\n" would count as yes


def test_score_command_strips(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    labels = write_tree("pope", "files", tmp_path / "data") / "coco_pope_random.json"
    rows = [json.loads(line) for line in labels.open()]
    preds = tmp_path / "p.jsonl"
    preds.write_text("".join(json.dumps({"question_id": r["question_id"],
                                         "prediction": "\nNo" if r["label"] == "no" else " Yes"}) + "\n"
                             for r in rows))
    assert main(["score", "--dataset", "pope", "--annotations", str(labels), "--predictions", str(preds)]) == 0
    result = json.loads(capsys.readouterr().out)
    assert result["accuracy"] == 1.0 and result["yes_ratio"] == 0.5


def test_compare_parses_stripped_answers() -> None:
    a = [{"question_id": i, "category": "random", "answers": [lab], "prediction": text}
         for i, (text, lab) in enumerate(zip([*PADDED_NO, "Yes"], [*(["no"] * 5), "yes"], strict=True))]
    b = [{**r, "prediction": r["prediction"].strip()} for r in a]
    result = compare_records("pope", a, b, n_resamples=50)
    assert result["loyalty"] == 1.0 and result["discordant"] == 0 and result["a"] == result["b"] == 1.0
