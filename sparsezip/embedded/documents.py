"""Synthetic DocVQA-style documents the tiny model can learn to read: large-print forms with labelled fields.

A document is a landscape page (``PAGE_SIZE``, 4:3 like a scanned form) with three rows: a title (the kind of
document), ``NO <number>`` and either ``TO <city>`` or ``BY <name>``. Every word comes from a closed vocabulary
(``WORDS``), drawn with Pillow's built-in default font (``ImageFont.load_default``; nothing downloaded) at a
size chosen for the tiny model: LLaVA-1.5's pad-to-square makes the page 384 x 384, the processor shrinks it
4x to 96 px, where a capital is ~12 px tall and ~10 px wide, about 2 of the 8 px patches (at the old 320 x 240
page with 16 px text a character was under half a patch). Questions ask for one field ("What is the invoice
number?"), so the answer sits in one row of the page.

Deterministic in an explicit ``numpy.random.Generator``. :func:`render_document` also returns a label map
(each word's box filled with its class id, :func:`word_class`) for the training recipe's per-patch targets.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from PIL import Image, ImageDraw, ImageFont

TITLES: tuple[str, ...] = ("INVOICE", "RECEIPT", "ORDER", "MEMO", "BILL")
NUMBERS: tuple[str, ...] = (
    "1024", "1530", "2210", "2977", "3187", "3604", "4168", "4821",
    "5093", "5741", "6285", "6412", "7019", "7350", "8846", "9432",
)  # fmt: skip
CITIES: tuple[str, ...] = ("RENO", "OMAHA", "TAMPA", "MIAMI", "BOISE", "WACO", "TULSA", "ERIE")
NAMES: tuple[str, ...] = ("SMITH", "JONES", "DAVIS", "LOPEZ", "MOORE", "CLARK", "BAKER", "YOUNG")
FIELD_LABELS: tuple[str, ...] = ("NO", "TO", "BY")
# The closed vocabulary: every word a document can hold. Class id of a word = 1 + its index here.
WORDS: tuple[str, ...] = (*TITLES, *NUMBERS, *CITIES, *NAMES, *FIELD_LABELS)
PAGE_SIZE = (384, 288)
FONT_SIZE = 68
ROW_TOPS = (8, 104, 200)  # page pixels; rows 96 px apart (24 px once the padded page is at 96 px)
PAPER = (250, 250, 247)


@dataclass(frozen=True)
class DocField:
    """One field of a document: its printed label ('' for the title), value, question and gold answers."""

    label: str
    value: str
    question: str
    answers: tuple[str, ...]


@dataclass(frozen=True)
class Document:
    """A synthetic document: its title and fields (title row first), plus the layout's random offsets."""

    title: str
    fields: tuple[DocField, ...]
    x0: int
    y_jitter: tuple[int, ...]
    ink: int


def word_class(word: str) -> int:
    """Class id (1-based) of a vocabulary word; ``ValueError`` for a word outside ``WORDS``."""
    if word not in WORDS:
        raise ValueError(f"{word!r} is not in the documents' closed vocabulary")
    return 1 + WORDS.index(word)


def sample_document(rng: np.random.Generator) -> Document:
    """A form: title row, ``NO`` + number, and ``TO`` + city or ``BY`` + name, with random layout offsets."""
    title = TITLES[int(rng.integers(len(TITLES)))]
    kind = title.lower()
    number = NUMBERS[int(rng.integers(len(NUMBERS)))]
    fields = [
        DocField("", title, "What kind of document is this?", (title, title.title())),
        DocField("NO", number, f"What is the {kind} number?", (number,)),
    ]
    if rng.random() < 0.5:
        city = CITIES[int(rng.integers(len(CITIES)))]
        fields.append(DocField("TO", city, f"Which city is the {kind} sent to?", (city, city.title())))
    else:
        name = NAMES[int(rng.integers(len(NAMES)))]
        fields.append(DocField("BY", name, f"Who wrote the {kind}?", (name, name.title())))
    x0 = 8 + int(rng.integers(0, 25))
    jitter = tuple(int(v) for v in rng.integers(0, 13, size=len(fields)))
    return Document(title, tuple(fields), x0, jitter, int(rng.integers(0, 60)))


def render_document(doc: Document) -> tuple[Image.Image, np.ndarray]:
    """Draw ``doc`` on a ``PAGE_SIZE`` RGB page; returns the page and ``labels: [H, W]`` uint8 (0 = paper,
    else the :func:`word_class` of the word whose box covers the pixel)."""
    font = ImageFont.load_default(size=FONT_SIZE)
    page = Image.new("RGB", PAGE_SIZE, PAPER)
    labels = Image.new("L", PAGE_SIZE, 0)
    draw, label_draw = ImageDraw.Draw(page), ImageDraw.Draw(labels)
    ink = (doc.ink, doc.ink, doc.ink)
    gap = int(font.getlength(" "))
    for field, top, dy in zip(doc.fields, ROW_TOPS, doc.y_jitter, strict=True):
        x, y = doc.x0, top + dy
        for word in (field.label, field.value):
            if not word:
                continue
            draw.text((x, y), word, fill=ink, font=font)
            label_draw.rectangle(_box(font, word, x, y), fill=word_class(word))
            x += int(font.getlength(word)) + gap
    return page, np.asarray(labels)


def _box(font: ImageFont.FreeTypeFont, word: str, x: int, y: int) -> tuple[int, int, int, int]:
    """Inked bounding box of ``word`` drawn at ``(x, y)`` (inclusive corners, page pixels)."""
    left, top, right, bottom = font.getbbox(word)
    return x + left, y + top, x + right - 1, y + bottom - 1
