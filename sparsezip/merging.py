"""Clustering and merging of the non-dominant tokens, batched over images.

Every function works on a batch of B images with M candidate tokens each and a ``valid`` mask ``[B, M]``
saying which tokens take part (with dynamic K each image has a different number of remaining tokens). The only
Python loops run over a small, fixed number of steps (k-means++ centres, Lloyd iterations, agglomerative
merges), never over images, clusters or tokens.

Three contextual merges live here:

* :func:`kmeans_assign` (in :mod:`sparsezip.kmeans`) + :func:`weighted_merge`: SparseZip's (``specs/methods.md``
  section 1, step 5);
* :func:`visionzip_merge`: VisionZip's (section 2, step 3), including its ``target + mean(members)`` quirk;
* :func:`neighbourhood_merge`: PruMerge's (each kept token plus the attention-weighted sum of its key
  neighbours). ToMe's bipartite matching has its own module, :mod:`sparsezip.matching`;

and SparseVLM's clustering of the tokens it recycles, :func:`density_peak_clusters` (section 3, step 3), whose
groups :func:`weighted_merge` then averages.
"""

from __future__ import annotations

import math

import torch

from sparsezip.kmeans import (  # re-exported: k-means lived here before it got its own module
    _check_points,
    agglomerate,
    centre_distances,
    kmeans_assign,
    kmeans_plus_plus,
    lloyd,
    nearest_centre,
    relabel_by_first_member,
    squared_distances,
)
from sparsezip.scoring import l2_normalize
from sparsezip.selection import mask_to_indices, rank_order, top_n_mask

__all__ = [
    "agglomerate",
    "centre_distances",
    "density_peak_clusters",
    "kmeans_assign",
    "kmeans_plus_plus",
    "lloyd",
    "nearest_centre",
    "neighbourhood_merge",
    "relabel_by_first_member",
    "squared_distances",
    "visionzip_merge",
    "weighted_merge",
]


def weighted_merge(
    x: torch.Tensor, labels: torch.Tensor, num_slots: int, weights: torch.Tensor | None = None
) -> torch.Tensor:
    """Weighted mean of the tokens of each slot: ``out[s] = sum_i w_i x_i / sum_i w_i`` over ``labels == s``.

    x: ``[B, M, C]``; labels: ``[B, M]`` int64 in ``[-1, num_slots)`` (-1 = not merged); weights: ``[B, M]``
    non-negative or None (uniform) -> ``[B, num_slots, C]`` float32. A slot whose members' weights sum to 0
    falls back to the uniform mean; a slot with no members is all zeros. Each output lies in the per-dimension
    [min, max] of its members (up to float32 rounding), and a one-member slot is that member exactly.
    """
    if x.ndim != 3 or tuple(labels.shape) != tuple(x.shape[:2]):
        raise ValueError(f"need x [B, M, C] and labels [B, M], got {tuple(x.shape)} and {tuple(labels.shape)}")
    if weights is not None and tuple(weights.shape) != tuple(labels.shape):
        raise ValueError(f"weights must be [B, M] = {tuple(labels.shape)}, got {tuple(weights.shape)}")
    # A one-hot mixing matrix and one bmm: on CPU as fast as index_add_ once the weighted copy of x that needs
    # is counted, and on CUDA deterministic (index_add_'s atomics sum in a varying order).
    onehot = (labels[:, None, :] == torch.arange(num_slots, device=x.device)[None, :, None]).float()
    uniform = onehot / onehot.sum(-1, keepdim=True).clamp_min(1)
    if weights is None:
        mix = uniform
    else:
        w = onehot * (weights if weights.dtype == torch.float32 else weights.float())[:, None, :]
        total = w.sum(-1, keepdim=True)
        # Normalise the weights first so a one-member slot gets weight exactly 1 (w / w), i.e. is a no-op.
        mix = torch.where(total > 0, w / total.clamp_min(torch.finfo(torch.float32).tiny), uniform)
    return torch.bmm(mix, x if x.dtype == torch.float32 else x.float())


