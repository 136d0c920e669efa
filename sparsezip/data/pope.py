"""POPE: the official label files (JSON lines) + COCO ``val2014/`` images, or the lmms-lab parquet layout."""

from __future__ import annotations

import json
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path

import numpy as np

from sparsezip import metrics
from sparsezip.data.parquet import find_parquet_files, iter_parquet_rows
from sparsezip.data.sample import Sample, require_file, require_question, resolve_inside
from sparsezip.data.tiny import check_layout, coco_name, image_bytes, image_cell, write_parquet
from sparsezip.data.units import Units, f1_from_counts
from sparsezip.jsonio import iter_jsonl, sha256_file

CATEGORIES = ("random", "popular", "adversarial")
_LABEL_FIELDS = ("question_id", "image", "text", "label")
_PARQUET_COLUMNS = ("question_id", "question", "answer", "category")


def label_files(path: Path, category: str | None = None) -> list[Path]:
    """The label files at ``path``: the file itself, or every ``*_pope_<category>.json`` in the folder
    (``coco_pope_random.json`` ...) in the order random, popular, adversarial, optionally only ``category``'s."""
    order = {name: i for i, name in enumerate(CATEGORIES)}
    files = [path] if path.is_file() else sorted(
        path.glob("*pope_*.json"), key=lambda f: (order.get(file_category(f), len(order)), f.name)
    )
    if category is not None:
        files = [f for f in files if file_category(f) == category]
    if not files:
        wanted = f"*pope_{category}.json" if category else "coco_pope_{random,popular,adversarial}.json"
        raise ValueError(f"no POPE label file {wanted} found at {path}")
    return files


def variant_file(folder: Path, options: dict) -> tuple[Path, dict]:
    """A data root's POPE folder narrowed to the one label file of ``options["category"]`` (so its hash is the
    one a run records); the category option is then implied by the file."""
    if "category" not in options:
        return folder, options
    rest = {k: v for k, v in options.items() if k != "category"}
    return label_files(folder, str(options["category"]))[0], rest


def file_category(path: Path) -> str:
    """``coco_pope_adversarial.json`` -> ``adversarial`` (the part after the last ``_``)."""
    return path.stem.rsplit("_", 1)[-1]


def find_image_root(label_dir: Path, image_root: str | Path | None) -> Path:
    """Where the COCO images are: ``image_root`` if given, else the first existing ``val2014`` folder next
    to the label files, one level up, or in a sibling ``coco/`` folder."""
    if image_root is not None:
        candidates = [Path(image_root)]
    else:
        candidates = [
            label_dir / "val2014",
            label_dir / "images",
            label_dir.parent / "val2014",
            label_dir.parent / "coco" / "val2014",
            label_dir / "coco" / "val2014",
        ]
    for candidate in candidates:
        if candidate.is_dir():
            return candidate
    raise ValueError(
        f"no COCO image folder for the POPE labels in {label_dir}; looked in "
        f"{[str(c) for c in candidates]} (pass image_root=... / --image-root)"
    )


def load_files(
    path: Path,
    *,
    category: str | None = None,
    image_root: str | Path | None = None,
    check_images: bool = True,
) -> Iterator[Sample]:
    """Samples from official label files: one JSON object per line with ``question_id``, ``image``,
    ``text``, ``label``. ``category`` picks one label file out of a folder; the id is ``question_id``.
    ``check_images=False`` (scoring from label files alone) skips looking for the images."""
    files = label_files(path, category)
    try:
        root = find_image_root(files[0].parent, image_root)
    except ValueError:
        if check_images or image_root is not None:
            raise
        root = files[0].parent / "val2014"  # scoring from the label files alone needs no images
    for file in files:
        cat = file_category(file)
        meta_common = {"source": file.name, "source_sha256": sha256_file(file)}
        for lineno, row in iter_jsonl(file):
            where = f"{file}:{lineno}"
            missing = [k for k in _LABEL_FIELDS if k not in row]
            if missing:
                raise ValueError(f"{where}: POPE label line lacks field(s) {missing}")
            label = _label(row["label"], where)
            image = resolve_inside(root, str(row["image"]), where)
            if check_images:
                require_file(image, where)
            question = require_question(row["text"], where)
            yield Sample(row["question_id"], image, question, (label,), {"category": cat, **meta_common})


