"""The benchmark matrix: datasets x model x methods, one pytest case each (see ``sparsezip/bench/matrix.py``).

Each case
1. evaluates the method on the dataset through the runner, into its own resumable run folder (a method that
   cannot run on the model as configured, e.g. an in-LLM budget out of reach, is skipped with the reason);
2. times one fixed sample's generate call (batch 1) with pytest-benchmark: ``--benchmark-min-rounds`` rounds
   (default 5) after one warm-up round; timing is on only when benchmark output is asked for
   (``--benchmark-json/-save/-autosave/-compare``) and never under xdist;
3. records metrics, visual tokens, stage times, memory and the method config in ``benchmark.extra_info``;
4. checks the headline metric against ``fixtures/expected/<model>.json`` (see
   ``sparsezip/bench/expectations.py`` for the tolerance), or records it under ``--update-expected``;
5. for a checkpoint recognised by its weights, compares with the papers' numbers in
   ``fixtures/expected/published/`` (``sparsezip/bench/published.py``): "reproduces (source)" or "does not
   reproduce: got X, published Y (source)" in ``extra_info["published"]``; POPE means at the session's end.

Run: ``pytest benchmarks -k pope``; ``--gpu``, ``--model-path``, ``--data-root``, ``--limit``, ``--methods``,
``--budgets`` point and narrow it.
"""

from __future__ import annotations

import json
import warnings

import pytest

from sparsezip.bench.cases import batch_size_for, build_method, case_dir, extra_info, unreachable_reason
from sparsezip.bench.expectations import ExpectationStore, check, expectation_key, headline, make_entry
from sparsezip.bench.matrix import EMBEDDED_MODEL_NAMES, Case
from sparsezip.bench.published import PUBLISHED_PROPERTY, decide
from sparsezip.data.prompts import build_prompt, dataset_question
from sparsezip.eval.reproduction import case_payload
from sparsezip.eval.runner import PREDICTIONS_FILE, evaluate


def _records(run_dir) -> list[dict]:
    """The case's predictions records in dataset order."""
    with (run_dir / PREDICTIONS_FILE).open(encoding="utf-8") as fh:
        return sorted((json.loads(line) for line in fh if line.strip()), key=lambda r: r["index"])


def _k_values(records: list[dict]) -> list[int]:
    """Dominant-token count K per evaluated sample, as the adapter reports it in ``extra["k"]``."""
    return [int(r["extra"]["k"]) for r in records if "k" in (r.get("extra") or {})]


@pytest.mark.benchmark_matrix
def test_case(case: Case, bench, bench_model, bench_samples, benchmark, bench_published, record_property) -> None:
    samples = bench_samples(case.dataset)
    method, calibration = build_method(case, bench_model, samples)
    reason = unreachable_reason(method, bench_model)
    if reason is not None:
        pytest.skip(reason)
    run_dir = case_dir(bench.run_root, case)
    embedded_cpu = bench.device.type == "cpu" and bench.model in EMBEDDED_MODEL_NAMES
    summary = evaluate(bench_model, method, samples, run_dir, dataset=case.dataset,
                       batch_size=batch_size_for(method, embedded_cpu=embedded_cpu), progress=False)
    assert summary["complete"], f"{run_dir}: {summary['n']}/{summary['expected']} samples evaluated"

    sample = samples[0]
    image = sample.load_image()
    prompt = build_prompt(case.family, sample.question, chat_prompt=bench_model.chat_prompt)
    question = dataset_question(case.family, sample.question)
    benchmark.group = case.dataset
    [timed] = benchmark.pedantic(
        bench_model.generate,
        args=([image], [prompt]),
        kwargs={"method": method, "questions": [question], "max_new_tokens": summary["tokens"]["max_new_tokens"]},
        rounds=bench.rounds,
        warmup_rounds=1,
    )
    records = _records(run_dir)
    k_values = _k_values(records) if calibration is not None else None
    benchmark.extra_info.update(extra_info(case, method, summary, timed, num_patches=bench_model.nominal_visual_tokens,
                                           calibration=calibration, k_values=k_values, records=records))
    benchmark.extra_info["torch_threads"] = bench.torch_threads

    measured = headline(case.family, summary["metrics"])
    dataset_sha = benchmark.extra_info["dataset_sha256"]
    key = expectation_key(case.id, bench.limit)
    store = ExpectationStore(bench.expected_file)
    published = None
    if bench_published.status != "embedded":
        published = case_payload(bench_published, case=case.id, dataset=case.dataset, row=case.row.name,
                                 budget=case.budget, metrics=summary["metrics"], n=summary["n"],
                                 dataset_sha256=dataset_sha, limit=bench.limit)
        benchmark.extra_info["published"] = published
        record_property(PUBLISHED_PROPERTY, published)  # to the session's POPE means (xdist: via the controller)
    verdict = None
    if bench.update_expected:
        store.update(key, make_entry(measured, n=summary["n"], dataset_sha256=dataset_sha,
                                     device_type=bench.device.type, metrics=summary["metrics"]))
    else:
        verdict = check(store.get(key), measured, n=summary["n"], dataset_sha256=dataset_sha,
                        device_type=bench.device.type, key=key)
        benchmark.extra_info["expectation"] = {"status": verdict.status, "message": verdict.message}
    outcome = decide(verdict, published)
    for message in outcome.warnings:
        warnings.warn(message, stacklevel=1)
    if outcome.action == "fail":
        pytest.fail(outcome.message)
    if outcome.action == "xfail":
        pytest.xfail(outcome.message)
