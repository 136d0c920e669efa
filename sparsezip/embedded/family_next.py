"""The LLaVA-NeXT family of the embedded recipe (:class:`NextFamily`): a tiny ``LlavaNextForConditionalGeneration``
trained by the same recipe on the same data as the tiny LLaVA.

Architecture from the recipe's spec: CLIP crops of half the image size (48 px of the 96 px images, 8 px patches:
6 x 6 patches + CLS per crop), pinpoints ``(48, 96)``, ``(96, 48)``, ``(96, 96)``, so a square training image is a
base view (the whole image shrunk to 48 px) plus 2 x 2 full-resolution tiles: 5 crops, 180 patches, and in the
LLM 36 base tokens + the 12 x 12 stitched tiles + one image-newline token per row = 192 tokens; a Llama LM of
the recipe's width with grouped-query attention (half as many KV heads).

How the recipe's inputs map onto it:

* tower targets, per crop (each crop is its own CLIP view with its own CLS): a tile's patches take the labels of
  its quarter of the image's 12 x 12 label grid, the base view's the most frequent label of each 2 x 2 block
  (the recipe's cover rule: one labelled patch of the four suffices); row/column targets are within
  the crop's 6 x 6 grid (a crop cannot see where it sits; the LLM sequence says so); the presence target of a
  crop's CLS is what its patches show (the base view: everything).
* projector: the GELU MLP on every crop, then transformers' own ``pack_image_features`` (unpadding, image-newline
  tokens), exactly the layout the adapter's ``none`` gives the LLM; the newline embedding trains with the
  projector.
* prompts: the processor's own expansion of ``<image>`` for a training-size image.

Fidelity note: the recipe's documents are padded to a square (LLaVA-1.5's protocol) before they reach the
processor, so training sees 5 crops for them too; at evaluation the adapter hands the processor the 4:3 page as
it is (anyres: the page's tiles, unpadded), a layout the LM saw only for scenes.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import TYPE_CHECKING

import numpy as np
import torch
from torch import nn

from sparsezip.adapters.vision_tower import FeatureLayerTap
from sparsezip.embedded.family import TinyFamily, TowerViews
from sparsezip.embedded.models import TinyLlavaSpec
from sparsezip.embedded.tokens import PromptTokens
from sparsezip.embedded.training_data import NUM_CLASSES, NUM_WORDS

if TYPE_CHECKING:
    from transformers import LlavaNextForConditionalGeneration, LlavaNextProcessor

    from sparsezip.embedded.tiny_llava_next import TinyLlavaNextSpec


def next_spec(spec: TinyLlavaSpec) -> TinyLlavaNextSpec:
    """The tiny LLaVA-NeXT of a recipe spec: crops of half the image size, its patch size and widths, half as many
    KV heads as heads."""
    from sparsezip.embedded.tiny_llava_next import TinyLlavaNextSpec

    crop = spec.image_size // 2
    return TinyLlavaNextSpec(
        crop_size=crop, patch_size=spec.patch_size, pinpoints=((crop, 2 * crop), (2 * crop, crop), (2 * crop, 2 * crop)),
        vision_hidden=spec.vision_hidden, vision_intermediate=spec.vision_intermediate,
        vision_layers=spec.vision_layers, vision_heads=spec.vision_heads, text_hidden=spec.text_hidden,
        text_intermediate=spec.text_intermediate, text_layers=spec.text_layers, text_heads=spec.text_heads,
        text_kv_heads=max(1, spec.text_heads // 2), vocab_size=spec.vocab_size, max_positions=spec.max_positions,
    )


class NextProjector(nn.Module):
    """Crop patch features ``[B, n * P, C]`` (crop-major, base view first) -> the LLM's image run ``[B, T, D]``:
    the model's projector on every crop, packed by ``pack_image_features`` with the image-newline embedding."""

    def __init__(self, model: LlavaNextForConditionalGeneration, image_size: int) -> None:
        super().__init__()
        self.projector = model.model.multi_modal_projector
        self.image_newline = model.model.image_newline  # shared with the model: it trains with the projector
        self.image_size = image_size
        # Not a submodule: its parameters (tower, LM) are not the projector's, and stage 2 must not see them twice.
        self.__dict__["inner"] = model.model

    @property
    def linear_1(self) -> nn.Linear:
        return self.projector.linear_1

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        b, _, c = features.shape
        vision = self.inner.config.vision_config
        per_crop = (vision.image_size // vision.patch_size) ** 2
        crops = features.reshape(b, -1, per_crop, c)
        projected = self.projector(crops.flatten(0, 1)).reshape(b, crops.shape[1], per_crop, -1)
        sizes = torch.tensor([[self.image_size, self.image_size]] * b)
        packed, _ = self.inner.pack_image_features(list(projected), sizes, vision_feature_select_strategy="default",
                                                   image_newline=self.image_newline)
        return torch.stack(packed)


class NextFamily(TinyFamily):
    """LLaVA-NeXT (``LlavaNextForConditionalGeneration``): anyres crops through the adapter's CLIP tap (layer -2,
    CLS dropped per crop), the GELU projector + ``pack_image_features``, a Llama LM with GQA (module docstring)."""

    name = "llava-next"
    embedded_name = "tiny-llava-next"
    fixture = "tiny-llava-next"

    def build(self, spec: TinyLlavaSpec, seed: int, corpus: Iterable[str]) -> tuple[
            LlavaNextForConditionalGeneration, LlavaNextProcessor]:
        from sparsezip.embedded.tiny_llava_next import build_tiny_llava_next

        return build_tiny_llava_next(next_spec(spec), seed=seed, corpus=corpus)

    def tower(self, model: LlavaNextForConditionalGeneration) -> nn.Module:
        return model.model.vision_tower

    def position_grid(self, spec: TinyLlavaSpec) -> int:
        return spec.image_size // 2 // spec.patch_size

    def vision_inputs(self, processor: LlavaNextProcessor, pixels: np.ndarray) -> torch.Tensor:
        """``[B, S, S, 3]`` -> every crop ``[B, 5, 3, S/2, S/2]`` (base view, then the 2 x 2 tiles row-major)."""
        out = processor.image_processor(list(pixels), return_tensors="pt")["pixel_values"]
        if out.ndim != 5 or out.shape[1] != 5:
            raise ValueError(f"a square training image must give 5 crops (base + 2 x 2 tiles), got {tuple(out.shape)}")
        return out

    def tower_hidden(self, model: LlavaNextForConditionalGeneration, pixel_values: torch.Tensor) -> tuple[
            torch.Tensor, torch.Tensor]:
        """``[B, n, 3, s, s]`` crops -> patch outputs ``[B, n * P, C]`` (crop-major) and every crop's CLS ``[B * n, C]``."""
        b = pixel_values.shape[0]
        tap = FeatureLayerTap(self.tower(model), model.config.vision_feature_layer)
        hidden = tap.hidden_states(pixel_values.flatten(0, 1))  # [B * n, 1 + P, C]
        return hidden[:, 1:].reshape(b, -1, hidden.shape[-1]), hidden[:, 0]

    def tower_views(self, model: nn.Module, processor: object, pixels: np.ndarray, labels: torch.Tensor,
                    presence: torch.Tensor, spec: TinyLlavaSpec) -> TowerViews:
        """Per crop (module docstring): ``[B * 5, P, C]`` patches with their labels, every crop's CLS with what the
        crop shows."""
        patches, cls = self.tower_hidden(model, self.vision_inputs(processor, pixels))
        crop_labels = crop_patch_labels(labels, spec.image_size // spec.patch_size)  # [B, 5, P]
        b, n, p = crop_labels.shape
        shown = crop_presence(crop_labels, presence)  # [B, 5, K]
        grid = self.position_grid(spec)
        index = torch.arange(grid * grid)
        return TowerViews(patches.reshape(b * n, p, -1), crop_labels.reshape(b * n, p), index // grid, index % grid,
                          cls, shown.reshape(b * n, -1))

    def projector(self, model: LlavaNextForConditionalGeneration) -> NextProjector:
        return NextProjector(model, model.config.vision_config.image_size * 2)

    def language_model(self, model: LlavaNextForConditionalGeneration) -> nn.Module:
        return model.model.language_model

    def lm_head(self, model: LlavaNextForConditionalGeneration) -> nn.Module:
        return model.lm_head

    def prompt_tokens(self, processor: LlavaNextProcessor) -> PromptTokens:
        crop = processor.image_processor.crop_size["height"]
        return PromptTokens.build(processor, image_size=2 * crop)


def crop_patch_labels(labels: torch.Tensor, side: int) -> torch.Tensor:
    """``labels: [B, side * side]`` per-patch classes of whole images (raster) -> ``[B, 5, (side / 2)^2]``: the base
    view's (each 2 x 2 block's most frequent label among its labelled patches; the recipe's cover rule, one patch
    of four), then the 2 x 2 tiles' (each a quarter of the grid), row-major."""
    b = labels.shape[0]
    half = side // 2
    blocks = labels.reshape(b, half, 2, half, 2).permute(0, 1, 3, 2, 4).reshape(b, half * half, 4)
    counts = torch.zeros(b, half * half, 1 + NUM_CLASSES + NUM_WORDS).scatter_add_(
        2, blocks, torch.ones(blocks.shape))
    counts[:, :, 0] = 0  # background only wins a block with no labelled patch
    base = torch.where(counts.amax(dim=2) > 0, counts.argmax(dim=2), 0)
    tiles = labels.reshape(b, 2, half, 2, half).permute(0, 1, 3, 2, 4).reshape(b, 4, half * half)
    return torch.cat([base[:, None], tiles], dim=1)


def crop_presence(crop_labels: torch.Tensor, presence: torch.Tensor) -> torch.Tensor:
    """``crop_labels [B, n, P]`` and the images' ``presence [B, K]`` -> ``[B, n, K]``: the base view (crop 0) shows
    everything the image does; a tile, the classes its patches carry."""
    b, n, _ = crop_labels.shape
    k = presence.shape[1]
    shown = torch.zeros(b, n, k + 1)
    shown.scatter_(2, crop_labels, 1.0)  # class c (1-based) -> column c; background -> column 0
    shown = shown[:, :, 1:]
    shown[:, 0] = presence
    return shown


NEXT = NextFamily()
