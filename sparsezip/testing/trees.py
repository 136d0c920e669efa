"""Tiny dataset trees in every on-disk layout the loaders read (for tests and benchmarks of the plumbing).

``write_tree(name, layout, root)`` writes a few deterministic samples of dataset ``name`` (any registered
family: pope, mme, docvqa, coco_captions, ...) in ``layout`` (``files`` = the original release, ``parquet`` =
the HF layout) under ``root`` and returns the path to hand to ``load_dataset``. Each dataset's writer lives
next to its loader (``DatasetSpec.write_tree``, built from ``sparsezip.data.tiny``); this only dispatches.
"""

from __future__ import annotations

from pathlib import Path

from sparsezip.data.registry import DATASETS, dataset_spec
from sparsezip.data.tiny import coco_name, image_bytes

__all__ = ["coco_name", "image_bytes", "write_tree"]


def write_tree(name: str, layout: str, root: str | Path) -> Path:
    """Write a tiny ``name`` dataset in ``layout`` under ``root``; returns the dataset path."""
    spec = dataset_spec(name)
    if spec.write_tree is None:
        with_trees = sorted(f for f, s in DATASETS.items() if s.write_tree is not None)
        raise ValueError(f"dataset {name!r} has no fixture tree writer; these do: {', '.join(with_trees)}")
    if layout not in ("files", "parquet"):
        raise ValueError(f"layout must be 'files' or 'parquet', got {layout!r}")
    return spec.write_tree(Path(root), layout)
