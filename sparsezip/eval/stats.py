"""Paired statistics for two runs on the same questions: bootstrap confidence intervals, McNemar, loyalty.

Everything here is numpy over per-question (or per-image) arrays; what a dataset's units and metric are is
decided by the caller (``sparsezip.eval.compare``). References:

- Paired (percentile) bootstrap: Efron & Tibshirani, *An Introduction to the Bootstrap* (1993), ch. 13; the
  same resampled units are used for both runs, so the interval is that of the *difference*. With strata
  (POPE categories, MME subtasks) units are resampled within each stratum, so every resample keeps the
  benchmark's composition (Davison & Hinkley, *Bootstrap Methods and their Application*, 1997, sec. 3.2).
- Exact McNemar test: McNemar (1947), *Psychometrika* 12:153; the exact form is the two-sided binomial test
  of the discordant pairs against p = 1/2 (Fagerland, Lydersen & Laake, *BMC Med. Res. Methodol.* 13:91, 2013).
- Loyalty: EffiVLM-Bench (Wang et al., 2025): the share of questions where the compressed model gives the
  same answer as the uncompressed one; it needs no labels.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np

# Resampled rows held in memory at once: resamples x units per chunk stays below this many counts.
_CHUNK_ELEMENTS = 1 << 22


@dataclass(frozen=True)
class BootstrapResult:
    """Point estimates and the paired percentile interval of ``b - a``.

    Attributes:
        a, b: the metric of each run on all units; delta = b - a.
        ci_low, ci_high: the ``confidence`` percentile interval of the resampled deltas.
        n_resamples, seed, confidence: how it was computed.
    """

    a: float
    b: float
    delta: float
    ci_low: float
    ci_high: float
    n_resamples: int
    seed: int
    confidence: float


def paired_bootstrap(
    stats_a: np.ndarray,
    stats_b: np.ndarray,
    metric: Callable[[np.ndarray], np.ndarray],
    *,
    strata: np.ndarray | None = None,
    n_resamples: int = 10_000,
    seed: int = 0,
    confidence: float = 0.95,
) -> BootstrapResult:
    """Paired bootstrap of a metric that is a function of per-unit sufficient statistics summed over units.

    stats_a, stats_b: ``[n, k]`` per-unit statistics of the two runs on the same n units in the same order
    (e.g. POPE: per question ``[tp, fp, fn, tn]`` indicators; DocVQA: ``[anls, 1]``); metric: maps summed
    statistics ``[..., k]`` to the metric ``[...]`` (vectorised over leading dims); strata: ``[n]`` labels,
    units are resampled within each stratum (``None`` = one stratum). Each resample draws the same units
    for both runs (that is what makes it paired). Deterministic in ``seed`` (numpy ``default_rng``).
    """
    a, b = np.asarray(stats_a, dtype=np.float64), np.asarray(stats_b, dtype=np.float64)
    if a.ndim != 2 or a.shape != b.shape:
        raise ValueError(f"stats_a and stats_b must both be [n, k], got {a.shape} and {b.shape}")
    n, k = a.shape
    if n == 0:
        raise ValueError("paired_bootstrap needs at least one unit, got 0")
    _check_settings(n_resamples, confidence)
    both = np.concatenate([a, b], axis=1)  # [n, 2k]: one draw serves both runs
    sums = _stratified_sums(both, _strata_labels(strata, n), n_resamples, seed)
    resampled = metric(sums[:, k:]) - metric(sums[:, :k])
    total = both.sum(axis=0)
    value_a, value_b = float(metric(total[:k])), float(metric(total[k:]))
    tail = (1 - confidence) / 2
    low, high = np.quantile(resampled, [tail, 1 - tail])
    return BootstrapResult(value_a, value_b, value_b - value_a, float(low), float(high), n_resamples, seed,
                           confidence)


def bootstrap_ci(
    stats: np.ndarray,
    metric: Callable[[np.ndarray], np.ndarray],
    *,
    strata: np.ndarray | None = None,
    n_resamples: int = 10_000,
    seed: int = 0,
    confidence: float = 0.95,
) -> tuple[float, float, float]:
    """``(value, ci_low, ci_high)``: one run's metric and its percentile bootstrap interval.

    stats: ``[n, k]`` per-unit statistics; metric and strata as in :func:`paired_bootstrap`.
    """
    values = np.asarray(stats, dtype=np.float64)
    if values.ndim != 2 or values.shape[0] == 0:
        raise ValueError(f"stats must be [n, k] with n >= 1, got shape {values.shape}")
    _check_settings(n_resamples, confidence)
    sums = _stratified_sums(values, _strata_labels(strata, values.shape[0]), n_resamples, seed)
    tail = (1 - confidence) / 2
    low, high = np.quantile(metric(sums), [tail, 1 - tail])
    return float(metric(values.sum(axis=0))), float(low), float(high)


def _check_settings(n_resamples: int, confidence: float) -> None:
    if n_resamples < 1:
        raise ValueError(f"n_resamples must be >= 1, got {n_resamples}")
    if not 0 < confidence < 1:
        raise ValueError(f"confidence must be in (0, 1), got {confidence}")


def _strata_labels(strata: np.ndarray | None, n: int) -> np.ndarray:
    """Stratum number ``[n]`` (0..S-1) of every unit; one stratum when ``strata`` is None."""
    if strata is None:
        return np.zeros(n, dtype=np.int64)
    if np.shape(strata) != (n,):
        raise ValueError(f"strata must be [n={n}], got shape {np.shape(strata)}")
    return np.unique(np.asarray(strata), return_inverse=True)[1].reshape(n)


def _stratified_sums(values: np.ndarray, labels: np.ndarray, n_resamples: int, seed: int) -> np.ndarray:
    """``[n_resamples, k]`` sums of ``values [n, k]`` over units resampled with replacement within each stratum."""
    rng = np.random.default_rng(seed)
    sums = np.zeros((n_resamples, values.shape[1]))
    for stratum in range(int(labels.max()) + 1):
        sums += _resampled_sums(values[labels == stratum], n_resamples, rng)
    return sums


def _resampled_sums(rows: np.ndarray, n_resamples: int, rng: np.random.Generator) -> np.ndarray:
    """``[n_resamples, k]`` sums of ``rows [m, k]`` over m units drawn with replacement, per resample.

    Draws are turned into per-unit counts (one ``bincount``) and summed with one matrix product per chunk.
    """
    m = rows.shape[0]
    out = np.empty((n_resamples, rows.shape[1]))
    chunk = max(1, _CHUNK_ELEMENTS // m)
    for start in range(0, n_resamples, chunk):
        size = min(chunk, n_resamples - start)
        draws = rng.integers(0, m, size=(size, m))
        flat = (np.arange(size)[:, None] * m + draws).ravel()
        counts = np.bincount(flat, minlength=size * m).reshape(size, m)
        out[start:start + size] = counts @ rows
    return out


@dataclass(frozen=True)
class McNemarResult:
    """Exact McNemar test on paired correctness.

    Attributes:
        p_value: two-sided exact p-value (1.0 when there is no discordant pair).
        a_only: units run A got right and run B got wrong; b_only: the reverse.
        n: units compared.
    """

    p_value: float
    a_only: int
    b_only: int
    n: int

    @property
    def discordant(self) -> int:
        """Units on which the two runs disagree in correctness."""
        return self.a_only + self.b_only


def mcnemar_exact(correct_a: Sequence[bool] | np.ndarray, correct_b: Sequence[bool] | np.ndarray) -> McNemarResult:
    """Exact McNemar test: ``binomtest(min(a_only, b_only), a_only + b_only, 0.5)``, two-sided (scipy).

    correct_a, correct_b: ``[n]`` bool, per-unit correctness of the two runs on the same units.
    """
    from scipy.stats import binomtest

    a, b = np.asarray(correct_a, dtype=bool), np.asarray(correct_b, dtype=bool)
    if a.ndim != 1 or a.shape != b.shape:
        raise ValueError(f"correct_a and correct_b must both be [n], got {a.shape} and {b.shape}")
    a_only, b_only = int((a & ~b).sum()), int((~a & b).sum())
    discordant = a_only + b_only
    p = 1.0 if discordant == 0 else float(binomtest(min(a_only, b_only), discordant, 0.5).pvalue)
    return McNemarResult(min(p, 1.0), a_only, b_only, int(a.size))


def loyalty(
    answers_a: Sequence[str], answers_b: Sequence[str], correct_a: Sequence[bool] | None = None,
    correct_b: Sequence[bool] | None = None,
) -> tuple[float, float | None]:
    """``(loyalty, retained_correct)``: the share of units where B's parsed answer equals A's, and the share of
    A's correct units that B also gets right (``None`` without correctness, or when A has none right).

    answers_a, answers_b: ``[n]`` parsed (normalised) answers of the two runs on the same units.
    """
    if len(answers_a) != len(answers_b) or not answers_a:
        raise ValueError(f"need the same non-zero number of answers, got {len(answers_a)} and {len(answers_b)}")
    same = float(np.mean([x == y for x, y in zip(answers_a, answers_b, strict=True)]))
    if correct_a is None or correct_b is None:
        return same, None
    a, b = np.asarray(correct_a, dtype=bool), np.asarray(correct_b, dtype=bool)
    if a.shape != (len(answers_a),) or b.shape != a.shape:
        raise ValueError(f"correctness must be [n={len(answers_a)}], got {a.shape} and {b.shape}")
    return same, (float((a & b).sum() / a.sum()) if a.any() else None)
