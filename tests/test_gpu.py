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
