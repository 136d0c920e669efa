"""MME: the release folder tree (5 nested + 9 flat subtasks, any subset of the 14) or the HF parquet layout.

Question id (both layouts, and what predictions must use): ``<subtask>/<image file name>#<k>``, where ``k``
is the question's 0-based position among that image's questions (the line of its ``.txt`` file; in parquet,
the order of the rows that share the image). E.g. ``count/000000006040.jpg#0``, ``artwork/10002.jpg#1``
(nested subtasks' ``images/`` folder is not part of the id). The part before ``#`` names the image, so the
two questions of a pair share it (``meta["group"]``).
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path, PurePosixPath

import numpy as np

from sparsezip import metrics
from sparsezip.data.parquet import find_parquet_files, iter_parquet_rows
from sparsezip.data.sample import Sample, require_question
from sparsezip.data.tiny import check_layout, image_bytes, image_cell, write_parquet
from sparsezip.data.units import Units
from sparsezip.jsonio import sha256_file, sha256_files

SUBTASKS = metrics.MME_SUBTASKS
QUESTION_SUFFIX = " Please answer yes or no."  # every MME question ends with it; prompts strip it
SUBTASK_RANGE = 200.0  # acc + acc+ (both percentages) per subtask
NESTED = ("artwork", "celebrity", "landmark", "posters", "scene")
_IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".JPG", ".JPEG", ".PNG")
_PARQUET_COLUMNS = ("question_id", "question", "answer", "category")
_SEARCH_DEPTH = 3  # how far below the given path the MME_Benchmark folder may sit (zips extract oddly)


def question_id(subtask: str, image_name: str, index: int) -> str:
    """The MME question id: ``<subtask>/<image file name>#<index>``."""
    return f"{subtask}/{image_name}#{index}"


def image_group(qid: str) -> str:
    """The image part of an MME question id (``count/x.jpg#1`` -> ``count/x.jpg``)."""
    return qid.rsplit("#", 1)[0]


def find_benchmark_root(path: Path) -> Path:
    """The folder whose children are the subtask folders: ``path`` itself, or the first folder up to three
    levels below it that has any (``MME_Benchmark_release_version/MME_Benchmark`` and deeper extractions)."""
    if not path.is_dir():
        raise ValueError(f"{path} is not a folder: MME annotations are the release tree (MME_Benchmark_release_version/"
                         ") or HF parquet files")
    frontier = [path]
    for _ in range(_SEARCH_DEPTH + 1):
        for folder in frontier:
            if any((folder / name).is_dir() for name in SUBTASKS):
                return folder
        frontier = sorted(child for folder in frontier for child in folder.iterdir() if child.is_dir())
    raise ValueError(f"no MME subtask folder ({', '.join(SUBTASKS)}) found in or below {path}")


def _subtask_questions(folder: Path, subtask: str, check_images: bool) -> list[tuple[Path, Path]]:
    """``(questions .txt, image)`` pairs of one subtask folder, sorted by image name. Without
    ``check_images`` a missing image gets a placeholder ``<stem>.jpg`` path (scoring needs no pixels)."""
    if subtask in NESTED or (folder / "questions_answers_YN").is_dir():
        txt_dir, image_dir = folder / "questions_answers_YN", folder / "images"
    else:
        txt_dir = image_dir = folder
    if not txt_dir.is_dir():
        raise ValueError(f"MME subtask {subtask}: missing folder {txt_dir}")
    images = {p.stem: p for p in image_dir.iterdir() if p.suffix in _IMAGE_SUFFIXES} if image_dir.is_dir() else {}
    pairs = []
    for txt in sorted(txt_dir.glob("*.txt")):
        image = images.get(txt.stem)
        if image is None and not check_images:
            image = image_dir / f"{txt.stem}.jpg"
        if image is None:
            raise ValueError(f"{txt}: no image with stem {txt.stem!r} in {image_dir}")
        pairs.append((txt, image))
    return sorted(pairs, key=lambda pair: pair[1].name)


