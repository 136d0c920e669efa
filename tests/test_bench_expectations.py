"""Quality expectations: headline metrics, tolerance, check verdicts, and the store's read/write."""

import json
import multiprocessing
from pathlib import Path

import pytest

from sparsezip.bench.expectations import (
    ExpectationStore,
    Headline,
    check,
    expectation_key,
    headline,
    make_entry,
    tolerance,
)


def test_headline_per_family() -> None:
    assert headline("pope", {"f1": 0.9, "accuracy": 0.8}) == Headline("f1", 0.9, 1.0)
    mme = {"subtasks": {"count": {}, "color": {}}, "perception": 250.0, "cognition": 0.0}
    assert headline("mme", mme) == Headline("total_score", 250.0, 400.0)
    assert headline("docvqa", {"anls": 0.5}) == Headline("anls", 0.5, 1.0)
    perception_only = {"subtasks": {"count": {}}, "perception": 150.0, "cognition": None}
    assert headline("mme", perception_only) == Headline("total_score", 150.0, 200.0)
    with pytest.raises(ValueError, match="no subtask scores"):
        headline("mme", {"subtasks": {}, "perception": None, "cognition": None})
    with pytest.raises(ValueError, match="pope metrics lack 'f1'"):
        headline("pope", {"accuracy": 1.0})
    with pytest.raises(ValueError, match="family 'coco'"):
        headline("coco", {})


def test_tolerance_is_device_aware_and_scaled() -> None:
    assert tolerance("cpu", 1.0) == pytest.approx(0.01)
    assert tolerance("cuda", 800.0) == pytest.approx(24.0)
    with pytest.raises(ValueError, match="device type 'mps'"):
        tolerance("mps", 1.0)


def _entry(value: float = 0.9, n: int = 100, sha: str | None = "abc", device: str = "cpu") -> dict:
    return make_entry(Headline("f1", value, 1.0), n=n, dataset_sha256=sha, device_type=device, metrics={})


@pytest.mark.parametrize(("measured", "device", "status"), [
    (0.9, "cpu", "ok"), (0.891, "cpu", "ok"), (0.889, "cpu", "regressed"), (0.911, "cpu", "improved"),
    (0.875, "cuda", "ok"), (0.869, "cuda", "regressed"),
])
def test_check_is_one_sided_with_the_device_tolerance(measured: float, device: str, status: str) -> None:
    verdict = check(_entry(0.9), Headline("f1", measured, 1.0), n=100, dataset_sha256="abc",
                    device_type=device, key="k")
    assert verdict.status == status, verdict.message
    assert f"{measured:.4f}" in verdict.message


@pytest.mark.parametrize(("expected", "n", "sha", "reason"), [
    (None, 100, "abc", "no expectation"),
    (_entry(n=50), 100, "abc", "n=50"),
    (_entry(sha="old"), 100, "abc", "dataset changed"),
    ({**_entry(), "metric": "anls"}, 100, "abc", "metric 'anls'"),
])
def test_check_reports_what_it_cannot_check(expected: dict | None, n: int, sha: str, reason: str) -> None:
    verdict = check(expected, Headline("f1", 0.9, 1.0), n=n, dataset_sha256=sha, device_type="cpu", key="k")
    assert verdict.status == "unchecked"
    assert reason in verdict.message and "--update-expected" in verdict.message


def test_expectation_key_includes_the_limit() -> None:
    assert expectation_key("mme[m]-none", None) == "mme[m]-none"
    assert expectation_key("mme[m]-none", 20) == "mme[m]-none@limit=20"


def test_store_roundtrip_keeps_other_entries_sorted(tmp_path: Path) -> None:
    store = ExpectationStore(tmp_path / "expected" / "m.json")
    assert store.load() == {} and store.get("b") is None
    store.update("b", _entry(0.5))
    store.update("a", _entry(0.7))
    store.update("b", _entry(0.6))
    data = json.loads(store.path.read_text())
    assert list(data["cases"]) == ["a", "b"]
    assert store.get("b")["value"] == 0.6 and store.get("a")["value"] == 0.7


def test_store_rejects_malformed_files(tmp_path: Path) -> None:
    path = tmp_path / "m.json"
    path.write_text("{\n  nope")
    with pytest.raises(ValueError, match=r"m.json: not valid JSON \(line 2\)"):
        ExpectationStore(path).load()
    path.write_text("[]")
    with pytest.raises(ValueError, match="'cases' mapping"):
        ExpectationStore(path).load()


def _write_many(path: str, start: int) -> None:
    store = ExpectationStore(path)
    for i in range(start, start + 10):
        store.update(f"case-{i:02d}", _entry(i / 100))


def test_concurrent_writers_lose_no_entry(tmp_path: Path) -> None:
    """Like xdist workers under --update-expected: several processes updating one file."""
    path = str(tmp_path / "m.json")
    ctx = multiprocessing.get_context("spawn")
    procs = [ctx.Process(target=_write_many, args=(path, start)) for start in (0, 10)]
    for proc in procs:
        proc.start()
    for proc in procs:
        proc.join(60)
    assert [p.exitcode for p in procs] == [0, 0]
    assert sorted(ExpectationStore(path).load()) == [f"case-{i:02d}" for i in range(20)]
