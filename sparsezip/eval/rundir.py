"""A run folder: what it is a run of (``run.json``), what it already holds (resume), and joining shards.

``run.json`` is written once, when a run first claims its folder; a later run with anything different is
refused instead of mixing results. ``predictions.jsonl`` is append-only (a torn last line from a kill is
dropped and redone). ``summary.json`` is rewritten atomically after every run.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from pathlib import Path

from sparsezip.data.records import record_key
from sparsezip.eval.summary import summarize
from sparsezip.jsonio import atomic_write_json, atomic_write_jsonl, iter_jsonl, read_jsonl_resumable

RUN_FILE, PREDICTIONS_FILE, SUMMARY_FILE = "run.json", "predictions.jsonl", "summary.json"


def claim_out_dir(out_dir: Path, config: dict) -> None:
    """Write ``run.json``, or check an existing one matches ``config`` (ValueError naming what differs)."""
    run_file = out_dir / RUN_FILE
    if run_file.exists():
        previous = json.loads(run_file.read_text(encoding="utf-8"))
        problems = [
            f"{k}: {previous.get(k)!r} -> {config.get(k)!r}"
            for k in sorted(config.keys() | previous.keys())
            if k != "sources" and previous.get(k) != config.get(k)
        ]
        # A larger --limit may reach further annotation files; a file both runs use must be byte-identical.
        old_sources, new_sources = previous.get("sources", {}), config["sources"]
        changed = sorted(f for f in old_sources.keys() & new_sources.keys() if old_sources[f] != new_sources[f])
        if changed:
            problems.append(f"annotation file(s) {changed} changed (sha256 differs)")
        if problems:
            raise ValueError(f"{out_dir} holds a different run ({'; '.join(problems)}); use another --out directory")
        if not new_sources.keys() <= old_sources.keys():
            atomic_write_json(run_file, {**previous, "sources": {**old_sources, **new_sources}})
    elif (out_dir / PREDICTIONS_FILE).exists():
        raise ValueError(f"{out_dir / PREDICTIONS_FILE} exists without {RUN_FILE}: refusing to append to it")
    else:
        atomic_write_json(run_file, config)


def load_done(path: Path, family: str, positions: Mapping[str, int]) -> dict[str, dict]:
    """Records already in ``path``, by key; refuses records that are not in this dataset or repeat."""
    done: dict[str, dict] = {}
    for lineno, record in enumerate(read_jsonl_resumable(path), start=1):
        key = record_key(family, record)
        if key not in positions or record.get("index") != positions[key]:
            raise ValueError(f"{path}: record {lineno} ({key}) is not sample {record.get('index')} of this dataset")
        if key in done:
            raise ValueError(f"{path}: record {lineno} repeats question {key}")
        done[key] = record
    return done


def merge_runs(shard_dirs: Sequence[str | Path], out_dir: str | Path) -> dict:
    """Join the outputs of ``sparsezip eval --shard i/n`` runs into one run in ``out_dir``.

    Refuses shards of different runs (any ``run.json`` difference besides the shard index), a repeated or
    missing shard, an unfinished shard (no complete ``summary.json``) and duplicate questions. The merged
    ``predictions.jsonl`` is in dataset order, as an unsharded run writes it; the summary is recomputed
    from the merged records (peak memory = the largest shard's).
    """
    if not shard_dirs:
        raise ValueError("merge needs at least one shard directory")
    if Path(out_dir).resolve() in {Path(d).resolve() for d in shard_dirs}:
        raise ValueError(f"merge output {out_dir} must not be one of the shard directories")
    configs, summaries, records = [], [], []
    for shard_dir in map(Path, shard_dirs):
        for name in (RUN_FILE, SUMMARY_FILE):
            if not (shard_dir / name).is_file():
                raise ValueError(f"{shard_dir}: no {name} (not a finished sparsezip eval run)")
        config = json.loads((shard_dir / RUN_FILE).read_text(encoding="utf-8"))
        summary = json.loads((shard_dir / SUMMARY_FILE).read_text(encoding="utf-8"))
        if not config.get("shard"):
            raise ValueError(f"{shard_dir}: not a shard run (run.json has no shard)")
        if not summary.get("complete"):
            raise ValueError(f"{shard_dir}: shard did not finish ({summary.get('n')}/{summary.get('expected')} samples)")
        configs.append(config)
        summaries.append(summary)
        records.extend(obj for _, obj in iter_jsonl(shard_dir / PREDICTIONS_FILE))  # read-only: no repair
    reference = _run_identity(configs[0])
    for shard_dir, config in zip(shard_dirs, configs, strict=True):
        if _run_identity(config) != reference:
            diff = sorted(k for k in config.keys() | reference.keys() if _run_identity(config).get(k) != reference.get(k))
            raise ValueError(f"{shard_dir} is a shard of a different run (differs in {diff})")
    count = configs[0]["shard"]["count"]
    indices = sorted(c["shard"]["index"] for c in configs)
    if indices != list(range(count)):
        missing = sorted(set(range(count)) - set(indices))
        raise ValueError(f"merge needs each of the {count} shards exactly once; got {indices}, missing {missing}")
    family = configs[0]["family"]
    seen: set[str] = set()
    for record in records:
        key = record_key(family, record)
        if key in seen:
            raise ValueError(f"question {key} appears in more than one shard")
        seen.add(key)
    records.sort(key=lambda r: r["index"])
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    config = {**configs[0], "shard": None}
    atomic_write_json(out_dir / RUN_FILE, config)
    atomic_write_jsonl(out_dir / PREDICTIONS_FILE, records)
    environments = [s["environment"] for s in summaries]
    peak = max((s["memory"]["peak_bytes"], s["memory"]["peak_kind"]) for s in summaries)
    summary = summarize(
        config, records, expected=configs[0]["shard"]["of_samples"], peak=peak,
        environment=environments[0] if all(e == environments[0] for e in environments) else {"mixed": environments},
        kv_bytes_per_token=summaries[0]["memory"]["kv_bytes_per_token"],
    )  # fmt: skip
    atomic_write_json(out_dir / SUMMARY_FILE, summary)
    return summary


def _run_identity(config: Mapping) -> dict:
    """A shard's ``run.json`` without its own index: equal for all shards of one run."""
    return {**config, "shard": {**config["shard"], "index": None}}
