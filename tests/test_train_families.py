"""The recipe on the LLaVA-NeXT and Qwen2.5-VL families: what training feeds the model is what the model's own
forward (and so the adapter) sees, the tower targets line up with the patches they label, and training is
reproducible."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch
from PIL import Image

from sparsezip.data.prompts import build_prompt
from sparsezip.embedded.documents import Document
from sparsezip.embedded.family import family
from sparsezip.embedded.language_stage import at_scored_positions, question_batch, suffix_states
from sparsezip.embedded.models import TinyLlavaSpec
from sparsezip.embedded.scenes import Scene
from sparsezip.embedded.tower_stage import feature_layer_patches
from sparsezip.embedded.train import TrainRecipe, build_untrained
from sparsezip.embedded.training_data import TRAIN_SPLIT, render_training_images, training_questions

FAMILIES = ("llava-next", "qwen2.5-vl")
MICRO = TrainRecipe(
    spec=TinyLlavaSpec(vision_hidden=32, vision_intermediate=64, vision_layers=2, vision_heads=2,
                       text_hidden=32, text_intermediate=64, text_layers=2, text_heads=2, vocab_size=640),
    threads=1, images=8, tower_steps=2, tower_batch=4, lm_steps=2, lm_batch_images=2, questions_per_image=2,
    warmup=1, document_share=0.5,
)


@pytest.fixture(scope="module", params=FAMILIES)
def micro(request) -> tuple:
    fam = family(request.param)
    model, processor = build_untrained(MICRO, fam)
    spec = MICRO.spec
    data = render_training_images(0, TRAIN_SPLIT, 6, spec.image_size, spec.patch_size, processor.image_processor,
                                  0.5)
    return fam, model, processor, data


def test_shared_prefix_equals_the_models_own_forward(micro) -> None:
    """Training's logits (prefix run once, its KV cache shared; the family's prompt ids and position ids) equal
    the model's own forward on the processor's inputs for the full prompt + answer: same tokens, same positions
    (NeXT: anyres packing; Qwen: M-RoPE), same image tokens."""
    fam, model, processor, data = micro
    prompts = fam.prompt_tokens(processor)
    rng = np.random.default_rng(0)
    chosen = ([i for i, item in enumerate(data.items) if isinstance(item, Scene)][:1]
              + [i for i, item in enumerate(data.items) if isinstance(item, Document)][:1])
    items = [(tq.question, tq.answer) for i in chosen for tq in training_questions(data.items[i], rng, 3)]
    batch = question_batch(prompts, items, processor.tokenizer.pad_token_id)
    eos = processor.tokenizer.eos_token
    with torch.no_grad():
        features = feature_layer_patches(model, processor, data.pixels[chosen], family=fam)
        hidden = suffix_states(model, prompts, features, batch, 3, fam)[-1]
        logits = fam.lm_head(model)(at_scored_positions(hidden, batch))
        for j, (question, answer) in enumerate(items):
            text = build_prompt("pope", question) + ({True: " Yes", False: " No"}.get(answer, answer)) + eos
            inputs = processor(images=[Image.fromarray(data.pixels[chosen[j // 3]])], text=[text],
                               return_tensors="pt")
            n = int((batch.targets[j] != -100).sum())
            assert inputs["input_ids"][0, -n:].tolist() == batch.targets[j, :n].tolist()
            inputs.pop("attention_mask", None)
            reference = model(**inputs).logits[0, -1 - n:-1]
            torch.testing.assert_close(logits[j, :n], reference, atol=1e-4, rtol=1e-4)
    assert not torch.allclose(logits[0], logits[3])


def test_qwen_tower_targets_follow_the_processors_patch_order() -> None:
    """The Qwen image processor emits patches merge unit by merge unit (``unit_order``), and the tower outputs the
    recipe labels are put in that order; merging them gives exactly the model's own merged tokens."""
    from sparsezip.embedded.family_qwen import QwenProjector, unit_order

    fam = family("qwen2.5-vl")
    model, processor = build_untrained(MICRO, fam)
    side = MICRO.spec.image_size // MICRO.spec.patch_size
    patch = MICRO.spec.patch_size
    index = np.arange(side * side, dtype=np.uint8).reshape(side, side)
    image = np.zeros((side * patch, side * patch, 3), dtype=np.uint8)
    image[..., 0] = np.kron(index, np.ones((patch, patch), dtype=np.uint8))
    pixel_values, grid = fam.vision_inputs(processor, image[None])
    ip = processor.image_processor
    red = pixel_values[:, 0] * ip.image_std[0] + ip.image_mean[0]  # first pixel of each patch, channel 0
    assert torch.round(red * 255).long().tolist() == unit_order(side).tolist()
    with torch.no_grad():
        patches, _ = fam.tower_hidden(model, (pixel_values, grid))
        merged = QwenProjector(model.model.visual.merger)(patches)[0]
        reference = model.model.visual(pixel_values, grid_thw=grid).pooler_output
    torch.testing.assert_close(merged, reference)


def test_next_crop_targets_are_the_crops_patches() -> None:
    """LLaVA-NeXT sees a square training image as a base view + 2 x 2 tiles; each tile's labels are its quadrant
    of the image's label grid, and the processor's tile k is that quadrant's pixels."""
    from sparsezip.embedded.family_next import crop_patch_labels

    fam = family("llava-next")
    _, processor = build_untrained(MICRO, fam)
    side = MICRO.spec.image_size // MICRO.spec.patch_size
    labels = torch.arange(side * side).reshape(1, -1) % 7
    crops = crop_patch_labels(labels, side)
    grid = labels.reshape(side, side)
    half = side // 2
    quadrants = [grid[:half, :half], grid[:half, half:], grid[half:, :half], grid[half:, half:]]
    for k, quadrant in enumerate(quadrants):
        assert crops[0, 1 + k].tolist() == quadrant.flatten().tolist()
    rng = np.random.default_rng(0)
    image = rng.integers(0, 255, (MICRO.spec.image_size, MICRO.spec.image_size, 3), dtype=np.uint8)
    views = fam.vision_inputs(processor, image[None])[0]  # [5, 3, s, s]
    s = MICRO.spec.image_size // 2
    ip = processor.image_processor
    for k, (top, left) in enumerate([(0, 0), (0, s), (s, 0), (s, s)]):
        direct = ip(Image.fromarray(image[top:top + s, left:left + s]), return_tensors="pt")["pixel_values"]
        torch.testing.assert_close(views[1 + k], direct[0, 0], atol=1e-5, rtol=0)


@pytest.mark.parametrize("arch", FAMILIES)
def test_training_is_reproducible_per_family(arch, tmp_path) -> None:
    """Same seed, same weights, for every family (the recipe's name and coordinate targets included: they run
    through every family's LM, tokenizer and tower views)."""
    from safetensors.torch import load_file

    from sparsezip.embedded.train import train_tiny

    recipe = dataclasses.replace(MICRO, images=6)
    for name in ("a", "b"):
        train_tiny(tmp_path / name, recipe, family=family(arch), log=lambda _: None)
    a, b = (load_file(tmp_path / n / "model.safetensors") for n in ("a", "b"))
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
