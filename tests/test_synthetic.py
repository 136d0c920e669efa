"""The synthetic world: deterministic, labels consistent with the pixels, POPE's sampling rules, formats."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from sparsezip.embedded.datasets import (
    MME_SUBTASKS,
    SetSizes,
    mme_items,
    pope_rows,
    pope_scenes,
    stream_rng,
    write_synthetic_sets,
)
from sparsezip.embedded.documents import WORDS, render_document, sample_document, word_class
from sparsezip.embedded.scenes import (
    COLOURS,
    NUM_CLASSES,
    OBJECT_NAMES,
    POPE_SETTINGS,
    REGIONS,
    SHAPES,
    colour_pair,
    count_pair,
    count_question,
    existence_question,
    jpeg_round_trip,
    patch_labels,
    pope_negatives,
    popularity_order,
    position_pair,
    region_colour_pair,
    region_of,
    relative_position_pair,
    render_scene,
    sample_scene,
    shares_attribute,
)

seeds = st.integers(min_value=0, max_value=2**32 - 1)


@given(seeds)
def test_scene_is_a_pure_function_of_the_seed(seed: int) -> None:
    a = sample_scene(np.random.default_rng(seed))
    b = sample_scene(np.random.default_rng(seed))
    assert a == b
    assert 1 <= len(a.objects) <= 4 and len(a.classes) == len(a.objects)  # distinct classes
    for o, p in ((o, p) for i, o in enumerate(a.objects) for p in a.objects[i + 1:]):
        assert np.hypot(o.cx - p.cx, o.cy - p.cy) >= o.radius + p.radius  # no overlap
    image_a, labels_a = render_scene(a)
    image_b, labels_b = render_scene(b)
    assert np.array_equal(np.asarray(image_a), np.asarray(image_b)) and np.array_equal(labels_a, labels_b)


@given(seeds)
def test_labels_match_the_pixels(seed: int) -> None:
    scene = sample_scene(np.random.default_rng(seed))
    image, labels = render_scene(scene)
    pixels = np.asarray(image).astype(np.float32)
    assert set(np.unique(labels).tolist()) == {0, *(o.cls + 1 for o in scene.objects)}
    for obj in scene.objects:
        mean = pixels[labels == obj.cls + 1].mean(axis=0)
        nearest = min(COLOURS, key=lambda c: np.abs(mean - np.asarray(COLOURS[c])).sum())
        assert nearest == obj.colour  # the drawn colour is the labelled one
    per_patch = patch_labels(labels, 8)
    assert per_patch.shape == (144,)
    assert set(per_patch[per_patch > 0].tolist()) <= {o.cls + 1 for o in scene.objects}


def test_patch_labels_majority_and_cover() -> None:
    labels = np.zeros((16, 16), dtype=np.uint8)
    labels[:8, :8] = 3  # patch 0 fully class 2 (label 3)
    labels[:2, 8:16] = 5  # patch 1: 25% cover -> kept
    labels[8:9, 0:8] = 7  # patch 2: 12.5% cover -> background
    assert patch_labels(labels, 8).tolist() == [3, 5, 0, 0]
    with pytest.raises(ValueError, match="patch size"):
        patch_labels(labels, 5)


def test_jpeg_round_trip_is_deterministic_and_close() -> None:
    image, _ = render_scene(sample_scene(np.random.default_rng(1)))
    a, b = jpeg_round_trip(image), jpeg_round_trip(image)
    assert np.array_equal(np.asarray(a), np.asarray(b))
    assert np.abs(np.asarray(a, dtype=np.int16) - np.asarray(image, dtype=np.int16)).mean() < 8


@given(st.data())
def test_pope_negative_sampling_rules(data: st.DataObject) -> None:
    rng = np.random.default_rng(data.draw(seeds))
    present = frozenset(data.draw(st.sets(st.integers(0, NUM_CLASSES - 1), min_size=3, max_size=4)))
    popularity = data.draw(st.permutations(list(range(NUM_CLASSES))))
    for setting in POPE_SETTINGS:
        negatives = pope_negatives(present, setting, 3, rng, popularity)
        assert len(set(negatives)) == 3 and not set(negatives) & present
        if setting == "adversarial":
            assert all(any(shares_attribute(n, p) for p in present) for n in negatives)
        if setting == "popular":
            assert negatives == [c for c in popularity if c not in present][:3]


def test_shares_attribute() -> None:
    red_circle, red_square, blue_circle, blue_square = (OBJECT_NAMES.index(n) for n in (
        "red circle", "red square", "blue circle", "blue square"))
    assert shares_attribute(red_circle, red_square) and shares_attribute(red_circle, blue_circle)
    assert not shares_attribute(red_circle, blue_square)


def test_pope_negatives_rejects_bad_input() -> None:
    rng = np.random.default_rng(0)
    with pytest.raises(ValueError, match="unknown POPE setting"):
        pope_negatives(frozenset({0}), "hard", 1, rng)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="popularity"):
        pope_negatives(frozenset({0}), "popular", 1, rng)
    with pytest.raises(ValueError, match="need 12"):
        pope_negatives(frozenset({0}), "random", 12, rng)


def test_pope_files_are_consistent_with_their_scenes() -> None:
    scenes = pope_scenes(seed=0, n=20)
    files = pope_rows(scenes, seed=0)
    popularity = popularity_order(scenes)
    for setting, rows in files.items():
        assert [r["question_id"] for r in rows] == list(range(1, len(rows) + 1))
        assert [r["label"] for r in rows] == ["yes", "no"] * (len(rows) // 2)
        for i, scene in enumerate(scenes):
            mine = rows[6 * i: 6 * i + 6]
            assert {r["image"] for r in mine} == {f"COCO_val2014_{900_001 + i:012d}.jpg"}
            asked = {r["text"]: r["label"] for r in mine}
            truth = {existence_question(c): ("yes" if c in scene.classes else "no") for c in range(NUM_CLASSES)}
            assert all(truth[q] == label for q, label in asked.items())
            negatives = [OBJECT_NAMES.index(r["text"][11:-14]) for r in mine if r["label"] == "no"]
            if setting == "popular":
                assert negatives == [c for c in popularity if c not in scene.classes][:3]
            if setting == "adversarial":
                assert all(any(shares_attribute(n, p) for p in scene.classes) for n in negatives)
    positives = [[r["text"] for r in rows if r["label"] == "yes"] for rows in files.values()]
    assert positives[0] == positives[1] == positives[2]  # same images, same positives in every setting


@pytest.mark.parametrize("subtask", MME_SUBTASKS)
def test_mme_pairs_are_one_yes_one_no_and_true(subtask: str) -> None:
    for scene, (yes, no) in mme_items(seed=0, subtask=subtask, n=15):
        assert yes.answer and not no.answer and yes.question != no.question
        names = {o.name for o in scene.objects}
        if subtask == "existence":
            assert yes.question[11:-14] in names and no.question[11:-14] not in names
        if subtask == "count":
            assert yes.question == count_question(len(scene.objects))
        if subtask == "color" and not yes.question.startswith("Is the shape in the "):
            shape, colour = yes.question.split()[2], yes.question.split()[-1][:-1]
            assert f"{colour} {shape}" in names and f"{no.question.split()[-1][:-1]} {shape}" not in names
        if subtask == "color" and yes.question.startswith("Is the shape in the "):
            region = yes.question.removeprefix("Is the shape in the ").split(" of the image")[0]
            inside = [o for o in scene.objects if region_of(o, scene.size) == REGIONS.index(region)]
            assert len(inside) == 1 and yes.question.endswith(f" {inside[0].colour}?")
            assert not no.question.endswith(f" {inside[0].colour}?")
        if subtask == "position":
            assert position_is_true(yes.question, scene) and not position_is_true(no.question, scene)


def position_is_true(question: str, scene) -> bool:
    """Whether an MME position question holds on ``scene`` (both forms), read from the scene's geometry."""
    by_name = {o.name: o for o in scene.objects}
    body = question.removeprefix("Is the ").removesuffix("?")
    if body.endswith(" side of the image"):
        name, side = body.removesuffix(" side of the image").split(" on the ")
        return (by_name[name].cx < scene.size / 2) == (side == "left")
    first, second = body.split(" on the left of the ")
    return by_name[first].cx < by_name[second].cx