def load_parquet(path: Path, *, category: str | None = None, check_images: bool = True) -> Iterator[Sample]:
    """Samples from the lmms-lab POPE parquet files (all three categories in one table, ``category``
    column); ids are the ``question_id`` column, which repeats across categories. Images stay in the
    parquet rows (``check_images`` is accepted for symmetry; there is nothing to look for)."""
    files = find_parquet_files(path)
    hashes = {f: sha256_file(f) for f in files}
    for row, image, where in iter_parquet_rows(files, _PARQUET_COLUMNS):
        if category is not None and row["category"] != category:
            continue
        meta = {"category": row["category"], "source": image.file.name, "source_sha256": hashes[image.file]}
        question = require_question(row["question"], where)
        yield Sample(row["question_id"], image, question, (_label(row["answer"], where),), meta)


def _label(value: object, where: str) -> str:
    label = str(value).strip().lower()
    if label not in ("yes", "no"):
        raise ValueError(f"{where}: POPE label must be yes/no, got {value!r}")
    return label


def headline_f1(report: Mapping) -> float:
    """The headline: ``f1`` of one label file, or ``mean_f1`` over the categories of a folder of them (how
    the LLaVA paper's POPE number is computed)."""
    for key in ("f1", "mean_f1"):
        if key in report:
            return float(report[key])
    raise KeyError("f1")


def score(records: Sequence[Mapping], parser: str | None = None) -> dict:
    """POPE metrics from records ``{prediction, answers, category}``: flat for one category, else
    ``{"categories", "mean_f1", "pooled"}``."""
    by_category: dict[str, tuple[list[str], list[str]]] = {}
    for record in records:
        preds, labels = by_category.setdefault(str(record.get("category", "")), ([], []))
        preds.append(record["prediction"])
        labels.append(record["answers"][0])
    return metrics.pope_report(by_category, parser=parser or "official")


def paired_units(records: Sequence[Mapping], parser: str = "official") -> Units:
    """POPE records (``prediction``, ``answers``, ``category``) -> :class:`Units`."""
    categories = [str(r.get("category", "")) for r in records]
    names = sorted(set(categories))
    answers = [metrics.parse_pope_answer(r["prediction"], parser) for r in records]
    labels = [r["answers"][0] for r in records]
    stats = np.zeros((len(records), 4 * len(names)))
    for i, (cat, pred, label) in enumerate(zip(categories, answers, labels, strict=True)):
        cell = {("yes", "yes"): 0, ("yes", "no"): 1, ("no", "yes"): 2, ("no", "no"): 3}.get((pred, label))
        if cell is not None:  # the lmms-eval parser's "other" is neither a positive nor a negative prediction
            stats[i, 4 * names.index(cat) + cell] = 1

    def metric(sums: np.ndarray) -> np.ndarray:
        blocks = sums.reshape(*sums.shape[:-1], len(names), 4)
        return f1_from_counts(blocks[..., 0], blocks[..., 1], blocks[..., 2]).mean(axis=-1)

    return Units(stats, np.asarray(categories), metric, "f1" if len(names) == 1 else "mean_f1", answers,
                 np.array([p == g for p, g in zip(answers, labels, strict=True)]), categories)


# The tiny fixture tree: category -> [(question_id, image number, object, label)].
TREE_ROWS = {
    "random": [(1, 1, "dog", "yes"), (2, 1, "car", "no"), (3, 2, "cat", "yes"), (4, 2, "bus", "no")],
    "adversarial": [(1, 1, "dog", "yes"), (2, 1, "leash", "no"), (3, 2, "cat", "yes")],
}


def write_tree(root: Path, layout: str) -> Path:
    """A tiny POPE (two categories, 7 questions on 2 images) under ``root/pope``; returns that folder."""
    check_layout("pope", layout)
    folder = root / "pope"
    if layout == "files":
        (folder / "val2014").mkdir(parents=True, exist_ok=True)
        for number in (1, 2):
            (folder / "val2014" / coco_name(number)).write_bytes(image_bytes(number))
        for category, rows in TREE_ROWS.items():
            lines = [json.dumps({"question_id": q, "image": coco_name(n), "text": f"Is there a {o} in the image?",
                                 "label": lab}) for q, n, o, lab in rows]
            (folder / f"coco_pope_{category}.json").write_text("\n".join(lines) + "\n", encoding="utf-8")
        return folder
    rows = [
        {"id": str(i), "question_id": str(q), "question": f"Is there a {o} in the image?", "answer": lab,
         "image_source": coco_name(n)[:-4], "image": image_cell(n, coco_name(n)), "category": category}
        for i, (category, q, n, o, lab) in enumerate(
            (c, *row) for c, rows in TREE_ROWS.items() for row in rows)
    ]  # fmt: skip
    write_parquet(folder / "data" / "test-00000-of-00001.parquet", rows)
    return folder
