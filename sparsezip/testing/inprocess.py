"""Run a nested pytest session in this process: for tests of the suite's own pytest plugins (the root
``conftest.py``'s options and benchmark hooks, the benchmark matrix), where a subprocess would spend ~4-8 s
importing torch and transformers again for a run that takes a fraction of that."""

from __future__ import annotations

import contextlib
import importlib.util
import io
import os
import sys
import warnings
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[2]


@dataclass(frozen=True)
class InProcessRun:
    """What a nested pytest run left: its exit code and what it wrote to stdout and stderr."""

    returncode: int
    stdout: str
    stderr: str


@contextlib.contextmanager
def _isolated(env: Mapping[str, str]) -> Iterator[None]:
    """Everything a nested session may change, restored afterwards: its test and conftest modules (see
    :func:`_restore_modules`), ``sys.path``, the environment, the warning filters (warnings
    raised outside its tests stay in it), the working directory and torch's thread count. The outer run's
    xdist / current-test variables are hidden: the nested run is not a worker (under xdist pytest-benchmark would
    not save its run); ``env`` is added."""
    modules, path, environ, cwd = dict(sys.modules), list(sys.path), dict(os.environ), Path.cwd()
    torch = sys.modules.get("torch")
    threads = torch.get_num_threads() if torch is not None else None
    for key in [k for k in os.environ if k.startswith(("PYTEST_XDIST", "PYTEST_CURRENT"))]:
        del os.environ[key]
    os.environ.update(env)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            yield
    finally:
        os.chdir(cwd)
        _restore_modules(modules)
        sys.path[:] = path
        os.environ.clear()
        os.environ.update(environ)
        if threads is not None:
            torch.set_num_threads(threads)


def _restore_modules(before: dict) -> None:
    """Put back the modules the nested session replaced (it imports ``conftest`` afresh) and drop the test and
    conftest modules it added, so the next nested session collects its own. Library modules it imported stay:
    importing torch or transformers submodules twice can fail (operators registered twice), and they are what
    running in process saves."""
    for name in [n for n in sys.modules if n not in before]:
        leaf = name.rpartition(".")[2]
        if leaf == "conftest" or leaf.startswith("test_") or name == "sparsezip_root_conftest":
            del sys.modules[name]
    for name, module in before.items():
        if sys.modules.get(name) is not module:
            sys.modules[name] = module


def run_pytest_in_process(cwd: Path, args: Sequence[str], *, root_conftest: bool = False,
                          env: Mapping[str, str] | None = None) -> InProcessRun:
    """``pytest args`` run in ``cwd`` (output captured at the ``sys`` level, never at the file descriptors the
    outer run captures). ``root_conftest``: load the repository's root ``conftest.py`` as a plugin, for a ``cwd``
    outside the repository (its options and benchmark hooks). ``env``: extra environment variables for the run.
    Raises ``ValueError`` if ``cwd`` is not a directory."""
    import pytest

    cwd = Path(cwd)
    if not cwd.is_dir():
        raise ValueError(f"not a directory: {cwd}")
    out, err = io.StringIO(), io.StringIO()
    with _isolated(env or {}), contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        plugins = []
        if root_conftest:
            spec = importlib.util.spec_from_file_location("sparsezip_root_conftest", REPO_ROOT / "conftest.py")
            plugin = importlib.util.module_from_spec(spec)
            spec.loader.exec_module(plugin)
            plugins.append(plugin)
        os.chdir(cwd)
        code = pytest.main(["--capture=sys", *args], plugins=plugins)
    return InProcessRun(int(code), out.getvalue(), err.getvalue())
