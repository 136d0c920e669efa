"""Adding a dataset is a loader module plus one row: a throwaway yes/no dataset (its "module" is the top of this
file) registered here shows up in the data root, the benchmark matrix, prompts, scoring, expectations, the
fixture writer, the score and compare commands and the report, with no other edit."""

from __future__ import annotations

import json
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path

import numpy as np
import pytest

from sparsezip import metrics
from sparsezip.bench.expectations import Headline, headline
from sparsezip.bench.matrix import build_matrix
from sparsezip.cli import main
from sparsezip.data import DatasetSpec, key_metric, load_dataset, register_dataset, resolve_dataset
from sparsezip.data.prompts import build_prompt, dataset_question, llava_v1_prompt
from sparsezip.data.registry import benchmark_datasets, dataset_spec, unregister_dataset
from sparsezip.data.sample import Sample, require_file, resolve_inside
from sparsezip.data.tiny import check_layout, image_bytes
from sparsezip.data.units import Units
from sparsezip.eval.compare import compare_runs
from sparsezip.eval.report import load_entries, markdown_table
from sparsezip.eval.runner import evaluate
from sparsezip.jsonio import iter_jsonl, sha256_file
from sparsezip.methods import get_method
from sparsezip.testing.fake import FakeVisionLanguageModel
from sparsezip.testing.trees import write_tree

# ------------------------------------------------------------------ the loader module of dataset "yesno"
SUFFIX = " Answer yes or no."
ROWS = [(1, "easy", "Is it red?", "yes"), (2, "easy", "Is it blue?", "no"), (3, "hard", "Is it teal?", "no")]


def load_files(path: Path, *, level: str | None = None, check_images: bool = True) -> Iterator[Sample]:
    """``questions.jsonl`` lines ``{id, level, image, question, answer}``; images next to it."""
    file = path / "questions.jsonl" if path.is_dir() else path
    meta = {"source": file.name, "source_sha256": sha256_file(file)}
    for lineno, row in iter_jsonl(file):
        if level is not None and row["level"] != level:
            continue
        image = resolve_inside(file.parent, row["image"], f"{file}:{lineno}")
        if check_images:
            require_file(image, f"{file}:{lineno}")
        yield Sample(row["id"], image, row["question"], (row["answer"],), {"level": row["level"], **meta})


def score(records: Sequence[Mapping], parser: str | None = None) -> dict:
    return metrics.pope_metrics([r["prediction"] for r in records], [r["answers"][0] for r in records],
                                parser or "official")


def paired_units(records: Sequence[Mapping], parser: str = "official") -> Units:
    """Accuracy as the mean of per-question correctness, for ``sparsezip compare``."""
    answers = [metrics.parse_pope_answer(r["prediction"], parser) for r in records]
    correct = np.array([a == r["answers"][0] for a, r in zip(answers, records, strict=True)])
    stats = np.stack([correct.astype(np.float64), np.ones(len(records))], axis=1)
    return Units(stats, np.zeros(len(records)), lambda s: s[..., 0] / s[..., 1], "accuracy", answers, correct,
                 [""] * len(records))


def write_tree_yesno(root: Path, layout: str) -> Path:
    check_layout("yesno", layout, ("files",))
    folder = root / "yesno"
    folder.mkdir(parents=True, exist_ok=True)
    lines = []
    for qid, level, question, answer in ROWS:
        (folder / f"{qid}.png").write_bytes(image_bytes(qid))
        lines.append(json.dumps({"id": qid, "level": level, "image": f"{qid}.png", "question": question + SUFFIX,
                                 "answer": answer}))
    (folder / "questions.jsonl").write_text("\n".join(lines) + "\n", encoding="utf-8")
    return folder


# ------------------------------------------------------------------ its one row
SPEC = DatasetSpec(
    "yesno", load_files, score, folders=("yesno",), max_new_tokens=8, parsers=metrics.POPE_PARSERS,
    variants={"easy": {"level": "easy"}, "hard": {"level": "hard"}}, question_suffix=SUFFIX,
    headline=key_metric("accuracy", "yes/no accuracy (%)", "Acc"),
    report_columns=(("Acc", "accuracy", 100.0), ("Yes %", "yes_ratio", 100.0)), write_tree=write_tree_yesno,
    paired_units=paired_units,
)


@pytest.fixture
def yesno() -> Iterator[DatasetSpec]:
    register_dataset(SPEC)
    yield SPEC
    unregister_dataset("yesno")


