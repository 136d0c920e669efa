"""Tables and plots from pytest-benchmark JSON files of the benchmark matrix (``sparsezip report``).

Reads what ``benchmarks/test_matrix.py`` writes into each benchmark's ``extra_info`` (dataset, row, visual
tokens, metrics) plus pytest-benchmark's own timing statistics, and renders

- a markdown table per dataset in the shape of the seed's Table 1: method, visual tokens fed to the LLM,
  latency of one sample's generate call (median of the timed rounds) and its speed-up over ``none`` from the
  same run, and the dataset's metrics;
- a PNG with, per dataset, the headline metric against latency and against visual tokens for every method.

Benchmarks without the matrix's ``extra_info`` (e.g. the core micro-benchmarks) are ignored.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

# Metric columns per dataset family: (header, key in extra_info["metrics"], scale for display).
METRIC_COLUMNS: dict[str, tuple[tuple[str, str, float], ...]] = {
    "pope": (("F1", "f1", 100.0), ("Acc", "accuracy", 100.0), ("Yes %", "yes_ratio", 100.0)),
    "mme": (("Perception", "perception", 1.0), ("Cognition", "cognition", 1.0)),
    "docvqa": (("ANLS", "anls", 100.0), ("EM", "exact_match", 100.0)),
}
HEADLINE_LABEL = {"pope": "POPE F1 (%)", "mme": "MME total score", "docvqa": "DocVQA ANLS (%)"}


@dataclass(frozen=True)
class Entry:
    """One matrix case of one run: what the table and the plot show.

    Attributes:
        run: label of the JSON file it came from (its stem, plus device when several files are given).
        dataset: benchmark dataset name; ``family`` its part before the first '-'.
        row: method row name (``sparsezip-notext``); ``method`` the registry name.
        tokens: mean visual tokens fed to the LLM per image (layer-averaged for in-LLM methods).
        tokens_per_layer: per-layer visual tokens (in-LLM methods) or ``None``.
        latency_ms: median latency of the timed generate call, ms (``None`` if timing was disabled).
        headline: the dataset's headline metric, on the display scale (percent, or MME points).
        metrics: the display columns of :data:`METRIC_COLUMNS` (same order), ``None`` where missing.
        new_tokens: mean generated tokens per sample (answer length dominates latency).
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
    headline: float
    metrics: tuple[float | None, ...]
    new_tokens: float | None


def _display_headline(family: str, extra: dict) -> float:
    value = float(extra["headline"]["value"])
    return value if family == "mme" else 100.0 * value


