"""Published expectations (``fixtures/expected/published/``): the committed files, matching a checkpoint by its
weights identity, the per-case and POPE-mean verdicts, their messages, and how they decide a matrix case, the
session and the report -- with fake checkpoint identities, no real weights."""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from types import SimpleNamespace

import pytest

from sparsezip.adapters.checkpoint import identity_from_hashes
from sparsezip.bench.expectations import Verdict
from sparsezip.bench.matrix import matrix_rows, scale_budget
from sparsezip.bench.published import PUBLISHED_PROPERTY, PublishedSession, decide
from sparsezip.eval.published import (
    NOT_RECOGNISED,
    POPE_SPLITS,
    load_published,
    load_published_file,
    recognise,
    recognise_identity,
)
from sparsezip.eval.reproduction import aggregate, case_payload, published_markdown, summary_lines
from sparsezip.jsonio import sha256_file
from sparsezip.methods import list_methods
from sparsezip.metrics import MME_COGNITION, MME_PERCEPTION

# What the Hugging Face Hub lists for llava-hf/llava-1.5-7b-hf's three shards (LFS sha256), and the identity
# checkpoint_identity() gives a folder holding exactly those files.
LLAVA15_HUB_SHA256 = {
    "model-00001-of-00003.safetensors": "c11dbf016ee7d35ee130c19b67e20eb04873996006f424b7bcbd453b6517ee66",
    "model-00002-of-00003.safetensors": "46df6c6e5fad297fe7fbca4963dcf180cb1d0528cabc884d1f603311fed01328",
    "model-00003-of-00003.safetensors": "4f06177c37ca13944e73b57dd6d051767b950dffc12400c700dfa2509c24c697",
}
LLAVA15_IDENTITY = "0e0e723161f8c87d18605434d884151b7e207309732bd2028ba43878e2e9e1a1"
NOMINAL_TOKENS = {"llava-1.5-7b-hf": 576, "llava-v1.6-vicuna-7b-hf": 2880, "Qwen2.5-VL-7B-Instruct": 144}
FAKE_HASHES = {"model.safetensors": "ab" * 32}
FAKE_IDENTITY = identity_from_hashes(FAKE_HASHES)
LABEL_SHA = {s: f"{i}" * 64 for i, s in enumerate(POPE_SPLITS, start=1)}


def test_the_committed_files_load_and_llava_is_identified_by_the_hub_hashes() -> None:
    files = {f.model: f for f in load_published()}
    assert sorted(files) == sorted(NOMINAL_TOKENS)
    llava = files["llava-1.5-7b-hf"]
    assert llava.hf_repo == "llava-hf/llava-1.5-7b-hf" and dict(llava.weight_hashes) == LLAVA15_HUB_SHA256
    assert llava.identity == identity_from_hashes(LLAVA15_HUB_SHA256) == LLAVA15_IDENTITY
    # no weight hashes were found for these two: nothing is recognised as them (never a match by name)
    assert files["llava-v1.6-vicuna-7b-hf"].identity is None and files["Qwen2.5-VL-7B-Instruct"].identity is None
    for f in files.values():
        assert all(e.check in ("fail", "report") and e.tolerance > 0 for e in f.entries)
    fails = {e.key for e in llava.entries if e.check == "fail"}
    assert {"pope[llava-1.5-7b-hf]-none", "mme[llava-1.5-7b-hf]-none:perception",
            "pope[llava-1.5-7b-hf]-visionzip-k64", "pope[llava-1.5-7b-hf]-sparsevlm-paper-k64"} <= fails
    by_key = {e.key: e for e in llava.entries}
    assert by_key["pope[llava-1.5-7b-hf]-none"].value == 0.859  # the model zoo's 85.9, as a fraction
    assert by_key["pope[llava-1.5-7b-hf]-sparsevlm-paper-k64"].printed == "77.5"  # ICML version, not v1's 75.1


