"""Shortening runs of <image> placeholders: each row keeps its text and the first K_b placeholders, re-packed
left-padded (property-tested against a per-row reference)."""

from __future__ import annotations

import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

from sparsezip.adapters.placeholders import shorten_image_runs

IMG, PAD = 7, 0


@st.composite
def batches(draw: st.DrawFn) -> tuple[list[list[int]], list[int], list[int], bool]:
    """Rows of text (ids 1..6 and 8..9) around one run of image placeholders, its length per row (the same
    for every row, as LLaVA-1.5, or drawn per row, as LLaVA-NeXT's image-size-dependent counts), plus per-row
    counts."""
    batch = draw(st.integers(1, 4))
    same = draw(st.booleans(), label="same run length")
    runs = [draw(st.integers(1, 6))] * batch if same else [draw(st.integers(1, 6)) for _ in range(batch)]
    text = st.lists(st.sampled_from([1, 2, 3, 4, 5, 6, 8, 9]), max_size=5)
    rows = [draw(text) + [IMG] * run + draw(text) for run in runs]
    counts = [draw(st.integers(0, run)) for run in runs]
    return rows, runs, counts, draw(st.booleans())


def _pad(rows: list[list[int]], left: bool) -> tuple[torch.Tensor, torch.Tensor]:
    width = max(len(r) for r in rows)
    ids = torch.full((len(rows), width), PAD)
    mask = torch.zeros(len(rows), width, dtype=torch.long)
    for b, row in enumerate(rows):
        cols = slice(width - len(row), width) if left else slice(0, len(row))
        ids[b, cols], mask[b, cols] = torch.tensor(row), 1
    return ids, mask


@given(batches())
def test_matches_a_per_row_reference(case: tuple[list[list[int]], list[int], list[int], bool]) -> None:
    rows, runs, counts, left = case
    ids, mask = _pad(rows, left)
    new_ids, new_mask = shorten_image_runs(
        ids, mask, torch.tensor(counts), image_token_id=IMG, pad_token_id=PAD, expected_runs=torch.tensor(runs)
    )
    expected = []
    for row, run, k in zip(rows, runs, counts, strict=True):
        start = row.index(IMG)
        expected.append(row[:start] + [IMG] * k + row[start + run :])
    exp_ids, exp_mask = _pad(expected, left=True)
    assert torch.equal(new_ids, exp_ids) and torch.equal(new_mask, exp_mask)


def test_full_counts_leave_a_left_padded_batch_unchanged() -> None:
    ids, mask = _pad([[1, IMG, IMG, 2], [1, 2, IMG, IMG, 3]], left=True)
    new_ids, new_mask = shorten_image_runs(ids, mask, torch.tensor([2, 2]), image_token_id=IMG, pad_token_id=PAD,
                                           expected_runs=2)  # one int: the same run length in every row
    assert torch.equal(new_ids, ids) and torch.equal(new_mask, mask)


def test_rows_with_different_run_lengths() -> None:
    ids, mask = _pad([[1, IMG, IMG, IMG, 2], [3, IMG, 4]], left=True)
    new_ids, new_mask = shorten_image_runs(ids, mask, torch.tensor([2, 1]), image_token_id=IMG, pad_token_id=PAD,
                                           expected_runs=[3, 1])
    assert new_ids.tolist() == [[1, IMG, IMG, 2], [PAD, 3, IMG, 4]] and new_mask.tolist() == [[1] * 4, [0, 1, 1, 1]]
    with pytest.raises(ValueError, match=r"expected \[1, 3\], got \[3, 1\]"):
        shorten_image_runs(ids, mask, torch.tensor([1, 1]), image_token_id=IMG, pad_token_id=PAD, expected_runs=[1, 3])
    with pytest.raises(ValueError, match=r"counts \[2, 2\] for runs \[3, 1\]"):
        shorten_image_runs(ids, mask, torch.tensor([2, 2]), image_token_id=IMG, pad_token_id=PAD, expected_runs=[3, 1])


@pytest.mark.parametrize(
    ("counts", "run", "match"),
    [([3], 2, "counts must lie in"), ([-1], 2, "counts must lie in"), ([1, 1], 2, "counts must be"),
     ([1], 3, r"expected \[3\], got \[2\]"), ([1], [2, 2], "expected_runs must be one int or")],
)
def test_bad_input(counts: list[int], run: int | list[int], match: str) -> None:
    ids, mask = _pad([[1, IMG, IMG, 2]], left=True)
    with pytest.raises(ValueError, match=match):
        shorten_image_runs(ids, mask, torch.tensor(counts), image_token_id=IMG, pad_token_id=PAD, expected_runs=run)
    with pytest.raises(ValueError, match="both be"):
        shorten_image_runs(ids[0], mask[0], torch.tensor(counts), image_token_id=IMG, pad_token_id=PAD, expected_runs=run)
