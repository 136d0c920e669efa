"""The tiny-model training recipe: reproducible, prompt-exact, equivalent shortcuts, disjoint data."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch
from PIL import Image

from sparsezip.adapters.vision_tower import FeatureLayerTap
from sparsezip.data.prompts import build_prompt
from sparsezip.embedded.datasets import SetSizes, docvqa_documents, mme_items, pope_scenes
from sparsezip.embedded.documents import Document, render_document, word_class
from sparsezip.embedded.language_stage import (
    at_scored_positions,
    lm_order,
    name_positions,
    question_batch,
    suffix_states,
)
from sparsezip.embedded.models import TinyLlavaSpec
from sparsezip.embedded.probe import answer_yes, keep_indices
from sparsezip.embedded.scenes import COLOURS, SHAPES, Scene, existence_question
from sparsezip.embedded.tokens import PromptTokens
from sparsezip.embedded.tower_stage import feature_layer_patches
from sparsezip.embedded.train import TrainRecipe, build_untrained, train_tiny
from sparsezip.embedded.training_data import (
    NAME_BINS,
    NUM_CLASSES,
    QUESTION_KINDS,
    TRAIN_SPLIT,
    VALIDATION_SPLIT,
    aux_targets,
    document_pixels,
    name_targets,
    render_training_images,
    training_questions,
)
from sparsezip.embedded.validation import validate, validation_set
from sparsezip.imageprep import prepare_images
from sparsezip.metrics import parse_pope_answer

MICRO = TrainRecipe(
    spec=TinyLlavaSpec(vision_hidden=32, vision_intermediate=64, vision_layers=2, vision_heads=2,
                       text_hidden=32, text_intermediate=64, text_layers=2, text_heads=2, vocab_size=640),
    threads=1, images=8, tower_steps=2, tower_batch=4, lm_steps=2, lm_batch_images=2, questions_per_image=2,
    warmup=1, document_share=0.5,
)


def _images(n: int, processor, share: float = 0.5):
    spec = MICRO.spec
    return render_training_images(0, TRAIN_SPLIT, n, spec.image_size, spec.patch_size, processor.image_processor,
                                  share)


@pytest.fixture(scope="module")
def micro() -> tuple:
    model, processor = build_untrained(MICRO)
    data = _images(6, processor)
    assert {type(item) for item in data.items} == {Scene, Document}
    return model, processor, data


def test_training_is_reproducible(tmp_path) -> None:
    """Same seed, same weights; validating along the way (its own generators) changes nothing."""
    state = torch.random.get_rng_state()
    threads = torch.get_num_threads()
    a = train_tiny(tmp_path / "a", MICRO, log=lambda _: None)
    b = train_tiny(tmp_path / "b", MICRO, log=lambda _: None, validation_images=6, validate_every=1)
    train_tiny(tmp_path / "c", dataclasses.replace(MICRO, seed=1), log=lambda _: None)
    unnamed = train_tiny(tmp_path / "d", dataclasses.replace(MICRO, name_weight=0.0), log=lambda _: None)
    unplaced = train_tiny(tmp_path / "e", dataclasses.replace(MICRO, coordinate_weight=0.0), log=lambda _: None)
    assert torch.equal(torch.random.get_rng_state(), state) and torch.get_num_threads() == threads
    assert a["language"] == b["language"] and "validation" not in a
    assert set(b["validation"]) <= {"images", "all", *QUESTION_KINDS} and b["validation"]["images"] == 6
    weights = [(tmp_path / name / "model.safetensors").read_bytes() for name in "abcde"]
    assert weights[0] == weights[1] and all(weights[0] != w for w in weights[2:])
    # the recipe's name and coordinate targets are on by default; weight 0 turns each off
    assert "name_loss" in a["language"] and "name_loss" not in unnamed["language"]
    assert "coordinate_mse" in a["tower"] and "coordinate_mse" not in unplaced["tower"]
    card = (tmp_path / "a" / "README.md").read_text()
    assert "not" in card and "sanity model" in card


def test_shared_prefix_equals_full_prompts(micro) -> None:
    model, processor, data = micro
    prompts = PromptTokens.build(processor)
    rng = np.random.default_rng(0)
    docs = [i for i, item in enumerate(data.items) if isinstance(item, Document)][:1]
    scenes = [i for i, item in enumerate(data.items) if isinstance(item, Scene)][:1]
    chosen = scenes + docs
    items = [(tq.question, tq.answer) for i in chosen for tq in training_questions(data.items[i], rng, 3)]
    batch = question_batch(prompts, items, processor.tokenizer.pad_token_id)
    with torch.no_grad():
        features = feature_layer_patches(model, processor, data.pixels[chosen])
        logits = model.lm_head(at_scored_positions(suffix_states(model, prompts, features, batch, 3)[-1], batch))
        for j, (question, answer) in enumerate(items):
            text = build_prompt("pope", question) + answer + "</s>"
            image = Image.fromarray(data.pixels[chosen[j // 3]])
            inputs = processor(images=[image], text=[text], return_tensors="pt")
            n = int((batch.targets[j] != -100).sum())
            assert inputs["input_ids"][0, -n:].tolist() == batch.targets[j, :n].tolist()
            reference = model(**inputs).logits[0, -1 - n:-1]
            torch.testing.assert_close(logits[j, :n], reference, atol=1e-4, rtol=1e-4)
    assert not torch.allclose(logits[0], logits[3])  # different images give different answers


def test_document_pixels_are_what_the_adapter_feeds_the_processor(micro) -> None:
    """Training stores each padded, resized page; the processor on it equals the processor on the page as the
    adapter prepares it (pad to a square, then the processor's own resize)."""
    _, processor, _ = micro
    doc = docvqa_documents(0, 1)[0]

    page, _ = render_document(doc)
    pixels, labels = document_pixels(doc, processor.image_processor, 96, 8)
    direct = processor.image_processor(prepare_images([page], processor.image_processor, pad=True),
                                       return_tensors="pt")["pixel_values"]
    stored = processor.image_processor([pixels], return_tensors="pt")["pixel_values"]
    torch.testing.assert_close(stored, direct, rtol=0, atol=0)
    number = labels.reshape(12, 12) == NUM_CLASSES + word_class(doc.fields[1].value)
    assert number.sum() >= 4 and not number[:1].any()  # the number row, below the title, several patches


def test_probe_matches_the_plain_model(micro) -> None:
    model, processor, data = micro
    images = [Image.fromarray(p) for p in data.pixels[:3]]
    questions = [existence_question(c) for c in (0, 5, 9)]
    with torch.no_grad():
        yes = answer_yes(model, processor, images, questions)
        inputs = processor(images=images, text=[build_prompt("pope", q) for q in questions],
                           return_tensors="pt", padding=True)
        tokens = model(**inputs).logits[:, -1].argmax(-1)
    texts = [processor.tokenizer.decode([t]) for t in tokens.tolist()]
    assert yes.tolist() == [parse_pope_answer(t) == "yes" for t in texts]


def test_training_forward_is_the_taps_with_gradients(micro) -> None:
    """Training runs the tower through the adapter's own tap (no second implementation), with gradients."""
    model, processor, data = micro
    tap = FeatureLayerTap(model.model.vision_tower, model.config.vision_feature_layer)
    pixels = processor.image_processor(list(data.pixels[:2]), return_tensors="pt")["pixel_values"]
    hidden = tap.hidden_states(pixels)
    assert hidden.requires_grad
    torch.testing.assert_close(hidden.detach(), tap(pixels).hidden, rtol=0, atol=0)


def test_keep_indices() -> None:
    attn = torch.tensor([[0.1, 0.5, 0.2, 0.9], [0.4, 0.3, 0.2, 0.1]])
    assert keep_indices("cls_topk", 2, attn).tolist() == [[1, 3], [0, 1]]
    rand = keep_indices("random", 3, attn, torch.Generator().manual_seed(0))
    assert rand.shape == (2, 3) and bool((rand.diff(dim=-1) > 0).all())
    with pytest.raises(ValueError, match="k must be"):
        keep_indices("cls_topk", 5, attn)


def test_training_questions_are_true_and_balanced(micro) -> None:
    _, processor, _ = micro
    data = _images(60, processor, share=0.2)
    rng = np.random.default_rng(0)
    answers = []
    for item in data.items:
        for tq in training_questions(item, rng, 8):
            if isinstance(item, Document):
                field = next(f for f in item.fields if f.question == tq.question)
                assert tq.answer == f" {field.value}"
                continue
            answers.append(tq.answer == " Yes")
            existence = tq.question.startswith("Is there a ") and tq.question.endswith(" in the image?")
            assert existence == tq.kind.startswith("existence")
            if existence:
                name = tq.question[len("Is there a "):-len(" in the image?")]
                assert (tq.answer == " Yes") == (name in {o.name for o in item.objects})
                assert (tq.answer == " Yes") == (tq.kind == "existence_yes")
    assert 0.4 < np.mean(answers) < 0.6


def test_question_kinds_follow_the_mix(micro) -> None:
    """Kinds name what is asked (document kinds the field's row); ``existence_share`` sets the existence share."""
    _, processor, _ = micro
    data = _images(40, processor, share=0.3)
    for share in (0.4, 0.8):
        rng = np.random.default_rng(1)
        kinds = [tq for item in data.items for tq in training_questions(item, rng, 8, share)]
        scene = [tq.kind for tq in kinds if not tq.kind.startswith("document")]
        assert abs(np.mean([k.startswith("existence") for k in scene]) - share) < 0.1
        assert set(scene) <= set(QUESTION_KINDS)
    doc = next(item for item in data.items if isinstance(item, Document))
    for tq in training_questions(doc, np.random.default_rng(0), 12):
        row = next(i for i, f in enumerate(doc.fields) if f.question == tq.question)
        assert tq.kind == ("document_title", "document_number", "document_third_row")[row]
    with pytest.raises(ValueError, match="existence_share"):
        training_questions(data.items[0] if isinstance(data.items[0], Scene) else
                           next(i for i in data.items if isinstance(i, Scene)), rng, 2, 1.5)


def test_scene_only_phase_sees_scenes_first(micro) -> None:
    _, processor, _ = micro
    data = _images(30, processor, share=0.4)
    recipe = dataclasses.replace(MICRO, lm_steps=10, lm_batch_images=4, lm_scene_only_steps=6)
    order = lm_order(data, recipe, torch.Generator().manual_seed(0))
    assert len(order) == 40
    assert all(isinstance(data.items[i], Scene) for i in order[:24])
    assert any(isinstance(data.items[i], Document) for i in order[24:])
    plain = lm_order(data, dataclasses.replace(recipe, lm_scene_only_steps=0), torch.Generator().manual_seed(0))
    assert any(isinstance(data.items[i], Document) for i in plain[:24])


def test_validation_scores_the_greedy_first_token_per_kind(micro) -> None:
    """Per-kind accuracy of the first answer token (shared-prefix forward: equal to full prompts, tested
    above); chunking does not change it, and ``all`` is the question-weighted mean of the kinds."""
    model, processor, _ = micro
    vset = validation_set(model, processor, 0, 12)
    assert vset.features.shape[0] == 12 and len(vset.kinds) == vset.batch.ids.shape[0] == 12 * 8
    table = validate(model, processor, vset)
    assert set(table) <= {"all", *QUESTION_KINDS} and all(0 <= v <= 1 for v in table.values())
    assert validate(model, processor, vset, images_per_chunk=5) == table
    counts = {k: vset.kinds.count(k) for k in table if k != "all"}
    weighted = sum(table[k] * n for k, n in counts.items()) / sum(counts.values())
    assert abs(weighted - table["all"]) < 1e-9
    with pytest.raises(ValueError, match="n_images"):
        validation_set(model, processor, 0, 0)



def test_training_images_are_disjoint_from_the_evaluation_sets(micro) -> None:
    _, processor, _ = micro
    spec = MICRO.spec

    def keys(split: int, n: int) -> set:
        data = render_training_images(0, split, n, spec.image_size, spec.patch_size, processor.image_processor, 0.2)
        return {item.objects if isinstance(item, Scene) else item for item in data.items}

    train, val = keys(TRAIN_SPLIT, 300), keys(VALIDATION_SPLIT, 100)
    sizes = SetSizes()
    evaluation = {s.objects for s in pope_scenes(0, sizes.pope_images)}
    evaluation |= {scene.objects for t in ("existence", "count") for scene, _ in mme_items(0, t, 30)}
    evaluation |= set(docvqa_documents(0, sizes.docvqa_documents))
    assert not train & evaluation and not val & evaluation and not train & val


def test_aux_targets_read_the_question_and_the_scene(micro) -> None:
    _, processor, _ = micro
    data = _images(8, processor, share=0.3)
    scene = next(item for item in data.items if isinstance(item, Scene))
    obj = scene.objects[0]
    half = 2 + int(obj.cx >= scene.size / 2)
    n = len(scene.objects)
    colour, shape = 1 + list(COLOURS).index(obj.colour), 1 + SHAPES.index(obj.shape)
    none = (0, 0, 0, 0)
    assert aux_targets(existence_question(obj.cls), scene) == (n, colour, shape, 0, 0, half, 0, *none)
    absent = next(c for c in range(12) if c not in scene.classes)
    assert aux_targets(existence_question(absent), scene)[5] == 1
    assert aux_targets("Are there three shapes in the image?", scene) == (n, 0, 0, 3, 0, 0, 0, *none)
    assert aux_targets(f"Is the {obj.name} on the right side of the image?", scene)[4:7] == (2, half, 0)
    assert aux_targets("Is the square in the image blue?", scene) == (n, 3, 2, 0, 0, 0, 0, *none)
    region = aux_targets("Is the shape in the bottom right of the image red?", scene)
    assert region[7] == 4 and region[1] == 1
    doc = next(item for item in data.items if isinstance(item, Document))
    assert aux_targets(doc.fields[1].question, doc)[-2:] == (2, word_class(doc.fields[1].value))


def test_name_targets_say_where_each_named_object_is_and_find_its_tokens(micro) -> None:
    """Name targets: per named object, absent (0) or 1 + the column / row bin of its centre; their positions
    are each name's last token in the question's suffix."""
    _, processor, _ = micro
    data = _images(8, processor, share=0.0)
    scene = max(data.items, key=lambda s: len(s.objects))
    first, second = scene.objects[:2]
    absent = next(c for c in range(NUM_CLASSES) if c not in scene.classes)

    def where(obj):
        return tuple(1 + min(NAME_BINS - 1, int(v / scene.size * NAME_BINS)) for v in (obj.cx, obj.cy))

    relative = f"Is the {first.name} on the left of the {second.name}?"
    assert name_targets(relative, scene) == ((first.name, *where(first)), (second.name, *where(second)))
    assert name_targets(existence_question(absent), scene)[0][1:] == (0, 0)
    assert name_targets("Are there three shapes in the image?", scene) == ()
    questions = [q for q in training_questions(scene, np.random.default_rng(0), 40) if q.names]
    prompts = PromptTokens.build(processor)
    batch = question_batch(prompts, [(q.question, q.answer) for q in questions], processor.tokenizer.pad_token_id)
    rows, positions, cols, grid_rows = name_positions(batch, questions, processor.tokenizer)
    assert len(rows) == sum(len(q.names) for q in questions) and rows.tolist() == sorted(rows.tolist())
    for r, pos, col, grid_row in zip(rows.tolist(), positions.tolist(), cols.tolist(), grid_rows.tolist(),
                                     strict=True):
        text = processor.tokenizer.decode(batch.ids[r, : pos + 1])
        name = next(n for n, c, g in questions[r].names if text.endswith(n) and (c, g) == (col, grid_row))
        assert questions[r].question.count(name) == 1
