"""ToMe's bipartite soft matching (Bolya et al., ICLR 2023), batched, repeated until a target token count.

One round on a sequence of T tokens: split it alternately into A (even positions) and B (odd positions);
every A token proposes its most cosine-similar B token; the ``r`` A tokens with the most similar proposals are
merged into their B token (size-weighted average), ``r = min(T - target, (T - prefix) // 2)``. The protected
prefix (CLS) never merges: its rows and columns are excluded from matching. The new sequence is
``[prefix tokens, unmerged A tokens, B tokens]``, each part in its old order -- ToMe's own output order for
up to two protected tokens (``class_token``, ``distill_token``).

Rounds repeat (each can remove at most half of the unprotected tokens) until ``target`` tokens remain; the
Python loop runs over the rounds (``~log2(N / target)``), never over tokens or images. Merged tokens'
matching metric is the size-weighted average of their members' metric, exactly as ``merge_wavg`` carries it.
"""

from __future__ import annotations

import torch

from sparsezip.scoring import l2_normalize


def _round(
    metric: torch.Tensor, size: torch.Tensor, r: int, prefix: int
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """One matching round: (new metric ``[B, T - r, D]``, new size ``[B, T - r]``, new position ``[B, T]`` of
    every current token)."""
    b, t, d = metric.shape
    device = metric.device
    unit = l2_normalize(metric)
    position = torch.arange(t, device=device)
    pos_a, pos_b = position[::2], position[1::2]
    scores = torch.bmm(unit[:, ::2], unit[:, 1::2].transpose(1, 2))  # [B, |A|, |B|]
    scores = scores.masked_fill((pos_a < prefix)[None, :, None] | (pos_b < prefix)[None, None, :], float("-inf"))
    best, partner = scores.max(dim=-1)  # first maximum on ties
    order = torch.sort(best, dim=1, descending=True, stable=True).indices  # ties: lower A index merges first
    merged_a = torch.zeros(b, len(pos_a), dtype=torch.bool, device=device).scatter_(1, order[:, :r], True)

    # Survivors' rank in [prefix, unmerged A, B] order; a merged A token takes its B partner's position.
    key_a = torch.where(pos_a < prefix, pos_a, prefix + pos_a).expand(b, -1)
    key_b = torch.where(pos_b < prefix, pos_b, prefix + t + pos_b).expand(b, -1)
    key = torch.empty(b, t, dtype=torch.long, device=device)
    key[:, ::2] = torch.where(merged_a, 2 * t + prefix + 1, key_a)
    key[:, 1::2] = key_b
    rank = torch.empty_like(key).scatter_(1, torch.sort(key, dim=1).indices, position.expand(b, t).contiguous())
    new_position = rank.clone()
    new_position[:, ::2] = torch.where(merged_a, rank[:, 1::2].gather(1, partner), rank[:, ::2])

    weighted = metric * size[:, :, None]
    new_size = size.new_zeros(b, t - r).scatter_add_(1, new_position, size)
    new_sum = metric.new_zeros(b, t - r, d).scatter_add_(1, new_position[:, :, None].expand(-1, -1, d), weighted)
    return new_sum / new_size[:, :, None], new_size, new_position


def bipartite_merge_labels(metric: torch.Tensor, target: int, prefix: int) -> torch.Tensor:
    """Repeat ToMe's bipartite soft matching until ``target`` tokens remain; return who went where.

    metric: ``[B, N, D]`` the matching metric (ToMe: the layer's keys averaged over heads); prefix: protected
    leading tokens, 0, 1 (CLS) or 2 (CLS + distillation token, ToMe's maximum); target in ``[prefix + 1, N]``,
    the tokens left including the protected ones ->
    ``[B, N]`` int64 final position of every source token (``[0, target)``; the prefix keeps positions
    ``0 .. prefix - 1``). The merged token at position ``s`` is the size-weighted, i.e. plain, mean of the
    source tokens labelled ``s``.
    """
    if metric.ndim != 3:
        raise ValueError(f"metric must be [B, N, D], got shape {tuple(metric.shape)}")
    b, n, _ = metric.shape
    if prefix not in (0, 1, 2) or prefix >= n:
        raise ValueError(f"prefix must be 0, 1 or 2 and below N={n} (ToMe protects at most two), got {prefix}")
    if not prefix + 1 <= target <= n:
        raise ValueError(f"target must lie in [prefix + 1={prefix + 1}, N={n}], got target={target}")
    current = metric.float()
    size = torch.ones(b, n, device=metric.device)
    labels = torch.arange(n, device=metric.device).expand(b, n)
    while current.shape[1] > target:
        r = min(current.shape[1] - target, (current.shape[1] - prefix) // 2)
        current, size, new_position = _round(current, size, r, prefix)
        labels = new_position.gather(1, labels)
    return labels