def test_every_published_entry_names_a_matrix_case() -> None:
    rows = {row.name: row for row in matrix_rows()}
    pending = []
    for f in load_published():
        for entry in f.entries:
            if entry.matrix_note:  # a budget the matrix does not run, said in the file
                continue
            if entry.row not in rows:
                # The in-LLM methods' rows that run each paper's own setting (fastv/pdrop/dart and the
                # `-paper` rows) come with the in-LLM baselines; until they are registered, only those may be
                # missing.
                method = entry.row.removesuffix("-paper")
                assert entry.row.endswith("-paper") or method not in list_methods(), entry.key
                pending.append(entry.key)
                continue
            row = rows[entry.row]
            budgets = {None if b == 576 else scale_budget(b, NOMINAL_TOKENS[f.model]) for b in row.llava_budgets}
            assert entry.budget in budgets, (entry.key, budgets)
    assert all(key.split("]-", 1)[1].split("-k")[0].removesuffix("-paper") in ("sparsevlm", "fastv", "pdrop", "dart")
               for key in pending)


def _pope_entry(model: str, row: str, budget: int | None, printed: float, tol: float, check: str,
                kind: str = "mean_of_cases", source: str = "paper", splits: dict | None = None) -> dict:
    key = f"pope[{model}]-{row}" + ("" if budget is None else f"-k{budget}")
    splits = splits or {s: {"file": f"coco_pope_{s}.json", "sha256": LABEL_SHA[s], "n": 100} for s in POPE_SPLITS}
    return {"key": key, "dataset": "pope", "row": row, "budget": budget,
            "compare": {"kind": kind, "metric": "f1"},
            "published": {"value": printed, "scale": "percent", "source": source, "where": f"Table 1, row {row}",
                          "value_suite_units": printed / 100},
            "tolerance": {"abs": tol, "reasons": ["test"]}, "check": check,
            "label_set": {"version": "test labels", "splits": splits}}


def _mme_entry(model: str, row: str, budget: int | None, printed: float, tol: float, check: str,
               metric: str = "perception + cognition") -> dict:
    key = f"mme[{model}]-{row}" + ("" if budget is None else f"-k{budget}") + (":perception" if metric == "perception"
                                                                                else "")
    return {"key": key, "dataset": "mme", "row": row, "budget": budget, "compare": {"kind": "case_metric",
            "metric": metric}, "published": {"value": printed, "scale": "points", "source": "paper",
            "where": f"Table 2, row {row}", "value_suite_units": printed}, "tolerance": {"abs": tol},
            "check": check, "label_set": None}


def _write(folder: Path, entries: list[dict], hashes: dict | None = FAKE_HASHES, model: str = "fake-7b") -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    data = {"schema_version": 1, "model": model,
            "checkpoint": {"hf_repo": f"example/{model}", "weight_files_sha256": hashes,
                           "identity": identity_from_hashes(hashes) if hashes else None},
            "sources": {"paper": {"name": "Paper A (2025)"}, "other": {"name": "Survey B"}},
            "expectations": {e["key"]: e for e in entries}}
    path = folder / f"{model}.json"
    path.write_text(json.dumps(data))
    return path


def _pope_metrics(tp: int, fp: int, tn: int, fn: int) -> dict:
    n = tp + fp + tn + fn
    return {"accuracy": (tp + tn) / n, "precision": tp / (tp + fp), "recall": tp / (tp + fn),
            "f1": 2 * tp / (2 * tp + fp + fn), "yes_ratio": (tp + fp) / n, "n": n}


def _mme_metrics(perception: float, cognition: float, subtasks=MME_PERCEPTION + MME_COGNITION) -> dict:
    return {"subtasks": {s: {"acc": 50.0, "acc_plus": 25.0, "score": 75.0} for s in subtasks},
            "perception": perception, "cognition": cognition}


@pytest.fixture
def fake(tmp_path: Path):
    """A recognition of a fake checkpoint (identity from made-up hashes) with POPE and MME entries."""
    entries = [
        _pope_entry("fake-7b", "none", None, 85.0, 0.01, "fail"),
        _pope_entry("fake-7b", "visionzip", 64, 77.0, 0.02, "fail"),
        _pope_entry("fake-7b", "tome", 64, 52.5, 0.02, "report", kind="pooled_over_cases", source="other"),
        _mme_entry("fake-7b", "none", None, 1862, 30.0, "fail"),
        _mme_entry("fake-7b", "none", None, 1510.7, 20.0, "fail", metric="perception"),
        _mme_entry("fake-7b", "visionzip", 64, 1690, 50.0, "report"),
    ]
    _write(tmp_path / "published", entries)
    files = load_published(tmp_path / "published")
    recognition = recognise_identity(FAKE_IDENTITY, "my-folder-name", files, FAKE_HASHES)
    assert recognition.status == "recognised" and recognition.file.hf_repo == "example/fake-7b"
    return recognition


