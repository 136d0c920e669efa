"""The one table of datasets, the data-root convention, and ``load_dataset``.

Data root (``--data-root`` / ``$SPARSEZIP_DATA`` / ``sparsezip eval --data``)::

    <root>/pope/                           coco_pope_{random,popular,adversarial}.json + val2014/  (or *.parquet)
    <root>/MME_Benchmark_release_version/  the MME release tree, extracted at any depth     (or <root>/mme/*.parquet)
    <root>/docvqa/                         val_v1.0.json + documents/                      (or *.parquet)
    <root>/coco/                           captions_val2014.json + val2014/                (optional)

POPE also finds its images in ``<root>/coco/val2014``. A dataset name is a family (``pope``) or a benchmark
name ``<family>-<variant>`` (``pope-random``); the benchmark datasets are every row's
:attr:`~sparsezip.data.spec.DatasetSpec.benchmark_names`, in table order: ``pope-random``, ``pope-popular``,
``pope-adversarial``, ``mme``, ``docvqa`` (``coco_captions`` has no headline, so it is not one).

Adding a dataset = a loader module (``load_files`` / ``load_parquet`` / ``score`` / ``write_tree``) and one
row below (or :func:`register_dataset` from outside the package).
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

from sparsezip import metrics
from sparsezip.data import coco, docvqa, mme, pope
from sparsezip.data.parquet import find_parquet_files
from sparsezip.data.sample import Sample
from sparsezip.data.spec import DatasetSpec, HeadlineMetric, key_metric

_PERCENT = 100.0

# One row per dataset, in benchmark order (``benchmark_datasets()`` lists the rows' names in this order).
_TABLE: tuple[DatasetSpec, ...] = (
    DatasetSpec(
        "pope", pope.load_files, pope.score, load_parquet=pope.load_parquet, folders=("pope", "POPE"),
        max_new_tokens=16, parsers=metrics.POPE_PARSERS, id_scope="category",
        variants={c: {"category": c} for c in pope.CATEGORIES}, narrow_files=pope.variant_file,
        headline=HeadlineMetric("f1", pope.headline_f1, lambda _: 1.0, "POPE F1 (%)", "F1"),
        report_columns=(("F1", "f1", _PERCENT), ("Acc", "accuracy", _PERCENT), ("Yes %", "yes_ratio", _PERCENT)),
        write_tree=pope.write_tree, paired_units=pope.paired_units,
    ),
    DatasetSpec(
        "mme", mme.load_files, mme.score, load_parquet=mme.load_parquet,
        folders=("MME_Benchmark_release_version", "mme", "MME", "MME_Benchmark"), max_new_tokens=16,
        parsers=metrics.MME_PARSERS, question_suffix=mme.QUESTION_SUFFIX,
        headline=HeadlineMetric("total_score", mme.total_score, mme.score_range, "MME total score", "Total",
                                display=1.0),
        report_columns=(("Perception", "perception", 1.0), ("Cognition", "cognition", 1.0)),
        write_tree=mme.write_tree, paired_units=mme.paired_units,
    ),
    DatasetSpec(
        "docvqa", docvqa.load_files, docvqa.score, load_parquet=docvqa.load_parquet, folders=("docvqa", "DocVQA"),
        max_new_tokens=32, headline=key_metric("anls", "DocVQA ANLS (%)", "ANLS"),
        report_columns=(("ANLS", "anls", _PERCENT), ("EM", "exact_match", _PERCENT)),
        write_tree=docvqa.write_tree, paired_units=docvqa.paired_units,
    ),
    DatasetSpec(
        "coco_captions", coco.load_files, coco.score, load_parquet=coco.load_parquet, folders=("coco",),
        max_new_tokens=64, short_answer=False, report_columns=(("CIDEr", "cider", 1.0),),
        write_tree=coco.write_tree,
    ),
)
DATASETS: dict[str, DatasetSpec] = {spec.family: spec for spec in _TABLE}


def register_dataset(spec: DatasetSpec) -> DatasetSpec:
    """Add a row to the table (a dataset from outside the package, or a test's throwaway one)."""
    if not isinstance(spec, DatasetSpec):
        raise ValueError(f"register_dataset takes a DatasetSpec, got {type(spec).__name__}")
    if spec.family in DATASETS and DATASETS[spec.family] is not spec:
        raise ValueError(f"dataset family {spec.family!r} is already registered")
    DATASETS[spec.family] = spec
    return spec


def unregister_dataset(family: str) -> None:
    """Remove a row added with :func:`register_dataset` (``ValueError`` if there is none)."""
    if family not in DATASETS:
        raise ValueError(f"dataset family {family!r} is not registered")
    del DATASETS[family]


def benchmark_datasets() -> list[str]:
    """Every benchmark dataset name, in table order (``pope-random`` ... ``docvqa``)."""
    return [name for spec in DATASETS.values() for name in spec.benchmark_names]


def dataset_spec(name: str) -> DatasetSpec:
    """The row of a family or benchmark dataset name (``pope-random`` -> pope's)."""
    family = name.split("-", 1)[0]
    if family not in DATASETS:
        raise ValueError(f"unknown dataset {name!r} (family {family!r}); families: {', '.join(DATASETS)}; "
                         f"benchmark names: {', '.join(benchmark_datasets())}")
    return DATASETS[family]


def name_options(name: str) -> dict:
    """Loader options implied by a benchmark name: ``pope-random`` -> ``{"category": "random"}``."""
    spec = dataset_spec(name)
    _, _, variant = name.partition("-")
    if not variant:
        return {}
    if variant not in spec.variants:
        raise ValueError(f"unknown dataset {name!r}: {spec.family!r} has no variant {variant!r}"
                         + (f" (variants: {', '.join(spec.variants)})" if spec.variants else ""))
    return dict(spec.variants[variant])


def detect_layout(path: Path) -> str:
    """``"parquet"`` if ``path`` is or holds ``.parquet`` files, else ``"files"`` (the original release)."""
    return "parquet" if find_parquet_files(path) else "files"


def load_dataset(name: str, path: str | Path, **options: object) -> Iterator[Sample]:
    """A lazy iterator over ``name``'s samples at ``path``, the layout detected from the path.

    ``name`` is a family (``pope``, ``mme``, ``docvqa``, ``coco_captions``) or a benchmark name
    (``pope-adversarial``). Options: POPE ``category``, ``image_root``; MME ``subtasks``; captions
    ``image_root``. Raises ``ValueError`` for a missing path or an option the loader does not take.
    """
    spec = dataset_spec(name)
    path = Path(path)
    if not path.exists():
        raise ValueError(f"{spec.family}: dataset path does not exist: {path}")
    options = {**name_options(name), **options}
    layout = detect_layout(path)
    loader = spec.load_parquet if layout == "parquet" else spec.load_files
    if loader is None:
        raise ValueError(f"{spec.family}: no loader for the {layout} layout found at {path}")
    try:
        return loader(path, **options)  # a generator: binding the arguments is all that happens here
    except TypeError as err:
        raise ValueError(f"{spec.family}: bad dataset option(s) {sorted(options)}: {err}") from None


def resolve_dataset(data_root: str | Path, name: str) -> tuple[str, Path, dict]:
    """``(family, path, options)`` for benchmark dataset ``name`` under the data-root convention above.

    In the files layout a row's ``narrow_files`` may narrow the folder to the variant's own file (POPE:
    the category's label file, so its hash is the one recorded); parquet keeps the folder plus the options.
    """
    spec = dataset_spec(name)
    root = Path(data_root)
    folder = next((root / f for f in spec.folders if (root / f).exists()), None)
    if folder is None:
        raise ValueError(f"dataset {name!r}: none of {[str(root / f) for f in spec.folders]} exists")
    options = name_options(name)
    if spec.narrow_files is not None and detect_layout(folder) == "files":
        path, options = spec.narrow_files(folder, options)
        return spec.family, path, options
    return spec.family, folder, options
