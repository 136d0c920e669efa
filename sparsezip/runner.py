"""Evaluate a model + compression method on a dataset: resumable, shardable, with an atomic summary.

Files in ``out_dir``:
    run.json           what this directory is a run of (model, method + config, dataset + label-file hashes,
                       prompt style, max_new_tokens, batch size, shard); a re-run with anything different
                       is refused instead of mixing results.
    predictions.jsonl  one record per sample, appended and fsynced per batch: ``index``, ``question_id``,
                       (``category``), ``question``, ``answers``, the raw ``prediction``, ``new_tokens``,
                       ``visual_tokens``, ``visual_tokens_per_layer``, ``prefill_tokens``, ``timings`` (ms per
                       stage), ``batch_size``. A re-run skips the samples already there; a torn last line
                       left by a kill is dropped (with a warning) and that sample redone.
    summary.json       metrics + latency + token + memory statistics + environment, written atomically.
"""

from __future__ import annotations

import importlib.metadata
import json
import platform
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np
import torch
from tqdm.auto import tqdm

from sparsezip.adapters.api import STAGES, GenerationOutput, VisionLanguageModel
from sparsezip.data.prompts import build_prompt, dataset_question
from sparsezip.data.records import gold_record, record_key, score_records
from sparsezip.data.registry import dataset_spec
from sparsezip.data.sample import Sample
from sparsezip.data.subsets import shard_bounds
from sparsezip.jsonio import (
    append_jsonl,
    atomic_write_json,
    atomic_write_jsonl,
    iter_jsonl,
    read_jsonl_resumable,
)
from sparsezip.memory import kv_cache_bytes, peak_memory
from sparsezip.methods.base import CompressionMethod

RUN_FILE, PREDICTIONS_FILE, SUMMARY_FILE = "run.json", "predictions.jsonl", "summary.json"


def evaluate(
    model: VisionLanguageModel,
    method: CompressionMethod,
    samples: Sequence[Sample],
    out_dir: str | Path,
    *,
    dataset: str,
    batch_size: int = 1,
    max_new_tokens: int | None = None,
    prompt_style: str = "llava_v1",
    shard: tuple[int, int] | None = None,
    progress: bool = True,
) -> dict:
    """Answer every sample (of shard ``i/n`` if given) not yet in ``out_dir``, then write ``summary.json``.

    ``samples`` is the full selection (after ``--limit``) in dataset order; a sample's ``index`` is its
    position there, so shards of the same selection merge back in order. ``dataset`` is the family or
    benchmark name (it picks the prompt and the metric). Returns the summary dict.
    """
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    spec = dataset_spec(dataset)
    max_new_tokens = spec.max_new_tokens if max_new_tokens is None else max_new_tokens
    if max_new_tokens < 1:
        raise ValueError(f"max_new_tokens must be >= 1, got {max_new_tokens}")
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    start, end = shard_bounds(samples, *shard) if shard else (0, len(samples))
    config = {
        "dataset": dataset,
        "family": spec.family,
        "sources": _sources(samples),
        "model": model.name,
        "num_patches": model.num_patches,
        "method": method.name,
        "method_config": method.config(),
        "prompt_style": prompt_style,
        "max_new_tokens": max_new_tokens,
        "batch_size": batch_size,
        # A shard is only meaningful for one selection, so its size is part of its identity.
        "shard": None if shard is None else {"index": shard[0], "count": shard[1], "of_samples": len(samples)},
    }
    _claim_out_dir(out_dir, config)

    keys = [record_key(spec.family, gold_record(spec.family, s)) for s in samples]
    positions = {key: i for i, key in enumerate(keys)}
    if len(positions) != len(keys):
        repeated = next(k for i, k in enumerate(keys) if positions[k] != i)
        raise ValueError(f"{dataset}: question {repeated} appears twice in the samples")
    done = _load_done(out_dir / PREDICTIONS_FILE, spec.family, positions)
    todo = [i for i in range(start, end) if keys[i] not in done]
    with (out_dir / PREDICTIONS_FILE).open("ab") as fh, tqdm(
        total=end - start, initial=end - start - len(todo), disable=not progress, desc=f"{dataset}/{method.name}"
    ) as bar:
        for offset in range(0, len(todo), batch_size):
            batch = [samples[i] for i in todo[offset : offset + batch_size]]
            outputs = _generate(model, method, batch, spec.family, prompt_style, max_new_tokens)
            records = [
                _record(index, spec.family, sample, out)
                for index, sample, out in zip(todo[offset : offset + batch_size], batch, outputs, strict=True)
            ]
            append_jsonl(fh, records)
            done.update((keys[r["index"]], r) for r in records)
            bar.update(len(records))
    records = [done[keys[i]] for i in range(start, end)]
    peak = peak_memory(model.device)
    summary = summarize(config, records, expected=end - start, peak=peak,
                        environment=environment(model), kv_bytes_per_token=_kv_bytes_per_token(model))
    atomic_write_json(out_dir / SUMMARY_FILE, summary)
    return summary


def _sources(samples: Sequence[Sample]) -> dict[str, str]:
    """``{annotation file: sha256}`` of every source the samples came from."""
    return {str(s.meta["source"]): str(s.meta["source_sha256"]) for s in samples if "source" in s.meta}


def _claim_out_dir(out_dir: Path, config: dict) -> None:
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