def _pope_payload(recognition, split: str, row: str, budget: int | None, counts: tuple, *, sha: str | None = None,
                  limit: int | None = None) -> dict:
    metrics = _pope_metrics(*counts)
    case = f"pope-{split}[my-folder-name]-{row}" + ("" if budget is None else f"-k{budget}")
    return case_payload(recognition, case=case, dataset=f"pope-{split}", row=row, budget=budget, metrics=metrics,
                        n=metrics["n"], dataset_sha256=sha or LABEL_SHA[split], limit=limit)


def test_mme_cases_say_reproduces_or_does_not_naming_the_source(fake) -> None:
    # matched by identity although the folder is called otherwise; the entry's model name is the file's
    payload = case_payload(fake, case="mme[my-folder-name]-none", dataset="mme", row="none", budget=None,
                           metrics=_mme_metrics(1480.0, 370.0), n=2374, dataset_sha256=None, limit=None)
    results = {r["key"]: r for r in payload["results"]}
    total, perception = results["mme[fake-7b]-none"], results["mme[fake-7b]-none:perception"]
    assert total["status"] == "reproduces" and total["message"].startswith(
        "mme[fake-7b]-none: reproduces (Paper A (2025), Table 2, row none): got 1850.0, published 1862 +- 30.0")
    assert perception["status"] == "does_not_reproduce" and perception["message"] == (
        "mme[fake-7b]-none:perception: does not reproduce: got 1480.0, published 1510.7 +- 20.0 [MME perception] "
        "(Paper A (2025), Table 2, row none)")
    outcome = decide(Verdict("unchecked", "no expectation for mme[my-folder-name]-none"), payload)
    assert outcome.action == "fail" and "published result not reproduced" in outcome.message
    assert "Paper A (2025), Table 2" in outcome.message and "not against your stored expectations" in outcome.message
    # a report-only miss warns; nothing to check for a row without entries
    vz = case_payload(fake, case="mme[x]-visionzip-k64", dataset="mme", row="visionzip", budget=64,
                      metrics=_mme_metrics(1300.0, 200.0), n=2374, dataset_sha256=None, limit=None)
    outcome = decide(Verdict("unchecked", "no expectation"), vz)
    assert outcome.action == "xfail" and outcome.warnings[0].endswith("[report only]")
    nothing = case_payload(fake, case="mme[x]-pool-k64", dataset="mme", row="pool", budget=64,
                           metrics=_mme_metrics(1.0, 1.0), n=2374, dataset_sha256=None, limit=None)
    assert nothing["results"] == [] and "no published value" in decide(Verdict("ok", "ok"), nothing).message


def test_mme_needs_every_subtask_and_limit_is_never_compared(fake) -> None:
    partial = case_payload(fake, case="mme[x]-none", dataset="mme", row="none", budget=None,
                           metrics=_mme_metrics(1510.0, 0.0, MME_PERCEPTION), n=1000, dataset_sha256=None, limit=None)
    results = {r["key"]: r for r in partial["results"]}
    assert results["mme[fake-7b]-none"]["status"] == "not_comparable"
    assert "all 14 subtasks, this run has 10 (missing commonsense_reasoning" in results["mme[fake-7b]-none"]["message"]
    assert results["mme[fake-7b]-none:perception"]["status"] == "reproduces"  # perception needs only its 10
    limited = case_payload(fake, case="mme[x]-none", dataset="mme", row="none", budget=None,
                           metrics=_mme_metrics(1500.0, 362.0), n=50, dataset_sha256=None, limit=50)
    assert {r["status"] for r in limited["results"]} == {"not_comparable"}
    assert "--limit 50 evaluates a subset" in limited["results"][0]["message"]


