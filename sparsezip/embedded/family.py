"""The architecture seam of the embedded training recipe: what differs between model families.

The recipe (:mod:`sparsezip.embedded.tower_stage`, :mod:`sparsezip.embedded.language_stage`) trains a tiny
vision-language model on the synthetic task without knowing its architecture; a family says how to build one,
where its vision tower, projector and language model are, how to get the tower's feature-layer outputs (and the
per-patch targets that go with them), how its prompts are tokenized around the image and which position ids the
language model gives them. :data:`LLAVA` is the LLaVA-1.5 family of the embedded default;
:mod:`sparsezip.embedded.family_next` (LLaVA-NeXT: anyres crops, image-newline tokens) and
:mod:`sparsezip.embedded.family_qwen` (Qwen2.5-VL: no CLS, 2x2 merger, M-RoPE) train their tiny models by the
same recipe on the same data (:func:`family`).

Every family sees the recipe's training images (``[n, S, S, 3]``, 96 px, documents padded to a square) and their
per-patch labels at the recipe's patch size (``[n, (S / patch)^2]``, raster order) and turns them into its own
model inputs and targets.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np
import torch
from torch import nn

from sparsezip.adapters.vision_tower import FeatureLayerTap
from sparsezip.embedded.models import TinyLlavaSpec, build_tiny_llava
from sparsezip.embedded.tokens import PromptTokens

if TYPE_CHECKING:
    from transformers import LlavaForConditionalGeneration, LlavaProcessor


@dataclass
class TowerViews:
    """What the tower objectives of one training batch see (:mod:`sparsezip.embedded.tower_stage`).

    Attributes:
        patches: ``[R, Q, C]`` feature-layer outputs of ``R`` tower views (LLaVA: one per image; LLaVA-NeXT: one per
            crop), with gradients.
        labels: ``[R, Q]`` int64 per-patch class of each output (0 = background).
        rows, cols: ``[Q]`` int64 each output's row and column in its view's ``grid x grid`` patch grid.
        global_token: ``[R, C]`` the token the presence objective reads (CLS, or a mean over the patches).
        presence: ``[R, K]`` float32 which objects and words each view shows.
    """

    patches: torch.Tensor
    labels: torch.Tensor
    rows: torch.Tensor
    cols: torch.Tensor
    global_token: torch.Tensor
    presence: torch.Tensor


class TinyFamily:
    """How the recipe reaches into one model family. Subclass and override ``build``, ``tower``, ``tower_hidden``,
    ``projector``, ``language_model``, ``lm_head`` and ``prompt_tokens``; the other methods have LLaVA-1.5's
    behaviour by default (one CLIP view per image at the recipe's size, 1-D positions)."""

    name = "abstract"
    # The model registry's name of the committed embedded checkpoint and its folder under fixtures/.
    embedded_name = ""
    fixture = ""

    def position_grid(self, spec: TinyLlavaSpec) -> int:
        """Patches per side of one tower view (the per-patch row/column targets' classes)."""
        return spec.image_size // spec.patch_size

    def vision_inputs(self, processor: object, pixels: np.ndarray) -> object:
        """``pixels: [B, S, S, 3]`` uint8 training images -> what :meth:`tower_hidden` takes (LLaVA:
        ``pixel_values [B, 3, S, S]`` from the model's own image processor)."""
        from sparsezip.embedded.tokens import pixel_values

        return pixel_values(processor, pixels)

    def tower_views(self, model: nn.Module, processor: object, pixels: np.ndarray, labels: torch.Tensor,
                    presence: torch.Tensor, spec: TinyLlavaSpec) -> TowerViews:
        """One batch's tower outputs and targets: ``labels [B, P]`` per-patch classes and ``presence [B, K]`` of
        the images as the recipe renders them."""
        patches, cls = self.tower_hidden(model, self.vision_inputs(processor, pixels))
        grid = self.position_grid(spec)
        index = torch.arange(grid * grid)
        return TowerViews(patches, labels, index // grid, index % grid, cls, presence)

    def projector_input(self, model: nn.Module, features: torch.Tensor) -> torch.Tensor:
        """``features: [n, P, C]`` -> ``[n * P', C']``, what ``projector(model).linear_1`` reads (its per-channel
        statistics standardise it at initialisation)."""
        return features.reshape(-1, features.shape[-1])

    def prefix_positions(self, model: nn.Module, prompts: PromptTokens) -> tuple[torch.Tensor | None, int]:
        """Position ids of the shared prompt prefix (``None``: the model's default ``0 .. P - 1``) and the position
        of the first suffix token."""
        return None, int(prompts.prefix.shape[0])

    def build(self, spec: TinyLlavaSpec, seed: int, corpus: Iterable[str]) -> tuple[nn.Module, object]:
        """A randomly initialised model and its processor (deterministic in ``seed``)."""
        raise NotImplementedError

    def tower(self, model: nn.Module) -> nn.Module:
        """The vision tower (trained in stage 1, frozen in stage 2)."""
        raise NotImplementedError

    def tower_hidden(self, model: nn.Module, pixel_values: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``pixel_values: [B, 3, S, S]`` -> the feature layer's patch outputs ``[B, P, C]`` (what the projector
        reads) and a global token ``[B, C]`` for the presence objective (CLS), with gradients."""
        raise NotImplementedError

    def projector(self, model: nn.Module) -> nn.Module:
        """The module mapping patch features ``[B, P, C]`` to LM embeddings ``[B, P, D]``; its first linear
        layer is ``projector(model).linear_1`` (standardised at initialisation)."""
        raise NotImplementedError

    def language_model(self, model: nn.Module) -> nn.Module:
        """The decoder (``inputs_embeds`` / ``input_ids`` in, ``last_hidden_state`` out, HF cache API)."""
        raise NotImplementedError

    def lm_head(self, model: nn.Module) -> nn.Module:
        """Hidden states ``[..., D]`` -> vocabulary logits."""
        raise NotImplementedError

    def prompt_tokens(self, processor: object) -> PromptTokens:
        """The evaluation prompt's ids split where the image goes (:class:`PromptTokens`)."""
        raise NotImplementedError


class LlavaFamily(TinyFamily):
    """LLaVA-1.5 (``LlavaForConditionalGeneration``): CLIP tower read at ``vision_feature_layer`` through the
    adapter's own tap, CLS dropped, GELU MLP projector, Llama LM."""

    name = "llava"
    embedded_name = "tiny-shapes"
    fixture = "tiny-llava"

    def build(self, spec: TinyLlavaSpec, seed: int, corpus: Iterable[str]) -> tuple[
            LlavaForConditionalGeneration, LlavaProcessor]:
        return build_tiny_llava(spec, seed=seed, corpus=corpus)

    def tower(self, model: LlavaForConditionalGeneration) -> nn.Module:
        return model.model.vision_tower

    def tower_hidden(self, model: LlavaForConditionalGeneration, pixel_values: torch.Tensor) -> tuple[
            torch.Tensor, torch.Tensor]:
        hidden = FeatureLayerTap(self.tower(model), model.config.vision_feature_layer).hidden_states(pixel_values)
        return hidden[:, 1:], hidden[:, 0]

    def projector(self, model: LlavaForConditionalGeneration) -> nn.Module:
        return model.model.multi_modal_projector

    def language_model(self, model: LlavaForConditionalGeneration) -> nn.Module:
        return model.model.language_model

    def lm_head(self, model: LlavaForConditionalGeneration) -> nn.Module:
        return model.lm_head

    def prompt_tokens(self, processor: LlavaProcessor) -> PromptTokens:
        return PromptTokens.build(processor)


LLAVA = LlavaFamily()


FAMILY_NAMES: tuple[str, ...] = ("llava", "llava-next", "qwen2.5-vl")


def family(name: str) -> TinyFamily:
    """The recipe's family ``name`` (``sparsezip train-tiny --arch``): one of :data:`FAMILY_NAMES`."""
    if name == "llava":
        return LLAVA
    if name == "llava-next":
        from sparsezip.embedded.family_next import NEXT

        return NEXT
    if name == "qwen2.5-vl":
        from sparsezip.embedded.family_qwen import QWEN

        return QWEN
    raise ValueError(f"unknown architecture {name!r}; choose from {', '.join(FAMILY_NAMES)}")
