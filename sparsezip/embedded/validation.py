"""Per-task validation of the embedded recipe: held-out training-distribution images (the validation
sub-stream, disjoint from training and evaluation sets) with fixed questions, scored by the greedy first
answer token per question kind (:data:`~sparsezip.embedded.training_data.QUESTION_KINDS`).

Cheap enough to run every few hundred steps of stage 2 (a forward pass over a few thousand questions), so a
pilot shows which task lags -- e.g. existence "no" on attribute-sharing objects, POPE's hard negatives --
long before the full evaluation through the adapter. It draws from its own generators and never touches the
training ones: validating or not gives the same weights.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

from sparsezip.embedded.datasets import TRAIN_STREAM
from sparsezip.embedded.family import LLAVA, TinyFamily
from sparsezip.embedded.language_stage import (
    QuestionBatch,
    at_scored_positions,
    question_batch,
    suffix_states,
)
from sparsezip.embedded.tower_stage import feature_layer_patches
from sparsezip.embedded.training_data import (
    QUESTION_KINDS,
    VALIDATION_SPLIT,
    render_training_images,
    training_questions,
)

# Fixed, whatever the recipe's mix: pilots with different mixes are then compared on the same questions.
VALIDATION_DOCUMENT_SHARE = 0.25
VALIDATION_EXISTENCE_SHARE = 0.5
VALIDATION_QUESTIONS_PER_IMAGE = 8


@dataclass
class ValidationSet:
    """Feature-layer patches ``features: [n, P, C]`` of the validation images, their questions (``batch``:
    ``n * questions_per_image`` suffixes, image-major) and each question's kind."""

    features: torch.Tensor
    batch: QuestionBatch
    kinds: list[str]
    questions_per_image: int


def validation_set(model: nn.Module, processor: object, seed: int, n_images: int,
                   family: TinyFamily = LLAVA, image_size: int | None = None) -> ValidationSet:
    """``n_images`` validation images of ``seed`` at the recipe's ``image_size`` px (default: the image
    processor's crop size, LLaVA's only size; features from ``model``'s trained tower) with
    ``VALIDATION_QUESTIONS_PER_IMAGE`` questions each."""
    if n_images < 1:
        raise ValueError(f"n_images must be >= 1, got {n_images}")
    spec_size = image_size or processor.image_processor.crop_size["height"]
    patch = model.config.vision_config.patch_size
    data = render_training_images(seed, VALIDATION_SPLIT, n_images, spec_size, patch, processor.image_processor,
                                  VALIDATION_DOCUMENT_SHARE)
    rng = np.random.default_rng(np.random.SeedSequence(seed, spawn_key=(TRAIN_STREAM, 10)))
    q = VALIDATION_QUESTIONS_PER_IMAGE
    items = [tq for item in data.items for tq in training_questions(item, rng, q, VALIDATION_EXISTENCE_SHARE)]
    batch = question_batch(family.prompt_tokens(processor), [(tq.question, tq.answer) for tq in items],
                           processor.tokenizer.pad_token_id)
    features = feature_layer_patches(model, processor, data.pixels, family=family)
    return ValidationSet(features, batch, [tq.kind for tq in items], q)


@torch.no_grad()
def validate(model: nn.Module, processor: object, vset: ValidationSet, family: TinyFamily = LLAVA,
             images_per_chunk: int = 32) -> dict[str, float]:
    """Accuracy of the greedy first answer token per question kind (kinds absent from ``vset`` omitted),
    plus ``all`` over every question. Leaves the model in the train/eval mode it was in."""
    prompts = family.prompt_tokens(processor)
    head = family.lm_head(model)
    q = vset.questions_per_image
    was_training = model.training
    model.eval()
    hits = []
    for start in range(0, vset.features.shape[0], images_per_chunk):
        stop = min(start + images_per_chunk, vset.features.shape[0])
        rows = slice(start * q, stop * q)
        width = int(vset.batch.mask[rows].sum(1).max())
        chunk = QuestionBatch(vset.batch.ids[rows, :width], vset.batch.mask[rows, :width],
                              vset.batch.positions[rows, :1], vset.batch.targets[rows, :1])
        hidden = at_scored_positions(suffix_states(model, prompts, vset.features[start:stop], chunk, q, family)[-1],
                                     chunk)
        hits.append(head(hidden[:, 0]).argmax(-1) == chunk.targets[:, 0])
    model.train(was_training)
    correct = torch.cat(hits).float().numpy()
    kinds = np.asarray(vset.kinds)
    table = {kind: float(correct[kinds == kind].mean()) for kind in QUESTION_KINDS if (kinds == kind).any()}
    table["all"] = float(correct.mean())
    return table