def load_entries(paths: Sequence[str | Path]) -> list[Entry]:
    """Every matrix case in the pytest-benchmark JSON files ``paths``, in file then benchmark order.

    Raises ``ValueError`` naming the file if one is not a pytest-benchmark JSON (no ``benchmarks`` list).
    """
    entries = []
    for path in map(Path, paths):
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, json.JSONDecodeError) as err:
            raise ValueError(f"cannot read benchmark JSON {path}: {err}") from None
        if not isinstance(data, dict) or not isinstance(data.get("benchmarks"), list):
            raise ValueError(f"{path} is not a pytest-benchmark JSON file (no 'benchmarks' list)")
        device = (data.get("machine_info") or {}).get("sparsezip", {}) or {}
        device_label = device.get("gpu_name") or device.get("device_type") or "?"
        run = f"{path.stem} ({device_label})" if len(paths) > 1 else path.stem
        for bench in data["benchmarks"]:
            extra = bench.get("extra_info") or {}
            if "dataset" not in extra or "headline" not in extra:
                continue
            family = extra["family"]
            metrics = extra.get("metrics", {})
            tokens = extra["visual_tokens"]
            stats = bench.get("stats") or {}
            entries.append(Entry(
                run=run,
                dataset=extra["dataset"],
                family=family,
                model=extra.get("model", "?"),
                row=extra["row"],
                method=extra["method"],
                tokens=float(tokens["mean"]),
                tokens_per_layer=tokens.get("per_layer"),
                latency_ms=1000.0 * stats["median"] if "median" in stats else None,
                headline=_display_headline(family, extra),
                metrics=tuple(
                    None if metrics.get(key) is None else scale * float(metrics[key])
                    for _, key, scale in METRIC_COLUMNS.get(family, ())
                ),
                new_tokens=extra.get("new_tokens_mean"),
            ))
    return entries


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
        family = group[0].family
        metric_headers = [header for header, _, _ in METRIC_COLUMNS.get(family, ())]
        headline_header = "Total" if family == "mme" else None
        headers = (["Run"] if several_runs else []) + ["Method", "Visual tokens", "Latency (ms)", "Speed-up"]
        headers += ([headline_header] if headline_header else []) + metric_headers + ["New tokens"]
        lines = [f"### {dataset} [{model}]", "", "| " + " | ".join(headers) + " |",
                 "|" + "|".join(["---"] * len(headers)) + "|"]
        reference = {e.run: e.latency_ms for e in group if e.row == "none"}
        for entry in group:
            tokens = _fmt(entry.tokens)
            if entry.tokens_per_layer:
                tokens += " (per layer " + "/".join(_fmt(t, 0) for t in entry.tokens_per_layer) + ")"
            base = reference.get(entry.run)
            speedup = (f"{base / entry.latency_ms:.2f}x" if base and entry.latency_ms else "-")
            cells = ([entry.run] if several_runs else []) + [entry.row, tokens, _fmt(entry.latency_ms, 2), speedup]
            cells += ([_fmt(entry.headline)] if headline_header else [])
            cells += [_fmt(v) for v in entry.metrics] + [_fmt(entry.new_tokens, 2)]
            lines.append("| " + " | ".join(cells) + " |")
        sections.append("\n".join(lines))
    footer = ("Latency: median of the timed rounds of one fixed sample's generate call (batch 1), "
              "speed-up relative to `none` of the same run. Visual tokens: mean per image fed to the LLM "
              "(SparseVLM: layer-averaged equivalent, per-layer counts in brackets).")
    return "\n\n".join(sections) + "\n\n" + footer + "\n"


def plot(entries: Iterable[Entry], out_png: str | Path) -> Path:
    """Write a PNG: one row per dataset, headline metric vs latency (left) and vs visual tokens (right)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    entries = list(entries)
    if not entries:
        raise ValueError("nothing to plot: no benchmark-matrix cases in the given files")
    datasets = list(dict.fromkeys(e.dataset for e in entries))
    methods = list(dict.fromkeys(e.method for e in entries))
    runs = list(dict.fromkeys(e.run for e in entries))
    colors = {m: plt.get_cmap("tab10")(i % 10) for i, m in enumerate(methods)}
    markers = dict(zip(runs, "osD^vP*X", strict=False))
    fig, axes = plt.subplots(len(datasets), 2, figsize=(11, 3.6 * len(datasets)), squeeze=False)
    for (ax_lat, ax_tok), dataset in zip(axes, datasets, strict=True):
        group = [e for e in entries if e.dataset == dataset]
        for entry in group:
            style = {"color": colors[entry.method], "marker": markers.get(entry.run, "o")}
            if entry.latency_ms is not None:
                ax_lat.scatter(entry.latency_ms, entry.headline, **style)
                ax_lat.annotate(_row_label(entry), (entry.latency_ms, entry.headline), fontsize=7,
                                xytext=(3, 3), textcoords="offset points")
            ax_tok.scatter(entry.tokens, entry.headline, **style)
            ax_tok.annotate(_row_label(entry), (entry.tokens, entry.headline), fontsize=7,
                            xytext=(3, 3), textcoords="offset points")
        ylabel = f"{dataset}: {HEADLINE_LABEL.get(group[0].family, 'headline')}"
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
    """``report.md`` and ``report.png`` in ``out_dir`` from the benchmark JSON files ``paths``."""
    entries = load_entries(paths)
    if not entries:
        raise ValueError(
            f"no benchmark-matrix cases in {', '.join(map(str, paths))} (were they run with timing enabled, "
            "e.g. --benchmark-json, and without xdist?)"
        )
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    md = out / "report.md"
    md.write_text(markdown_table(entries), encoding="utf-8")
    return md, plot(entries, out / "report.png")
