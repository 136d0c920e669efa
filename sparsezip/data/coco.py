"""COCO captions (optional): ``captions_val2014.json`` + ``val2014/`` images; CIDEr via pycocoevalcap."""

from __future__ import annotations

import json
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path

from sparsezip import metrics
from sparsezip.data.sample import Sample, require_file, resolve_inside
from sparsezip.data.tiny import check_layout, coco_name, image_bytes
from sparsezip.jsonio import sha256_file

CAPTION_QUESTION = "Provide a one-sentence caption for the provided image."


def annotation_file(path: Path) -> Path:
    """``path`` itself, or ``captions_val2014.json`` in it or in its ``annotations/`` folder."""
    if path.is_file():
        return path
    for candidate in (path / "captions_val2014.json", path / "annotations" / "captions_val2014.json"):
        if candidate.is_file():
            return candidate
    raise ValueError(f"no captions_val2014.json in {path} or {path / 'annotations'}")


def load_files(
    path: Path, *, image_root: str | Path | None = None, check_images: bool = True
) -> Iterator[Sample]:
    """One sample per image (id = COCO ``image_id``), answers = its reference captions, question = the
    LLaVA caption instruction. Images come from ``image_root`` or a ``val2014/`` folder next to (or one
    level above) the annotation file."""
    file = annotation_file(path)
    try:
        payload = json.loads(file.read_text(encoding="utf-8"))
    except json.JSONDecodeError as err:
        raise ValueError(f"{file}:{err.lineno}: malformed JSON ({err.msg})") from None
    if not isinstance(payload, dict) or not {"images", "annotations"} <= payload.keys():
        raise ValueError(f"{file}: expected a COCO captions object with 'images' and 'annotations'")
    candidates = [Path(image_root)] if image_root else [file.parent / "val2014", file.parent.parent / "val2014"]
    root = next((c for c in candidates if c.is_dir()), None if check_images else candidates[0])
    if root is None:
        raise ValueError(f"no COCO image folder for {file}; looked in {[str(c) for c in candidates]}")
    captions: dict[int, list[str]] = {}
    for ann in payload["annotations"]:
        captions.setdefault(ann["image_id"], []).append(ann["caption"])
    meta = {"source": file.name, "source_sha256": sha256_file(file)}
    for index, image in enumerate(payload["images"]):
        where = f"{file}: images[{index}]"
        refs = captions.get(image["id"])
        if not refs:
            raise ValueError(f"{where}: image id {image['id']} has no reference captions")
        path_ = resolve_inside(root, str(image["file_name"]), where)
        if check_images:
            require_file(path_, where)
        yield Sample(image["id"], path_, CAPTION_QUESTION, tuple(refs), meta)


def load_parquet(path: Path, **options: object) -> Iterator[Sample]:
    """Not supported: COCO captions are read from the official json only."""
    raise ValueError(f"COCO captions: only the captions_val2014.json layout is supported, got parquet at {path}")


def score(records: Sequence[Mapping], parser: str | None = None) -> dict:
    """``{cider, n}`` (CIDEr-D via pycocoevalcap; never SPICE)."""
    if parser not in (None, "official"):
        raise ValueError(f"captions have no parser choice, got parser={parser!r}")
    return metrics.cider(
        {str(r["question_id"]): r["prediction"] for r in records},
        {str(r["question_id"]): list(r["answers"]) for r in records},
    )


# The tiny fixture tree: (image_id, image number, reference captions).
TREE_ROWS = [(42, 1, ["a dog on grass", "a brown dog"]), (43, 2, ["a red car"])]


def write_tree(root: Path, layout: str) -> Path:
    """Tiny COCO captions (2 images) under ``root/coco`` (files layout only); returns that folder."""
    check_layout("coco_captions", layout, ("files",))
    folder = root / "coco"
    (folder / "val2014").mkdir(parents=True, exist_ok=True)
    images, annotations = [], []
    for image_id, number, captions in TREE_ROWS:
        (folder / "val2014" / coco_name(number)).write_bytes(image_bytes(number))
        images.append({"id": image_id, "file_name": coco_name(number)})
        annotations.extend({"image_id": image_id, "id": len(annotations), "caption": c} for c in captions)
    payload = {"images": images, "annotations": annotations}
    (folder / "captions_val2014.json").write_text(json.dumps(payload), encoding="utf-8")
    return folder
