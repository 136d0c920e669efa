"""Tables and plots of evaluated cases (``sparsezip report``): benchmark-matrix runs from pytest-benchmark
JSON files and ``sparsezip eval`` run folders alike, read as one :class:`~sparsezip.eval.entries.Entry` type
(``sparsezip/eval/entries.py``), rendered as

- a markdown table per dataset in the shape of the seed's Table 1: method, visual tokens fed to the LLM,
  latency and its speed-up over ``none`` from the same run (and the same kind of timing), and the dataset
  row's report columns; a ``Latency from`` column appears when a latency is not a pytest-benchmark timing;
- a PNG with, per dataset, the headline metric against latency and against visual tokens for every method.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from pathlib import Path

from sparsezip.data.registry import DATASETS
from sparsezip.eval.entries import TIMED, Entry, load_entries

__all__ = ["Entry", "load_entries", "markdown_table", "plot", "write_report"]


def _fmt(value: float | None, digits: int = 1) -> str:
    return "-" if value is None else f"{value:.{digits}f}"


def _row_label(entry: Entry) -> str:
    return entry.row if entry.row == "none" else f"{entry.row} ({round(entry.tokens)})"


def markdown_table(entries: Iterable[Entry]) -> str:
    """One markdown section per (dataset, model): method rows with tokens, latency, speed-up, metrics."""
    entries = list(entries)
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
            lines.append("| " + " | ".join(cells) + " |")
        sections.append("\n".join(lines))
    footer = ("Latency: median of the timed rounds of one fixed sample's generate call (batch 1); where "
              "`Latency from` says `eval median, bB` / `eval mean, bB`, the evaluation's own median / mean "
              "total time of a generate call at batch size B (every sample of a batch carries the batch's time). "
              "Speed-up relative to `none` of the same run and timing. Visual tokens: mean per image fed to "
              "the LLM (SparseVLM: layer-averaged equivalent, per-layer counts in brackets).")
    return "\n\n".join(sections) + "\n\n" + footer + "\n"


def plot(entries: Iterable[Entry], out_png: str | Path) -> Path:
    """Write a PNG: one row per dataset, headline metric vs latency (left) and vs visual tokens (right)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    entries = list(entries)
    if not entries:
        raise ValueError("nothing to plot: no evaluated cases in the given inputs")
    datasets = list(dict.fromkeys(e.dataset for e in entries))
    methods = list(dict.fromkeys(e.method for e in entries))
    runs = list(dict.fromkeys(e.run for e in entries))
    colors = {m: plt.get_cmap("tab10")(i % 10) for i, m in enumerate(methods)}
    markers = dict(zip(runs, "osD^vP*X", strict=False))
    fig, axes = plt.subplots(len(datasets), 2, figsize=(11, 3.6 * len(datasets)), squeeze=False)
    for (ax_lat, ax_tok), dataset in zip(axes, datasets, strict=True):
        group = [e for e in entries if e.dataset == dataset]
        for entry in group:
            if entry.headline is None:  # a dataset without a headline (captions) has nothing to plot
                continue
            style = {"color": colors[entry.method], "marker": markers.get(entry.run, "o")}
            if entry.latency_ms is not None:
                ax_lat.scatter(entry.latency_ms, entry.headline, **style)
                ax_lat.annotate(_row_label(entry), (entry.latency_ms, entry.headline), fontsize=7,
                                xytext=(3, 3), textcoords="offset points")
            ax_tok.scatter(entry.tokens, entry.headline, **style)
            ax_tok.annotate(_row_label(entry), (entry.tokens, entry.headline), fontsize=7,
                            xytext=(3, 3), textcoords="offset points")
        spec = DATASETS.get(group[0].family)
        ylabel = f"{dataset}: {spec.headline.label if spec and spec.headline else 'headline'}"
        ax_lat.set(xlabel="latency per sample (ms, median)", ylabel=ylabel)
        ax_tok.set(xlabel="visual tokens fed to the LLM", ylabel=ylabel)
        for ax in (ax_lat, ax_tok):
            ax.grid(alpha=0.3)
    handles = [plt.Line2D([], [], color=colors[m], marker="o", linestyle="", label=m) for m in methods]
    if len(runs) > 1:
        handles += [plt.Line2D([], [], color="gray", marker=markers[r], linestyle="", label=r) for r in runs]
    fig.legend(handles=handles, loc="upper center", ncol=min(len(handles), 6), fontsize=8)
    fig.tight_layout(rect=(0, 0, 1, 1 - 0.5 / (3.6 * len(datasets))))
    out = Path(out_png)
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=110)
    plt.close(fig)
    return out


def write_report(paths: Sequence[str | Path], out_dir: str | Path) -> tuple[Path, Path]:
    """``report.md`` and ``report.png`` in ``out_dir`` from ``paths``: pytest-benchmark JSON files and/or
    ``sparsezip eval`` run folders (or folders holding them, e.g. ``runs/bench/<fingerprint>``)."""
    entries = load_entries(paths)
    if not entries:
        raise ValueError(
            f"no benchmark-matrix cases in {', '.join(map(str, paths))} (were they run with timing enabled, "
            "e.g. --benchmark-json, and without xdist? the cases' run folders under runs/bench/ can be "
            "reported directly)"
        )
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    md = out / "report.md"
    md.write_text(markdown_table(entries), encoding="utf-8")
    return md, plot(entries, out / "report.png")
