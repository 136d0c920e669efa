"""The synthetic evaluation sets, written in the real datasets' on-disk formats (evaluation.md, layout (a)):

```
<root>/pope/coco_pope_{random,popular,adversarial}.json    JSON lines: question_id, image, text, label
<root>/pope/val2014/COCO_val2014_<12 digits>.jpg
<root>/MME_Benchmark_release_version/MME_Benchmark/{existence,count,position,color}/<12 digits>.{jpg,txt}
<root>/docvqa/val_v1.0.json + <root>/docvqa/documents/*.png
```

so the same loaders read them as the real datasets. Every random draw comes from a ``numpy`` generator
spawned from ``(seed, stream)``; the training data of ``sparsezip train-tiny`` uses other streams
(:data:`TRAIN_STREAM`), so evaluation and training scenes are disjoint by construction. Files are written
with fixed encoder options and no timestamps: the same seed writes byte-identical files.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from sparsezip.data.mme import QUESTION_SUFFIX as MME_SUFFIX
from sparsezip.embedded.documents import Document, render_document, sample_document
from sparsezip.embedded.scenes import (
    JPEG_OPTIONS,
    POPE_SETTINGS,
    QA,
    Scene,
    colour_question_pair,
    count_pair,
    existence_pair,
    existence_question,
    pope_negatives,
    popularity_order,
    position_pair,
    render_scene,
    sample_scene,
)

# Generator streams (spawn keys) per split: fixed forever, so a seed always means the same data.
POPE_STREAM, MME_STREAM, DOCVQA_STREAM, TRAIN_STREAM = 1, 2, 3, 100
MME_SUBTASKS: tuple[str, ...] = ("existence", "count", "position", "color")
POPE_IMAGE_ID0 = 900_001  # synthetic COCO ids: above every real val2014 id, so never mistaken for COCO
PNG_OPTIONS: dict[str, object] = {"optimize": False, "compress_level": 9}


@dataclass(frozen=True)
class SetSizes:
    """How many images / documents each set gets."""

    pope_images: int = 100  # x 6 questions (3 yes, 3 no) per POPE setting, as POPE does
    mme_images: int = 30  # per subtask, x 2 questions (yes, no)
    docvqa_documents: int = 30  # x 2 questions


def stream_rng(seed: int, stream: int, *index: int) -> np.random.Generator:
    """The generator of one split (``stream``), optionally one item (``index``) of it, for ``seed``."""
    if seed < 0:
        raise ValueError(f"seed must be non-negative, got {seed}")
    return np.random.default_rng(np.random.SeedSequence(seed, spawn_key=(stream, *index)))


def pope_scenes(seed: int, n: int) -> list[Scene]:
    """The POPE images' scenes: 3-4 objects each (POPE asks about 3 ground-truth objects per image)."""
    return [sample_scene(stream_rng(seed, POPE_STREAM, i), num_objects=(3, 4)) for i in range(n)]


def pope_rows(scenes: list[Scene], seed: int) -> dict[str, list[dict]]:
    """The three POPE label files' rows. Each image gets the same 3 positives in every setting and 3
    setting-specific negatives; rows alternate yes/no like the official files."""
    popularity = popularity_order(scenes)
    files: dict[str, list[dict]] = {setting: [] for setting in POPE_SETTINGS}
    for i, scene in enumerate(scenes):
        rng = stream_rng(seed, POPE_STREAM, i, 1)
        positives = [int(c) for c in rng.choice(sorted(scene.classes), size=3, replace=False)]
        image = f"COCO_val2014_{POPE_IMAGE_ID0 + i:012d}.jpg"
        for setting in POPE_SETTINGS:
            negatives = pope_negatives(scene.classes, setting, 3, rng, popularity)
            rows = files[setting]
            for yes, no in zip(positives, negatives, strict=True):
                for cls, label in ((yes, "yes"), (no, "no")):
                    rows.append({"question_id": len(rows) + 1, "image": image,
                                 "text": existence_question(cls), "label": label})
    return files


MmePairMaker = Callable[[Scene, np.random.Generator], "tuple[QA, QA] | None"]
MME_PAIR_MAKERS: dict[str, MmePairMaker] = {
    "existence": existence_pair,
    "count": count_pair,
    "position": position_pair,
    "color": colour_question_pair,
}


def mme_items(seed: int, subtask: str, n: int) -> list[tuple[Scene, tuple[QA, QA]]]:
    """``n`` (scene, (yes, no)) pairs for an MME subtask; scenes the subtask cannot ask about are skipped."""
    if subtask not in MME_PAIR_MAKERS:
        raise ValueError(f"unknown synthetic MME subtask {subtask!r}; choose one of {MME_SUBTASKS}")
    rng = stream_rng(seed, MME_STREAM, MME_SUBTASKS.index(subtask))
    items = []
    while len(items) < n:
        scene = sample_scene(rng)
        pair = MME_PAIR_MAKERS[subtask](scene, rng)
        if pair is not None:
            items.append((scene, pair))
    return items


