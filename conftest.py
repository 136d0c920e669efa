"""Root pytest configuration: every command-line option, marker behaviour, hypothesis profile and the
fixtures shared by ``tests/`` and ``benchmarks/``.

Options (all optional; with none given the suite runs on CPU on the embedded default model and data):
    --gpu                run on CUDA (a usage error if CUDA is unavailable; never a silent skip)
    --model-path DIR     a checkpoint (e.g. llava-1.5-7b-hf; its adapter picked by config.json's model_type)
                         or an embedded model's name, instead of the embedded tiny model (tiny-shapes)
    --data-root DIR      real datasets instead of the synthetic fixtures
    --limit N            evaluate at most N samples per dataset
    --methods A,B        only these methods (registry or row names, e.g. sparsezip-notext) in the matrix
    --budgets 64,128     only these token budgets in the matrix, in the LLaVA-1.5 scale (64/128/192 of 576
                         patches; 576 = `none`), mapped to the model's own patch count
    --update-expected    rewrite fixtures/expected/ from this run instead of asserting against it
    --expected-dir DIR   where the expectations live (default: $SPARSEZIP_EXPECTED_DIR, else fixtures/expected)
    --torch-threads N    torch CPU threads for the tests (default 1) and the matrix (default: 1 for the embedded
                         model on CPU)
    --run-dir DIR        root of the matrix's resumable run folders (default: $SPARSEZIP_RUN_DIR, else
                         runs/bench/<fingerprint of code, model, data, device, limit>)

Benchmark hooks (pytest-benchmark): every saved run records the device (``machine_info["sparsezip"]``), runs
are stored per device under ``benchmarks/baselines/<cpu | cuda-GPU-name>/`` unless ``--benchmark-storage`` is
given, comparing runs from different devices is a usage error, and asking for benchmark output
(``--benchmark-json / -save / -autosave / -compare``) turns timing on despite ``--benchmark-disable`` in addopts.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import pytest
import torch
from hypothesis import HealthCheck, settings

REPO_ROOT = Path(__file__).resolve().parent

# `dev`: random exploration with the example database; `ci`: derandomized, so CI runs are reproducible.
settings.register_profile(
    "dev", max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow]
)
settings.register_profile(
    "ci",
    max_examples=40,
    deadline=None,
    derandomize=True,
    database=None,
    print_blob=True,
    suppress_health_check=[HealthCheck.too_slow],
)
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "ci" if os.environ.get("CI") == "true" else "dev"))


def pytest_addoption(parser: pytest.Parser) -> None:
    group = parser.getgroup("sparsezip")
    group.addoption("--gpu", action="store_true", help="run on CUDA (error if CUDA is unavailable)")
    group.addoption("--model-path", default=None,
                    help="checkpoint directory or embedded model name (default: the embedded tiny-shapes)")
    group.addoption("--data-root", default=os.environ.get("SPARSEZIP_DATA"),
                    help="root of real datasets (default: $SPARSEZIP_DATA, else the synthetic fixtures)")
    group.addoption("--limit", type=int, default=None, help="at most N samples per dataset")
    group.addoption("--methods", default=None,
                    help="comma-separated method (sparsezip) or row (sparsezip-notext) names for the benchmark "
                         "matrix")
    group.addoption("--budgets", default=None,
                    help="comma-separated token budgets for the benchmark matrix, in the LLaVA-1.5 scale "
                         "(64,128,192 of 576 patches; 576 = none), mapped to the model's patch count "
                         "(on 144 patches: 16,32,48)")
    group.addoption("--update-expected", action="store_true",
                    help="write fixtures/expected/ from this run instead of asserting against it")
    group.addoption("--expected-dir", default=os.environ.get("SPARSEZIP_EXPECTED_DIR"),
                    help="folder of the matrix's quality expectations <model>.json (default: "
                         "$SPARSEZIP_EXPECTED_DIR, else fixtures/expected)")
    group.addoption("--torch-threads", type=int, default=None,
                    help="torch CPU threads for tests/ (default 1) and for the benchmark matrix (default: 1 for the "
                         "embedded tiny model on CPU, whose small matmuls gain nothing from more; else torch's "
                         "default)")
    group.addoption("--run-dir", default=os.environ.get("SPARSEZIP_RUN_DIR"),
                    help="root of the benchmark matrix's resumable run folders (default: $SPARSEZIP_RUN_DIR, "
                         "else runs/bench/<fingerprint>)")


@pytest.hookimpl(tryfirst=True)  # before pytest-benchmark's own pytest_configure reads its options
def pytest_configure(config: pytest.Config) -> None:
    if config.getoption("--gpu") and not torch.cuda.is_available():
        raise pytest.UsageError("--gpu was given but torch.cuda.is_available() is False "
                                f"(torch {torch.__version__}); install a CUDA build of torch")
    limit = config.getoption("--limit")
    if limit is not None and limit <= 0:
        raise pytest.UsageError(f"--limit must be positive, got {limit}")
    threads = config.getoption("--torch-threads")
    if threads is not None and threads <= 0:
        raise pytest.UsageError(f"--torch-threads must be positive, got {threads}")
    if config.pluginmanager.hasplugin("benchmark"):
        _configure_benchmark_storage(config)


def _session_device(config: pytest.Config) -> torch.device:
    """The device this process runs on: ``cuda:i`` for xdist worker ``gw<i>`` (modulo the GPU count) under
    ``--gpu``, else ``cpu``."""
    if not config.getoption("--gpu"):
        return torch.device("cpu")
    worker = os.environ.get("PYTEST_XDIST_WORKER", "gw0")
    index = int(worker.removeprefix("gw") or 0) % torch.cuda.device_count()
    return torch.device("cuda", index)


def _configure_benchmark_storage(config: pytest.Config) -> None:
    from sparsezip.bench.machine import device_info, device_key

    opt = config.option
    # Asking for benchmark output means asking for timings: override addopts' --benchmark-disable.
    if opt.benchmark_json or opt.benchmark_save or opt.benchmark_autosave or opt.benchmark_compare:
        opt.benchmark_enable = True
    # pytest-benchmark's machine id ignores the accelerator: keep one storage folder per device instead.
    if opt.benchmark_storage == "file://./.benchmarks":
        storage = REPO_ROOT / "benchmarks" / "baselines" / device_key(device_info(_session_device(config)))
        opt.benchmark_storage = f"file://{storage}"
    # Fail before running anything, rather than after the whole run (pytest-benchmark's behaviour).
    if opt.benchmark_compare is True and "://" not in opt.benchmark_storage.removeprefix("file://"):
        storage = Path(opt.benchmark_storage.removeprefix("file://"))
        if not any(storage.glob("*/[0-9][0-9][0-9][0-9]_*.json")):
            raise pytest.UsageError(
                f"--benchmark-compare: no stored run under {storage}; save a baseline first with "
                "`tox -e bench-save` (or --benchmark-save=baseline)"
            )


@pytest.hookimpl(optionalhook=True)
def pytest_benchmark_update_machine_info(config: pytest.Config, machine_info: dict[str, Any]) -> None:
    """Record what the run was measured on: device type, GPU name/capability, CPU model, library versions."""
    from sparsezip.bench.machine import device_info

    machine_info["sparsezip"] = device_info(_session_device(config))


@pytest.hookimpl(optionalhook=True)
def pytest_benchmark_compare_machine_info(
    config: pytest.Config, benchmarksession: Any, machine_info: dict[str, Any], compared_benchmark: dict[str, Any]
) -> None:
    """Refuse (usage error) to compare against a run from another device type or GPU model."""
    from sparsezip.bench.machine import comparison_problem

    commit = (compared_benchmark.get("commit_info") or {}).get("id") or "?"
    label = f"of {compared_benchmark.get('datetime', '?')} (commit {str(commit)[:10]})"
    problem = comparison_problem(
        machine_info.get("sparsezip"), compared_benchmark.get("machine_info", {}).get("sparsezip"), label
    )
    if problem:
        raise pytest.UsageError(problem)


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    if config.getoption("--gpu"):
        return
    skip_gpu = pytest.mark.skip(reason="needs --gpu")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip_gpu)


@pytest.fixture(scope="session")
def device(request: pytest.FixtureRequest) -> torch.device:
    """``cuda`` under ``--gpu`` (xdist worker i gets GPU i modulo the GPU count), else ``cpu``."""
    return _session_device(request.config)


@pytest.fixture(scope="session")
def repo_root() -> Path:
    return REPO_ROOT
