"""``sparsezip report`` on a small synthetic run in pytest-benchmark's JSON schema."""

import dataclasses
import json
from pathlib import Path

import pytest
from PIL import Image

from sparsezip.cli import main
from sparsezip.eval.report import load_entries, markdown_table, write_report

STATS_KEYS = ("min", "max", "mean", "stddev", "rounds", "median", "iqr", "q1", "q3", "iqr_outliers",
              "stddev_outliers", "outliers", "ld15iqr", "hd15iqr", "ops", "total", "data", "iterations")


def _bench(dataset: str, row: str, budget: int | None, median_s: float, metrics: dict, headline: dict,
           tokens: float, per_layer: list | None = None) -> dict:
    """One benchmark entry as pytest-benchmark 5 writes it with --benchmark-json."""
    family = dataset.split("-")[0]
    case = f"{dataset}[tiny-shapes]-{row}" + ("" if budget is None else f"-k{budget}")
    stats = dict.fromkeys(STATS_KEYS, 0.0)
    stats.update(median=median_s, mean=median_s, min=median_s, max=median_s, rounds=3, iterations=1,
                 data=[median_s] * 3, outliers="0;0", ops=1 / median_s)
    return {
        "group": dataset, "name": f"test_case[{case}]", "fullname": f"benchmarks/test_matrix.py::test_case[{case}]",
        "params": {"case": case}, "param": case,
        "extra_info": {
            "case": case, "dataset": dataset, "family": family, "model": "tiny-shapes", "row": row,
            "method": row.split("-")[0], "stage": "llm" if row == "sparsevlm" else "vision", "budget": budget,
            "n": 6, "headline": headline, "metrics": metrics,
            "visual_tokens": {"mean": tokens, "min": tokens, "max": tokens, "per_layer": per_layer},
            "new_tokens_mean": 2.0,
        },
        "options": {"disable_gc": False, "timer": "perf_counter", "min_rounds": 5, "max_time": 1.0,
                    "min_time": 5e-06, "warmup": False},
        "stats": stats,
    }


def _pope(f1: float) -> tuple[dict, dict]:
    return ({"accuracy": f1, "precision": f1, "recall": f1, "f1": f1, "yes_ratio": 0.5, "n": 6},
            {"name": "f1", "value": f1, "scale": 1.0})


def _run_json(path: Path, gpu: str | None = None) -> Path:
    pope_none, pope_vz, pope_vlm = _pope(0.9), _pope(0.8), _pope(0.7)
    mme = {"subtasks": {"count": {"acc": 50.0, "acc_plus": 25.0, "score": 75.0}}, "perception": 75.0,
           "cognition": 0.0}
    benchmarks = [
        _bench("pope-random", "none", None, 0.020, *pope_none, tokens=144),
        _bench("pope-random", "visionzip", 16, 0.010, *pope_vz, tokens=16),
        _bench("pope-random", "sparsevlm", 16, 0.015, *pope_vlm, tokens=16.0, per_layer=[144, 30, 10]),
        _bench("mme", "none", None, 0.030, mme, {"name": "total_score", "value": 75.0, "scale": 200.0},
               tokens=144),
        _bench("docvqa", "pool", 16, 0.012, {"anls": 0.25, "exact_match": 0.2, "n": 4},
               {"name": "anls", "value": 0.25, "scale": 1.0}, tokens=16),
    ]
    # A micro-benchmark without the matrix's extra_info: the report ignores it.
    benchmarks.append({**_bench("pope-random", "none", None, 0.001, *pope_none, tokens=1),
                       "extra_info": {"ratio_to_clip_layer": 0.5}, "name": "test_core_speed[x]"})
    device = {"device_type": "cuda" if gpu else "cpu", "gpu_name": gpu}
    data = {"machine_info": {"node": "n", "sparsezip": device}, "commit_info": {"id": "abc", "dirty": False},
            "benchmarks": benchmarks, "datetime": "2026-01-01T00:00:00+00:00", "version": "5.3.1"}
    path.write_text(json.dumps(data))
    return path


def test_entries_read_metrics_tokens_and_latency(tmp_path: Path) -> None:
    entries = load_entries([_run_json(tmp_path / "run.json")])
    assert len(entries) == 5  # the micro-benchmark is ignored
    vz = next(e for e in entries if e.row == "visionzip")
    assert vz.latency_ms == pytest.approx(10.0) and vz.tokens == 16 and vz.headline == pytest.approx(80.0)
    mme = next(e for e in entries if e.family == "mme")
    assert mme.headline == 75.0  # MME in points, not percent


