"""Tables and plots of evaluated cases (``sparsezip report``): benchmark-matrix runs from pytest-benchmark
JSON files and ``sparsezip eval`` run folders alike, read as one :class:`~sparsezip.eval.entries.Entry` type
(``sparsezip/eval/entries.py``), rendered as

- a markdown table per dataset in the shape of the seed's Table 1: method, visual tokens fed to the LLM,
  latency and its speed-up over ``none`` from the same run (and the same kind of timing), and the dataset
  row's report columns; a ``Latency from`` column appears when a latency is not a pytest-benchmark timing;
- a PNG with, per dataset, the headline metric against latency and against visual tokens for every method:
  95% bootstrap intervals as error bars, each panel's Pareto front drawn and the points off it faded.

Where the inputs carry every question's record (run folders; benchmark JSON written by the matrix), the table
adds the paired statistics of :mod:`sparsezip.eval.significance`: the headline's interval, the delta to
``none`` with its interval, McNemar p and loyalty, and whether a method is distinguishable from ``random`` at
the same budget; a second table lists ablation and text-aware pairs. Cases of a checkpoint with published
results (``fixtures/expected/published/``) add a "Published results" section: reproduces / does not reproduce,
per entry, with its source (:mod:`sparsezip.eval.reproduction`).
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from pathlib import Path

from sparsezip.data.registry import DATASETS
from sparsezip.eval.entries import TIMED, Entry, load_entries
from sparsezip.eval.reproduction import published_markdown
from sparsezip.eval.significance import DEFAULT_RESAMPLES, CaseStats, Pair, case_statistics, paired_rows

__all__ = ["Entry", "load_entries", "markdown_table", "plot", "write_report"]


def _fmt(value: float | None, digits: int = 1) -> str:
    return "-" if value is None else f"{value:.{digits}f}"


def _row_label(entry: Entry) -> str:
    return entry.row if entry.row == "none" else f"{entry.row} ({round(entry.tokens)})"


def _interval(low: float, high: float) -> str:
    return f"[{low:+.1f}, {high:+.1f}]"


def _stat_cells(stats: CaseStats | None) -> list[str]:
    """``95% CI | vs none | p | loyalty | vs random`` cells of one case."""
    if stats is None:
        return ["-"] * 5
    ci = "-" if stats.ci is None else f"[{stats.ci[0]:.1f}, {stats.ci[1]:.1f}]"
    none = stats.vs_none
    vs_none = "-" if none is None else f"{none.delta:+.1f} {_interval(none.ci_low, none.ci_high)}"
    p_value = "-" if none is None else f"{none.p_value:.2g}"
    loyalty = "-" if none is None else f"{none.loyalty:.3f}"
    rnd = stats.vs_random
    vs_random = "-" if rnd is None else ("better" if rnd.ci_low > 0 else "worse" if rnd.ci_high < 0
                                         else "not distinguishable")
    return [ci, vs_none, p_value, loyalty, vs_random]


def pairs_table(pairs: Sequence[Pair]) -> str:
    """Markdown table of ablation and text-aware pairs (B against A at the same budget)."""
    lines = ["### Paired rows (same run, dataset, model and budget)", "",
             "| Dataset [model] | Kind | A | B | B - A [95% CI] | McNemar p | Loyalty |", "|---|---|---|---|---|---|---|"]
    for pair in pairs:
        c = pair.comparison
        lines.append(f"| {pair.a.dataset} [{pair.a.model}] | {pair.kind} | {_row_label(pair.a)} | "
                     f"{_row_label(pair.b)} | {c.delta:+.1f} {_interval(c.ci_low, c.ci_high)} | {c.p_value:.2g} | "
                     f"{c.loyalty:.3f} |")
    return "\n".join(lines)


def markdown_table(entries: Iterable[Entry], stats: dict[int, CaseStats] | None = None,
                   pairs: Sequence[Pair] = ()) -> str:
    """One markdown section per (dataset, model): method rows with tokens, latency, speed-up, metrics, and
    with ``stats`` (:func:`~sparsezip.eval.significance.case_statistics` of the same entries) the paired
    statistics; ``pairs`` adds the paired-rows table."""
    entries = list(entries)
    position = {id(e): i for i, e in enumerate(entries)}
    with_stats = bool(stats) and any(s.ci is not None for s in stats.values())
    sections = []
    groups: dict[tuple[str, str], list[Entry]] = {}
    for entry in entries:
        groups.setdefault((entry.dataset, entry.model), []).append(entry)
    several_runs = len({e.run for e in entries}) > 1
    for (dataset, model), group in groups.items():
        spec = DATASETS.get(group[0].family)
        columns = spec.report_columns if spec else ()
        metric_headers = [header for header, _, _ in columns]
        headline = spec.headline if spec else None
        # The headline gets its own column unless it is one of the report columns (MME's total is not).
        headline_header = headline.header if headline and headline.name not in {k for _, k, _ in columns} else None
        show_source = any(e.latency_source != TIMED for e in group)
        headers = (["Run"] if several_runs else []) + ["Method", "Visual tokens", "Latency (ms)"]
        headers += (["Latency from"] if show_source else []) + ["Speed-up"]
        headers += ([headline_header] if headline_header else []) + metric_headers + ["New tokens"]
        if with_stats:
            headers += ["95% CI", "vs none [95% CI]", "McNemar p", "Loyalty", "vs random"]
        lines = [f"### {dataset} [{model}]", "", "| " + " | ".join(headers) + " |",
                 "|" + "|".join(["---"] * len(headers)) + "|"]
        # Speed-ups only between latencies of one run measured the same way (timed call vs evaluation).
        reference = {(e.run, e.latency_source): e.latency_ms for e in group if e.row == "none"}
        for entry in group:
            tokens = _fmt(entry.tokens)
            if entry.tokens_per_layer:
                tokens += " (per layer " + "/".join(_fmt(t, 0) for t in entry.tokens_per_layer) + ")"
            base = reference.get((entry.run, entry.latency_source))
            speedup = (f"{base / entry.latency_ms:.2f}x" if base and entry.latency_ms else "-")
            cells = ([entry.run] if several_runs else []) + [entry.row, tokens, _fmt(entry.latency_ms, 2)]
            cells += ([entry.latency_source] if show_source else []) + [speedup]
            cells += ([_fmt(entry.headline)] if headline_header else [])
            cells += [_fmt(v) for v in entry.metrics] + [_fmt(entry.new_tokens, 2)]
            if with_stats:
                cells += _stat_cells(stats.get(position[id(entry)]))
            lines.append("| " + " | ".join(cells) + " |")
        sections.append("\n".join(lines))
    footer = ("Latency: median of the timed rounds of one fixed sample's generate call (batch 1); where "
              "`Latency from` says `eval median, bB` / `eval mean, bB`, the evaluation's own median / mean "
              "total time of a generate call at batch size B (every sample of a batch carries the batch's time). "
              "Speed-up relative to `none` of the same run and timing. Visual tokens: mean per image fed to "
              "the LLM (SparseVLM: layer-averaged equivalent, per-layer counts in brackets).")
    if with_stats:
        footer += (" 95% CI: percentile bootstrap of the headline over questions (MME: images; within POPE "
                   "categories / MME subtasks). vs none: paired delta of the headline to `none` with its paired "
                   "bootstrap interval, exact McNemar p on per-question correctness, loyalty = share of questions "
                   "answered as `none` answers them. vs random: paired against `random` at the same budget; "
                   "`not distinguishable` when the interval of the difference covers 0 (see the README's "
                   "statistics section for the methods and references).")
    if pairs:
        sections.append(pairs_table(pairs))
    return "\n\n".join(sections) + "\n\n" + footer + "\n"


def pareto_front(points: Sequence[tuple[float, float]]) -> list[int]:
    """Indices of the points no other point dominates (lower or equal x *and* higher or equal y, one strictly),
    in ascending x: the cost/quality front, cost on x (latency, tokens) and quality on y."""
    front = []
    for i, (x, y) in enumerate(points):
        dominated = any((x2 <= x and y2 >= y) and (x2 < x or y2 > y) for j, (x2, y2) in enumerate(points) if j != i)
        if not dominated:
            front.append(i)
    return sorted(front, key=lambda i: points[i])


def _panel(ax, group: list[tuple[Entry, float | None, tuple[float, float] | None]], colors: dict, markers: dict,
           xlabel: str, ylabel: str) -> None:
    """One scatter panel: error bars from the intervals, the Pareto front drawn, points off it faded."""
    shown = [(e, x, ci) for e, x, ci in group if x is not None and e.headline is not None]
    points = [(x, e.headline) for e, x, _ in shown]
    front = set(pareto_front(points))
    for i, (entry, x, ci) in enumerate(shown):
        alpha = 1.0 if i in front else 0.3
        yerr = None if ci is None else [[entry.headline - ci[0]], [ci[1] - entry.headline]]
        ax.errorbar(x, entry.headline, yerr=yerr, fmt=markers.get(entry.run, "o"), color=colors[entry.method],
                    alpha=alpha, capsize=2, markersize=5, elinewidth=0.8)
        ax.annotate(_row_label(entry), (x, entry.headline), fontsize=7, alpha=alpha, xytext=(3, 3),
                    textcoords="offset points")
    if len(front) > 1:
        ordered = pareto_front(points)
        ax.step([points[i][0] for i in ordered], [points[i][1] for i in ordered], where="post", color="black",
                linewidth=0.8, alpha=0.6, label="Pareto front")
    ax.set(xlabel=xlabel, ylabel=ylabel)
    ax.grid(alpha=0.3)


def plot(entries: Iterable[Entry], out_png: str | Path, stats: dict[int, CaseStats] | None = None) -> Path:
    """Write a PNG: one row per dataset, headline metric vs latency (left) and vs visual tokens (right), with
    the cases' 95% intervals (``stats``) as error bars and each panel's Pareto front."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    entries = list(entries)
    if not entries:
        raise ValueError("nothing to plot: no evaluated cases in the given inputs")
    stats = stats or {}
    datasets = list(dict.fromkeys(e.dataset for e in entries))
    methods = list(dict.fromkeys(e.method for e in entries))
    runs = list(dict.fromkeys(e.run for e in entries))
    colors = {m: plt.get_cmap("tab10")(i % 10) for i, m in enumerate(methods)}
    markers = dict(zip(runs, "osD^vP*X", strict=False))
    fig, axes = plt.subplots(len(datasets), 2, figsize=(11, 3.6 * len(datasets)), squeeze=False)
    for (ax_lat, ax_tok), dataset in zip(axes, datasets, strict=True):
        group = [(i, e) for i, e in enumerate(entries) if e.dataset == dataset]
        intervals = {i: (stats[i].ci if i in stats else None) for i, _ in group}
        spec = DATASETS.get(group[0][1].family)
        ylabel = f"{dataset}: {spec.headline.label if spec and spec.headline else 'headline'}"
        _panel(ax_lat, [(e, e.latency_ms, intervals[i]) for i, e in group], colors, markers,
               "latency per sample (ms, median)", ylabel)
        _panel(ax_tok, [(e, e.tokens, intervals[i]) for i, e in group], colors, markers,
               "visual tokens fed to the LLM", ylabel)
    handles = [plt.Line2D([], [], color=colors[m], marker="o", linestyle="", label=m) for m in methods]
    handles.append(plt.Line2D([], [], color="black", alpha=0.6, label="Pareto front (others faded)"))
    if len(runs) > 1:
        handles += [plt.Line2D([], [], color="gray", marker=markers[r], linestyle="", label=r) for r in runs]
    fig.legend(handles=handles, loc="upper center", ncol=min(len(handles), 6), fontsize=8)
    fig.tight_layout(rect=(0, 0, 1, 1 - 0.5 / (3.6 * len(datasets))))
    out = Path(out_png)
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=110)
    plt.close(fig)
    return out


def write_report(paths: Sequence[str | Path], out_dir: str | Path, *, n_resamples: int = DEFAULT_RESAMPLES,
                 seed: int = 0) -> tuple[Path, Path]:
    """``report.md`` and ``report.png`` in ``out_dir`` from ``paths``: pytest-benchmark JSON files and/or
    ``sparsezip eval`` run folders (or folders holding them, e.g. ``runs/bench/<fingerprint>``); paired
    statistics with ``n_resamples`` bootstrap resamples per comparison, seeded."""
    entries = load_entries(paths)
    if not entries:
        raise ValueError(
            f"no benchmark-matrix cases in {', '.join(map(str, paths))} (were they run with timing enabled, "
            "e.g. --benchmark-json, and without xdist? the cases' run folders under runs/bench/ can be "
            "reported directly)"
        )
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    stats = case_statistics(entries, n_resamples, seed)
    md = out / "report.md"
    text = markdown_table(entries, stats, paired_rows(entries, n_resamples, seed))
    published = published_markdown((e.run, e.published) for e in entries if e.published)
    md.write_text(text + (f"\n{published}" if published else ""), encoding="utf-8")
    return md, plot(entries, out / "report.png", stats)
