"""`sparsezip smoke`: runs with no arguments, prints counts / times / answer, writes the overlay PNG."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from PIL import Image

from sparsezip.cli import main
from sparsezip.overlay import draw_token_overlay, patch_roles, slot_colour, tensor_to_image


def test_smoke_with_a_checkpoint_and_an_image(tiny_llava_dir: Path, tmp_path: Path,
                                              capsys: pytest.CaptureFixture[str]) -> None:
    image = tmp_path / "scene.png"
    Image.new("RGB", (40, 30), (200, 10, 10)).save(image)
    status = main(["smoke", "--model-path", str(tiny_llava_dir), "--image", str(image), "--prompt", "Is it red?",
                   "--method", "none", "--max-new-tokens", "2", "--out", str(tmp_path / "out")])
    printed = capsys.readouterr().out
    assert status == 0
    assert "visual tokens: 144 -> 144" in printed and "answer (" in printed and "prefill" in printed
    with Image.open(tmp_path / "out" / "smoke-none.png") as png:
        assert png.size == (12 * (450 // 12), 12 * (450 // 12))


def test_smoke_clip_only_with_in_llm_method(tiny_llava_dir: Path, tmp_path: Path,
                                            capsys: pytest.CaptureFixture[str]) -> None:
    status = main(["smoke", "--model-path", str(tiny_llava_dir), "--method", "sparsevlm", "--clip-only",
                   "--out", str(tmp_path)])
    assert status == 0 and "answer" not in capsys.readouterr().out
    assert (tmp_path / "smoke-sparsevlm.png").is_file()


def test_smoke_reports_bad_input_as_a_clear_error(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["smoke", "--image", str(tmp_path / "missing.png"), "--out", str(tmp_path)]) == 2
    assert "missing.png does not exist" in capsys.readouterr().err


def test_overlay_marks_kept_merged_and_dropped_patches() -> None:
    # 2 x 2 patches + CLS: patch 1 kept (slot 0), patch 2 merged into slot 1, patches 3 and 4 dropped
    kept, assignment = torch.tensor([1, -1]), torch.tensor([-1, 0, 1, -1, -1])
    dominant, slots = patch_roles(kept, assignment)
    assert dominant.tolist() == [True, False, False, False] and slots.tolist() == [0, 1, -1, -1]
    out = draw_token_overlay(Image.new("RGB", (8, 8), (128, 128, 128)), kept, assignment, cell=10)
    pixels = out.load()
    assert pixels[5, 5] == (128, 128, 128) and pixels[0, 0] == (0, 0, 0)  # kept: framed, untinted inside
    assert pixels[15, 5] != (128, 128, 128) and pixels[15, 5] != pixels[5, 15]  # merged: tinted
    assert sum(pixels[5, 15]) < sum(pixels[5, 5])  # dropped: darkened
    assert slot_colour(1) != slot_colour(2)
    with pytest.raises(ValueError, match="square grid"):
        draw_token_overlay(Image.new("RGB", (8, 8)), kept, torch.tensor([-1, 0, 1, -1]))
    # Without CLS (prefix 0) the same four patches are indices 0-3.
    dominant, slots = patch_roles(kept - 1, assignment[1:], prefix=0)
    assert dominant.tolist() == [True, False, False, False] and slots.tolist() == [0, 1, -1, -1]


def test_tensor_to_image_undoes_normalisation() -> None:
    image = tensor_to_image(torch.zeros(3, 2, 2), mean=[0.5, 0.5, 0.5], std=[0.2, 0.2, 0.2])
    assert image.getpixel((0, 0)) == (128, 128, 128)


def test_smoke_runs_with_no_model_or_image_arguments(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["smoke", "--max-new-tokens", "2", "--out", str(tmp_path)]) == 0
    printed = capsys.readouterr().out
    assert printed.startswith("model: ") and "answer (" in printed
    assert len(list(tmp_path.glob("smoke-*.png"))) == 1
