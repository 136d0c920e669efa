"""Evaluate a model + compression method on a dataset: resumable, shardable, with an atomic summary.

The loop lives here; what a run folder is (identity, resume, shard merge) is ``sparsezip.eval.rundir`` and
what its summary holds is ``sparsezip.eval.summary``. Files in ``out_dir``:
    run.json           what this directory is a run of: dataset + label-file hashes, model (weights' content
                       identity, settings-file hashes, dtype, device type, adapter settings, torch/transformers
                       versions), method + config, prompt style and exact template, max_new_tokens, batch
                       size, shard; written with the first finished batch. A re-run with anything different is
                       refused, naming the field and both values, instead of mixing results.
    predictions.jsonl  one record per sample, appended and fsynced per batch: ``index``, ``question_id``,
                       (``category``), ``question``, ``answers``, the raw ``prediction``, ``new_tokens``,
                       ``visual_tokens``, ``visual_tokens_per_layer``, ``prefill_tokens``, ``timings`` (ms per
                       stage), ``batch_size``, ``uncompressed_visual_tokens`` (the image's count before
                       compression, when the model reports it). A re-run skips the samples already there; a torn last line
                       left by a kill is dropped (with a warning) and that sample redone.
    summary.json       metrics + latency + token + memory statistics + environment, written atomically.
    .sparsezip.lock    the lock a running eval holds (``sparsezip.eval.rundir.locked``): one eval per folder.
"""

from __future__ import annotations

import contextlib
import json
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path

import torch
from tqdm.auto import tqdm

from sparsezip.adapters.api import STAGES, GenerationOutput, VisionLanguageModel, model_geometry
from sparsezip.adapters.checkpoint import checkpoint_identity, settings_hashes
from sparsezip.data.prompts import build_prompt, dataset_question
from sparsezip.data.records import gold_record, record_key
from sparsezip.data.registry import dataset_spec
from sparsezip.data.sample import Sample
from sparsezip.data.subsets import shard_bounds
from sparsezip.eval.rundir import (
    PREDICTIONS_FILE,
    RUN_FILE,
    SUMMARY_FILE,
    check_same_run,
    load_done,
    locked,
    previous_run,
    write_run_file,
)
from sparsezip.eval.summary import environment, kv_bytes_per_token, library_versions, summarize
from sparsezip.jsonio import append_jsonl, atomic_write_json
from sparsezip.memory import peak_memory, reset_peak_memory
from sparsezip.methods.base import CompressionMethod
from sparsezip.methods.fit import check_method_fits

__all__ = ["PREDICTIONS_FILE", "RUN_FILE", "SUMMARY_FILE", "check_questions", "checkpoint_fields", "evaluate",
           "identity_fields", "model_fields", "run_config"]

