"""Budget checks and splits shared by every method: a budget is a positive token count that fits the patches.

SparseZip's dynamic K (and its calibration) lives with the method, in ``sparsezip.methods.sparsezip.dynamic_k``.
"""

from __future__ import annotations

import torch


def check_budget_positive(method: str, budget: int) -> None:
    """Reject a budget below 1 (or a non-integer one) with a message naming the method and the value."""
    if isinstance(budget, bool) or not isinstance(budget, int) or budget < 1:
        raise ValueError(f"{method}: budget must be an integer >= 1, got budget={budget!r}")


def check_budget_fits(method: str, budget: int, num_patches: int) -> None:
    """Reject a budget larger than the patches available (compression never adds tokens)."""
    if budget > num_patches:
        raise ValueError(f"{method}: budget={budget} exceeds the {num_patches} patches available")


def split_budget(
    budget: int, prefix_tokens: int, dominant_weight: float, contextual_weight: float
) -> tuple[int, int]:
    """Split ``budget - prefix_tokens`` visual tokens into (dominant, contextual) in the given ratio.

    ``prefix_tokens`` are the protected tokens the output keeps verbatim (CLIP's CLS: 1; none: 0).
    ``dominant = round((budget - prefix) * wd / (wd + wc))`` (Python rounding: half to even), contextual = the
    rest, so ``prefix + dominant + contextual == budget`` exactly. E.g. 64 with CLS at 54:32 -> (40, 23).
    """
    if budget < prefix_tokens:
        raise ValueError(f"budget={budget} is smaller than the {prefix_tokens} prefix (CLS) token(s) it must include")
    if dominant_weight < 0 or contextual_weight < 0 or dominant_weight + contextual_weight <= 0:
        raise ValueError(f"invalid split ratio {dominant_weight}:{contextual_weight}")
    rest = budget - prefix_tokens
    dominant = round(rest * dominant_weight / (dominant_weight + contextual_weight))
    return dominant, rest - dominant


def fixed_k(batch: int, k: int, num_patches: int, device: torch.device | str = "cpu") -> torch.Tensor:
    """``[batch]`` int64 filled with ``min(k, num_patches)`` (a model with few patches keeps them all)."""
    if k < 0:
        raise ValueError(f"k must be >= 0, got {k}")
    return torch.full((batch,), min(k, num_patches), dtype=torch.long, device=device)
