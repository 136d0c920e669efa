"""What a dataset row holds: :class:`DatasetSpec` and its :class:`HeadlineMetric`.

Everything dataset-specific lives on the row, so loading, limiting, sharding, joining, scoring, prompts, the
benchmark matrix, expectations, the report and the fixture writers are shared code that reads it and never
compares a family string. The table itself is ``sparsezip/data/registry.py``.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from sparsezip.data.sample import Sample
from sparsezip.data.units import Units

Loader = Callable[..., Iterator[Sample]]
# (header, key in the metrics dict, display factor): one report column.
ReportColumn = tuple[str, str, float]
_FAMILY = re.compile(r"[a-z0-9_]+")


@dataclass(frozen=True)
class HeadlineMetric:
    """The one number a benchmark case is judged by.

    Attributes:
        name: recorded with the expectation (``f1``, ``total_score``, ``anls``).
        read: ``metrics -> value`` from a run's metrics dict; raises ``KeyError``/``ValueError`` when absent.
        scale: ``metrics -> the metric's full range`` (1 for F1, 200 per MME subtask present); tolerances are
            fractions of it.
        label: axis label of the report's plot (``POPE F1 (%)``).
        header: the report's column header for it, used when it is not one of the row's report columns.
        display: factor from the metric's value to the report's number (100 for fractions -> percent).
    """

    name: str
    read: Callable[[Mapping], float]
    scale: Callable[[Mapping], float]
    label: str
    header: str
    display: float = 100.0


def key_metric(key: str, label: str, header: str, *, scale: float = 1.0, display: float = 100.0) -> HeadlineMetric:
    """A headline that is one key of the metrics dict with a fixed range (F1, accuracy, ANLS)."""
    return HeadlineMetric(key, lambda metrics: float(metrics[key]), lambda _: scale, label, header, display)


@dataclass(frozen=True)
class DatasetSpec:
    """One dataset: its loaders, names, prompt handling, scoring, headline, report and fixture tree.

    Attributes:
        family: the dataset's name (``pope``); lowercase letters, digits and ``_`` (``-`` starts a variant).
        load_files: loader of the original release layout, ``(path, **options) -> Iterator[Sample]``.
        load_parquet: loader of the HF parquet layout, or ``None`` when the dataset has none.
        score: ``(records, parser) -> metrics dict``; records hold ``question_id``, ``answers``,
            ``prediction`` (and the ``id_scope`` field).
        folders: sub-folders of a data root that may hold the dataset, first existing wins.
        max_new_tokens: the default answer budget (evaluation.md).
        parsers: answer parsers ``score`` accepts (the first is the default).
        id_scope: a record field that qualifies question ids, for datasets whose ids repeat across groups
            (POPE's label files each number their questions from 1).
        variants: benchmark variants, name -> loader options (POPE: ``random`` -> ``{"category": "random"}``);
            the benchmark names are ``<family>-<variant>``, or just ``<family>`` without variants.
        narrow_files: ``(folder, options) -> (path, options)`` for the files layout of a data root: the one
            file a variant reads (so its hash is the one recorded), or ``None``.
        question_suffix: an instruction the dataset appends to its questions, stripped before prompting
            (MME's `` Please answer yes or no.``: the short-answer suffix replaces it).
        short_answer: prompts ask for a single word or phrase (captions ask for a sentence).
        headline: the benchmark's headline metric; ``None`` keeps the dataset out of the benchmark matrix.
        report_columns: the report's metric columns ``(header, metrics key, display factor)``.
        write_tree: ``(root, layout) -> dataset path``: a tiny deterministic tree in ``layout`` (``files`` /
            ``parquet``) for tests of the plumbing, or ``None``.
        paired_units: ``(records, parser) -> Units`` for ``sparsezip compare`` (the headline as a function of
            per-unit statistics, ``sparsezip/data/units.py``), or ``None`` (no paired comparison).
    """

    family: str
    load_files: Loader
    score: Callable[[Sequence[Mapping], str | None], dict]
    folders: tuple[str, ...]
    max_new_tokens: int
    load_parquet: Loader | None = None
    parsers: tuple[str, ...] = ("official",)
    id_scope: str | None = None
    variants: Mapping[str, Mapping[str, object]] = field(default_factory=dict)
    narrow_files: Callable[[Path, dict], tuple[Path, dict]] | None = None
    question_suffix: str | None = None
    short_answer: bool = True
    headline: HeadlineMetric | None = None
    report_columns: tuple[ReportColumn, ...] = ()
    write_tree: Callable[[Path, str], Path] | None = None
    paired_units: Callable[..., Units] | None = None

    def __post_init__(self) -> None:
        if not _FAMILY.fullmatch(self.family):
            raise ValueError(f"dataset family {self.family!r} must be lowercase letters, digits and '_'")
        if not self.parsers:
            raise ValueError(f"{self.family}: parsers must name at least the default parser")
        if self.max_new_tokens < 1:
            raise ValueError(f"{self.family}: max_new_tokens must be >= 1, got {self.max_new_tokens}")
        bad = [v for v in self.variants if not _FAMILY.fullmatch(v)]
        if bad:
            raise ValueError(f"{self.family}: variant names {bad} must be lowercase letters, digits and '_'")

    @property
    def benchmark_names(self) -> tuple[str, ...]:
        """The benchmark datasets this row gives (``pope-random`` ...), empty without a headline."""
        if self.headline is None:
            return ()
        return tuple(f"{self.family}-{v}" for v in self.variants) or (self.family,)

    def question(self, text: str) -> str:
        """The question as the model sees it: the dataset's own instruction suffix stripped, if present."""
        if self.question_suffix and text.endswith(self.question_suffix):
            return text[: -len(self.question_suffix)]
        return text

    def headline_of(self, metrics: Mapping) -> tuple[float, float]:
        """``(value, scale)`` of the headline metric in ``metrics``; ``ValueError`` naming what is missing."""
        if self.headline is None:
            raise ValueError(f"no headline metric for dataset family {self.family!r} (it is not a benchmark)")
        try:
            return float(self.headline.read(metrics)), float(self.headline.scale(metrics))
        except KeyError as err:
            raise ValueError(f"{self.family} metrics lack {err.args[0]!r}; got keys {sorted(metrics)}") from None
