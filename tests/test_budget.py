"""Fixed / dynamic K and the calibration of dynamic K."""

import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

from sparsezip.budget import check_budget_fits, check_budget_positive, fixed_k, split_budget
from sparsezip.methods.sparsezip.dynamic_k import calibrate_dynamic_k, dynamic_k, score_log_variance
from sparsezip.testing.strategies import score_rows


@st.composite
def k_ranges(draw: st.DrawFn) -> tuple[int, int]:
    k_min = draw(st.integers(0, 40))
    return k_min, draw(st.integers(k_min, 80))


@given(scores=score_rows(dtype=torch.float32), bounds=k_ranges(), c=st.floats(-50, 50), scale=st.floats(0, 20))
def test_dynamic_k_stays_in_range(scores: torch.Tensor, bounds: tuple[int, int], c: float, scale: float) -> None:
    k_min, k_max = bounds
    k = dynamic_k(scores, k_min=k_min, k_max=k_max, c=c, scale=scale)
    assert k.dtype == torch.long and k.shape == (scores.shape[0],)
    assert bool((k >= min(k_min, scores.shape[1])).all() and (k <= min(k_max, scores.shape[1])).all())


@given(scores=score_rows(dtype=torch.float32), bounds=k_ranges(), c=st.floats(-50, 50),
       scale=st.floats(0, 20), factor=st.floats(1.0, 100.0))
def test_dynamic_k_is_monotone_in_score_variance(scores, bounds, c: float, scale: float, factor: float) -> None:
    k_min, k_max = bounds
    k = dynamic_k(scores, k_min=k_min, k_max=k_max, c=c, scale=scale)
    k_spread = dynamic_k(scores * factor, k_min=k_min, k_max=k_max, c=c, scale=scale)  # variance * factor^2
    assert bool((k_spread >= k).all())


def test_published_constants_pin_k_at_a_bound() -> None:
    # z-scored terms: Var(s) <= 2.8^2, so ln(Var) + 12 <= 14.1 < k_min = 32 for every image.
    scores = torch.randn(16, 576, generator=torch.Generator().manual_seed(0)) * 2.8
    assert dynamic_k(scores, k_min=32, k_max=64, c=12.0).tolist() == [32] * 16


def test_fixed_k_is_clamped_to_the_patch_count() -> None:
    assert fixed_k(3, 54, 576).tolist() == [54] * 3
    assert fixed_k(2, 54, 16).tolist() == [16, 16]
    with pytest.raises(ValueError, match="-1"):
        fixed_k(1, -1, 4)


@pytest.mark.parametrize(("budget", "expected"), [(64, (40, 23)), (87, (54, 32)), (128, (80, 47)), (192, (120, 71)), (1, (0, 0))])
def test_split_budget_adds_up(budget: int, expected: tuple[int, int]) -> None:
    dominant, contextual = split_budget(budget, 1, 54, 32)
    assert (dominant, contextual) == expected and 1 + dominant + contextual == budget


def test_budget_checks_name_the_numbers() -> None:
    with pytest.raises(ValueError, match="budget=0"):
        check_budget_positive("m", 0)
    with pytest.raises(ValueError, match="budget=True"):
        check_budget_positive("m", True)
    with pytest.raises(ValueError, match="budget=65 exceeds the 64 patches"):
        check_budget_fits("m", 65, 64)


@given(seed=st.integers(0, 1000), target=st.floats(34, 62), images=st.integers(8, 64))
def test_calibration_hits_the_target_mean_with_spread(seed: int, target: float, images: int) -> None:
    scores = torch.randn(images, 100, generator=torch.Generator().manual_seed(seed))
    scores = scores * torch.linspace(0.2, 3.0, images)[:, None]  # images differ in score variance
    log_var = score_log_variance(scores, 1e-6)
    cal = calibrate_dynamic_k(log_var, target, k_min=32, k_max=64)
    # K is an integer per image, so the mean moves in steps of 1 / images (or more, where images share a K).
    assert abs(cal.mean_k - target) <= 1.0
    assert cal.std_k > 0 and 32 <= cal.min_k <= cal.max_k <= 64 and cal.num_images == images
    k = dynamic_k(scores, k_min=32, k_max=64, c=cal.c, scale=cal.scale, eps=1e-6)
    assert float(k.double().mean()) == pytest.approx(cal.mean_k)  # the calibrated constants reproduce it


def test_calibration_with_fixed_scale_and_degenerate_samples() -> None:
    log_var = torch.tensor([0.1, 1.3, 2.2, 3.4])
    cal = calibrate_dynamic_k(log_var, 40.0, k_min=32, k_max=64, scale=1.0)
    assert cal.scale == 1.0 and cal.mean_k == 40.0 and cal.as_config() == {"c": cal.c, "scale": 1.0}
    # c sits inside its plateau, not on a rounding edge: nudging it changes no image's K.
    for nudge in (-0.04, 0.04):
        assert torch.round(log_var + cal.c + nudge).tolist() == torch.round(log_var + cal.c).tolist()
    flat = calibrate_dynamic_k(torch.zeros(5), 40.0, k_min=32, k_max=64)
    assert flat.mean_k == 40.0 and flat.std_k == 0.0  # no variance to spread: every image gets the target
    with pytest.raises(ValueError, match="target_mean_k=70"):
        calibrate_dynamic_k(log_var, 70, k_min=32, k_max=64)
    with pytest.raises(ValueError, match="empty"):
        calibrate_dynamic_k(torch.zeros(0), 40, k_min=32, k_max=64)
