"""Clustering and merging: every remaining token accounted for exactly once, means stay inside their members."""

import math

import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

from sparsezip.merging import (
    agglomerate,
    density_peak_clusters,
    kmeans_assign,
    kmeans_plus_plus,
    lloyd,
    relabel_by_first_member,
    visionzip_merge,
    weighted_merge,
)
from sparsezip.scoring import l2_normalize
from sparsezip.testing.strategies import seeds


@st.composite
def point_sets(draw: st.DrawFn, max_batch: int = 3, max_points: int = 30):
    """(points [B, M, D] float32 with frequent duplicates, valid [B, M] bool with >= 0 valid per row)."""
    b, m, d = draw(st.integers(1, max_batch)), draw(st.integers(1, max_points)), draw(st.integers(1, 6))
    g = torch.Generator().manual_seed(draw(seeds))
    points = torch.randn(b, m, d, generator=g)
    if draw(st.booleans()):
        points = points.round()  # many exact duplicates
    valid = torch.rand(b, m, generator=g) < draw(st.floats(0.0, 1.0))
    return points, valid


def _kmeans(points: torch.Tensor, valid: torch.Tensor, cx: int, agglomerative: bool, iters: int = 1):
    return kmeans_assign(l2_normalize(points), valid, cx, init_factor=2.0, iters=iters,
                         agglomerative=agglomerative, generator=torch.Generator().manual_seed(0))


@given(data=st.data())
def test_kmeans_assigns_every_valid_token_exactly_once(data: st.DataObject) -> None:
    points, valid = data.draw(point_sets())
    cx = data.draw(st.integers(0, 12), label="cx")
    agglomerative = data.draw(st.booleans(), label="agglomerative")
    iters = data.draw(st.integers(0, 3), label="iters")
    labels, n_clusters = _kmeans(points, valid, cx, agglomerative, iters)
    assert labels.shape == valid.shape
    assert bool(((labels >= 0) == (valid & (cx > 0))).all())  # labelled iff remaining: none dropped
    assert bool((n_clusters <= valid.sum(1).clamp_max(cx)).all())
    for row_labels, n in zip(labels, n_clusters.tolist(), strict=True):
        members = row_labels[row_labels >= 0]
        # Labels are exactly 0..n-1, all non-empty, numbered by their smallest member index.
        assert sorted(set(members.tolist())) == list(range(n))
        first = [int(torch.nonzero(row_labels == c)[0]) for c in range(n)]
        assert first == sorted(first)
        sizes = torch.bincount(members, minlength=n)
        assert int(sizes.sum()) == members.numel()


@given(data=st.data())
def test_kmeans_is_deterministic_and_batch_independent(data: st.DataObject) -> None:
    points, valid = data.draw(point_sets())
    agglomerative = data.draw(st.booleans(), label="agglomerative")
    labels, n = _kmeans(points, valid, 4, agglomerative)
    again, n_again = _kmeans(points, valid, 4, agglomerative)
    assert torch.equal(labels, again) and torch.equal(n, n_again)
    for b in range(points.shape[0]):
        alone, n_alone = _kmeans(points[b : b + 1], valid[b : b + 1], 4, agglomerative)
        assert torch.equal(alone[0], labels[b]) and int(n_alone) == int(n[b])


def test_kmeans_separates_obvious_clusters() -> None:
    directions = torch.eye(3)
    points = directions.repeat_interleave(4, dim=0) + 0.01 * torch.randn(12, 3, generator=torch.Generator().manual_seed(0))
    labels, n = _kmeans(points[None], torch.ones(1, 12, dtype=torch.bool), 3, agglomerative=True)
    assert int(n) == 3 and labels[0].tolist() == [0] * 4 + [1] * 4 + [2] * 4


@given(data=st.data())
def test_kmeans_plus_plus_picks_distinct_valid_points(data: st.DataObject) -> None:
    points, valid = data.draw(point_sets())
    counts = valid.sum(1)
    wanted = torch.tensor([data.draw(st.integers(0, int(c)), label="centres") for c in counts])
    chosen = kmeans_plus_plus(points, valid, wanted, torch.Generator().manual_seed(3))
    for row, n, row_valid in zip(chosen, wanted.tolist(), valid, strict=True):
        picked = row[row >= 0]
        assert picked.numel() == n and len(set(picked.tolist())) == n
        assert bool(row_valid[picked].all())
    with pytest.raises(ValueError, match="exceed"):
        kmeans_plus_plus(points, valid, counts + 1, torch.Generator())


def test_lloyd_moves_centres_to_means_and_reseeds_empty_ones() -> None:
    points = torch.tensor([[[0.0], [1.0], [10.0], [11.0], [30.0]]])
    valid = torch.ones(1, 5, dtype=torch.bool)
    centres = torch.tensor([[[0.0], [11.0], [-100.0]]])  # the third centre wins no point
    out = lloyd(points, valid, centres, torch.ones(1, 3, dtype=torch.bool), iters=1)
    # Means: {0, 1} -> 0.5; {10, 11, 30} -> 17; the empty centre takes the farthest point (30, 13 from 17's seed 11).
    assert out[0, :, 0].tolist() == [0.5, 17.0, 30.0]
    assert torch.equal(lloyd(points, valid, centres, torch.ones(1, 3, dtype=torch.bool), iters=0), centres)


