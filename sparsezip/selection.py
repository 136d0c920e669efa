"""Top-K selection with exact tie-breaking, and index <-> mask helpers.

Ties are broken by index, lower wins, on every device: the ranking is a *stable* descending sort, which keeps
equal scores in their original (ascending index) order. Selected indices are returned in ascending order
(raster order for patches), padded with ``-1`` when images keep different numbers of tokens.
"""

from __future__ import annotations

import torch


def _check_scores(scores: torch.Tensor) -> None:
    if scores.ndim != 2:
        raise ValueError(f"scores must be [B, M], got shape {tuple(scores.shape)}")


def rank_order(scores: torch.Tensor) -> torch.Tensor:
    """Indices sorting each row by descending score, ties by ascending index.

    scores: ``[B, M]`` -> ``[B, M]`` int64 (a permutation per row).
    """
    _check_scores(scores)
    # Stable sort on float32 keeps float16/bfloat16 ties as ties and is exact for them.
    return torch.sort(scores.float(), dim=1, descending=True, stable=True).indices


def topk_mask(scores: torch.Tensor, k: torch.Tensor | int, valid: torch.Tensor | None = None) -> torch.Tensor:
    """Boolean mask of each row's top-``k[b]`` entries (ties: lower index wins).

    scores: ``[B, M]``; k: int or ``[B]`` int (per-image K, each in ``[0, M]``); valid: ``[B, M]`` bool or
    ``None``: only valid entries compete (at most the row's valid count may be asked for) -> ``[B, M]`` bool.
    """
    _check_scores(scores)
    b, m = scores.shape
    k = torch.as_tensor(k, device=scores.device).long().expand(b)
    available = torch.full_like(k, m) if valid is None else valid.sum(dim=1)
    if valid is not None and (valid.dtype != torch.bool or valid.shape != scores.shape):
        raise ValueError(f"valid must be a bool [B, M] = {tuple(scores.shape)} mask, got {valid.dtype} "
                         f"{tuple(valid.shape)}")
    if bool(((k < 0) | (k > available)).any()):
        raise ValueError(f"k must lie in [0, valid entries per row = {available.tolist()}], got {k.tolist()}")
    order = rank_order(scores)
    if valid is not None:  # valid entries first, each group still in rank order (a stable partition)
        order = order.gather(1, torch.sort((~valid).gather(1, order).int(), dim=1, stable=True).indices)
    ranks = torch.empty_like(order).scatter_(1, order, torch.arange(m, device=scores.device).expand(b, m))
    return ranks < k[:, None]


def mask_to_indices(mask: torch.Tensor, width: int | None = None) -> torch.Tensor:
    """Ascending indices of the True entries of each row, ``-1`` padded.

    mask: ``[B, M]`` bool -> ``[B, width]`` int64, ``width`` defaulting to the largest row count.
    """
    if mask.ndim != 2 or mask.dtype != torch.bool:
        raise ValueError(f"mask must be a [B, M] bool tensor, got {mask.dtype} {tuple(mask.shape)}")
    b, m = mask.shape
    counts = mask.sum(dim=1)
    if width is None:
        width = int(counts.max()) if b else 0
    index = torch.arange(m, device=mask.device).expand(b, m)
    # Selected entries sort by their index; unselected ones are pushed behind all of them.
    key = torch.where(mask, index, index + m)
    ordered = torch.sort(key, dim=1).values[:, :width]
    padded = ordered < m
    return torch.where(padded, ordered, torch.full_like(ordered, -1))


def topk_indices(scores: torch.Tensor, k: int) -> torch.Tensor:
    """Ascending indices of each row's top-``k`` scores (ties: lower index wins).

    scores: ``[B, M]``; k in ``[0, M]`` -> ``[B, k]`` int64, every row strictly increasing.
    """
    _check_scores(scores)
    m = scores.shape[1]
    if not 0 <= k <= m:
        raise ValueError(f"k must lie in [0, M={m}], got k={k}")
    return torch.sort(rank_order(scores)[:, :k], dim=1).values


def gather_tokens(x: torch.Tensor, index: torch.Tensor) -> torch.Tensor:
    """Rows of ``x`` at ``index``, zeros where ``index == -1``.

    x: ``[B, N, C]``; index: ``[B, K]`` int64 in ``[-1, N)`` -> ``[B, K, C]`` (dtype of x).
    """
    if x.ndim != 3 or index.ndim != 2 or index.shape[0] != x.shape[0]:
        raise ValueError(f"need x [B, N, C] and index [B, K], got {tuple(x.shape)} and {tuple(index.shape)}")
    valid = index >= 0
    if x.shape[1] == 0:  # nothing to pick from: only padding can be asked for
        return x.new_zeros(index.shape[0], index.shape[1], x.shape[2])
    picked = torch.gather(x, 1, index.clamp_min(0)[:, :, None].expand(-1, -1, x.shape[2]))
    return torch.where(valid[:, :, None], picked, torch.zeros((), dtype=x.dtype, device=x.device))
