"""Regression pin: today's outputs of the vision methods on fixed inputs, so a speed-up cannot change them.

NOT an upstream golden. ``fixtures/golden/regression-pin/`` holds what *this project's own code* returned at
commit c72ac57 (before the launch-light rewrite of issue 14), on fixed random inputs stored next to them; see
that folder's ``SOURCE.md``. A change here means a method's results changed: the dominant (kept) set and the
cluster assignment must stay exactly equal, tokens within 1e-5 (only the zero padding may widen).

Regenerate (only for a deliberate change of results, and say why in the commit):
``python tests/test_regression_pin.py --write``.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file

from sparsezip import VisionContext, get_method

PIN = Path(__file__).resolve().parents[1] / "fixtures" / "golden" / "regression-pin"
FIELDS = ("tokens", "lengths", "kept_index", "assignment", "k")

# (input set, case name, method, config). Dynamic K uses a `scale` and `c` that spread K over [k_min, k_max].
CASES: list[tuple[str, str, str, dict]] = [
    ("clip", "sparsezip-default", "sparsezip", {}),
    ("clip", "sparsezip-k64", "sparsezip", {"budget": 64}),
    ("clip", "sparsezip-k87", "sparsezip", {"budget": 87}),
    ("clip", "sparsezip-dynamic", "sparsezip", {"dynamic_k": True, "dynk": {"c": -154.0, "scale": 200.0}}),
    ("clip", "sparsezip-dynamic-k64", "sparsezip", {"budget": 64, "dynamic_k": True, "dynk": {"c": -164.0, "scale": 200.0},
                                                    "k_min": 24, "k_max": 56}),
    ("clip", "sparsezip-agglomerative", "sparsezip", {"merging": {"agglomerative": True}}),
    ("clip", "sparsezip-agglomerative-k64", "sparsezip", {"budget": 64, "merging": {"agglomerative": True}}),
    ("clip", "sparsezip-dynamic-agglomerative", "sparsezip",
     {"dynamic_k": True, "dynk": {"c": -154.0, "scale": 200.0}, "merging": {"agglomerative": True}}),
    ("clip", "sparsezip-skip_ctx_merge", "sparsezip", {"skip_ctx_merge": True}),
    ("clip", "sparsezip-iters3", "sparsezip", {"merging": {"kmeans_iters": 3}}),
    ("clip", "visionzip-default", "visionzip", {}),
    ("clip", "visionzip-k128", "visionzip", {"budget": 128}),
    ("clip", "pool-default", "pool", {}),
    ("clip", "pool-k128", "pool", {"budget": 128}),
    ("clip", "random-default", "random", {}),
    ("clip", "random-k16-seed3", "random", {"budget": 16, "seed": 3}),
    ("clip", "tome-k64", "tome", {"budget": 64}),
    ("clip", "divprune-k64", "divprune", {"budget": 64}),
    ("clip", "prumerge_plus-default", "prumerge_plus", {}),
    ("clip", "prumerge_plus-k64", "prumerge_plus", {"budget": 64}),
    ("clip", "vispruner-k64", "vispruner", {"budget": 64}),
    ("clip", "cdpruner-k64", "cdpruner", {"budget": 64}),
    ("noprefix", "sparsezip-k64", "sparsezip", {"budget": 64}),
    ("noprefix", "sparsezip-dynamic", "sparsezip", {"budget": 48, "dynamic_k": True, "dynk": {"c": -75.0, "scale": 100.0},
                                                     "k_min": 16, "k_max": 40}),
    ("noprefix", "visionzip-k64", "visionzip", {"budget": 64}),
    ("noprefix", "random-k32", "random", {"budget": 32}),
    ("duplicates", "sparsezip-default", "sparsezip", {}),
    ("duplicates", "sparsezip-agglomerative", "sparsezip", {"merging": {"agglomerative": True}}),
    ("duplicates", "sparsezip-dynamic", "sparsezip", {"dynamic_k": True, "dynk": {"c": -154.0, "scale": 200.0}}),
    ("duplicates", "visionzip-default", "visionzip", {}),
]


def make_inputs(name: str) -> dict[str, torch.Tensor]:
    """The fixed inputs of one input set (only used to write the pin; the test reads the stored tensors).

    ``clip``: 3 images at LLaVA-1.5's token layout (CLS + 24 x 24 patches, 16 heads, 64-d keys; hidden width 32
    to keep the files small), attention of three sharpnesses so dynamic K differs per image, text query and
    per-image seeds. ``noprefix``: 2 images of 12 x 12 tokens without CLS (Qwen-style). ``duplicates``: 2 images
    whose patches take only 5 distinct values (empty contextual clusters, k-means++'s uniform fallback).
    """
    g = torch.Generator().manual_seed({"clip": 14, "noprefix": 15, "duplicates": 16}[name])
    if name == "clip":
        b, n, c, dk, h, prefix = 3, 577, 32, 64, 16, 1
    else:
        b, n, c, dk, h, prefix = 2, 144 if name == "noprefix" else 577, 24, 16, 4, 0 if name == "noprefix" else 1
    hidden = torch.randn(b, n, c, generator=g)
    keys = torch.randn(b, n, dk, generator=g)
    if name == "duplicates":
        pick = torch.randint(0, 5, (b, n), generator=g)
        hidden, keys = hidden[:, :5].gather(1, pick[:, :, None].expand(-1, -1, c)), \
            keys[:, :5].gather(1, pick[:, :, None].expand(-1, -1, dk))
    sharpness = torch.tensor([2.0, 4.0, 8.0][:b])[:, None, None]
    cls_attn = torch.softmax(sharpness * torch.randn(b, h, n, generator=g), dim=-1)
    return {
        "hidden": hidden,
        "keys": keys,
        "cls_attn": cls_attn,
        "text_query": torch.randn(b, c, generator=g),
        "sample_seeds": torch.arange(b, dtype=torch.long) * 7919 + 11,
        "prefix": torch.tensor(prefix),
    }


def context(inputs: dict[str, torch.Tensor]) -> VisionContext:
    prefix = int(inputs["prefix"])
    return VisionContext(
        hidden=inputs["hidden"], keys=inputs["keys"], cls_attn=inputs["cls_attn"], text_query=inputs["text_query"],
        sample_seeds=inputs["sample_seeds"], prefix=prefix,
        attention_source="cls" if prefix else "mean_received",
    )


def write_pin() -> None:
    PIN.mkdir(parents=True, exist_ok=True)
    for name in sorted({c[0] for c in CASES}):
        inputs = make_inputs(name)
        tensors = {f"input/{k}": v.contiguous() for k, v in inputs.items()}
        ctx = context(inputs)
        for input_set, case, method, config in CASES:
            if input_set != name:
                continue
            result = get_method(method, **config)(ctx)
            tensors.update({f"{case}/{f}": getattr(result, f).contiguous() for f in FIELDS})
        save_file(tensors, str(PIN / f"{name}.safetensors"),
                  metadata={"cases": json.dumps([[c[1], c[2], c[3]] for c in CASES if c[0] == name])})


@pytest.fixture(scope="module")
def stored() -> dict[str, dict[str, torch.Tensor]]:
    return {name: load_file(str(PIN / f"{name}.safetensors")) for name in sorted({c[0] for c in CASES})}


@pytest.mark.parametrize(("input_set", "case", "method", "config"), CASES, ids=[f"{c[0]}-{c[1]}" for c in CASES])
def test_outputs_match_the_pin(stored, input_set: str, case: str, method: str, config: dict) -> None:
    pin = stored[input_set]
    inputs = {k.removeprefix("input/"): v for k, v in pin.items() if k.startswith("input/")}
    result = get_method(method, **config)(context(inputs))
    for field in ("lengths", "k", "kept_index", "assignment"):  # the dominant set and every cluster, exactly
        assert torch.equal(getattr(result, field), pin[f"{case}/{field}"]), field
    # The padded width may have grown (fixed-K SparseZip sizes it from the counts, to skip a host sync, so the
    # `duplicates` rows keep zero slots where clusters ended empty); the tokens themselves may not change.
    pinned = pin[f"{case}/tokens"]
    width = pinned.shape[1]
    assert result.tokens.shape[1] >= width if input_set == "duplicates" else result.tokens.shape[1] == width
    torch.testing.assert_close(result.tokens[:, :width], pinned, rtol=0, atol=1e-5)
    assert not result.tokens[:, width:].any()


def test_dynamic_cases_spread_k() -> None:
    """The pin's dynamic-K cases pick different K per image (else they would pin nothing dynamic)."""
    pin = load_file(str(PIN / "clip.safetensors"))
    assert len(set(pin["sparsezip-dynamic/k"].tolist())) == 3
    assert len(set(pin["sparsezip-dynamic-k64/k"].tolist())) >= 2


if __name__ == "__main__":
    if sys.argv[1:] != ["--write"]:
        raise SystemExit("usage: python tests/test_regression_pin.py --write")
    write_pin()
