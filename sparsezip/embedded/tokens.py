"""Token ids of the embedded models' prompts, split where LLaVA inserts the image, and pixel preprocessing:
what the training recipe and the standalone probe share."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np
import torch

from sparsezip.data.prompts import build_prompt

if TYPE_CHECKING:
    from transformers import LlavaProcessor

ANSWER_TEXT = {True: " Yes", False: " No"}


def pixel_values(processor: LlavaProcessor, pixels: np.ndarray) -> torch.Tensor:
    """``pixels: [B, S, S, 3]`` uint8 -> ``[B, 3, S, S]`` float32 through the model's own image processor."""
    return processor.image_processor(list(pixels), return_tensors="pt")["pixel_values"]


@dataclass(frozen=True)
class PromptTokens:
    """Token ids of the evaluation prompts, split after the image's last token.

    ``prefix`` = ``<s>`` + system prompt + ``USER: `` + one ``image_token`` per visual token (identical for every
    question); ``suffix(question, answer)`` = the rest of the prompt, the answer and the EOS token.
    ``image_text`` is the image in the prompt text as the tokenizer reads it (Qwen: its vision block).
    """

    prefix: torch.Tensor
    image_positions: torch.Tensor
    tokenizer: object
    image_token: str = "<image>"
    image_text: str = "<image>"

    @classmethod
    def build(cls, processor: LlavaProcessor, dataset: str = "pope", image_size: int | None = None) -> PromptTokens:
        """From the processor's own expansion of ``<image>`` for an ``image_size`` px square image (default: the
        image processor's crop size, LLaVA's only size)."""
        tok = processor.tokenizer
        ids = _prompt_ids(processor, build_prompt(dataset, "?"), image_size)
        image_id = tok.convert_tokens_to_ids(processor.image_token)
        last = int((ids == image_id).nonzero().max())
        prefix = ids[: last + 1]
        # How the tokenizer sees the prompt's one image: LLaVA's ``<image>``; Qwen's vision block.
        image_text = getattr(processor, "image_text", processor.image_token)
        return cls(prefix, (prefix == image_id).nonzero().flatten(), tok, processor.image_token, image_text)

    def suffix(self, dataset: str, question: str, answer: bool | str | None) -> tuple[list[int], int]:
        """Token ids after the image for ``question`` (plus answer and ``</s>`` if ``answer`` is given: a
        yes/no bool, or the answer text as generated, e.g. ``" 4821"``), and how many of them are the prompt."""
        text = build_prompt(dataset, question).replace("<image>", self.image_text)
        full = self.tokenizer(text, add_special_tokens=True).input_ids
        image_id = self.tokenizer.convert_tokens_to_ids(self.image_token)
        prompt = full[full.index(image_id) + 1:]
        if answer is None:
            return prompt, len(prompt)
        text = ANSWER_TEXT[answer] if isinstance(answer, bool) else answer
        answer_ids = self.tokenizer(text, add_special_tokens=False).input_ids
        return prompt + answer_ids + [self.tokenizer.eos_token_id], len(prompt)


def _prompt_ids(processor: LlavaProcessor, prompt: str, size: int | None = None) -> torch.Tensor:
    """Token ids of ``prompt`` with the image placeholder expanded for a ``size`` px square image (default: the
    image processor's crop size), exactly as the processor does."""
    from PIL import Image

    size = size or processor.image_processor.crop_size["height"]
    blank = Image.new("RGB", (size, size))
    return processor(images=[blank], text=[prompt], return_tensors="pt")["input_ids"][0]