def test_region_questions_need_exactly_one_object_in_the_region() -> None:
    rng = np.random.default_rng(1)
    asked = 0
    for _ in range(200):
        scene = sample_scene(rng)
        pair = region_colour_pair(scene, rng)
        quadrants = [2 * (o.cy > scene.size / 2) + (o.cx > scene.size / 2) for o in scene.objects]
        if pair is None:
            assert not any(region_of(o, scene.size) is not None and quadrants.count(q) == 1
                           for o, q in zip(scene.objects, quadrants, strict=True))
            continue
        asked += 1
        rel = relative_position_pair(scene, rng)
        if rel is not None:
            assert position_is_true(rel[0].question, scene) and not position_is_true(rel[1].question, scene)
    assert asked > 50


def test_question_makers_on_a_known_scene() -> None:
    rng = np.random.default_rng(0)
    scene = sample_scene(rng, num_objects=(2, 2))
    yes, no = count_pair(scene, rng)
    assert yes.question == "Are there two shapes in the image?" and no.question in (
        "Is there one shape in the image?", "Are there three shapes in the image?")
    pair = position_pair(scene, rng)
    if pair is not None:
        assert position_is_true(pair[0].question, scene) and not position_is_true(pair[1].question, scene)
    pair = colour_pair(scene, rng)
    assert pair is None or pair[0].question.split()[2] in SHAPES


