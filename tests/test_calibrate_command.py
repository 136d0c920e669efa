"""`sparsezip calibrate` on the embedded model and data: the printed constants hit the target mean K, and what it
prints is a YAML config that ``--config`` accepts."""

from pathlib import Path

import pytest
import yaml

from sparsezip.cli import main
from sparsezip.commands._common import method_config
from sparsezip.methods import get_method

ROOT = Path(__file__).resolve().parents[1]
ARGS = ["calibrate", "--dataset", "mme", "--data", str(ROOT / "fixtures" / "data"),
        "--model-path", str(ROOT / "fixtures" / "tiny-llava"), "--device", "cpu", "--images", "8"]


def test_calibration_hits_the_budgets_dominant_share_and_prints_a_config(
    capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    assert main([*ARGS, "--budget", "16", "--k-min", "6", "--k-max", "14", "--config", "mme"]) == 0
    out = capsys.readouterr().out
    result = yaml.safe_load(out)["calibration"]
    assert result["target_mean_k"] == 9  # budget 16 = 1 CLS + 9 dominant + 6 contextual
    assert abs(result["mean_k"] - 9) <= 0.5 and 6 <= result["min_k"] <= result["max_k"] <= 14
    assert result["num_images"] == 8  # MME's question pairs count once per image
    config = tmp_path / "calibrated.yaml"
    config.write_text(out)
    block = method_config(str(config))  # what `eval --config calibrated.yaml` reads
    method = get_method("sparsezip", **block)
    assert method.cfg.dynk.c == result["c"] and method.cfg.dynk.scale == result["scale"]
    assert method._dynamic(method.cfg) and (method.cfg.k_min, method.cfg.k_max) == (6, 14)
    assert (method.cfg.dominant, method.cfg.merging.contextual_num) == (9, 6)
    assert method.cfg.cross_beta == 0.1  # the base config (the mme preset) carried through
    assert get_method("sparsezip", budget=16, **block).cfg == method.cfg  # the same split again


def test_a_target_outside_the_range_is_a_clear_error(capsys: pytest.CaptureFixture[str]) -> None:
    assert main([*ARGS, "--budget", "16"]) == 2
    assert "outside the dynamic-K range [k_min=32, k_max=64]" in capsys.readouterr().err
