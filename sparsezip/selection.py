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
    values = scores if scores.dtype == torch.float32 else scores.float()
    return torch.sort(values, dim=1, descending=True, stable=True).indices


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
    if valid is None:
        return rank_mask(scores, k)
    order = rank_order(scores)
    # Valid entries first, each group still in rank order (a stable partition).
    order = order.gather(1, torch.sort((~valid).gather(1, order).int(), dim=1, stable=True).indices)
    ranks = torch.empty_like(order).scatter_(1, order, torch.arange(m, device=scores.device).expand(b, m))
    return ranks < k[:, None]


def rank_mask(scores: torch.Tensor, k: torch.Tensor | int) -> torch.Tensor:
    """:func:`topk_mask` without its checks, so without a host sync: the caller guarantees ``0 <= k[b] <= M``.

    scores: ``[B, M]``; k: int or ``[B]`` int64 on scores' device -> ``[B, M]`` bool, each row's top-``k[b]``
    (ties: lower index wins).
    """
    b, m = scores.shape
    order = rank_order(scores)
    if isinstance(k, int):  # the first k of the ranking, no per-row comparison needed
        return torch.zeros(b, m, dtype=torch.bool, device=scores.device).scatter_(1, order[:, :k], True)
    ranks = torch.empty_like(order).scatter_(1, order, torch.arange(m, device=scores.device).expand(b, m))
    return ranks < k[:, None]


def top_n_mask(scores: torch.Tensor, n: int) -> torch.Tensor:
    """Boolean mask of the ``n`` largest entries along the last dim, ties at the cut going to lower indices.

    Same set as the first ``n`` of a stable descending sort (:func:`rank_order`), but via ``torch.topk`` for
    the cut value plus elementwise passes, which is much cheaper for many short selections at once.
    scores: ``[..., M]`` (no NaN), n in ``[0, M]`` -> ``[..., M]`` bool with exactly ``n`` True per row.
    """
    m = scores.shape[-1]
    if not 0 <= n <= m:
        raise ValueError(f"n must lie in [0, M={m}], got n={n}")
    if n == 0:
        return torch.zeros(scores.shape, dtype=torch.bool, device=scores.device)
    cut = torch.topk(scores, n, dim=-1).values[..., -1:]  # the n-th largest value
    above = scores > cut
    at_cut = scores == cut
    room = n - above.sum(-1, keepdim=True)  # how many of the tied entries still fit
    return above | (at_cut & (at_cut.cumsum(-1) <= room))


def mask_to_indices(mask: torch.Tensor, width: int | None = None) -> torch.Tensor:
    """Ascending indices of the True entries of each row, ``-1`` padded.

    mask: ``[B, M]`` bool -> ``[B, width]`` int64, ``width`` defaulting to the largest row count.
    """
    if mask.ndim != 2 or mask.dtype != torch.bool:
        raise ValueError(f"mask must be a [B, M] bool tensor, got {mask.dtype} {tuple(mask.shape)}")
    b, m = mask.shape
    if width is None:
        width = int(mask.sum(dim=1).max()) if b else 0
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


def max_min_greedy(distance: torch.Tensor, k: int) -> torch.Tensor:
    """Greedy max-min diverse subset (DivPrune's selection), in pick order.

    The first pick is the token whose nearest token is farthest away: the argmax over columns ``j`` of the
    second-smallest entry of ``distance[:, :, j]`` (the smallest is its distance to itself). Each further pick
    maximises the distance to the picked set, ``min_{s picked} distance[s, j]``, over the tokens not picked
    yet. Ties: lower index. distance: ``[B, M, M]`` (e.g. ``1 - cosine``), k in ``[0, M]`` -> ``[B, k]`` int64,
    distinct per row. Python loops run over the k picks only.
    """
    if distance.ndim != 3 or distance.shape[1] != distance.shape[2]:
        raise ValueError(f"distance must be [B, M, M], got shape {tuple(distance.shape)}")
    b, m, _ = distance.shape
    if not 0 <= k <= m:
        raise ValueError(f"k must lie in [0, M={m}], got k={k}")
    d = distance if distance.dtype == torch.float32 else distance.float()
    if k == 0:
        return torch.empty(b, 0, dtype=torch.long, device=d.device)
    images = torch.arange(b, device=d.device)[:, None]  # [B, 1]
    # score / nearest: [B, 1, M]; four ops per pick (argmax, one row, minimum, the picked one to -inf).
    score = (torch.topk(d, 2, dim=1, largest=False).values[:, 1] if m > 1 else d.new_zeros(b, m))[:, None, :]
    nearest = torch.full((b, 1, m), float("inf"), device=d.device)
    zero, minus_inf = torch.zeros_like(images), torch.full((), float("-inf"), device=d.device)
    picks = []
    for _ in range(k):
        pick = torch.argmax(score, dim=2)  # [B, 1]; first maximum: lower index on ties
        picks.append(pick)
        torch.minimum(nearest, d[images, pick], out=nearest)
        # A picked token never comes back (its own distance, ~0, would otherwise keep it low but not -inf).
        nearest.index_put_((images, zero, pick), minus_inf)
        score = nearest
    return torch.cat(picks, dim=1)


