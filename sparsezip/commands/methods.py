"""``sparsezip methods``: list the registered compression methods and what each needs."""

from __future__ import annotations

import argparse
import json

HELP = "list the registered compression methods"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--json", action="store_true", help="print one JSON object instead of a table")


def run(args: argparse.Namespace) -> int:
    from sparsezip.methods import list_methods, method_class

    rows = {
        name: {
            "stage": method_class(name).stage,
            "needs_attention": method_class(name).needs_attention,
            "needs_text": method_class(name).needs_text,
        }
        for name in list_methods()
    }
    if args.json:
        print(json.dumps(rows, indent=2))
    else:
        width = max(map(len, rows), default=0)
        for name, row in rows.items():
            needs = [k.removeprefix("needs_") for k in ("needs_attention", "needs_text") if row[k]]
            print(f"{name:<{width}} stage={row['stage']:<6} needs={','.join(needs) or '-'}")
    return 0