def _read_questions(txt: Path) -> list[tuple[str, str]]:
    """The ``question<TAB>Yes|No`` lines of one image's ``.txt`` (exactly two, as the official tool asserts)."""
    rows = []
    for lineno, line in enumerate(txt.read_text(encoding="utf-8-sig").splitlines(), start=1):
        if not line.strip():
            continue
        fields = line.rstrip("\r\n").split("\t")
        if len(fields) != 2:
            raise ValueError(f"{txt}:{lineno}: expected 'question<TAB>Yes|No', got {len(fields)} field(s)")
        rows.append((require_question(fields[0], f"{txt}:{lineno}"), _label(fields[1], f"{txt}:{lineno}")))
    if len(rows) != 2:
        raise ValueError(f"{txt}: MME has exactly 2 questions per image, found {len(rows)}")
    return rows


def load_files(
    path: Path, *, subtasks: Sequence[str] | None = None, check_images: bool = True
) -> Iterator[Sample]:
    """Samples from the release tree; subtasks in the official order (perception, then cognition), images
    sorted by name, each image's two questions in file order. Missing subtasks are simply absent."""
    root = find_benchmark_root(path)
    present = [s for s in SUBTASKS if (root / s).is_dir() and (subtasks is None or s in subtasks)]
    listing = {s: _subtask_questions(root / s, s, check_images) for s in present}
    meta_common = {
        "source": root.name,
        "source_sha256": sha256_files([txt for pairs in listing.values() for txt, _ in pairs], root),
    }
    for subtask, pairs in listing.items():
        for txt, image in pairs:  # images come from listing the folder: inside the root by construction
            for index, (question, label) in enumerate(_read_questions(txt)):
                qid = question_id(subtask, image.name, index)
                meta = {"category": subtask, "group": image_group(qid), **meta_common}
                yield Sample(qid, image, question, (label,), meta)


def load_parquet(
    path: Path, *, subtasks: Sequence[str] | None = None, check_images: bool = True
) -> Iterator[Sample]:
    """Samples from the HF parquet layout (``question_id`` = the image's relative path, shared by the pair;
    ``category`` = subtask), with ids in the same ``<subtask>/<image name>#<k>`` form as the folder tree."""
    files = find_parquet_files(path)
    hashes = {f: sha256_file(f) for f in files}
    seen: dict[str, int] = {}
    for row, image, where in iter_parquet_rows(files, _PARQUET_COLUMNS):
        subtask = str(row["category"])
        if subtask not in SUBTASKS:
            raise ValueError(f"{where}: unknown MME category {subtask!r}; expected one of {SUBTASKS}")
        if subtasks is not None and subtask not in subtasks:
            continue
        group = f"{subtask}/{PurePosixPath(str(row['question_id'])).name}"
        index = seen.get(group, 0)
        seen[group] = index + 1
        qid = question_id(subtask, PurePosixPath(group).name, index)
        meta = {"category": subtask, "group": group, "source": image.file.name, "source_sha256": hashes[image.file]}
        yield Sample(qid, image, require_question(row["question"], where), (_label(row["answer"], where),), meta)


def _label(value: object, where: str) -> str:
    label = str(value).strip()
    if label.lower() not in ("yes", "no"):
        raise ValueError(f"{where}: MME answer must be Yes/No, got {value!r}")
    return label


def score(records: Sequence[Mapping], parser: str | None = None) -> dict:
    """MME metrics from records ``{question_id, prediction, answers}``; subtask and image come from the id."""
    items = []
    for record in records:
        group = image_group(str(record["question_id"]))
        items.append((group.split("/", 1)[0], group, record["prediction"], record["answers"][0]))
    return metrics.mme_metrics(items, parser=parser or "official")


def total_score(report: Mapping) -> float:
    """The headline: perception + cognition over the subtasks present (a group without any counts 0)."""
    # A group with none of its subtasks present is null (the synthetic MME has perception only).
    groups = [report[g] for g in ("perception", "cognition") if report[g] is not None]
    if not report["subtasks"] or not groups:
        raise ValueError(f"mme metrics hold no subtask scores: {dict(report)}")
    return float(sum(groups))


