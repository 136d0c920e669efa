"""Count what a call costs a GPU besides arithmetic: top-level ATen ops (kernel launches) and host syncs.

On a GPU every top-level ATen op is (at least) one kernel launch, a few microseconds of host time each, and
every host read of device data stalls the host until the device queue drains. Both can be counted on CPU,
where the same Python code issues the same ops:

* ``top_level_ops``: ATen ops recorded by ``torch.profiler`` that no other ATen op called (what the Python
  code asked for); ``total_ops`` counts nested ones too.
* ``host_syncs``: every place the host waits for device data on CUDA:
  reads of a tensor's values (``item``/``int``/``float``/``bool``/``tolist``/``numpy``/``cpu``, via a
  ``TorchFunctionMode``), ops whose output shape depends on the data (``nonzero`` -- boolean-mask indexing and
  ``masked_select`` use it --, ``unique``, ``repeat_interleave`` without ``output_size``), and tensors built
  from host data (``torch.tensor`` / ``as_tensor`` / ``from_numpy``) or moved to a device without
  ``non_blocking`` (``Tensor.to(device)``), which on CUDA are blocking copies unless pinned. On a CPU run every
  explicit ``.to(device)`` is counted, also one that would find its tensor already on the device: write
  device code that creates tensors where they are used. ``syncs`` lists them by name.

Counts depend only on the code path, not on timing, so tests may assert them (a perf regression that adds
launches or syncs then fails a plain test); timings stay in ``benchmarks/``.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch
from torch.overrides import TorchFunctionMode

# Tensor methods that read device data on the host.
_HOST_READS = frozenset({"item", "tolist", "numpy", "cpu", "__bool__", "__int__", "__float__", "__index__"})
# torch functions that build a tensor from host data.
_FROM_HOST = frozenset({"tensor", "as_tensor", "from_numpy"})
# ATen ops whose output shape depends on data: the host must wait for the count.
_DATA_DEPENDENT = ("aten::nonzero", "aten::unique", "aten::_unique", "aten::masked_select")


@dataclass
class OpCount:
    """What :func:`count_ops` saw during one call."""

    top_level_ops: int
    total_ops: int
    host_syncs: int
    syncs: Counter = field(default_factory=Counter)
    ops: Counter = field(default_factory=Counter)

    def as_dict(self) -> dict[str, Any]:
        """JSON-friendly summary (for ``extra_info``)."""
        return {"top_level_ops": self.top_level_ops, "total_ops": self.total_ops, "host_syncs": self.host_syncs,
                "syncs": dict(self.syncs)}


class _HostReads(TorchFunctionMode):
    def __init__(self) -> None:
        super().__init__()
        self.seen: Counter = Counter()

    def __torch_function__(self, func, types, args=(), kwargs=None):
        name = getattr(func, "__name__", "")
        if name in _HOST_READS or name in _FROM_HOST:
            self.seen[name] += 1
        elif name == "to" and _names_device(args[1:], kwargs):
            # On CUDA, moving a host tensor to the device is a blocking copy unless it is pinned and
            # non_blocking; on a CPU run every tensor is a host tensor, so every explicit move is counted.
            if not (kwargs or {}).get("non_blocking", False):
                self.seen["to(device)"] += 1
        return func(*args, **(kwargs or {}))


def _names_device(args: tuple, kwargs: dict | None) -> bool:
    values = list(args) + list((kwargs or {}).values())
    return any(isinstance(v, (torch.device, str)) for v in values)


def count_ops(fn: Callable[[], object]) -> OpCount:
    """Run ``fn()`` once under ``torch.profiler`` and a host-read counter; return the counts.

    ``repeat_interleave`` is counted as a sync only when called without ``output_size`` (its nested
    ``_local_scalar_dense`` shows the read). Run ``fn`` once beforehand if it caches anything on first use.
    """
    from torch.profiler import ProfilerActivity, profile

    reads = _HostReads()
    with profile(activities=[ProfilerActivity.CPU]) as prof, reads:
        fn()
    events = [e for e in prof.events() if e.name.startswith("aten::")]
    top = [e for e in events if not _has_aten_ancestor(e)]
    syncs = Counter(reads.seen)
    for e in events:
        if e.name.startswith(_DATA_DEPENDENT):
            syncs[e.name] += 1
        elif e.name == "aten::_local_scalar_dense" and _ancestor_named(e, "aten::repeat_interleave"):
            syncs["aten::repeat_interleave"] += 1
    return OpCount(top_level_ops=len(top), total_ops=len(events), host_syncs=sum(syncs.values()), syncs=syncs,
                   ops=Counter(e.name for e in top))


def _has_aten_ancestor(event: Any) -> bool:
    parent = event.cpu_parent
    while parent is not None:
        if parent.name.startswith("aten::"):
            return True
        parent = parent.cpu_parent
    return False


def _ancestor_named(event: Any, name: str) -> bool:
    parent = event.cpu_parent
    while parent is not None:
        if parent.name == name:
            return True
        parent = parent.cpu_parent
    return False
