"""Hugging Face ``LlavaForConditionalGeneration`` integration: any registered method, batched, timed by stage.

Pipeline of :meth:`LlavaVLM.generate` for a batch of single-image prompts (llava-hf/llava-1.5-7b-hf layout):

1. ``vision_ms``: image preprocessing (the processor's image processor), tokenization as LLaVA's own code
   does it (:mod:`sparsezip.adapters.prompt_ids`: each ``<image>`` becomes ``num_patches`` placeholders) and
   the vision tower up to the feature layer, whose CLS attention row and head-averaged keys come from hooks
   (:mod:`sparsezip.adapters.vision_tower`).
2. ``compress_ms``: the text query (``needs_text`` methods with ``questions``: the mean LLM input embedding of
   the question mapped into vision space by the projector's transposed weights, methods.md 1.2) and the
   method's ``compress``.
3. ``prefill_ms``: the projector on the compressed tokens, each prompt's placeholder run shortened to its
   image's token count (left-padded batch, mask rebuilt), the projected tokens scattered into
   ``inputs_embeds``, and the LLM's first forward up to the first token (timestamped by a no-op logits
   processor inside ``generate``).
4. ``decode_ms``: the remaining tokens; ``total_ms``: the whole call.

Scattering into ``inputs_embeds`` and passing ``mm_encoder_outputs`` were both checked to give the plain model's
tokens and bit-identical logits when nothing is dropped (transformers 5.24); the adapter keeps the scatter, which
does not depend on the newer ``mm_encoder_outputs`` API. In-LLM methods (``stage = "llm"``: a
:class:`~sparsezip.methods.base.LayerPruner`, e.g. SparseVLM) run batched through the generic layer-wise greedy
loop (:mod:`sparsezip.adapters.layerwise`) instead of ``generate``.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

import torch

from sparsezip.adapters.api import GenerationOutput
from sparsezip.adapters.common import (
    WrappedModel,
    check_request,
    eos_ids,
    image_processor_settings,
    image_seed,
    mean_question_embedding,
    method_budget,
    stage_timings,
    to_device,
)
from sparsezip.adapters.in_llm import in_llm_outputs, run_in_llm
from sparsezip.adapters.llava_loader import llava_visual_tokens, load_llava
from sparsezip.adapters.placeholders import shorten_image_runs
from sparsezip.adapters.prompt_ids import encode_prompts
from sparsezip.adapters.vision_stage import generate_on_embeds, vision_stage_outputs
from sparsezip.adapters.vision_tower import FeatureLayerTap, TowerFeatures
from sparsezip.context import CompressionResult, VisionContext
from sparsezip.imageprep import aspect_mode, prepare_images
from sparsezip.methods.base import CompressionMethod
from sparsezip.profiling import StageTimer

# load_llava lives with LLaVA's registry entry, image_seed with the other adapters' shared helpers; both are
# re-exported here, where users have always imported them.
__all__ = ["LlavaVLM", "PreparedBatch", "image_seed", "load_llava"]

if TYPE_CHECKING:
    from PIL import Image
    from transformers import LlavaForConditionalGeneration, ProcessorMixin


@dataclass
class PreparedBatch:
    """A batch ready for the LLM: what :meth:`LlavaVLM.prepare` hands to generation.

    Attributes:
        input_ids: ``[B, S]`` the prompts' ids with each image's placeholder run shortened, left-padded.
        inputs_embeds: ``[B, S, D]`` text embeddings with the projected visual tokens scattered in, left-padded.
        attention_mask: ``[B, S]`` 1 = real token.
        image_mask: ``[B, S]`` True at the visual token positions.
        result: the method's :class:`CompressionResult` (pre-projector).
        timer: the call's :class:`StageTimer` (``vision_ms`` and ``compress_ms`` filled in).
        start: the call's start timestamp (``timer.now()`` seconds).
        compress_end: timestamp when compression finished (prefill is measured from here).
        uncompressed: ``[B]`` int64, each image's visual tokens before compression (its placeholder run as the
            processor expanded it).
        visual_tokens, dominant, prefill_tokens: per image, on the host (read from the device once per batch):
            the method's token count and ``k``, and the prompt's real tokens after shortening.
    """

    input_ids: torch.Tensor
    inputs_embeds: torch.Tensor
    attention_mask: torch.Tensor
    image_mask: torch.Tensor
    result: CompressionResult
    timer: StageTimer
    start: float
    compress_end: float
    uncompressed: torch.Tensor
    visual_tokens: list[int] = field(default_factory=list)
    dominant: list[int] = field(default_factory=list)
    prefill_tokens: list[int] = field(default_factory=list)


class LlavaVLM(WrappedModel):
    """A loaded LLaVA (``LlavaForConditionalGeneration`` + its processor) implementing
    :class:`sparsezip.adapters.api.VisionLanguageModel`. Wraps, never modifies, the model: hooks live only for
    the duration of a call and nothing is patched, so other models in the process are unaffected.

    Supported layout: a CLIP-style vision tower, one integer ``vision_feature_layer`` and
    ``vision_feature_select_strategy == "default"`` (CLS at index 0, dropped by LLaVA), as in LLaVA-1.5. If the
    feature layer's attention module cannot be read (no ``q_proj``/``k_proj``), methods that need attention are
    refused with a ``ValueError`` and the others get ``VisionContext.keys`` as an empty ``[B, N, 0]`` tensor.

    ``pad`` (default on, as LLaVA-1.5 evaluates): every image is padded to a square of the processor's mean
    colour before the processor (:func:`sparsezip.imageprep.prepare_images`), in generation and in
    :meth:`vision_context` alike; ``pad=False`` leaves the processor's center crop. ``image_aspect_ratio``
    records which (``"pad"`` / ``"crop"``).
    """

    def __init__(
        self,
        model: LlavaForConditionalGeneration,
        processor: ProcessorMixin,
        *,
        name: str | None = None,
        pad: bool = True,
    ) -> None:
        inner = getattr(model, "model", None)
        if not all(hasattr(inner, a) for a in ("vision_tower", "multi_modal_projector", "language_model")):
            raise ValueError(f"expected a LlavaForConditionalGeneration, got {type(model).__name__}")
        config = model.config
        if config.vision_feature_select_strategy != "default":
            raise ValueError(
                "only vision_feature_select_strategy='default' (CLS dropped) is supported, got "
                f"{config.vision_feature_select_strategy!r}"
            )
        self.model = model.eval()
        self.processor = processor
        self.tokenizer = processor.tokenizer
        self.tap = FeatureLayerTap(inner.vision_tower, config.vision_feature_layer)
        self.image_token = getattr(processor, "image_token", None) or "<image>"
        self.image_token_id = int(config.image_token_id)
        self.nominal_visual_tokens = llava_visual_tokens(config.to_dict())
        self.prefix = 1  # CLIP's CLS, dropped by the "default" feature selection
        self.name = name or Path(str(getattr(model, "name_or_path", "") or "llava")).name or "llava"
        self.pad = bool(pad)
        self.image_aspect_ratio = aspect_mode(self.pad)
        # Re-packed batches pad with this id (masked out, so any id works); without a pad token, EOS.
        self.eos = eos_ids(model.generation_config.eos_token_id, self.tokenizer.eos_token_id)
        pad_id = self.tokenizer.pad_token_id
        self.pad_token_id = int(pad_id if pad_id is not None else min(self.eos))

    @property
    def num_patches(self) -> int:
        """Patch tokens per image: every LLaVA-1.5 image has ``nominal_visual_tokens`` (576)."""
        return self.nominal_visual_tokens


    def run_settings(self) -> dict:
        """Every adapter setting that changes the answers, as JSON (recorded in ``run.json``; a resumed run with
        different settings is refused): the image processor's class (its backend) and settings, the feature
        layer and selection, the protected prefix, the tokenizer's padding. A new setting belongs here."""
        config = self.model.config
        return {
            **image_processor_settings(self.processor.image_processor),
            "vision_feature_layer": config.vision_feature_layer,
            "vision_feature_select_strategy": config.vision_feature_select_strategy,
            "prefix": self.prefix,
            # How images reach the processor: LLaVA's image_aspect_ratio, "pad" (default) or "crop".
            "image_aspect_ratio": self.image_aspect_ratio,
            "padding_side": self.tokenizer.padding_side,
            "pad_token_id": self.pad_token_id,
        }

    def chat_prompt(self, question: str) -> str:
        """The checkpoint's chat template applied to one user turn (``<image>`` + ``question``), generation
        prompt appended."""
        if not getattr(self.processor, "chat_template", None):
            raise ValueError(f"model {self.name!r} has no chat template; use prompt_style 'llava_v1'")
        conversation = [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": question}]}]
        return self.processor.apply_chat_template(conversation, add_generation_prompt=True)

    # ------------------------------------------------------------------------------------------ validation
    def _validate(
        self,
        images: Sequence[Image.Image],
        prompts: Sequence[str],
        method: CompressionMethod,
        questions: Sequence[str] | None,
        max_new_tokens: int,
        num_beams: int,
    ) -> None:
        check_request(images, prompts, method, questions, max_new_tokens, num_beams, model_name=self.name,
                      family="LLaVA-1.5", min_side=1)
        for i, prompt in enumerate(prompts):
            found = prompt.count(self.image_token)
            if found != 1:
                raise ValueError(f"prompt {i} holds {found} {self.image_token} placeholders; exactly 1 is needed")
        if method.needs_attention and self.tap.attention_unavailable is not None:
            raise ValueError(
                f"method {method.name!r} needs the CLS attention row, but this model's vision tower cannot provide "
                f"it: {self.tap.attention_unavailable}"
            )
        budget = method_budget(method)
        if method.stage == "vision" and budget is not None and budget > self.nominal_visual_tokens:
            raise ValueError(
                f"budget {budget} of method {method.name!r} exceeds the {self.nominal_visual_tokens} visual tokens "
                f"model {self.name!r} produces per image"
            )

    def _check_result(
        self, result: CompressionResult, uncompressed: torch.Tensor, channels: int, method: CompressionMethod
    ) -> tuple[list[int], list[int]]:
        """``result`` must hold ``[B, T, C]`` tokens and, per image, 1 to ``uncompressed[b]`` of them. Returns the
        per-image token counts and ``k`` on the host: the batch's one read of the method's result."""
        batch = uncompressed.shape[0]
        if result.tokens.shape[0] != batch or result.tokens.shape[2] != channels:
            raise ValueError(
                f"method {method.name!r} returned tokens {tuple(result.tokens.shape)}; expected [B={batch}, T, C={channels}]"
            )
        lengths, dominant = torch.stack([result.lengths, result.k.to(result.lengths.device)]).tolist()
        limits = uncompressed.tolist()
        width = result.tokens.shape[1]
        if any(not 1 <= n <= min(width, limit) for n, limit in zip(lengths, limits, strict=True)):
            raise ValueError(
                f"method {method.name!r} returned {lengths} tokens per image; each must be in "
                f"[1, that image's {limits} visual tokens] and fit its [B, T={width}, C] tokens"
            )
        return lengths, dominant

    # ------------------------------------------------------------------------------------------ pipeline
    def text_query(self, questions: Sequence[str]) -> torch.Tensor:
        """The question mapped into vision hidden space: ``[B, C]`` float32.

        Mean of the LLM input embeddings of each question's tokens (no special tokens), ``t [B, D]``, then
        ``W1^T (W2^T t)`` with the projector's two weight matrices (``sparsezip.scoring.text_to_vision_space``).
        """
        from sparsezip.scoring import text_to_vision_space

        mean = mean_question_embedding(self.tokenizer, self.model.get_input_embeddings(), questions, self.device)
        projector = self.model.model.multi_modal_projector
        return text_to_vision_space(mean, projector.linear_1.weight, projector.linear_2.weight)

    def _context(
        self, images: Sequence[Image.Image], features: TowerFeatures, questions: Sequence[str] | None,
        seeds: Sequence[int] | None = None,
    ) -> VisionContext:
        """The method's input from the feature layer, with the text query when ``questions`` are given; ``seeds``
        = :func:`image_seed` of each image if already computed."""
        hidden = features.hidden
        text_query = None if questions is None else self.text_query(questions).to(hidden.dtype)
        keys = features.keys if features.keys is not None else hidden.new_zeros(*hidden.shape[:2], 0)
        seeds = torch.tensor([image_seed(image) for image in images] if seeds is None else seeds, dtype=torch.long)
        return VisionContext(
            hidden=hidden, keys=keys, cls_attn=features.cls_attn, text_query=text_query, sample_seeds=seeds,
            prefix=self.prefix,
        )

    @torch.inference_mode()
    def vision_context(self, images: Sequence[Image.Image], questions: Sequence[str] | None = None) -> VisionContext:
        """What a vision-stage method sees for ``images``: hidden ``[B, N, C]``, keys ``[B, N, Dk]``, CLS
        attention ``[B, H, N]`` and, given ``questions``, the text query ``[B, C]`` (as in :meth:`generate`), e.g.
        to calibrate SparseZip's dynamic K on real images."""
        if questions is not None and len(questions) != len(images):
            raise ValueError(f"got {len(questions)} questions for {len(images)} images")
        prepared = prepare_images(images, self.processor.image_processor, self.pad)
        pixel_values = self.processor.image_processor(prepared, return_tensors="pt")["pixel_values"]
        return self._context(images, self.tap(to_device(pixel_values, self.device, self.model.dtype)), questions)

    @torch.inference_mode()
    def prepare(
        self,
        images: Sequence[Image.Image],
        prompts: Sequence[str],
        *,
        method: CompressionMethod,
        questions: Sequence[str] | None = None,
    ) -> PreparedBatch:
        """Vision tower, compression and the LLM's input embeddings for a batch (steps 1-3 minus the LLM)."""
        self._validate(images, prompts, method, questions, 1, 1)
        timer = StageTimer(self.device)
        start = timer.now()
        with timer.stage("vision_ms"):
            batched = len(prompts) > 1
            if batched and self.tokenizer.pad_token_id is None:
                raise ValueError(f"model {self.name!r}: its tokenizer has no pad token, so batches need size 1")
            # A batch asking several questions about one image (POPE: six in a row) preprocesses and encodes it
            # once: images are told apart by their pixels' hash, which is also their sample seed.
            seeds = [image_seed(image) for image in images]
            distinct = {seed: image for seed, image in zip(seeds, images, strict=True)}
            prepared_images = prepare_images(list(distinct.values()), self.processor.image_processor, self.pad)
            pixel_values = self.processor.image_processor(prepared_images, return_tensors="pt")["pixel_values"]
            # LLaVA's tokenization (text on each side of <image> on its own), not the processor's: see prompt_ids.
            input_ids, attention_mask = encode_prompts(
                self.tokenizer, prompts, image_token=self.image_token, image_token_id=self.image_token_id,
                run_length=self.num_patches, pad_token_id=self.pad_token_id,
            )
            features = self.tap(to_device(pixel_values, self.device, self.model.dtype))
            if len(distinct) < len(seeds):
                row = {seed: i for i, seed in enumerate(distinct)}
                features = features.rows(to_device(torch.tensor([row[s] for s in seeds]), self.device))
        with timer.stage("compress_ms"):
            text_aware = method.needs_text and method.stage == "vision"
            ctx = self._context(images, features, questions if text_aware else None, seeds)
            result = method(ctx)
            # One CLIP view per image: every image's uncompressed count is its patches (LLaVA-1.5: all 576).
            uncompressed = torch.full((ctx.batch_size,), ctx.num_patches, dtype=torch.long)
            lengths, dominant = self._check_result(result, uncompressed, ctx.hidden.shape[2], method)
        compress_end = timer.now()
        # The ids are host data (the tokenizer's): shorten them, and find where each visual token goes, on the
        # host, so the device only receives finished index tensors (no syncs, no boolean indexing there).
        ids, mask = shorten_image_runs(input_ids, attention_mask, torch.tensor(lengths), image_token_id=self.image_token_id,
                                       pad_token_id=self.pad_token_id, expected_runs=uncompressed)
        image_mask = ids == self.image_token_id
        width = result.tokens.shape[1]
        real = (torch.arange(width)[None, :] < torch.tensor(lengths)[:, None]).flatten().nonzero().squeeze(1)
        rows, cols = image_mask.nonzero(as_tuple=True)  # row-major: the order of the real tokens
        prefill_tokens = mask.sum(1).tolist()
        ids, mask, image_mask = (to_device(t, self.device) for t in (ids, mask, image_mask))
        projected = self.model.model.multi_modal_projector(result.tokens)
        embeds = self.model.get_input_embeddings()(ids)
        values = projected.flatten(0, 1).index_select(0, to_device(real, self.device)).to(embeds.dtype)
        embeds = embeds.index_put_((to_device(rows, self.device), to_device(cols, self.device)), values)
        return PreparedBatch(ids, embeds, mask, image_mask, result, timer, start, compress_end, uncompressed,
                             visual_tokens=lengths, dominant=dominant, prefill_tokens=prefill_tokens)

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
        """Greedy (or beam) generation for a batch of single-image prompts under ``method``.

        ``prompts[i]`` holds exactly one ``<image>`` for ``images[i]``; ``questions[i]`` is the bare question for
        text-aware methods (``None``: no text awareness). Every sample of a batch reports the batch's stage
        times (``batch_size`` says how many shared them).
        """
        self._validate(images, prompts, method, questions, max_new_tokens, num_beams)
        if method.stage == "llm":
            return self._generate_in_llm(images, prompts, method, max_new_tokens)
        prepared = self.prepare(images, prompts, method=method, questions=questions)
        generated, timings = generate_on_embeds(
            self.model, inputs_embeds=prepared.inputs_embeds, attention_mask=prepared.attention_mask,
            max_new_tokens=max_new_tokens, num_beams=num_beams, pad_token_id=self.pad_token_id,
            timer=prepared.timer, start=prepared.start, compress_end=prepared.compress_end,
        )
        return vision_stage_outputs(
            generated, tokenizer=self.tokenizer, eos=self.eos, text_config=self.model.config.text_config,
            visual=prepared.visual_tokens, uncompressed=prepared.uncompressed, prefill_tokens=prepared.prefill_tokens,
            timings=timings, extras=[{"k": k} for k in prepared.dominant],
        )

    def _generate_in_llm(
        self, images: Sequence[Image.Image], prompts: Sequence[str], method: CompressionMethod, max_new_tokens: int
    ) -> list[GenerationOutput]:
        prepared = self.prepare(images, prompts, method=method)  # an in-LLM method keeps every visual token here
        run = run_in_llm(
            self.model.model.language_model, self.model.lm_head, method, inputs_embeds=prepared.inputs_embeds,
            attention_mask=prepared.attention_mask, visual_mask=prepared.image_mask,
            num_patches=self.nominal_visual_tokens, max_new_tokens=max_new_tokens, eos=self.eos,
            clock=prepared.timer.now,
        )
        timings = stage_timings(prepared.timer, prepared.start, prepared.compress_end, run.first_token_time,
                                prepared.timer.now())
        return in_llm_outputs(run, tokenizer=self.tokenizer, text_config=self.model.config.text_config,
                              uncompressed=prepared.uncompressed, attention_mask=prepared.attention_mask,
                              timings=timings)
