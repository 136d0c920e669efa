"""A tiny deterministic stand-in for a ``VisionLanguageModel`` (``sparsezip/adapters/api.py``), for testing
the runner, the CLI and benchmarks without a checkpoint.

It really runs the compression method: each image is average-pooled to a ``grid x grid`` patch grid whose
pixels (after a CLS token, or none with ``prefix=0``) form ``VisionContext.hidden``, so ``visual_tokens`` is the
method's own count.
Answers and timings are pure functions of the inputs, so two runs give byte-identical predictions.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Sequence
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import torch
from PIL import Image

from sparsezip.adapters.api import GenerationOutput, ModelGeometry, model_geometry
from sparsezip.context import VisionContext
from sparsezip.methods.base import CompressionMethod


def default_answer(image: Image.Image, question: str) -> str:
    """``"Yes"`` or ``"No"``, a deterministic function of the question text and the image's mean pixel."""
    mean = int(np.asarray(image.resize((4, 4)), dtype=np.int64).sum())
    digest = hashlib.sha256(f"{question}|{mean}".encode()).digest()
    return "Yes" if digest[0] % 2 == 0 else "No"


class FakeVisionLanguageModel:
    """Implements the ``VisionLanguageModel`` protocol with no neural network.

    Args:
        grid: patch grid side (``nominal_visual_tokens = grid**2``, every image's uncompressed count).
        prefix: protected tokens in front of the patches: 1 (a mean "CLS" token, like CLIP) or 0 (none).
        answer: ``(image, question) -> text``; defaults to :func:`default_answer`.
        fail_after: raise ``RuntimeError`` instead of answering once this many samples have been
            generated in total (simulates a run killed part-way).
        checkpoint_path: a checkpoint folder the fake claims to run (its weights' identity then goes into
            ``run.json``, as for a real model); ``None`` = none.
    """

    name = "fake-vlm"

    def __init__(
        self,
        grid: int = 4,
        answer: Callable[[Image.Image, str], str] | None = None,
        fail_after: int | None = None,
        prefix: int = 1,
        checkpoint_path: Path | None = None,
    ) -> None:
        if grid < 1:
            raise ValueError(f"grid must be >= 1, got {grid}")
        if prefix not in (0, 1):
            raise ValueError(f"prefix must be 0 or 1, got {prefix!r}")
        self.grid = grid
        self.prefix = prefix
        self.nominal_visual_tokens = self.num_patches = grid * grid
        self.device = torch.device("cpu")
        self.dtype = torch.float16  # what the KV-cache arithmetic assumes, like a real fp16 checkpoint
        # The HF-style geometry the runner reads for the analytic KV-cache bytes (LLaVA-1.5-7B's numbers).
        self.config = SimpleNamespace(text_config=SimpleNamespace(num_hidden_layers=32, hidden_size=4096,
                                                                  num_attention_heads=32, num_key_value_heads=32))
        self.answer = answer or default_answer
        self.fail_after = fail_after
        self.checkpoint_path = checkpoint_path
        self.generated = 0
        self.calls: list[list[str]] = []  # the prompts of every generate() call, for tests

    def run_settings(self) -> dict:
        """The fake's settings that change its answers (``run.json`` records them)."""
        return {"grid": self.grid, "prefix": self.prefix}

    def chat_prompt(self, question: str) -> str:
        """A minimal chat template: ``USER: <image>\\n{question} ASSISTANT:``."""
        return f"USER: <image>\n{question} ASSISTANT:"

    def _context(self, images: Sequence[Image.Image]) -> VisionContext:
        """``hidden: [B, prefix + grid**2, 3]`` pooled RGB patches after a mean CLS token (``prefix = 1``);
        keys = hidden; ``cls_attn: [B, 1, N]`` = softmax of token brightness."""
        pooled = np.stack([np.asarray(img.resize((self.grid, self.grid)), dtype=np.float32) for img in images])
        patches = torch.from_numpy(pooled).reshape(len(images), self.grid * self.grid, 3) / 255.0
        hidden = torch.cat([patches.mean(dim=1, keepdim=True)] * self.prefix + [patches], dim=1)
        cls_attn = torch.softmax(hidden.sum(dim=-1), dim=-1).unsqueeze(1)
        return VisionContext(hidden=hidden, keys=hidden.clone(), cls_attn=cls_attn, prefix=self.prefix)

    def generate(
        self,
        images: Sequence[Image.Image],
        prompts: Sequence[str],
        *,
        method: CompressionMethod,
        questions: Sequence[str] | None = None,
        max_new_tokens: int = 16,
        num_beams: int = 1,
    ) -> list[GenerationOutput]:
        """One answer per image; ``visual_tokens`` from running ``method`` on the pooled patches."""
        if len(images) != len(prompts):
            raise ValueError(f"{len(images)} images but {len(prompts)} prompts")
        if self.fail_after is not None and self.generated + len(images) > self.fail_after:
            raise RuntimeError(f"fake model: simulated failure after {self.generated} samples")
        self.calls.append(list(prompts))
        lengths = method(self._context(images)).lengths.tolist()
        texts = [self.answer(img, q) for img, q in zip(images, questions or prompts, strict=True)]
        outputs = []
        for text, visual, prompt in zip(texts, lengths, prompts, strict=True):
            new_tokens = min(max_new_tokens, len(text.split()) + 1)  # words + EOS
            timings = {"vision_ms": 1.0, "compress_ms": 0.5, "prefill_ms": 0.01 * visual, "decode_ms": 2.0 * new_tokens}
            timings["total_ms"] = sum(timings.values())
            outputs.append(GenerationOutput(
                text=text, new_tokens=new_tokens, visual_tokens=float(visual),
                uncompressed_visual_tokens=self.nominal_visual_tokens,
                prefill_tokens=len(prompt.split()) + visual, timings=timings, batch_size=len(images),
            ))  # fmt: skip
        self.generated += len(images)
        return outputs


class FakeModelPlan:
    """What ``sparsezip.commands._common.model_plan`` returns, for a :class:`FakeVisionLanguageModel`: lets the
    ``eval`` command run end to end on the fake (monkeypatch ``sparsezip.commands.eval.model_plan``)."""

    def __init__(self, model: FakeVisionLanguageModel) -> None:
        self.model = model
        self.name = model.name

    def geometry(self) -> ModelGeometry:
        return model_geometry(self.model)

    def known_fields(self) -> dict:
        from sparsezip.eval.runner import identity_fields

        m = self.model
        return identity_fields(m.name, m.nominal_visual_tokens, m.checkpoint_path, m.dtype, m.device)

    def load(self) -> FakeVisionLanguageModel:
        return self.model