def dpp_greedy_map(kernel: torch.Tensor, k: int, rank_tol: float = 1e-5) -> torch.Tensor:
    """Greedy MAP inference of a determinantal point process (Chen et al. 2018's fast incremental Cholesky).

    Each step picks the token with the largest conditional gain ``d_j^2`` (initially ``L_jj``), then updates
    every gain by the new Cholesky row ``e = (L_j - c_j^T C) / sqrt(d_j^2)``. Ties: lower index.

    Gains at or below ``rank_tol`` times the image's largest ``L_jj`` count as 0: they are float32 rounding
    noise once the kernel's rank is exhausted (more picks than its rank), where exact arithmetic gives exactly
    0. Such picks skip the update (instead of dividing by ~0 or producing NaN) and go by lower index, so the
    result does not hinge on rounding (e.g. on the batch an image is in). A token whose initial gain ``L_jj``
    is already that small (CDPruner: relevance below ``sqrt(rank_tol)`` of the top one) counts as 0 too, i.e.
    comes after every token with a real gain. kernel: ``[B, M, M]`` symmetric PSD,
    k in ``[0, M]`` -> ``[B, k]`` int64 picks in order, distinct per row. Python loops run over the k picks.
    """
    if kernel.ndim != 3 or kernel.shape[1] != kernel.shape[2]:
        raise ValueError(f"kernel must be [B, M, M], got shape {tuple(kernel.shape)}")
    b, m, _ = kernel.shape
    if not 0 <= k <= m:
        raise ValueError(f"k must lie in [0, M={m}], got k={k}")
    if rank_tol < 0:
        raise ValueError(f"rank_tol must be >= 0, got rank_tol={rank_tol}")
    lk = kernel if kernel.dtype == torch.float32 else kernel.float()
    if k == 0:
        return torch.empty(b, 0, dtype=torch.long, device=lk.device)
    images = torch.arange(b, device=lk.device)[:, None]  # [B, 1]
    chol = lk.new_zeros(b, k, m)  # row i: the i-th pick's Cholesky row over all tokens (later rows still 0)
    gain = torch.diagonal(lk, dim1=1, dim2=2)[:, None, :].clone()  # [B, 1, M]
    floor = rank_tol * gain.amax(dim=2, keepdim=True).clamp_min(0)  # [B, 1, 1]
    picked = torch.zeros(b, 1, m, dtype=torch.bool, device=lk.device)
    zero, true = torch.zeros_like(images), torch.ones((), dtype=torch.bool, device=lk.device)
    picks = []
    for i in range(k):
        # Noise-level gains -> exactly 0, so they tie and go by index; picked tokens at -inf.
        gain = torch.where(gain > floor, gain, 0.0).masked_fill_(picked, float("-inf"))
        pick = torch.argmax(gain, dim=2)  # [B, 1]
        picks.append(pick)
        d2 = gain.gather(2, pick[:, :, None])  # [B, 1, 1]
        # [B, 1, k] @ [B, k, M]: the new pick's Cholesky coefficients (zero from row i on) times every row.
        residual = lk[images, pick] - torch.bmm(chol[images, :, pick], chol)  # [B, 1, M]
        positive = d2 > 0
        e = torch.where(positive, residual / torch.where(positive, d2, 1.0).sqrt(), 0.0)
        chol[:, i] = e[:, 0]
        gain = gain - e * e
        picked.index_put_((images, zero, pick), true)
    return torch.cat(picks, dim=1)


def remove_duplicates(similarity: torch.Tensor, candidates: torch.Tensor, keep: int, step: int = 8) -> torch.Tensor:
    """VisPruner's duplicate removal: drop up to ``step`` near-duplicates per round until ``keep`` remain.

    Each round splits the current candidate list alternately into A (even positions) and B (odd positions),
    scores every A token by its highest similarity to any B token, drops the ``min(step, R - keep)``
    highest-scoring A tokens and continues with ``[remaining A in descending score order, B]``. Ties: the
    earlier list position is dropped first. similarity: ``[B, M, M]``; candidates: ``[B, R]`` int64 distinct
    token indices in their initial order (VisPruner: descending attention); keep in ``[0, R]`` ->
    ``[B, keep]`` int64, the survivors in the final list order. Python loops run over the rounds
    (``ceil((R - keep) / step)`` when B is never exhausted), never over tokens.
    """
    if similarity.ndim != 3 or similarity.shape[1] != similarity.shape[2]:
        raise ValueError(f"similarity must be [B, M, M], got shape {tuple(similarity.shape)}")
    if candidates.ndim != 2 or candidates.shape[0] != similarity.shape[0]:
        raise ValueError(f"candidates must be [B, R], got shape {tuple(candidates.shape)}")
    if not 0 <= keep <= candidates.shape[1]:
        raise ValueError(f"keep must lie in [0, R={candidates.shape[1]}], got keep={keep}")
    if step < 1:
        raise ValueError(f"step must be >= 1, got step={step}")
    b, m, _ = similarity.shape
    # Flattened rows and an additive -inf mask over non-B columns: several times faster on CPU than a gather
    # (the rounds dominate VisPruner's cost).
    sim = similarity if similarity.dtype == torch.float32 else similarity.float()
    rows_flat = sim.reshape(b * m, m)
    row_offset = torch.arange(b, device=similarity.device)[:, None] * m
    minus_inf = torch.full((b, 1, m), float("-inf"), device=similarity.device)
    residual = candidates
    while residual.shape[1] > keep:
        drop = min(step, residual.shape[1] - keep)
        set_a, set_b = residual[:, ::2], residual[:, 1::2]
        rows = rows_flat[set_a + row_offset]  # [B, |A|, M]
        only_b = minus_inf.scatter(2, set_b[:, None, :], 0.0)  # [B, 1, M]
        best = (rows + only_b).amax(dim=-1)  # [B, |A|]; -inf when B is empty
        survivors = torch.sort(best, dim=1, descending=True, stable=True).indices[:, drop:]
        residual = torch.cat([set_a.gather(1, survivors), set_b], dim=1)
    return residual
