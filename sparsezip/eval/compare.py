"""Compare two evaluation runs on the same questions (``sparsezip compare RUN_A RUN_B``).

For each dataset the headline metric is written as a function of per-unit sufficient statistics (its row's
``DatasetSpec.paired_units``, built in its loader module), so the paired bootstrap
(:mod:`sparsezip.eval.stats`) recomputes the real metric on every resample:

- POPE: units = questions, statistics ``[tp, fp, fn, tn]`` per category, strata = categories; metric = F1
  (the mean of the per-category F1s when a run spans several label files, as LLaVA reports POPE).
- MME: units = images (a question pair: acc+ is per image), statistics ``[correct, questions, all correct,
  1]`` per subtask, strata = subtasks; metric = total score (sum over subtasks of acc + acc+).
- DocVQA: units = questions, statistics ``[anls, 1]``; metric = ANLS.

McNemar and loyalty work on questions: correctness is the dataset's own (POPE/MME: the parsed answer equals
the label; DocVQA: exact match after the RRC normalisation), loyalty compares parsed answers (DocVQA:
normalised text). Predictions are parsed as scoring parses them: stripped first
(:func:`sparsezip.data.records.answer_text`).
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from pathlib import Path

from sparsezip.data.docvqa import paired_units as docvqa_units
from sparsezip.data.mme import paired_units as mme_units
from sparsezip.data.pope import paired_units as pope_units
from sparsezip.data.records import record_key, scored_records
from sparsezip.data.registry import DATASETS, dataset_spec
from sparsezip.data.units import Units
from sparsezip.eval.rundir import PREDICTIONS_FILE, RUN_FILE
from sparsezip.eval.stats import loyalty, mcnemar_exact, paired_bootstrap
from sparsezip.jsonio import iter_jsonl

# The per-dataset builders live next to their loaders; re-exported under their earlier names.
__all__ = ["Units", "compare_records", "compare_runs", "docvqa_units", "mme_units", "pope_units", "read_run"]


def compare_records(
    family: str, records_a: Sequence[Mapping], records_b: Sequence[Mapping], *, n_resamples: int = 10_000,
    seed: int = 0, parser: str | None = None,
) -> dict:
    """The paired comparison of two runs' records on the same questions, in the same order.

    Returns ``{metric, a, b, delta, ci_low, ci_high, p_value, n, discordant, loyalty, retained_correct,
    n_resamples, seed}`` plus, for POPE runs over several label files, ``categories`` with the same keys per
    category. ``n`` counts questions; the bootstrap resamples the family's units (MME: images).
    """
    spec = dataset_spec(family)
    if spec.paired_units is None:
        known = [f for f, s in DATASETS.items() if s.paired_units is not None]
        raise ValueError(f"no paired comparison for dataset family {family!r}; known: {', '.join(known)}")
    keys_a = [record_key(family, r) for r in records_a]
    keys_b = [record_key(family, r) for r in records_b]
    if keys_a != keys_b:
        only_a, only_b = sorted(set(keys_a) - set(keys_b)), sorted(set(keys_b) - set(keys_a))
        detail = f"only in A: {only_a[:3]}, only in B: {only_b[:3]}" if only_a or only_b else "same questions, other order"
        raise ValueError(f"the runs answered different question sets ({detail})")
    build = spec.paired_units
    records_a, records_b = scored_records(records_a), scored_records(records_b)  # parsed as scoring parses
    kwargs = {} if parser is None else {"parser": parser}
    units_a, units_b = build(records_a, **kwargs), build(records_b, **kwargs)
    result = _paired(units_a, units_b, n_resamples, seed)
    # Datasets whose ids are scoped by a field (POPE's label files) are also compared per scope.
    if spec.id_scope is not None and len(set(units_a.categories)) > 1:
        result["categories"] = {}
        for category in sorted(set(units_a.categories)):
            pick = [i for i, c in enumerate(units_a.categories) if c == category]
            sub_a = build([records_a[i] for i in pick], **kwargs)
            sub_b = build([records_b[i] for i in pick], **kwargs)
            result["categories"][category] = _paired(sub_a, sub_b, n_resamples, seed)
    return result


def _paired(a: Units, b: Units, n_resamples: int, seed: int) -> dict:
    boot = paired_bootstrap(a.stats, b.stats, a.metric, strata=a.strata, n_resamples=n_resamples, seed=seed)
    test = mcnemar_exact(a.correct, b.correct)
    same, retained = loyalty(a.answers, b.answers, a.correct, b.correct)
    return {
        "metric": a.metric_name, "a": boot.a, "b": boot.b, "delta": boot.delta, "ci_low": boot.ci_low,
        "ci_high": boot.ci_high, "p_value": test.p_value, "n": test.n, "discordant": test.discordant,
        "a_only_correct": test.a_only, "b_only_correct": test.b_only, "loyalty": same,
        "retained_correct": retained, "n_resamples": n_resamples, "seed": seed,
    }


def read_run(run_dir: str | Path) -> tuple[dict, list[dict]]:
    """``(run.json, records in dataset order)`` of an eval folder; ``ValueError`` naming what is missing."""
    run_dir = Path(run_dir)
    for name in (RUN_FILE, PREDICTIONS_FILE):
        if not (run_dir / name).is_file():
            raise ValueError(f"{run_dir}: no {name} (not a sparsezip eval run folder)")
    try:
        config = json.loads((run_dir / RUN_FILE).read_text(encoding="utf-8"))
    except json.JSONDecodeError as err:
        raise ValueError(f"{run_dir / RUN_FILE}: not valid JSON ({err.msg})") from None
    records = sorted((obj for _, obj in iter_jsonl(run_dir / PREDICTIONS_FILE)), key=lambda r: r.get("index", 0))
    if not records:
        raise ValueError(f"{run_dir / PREDICTIONS_FILE}: no predictions")
    return config, records


def compare_runs(run_a: str | Path, run_b: str | Path, *, n_resamples: int = 10_000, seed: int = 0) -> dict:
    """:func:`compare_records` of two eval folders, refusing runs of different datasets or label files
    (naming the field and both values). The result also names both runs (``run_a``, ``run_b``: method, config)."""
    config_a, records_a = read_run(run_a)
    config_b, records_b = read_run(run_b)
    if config_a.get("dataset") != config_b.get("dataset"):
        raise ValueError(f"the runs differ in dataset: {config_a.get('dataset')!r} (A) vs {config_b.get('dataset')!r} (B)")
    sources_a, sources_b = config_a.get("sources") or {}, config_b.get("sources") or {}
    for name in sorted(sources_a.keys() & sources_b.keys()):
        if sources_a[name] != sources_b[name]:
            raise ValueError(f"the runs differ in label file {name}: sha256 {sources_a[name]} (A) vs "
                             f"{sources_b[name]} (B)")
    family = dataset_spec(str(config_a["dataset"])).family
    result = compare_records(family, records_a, records_b, n_resamples=n_resamples, seed=seed)
    return {
        "dataset": config_a["dataset"],
        "run_a": {"path": str(run_a), "method": config_a.get("method"), "method_config": config_a.get("method_config")},
        "run_b": {"path": str(run_b), "method": config_b.get("method"), "method_config": config_b.get("method_config")},
        **result,
    }
