"""The benchmark matrix end to end, in a nested pytest session (in this process): a random tiny checkpoint and
a 4-question POPE tree, two cases; records expectations, then passes against them / fails on a quality drop,
resuming its runs."""

import json
from pathlib import Path

import pytest

from sparsezip.embedded.models import TinyLlavaSpec, save_tiny_llava
from sparsezip.testing.inprocess import InProcessRun, run_pytest_in_process
from sparsezip.testing.trees import write_tree

REPO_ROOT = Path(__file__).resolve().parents[1]
CASES = ("pope-random[tiny-test]-none", "pope-random[tiny-test]-visionzip-k16")


def _bench(tmp: Path, *args: str) -> InProcessRun:
    return run_pytest_in_process(REPO_ROOT, [
        "benchmarks/test_matrix.py", "-q", "-p", "no:cacheprovider", "-p", "no:xdist",
        "-k", "pope-random and (none or visionzip-k16)", "--model-path", str(tmp / "tiny-test"),
        "--data-root", str(tmp / "data"), "--run-dir", str(tmp / "runs"), "--expected-dir", str(tmp / "expected"),
        "--benchmark-min-rounds=1", *args,
    ])


@pytest.mark.slow  # two nested pytest sessions loading a tiny model
def test_matrix_records_checks_and_resumes(tmp_path: Path) -> None:
    save_tiny_llava(tmp_path / "tiny-test", TinyLlavaSpec(), seed=0)
    write_tree("pope", "files", tmp_path / "data")

    first = _bench(tmp_path, "--update-expected", f"--benchmark-json={tmp_path / 'run.json'}")
    assert first.returncode == 0, first.stdout + first.stderr
    expected = json.loads((tmp_path / "expected" / "tiny-test.json").read_text())["cases"]
    assert sorted(expected) == sorted(CASES)
    assert {e["n"] for e in expected.values()} == {4}  # pope-random of the tree holds 4 questions
    run = json.loads((tmp_path / "run.json").read_text())
    infos = {b["extra_info"]["case"]: b["extra_info"] for b in run["benchmarks"]}
    assert sorted(infos) == sorted(CASES)
    assert infos[CASES[1]]["visual_tokens"]["mean"] == 16 and infos[CASES[0]]["visual_tokens"]["mean"] == 144
    # (144 - 16) tokens x K and V x 2 layers x hidden 64 x 4 bytes (fp32 on CPU)
    assert infos[CASES[1]]["kv_cache_saved_bytes"] == 128 * 2 * 2 * 64 * 4
    assert run["machine_info"]["sparsezip"]["device_type"] == "cpu"
    predictions = sorted((tmp_path / "runs").rglob("predictions.jsonl"))
    assert len(predictions) == 2
    stamps = [p.stat().st_mtime_ns for p in predictions]

    entry = expected[CASES[1]]
    entry["value"] += 0.5  # pretend visionzip used to be much better; `none` stays as recorded
    (tmp_path / "expected" / "tiny-test.json").write_text(json.dumps({"cases": expected}))
    second = _bench(tmp_path)  # same run folders: resumed, nothing re-generated
    assert second.returncode == 1
    assert "quality regressed" in second.stdout and "1 failed, 1 passed" in second.stdout
    assert [p.stat().st_mtime_ns for p in predictions] == stamps
