"""Clustering and merging of the non-dominant tokens, batched over images.

Every function works on a batch of B images with M candidate tokens each and a ``valid`` mask ``[B, M]``
saying which tokens take part (with dynamic K each image has a different number of remaining tokens). The only
Python loops run over a small, fixed number of steps (k-means++ centres, Lloyd iterations, agglomerative
merges), never over images, clusters or tokens.

Three contextual merges live here:

* :func:`kmeans_assign` + :func:`weighted_merge`: SparseZip's (``specs/methods.md`` section 1, step 5);
* :func:`visionzip_merge`: VisionZip's (section 2, step 3), including its ``target + mean(members)`` quirk;
* :func:`neighbourhood_merge`: PruMerge's (each kept token plus the attention-weighted sum of its key
  neighbours). ToMe's bipartite matching has its own module, :mod:`sparsezip.matching`;

and SparseVLM's clustering of the tokens it recycles, :func:`density_peak_clusters` (section 3, step 3), whose
groups :func:`weighted_merge` then averages.
"""

from __future__ import annotations

import math

import torch

from sparsezip.scoring import l2_normalize
from sparsezip.selection import mask_to_indices, rank_order, top_n_mask, topk_mask


def _check_points(points: torch.Tensor, valid: torch.Tensor) -> None:
    if points.ndim != 3:
        raise ValueError(f"points must be [B, M, D], got shape {tuple(points.shape)}")
    if valid.dtype != torch.bool or tuple(valid.shape) != tuple(points.shape[:2]):
        raise ValueError(
            f"valid must be a bool [B, M] = {tuple(points.shape[:2])} mask, got {valid.dtype} {tuple(valid.shape)}"
        )


def squared_distances(points: torch.Tensor, centres: torch.Tensor) -> torch.Tensor:
    """Squared Euclidean distances, float32, clamped at 0 against cancellation.

    points: ``[B, M, D]``; centres: ``[B, K, D]`` -> ``[B, M, K]``.
    """
    p, c = points.float(), centres.float()
    d2 = (p * p).sum(-1)[:, :, None] - 2 * torch.bmm(p, c.transpose(1, 2)) + (c * c).sum(-1)[:, None, :]
    return d2.clamp_min(0)


