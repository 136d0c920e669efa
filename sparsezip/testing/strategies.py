"""Hypothesis strategies shared by ``tests/`` and ``benchmarks/`` (array-api-tests style).

Tensors are built from a drawn integer seed with an explicit ``torch.Generator`` (no global RNG), so a failing
example is reproducible from hypothesis's report and shrinks towards small shapes and seed 0. Dependent
parameters (a budget that fits the drawn grid, a K that fits the drawn row length) are drawn with ``data.draw``
or inside ``st.composite``.
"""

from __future__ import annotations

import torch
from hypothesis import strategies as st

from sparsezip.context import VisionContext

DTYPES: tuple[torch.dtype, ...] = (torch.float32, torch.float16, torch.bfloat16)
# "random": Gaussian; "ties": few distinct values (many exact ties); "constant": every token identical and
# the CLS attention uniform; "zeros": all-zero hidden states and keys, uniform attention.
KINDS: tuple[str, ...] = ("random", "ties", "constant", "zeros")

seeds = st.integers(min_value=0, max_value=2**31 - 1)
dtypes = st.sampled_from(DTYPES)


def _values(shape: tuple[int, ...], kind: str, generator: torch.Generator) -> torch.Tensor:
    if kind == "random":
        return torch.randn(shape, generator=generator)
    if kind == "ties":
        return torch.randint(-2, 3, shape, generator=generator).float()
    if kind == "constant":
        return torch.full(shape, 0.75)
    return torch.zeros(shape)


@st.composite
def score_rows(draw: st.DrawFn, *, max_batch: int = 4, max_len: int = 40, dtype: torch.dtype | None = None):
    """``[B, M]`` scores (B >= 1, M >= 1) with frequent exact ties, in a drawn (or the given) float dtype."""
    b = draw(st.integers(1, max_batch))
    m = draw(st.integers(1, max_len))
    kind = draw(st.sampled_from(("random", "ties", "constant")))
    generator = torch.Generator().manual_seed(draw(seeds))
    return _values((b, m), kind, generator).to(draw(dtypes) if dtype is None else dtype)


@st.composite
def vision_contexts(
    draw: st.DrawFn,
    *,
    min_grid: int = 2,
    max_grid: int = 6,
    max_batch: int = 3,
    max_hidden: int = 12,
    max_key_dim: int = 8,
    max_heads: int = 3,
    dtype: torch.dtype | None = None,
    kinds: tuple[str, ...] = KINDS,
    with_text: bool | None = None,
    prefixes: tuple[int, ...] = (0, 1),
    with_crops: bool | None = None,
    device: torch.device | str = "cpu",
) -> VisionContext:
    """A random :class:`VisionContext` for a ``g x g`` patch grid (N = prefix + g^2 tokens).

    ``prefix`` (protected tokens in front: 1 = CLIP's CLS, 0 = a tower without CLS) is drawn from ``prefixes``.
    ``cls_attn`` is a softmax over the N keys (uniform for the constant/zero kinds); ``text_query`` is
    present when ``with_text`` is True, absent when False, drawn when None; likewise ``image_index`` (rows
    grouped into images as crops, as LLaVA-NeXT feeds them) for ``with_crops``.
    """
    if not prefixes or any(p < 0 for p in prefixes):
        raise ValueError(f"prefixes must be a non-empty tuple of ints >= 0, got {prefixes}")
    prefix = draw(st.sampled_from(prefixes))
    g = draw(st.integers(min_grid, max_grid))
    b = draw(st.integers(1, max_batch))
    c = draw(st.integers(1, max_hidden))
    dk = draw(st.integers(1, max_key_dim))
    h = draw(st.integers(1, max_heads))
    kind = draw(st.sampled_from(kinds))
    dtype = draw(dtypes) if dtype is None else dtype
    text = draw(st.booleans()) if with_text is None else with_text
    crops = draw(st.booleans()) if with_crops is None else with_crops
    # A new image starts at row 0 and wherever a drawn flag is set: non-decreasing, no gaps.
    starts = [True] + [draw(st.booleans(), label="new image") for _ in range(b - 1)] if crops else None
    generator = torch.Generator().manual_seed(draw(seeds))
    n = g * g + prefix
    hidden = _values((b, n, c), kind, generator)
    keys = _values((b, n, dk), kind, generator)
    logits = _values((b, h, n), kind if kind in ("random", "ties") else "zeros", generator)
    cls_attn = torch.softmax(3 * logits, dim=-1)
    text_query = torch.randn(b, c, generator=generator) if text else None

    def cast(x: torch.Tensor | None) -> torch.Tensor | None:
        return None if x is None else x.to(device=device, dtype=dtype)

    image_index = None if starts is None else torch.tensor(starts).long().cumsum(0) - 1
    return VisionContext(hidden=cast(hidden), keys=cast(keys), cls_attn=cast(cls_attn), text_query=cast(text_query),
                         prefix=prefix, image_index=None if image_index is None else image_index.to(device))

