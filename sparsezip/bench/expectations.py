"""Quality expectations of the benchmark matrix: ``fixtures/expected/<model>.json``.

Each benchmark case compares its dataset's headline metric (its row's ``DatasetSpec.headline``; POPE: F1 of
the case's label file; MME: total score = perception + cognition; DocVQA: ANLS) with the recorded value,
one-sided: the case fails when quality drops more than the tolerance below the expectation; a rise beyond it
is only reported (refresh with ``--update-expected``).

Tolerance is a fraction of the metric's range (1 for F1 / ANLS, 200 per MME subtask present):
    - CPU: ``0.01``. CPU runs are deterministic on one machine; the slack covers a few answers flipping
      on a different CPU (other SIMD kernels, other float summation order): about 3 of 300 POPE questions.
    - CUDA: ``0.03``. GPU kernels (fp16, cuBLAS / SDPA algorithm choice, batch composition) change logits
      slightly and so flip the odd near-tie answer; expectations recorded on CPU are checked against GPU runs
      with this wider tolerance, and vice versa.
An expectation is keyed by case id plus ``@limit=N`` when ``--limit`` was given (a different sample set is a
different expectation); it also records ``n`` and the dataset file hash, and a case whose data no longer match
its expectation is reported as unchecked, never silently passed.
"""

from __future__ import annotations

import json
import os
import tempfile
from dataclasses import dataclass
from pathlib import Path

from sparsezip.data.registry import dataset_spec

# Fraction of the metric's range a headline metric may fall below its expectation, per device type.
TOLERANCE: dict[str, float] = {"cpu": 0.01, "cuda": 0.03}


@dataclass(frozen=True)
class Headline:
    """A dataset's headline metric: ``name``, measured ``value`` and the metric's full ``scale`` (range)."""

    name: str
    value: float
    scale: float


def headline(dataset: str, metrics: dict) -> Headline:
    """The headline metric of a runner summary's ``metrics`` for ``dataset`` (a family or benchmark name), as
    its row in the dataset table defines it (``DatasetSpec.headline``).

    POPE: ``f1`` of the case's one label file; MME: ``perception + cognition`` over the subtasks present (a
    group without subtasks counts 0), range 200 per subtask; DocVQA: ``anls``.
    """
    spec = dataset_spec(dataset)
    value, scale = spec.headline_of(metrics)
    return Headline(spec.headline.name, value, scale)


def tolerance(device_type: str, scale: float) -> float:
    """Absolute tolerance for a metric of range ``scale`` on ``device_type`` (``cpu`` or ``cuda``)."""
    if device_type not in TOLERANCE:
        raise ValueError(f"no tolerance for device type {device_type!r}; known: {', '.join(TOLERANCE)}")
    if scale <= 0:
        raise ValueError(f"metric scale must be positive, got {scale}")
    return TOLERANCE[device_type] * scale


def expectation_key(case_id: str, limit: int | None) -> str:
    """``case_id``, plus ``@limit=N`` when the run evaluated only the first N samples."""
    return case_id if limit is None else f"{case_id}@limit={limit}"


@dataclass(frozen=True)
class Verdict:
    """The outcome of checking one case: ``status`` is ``ok``, ``improved``, ``regressed`` or ``unchecked``;
    ``message`` says why, with the numbers."""

    status: str
    message: str


def check(expected: dict | None, measured: Headline, *, n: int, dataset_sha256: str | None,
          device_type: str, key: str) -> Verdict:
    """Compare ``measured`` with the ``expected`` entry of case ``key`` (``None`` = no expectation yet).

    ``unchecked`` when there is no expectation, or it was recorded on another sample set (``n`` or dataset
    hash differ) or for another metric; ``regressed`` when ``measured.value < expected - tol``; ``improved``
    when above ``expected + tol``; else ``ok``.
    """
    refresh = "record one with --update-expected"
    if expected is None:
        return Verdict("unchecked", f"no expectation for {key}; {refresh}")
    if expected.get("metric") != measured.name:
        return Verdict("unchecked", f"expectation for {key} is for metric {expected.get('metric')!r}, "
                                    f"this run measures {measured.name!r}; {refresh}")
    if expected.get("n") != n:
        return Verdict("unchecked", f"expectation for {key} was recorded on n={expected.get('n')} samples, "
                                    f"this run has n={n}; {refresh}")
    if dataset_sha256 is not None and expected.get("dataset_sha256") not in (None, dataset_sha256):
        return Verdict("unchecked", f"dataset changed since the expectation for {key} was recorded "
                                    f"(sha256 {expected.get('dataset_sha256')} -> {dataset_sha256}); {refresh}")
    tol = tolerance(device_type, measured.scale)
    value = float(expected["value"])
    delta = measured.value - value
    numbers = (f"{measured.name} = {measured.value:.4f}, expected {value:.4f} "
               f"(recorded on {expected.get('device', '?')}), tolerance {tol:.4f} on {device_type}")
    if delta < -tol:
        return Verdict("regressed", f"{key}: quality regressed: {numbers}")
    if delta > tol:
        return Verdict("improved", f"{key}: quality improved beyond the tolerance: {numbers}; {refresh}")
    return Verdict("ok", f"{key}: {numbers}")


def make_entry(measured: Headline, *, n: int, dataset_sha256: str | None, device_type: str,
               metrics: dict) -> dict:
    """The JSON entry recorded for a case: the headline, the sample set it was measured on, the device,
    and the run's full metrics for reference."""
    return {
        "metric": measured.name,
        "value": round(measured.value, 6),
        "n": n,
        "dataset_sha256": dataset_sha256,
        "device": device_type,
        "metrics": metrics,
    }


class ExpectationStore:
    """``fixtures/expected/<model>.json``: ``{"cases": {key: entry}}``, keys sorted for reviewable diffs.

    Updates are read-modify-write under an inter-process file lock and replace the file atomically, so
    ``pytest -n N --update-expected`` (several xdist workers writing one file) loses no entry.
    """

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)

    def load(self) -> dict[str, dict]:
        """All recorded entries by key (empty when the file does not exist)."""
        if not self.path.exists():
            return {}
        try:
            data = json.loads(self.path.read_text(encoding="utf-8"))
        except json.JSONDecodeError as err:
            raise ValueError(f"{self.path}: not valid JSON (line {err.lineno}): {err.msg}") from None
        cases = data.get("cases") if isinstance(data, dict) else None
        if not isinstance(cases, dict):
            raise ValueError(f"{self.path}: expected an object with a 'cases' mapping")
        return cases

    def get(self, key: str) -> dict | None:
        """The entry for ``key``, or ``None``."""
        return self.load().get(key)

    def update(self, key: str, entry: dict) -> None:
        """Record ``entry`` under ``key`` (other entries kept), atomically and under a file lock."""
        from filelock import FileLock

        self.path.parent.mkdir(parents=True, exist_ok=True)
        with FileLock(str(self.path) + ".lock"):
            cases = self.load()
            cases[key] = entry
            text = json.dumps({"cases": dict(sorted(cases.items()))}, indent=2, sort_keys=True) + "\n"
            fd, tmp = tempfile.mkstemp(dir=self.path.parent, prefix=f".{self.path.name}.", suffix=".tmp")
            try:
                with os.fdopen(fd, "w", encoding="utf-8") as fh:
                    fh.write(text)
                os.replace(tmp, self.path)
            except BaseException:
                Path(tmp).unlink(missing_ok=True)
                raise
