"""ToMe at the tapped layer: mass conservation, exact budgets, the protected prefix, ToMe's round structure."""

from __future__ import annotations

import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

from sparsezip import VisionContext, get_method
from sparsezip.matching import bipartite_merge_labels
from sparsezip.testing.strategies import seeds, vision_contexts


@given(data=st.data())
def test_mass_is_conserved_and_every_patch_lands_in_exactly_one_token(data: st.DataObject) -> None:
    ctx = data.draw(vision_contexts(dtype=torch.float32, max_grid=7))
    budget = data.draw(st.integers(1, ctx.num_patches), label="budget")
    res = get_method("tome", budget=budget)(ctx)
    p = ctx.prefix
    assert res.lengths.tolist() == [budget] * ctx.batch_size
    assert bool((res.assignment[:, :p] == -1).all())  # CLS: protected, then dropped
    assert bool(((res.assignment[:, p:] >= 0) & (res.assignment[:, p:] < budget)).all())
    onehot = (res.assignment[:, None, :] == torch.arange(budget)[None, :, None]).float()  # [B, S, N]
    sizes = onehot.sum(-1)
    assert bool((sizes >= 1).all()) and bool((sizes.sum(1) == ctx.num_patches).all())
    members_sum = torch.bmm(onehot, ctx.hidden.float())  # sum of the source patches of every token
    scale = 1 + ctx.hidden.abs().amax()
    torch.testing.assert_close(res.tokens * sizes[:, :, None], members_sum, rtol=0, atol=1e-5 * scale * ctx.num_patches)
    torch.testing.assert_close((res.tokens * sizes[:, :, None]).sum(1), ctx.hidden[:, p:].float().sum(1),
                               rtol=0, atol=1e-5 * scale * ctx.num_patches)


def test_one_round_merges_each_pair_exactly_like_bipartite_matching() -> None:
    # Four tokens + CLS in two clear pairs: A = positions 0 (CLS), 2, 4; B = 1, 3. r = 2 merges both pairs.
    keys = torch.tensor([[[0.0, 0, 1], [1, 0, 0], [1, 0.1, 0], [0, 1, 0], [0.1, 1, 0]]])
    labels = bipartite_merge_labels(keys, target=3, prefix=1)
    assert labels.tolist() == [[0, 1, 1, 2, 2]]  # [CLS, B token 1 (+2), B token 3 (+4)]
    # r is capped at half of the unprotected tokens per round, so 576 -> 64 takes ToMe's four rounds.
    hidden = torch.randn(1, 577, 4, generator=torch.Generator().manual_seed(0))
    ctx = VisionContext(hidden=hidden, keys=hidden)
    res = get_method("tome", budget=64)(ctx)
    assert res.tokens.shape == (1, 64, 4)


@pytest.mark.parametrize("prefix", [0, 1, 2])
def test_protected_prefix_keeps_its_positions(prefix: int) -> None:
    keys = torch.randn(3, 30, 5, generator=torch.Generator().manual_seed(prefix))
    labels = bipartite_merge_labels(keys, target=prefix + 4, prefix=prefix)
    assert labels[:, :prefix].tolist() == [list(range(prefix))] * 3
    assert bool(((labels[:, prefix:] >= prefix) & (labels[:, prefix:] < prefix + 4)).all())
    assert all(len(set(row[prefix:])) == 4 for row in labels.tolist())


def test_identical_tokens_and_bad_targets() -> None:
    ctx = VisionContext(hidden=torch.ones(2, 17, 3), keys=torch.zeros(2, 17, 2))  # every match is a tie
    res = get_method("tome", budget=5)(ctx)
    torch.testing.assert_close(res.tokens, torch.ones(2, 5, 3))
    with pytest.raises(ValueError, match="target"):
        bipartite_merge_labels(torch.zeros(1, 5, 2), target=1, prefix=1)
    with pytest.raises(ValueError, match="prefix"):
        bipartite_merge_labels(torch.zeros(1, 5, 2), target=4, prefix=3)


@given(seed=seeds)
def test_an_image_does_not_depend_on_its_batch(seed: int) -> None:
    g = torch.Generator().manual_seed(seed)
    ctx = VisionContext(hidden=torch.randn(3, 50, 6, generator=g), keys=torch.randn(3, 50, 4, generator=g))
    batched = get_method("tome", budget=9)(ctx)
    alone = get_method("tome", budget=9)(VisionContext(hidden=ctx.hidden[1:2], keys=ctx.keys[1:2]))
    assert torch.equal(batched.assignment[1:2], alone.assignment)
    torch.testing.assert_close(batched.tokens[1:2], alone.tokens)
