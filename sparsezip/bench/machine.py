"""What a saved benchmark run was measured on, and whether two runs may be compared.

pytest-benchmark's machine id (``Linux-CPython-3.11-64bit``) does not include the accelerator, so CPU and GPU
runs would land in one storage folder and ``--benchmark-compare`` would happily compare them. The root
``conftest.py`` therefore (1) records :func:`device_info` in every run's ``machine_info["sparsezip"]``,
(2) stores runs per device under ``benchmarks/baselines/<device_key>/`` and (3) refuses a comparison whose
:func:`comparison_problem` is not ``None``.
"""

from __future__ import annotations

import importlib.metadata
import os
import platform
import re
from pathlib import Path

import torch

# Keys of `device_info` that must match for latencies to be comparable at all.
MUST_MATCH: tuple[str, ...] = ("device_type", "gpu_name")


def cpu_model() -> str:
    """The CPU's marketing name (``/proc/cpuinfo`` on Linux, ``platform.processor()`` elsewhere)."""
    cpuinfo = Path("/proc/cpuinfo")
    if cpuinfo.exists():
        for line in cpuinfo.read_text(encoding="utf-8", errors="replace").splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    return platform.processor() or platform.machine()


def device_info(device: torch.device) -> dict:
    """JSON-friendly description of what ``device`` runs on: device type, GPU name / compute capability /
    CUDA version (``None`` on CPU), CPU model and core count, torch and transformers versions."""
    on_cuda = device.type == "cuda"
    return {
        "device_type": device.type,
        "gpu_name": torch.cuda.get_device_name(device) if on_cuda else None,
        "gpu_capability": ".".join(map(str, torch.cuda.get_device_capability(device))) if on_cuda else None,
        "cuda_version": torch.version.cuda if on_cuda else None,
        "cpu_model": cpu_model(),
        "cpu_count": os.cpu_count(),
        "torch": torch.__version__,
        "transformers": importlib.metadata.version("transformers"),  # no import: it takes seconds
    }


def device_key(info: dict) -> str:
    """Storage folder name for runs on this device: ``cpu``, or ``cuda-<gpu name>`` (slugged)."""
    if info.get("device_type") != "cuda":
        return str(info.get("device_type", "unknown"))
    slug = re.sub(r"[^A-Za-z0-9]+", "-", str(info.get("gpu_name") or "unknown")).strip("-")
    return f"cuda-{slug}"


def comparison_problem(current: dict | None, saved: dict | None, saved_label: str) -> str | None:
    """Why a run described by ``current`` must not be compared with the saved run ``saved`` (both
    :func:`device_info` dicts), or ``None`` when they were measured on the same kind of device.

    A saved run without device info cannot be vouched for, so it is refused too.
    """
    if saved is None:
        return (f"the saved run {saved_label} records no device (machine_info['sparsezip'] is missing): "
                "it was not saved by this suite; save a new baseline with `tox -e bench-save`")
    if current is None:
        return "the current run records no device info"
    for key in MUST_MATCH:
        if current.get(key) != saved.get(key):
            return (f"refusing to compare benchmarks across devices: this run has {key}={current.get(key)!r}, "
                    f"the saved run {saved_label} has {key}={saved.get(key)!r}. Compare against a baseline "
                    f"saved on the same device (benchmarks/baselines/{device_key(current)}/), or save one "
                    "with `tox -e bench-save`")
    return None