def test_pope_means_are_checked_over_the_three_splits_only(fake) -> None:
    good = {"random": (40, 5, 50, 5), "popular": (40, 8, 47, 5), "adversarial": (40, 12, 43, 5)}
    payloads = [_pope_payload(fake, s, "none", None, good[s]) for s in POPE_SPLITS]
    assert {r["status"] for p in payloads for r in p["results"]} == {"pending"}
    [mean] = aggregate(payloads)
    expected = sum(_pope_metrics(*good[s])["f1"] for s in POPE_SPLITS) / 3
    assert mean.status == "reproduces" and mean.measured == pytest.approx(expected)
    assert mean.message.startswith("pope[fake-7b]-none: reproduces (Paper A (2025), Table 1, row none): got 85.")
    # a bad split drags the mean out of the tolerance: a failure naming the source
    bad = [_pope_payload(fake, s, "visionzip", 64, (20, 30, 25, 25) if s == "adversarial" else good[s])
           for s in POPE_SPLITS]
    [miss] = aggregate(bad)
    assert miss.failed and "does not reproduce: got" in miss.message and "published 77.0 +- 2.00" in miss.message
    # only pope-random ran: the mean cannot be checked, and says why
    [alone] = aggregate(payloads[:1])
    assert alone.status == "incomplete" and not alone.failed
    assert "could not check the published POPE F1, mean of the 3 splits: only pope-random ran (missing " \
           "pope-popular, pope-adversarial)" in alone.message
    # other label files (another POPE version) are not compared at all
    other = [_pope_payload(fake, s, "none", None, good[s], sha="f" * 64 if s == "random" else None)
             for s in POPE_SPLITS]
    [labels] = aggregate(other)
    assert labels.status == "not_comparable" and "pope-random labels differ from the set the paper used" in \
        labels.message
    # lmms-eval's pooled F1 comes from the answer counts of the three cases
    pooled = aggregate([_pope_payload(fake, s, "tome", 64, good[s]) for s in POPE_SPLITS])[0]
    tp, fp, fn = (sum(good[s][i] for s in POPE_SPLITS) for i in (0, 1, 3))
    assert pooled.measured == pytest.approx(2 * tp / (2 * tp + fp + fn)) and pooled.check == "report"


def test_near_misses_say_the_checkpoint_is_not_recognised(tmp_path: Path) -> None:
    _write(tmp_path / "p", [_pope_entry("fake-7b", "none", None, 85.0, 0.01, "fail")])
    _write(tmp_path / "p", [], hashes=None, model="other-7b")
    files = load_published(tmp_path / "p")
    resharded = {"model-00001-of-00002.safetensors": "cd" * 32, "model-00002-of-00002.safetensors": "ef" * 32}
    near = recognise_identity(identity_from_hashes(resharded), "fake-7b", files, resharded)
    assert near.status == "not_recognised" and near.message.startswith(NOT_RECOGNISED)
    assert "is not example/fake-7b's" in near.message and "re-sharded" in near.message
    assert "model-00001-of-00002.safetensors cdcdcdcdcdcd" in near.message
    unknown_hashes = recognise_identity(FAKE_IDENTITY, "other-7b", files)
    assert unknown_hashes.status == "recognised"  # the identity decides, not the name
    no_hashes = recognise_identity("0" * 64, "other-7b", files, {"model.safetensors": "0" * 64})
    assert "records no weight-file sha256 for example/other-7b" in no_hashes.message
    stranger = recognise_identity("0" * 64, "mine", files)
    assert "no published file has weights identity 000000000000" in stranger.message
    payload = case_payload(stranger, case="pope-random[mine]-none", dataset="pope-random", row="none", budget=None,
                           metrics=_pope_metrics(1, 1, 1, 1), n=4, dataset_sha256=None, limit=None)
    assert payload["results"] == [] and payload["checkpoint"]["status"] == "not_recognised"
    assert summary_lines([payload]) == [stranger.message]
    outcome = decide(Verdict("unchecked", "no expectation for x"), payload)
    assert outcome.action == "xfail" and outcome.message.endswith(f"published: {NOT_RECOGNISED}")


