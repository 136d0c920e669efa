"""Memory accounting: the process's peak memory and the analytic KV-cache bytes a compression saves."""

from __future__ import annotations

import resource
import sys

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


def peak_memory(device: torch.device | str) -> tuple[int, str]:
    """``(bytes, what was measured)``: ``torch.cuda.max_memory_allocated`` on CUDA, else the process's
    resident-set high-water mark (``getrusage``; kilobytes on Linux, bytes on macOS)."""
    device = torch.device(device)
    if device.type == "cuda":
        return int(torch.cuda.max_memory_allocated(device)), "cuda_max_memory_allocated"
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return int(peak if sys.platform == "darwin" else peak * 1024), "cpu_rss_high_water"
