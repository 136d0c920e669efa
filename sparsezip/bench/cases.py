"""Running one case of the benchmark matrix: the method it builds, where its run lives, what it records.

``benchmarks/test_matrix.py`` is the thin pytest layer over this (evaluate, time, check); everything here is
plain functions so ``tests/`` can exercise it on the fake model without pytest-benchmark.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

from sparsezip.bench.expectations import headline
from sparsezip.bench.matrix import Case, scale_budget
from sparsezip.data.records import compact_records

if TYPE_CHECKING:
    from sparsezip.adapters.api import GenerationOutput, VisionLanguageModel
    from sparsezip.data.sample import Sample
    from sparsezip.methods.base import CompressionMethod

# Every method is evaluated in batches (answers do not depend on the batch: the adapter's tests check
# batched == per-sample, in-LLM methods included).
EVAL_BATCH_SIZE = 8
# The embedded model on CPU: its tiny matmuls are mostly per-call overhead, which larger batches amortise (8 -> 64
# took a POPE case from 14 to ~6 ms per question on the 2-core machine), and a POPE batch of 64 asks about ~11
# images, each encoded once (the adapter dedupes a batch's images).
EMBEDDED_CPU_BATCH_SIZE = 64
# Images the dynamic-K calibration looks at: enough for a stable mean K, cheap next to the evaluation.
DYNK_CALIBRATION_IMAGES = 16
# The seed's dynamic-K range (k_min 32, k_max 64) in the LLaVA-1.5 scale, mapped like the budgets.
DYNK_RANGE_LLAVA15 = (32, 64)


def batch_size_for(method: CompressionMethod, *, embedded_cpu: bool = False) -> int:
    """Evaluation batch size of ``method``: :data:`EVAL_BATCH_SIZE` for every stage (the layer-wise loop of
    in-LLM methods is batched too), :data:`EMBEDDED_CPU_BATCH_SIZE` for the embedded model on CPU."""
    return EMBEDDED_CPU_BATCH_SIZE if embedded_cpu else EVAL_BATCH_SIZE


def dataset_fingerprint(sources: dict[str, str]) -> str | None:
    """One sha256 for the annotation files a run read (``summary["config"]["sources"]``: file -> sha256),
    independent of where the files live; ``None`` when the loader recorded none."""
    if not sources:
        return None
    if len(sources) == 1:
        return next(iter(sources.values()))
    return hashlib.sha256("\n".join(sorted(sources.values())).encode()).hexdigest()


def run_fingerprint(*, package_dir: Path, model_path: Path, data_root: Path, device_type: str,
                    limit: int | None) -> str:
    """12 hex digits identifying everything that decides a case's predictions besides the case itself:
    the package's source code, the checkpoint files (name, size, mtime), the data root, the device type and
    ``--limit``. Run folders are keyed by it, so a rerun resumes only what would come out identical, and a
    code or model change starts afresh instead of resuming stale predictions."""
    digest = hashlib.sha256()
    for path in sorted(package_dir.rglob("*.py")):
        digest.update(str(path.relative_to(package_dir)).encode() + b"\0" + path.read_bytes() + b"\0")
    for path in sorted(p for p in model_path.rglob("*") if p.is_file()):
        stat = path.stat()
        digest.update(f"{path.relative_to(model_path)}|{stat.st_size}|{stat.st_mtime_ns}\n".encode())
    digest.update(f"{data_root.resolve()}|{device_type}|{limit}".encode())
    return digest.hexdigest()[:12]


def case_dir(run_root: Path, case: Case) -> Path:
    """``<run_root>/<model>/<dataset>/<row>-k<budget>``: one folder per case, so xdist workers never share."""
    leaf = case.row.name if case.budget is None else f"{case.row.name}-k{case.budget}"
    return run_root / case.model / case.dataset / leaf


def build_method(case: Case, model: VisionLanguageModel, samples: Sequence[Sample]) -> tuple[
        CompressionMethod, dict | None]:
    """The case's method, and for a dynamic-K row the calibration (a ``DynamicKCalibration`` as a dict).

    A dynamic-K row turns dynamic K on with ``k_min/k_max`` = the seed's 32/64 mapped to the model's patch
    count, and ``dynk.c`` / ``dynk.scale`` calibrated on the first :data:`DYNK_CALIBRATION_IMAGES` samples so
    that the mean K equals the number of dominant tokens the fixed-K method would keep at this budget.
    """
    from sparsezip.eval.calibration import calibrate_on_samples
    from sparsezip.methods import get_method

    kwargs = case.method_kwargs()
    if not case.row.calibrate_dynamic_k:
        return get_method(case.row.method, **kwargs), None
    k_min, k_max = (scale_budget(b, model.nominal_visual_tokens) for b in DYNK_RANGE_LLAVA15)
    kwargs.update(k_min=k_min, k_max=k_max)
    uncalibrated = get_method(case.row.method, **kwargs)
    calibration = calibrate_on_samples(uncalibrated, model, samples[:DYNK_CALIBRATION_IMAGES], case.family)
    kwargs["dynk"] = {**dict(kwargs.get("dynk") or {}), **calibration.as_config()}  # the preset's eps is kept
    method = get_method(case.row.method, **kwargs)
    return method, dataclasses.asdict(calibration)


def unreachable_reason(method: CompressionMethod, model: VisionLanguageModel) -> str | None:
    """Why ``method`` cannot run on ``model`` as configured, or ``None``: an in-LLM method whose schedule does not
    fit the model (e.g. SparseVLM's three pruning layers on a 2-layer LM). A layer-averaged budget out of reach is
    not such a case: the method then runs its nominal setting with a warning (``sparsezip.methods.llm_budget``).
    The benchmark skips such cases with this reason instead of failing them; a model without
    ``config.text_config`` is not checked."""
    from sparsezip.methods.base import LayerPruner

    text_config = getattr(getattr(model, "config", None), "text_config", None)
    if not isinstance(method, LayerPruner) or text_config is None:
        return None
    try:
        method.pruning_layers(model.nominal_visual_tokens, text_config.num_hidden_layers)
    except ValueError as err:
        return str(err)
    return None


def extra_info(case: Case, method: CompressionMethod, summary: dict, timed: GenerationOutput, *,
               num_patches: int, calibration: dict | None = None,
               k_values: Sequence[int] | None = None, records: Sequence[dict] | None = None) -> dict:
    """What a case records in ``benchmark.extra_info`` (so a saved run holds quality and cost together).

    Args:
        summary: the runner's ``summary.json`` content.
        timed: the output of the timed generate call (one fixed sample, batch 1).
        calibration / k_values: dynamic-K rows: the calibration and K per evaluated sample.
        records: the run's predictions records (dataset order); their scoring fields are kept column-wise
            (``records``), so a saved run supports paired statistics (``sparsezip report``, ``compare``).
    """
    tokens = summary["tokens"]
    visual = tokens["visual"]
    stats: dict = {
        "case": case.id,
        "dataset": case.dataset,
        "family": case.family,
        "model": case.model,
        "row": case.row.name,
        "method": method.name,
        "stage": method.stage,
        "budget": case.budget,
        "llava_budget": case.llava_budget,
        "n": summary["n"],
        "headline": vars(headline(case.family, summary["metrics"])),
        "metrics": summary["metrics"],
        "visual_tokens": {
            **visual,
            # For in-LLM methods `mean` is the layer-averaged equivalent; the LLM's input holds all patches.
            "llm_input": num_patches if method.stage == "llm" else visual["mean"],
            "per_layer": tokens["visual_per_layer_mean"],
            # in-LLM methods: the paper's "N tokens" of the setting that ran (`mean` is its layer average)
            "nominal": tokens.get("visual_nominal_mean"),
        },
        "stage_ms": {stage: (s or {}).get("mean") for stage, s in summary["latency_ms"].items()},
        "new_tokens_mean": tokens["new_tokens_mean"],
        "max_new_tokens": tokens["max_new_tokens"],
        "timed_sample": {
            "new_tokens": timed.new_tokens, "visual_tokens": timed.visual_tokens,
            "prefill_tokens": timed.prefill_tokens, "stage_ms": timed.timings,
        },
        "peak_memory_bytes": summary["memory"]["peak_bytes"],
        "peak_memory_kind": summary["memory"]["peak_kind"],
        "kv_cache_saved_bytes": summary["memory"]["kv_cache_saved_bytes_per_sample"],
        "method_config": method.config(),
        "dataset_sha256": dataset_fingerprint(summary["config"].get("sources") or {}),
        "eval_batch_size": summary["config"]["batch_size"],
    }
    plan = in_llm_budget(method, num_patches, timed)
    if plan is not None:
        stats["in_llm_budget"] = plan
    if calibration is not None:
        stats["dynk_calibration"] = calibration
    if k_values:
        stats["k_distribution"] = k_distribution(k_values)
    if records:
        stats["records"] = compact_records(records)
    return json.loads(json.dumps(stats))  # plain JSON types only (no tensors, tuples or numpy scalars)


def in_llm_budget(method: CompressionMethod, num_patches: int, timed: GenerationOutput) -> dict | None:
    """An in-LLM method's budget plan on the case's model (``BudgetPlan.to_json()``: budget, mode asked and
    applied, nominal count, layer-averaged equivalent, per-layer list, any fallback warning), else ``None``. The
    model's depth is read off the timed output's per-layer counts."""
    from sparsezip.methods.base import LayerPruner

    per_layer = timed.visual_tokens_per_layer
    if not isinstance(method, LayerPruner) or not per_layer:
        return None
    plan = method.budget_plan(num_patches, len(per_layer))
    return None if plan is None else plan.to_json()


def k_distribution(k_values: Sequence[int]) -> dict:
    """Mean / std / min / max and a histogram ``{K: count}`` of dominant-token counts."""
    import numpy as np

    k = np.asarray(k_values, dtype=np.int64)
    if k.size == 0:
        raise ValueError("k_distribution needs at least one K value")
    values, counts = np.unique(k, return_counts=True)
    return {"mean": float(k.mean()), "std": float(k.std()), "min": int(k.min()), "max": int(k.max()),
            "histogram": {str(int(v)): int(c) for v, c in zip(values, counts, strict=True)}}