def test_a_resharded_copy_of_a_recognised_checkpoint_is_not_recognised(tiny_llava_dir: Path,
                                                                        tmp_path: Path) -> None:
    from safetensors.torch import load_file, save_file

    hashes = {"model.safetensors": sha256_file(tiny_llava_dir / "model.safetensors")}
    _write(tmp_path / "published", [], hashes=hashes, model="tiny-llava")
    assert recognise(tiny_llava_dir, "anything", directory=tmp_path / "published").status == "recognised"
    assert recognise(tiny_llava_dir, "tiny-llava", embedded=True).status == "embedded"
    tensors = load_file(tiny_llava_dir / "model.safetensors")
    names = sorted(tensors)
    folder = shutil.copytree(tiny_llava_dir, tmp_path / "tiny-llava", ignore=shutil.ignore_patterns("model.*"))
    shards = {"model-00001-of-00002.safetensors": names[::2], "model-00002-of-00002.safetensors": names[1::2]}
    for shard, keys in shards.items():
        save_file({k: tensors[k] for k in keys}, folder / shard)
    (folder / "model.safetensors.index.json").write_text(json.dumps(
        {"metadata": {}, "weight_map": {k: shard for shard, keys in shards.items() for k in keys}}))
    resharded = recognise(folder, "tiny-llava", directory=tmp_path / "published")
    assert resharded.status == "not_recognised"
    assert resharded.message.startswith(f"{NOT_RECOGNISED} (weights identity ")
    assert "its weight files model.safetensors were re-sharded" in resharded.message


def test_decide_keeps_paper_misses_apart_from_regressions(fake) -> None:
    good = _pope_payload(fake, "random", "none", None, (40, 5, 50, 5))
    assert decide(Verdict("regressed", "x: quality regressed"), good).action == "fail"
    assert decide(Verdict("ok", "x: ok"), good).action == "pass"
    assert decide(Verdict("unchecked", "no expectation"), good).action == "xfail"  # POPE: pending, not checked
    mme = case_payload(fake, case="mme[x]-none", dataset="mme", row="none", budget=None,
                       metrics=_mme_metrics(1510.0, 352.0), n=2374, dataset_sha256=None, limit=None)
    reproduced = decide(Verdict("unchecked", "no expectation for x"), mme)
    assert reproduced.action == "pass" and reproduced.message.startswith("mme[fake-7b]-none: reproduces")
    both = decide(Verdict("regressed", "x: quality regressed"), case_payload(
        fake, case="mme[x]-none", dataset="mme", row="none", budget=None, metrics=_mme_metrics(1400.0, 352.0),
        n=2374, dataset_sha256=None, limit=None))
    assert both.action == "fail" and both.message.startswith("published result not reproduced")
    assert both.message.endswith("; and x: quality regressed")
    assert decide(None, mme).action == "pass"  # --update-expected records, the paper still decides
    assert decide(Verdict("unchecked", "u"), None).action == "xfail"  # embedded: as before
    assert decide(Verdict("improved", "i"), None).warnings == ("i",)


def _report(payload: dict) -> SimpleNamespace:
    return SimpleNamespace(when="call", user_properties=[(PUBLISHED_PROPERTY, payload), ("other", 1)])