def score_range(report: Mapping) -> float:
    """The total score's range: 200 per subtask present."""
    return SUBTASK_RANGE * len(report["subtasks"])


def paired_units(records: Sequence[Mapping], parser: str = "official") -> Units:
    """MME records (``question_id`` = ``subtask/image#k``, ``prediction``, ``answers``) -> :class:`Units`."""
    groups = [image_group(str(r["question_id"])) for r in records]
    subtasks = [g.split("/", 1)[0] for g in groups]
    names = sorted(set(subtasks))
    answers = [metrics.parse_mme_answer(r["prediction"], parser) for r in records]
    correct = np.array([a == r["answers"][0].lower() for a, r in zip(answers, records, strict=True)])
    images = list(dict.fromkeys(groups))
    row = {g: i for i, g in enumerate(images)}
    stats = np.zeros((len(images), 4 * len(names)))
    all_right = np.ones(len(images), dtype=bool)
    for group, subtask, ok in zip(groups, subtasks, correct, strict=True):
        base = 4 * names.index(subtask)
        stats[row[group], base] += ok
        stats[row[group], base + 1] += 1
        stats[row[group], base + 3] = 1
        all_right[row[group]] &= bool(ok)
    for i, group in enumerate(images):
        stats[i, 4 * names.index(group.split("/", 1)[0]) + 2] = all_right[i]

    def metric(sums: np.ndarray) -> np.ndarray:
        blocks = sums.reshape(*sums.shape[:-1], len(names), 4)
        return (100 * blocks[..., 0] / blocks[..., 1] + 100 * blocks[..., 2] / blocks[..., 3]).sum(axis=-1)

    strata = np.asarray([g.split("/", 1)[0] for g in images])
    return Units(stats, strata, metric, "total_score", answers, correct, subtasks)


# The tiny fixture tree: subtask -> [(image stem, [(question, answer), (question, answer)])]; artwork is nested.
TREE_ITEMS = {
    "count": [("000000000001", [("Are there two dogs?", "Yes"), ("Are there three dogs?", "No")]),
              ("000000000002", [("Is there one cat?", "Yes"), ("Are there two cats?", "No")])],
    "color": [("000000000003", [("Is the car red?", "No"), ("Is the car blue?", "Yes")])],
    "artwork": [("10002", [("Is this by Monet?", "Yes"), ("Is this by Picasso?", "No")])],
}  # fmt: skip


def write_tree(root: Path, layout: str) -> Path:
    """A tiny MME (3 subtasks, 4 images, 8 questions) under ``root``; returns the dataset path."""
    check_layout("mme", layout)
    if layout == "files":
        bench = root / "MME_Benchmark_release_version" / "MME_Benchmark"
        number = 0
        for subtask, items in TREE_ITEMS.items():
            nested = subtask in NESTED
            image_dir = bench / subtask / ("images" if nested else "")
            txt_dir = bench / subtask / ("questions_answers_YN" if nested else "")
            image_dir.mkdir(parents=True, exist_ok=True)
            txt_dir.mkdir(parents=True, exist_ok=True)
            for stem, qas in items:
                number += 1
                (image_dir / f"{stem}.jpg").write_bytes(image_bytes(number))
                text = "".join(f"{q}{QUESTION_SUFFIX}\t{a}\n" for q, a in qas)
                (txt_dir / f"{stem}.txt").write_text(text, encoding="utf-8")
        return root / "MME_Benchmark_release_version"
    rows = []
    number = 0
    for subtask, items in TREE_ITEMS.items():
        for stem, qas in items:
            number += 1
            rel = f"{subtask}/{'images/' if subtask in NESTED else ''}{stem}.jpg"
            for q, a in qas:
                rows.append({"question_id": rel, "image": image_cell(number, rel), "question": q + QUESTION_SUFFIX,
                             "answer": a, "category": subtask})
    write_parquet(root / "mme" / "data" / "test-00000-of-00001.parquet", rows, row_group_size=3)
    return root / "mme"
