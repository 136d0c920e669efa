"""One evaluation sample, and where its image lives (a file, or a row of a parquet file), decoded lazily."""

from __future__ import annotations

import io
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path
from typing import Any

from PIL import Image, UnidentifiedImageError


@dataclass(frozen=True)
class ParquetImage:
    """An image stored in a parquet file: row ``row`` of row group ``row_group``, column ``column``
    (HF datasets layout: a struct ``{bytes, path}`` or plain binary)."""

    file: Path
    row_group: int
    row: int
    column: str = "image"

    def __str__(self) -> str:
        return f"{self.file}#rowgroup={self.row_group},row={self.row}"

    def read_bytes(self) -> bytes:
        """The encoded image bytes. Raises ``ValueError`` naming the file and row when absent."""
        try:
            stamp = self.file.stat().st_mtime_ns  # part of the cache key: a rewritten file is re-read
        except FileNotFoundError:
            raise ValueError(f"{self}: parquet file not found") from None
        cells = _row_group_images(self.file, stamp, self.row_group, self.column)
        if not 0 <= self.row < len(cells):
            raise ValueError(f"{self}: row out of range (row group has {len(cells)} rows)")
        cell = cells[self.row]
        data = cell.get("bytes") if isinstance(cell, dict) else cell
        if not data:
            raise ValueError(f"{self}: no image bytes in column {self.column!r}")
        return data


# Samples are read in order, so caching the last couple of row groups' image columns turns per-sample
# reads into one read per row group, with memory bounded to two row groups.
@lru_cache(maxsize=2)
def _row_group_images(file: Path, stamp: int, row_group: int, column: str) -> list:
    from sparsezip.data.parquet import open_parquet, read_row_group

    table = read_row_group(open_parquet(file), file, row_group, [column])
    return table.column(column).to_pylist()


ImageRef = Path | ParquetImage


@dataclass(frozen=True)
class Sample:
    """One question about one image.

    Attributes:
        id: the question id exactly as the annotations give it (what predictions use as ``question_id``).
        image_ref: the image file, or its parquet row; decoded only by :meth:`load_image`.
        question: the dataset's own question text (prompt building happens in ``data/prompts.py``).
        answers: the gold answers (POPE/MME: one ``yes``/``no``; DocVQA: several; captions: references).
        meta: per-sample extras: ``category`` (POPE category / MME subtask), ``group`` (MME: the image the
            question pair shares), ``source`` and ``source_sha256`` (which annotation file, and its hash).
    """

    id: int | str
    image_ref: ImageRef
    question: str
    answers: tuple[str, ...]
    meta: Mapping[str, Any] = field(default_factory=dict, hash=False)

    def load_image(self) -> Image.Image:
        """Decode the image as RGB. Raises ``ValueError`` naming the file for a missing or corrupt image."""
        ref = self.image_ref
        try:
            source = io.BytesIO(ref.read_bytes()) if isinstance(ref, ParquetImage) else ref
            with Image.open(source) as image:  # closes the file handle; convert() returns a new image
                return image.convert("RGB")
        except FileNotFoundError:
            raise ValueError(f"image file not found: {ref} (sample {self.id!r})") from None
        except (UnidentifiedImageError, OSError, SyntaxError) as err:
            raise ValueError(f"corrupt or unreadable image: {ref} (sample {self.id!r}): {err}") from None


def resolve_inside(root: Path, relative: str, where: str) -> Path:
    """``root / relative``, refusing a path that escapes ``root`` (absolute, or ``..`` climbing out).

    The check is lexical on purpose: a ``val2014`` folder that is a symlink to a shared COCO copy is fine,
    while an annotation line pointing at ``../../etc/passwd`` is not. ``where`` names the annotation
    (file and line) for the error.
    """
    if not relative or os.path.isabs(relative) or Path(relative).is_absolute():
        raise ValueError(f"{where}: image path {relative!r} must be a relative path inside {root}")
    base = os.path.normpath(root)
    joined = os.path.normpath(os.path.join(base, relative))
    if os.path.commonpath([base, joined]) != base or joined == base:
        raise ValueError(f"{where}: image path {relative!r} escapes the dataset root {root}")
    return Path(joined)


def open_image(path: str | Path) -> Image.Image:
    """Decode the image file ``path`` as RGB; a missing, empty, truncated or non-image file is a ``ValueError``
    naming it."""
    path = Path(path)
    if path.is_dir():
        raise ValueError(f"image {path} is a folder, not an image file")
    try:
        with Image.open(path) as image:
            return image.convert("RGB")
    except FileNotFoundError:
        raise ValueError(f"image file not found: {path}") from None
    except (UnidentifiedImageError, OSError, SyntaxError) as err:
        empty = " (the file is empty)" if path.is_file() and path.stat().st_size == 0 else ""
        raise ValueError(f"corrupt or unreadable image: {path}{empty}: {err}") from None


def require_question(text: object, where: str) -> str:
    """``text`` as the question, or ``ValueError`` naming ``where`` (file and line) when it is empty: an empty
    question is a dataset error for every method."""
    question = "" if text is None else str(text)
    if not question.strip():
        raise ValueError(f"{where}: empty question ({text!r})")
    return question


def check_image_files(samples: Sequence[Sample]) -> None:
    """Refuse ``samples`` whose image file is missing, naming the first one, its annotation file and how many
    more (parquet images live in their rows and are not looked for). Used after ``--limit``, so only the
    samples that will run need their images."""
    missing = [s for s in samples if isinstance(s.image_ref, Path) and not s.image_ref.is_file()]
    if not missing:
        return
    first = missing[0]
    source = f" of {first.meta['source']}" if "source" in first.meta else ""
    folder = first.image_ref.parent
    hint = "" if folder.is_dir() else f"; the folder {folder} does not exist (pass --image-root?)"
    raise ValueError(f"image file not found: {first.image_ref} (sample {first.id!r}{source}){hint}; "
                     f"{len(missing)} of the {len(samples)} selected samples lack their image")


def require_file(path: Path, where: str) -> Path:
    """``path`` if it is an existing file, else ``ValueError`` naming it and the annotation that wants it."""
    if not path.is_file():
        raise ValueError(f"{where}: image file not found: {path}")
    return path
