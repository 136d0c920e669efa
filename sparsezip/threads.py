"""Torch's CPU thread count, chosen deliberately: the physical cores this process may run on, unless told.

Torch's own default (every logical CPU, ignoring the process's affinity) oversubscribes shared machines and
hyper-threaded cores: on a 2-core machine shared by several jobs, small-op code ran 5-15x slower at 2 threads
than at 1. Commands (``sparsezip eval``, ``smoke``) call :func:`use_threads` with their ``--threads``.
"""

from __future__ import annotations

import os
import re
from pathlib import Path

import torch

_CPUINFO = Path("/proc/cpuinfo")


def usable_cpus() -> int:
    """Logical CPUs this process may run on (its affinity mask where the OS has one)."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except (AttributeError, OSError):
        return max(1, os.cpu_count() or 1)


def physical_cores() -> int:
    """Physical cores among the usable CPUs: distinct ``(physical id, core id)`` pairs of ``/proc/cpuinfo``
    (Linux), capped at :func:`usable_cpus`; elsewhere the usable CPUs."""
    usable = usable_cpus()
    try:
        text = _CPUINFO.read_text()
    except OSError:
        return usable
    cores = set()
    for block in text.split("\n\n"):
        package = re.search(r"^physical id\s*:\s*(\d+)", block, re.MULTILINE)
        core = re.search(r"^core id\s*:\s*(\d+)", block, re.MULTILINE)
        if package and core:
            cores.add((package.group(1), core.group(1)))
    return min(usable, len(cores)) if cores else usable


def use_threads(requested: int | None) -> int:
    """Set torch's intra-op threads to ``requested`` (default :func:`physical_cores`) and return the count.
    ``ValueError`` for a count below 1."""
    threads = physical_cores() if requested is None else requested
    if isinstance(threads, bool) or not isinstance(threads, int) or threads < 1:
        raise ValueError(f"--threads must be an integer >= 1, got {requested!r}")
    torch.set_num_threads(threads)
    return threads
