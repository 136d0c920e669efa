"""``sparsezip make-fixtures``: write the synthetic POPE / MME / DocVQA sets in their real on-disk formats."""

from __future__ import annotations

import argparse
import json

COMMITTED_DATA = "fixtures/data"


def committed_or_given(out: str | None, force: bool, committed: str, command: str) -> str:
    """``out`` if given; else the committed folder, but only with ``force`` (regenerating committed fixtures is
    deliberate, never a default)."""
    if out is not None:
        return out
    if not force:
        raise ValueError(f"{command} would overwrite the committed {committed}: pass --out DIR to write elsewhere, "
                         "or --force to regenerate the committed copy")
    return committed

HELP = "write the synthetic evaluation sets (POPE, MME, DocVQA formats) deterministically"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--out", default=None,
                        help="data root to write; without it, --force writes the committed fixtures/data")
    parser.add_argument("--force", action="store_true",
                        help="without --out: overwrite the committed fixtures/data (regenerating the fixtures)")
    parser.add_argument("--seed", type=int, default=0, help="seed of every random draw (default: 0)")


def run(args: argparse.Namespace) -> int:
    from sparsezip.embedded.datasets import write_synthetic_sets

    out = committed_or_given(args.out, args.force, COMMITTED_DATA, "make-fixtures")
    counts = write_synthetic_sets(out, seed=args.seed)
    print(json.dumps({"out": out, "seed": args.seed, "questions": counts}))
    return 0
