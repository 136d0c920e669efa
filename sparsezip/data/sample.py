"""One evaluation sample, and where its image lives (a file, or a row of a parquet file), decoded lazily."""

from __future__ import annotations

import io
import os
from collections.abc import Mapping
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
    import pyarrow.parquet as pq

    table = pq.ParquetFile(file).read_row_group(row_group, columns=[column])
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


def require_file(path: Path, where: str) -> Path:
    """``path`` if it is an existing file, else ``ValueError`` naming it and the annotation that wants it."""
    if not path.is_file():
        raise ValueError(f"{where}: image file not found: {path}")
    return path
