"""The statistics ``sparsezip report`` adds to every evaluated case that carries its per-question records.

Per case (within one run, dataset and model):

- the headline metric's 95% bootstrap interval;
- against ``none`` (the uncompressed model): the paired delta with its interval, the exact McNemar p-value
  and loyalty (share of questions answered as ``none`` answers them) -- ``sparsezip compare`` semantics;
- against ``random`` at the same budget: whether the method is distinguishable from the control (the
  interval of the paired difference excludes 0).

Plus two kinds of pairs: each declared ablation against its base row at the same budget (``sparsezip-notext``
vs ``sparsezip``), and each text-aware row against the best question-agnostic row at the same budget.
Deltas and intervals are on the headline's display scale (percent for F1/ANLS, points for MME).
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass

from sparsezip.data.records import scored_records
from sparsezip.data.registry import DATASETS
from sparsezip.eval.compare import compare_records
from sparsezip.eval.entries import Entry
from sparsezip.eval.stats import bootstrap_ci
from sparsezip.methods import list_methods, method_class

DEFAULT_RESAMPLES = 2_000  # per comparison in a report (sparsezip compare defaults to 10,000)


@dataclass(frozen=True)
class Comparison:
    """B against A on the same questions: ``delta = B - A`` with its interval (display scale), McNemar p,
    loyalty of B to A."""

    delta: float
    ci_low: float
    ci_high: float
    p_value: float
    loyalty: float

    @property
    def distinguishable(self) -> bool:
        """The interval of the difference excludes 0."""
        return self.ci_low > 0 or self.ci_high < 0


@dataclass(frozen=True)
class CaseStats:
    """What the report shows next to one case: its interval, and the comparisons with ``none``/``random``."""

    ci: tuple[float, float] | None
    vs_none: Comparison | None
    vs_random: Comparison | None


@dataclass(frozen=True)
class Pair:
    """A paired comparison the report lists on its own: ``b`` against ``a`` (``kind``: ablation / text)."""

    kind: str
    a: Entry
    b: Entry
    comparison: Comparison


def _display(entry: Entry) -> float:
    spec = DATASETS.get(entry.family)
    return spec.headline.display if spec and spec.headline else 1.0


def compare_entries(a: Entry, b: Entry, n_resamples: int = DEFAULT_RESAMPLES, seed: int = 0) -> Comparison | None:
    """:func:`~sparsezip.eval.compare.compare_records` of two entries, or ``None`` when either lacks records
    or they cover different questions (e.g. one run was limited)."""
    if a.records is None or b.records is None or a.family != b.family:
        return None
    try:
        result = compare_records(a.family, a.records, b.records, n_resamples=n_resamples, seed=seed)
    except ValueError:
        return None
    scale = _display(a)
    return Comparison(scale * result["delta"], scale * result["ci_low"], scale * result["ci_high"],
                      result["p_value"], result["loyalty"])


def case_interval(entry: Entry, n_resamples: int = DEFAULT_RESAMPLES, seed: int = 0) -> tuple[float, float] | None:
    """The 95% bootstrap interval of ``entry``'s headline (display scale), ``None`` without records."""
    spec = DATASETS.get(entry.family)
    if entry.records is None or spec is None or spec.paired_units is None:
        return None
    units = spec.paired_units(scored_records(entry.records))  # stripped, as scoring parses
    _, low, high = bootstrap_ci(units.stats, units.metric, strata=units.strata, n_resamples=n_resamples, seed=seed)
    return _display(entry) * low, _display(entry) * high


def _groups(entries: Iterable[Entry]) -> dict[tuple[str, str, str], list[Entry]]:
    groups: dict[tuple[str, str, str], list[Entry]] = {}
    for entry in entries:
        groups.setdefault((entry.run, entry.dataset, entry.model), []).append(entry)
    return groups


def case_statistics(entries: Sequence[Entry], n_resamples: int = DEFAULT_RESAMPLES,
                    seed: int = 0) -> dict[int, CaseStats]:
    """:class:`CaseStats` per entry, keyed by its position in ``entries``."""
    index = {id(e): i for i, e in enumerate(entries)}
    out: dict[int, CaseStats] = {}
    for group in _groups(entries).values():
        none = next((e for e in group if e.row == "none"), None)
        randoms = {e.budget: e for e in group if e.row == "random"}
        for entry in group:
            random = randoms.get(entry.budget)
            out[index[id(entry)]] = CaseStats(
                ci=case_interval(entry, n_resamples, seed),
                vs_none=None if none is None or entry is none else compare_entries(none, entry, n_resamples, seed),
                vs_random=None if random is None or entry is random
                else compare_entries(random, entry, n_resamples, seed),
            )
    return out


def _is_text_aware(entry: Entry) -> bool:
    if entry.method not in list_methods():
        return False
    cls = method_class(entry.method)
    return bool(cls.needs_text) and not entry.row.endswith("-notext")


def paired_rows(entries: Sequence[Entry], n_resamples: int = DEFAULT_RESAMPLES, seed: int = 0) -> list[Pair]:
    """Ablations against their base row, and text-aware rows against the best question-agnostic row, each at
    the same budget within one run, dataset and model."""
    pairs: list[Pair] = []
    for group in _groups(entries).values():
        by_row_budget = {(e.row, e.budget): e for e in group}
        for entry in group:
            base = by_row_budget.get((entry.method, entry.budget))
            if entry.row != entry.method and base is not None:
                comparison = compare_entries(base, entry, n_resamples, seed)
                if comparison is not None:
                    pairs.append(Pair("ablation", base, entry, comparison))
        for entry in (e for e in group if _is_text_aware(e) and e.row == e.method):
            agnostic = [e for e in group if e.budget == entry.budget and e.row not in ("none", "random")
                        and not _is_text_aware(e) and e.headline is not None and e is not entry]
            if entry.budget is None or not agnostic:
                continue
            best = max(agnostic, key=lambda e: e.headline)
            comparison = compare_entries(best, entry, n_resamples, seed)
            if comparison is not None:
                pairs.append(Pair("text", best, entry, comparison))
    return pairs
