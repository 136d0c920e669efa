"""Memory accounting: the process's peak memory and the analytic KV-cache bytes a compression saves."""

from __future__ import annotations

import re
import resource
import sys
from pathlib import Path

import torch


def kv_cache_bytes(tokens: float, layers: int, kv_width: int, bytes_per_element: int) -> float:
    """KV-cache bytes held for ``tokens`` tokens: ``tokens * 2 (K and V) * layers * kv_width * bytes``, with
    ``kv_width = kv_heads * head_dim`` (:func:`kv_width`), which is the hidden size only for multi-head attention.

    With ``tokens`` = tokens saved this is the analytic saving evaluation.md asks for: LLaVA-1.5-7B (32 layers,
    32 KV heads x 128 = 4096) in fp16 saving 489 tokens gives 244.5 MiB; a GQA model caches less per token
    (Qwen2.5-VL-7B: 28 layers, 4 KV heads x 128 = 512, 56 KiB per token in fp16).
    """
    for name, value in (("layers", layers), ("kv_width", kv_width), ("bytes_per_element", bytes_per_element)):
        if value <= 0:
            raise ValueError(f"kv_cache_bytes: {name} must be positive, got {value}")
    return float(tokens) * 2 * layers * kv_width * bytes_per_element


def kv_width(text_config: object) -> int:
    """``kv_heads * head_dim`` of a Hugging Face decoder config (Llama, Mistral, Qwen2 and alike):
    ``num_key_value_heads`` (default ``num_attention_heads``) times ``head_dim`` (default ``hidden_size //
    num_attention_heads``). ``ValueError`` naming the field when the config lacks what is needed."""
    hidden = getattr(text_config, "hidden_size", None)
    heads = getattr(text_config, "num_attention_heads", None)
    if not (isinstance(hidden, int) and isinstance(heads, int) and hidden > 0 and heads > 0):
        raise ValueError(f"kv_width: the config needs positive hidden_size and num_attention_heads, got "
                         f"hidden_size={hidden!r}, num_attention_heads={heads!r}")
    kv_heads = getattr(text_config, "num_key_value_heads", None) or heads
    head_dim = getattr(text_config, "head_dim", None) or hidden // heads
    if not (isinstance(kv_heads, int) and isinstance(head_dim, int) and kv_heads > 0 and head_dim > 0):
        raise ValueError(f"kv_width: bad num_key_value_heads={kv_heads!r} or head_dim={head_dim!r}")
    return kv_heads * head_dim


_STATUS = Path("/proc/self/status")
_CLEAR_REFS = Path("/proc/self/clear_refs")


def reset_peak_memory(device: torch.device | str) -> bool:
    """Start a new peak for :func:`peak_memory`, so a run (a benchmark case) reports its own, not the process's.

    CUDA: ``torch.cuda.reset_peak_memory_stats``. CPU on Linux: writing ``5`` to ``/proc/self/clear_refs``
    resets the resident-set high-water mark (``VmHWM``). Returns whether a reset happened (not on other
    systems, where the CPU peak stays the process's).
    """
    device = torch.device(device)
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
        return True
    try:
        _CLEAR_REFS.write_text("5")
    except OSError:
        return False
    return _vm_hwm() is not None


def _vm_hwm() -> int | None:
    """``VmHWM`` of ``/proc/self/status`` in bytes, or ``None`` where there is none."""
    try:
        match = re.search(r"^VmHWM:\s+(\d+)\s+kB", _STATUS.read_text(), re.MULTILINE)
    except OSError:
        return None
    return int(match.group(1)) * 1024 if match else None


def peak_memory(device: torch.device | str) -> tuple[int, str]:
    """``(bytes, what was measured)`` since the last :func:`reset_peak_memory` (else since the process began):
    ``torch.cuda.max_memory_allocated`` on CUDA, else the process's resident-set high-water mark (``VmHWM``
    on Linux, ``getrusage`` elsewhere: kilobytes on Linux, bytes on macOS)."""
    device = torch.device(device)
    if device.type == "cuda":
        return int(torch.cuda.max_memory_allocated(device)), "cuda_max_memory_allocated"
    hwm = _vm_hwm()
    if hwm is not None:
        return hwm, "cpu_rss_high_water"
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return int(peak if sys.platform == "darwin" else peak * 1024), "cpu_rss_high_water"
