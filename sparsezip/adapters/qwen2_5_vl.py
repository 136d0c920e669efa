"""Hugging Face ``Qwen2_5_VLForConditionalGeneration`` (Qwen/Qwen2.5-VL-*) under any vision-side method, batched
(images of any size: each has its own token count and grid), timed by stage.

Pipeline of :meth:`QwenVLM.generate`:

1. ``vision_ms``: the image processor (dynamic resolution: ``image_grid_thw``), the prompts' ``<|image_pad|>``
   expanded to each image's ``t * h * w / merge**2`` tokens and tokenized, and the whole vision tower (window
   attention, merger) on all images at once, its last full-attention block tapped for the substitute attention
   (:mod:`sparsezip.adapters.qwen_tower`).
2. ``compress_ms``: one :class:`~sparsezip.context.VisionContext` per distinct merged grid in the batch (rows =
   the images of that grid): ``hidden`` = the merger's output, which is already in the LLM's hidden space (so the
   projector is the identity and the text query is the question's mean input embedding, unmapped);
   ``prefix = 0`` (no CLS); ``cls_attn`` = the mean attention each token receives (``attention_source =
   "mean_received"``: methods that need attention run only if they declare it, else a ``ValueError`` naming the
   method and the model); ``grid = (h / merge, w / merge)`` for ``pool``.
3. ``prefill_ms``: tokens ordered by their anchor placeholder, the sequence cut to the kept placeholders with their
   original M-RoPE position ids (:mod:`sparsezip.adapters.qwen_sequence`), left-padded, and the LLM's first
   forward. 4. ``decode_ms``: the rest; decoding positions continue the uncompressed numbering.

The processor is not ``Qwen2_5_VLProcessor``: transformers builds it only with a video processor, which needs
torchvision. The adapter uses the checkpoint's tokenizer and image processor directly and expands the image
placeholders as that processor does. ``none`` reproduces the plain model (tokens, logits to 1e-5). In-LLM
methods (stage ``"llm"``) get the uncompressed sequence with its M-RoPE ids and prune inside the Qwen2 decoder
through the generic layer-wise loop (:mod:`sparsezip.adapters.in_llm`; what each position policy means for
M-RoPE: :mod:`sparsezip.adapters.layer_positions`).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import torch

from sparsezip.adapters.api import GenerationOutput
from sparsezip.adapters.common import (
    WrappedModel,
    check_request,
    check_rows,
    eos_ids,
    image_processor_settings,
    image_seed,
    mean_question_embedding,
    stage_timings,
    to_device,
)
from sparsezip.adapters.grouped import RowGroup, compress_grouped
from sparsezip.adapters.in_llm import in_llm_outputs, run_in_llm
from sparsezip.adapters.qwen_sequence import expand_image_runs, keep_mask, raster_order, repack
from sparsezip.adapters.qwen_tower import QwenFeatures, QwenTowerTap
from sparsezip.adapters.vision_stage import generate_on_embeds, vision_stage_outputs
from sparsezip.context import CompressionResult, VisionContext
from sparsezip.data.prompts import IMAGE_PLACEHOLDER
from sparsezip.methods.base import CompressionMethod, LayerPruner
from sparsezip.methods.none import NoCompression
from sparsezip.profiling import StageTimer

if TYPE_CHECKING:
    from PIL import Image
    from transformers import Qwen2_5_VLForConditionalGeneration

    from sparsezip.adapters.layerwise import LayerwiseGeneration

FAMILY = "Qwen2.5-VL"
VISION_BLOCK = "<|vision_start|><|image_pad|><|vision_end|>"
IMAGE_PAD = "<|image_pad|>"
REFERENCE_SIDE = 336  # nominal image: LLaVA-1.5's 336 x 336 view, resized by the checkpoint's own processor rules


@dataclass
class QwenBatch:
    """A batch ready for the LLM (what :meth:`QwenVLM.prepare` returns).

    Attributes:
        input_ids, inputs_embeds, attention_mask: ``[B, S]`` / ``[B, S, D]`` / ``[B, S]``, left-padded, holding
            the kept placeholders (filled with the compressed tokens) and all text.
        position_ids: ``[4, B, S]`` int64: text positions of the packed sequence, then the M-RoPE (t, h, w) ids
            every token had in the uncompressed sequence.
        full_position_ids: ``[3, B, S0]`` the uncompressed sequence's M-RoPE ids (``get_rope_index``).
        keep: ``[B, S0]`` bool, which tokens of the uncompressed sequence were kept.
        result: the stitched :class:`CompressionResult` (one row per image).
        visual, uncompressed: ``[B]`` int64 visual tokens fed / before compression.
        timer, start, compress_end: the call's stage timer and timestamps (seconds).
    """

    input_ids: torch.Tensor
    inputs_embeds: torch.Tensor
    attention_mask: torch.Tensor
    position_ids: torch.Tensor
    full_position_ids: torch.Tensor
    keep: torch.Tensor
    result: CompressionResult
    visual: torch.Tensor
    uncompressed: torch.Tensor
    timer: StageTimer
    start: float
    compress_end: float


def qwen_visual_tokens(min_pixels: int, max_pixels: int, patch_size: int, merge_size: int,
                       side: int = REFERENCE_SIDE) -> int:
    """LLM tokens of a ``side x side`` image under Qwen's resizing rule (transformers' ``smart_resize``)."""
    from transformers.models.qwen2_vl.image_processing_pil_qwen2_vl import smart_resize

    factor = patch_size * merge_size
    height, width = smart_resize(side, side, factor=factor, min_pixels=min_pixels, max_pixels=max_pixels)
    return (height // factor) * (width // factor)


def pixel_bounds(image_processor: object) -> tuple[int, int]:
    """``(min_pixels, max_pixels)`` of a Qwen2-VL image processor (transformers 5 keeps them in ``size`` as
    ``shortest_edge`` / ``longest_edge``; older processors as attributes)."""
    size = getattr(image_processor, "size", None)
    read = (lambda key: size.get(key)) if isinstance(size, dict) else (lambda key: getattr(size, key, None))
    low = read("shortest_edge") or getattr(image_processor, "min_pixels", None)
    high = read("longest_edge") or getattr(image_processor, "max_pixels", None)
    if not (isinstance(low, int) and isinstance(high, int) and 0 < low <= high):
        raise ValueError(f"the image processor has no valid min/max pixels (got {low!r}, {high!r})")
    return low, high


class QwenVLM(WrappedModel):
    """A loaded Qwen2.5-VL (model + tokenizer + image processor) implementing
    :class:`sparsezip.adapters.api.VisionLanguageModel`. Wraps, never modifies, the model.

    ``nominal_visual_tokens`` = the tokens of a 336 x 336 image under the checkpoint's resizing rule (144 for
    Qwen2.5-VL-*: 24 x 24 patches of 14 px merged 2 x 2), the scale relative budgets are mapped by; every output
    reports its own image's ``uncompressed_visual_tokens``. A budget is visual tokens per image, as elsewhere.
    Images smaller than ``patch_size * merge_size`` (28 px) on a side are refused, as Qwen2-VL's own resizing
    code refuses them (transformers would silently upscale).
    """

    def __init__(
        self, model: Qwen2_5_VLForConditionalGeneration, tokenizer: object, image_processor: object, *,
        chat_template: str | None = None, name: str | None = None,
    ) -> None:
        inner = getattr(model, "model", None)
        if not all(hasattr(inner, a) for a in ("visual", "language_model", "get_rope_index")):
            raise ValueError(f"expected a Qwen2_5_VLForConditionalGeneration, got {type(model).__name__}")
        self.model = model.eval()
        self.tokenizer = tokenizer
        self.image_processor = image_processor
        self.chat_template = chat_template or getattr(tokenizer, "chat_template", None)
        self.tap = QwenTowerTap(inner.visual)
        vision = model.config.vision_config
        self.merge = int(vision.spatial_merge_size)
        self.patch_size = int(vision.patch_size)
        self.min_side = self.patch_size * self.merge
        self._check_image_processor(image_processor)
        self.image_token_id = int(model.config.image_token_id)
        if tokenizer.convert_tokens_to_ids(IMAGE_PAD) != self.image_token_id:
            raise ValueError(f"the tokenizer's {IMAGE_PAD} id is not the config's image_token_id {self.image_token_id}")
        self.nominal_visual_tokens = qwen_visual_tokens(*pixel_bounds(image_processor), self.patch_size, self.merge)
        self.prefix = 0  # no CLS
        self.name = name or Path(str(getattr(model, "name_or_path", "") or "qwen2.5-vl")).name or "qwen2.5-vl"
        self.eos = eos_ids(model.generation_config.eos_token_id, tokenizer.eos_token_id)
        pad = tokenizer.pad_token_id
        self.pad_token_id = int(pad if pad is not None else min(self.eos))

    def _check_image_processor(self, image_processor: object) -> None:
        patch = getattr(image_processor, "patch_size", None)
        merge = getattr(image_processor, "merge_size", None)
        if patch != self.patch_size or merge != self.merge:
            raise ValueError(f"the image processor makes {patch} px patches merged {merge} x {merge}; the vision "
                             f"tower takes {self.patch_size} px patches merged {self.merge} x {self.merge}")
        pixel_bounds(image_processor)


    def run_settings(self) -> dict:
        """Every adapter setting that changes the answers, as JSON (recorded in ``run.json``; a resumed run with
        different settings is refused): the image processor (class = backend, resizing bounds, patch and merge
        sizes), the tapped full-attention block and the substitute attention it yields, where compressed tokens
        sit and which position ids they carry, the protected prefix (none), the chat template, the tokenizer's
        padding."""
        import hashlib

        template = self.chat_template or ""
        return {
            **image_processor_settings(self.image_processor),
            "spatial_merge_size": self.merge,
            "patch_size": self.patch_size,
            "attention_block": self.tap.layer_index,
            "attention_source": "mean_received",
            "token_order": "raster order of anchor placeholders (qwen_sequence)",
            "position_ids": "original M-RoPE ids (qwen_sequence)",
            "prefix": self.prefix,
            "chat_template_sha256": hashlib.sha256(template.encode()).hexdigest() if template else None,
            "padding_side": self.tokenizer.padding_side,
            "pad_token_id": self.pad_token_id,
        }

    def chat_prompt(self, question: str) -> str:
        """The checkpoint's chat template applied to one user turn (image + ``question``), generation prompt
        appended; the image appears as Qwen's ``<|vision_start|><|image_pad|><|vision_end|>``."""
        if not self.chat_template:
            raise ValueError(f"model {self.name!r} has no chat template; use prompt_style 'llava_v1'")
        conversation = [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": question}]}]
        return self.tokenizer.apply_chat_template(conversation, chat_template=self.chat_template,
                                                  add_generation_prompt=True, tokenize=False)

    # ------------------------------------------------------------------------------------------ pipeline
    def native_prompts(self, prompts: Sequence[str]) -> list[str]:
        """Each prompt with its one image as Qwen's vision block: the suite's ``<image>`` placeholder is
        replaced by ``<|vision_start|><|image_pad|><|vision_end|>``; a prompt may instead hold that block itself."""
        native = []
        for i, prompt in enumerate(prompts):
            generic, pads = prompt.count(IMAGE_PLACEHOLDER), prompt.count(IMAGE_PAD)
            if generic + pads != 1:
                raise ValueError(f"prompt {i} holds {generic} {IMAGE_PLACEHOLDER} and {pads} {IMAGE_PAD} "
                                 "placeholders; exactly 1 image is needed")
            native.append(prompt.replace(IMAGE_PLACEHOLDER, VISION_BLOCK))
        return native

    def _check(self, images, prompts, method, questions, max_new_tokens=1, num_beams=1) -> None:
        check_request(images, prompts, method, questions, max_new_tokens, num_beams, model_name=self.name,
                      family=FAMILY, min_side=self.min_side)
        for i, image in enumerate(images):
            width, height = image.size
            if max(width, height) > 200 * min(width, height):
                raise ValueError(f"image {i} is {width}x{height} px: Qwen2.5-VL needs an aspect ratio below 200")
        if method.needs_attention and method.stage == "vision":
            if self.tap.attention_unavailable is not None:
                raise ValueError(f"method {method.name!r} needs attention, but model {self.name!r} cannot provide "
                                 f"it: {self.tap.attention_unavailable}")
            if "mean_received" not in type(method).attention_sources:
                raise ValueError(
                    f"method {method.name!r} needs a CLS attention row, which model {self.name!r} ({FAMILY}, no "
                    "CLS token) does not have, and it declares no substitute (attention_sources="
                    f"{type(method).attention_sources})"
                )
        self.native_prompts(prompts)

    def encode(self, images: Sequence[Image.Image], prompts: Sequence[str]) -> dict[str, torch.Tensor]:
        """What ``Qwen2_5_VLProcessor`` would return for ``images`` and (native or ``<image>``) ``prompts``:
        ``input_ids``, ``attention_mask`` (left-padded), ``pixel_values``, ``image_grid_thw``, ``mm_token_type_ids``."""
        pixels = self.image_processor(list(images), return_tensors="pt")
        grid = pixels["image_grid_thw"]
        counts = (grid.prod(dim=1) // self.merge**2).tolist()
        texts = expand_image_runs(self.native_prompts(prompts), counts, IMAGE_PAD)
        batched = len(texts) > 1
        if batched and self.tokenizer.pad_token_id is None:
            raise ValueError(f"model {self.name!r}: its tokenizer has no pad token, so batches need size 1")
        encoded = self.tokenizer(texts, return_tensors="pt", padding=batched)
        ids = encoded["input_ids"]
        return {"input_ids": ids, "attention_mask": encoded["attention_mask"], "pixel_values": pixels["pixel_values"],
                "image_grid_thw": grid, "mm_token_type_ids": (ids == self.image_token_id).int()}

    def _groups(
        self, images: Sequence[Image.Image], features: QwenFeatures, text: torch.Tensor | None
    ) -> list[RowGroup]:
        """One context per distinct merged grid: rows = the images of that grid, in batch order."""
        seeds = torch.tensor([image_seed(image) for image in images], dtype=torch.long)
        starts = torch.cumsum(features.counts, 0) - features.counts
        groups = []
        for shape in torch.unique(features.grids, dim=0):
            rows = torch.nonzero((features.grids == shape).all(dim=1)).flatten()
            n = int(shape[0] * shape[1])
            index = (starts[rows][:, None] + torch.arange(n)[None, :]).to(features.tokens.device)  # [G, n]
            received = None if features.received is None else features.received[:, index].permute(1, 0, 2)
            keys = (features.keys[index] if features.keys is not None
                    else features.tokens.new_zeros(rows.numel(), n, 0))
            groups.append(RowGroup(rows, VisionContext(
                hidden=features.tokens[index], keys=keys, cls_attn=received,
                text_query=None if text is None else text[rows.to(text.device)].to(features.tokens.dtype),
                sample_seeds=seeds[rows], prefix=self.prefix, grid=(int(shape[0]), int(shape[1])),
                attention_source="mean_received",
            )))
        return groups

    @torch.inference_mode()
    def vision_contexts(
        self, images: Sequence[Image.Image], questions: Sequence[str] | None = None
    ) -> list[VisionContext]:
        """What a method sees for ``images`` in :meth:`generate`: one context per distinct grid (images of one
        size share one), with the text query when ``questions`` are given."""
        if questions is not None and len(questions) != len(images):
            raise ValueError(f"got {len(questions)} questions for {len(images)} images")
        pixels = self.image_processor(list(images), return_tensors="pt")
        features = self.tap(to_device(pixels["pixel_values"], self.device, self.model.dtype),
                            to_device(pixels["image_grid_thw"], self.device))
        text = None if questions is None else self.text_query(questions)
        return [group.context for group in self._groups(images, features, text)]

    def vision_context(self, images: Sequence[Image.Image], questions: Sequence[str] | None = None) -> VisionContext:
        """The single context of images that all share one grid (e.g. for calibration); ``ValueError`` otherwise."""
        contexts = self.vision_contexts(images, questions)
        if len(contexts) != 1:
            raise ValueError(f"these {len(images)} images have {len(contexts)} different token grids; use "
                             "vision_contexts (one context per grid)")
        return contexts[0]

    def text_query(self, questions: Sequence[str]) -> torch.Tensor:
        """``[B, D]`` float32: each question's mean LLM input embedding. The merger's output already lives in the
        LLM's input space, so no projector mapping is needed (unlike LLaVA)."""
        return mean_question_embedding(self.tokenizer, self.model.get_input_embeddings(), questions, self.device)

    @torch.inference_mode()
    def prepare(
        self, images: Sequence[Image.Image], prompts: Sequence[str], *, method: CompressionMethod,
        questions: Sequence[str] | None = None,
    ) -> QwenBatch:
        """Vision tower, compression and the LLM's inputs for a batch (steps 1-3 minus the LLM)."""
        self._check(images, prompts, method, questions)
        timer = StageTimer(self.device)
        start = timer.now()
        with timer.stage("vision_ms"):
            inputs = self.encode(images, prompts)
            grid = to_device(inputs["image_grid_thw"], self.device)
            features = self.tap(to_device(inputs["pixel_values"], self.device, self.model.dtype), grid,
                                attention=method.needs_attention)
        with timer.stage("compress_ms"):
            text = self.text_query(questions) if method.needs_text and questions is not None else None
            result = compress_grouped(method, self._groups(images, features, text), len(images))
            check_rows(result, features.counts, features.tokens.shape[1], method)
        compress_end = timer.now()
        ids = to_device(inputs["input_ids"], self.device)
        mask = to_device(inputs["attention_mask"], self.device)
        full_positions, _ = self.model.model.get_rope_index(
            ids, mm_token_type_ids=inputs["mm_token_type_ids"].to(self.device), image_grid_thw=grid,
            attention_mask=mask)
        tokens, anchor = raster_order(result)
        is_image = ids == self.image_token_id
        keep = keep_mask(is_image, mask.bool(), anchor, features.counts.to(self.device))
        new_ids, new_mask, positions = repack(keep, ids, full_positions, self.pad_token_id)
        embeds = self.model.get_input_embeddings()(new_ids)
        real = torch.arange(tokens.shape[1], device=self.device)[None, :] < result.lengths[:, None]
        image_slots = (new_ids == self.image_token_id).unsqueeze(-1)
        embeds = embeds.masked_scatter(image_slots, tokens[real].to(embeds.dtype))
        return QwenBatch(new_ids, embeds, new_mask, positions, full_positions, keep, result,
                         result.lengths.cpu(), features.counts, timer, start, compress_end)

    def generate(
        self, images: Sequence[Image.Image], prompts: Sequence[str], *, method: CompressionMethod,
        questions: Sequence[str] | None = None, max_new_tokens: int = 16, num_beams: int = 1,
    ) -> list[GenerationOutput]:
        """Greedy (or beam) generation for a batch of single-image prompts under ``method``; every sample reports
        the batch's stage times (``batch_size`` says how many shared them)."""
        self._check(images, prompts, method, questions, max_new_tokens, num_beams)
        if method.stage == "llm":
            return self._generate_in_llm(images, prompts, method, max_new_tokens)
        batch = self.prepare(images, prompts, method=method, questions=questions)
        generated, timings = generate_on_embeds(
            self.model, inputs_embeds=batch.inputs_embeds, attention_mask=batch.attention_mask,
            position_ids=batch.position_ids, max_new_tokens=max_new_tokens, num_beams=num_beams,
            pad_token_id=self.pad_token_id, timer=batch.timer, start=batch.start, compress_end=batch.compress_end,
        )
        return vision_stage_outputs(
            generated, tokenizer=self.tokenizer, eos=self.eos, text_config=self.model.config.text_config,
            visual=batch.visual, uncompressed=batch.uncompressed,
            prefill_tokens=batch.attention_mask.sum(1).tolist(), timings=timings,
            extras=[{"k": k} for k in batch.result.k.tolist()],
        )

    def layerwise(
        self, images: Sequence[Image.Image], prompts: Sequence[str], method: LayerPruner, max_new_tokens: int, *,
        record_logits: bool = False,
    ) -> tuple[QwenBatch, LayerwiseGeneration]:
        """An in-LLM method on a batch: the uncompressed sequence (``none``) with its M-RoPE ids, then the
        layer-wise loop over the language model's own decoder layers. ``record_logits`` keeps every step's
        logits (tests)."""
        self._check(images, prompts, method, None, max_new_tokens, 1)
        batch = self.prepare(images, prompts, method=NoCompression())
        run = run_in_llm(
            self.model.model.language_model, self.model.lm_head, method, inputs_embeds=batch.inputs_embeds,
            attention_mask=batch.attention_mask, visual_mask=batch.input_ids == self.image_token_id,
            num_patches=self.nominal_visual_tokens, max_new_tokens=max_new_tokens, eos=self.eos,
            clock=batch.timer.now, rope_positions=batch.position_ids[1:], record_logits=record_logits,
        )
        return batch, run

    def _generate_in_llm(self, images, prompts, method: LayerPruner, max_new_tokens: int) -> list[GenerationOutput]:
        batch, run = self.layerwise(images, prompts, method, max_new_tokens)
        timings = stage_timings(batch.timer, batch.start, batch.compress_end, run.first_token_time, batch.timer.now())
        return in_llm_outputs(run, tokenizer=self.tokenizer, text_config=self.model.config.text_config,
                              uncompressed=batch.uncompressed, attention_mask=batch.attention_mask, timings=timings)
