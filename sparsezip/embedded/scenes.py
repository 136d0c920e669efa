"""The synthetic shapes world: scenes of coloured shapes on cluttered noisy backgrounds, and yes/no questions
about them (existence with POPE's three negative-sampling settings, colour of a shape or of one quadrant,
count, position of one object or of two relative to each other). The quadrant and relative-position
questions refer to one region of the image, so keeping the tokens the question points at matters.

Everything is a pure function of an explicit ``numpy.random.Generator`` (or of a seed stored in the scene):
the same seed gives the same scenes, pixels and questions, and no global RNG state is read or written.

A scene holds 1-4 objects, each one of 12 classes (4 colours x 3 shapes), at most once per scene, drawn with
a fixed non-uniform class prior (so POPE's "popular" setting means something). Objects are small (2-3 patches
across at 96 px / 8 px patches) and the background carries grey distractor shapes, so answering needs
localized evidence: the point of the exercise is that keeping the right visual tokens matters.
"""

from __future__ import annotations

import io
import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

import numpy as np
from PIL import Image, ImageDraw

COLOURS: dict[str, tuple[int, int, int]] = {
    "red": (215, 40, 40),
    "green": (40, 170, 60),
    "blue": (40, 80, 220),
    "yellow": (235, 205, 40),
}
SHAPES: tuple[str, ...] = ("circle", "square", "triangle")
# Class id c (0..11) = colour c // 3, shape c % 3; the label maps below use c + 1 (0 = background).
OBJECT_NAMES: tuple[str, ...] = tuple(f"{colour} {shape}" for colour in COLOURS for shape in SHAPES)
NUM_CLASSES = len(OBJECT_NAMES)
# Fixed class prior (weights, not normalised): a few objects are common, most are rarer, like COCO's
# object frequencies. POPE's "popular" negatives are then the frequent absent objects.
CLASS_WEIGHTS: tuple[float, ...] = (6.0, 2.0, 3.0, 2.5, 4.0, 1.5, 1.5, 3.5, 2.0, 1.0, 2.5, 5.0)
COUNT_WORDS: tuple[str, ...] = ("zero", "one", "two", "three", "four", "five")

PopeSetting = Literal["random", "popular", "adversarial"]
POPE_SETTINGS: tuple[PopeSetting, ...] = ("random", "popular", "adversarial")

# JPEG as COCO stores it; training uses the same round trip so evaluation images are in-distribution.
JPEG_OPTIONS: dict[str, object] = {"quality": 90, "subsampling": "4:2:0", "optimize": False, "progressive": False}


