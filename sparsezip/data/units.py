"""What a dataset's paired comparison (``sparsezip compare``, ``sparsezip/eval/compare.py``) sees of one run:
its headline metric as a function of per-unit sufficient statistics, so a bootstrap can recompute the real
metric on every resample. Each loader module builds its own (``DatasetSpec.paired_units``)."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class Units:
    """One run's records as the statistics see them.

    Attributes:
        stats: ``[U, k]`` per-unit sufficient statistics; strata: ``[U]``; metric: summed ``[..., k]`` ->
            metric ``[...]``; metric_name: its name.
        answers: ``[Q]`` parsed answers per question; correct: ``[Q]`` bool; categories: ``[Q]`` (POPE
            category, MME subtask, or ``""``).
    """

    stats: np.ndarray
    strata: np.ndarray
    metric: Callable[[np.ndarray], np.ndarray]
    metric_name: str
    answers: list[str]
    correct: np.ndarray
    categories: list[str]


def f1_from_counts(tp: np.ndarray, fp: np.ndarray, fn: np.ndarray) -> np.ndarray:
    """F1 as ``sparsezip.metrics.pope_metrics`` computes it (precision and recall first, 0 where undefined)."""
    precision = np.divide(tp, tp + fp, out=np.zeros_like(tp, dtype=np.float64), where=(tp + fp) > 0)
    recall = np.divide(tp, tp + fn, out=np.zeros_like(tp, dtype=np.float64), where=(tp + fn) > 0)
    total = precision + recall
    return np.divide(2 * precision * recall, total, out=np.zeros_like(total), where=total > 0)
