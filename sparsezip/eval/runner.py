"""Evaluate a model + compression method on a dataset: resumable, shardable, with an atomic summary.

The loop lives here; what a run folder is (identity, resume, shard merge) is ``sparsezip.eval.rundir`` and
what its summary holds is ``sparsezip.eval.summary``. Files in ``out_dir``:
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

from collections.abc import Sequence
from pathlib import Path

from tqdm.auto import tqdm

from sparsezip.adapters.api import STAGES, GenerationOutput, VisionLanguageModel
from sparsezip.data.prompts import build_prompt, dataset_question
from sparsezip.data.records import gold_record, record_key
from sparsezip.data.registry import dataset_spec
from sparsezip.data.sample import Sample
from sparsezip.data.subsets import shard_bounds
from sparsezip.eval.rundir import PREDICTIONS_FILE, RUN_FILE, SUMMARY_FILE, claim_out_dir, load_done
from sparsezip.eval.summary import environment, image_processor_backend, kv_bytes_per_token, summarize
from sparsezip.jsonio import append_jsonl, atomic_write_json
from sparsezip.memory import peak_memory
from sparsezip.methods.base import CompressionMethod

__all__ = ["PREDICTIONS_FILE", "RUN_FILE", "SUMMARY_FILE", "evaluate"]


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
        # How images reach the processor (LLaVA's image_aspect_ratio: "pad" or "crop") and which backend
        # resizes them; None for a model that does not say.
        "image_aspect_ratio": getattr(model, "image_aspect_ratio", None),
        "image_processor_backend": image_processor_backend(model),
        "max_new_tokens": max_new_tokens,
        "batch_size": batch_size,
        # A shard is only meaningful for one selection, so its size is part of its identity.
        "shard": None if shard is None else {"index": shard[0], "count": shard[1], "of_samples": len(samples)},
    }
    claim_out_dir(out_dir, config)

    keys = [record_key(spec.family, gold_record(spec.family, s)) for s in samples]
    positions = {key: i for i, key in enumerate(keys)}
    if len(positions) != len(keys):
        repeated = next(k for i, k in enumerate(keys) if positions[k] != i)
        raise ValueError(f"{dataset}: question {repeated} appears twice in the samples")
    done = load_done(out_dir / PREDICTIONS_FILE, spec.family, positions)
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
                        environment=environment(model), kv_bytes_per_token=kv_bytes_per_token(model))
    atomic_write_json(out_dir / SUMMARY_FILE, summary)
    return summary


def _sources(samples: Sequence[Sample]) -> dict[str, str]:
    """``{annotation file: sha256}`` of every source the samples came from."""
    return {str(s.meta["source"]): str(s.meta["source_sha256"]) for s in samples if "source" in s.meta}


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