def test_agglomerate_merges_the_most_similar_pair_by_size() -> None:
    centres = torch.tensor([[[1.0, 0.0], [0.0, 1.0], [1.0, 0.1]]])
    sizes = torch.tensor([[3.0, 1.0, 1.0]])
    merged, keep = agglomerate(centres, torch.ones(1, 3, dtype=torch.bool), sizes, torch.tensor([2]))
    assert keep.tolist() == [[True, True, False]]
    assert torch.allclose(merged[0, 0], torch.tensor([1.0, 0.025]))  # (3 * c0 + 1 * c2) / 4


def test_relabel_orders_clusters_by_smallest_member() -> None:
    labels, n = relabel_by_first_member(torch.tensor([[2, 0, 2, 1, 0]]), torch.tensor([[True] * 4 + [False]]), 4)
    assert labels.tolist() == [[0, 1, 0, 2, -1]] and n.tolist() == [3]


@st.composite
def merge_inputs(draw: st.DrawFn):
    b, m, c = draw(st.integers(1, 3)), draw(st.integers(1, 20)), draw(st.integers(1, 6))
    slots = draw(st.integers(1, 8))
    g = torch.Generator().manual_seed(draw(seeds))
    x = torch.randn(b, m, c, generator=g)
    labels = torch.randint(-1, slots, (b, m), generator=g)
    weights = torch.rand(b, m, generator=g) * (torch.rand(b, m, generator=g) < 0.8)  # some exact zeros
    return x, labels, slots, weights


@given(inputs=merge_inputs(), weighted=st.booleans())
def test_weighted_merge_stays_within_members_and_conserves_mass(inputs, weighted: bool) -> None:
    x, labels, slots, weights = inputs
    out = weighted_merge(x, labels, slots, weights if weighted else None)
    assert out.shape == (x.shape[0], slots, x.shape[2])
    tol = 1e-5 * (1 + x.abs().max())
    for b in range(x.shape[0]):
        for s in range(slots):
            members = x[b][labels[b] == s]
            if members.numel() == 0:
                assert bool((out[b, s] == 0).all())
                continue
            assert bool((out[b, s] >= members.min(0).values - tol).all())
            assert bool((out[b, s] <= members.max(0).values + tol).all())
    if not weighted:  # sizes * means add up to the sum of all merged tokens
        sizes = torch.stack([torch.bincount(row[row >= 0], minlength=slots) for row in labels]).float()
        total = (sizes[:, :, None] * out).sum(1)
        assert torch.allclose(total, (x * (labels >= 0)[:, :, None]).sum(1), atol=1e-4)
        assert sizes.sum(1).tolist() == (labels >= 0).sum(1).float().tolist()


@given(inputs=merge_inputs())
def test_weighted_merge_identity_assignment_is_a_no_op(inputs) -> None:
    x, _, _, weights = inputs
    m = x.shape[1]
    identity = torch.arange(m).expand(x.shape[0], m)
    assert torch.equal(weighted_merge(x, identity, m), x)
    assert torch.equal(weighted_merge(x, identity, m, weights), x)


def test_weighted_merge_uses_weights_and_falls_back_to_uniform() -> None:
    x = torch.tensor([[[0.0], [4.0], [8.0], [2.0]]])
    labels = torch.tensor([[0, 0, 1, 1]])
    out = weighted_merge(x, labels, 2, torch.tensor([[1.0, 3.0, 0.0, 0.0]]))
    assert out[0, :, 0].tolist() == [3.0, 5.0]  # slot 1 has zero total weight: plain mean


