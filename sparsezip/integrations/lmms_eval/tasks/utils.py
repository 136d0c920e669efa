"""Helpers of the embedded synthetic POPE tasks: lmms-eval loads this file by path (``!function utils.x``).

The label files' fields (``question_id, image, text, label``) are renamed to the columns lmms-eval's own POPE
functions read (``question``, ``answer``); images are opened from the checkout's ``fixtures/data/pope/val2014``,
and an image name that would leave that folder is refused.
"""

from __future__ import annotations

from pathlib import Path

from PIL import Image

from sparsezip.data.sample import resolve_inside

# tasks/ -> lmms_eval/ -> integrations/ -> sparsezip/ -> the checkout (fixtures/ lives beside the package).
POPE_DIR = Path(__file__).resolve().parents[4] / "fixtures" / "data" / "pope"
IMAGE_DIR = POPE_DIR / "val2014"


def process_docs(dataset):
    """``datasets.Dataset`` of label-file rows -> the same rows with ``text`` as ``question`` and ``label`` as
    ``answer`` (lmms-eval's POPE columns)."""
    missing = [c for c in ("question_id", "image", "text", "label") if c not in dataset.column_names]
    if missing:
        raise ValueError(f"POPE label rows lack column(s) {missing}; got {dataset.column_names}")
    return dataset.rename_columns({"text": "question", "label": "answer"})


def doc_to_visual(doc: dict) -> list[Image.Image]:
    """The doc's image (RGB) from ``fixtures/data/pope/val2014``, as the one-element list lmms-eval expects."""
    path = resolve_inside(IMAGE_DIR, str(doc["image"]), f"question_id {doc['question_id']}")
    if not path.is_file():
        raise ValueError(f"question_id {doc['question_id']}: image {path} not found (run from a checkout; "
                         "`sparsezip make-fixtures --out fixtures/data` regenerates the data)")
    with Image.open(path) as image:
        return [image.convert("RGB")]
