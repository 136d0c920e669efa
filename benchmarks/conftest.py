"""Fixtures of the benchmark matrix: its parametrization from the command-line options (every embedded family's
model, or ``--model-path``), each model (loaded once per session, per xdist worker), datasets (loaded once per
session) and the run settings per model.

The options themselves live in the root ``conftest.py``.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import cache
from pathlib import Path

import pytest
import torch

from sparsezip.bench.matrix import (
    EMBEDDED_MODEL_NAMES,
    Case,
    build_matrix,
    checkpoint_num_patches,
    model_name,
    unsupported_reason,
)

REPO_ROOT = Path(__file__).resolve().parents[1]
DEFAULT_DATA_ROOT = REPO_ROOT / "fixtures" / "data"
EXPECTED_DIR = REPO_ROOT / "fixtures" / "expected"
_CASES = pytest.StashKey[dict]()


def _csv(value: str | None) -> list[str] | None:
    return [item.strip() for item in value.split(",") if item.strip()] if value else None


@dataclass(frozen=True)
class BenchSettings:
    """Everything a matrix case needs to know about its model in this session (immutable: safe under xdist)."""

    model_path: Path
    model: str
    data_root: Path
    limit: int | None
    run_root: Path
    device: torch.device
    dtype: torch.dtype
    update_expected: bool
    expected_file: Path
    rounds: int
    torch_threads: int


@cache
def _model_identity(model_path: str) -> tuple[Path, str, int]:
    """``(checkpoint folder, name in case ids, nominal visual tokens)`` of a folder or an embedded model's name,
    from its config alone."""
    from sparsezip.adapters.registry import list_embedded_models, resolve_model

    try:
        path, _ = resolve_model(model_path)
        return path, model_name(model_path), checkpoint_num_patches(path)
    except ValueError as err:
        hint = " (embedded: `sparsezip train-tiny --arch ...` writes it)" if model_path in list_embedded_models() else ""
        raise pytest.UsageError(f"benchmark model{hint}: {err}") from None


def session_models(config: pytest.Config) -> list[str]:
    """The session's models: ``--model-path``, else every embedded family (:data:`EMBEDDED_MODEL_NAMES`)."""
    given = config.getoption("--model-path")
    return [given] if given else list(EMBEDDED_MODEL_NAMES)


def pytest_configure(config: pytest.Config) -> None:
    from sparsezip.bench.published import PublishedSession

    # Published POPE means are checked once the session's cases ran; the plugin sums up (xdist: on the controller).
    config.pluginmanager.register(PublishedSession(), "sparsezip-published")


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    """Parametrize ``case`` with the matrix of every session model, narrowed by ``--methods`` / ``--budgets``."""
    if "case" not in metafunc.fixturenames:
        return
    config = metafunc.config
    budgets = _csv(config.getoption("--budgets"))
    if budgets is not None and not all(b.isdigit() for b in budgets):
        raise pytest.UsageError(f"--budgets takes integers (LLaVA-1.5 scale, e.g. 64,128), got {budgets}")
    budgets = None if budgets is None else [int(b) for b in budgets]
    params, ids = [], []
    for model in session_models(config):
        path, name, num_patches = _model_identity(model)
        try:
            cases = build_matrix(name, num_patches, methods=_csv(config.getoption("--methods")), llava_budgets=budgets)
        except ValueError as err:
            raise pytest.UsageError(f"benchmark matrix: {err}") from None
        # Parametrized by id (indirect), so a saved benchmark JSON's `params` holds the readable id, not an object.
        metafunc.config.stash.setdefault(_CASES, {}).update((case.id, (case, model)) for case in cases)
        params += [pytest.param(case.id, marks=_skip_unsupported(case, path)) for case in cases]
        ids += [case.id for case in cases]
    metafunc.parametrize("case", params, ids=ids, indirect=True)


def _skip_unsupported(case: Case, model_path: Path) -> list:
    """A skip mark (with the reason) for a row the model's family adapter cannot run, else none."""
    from sparsezip.adapters.registry import checkpoint_adapter

    reason = unsupported_reason(case, checkpoint_adapter(model_path))
    return [] if reason is None else [pytest.mark.skip(reason=reason)]


@pytest.fixture
def case(request: pytest.FixtureRequest) -> Case:
    """The matrix case this test item runs (looked up by its id)."""
    return request.config.stash[_CASES][request.param][0]