@given(seed=seeds, m=st.integers(2, 40), cx=st.integers(1, 12))
def test_visionzip_merge_follows_its_definition(seed: int, m: int, cx: int) -> None:
    """methods.md 2.3: anchors at list positions 0, step, 2*step, ... of the remaining tokens (step = n // cx);
    every other remaining token joins the anchor its unit key is most similar to; token = anchor + mean(members).
    (Fidelity to the authors' code: tests/test_visionzip.py, against their outputs.)"""
    g = torch.Generator().manual_seed(seed)
    x, keys = torch.randn(2, m, 5, generator=g), torch.randn(2, m, 3, generator=g)
    valid = torch.rand(2, m, generator=g) < 0.7
    valid[:, 0] = True
    tokens, slot_valid, labels = visionzip_merge(x, keys, valid, cx)
    for b in range(2):
        remaining = torch.nonzero(valid[b]).flatten()
        anchors = remaining[:: max(1, len(remaining) // cx)][:cx]
        n = len(anchors)
        assert slot_valid[b].tolist() == [True] * n + [False] * (cx - n)
        assert labels[b, anchors].tolist() == list(range(n))
        others = remaining[~torch.isin(remaining, anchors)]
        unit = keys[b] / keys[b].norm(dim=-1, keepdim=True)
        joins = (unit[others] @ unit[anchors].T).argmax(dim=1)
        assert torch.equal(labels[b, others], joins)
        for j in range(n):
            members = others[joins == j]
            mean = x[b, members].mean(0) if len(members) else torch.zeros(5)
            assert torch.allclose(tokens[b, j], x[b, anchors[j]] + mean, atol=1e-5)
        assert torch.equal(labels[b] >= 0, valid[b])  # every remaining token goes somewhere, nothing else does


def test_visionzip_merge_quirk_target_plus_mean() -> None:
    x = torch.tensor([[[3.0], [2.0], [4.0]]])
    tokens, _, labels = visionzip_merge(x, torch.ones(1, 3, 2), torch.ones(1, 3, dtype=torch.bool), 1)
    assert labels.tolist() == [[0, 0, 0]]  # token 0 is the target, tokens 1 and 2 its members
    # 3 + mean(2, 4) = 6: outside the members' range [2, 4] -- the documented quirk, not a weighted mean.
    assert tokens[0, 0, 0].item() == 6.0


def test_nothing_to_merge_gives_no_clusters() -> None:
    labels, n = _kmeans(torch.randn(2, 5, 3), torch.zeros(2, 5, dtype=torch.bool), 4, False)
    assert bool((labels == -1).all()) and n.tolist() == [0, 0]
    tokens, slot_valid, labels = visionzip_merge(torch.randn(1, 4, 2), torch.randn(1, 4, 2),
                                                 torch.zeros(1, 4, dtype=torch.bool), 3)
    assert tokens.shape == (1, 3, 2) and not slot_valid.any() and bool((labels == -1).all())
    assert math.isfinite(float(weighted_merge(torch.randn(1, 2, 2), torch.full((1, 2), -1), 1).sum()))


# ---------------------------------------------------------------------------------------------- density peaks
def test_density_peak_clusters_recover_separated_blobs() -> None:
    g = torch.Generator().manual_seed(0)
    centres = torch.tensor([[0.0, 0.0], [10.0, 0.0], [0.0, 10.0]])
    sizes = [5, 7, 4]
    x = torch.cat([c + 0.1 * torch.randn(n, 2, generator=g) for c, n in zip(centres, sizes, strict=True)])[None]
    labels = density_peak_clusters(x, torch.ones(1, 16, dtype=torch.bool), 3)[0]
    blobs = torch.split(labels, sizes)
    assert all(len(set(b.tolist())) == 1 for b in blobs)
    assert len({int(b[0]) for b in blobs}) == 3
    assert torch.equal(density_peak_clusters(x, torch.ones(1, 16, dtype=torch.bool), 3)[0], labels)


def test_density_peak_clusters_edge_cases() -> None:
    one = torch.ones(1, 1, dtype=torch.bool)
    assert density_peak_clusters(torch.ones(1, 1, 4), one, 1).tolist() == [[0]]
    same = density_peak_clusters(torch.ones(1, 5, 4), torch.ones(1, 5, dtype=torch.bool), 2)[0]
    assert same.tolist()[:2] == [0, 1] and set(same.tolist()) == {0, 1}  # identical points: ranks by index
    nothing = density_peak_clusters(torch.ones(2, 3, 2), torch.zeros(2, 3, dtype=torch.bool), 0)
    assert nothing.tolist() == [[-1] * 3] * 2
    with pytest.raises(ValueError, match="num_clusters"):
        density_peak_clusters(torch.ones(1, 3, 2), torch.ones(1, 3, dtype=torch.bool), 4)
    with pytest.raises(ValueError, match="num_clusters"):
        density_peak_clusters(torch.ones(1, 3, 2), torch.ones(1, 3, dtype=torch.bool), 0)


@given(data=st.data())
def test_density_peak_clusters_label_every_valid_point_and_ignore_padding(data: st.DataObject) -> None:
    # <= 25 points: torch.cdist then computes distances directly (not via matmul) at every size, so padding
    # cannot change a single bit
    points, valid = data.draw(point_sets(max_points=25))
    n_valid = valid.sum(1)
    k = torch.tensor([data.draw(st.integers(min(1, int(n)), int(n)), label="k") for n in n_valid])
    labels = density_peak_clusters(points, valid, k)
    assert torch.equal(labels < 0, ~valid)
    for row in range(points.shape[0]):
        used = labels[row][valid[row]]
        assert set(used.tolist()) == set(range(int(k[row])))  # every centre labels at least itself
        # the same row alone, without its padding, gets the same labels (batch and padding independence)
        alone = density_peak_clusters(points[row : row + 1, valid[row]], valid[row : row + 1, valid[row]],
                                      int(k[row]))
        assert torch.equal(alone[0], used)
