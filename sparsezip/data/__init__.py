"""Datasets: the one table of them (``registry``), a loader module per dataset, prompts, records, subsets.

    from sparsezip.data import load_dataset, resolve_dataset
    family, path, options = resolve_dataset("/data", "pope-adversarial")
    samples = list(load_dataset(family, path, **options))  # images stay on disk until load_image()
"""

from sparsezip.data.registry import (
    DATASETS,
    benchmark_datasets,
    dataset_spec,
    load_dataset,
    register_dataset,
    resolve_dataset,
    unregister_dataset,
)
from sparsezip.data.sample import ParquetImage, Sample
from sparsezip.data.spec import DatasetSpec, HeadlineMetric, key_metric

__all__ = [
    "DATASETS",
    "DatasetSpec",
    "HeadlineMetric",
    "ParquetImage",
    "Sample",
    "benchmark_datasets",
    "dataset_spec",
    "key_metric",
    "load_dataset",
    "register_dataset",
    "resolve_dataset",
    "unregister_dataset",
]