def test_markdown_table_has_one_section_per_dataset_with_speedups(tmp_path: Path) -> None:
    table = markdown_table(load_entries([_run_json(tmp_path / "run.json")]))
    assert "### pope-random [tiny-shapes]" in table and "### mme [tiny-shapes]" in table
    vz_line = next(line for line in table.splitlines() if line.startswith("| visionzip"))
    cells = [c.strip() for c in vz_line.strip("|").split("|")]
    assert cells == ["visionzip", "16.0", "10.00", "2.00x", "80.0", "80.0", "50.0", "2.00"]
    assert "per layer 144/30/10" in table
    docvqa = next(line for line in table.splitlines() if line.startswith("| pool"))
    assert "| - |" in docvqa  # no `none` row for docvqa in this run: no speed-up


def test_two_runs_get_a_run_column(tmp_path: Path) -> None:
    entries = load_entries([_run_json(tmp_path / "cpu.json"), _run_json(tmp_path / "gpu.json", gpu="H100")])
    table = markdown_table(entries)
    assert "| Run |" in table and "gpu (H100)" in table and "cpu (cpu)" in table


def test_report_command_writes_table_and_plot(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    run = _run_json(tmp_path / "run.json")
    assert main(["report", str(run), "--out", str(tmp_path / "out")]) == 0
    assert "| visionzip" in capsys.readouterr().out
    with Image.open(tmp_path / "out" / "report.png") as png:
        assert png.size[0] > 500 and png.size[1] > 500
    assert (tmp_path / "out" / "report.md").read_text().startswith("### pope-random")


def test_report_refuses_files_without_matrix_cases(tmp_path: Path) -> None:
    empty = tmp_path / "empty.json"
    empty.write_text(json.dumps({"machine_info": {}, "benchmarks": []}))
    with pytest.raises(ValueError, match="no benchmark-matrix cases"):
        write_report([empty], tmp_path / "out")
    bad = tmp_path / "bad.json"
    bad.write_text("[1, 2]")
    assert main(["report", str(bad)]) == 2


def _eval_runs(tmp_path: Path) -> Path:
    """Four `sparsezip eval` run folders on a fake model, laid out like the matrix's (path order != row order)."""
    from sparsezip.data import load_dataset
    from sparsezip.eval.runner import evaluate
    from sparsezip.methods import get_method
    from sparsezip.testing.fake import FakeVisionLanguageModel
    from sparsezip.testing.trees import write_tree

    samples = list(load_dataset("pope-random", write_tree("pope", "files", tmp_path / "data")))
    runs = tmp_path / "runs" / "fake-vlm" / "pope-random"
    for leaf, method in [("visionzip-k4", get_method("visionzip", budget=4)), ("none", get_method("none")),
                         ("sparsezip-notext-k8", get_method("sparsezip", budget=8, cross_beta=0.0)),
                         ("a-folder", get_method("sparsezip", budget=8, skip_ctx_merge=True))]:
        evaluate(FakeVisionLanguageModel(), method, samples, runs / leaf, dataset="pope-random", batch_size=2,
                 progress=False)
    return tmp_path / "runs"


def test_report_reads_eval_run_folders(tmp_path: Path) -> None:
    runs = _eval_runs(tmp_path)
    entries = load_entries([runs])
    # Row names from method + config, in the matrix's row order (ablations in declared order), not path order.
    assert [e.row for e in entries] == ["none", "sparsezip-notext", "sparsezip-nomerge", "visionzip"]
    summary = json.loads((runs / "fake-vlm" / "pope-random" / "visionzip-k4" / "summary.json").read_text())
    vz = entries[3]
    assert (vz.run, vz.family, vz.model, vz.tokens) == ("eval", "pope", "fake-vlm", 4.0)
    assert vz.latency_ms == summary["latency_ms"]["total_ms"]["median"]
    assert vz.latency_source == "eval median, b2"
    assert vz.headline == pytest.approx(100.0 * summary["metrics"]["f1"])
    assert vz.metrics[1] == pytest.approx(100.0 * summary["metrics"]["accuracy"])
    table = markdown_table(entries)
    assert "| Latency (ms) | Latency from | Speed-up |" in table
    cells = [c.strip() for c in next(ln for ln in table.splitlines() if ln.startswith("| visionzip")).split("|")]
    assert cells[4] == "eval median, b2" and cells[5] == f"{entries[0].latency_ms / vz.latency_ms:.2f}x"
    # One run folder given directly, or its summary.json, reads the same.
    leaf = runs / "fake-vlm" / "pope-random" / "visionzip-k4"
    assert load_entries([leaf]) == load_entries([leaf / "summary.json"]) == [vz]


def test_report_mixes_benchmark_json_and_eval_folders(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    runs = _eval_runs(tmp_path)
    entries = load_entries([_run_json(tmp_path / "bench.json"), runs])
    assert {e.run for e in entries} == {"bench (cpu)", "eval (cpu)"}
    bench_section, eval_section = markdown_table(entries).split("### pope-random [fake-vlm]")
    assert "| Run |" in bench_section and "Latency from" not in bench_section.split("### mme")[0]
    assert "| Run | Method | Visual tokens | Latency (ms) | Latency from | Speed-up |" in eval_section
    # A timed latency is never divided by an evaluation's: speed-ups compare latencies of one kind only.
    timed_none = next(e for e in entries if e.run == "bench (cpu)" and e.row == "none")
    eval_vz = next(e for e in entries if e.run == "eval (cpu)" and e.row == "visionzip")
    mixed = dataclasses.replace(eval_vz, run=timed_none.run, dataset=timed_none.dataset, model=timed_none.model)
    line = next(ln for ln in markdown_table([timed_none, mixed]).splitlines() if ln.startswith("| visionzip"))
    assert "| eval median, b2 | - |" in line
    assert main(["report", str(runs), "--out", str(tmp_path / "out")]) == 0
    assert "sparsezip-notext" in capsys.readouterr().out and (tmp_path / "out" / "report.png").is_file()


def test_report_refuses_a_folder_without_runs(tmp_path: Path) -> None:
    (tmp_path / "empty").mkdir()
    with pytest.raises(ValueError, match="no sparsezip eval run folders"):
        load_entries([tmp_path / "empty"])


# ------------------------------------------------------------------------------ paired statistics (issue 13)
from sparsezip.eval.report import pareto_front  # noqa: E402


def test_pareto_front_keeps_the_undominated_points_in_cost_order() -> None:
    points = [(10.0, 90.0), (5.0, 80.0), (12.0, 85.0), (5.0, 70.0), (20.0, 95.0)]
    assert pareto_front(points) == [1, 0, 4]
    assert pareto_front([(1.0, 1.0)]) == [0]


def _fake_eval(samples: list, out: Path, answer) -> Path:
    from sparsezip.eval.runner import evaluate
    from sparsezip.methods import get_method
    from sparsezip.testing.fake import FakeVisionLanguageModel

    evaluate(FakeVisionLanguageModel(answer=answer), get_method("none"), samples, out, dataset="pope-random",
             progress=False)
    return out


def test_report_of_run_folders_shows_intervals_deltas_and_the_random_control(tmp_path: Path) -> None:
    """Run folders carry every question, so the table gains the paired statistics; a run identical to the
    control is `not distinguishable` from it."""
    from sparsezip.data import load_dataset
    from sparsezip.eval.significance import case_statistics
    from sparsezip.testing.trees import write_tree

    samples = [s for s in load_dataset("pope", write_tree("pope", "files", tmp_path / "data"))
               if s.meta["category"] == "random"]
    truth = {s.question: s.answers[0] for s in samples}
    _fake_eval(samples, tmp_path / "runs" / "none", lambda image, q: "Yes" if truth[q] == "yes" else "No")
    _fake_eval(samples, tmp_path / "runs" / "random", lambda image, q: "Yes")
    entries = load_entries([tmp_path / "runs"])
    assert all(e.records is not None and len(e.records) == len(samples) for e in entries)
    # Relabel the second run as `random` and a copy as another method at the same budget.
    none, rand = sorted(entries, key=lambda e: e.headline, reverse=True)
    rand = dataclasses.replace(rand, row="random", method="random", budget=16)
    same_as_random = dataclasses.replace(rand, row="visionzip", method="visionzip")
    stats = case_statistics([none, rand, same_as_random], n_resamples=200)
    assert stats[0].vs_none is None and stats[0].ci is not None
    assert stats[1].vs_none.delta < 0 and stats[1].vs_none.loyalty < 1
    assert stats[2].vs_random is not None and not stats[2].vs_random.distinguishable
    table = markdown_table([none, rand, same_as_random], stats)
    assert "vs none [95% CI]" in table and "not distinguishable" in table and "McNemar p" in table


def test_benchmark_json_records_round_trip(tmp_path: Path) -> None:
    """The matrix keeps each case's questions in extra_info column-wise; the report reads them back."""
    from sparsezip.data.records import compact_records, expand_records

    records = [{"question_id": i, "category": "random", "answers": ["yes"], "prediction": "Yes", "index": i}
               for i in range(3)]
    columns = compact_records(records)
    assert set(columns) == {"question_id", "category", "answers", "prediction"}
    assert expand_records(columns) == [{k: r[k] for k in columns} for r in records]
    with pytest.raises(ValueError, match="differ in length"):
        expand_records({**columns, "prediction": ["Yes"]})
