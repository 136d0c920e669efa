"""Tiny Qwen2.5-VL checkpoints built from config, in the real Hugging Face format.

A genuine ``Qwen2_5_VLForConditionalGeneration``: a windowed-attention vision tower (2D RoPE, no CLS, full
attention in the blocks of ``fullatt_block_indexes``, the last one among them), the 2 x 2 patch merger, and a
Qwen2 LM with M-RoPE and grouped-query attention; a byte-level BPE tokenizer carrying Qwen's special tokens
(``<|im_start|>``, ``<|vision_start|>``, ``<|image_pad|>``, ...) and chat template, and a PIL
``Qwen2VLImageProcessorPil`` (dynamic resolution between ``min_pixels`` and ``max_pixels``). Written with
``save_pretrained`` and read back with ``from_pretrained`` like ``Qwen/Qwen2.5-VL-*``; nothing is downloaded.

Defaults: 8 px patches merged 2 x 2 (16 px per LLM token), images resized to 32..64 px a side, so an image gives
4 to 16 visual tokens on a grid of its own aspect; windows of 2 x 2 merged tokens.

There is no ``Qwen2_5_VLProcessor`` in the checkpoint: transformers builds that processor only with a video
processor, which needs torchvision. Images need just the tokenizer and the image processor, which is what the
adapter loads (:mod:`sparsezip.adapters.qwen2_5_vl`); a real checkpoint's processor files are read the same way.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import torch

from sparsezip.embedded.models import default_corpus

if TYPE_CHECKING:
    from transformers import PreTrainedTokenizerFast, Qwen2_5_VLForConditionalGeneration
    from transformers.models.qwen2_vl.image_processing_pil_qwen2_vl import Qwen2VLImageProcessorPil

QWEN_SPECIAL_TOKENS = (
    "<|endoftext|>", "<|im_start|>", "<|im_end|>", "<|vision_start|>", "<|vision_end|>", "<|image_pad|>",
    "<|video_pad|>",
)
VISION_BLOCK = "<|vision_start|><|image_pad|><|vision_end|>"

# Qwen2.5-VL-Instruct's chat template, reduced to what single-image chats use.
QWEN_CHAT_TEMPLATE = (
    "{% if messages[0]['role'] != 'system' %}<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n{% endif %}"
    "{% for message in messages %}<|im_start|>{{ message['role'] }}\n"
    "{% if message['content'] is string %}{{ message['content'] }}{% else %}"
    "{% for content in message['content'] %}"
    "{% if content['type'] == 'image' %}<|vision_start|><|image_pad|><|vision_end|>"
    "{% elif content['type'] == 'text' %}{{ content['text'] }}{% endif %}"
    "{% endfor %}{% endif %}<|im_end|>\n{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)


@dataclass(frozen=True)
class TinyQwenSpec:
    """Architecture of a tiny Qwen2.5-VL. ``min_side`` / ``max_side`` bound the resized image (the processor's
    ``min_pixels = min_side**2``, ``max_pixels = max_side**2``); ``window_size`` is in pixels, as in the config."""

    patch_size: int = 8
    merge_size: int = 2
    min_side: int = 32
    max_side: int = 64
    window_size: int = 32
    vision_hidden: int = 32
    vision_intermediate: int = 64
    vision_depth: int = 4
    vision_heads: int = 2
    fullatt_blocks: tuple[int, ...] = (1, 3)
    text_hidden: int = 64
    text_intermediate: int = 128
    text_layers: int = 4  # in-LLM schedules (SparseVLM: 3 pruning layers) need a few layers
    text_heads: int = 4
    text_kv_heads: int = 2
    mrope_section: tuple[int, int, int] = (2, 3, 3)
    vocab_size: int = 512
    max_positions: int = 2048

    def __post_init__(self) -> None:
        factor = self.patch_size * self.merge_size
        if self.min_side % factor or self.max_side % factor or self.min_side > self.max_side:
            raise ValueError(f"min_side {self.min_side} <= max_side {self.max_side} must be multiples of {factor}")
        head_dim = self.text_hidden // self.text_heads
        if 2 * sum(self.mrope_section) != head_dim:
            raise ValueError(f"mrope_section {self.mrope_section} must sum to head_dim / 2 = {head_dim // 2}")
        if not self.fullatt_blocks or max(self.fullatt_blocks) >= self.vision_depth:
            raise ValueError(f"fullatt_blocks {self.fullatt_blocks} must name blocks of the {self.vision_depth}")


def build_qwen_tokenizer(corpus: Iterable[str] | None = None, vocab_size: int = 512) -> PreTrainedTokenizerFast:
    """A byte-level BPE tokenizer with Qwen2.5-VL's special tokens (ids 0..6, ``<|endoftext|>`` = pad,
    ``<|im_end|>`` = EOS), its chat template, left padding; no BOS (Qwen adds none)."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size, special_tokens=list(QWEN_SPECIAL_TOKENS),
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False,
    )
    text = list(corpus if corpus is not None else default_corpus())
    tok.train_from_iterator([*text, "system user assistant You are a helpful assistant."], trainer)
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=tok, eos_token="<|im_end|>", pad_token="<|endoftext|>", padding_side="left",
        extra_special_tokens={"image_token": "<|image_pad|>", "video_token": "<|video_pad|>",
                              "vision_start_token": "<|vision_start|>", "vision_end_token": "<|vision_end|>"},
    )
    tokenizer.chat_template = QWEN_CHAT_TEMPLATE
    return tokenizer


