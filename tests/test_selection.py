"""Top-K selection: hypothesis properties, ties decided by set membership (array-api-tests style)."""

import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

from sparsezip.selection import gather_tokens, mask_to_indices, topk_indices, topk_mask
from sparsezip.testing.strategies import score_rows, seeds


@given(data=st.data())
def test_topk_shape_range_unique_ascending(data: st.DataObject) -> None:
    scores = data.draw(score_rows())
    b, m = scores.shape
    k = data.draw(st.integers(0, m), label="k")
    idx = topk_indices(scores, k)
    assert idx.shape == (b, k) and idx.dtype == torch.long
    assert bool(((idx >= 0) & (idx < m)).all())
    assert bool((idx[:, 1:] > idx[:, :-1]).all())  # strictly ascending implies unique


@given(data=st.data())
def test_topk_selects_the_largest_and_breaks_ties_by_lower_index(data: st.DataObject) -> None:
    scores = data.draw(score_rows())
    m = scores.shape[1]
    k = data.draw(st.integers(1, m), label="k")
    idx = topk_indices(scores, k)
    for row, chosen in zip(scores.float(), idx, strict=True):
        selected = torch.zeros(m, dtype=torch.bool)
        selected[chosen] = True
        threshold = row[chosen].min()
        # Every selected score >= every unselected one.
        assert not (~selected).any() or row[~selected].max() <= threshold
        # Everything strictly above the threshold is in; at the threshold, the lowest indices are in.
        assert bool(selected[row > threshold].all())
        at_threshold = torch.nonzero(row == threshold).flatten()
        n_taken = int(selected[at_threshold].sum())
        assert selected[at_threshold].tolist() == [True] * n_taken + [False] * (len(at_threshold) - n_taken)


@given(data=st.data())
def test_topk_is_permutation_equivariant(data: st.DataObject) -> None:
    scores = data.draw(score_rows(dtype=torch.float32))
    b, m = scores.shape
    k = data.draw(st.integers(0, m), label="k")
    perm = torch.randperm(m, generator=torch.Generator().manual_seed(data.draw(seeds, label="seed")))
    # Ties are broken by index, which a permutation changes: compare the selected score values (a multiset).
    plain = torch.sort(scores.gather(1, topk_indices(scores, k)), dim=1).values
    permuted = torch.sort(scores[:, perm].gather(1, topk_indices(scores[:, perm], k)), dim=1).values
    assert torch.equal(plain, permuted)
    # With distinct scores the selected *set* moves with the permutation exactly.
    distinct = torch.randperm(m, generator=torch.Generator().manual_seed(1)).float().expand(b, m)
    chosen = topk_indices(distinct, k)
    chosen_after = perm[topk_indices(distinct[:, perm], k)]
    assert torch.equal(torch.sort(chosen_after, dim=1).values, chosen)


@given(data=st.data())
def test_topk_rows_are_independent(data: st.DataObject) -> None:
    scores = data.draw(score_rows())
    k = data.draw(st.integers(0, scores.shape[1]), label="k")
    batch = topk_indices(scores, k)
    for b in range(scores.shape[0]):
        assert torch.equal(topk_indices(scores[b : b + 1], k)[0], batch[b])


@given(scores=score_rows())
def test_topk_with_k_equal_n_is_identity(scores: torch.Tensor) -> None:
    b, m = scores.shape
    assert torch.equal(topk_indices(scores, m), torch.arange(m).expand(b, m))


@given(data=st.data())
def test_topk_mask_per_row_k_matches_topk_indices(data: st.DataObject) -> None:
    scores = data.draw(score_rows())
    b, m = scores.shape
    k = torch.tensor(data.draw(st.lists(st.integers(0, m), min_size=b, max_size=b), label="k"))
    mask = topk_mask(scores, k)
    assert mask.sum(1).tolist() == k.tolist()
    indices = mask_to_indices(mask)
    for row in range(b):
        n = int(k[row])
        assert torch.equal(indices[row, :n], topk_indices(scores[row : row + 1], n)[0])
        assert bool((indices[row, n:] == -1).all())


@given(data=st.data())
def test_topk_mask_with_valid_equals_topk_over_the_valid_entries(data: st.DataObject) -> None:
    scores = data.draw(score_rows())
    b, m = scores.shape
    g = torch.Generator().manual_seed(data.draw(seeds))
    valid = torch.rand(b, m, generator=g) < 0.6
    k = torch.tensor([data.draw(st.integers(0, int(n)), label="k") for n in valid.sum(1)])
    mask = topk_mask(scores, k, valid=valid)
    assert not bool((mask & ~valid).any()) and mask.sum(1).tolist() == k.tolist()
    for row in range(b):
        columns = torch.nonzero(valid[row]).flatten()  # ascending, so ties still go to the lower index
        picked = columns[topk_indices(scores[row : row + 1, columns], int(k[row]))[0]]
        assert torch.equal(torch.nonzero(mask[row]).flatten(), picked)
    with pytest.raises(ValueError, match="valid entries per row"):
        topk_mask(scores, valid.sum(1) + 1, valid=valid)


def test_all_equal_scores_pick_the_first_indices() -> None:
    assert topk_indices(torch.zeros(2, 7, dtype=torch.bfloat16), 3).tolist() == [[0, 1, 2], [0, 1, 2]]


def test_bad_k_is_a_value_error() -> None:
    with pytest.raises(ValueError, match="k=5"):
        topk_indices(torch.zeros(1, 4), 5)
    with pytest.raises(ValueError, match=r"\[-1\]"):
        topk_mask(torch.zeros(1, 4), torch.tensor([-1]))
    with pytest.raises(ValueError, match=r"\[B, M\]"):
        topk_indices(torch.zeros(4), 1)


def test_gather_tokens_zero_fills_padding() -> None:
    x = torch.arange(12.0).reshape(1, 4, 3)
    out = gather_tokens(x, torch.tensor([[2, -1, 0]]))
    assert out.tolist() == [[[6.0, 7.0, 8.0], [0.0, 0.0, 0.0], [0.0, 1.0, 2.0]]]
