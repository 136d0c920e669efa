"""The committed embedded default: fixtures/data equals a fresh make-fixtures, and fixtures/tiny-llava is a
real checkpoint that loads with plain from_pretrained and answers the committed questions."""

from __future__ import annotations

import io
import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from sparsezip.cli import main
from sparsezip.data.prompts import build_prompt

ROOT = Path(__file__).resolve().parents[1]
DATA = ROOT / "fixtures" / "data"
MODEL = ROOT / "fixtures" / "tiny-llava"
IMAGE_SUFFIXES = {".jpg", ".png"}


def _files(root: Path) -> list[Path]:
    return sorted(p.relative_to(root) for p in root.rglob("*") if p.is_file())


def test_committed_data_equals_a_fresh_make_fixtures(tmp_path: Path) -> None:
    assert main(["make-fixtures", "--out", str(tmp_path), "--seed", "0"]) == 0
    committed, fresh = _files(DATA), _files(tmp_path)
    assert committed == fresh
    for rel in committed:
        a, b = (DATA / rel).read_bytes(), (tmp_path / rel).read_bytes()
        if a == b:
            continue
        # Another libjpeg / FreeType build may encode or rasterise slightly differently; the pixels must
        # still agree. Any non-image difference is a real change of the fixtures.
        assert rel.suffix in IMAGE_SUFFIXES, f"{rel} differs from a fresh make-fixtures"
        pa, pb = (np.asarray(Image.open(io.BytesIO(x)).convert("RGB"), dtype=np.int16) for x in (a, b))
        assert pa.shape == pb.shape and np.abs(pa - pb).mean() < 2, f"{rel}: pixels differ"


def test_committed_model_loads_like_a_real_checkpoint_and_answers(embedded_plain) -> None:
    model, processor = embedded_plain
    assert (MODEL / "model.safetensors").stat().st_size < 16 * 2**20
    rows = []
    for setting in ("random", "popular", "adversarial"):
        lines = (DATA / "pope" / f"coco_pope_{setting}.json").read_text().splitlines()[:12]
        rows += [json.loads(line) for line in lines]
    images = [Image.open(DATA / "pope" / "val2014" / r["image"]) for r in rows]
    prompts = [build_prompt("pope", r["text"]) for r in rows]
    inputs = processor(images=images, text=prompts, return_tensors="pt", padding=True)
    out = model.generate(**inputs, max_new_tokens=4, do_sample=False)
    texts = processor.batch_decode(out[:, inputs["input_ids"].shape[1]:], skip_special_tokens=True)
    assert all(t.strip() in ("Yes", "No") for t in texts), texts
    right = sum((t.strip() == "Yes") == (r["label"] == "yes") for t, r in zip(texts, rows, strict=True))
    # a sanity bar, well above chance: the committed model answers all 36 (accuracy 0.975-0.978 on the full
    # 600-question splits through the adapter)
    assert right >= 0.85 * len(rows), f"{right}/{len(rows)} committed questions answered correctly"


@pytest.mark.parametrize("folder", ["tiny-llava", "tiny-llava-next", "tiny-qwen2.5-vl"])
def test_model_card_says_what_it_is(folder: str) -> None:
    """Every embedded family's card: what it is and is not, and the accuracy of its own training report."""
    model = ROOT / "fixtures" / folder
    card = (model / "README.md").read_text()
    assert "sanity model" in card and "not" in card
    report = json.loads((model / "training_report.json").read_text())
    assert card.startswith(f"# {folder}") and report["recipe"]["seed"] == 0
    from sparsezip.embedded.model_card import model_card

    assert card == model_card(report), "the committed card is not the one its report gives: regenerate it"
    for setting in ("random", "popular", "adversarial"):
        m = report["tasks"][f"pope-{setting}"]
        assert f"| pope-{setting} | F1 (accuracy, yes-ratio) | {m['f1']:.3f} ({m['accuracy']:.3f}," in card
    assert f"| docvqa | ANLS (exact match) | {report['tasks']['docvqa']['anls']:.3f}" in card


@pytest.mark.slow
def test_cls_attention_selection_beats_random_on_the_committed_model(embedded_plain) -> None:
    """The point of training the model: keeping the patches the CLS token attends to (what VisionZip and
    SparseZip rank by) must beat keeping random ones at 1/4 of the tokens, on POPE adversarial F1."""
    from sparsezip.embedded.probe import pope_probe

    model, processor = embedded_plain
    k = 144 // 4
    with torch.no_grad():
        full = pope_probe(model, processor, DATA, "adversarial", limit=120)
        # 300 questions: on the first 120 the two are within noise of each other (0.80 vs 0.83 on the committed
        # model), on 300 0.87 vs 0.76, on all 600 0.86 vs 0.79 (its model card)
        top = pope_probe(model, processor, DATA, "adversarial", selection="cls_topk", k=k, limit=300)
        rand = pope_probe(model, processor, DATA, "adversarial", selection="random", k=k, limit=300)
    assert full["f1"] >= 0.85  # the committed model: 0.98 on this probe's 120 questions (0.975 on all 600)
    assert top["f1"] > rand["f1"] + 0.05, (top, rand)
