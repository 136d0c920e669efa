"""The order in which CPython iterates ``set(values)`` for small non-negative ints, batched.

DART's authors process their pivot tokens as ``list(set(image_pivots + text_pivots))``, so the order (which
changes the kept set) is an artefact of CPython's hash table (``Objects/setobject.c``): a small int hashes to
itself; a set starts with 8 slots; a value goes to slot ``hash & mask``, else (collision) to the first free slot of
the 9 that follow, provided they lie inside the table, else the probe jumps ``perturb >>= 5;
i = (5 i + 1 + perturb) & mask`` (``perturb`` starting at the hash); when ``5 fill >= 3 mask`` after an insertion,
the table grows to the smallest power of two above ``4 used`` and the old entries are re-inserted in slot order;
iteration is slot order. :func:`cpython_set_order` replays that with tensor ops (a loop over the few insertions
and probe rounds, none over rows); ``tests/test_dart.py`` checks it against the running interpreter's own ``set``.
"""

from __future__ import annotations

import torch

MIN_SIZE = 8  # PySet_MINSIZE
LINEAR_PROBES = 9
PERTURB_SHIFT = 5
MAX_VALUE = 2**61 - 1  # below it a non-negative int hashes to itself (the Mersenne modulus of int hashing)


def _insert(table: torch.Tensor, values: torch.Tensor, active: torch.Tensor) -> torch.Tensor:
    """``table [B, size]`` (``-1`` = free) with ``values [B]`` put where CPython puts them, rows with ``active``
    False untouched.

    Probe rounds run until every row has found a free slot: ``perturb`` is 0 after 13 shifts of a 61-bit value,
    after which ``i -> 5 i + 1 (mod size)`` visits every slot within ``size`` rounds, so the loop is bounded."""
    size = table.shape[1]
    mask = size - 1
    i = values & mask
    perturb = values.clone()
    offsets = torch.arange(LINEAR_PROBES + 1, device=values.device)
    slot = torch.full_like(values, -1)
    for _ in range(64 // PERTURB_SHIFT + 1 + size):
        linear = (i + LINEAR_PROBES <= mask)[:, None]
        candidates = torch.where(linear, i[:, None] + offsets, i[:, None].expand(-1, offsets.numel()))
        free = table.gather(1, candidates) < 0
        first = candidates.gather(1, free.int().argmax(dim=1, keepdim=True))[:, 0]  # the first free one probed
        slot = torch.where((slot < 0) & free.any(dim=1), first, slot)
        if bool((slot >= 0)[active].all()):
            break
        perturb = perturb >> PERTURB_SHIFT
        i = (i * 5 + 1 + perturb) & mask
    else:
        raise ValueError("set emulation found no free slot (table full)")
    slot = slot.clamp_min(0)[:, None]
    new = torch.where(active[:, None], values[:, None], table.gather(1, slot))
    return table.scatter(1, slot, new)


def cpython_set_order(values: torch.Tensor) -> torch.Tensor:
    """``values [B, P]`` int64, distinct non-negative per row (below ``2**61 - 1``), in insertion order ->
    ``[B, P]`` the same values per row in the order CPython iterates ``set(values[b].tolist())``."""
    if values.ndim != 2 or values.dtype != torch.long:
        raise ValueError(f"values must be a [B, P] int64 tensor, got {values.dtype} {tuple(values.shape)}")
    if values.numel() and (bool((values < 0).any()) or bool((values >= MAX_VALUE).any())):
        raise ValueError(f"values must lie in [0, 2**61 - 1), got {values.tolist()}")
    ordered = torch.sort(values, dim=1).values
    if bool((ordered[:, 1:] == ordered[:, :-1]).any()):
        raise ValueError(f"values must be distinct per row, got {values.tolist()}")
    b, p = values.shape
    table = torch.full((b, MIN_SIZE), -1, dtype=torch.long, device=values.device)
    every = torch.ones(b, dtype=torch.bool, device=values.device)
    for fill in range(1, p + 1):
        table = _insert(table, values[:, fill - 1], every)
        if fill * 5 >= (table.shape[1] - 1) * 3:  # the same for every row: all values are distinct
            size = MIN_SIZE
            while size <= fill * 4:
                size <<= 1
            grown = torch.full((b, size), -1, dtype=torch.long, device=values.device)
            for slot in range(table.shape[1]):  # old entries in slot order
                grown = _insert(grown, table[:, slot].clamp_min(0), table[:, slot] >= 0)
            table = grown
    size = table.shape[1]
    position = torch.arange(size, device=values.device).expand(b, size)
    order = torch.sort(torch.where(table >= 0, position, position + size), dim=1).indices[:, :p]
    return table.gather(1, order)