def _load_done(path: Path, family: str, positions: Mapping[str, int]) -> dict[str, dict]:
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


def _generate(
    model: VisionLanguageModel,
    method: CompressionMethod,
    batch: Sequence[Sample],
    family: str,
    prompt_style: str,
    max_new_tokens: int,
) -> list[GenerationOutput]:
    images = [s.load_image() for s in batch]
    prompts = [build_prompt(family, s.question, prompt_style, chat_prompt=model.chat_prompt) for s in batch]
    questions = [dataset_question(family, s.question) for s in batch]
    outputs = model.generate(images, prompts, method=method, questions=questions, max_new_tokens=max_new_tokens)
    if len(outputs) != len(batch):
        raise ValueError(f"model {model.name} returned {len(outputs)} outputs for a batch of {len(batch)}")
    return outputs


def _record(index: int, family: str, sample: Sample, out: GenerationOutput) -> dict:
    missing = [stage for stage in STAGES if stage not in out.timings]
    if missing:
        raise ValueError(f"sample {sample.id!r}: the model reported no timing for stage(s) {missing}")
    record = {"index": index, **gold_record(family, sample), "question": sample.question, "prediction": out.text}
    record.update(
        new_tokens=out.new_tokens,
        visual_tokens=out.visual_tokens,
        visual_tokens_per_layer=out.visual_tokens_per_layer,
        prefill_tokens=out.prefill_tokens,
        timings={stage: out.timings[stage] for stage in STAGES},
        batch_size=out.batch_size,
    )
    if out.extra:
        record["extra"] = out.extra
    return record


def summarize(
    config: Mapping,
    records: Sequence[Mapping],
    *,
    expected: int,
    peak: tuple[int, str],
    environment: Mapping,
    kv_bytes_per_token: float | None,
) -> dict:
    """The ``summary.json`` content for ``records`` (a run or a merge of shards).

    Latency statistics are over per-sample records; with ``batch_size > 1`` every sample of a batch
    carries its batch's stage times. The first batch includes any warm-up.
    """
    visual = np.array([r["visual_tokens"] for r in records], dtype=np.float64)
    saved = config["num_patches"] - visual.mean() if len(records) else None
    per_layer = [r["visual_tokens_per_layer"] for r in records if r.get("visual_tokens_per_layer")]
    return {
        "dataset": config["dataset"],
        "complete": len(records) == expected,
        "n": len(records),
        "expected": expected,
        "metrics": score_records(config["family"], records) if records else None,
        "latency_ms": {
            stage: _stats([r["timings"][stage] for r in records]) for stage in STAGES
        },
        "tokens": {
            "visual": {"mean": float(visual.mean()), "min": float(visual.min()), "max": float(visual.max())}
            if len(records) else None,
            "visual_per_layer_mean": np.mean(per_layer, axis=0).tolist() if per_layer else None,
            "prefill_mean": _mean([r["prefill_tokens"] for r in records]),
            "new_tokens_mean": _mean([r["new_tokens"] for r in records]),
            "max_new_tokens": config["max_new_tokens"],
        },
        "memory": {
            "peak_bytes": peak[0],
            "peak_kind": peak[1],
            "kv_cache_saved_bytes_per_sample": None if saved is None or kv_bytes_per_token is None
            else saved * kv_bytes_per_token,
            "kv_bytes_per_token": kv_bytes_per_token,
        },
        "environment": dict(environment),
        "config": dict(config),
    }


def _stats(values: Sequence[float]) -> dict | None:
    if not values:
        return None
    arr = np.asarray(values, dtype=np.float64)
    return {"mean": float(arr.mean()), "median": float(np.median(arr)), "p90": float(np.percentile(arr, 90))}


def _mean(values: Sequence[float]) -> float | None:
    return float(np.mean(values)) if values else None


def environment(model: VisionLanguageModel) -> dict:
    """Versions and hardware: python, torch, transformers (read from package metadata, not imported),
    device and its name."""
    device = torch.device(model.device)
    if device.type == "cuda":
        device_name = torch.cuda.get_device_name(device)
    else:
        device_name = platform.processor() or platform.machine() or "cpu"
    try:
        transformers_version = importlib.metadata.version("transformers")
    except importlib.metadata.PackageNotFoundError:
        transformers_version = None
    return {
        "python": platform.python_version(),
        "torch": torch.__version__,
        "transformers": transformers_version,
        "sparsezip": importlib.metadata.version("sparsezip") if _installed("sparsezip") else None,
        "platform": platform.platform(),
        "device": str(device),
        "device_name": device_name,
    }


def _installed(package: str) -> bool:
    try:
        importlib.metadata.version(package)
    except importlib.metadata.PackageNotFoundError:
        return False
    return True


def _kv_bytes_per_token(model: VisionLanguageModel) -> float | None:
    """KV-cache bytes per token from an HF-style ``model.config.text_config`` and ``model.dtype``, when the
    model exposes them (the protocol does not require it); ``None`` otherwise."""
    text_config = getattr(getattr(model, "config", None), "text_config", None)
    dtype = getattr(model, "dtype", None)
    layers = getattr(text_config, "num_hidden_layers", None)
    hidden = getattr(text_config, "hidden_size", None)
    if not (isinstance(layers, int) and isinstance(hidden, int) and isinstance(dtype, torch.dtype)):
        return None
    return kv_cache_bytes(1, layers, hidden, dtype.itemsize)


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