def test_streams_are_disjoint_and_seeded() -> None:
    a = stream_rng(0, 1).integers(2**62, size=4)
    assert np.array_equal(a, stream_rng(0, 1).integers(2**62, size=4))
    assert not np.array_equal(a, stream_rng(0, 2).integers(2**62, size=4))
    assert not np.array_equal(a, stream_rng(1, 1).integers(2**62, size=4))
    with pytest.raises(ValueError, match="seed"):
        stream_rng(-1, 1)


def test_writer_is_byte_identical_and_in_format(tmp_path: Path) -> None:
    sizes = SetSizes(pope_images=4, mme_images=2, docvqa_documents=2)
    counts = write_synthetic_sets(tmp_path / "a", seed=3, sizes=sizes)
    write_synthetic_sets(tmp_path / "b", seed=3, sizes=sizes)
    files = sorted(p.relative_to(tmp_path / "a") for p in (tmp_path / "a").rglob("*") if p.is_file())
    assert files == sorted(p.relative_to(tmp_path / "b") for p in (tmp_path / "b").rglob("*") if p.is_file())
    assert all((tmp_path / "a" / f).read_bytes() == (tmp_path / "b" / f).read_bytes() for f in files)
    assert counts == {"pope_per_setting": 24, "mme": 16, "docvqa": 4}

    root = tmp_path / "a"
    for setting in POPE_SETTINGS:
        for line in (root / "pope" / f"coco_pope_{setting}.json").read_text().splitlines():
            row = json.loads(line)
            assert list(row) == ["question_id", "image", "text", "label"] and isinstance(row["question_id"], int)
            assert (root / "pope" / "val2014" / row["image"]).read_bytes()[:2] == b"\xff\xd8"  # JPEG
    bench = root / "MME_Benchmark_release_version" / "MME_Benchmark"
    for subtask in MME_SUBTASKS:
        for txt in (bench / subtask).glob("*.txt"):
            assert txt.with_suffix(".jpg").exists()
            lines = txt.read_text().splitlines()
            assert [line.split("\t")[1] for line in lines] == ["Yes", "No"]
            assert all(line.split("\t")[0].endswith(" Please answer yes or no.") for line in lines)
    doc = json.loads((root / "docvqa" / "val_v1.0.json").read_text())
    for item in doc["data"]:
        assert {"questionId", "question", "image", "answers", "docId"} <= set(item)
        assert (root / "docvqa" / item["image"]).read_bytes()[:4] == b"\x89PNG"
        assert item["answers"][0] in WORDS


def test_documents_hold_their_words_where_the_labels_say() -> None:
    """Every field's words are drawn inside their labelled boxes, large enough to read at 96 px: a capital
    spans about two 8 px patches once the page is padded to a square and shrunk (here: >= 10 px tall)."""
    rng = np.random.default_rng(0)
    for _ in range(5):
        doc = sample_document(rng)
        assert [f.label for f in doc.fields][:2] == ["", "NO"] and doc.fields[2].label in ("TO", "BY")
        page, labels = render_document(doc)
        ink = np.asarray(page.convert("L")) < 200
        assert not (ink & (labels == 0)).any()  # no ink outside a word box
        scale = 96 / max(page.size)
        for f in doc.fields:
            rows = np.nonzero((labels == word_class(f.value)).any(axis=1))[0]
            assert (rows.max() - rows.min() + 1) * scale >= 10
            assert ink[labels == word_class(f.value)].any()
        assert doc.fields[1].question.endswith(f"{doc.title.lower()} number?")
