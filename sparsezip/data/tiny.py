"""What every dataset's tiny fixture tree (``DatasetSpec.write_tree``) is made of: 8x8 solid-colour images
(one colour per image number, PNG bytes in both layouts, also under ``.jpg`` names: PIL decodes by content)
and small parquet files. Each loader module writes its own tree with these; ``sparsezip.testing.trees``
dispatches by dataset name."""

from __future__ import annotations

import io
from pathlib import Path

from PIL import Image


def image_bytes(number: int, fmt: str = "PNG") -> bytes:
    """An 8x8 solid-colour image (colour from ``number``), encoded as ``fmt``."""
    colour = ((number * 67) % 256, (number * 131) % 256, (number * 199) % 256)
    buffer = io.BytesIO()
    Image.new("RGB", (8, 8), colour).save(buffer, format=fmt)
    return buffer.getvalue()


def image_cell(number: int, name: str) -> dict:
    """A parquet image cell ``{"bytes", "path"}`` as the HF layouts store it."""
    return {"bytes": image_bytes(number), "path": name}


def coco_name(number: int) -> str:
    """``COCO_val2014_<12 digits>.jpg``."""
    return f"COCO_val2014_{number:012d}.jpg"


def write_parquet(path: Path, rows: list[dict], row_group_size: int = 2) -> Path:
    """Write ``rows`` as one parquet file; small row groups on purpose, so multi-row-group reads are exercised."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    path.parent.mkdir(parents=True, exist_ok=True)
    pq.write_table(pa.Table.from_pylist(rows), path, row_group_size=row_group_size)
    return path


def check_layout(family: str, layout: str, supported: tuple[str, ...] = ("files", "parquet")) -> None:
    """``ValueError`` unless ``layout`` is one this dataset's tree writer supports."""
    if layout not in supported:
        raise ValueError(f"{family}: tree layout must be one of {supported}, got {layout!r}")