def _save_jpeg(scene: Scene, path: Path) -> None:
    image, _ = render_scene(scene)
    image.save(path, format="JPEG", **JPEG_OPTIONS)


def write_pope(root: Path, seed: int, n_images: int) -> int:
    """Write ``root/pope``; returns the number of questions per setting."""
    scenes = pope_scenes(seed, n_images)
    files = pope_rows(scenes, seed)
    images = root / "pope" / "val2014"
    images.mkdir(parents=True, exist_ok=True)
    for i, scene in enumerate(scenes):
        _save_jpeg(scene, images / f"COCO_val2014_{POPE_IMAGE_ID0 + i:012d}.jpg")
    for setting, rows in files.items():
        text = "".join(json.dumps(row) + "\n" for row in rows)
        (root / "pope" / f"coco_pope_{setting}.json").write_text(text, encoding="utf-8")
    return len(files["random"])


def write_mme(root: Path, seed: int, n_images: int) -> int:
    """Write the four flat MME subtasks under ``root/MME_Benchmark_release_version/MME_Benchmark``;
    returns the number of questions written."""
    bench = root / "MME_Benchmark_release_version" / "MME_Benchmark"
    total = 0
    for k, subtask in enumerate(MME_SUBTASKS):
        folder = bench / subtask
        folder.mkdir(parents=True, exist_ok=True)
        for i, (scene, pair) in enumerate(mme_items(seed, subtask, n_images)):
            stem = f"{(k + 1) * 10_000 + i + 1:012d}"
            _save_jpeg(scene, folder / f"{stem}.jpg")
            lines = [f"{qa.question}{MME_SUFFIX}\t{'Yes' if qa.answer else 'No'}" for qa in pair]
            (folder / f"{stem}.txt").write_text("\n".join(lines) + "\n", encoding="utf-8")
            total += len(lines)
    return total


def docvqa_documents(seed: int, n: int) -> list[Document]:
    """The DocVQA set's documents (their generators also pick the two questions each, see :func:`write_docvqa`)."""
    return [sample_document(stream_rng(seed, DOCVQA_STREAM, i)) for i in range(n)]


def write_docvqa(root: Path, seed: int, n_documents: int) -> int:
    """Write ``root/docvqa/val_v1.0.json`` and its documents (2 questions each); returns the question count."""
    folder = root / "docvqa" / "documents"
    folder.mkdir(parents=True, exist_ok=True)
    data = []
    for i in range(n_documents):
        rng = stream_rng(seed, DOCVQA_STREAM, i)
        doc, doc_id = sample_document(rng), 90_001 + i
        image = f"documents/synth{doc_id:06d}_1.png"
        page, _ = render_document(doc)
        page.save(root / "docvqa" / image, format="PNG", **PNG_OPTIONS)
        for j in sorted(rng.choice(len(doc.fields), size=2, replace=False).tolist()):
            field = doc.fields[j]
            data.append({
                "questionId": 900_000 + len(data) + 1, "question": field.question,
                "question_types": ["form"], "image": image, "docId": doc_id,
                "ucsf_document_id": f"synth{doc_id:06d}", "ucsf_document_page_no": "1",
                "answers": list(field.answers), "data_split": "val",
            })
    payload = {"dataset_name": "docvqa", "dataset_split": "val", "dataset_version": "1.0", "data": data}
    (root / "docvqa" / "val_v1.0.json").write_text(json.dumps(payload, indent=1) + "\n", encoding="utf-8")
    return len(data)


README = """\
# Synthetic evaluation data (generated, do not edit)

Written by `sparsezip make-fixtures --seed {seed}` (`sparsezip/embedded/datasets.py`): scenes of coloured
shapes and large-print forms, in the real on-disk formats of POPE, MME (4 flat subtasks) and DocVQA, so the
real loaders read them. Questions: POPE {pope} per setting, MME {mme} in all, DocVQA {docvqa}. MME position
asks about one object (left/right side of the image) or two (left of another object); MME color about a
shape or about one quadrant of the image ("Is the shape in the top left of the image red?").
The tiny model in `fixtures/tiny-llava` never saw these images (its training scenes come from other seeds).
"""


def write_synthetic_sets(root: str | Path, seed: int = 0, sizes: SetSizes | None = None) -> dict[str, int]:
    """Write every synthetic set under ``root`` (created if missing); returns question counts per set."""
    sizes = sizes or SetSizes()
    out = Path(root)
    out.mkdir(parents=True, exist_ok=True)
    counts = {
        "pope_per_setting": write_pope(out, seed, sizes.pope_images),
        "mme": write_mme(out, seed, sizes.mme_images),
        "docvqa": write_docvqa(out, seed, sizes.docvqa_documents),
    }
    readme = README.format(seed=seed, pope=counts["pope_per_setting"], mme=counts["mme"], docvqa=counts["docvqa"])
    (out / "README.md").write_text(readme, encoding="utf-8")
    return counts
