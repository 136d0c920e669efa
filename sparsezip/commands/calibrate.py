"""``sparsezip calibrate``: choose SparseZip's dynamic-K constants on a sample of a dataset's images."""

from __future__ import annotations

import argparse
import dataclasses
import json
from typing import TYPE_CHECKING

from sparsezip.commands._common import (
    add_dataset_arguments,
    add_model_arguments,
    load_model,
    load_samples,
    method_config,
)

if TYPE_CHECKING:
    from sparsezip.data.sample import Sample

HELP = "calibrate SparseZip's dynamic K (dynk.c, dynk.scale) so the mean K over a dataset sample hits a budget"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add_dataset_arguments(parser)
    add_model_arguments(parser)
    parser.add_argument("--config", default=None, help="YAML with a model.sparsezip block (the seed's layout)")
    parser.add_argument("--budget", type=int, default=None,
                        help="visual tokens per image; the target mean K is its dominant share (default: "
                        "the config's `dominant`)")
    parser.add_argument("--target-k", type=float, default=None, help="target mean K, overriding the budget's")
    parser.add_argument("--k-min", type=int, default=None, help="dynamic-K lower bound (default: the config's, 32)")
    parser.add_argument("--k-max", type=int, default=None, help="dynamic-K upper bound (default: the config's, 64)")
    parser.add_argument("--images", type=int, default=32, help="how many images to calibrate on (default 32)")


def run(args: argparse.Namespace) -> int:
    """Prints one JSON object: the calibration (c, scale, K mean/std/min/max, clamped share) and the
    ``model.sparsezip`` YAML keys to use it."""
    from sparsezip.data.registry import dataset_spec
    from sparsezip.eval.calibration import calibrate_on_samples
    from sparsezip.methods import get_method

    if args.images < 1:
        raise ValueError(f"--images must be >= 1, got {args.images}")
    config = {**method_config(args.config), "dynamic_k": True, "skip_dynamic_k": False}
    for key in ("budget", "k_min", "k_max"):
        if getattr(args, key) is not None:
            config[key] = getattr(args, key)
    method = get_method("sparsezip", **config)
    samples = load_samples(args)
    # Distinct images (POPE asks 6 questions per image, MME 2): the first question about each.
    first_per_image: dict[str, Sample] = {}
    for sample in samples:
        first_per_image.setdefault(str(sample.image_ref), sample)
    distinct = list(first_per_image.values())
    calibration = calibrate_on_samples(method, load_model(args), distinct[: args.images],
                                       dataset_spec(args.dataset).family, args.target_k)
    result = dataclasses.asdict(calibration)
    cfg = method.cfg.to_dict()
    result["config"] = {"dynamic_k": True, "k_min": cfg["k_min"], "k_max": cfg["k_max"],
                        "dynk": {**cfg["dynk"], **calibration.as_config()}}
    print(json.dumps(result, indent=2))
    return 0
