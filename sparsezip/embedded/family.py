"""The architecture seam of the embedded training recipe: what differs between model families.

The recipe (:mod:`sparsezip.embedded.tower_stage`, :mod:`sparsezip.embedded.language_stage`) trains a tiny
vision-language model on the synthetic task without knowing its architecture; a family says how to build one,
where its vision tower, projector and language model are, how to get the tower's feature-layer outputs and
how its prompts are tokenized around the image. :data:`LLAVA` is the LLaVA-1.5 family of the embedded default;
a LLaVA-NeXT or Qwen2.5-VL tiny model is trained by the same recipe on the same data by writing another
:class:`TinyFamily` (its own tower tap, merger/projector and prompt ids).
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import TYPE_CHECKING

import torch
from torch import nn

from sparsezip.adapters.vision_tower import FeatureLayerTap
from sparsezip.embedded.models import TinyLlavaSpec, build_tiny_llava
from sparsezip.embedded.tokens import PromptTokens

if TYPE_CHECKING:
    from transformers import LlavaForConditionalGeneration, LlavaProcessor


class TinyFamily:
    """How the recipe reaches into one model family. Subclass and override every method."""

    name = "abstract"

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
