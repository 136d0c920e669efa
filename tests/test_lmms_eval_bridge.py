"""lmms-eval with ``--model sparsezip`` on the embedded synthetic POPE task, against the suite's own tools.

lmms-eval runs in-process through its Python entry point (``simple_evaluate``, what its CLI calls; files
written by its ``EvaluationTracker`` as the CLI writes them) with a TaskManager that indexes only our task
folder. The real command costs ~15 s CPU (imports, and its CLI always indexes the ~1900 bundled task files
first), so ``test_cli_end_to_end`` runs it only with ``SPARSEZIP_LMMS_CLI=1``.
The model is still found the way the CLI finds it, through the ``lmms_eval.models`` entry point. Checked:
lmms-eval's POPE metrics (its own functions) equal ``sparsezip score`` on the same predictions; the answers
equal ``sparsezip eval``'s on the same samples (same prompts, same batches); per-sample costs land in the
logged samples and their means in the results JSON.
"""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from sparsezip.adapters.api import STAGES
from sparsezip.cli import main as sparsezip_main
from sparsezip.integrations.lmms_eval import LMMS_EVAL_REQUIREMENT, TASKS_DIR

pytestmark = pytest.mark.skipif(
    importlib.util.find_spec("lmms_eval") is None,
    reason=f"lmms-eval is not installed (optional): pip install -e '.[lmms-runtime]' && "
           f"pip install --no-deps '{LMMS_EVAL_REQUIREMENT}'",
)

REPO = Path(__file__).resolve().parents[1]
MODEL = REPO / "fixtures" / "tiny-llava"
POPE_FILE = REPO / "fixtures" / "data" / "pope" / "coco_pope_adversarial.json"
TASK = "sparsezip_pope_adversarial"
LIMIT = 12
BATCH = 4
METHODS = {"none": "method=none", "visionzip": "method=visionzip,budget=16", "sparsezip": "method=sparsezip,budget=16"}
OFFLINE = {"HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1"}


@pytest.fixture(scope="module")
def lmms_env(tmp_path_factory: pytest.TempPathFactory):
    """Offline, with lmms-eval's datasets cache in a temporary folder (nothing written to ~/.cache)."""
    cache = tmp_path_factory.mktemp("lmms-datasets-cache")
    with pytest.MonkeyPatch.context() as mp:
        for key, value in {**OFFLINE, "LMMS_EVAL_DATASETS_CACHE": str(cache)}.items():
            mp.setenv(key, value)
        yield cache


def lmms_evaluate(model_args: str, out: Path) -> tuple[dict, list[dict], Path]:
    """One lmms-eval run on the embedded task, written to ``out`` the way its CLI writes it; returns
    (the results JSON, the logged samples file's rows, the results file)."""
    from lmms_eval.evaluator import simple_evaluate
    from lmms_eval.loggers import EvaluationTracker
    from lmms_eval.tasks import TaskManager

    tracker = EvaluationTracker(output_path=str(out))
    results = simple_evaluate(
        model="sparsezip", model_args=f"pretrained={MODEL},{model_args}", tasks=[TASK], batch_size=BATCH,
        limit=LIMIT, log_samples=True, evaluation_tracker=tracker, device="cpu",
        task_manager=TaskManager("ERROR", include_path=str(TASKS_DIR), include_defaults=False),
        random_seed=None, numpy_random_seed=None, torch_random_seed=None, fewshot_random_seed=None,
    )  # fmt: skip  # no global seeds: nothing in this process may depend on global RNG state
    samples = results.pop("samples")
    tracker.save_results_aggregated(results=results, samples=samples, datetime_str="run")
    tracker.save_results_samples(task_name=TASK, samples=samples[TASK])
    results_file = next(out.rglob("*_results.json"))
    rows = [json.loads(line) for line in next(out.rglob(f"*_samples_{TASK}.jsonl")).open()]
    return json.loads(results_file.read_text()), rows, results_file


@pytest.fixture(scope="module")
def runs(lmms_env: Path, tmp_path_factory: pytest.TempPathFactory) -> dict:
    return {name: lmms_evaluate(args, tmp_path_factory.mktemp(f"lmms-{name}")) for name, args in METHODS.items()}


