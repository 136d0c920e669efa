"""What ``summary.json`` holds: metrics, latency per stage, token and memory statistics, the environment."""

from __future__ import annotations

import importlib.metadata
import platform
from collections.abc import Mapping, Sequence

import numpy as np
import torch

from sparsezip.adapters.api import STAGES, VisionLanguageModel
from sparsezip.data.records import score_records
from sparsezip.memory import kv_cache_bytes, kv_width


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
    uncompressed = np.array([_uncompressed(r, config) for r in records], dtype=np.float64)
    saved = float((uncompressed - visual).mean()) if len(records) else None
    per_layer = [r["visual_tokens_per_layer"] for r in records if r.get("visual_tokens_per_layer")]
    # in-LLM methods: the paper's nominal count beside the layer-averaged `visual` (sparsezip.methods.llm_budget)
    nominal = [r["extra"]["nominal_visual_tokens"] for r in records
               if (r.get("extra") or {}).get("nominal_visual_tokens") is not None]
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
            "visual_nominal_mean": _mean(nominal),
            "uncompressed_mean": float(uncompressed.mean()) if len(records) else None,
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



def _uncompressed(record: Mapping, config: Mapping) -> float:
    """A record's visual tokens before compression: its own count, else (older records, models that do not report
    it) the run's nominal ``num_patches``."""
    own = record.get("uncompressed_visual_tokens")
    return float(config["num_patches"] if own is None else own)

def _stats(values: Sequence[float]) -> dict | None:
    if not values:
        return None
    arr = np.asarray(values, dtype=np.float64)
    return {"mean": float(arr.mean()), "median": float(np.median(arr)), "p90": float(np.percentile(arr, 90))}


def _mean(values: Sequence[float]) -> float | None:
    return float(np.mean(values)) if values else None


def environment(model: VisionLanguageModel) -> dict:
    """Versions and hardware: python, torch, transformers (read from package metadata, not imported),
    device and its name, and the image processor's backend."""
    device = torch.device(model.device)
    if device.type == "cuda":
        device_name = torch.cuda.get_device_name(device)
    else:
        device_name = platform.processor() or platform.machine() or "cpu"
    return {
        "python": platform.python_version(),
        **library_versions(),
        "sparsezip": importlib.metadata.version("sparsezip") if _installed("sparsezip") else None,
        "platform": platform.platform(),
        "device": str(device),
        "device_name": device_name,
        "image_processor_backend": image_processor_backend(model),
    }


def library_versions() -> dict:
    """The torch and transformers versions (transformers read from package metadata, not imported): part of a
    run's identity, since either can change the answers."""
    try:
        transformers_version = importlib.metadata.version("transformers")
    except importlib.metadata.PackageNotFoundError:
        transformers_version = None
    return {"torch": torch.__version__, "transformers": transformers_version}


def image_processor_backend(model: VisionLanguageModel) -> str | None:
    """The backend of the model's image processor (``"pil"`` or ``"torchvision"``), if it has one."""
    processor = getattr(getattr(model, "processor", None), "image_processor", None)
    backend = getattr(processor, "backend", None)
    return backend if isinstance(backend, str) else None


def _installed(package: str) -> bool:
    try:
        importlib.metadata.version(package)
    except importlib.metadata.PackageNotFoundError:
        return False
    return True


def kv_bytes_per_token(model: VisionLanguageModel) -> float | None:
    """KV-cache bytes per token from an HF-style ``model.config.text_config`` and ``model.dtype``, when the
    model exposes them (the protocol does not require it); ``None`` otherwise. GQA models (Mistral, Qwen2.5) cache
    ``kv_heads * head_dim`` per layer, not ``hidden_size`` (:func:`sparsezip.memory.kv_width`)."""
    text_config = getattr(getattr(model, "config", None), "text_config", None)
    dtype = getattr(model, "dtype", None)
    layers = getattr(text_config, "num_hidden_layers", None)
    hidden = getattr(text_config, "hidden_size", None)
    if not (isinstance(layers, int) and isinstance(hidden, int) and isinstance(dtype, torch.dtype)):
        return None
    try:
        width = kv_width(text_config)
    except ValueError:  # a config without attention-head fields: nothing analytic to say
        return None
    return kv_cache_bytes(1, layers, width, dtype.itemsize)
