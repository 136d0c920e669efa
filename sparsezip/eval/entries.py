"""What ``sparsezip report`` reads: one :class:`Entry` per evaluated (dataset, model, method row), from either

- a pytest-benchmark JSON of the benchmark matrix (``--benchmark-json``, a saved baseline): the matrix's
  ``extra_info`` per case, latency = pytest-benchmark's median of the timed generate call; or
- ``sparsezip eval`` run folders (``run.json`` + ``summary.json``; a folder of them is searched), latency =
  the summary's stage statistics: median ``total_ms`` of a generate call over the evaluated samples, at the
  run's batch size (with batch > 1 every sample carries its batch's time).

``Entry.latency_source`` says which, and the report shows it. Dataset specifics (metric columns, headline
and its display scale) come from the dataset table; row names of eval folders from the method registry.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from sparsezip.data.records import expand_records
from sparsezip.data.registry import DATASETS, benchmark_datasets
from sparsezip.data.spec import DatasetSpec
from sparsezip.methods import list_methods, method_class
from sparsezip.methods.rows import ablation_of

TIMED = "timed"  # latency_source of a pytest-benchmark timing


@dataclass(frozen=True)
class Entry:
    """One evaluated case: what the table and the plot show.

    Attributes:
        run: label of the input it came from (a benchmark JSON's stem; ``eval`` for run folders), plus the
            device when several inputs are given.
        dataset: dataset name; ``family`` its table row.
        row: method row name (``sparsezip-notext``); ``method`` the registry name.
        tokens: mean visual tokens fed to the LLM per image (layer-averaged for in-LLM methods).
        tokens_per_layer: per-layer visual tokens (in-LLM methods) or ``None``.
        latency_ms: median latency of a generate call, ms (``None`` if there is no timing at all).
        latency_source: ``timed`` (pytest-benchmark rounds of one sample, batch 1) or ``eval median, b<B>`` /
            ``eval mean, b<B>`` (the evaluation's own stage times at batch size B).
        headline: the dataset's headline metric on the display scale (percent, or MME points); ``None`` when
            the dataset has none or the metrics lack it.
        metrics: the row's report columns (same order), ``None`` where missing.
        new_tokens: mean generated tokens per sample (answer length dominates latency).
        budget: the method's token budget on this model (``None`` = its default, e.g. ``none``).
        records: every question's scoring record (``question_id``, ``category``, ``answers``, raw
            ``prediction``) in dataset order, for paired statistics; ``None`` when the input lacks them (a
            benchmark JSON written before they were recorded).
        published: the case's comparison with the published results (``extra_info["published"]``, see
            :mod:`sparsezip.eval.reproduction`); ``None`` for eval run folders and the embedded model.
    """

    run: str
    dataset: str
    family: str
    model: str
    row: str
    method: str
    tokens: float
    tokens_per_layer: list[float] | None
    latency_ms: float | None
    latency_source: str
    headline: float | None
    metrics: tuple[float | None, ...]
    new_tokens: float | None
    budget: int | None = None
    records: tuple[dict, ...] | None = field(default=None, repr=False, compare=False)
    published: Mapping | None = field(default=None, repr=False, compare=False)


def _spec(family: str) -> DatasetSpec | None:
    """The table row of ``family``; ``None`` for a dataset no longer (or not here) registered."""
    return DATASETS.get(family)


def _columns(spec: DatasetSpec | None, metrics: Mapping | None) -> tuple[float | None, ...]:
    if spec is None:
        return ()
    metrics = metrics or {}
    return tuple(None if metrics.get(key) is None else scale * float(metrics[key])
                 for _, key, scale in spec.report_columns)


def _display_headline(spec: DatasetSpec | None, metrics: Mapping | None, recorded: Mapping | None) -> float | None:
    """The headline on the display scale: the recorded value (benchmark JSON) or read from the metrics."""
    if spec is None or spec.headline is None:
        return None
    if recorded is not None:
        return spec.headline.display * float(recorded["value"])
    try:
        return spec.headline.display * spec.headline_of(metrics or {})[0]
    except ValueError:  # e.g. an unfinished run without metrics
        return None


def benchmark_entries(path: Path, data: Mapping, run: str) -> list[Entry]:
    """Every matrix case in one pytest-benchmark JSON (benchmarks without the matrix's ``extra_info``, e.g. the
    core micro-benchmarks, are ignored)."""
    entries = []
    for bench in data["benchmarks"]:
        extra = bench.get("extra_info") or {}
        if "dataset" not in extra or "headline" not in extra:
            continue
        spec = _spec(extra["family"])
        tokens = extra["visual_tokens"]
        stats = bench.get("stats") or {}
        if "median" in stats:
            latency, source = 1000.0 * stats["median"], TIMED
        else:  # timing was off: the evaluation's mean stage time (what extra_info keeps)
            latency = (extra.get("stage_ms") or {}).get("total_ms")
            source = f"eval mean, b{extra.get('eval_batch_size', '?')}"
        entries.append(Entry(
            run=run, dataset=extra["dataset"], family=extra["family"], model=extra.get("model", "?"),
            row=extra["row"], method=extra["method"], tokens=float(tokens["mean"]),
            tokens_per_layer=tokens.get("per_layer"), latency_ms=latency, latency_source=source,
            headline=_display_headline(spec, extra.get("metrics"), extra["headline"]),
            metrics=_columns(spec, extra.get("metrics")), new_tokens=extra.get("new_tokens_mean"),
            budget=extra.get("budget"),
            records=tuple(expand_records(extra["records"])) if extra.get("records") else None,
            published=extra.get("published"),
        ))  # fmt: skip
    return entries


def _row_name(method: str, config: Mapping) -> str:
    """A run's row name from its method and config: ``sparsezip-notext`` when the config carries one of the
    method's declared ablations, else the method name."""
    if method not in list_methods():
        return method
    ablation = ablation_of(method_class(method).benchmark, config)
    return method if ablation is None else f"{method}-{ablation}"


