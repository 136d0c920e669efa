"""What several subcommands share: dataset/model/method arguments and loading them."""

from __future__ import annotations

import argparse
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import torch

    from sparsezip.adapters.api import ModelGeometry, VisionLanguageModel
    from sparsezip.adapters.registry import Checkpoint
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
    parser.add_argument("--model-path", required=True,
                        help="a checkpoint folder (HF format; the adapter is chosen by config.json's model_type) "
                             "or an embedded model's name (tiny-shapes)")
    parser.add_argument("--device", default=None, help="cuda, cuda:1, cpu (default: cuda if available)")
    parser.add_argument("--dtype", default=None, help="float16, bfloat16, float32 (default: the adapter's)")
    add_pad_argument(parser)


def add_pad_argument(parser: argparse.ArgumentParser) -> None:
    """``--no-pad``: the processor's center crop instead of LLaVA-1.5's pad-to-square (recorded in run.json)."""
    parser.add_argument("--no-pad", action="store_true",
                        help="center-crop images as the HF processor does, instead of padding them to a square "
                             "of the mean colour first (LLaVA-1.5's image_aspect_ratio=pad, the default)")


def add_threads_argument(parser: argparse.ArgumentParser) -> None:
    """``--threads``: torch's CPU threads (sparsezip.threads)."""
    from sparsezip.threads import physical_cores

    parser.add_argument("--threads", type=int, default=None,
                        help=f"torch CPU threads (default: the physical cores this process may use, "
                             f"{physical_cores()} here); recorded in run.json")


def load_samples(args: argparse.Namespace) -> list[Sample]:
    """The samples ``--dataset`` / ``--data`` / ``--image-root`` / ``--limit`` select, in dataset order. Only the
    selected samples need their image files (``--limit 100`` runs without the rest of the images); every
    question must be non-empty."""
    from sparsezip.data.registry import dataset_spec, load_dataset, resolve_dataset
    from sparsezip.data.sample import check_image_files
    from sparsezip.data.subsets import limit_samples

    spec = dataset_spec(args.dataset)
    data = Path(args.data)
    if any((data / folder).exists() for folder in spec.folders):  # a data root
        _, path, options = resolve_dataset(data, args.dataset)
    else:  # the dataset's own path
        path, options = data, {}
    if args.image_root:
        options["image_root"] = args.image_root
    samples = limit_samples(list(load_dataset(args.dataset, path, check_images=False, **options)), args.limit)
    check_image_files(samples)
    return samples


CONFIG_HELP = ("a YAML file with a model.sparsezip block (the seed's layout; what `sparsezip calibrate` prints) "
               "or a SparseZip preset: pope, mme, docvqa (the seed's per-dataset configs), seed-live, "
               "seed-live-mme (what the seed's code ran)")


def method_config(value: str | None) -> dict:
    """The ``model.sparsezip`` block of ``--config`` (a YAML path or a preset name) as keyword arguments for
    the method (strictly checked by ``sparsezip.methods.sparsezip.config``); ``{}`` without one."""
    if value is None:
        return {}
    from sparsezip.methods.sparsezip.config import resolve_config

    return dict(resolve_config(value))


@dataclass(frozen=True)
class ModelPlan:
    """A checkpoint that passed every check that needs no weights, and where and how it will run: what a command
    knows about its model before paying for loading it."""

    checkpoint: Checkpoint
    device: torch.device
    dtype: torch.dtype
    options: dict = field(default_factory=dict)  # the adapter's own load options (LLaVA-1.5: pad)

    @property
    def name(self) -> str:
        return self.checkpoint.name

    def geometry(self) -> ModelGeometry:
        """Visual tokens, prefix and LLM layers from ``config.json``."""
        from sparsezip.adapters.registry import checkpoint_geometry

        return checkpoint_geometry(self.checkpoint)

    def known_fields(self) -> dict:
        """The part of the run identity (:func:`sparsezip.eval.runner.model_fields`) known before loading."""
        from sparsezip.eval.runner import identity_fields

        return identity_fields(self.name, self.geometry().visual_tokens, self.checkpoint.path, self.dtype,
                               self.device)

    def load(self) -> VisionLanguageModel:
        """``from_pretrained`` through the checkpoint's adapter."""
        from sparsezip.adapters.registry import load_checked

        return load_checked(self.checkpoint, self.device, self.dtype, **self.options)


def model_plan(args: argparse.Namespace) -> ModelPlan:
    """``--model-path`` / ``--device`` / ``--dtype`` checked without loading any weights: the device exists, the
    dtype is a float type, the checkpoint's config has an adapter and its files are complete (the model registry's
    checks). Default device: CUDA when available, else CPU."""
    import torch

    from sparsezip.adapters.registry import inspect_checkpoint, parse_device, resolve_dtype

    device = parse_device(args.device or ("cuda" if torch.cuda.is_available() else "cpu"))
    dtype = resolve_dtype(args.dtype, device)
    options = {"pad": False} if getattr(args, "no_pad", False) else {}
    return ModelPlan(inspect_checkpoint(args.model_path), device, dtype, options)


def load_model(args: argparse.Namespace) -> VisionLanguageModel:
    """``--model-path`` through the model registry (its adapter picked by ``config.json``'s ``model_type``; bad
    checkpoints refused before any weights load) on ``--device`` (default: CUDA when available, else CPU)."""
    return model_plan(args).load()
