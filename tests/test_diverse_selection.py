"""Diversity-based selection primitives (DivPrune's max-min, CDPruner's DPP, VisPruner's duplicate removal)
against their defining properties and plain, loop-based references written from the papers' descriptions."""

from __future__ import annotations

import math

import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

from sparsezip.scoring import cosine_similarity_matrix, iqr_outliers
from sparsezip.selection import dpp_greedy_map, max_min_greedy, rank_order, remove_duplicates, top_n_mask
from sparsezip.testing.strategies import score_rows, seeds


def _points(b: int, m: int, d: int, seed: int, ties: bool) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.randint(-1, 2, (b, m, d), generator=g).float() if ties else torch.randn(b, m, d, generator=g)


@given(seed=seeds, b=st.integers(1, 3), m=st.integers(1, 24), d=st.integers(1, 6), ties=st.booleans(),
       data=st.data())
def test_max_min_greedy_has_the_greedy_max_min_property(seed, b, m, d, ties, data) -> None:
    dist = 1.0 - cosine_similarity_matrix(_points(b, m, d, seed, ties))
    k = data.draw(st.integers(0, m), label="k")
    picks = max_min_greedy(dist, k)
    assert picks.shape == (b, k)
    for row, chosen in zip(dist, picks.tolist(), strict=True):
        assert len(set(chosen)) == k
        for t, pick in enumerate(chosen):
            if t == 0:  # the token whose nearest other token is farthest (second-smallest of its column)
                score = torch.sort(row, dim=0).values[1] if m > 1 else torch.zeros(m)
                candidates = list(range(m))
            else:  # farthest from the picked set, among tokens not picked yet
                score = row[chosen[:t]].min(dim=0).values
                candidates = [j for j in range(m) if j not in chosen[:t]]
            best = max(float(score[j]) for j in candidates)
            assert float(score[pick]) == best
            assert pick == min(j for j in candidates if float(score[j]) == best)  # ties: lower index


def _naive_dpp(kernel: torch.Tensor, k: int) -> list[int]:
    """Greedy MAP by determinants: add the token that maximises det(L_S) (float64), ties lower index."""
    chosen: list[int] = []
    for _ in range(k):
        gains = [float(torch.linalg.det(kernel[[*chosen, j]][:, [*chosen, j]])) if j not in chosen else -math.inf
                 for j in range(kernel.shape[0])]
        chosen.append(max(range(len(gains)), key=lambda j: (gains[j], -j)))
    return chosen


@pytest.mark.parametrize("seed", range(12))
def test_dpp_greedy_map_equals_greedy_determinant_maximisation(seed: int) -> None:
    g = torch.Generator().manual_seed(seed)
    m, d = 9, 12
    features = torch.randn(2, m, d, generator=g, dtype=torch.float64)
    relevance = torch.rand(2, m, generator=g, dtype=torch.float64) + 0.1
    kernel = relevance[:, :, None] * cosine_similarity_matrix(features).double() * relevance[:, None, :]
    picks = dpp_greedy_map(kernel, 6)
    for b in range(2):
        assert picks[b].tolist() == _naive_dpp(kernel[b], 6)


def test_dpp_past_the_kernel_rank_stays_finite_and_distinct() -> None:
    features = torch.randn(2, 10, 3, generator=torch.Generator().manual_seed(0))  # rank <= 3
    picks = dpp_greedy_map(cosine_similarity_matrix(features), 10)
    assert [sorted(row) for row in picks.tolist()] == [list(range(10))] * 2
    assert torch.equal(dpp_greedy_map(torch.zeros(1, 4, 4), 4), torch.tensor([[0, 1, 2, 3]]))


def _naive_dedup(sim: torch.Tensor, candidates: list[int], keep: int, step: int) -> list[int]:
    residual = list(candidates)
    while len(residual) > keep:
        drop = min(step, len(residual) - keep)
        set_a, set_b = residual[0::2], residual[1::2]
        scores = [max((float(sim[a, x]) for x in set_b), default=-math.inf) for a in set_a]
        order = sorted(range(len(set_a)), key=lambda i: -scores[i])  # stable: earlier position first
        residual = [set_a[i] for i in order[drop:]] + set_b
    return residual


@given(seed=seeds, m=st.integers(1, 40), step=st.integers(1, 9), ties=st.booleans(), data=st.data())
def test_remove_duplicates_matches_a_plain_reference(seed, m, step, ties, data) -> None:
    sim = cosine_similarity_matrix(_points(2, m, 4, seed, ties))
    r = data.draw(st.integers(0, m), label="candidates")
    keep = data.draw(st.integers(0, r), label="keep")
    g = torch.Generator().manual_seed(seed + 1)
    candidates = torch.stack([torch.randperm(m, generator=g)[:r] for _ in range(2)])
    out = remove_duplicates(sim, candidates, keep, step)
    assert out.shape == (2, keep)
    for b in range(2):
        assert out[b].tolist() == _naive_dedup(sim[b], candidates[b].tolist(), keep, step)


@given(seed=seeds, b=st.integers(1, 3), m=st.integers(1, 60))
def test_iqr_outliers_match_numpy_percentiles(seed: int, b: int, m: int) -> None:
    import numpy as np

    values = torch.softmax(2 * torch.randn(b, m, generator=torch.Generator().manual_seed(seed)), dim=1)
    mask = iqr_outliers(values)
    for row, got in zip(values.numpy(), mask, strict=True):
        q1, q3 = np.percentile(row, 25), np.percentile(row, 75)
        assert got.tolist() == (row > q3 + 1.5 * (q3 - q1)).tolist()
    assert not iqr_outliers(torch.full((2, 7), 0.3)).any()


@given(data=st.data())
def test_top_n_mask_is_the_head_of_the_stable_descending_order(data: st.DataObject) -> None:
    scores = data.draw(score_rows(dtype=torch.float32))  # frequent exact ties
    n = data.draw(st.integers(0, scores.shape[1]), label="n")
    expected = torch.zeros_like(scores, dtype=torch.bool).scatter_(1, rank_order(scores)[:, :n], True)
    assert torch.equal(top_n_mask(scores, n), expected)
    assert torch.equal(top_n_mask(scores[:, None, :].expand(-1, 3, -1), n), expected[:, None, :].expand(-1, 3, -1))


def test_bad_arguments_name_the_value() -> None:
    with pytest.raises(ValueError, match="k=5"):
        max_min_greedy(torch.zeros(1, 4, 4), 5)
    with pytest.raises(ValueError, match="kernel"):
        dpp_greedy_map(torch.zeros(1, 4, 3), 1)
    with pytest.raises(ValueError, match="keep=3"):
        remove_duplicates(torch.zeros(1, 4, 4), torch.tensor([[0, 1]]), 3)
