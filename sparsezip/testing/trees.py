"""Tiny dataset trees in every on-disk layout the loaders read (for tests and benchmarks of the plumbing).

``write_tree(family, layout, root)`` writes a few deterministic samples of ``family`` (pope, mme, docvqa,
coco_captions) in ``layout`` (``files`` = the original release, ``parquet`` = the HF layout) under ``root`` and
returns the path to hand to ``load_dataset``. Images are 8x8 solid colours, one colour per image, stored as
PNG bytes in both layouts (also under ``.jpg`` names: PIL decodes by content), so both decode identically.
"""

from __future__ import annotations

import io
import json
from pathlib import Path

from PIL import Image

POPE_ROWS = {  # category -> [(question_id, image number, object, label)]
    "random": [(1, 1, "dog", "yes"), (2, 1, "car", "no"), (3, 2, "cat", "yes"), (4, 2, "bus", "no")],
    "adversarial": [(1, 1, "dog", "yes"), (2, 1, "leash", "no"), (3, 2, "cat", "yes")],
}
MME_ITEMS = {  # subtask -> [(image stem, [(question, answer), (question, answer)])]
    "count": [("000000000001", [("Are there two dogs?", "Yes"), ("Are there three dogs?", "No")]),
              ("000000000002", [("Is there one cat?", "Yes"), ("Are there two cats?", "No")])],
    "color": [("000000000003", [("Is the car red?", "No"), ("Is the car blue?", "Yes")])],
    "artwork": [("10002", [("Is this by Monet?", "Yes"), ("Is this by Picasso?", "No")])],
}  # fmt: skip
DOCVQA_ROWS = [  # (questionId, document number, question, answers)
    (101, 1, "What is the date?", ["May 5, 1990", "5 May 1990"]),
    (102, 1, "Who signed?", ["J. Smith"]),
    (103, 2, "What is the total?", ["$12.50"]),
]
CAPTION_ROWS = [(42, 1, ["a dog on grass", "a brown dog"]), (43, 2, ["a red car"])]
MME_SUFFIX = " Please answer yes or no."


def image_bytes(number: int, fmt: str = "PNG") -> bytes:
    """An 8x8 solid-colour image (colour from ``number``), encoded as ``fmt``."""
    colour = ((number * 67) % 256, (number * 131) % 256, (number * 199) % 256)
    buffer = io.BytesIO()
    Image.new("RGB", (8, 8), colour).save(buffer, format=fmt)
    return buffer.getvalue()


def coco_name(number: int) -> str:
    return f"COCO_val2014_{number:012d}.jpg"


def _image_cell(number: int, name: str) -> dict:
    return {"bytes": image_bytes(number), "path": name}


