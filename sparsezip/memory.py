"""Memory accounting: the process's peak memory and the analytic KV-cache bytes a compression saves."""

from __future__ import annotations

import resource
import sys

import torch


def kv_cache_bytes(tokens: float, layers: int, hidden: int, bytes_per_element: int) -> float:
    """KV-cache bytes held for ``tokens`` tokens: ``tokens * 2 (K and V) * layers * hidden * bytes``.

    With ``tokens`` = tokens saved this is the analytic saving evaluation.md asks for: LLaVA-1.5-7B (32 layers,
    hidden 4096) in fp16 saving 489 tokens gives 244.5 MiB. (Exact for multi-head attention; a GQA model
    would use ``kv_heads * head_dim`` as ``hidden``.)
    """
    for name, value in (("layers", layers), ("hidden", hidden), ("bytes_per_element", bytes_per_element)):
        if value <= 0:
            raise ValueError(f"kv_cache_bytes: {name} must be positive, got {value}")
    return float(tokens) * 2 * layers * hidden * bytes_per_element


def peak_memory(device: torch.device | str) -> tuple[int, str]:
    """``(bytes, what was measured)``: ``torch.cuda.max_memory_allocated`` on CUDA, else the process's
    resident-set high-water mark (``getrusage``; kilobytes on Linux, bytes on macOS)."""
    device = torch.device(device)
    if device.type == "cuda":
        return int(torch.cuda.max_memory_allocated(device)), "cuda_max_memory_allocated"
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return int(peak if sys.platform == "darwin" else peak * 1024), "cpu_rss_high_water"
