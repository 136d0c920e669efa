"""Tiny LLaVA-NeXT checkpoints built from config, in the real Hugging Face format.

A genuine ``LlavaNextForConditionalGeneration`` (CLIP-architecture tower with CLS, Llama-architecture LM with
grouped-query attention, the image-newline parameter) with the byte-level tokenizer of the tiny LLaVA, a PIL
``LlavaNextImageProcessorPil`` (anyres: a base view plus tiles from ``image_grid_pinpoints``) and a
``LlavaNextProcessor``, written with ``save_pretrained`` and read back by the adapter with ``from_pretrained``,
exactly like ``llava-hf/llava-v1.6-*``. Nothing is downloaded. Defaults: 32 px crops of 8 px patches (16 patches
per crop), pinpoints 32x64 / 64x32 / 64x64, so an image has 3 or 5 crops (up to 80 patch tokens before
unpadding, plus one image-newline token per row of the stitched tiles).
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

import torch

from sparsezip.data.prompts import IMAGE_PLACEHOLDER
from sparsezip.embedded.models import CHAT_TEMPLATE, build_tokenizer

if TYPE_CHECKING:
    from transformers import LlavaNextForConditionalGeneration, LlavaNextProcessor


@dataclass(frozen=True)
class TinyLlavaNextSpec:
    """Architecture of a tiny LLaVA-NeXT: crop size, patch size, the anyres pinpoints (``(height, width)``,
    multiples of the crop size), a CLIP tower and a Llama LM with ``text_kv_heads`` KV heads (GQA)."""

    crop_size: int = 32
    patch_size: int = 8
    pinpoints: tuple[tuple[int, int], ...] = field(default=((32, 64), (64, 32), (64, 64)))
    vision_hidden: int = 32
    vision_intermediate: int = 64
    vision_layers: int = 3
    vision_heads: int = 2
    text_hidden: int = 64
    text_intermediate: int = 128
    text_layers: int = 4  # in-LLM schedules (SparseVLM: 3 pruning layers) need a few layers
    text_heads: int = 4
    text_kv_heads: int = 2
    vocab_size: int = 512
    max_positions: int = 2048

    def __post_init__(self) -> None:
        if self.crop_size % self.patch_size:
            raise ValueError(f"crop_size {self.crop_size} is not a multiple of patch_size {self.patch_size}")
        bad = [p for p in self.pinpoints if len(p) != 2 or p[0] % self.crop_size or p[1] % self.crop_size]
        if bad or not self.pinpoints:
            raise ValueError(f"pinpoints must be (height, width) multiples of crop_size {self.crop_size}, got {bad}")
        if self.text_heads % self.text_kv_heads:
            raise ValueError(f"text_heads {self.text_heads} is not a multiple of text_kv_heads {self.text_kv_heads}")

    @property
    def patches_per_crop(self) -> int:
        """Patch tokens of one crop (CLS excluded)."""
        return (self.crop_size // self.patch_size) ** 2


def build_tiny_llava_next(
    spec: TinyLlavaNextSpec | None = None, *, seed: int = 0, corpus: Iterable[str] | None = None
) -> tuple[LlavaNextForConditionalGeneration, LlavaNextProcessor]:
    """A randomly initialised tiny LLaVA-NeXT and its processor, deterministic in ``seed`` (the global torch RNG
    is left untouched); the tokenizer is trained on ``corpus`` (default: the tiny LLaVA's default corpus)."""
    from transformers import (
        CLIPVisionConfig,
        GenerationConfig,
        LlamaConfig,
        LlavaNextConfig,
        LlavaNextForConditionalGeneration,
        LlavaNextProcessor,
    )
    from transformers.models.llava_next.image_processing_pil_llava_next import LlavaNextImageProcessorPil

    spec = spec or TinyLlavaNextSpec()
    tokenizer = build_tokenizer(corpus, vocab_size=spec.vocab_size)
    pinpoints = [list(p) for p in spec.pinpoints]
    image_processor = LlavaNextImageProcessorPil(
        size={"shortest_edge": spec.crop_size},
        crop_size={"height": spec.crop_size, "width": spec.crop_size},
        image_grid_pinpoints=pinpoints,
    )
    processor = LlavaNextProcessor(
        image_processor=image_processor, tokenizer=tokenizer, patch_size=spec.patch_size,
        vision_feature_select_strategy="default", num_additional_image_tokens=1, chat_template=CHAT_TEMPLATE,
    )
    config = LlavaNextConfig(
        vision_config=CLIPVisionConfig(
            hidden_size=spec.vision_hidden, intermediate_size=spec.vision_intermediate,
            num_hidden_layers=spec.vision_layers, num_attention_heads=spec.vision_heads,
            image_size=spec.crop_size, patch_size=spec.patch_size, projection_dim=spec.vision_hidden,
            hidden_act="quick_gelu",
        ),
        text_config=LlamaConfig(
            hidden_size=spec.text_hidden, intermediate_size=spec.text_intermediate,
            num_hidden_layers=spec.text_layers, num_attention_heads=spec.text_heads,
            num_key_value_heads=spec.text_kv_heads, vocab_size=len(tokenizer),
            max_position_embeddings=spec.max_positions, bos_token_id=tokenizer.bos_token_id,
            eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id,
        ),
        image_token_id=tokenizer.convert_tokens_to_ids(IMAGE_PLACEHOLDER),
        image_grid_pinpoints=pinpoints,
        vision_feature_layer=-2,
        vision_feature_select_strategy="default",
        image_seq_length=spec.patches_per_crop,
        pad_token_id=tokenizer.pad_token_id,
    )
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = LlavaNextForConditionalGeneration(config)
    model.generation_config = GenerationConfig(
        bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id, do_sample=False,
    )
    return model.eval(), processor


def save_tiny_llava_next(out_dir: str | Path, spec: TinyLlavaNextSpec | None = None, *, seed: int = 0) -> Path:
    """Build a random tiny LLaVA-NeXT and write it (safetensors, config, tokenizer, processor) to ``out_dir``."""
    out = Path(out_dir)
    model, processor = build_tiny_llava_next(spec, seed=seed)
    out.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(out)
    processor.save_pretrained(out)
    return out
