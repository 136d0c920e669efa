"""``sparsezip methods``: list the registered compression methods, what each needs, and its benchmark rows."""

from __future__ import annotations

import argparse
import json

HELP = "list the registered compression methods"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--json", action="store_true", help="print one JSON object instead of a table")


def _describe(name: str) -> dict:
    from sparsezip.methods import method_class

    cls = method_class(name)
    return {
        "stage": cls.stage,
        "needs_attention": cls.needs_attention,
        "needs_text": cls.needs_text,
        # Row name -> budgets in the LLaVA-1.5 scale (576 = every patch), as the benchmark matrix runs them.
        "benchmark": {
            "budgets": list(cls.benchmark.budgets),
            "ablations": {f"{name}-{a.name}": list(a.llava_budgets) for a in cls.benchmark.ablations},
        },
    }


def run(args: argparse.Namespace) -> int:
    from sparsezip.methods import list_methods

    methods = {name: _describe(name) for name in list_methods()}
    if args.json:
        print(json.dumps(methods, indent=2))
        return 0
    for name, info in methods.items():
        needs = [k.removeprefix("needs_") for k in ("needs_attention", "needs_text") if info[k]]
        bench = info["benchmark"]
        rows = {name: bench["budgets"]} if bench["budgets"] else {}
        rows.update(bench["ablations"])
        bench_text = " ".join(f"{row}@{'/'.join(map(str, budgets))}" for row, budgets in rows.items()) or "-"
        print(f"{name:<12} stage={info['stage']:<6} needs={','.join(needs) or '-':<15} bench={bench_text}")
    return 0
