"""The one table of datasets, the data-root convention, and ``load_dataset``.

Data root (``--data-root`` / ``$SPARSEZIP_DATA`` / ``sparsezip eval --data``)::

    <root>/pope/                           coco_pope_{random,popular,adversarial}.json + val2014/  (or *.parquet)
    <root>/MME_Benchmark_release_version/  the MME release tree, extracted at any depth     (or <root>/mme/*.parquet)
    <root>/docvqa/                         val_v1.0.json + documents/                      (or *.parquet)
    <root>/coco/                           captions_val2014.json + val2014/                (optional)

POPE also finds its images in ``<root>/coco/val2014``. Benchmark dataset names: ``pope-random``,
``pope-popular``, ``pope-adversarial``, ``mme``, ``docvqa`` (and ``coco_captions``); the family is the part
before the first ``-``.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from sparsezip import metrics
from sparsezip.data import coco, docvqa, mme, pope
from sparsezip.data.parquet import find_parquet_files
from sparsezip.data.sample import Sample

BENCHMARK_DATASETS = ("pope-random", "pope-popular", "pope-adversarial", "mme", "docvqa")


@dataclass(frozen=True)
class DatasetSpec:
    """Everything dataset-specific, so the plumbing (loading, limiting, sharding, joining, scoring) is shared.

    Attributes:
        family: ``pope``, ``mme``, ``docvqa``, ``coco_captions`` (also the prompt-building key).
        load_files / load_parquet: the two on-disk layouts; ``(path, **options) -> Iterator[Sample]``.
        score: ``(records, parser) -> metrics dict``; records hold ``question_id``, ``answers``,
            ``prediction`` (and ``category`` where ``id_scope`` says so).
        folders: sub-folders of a data root that may hold this dataset, first existing wins.
        max_new_tokens: the default answer budget (evaluation.md).
        parsers: answer parsers ``score`` accepts (the first is the default).
        id_scope: a record field that qualifies question ids, for datasets whose ids repeat across
            groups (POPE's label files each number their questions from 1).
    """

    family: str
    load_files: Callable[..., Iterator[Sample]]
    load_parquet: Callable[..., Iterator[Sample]]
    score: Callable[[Sequence[Mapping], str | None], dict]
    folders: tuple[str, ...]
    max_new_tokens: int
    parsers: tuple[str, ...] = ("official",)
    id_scope: str | None = None


DATASETS: dict[str, DatasetSpec] = {
    spec.family: spec
    for spec in (
        DatasetSpec("pope", pope.load_files, pope.load_parquet, pope.score, ("pope", "POPE"), 16,
                    metrics.POPE_PARSERS, id_scope="category"),
        DatasetSpec("mme", mme.load_files, mme.load_parquet, mme.score,
                    ("MME_Benchmark_release_version", "mme", "MME", "MME_Benchmark"), 16, metrics.MME_PARSERS),
        DatasetSpec("docvqa", docvqa.load_files, docvqa.load_parquet, docvqa.score, ("docvqa", "DocVQA"), 32),
        DatasetSpec("coco_captions", coco.load_files, coco.load_parquet, coco.score, ("coco",), 64),
    )
}  # fmt: skip


def dataset_spec(name: str) -> DatasetSpec:
    """The spec of a family or benchmark dataset name (``pope-random`` -> pope's)."""
    family = name.split("-", 1)[0]
    if family not in DATASETS:
        raise ValueError(f"unknown dataset {name!r}; families: {', '.join(DATASETS)}; "
                         f"benchmark names: {', '.join(BENCHMARK_DATASETS)}")
    return DATASETS[family]


def name_options(name: str) -> dict:
    """Loader options implied by a benchmark name: ``pope-random`` -> ``{"category": "random"}``."""
    family, _, suffix = name.partition("-")
    dataset_spec(family)
    if not suffix:
        return {}
    if family == "pope" and suffix in pope.CATEGORIES:
        return {"category": suffix}
    raise ValueError(f"unknown dataset {name!r}: {family!r} has no variant {suffix!r}")


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
    loader = spec.load_parquet if detect_layout(path) == "parquet" else spec.load_files
    try:
        return loader(path, **options)  # a generator: binding the arguments is all that happens here
    except TypeError as err:
        raise ValueError(f"{spec.family}: bad dataset option(s) {sorted(options)}: {err}") from None


def resolve_dataset(data_root: str | Path, name: str) -> tuple[str, Path, dict]:
    """``(family, path, options)`` for benchmark dataset ``name`` under the data-root convention above.

    POPE label files resolve to the one file of the category (so its hash is the one recorded); POPE
    parquet resolves to the folder plus a ``category`` option.
    """
    spec = dataset_spec(name)
    root = Path(data_root)
    folder = next((root / f for f in spec.folders if (root / f).exists()), None)
    if folder is None:
        raise ValueError(f"dataset {name!r}: none of {[str(root / f) for f in spec.folders]} exists")
    options = name_options(name)
    if spec.family == "pope" and "category" in options and detect_layout(folder) == "files":
        return spec.family, pope.label_files(folder, options.pop("category"))[0], options
    return spec.family, folder, options
