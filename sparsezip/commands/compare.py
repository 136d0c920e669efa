"""``sparsezip compare RUN_A RUN_B``: is B's headline metric different from A's beyond the benchmark's noise?"""

from __future__ import annotations

import argparse
import json

HELP = "paired comparison of two eval runs on the same questions: delta with bootstrap CI, McNemar p, loyalty"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("run_a", help="eval folder of the reference run (e.g. method none)")
    parser.add_argument("run_b", help="eval folder of the run compared with it")
    parser.add_argument("--resamples", type=int, default=10_000, help="bootstrap resamples (default 10000)")
    parser.add_argument("--seed", type=int, default=0, help="bootstrap seed (default 0)")
    parser.add_argument("--json", action="store_true", help="print one JSON object instead of text")


def run(args: argparse.Namespace) -> int:
    from sparsezip.eval.compare import compare_runs

    result = compare_runs(args.run_a, args.run_b, n_resamples=args.resamples, seed=args.seed)
    if args.json:
        print(json.dumps(result, indent=2))
        return 0
    print(format_comparison(result))
    return 0


def format_comparison(result: dict) -> str:
    """Human-readable lines for one :func:`sparsezip.eval.compare.compare_runs` result."""
    a, b = result["run_a"], result["run_b"]
    lines = [f"{result['dataset']}: A = {a['method']} ({a['path']}), B = {b['method']} ({b['path']})"]

    def line(name: str, r: dict) -> str:
        kept = "n/a" if r["retained_correct"] is None else f"{r['retained_correct']:.3f}"
        verdict = "distinguishable" if r["ci_low"] > 0 or r["ci_high"] < 0 else "not distinguishable"
        return (f"{name}{r['metric']}: A {r['a']:.4f}  B {r['b']:.4f}  delta {r['delta']:+.4f} "
                f"[95% CI {r['ci_low']:+.4f}, {r['ci_high']:+.4f}] ({verdict}); McNemar p = "
                f"{r['p_value']:.3g} ({r['discordant']} of {r['n']} discordant); loyalty {r['loyalty']:.3f}, "
                f"retained correct {kept}")

    lines.append(line("", result))
    for category, r in result.get("categories", {}).items():
        lines.append(line(f"  {category} ", r))
    return "\n".join(lines)
