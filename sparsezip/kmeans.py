"""SparseZip's clustering of the remaining tokens (``specs/methods.md`` section 1, step 5), batched, launch-light.

:func:`kmeans_assign` = k-means++ seeding -> Lloyd iterations -> reduction to the wanted count (agglomerative
merges, or the largest clusters) -> every valid point to its nearest remaining centre, clusters numbered by
their smallest member. Every function works on B images at once with a ``valid`` mask ``[B, M]`` (with dynamic K
each image has a different number of remaining tokens); Python loops run over a number of steps known on the
host (k-means++ centres, Lloyd iterations, agglomerative merges), never over images, clusters or tokens.

Written for GPUs: nothing here reads device data on the host (no syncs), and a k-means++ step is five ATen ops.
That takes three choices, none of which changes which point is drawn:

* the squared distances of all point pairs are computed once (:func:`centre_distances`, from the Gram matrix,
  which SparseZip shares with its mutual-information score), with the same float32 association as
  :func:`squared_distances`; a step then reads one row of it;
* chosen and invalid points carry weight 0 instead of an "available" mask, and an available point at distance
  0 carries :data:`TINY` (2^-100): absorbed by rounding as soon as any real distance is positive (the draw is
  unchanged), and when every distance is 0 the draw is uniform over the available points -- k-means++'s
  fallback -- with no separate branch;
* sampling is float32 inverse-CDF with one uniform per step shared by the batch, the uniforms cached on the
  device per seed (:func:`kmeans_uniforms`): no generator on the host per call, no float64 on the device.
"""

from __future__ import annotations

import math
from functools import lru_cache

import torch

from sparsezip.scoring import l2_normalize
from sparsezip.selection import rank_mask

# Weight of an available point that coincides with a chosen centre (see the module docstring). A power of two,
# so that n of them sum exactly (n * TINY) and a draw among them is exactly uniform.
TINY = 2.0**-100
# Largest uniform used: u * total then rounds strictly below total in float32, so a draw never runs past the
# last point of positive weight.
_U_MAX = 1.0 - 2.0**-23


def _check_points(points: torch.Tensor, valid: torch.Tensor) -> None:
    if points.ndim != 3:
        raise ValueError(f"points must be [B, M, D], got shape {tuple(points.shape)}")
    if valid.dtype != torch.bool or tuple(valid.shape) != tuple(points.shape[:2]):
        raise ValueError(
            f"valid must be a bool [B, M] = {tuple(points.shape[:2])} mask, got {valid.dtype} {tuple(valid.shape)}"
        )


def _f32(x: torch.Tensor) -> torch.Tensor:
    return x if x.dtype == torch.float32 else x.float()


def squared_distances(points: torch.Tensor, centres: torch.Tensor) -> torch.Tensor:
    """Squared Euclidean distances, float32, clamped at 0 against cancellation.

    points: ``[B, M, D]``; centres: ``[B, K, D]`` -> ``[B, M, K]``.
    """
    p, c = _f32(points), _f32(centres)
    d2 = (p * p).sum(-1)[:, :, None] - 2 * torch.bmm(p, c.transpose(1, 2)) + (c * c).sum(-1)[:, None, :]
    return d2.clamp_min_(0)