def raw_answer(row: dict) -> str:
    """The model's answer as returned: lmms-eval's samples file drops ``resps`` when it equals
    ``filtered_resps`` (the answer after the task's filters)."""
    return row.get("resps", row["filtered_resps"])


def sparsezip_score(rows: list[dict], tmp: Path, capsys: pytest.CaptureFixture, parser: str) -> dict:
    """``sparsezip score`` on lmms-eval's raw answers, joined to the label file by question id."""
    predictions = tmp / "predictions.jsonl"
    predictions.write_text("".join(
        json.dumps({"question_id": r["pope_accuracy"]["question_id"], "prediction": raw_answer(r)}) + "\n"
        for r in rows
    ))  # fmt: skip
    capsys.readouterr()
    assert sparsezip_main(["score", "--dataset", "pope", "--annotations", str(POPE_FILE), "--predictions",
                           str(predictions), "--allow-missing", "--parser", parser]) == 0  # fmt: skip
    return json.loads(capsys.readouterr().out)


def label_yes_share(rows: list[dict]) -> float:
    labels = {json.loads(line)["question_id"]: json.loads(line)["label"] for line in POPE_FILE.open()}
    return sum(labels[r["pope_accuracy"]["question_id"]] == "yes" for r in rows) / len(rows)


@pytest.mark.parametrize("name", list(METHODS))
def test_pope_metrics_equal_sparsezip_score(
    runs: dict, name: str, tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    results, rows, _ = runs[name]
    assert len(rows) == LIMIT and [r["doc_id"] for r in rows] == list(range(LIMIT))
    ours = sparsezip_score(rows, tmp_path, capsys, parser="lmms-eval")
    theirs = results["results"][TASK]
    assert ours["n"] == LIMIT
    for metric, key in (("accuracy", "pope_accuracy"), ("precision", "pope_precision"),
                        ("recall", "pope_recall"), ("f1", "pope_f1_score")):  # fmt: skip
        assert theirs[f"{key},none"] == pytest.approx(ours[metric], abs=1e-12), metric
    # lmms-eval's yes ratio is the share of yes *labels* (ours: of yes predictions; README, Evaluation).
    assert theirs["pope_yes_ratio,none"] == pytest.approx(label_yes_share(rows))


def test_answers_equal_sparsezip_eval(runs: dict, tmp_path: Path) -> None:
    """The same samples through the suite's runner (``sparsezip eval``, same batch size) give the same raw
    answers: lmms-eval's contexts became the runner's LLaVA-1.5 prompts and its batches the runner's."""
    from sparsezip.adapters.llava import load_llava
    from sparsezip.data import load_dataset
    from sparsezip.eval.runner import evaluate
    from sparsezip.methods import get_method

    samples = list(load_dataset("pope", POPE_FILE))[:LIMIT]
    vlm = load_llava(MODEL)
    methods = {"none": get_method("none"), "visionzip": get_method("visionzip", budget=16),
               "sparsezip": get_method("sparsezip", budget=16)}  # text-aware: gets the bare question  # fmt: skip
    for name, method in methods.items():
        out = tmp_path / name
        evaluate(vlm, method, samples, out, dataset="pope-adversarial", batch_size=BATCH, progress=False)
        runner = [json.loads(line) for line in (out / "predictions.jsonl").open()]
        rows = runs[name][1]
        assert [raw_answer(r) for r in rows] == [r["prediction"] for r in runner], name
        logged = [r["token_counts"][0]["sparsezip"]["visual_tokens"] for r in rows]
        assert logged == [r["visual_tokens"] for r in runner], name


@pytest.mark.parametrize(("name", "visual"), [("none", 144.0), ("visionzip", 16.0)])
def test_costs_in_logged_samples_and_results_json(runs: dict, name: str, visual: float) -> None:
    results, rows, _ = runs[name]
    for row in rows:
        (counts,) = row["token_counts"]
        cost = counts["sparsezip"]
        assert cost["visual_tokens"] == visual and cost["stage_ms"].keys() == set(STAGES)
        assert all(ms > 0 for ms in cost["stage_ms"].values())
        assert counts["input_tokens"] == cost["prefill_tokens"] and counts["output_tokens"] == cost["new_tokens"]
        assert cost["batch_size"] == BATCH
    throughput = results["throughput"]
    assert throughput["avg_sparsezip_visual_tokens"] == visual
    assert throughput["avg_sparsezip_num_patches"] == 144.0
    for stage in STAGES:
        mean = sum(r["token_counts"][0]["sparsezip"]["stage_ms"][stage] for r in rows) / len(rows)
        assert throughput[f"avg_sparsezip_{stage}"] == pytest.approx(mean)
    assert results["config"]["model_args"].endswith(METHODS[name])


def test_sparsezip_with_method_config(lmms_env: Path, tmp_path: Path) -> None:
    """``method_config`` reads SparseZip's ``model.sparsezip`` block: 1 CLS + 9 dominant + 6 contextual."""
    config = tmp_path / "sz.yaml"
    config.write_text("model:\n  sparsezip:\n    dominant: 9\n    merging: {contextual_num: 6}\n")
    results, rows, _ = lmms_evaluate(f"method=sparsezip,method_config={config}", tmp_path / "out")
    assert {r["token_counts"][0]["sparsezip"]["visual_tokens"] for r in rows} == {16.0}
    assert results["results"][TASK]["pope_accuracy,none"] >= 0.0


def test_bad_model_args_are_named(lmms_env: Path, tmp_path: Path) -> None:
    with pytest.raises(ValueError, match=r"unknown --model_args for sparsezip: \['budjet'\]"):
        lmms_evaluate("method=visionzip,budjet=16", tmp_path)


def test_results_table_prints_the_costs(runs: dict) -> None:
    """What the CLI prints after a run (lmms-eval's ``make_table``) includes the sparsezip throughput rows."""
    from lmms_eval.utils import make_table

    table = make_table(runs["visionzip"][0])
    assert "pope_f1_score" in table and "avg_sparsezip_visual_tokens" in table


@pytest.mark.slow
@pytest.mark.skipif(os.environ.get("SPARSEZIP_LMMS_CLI") != "1",
                    reason="the lmms-eval command costs ~15 s CPU; set SPARSEZIP_LMMS_CLI=1 to run it")
def test_cli_end_to_end(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    """The README's command, as a user runs it (with ``--limit``)."""
    cli = Path(sys.executable).with_name("lmms-eval")
    env = {**os.environ, **OFFLINE, "LMMS_EVAL_DATASETS_CACHE": str(tmp_path / "cache"), "OMP_NUM_THREADS": "1"}
    command = [str(cli), "--model", "sparsezip", "--model_args", f"pretrained={MODEL},{METHODS['visionzip']}",
               "--tasks", TASK, "--include_path", str(TASKS_DIR), "--batch_size", str(BATCH), "--limit", "8",
               "--device", "cpu", "--log_samples", "--output_path", str(tmp_path / "out")]  # fmt: skip
    done = subprocess.run(command, env=env, capture_output=True, text=True, timeout=600, check=False)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    assert "avg_sparsezip_visual_tokens" in done.stdout
    results = json.loads(next((tmp_path / "out").rglob("*_results.json")).read_text())
    rows = [json.loads(line) for line in next((tmp_path / "out").rglob(f"*_samples_{TASK}.jsonl")).open()]
    assert len(rows) == 8 and results["throughput"]["avg_sparsezip_visual_tokens"] == 16.0
    ours = sparsezip_score(rows, tmp_path, capsys, parser="lmms-eval")
    assert results["results"][TASK]["pope_f1_score,none"] == pytest.approx(ours["f1"], abs=1e-12)
    assert results["results"][TASK]["pope_accuracy,none"] == pytest.approx(ours["accuracy"], abs=1e-12)


def test_several_processes_are_refused(lmms_env: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("WORLD_SIZE", "2")
    with pytest.raises(ValueError, match=r"runs in one process \(WORLD_SIZE=2\)"):
        lmms_evaluate("method=none", tmp_path)