def visionzip_merge(
    x: torch.Tensor, keys: torch.Tensor, valid: torch.Tensor, num_contextual: int
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """VisionZip's contextual tokens from the remaining (``valid``) tokens, as in the official code.

    The remaining tokens of an image, in ascending index order, form a list of length ``n``; with
    ``step = max(1, n // Cx)`` the targets are list positions ``0, step, 2 step, ...`` (the first Cx that
    exist). Every other remaining token joins the target whose L2-normalised key is most cosine-similar (ties:
    first target). Contextual token = ``x[target] + mean(x[members])`` -- VisionZip's quirk: the target is
    *added* to its members' mean, so the result can leave the members' [min, max] (mean of nothing = 0).

    x: ``[B, M, C]``; keys: ``[B, M, Dk]``; valid: ``[B, M]`` bool -> (tokens ``[B, Cx, C]`` float32,
    slot_valid ``[B, Cx]`` bool (slot j exists iff ``j * step < n``), labels ``[B, M]`` int64 slot of every
    remaining token, ``-1`` elsewhere).
    """
    _check_points(x, valid)
    if tuple(keys.shape[:2]) != tuple(x.shape[:2]):
        raise ValueError(f"keys must be [B, M, Dk] with [B, M] = {tuple(x.shape[:2])}, got {tuple(keys.shape)}")
    if num_contextual < 0:
        raise ValueError(f"num_contextual must be >= 0, got {num_contextual}")
    b, m, c = x.shape
    device = x.device
    remaining = mask_to_indices(valid, width=m)  # [B, M] ascending, -1 padded (full width: no host sync)
    n_rem = valid.sum(1)
    if num_contextual == 0 or remaining.shape[1] == 0:
        return (torch.zeros(b, num_contextual, c, device=device),
                torch.zeros(b, num_contextual, dtype=torch.bool, device=device),
                torch.full((b, m), -1, dtype=torch.long, device=device))
    slots = torch.arange(num_contextual, device=device)
    step = (n_rem // num_contextual).clamp_min(1)
    position = slots[None, :] * step[:, None]  # [B, Cx] list positions of the targets
    slot_valid = position < n_rem[:, None]
    target = torch.where(slot_valid, remaining.gather(1, position.clamp_max(remaining.shape[1] - 1)), -1)
    safe_target = target.clamp_min(0)

    unit = l2_normalize(keys)
    target_unit = unit.gather(1, safe_target[:, :, None].expand(-1, -1, unit.shape[2]))
    sim = torch.bmm(unit, target_unit.transpose(1, 2)).masked_fill(~slot_valid[:, None, :], float("-inf"))
    labels = sim.argmax(-1)  # first maximum = first target on ties
    # Each target belongs to its own slot (invalid slots write into a spare column that is dropped).
    own_slot = torch.full((b, m + 1), -1, dtype=torch.long, device=device)
    own_slot.scatter_(1, torch.where(slot_valid, target, m), slots.expand(b, -1).contiguous())
    own_slot = own_slot[:, :m]
    is_target = own_slot >= 0
    members = torch.where(valid & ~is_target, labels, -1)
    mean_members = weighted_merge(x, members, num_contextual)
    target_x = x.float().gather(1, safe_target[:, :, None].expand(-1, -1, c))
    tokens = torch.where(slot_valid[:, :, None], target_x + mean_members, 0.0)
    labels = torch.where(is_target, own_slot, members)
    return tokens, slot_valid, labels


def neighbourhood_merge(
    x: torch.Tensor, keys: torch.Tensor, weights: torch.Tensor, selected: torch.Tensor, num_neighbours: int
) -> torch.Tensor:
    """PruMerge's merge: every selected token absorbs its most key-similar tokens, weighted, as in the authors'
    code: ``out[s] = x[i_s] + sum_{j in nbr(i_s)} w_j x[j]`` -- an *unnormalised* weighted sum added to the
    token, with ``nbr(i)`` the ``min(num_neighbours, M - 1)`` tokens ``j != i`` of highest cosine similarity
    of L2-normalised keys (ties: lower index), selected or not.

    x: ``[B, M, C]``; keys: ``[B, M, D]``; weights: ``[B, M]`` (PruMerge: CLS attention); selected: ``[B, S]``
    int64 token indices, ``-1`` = padding -> ``[B, S, C]`` float32, zeros at padding.
    """
    if x.ndim != 3 or keys.ndim != 3 or tuple(keys.shape[:2]) != tuple(x.shape[:2]):
        raise ValueError(f"need x [B, M, C] and keys [B, M, D], got {tuple(x.shape)} and {tuple(keys.shape)}")
    if tuple(weights.shape) != tuple(x.shape[:2]) or selected.ndim != 2 or selected.shape[0] != x.shape[0]:
        raise ValueError(f"need weights [B, M] and selected [B, S], got {tuple(weights.shape)}, {tuple(selected.shape)}")
    if num_neighbours < 0:
        raise ValueError(f"num_neighbours must be >= 0, got {num_neighbours}")
    m, c = x.shape[1], x.shape[2]
    valid = selected >= 0
    safe = selected.clamp_min(0)
    unit = l2_normalize(keys)
    sim = torch.bmm(unit.gather(1, safe[:, :, None].expand(-1, -1, unit.shape[2])), unit.transpose(1, 2))
    sim = sim.masked_fill(safe[:, :, None] == torch.arange(m, device=x.device), float("-inf"))  # not itself
    neighbours = top_n_mask(sim, min(num_neighbours, m - 1))  # [B, S, M]
    mix = neighbours.float() * weights.float()[:, None, :]
    xf = x.float()
    out = xf.gather(1, safe[:, :, None].expand(-1, -1, c)) + torch.bmm(mix, xf)
    return torch.where(valid[:, :, None], out, 0.0)


def density_peak_clusters(points: torch.Tensor, valid: torch.Tensor, num_clusters: torch.Tensor | int) -> torch.Tensor:
    """Density-peak kNN clustering (DPC-kNN, as in TCFormer / SparseVLM) of each image's valid points.

    points: ``[B, M, D]``; valid: ``[B, M]`` bool; num_clusters: int or ``[B]`` (each in ``[1, n_valid]``, or 0
    for an image without valid points) -> labels ``[B, M]`` int64 in ``[0, num_clusters[b])``, ``-1`` for invalid
    points. Per image: distance ``||x_i - x_j|| / sqrt(D)``; density ``exp(-mean squared distance to the
    k = num_clusters nearest, self included)``; ``delta`` = distance to the nearest denser point (the densest
    point: the largest distance); centres = top ``num_clusters`` by ``density * delta``, a centre's label is its
    rank; every other point joins its nearest centre (ties: the better-ranked one). Ties in density and in
    ``density * delta`` are broken by index (no random noise), so the result is deterministic.
    """
    _check_points(points, valid)
    b, m, d = points.shape
    device = points.device
    k = torch.as_tensor(num_clusters, device=device).long().expand(b)
    n_valid = valid.sum(dim=1)
    if bool(((k > n_valid) | (k < (n_valid > 0).long())).any()):
        raise ValueError(f"num_clusters {k.tolist()} must lie in [1, valid points {n_valid.tolist()}]")
    k_max = int(k.max()) if b else 0
    if k_max == 0:
        return torch.full((b, m), -1, dtype=torch.long, device=device)
    x = points.float()
    dist = torch.cdist(x, x) / math.sqrt(d)  # [B, M, M]
    nearest = torch.topk(dist.masked_fill(~valid[:, None, :], float("inf")), k=k_max, dim=2, largest=False).values
    within = torch.arange(k_max, device=device)[None, None, :] < k[:, None, None]
    density = torch.exp(-torch.where(within, nearest**2, 0.0).sum(dim=2) / k.clamp_min(1)[:, None].float())
    index = torch.arange(m, device=device)
    # j is denser than i: higher density, or equal density and a lower index (a strict total order).
    denser = (density[:, None, :] > density[:, :, None]) | (
        (density[:, None, :] == density[:, :, None]) & (index[None, None, :] < index[None, :, None])
    )
    denser &= valid[:, None, :]
    largest = dist.masked_fill(~(valid[:, :, None] & valid[:, None, :]), float("-inf")).amax(dim=(1, 2))
    delta = torch.where(denser, dist, largest[:, None, None]).min(dim=2).values
    order = rank_order((density * delta).masked_fill(~valid, float("-inf")))  # valid points first
    centres = order[:, :k_max]
    centre_valid = torch.arange(k_max, device=device)[None, :] < k[:, None]
    to_centres = dist.gather(2, centres[:, None, :].expand(b, m, k_max)).masked_fill(~centre_valid[:, None, :],
                                                                                      float("inf"))
    labels = to_centres.argmin(dim=2)
    rank = torch.empty_like(order).scatter_(1, order, torch.arange(m, device=device).expand(b, m))
    labels = torch.where(rank < k[:, None], rank, labels)
    return torch.where(valid, labels, -1)
