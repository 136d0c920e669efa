"""What the evaluation runner needs from a model integration: the one seam between ``runner.py`` and the
adapters (``adapters/llava.py``; found by ``config.model_type`` through ``adapters/registry.py``), so either side
can change without the other.

Visual token counts: a model has a *nominal* count per image (``nominal_visual_tokens``: 576 for LLaVA-1.5), the
scale relative budgets are mapped by; the count an image really has uncompressed may differ per image (LLaVA-NeXT's
anyres tiles depend on the image size), so every output states its own (``uncompressed_visual_tokens``).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from typing import TYPE_CHECKING, Protocol

if TYPE_CHECKING:
    import torch
    from PIL import Image

    from sparsezip.methods.base import CompressionMethod

# The per-sample stage names, in pipeline order (evaluation.md, "Timing").
STAGES: tuple[str, ...] = ("vision_ms", "compress_ms", "prefill_ms", "decode_ms", "total_ms")


@dataclass
class GenerationOutput:
    """One sample's answer plus what it cost.

    Attributes:
        text: the raw generated text (special tokens stripped), never post-processed.
        new_tokens: tokens generated (EOS included if produced).
        visual_tokens: visual tokens fed to the LLM for this image; for in-LLM methods (stage ``"llm"``)
            the layer-averaged equivalent.
        uncompressed_visual_tokens: the visual tokens this image would have fed the LLM uncompressed (what
            ``none`` feeds; per image, since it may depend on the image's size); ``None`` = not reported
            (consumers then fall back to the model's ``nominal_visual_tokens``).
        prefill_tokens: length of the prefill sequence for this sample (text + visual, padding excluded).
        timings: milliseconds per stage, keys = ``STAGES``. In a batch, every sample of the batch reports
            the batch's stage times (the batch is one forward); ``batch_size`` says how many shared them.
        visual_tokens_per_layer: for in-LLM methods, visual tokens seen by each decoder layer; else ``None``.
        batch_size: how many samples shared the forward passes that ``timings`` measured.
    """

    text: str
    new_tokens: int
    visual_tokens: float
    prefill_tokens: int
    timings: dict[str, float]
    visual_tokens_per_layer: list[int] | None = None
    batch_size: int = 1
    extra: dict = field(default_factory=dict)
    uncompressed_visual_tokens: int | None = None

    def to_json(self) -> dict:
        """A JSON-friendly dict of every field."""
        return asdict(self)


@dataclass(frozen=True)
class ModelGeometry:
    """The numbers a compression method's configuration is checked against before a run starts (read from a
    checkpoint's ``config.json`` before loading, or from a loaded model).

    Attributes:
        visual_tokens: uncompressed visual tokens of a nominal image (``nominal_visual_tokens``; 576 for LLaVA-1.5).
        prefix: protected tokens in front of the patches in ``VisionContext.hidden`` (CLIP's CLS: 1; none: 0).
        llm_layers: decoder layers of the language model (in-LLM methods schedule by them); ``None`` = unknown.
        views: rows a vision-side method sees per nominal image, each of ``visual_tokens // views`` patches with
            the budget spread equally (LLaVA-NeXT: base view + tiles, 5 for llava-v1.6); 1 elsewhere.
    """

    visual_tokens: int
    prefix: int = 1
    llm_layers: int | None = None
    views: int = 1


class VisionLanguageModel(Protocol):
    """A loaded model that can answer image questions under any registered compression method.

    Optional members the runner reads when present (``getattr``), so a run folder records what decides the
    answers: ``checkpoint_path`` (the checkpoint folder whose weights it runs; their content identity goes into
    ``run.json``), ``dtype``, ``prefix`` (protected tokens, default 1) and ``run_settings()`` (a JSON dict of
    every adapter setting that changes answers: processor, padding, feature layer ...; a resumed run whose
    settings differ is refused, so a new setting only has to be added there).
    """

    name: str
    device: torch.device
    # Uncompressed visual tokens of a nominal image (576 for LLaVA-1.5, where every image has exactly this many):
    # the scale of relative budgets. Per-image counts: GenerationOutput.uncompressed_visual_tokens.
    nominal_visual_tokens: int

    def chat_prompt(self, question: str) -> str:
        """The checkpoint's own chat template applied to one user turn (one ``<image>`` + ``question``),
        generation prompt appended. Used by ``prompt_style: hf_chat``; ``llava_v1`` lives in data/prompts.py."""
        ...

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
        """Greedy (or beam) generation for a batch of single-image prompts.

        ``prompts[i]`` holds exactly one ``<image>`` placeholder for ``images[i]``; ``questions[i]`` is the
        bare question text used by text-aware methods (``None`` = no text awareness).
        """
        ...


def model_geometry(model: VisionLanguageModel) -> ModelGeometry:
    """A loaded model's :class:`ModelGeometry`: its ``nominal_visual_tokens``, its ``prefix`` (default 1) and, when
    it exposes an HF-style ``config.text_config``, the LLM's ``num_hidden_layers``."""
    text_config = getattr(getattr(model, "config", None), "text_config", None)
    layers = getattr(text_config, "num_hidden_layers", None)
    return ModelGeometry(
        visual_tokens=int(model.nominal_visual_tokens),
        prefix=int(getattr(model, "prefix", 1)),
        llm_layers=layers if isinstance(layers, int) else None,
        views=int(getattr(model, "views_per_image", 1)),
    )
