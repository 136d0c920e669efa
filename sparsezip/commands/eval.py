"""``sparsezip eval``: run a model + compression method over a dataset, resumably (see ``sparsezip/runner.py``)."""

from __future__ import annotations

import argparse
from pathlib import Path

HELP = "evaluate a model + compression method on a dataset (resumable; writes predictions.jsonl + summary.json)"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--dataset", required=True,
                        help="pope-random, pope-popular, pope-adversarial, mme, docvqa (or a family name)")
    parser.add_argument("--data", required=True, help="a data root (pope/, MME_Benchmark_release_version/, "
                        "docvqa/ ...) or the dataset's own path")
    parser.add_argument("--model-path", required=True, help="a LLaVA checkpoint folder (HF format)")
    parser.add_argument("--method", required=True, help="a registered method (see `sparsezip methods`)")
    parser.add_argument("--config", default=None, help="YAML with a model.sparsezip block (the seed's layout)")
    parser.add_argument("--budget", type=int, default=None, help="visual tokens per image")
    parser.add_argument("--limit", type=int, default=None,
                        help="first N samples (extended to finish the last MME question pair)")
    parser.add_argument("--batch-size", type=int, default=1)
    parser.add_argument("--shard", default=None, help="i/n: evaluate the i-th of n contiguous slices")
    parser.add_argument("--prompt-style", default="llava_v1", choices=("llava_v1", "hf_chat"))
    parser.add_argument("--max-new-tokens", type=int, default=None,
                        help="default per dataset: POPE/MME 16, DocVQA 32, captions 64")
    parser.add_argument("--device", default=None, help="cuda, cuda:1, cpu (default: cuda if available)")
    parser.add_argument("--dtype", default=None, help="float16, bfloat16, float32 (default: the adapter's)")
    parser.add_argument("--image-root", default=None, help="POPE/captions: the COCO val2014 image folder")
    parser.add_argument("--out", required=True, help="output folder (re-running the same command resumes)")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")


def run(args: argparse.Namespace) -> int:
    from sparsezip.data.registry import dataset_spec, load_dataset, resolve_dataset
    from sparsezip.data.subsets import limit_samples, parse_shard
    from sparsezip.methods import get_method
    from sparsezip.runner import evaluate

    spec = dataset_spec(args.dataset)
    shard = parse_shard(args.shard) if args.shard else None
    data = Path(args.data)
    if any((data / folder).exists() for folder in spec.folders):  # a data root
        _, path, options = resolve_dataset(data, args.dataset)
        name = args.dataset
    else:  # the dataset's own path
        path, options, name = data, {}, args.dataset
    if args.image_root:
        options["image_root"] = args.image_root
    samples = limit_samples(list(load_dataset(name, path, **options)), args.limit)
    config = _method_config(args.config)
    if args.budget is not None:
        config["budget"] = args.budget
    method = get_method(args.method, **config)
    model = _load_model(args.model_path, args.device, args.dtype)
    summary = evaluate(
        model, method, samples, args.out, dataset=args.dataset, batch_size=args.batch_size,
        max_new_tokens=args.max_new_tokens, prompt_style=args.prompt_style, shard=shard,
        progress=not args.no_progress,
    )  # fmt: skip
    print(f"{args.out}: {summary['n']}/{summary['expected']} samples; metrics {summary['metrics']}")
    return 0


# --- Loading the method config and the model -------------------------------------------------------
def _method_config(path: str | None) -> dict:
    """The ``model.sparsezip`` block of ``--config`` as keyword arguments for the method (strictly checked
    by ``sparsezip.config``)."""
    if path is None:
        return {}
    from sparsezip.config import load_yaml

    return dict(load_yaml(path))


def _load_model(model_path: str, device: str | None, dtype: str | None):
    """The LLaVA adapter's loader on ``device`` (default: CUDA when available, else CPU)."""
    import torch

    from sparsezip.adapters.llava import load_llava

    if device is None:
        device = "cuda" if torch.cuda.is_available() else "cpu"
    return load_llava(model_path, device=device, dtype=dtype)
