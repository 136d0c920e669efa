"""The Qwen2.5-VL family of the embedded recipe (:class:`QwenFamily`): a tiny ``Qwen2_5_VLForConditionalGeneration``
trained by the same recipe on the same data as the tiny LLaVA.

Architecture from the recipe's spec: the recipe's 8 px patches merged 2 x 2 (16 px per LLM token), images kept at
the recipe's 96 px (``max_pixels = 96^2``), so a training image is 12 x 12 tower patches and 6 x 6 = 36 LLM tokens;
windows of 2 x 2 merged tokens, full attention in blocks 1 and 3 (the last, as in every released checkpoint); the
tower's widths and depth from the spec; a Qwen2 LM of the recipe's width with M-RoPE and grouped-query attention
(half as many KV heads).

How the recipe's inputs map onto it:

* tower targets: the image processor orders patches merge-unit-major (each 2 x 2 unit contiguous, units in
  raster order); the tower runs them in window order and its last block's output (what the merger reads) is put
  back into the processor's order, and each patch takes the recipe's label and row/column of the patch it
  is. There is no CLS: the presence objective reads the mean of the image's patch outputs.
* projector: the model's own 2 x 2 patch merger (RMSNorm, MLP), trained in stage 2 with the LM (stage 1 never runs
  it into a loss); its first linear layer reads the 4 normalised patches of a unit side by side.
* prompts: the suite's vicuna_v1 prompt (the default prompt style, as for every family), its ``<image>`` as Qwen's
  vision block expanded to one ``<|image_pad|>`` per merged token, exactly as the adapter's ``encode`` does;
  the prefix's positions are M-RoPE's (``get_rope_index``: the image's tokens on their row/column grid), the
  question's continue from the largest.

Fidelity note: documents are padded to a square (LLaVA-1.5's protocol) in training, while the Qwen2.5-VL
adapter hands the processor the 4:3 page as it is (dynamic resolution), a token grid the LM saw only for
scenes.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import torch
from torch import nn

from sparsezip.embedded.family import TinyFamily, TowerViews
from sparsezip.embedded.models import TinyLlavaSpec
from sparsezip.embedded.tokens import PromptTokens

if TYPE_CHECKING:
    from transformers import PreTrainedTokenizerFast, Qwen2_5_VLForConditionalGeneration

    from sparsezip.embedded.tiny_qwen2_5_vl import TinyQwenSpec

MERGE = 2


def qwen_spec(spec: TinyLlavaSpec) -> TinyQwenSpec:
    """The tiny Qwen2.5-VL of a recipe spec (module docstring)."""
    from sparsezip.embedded.tiny_qwen2_5_vl import TinyQwenSpec

    pairs = spec.text_hidden // spec.text_heads // 2
    eighth = pairs // 8  # M-RoPE sections in Qwen2.5-VL's proportions (16, 24, 24 of 64 rotary pairs)
    return TinyQwenSpec(
        patch_size=spec.patch_size, merge_size=MERGE, min_side=2 * spec.patch_size * MERGE, max_side=spec.image_size,
        window_size=2 * spec.patch_size * MERGE, vision_hidden=spec.vision_hidden,
        vision_intermediate=spec.vision_intermediate, vision_depth=spec.vision_layers, vision_heads=spec.vision_heads,
        fullatt_blocks=(1, spec.vision_layers - 1), text_hidden=spec.text_hidden,
        text_intermediate=spec.text_intermediate, text_layers=spec.text_layers, text_heads=spec.text_heads,
        text_kv_heads=max(1, spec.text_heads // 2), mrope_section=(2 * eighth, 3 * eighth, 3 * eighth),
        vocab_size=spec.vocab_size, max_positions=spec.max_positions,
    )


@dataclass
class QwenPromptProcessor:
    """What the recipe needs of a processor, for a checkpoint that ships only a tokenizer and an image processor
    (as the adapter loads it): ``__call__`` expands the prompt's image like ``Qwen2_5_VLProcessor``."""

    tokenizer: PreTrainedTokenizerFast
    image_processor: object
    image_token: str = "<|image_pad|>"
    image_text: str = "<|vision_start|><|image_pad|><|vision_end|>"

    def __call__(self, images: Sequence[object], text: Sequence[str], return_tensors: str = "pt") -> dict:
        """``images`` (PIL or ``[S, S, 3]`` arrays) and suite prompts (one ``<image>`` each) -> ``input_ids`` with one
        ``<|image_pad|>`` per merged token, ``pixel_values`` and ``image_grid_thw``."""
        from sparsezip.adapters.qwen_sequence import expand_image_runs

        pixels = self.image_processor(list(images), return_tensors=return_tensors)
        counts = (pixels["image_grid_thw"].prod(dim=1) // MERGE**2).tolist()
        texts = expand_image_runs([t.replace("<image>", self.image_text) for t in text], counts, self.image_token)
        encoded = self.tokenizer(texts, return_tensors=return_tensors, padding=len(texts) > 1)
        ids = encoded["input_ids"]
        image_id = self.tokenizer.convert_tokens_to_ids(self.image_token)
        return {"input_ids": ids, "attention_mask": encoded["attention_mask"], **pixels,
                "mm_token_type_ids": (ids == image_id).int()}

    def save_pretrained(self, out: str | Path) -> None:
        self.tokenizer.save_pretrained(out)
        self.image_processor.save_pretrained(out)


class QwenProjector(nn.Module):
    """Patch outputs ``[B, P, C]`` (processor order) -> the LLM's image run ``[B, P / 4, D]`` through the model's
    own merger."""

    def __init__(self, merger: nn.Module) -> None:
        super().__init__()
        self.merger = merger

    @property
    def linear_1(self) -> nn.Linear:
        return self.merger.mlp[0]

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        b, p, c = features.shape
        return self.merger(features.reshape(b * p, c)).reshape(b, p // MERGE**2, -1)


def unit_order(side: int) -> torch.Tensor:
    """The processor's patch order of a ``side x side`` patch grid: ``[side^2]`` raster indices, merge unit by merge
    unit (units in raster order, each unit's 2 x 2 patches row-major)."""
    index = torch.arange(side * side).reshape(side // MERGE, MERGE, side // MERGE, MERGE)
    return index.permute(0, 2, 1, 3).reshape(-1)


class QwenFamily(TinyFamily):
    """Qwen2.5-VL (``Qwen2_5_VLForConditionalGeneration``): window-attention tower without CLS, the 2 x 2 merger as
    projector, a Qwen2 LM with M-RoPE (module docstring)."""

    name = "qwen2.5-vl"
    embedded_name = "tiny-qwen2.5-vl"
    fixture = "tiny-qwen2.5-vl"

    def build(self, spec: TinyLlavaSpec, seed: int, corpus: Iterable[str]) -> tuple[
            Qwen2_5_VLForConditionalGeneration, QwenPromptProcessor]:
        from sparsezip.embedded.tiny_qwen2_5_vl import build_tiny_qwen

        model, tokenizer, image_processor = build_tiny_qwen(qwen_spec(spec), seed=seed, corpus=corpus)
        # The recipe's documents are padded with the processor's mean colour (imageprep reads image_mean).
        return model, QwenPromptProcessor(tokenizer, image_processor)

    def tower(self, model: Qwen2_5_VLForConditionalGeneration) -> nn.Module:
        return model.model.visual

    def vision_inputs(self, processor: QwenPromptProcessor, pixels: np.ndarray) -> tuple[torch.Tensor, torch.Tensor]:
        """``[B, S, S, 3]`` -> ``pixel_values [B * P, patch_dim]`` and ``image_grid_thw [B, 3]``."""
        out = processor.image_processor(list(pixels), return_tensors="pt")
        return out["pixel_values"], out["image_grid_thw"]

    def tower_hidden(self, model: Qwen2_5_VLForConditionalGeneration, inputs: tuple[torch.Tensor, torch.Tensor]
                     ) -> tuple[torch.Tensor, torch.Tensor]:
        """-> the last block's outputs ``[B, P, C]`` in the processor's order (what the merger reads), and their
        mean per image ``[B, C]`` (the presence objective's global token: there is no CLS)."""
        from transformers.vision_utils import get_vision_window_index

        pixel_values, grid = inputs
        visual = self.tower(model)
        config = visual.config
        if bool((grid != grid[0]).any()):
            raise ValueError(f"the recipe's images must share one patch grid, got image_grid_thw {grid.tolist()}")
        hidden = visual(pixel_values, grid_thw=grid).last_hidden_state  # [B * P, C], window order
        window_index, _ = get_vision_window_index(grid, config.spatial_merge_size, config.window_size,
                                                  config.patch_size)
        units = hidden.reshape(-1, MERGE**2, hidden.shape[-1])[torch.argsort(window_index)]
        patches = units.reshape(grid.shape[0], -1, hidden.shape[-1])
        return patches, patches.mean(dim=1)

    def tower_views(self, model: nn.Module, processor: object, pixels: np.ndarray, labels: torch.Tensor,
                    presence: torch.Tensor, spec: TinyLlavaSpec) -> TowerViews:
        patches, pooled = self.tower_hidden(model, self.vision_inputs(processor, pixels))
        grid = self.position_grid(spec)
        order = unit_order(grid)
        return TowerViews(patches, labels[:, order], order // grid, order % grid, pooled, presence)

    def projector(self, model: Qwen2_5_VLForConditionalGeneration) -> QwenProjector:
        return QwenProjector(self.tower(model).merger)

    def projector_input(self, model: nn.Module, features: torch.Tensor) -> torch.Tensor:
        merger = self.tower(model).merger
        return merger.ln_q(features.reshape(-1, features.shape[-1])).reshape(-1, merger.hidden_size)

    def language_model(self, model: Qwen2_5_VLForConditionalGeneration) -> nn.Module:
        return model.model.language_model

    def lm_head(self, model: Qwen2_5_VLForConditionalGeneration) -> nn.Module:
        return model.lm_head

    def prompt_tokens(self, processor: QwenPromptProcessor) -> PromptTokens:
        """For a square image of the largest side the processor keeps (the recipe's image size)."""
        import math

        from sparsezip.adapters.qwen2_5_vl import pixel_bounds

        return PromptTokens.build(processor, image_size=math.isqrt(pixel_bounds(processor.image_processor)[1]))

    def prefix_positions(self, model: nn.Module, prompts: PromptTokens) -> tuple[torch.Tensor, int]:
        """M-RoPE position ids ``[3, 1, P]`` of the prefix (a square image's merged grid), and the first suffix
        position (one past the largest, as ``get_rope_index`` continues text after an image)."""
        image_id = model.config.image_token_id
        ids = prompts.prefix[None]
        tokens = int((ids == image_id).sum())
        side = round(tokens**0.5)
        if side * side != tokens:
            raise ValueError(f"the recipe's prefix holds {tokens} image tokens, not a square grid")
        grid = torch.tensor([[1, side * MERGE, side * MERGE]])
        positions, _ = model.model.get_rope_index(ids, (ids == image_id).int(), image_grid_thw=grid)
        return positions, int(positions.max()) + 1


QWEN = QwenFamily()
