"""CUDA agrees with CPU (run with ``--gpu``; skipped otherwise). The contract tests also run on CUDA then."""

import pytest
import torch

from sparsezip import VisionContext, get_method, list_methods
from sparsezip.methods import method_class
from sparsezip.selection import topk_indices
from sparsezip.testing.contract import check_method
from sparsezip.testing.strategies import DTYPES

pytestmark = pytest.mark.gpu

VISION_METHODS = [n for n in list_methods() if method_class(n).stage == "vision"]


def _ctx(device: torch.device | str, dtype: torch.dtype = torch.float32) -> VisionContext:
    g = torch.Generator().manual_seed(0)
    n = 145  # 12 x 12 patches
    tensors = (torch.randn(2, n, 16, generator=g), torch.randn(2, n, 8, generator=g),
               torch.softmax(3 * torch.randn(2, 4, n, generator=g), dim=-1), torch.randn(2, 16, generator=g))
    hidden, keys, attn, text = (t.to(device=device, dtype=dtype) for t in tensors)
    return VisionContext(hidden=hidden, keys=keys, cls_attn=attn, text_query=text)


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("name", VISION_METHODS)
def test_cuda_matches_cpu(name: str, dtype: torch.dtype, device: torch.device) -> None:
    config = {} if name == "none" else {"budget": 32}
    method = get_method(name, **config)
    on_cpu = method(_ctx("cpu", dtype))
    on_gpu = check_method(method, _ctx(device, dtype))
    assert torch.equal(on_gpu.lengths.cpu(), on_cpu.lengths)
    assert torch.equal(on_gpu.kept_index.cpu(), on_cpu.kept_index)
    assert torch.equal(on_gpu.assignment.cpu(), on_cpu.assignment)
    tol = 1e-4 if dtype == torch.float32 else 2e-2
    assert torch.allclose(on_gpu.tokens.cpu().float(), on_cpu.tokens.float(), atol=tol, rtol=tol)


def test_topk_ties_break_by_lower_index_on_cuda(device: torch.device) -> None:
    scores = torch.zeros(3, 1000, device=device)
    scores[:, 500:] = 1.0
    assert topk_indices(scores, 600).cpu().tolist() == [list(range(100)) + list(range(500, 1000))] * 3


# ------------------------------------------------------------------------------------ launches, syncs, timing
def _llava_ctx(device: torch.device, batch: int = 2) -> VisionContext:
    g = torch.Generator().manual_seed(1)
    n = 577
    return VisionContext(
        hidden=torch.randn(batch, n, 64, generator=g).to(device), keys=torch.randn(batch, n, 64, generator=g).to(device),
        cls_attn=torch.softmax(4 * torch.randn(batch, 16, n, generator=g), dim=-1).to(device),
        text_query=torch.randn(batch, 64, generator=g).to(device), sample_seeds=torch.arange(batch) + 3,
    )


# Device syncs per compress call on CUDA (finite check off): the width read of methods whose output length
# depends on the data, nothing else (random's seeds are host data, its draws a pinned non-blocking copy).
CUDA_SYNCS = {"sparsezip": 1, "prumerge_plus": 1}


@pytest.mark.parametrize("name", [n for n in VISION_METHODS if n != "none"])
def test_compress_syncs_on_cuda(name: str, device: torch.device) -> None:
    import warnings

    method = get_method(name, budget=64)
    ctx = _llava_ctx(device)
    method(ctx)  # first call: caches (k-means++ uniforms) reach the device
    torch.cuda.synchronize(device)
    torch.cuda.set_sync_debug_mode("warn")
    try:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            method(ctx, check_finite_inputs=False)
    finally:
        torch.cuda.set_sync_debug_mode("default")
    syncs = [w for w in caught if "synchroniz" in str(w.message).lower()]
    assert len(syncs) == CUDA_SYNCS.get(name, 0), [str(w.message) for w in syncs]


def test_stage_times_are_cuda_event_times(device: torch.device) -> None:
    from sparsezip.profiling import FirstCallClock, StageTimer

    timer = StageTimer(device)
    assert timer.uses_cuda_events
    x = torch.randn(2048, 2048, device=device)
    start = timer.now()
    with timer.stage("matmul_ms"):
        for _ in range(5):
            x = x @ x / 2048
    clock = FirstCallClock(device)
    clock(torch.zeros(1, 1, dtype=torch.long), x)
    assert start.event is not None and clock.first_call.event is not None
    assert timer.ms["matmul_ms"] > 0 and (clock.first_call - start) * 1e3 >= timer.ms["matmul_ms"] * 0.99


def test_peak_memory_is_per_run(device: torch.device) -> None:
    from sparsezip.memory import peak_memory, reset_peak_memory

    big = torch.empty(256 * 2**20, dtype=torch.uint8, device=device)
    del big
    assert reset_peak_memory(device)
    small = torch.empty(2**20, dtype=torch.uint8, device=device)
    peak, kind = peak_memory(device)
    assert kind == "cuda_max_memory_allocated" and peak < 128 * 2**20
    del small


def test_adapter_generates_on_cuda_with_event_timings(device: torch.device) -> None:
    from sparsezip.adapters.llava import LlavaVLM
    from sparsezip.commands.smoke import demo_image
    from sparsezip.data.prompts import llava_v1_prompt
    from sparsezip.embedded.models import TinyLlavaSpec, build_tiny_llava

    model, processor = build_tiny_llava(TinyLlavaSpec(text_layers=2), seed=0)
    vlm = LlavaVLM(model.to(device), processor, name="tiny-random")
    prompts = [llava_v1_prompt("Is there a red circle?")] * 2
    on_cuda = vlm.generate([demo_image()] * 2, prompts, method=get_method("sparsezip", budget=32),
                           questions=["Is there a red circle?"] * 2, max_new_tokens=3)
    cpu = LlavaVLM(model.to("cpu"), processor, name="tiny-random")
    on_cpu = cpu.generate([demo_image()] * 2, prompts, method=get_method("sparsezip", budget=32),
                          questions=["Is there a red circle?"] * 2, max_new_tokens=3)
    for gpu_out, cpu_out in zip(on_cuda, on_cpu, strict=True):
        assert gpu_out.visual_tokens == cpu_out.visual_tokens and gpu_out.new_tokens >= 1
        assert all(gpu_out.timings[k] >= 0 for k in ("vision_ms", "compress_ms", "prefill_ms", "decode_ms"))
        assert gpu_out.timings["total_ms"] >= gpu_out.timings["prefill_ms"]
