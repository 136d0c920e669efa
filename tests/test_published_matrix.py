"""Published expectations in the benchmark matrix end to end, in a nested pytest session (in this process): a
random tiny checkpoint whose weights a (fake) published file describes, the POPE tree's three splits; the session
lists what reproduces and fails on a missed POPE mean of a ``check: fail`` entry, while every case records its
part in ``extra_info``."""

import json
import shutil
from pathlib import Path

import pytest

from sparsezip.adapters.checkpoint import identity_from_hashes
from sparsezip.eval.published import POPE_SPLITS, PUBLISHED_DIR_ENV
from sparsezip.jsonio import sha256_file
from sparsezip.testing.inprocess import run_pytest_in_process
from sparsezip.testing.trees import write_tree

REPO_ROOT = Path(__file__).resolve().parents[1]


def _entry(row: str, budget: int | None, printed: float, tolerance: float, splits: dict) -> dict:
    key = f"pope[tiny-test]-{row}" + ("" if budget is None else f"-k{budget}")
    return {"key": key, "dataset": "pope", "row": row, "budget": budget,
            "compare": {"kind": "mean_of_cases", "metric": "f1"},
            "published": {"value": printed, "scale": "percent", "source": "paper", "where": f"Table 1, {row}",
                          "value_suite_units": printed / 100},
            "tolerance": {"abs": tolerance}, "check": "fail", "label_set": {"version": "tree", "splits": splits}}


@pytest.mark.slow  # a nested pytest session running 6 cases of a tiny model
def test_the_session_checks_published_pope_means(tiny_llava_dir: Path, tmp_path: Path) -> None:
    shutil.copytree(tiny_llava_dir, tmp_path / "tiny-test")
    pope = write_tree("pope", "files", tmp_path / "data")
    shutil.copyfile(pope / "coco_pope_random.json", pope / "coco_pope_popular.json")  # the tree has two splits
    splits = {s: {"file": f"coco_pope_{s}.json", "sha256": sha256_file(pope / f"coco_pope_{s}.json"),
                  "n": len((pope / f"coco_pope_{s}.json").read_text().splitlines())} for s in POPE_SPLITS}
    hashes = {"model.safetensors": sha256_file(tmp_path / "tiny-test" / "model.safetensors")}
    published = {
        "schema_version": 1, "model": "tiny-test",
        "checkpoint": {"hf_repo": "example/tiny-test", "weight_files_sha256": hashes,
                       "identity": identity_from_hashes(hashes)},
        "sources": {"paper": {"name": "Paper A"}},
        "expectations": {e["key"]: e for e in (
            _entry("none", None, 50.0, 0.5, splits),  # any F1 in [0, 1] reproduces it
            _entry("visionzip", 16, 200.0, 0.01, splits),  # no F1 does
        )},
    }
    (tmp_path / "published").mkdir()
    (tmp_path / "published" / "tiny-test.json").write_text(json.dumps(published))

    run = run_pytest_in_process(REPO_ROOT, [
        "benchmarks/test_matrix.py", "-q", "-p", "no:cacheprovider", "-p", "no:xdist",
        "-k", "pope and (none or visionzip-k16)", "--model-path", str(tmp_path / "tiny-test"),
        "--data-root", str(tmp_path / "data"), "--run-dir", str(tmp_path / "runs"),
        "--expected-dir", str(tmp_path / "expected"), "--benchmark-min-rounds=1",
        f"--benchmark-json={tmp_path / 'run.json'}",
    ], env={PUBLISHED_DIR_ENV: str(tmp_path / "published")})
    out = run.stdout + run.stderr
    assert run.returncode == 1, out  # the cases xfail (no own expectations); the missed mean fails the session
    assert "6 xfailed" in out and "published expectations" in out
    assert "checkpoint recognised as example/tiny-test" in out
    assert "pope[tiny-test]-none: reproduces (Paper A, Table 1, none): got " in out
    assert "FAILED pope[tiny-test]-visionzip-k16: does not reproduce: got " in out
    assert "published 200.0 +- 1.00 [POPE F1, mean of the 3 splits] (Paper A, Table 1, visionzip)" in out
    assert "FAILED: 1 published POPE mean(s) not reproduced" in out

    infos = {b["extra_info"]["case"]: b["extra_info"] for b in json.loads((tmp_path / "run.json").read_text())
             ["benchmarks"]}
    part = infos["pope-popular[tiny-test]-visionzip-k16"]["published"]
    assert part["checkpoint"]["status"] == "recognised" and part["pope_part"]["split"] == "popular"
    assert [r["status"] for r in part["results"]] == ["pending"]