def build_tiny_qwen(
    spec: TinyQwenSpec | None = None, *, seed: int = 0, corpus: Iterable[str] | None = None
) -> tuple[Qwen2_5_VLForConditionalGeneration, PreTrainedTokenizerFast, Qwen2VLImageProcessorPil]:
    """A randomly initialised tiny Qwen2.5-VL, its tokenizer (trained on ``corpus``, default: the tiny LLaVA's
    default corpus) and image processor, deterministic in ``seed`` (the global torch RNG is left untouched)."""
    from transformers import GenerationConfig, Qwen2_5_VLConfig, Qwen2_5_VLForConditionalGeneration
    from transformers.models.qwen2_vl.image_processing_pil_qwen2_vl import Qwen2VLImageProcessorPil

    spec = spec or TinyQwenSpec()
    tokenizer = build_qwen_tokenizer(corpus, vocab_size=spec.vocab_size)
    image_processor = Qwen2VLImageProcessorPil(
        min_pixels=spec.min_side**2, max_pixels=spec.max_side**2, patch_size=spec.patch_size,
        merge_size=spec.merge_size, temporal_patch_size=2,
    )
    ids = {name: tokenizer.convert_tokens_to_ids(token) for name, token in (
        ("image", "<|image_pad|>"), ("video", "<|video_pad|>"), ("start", "<|vision_start|>"),
        ("end", "<|vision_end|>"))}
    config = Qwen2_5_VLConfig(
        text_config={
            "hidden_size": spec.text_hidden, "intermediate_size": spec.text_intermediate,
            "num_hidden_layers": spec.text_layers, "num_attention_heads": spec.text_heads,
            "num_key_value_heads": spec.text_kv_heads, "vocab_size": len(tokenizer),
            "max_position_embeddings": spec.max_positions,
            "rope_parameters": {"rope_type": "default", "rope_theta": 10000.0,
                                "mrope_section": list(spec.mrope_section)},
            "eos_token_id": tokenizer.eos_token_id, "pad_token_id": tokenizer.pad_token_id, "bos_token_id": None,
        },
        vision_config={
            "depth": spec.vision_depth, "hidden_size": spec.vision_hidden,
            "intermediate_size": spec.vision_intermediate, "num_heads": spec.vision_heads,
            "out_hidden_size": spec.text_hidden, "patch_size": spec.patch_size,
            "spatial_merge_size": spec.merge_size, "temporal_patch_size": 2, "window_size": spec.window_size,
            "fullatt_block_indexes": list(spec.fullatt_blocks), "in_channels": 3,
        },
        image_token_id=ids["image"], video_token_id=ids["video"], vision_start_token_id=ids["start"],
        vision_end_token_id=ids["end"], bos_token_id=None, eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
    )
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = Qwen2_5_VLForConditionalGeneration(config)
    model.generation_config = GenerationConfig(
        eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id, do_sample=False,
    )
    return model.eval(), tokenizer, image_processor


def save_tiny_qwen(out_dir: str | Path, spec: TinyQwenSpec | None = None, *, seed: int = 0) -> Path:
    """Build a random tiny Qwen2.5-VL and write it (safetensors, config, tokenizer with chat template, image
    processor) to ``out_dir``."""
    out = Path(out_dir)
    model, tokenizer, image_processor = build_tiny_qwen(spec, seed=seed)
    out.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(out)
    tokenizer.save_pretrained(out)
    image_processor.save_pretrained(out)
    return out
