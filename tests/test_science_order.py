"""The order the science requires, on the embedded default (tiny LLaVA-1.5) through the real adapter and
loader: at 1/4 of the visual tokens, ``none >= visionzip > random + 0.05`` on synthetic POPE adversarial F1.

If this fails after a change to a method, the adapter or the model, compression on the embedded default no
longer means anything: attention-based selection must beat random selection at the same token count. The same
check on every embedded family (LLaVA-NeXT, Qwen2.5-VL: ~40 s of CPU) runs with the benchmark suite,
``benchmarks/test_family_science_order.py``.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from sparsezip.testing.science import is_ordered, pope_f1_at_quarter_budget

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.slow
def test_none_ge_visionzip_gt_random_on_pope_adversarial(embedded_vlm) -> None:
    # The first 120 questions (20 images x 6): the lead on tiny-shapes is large (~0.2) there.
    f1 = pope_f1_at_quarter_budget(embedded_vlm, ROOT / "fixtures" / "data" / "pope", questions=120)
    assert is_ordered(f1), f1


def test_quarter_budget_check_refuses_no_questions(embedded_vlm) -> None:
    with pytest.raises(ValueError, match="questions must be positive"):
        pope_f1_at_quarter_budget(embedded_vlm, ROOT / "fixtures" / "data" / "pope", questions=0)
