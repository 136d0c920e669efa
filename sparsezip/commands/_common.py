"""What several subcommands share: dataset/model/method arguments and loading them."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from sparsezip.adapters.llava import LlavaVLM
    from sparsezip.data.sample import Sample


def add_dataset_arguments(parser: argparse.ArgumentParser) -> None:
    """``--dataset --data --limit --image-root``."""
    parser.add_argument("--dataset", required=True,
                        help="pope-random, pope-popular, pope-adversarial, mme, docvqa (or a family name)")
    parser.add_argument("--data", required=True, help="a data root (pope/, MME_Benchmark_release_version/, "
                        "docvqa/ ...) or the dataset's own path")
    parser.add_argument("--limit", type=int, default=None,
                        help="first N samples (extended to finish the last MME question pair)")
    parser.add_argument("--image-root", default=None, help="POPE/captions: the COCO val2014 image folder")


def add_model_arguments(parser: argparse.ArgumentParser) -> None:
    """``--model-path --device --dtype``."""
    parser.add_argument("--model-path", required=True, help="a LLaVA checkpoint folder (HF format)")
    parser.add_argument("--device", default=None, help="cuda, cuda:1, cpu (default: cuda if available)")
    parser.add_argument("--dtype", default=None, help="float16, bfloat16, float32 (default: the adapter's)")
    add_pad_argument(parser)


def add_pad_argument(parser: argparse.ArgumentParser) -> None:
    """``--no-pad``: the processor's center crop instead of LLaVA-1.5's pad-to-square (recorded in run.json)."""
    parser.add_argument("--no-pad", action="store_true",
                        help="center-crop images as the HF processor does, instead of padding them to a square "
                             "of the mean colour first (LLaVA-1.5's image_aspect_ratio=pad, the default)")


def load_samples(args: argparse.Namespace) -> list[Sample]:
    """The samples ``--dataset`` / ``--data`` / ``--image-root`` / ``--limit`` select, in dataset order."""
    from sparsezip.data.registry import dataset_spec, load_dataset, resolve_dataset
    from sparsezip.data.subsets import limit_samples

    spec = dataset_spec(args.dataset)
    data = Path(args.data)
    if any((data / folder).exists() for folder in spec.folders):  # a data root
        _, path, options = resolve_dataset(data, args.dataset)
    else:  # the dataset's own path
        path, options = data, {}
    if args.image_root:
        options["image_root"] = args.image_root
    return limit_samples(list(load_dataset(args.dataset, path, **options)), args.limit)


def method_config(path: str | None) -> dict:
    """The ``model.sparsezip`` block of ``--config`` as keyword arguments for the method (strictly checked
    by ``sparsezip.methods.sparsezip.config``); ``{}`` without a file."""
    if path is None:
        return {}
    from sparsezip.methods.sparsezip.config import load_yaml

    return dict(load_yaml(path))


def load_model(args: argparse.Namespace) -> LlavaVLM:
    """The LLaVA adapter on ``--device`` (default: CUDA when available, else CPU)."""
    import torch

    from sparsezip.adapters.llava import load_llava

    device = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
    return load_llava(args.model_path, device=device, dtype=args.dtype, pad=not args.no_pad)
