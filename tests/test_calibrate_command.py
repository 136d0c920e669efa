"""`sparsezip calibrate` on the embedded model and data: the printed constants hit the target mean K."""

import json
from pathlib import Path

import pytest

from sparsezip.cli import main

ROOT = Path(__file__).resolve().parents[1]
ARGS = ["calibrate", "--dataset", "mme", "--data", str(ROOT / "fixtures" / "data"),
        "--model-path", str(ROOT / "fixtures" / "tiny-llava"), "--device", "cpu", "--images", "8"]


def test_calibration_hits_the_budgets_dominant_share(capsys: pytest.CaptureFixture[str]) -> None:
    assert main([*ARGS, "--budget", "16", "--k-min", "6", "--k-max", "14"]) == 0
    result = json.loads(capsys.readouterr().out)
    assert result["target_mean_k"] == 9  # budget 16 = 1 CLS + 9 dominant + 6 contextual
    assert abs(result["mean_k"] - 9) <= 0.5 and 6 <= result["min_k"] <= result["max_k"] <= 14
    assert result["num_images"] == 8  # MME's question pairs count once per image
    assert result["config"]["dynk"]["c"] == result["c"] and result["config"]["dynamic_k"] is True


def test_a_target_outside_the_range_is_a_clear_error(capsys: pytest.CaptureFixture[str]) -> None:
    assert main([*ARGS, "--budget", "16"]) == 2
    assert "outside the dynamic-K range [k_min=32, k_max=64]" in capsys.readouterr().err
