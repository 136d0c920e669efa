"""``sparsezip merge``: join ``sparsezip eval --shard i/n`` outputs into one run."""

from __future__ import annotations

import argparse
import json

HELP = "merge the output folders of sharded eval runs into one predictions file and summary"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("shards", nargs="+", help="the --out folders of the shard runs (all n of them)")
    parser.add_argument("--out", required=True, help="folder for the merged run")


def run(args: argparse.Namespace) -> int:
    from sparsezip.eval.rundir import merge_runs

    summary = merge_runs(args.shards, args.out)
    print(json.dumps({"out": args.out, "n": summary["n"], "metrics": summary["metrics"]}, indent=2))
    return 0
