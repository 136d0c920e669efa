"""``random``: K patches chosen uniformly at random (seeded), kept in ascending order; the rest dropped.

The control every scoring method must beat at the same budget (methods.md section 4).
"""

from __future__ import annotations

import hashlib

import torch

from sparsezip.budget import check_budget_fits, check_budget_positive
from sparsezip.context import CompressionResult, VisionContext
from sparsezip.layout import assemble, with_prefix
from sparsezip.methods.base import CompressionMethod, register_method
from sparsezip.methods.rows import BenchmarkRows
from sparsezip.selection import rank_mask

DEFAULT_BUDGET = 64


@register_method
class RandomSelection(CompressionMethod):
    """Keep ``budget`` (default 64) uniformly random patches per image; the prefix (CLS) and the other patches
    are dropped.

    Image b draws its patches from a fresh CPU ``torch.Generator`` seeded with ``(seed, sample_seeds[b])``
    (``VisionContext.sample_seeds``, host data like the pixels the adapters derive them from; 0 when absent):
    the same image always gets the same patches, whatever batch it is in and on CPU or CUDA alike, and
    different images get different patches. The loop over images draws only ``B`` small random vectors on the
    host (a device-side generator would give CUDA other numbers than the CPU); they reach the device by one
    pinned, non-blocking copy, and the selection itself is batched. ``sample_seeds`` on a device costs a sync.
    """

    name = "random"
    benchmark = BenchmarkRows(budgets=(64,), order=40)  # a control: one budget is enough

    def __init__(self, budget: int | None = None, seed: int = 0) -> None:
        if budget is not None:
            check_budget_positive(self.name, budget)
        if isinstance(seed, bool) or not isinstance(seed, int):
            raise ValueError(f"random: seed must be an integer, got seed={seed!r}")
        self.budget = budget
        self.seed = seed

    def compress(self, ctx: VisionContext) -> CompressionResult:
        """hidden ``[B, N, C]`` -> tokens ``[B, K, C]``, K = budget random patches in raster order."""
        k = DEFAULT_BUDGET if self.budget is None else self.budget
        check_budget_fits(self.name, k, ctx.num_patches)
        b, m = ctx.batch_size, ctx.num_patches
        sample_seeds = [0] * b if ctx.sample_seeds is None else ctx.sample_seeds.tolist()
        keys = torch.stack([torch.rand(m, generator=_generator(self.seed, s)) for s in sample_seeds])
        device = ctx.hidden.device
        if device.type != "cpu":  # host draws, like the pixels they derive from: a pinned, asynchronous copy
            keys = keys.pin_memory().to(device, non_blocking=True)
        keep = with_prefix(rank_mask(keys, k), ctx.prefix, False)
        return assemble(ctx.hidden, keep, torch.full((b,), k, dtype=torch.long, device=ctx.hidden.device),
                        kept_per_row=k, width=k)

    def config(self) -> dict:
        return {"budget": self.budget, "seed": self.seed}


def _generator(seed: int, sample_seed: int) -> torch.Generator:
    """A CPU generator for one image, seeded by the method's seed and the image's own seed."""
    mixed = hashlib.sha256(f"{seed}:{sample_seed}".encode()).digest()
    return torch.Generator().manual_seed(int.from_bytes(mixed[:8], "little") & (2**63 - 1))
