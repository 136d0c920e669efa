"""Micro-benchmarks of the compression core at LLaVA-1.5 shapes, against one CLIP-L encoder layer.

Each method's compress call is timed at B = 1 and 8 (N = 577, C = 1024, Dk = 64, 16 heads) next to one
randomly initialised transformers ``CLIPEncoderLayer`` (CLIP ViT-L/14-336 config) forward at the same shape;
``extra_info`` records ``clip_layer_ms`` and ``ratio_to_clip_layer`` (method median / layer median). The
target (reported, not asserted): SparseZip's full compress costs no more than one CLIP-L layer at batch 1.

    pytest benchmarks/test_core_speed.py --benchmark-enable -q            # add --gpu for CUDA

On a shared or loaded CPU, run with ``OMP_NUM_THREADS=1``: oversubscribed intra-op threads made every row
here (the CLIP layer too) 3-100x slower and erratic on the 2-core development machine.

Every registered vision-stage method gets a row automatically (default config and ``budget=64``).
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable

import pytest
import torch

from sparsezip import VisionContext, get_method, list_methods
from sparsezip.methods import method_class

N, C, DK, HEADS = 577, 1024, 64, 16
BATCHES = (1, 8)
ROUNDS = 5

# (row id, method name, config): every registered vision method at its default and at 64 tokens, plus the
# SparseZip variants whose cost differs (agglomerative reduction, VisionZip-style merge, dynamic K).
CASES: list[tuple[str, str, dict]] = [
    case
    for name in list_methods()
    if method_class(name).stage == "vision"
    for case in ([(name, name, {})] + ([(f"{name}-k64", name, {"budget": 64})] if name != "none" else []))
] + [
    ("sparsezip-agglomerative", "sparsezip", {"merging": {"agglomerative": True}}),
    ("sparsezip-skip_ctx_merge", "sparsezip", {"skip_ctx_merge": True}),
    ("sparsezip-dynamic_k", "sparsezip", {"dynamic_k": True, "dynk": {"c": 40.0}}),
]

_LAYER_MS: dict[tuple[str, int], float] = {}


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _median_ms(fn: Callable[[], object], device: torch.device, rounds: int = 3) -> float:
    fn()  # warm-up
    times = []
    for _ in range(rounds):
        _sync(device)
        start = time.perf_counter()
        fn()
        _sync(device)
        times.append((time.perf_counter() - start) * 1000)
    return statistics.median(times)


def _context(batch: int, device: torch.device) -> VisionContext:
    g = torch.Generator().manual_seed(batch)
    return VisionContext(
        hidden=torch.randn(batch, N, C, generator=g).to(device),
        keys=torch.randn(batch, N, DK, generator=g).to(device),
        cls_attn=torch.softmax(4 * torch.randn(batch, HEADS, N, generator=g), dim=-1).to(device),
        text_query=torch.randn(batch, C, generator=g).to(device),
    )


def _clip_layer(device: torch.device) -> Callable[[torch.Tensor], torch.Tensor]:
    from transformers import CLIPVisionConfig
    from transformers.models.clip.modeling_clip import CLIPEncoderLayer

    config = CLIPVisionConfig(hidden_size=1024, num_attention_heads=16, intermediate_size=4096,
                              image_size=336, patch_size=14, attn_implementation="sdpa")
    torch.manual_seed(0)  # initialises the layer's weights only; timing does not depend on their values
    layer = CLIPEncoderLayer(config).to(device).eval()

    def forward(hidden: torch.Tensor) -> torch.Tensor:
        with torch.inference_mode():
            return layer(hidden, attention_mask=None)

    return forward


@pytest.fixture(scope="module")
def clip_layer(device: torch.device) -> Callable[[torch.Tensor], torch.Tensor]:
    return _clip_layer(device)


def _layer_ms(clip_layer: Callable, ctx: VisionContext, device: torch.device) -> float:
    """The CLIP-L layer's median forward time at ctx's shape (measured once per batch size and device)."""
    key = (str(device), ctx.batch_size)
    if key not in _LAYER_MS:
        _LAYER_MS[key] = _median_ms(lambda: clip_layer(ctx.hidden), device)
    return _LAYER_MS[key]


def _stats_ms(benchmark) -> float | None:
    stats = getattr(benchmark, "stats", None)
    return None if stats is None else stats.stats.median * 1000


@pytest.mark.parametrize("batch", BATCHES)
def test_clip_layer_reference(benchmark, clip_layer, device: torch.device, batch: int) -> None:
    ctx = _context(batch, device)
    benchmark.group = f"core-b{batch}"
    benchmark.extra_info.update(batch=batch, tokens=N, hidden=C)

    def run() -> torch.Tensor:
        out = clip_layer(ctx.hidden)
        _sync(device)
        return out

    out = benchmark.pedantic(run, rounds=3, warmup_rounds=1)
    assert out.shape == ctx.hidden.shape
    measured = _stats_ms(benchmark)
    if measured is not None:
        _LAYER_MS[(str(device), batch)] = measured
    benchmark.extra_info["clip_layer_ms"] = _layer_ms(clip_layer, ctx, device)


@pytest.mark.parametrize("batch", BATCHES)
@pytest.mark.parametrize(("row", "name", "config"), CASES, ids=[c[0] for c in CASES])
def test_compress_speed(benchmark, clip_layer, device: torch.device, batch: int, row: str, name: str,
                        config: dict) -> None:
    ctx = _context(batch, device)
    method = get_method(name, **config)
    benchmark.group = f"core-b{batch}"

    def run():
        result = method(ctx)
        _sync(device)
        return result

    result = benchmark.pedantic(run, rounds=ROUNDS, warmup_rounds=1)
    layer_ms = _layer_ms(clip_layer, ctx, device)
    method_ms = _stats_ms(benchmark)
    benchmark.extra_info.update(
        batch=batch,
        method=name,
        config=method.config(),
        mean_tokens=float(result.lengths.double().mean()),
        clip_layer_ms=layer_ms,
        ratio_to_clip_layer=None if method_ms is None else method_ms / layer_ms,
    )
    assert int(result.lengths.max()) <= N
