"""Training the embedded tiny models (``sparsezip train-tiny --arch``): CPU, under an hour or two, reproducible.

The recipe, in modules of one concept each:

- :mod:`~sparsezip.embedded.recipe`: the settings (:class:`TrainRecipe`) and shared helpers;
- :mod:`~sparsezip.embedded.training_data`: images (scenes and large-print documents, prepared exactly as
  the adapter prepares evaluation images: pad-to-square), dense labels, questions and auxiliary targets;
- :mod:`~sparsezip.embedded.tower_stage`: stage 1, the vision tower on per-patch object/word classes,
  per-patch grid positions and CLS presence;
- :mod:`~sparsezip.embedded.language_stage`: stage 2, projector + language model on the questions;
- :mod:`~sparsezip.embedded.family`: the architecture seam (tower tap, projector, prompt ids), so a tiny
  LLaVA-NeXT or Qwen2.5-VL is trained by the same recipe on the same data with its own family.

Determinism: ``torch.set_num_threads`` is fixed by the recipe, every random draw uses an explicit
``numpy``/``torch`` generator seeded from the recipe seed, data order is a seeded permutation, and the
global RNG is never read. Same seed and thread count, same weights (on the same CPU kind).
"""

from __future__ import annotations

import json
import tempfile
import time
from collections.abc import Callable
from functools import partial
from pathlib import Path

import torch

from sparsezip.embedded.family import LLAVA, TinyFamily
from sparsezip.embedded.language_stage import train_language
from sparsezip.embedded.model_card import model_card
from sparsezip.embedded.recipe import TINY_SPEC, TrainRecipe
from sparsezip.embedded.tower_stage import feature_layer_patches, train_tower
from sparsezip.embedded.training_data import TRAIN_SPLIT, render_training_images, training_corpus
from sparsezip.embedded.validation import validate, validation_set

__all__ = ["TINY_SPEC", "TrainRecipe", "build_untrained", "task_table", "train_tiny"]

# Evaluated through the adapter and runner for the model card (all visual tokens).
CARD_DATASETS = ("pope-random", "pope-popular", "pope-adversarial", "mme", "docvqa")


def build_untrained(recipe: TrainRecipe, family: TinyFamily = LLAVA) -> tuple:
    """The randomly initialised model and processor the recipe starts from."""
    return family.build(recipe.spec, recipe.seed, training_corpus())


def train_tiny(
    out_dir: str | Path,
    recipe: TrainRecipe | None = None,
    *,
    eval_root: str | Path | None = None,
    log: Callable[[str], None] = print,
    family: TinyFamily = LLAVA,
    validation_images: int = 0,
    validate_every: int = 0,
) -> dict:
    """Train the tiny model with ``recipe`` and write it to ``out_dir`` (``save_pretrained`` safetensors +
    processor + ``README.md`` model card + ``training_report.json``). With ``eval_root`` (a make-fixtures
    data root), the card reports every synthetic task measured through the adapter and runner with all
    tokens, and the probe's CLS-top-k vs random selection on POPE. Returns the report. Torch's thread count
    is set to ``recipe.threads`` for the run and restored.
    """
    recipe = recipe or TrainRecipe()
    out = Path(out_dir)
    threads = torch.get_num_threads()
    torch.set_num_threads(recipe.threads)
    try:
        start = time.perf_counter()
        model, processor = build_untrained(recipe, family)
        spec = recipe.spec
        data = render_training_images(recipe.seed, TRAIN_SPLIT, recipe.images, spec.image_size, spec.patch_size,
                                      processor.image_processor, recipe.document_share)
        log(f"rendered {len(data)} training images in {time.perf_counter() - start:.0f}s")
        tower_metrics = train_tower(model, processor, data, recipe, log, family)
        features = feature_layer_patches(model, processor, data.pixels, family=family)
        check = None
        if validation_images:
            vset = validation_set(model, processor, recipe.seed, validation_images, family, spec.image_size)
            check = partial(validate, model, processor, vset, family)
        lm_metrics = train_language(model, processor, data, features, recipe, log, family, check, validate_every)
        minutes = (time.perf_counter() - start) / 60
        out.mkdir(parents=True, exist_ok=True)
        model.save_pretrained(out)
        processor.save_pretrained(out)
        report: dict = {"recipe": recipe.to_json(), "family": family.name, "fixture": family.fixture, "minutes": round(minutes, 1),
                        "threads": recipe.threads, "torch": torch.__version__, "tower": tower_metrics,
                        "language": {k: v for k, v in lm_metrics.items() if not k.startswith("val_")}}
        if validation_images:
            report["validation"] = {"images": validation_images,
                                    **{k[4:]: v for k, v in lm_metrics.items() if k.startswith("val_")}}
        if eval_root is not None:
            report["tasks"] = task_table(out, eval_root)
            if family is LLAVA:  # the standalone probe reads LLaVA-1.5's layout (one view, CLS)
                from sparsezip.embedded.probe import compression_table

                report["compression"] = compression_table(model, processor, eval_root)
    finally:
        torch.set_num_threads(threads)
    (out / "training_report.json").write_text(json.dumps(report, indent=1) + "\n", encoding="utf-8")
    (out / "README.md").write_text(model_card(report), encoding="utf-8")
    return report


def task_table(model_dir: str | Path, data_root: str | Path, batch_size: int = 32) -> dict[str, dict]:
    """Every synthetic task scored through the suite's adapter and runner (the model registry's adapter for the
    checkpoint, method ``none``, the default protocol): ``{dataset: metrics}``, the numbers ``sparsezip eval``
    gives."""
    from sparsezip.adapters.registry import load_model
    from sparsezip.data.registry import load_dataset, resolve_dataset
    from sparsezip.eval.runner import evaluate
    from sparsezip.methods import get_method

    vlm = load_model(model_dir)
    table = {}
    with tempfile.TemporaryDirectory() as runs:
        for name in CARD_DATASETS:
            _, path, options = resolve_dataset(data_root, name)
            samples = list(load_dataset(name, path, **options))
            summary = evaluate(vlm, get_method("none"), samples, Path(runs) / name, dataset=name,
                               batch_size=batch_size, progress=False)
            table[name] = summary["metrics"]
    return table