def test_a_registered_dataset_is_everywhere(yesno: DatasetSpec, tmp_path: Path,
                                            capsys: pytest.CaptureFixture[str]) -> None:
    assert benchmark_datasets()[-2:] == ["yesno-easy", "yesno-hard"]
    ids = [c.id for c in build_matrix("fake", 16)]
    assert "yesno-easy[fake]-none" in ids and "yesno-hard[fake]-visionzip-k2" in ids

    # Data root convention, variants and the fixture writer.
    root = tmp_path / "data"
    write_tree("yesno", "files", root)
    family, path, options = resolve_dataset(root, "yesno-easy")
    assert (family, path, options) == ("yesno", root / "yesno", {"level": "easy"})
    samples = list(load_dataset("yesno-easy", path))
    assert [s.id for s in samples] == [1, 2]

    # Prompts: the row's suffix is stripped, the short-answer suffix added.
    assert dataset_question("yesno-easy", samples[0].question) == "Is it red?"
    assert build_prompt("yesno-easy", samples[0].question) == llava_v1_prompt("Is it red?")

    # Evaluation, scoring and the headline.
    model = FakeVisionLanguageModel(answer=lambda image, question: "Yes" if "red" in question else "No")
    summary = evaluate(model, get_method("none"), samples, tmp_path / "run", dataset="yesno-easy", batch_size=2,
                       progress=False)
    assert model.calls[0] == [llava_v1_prompt("Is it red?"), llava_v1_prompt("Is it blue?")]
    assert summary["tokens"]["max_new_tokens"] == 8  # the row's default
    assert summary["metrics"]["accuracy"] == 1.0
    assert headline("yesno-easy", summary["metrics"]) == Headline("accuracy", 1.0, 1.0)

    # The score command, with the row's parsers.
    predictions = tmp_path / "answers.jsonl"
    predictions.write_text("".join(json.dumps({"question_id": q, "prediction": "No"}) + "\n" for q, *_ in ROWS))
    assert main(["score", "--dataset", "yesno", "--annotations", str(root / "yesno"),
                 "--predictions", str(predictions), "--parser", "lmms-eval"]) == 0
    assert json.loads(capsys.readouterr().out)["accuracy"] == pytest.approx(2 / 3)

    # The paired comparison builds the row's units.
    evaluate(model, get_method("random", budget=4), samples, tmp_path / "run-b", dataset="yesno-easy",
             progress=False)
    compared = compare_runs(tmp_path / "run", tmp_path / "run-b", n_resamples=200)
    assert (compared["metric"], compared["a"], compared["b"], compared["n"]) == ("accuracy", 1.0, 1.0, 2)

    # The report reads the run folder with the row's columns.
    [entry] = load_entries([tmp_path / "run"])
    assert (entry.dataset, entry.family, entry.row, entry.headline, entry.metrics) == (
        "yesno-easy", "yesno", "none", 100.0, (100.0, 50.0))
    table = markdown_table([entry])
    assert "### yesno-easy [fake-vlm]" in table and "| Acc | Yes % |" in table


def test_the_table_refuses_bad_rows_and_unknown_names(yesno: DatasetSpec) -> None:
    with pytest.raises(ValueError, match="already registered"):
        register_dataset(DatasetSpec("yesno", load_files, score, folders=("x",), max_new_tokens=8))
    with pytest.raises(ValueError, match="lowercase"):
        DatasetSpec("yes-no", load_files, score, folders=("x",), max_new_tokens=8)
    with pytest.raises(ValueError, match="has no variant 'medium'"):
        load_dataset("yesno-medium", Path("."))
    assert dataset_spec("yesno-hard") is yesno
    assert dataset_spec("coco_captions").benchmark_names == ()  # no headline: not a benchmark


def test_builtin_rows_hold_what_used_to_be_keyed_by_name() -> None:
    mme = dataset_spec("mme")
    assert mme.question("Is it? Please answer yes or no.") == "Is it?" and mme.benchmark_names == ("mme",)
    assert dataset_spec("pope").benchmark_names == ("pope-random", "pope-popular", "pope-adversarial")
    assert not dataset_spec("coco_captions").short_answer and dataset_spec("docvqa").max_new_tokens == 32
    # A folder of POPE label files scores per category; its headline is the mean F1 (the paper's number).
    assert headline("pope", {"categories": {}, "mean_f1": 0.8, "pooled": {}}) == Headline("f1", 0.8, 1.0)