def eval_entry(folder: Path, several: bool = False) -> Entry:
    """The entry of one ``sparsezip eval`` run folder (``run.json`` + ``summary.json``). Its run label is
    ``eval``, plus the device when the report has several inputs (folders of one device form one run)."""
    try:
        config = json.loads((folder / "run.json").read_text(encoding="utf-8"))
        summary = json.loads((folder / "summary.json").read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError) as err:
        raise ValueError(f"{folder}: not a readable sparsezip eval run folder ({err})") from None
    spec = _spec(config["family"])
    tokens = summary["tokens"]
    total = (summary.get("latency_ms") or {}).get("total_ms") or {}
    return Entry(
        run=f"eval ({_device_label(summary.get('environment') or {})})" if several else "eval",
        dataset=summary["dataset"], family=config["family"], model=config["model"],
        row=_row_name(config["method"], config.get("method_config") or {}), method=config["method"],
        tokens=float((tokens.get("visual") or {}).get("mean", float("nan"))),
        tokens_per_layer=tokens.get("visual_per_layer_mean"), latency_ms=total.get("median"),
        latency_source=f"eval median, b{config['batch_size']}",
        headline=_display_headline(spec, summary.get("metrics"), None),
        metrics=_columns(spec, summary.get("metrics")), new_tokens=tokens.get("new_tokens_mean"),
        budget=(config.get("method_config") or {}).get("budget"), records=_scoring_records(folder),
    )  # fmt: skip


def _scoring_records(folder: Path) -> tuple[dict, ...] | None:
    """The run's scoring records in dataset order (``None`` if it has no predictions yet)."""
    from sparsezip.data.records import SCORING_FIELDS
    from sparsezip.jsonio import iter_jsonl

    path = folder / "predictions.jsonl"
    if not path.is_file():
        return None
    records = sorted((obj for _, obj in iter_jsonl(path)), key=lambda r: r.get("index", 0))
    return tuple({k: r[k] for k in SCORING_FIELDS if k in r} for r in records) or None


def run_folders(path: Path) -> list[Path]:
    """``path`` itself if it is an eval run folder, else every run folder below it (sorted)."""
    if (path / "run.json").is_file() and (path / "summary.json").is_file():
        return [path]
    return sorted(f.parent for f in path.rglob("summary.json") if (f.parent / "run.json").is_file())


def _device_label(environment: Mapping) -> str:
    device = str(environment.get("device", "?"))
    return str(environment.get("device_name") or device) if device.startswith("cuda") else device.split(":")[0]


def _order(entry: Entry) -> tuple:
    """Report order for run folders (which come in path order): the table's datasets, then the matrix's rows."""
    datasets = benchmark_datasets()
    dataset = datasets.index(entry.dataset) if entry.dataset in datasets else len(datasets)
    rank, rows = 1 << 30, [entry.method]  # an unregistered method: after the registered ones
    if entry.method in list_methods():
        declared = method_class(entry.method).benchmark
        rank, rows = declared.order, rows + [f"{entry.method}-{a.name}" for a in declared.ablations]
    row = rows.index(entry.row) if entry.row in rows else len(rows)
    return dataset, entry.dataset, entry.model, rank, entry.method, row, entry.row, entry.tokens


def load_entries(paths: Sequence[str | Path]) -> list[Entry]:
    """Every case in ``paths``: pytest-benchmark JSON files (file then benchmark order) and eval run folders
    or folders of them (dataset, then row order); a ``summary.json`` path stands for its folder.

    Raises ``ValueError`` naming the path if it is neither (a JSON without a ``benchmarks`` list, a folder
    without run folders).
    """
    several = len(paths) > 1
    entries: list[Entry] = []
    for path in map(Path, paths):
        if path.name == "summary.json" and path.is_file():
            path = path.parent
        if path.is_dir():
            folders = run_folders(path)
            if not folders:
                raise ValueError(f"{path}: no sparsezip eval run folders (run.json + summary.json) in or below it")
            entries.extend(sorted((eval_entry(folder, several) for folder in folders), key=_order))
            continue
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, json.JSONDecodeError) as err:
            raise ValueError(f"cannot read benchmark JSON {path}: {err}") from None
        if not isinstance(data, dict) or not isinstance(data.get("benchmarks"), list):
            raise ValueError(f"{path} is not a pytest-benchmark JSON file (no 'benchmarks' list) "
                             "nor an eval run folder")
        device = (data.get("machine_info") or {}).get("sparsezip", {}) or {}
        device_label = device.get("gpu_name") or device.get("device_type") or "?"
        entries.extend(benchmark_entries(path, data, f"{path.stem} ({device_label})" if several else path.stem))
    return entries
