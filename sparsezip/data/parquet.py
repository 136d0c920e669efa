"""The Hugging Face parquet layout, shared by every dataset: find the files, read the text columns, and
point at each row's image without decoding (or even reading) it."""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from pathlib import Path

from sparsezip.data.sample import ParquetImage

# HF dataset repos keep parquet files a couple of folders down (e.g. ``data/test-00000-of-00003.parquet``).
_MAX_DEPTH = 3


def find_parquet_files(path: Path) -> list[Path]:
    """``path`` itself if it is a ``.parquet`` file, else every ``*.parquet`` up to 3 folders below it,
    sorted by relative path (HF shard names sort in shard order)."""
    if path.is_file():
        return [path] if path.suffix == ".parquet" else []
    found: list[Path] = []
    for depth in range(_MAX_DEPTH + 1):
        found.extend(path.glob("/".join(["*"] * depth + ["*.parquet"])))
    return sorted(found, key=lambda p: p.relative_to(path).as_posix())


def iter_parquet_rows(
    files: Sequence[Path], columns: Sequence[str], image_column: str = "image"
) -> Iterator[tuple[dict, ParquetImage, str]]:
    """For every row of ``files`` in order: ``(text columns, image reference, "file#row" for errors)``.

    Only ``columns`` are read here; the image column is read lazily, one row group at a time, when an image
    is decoded. Raises ``ValueError`` naming the file and the missing columns.
    """
    for file in files:
        parquet = open_parquet(file)
        names = set(parquet.schema_arrow.names)
        missing = [c for c in (*columns, image_column) if c not in names]
        if missing:
            raise ValueError(f"{file}: missing parquet column(s) {missing}; has {sorted(names)}")
        row_number = 0
        for group in range(parquet.num_row_groups):
            table = read_row_group(parquet, file, group, list(columns))
            for row, values in enumerate(table.to_pylist()):
                yield values, ParquetImage(file, group, row, image_column), f"{file}#row={row_number}"
                row_number += 1


def open_parquet(file: Path) -> object:
    """``pyarrow.parquet.ParquetFile(file)``; a corrupt or unreadable file is a ``ValueError`` naming it (pyarrow's
    own message, e.g. "Parquet magic bytes not found", does not)."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    try:
        return pq.ParquetFile(file)
    except (pa.ArrowException, OSError) as err:
        raise ValueError(f"{file}: not a readable parquet file ({err})") from None


def read_row_group(parquet: object, file: Path, group: int, columns: Sequence[str]) -> object:
    """Row group ``group`` of the open ``parquet`` (columns ``columns``); damage inside the file is a
    ``ValueError`` naming the file and row group."""
    import pyarrow as pa

    try:
        return parquet.read_row_group(group, columns=list(columns))
    except (pa.ArrowException, OSError) as err:
        raise ValueError(f"{file}: row group {group} is unreadable, the parquet file is corrupt ({err})") from None
