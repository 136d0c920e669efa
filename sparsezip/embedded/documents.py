"""Synthetic DocVQA-style documents: a small form (title plus a few labelled fields of short words and
numbers) drawn with Pillow's built-in default font (``ImageFont.load_default``; no font files, nothing
downloaded), and questions asking for one field. Deterministic in an explicit ``numpy.random.Generator``.

The tiny model is not trained to read (at 96 px the text is illegible anyway): this set exercises the DocVQA
pipeline and ANLS honestly, it does not measure reading.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from PIL import Image, ImageDraw, ImageFont

TITLES: tuple[str, ...] = ("INVOICE", "RECEIPT", "ORDER FORM", "STATEMENT", "MEMO")
NAMES: tuple[str, ...] = ("SMITH", "JONES", "GARCIA", "MILLER", "DAVIS", "LOPEZ", "WILSON", "MOORE", "CLARK")
CITIES: tuple[str, ...] = ("BOSTON", "DENVER", "AUSTIN", "TOLEDO", "FRESNO", "TAMPA", "OMAHA", "RENO")
PAGE_SIZE = (320, 240)
FONT_SIZE = 16


@dataclass(frozen=True)
class DocField:
    """One labelled field of a document: the printed label, its value, and the question asking for it."""

    label: str
    value: str
    question: str
    answers: tuple[str, ...]


@dataclass(frozen=True)
class Document:
    """A synthetic document: its title and fields, top to bottom."""

    title: str
    fields: tuple[DocField, ...]


def sample_document(rng: np.random.Generator) -> Document:
    """A form with a title and four fields (number, date, total, name or city) with random values."""
    title = TITLES[int(rng.integers(len(TITLES)))]
    number = str(int(rng.integers(1000, 100000)))
    day, month, year = int(rng.integers(1, 29)), int(rng.integers(1, 13)), int(rng.integers(1990, 2024))
    date = f"{day:02d}/{month:02d}/{year}"
    total = f"{int(rng.integers(1, 1000))}.{int(rng.integers(100)):02d}"
    name = NAMES[int(rng.integers(len(NAMES)))]
    city = CITIES[int(rng.integers(len(CITIES)))]
    fields = (
        DocField("No.", number, f"What is the {title.lower()} number?", (number,)),
        DocField("Date:", date, "What is the date on the document?", (date,)),
        DocField("Total:", f"${total}", "What is the total amount?", (f"${total}", total)),
        DocField("Name:", name, "What is the name on the document?", (name, name.title()))
        if rng.random() < 0.5
        else DocField("City:", city, "Which city is written on the document?", (city, city.title())),
    )
    return Document(title, fields)


def render_document(doc: Document, rng: np.random.Generator) -> Image.Image:
    """Draw ``doc`` as a greyscale-on-white RGB page of ``PAGE_SIZE`` with slight random offsets."""
    font = ImageFont.load_default(size=FONT_SIZE)
    page = Image.new("RGB", PAGE_SIZE, (250, 250, 247))
    draw = ImageDraw.Draw(page)
    x0, y = 16 + int(rng.integers(0, 24)), 14 + int(rng.integers(0, 12))
    draw.text((x0, y), doc.title, fill=(20, 20, 20), font=ImageFont.load_default(size=FONT_SIZE + 6))
    y += 36
    draw.line((x0, y - 8, PAGE_SIZE[0] - 16, y - 8), fill=(90, 90, 90), width=1)
    for field in doc.fields:
        draw.text((x0, y), field.label, fill=(60, 60, 60), font=font)
        draw.text((x0 + 70, y), field.value, fill=(10, 10, 10), font=font)
        y += 26 + int(rng.integers(0, 8))
    return page