@dataclass(frozen=True)
class SceneObject:
    """One shape: class id (0..11, see ``OBJECT_NAMES``), centre and radius in pixels."""

    cls: int
    cx: float
    cy: float
    radius: float

    @property
    def colour(self) -> str:
        return list(COLOURS)[self.cls // len(SHAPES)]

    @property
    def shape(self) -> str:
        return SHAPES[self.cls % len(SHAPES)]

    @property
    def name(self) -> str:
        return OBJECT_NAMES[self.cls]


@dataclass(frozen=True)
class Scene:
    """A scene: its objects (distinct classes), image side in pixels, and the seed of its background."""

    objects: tuple[SceneObject, ...]
    size: int
    noise_seed: int

    @property
    def classes(self) -> frozenset[int]:
        """Class ids present in the scene."""
        return frozenset(o.cls for o in self.objects)


def class_prior() -> np.ndarray:
    """``[12]`` float64 probabilities of the class prior (``CLASS_WEIGHTS`` normalised)."""
    weights = np.asarray(CLASS_WEIGHTS, dtype=np.float64)
    return weights / weights.sum()


def sample_scene(
    rng: np.random.Generator,
    *,
    size: int = 96,
    num_objects: tuple[int, int] = (1, 4),
    radius: tuple[float, float] = (6.0, 10.0),
    gap: float = 3.0,
) -> Scene:
    """Draw one scene: ``num_objects`` (inclusive range) distinct classes from the class prior, placed at
    random without overlapping (centres at least ``r_i + r_j + gap`` apart), radii uniform in ``radius``."""
    lo, hi = num_objects
    if not 1 <= lo <= hi <= NUM_CLASSES:
        raise ValueError(f"num_objects must satisfy 1 <= lo <= hi <= {NUM_CLASSES}, got {num_objects}")
    if not 0 < radius[0] <= radius[1] < size / 4:
        raise ValueError(f"radius range {radius} does not fit images of size {size}")
    n = int(rng.integers(lo, hi + 1))
    classes = rng.choice(NUM_CLASSES, size=n, replace=False, p=class_prior())
    while True:  # rejection sampling of a non-overlapping layout; a handful of tries at these densities
        placed: list[SceneObject] = []
        for cls in classes:
            r = float(rng.uniform(*radius))
            for _ in range(50):
                cx, cy = (float(v) for v in rng.uniform(r + 1, size - r - 1, size=2))
                if all(math.hypot(cx - o.cx, cy - o.cy) >= r + o.radius + gap for o in placed):
                    placed.append(SceneObject(int(cls), round(cx, 2), round(cy, 2), round(r, 2)))
                    break
            else:
                break
        if len(placed) == n:
            return Scene(tuple(placed), size, int(rng.integers(2**31)))


def _shape_polygon(shape: str, cx: float, cy: float, r: float) -> list[tuple[float, float]]:
    """Outline of ``shape`` with centre ``(cx, cy)`` and nominal radius ``r`` (areas roughly comparable)."""
    if shape == "square":
        h = 0.88 * r
        return [(cx - h, cy - h), (cx + h, cy - h), (cx + h, cy + h), (cx - h, cy + h)]
    if shape == "triangle":  # equilateral, pointing up, circumradius 1.3 r
        big = 1.3 * r
        return [(cx + big * math.cos(a), cy + 0.15 * r - big * math.sin(a))
                for a in (math.pi / 2, math.pi / 2 + 2 * math.pi / 3, math.pi / 2 + 4 * math.pi / 3)]
    raise ValueError(f"no polygon for shape {shape!r}")


def _draw_shape(draw: ImageDraw.ImageDraw, shape: str, cx: float, cy: float, r: float, fill: object) -> None:
    if shape == "circle":
        draw.ellipse((cx - r, cy - r, cx + r, cy + r), fill=fill)
    else:
        draw.polygon(_shape_polygon(shape, cx, cy, r), fill=fill)


def render_scene(scene: Scene) -> tuple[Image.Image, np.ndarray]:
    """Render ``scene`` to an RGB image and its label map.

    Returns the ``size x size`` RGB image and ``labels: [size, size]`` uint8 with 0 = background and
    ``cls + 1`` where object ``cls`` covers the pixel. The background is a tinted grey gradient with grey
    distractor shapes (achromatic, so they never look like a coloured object) and per-pixel noise.
    """
    rng = np.random.default_rng(scene.noise_seed)
    s = scene.size
    yy, xx = np.mgrid[0:s, 0:s].astype(np.float32) / s
    angle = rng.uniform(0, 2 * np.pi)
    ramp = (np.cos(angle) * xx + np.sin(angle) * yy)[..., None]
    base = rng.uniform(70, 185) + rng.uniform(-12, 12, size=3)
    background = base + rng.uniform(-35, 35) * ramp
    image = Image.fromarray(np.clip(background, 0, 255).astype(np.uint8), "RGB")
    draw = ImageDraw.Draw(image)
    for _ in range(int(rng.integers(1, 5))):  # grey distractors: same shapes, no colour
        grey = int(rng.uniform(40, 230))
        _draw_shape(draw, SHAPES[int(rng.integers(len(SHAPES)))], *rng.uniform(0, s, size=2),
                    rng.uniform(3, 9), (grey, grey, grey))
    labels = Image.new("L", (s, s), 0)
    label_draw = ImageDraw.Draw(labels)
    for obj in scene.objects:
        rgb = np.clip(np.asarray(COLOURS[obj.colour]) + rng.uniform(-25, 25, size=3), 0, 255)
        _draw_shape(draw, obj.shape, obj.cx, obj.cy, obj.radius, tuple(int(v) for v in rgb))
        _draw_shape(label_draw, obj.shape, obj.cx, obj.cy, obj.radius, obj.cls + 1)
    noisy = np.asarray(image, dtype=np.float32) + rng.normal(0, 9, size=(s, s, 3))
    return Image.fromarray(np.clip(noisy, 0, 255).round().astype(np.uint8), "RGB"), np.asarray(labels)


def patch_labels(labels: np.ndarray, patch: int, min_cover: float = 0.25) -> np.ndarray:
    """Per-patch class of a label map: ``labels: [H, W]`` (0 = background, ``cls + 1`` = object) ->
    ``[H/patch * W/patch]`` int64 in raster order, the most frequent object label of each patch if it covers
    at least ``min_cover`` of the patch, else 0."""
    h, w = labels.shape
    if h % patch or w % patch:
        raise ValueError(f"label map {labels.shape} is not a multiple of patch size {patch}")
    grid = labels.reshape(h // patch, patch, w // patch, patch).transpose(0, 2, 1, 3).reshape(-1, patch * patch)
    counts = np.stack([(grid == c).sum(axis=1) for c in range(1, NUM_CLASSES + 1)], axis=1)
    best = counts.argmax(axis=1)
    covered = counts[np.arange(len(best)), best] >= min_cover * patch * patch
    return np.where(covered, best + 1, 0).astype(np.int64)


def jpeg_round_trip(image: Image.Image) -> Image.Image:
    """Encode ``image`` as the fixtures' JPEG (``JPEG_OPTIONS``) and decode it again, as evaluation will."""
    buffer = io.BytesIO()
    image.save(buffer, format="JPEG", **JPEG_OPTIONS)
    buffer.seek(0)
    with Image.open(buffer) as decoded:
        return decoded.convert("RGB")


# ----------------------------------------------------------------------------------------------- questions
@dataclass(frozen=True)
class QA:
    """A yes/no question and its answer."""

    question: str
    answer: bool

    @property
    def label(self) -> str:
        """POPE's label: ``yes`` / ``no``."""
        return "yes" if self.answer else "no"


def existence_question(cls: int) -> str:
    """POPE's template: ``Is there a red circle in the image?``"""
    return f"Is there a {OBJECT_NAMES[cls]} in the image?"


def shares_attribute(a: int, b: int) -> bool:
    """Whether classes ``a`` and ``b`` share their colour or their shape."""
    return a // len(SHAPES) == b // len(SHAPES) or a % len(SHAPES) == b % len(SHAPES)


def popularity_order(scenes: Sequence[Scene]) -> list[int]:
    """Class ids by how many of ``scenes`` contain them, most frequent first (ties: lower id first)."""
    counts = np.zeros(NUM_CLASSES, dtype=np.int64)
    for scene in scenes:
        counts[list(scene.classes)] += 1
    return sorted(range(NUM_CLASSES), key=lambda c: (-counts[c], c))


def pope_negatives(
    present: frozenset[int],
    setting: PopeSetting,
    k: int,
    rng: np.random.Generator,
    popularity: Sequence[int] | None = None,
) -> list[int]:
    """``k`` absent classes sampled as POPE does: ``random`` = any absent class; ``popular`` = the ``k``
    most frequent absent classes (``popularity``: class ids most frequent first); ``adversarial`` = absent
    classes sharing a colour or a shape with a present one (POPE ranks by co-occurrence; here the
    confusable objects are the attribute-sharing ones), drawn at random among those."""
    absent = [c for c in range(NUM_CLASSES) if c not in present]
    if setting == "random":
        candidates = absent
    elif setting == "popular":
        if popularity is None:
            raise ValueError("setting 'popular' needs the dataset's popularity order")
        return [c for c in popularity if c not in present][:k]
    elif setting == "adversarial":
        candidates = [c for c in absent if any(shares_attribute(c, p) for p in present)]
    else:
        raise ValueError(f"unknown POPE setting {setting!r}; choose one of {POPE_SETTINGS}")
    if len(candidates) < k:
        raise ValueError(f"only {len(candidates)} {setting} negatives for present={sorted(present)}, need {k}")
    return [int(c) for c in rng.choice(candidates, size=k, replace=False)]


def colour_pair(scene: Scene, rng: np.random.Generator) -> tuple[QA, QA] | None:
    """MME colour: ``Is the circle in the image red?`` for a shape the scene holds exactly once; the "no"
    colour is one another object in the scene has when possible (so it needs binding). ``None`` if no shape
    occurs exactly once."""
    shapes = [o.shape for o in scene.objects]
    unique = [o for o in scene.objects if shapes.count(o.shape) == 1]
    if not unique:
        return None
    obj = unique[int(rng.integers(len(unique)))]
    others = sorted({o.colour for o in scene.objects} - {obj.colour})
    wrong = others or [c for c in COLOURS if c != obj.colour]
    no_colour = wrong[int(rng.integers(len(wrong)))]
    template = "Is the {} in the image {}?"
    return QA(template.format(obj.shape, obj.colour), True), QA(template.format(obj.shape, no_colour), False)


def count_question(n: int) -> str:
    """MME count: ``Are there three shapes in the image?`` (singular for one)."""
    if not 0 < n < len(COUNT_WORDS):
        raise ValueError(f"count must be in 1..{len(COUNT_WORDS) - 1}, got {n}")
    return "Is there one shape in the image?" if n == 1 else f"Are there {COUNT_WORDS[n]} shapes in the image?"


def count_pair(scene: Scene, rng: np.random.Generator) -> tuple[QA, QA]:
    """MME count: the true number of shapes (yes) and a neighbouring wrong number in 1..4 (no)."""
    n = len(scene.objects)
    wrong = [m for m in (n - 1, n + 1) if 1 <= m <= 4]
    return QA(count_question(n), True), QA(count_question(wrong[int(rng.integers(len(wrong)))]), False)


def position_pair(scene: Scene, rng: np.random.Generator, margin: float = 0.1) -> tuple[QA, QA] | None:
    """MME position, as the real subtask asks it, about one object or two: half the time absolute (``Is the
    red circle on the left side of the image?``, an object at least ``margin`` of the width from the middle),
    else relative (``Is the red circle on the left of the blue square?``, centres at least ``2 * margin`` of
    the width apart); yes for the true side, no for the other. Falls back to the other form when the drawn one
    cannot be asked; ``None`` if neither can."""
    makers = (absolute_position_pair, relative_position_pair)
    first = int(rng.random() < 0.5)
    return makers[first](scene, rng, margin) or makers[1 - first](scene, rng, margin)


def absolute_position_pair(scene: Scene, rng: np.random.Generator, margin: float = 0.1) -> tuple[QA, QA] | None:
    """``Is the red circle on the left side of the image?`` (yes) and the other side (no), for an object whose
    centre is at least ``margin`` of the width away from the middle; ``None`` if there is none."""
    sided = [o for o in scene.objects if abs(o.cx / scene.size - 0.5) >= margin]
    if not sided:
        return None
    obj = sided[int(rng.integers(len(sided)))]
    side, other = ("left", "right") if obj.cx < scene.size / 2 else ("right", "left")
    template = "Is the {} on the {} side of the image?"
    return QA(template.format(obj.name, side), True), QA(template.format(obj.name, other), False)


def relative_position_pair(scene: Scene, rng: np.random.Generator, margin: float = 0.1) -> tuple[QA, QA] | None:
    """``Is the red circle on the left of the blue square?`` (yes: it is) and the swapped question (no), for two
    objects whose centres are at least ``2 * margin`` of the width apart; ``None`` if no pair is."""
    pairs = [(a, b) for a in scene.objects for b in scene.objects if b.cx - a.cx >= 2 * margin * scene.size]
    if not pairs:
        return None
    left, right = pairs[int(rng.integers(len(pairs)))]
    template = "Is the {} on the left of the {}?"
    return QA(template.format(left.name, right.name), True), QA(template.format(right.name, left.name), False)


REGIONS: tuple[str, ...] = ("top left", "top right", "bottom left", "bottom right")


def region_of(obj: SceneObject, size: int, margin: float = 0.1) -> int | None:
    """Index into ``REGIONS`` of the quadrant holding ``obj``'s centre, if it is at least ``margin`` of the
    side away from both midlines; else ``None``."""
    x, y = obj.cx / size - 0.5, obj.cy / size - 0.5
    if abs(x) < margin or abs(y) < margin:
        return None
    return 2 * int(y > 0) + int(x > 0)


def region_colour_pair(scene: Scene, rng: np.random.Generator, margin: float = 0.1) -> tuple[QA, QA] | None:
    """MME colour about one region: ``Is the shape in the top left of the image red?`` for the only object in
    that quadrant (clearly inside it, no other object's centre in it); the "no" colour is another object's
    in the scene when possible, so seeing the scene's colours is not enough: the region must be seen.
    ``None`` if no quadrant holds exactly one object clearly."""
    regions = [region_of(o, scene.size, margin) for o in scene.objects]
    quadrant = [int(2 * (o.cy > scene.size / 2) + (o.cx > scene.size / 2)) for o in scene.objects]
    alone = [o for o, r, q in zip(scene.objects, regions, quadrant, strict=True)
             if r is not None and quadrant.count(q) == 1]
    if not alone:
        return None
    obj = alone[int(rng.integers(len(alone)))]
    region = REGIONS[region_of(obj, scene.size, margin)]
    others = sorted({o.colour for o in scene.objects} - {obj.colour})
    wrong = others or [c for c in COLOURS if c != obj.colour]
    no_colour = wrong[int(rng.integers(len(wrong)))]
    template = "Is the shape in the {} of the image {}?"
    return QA(template.format(region, obj.colour), True), QA(template.format(region, no_colour), False)


def colour_question_pair(scene: Scene, rng: np.random.Generator) -> tuple[QA, QA] | None:
    """MME colour: half the time about a shape (:func:`colour_pair`), else about a region
    (:func:`region_colour_pair`); falls back to the other form when the drawn one cannot be asked."""
    makers = (colour_pair, region_colour_pair)
    first = int(rng.random() < 0.5)
    return makers[first](scene, rng) or makers[1 - first](scene, rng)


def existence_pair(scene: Scene, rng: np.random.Generator) -> tuple[QA, QA]:
    """MME existence: a present object (yes) and a random absent one (no)."""
    present = sorted(scene.classes)
    yes = present[int(rng.integers(len(present)))]
    (no,) = pope_negatives(scene.classes, "random", 1, rng)
    return QA(existence_question(yes), True), QA(existence_question(no), False)
