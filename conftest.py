"""Root pytest configuration: every command-line option, marker behaviour, hypothesis profile and the
fixtures shared by ``tests/`` and ``benchmarks/``.

Options (all optional; with none given the suite runs on CPU on the embedded default model and data):
    --gpu                run on CUDA (a usage error if CUDA is unavailable; never a silent skip)
    --model-path DIR     a LLaVA checkpoint (e.g. llava-1.5-7b-hf) instead of the embedded tiny model
    --data-root DIR      real datasets instead of the synthetic fixtures
    --limit N            evaluate at most N samples per dataset
    --methods A,B        only these methods in the benchmark matrix
    --budgets 64,128     only these token budgets in the benchmark matrix
    --update-expected    rewrite fixtures/expected/ from this run instead of asserting against it
"""

from __future__ import annotations

import os
from pathlib import Path

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


def _csv(value: str | None) -> list[str] | None:
    return [item.strip() for item in value.split(",") if item.strip()] if value else None


def pytest_addoption(parser: pytest.Parser) -> None:
    group = parser.getgroup("sparsezip")
    group.addoption("--gpu", action="store_true", help="run on CUDA (error if CUDA is unavailable)")
    group.addoption("--model-path", default=None, help="LLaVA checkpoint directory (default: embedded tiny model)")
    group.addoption("--data-root", default=os.environ.get("SPARSEZIP_DATA"),
                    help="root of real datasets (default: $SPARSEZIP_DATA, else the synthetic fixtures)")
    group.addoption("--limit", type=int, default=None, help="at most N samples per dataset")
    group.addoption("--methods", default=None, help="comma-separated method names for the benchmark matrix")
    group.addoption("--budgets", default=None, help="comma-separated token budgets for the benchmark matrix")
    group.addoption("--update-expected", action="store_true",
                    help="write fixtures/expected/ from this run instead of asserting against it")


def pytest_configure(config: pytest.Config) -> None:
    if config.getoption("--gpu") and not torch.cuda.is_available():
        raise pytest.UsageError("--gpu was given but torch.cuda.is_available() is False "
                                f"(torch {torch.__version__}); install a CUDA build of torch")
    limit = config.getoption("--limit")
    if limit is not None and limit <= 0:
        raise pytest.UsageError(f"--limit must be positive, got {limit}")


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
    if not request.config.getoption("--gpu"):
        return torch.device("cpu")
    worker = os.environ.get("PYTEST_XDIST_WORKER", "gw0")
    index = int(worker.removeprefix("gw") or 0) % torch.cuda.device_count()
    return torch.device("cuda", index)


@pytest.fixture(scope="session")
def repo_root() -> Path:
    return REPO_ROOT
