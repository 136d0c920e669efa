"""Image preparation before the processor: LLaVA-1.5's pad-to-square (``image_aspect_ratio=pad``).

LLaVA-1.5 (and VisionZip, SparseVLM, lmms-eval after it) evaluates with ``image_aspect_ratio=pad``: every image
is first expanded to a square filled with the image processor's mean colour, ``tuple(int(x * 255) for x in
image_mean)``, the original centred (offset ``(side - w) // 2``), and only then resized by the CLIP processor.
The Hugging Face processor as loaded center-crops instead, which drops the borders of non-square images.
The adapter (generation and calibration) and the embedded training recipe both call :func:`prepare_images`,
so what the tiny model is trained on and what it is evaluated on are prepared by the same code.

The processor backend is pinned to PIL (``PROCESSOR_BACKEND``): LLaVA resized with PIL, and transformers
otherwise picks torchvision when it is installed, so CPU and GPU machines would resize differently.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from PIL import Image

PROCESSOR_BACKEND = "pil"
ASPECT_MODES = ("pad", "crop")


def mean_fill(image_mean: Sequence[float]) -> tuple[int, ...]:
    """LLaVA's padding colour for a processor's ``image_mean`` (floats in [0, 1]): ``int(x * 255)`` each."""
    values = list(image_mean)
    if len(values) != 3 or not all(0.0 <= float(x) <= 1.0 for x in values):
        raise ValueError(f"image_mean must hold 3 values in [0, 1], got {image_mean!r}")
    return tuple(int(float(x) * 255) for x in values)


def expand2square(image: Image.Image, fill: tuple[int, ...]) -> Image.Image:
    """``image`` (W x H) centred on a ``max(W, H)`` square of colour ``fill``; a square image is returned as is.

    As LLaVA's ``expand2square``: a wide image gets bands at top and bottom (paste offset ``(W - H) // 2``), a
    tall one at left and right.
    """
    from PIL import Image

    width, height = image.size
    if width == height:
        return image
    side = max(width, height)
    square = Image.new(image.mode, (side, side), fill if image.mode != "L" else fill[0])
    square.paste(image, ((side - width) // 2, (side - height) // 2))
    return square


def prepare_images(images: Sequence[Image.Image], image_processor: object, pad: bool) -> list[Image.Image]:
    """The images as the processor should receive them: RGB, and padded to squares of the processor's mean
    colour when ``pad`` (LLaVA-1.5's ``image_aspect_ratio=pad``); unchanged otherwise (the processor crops)."""
    rgb = [image if image.mode == "RGB" else image.convert("RGB") for image in images]
    if not pad:
        return rgb
    mean = getattr(image_processor, "image_mean", None)
    if mean is None:
        raise ValueError(f"image processor {type(image_processor).__name__} has no image_mean to pad with")
    fill = mean_fill(mean)
    return [expand2square(image, fill) for image in rgb]


def aspect_mode(pad: bool) -> str:
    """The recorded name of the preparation: ``"pad"`` or ``"crop"`` (LLaVA's ``image_aspect_ratio``)."""
    return ASPECT_MODES[0] if pad else ASPECT_MODES[1]
