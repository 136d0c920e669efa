"""``sparsezip train-tiny``: train an embedded tiny model (``--arch``) on CPU and write it with
``save_pretrained``."""

from __future__ import annotations

import argparse
import json

HELP = "train an embedded tiny model (CPU, minutes, reproducible) and write it with save_pretrained"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    from sparsezip.embedded.family import FAMILY_NAMES

    parser.add_argument("--arch", default="llava", choices=FAMILY_NAMES,
                        help="model family to train (default: llava, the embedded default tiny-shapes)")
    parser.add_argument("--out", default=None,
                        help="output folder; without it, --force writes the committed fixtures/<arch's folder>")
    parser.add_argument("--force", action="store_true",
                        help="without --out: overwrite the committed checkpoint of --arch (retraining it)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the training data and weights (default: 0)")
    parser.add_argument("--tower-steps", type=int, default=None,
                        help="stage-1 (vision tower) steps (default: the recipe's 2000, as every committed embedded "
                             "model; see their model cards)")
    parser.add_argument("--lm-steps", type=int, default=None,
                        help="stage-2 steps (default: the recipe's 2500, as every committed embedded model)")
    parser.add_argument("--coordinate-weight", type=float, default=None,
                        help="weight of the tower's linear x / y coordinate target (0 = off; default: the recipe's, "
                             "see the model cards)")
    parser.add_argument("--name-weight", type=float, default=None,
                        help="weight of the stage-2 name targets (where each named object is, half-way up the LM; "
                             "0 = off; default: the recipe's, see the model cards)")
    parser.add_argument("--validation-images", type=int, default=300,
                        help="held-out images whose per-kind accuracy is logged during stage 2 and recorded in the "
                             "report (own generators: the weights do not depend on it; 0 to skip; default: 300)")
    parser.add_argument("--validate-every", type=int, default=500,
                        help="stage-2 steps between validations (default: 500; always at the end)")
    parser.add_argument("--data-root", default="fixtures/data",
                        help="synthetic evaluation data (from make-fixtures) scored for the model card; "
                             "'' to skip (default: fixtures/data)")


def run(args: argparse.Namespace) -> int:
    import dataclasses

    from sparsezip.commands.make_fixtures import committed_or_given
    from sparsezip.embedded.family import family
    from sparsezip.embedded.train import TrainRecipe, train_tiny

    arch = family(args.arch)
    out = committed_or_given(args.out, args.force, f"fixtures/{arch.fixture}", "train-tiny")
    recipe = dataclasses.replace(TrainRecipe(), seed=args.seed)
    # (flag, recipe field, least allowed value): steps count from 1, a weight of 0 turns its target off
    settings = (("--tower-steps", "tower_steps", 1), ("--lm-steps", "lm_steps", 1),
                ("--coordinate-weight", "coordinate_weight", 0), ("--name-weight", "name_weight", 0))
    for flag, field, least in settings:
        value = getattr(args, field)
        if value is not None:
            if value < least:
                raise ValueError(f"{flag} must be >= {least}, got {value}")
            recipe = dataclasses.replace(recipe, **{field: value})
    if args.validation_images < 0 or args.validate_every < 0:
        raise ValueError("--validation-images and --validate-every must be >= 0")
    report = train_tiny(out, recipe, eval_root=args.data_root or None, family=arch,
                        validation_images=args.validation_images, validate_every=args.validate_every)
    print(json.dumps({"out": out, "arch": arch.name, "minutes": report["minutes"], "tasks": report.get("tasks")}))
    return 0
