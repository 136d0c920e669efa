"""Datasets: loaders for the on-disk layouts users have, prompts, and the synthetic-data generator.

    from sparsezip.data import load_dataset, resolve_dataset
    family, path, options = resolve_dataset("/data", "pope-adversarial")
    samples = list(load_dataset(family, path, **options))  # images stay on disk until load_image()
"""

from sparsezip.data.registry import (
    BENCHMARK_DATASETS,
    DATASETS,
    DatasetSpec,
    dataset_spec,
    load_dataset,
    resolve_dataset,
)
from sparsezip.data.sample import ParquetImage, Sample

__all__ = [
    "BENCHMARK_DATASETS",
    "DATASETS",
    "DatasetSpec",
    "ParquetImage",
    "Sample",
    "dataset_spec",
    "load_dataset",
    "resolve_dataset",
]