def nearest_centre(
    points: torch.Tensor, centres: torch.Tensor, centre_valid: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """Index of and squared distance to each point's nearest valid centre (ties: lower centre index).

    points: ``[B, M, D]``; centres: ``[B, K, D]``; centre_valid: ``[B, K]`` bool ->
    (``[B, M]`` int64, ``[B, M]`` float32). Rows without any valid centre get index 0 and distance inf.
    """
    d2 = squared_distances(points, centres).masked_fill(~centre_valid[:, None, :], float("inf"))
    dist, index = d2.min(dim=-1)
    return index, dist


def kmeans_plus_plus(
    points: torch.Tensor, valid: torch.Tensor, num_centres: torch.Tensor, generator: torch.Generator
) -> torch.Tensor:
    """k-means++ seeding: first centre uniform, each next one with probability proportional to D(x)^2.

    points: ``[B, M, D]``; valid: ``[B, M]`` bool; num_centres: ``[B]`` int64 (each <= that row's valid count)
    -> ``[B, max(num_centres)]`` int64 point indices, ``-1`` padded; the chosen indices of a row are distinct.

    Determinism and batch independence: ``M`` uniforms are drawn once from ``generator`` (a CPU generator, so
    CPU and CUDA draw the same numbers) and draw ``j`` uses the ``j``-th uniform for every image; an image's
    centres therefore depend only on its own points and the seed, not on what else is in the batch. Once every
    remaining point coincides with a centre (all D^2 = 0), the next centre is drawn uniformly among the points
    not chosen yet.
    """
    _check_points(points, valid)
    b, m, _ = points.shape
    device = points.device
    if bool((num_centres > valid.sum(1)).any()):
        raise ValueError(f"num_centres {num_centres.tolist()} exceed the valid points {valid.sum(1).tolist()}")
    width = int(num_centres.max()) if b else 0
    uniforms = torch.rand(m, generator=generator, dtype=torch.float64).to(device)
    chosen_idx = torch.full((b, width), -1, dtype=torch.long, device=device)
    available = valid.clone()
    nearest_d2 = torch.full((b, m), float("inf"), device=device)
    p = points.float()
    sq_norm = (p * p).sum(-1)  # [B, M], for ||x - c||^2 = ||x||^2 - 2 x.c + ||c||^2
    rows = torch.arange(b, device=device)
    for j in range(width):
        active = j < num_centres
        fallback = available.double()
        # Rows that are done (or never start) get zero weights; their pick is discarded below.
        weights = torch.where(available & active[:, None], nearest_d2.double(), 0.0) if j else fallback
        weights = torch.where((weights.sum(1) > 0)[:, None], weights, fallback)
        cumulative = weights.cumsum(1)
        # Inverse-CDF sampling; zero-weight points are never hit (their cumulative value repeats the previous).
        threshold = uniforms[j] * cumulative[:, -1:]
        pick = torch.searchsorted(cumulative, threshold, right=True).squeeze(1).clamp_max(m - 1)
        pick = torch.where(active, pick, -1)
        chosen_idx[:, j] = pick
        safe = pick.clamp_min(0)
        available[rows, safe] &= ~active
        centre = p[rows, safe]  # [B, D]
        d2 = (sq_norm - 2 * torch.einsum("bmd,bd->bm", p, centre) + sq_norm[rows, safe][:, None]).clamp_min(0)
        nearest_d2 = torch.where(active[:, None], torch.minimum(nearest_d2, d2), nearest_d2)
    return chosen_idx


def lloyd(
    points: torch.Tensor, valid: torch.Tensor, centres: torch.Tensor, centre_valid: torch.Tensor, iters: int
) -> torch.Tensor:
    """``iters`` Lloyd iterations (assign to nearest centre, move centres to their members' mean).

    A centre left without members is re-seeded with the point farthest from its own centre (the r-th empty
    centre of an image takes the r-th farthest point), so no centre is wasted.

    points: ``[B, M, D]``; valid: ``[B, M]``; centres: ``[B, K, D]``; centre_valid: ``[B, K]`` ->
    updated centres ``[B, K, D]`` float32.
    """
    _check_points(points, valid)
    if iters < 0:
        raise ValueError(f"iters must be >= 0, got {iters}")
    p = points.float()
    centres = centres.float()
    k = centres.shape[1]
    for _ in range(iters):
        index, dist = nearest_centre(p, centres, centre_valid)
        onehot = ((index[:, :, None] == torch.arange(k, device=p.device)) & valid[:, :, None]).float()
        counts = onehot.sum(1)  # [B, K]
        means = torch.bmm(onehot.transpose(1, 2), p) / counts.clamp_min(1)[:, :, None]
        centres = torch.where((counts > 0)[:, :, None], means, centres)
        empty = centre_valid & (counts == 0)
        n_empty = int(empty.sum(1).max()) if empty.numel() else 0
        if n_empty:
            # Rank points by distance to their centre; empty centre number r takes the r-th farthest point.
            farthest = torch.sort(dist.masked_fill(~valid, -1.0), dim=1, descending=True, stable=True).indices
            empty_rank = (empty.cumsum(1) - 1).clamp_min(0)
            donor = farthest.gather(1, empty_rank)
            donor_points = p.gather(1, donor[:, :, None].expand(-1, -1, p.shape[2]))
            centres = torch.where(empty[:, :, None], donor_points, centres)
    return centres


def _cluster_sizes(index: torch.Tensor, valid: torch.Tensor, k: int) -> torch.Tensor:
    """Member counts ``[B, k]`` float32 of the assignment ``index [B, M]`` restricted to ``valid``."""
    return ((index[:, :, None] == torch.arange(k, device=index.device)) & valid[:, :, None]).float().sum(1)


def agglomerate(
    centres: torch.Tensor, centre_valid: torch.Tensor, sizes: torch.Tensor, target: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """Repeatedly merge each image's most cosine-similar pair of valid centres until ``target[b]`` remain.

    The merged centre is the size-weighted average (plain average when both sizes are 0) and takes the lower
    slot; ties between pairs go to the lowest (i, j). centres: ``[B, K, D]``; centre_valid: ``[B, K]`` bool;
    sizes: ``[B, K]``; target: ``[B]`` int64 -> (centres ``[B, K, D]`` float32, centre_valid ``[B, K]``).
    """
    b, k, _ = centres.shape
    centres, sizes, centre_valid = centres.float().clone(), sizes.float().clone(), centre_valid.clone()
    steps = int((centre_valid.sum(1) - target).clamp_min(0).max()) if b else 0
    upper = torch.ones(k, k, dtype=torch.bool, device=centres.device).triu(1)
    rows = torch.arange(b, device=centres.device)
    for _ in range(steps):
        active = centre_valid.sum(1) > target
        unit = l2_normalize(centres)
        sim = torch.bmm(unit, unit.transpose(1, 2))
        allowed = upper & centre_valid[:, :, None] & centre_valid[:, None, :]
        flat = sim.masked_fill(~allowed, float("-inf")).flatten(1).argmax(1)
        i, j = flat // k, flat % k
        si, sj = sizes[rows, i], sizes[rows, j]
        total = si + sj
        wi = torch.where(total > 0, si / total.clamp_min(1e-12), 0.5)
        merged = wi[:, None] * centres[rows, i] + (1 - wi)[:, None] * centres[rows, j]
        centres[rows, i] = torch.where(active[:, None], merged, centres[rows, i])
        sizes[rows, i] = torch.where(active, total, si)
        centre_valid[rows, j] &= ~active
    return centres, centre_valid


def relabel_by_first_member(
    index: torch.Tensor, valid: torch.Tensor, k: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """Renumber clusters in order of their smallest member index; empty clusters disappear.

    index: ``[B, M]`` cluster of each point (in ``[0, k)``), valid: ``[B, M]`` bool -> (labels ``[B, M]`` in
    ``[0, n_nonempty)``, ``-1`` for invalid points; n_nonempty ``[B]`` int64).
    """
    b, m = index.shape
    positions = torch.arange(m, device=index.device).expand(b, m)
    first = torch.full((b, k), m, dtype=torch.long, device=index.device)
    first = first.scatter_reduce(1, index.clamp_min(0), torch.where(valid, positions, m), reduce="amin")
    order = torch.sort(first, dim=1, stable=True).indices
    rank = torch.empty_like(order).scatter_(1, order, torch.arange(k, device=index.device).expand(b, k))
    labels = torch.where(valid, rank.gather(1, index.clamp_min(0)), -1)
    return labels, (first < m).sum(1)


def kmeans_assign(
    points: torch.Tensor,
    valid: torch.Tensor,
    num_clusters: int,
    *,
    init_factor: float,
    iters: int,
    agglomerative: bool,
    generator: torch.Generator,
) -> tuple[torch.Tensor, torch.Tensor]:
    """SparseZip's clustering of the remaining tokens into (at most) ``num_clusters`` groups.

    Per image with ``n`` valid points: k-means++ seeds ``init_k = min(max(Cx, ceil(init_factor * Cx)), n)``
    centres, ``iters`` Lloyd iterations refine them, then they are reduced to ``min(Cx, n)``: by
    :func:`agglomerate` (``agglomerative``) or by keeping the largest clusters (ties: lower index). Finally
    every valid point goes to its nearest remaining centre (none is dropped) and clusters are numbered by their
    smallest member index. Clustering uses the points as given (callers pass L2-normalised keys).

    points: ``[B, M, D]``; valid: ``[B, M]`` bool -> (labels ``[B, M]`` int64 in ``[0, n_clusters[b])``, ``-1``
    for invalid points; n_clusters ``[B]`` int64, the non-empty clusters, ``<= min(Cx, n)``).
    """
    _check_points(points, valid)
    if num_clusters < 0:
        raise ValueError(f"num_clusters must be >= 0, got {num_clusters}")
    if init_factor <= 0:
        raise ValueError(f"init_factor must be > 0, got {init_factor}")
    b, m, dim = points.shape
    n_valid = valid.sum(1)
    if num_clusters == 0 or m == 0 or not bool(n_valid.any()):
        return torch.full((b, m), -1, dtype=torch.long, device=points.device), torch.zeros_like(n_valid)
    init_k = min(max(num_clusters, math.ceil(init_factor * num_clusters)), m)
    init_per_image = n_valid.clamp_max(init_k)
    target = n_valid.clamp_max(num_clusters)
    p = points.float()

    seeds = kmeans_plus_plus(p, valid, init_per_image, generator)
    centre_valid = seeds >= 0
    centres = p.gather(1, seeds.clamp_min(0)[:, :, None].expand(-1, -1, dim))
    centres = lloyd(p, valid, centres, centre_valid, iters)
    k = centres.shape[1]
    index, _ = nearest_centre(p, centres, centre_valid)
    sizes = _cluster_sizes(index, valid, k)
    if agglomerative:
        centres, centre_valid = agglomerate(centres, centre_valid, sizes, target)
    else:
        centre_valid = topk_mask(sizes.masked_fill(~centre_valid, -1.0), target)
    index, _ = nearest_centre(p, centres, centre_valid)
    return relabel_by_first_member(index, valid, k)


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
    onehot = (labels[:, None, :] == torch.arange(num_slots, device=x.device)[None, :, None]).float()
    uniform = onehot / onehot.sum(-1, keepdim=True).clamp_min(1)
    if weights is None:
        mix = uniform
    else:
        w = onehot * weights.float()[:, None, :]
        total = w.sum(-1, keepdim=True)
        # Normalise the weights first so a one-member slot gets weight exactly 1 (w / w), i.e. is a no-op.
        mix = torch.where(total > 0, w / total.clamp_min(torch.finfo(torch.float32).tiny), uniform)
    return torch.bmm(mix, x.float())


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
    remaining = mask_to_indices(valid)  # [B, R] ascending, -1 padded
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
