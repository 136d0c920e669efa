"""The scoring side of the published numbers: LLaVA-1.5-13B's released POPE answers, scored by ``sparsezip score``
on the label files the paper used, give LLaVA's own counts per split and the model zoo's 85.9
(``fixtures/reference/llava-1.5-13b/SOURCE.md``)."""

from __future__ import annotations

import gzip
import hashlib
import json
from pathlib import Path

import pytest

from sparsezip.cli import main
from sparsezip.data.prompts import IMAGE_PLACEHOLDER, build_prompt
from sparsezip.eval.published import POPE_SPLITS

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures" / "reference"
REFERENCE = json.loads((FIXTURES / "llava-1.5-13b" / "reference.json").read_text())


def f1(counts: dict) -> float:
    return 2 * counts["tp"] / (2 * counts["tp"] + counts["fp"] + counts["fn"])


def test_released_13b_pope_answers_score_to_the_published_value(tmp_path: Path,
                                                                capsys: pytest.CaptureFixture) -> None:
    raw = gzip.decompress((FIXTURES / "llava-1.5-13b" / "llava-v1.5-13b.jsonl.gz").read_bytes())
    assert hashlib.sha256(raw).hexdigest() == REFERENCE["answers_sha256"]
    labels = {s: [json.loads(line) for line in (FIXTURES / "pope" / f"coco_pope_{s}.json").open()]
              for s in POPE_SPLITS}
    by_offset = {offset: split for split, offset in REFERENCE["question_ids"]["offset"].items()}
    rows = []
    for line in raw.decode().splitlines():
        answer = json.loads(line)
        offset = answer["question_id"] // 10_000_000 * 10_000_000
        split, local = by_offset[offset], answer["question_id"] - offset
        label = labels[split][local - 1]  # LLaVA's numbering follows the label file's lines
        assert label["question_id"] == local
        # the released prompt is this label's question with our short-answer suffix: the same protocol
        assert f"{IMAGE_PLACEHOLDER}\n{answer['prompt']} ASSISTANT:" in build_prompt("pope", label["text"])
        rows.append({"question_id": local, "category": split, "prediction": answer["text"]})
    assert len(rows) == sum(len(v) for v in labels.values()) == 8910
    predictions = tmp_path / "llava-v1.5-13b.jsonl"
    predictions.write_text("".join(json.dumps(r) + "\n" for r in rows))

    assert main(["score", "--dataset", "pope", "--annotations", str(FIXTURES / "pope"),
                 "--predictions", str(predictions)]) == 0
    result = json.loads(capsys.readouterr().out)
    upstream = REFERENCE["upstream_eval_pope"]
    for split in POPE_SPLITS:
        assert result["categories"][split]["f1"] == pytest.approx(f1(upstream[split]), abs=1e-12)
        assert result["categories"][split]["n"] == sum(upstream[split].values())
    assert round(100 * result["mean_f1"], 1) == REFERENCE["published"]["value"]  # 85.947 -> 85.9
