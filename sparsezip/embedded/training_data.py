"""The training data of the embedded recipe: rendered images (scenes and documents, prepared exactly as the
adapter prepares evaluation images), their dense labels, and the questions asked about them with the
auxiliary targets of stage 2.

Images come from their own generator streams (:data:`sparsezip.embedded.datasets.TRAIN_STREAM`), disjoint
from every evaluation set. A document page goes through :func:`sparsezip.imageprep.prepare_images` (pad to a
square of the processor's mean colour, LLaVA-1.5's protocol) and the processor's own bicubic resize, so the
stored ``[S, S, 3]`` pixels are exactly what the processor sees at evaluation; scenes are square already and
take the fixtures' JPEG round trip.
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass, field

import numpy as np
from PIL import Image

from sparsezip.data.prompts import build_prompt
from sparsezip.embedded.datasets import TRAIN_STREAM, stream_rng
from sparsezip.embedded.documents import WORDS, Document, render_document, sample_document, word_class
from sparsezip.embedded.models import default_corpus
from sparsezip.embedded.scenes import (
    COLOURS,
    COUNT_WORDS,
    NUM_CLASSES,
    OBJECT_NAMES,
    REGIONS,
    SHAPES,
    Scene,
    absolute_position_pair,
    class_prior,
    colour_pair,
    count_pair,
    count_question,
    existence_question,
    jpeg_round_trip,
    pope_negatives,
    region_colour_pair,
    region_of,
    relative_position_pair,
    render_scene,
    sample_scene,
)
from sparsezip.embedded.tokens import ANSWER_TEXT
from sparsezip.imageprep import prepare_images

TRAIN_SPLIT, VALIDATION_SPLIT = 0, 1  # sub-streams of TRAIN_STREAM
# Per-patch classes: 0 background, 1..12 objects, then one per document word.
NUM_WORDS = len(WORDS)
PATCH_CLASSES = 1 + NUM_CLASSES + NUM_WORDS
PRESENCE_CLASSES = NUM_CLASSES + NUM_WORDS  # multi-label "what is in the image" (CLS objective)


@dataclass
class TrainingImages:
    """Rendered training images: pixels ``[n, S, S, 3]`` uint8 as the processor receives them, per-patch
    labels ``[n, P]`` int64 (see ``PATCH_CLASSES``), presence ``[n, PRESENCE_CLASSES]`` float32, and the
    scene or document each image shows."""

    pixels: np.ndarray
    patch_labels: np.ndarray
    presence: np.ndarray
    items: list[Scene | Document] = field(default_factory=list)

    def __len__(self) -> int:
        return len(self.items)


def grid_labels(labels: np.ndarray, patch: int, num_labels: int, min_cover: float = 0.25) -> np.ndarray:
    """Per-patch label of a label map: ``labels: [H, W]`` (0 = nothing, 1..num_labels) -> ``[H/patch * W/patch]``
    int64 in raster order: the most frequent label of each patch if it covers at least ``min_cover`` of it,
    else 0."""
    h, w = labels.shape
    if h % patch or w % patch:
        raise ValueError(f"label map {labels.shape} is not a multiple of patch size {patch}")
    grid = labels.reshape(h // patch, patch, w // patch, patch).transpose(0, 2, 1, 3).reshape(-1, patch * patch)
    counts = np.stack([(grid == c).sum(axis=1) for c in range(1, num_labels + 1)], axis=1)
    best = counts.argmax(axis=1)
    covered = counts[np.arange(len(best)), best] >= min_cover * patch * patch
    return np.where(covered, best + 1, 0).astype(np.int64)


def document_pixels(doc: Document, image_processor: object, size: int, patch: int) -> tuple[np.ndarray, np.ndarray]:
    """A document as the model sees it: ``[size, size, 3]`` uint8 (padded to a square, then the processor's
    bicubic resize) and its per-patch word labels ``[P]`` (word class + 12, 0 = paper)."""
    page, labels = render_document(doc)
    (square,) = prepare_images([page], image_processor, pad=True)
    side = square.size[0]
    label_square = np.zeros((side, side), dtype=np.uint8)
    top, left = (side - labels.shape[0]) // 2, (side - labels.shape[1]) // 2
    label_square[top:top + labels.shape[0], left:left + labels.shape[1]] = labels
    if side % size:
        raise ValueError(f"padded page side {side} is not a multiple of the image size {size}")
    words = grid_labels(label_square, patch * side // size, NUM_WORDS)
    pixels = np.asarray(square.resize((size, size), Image.BICUBIC))
    return pixels, np.where(words > 0, words + NUM_CLASSES, 0)


def render_training_images(seed: int, split: int, n: int, size: int, patch: int, image_processor: object,
                           document_share: float) -> TrainingImages:
    """Sample and render ``n`` training images of a sub-stream: each a document with probability
    ``document_share``, else a scene (fixtures' JPEG round trip)."""
    rng = stream_rng(seed, TRAIN_STREAM, split)
    pixels, labels, items = [], [], []
    presence = np.zeros((n, PRESENCE_CLASSES), dtype=np.float32)
    for i in range(n):
        if rng.random() < document_share:
            doc = sample_document(rng)
            image, patch_label = document_pixels(doc, image_processor, size, patch)
            for f in doc.fields:
                for word in (f.label, f.value):
                    if word:
                        presence[i, NUM_CLASSES + word_class(word) - 1] = 1.0
            items.append(doc)
        else:
            scene = sample_scene(rng, size=size)
            rendered, label_map = render_scene(scene)
            image = np.asarray(jpeg_round_trip(rendered))
            patch_label = grid_labels(label_map, patch, NUM_CLASSES)
            presence[i, sorted(scene.classes)] = 1.0
            items.append(scene)
        pixels.append(image)
        labels.append(patch_label)
    return TrainingImages(np.stack(pixels), np.stack(labels), presence, items)


# ------------------------------------------------------------------------------------------- questions
@dataclass(frozen=True)
class TrainQuestion:
    """A training question: its text, the answer as generated (``" Yes"``, ``" 4821"``), its auxiliary
    targets (``AUX_CLASSES``) and its kind (one of ``QUESTION_KINDS``, for per-task validation)."""

    question: str
    answer: str
    aux: tuple[int, ...]
    kind: str = ""
    names: tuple[tuple[str, int, int], ...] = ()  # see name_targets


# What a training question asks (validation accuracy is logged per kind). Existence "no" is split by how its
# absent object was drawn, as POPE's settings are.
SCENE_KINDS: tuple[str, ...] = (
    "existence_yes", "existence_no_adversarial", "existence_no_random", "existence_no_popular",
    "colour", "region_colour", "count", "position_absolute", "position_relative",
)  # fmt: skip
DOCUMENT_KINDS: tuple[str, ...] = ("document_title", "document_number", "document_third_row")
QUESTION_KINDS: tuple[str, ...] = (*SCENE_KINDS, *DOCUMENT_KINDS)


# Auxiliary categorical targets of stage 2 (class counts): objects in the scene (0-4); the asked colour,
# shape, count and side (0 = not asked); the first and second named objects' state (0 = none named,
# 1 absent, 2 left half, 3 right half of the image); the asked region (0 = none, 1-4 = REGIONS) and the
# colour of the object in it; the asked document field (0 = none, 1 title, 2 number, 3 third row) and its
# value's word class (0 = none).
AUX_CLASSES: tuple[int, ...] = (5, 1 + len(COLOURS), 1 + len(SHAPES), 5, 3, 4, 4, 1 + len(REGIONS),
                                1 + len(COLOURS), 4, 1 + NUM_WORDS)


def aux_targets(question: str, item: Scene | Document) -> tuple[int, ...]:
    """The auxiliary targets (see ``AUX_CLASSES``) of one synthetic question about a scene or document."""
    if isinstance(item, Document):
        row = next(i for i, f in enumerate(item.fields) if f.question == question)
        return (0,) * 9 + (1 + row, word_class(item.fields[row].value))
    scene = item
    words = question.rstrip("?").split()
    colour = next((1 + list(COLOURS).index(w) for w in words if w in COLOURS), 0)
    shape = next((1 + SHAPES.index(w) for w in words if w in SHAPES), 0)
    count = next((COUNT_WORDS.index(w) for w in words if w in COUNT_WORDS[1:5]), 0)
    side = next((1 + ("left", "right").index(w) for w in words if w in ("left", "right")), 0)
    states = []
    for name in [*named_objects(question), None, None][:2]:
        obj = next((o for o in scene.objects if o.name == name), None) if name else None
        states.append(0 if name is None else 1 if obj is None else 2 + int(obj.cx >= scene.size / 2))
    region = next((1 + i for i, r in enumerate(REGIONS) if f" {r} " in f" {' '.join(words)} "), 0)
    region_colour = 0
    if region:
        obj = next((o for o in scene.objects if region_of(o, scene.size) == region - 1), None)
        region_colour = 0 if obj is None else 1 + list(COLOURS).index(obj.colour)
    return (len(scene.objects), colour, shape, count, side, *states, region, region_colour, 0, 0)


def named_objects(question: str) -> list[str]:
    """The objects a question names (``"red circle"``), in order."""
    words = question.rstrip("?").split()
    return [f"{a} {b}" for a, b in itertools.pairwise(words) if a in COLOURS and b in SHAPES]


# Column and row bins of a named object's centre (the name-token targets of stage 2).
NAME_BINS = 8


def name_targets(question: str, scene: Scene) -> tuple[tuple[str, int, int], ...]:
    """Per object ``question`` names: ``(name, column class, row class)``, class 0 if no such object is in
    ``scene``, else 1 + the bin (of ``NAME_BINS`` across the image) its centre falls in."""
    out = []
    for name in named_objects(question):
        obj = next((o for o in scene.objects if o.name == name), None)
        if obj is None:
            out.append((name, 0, 0))
        else:
            col, row = (1 + min(NAME_BINS - 1, int(v / scene.size * NAME_BINS)) for v in (obj.cx, obj.cy))
            out.append((name, col, row))
    return tuple(out)


SCENE_PAIR_MAKERS = {"colour": colour_pair, "region_colour": region_colour_pair, "count": count_pair,
                     "position_absolute": absolute_position_pair, "position_relative": relative_position_pair}


def scene_questions(scene: Scene, rng: np.random.Generator, n: int,
                    existence_share: float = 0.4) -> list[tuple[str, bool, str]]:
    """``n`` yes/no questions about ``scene`` as ``(question, answer, kind)``, about half "yes": a share
    ``existence_share`` existence (half present objects; half absent ones, mostly attribute-sharing -- the
    adversarial kind that forces binding colour to shape -- else random or prior-weighted "popular"), the
    rest evenly colour (of a shape / of a region), count, and position (absolute / relative)."""
    if not 0 <= existence_share <= 1:
        raise ValueError(f"existence_share must be in [0, 1], got {existence_share}")
    present = sorted(scene.classes)
    prior = class_prior()
    makers = list(SCENE_PAIR_MAKERS.items())
    out: list[tuple[str, bool, str]] = []
    while len(out) < n:
        kind = rng.random()
        if kind < existence_share / 2:
            out.append((existence_question(present[int(rng.integers(len(present)))]), True, "existence_yes"))
        elif kind < existence_share:
            setting = rng.choice(["adversarial", "adversarial", "adversarial", "random", "popular"])
            if setting == "popular":  # frequent absent objects: sample absent classes by the class prior
                absent = [c for c in range(NUM_CLASSES) if c not in scene.classes]
                weights = prior[absent] / prior[absent].sum()
                cls = int(rng.choice(absent, p=weights))
            else:
                (cls,) = pope_negatives(scene.classes, setting, 1, rng)
            out.append((existence_question(cls), False, f"existence_no_{setting}"))
        else:
            name, maker = makers[int(rng.integers(len(makers)))]
            pair = maker(scene, rng)
            if pair is not None:
                qa = pair[int(rng.integers(2))]
                out.append((qa.question, qa.answer, name))
    return out


def training_questions(item: Scene | Document, rng: np.random.Generator, n: int,
                       existence_share: float = 0.4) -> list[TrainQuestion]:
    """``n`` questions about a training image: yes/no questions about a scene (:func:`scene_questions`), or
    fields of a document (drawn with replacement), each with its answer text, auxiliary targets and kind."""
    if isinstance(item, Document):
        rows = [int(rng.integers(len(item.fields))) for _ in range(n)]
        return [TrainQuestion(item.fields[r].question, f" {item.fields[r].value}",
                              aux_targets(item.fields[r].question, item), DOCUMENT_KINDS[r]) for r in rows]
    return [TrainQuestion(q, ANSWER_TEXT[a], aux_targets(q, item), kind, name_targets(q, item))
            for q, a, kind in scene_questions(item, rng, n, existence_share)]


def training_corpus() -> list[str]:
    """Tokenizer corpus: every question form the synthetic sets ask, in the evaluation prompt, with its
    answers (so the BPE merges cover them; each document word is repeated so it becomes one token), plus the
    default corpus."""
    questions = [existence_question(c) for c in range(NUM_CLASSES)]
    questions += [f"Is the {s} in the image {c}?" for s in SHAPES for c in COLOURS]
    questions += [f"Is the shape in the {r} of the image {c}?" for r in REGIONS for c in COLOURS]
    questions += [count_question(n) for n in range(1, 5)]
    questions += [f"Is the {name} on the {side} side of the image?" for name in OBJECT_NAMES
                  for side in ("left", "right")]
    questions += [f"Is the {a} on the left of the {b}?" for a in OBJECT_NAMES[:4] for b in OBJECT_NAMES[4:8]]
    lines = [build_prompt("pope", q) + ANSWER_TEXT[a] + "</s>" for q in questions for a in (True, False)]
    from sparsezip.embedded.documents import CITIES, NAMES, NUMBERS, TITLES

    for title in TITLES:
        kind = title.lower()
        for q, values in ((f"What is the {kind} number?", NUMBERS), (f"Which city is the {kind} sent to?", CITIES),
                          (f"Who wrote the {kind}?", NAMES), ("What kind of document is this?", TITLES)):
            lines += [build_prompt("docvqa", q) + f" {v}</s>" for v in values]
    lines += [f" {word}" for word in WORDS for _ in range(40)]
    return lines + default_corpus()
