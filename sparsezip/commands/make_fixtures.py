"""``sparsezip make-fixtures``: write the synthetic POPE / MME / DocVQA sets in their real on-disk formats."""

from __future__ import annotations

import argparse
import json

HELP = "write the synthetic evaluation sets (POPE, MME, DocVQA formats) deterministically"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--out", default="fixtures/data", help="data root to write (default: fixtures/data)")
    parser.add_argument("--seed", type=int, default=0, help="seed of every random draw (default: 0)")


def run(args: argparse.Namespace) -> int:
    from sparsezip.embedded.datasets import write_synthetic_sets

    counts = write_synthetic_sets(args.out, seed=args.seed)
    print(json.dumps({"out": args.out, "seed": args.seed, "questions": counts}))
    return 0