@pytest.fixture(scope="session")
def bench_session(request: pytest.FixtureRequest, device: torch.device):
    """``settings(model)`` -> the :class:`BenchSettings` of a session model (cached). Sets torch's CPU threads for
    the matrix (``--torch-threads``) and restores them afterwards."""
    from sparsezip.bench.cases import run_fingerprint

    config = request.config
    threads = config.getoption("--torch-threads")
    if threads is None:
        # One thread for the embedded models on CPU: their width-128 matmuls gain nothing from more, and on a
        # shared machine extra OpenMP threads oversubscribe the cores (10-100x slower, erratic latency).
        threads = 1 if device.type == "cpu" and not config.getoption("--model-path") else torch.get_num_threads()
    data_root = Path(config.getoption("--data-root") or DEFAULT_DATA_ROOT)
    limit = config.getoption("--limit")

    @cache
    def settings(model: str) -> BenchSettings:
        model_path, name, _ = _model_identity(model)
        run_root = config.getoption("--run-dir")
        if run_root is None:
            fingerprint = run_fingerprint(package_dir=REPO_ROOT / "sparsezip", model_path=model_path,
                                          data_root=data_root, device_type=device.type, limit=limit)
            run_root = REPO_ROOT / "runs" / "bench" / fingerprint
        return BenchSettings(
            model_path=model_path,
            model=name,
            data_root=data_root,
            limit=limit,
            run_root=Path(run_root),
            device=device,
            # LLaVA-1.5 is evaluated in fp16 on GPU; CPU kernels want fp32.
            dtype=torch.float16 if device.type == "cuda" else torch.float32,
            update_expected=config.getoption("--update-expected"),
            expected_file=Path(config.getoption("--expected-dir") or EXPECTED_DIR) / f"{name}.json",
            rounds=max(1, config.getoption("benchmark_min_rounds")),
            torch_threads=threads,
        )

    previous = torch.get_num_threads()
    torch.set_num_threads(threads)
    yield settings
    torch.set_num_threads(previous)


@pytest.fixture
def bench(request: pytest.FixtureRequest, bench_session) -> BenchSettings:
    """The settings of this case's model."""
    return bench_session(request.config.stash[_CASES][request.node.callspec.params["case"]][1])


@pytest.fixture(scope="session")
def _published_cache() -> dict:
    return {}


@pytest.fixture
def bench_published(bench: BenchSettings, _published_cache: dict):
    """Whether the case's checkpoint is one whose published results are on file (``fixtures/expected/
    published/``), matched by its weights' content identity (hashed once, cached): a
    :class:`~sparsezip.eval.published.Recognition`; a real checkpoint that is not recognised warns once."""
    import warnings

    from sparsezip.adapters.registry import list_embedded_models
    from sparsezip.eval.published import recognise

    if bench.model_path not in _published_cache:
        recognition = recognise(bench.model_path, bench.model, embedded=bench.model in list_embedded_models())
        if recognition.status == "not_recognised":
            warnings.warn(recognition.message, stacklevel=1)
        _published_cache[bench.model_path] = recognition
    return _published_cache[bench.model_path]


@pytest.fixture(scope="session")
def _model_cache() -> dict:
    return {}


@pytest.fixture
def bench_model(bench: BenchSettings, _model_cache: dict):
    """The case's model, loaded once per session (per xdist worker) through the model registry (the adapter its
    ``config.json`` names)."""
    from sparsezip.adapters.registry import load_model

    if bench.model_path not in _model_cache:
        _model_cache[bench.model_path] = load_model(bench.model_path, device=bench.device, dtype=bench.dtype)
    return _model_cache[bench.model_path]


@pytest.fixture(scope="session")
def bench_samples(request: pytest.FixtureRequest):
    """``samples(dataset)`` -> the dataset's (``--limit``-ed) samples, loaded once per session (shared by the
    session's models); skips the case with the reason when the dataset is not under the data root."""
    from sparsezip.data import load_dataset, resolve_dataset
    from sparsezip.data.subsets import limit_samples

    data_root = Path(request.config.getoption("--data-root") or DEFAULT_DATA_ROOT)
    limit = request.config.getoption("--limit")

    @cache
    def load(dataset: str) -> tuple:
        try:
            family, path, options = resolve_dataset(data_root, dataset)
        except ValueError as err:
            return (f"dataset {dataset} not available under {data_root}: {err}",)
        return (None, family, tuple(limit_samples(list(load_dataset(family, path, **options)), limit)))

    def samples(dataset: str) -> list:
        result = load(dataset)
        if result[0] is not None:
            pytest.skip(result[0])
        if not result[2]:
            pytest.skip(f"dataset {dataset} under {data_root} has no samples")
        return list(result[2])

    return samples


def pytest_report_header(config: pytest.Config) -> list[str]:
    models = config.getoption("--model-path") or f"embedded {', '.join(EMBEDDED_MODEL_NAMES)}"
    data = config.getoption("--data-root") or DEFAULT_DATA_ROOT
    return [f"sparsezip benchmarks: model {models}; data {data}"]