def test_session_fails_on_a_missed_mean_and_says_when_it_could_not_check(fake) -> None:
    good = {"random": (40, 5, 50, 5), "popular": (40, 8, 47, 5), "adversarial": (40, 12, 43, 5)}
    plugin = PublishedSession()
    for split in POPE_SPLITS:
        plugin.pytest_runtest_logreport(_report(_pope_payload(fake, split, "none", None, good[split])))
        plugin.pytest_runtest_logreport(_report(_pope_payload(fake, split, "visionzip", 64, (20, 30, 25, 25))))
    plugin.pytest_runtest_logreport(SimpleNamespace(when="setup", user_properties=[]))
    session = SimpleNamespace(config=SimpleNamespace(), exitstatus=pytest.ExitCode.OK)
    plugin.pytest_sessionfinish(session)
    assert session.exitstatus == pytest.ExitCode.TESTS_FAILED
    assert plugin.lines[0] == fake.message
    assert plugin.lines[1].startswith("FAILED pope[fake-7b]-visionzip-k64: does not reproduce: got")
    assert any(line.startswith("pope[fake-7b]-none: reproduces (Paper A") for line in plugin.lines)
    lines: list[str] = []
    plugin.pytest_terminal_summary(SimpleNamespace(section=lines.append, line=lambda text, **_: lines.append(text)))
    assert lines[0] == "published expectations" and "the session fails" in lines[-1]

    alone = PublishedSession()  # `-k pope-random`: the means cannot be checked, nothing fails
    alone.pytest_runtest_logreport(_report(_pope_payload(fake, "random", "visionzip", 64, (20, 30, 25, 25))))
    session = SimpleNamespace(config=SimpleNamespace(), exitstatus=pytest.ExitCode.OK)
    alone.pytest_sessionfinish(session)
    assert session.exitstatus == pytest.ExitCode.OK
    assert "could not check the published POPE F1, mean of the 3 splits: only pope-random ran" in alone.lines[1]
    worker = PublishedSession()  # an xdist worker leaves the summing up to the controller
    worker.pytest_runtest_logreport(_report(_pope_payload(fake, "random", "visionzip", 64, (20, 30, 25, 25))))
    worker.pytest_sessionfinish(SimpleNamespace(config=SimpleNamespace(workerinput={}), exitstatus=0))
    assert worker.lines == []


def test_report_lists_the_published_results(fake, tmp_path: Path) -> None:
    from sparsezip.eval.report import write_report

    good = {"random": (40, 5, 50, 5), "popular": (40, 8, 47, 5), "adversarial": (40, 12, 43, 5)}
    benchmarks = []
    for split in POPE_SPLITS:
        payload = _pope_payload(fake, split, "none", None, good[split])
        metrics = _pope_metrics(*good[split])
        benchmarks.append({"name": f"test_case[{payload['case']}]", "stats": {"median": 0.01}, "extra_info": {
            "case": payload["case"], "dataset": f"pope-{split}", "family": "pope", "model": "my-folder-name",
            "row": "none", "method": "none", "budget": None, "n": metrics["n"], "metrics": metrics,
            "headline": {"name": "f1", "value": metrics["f1"], "scale": 1.0},
            "visual_tokens": {"mean": 576.0}, "new_tokens_mean": 1.0, "published": payload}})
    run = tmp_path / "run.json"
    run.write_text(json.dumps({"machine_info": {}, "benchmarks": benchmarks}))
    md, _ = write_report([run], tmp_path / "report", n_resamples=50)
    text = md.read_text()
    assert "### Published results [run]" in text and fake.message in text
    assert "| pope[fake-7b]-none | 85." in text and "| reproduces | fail | Paper A (2025), Table 1, row none |" in text
    only_two = published_markdown(("run", b["extra_info"]["published"]) for b in benchmarks[:2])
    assert "could not check the published POPE F1" in only_two and "missing pope-adversarial" in only_two
    assert published_markdown([]) == ""


@pytest.mark.parametrize("change, message", [
    (lambda d: d["checkpoint"].update(identity="1" * 64), "is not identity_from_hashes"),
    (lambda d: d["expectations"]["pope[fake-7b]-none"].update(row="visionzip"), "disagrees with its dataset/row"),
    (lambda d: d["expectations"]["pope[fake-7b]-none"]["published"].update(source="nowhere"), "not in the file's"),
    (lambda d: d["expectations"]["pope[fake-7b]-none"].update(check="maybe"), "check must be one of"),
    (lambda d: d["expectations"]["pope[fake-7b]-none"]["published"].update(value=86.0), "disagree"),
    (lambda d: d["expectations"]["pope[fake-7b]-none"].update(label_set=None), "label_set.splits"),
])
def test_bad_published_files_are_refused_naming_the_entry(tmp_path: Path, change, message: str) -> None:
    path = _write(tmp_path, [_pope_entry("fake-7b", "none", None, 85.0, 0.01, "fail")])
    data = json.loads(path.read_text())
    change(data)
    path.write_text(json.dumps(data))
    with pytest.raises(ValueError, match=message):
        load_published_file(path)
