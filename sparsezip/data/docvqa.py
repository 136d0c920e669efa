"""DocVQA (single-page, task 1): ``val_v1.0.json`` + ``documents/`` images, or the HF parquet layout."""

from __future__ import annotations

import json
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path

import numpy as np

from sparsezip import metrics
from sparsezip.data.parquet import find_parquet_files, iter_parquet_rows
from sparsezip.data.sample import Sample, require_file, require_question, resolve_inside
from sparsezip.data.tiny import check_layout, image_bytes, image_cell, write_parquet
from sparsezip.data.units import Units
from sparsezip.jsonio import sha256_file

_FIELDS = ("questionId", "question", "image", "answers")
_PARQUET_COLUMNS = ("questionId", "question", "answers")


def annotation_file(path: Path) -> Path:
    """``path`` itself, or the ``val_v1.0.json`` (else the only ``*.json``) in the folder."""
    if path.is_file():
        return path
    preferred = path / "val_v1.0.json"
    if preferred.is_file():
        return preferred
    candidates = sorted(path.glob("*.json"))
    if len(candidates) != 1:
        raise ValueError(f"no DocVQA annotation file val_v1.0.json in {path} (found {[c.name for c in candidates]})")
    return candidates[0]


def load_files(path: Path, *, check_images: bool = True) -> Iterator[Sample]:
    """Samples from the RRC json (``{"data": [{questionId, question, image, answers, ...}]}``); image paths
    (``documents/xxx.png``) are relative to the json's folder and may not leave it. ``check_images=False``
    (scoring from the json alone) does not require the image files to exist."""
    file = annotation_file(path)
    try:
        payload = json.loads(file.read_text(encoding="utf-8"))
    except json.JSONDecodeError as err:
        raise ValueError(f"{file}:{err.lineno}: malformed JSON ({err.msg}); expected the DocVQA annotation file "
                         "(val_v1.0.json)") from None
    data = payload.get("data") if isinstance(payload, dict) else None
    if not isinstance(data, list):
        raise ValueError(f"{file}: expected a JSON object with a 'data' list (the DocVQA val_v1.0.json format)")
    meta = {"source": file.name, "source_sha256": sha256_file(file)}
    for index, entry in enumerate(data):
        where = f"{file}: data[{index}]"
        missing = [k for k in _FIELDS if not isinstance(entry, dict) or k not in entry]
        if missing:
            raise ValueError(f"{where}: DocVQA entry lacks field(s) {missing}")
        image = resolve_inside(file.parent, str(entry["image"]), where)
        if check_images:
            require_file(image, where)
        question = require_question(entry["question"], where)
        yield Sample(entry["questionId"], image, question, _answers(entry["answers"], where), meta)


def load_parquet(path: Path, *, check_images: bool = True) -> Iterator[Sample]:
    """Samples from the HF parquet layout (``questionId`` is a string there; kept as given). Images stay in
    the parquet rows (``check_images`` is accepted for symmetry)."""
    files = find_parquet_files(path)
    hashes = {f: sha256_file(f) for f in files}
    for row, image, where in iter_parquet_rows(files, _PARQUET_COLUMNS):
        meta = {"source": image.file.name, "source_sha256": hashes[image.file]}
        question = require_question(row["question"], where)
        yield Sample(row["questionId"], image, question, _answers(row["answers"], where), meta)


def _answers(value: object, where: str) -> tuple[str, ...]:
    if not isinstance(value, list | tuple) or not value or not all(isinstance(a, str) for a in value):
        raise ValueError(f"{where}: 'answers' must be a non-empty list of strings, got {value!r}")
    return tuple(value)


def score(records: Sequence[Mapping], parser: str | None = None) -> dict:
    """``{anls, exact_match, n}`` from records ``{prediction, answers}`` (DocVQA has one parser)."""
    if parser not in (None, "official"):
        raise ValueError(f"DocVQA has no parser choice (ANLS scores the raw text), got parser={parser!r}")
    return metrics.docvqa_metrics([r["prediction"] for r in records], [r["answers"] for r in records])


def paired_units(records: Sequence[Mapping], parser: str | None = None) -> Units:
    """DocVQA records (``prediction``, ``answers``) -> :class:`Units` (ANLS; correctness = exact match)."""
    scores = np.array([metrics.anls(r["prediction"], r["answers"]) for r in records])
    correct = np.array([metrics.exact_match(r["prediction"], r["answers"]) == 1.0 for r in records])
    answers = [" ".join(r["prediction"].strip().lower().split()) for r in records]
    stats = np.stack([scores, np.ones_like(scores)], axis=1)
    return Units(stats, np.zeros(len(records)), lambda s: s[..., 0] / s[..., 1], "anls", answers, correct,
                 [""] * len(records))


# The tiny fixture tree: (questionId, document number, question, answers).
TREE_ROWS = [
    (101, 1, "What is the date?", ["May 5, 1990", "5 May 1990"]),
    (102, 1, "Who signed?", ["J. Smith"]),
    (103, 2, "What is the total?", ["$12.50"]),
]


def write_tree(root: Path, layout: str) -> Path:
    """A tiny DocVQA (3 questions on 2 documents) under ``root/docvqa``; returns that folder."""
    check_layout("docvqa", layout)
    folder = root / "docvqa"
    if layout == "files":
        (folder / "documents").mkdir(parents=True, exist_ok=True)
        data = []
        for qid, doc, question, answers in TREE_ROWS:
            image = f"documents/doc{doc}.png"
            (folder / image).write_bytes(image_bytes(doc))
            data.append({"questionId": qid, "question": question, "image": image, "docId": doc,
                         "answers": answers, "data_split": "val"})
        payload = {"dataset_name": "docvqa", "dataset_split": "val", "data": data}
        (folder / "val_v1.0.json").write_text(json.dumps(payload, indent=1), encoding="utf-8")
        return folder
    rows = [{"questionId": str(q), "question": question, "question_types": ["form"],
             "image": image_cell(doc, f"doc{doc}.png"), "docId": doc, "answers": answers}
            for q, doc, question, answers in TREE_ROWS]
    write_parquet(folder / "data" / "validation-00000-of-00001.parquet", rows)
    return folder
