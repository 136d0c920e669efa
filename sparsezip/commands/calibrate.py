"""``sparsezip calibrate``: choose SparseZip's dynamic-K constants on a sample of a dataset's images."""

from __future__ import annotations

import argparse
import dataclasses
from typing import TYPE_CHECKING

import yaml

from sparsezip.commands._common import (
    CONFIG_HELP,
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
    parser.add_argument("--config", default=None, help=CONFIG_HELP)
    parser.add_argument("--budget", type=int, default=None,
                        help="visual tokens per image; the target mean K is its dominant share (default: "
                        "the config's `dominant`)")
    parser.add_argument("--target-k", type=float, default=None, help="target mean K, overriding the budget's")
    parser.add_argument("--k-min", type=int, default=None, help="dynamic-K lower bound (default: the config's, 32)")
    parser.add_argument("--k-max", type=int, default=None, help="dynamic-K upper bound (default: the config's, 64)")
    parser.add_argument("--images", type=int, default=32, help="how many images to calibrate on (default 32)")


def run(args: argparse.Namespace) -> int:
    """Prints a YAML document that ``--config`` accepts: ``model.sparsezip`` = the calibrated configuration
    (the base ``--config`` with dynamic K on, the budget's dominant/contextual split and the calibrated
    ``dynk``), plus ``calibration`` (c, scale, target and resulting K mean/std/min/max, clamped share, images),
    which configuration loading ignores."""
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
    block = method.cfg.to_dict()
    block["dynk"].update(calibration.as_config())
    header = (f"# sparsezip calibrate: dynamic K on {calibration.num_images} images of {args.dataset} "
              f"(model {args.model_path}), target mean K {calibration.target_mean_k:g}.\n"
              "# Use the file as --config (sparsezip eval --method sparsezip --config FILE); model.sparsezip holds "
              "the budget's split already.\n")
    document = {"calibration": dataclasses.asdict(calibration), "model": {"sparsezip": block}}
    print(header + yaml.safe_dump(document, sort_keys=False), end="")
    return 0
