"""The controls: ``random`` (seeded uniform selection) and ``pool`` (grid average pooling)."""

import pytest
import torch
import torch.nn.functional as F
from hypothesis import given
from hypothesis import strategies as st

from sparsezip import VisionContext, get_method
from sparsezip.methods.pool import grid_cells, pooled_grid
from sparsezip.testing.strategies import seeds


def _ctx(b: int, grid: int, seed: int = 0, c: int = 6, dtype: torch.dtype = torch.float32) -> VisionContext:
    g = torch.Generator().manual_seed(seed)
    n = grid * grid + 1
    return VisionContext(hidden=torch.randn(b, n, c, generator=g).to(dtype), keys=torch.randn(b, n, 2, generator=g))


@given(seed=seeds, grid=st.integers(1, 8), data=st.data())
def test_random_keeps_exactly_k_ascending_patches(seed: int, grid: int, data: st.DataObject) -> None:
    ctx = _ctx(3, grid, seed)
    k = data.draw(st.integers(1, grid * grid), label="budget")
    res = get_method("random", budget=k, seed=seed)(ctx)
    assert res.lengths.tolist() == [k] * 3 and res.k.tolist() == [k] * 3
    assert bool((res.kept_index >= 1).all()) and bool((res.kept_index[:, 1:] > res.kept_index[:, :-1]).all())
    assert torch.equal(res.tokens, ctx.hidden.gather(1, res.kept_index[:, :, None].expand(-1, -1, 6)))
    assert bool((res.assignment[:, 0] == -1).all())  # CLS dropped, like LLaVA's default selection
    assert int((res.assignment >= 0).sum()) == 3 * k  # the rest are pruned, by definition


def test_random_is_seeded() -> None:
    ctx = _ctx(2, 8)
    first = get_method("random", budget=16, seed=1)(ctx).kept_index
    assert torch.equal(first, get_method("random", budget=16, seed=1)(ctx).kept_index)
    assert not torch.equal(first, get_method("random", budget=16, seed=2)(ctx).kept_index)
    with pytest.raises(ValueError, match="seed"):
        get_method("random", seed="0")


def test_random_draws_per_image_seed_not_per_batch_position() -> None:
    ctx = _ctx(3, 8)
    seeds = torch.tensor([11, 12, 11])
    method = get_method("random", budget=16, seed=1)
    batched = method(VisionContext(hidden=ctx.hidden, keys=ctx.keys, sample_seeds=seeds)).kept_index
    assert torch.equal(batched[0], batched[2]) and not torch.equal(batched[0], batched[1])
    alone = method(VisionContext(hidden=ctx.hidden[1:2], keys=ctx.keys[1:2], sample_seeds=seeds[1:2])).kept_index
    assert torch.equal(alone[0], batched[1])


@pytest.mark.parametrize(("budget", "grid"), [(64, (8, 8)), (128, (8, 16)), (192, (12, 16)), (16, (4, 4)),
                                              (7, (1, 7)), (14, (2, 7)), (21, (3, 7)), (576, (24, 24))])
def test_pooled_grid_shapes(budget: int, grid: tuple[int, int]) -> None:
    assert pooled_grid(budget) == grid


@pytest.mark.parametrize("budget", [64, 144, 36, 16])
def test_pool_equals_adaptive_avg_pool_when_the_grid_divides(budget: int) -> None:
    ctx = _ctx(2, 24, c=5)
    res = get_method("pool", budget=budget)(ctx)
    h, w = pooled_grid(budget)
    image = ctx.hidden[:, 1:].reshape(2, 24, 24, 5).permute(0, 3, 1, 2)
    expected = F.adaptive_avg_pool2d(image, (h, w)).permute(0, 2, 3, 1).reshape(2, h * w, 5)
    assert torch.allclose(res.tokens, expected, atol=1e-5)
    assert res.kept_index.shape == (2, 0) and res.k.tolist() == [0, 0]


@pytest.mark.parametrize(("patches", "budgets"), [(144, (16, 32, 48)), (64, (7, 14, 21)), (576, (64, 128, 192))])
def test_pool_budgets_are_exact_and_every_patch_lands_in_its_cell(patches: int, budgets: tuple[int, ...]) -> None:
    grid = int(patches**0.5)
    ctx = _ctx(2, grid)
    for budget in budgets:
        res = get_method("pool", budget=budget)(ctx)
        h, w = pooled_grid(budget)
        assert res.lengths.tolist() == [budget, budget] and res.info == {"grid": [h, w]}
        assert bool((res.assignment[:, 0] == -1).all())
        assert torch.equal(res.assignment[0, 1:], grid_cells(grid, h, w))
        # Each pooled token is the plain mean of the patches assigned to it.
        for cell in (0, budget - 1):
            members = ctx.hidden[0][res.assignment[0] == cell]
            assert torch.allclose(res.tokens[0, cell], members.mean(0), atol=1e-5)


def test_pool_refuses_grids_it_cannot_make() -> None:
    with pytest.raises(ValueError, match=r"budget=65 exceeds the 64 patches"):
        get_method("pool", budget=65)(_ctx(1, 8))
    with pytest.raises(ValueError, match="budget=0"):
        get_method("pool", budget=0)
    with pytest.raises(ValueError, match="do not form a square"):
        get_method("pool", budget=4)(VisionContext(hidden=torch.zeros(1, 7, 2), keys=torch.zeros(1, 7, 2)))


@pytest.mark.parametrize(("grid", "budget"), [((8, 8), 61), ((24, 24), 107), ((2, 6), 9), ((6, 2), 5), ((3, 5), 15)])
def test_pool_makes_exactly_budget_rectangular_cells_when_no_cell_grid_fits(grid: tuple[int, int], budget: int) -> None:
    # Prime (or non-fitting) budgets: LLaVA-NeXT's per-crop split gives e.g. 107 = 320 tokens over 3 crops.
    rows, cols = grid
    ctx = VisionContext(hidden=torch.randn(2, 1 + rows * cols, 3), keys=torch.zeros(2, 1 + rows * cols, 2), grid=grid)
    res = get_method("pool", budget=budget)(ctx)
    assert res.lengths.tolist() == [budget, budget]
    cells = res.assignment[0, 1:].reshape(rows, cols)
    assert sorted(set(cells.flatten().tolist())) == list(range(budget))  # a partition into `budget` cells
    for cell in range(budget):  # every cell is a rectangle of the raster
        r, c = torch.nonzero(cells == cell, as_tuple=True)
        assert (r.max() - r.min() + 1) * (c.max() - c.min() + 1) == r.numel()


def test_pool_follows_a_non_square_grid() -> None:
    ctx = VisionContext(hidden=torch.randn(1, 6 * 12, 4), keys=torch.zeros(1, 72, 2), prefix=0, grid=(6, 12))
    res = get_method("pool", budget=8)(ctx)
    assert res.info == {"grid": [2, 4]}
    assert torch.equal(res.assignment[0], grid_cells((6, 12), 2, 4))
    image = ctx.hidden[0].reshape(6, 12, 4).permute(2, 0, 1)
    expected = F.adaptive_avg_pool2d(image, (2, 4)).permute(1, 2, 0).reshape(8, 4)
    assert torch.allclose(res.tokens[0], expected, atol=1e-5)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_controls_keep_the_input_dtype(dtype: torch.dtype) -> None:
    ctx = _ctx(2, 8, dtype=dtype)
    for name in ("random", "pool"):
        res = get_method(name, budget=16)(ctx)
        assert res.tokens.dtype == dtype and bool(torch.isfinite(res.tokens).all())
