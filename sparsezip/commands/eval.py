"""``sparsezip eval``: run a model + compression method over a dataset, resumably (see ``sparsezip/eval/runner.py``)."""

from __future__ import annotations

import argparse

from sparsezip.commands._common import (
    CONFIG_HELP,
    add_dataset_arguments,
    add_model_arguments,
    load_model,
    load_samples,
    method_config,
)

HELP = "evaluate a model + compression method on a dataset (resumable; writes predictions.jsonl + summary.json)"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add_dataset_arguments(parser)
    add_model_arguments(parser)
    parser.add_argument("--method", required=True, help="a registered method (see `sparsezip methods`)")
    parser.add_argument("--config", default=None, help=CONFIG_HELP)
    parser.add_argument("--budget", type=int, default=None, help="visual tokens per image")
    parser.add_argument("--batch-size", type=int, default=1)
    parser.add_argument("--shard", default=None, help="i/n: evaluate the i-th of n contiguous slices")
    parser.add_argument("--prompt-style", default="llava_v1", choices=("llava_v1", "hf_chat"))
    parser.add_argument("--max-new-tokens", type=int, default=None,
                        help="default per dataset: POPE/MME 16, DocVQA 32, captions 64")
    parser.add_argument("--out", required=True, help="output folder (re-running the same command resumes)")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")


def run(args: argparse.Namespace) -> int:
    from sparsezip.data.subsets import parse_shard
    from sparsezip.eval.runner import evaluate
    from sparsezip.methods import get_method

    shard = parse_shard(args.shard) if args.shard else None
    samples = load_samples(args)
    config = method_config(args.config)
    if args.budget is not None:
        config["budget"] = args.budget
    method = get_method(args.method, **config)
    model = load_model(args)
    summary = evaluate(
        model, method, samples, args.out, dataset=args.dataset, batch_size=args.batch_size,
        max_new_tokens=args.max_new_tokens, prompt_style=args.prompt_style, shard=shard,
        progress=not args.no_progress,
    )  # fmt: skip
    print(f"{args.out}: {summary['n']}/{summary['expected']} samples; metrics {summary['metrics']}")
    return 0
