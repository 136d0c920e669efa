"""SparseZip's dynamic K (``specs/methods.md`` section 1, step 3) and its calibration::

    K = clamp(round(scale * ln(Var(s) + eps) + c), k_min, k_max)

with ``Var`` the population variance of the final score over an image's patches. With z-scored terms,
``Var(s) <= (sum of weights)^2``, so the published constants (``scale = 1``, ``c = 12``) pin K at a bound;
:func:`calibrate_dynamic_k` picks ``c`` (and optionally ``scale``) from a sample of images so that the mean K
hits a target with real spread.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch


def score_log_variance(scores: torch.Tensor, eps: float) -> torch.Tensor:
    """``ln(Var(s) + eps)`` per image, population variance over patches.

    scores: ``[B, M]`` -> ``[B]`` float32.
    """
    if scores.ndim != 2:
        raise ValueError(f"scores must be [B, M], got shape {tuple(scores.shape)}")
    if eps <= 0:
        raise ValueError(f"eps must be > 0, got {eps}")
    return torch.log(scores.float().var(dim=1, correction=0) + eps)


def dynamic_k(
    scores: torch.Tensor, *, k_min: int, k_max: int, c: float, scale: float = 1.0, eps: float = 1e-6
) -> torch.Tensor:
    """Per-image dynamic K from the score variance, clamped to ``[k_min, k_max]`` and to M.

    scores: ``[B, M]`` final hybrid scores -> ``[B]`` int64. Monotone non-decreasing in ``Var(s)`` when
    ``scale >= 0``. Rounding is half-to-even (``torch.round``).
    """
    if not 0 <= k_min <= k_max:
        raise ValueError(f"need 0 <= k_min <= k_max, got k_min={k_min}, k_max={k_max}")
    k = torch.round(scale * score_log_variance(scores, eps) + c)
    return k.clamp(k_min, k_max).clamp_max(scores.shape[1]).long()


@dataclass(frozen=True)
class DynamicKCalibration:
    """Result of :func:`calibrate_dynamic_k`: the constants to use and the K distribution they give.

    ``mean_k`` may miss ``target_mean_k`` by up to a fraction of a token: K is an integer per image, so the
    mean over S images moves in steps. ``std_k`` / ``min_k`` / ``max_k`` are the resulting spread on the
    calibration sample; ``clamped_fraction`` is the share of images whose K hit k_min or k_max.
    """

    c: float
    scale: float
    target_mean_k: float
    mean_k: float
    std_k: float
    min_k: int
    max_k: int
    clamped_fraction: float
    num_images: int

    def as_config(self) -> dict:
        """The ``dynk`` overrides for a SparseZip config: ``{"c": ..., "scale": ...}``."""
        return {"c": self.c, "scale": self.scale}


def calibrate_dynamic_k(
    log_variance: torch.Tensor,
    target_mean_k: float,
    *,
    k_min: int,
    k_max: int,
    scale: float | None = None,
    spread: float | None = None,
) -> DynamicKCalibration:
    """Choose ``dynk.c`` (and, when ``scale`` is None, ``dynk.scale``) so the mean K hits a target.

    log_variance: ``[S]`` ``ln(Var(s) + eps)`` of S calibration images (:func:`score_log_variance`).

    ``scale``: kept as given when not None (e.g. 1.0, the published formula). When None it is chosen so the
    unclamped K has standard deviation ``spread`` over the sample (default ``(k_max - k_min) / 4``, i.e.
    +-2 std spans the allowed range); if the sample has no variance at all, ``scale`` falls back to 1.
    ``c`` is then found by bisection: the mean of the clamped, rounded K is monotone in ``c``, and the ``c``
    whose mean is closest to the target wins (the smaller one on a tie), moved to the middle of the interval
    of ``c`` values that give every calibration image the same K (robust to float noise).

    Raises:
        ValueError: target outside ``[k_min, k_max]``, empty or non-finite sample.
    """
    # float32, exactly as dynamic_k evaluates the formula, so calibrated K values are the ones it will give.
    lv = log_variance.detach().float().flatten().cpu()
    if lv.numel() == 0:
        raise ValueError("calibrate_dynamic_k needs at least one image, got an empty sample")
    if not torch.isfinite(lv).all():
        raise ValueError("log_variance contains non-finite values")
    if not 0 <= k_min <= k_max:
        raise ValueError(f"need 0 <= k_min <= k_max, got k_min={k_min}, k_max={k_max}")
    if not k_min <= target_mean_k <= k_max:
        raise ValueError(f"target_mean_k={target_mean_k} is outside [k_min={k_min}, k_max={k_max}]")
    if scale is None:
        spread = (k_max - k_min) / 4 if spread is None else spread
        if spread < 0:
            raise ValueError(f"spread must be >= 0, got {spread}")
        std = float(lv.std(correction=0))
        scale = spread / std if std > 0 and spread > 0 else 1.0

    def ks(c: float) -> torch.Tensor:
        return torch.round(scale * lv + c).clamp(k_min, k_max)

    # Bracket c so that every image is clamped at k_min (lo) and at k_max (hi).
    lo = k_min - 1.0 - float((scale * lv).max())
    hi = k_max + 1.0 - float((scale * lv).min())
    for _ in range(200):  # bisection on the step function mean_k(c); 200 halvings exhaust float64
        mid = (lo + hi) / 2
        if mid in (lo, hi):
            break
        if float(ks(mid).double().mean()) < target_mean_k:
            lo = mid
        else:
            hi = mid
    c = min((lo, hi), key=lambda v: abs(float(ks(v).double().mean()) - target_mean_k))
    c = _plateau_centre(scale * lv, ks(c), c, k_min, k_max)
    k = ks(c)
    return DynamicKCalibration(
        c=c,
        scale=float(scale),
        target_mean_k=float(target_mean_k),
        mean_k=float(k.double().mean()),
        std_k=float(k.double().std(correction=0)),
        min_k=int(k.min()),
        max_k=int(k.max()),
        clamped_fraction=float(((k == k_min) | (k == k_max)).double().mean()) if k_min < k_max else 1.0,
        num_images=int(lv.numel()),
    )


def _plateau_centre(base: torch.Tensor, k: torch.Tensor, c: float, k_min: int, k_max: int) -> float:
    """The middle of the interval of ``c`` giving every image the same ``k`` (``k_i = round(base_i + c)``).

    Bisection stops at the edge of that interval, where float noise (e.g. the log-variance computed on
    another device) would flip an image's K; the middle is as far from every flip as possible. Images clamped
    at a bound only constrain one side; with no constraint on a side, half a token of margin is used.
    """
    lower = torch.where(k > k_min, k - 0.5 - base, float("-inf")).max()
    upper = torch.where(k < k_max, k + 0.5 - base, float("inf")).min()
    lo, hi = float(lower), float(upper)
    if math.isfinite(lo) and math.isfinite(hi):
        return (lo + hi) / 2
    if math.isfinite(lo):
        return lo + 0.5
    if math.isfinite(hi):
        return hi - 0.5
    return c
