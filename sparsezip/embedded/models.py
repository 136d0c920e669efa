"""Tiny LLaVA checkpoints built from config, in the real Hugging Face format.

A tiny model here is a genuine ``LlavaForConditionalGeneration`` (CLIP-architecture vision tower with a CLS
token, Llama-architecture LM, GELU MLP projector) with its own byte-level BPE tokenizer, a CLIP image
processor and a ``LlavaProcessor``, written with ``save_pretrained`` and read back with ``from_pretrained``:
tests and benchmarks take exactly the loading path of ``llava-hf/llava-1.5-7b-hf``. Nothing is downloaded.

The embedded default model (``fixtures/tiny-llava``) is one of these, trained by ``sparsezip train-tiny``;
:func:`save_tiny_llava` with random weights serves the integration tests.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import torch

from sparsezip.data.prompts import CAPTION_QUESTION, IMAGE_PLACEHOLDER, llava_v1_prompt

if TYPE_CHECKING:
    from transformers import (
        LlavaConfig,
        LlavaForConditionalGeneration,
        LlavaProcessor,
        PreTrainedTokenizerFast,
    )

SPECIAL_TOKENS = ("<unk>", "<s>", "</s>", "<pad>", IMAGE_PLACEHOLDER)

# The llava-hf LLaVA-1.5 chat template, reduced to what single-image chats use.
CHAT_TEMPLATE = (
    "{% for message in messages %}"
    "{% if message['role'] != 'system' %}{{ message['role'].upper() + ': ' }}{% endif %}"
    "{% for content in message['content'] | selectattr('type', 'equalto', 'image') %}{{ '<image>\n' }}{% endfor %}"
    "{% for content in message['content'] | selectattr('type', 'equalto', 'text') %}"
    "{{ content['text'] + ' ' }}{% endfor %}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ 'ASSISTANT:' }}{% endif %}"
)


@dataclass(frozen=True)
class TinyLlavaSpec:
    """Architecture of a tiny (or width-scaled) LLaVA. Defaults: 96 px images, 8 px patches = 12 x 12 = 144
    patch tokens (+ CLS), a 4-layer width-64 tower and a 2-layer width-64 Llama: a few hundred KB."""

    image_size: int = 96
    patch_size: int = 8
    vision_hidden: int = 64
    vision_intermediate: int = 128
    vision_layers: int = 4
    vision_heads: int = 4
    text_hidden: int = 64
    text_intermediate: int = 128
    text_layers: int = 2
    text_heads: int = 4
    vocab_size: int = 512
    max_positions: int = 1024

    def __post_init__(self) -> None:
        if self.image_size % self.patch_size:
            raise ValueError(f"image_size {self.image_size} is not a multiple of patch_size {self.patch_size}")
        for name in ("vision", "text"):
            hidden, heads = getattr(self, f"{name}_hidden"), getattr(self, f"{name}_heads")
            if hidden % heads:
                raise ValueError(f"{name}_hidden {hidden} is not divisible by {name}_heads {heads}")
        if self.vision_layers < 2:
            raise ValueError(f"vision_layers must be >= 2 (LLaVA reads layer -2), got {self.vision_layers}")

    @property
    def num_patches(self) -> int:
        """Patch tokens per image (CLS excluded): what LLaVA feeds the LLM uncompressed."""
        return (self.image_size // self.patch_size) ** 2


# CLIP ViT-L/14-336 vision tower at full size (random weights) with a Llama of hidden 4096 but few layers:
# the shapes that decide latency in LLaVA-1.5-7B, on a CPU budget.
WIDTH_SCALED_LLAVA15 = TinyLlavaSpec(
    image_size=336, patch_size=14, vision_hidden=1024, vision_intermediate=4096, vision_layers=24,
    vision_heads=16, text_hidden=4096, text_intermediate=11008, text_layers=2, text_heads=32, vocab_size=1024,
    max_positions=2048,
)  # vary with dataclasses.replace(WIDTH_SCALED_LLAVA15, text_layers=4)


def default_corpus() -> list[str]:
    """Text the default tokenizer is trained on: the evaluation prompts, typical questions and answers."""
    questions = [
        "Is there a red circle in the image?", "Is there a blue square in the image?",
        "Is the green triangle on the left side of the image?", "Are there two yellow objects in the image?",
        "Is the object in the image red?", "What is the invoice number?", "What is the date on the document?",
        "What is the total amount?", "How many shapes are there?", CAPTION_QUESTION,
    ]
    answers = ["Yes", "No", "yes", "no", "0 1 2 3 4 5 6 7 8 9", "A red circle and a blue square."]
    return [llava_v1_prompt(q) + f" {a}</s>" for q in questions for a in answers]


def build_tokenizer(corpus: Iterable[str] | None = None, vocab_size: int = 512) -> PreTrainedTokenizerFast:
    """A byte-level BPE tokenizer (any text encodes; no unknown tokens) trained on ``corpus``.

    Special tokens ``<unk> <s> </s> <pad> <image>`` get ids 0..4; ``<s>`` is prepended like Llama's;
    padding is on the left, as batched generation needs.
    """
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
    from transformers import PreTrainedTokenizerFast

    if vocab_size < 256 + len(SPECIAL_TOKENS):
        raise ValueError(f"vocab_size {vocab_size} is smaller than the byte alphabet plus special tokens")
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=list(SPECIAL_TOKENS),
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(list(corpus if corpus is not None else default_corpus()), trainer)
    tok.post_processor = processors.TemplateProcessing(
        single="<s> $A", pair="<s> $A <s> $B", special_tokens=[("<s>", tok.token_to_id("<s>"))]
    )
    return PreTrainedTokenizerFast(
        tokenizer_object=tok,
        bos_token="<s>",
        eos_token="</s>",
        unk_token="<unk>",
        pad_token="<pad>",
        extra_special_tokens={"image_token": IMAGE_PLACEHOLDER},
        padding_side="left",
    )


def build_processor(tokenizer: PreTrainedTokenizerFast, spec: TinyLlavaSpec) -> LlavaProcessor:
    """A ``LlavaProcessor`` (CLIP preprocessing at ``spec.image_size``, one ``<image>`` per patch)."""
    from transformers import LlavaProcessor
    from transformers.models.clip.image_processing_pil_clip import CLIPImageProcessorPil

    image_processor = CLIPImageProcessorPil(
        size={"shortest_edge": spec.image_size},
        crop_size={"height": spec.image_size, "width": spec.image_size},
    )
    return LlavaProcessor(
        image_processor=image_processor,
        tokenizer=tokenizer,
        patch_size=spec.patch_size,
        vision_feature_select_strategy="default",
        num_additional_image_tokens=1,  # the CLS token, dropped again by the "default" strategy
        chat_template=CHAT_TEMPLATE,
    )


def build_config(spec: TinyLlavaSpec, tokenizer: PreTrainedTokenizerFast) -> LlavaConfig:
    """A ``LlavaConfig`` laid out like llava-1.5-7b-hf (layer -2 features, CLS dropped, GELU projector)."""
    from transformers import CLIPVisionConfig, LlamaConfig, LlavaConfig

    vision = CLIPVisionConfig(
        hidden_size=spec.vision_hidden,
        intermediate_size=spec.vision_intermediate,
        num_hidden_layers=spec.vision_layers,
        num_attention_heads=spec.vision_heads,
        image_size=spec.image_size,
        patch_size=spec.patch_size,
        projection_dim=spec.vision_hidden,
        hidden_act="quick_gelu",
    )
    text = LlamaConfig(
        hidden_size=spec.text_hidden,
        intermediate_size=spec.text_intermediate,
        num_hidden_layers=spec.text_layers,
        num_attention_heads=spec.text_heads,
        num_key_value_heads=spec.text_heads,
        vocab_size=len(tokenizer),
        max_position_embeddings=spec.max_positions,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
    )
    return LlavaConfig(
        vision_config=vision,
        text_config=text,
        image_token_id=tokenizer.convert_tokens_to_ids(IMAGE_PLACEHOLDER),
        vision_feature_layer=-2,
        vision_feature_select_strategy="default",
        projector_hidden_act="gelu",
        pad_token_id=tokenizer.pad_token_id,
    )


def build_tiny_llava(
    spec: TinyLlavaSpec | None = None,
    *,
    seed: int = 0,
    corpus: Iterable[str] | None = None,
) -> tuple[LlavaForConditionalGeneration, LlavaProcessor]:
    """A randomly initialised tiny LLaVA and its processor, deterministic in ``seed``.

    The global torch RNG is left untouched (initialisation runs under ``torch.random.fork_rng``).
    """
    from transformers import GenerationConfig, LlavaForConditionalGeneration

    spec = spec or TinyLlavaSpec()
    tokenizer = build_tokenizer(corpus, spec.vocab_size)
    processor = build_processor(tokenizer, spec)
    config = build_config(spec, tokenizer)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = LlavaForConditionalGeneration(config)
    model.generation_config = GenerationConfig(
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
        do_sample=False,
    )
    return model.eval(), processor


def save_tiny_llava(
    out_dir: str | Path,
    spec: TinyLlavaSpec | None = None,
    *,
    seed: int = 0,
    corpus: Iterable[str] | None = None,
) -> Path:
    """Build a random tiny LLaVA and write it (safetensors, config, tokenizer, processor) to ``out_dir``."""
    out = Path(out_dir)
    model, processor = build_tiny_llava(spec, seed=seed, corpus=corpus)
    out.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(out)
    processor.save_pretrained(out)
    return out

