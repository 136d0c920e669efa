"""``sparsezip eval``: run a model + compression method over a dataset, resumably (see ``sparsezip/eval/runner.py``)."""

from __future__ import annotations

import argparse

from sparsezip.commands._common import (
    CONFIG_HELP,
    add_dataset_arguments,
    add_model_arguments,
    add_threads_argument,
    load_samples,
    method_config,
    model_plan,
)
from sparsezip.data.prompts import PROMPT_STYLES

HELP = "evaluate a model + compression method on a dataset (resumable; writes predictions.jsonl + summary.json)"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add_dataset_arguments(parser)
    add_model_arguments(parser)
    parser.add_argument("--method", required=True, help="a registered method (see `sparsezip methods`)")
    parser.add_argument("--config", default=None, help=CONFIG_HELP)
    parser.add_argument("--budget", type=int, default=None, help="visual tokens per image")
    parser.add_argument("--budget-mode", default=None, choices=("layer_averaged", "nominal"),
                        help="in-LLM methods: --budget as the layer-averaged visual tokens (their default) or as "
                             "the paper's nominal N-token setting")
    parser.add_argument("--batch-size", type=int, default=1,
                        help="samples per generate call (default 1); answers do not depend on it, but it is part "
                             "of the run's identity, so resume with the same value")
    parser.add_argument("--shard", default=None, help="i/n: evaluate the i-th of n contiguous slices")
    parser.add_argument("--prompt-style", default="llava_v1", choices=PROMPT_STYLES,
                        help="llava_v1 (LLaVA-1.5's vicuna_v1 prompt, default), llava_v1_human (the seed's "
                             "'human' wording), hf_chat (the checkpoint's chat template)")
    parser.add_argument("--max-new-tokens", type=int, default=None,
                        help="default per dataset: POPE/MME 16, DocVQA 32, captions 64")
    parser.add_argument("--out", required=True, help="output folder (re-running the same command resumes)")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")
    add_threads_argument(parser)


def run(args: argparse.Namespace) -> int:
    """Everything that can be checked without the model comes first (arguments, method, device, checkpoint files,
    the method against the checkpoint's geometry, the dataset, the run folder's lock and earlier run); only then
    does the model load."""
    from sparsezip.data.registry import dataset_spec
    from sparsezip.data.subsets import parse_shard
    from sparsezip.eval.rundir import check_same_run, locked, previous_run, run_folder
    from sparsezip.eval.runner import check_questions, evaluate, run_config
    from sparsezip.methods import get_method
    from sparsezip.methods.fit import check_method_fits
    from sparsezip.threads import use_threads

    use_threads(args.threads)  # before anything runs on torch; evaluate records the count in run.json
    shard = parse_shard(args.shard) if args.shard else None
    out = run_folder(args.out)
    if args.batch_size < 1:
        raise ValueError(f"--batch-size must be >= 1, got {args.batch_size}")
    spec = dataset_spec(args.dataset)
    max_new_tokens = spec.max_new_tokens if args.max_new_tokens is None else args.max_new_tokens
    if max_new_tokens < 1:
        raise ValueError(f"--max-new-tokens must be >= 1, got {max_new_tokens}")
    config = method_config(args.config)
    if args.budget is not None:
        config["budget"] = args.budget
    if args.budget_mode is not None:
        from sparsezip.methods import method_class

        if method_class(args.method).stage != "llm":
            raise ValueError(f"--budget-mode is for in-LLM methods; {args.method!r} prunes on the vision side")
        config["budget_mode"] = args.budget_mode
    method = get_method(args.method, **config)
    plan = model_plan(args)
    geometry = plan.geometry()
    check_method_fits(method, geometry.visual_tokens, prefix=geometry.prefix, llm_layers=geometry.llm_layers,
                      model_name=f"model {plan.name!r}", views=geometry.views)
    samples = load_samples(args)
    check_questions(samples, args.dataset)
    known = run_config(args.dataset, samples, plan.known_fields(), method, prompt_style=args.prompt_style,
                       max_new_tokens=max_new_tokens, batch_size=args.batch_size, shard=shard)
    with locked(out):  # held from here to the end: a second eval on this folder is refused at once
        check_same_run(out, previous_run(out), known, partial=True)
        model = plan.load()
        summary = evaluate(
            model, method, samples, out, dataset=args.dataset, batch_size=args.batch_size,
            max_new_tokens=max_new_tokens, prompt_style=args.prompt_style, shard=shard,
            progress=not args.no_progress,
        )  # fmt: skip
    print(f"{args.out}: {summary['n']}/{summary['expected']} samples; metrics {summary['metrics']}")
    return 0
