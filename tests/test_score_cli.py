"""``sparsezip score`` / ``eval`` / ``merge`` end to end through ``sparsezip.cli.main``."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from sparsezip import metrics
from sparsezip.cli import main
from sparsezip.commands import eval as eval_command
from sparsezip.testing.fake import FakeModelPlan, FakeVisionLanguageModel
from sparsezip.testing.trees import write_tree

POPE_DIR = Path(__file__).resolve().parent.parent / "fixtures" / "reference" / "pope"


def score(capsys: pytest.CaptureFixture, *args: str) -> dict:
    assert main(["score", *args]) == 0
    return json.loads(capsys.readouterr().out)


def write_jsonl(path: Path, rows: list[dict]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def test_pope_single_label_file_all_yes(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    label = POPE_DIR / "coco_pope_random.json"  # scoring needs no images
    rows = [json.loads(line) for line in label.open()]
    preds = write_jsonl(tmp_path / "p.jsonl", [{"question_id": r["question_id"], "prediction": "Yes"} for r in rows])
    result = score(capsys, "--dataset", "pope", "--annotations", str(label), "--predictions", str(preds))
    assert set(result) == {"accuracy", "precision", "recall", "f1", "yes_ratio", "n"}
    assert result["n"] == 2910 and result["recall"] == 1.0
    assert result["precision"] == pytest.approx(1500 / 2910)


def test_pope_folder_of_label_files(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    rows = []
    for category in ("random", "popular", "adversarial"):
        for line in (POPE_DIR / f"coco_pope_{category}.json").open():
            row = json.loads(line)
            # a model that is right except on every 7th question
            wrong = row["question_id"] % 7 == 0
            answer = {"yes": "No", "no": "Yes"}[row["label"]] if wrong else row["label"].capitalize()
            rows.append({"question_id": row["question_id"], "category": category, "prediction": answer})
    preds = write_jsonl(tmp_path / "p.jsonl", rows)
    result = score(capsys, "--dataset", "pope", "--annotations", str(POPE_DIR), "--predictions", str(preds))
    assert set(result) == {"categories", "mean_f1", "pooled"}
    assert list(result["categories"]) == ["random", "popular", "adversarial"]
    assert result["mean_f1"] == pytest.approx(sum(c["f1"] for c in result["categories"].values()) / 3)
    assert result["pooled"]["n"] == 8910
    for name, category in result["categories"].items():
        labels = [json.loads(line)["label"] for line in (POPE_DIR / f"coco_pope_{name}.json").open()]
        texts = [r["prediction"] for r in rows if r["category"] == name]
        assert category == metrics.pope_metrics(texts, labels)
    # the same predictions without their category are ambiguous (ids repeat across the files)
    write_jsonl(preds, [{k: v for k, v in r.items() if k != "category"} for r in rows])
    assert main(["score", "--dataset", "pope", "--annotations", str(POPE_DIR), "--predictions", str(preds)]) == 2
    assert "needs a 'category' field" in capsys.readouterr().err


def test_pope_lmms_eval_parser_and_llava_text_field(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    label = tmp_path / "coco_pope_random.json"
    shutil.copy(POPE_DIR / "coco_pope_random.json", label)
    rows = [json.loads(line) for line in label.open()]
    preds = write_jsonl(tmp_path / "p.jsonl", [{"question_id": r["question_id"], "text": "Yes."} for r in rows])
    official = score(capsys, "--dataset", "pope", "--annotations", str(label), "--predictions", str(preds))
    lmms = score(capsys, "--dataset", "pope-random", "--annotations", str(label), "--predictions", str(preds),
                 "--parser", "lmms-eval")
    assert official["yes_ratio"] == 1.0 and lmms["yes_ratio"] == 0.0 and lmms["accuracy"] == 0.0


def test_mme_scores_and_ids(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    root = write_tree("mme", "files", tmp_path)
    answers = {  # count: one image half right, one fully right; color: all right; artwork: "other" answers
        "count/000000000001.jpg#0": "Yes", "count/000000000001.jpg#1": "Yes",
        "count/000000000002.jpg#0": "Yes", "count/000000000002.jpg#1": "No",
        "color/000000000003.jpg#0": "No", "color/000000000003.jpg#1": "Yes",
        "artwork/10002.jpg#0": "Maybe", "artwork/10002.jpg#1": "I cannot tell",
    }  # fmt: skip
    preds = write_jsonl(tmp_path / "p.jsonl", [{"question_id": k, "prediction": v} for k, v in answers.items()])
    result = score(capsys, "--dataset", "mme", "--annotations", str(root), "--predictions", str(preds))
    assert set(result) == {"subtasks", "perception", "cognition"}
    assert result["subtasks"] == {
        "count": {"acc": 75.0, "acc_plus": 50.0, "score": 125.0},
        "color": {"acc": 100.0, "acc_plus": 100.0, "score": 200.0},
        "artwork": {"acc": 0.0, "acc_plus": 0.0, "score": 0.0},
    }
    assert result["perception"] == 325.0 and result["cognition"] is None
    # the parquet layout has the same ids, so the same predictions score the same
    parquet = write_tree("mme", "parquet", tmp_path / "pq")
    assert score(capsys, "--dataset", "mme", "--annotations", str(parquet), "--predictions", str(preds)) == result


def test_docvqa(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    rows = [{"question_id": 101, "prediction": "5 may 1990"}, {"question_id": 102, "prediction": "J Smith"},
            {"question_id": 103, "prediction": "no idea"}]
    preds = write_jsonl(tmp_path / "p.jsonl", rows)
    result = score(capsys, "--dataset", "docvqa", "--annotations", str(write_tree("docvqa", "files", tmp_path)),
                   "--predictions", str(preds))
    assert result == pytest.approx({"anls": (1 + (1 - 1 / 8) + 0) / 3, "exact_match": 1 / 3, "n": 3})
    # parquet ids are strings; predictions with int ids still match them
    parquet = write_tree("docvqa", "parquet", tmp_path / "pq")
    assert score(capsys, "--dataset", "docvqa", "--annotations", str(parquet), "--predictions", str(preds)) == result


def test_missing_unknown_and_duplicate_predictions(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    annotations = str(write_tree("docvqa", "files", tmp_path))
    preds = write_jsonl(tmp_path / "p.jsonl", [{"question_id": 101, "prediction": "May 5, 1990"}])
    args = ["score", "--dataset", "docvqa", "--annotations", annotations, "--predictions", str(preds)]
    assert main(args) == 2
    assert "2 annotated question(s) have no prediction, e.g. [102, 103]" in capsys.readouterr().err
    assert main([*args, "--allow-missing", "--parser", "lmms-eval"]) == 2
    assert "docvqa has no parser 'lmms-eval'" in capsys.readouterr().err
    assert score(capsys, *args[1:], "--allow-missing") == {"anls": 1.0, "exact_match": 1.0, "n": 1}
    write_jsonl(preds, [{"question_id": 101, "prediction": "a"}, {"question_id": 999, "prediction": "b"}])
    assert main([*args, "--allow-missing"]) == 2
    assert "p.jsonl:2: question_id 999 is not in the annotations" in capsys.readouterr().err
    write_jsonl(preds, [{"question_id": 101, "prediction": "a"}, {"question_id": 101, "prediction": "b"}])
    assert main([*args, "--allow-missing"]) == 2
    assert "p.jsonl:2: duplicate prediction for question_id 101" in capsys.readouterr().err
    preds.write_text('{"question_id": 101, "prediction": "a"}\n{"question_id": 102\n')
    assert main(args) == 2
    assert "p.jsonl:2: malformed JSON line" in capsys.readouterr().err
    write_jsonl(preds, [{"question_id": 101, "answer": "a"}])
    assert main(args) == 2
    assert "p.jsonl:1: prediction line lacks a string 'prediction'" in capsys.readouterr().err
    assert main(["score", "--dataset", "vqa", "--annotations", annotations, "--predictions", str(preds)]) == 2


def test_eval_then_score_then_merge(tmp_path: Path, capsys: pytest.CaptureFixture,
                                    monkeypatch: pytest.MonkeyPatch) -> None:
    data = tmp_path / "data"
    write_tree("pope", "files", data)
    monkeypatch.setattr(eval_command, "model_plan", lambda args: FakeModelPlan(FakeVisionLanguageModel()))
    base = ["eval", "--dataset", "pope-random", "--data", str(data), "--model-path", "unused", "--method", "none",
            "--no-progress"]
    assert main([*base, "--out", str(tmp_path / "all"), "--batch-size", "2"]) == 0
    assert "all: 4/4 samples" in capsys.readouterr().out
    summary = json.loads((tmp_path / "all" / "summary.json").read_text())
    assert summary["n"] == 4 and summary["tokens"]["visual"]["mean"] == 16.0
    assert summary["config"]["sources"].keys() == {"coco_pope_random.json"}
    # the runner's predictions file is a valid `score` input, and scores the same
    rescored = score(capsys, "--dataset", "pope", "--annotations", str(data / "pope" / "coco_pope_random.json"),
                     "--predictions", str(tmp_path / "all" / "predictions.jsonl"))
    assert rescored == summary["metrics"]
    for i in range(2):
        assert main([*base, "--out", str(tmp_path / f"s{i}"), "--batch-size", "2", "--shard", f"{i}/2"]) == 0
    capsys.readouterr()
    assert main(["merge", str(tmp_path / "s0"), str(tmp_path / "s1"), "--out", str(tmp_path / "m")]) == 0
    assert json.loads(capsys.readouterr().out)["metrics"] == summary["metrics"]
    assert main([*base, "--out", str(tmp_path / "x"), "--budget", "3"]) == 2  # `none` keeps every patch
    assert "budget=3" in capsys.readouterr().err
