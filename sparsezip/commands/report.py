"""``sparsezip report RUN.json|RUN_DIR [...] [--out DIR]``: markdown table + accuracy/latency plot."""

from __future__ import annotations

import argparse

HELP = "table (markdown) and plot (PNG) of benchmark JSON files and/or sparsezip eval run folders"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("runs", nargs="+", metavar="RUN",
                        help="pytest-benchmark JSON files (--benchmark-json or a saved baseline) and/or "
                             "`sparsezip eval` run folders (run.json + summary.json) or folders holding them "
                             "(e.g. runs/bench/<fingerprint>)")
    parser.add_argument("--out", default="out/report",
                        help="output folder for report.md and report.png (default: out/report)")
    parser.add_argument("--resamples", type=int, default=2000,
                        help="bootstrap resamples per paired comparison (default 2000)")
    parser.add_argument("--seed", type=int, default=0, help="bootstrap seed (default 0)")


def run(args: argparse.Namespace) -> int:
    from sparsezip.eval.report import write_report

    md, png = write_report(args.runs, args.out, n_resamples=args.resamples, seed=args.seed)
    print(md.read_text(encoding="utf-8"))
    print(f"wrote {md} and {png}")
    return 0