def nearest_centre(
    points: torch.Tensor, centres: torch.Tensor, centre_valid: torch.Tensor, point_sq: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Index of and squared distance to each point's nearest valid centre (ties: lower centre index).

    points: ``[B, M, D]``; centres: ``[B, K, D]``; centre_valid: ``[B, K]`` bool; point_sq: the points' squared
    norms ``[B, M]`` if known -> (``[B, M]`` int64, ``[B, M]`` float32, clamped at 0). Rows without any valid
    centre get index 0 and distance inf. The nearest centre minimises ``||c||^2 - 2 x.c`` (``||x||^2`` is the
    same for every centre), one ``baddbmm`` with invalid centres at ``+inf``.
    """
    p, c = _f32(points), _f32(centres)
    if point_sq is None:
        point_sq = (p * p).sum(-1)
    bias = torch.where(centre_valid, (c * c).sum(-1), float("inf"))[:, None, :]  # [B, 1, K]
    partial, index = torch.baddbmm(bias, p, c.transpose(1, 2), alpha=-2).min(dim=-1)
    return index, partial.add_(point_sq).clamp_min_(0)


def centre_distances(
    points: torch.Tensor, gram: torch.Tensor | None = None, point_sq: torch.Tensor | None = None
) -> torch.Tensor:
    """Squared distance of every point to every point as a candidate centre, in k-means++'s weight form.

    ``d2[b, c, i] = ||x_i||^2 - 2 x_i.x_c + ||x_c||^2`` (the float32 association of :func:`squared_distances`),
    clamped at :data:`TINY` below (an available point keeps a positive weight) and 0 on the diagonal (a chosen
    point's weight drops to 0). points: ``[B, M, D]``; gram: ``[B, M, M]`` = ``points @ points^T`` if already
    computed (symmetric, so read as ``x_c.x_i``); point_sq: ``[B, M]`` squared norms if known ->
    ``[B, M + 1, M]`` float32: row ``c`` = the weights after choosing point ``c``, then a spare zero row, which
    k-means++ reads when a draw overruns (a row without weight left): no per-step range guard.
    """
    p = _f32(points)
    b, m, _ = p.shape
    if gram is None:
        gram = torch.bmm(p, p.transpose(1, 2))
    sq = (p * p).sum(-1) if point_sq is None else point_sq
    out = p.new_empty(b, m + 1, m)
    out[:, m].zero_()
    d2 = out[:, :m]
    torch.sub(sq[:, None, :], gram, alpha=2, out=d2).add_(sq[:, :, None]).clamp_min_(TINY)
    d2.diagonal(dim1=1, dim2=2).fill_(0.0)
    return out


@lru_cache(maxsize=64)
def _cached_uniforms(seed: int, m: int, device: str) -> tuple[torch.Tensor, ...]:
    draws = torch.rand(m, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)
    return _device_uniforms(draws, torch.device(device)).unbind()


def _device_uniforms(draws: torch.Tensor, device: torch.device) -> torch.Tensor:
    return draws.float().clamp_max_(_U_MAX).to(device)


def kmeans_uniforms(seed: int, m: int, device: torch.device | str) -> tuple[torch.Tensor, ...]:
    """The ``m`` k-means++ uniforms of ``seed`` on ``device``: 0-d float32 tensors, one per step.

    They are the first draws of a CPU ``torch.Generator`` seeded with ``seed`` (float64, rounded to float32), so
    CPU and CUDA use the same numbers; computed once per ``(seed, m, device)`` and kept on the device.
    """
    return _cached_uniforms(int(seed), int(m), str(torch.device(device)))


def _seed_centres(
    distances: torch.Tensor, valid: torch.Tensor, num_centres: torch.Tensor, width: int,
    uniforms: tuple[torch.Tensor, ...],
) -> torch.Tensor:
    """k-means++ on :func:`centre_distances` -> ``[B, width]`` int64 point indices, ``-1`` past each row's
    ``num_centres``. Five ATen ops per step, all on ``[B, M]`` rows; rows past their count keep drawing (their
    draws are discarded at the end)."""
    b, m = valid.shape
    if tuple(distances.shape) != (b, m + 1, m):
        raise ValueError(f"distances must be centre_distances' [B, M + 1, M] = {(b, m + 1, m)}, got "
                         f"{tuple(distances.shape)}")
    if width == 0:
        return valid.new_empty(b, 0, dtype=torch.long)
    # A draw that overruns (searchsorted returns M when no weight is left: only in a row that is done) reads the
    # spare zero row: a discarded draw, never out of bounds.
    images = torch.arange(b, device=valid.device)[:, None]  # [B, 1]
    # weight [B, 1, M] (with a [B, M] view of it): the squared distance to the nearest centre so far, 0 for
    # chosen and invalid points. The first draw is uniform over the valid points: weight TINY each.
    weight = torch.where(valid, TINY, 0.0)[:, None, :]
    rows = weight.view(b, m)
    cumulative = torch.empty_like(rows)
    total = cumulative[:, -1:]  # views made once
    picks = []
    for j in range(width):
        torch.cumsum(rows, 1, out=cumulative)
        pick = torch.searchsorted(cumulative, total * uniforms[j], right=True)  # [B, 1]
        picks.append(pick)
        row = distances[images, pick]  # [B, 1, M]: every point's distance to the new centre
        if j == 0:  # nearest distance so far = to the first centre; invalid points keep weight 0
            torch.mul(row, valid[:, None, :], out=weight)
        else:
            torch.minimum(weight, row, out=weight)
    chosen = torch.cat(picks, dim=1).clamp_max_(m - 1)
    return chosen.masked_fill_(torch.arange(width, device=valid.device) >= num_centres[:, None], -1)


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
    not chosen yet. (This checking entry point reads the counts on the host; :func:`kmeans_assign` does not.)
    """
    _check_points(points, valid)
    b, m, _ = points.shape
    if bool((num_centres > valid.sum(1)).any()):
        raise ValueError(f"num_centres {num_centres.tolist()} exceed the valid points {valid.sum(1).tolist()}")
    width = int(num_centres.max()) if b else 0
    draws = torch.rand(m, generator=generator, dtype=torch.float64)
    uniforms = _device_uniforms(draws, points.device).unbind()
    return _seed_centres(centre_distances(points), valid, num_centres.to(points.device), width, uniforms)


def lloyd(
    points: torch.Tensor, valid: torch.Tensor, centres: torch.Tensor, centre_valid: torch.Tensor, iters: int,
    point_sq: torch.Tensor | None = None,
) -> torch.Tensor:
    """``iters`` Lloyd iterations (assign to nearest centre, move centres to their members' mean).

    A centre left without members is re-seeded with the point farthest from its own centre (the r-th empty
    centre of an image takes the r-th farthest point), so no centre is wasted.

    points: ``[B, M, D]``; valid: ``[B, M]``; centres: ``[B, K, D]``; centre_valid: ``[B, K]``; point_sq: the
    points' squared norms ``[B, M]`` if known -> updated centres ``[B, K, D]`` float32.
    """
    _check_points(points, valid)
    if iters < 0:
        raise ValueError(f"iters must be >= 0, got {iters}")
    p = _f32(points)
    centres = _f32(centres)
    _, m, dim = p.shape
    k = centres.shape[1]
    if point_sq is None:
        point_sq = (p * p).sum(-1)
    slots = torch.arange(k, device=p.device)
    for _ in range(iters):
        index, dist = nearest_centre(p, centres, centre_valid, point_sq)
        onehot = ((index[:, :, None] == slots) & valid[:, :, None]).float()
        counts = onehot.sum(1)  # [B, K]
        means = torch.bmm(onehot.transpose(1, 2), p).div_(counts.clamp_min(1)[:, :, None])
        # Re-seed empty centres unconditionally (a no-op where none is empty): asking first would be a host sync.
        # Points ranked by distance to their centre; empty centre number r takes the r-th farthest point.
        empty = centre_valid & (counts == 0)
        farthest = torch.sort(dist.masked_fill_(~valid, -1.0), dim=1, descending=True, stable=True).indices
        donor = farthest.gather(1, (empty.cumsum(1) - 1).clamp_(0, m - 1))
        donor_points = p.gather(1, donor[:, :, None].expand(-1, -1, dim))
        centres = torch.where((counts > 0)[:, :, None], means, torch.where(empty[:, :, None], donor_points, centres))
    return centres


def _cluster_sizes(index: torch.Tensor, valid: torch.Tensor, k: int) -> torch.Tensor:
    """Member counts ``[B, k]`` float32 of the assignment ``index [B, M]`` restricted to ``valid``."""
    return valid.new_zeros(index.shape[0], k, dtype=torch.float32).scatter_add_(1, index, valid.float())


def agglomerate(
    centres: torch.Tensor, centre_valid: torch.Tensor, sizes: torch.Tensor, target: torch.Tensor,
    max_steps: int | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Repeatedly merge each image's most cosine-similar pair of valid centres until ``target[b]`` remain.

    The merged centre is the size-weighted average (plain average when both sizes are 0) and takes the lower
    slot; ties between pairs go to the lowest (i, j). centres: ``[B, K, D]``; centre_valid: ``[B, K]`` bool;
    sizes: ``[B, K]``; target: ``[B]`` int64; max_steps: an upper bound on the merges any image needs, known
    to the caller (none: read from the counts, a host sync) -> (centres ``[B, K, D]`` float32, centre_valid
    ``[B, K]``).
    """
    b, k, _ = centres.shape
    centres, sizes, centre_valid = centres.float().clone(), sizes.float().clone(), centre_valid.clone()
    if max_steps is None:
        max_steps = int((centre_valid.sum(1) - target).clamp_min(0).max()) if b else 0
    upper = torch.ones(k, k, dtype=torch.bool, device=centres.device).triu(1)
    rows = torch.arange(b, device=centres.device)
    for _ in range(max_steps):
        active = centre_valid.sum(1) > target  # an image that reached its target stops merging
        unit = l2_normalize(centres)
        sim = torch.bmm(unit, unit.transpose(1, 2))
        allowed = upper & centre_valid[:, :, None] & centre_valid[:, None, :]
        flat = sim.masked_fill_(~allowed, float("-inf")).flatten(1).argmax(1)
        i, j = flat // k, flat % k
        si, sj = sizes[rows, i], sizes[rows, j]
        total = si + sj
        wi = torch.where(total > 0, si / total.clamp_min(1e-12), 0.5)
        ci = centres[rows, i]
        merged = wi[:, None] * ci + (1 - wi)[:, None] * centres[rows, j]
        centres[rows, i] = torch.where(active[:, None], merged, ci)
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
    generator: torch.Generator | None = None,
    seed: int | None = None,
    distances: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """SparseZip's clustering of the remaining tokens into (at most) ``num_clusters`` groups.

    Per image with ``n`` valid points: k-means++ seeds ``init_k = min(max(Cx, ceil(init_factor * Cx)), n)``
    centres, ``iters`` Lloyd iterations refine them, then they are reduced to ``min(Cx, n)``: by
    :func:`agglomerate` (``agglomerative``) or by keeping the largest clusters (ties: lower index). Finally
    every valid point goes to its nearest remaining centre (none is dropped) and clusters are numbered by their
    smallest member index. Clustering uses the points as given (callers pass L2-normalised keys).

    The k-means++ uniforms come from ``seed`` (cached on the device, :func:`kmeans_uniforms`) or, equivalently,
    from ``generator``'s next ``M`` draws; give exactly one. ``distances`` = :func:`centre_distances` of
    ``points`` (``[B, M + 1, M]``) if the caller has them. No host sync.

    points: ``[B, M, D]``; valid: ``[B, M]`` bool -> (labels ``[B, M]`` int64 in ``[0, n_clusters[b])``, ``-1``
    for invalid points; n_clusters ``[B]`` int64, the non-empty clusters, ``<= min(Cx, n)``).
    """
    _check_points(points, valid)
    if num_clusters < 0:
        raise ValueError(f"num_clusters must be >= 0, got {num_clusters}")
    if init_factor <= 0:
        raise ValueError(f"init_factor must be > 0, got {init_factor}")
    if (generator is None) == (seed is None):
        raise ValueError("kmeans_assign needs exactly one of generator= and seed= (the k-means++ uniforms)")
    b, m, dim = points.shape
    n_valid = valid.sum(1)
    if num_clusters == 0 or m == 0:
        return torch.full((b, m), -1, dtype=torch.long, device=points.device), torch.zeros_like(n_valid)
    init_k = min(max(num_clusters, math.ceil(init_factor * num_clusters)), m)
    target = n_valid.clamp_max(num_clusters)
    p = _f32(points)
    if seed is not None:
        uniforms = kmeans_uniforms(seed, m, p.device)
    else:
        uniforms = _device_uniforms(torch.rand(m, generator=generator, dtype=torch.float64), p.device).unbind()
    point_sq = (p * p).sum(-1)
    if distances is None:
        distances = centre_distances(p, point_sq=point_sq)

    seeds = _seed_centres(distances, valid, n_valid.clamp_max(init_k), init_k, uniforms)
    centre_valid = seeds >= 0
    centres = p.gather(1, seeds.clamp_min(0)[:, :, None].expand(-1, -1, dim))
    centres = lloyd(p, valid, centres, centre_valid, iters, point_sq)
    index, _ = nearest_centre(p, centres, centre_valid, point_sq)
    sizes = _cluster_sizes(index, valid, init_k)
    if agglomerative:
        centres, centre_valid = agglomerate(centres, centre_valid, sizes, target,
                                            max_steps=max(0, init_k - num_clusters))
    else:
        centre_valid = rank_mask(sizes.masked_fill_(~centre_valid, -1.0), target)
    index, _ = nearest_centre(p, centres, centre_valid, point_sq)
    return relabel_by_first_member(index, valid, init_k)