def _write_parquet(path: Path, rows: list[dict], row_group_size: int = 2) -> Path:
    """Small row groups on purpose, so multi-row-group reads are exercised."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    path.parent.mkdir(parents=True, exist_ok=True)
    pq.write_table(pa.Table.from_pylist(rows), path, row_group_size=row_group_size)
    return path


def write_pope(root: Path, layout: str) -> Path:
    if layout == "files":
        folder = root / "pope"
        (folder / "val2014").mkdir(parents=True, exist_ok=True)
        for number in (1, 2):
            (folder / "val2014" / coco_name(number)).write_bytes(image_bytes(number))
        for category, rows in POPE_ROWS.items():
            lines = [json.dumps({"question_id": q, "image": coco_name(n), "text": f"Is there a {o} in the image?",
                                 "label": lab}) for q, n, o, lab in rows]
            (folder / f"coco_pope_{category}.json").write_text("\n".join(lines) + "\n", encoding="utf-8")
        return folder
    rows = [
        {"id": str(i), "question_id": str(q), "question": f"Is there a {o} in the image?", "answer": lab,
         "image_source": coco_name(n)[:-4], "image": _image_cell(n, coco_name(n)), "category": category}
        for i, (category, q, n, o, lab) in enumerate(
            (c, *row) for c, rows in POPE_ROWS.items() for row in rows)
    ]  # fmt: skip
    _write_parquet(root / "pope" / "data" / "test-00000-of-00001.parquet", rows)
    return root / "pope"


def write_mme(root: Path, layout: str) -> Path:
    if layout == "files":
        bench = root / "MME_Benchmark_release_version" / "MME_Benchmark"
        number = 0
        for subtask, items in MME_ITEMS.items():
            nested = subtask == "artwork"
            image_dir = bench / subtask / ("images" if nested else "")
            txt_dir = bench / subtask / ("questions_answers_YN" if nested else "")
            image_dir.mkdir(parents=True, exist_ok=True)
            txt_dir.mkdir(parents=True, exist_ok=True)
            for stem, qas in items:
                number += 1
                (image_dir / f"{stem}.jpg").write_bytes(image_bytes(number))
                text = "".join(f"{q}{MME_SUFFIX}\t{a}\n" for q, a in qas)
                (txt_dir / f"{stem}.txt").write_text(text, encoding="utf-8")
        return root / "MME_Benchmark_release_version"
    rows = []
    number = 0
    for subtask, items in MME_ITEMS.items():
        for stem, qas in items:
            number += 1
            rel = f"{subtask}/{'images/' if subtask == 'artwork' else ''}{stem}.jpg"
            for q, a in qas:
                rows.append({"question_id": rel, "image": _image_cell(number, rel), "question": q + MME_SUFFIX,
                             "answer": a, "category": subtask})
    _write_parquet(root / "mme" / "data" / "test-00000-of-00001.parquet", rows, row_group_size=3)
    return root / "mme"


def write_docvqa(root: Path, layout: str) -> Path:
    folder = root / "docvqa"
    if layout == "files":
        (folder / "documents").mkdir(parents=True, exist_ok=True)
        data = []
        for qid, doc, question, answers in DOCVQA_ROWS:
            image = f"documents/doc{doc}.png"
            (folder / image).write_bytes(image_bytes(doc))
            data.append({"questionId": qid, "question": question, "image": image, "docId": doc,
                         "answers": answers, "data_split": "val"})
        payload = {"dataset_name": "docvqa", "dataset_split": "val", "data": data}
        (folder / "val_v1.0.json").write_text(json.dumps(payload, indent=1), encoding="utf-8")
        return folder
    rows = [{"questionId": str(q), "question": question, "question_types": ["form"],
             "image": _image_cell(doc, f"doc{doc}.png"), "docId": doc, "answers": answers}
            for q, doc, question, answers in DOCVQA_ROWS]
    _write_parquet(folder / "data" / "validation-00000-of-00001.parquet", rows)
    return folder


def write_coco_captions(root: Path, layout: str) -> Path:
    if layout != "files":
        raise ValueError(f"COCO captions exist only in the 'files' layout, got {layout!r}")
    folder = root / "coco"
    (folder / "val2014").mkdir(parents=True, exist_ok=True)
    images, annotations = [], []
    for image_id, number, captions in CAPTION_ROWS:
        (folder / "val2014" / coco_name(number)).write_bytes(image_bytes(number))
        images.append({"id": image_id, "file_name": coco_name(number)})
        annotations.extend({"image_id": image_id, "id": len(annotations), "caption": c} for c in captions)
    payload = {"images": images, "annotations": annotations}
    (folder / "captions_val2014.json").write_text(json.dumps(payload), encoding="utf-8")
    return folder


WRITERS = {"pope": write_pope, "mme": write_mme, "docvqa": write_docvqa, "coco_captions": write_coco_captions}


def write_tree(family: str, layout: str, root: str | Path) -> Path:
    """Write a tiny ``family`` dataset in ``layout`` under ``root``; returns the dataset path."""
    if family not in WRITERS:
        raise ValueError(f"unknown family {family!r}; choose one of {sorted(WRITERS)}")
    if layout not in ("files", "parquet"):
        raise ValueError(f"layout must be 'files' or 'parquet', got {layout!r}")
    return WRITERS[family](Path(root), layout)
