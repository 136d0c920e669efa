"""What a compress call costs a GPU besides arithmetic, counted on CPU: ATen ops (launches) and host syncs.

Counts depend on the code path only, not on timing or on the hidden width, so a change that adds launches or
syncs fails here (timings themselves live in ``benchmarks/test_core_speed.py``). Contexts have LLaVA-1.5's
token layout (CLS + 576 patches, 16 heads, 64-d keys) at a small hidden width.
"""

from __future__ import annotations

import pytest
import torch

from sparsezip import VisionContext, get_method
from sparsezip.testing.opcount import count_ops

# (method, config) -> (most top-level ATen ops per call, host syncs per call with the finite check off).
BUDGETS: dict[tuple[str, str], tuple[int, int]] = {
    ("sparsezip", "{}"): (600, 0),  # fixed K: the output width follows from the counts
    ("sparsezip", "{'budget': 64}"): (520, 0),
    ("sparsezip", "{'dynamic_k': True, 'dynk': {'c': 40.0}}"): (620, 1),  # the widths, read once
    ("sparsezip", "{'skip_ctx_merge': True}"): (200, 0),
    ("sparsezip", "{'merging': {'agglomerative': True}}"): (2100, 0),
    ("visionzip", "{}"): (130, 0),
    ("pool", "{}"): (70, 0),
    # Reads VisionContext.sample_seeds, host data in every adapter (a CPU tensor, no device sync); it draws on
    # the host and copies the draws pinned and non-blocking (no copy at all on CPU).
    ("random", "{}"): (60, 1),
    ("tome", "{}"): (310, 0),
    ("divprune", "{}"): (330, 0),
    ("prumerge_plus", "{}"): (190, 1),  # the per-image counts in `info`, and the width with them
    ("prumerge_plus", "{'budget': 64}"): (200, 1),
    ("vispruner", "{}"): (840, 0),
    ("cdpruner", "{}"): (1440, 0),
}


def _context(batch: int, seed: int = 0) -> VisionContext:
    g = torch.Generator().manual_seed(seed)
    n = 577
    return VisionContext(
        hidden=torch.randn(batch, n, 16, generator=g), keys=torch.randn(batch, n, 64, generator=g),
        cls_attn=torch.softmax(4 * torch.randn(batch, 16, n, generator=g), dim=-1),
        text_query=torch.randn(batch, 16, generator=g), sample_seeds=torch.arange(batch) + 5,
    )


@pytest.fixture(scope="module")
def contexts() -> dict[int, VisionContext]:
    return {b: _context(b) for b in (1, 3)}


@pytest.mark.parametrize(("name", "config"), list(BUDGETS), ids=[f"{n}-{c}" for n, c in BUDGETS])
def test_ops_and_syncs_per_call_whatever_the_batch(contexts, name: str, config: str) -> None:
    max_ops, syncs = BUDGETS[(name, config)]
    method = get_method(name, **eval(config))  # the keys above are reprs of literal dicts
    counts = []
    for ctx in contexts.values():
        method(ctx)  # warm caches (k-means++ uniforms)
        counts.append(count_ops(lambda ctx=ctx: method(ctx, check_finite_inputs=False)))
    # No loop runs over images: the count barely moves with B (a view more or less).
    assert all(c.top_level_ops <= max_ops for c in counts), [(c.top_level_ops, c.ops.most_common(8)) for c in counts]
    assert [c.host_syncs for c in counts] == [syncs] * len(counts), [dict(c.syncs) for c in counts]


def test_the_finite_check_costs_one_sync(contexts) -> None:
    method = get_method("visionzip")
    ctx = contexts[3]
    plain = count_ops(lambda: method(ctx, check_finite_inputs=False))
    checked = count_ops(lambda: method(ctx))
    assert checked.host_syncs - plain.host_syncs == 1


def test_the_counter_sees_host_reads_and_data_dependent_shapes() -> None:
    x = torch.arange(6.0)

    def reads() -> None:
        x.tolist()
        int(x[2])
        bool(x.sum() > 0)
        x[x > 2]  # boolean mask: nonzero
        torch.tensor([1.0, 2.0])
        x.to("cpu")

    counts = count_ops(reads)
    assert counts.syncs == {"tolist": 1, "__int__": 1, "__bool__": 1, "aten::nonzero": 1, "tensor": 1,
                            "to(device)": 1}
    quiet = count_ops(lambda: torch.full((3,), 2.0) * x[:3] + torch.arange(3))
    assert quiet.host_syncs == 0 and quiet.top_level_ops >= 3
