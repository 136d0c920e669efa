"""Draw which patches a method kept, merged or dropped, on top of the image the vision tower saw.

Dominant (kept) patches are outlined and left untinted, every merged patch is tinted with the colour of the
contextual token it joined, dropped patches are darkened. Pure PIL + tensors; people would rather look than read.
"""

from __future__ import annotations

import colorsys
from typing import TYPE_CHECKING

import torch

if TYPE_CHECKING:
    from PIL import Image

_GOLDEN = 0.618033988749895


def slot_colour(slot: int) -> tuple[int, int, int]:
    """A distinct, deterministic RGB colour per output slot (golden-ratio hue steps)."""
    r, g, b = colorsys.hsv_to_rgb((slot * _GOLDEN) % 1.0, 0.75, 1.0)
    return int(r * 255), int(g * 255), int(b * 255)


def patch_roles(
    kept_index: torch.Tensor, assignment: torch.Tensor, *, prefix: int = 1
) -> tuple[torch.Tensor, torch.Tensor]:
    """Per patch (the ``prefix`` protected tokens, CLIP's CLS, excluded): ``(is_dominant [P] bool, slot [P] int64)``.

    kept_index: ``[K]`` source indices (into N, prefix first) of the dominant tokens, ``-1`` padded; assignment:
    ``[N]`` output slot of every source token, ``-1`` = dropped. ``P = N - prefix``.
    """
    if kept_index.ndim != 1 or assignment.ndim != 1:
        raise ValueError(
            f"kept_index must be [K] and assignment [N], got {tuple(kept_index.shape)} and {tuple(assignment.shape)}"
        )
    n = assignment.shape[0]
    valid = kept_index[(kept_index >= 0) & (kept_index < n)]
    dominant = torch.zeros(n, dtype=torch.bool)
    dominant[valid.cpu()] = True
    if not 0 <= prefix < n:
        raise ValueError(f"prefix must lie in [0, N={n}), got prefix={prefix}")
    return dominant[prefix:], assignment[prefix:].cpu().long()


def draw_token_overlay(
    image: Image.Image, kept_index: torch.Tensor, assignment: torch.Tensor, *, cell: int | None = None,
    prefix: int = 1,
) -> Image.Image:
    """The overlay for one image.

    image: the (square) image the tower saw; kept_index ``[K]`` / assignment ``[N]`` as in
    :class:`~sparsezip.context.CompressionResult` for this image, with ``N - prefix`` a square number of patches
    (``prefix``: ``VisionContext.prefix``, 1 = CLIP's CLS).
    ``cell``: pixels per patch in the output (the output is ``grid * cell`` pixels square); default: about
    450 pixels in all.
    """
    from PIL import Image as PILImage
    from PIL import ImageDraw

    dominant, slots = patch_roles(kept_index, assignment, prefix=prefix)
    grid = round(dominant.numel() ** 0.5)
    if grid * grid != dominant.numel():
        raise ValueError(f"{dominant.numel()} patches do not form a square grid")
    cell = max(4, 450 // grid) if cell is None else cell
    if cell < 4:
        raise ValueError(f"cell must be >= 4 pixels, got {cell}")
    side = grid * cell
    base = image.convert("RGB").resize((side, side), PILImage.Resampling.BICUBIC)
    tint = PILImage.new("RGBA", (side, side), (0, 0, 0, 0))
    draw = ImageDraw.Draw(tint)
    for patch, (is_dominant, slot) in enumerate(zip(dominant.tolist(), slots.tolist(), strict=True)):
        row, col = divmod(patch, grid)
        box = (col * cell, row * cell, (col + 1) * cell - 1, (row + 1) * cell - 1)
        if is_dominant:  # black then white frame: visible on any background
            width = max(1, cell // 10)
            draw.rectangle(box, outline=(0, 0, 0, 255), width=width)
            inner = (box[0] + width, box[1] + width, box[2] - width, box[3] - width)
            draw.rectangle(inner, outline=(255, 255, 255, 255), width=width)
        elif slot < 0:
            draw.rectangle(box, fill=(0, 0, 0, 170))
        else:
            draw.rectangle(box, fill=(*slot_colour(slot), 120))
    return PILImage.alpha_composite(base.convert("RGBA"), tint).convert("RGB")


def tensor_to_image(pixel_values: torch.Tensor, mean: list[float], std: list[float]) -> Image.Image:
    """Undo CLIP normalisation: ``pixel_values [3, H, W]`` -> the RGB image the tower saw."""
    from PIL import Image as PILImage

    if pixel_values.ndim != 3 or pixel_values.shape[0] != 3:
        raise ValueError(f"pixel_values must be [3, H, W], got {tuple(pixel_values.shape)}")
    rgb = pixel_values.float().cpu() * torch.tensor(std)[:, None, None] + torch.tensor(mean)[:, None, None]
    array = (rgb.clamp(0, 1) * 255).round().to(torch.uint8).permute(1, 2, 0).numpy()
    return PILImage.fromarray(array)
