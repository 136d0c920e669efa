"""The pre-run fit check on LLaVA-NeXT's geometry: a method runs per crop, at the per-crop budget."""

from __future__ import annotations

import pytest

from sparsezip.methods import get_method
from sparsezip.methods.fit import check_method_fits


def test_a_budget_is_checked_per_view_on_a_crop_model() -> None:
    """pool at 20 tokens on 5 crops of 36 patches runs (4 per crop, each crop a 6 x 6 grid), while 180 patches as
    one view are no square grid (refused); a budget below the view count is refused naming it."""
    pool = get_method("pool", budget=20)
    check_method_fits(pool, 180, prefix=1, views=5)
    with pytest.raises(ValueError, match="square grid"):
        check_method_fits(pool, 180, prefix=1)
    with pytest.raises(ValueError, match="cannot be spread over 5 views"):
        check_method_fits(get_method("visionzip", budget=4), 180, prefix=1, views=5)
    with pytest.raises(ValueError, match="views must divide"):
        check_method_fits(pool, 180, prefix=1, views=7)