QUESTION_SLOT = "{question}"  # where the question goes in run.json's prompt_template


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

    Before the folder is touched: the arguments, every question (an empty one is a dataset error), the method
    against the model's geometry (:func:`sparsezip.methods.fit.check_method_fits`) and the folder's earlier run
    (anything different is refused, naming the field). The folder is locked for the run; ``run.json`` is
    written with the first finished batch.
    """
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    spec = dataset_spec(dataset)
    max_new_tokens = spec.max_new_tokens if max_new_tokens is None else max_new_tokens
    if max_new_tokens < 1:
        raise ValueError(f"max_new_tokens must be >= 1, got {max_new_tokens}")
    check_questions(samples, dataset)
    geometry = model_geometry(model)
    check_method_fits(method, geometry.visual_tokens, prefix=geometry.prefix, llm_layers=geometry.llm_layers,
                      model_name=f"model {model.name!r}", views=geometry.views)
    start, end = shard_bounds(samples, *shard) if shard else (0, len(samples))
    keys = [record_key(spec.family, gold_record(spec.family, s)) for s in samples]
    positions = {key: i for i, key in enumerate(keys)}
    if len(positions) != len(keys):
        repeated = next(k for i, k in enumerate(keys) if positions[k] != i)
        raise ValueError(f"{dataset}: question {repeated} appears twice in the samples")
    config = run_config(dataset, samples, model_fields(model, spec.family, prompt_style), method,
                        prompt_style=prompt_style, max_new_tokens=max_new_tokens, batch_size=batch_size,
                        shard=shard)

    with locked(out_dir) as out_dir:
        reset_peak_memory(model.device)  # this run's peak, not the process's (benchmark cases share one)
        previous = previous_run(out_dir)
        check_same_run(out_dir, previous, config)
        path = out_dir / PREDICTIONS_FILE
        done = load_done(path, spec.family, positions)
        todo = [i for i in range(start, end) if keys[i] not in done]
        unwritten = previous is None or not config["sources"].keys() <= (previous.get("sources") or {}).keys()
        with contextlib.ExitStack() as files, tqdm(
            total=end - start, initial=end - start - len(todo), disable=not progress, desc=f"{dataset}/{method.name}"
        ) as bar:
            fh = None
            for offset in range(0, len(todo), batch_size):
                batch = [samples[i] for i in todo[offset : offset + batch_size]]
                outputs = _generate(model, method, batch, spec.family, prompt_style, max_new_tokens)
                records = [
                    _record(index, spec.family, sample, out)
                    for index, sample, out in zip(todo[offset : offset + batch_size], batch, outputs, strict=True)
                ]
                with _kept_on_failure(len(done)):
                    if unwritten:  # the folder is claimed only once there is something to keep
                        write_run_file(out_dir, config, previous)
                        unwritten = False
                    if fh is None:
                        fh = files.enter_context(path.open("ab"))
                    append_jsonl(fh, records)
                done.update((keys[r["index"]], r) for r in records)
                bar.update(len(records))
        records = [done[keys[i]] for i in range(start, end)]
        peak = peak_memory(model.device) if todo else _previous_peak(out_dir) or peak_memory(model.device)
        summary = summarize(config, records, expected=end - start, peak=peak,
                            environment=environment(model), kv_bytes_per_token=kv_bytes_per_token(model))
        with _kept_on_failure(len(done)):
            if unwritten:  # a run with nothing left to do (an empty shard) is still a finished run
                write_run_file(out_dir, config, previous)
            atomic_write_json(out_dir / SUMMARY_FILE, summary)
    return summary


def _previous_peak(out_dir: Path) -> tuple[int, str] | None:
    """The peak memory an earlier, finished run of this folder recorded (a resume with nothing left to do
    measures nothing of the run itself)."""
    try:
        memory = json.loads((out_dir / SUMMARY_FILE).read_text(encoding="utf-8"))["memory"]
        return int(memory["peak_bytes"]), str(memory["peak_kind"])
    except (OSError, ValueError, KeyError, TypeError):
        return None


@contextlib.contextmanager
def _kept_on_failure(finished: int) -> Iterator[None]:
    """Re-raise a failed write (a full disk, a lost mount) saying that what was finished is kept."""
    try:
        yield
    except OSError as err:
        raise OSError(err.errno, f"{err.strerror or err}; the {finished} sample(s) finished before are kept, and "
                      "re-running the same command resumes", err.filename) from err


def check_questions(samples: Sequence[Sample], dataset: str) -> None:
    """Refuse samples with an empty question (a dataset error for every method), naming the first by its id
    and annotation file."""
    empty = [s for s in samples if not isinstance(s.question, str) or not s.question.strip()]
    if empty:
        first = empty[0]
        where = f" in {first.meta['source']}" if "source" in first.meta else ""
        raise ValueError(f"{dataset}: question {first.id!r}{where} is empty ({len(empty)} empty question(s) in the "
                         "selection); fix the annotations or leave those samples out")


def checkpoint_fields(path: str | Path | None) -> dict | None:
    """What ``run.json`` records of a checkpoint folder: its weights' content identity
    (:func:`sparsezip.adapters.checkpoint.checkpoint_identity`) and the sha256 of each settings file (config,
    tokenizer, processor, chat template); ``None`` for a model with no checkpoint folder."""
    if path is None:
        return None
    return {"weights": checkpoint_identity(path), "files": settings_hashes(path)}


def model_fields(model: VisionLanguageModel, family: str, prompt_style: str) -> dict:
    """The model's part of a run's identity: name, nominal visual tokens, checkpoint (weights identity and
    settings files), dtype, device type, the adapter's ``run_settings()``, the exact prompt template (the
    question at ``{question}``) and the torch / transformers versions."""
    settings = getattr(model, "run_settings", None)
    fields = identity_fields(model.name, model.nominal_visual_tokens, getattr(model, "checkpoint_path", None),
                             getattr(model, "dtype", None), model.device)
    fields["model_settings"] = settings() if callable(settings) else {}
    fields["prompt_template"] = build_prompt(family, QUESTION_SLOT, prompt_style, chat_prompt=model.chat_prompt)
    return fields


def identity_fields(
    name: str,
    visual_tokens: int,
    checkpoint_path: str | Path | None,
    dtype: torch.dtype | None,
    device: str | torch.device,
) -> dict:
    """The model fields of a run's identity that are known before the model is loaded (all of
    :func:`model_fields` but ``model_settings`` and ``prompt_template``)."""
    return {
        "model": name,
        # The nominal count; each record states its image's own (`uncompressed_visual_tokens`).
        "num_patches": visual_tokens,
        "checkpoint": checkpoint_fields(checkpoint_path),
        "dtype": str(dtype).removeprefix("torch.") if dtype is not None else None,
        "device_type": torch.device(device).type,
        "versions": library_versions(),
    }


def run_config(
    dataset: str,
    samples: Sequence[Sample],
    model: Mapping,
    method: CompressionMethod,
    *,
    prompt_style: str,
    max_new_tokens: int,
    batch_size: int,
    shard: tuple[int, int] | None,
) -> dict:
    """``run.json``: everything that decides a run's answers. ``model`` is :func:`model_fields` (or, before the
    model is loaded, the part of it already known)."""
    return {
        "dataset": dataset,
        "family": dataset_spec(dataset).family,
        "sources": _sources(samples),
        **model,
        "method": method.name,
        "method_config": method.config(),
        "prompt_style": prompt_style,
        "max_new_tokens": max_new_tokens,
        "batch_size": batch_size,
        # A shard is only meaningful for one selection, so its size is part of its identity.
        "shard": None if shard is None else {"index": shard[0], "count": shard[1], "of_samples": len(samples)},
        # Recorded, not part of the identity (a resume may use another count): CPU kernels split their sums by
        # thread, so the count can move the last bits of a logit.
        "torch_threads": torch.get_num_threads(),
    }


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
        uncompressed_visual_tokens=out.uncompressed_visual_tokens,
        visual_tokens_per_layer=out.visual_tokens_per_layer,
        prefill_tokens=out.prefill_tokens,
        timings={stage: out.timings[stage] for stage in STAGES},
        batch_size=out.batch_size,
    )
    if out.extra:
        record["extra"] = out.extra
    return record
