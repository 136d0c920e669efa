"""Hugging Face ``LlavaNextForConditionalGeneration`` (llava-hf/llava-v1.6-*) under any vision-side method,
batched (images of different sizes, so different crop counts), timed by stage.

Pipeline of :meth:`LlavaNextVLM.generate`:

1. ``vision_ms``: the processor (anyres crops, tokenization with each ``<image>`` expanded to the image's own
   count: base view + unpadded tiles + one newline per tile row), then the CLIP tower up to the feature layer
   on every crop of the batch at once (:class:`~sparsezip.adapters.vision_tower.FeatureLayerTap`: each crop's
   own CLS attention row and head-averaged keys, hooks for one call, SDPA untouched).
2. ``compress_ms``: one :class:`~sparsezip.context.VisionContext` row per crop (``prefix = 1``, ``image_index``
   grouping an image's crops, the image's text query on each of its rows), the method called once per distinct
   per-crop budget (:mod:`sparsezip.adapters.anyres`: an image's budget spread equally over its crops).
3. ``prefill_ms``: the projector, the VisionZip-style layout (or transformers' own packing when every patch is
   kept), each prompt's placeholder run shortened to its image's count (left-padded, mask rebuilt, positions
   renumbered as LLaVA's code does), the LLM's first forward.
4. ``decode_ms``: the remaining tokens.

``none`` reproduces the plain model (tokens, logits to 1e-5): its tokens go through ``pack_image_features``.
In-LLM methods (stage ``"llm"``) get the uncompressed image run (``none``'s packing: base view, unpadded tiles,
newlines) and prune inside the Llama / Mistral decoder through the generic layer-wise loop
(:mod:`sparsezip.adapters.in_llm`; 1-D positions as on LLaVA-1.5).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import torch

from sparsezip.adapters.anyres import Crops, crops_for, keeps_every_patch, per_crop_budgets, visionzip_layout
from sparsezip.adapters.api import GenerationOutput
from sparsezip.adapters.common import (
    WrappedModel,
    check_request,
    check_rows,
    eos_ids,
    image_processor_settings,
    image_seed,
    mean_question_embedding,
    method_budget,
    stage_timings,
    to_device,
)
from sparsezip.adapters.grouped import RowGroup, budget_groups, compress_grouped
from sparsezip.adapters.in_llm import in_llm_outputs, run_in_llm
from sparsezip.adapters.placeholders import shorten_image_runs
from sparsezip.adapters.vision_stage import generate_on_embeds, vision_stage_outputs
from sparsezip.adapters.vision_tower import FeatureLayerTap, TowerFeatures
from sparsezip.context import CompressionResult, VisionContext
from sparsezip.methods.base import CompressionMethod, LayerPruner
from sparsezip.methods.none import NoCompression
from sparsezip.profiling import StageTimer

if TYPE_CHECKING:
    from PIL import Image
    from transformers import LlavaNextForConditionalGeneration, ProcessorMixin

    from sparsezip.adapters.layerwise import LayerwiseGeneration

FAMILY = "LLaVA-NeXT"
# What run.json records of the two layout choices (sparsezip.adapters.anyres): change the code, change the name.
BUDGET_SPREAD = "equal_per_crop"
# SparseZip's dynamic K on this family: refused, with this reason (README "Two more families").
DYNAMIC_K_REFUSAL = (
    "SparseZip's dynamic K is refused on LLaVA-NeXT: it sets every row's dominant count from that row's score "
    "variance within one [k_min, k_max] range that must hold the budget's dominant split, but an image's budget is "
    "spread over its 3-5 crops (K // n each), so crops of different images have different splits and no one per-crop "
    "range fits them, while a per-image range means nothing per crop; use fixed K (skip_dynamic_k)"
)
COMPRESSED_LAYOUT = "visionzip_next: base view, tiles' patches in stitched raster order, tiles' CLS, merged; no newlines"


@dataclass
class NextBatch:
    """A batch ready for the LLM (what :meth:`LlavaNextVLM.prepare` returns).

    Attributes:
        input_ids, inputs_embeds, attention_mask: ``[B, S]`` / ``[B, S, D]`` / ``[B, S]``, left-padded, each
            image's placeholder run shortened to its token count and filled with its projected tokens.
        result: the method's stitched :class:`CompressionResult` over the ``R`` crop rows (pre-projector).
        crops: which crop row belongs to which image.
        visual: ``[B]`` int64, visual tokens fed to the LLM per image.
        uncompressed: ``[B]`` int64, each image's visual tokens uncompressed (its placeholder run as the processor
            expanded it: base view + unpadded tiles + newlines).
        timer, start, compress_end: the call's stage timer and timestamps (seconds).
    """

    input_ids: torch.Tensor
    inputs_embeds: torch.Tensor
    attention_mask: torch.Tensor
    result: CompressionResult
    crops: Crops
    visual: torch.Tensor
    uncompressed: torch.Tensor
    timer: StageTimer
    start: float
    compress_end: float


class LlavaNextVLM(WrappedModel):
    """A loaded LLaVA-NeXT (``LlavaNextForConditionalGeneration`` + ``LlavaNextProcessor``) implementing
    :class:`sparsezip.adapters.api.VisionLanguageModel`. Wraps, never modifies, the model.

    Supported: a CLIP tower, one integer ``vision_feature_layer``, ``vision_feature_select_strategy ==
    "default"``, and a processor whose crop size and pinpoints are the config's (checked here and, from the
    files, by the registry). ``nominal_visual_tokens`` = the most crops an image can get times the patches per
    crop (2880 = 5 x 576 for llava-v1.6: the scale of the field's LLaVA-NeXT budgets, e.g. VisionZip's 320/640);
    each output reports its own ``uncompressed_visual_tokens`` (up to 2928 with newlines).
    """

    def __init__(
        self, model: LlavaNextForConditionalGeneration, processor: ProcessorMixin, *, name: str | None = None
    ) -> None:
        from sparsezip.adapters.llava_next_loader import check_llava_next_config, next_visual_tokens

        inner = getattr(model, "model", None)
        needed = ("vision_tower", "multi_modal_projector", "language_model", "image_newline", "pack_image_features")
        if not all(hasattr(inner, a) for a in needed):
            raise ValueError(f"expected a LlavaNextForConditionalGeneration, got {type(model).__name__}")
        config = model.config
        check_llava_next_config(config.to_dict())
        self.model = model.eval()
        self.processor = processor
        self.tokenizer = processor.tokenizer
        self.tap = FeatureLayerTap(inner.vision_tower, config.vision_feature_layer)
        vision = config.vision_config
        self.crop_size = int(vision.image_size)
        self.patch_size = int(vision.patch_size)
        self.side = self.crop_size // self.patch_size
        self.patches_per_crop = self.side**2
        self.pinpoints = [list(p) for p in config.image_grid_pinpoints]
        self._check_processor(processor.image_processor)
        self.nominal_visual_tokens = next_visual_tokens(config.to_dict())
        self.views_per_image = self.nominal_visual_tokens // self.patches_per_crop  # rows a method sees per image
        self.prefix = 1  # each crop's CLS, dropped by the "default" feature selection
        self.image_token = getattr(processor, "image_token", None) or "<image>"
        self.image_token_id = int(config.image_token_id)
        self.name = name or Path(str(getattr(model, "name_or_path", "") or "llava-next")).name or "llava-next"
        pad = self.tokenizer.pad_token_id
        self.eos = eos_ids(model.generation_config.eos_token_id, self.tokenizer.eos_token_id)
        self.pad_token_id = int(pad if pad is not None else min(self.eos))
        self.dynamic_k_refusal = DYNAMIC_K_REFUSAL  # read by dynamic-K calibration (sparsezip.eval.calibration)

    def _check_processor(self, image_processor: object) -> None:
        crop = getattr(image_processor, "crop_size", None) or {}
        crop = crop.get("height") if isinstance(crop, dict) else getattr(crop, "height", None)
        if crop is not None and int(crop) != self.crop_size:
            raise ValueError(f"the image processor crops {crop} px but the vision tower takes {self.crop_size} px")
        pinpoints = getattr(image_processor, "image_grid_pinpoints", None) or self.pinpoints
        foreign = [list(p) for p in pinpoints if list(p) not in self.pinpoints]
        if foreign:
            raise ValueError(f"the image processor's crop grids {foreign} are not among the config's "
                             f"image_grid_pinpoints {self.pinpoints}")


    def run_settings(self) -> dict:
        """Every adapter setting that changes the answers, as JSON (recorded in ``run.json``; a resumed run with
        different settings is refused): the image processor (class = backend, settings), the feature layer and
        selection, the crop grids, the protected prefix, how a budget is spread over crops and how compressed
        crops are laid out, the tokenizer's padding."""
        config = self.model.config
        return {
            **image_processor_settings(self.processor.image_processor),
            "vision_feature_layer": config.vision_feature_layer,
            "vision_feature_select_strategy": config.vision_feature_select_strategy,
            "image_grid_pinpoints": self.pinpoints,
            "prefix": self.prefix,
            "budget_spread": BUDGET_SPREAD,
            "compressed_layout": COMPRESSED_LAYOUT,
            "padding_side": self.tokenizer.padding_side,
            "pad_token_id": self.pad_token_id,
        }

    def chat_prompt(self, question: str) -> str:
        """The checkpoint's chat template applied to one user turn (``<image>`` + ``question``)."""
        if not getattr(self.processor, "chat_template", None):
            raise ValueError(f"model {self.name!r} has no chat template; use prompt_style 'llava_v1'")
        conversation = [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": question}]}]
        return self.processor.apply_chat_template(conversation, add_generation_prompt=True)

    # ------------------------------------------------------------------------------------------ pipeline
    def _check(self, images, prompts, method, questions, max_new_tokens=1, num_beams=1) -> None:
        check_request(images, prompts, method, questions, max_new_tokens, num_beams, model_name=self.name,
                      family=FAMILY, min_side=self.patch_size)
        if getattr(method, "dynamic_k_on", False):
            raise ValueError(f"model {self.name!r}: {DYNAMIC_K_REFUSAL}")
        for i, prompt in enumerate(prompts):
            found = prompt.count(self.image_token)
            if found != 1:
                raise ValueError(f"prompt {i} holds {found} {self.image_token} placeholders; exactly 1 is needed")

    def text_query(self, questions: Sequence[str]) -> torch.Tensor:
        """The questions mapped into vision hidden space, ``[B, C]`` float32 (as for LLaVA-1.5: the mean LLM
        input embedding through the projector's transposed weights)."""
        from sparsezip.scoring import text_to_vision_space

        mean = mean_question_embedding(self.tokenizer, self.model.get_input_embeddings(), questions, self.device)
        projector = self.model.model.multi_modal_projector
        return text_to_vision_space(mean, projector.linear_1.weight, projector.linear_2.weight)

    def _crop_pixels(self, inputs: dict) -> tuple[torch.Tensor, Crops]:
        crops = crops_for(inputs["image_sizes"], self.pinpoints, self.crop_size)
        pixel_values = inputs["pixel_values"]
        if pixel_values.ndim != 5 or pixel_values.shape[1] < int(crops.per_image.max()):
            raise ValueError(f"the processor gave pixel_values {tuple(pixel_values.shape)}; the config's crop grids "
                             f"need {crops.per_image.tolist()} crops per image")
        real = torch.arange(pixel_values.shape[1])[None, :] < crops.per_image[:, None]
        return to_device(pixel_values[real], self.device, self.model.dtype), crops

    def _contexts(
        self, images: Sequence[Image.Image], features: TowerFeatures, crops: Crops, text: torch.Tensor | None,
        per_row_budget: torch.Tensor | None,
    ) -> list[RowGroup]:
        hidden = features.hidden
        keys = features.keys if features.keys is not None else hidden.new_zeros(*hidden.shape[:2], 0)
        image_seeds = torch.tensor([image_seed(image) for image in images], dtype=torch.long)
        # Every crop draws its own random numbers: the image's seed mixed with the crop's index.
        seeds = (image_seeds[crops.image_index] * 1_000_003 + crops.crop_in_image) & (2**63 - 1)
        groups = []
        for rows, budget in budget_groups(per_row_budget, crops.rows):
            index = crops.image_index[rows]
            _, compact = torch.unique_consecutive(index, return_inverse=True)
            on = rows.to(hidden.device)
            groups.append(RowGroup(rows, VisionContext(
                hidden=hidden[on], keys=keys[on],
                cls_attn=None if features.cls_attn is None else features.cls_attn[on],
                text_query=None if text is None else text[index.to(text.device)].to(hidden.dtype),
                sample_seeds=seeds[rows], prefix=self.prefix, image_index=compact,
            ), budget))
        return groups

    @torch.inference_mode()
    def vision_context(self, images: Sequence[Image.Image], questions: Sequence[str] | None = None) -> VisionContext:
        """Every crop of ``images`` as one context (``[R, N, C]`` rows, ``image_index`` grouping them), as a
        method sees them in :meth:`generate` with no budget; e.g. to calibrate SparseZip's dynamic K."""
        if questions is not None and len(questions) != len(images):
            raise ValueError(f"got {len(questions)} questions for {len(images)} images")
        pixels = self.processor.image_processor(list(images), return_tensors="pt")
        pixel_values, crops = self._crop_pixels(pixels)
        text = None if questions is None else self.text_query(questions)
        return self._contexts(images, self.tap(pixel_values), crops, text, None)[0].context

    @torch.inference_mode()
    def prepare(
        self, images: Sequence[Image.Image], prompts: Sequence[str], *, method: CompressionMethod,
        questions: Sequence[str] | None = None,
    ) -> NextBatch:
        """Vision tower, compression and the LLM's input embeddings for a batch (steps 1-3 minus the LLM)."""
        self._check(images, prompts, method, questions)
        timer = StageTimer(self.device)
        start = timer.now()
        with timer.stage("vision_ms"):
            batched = len(prompts) > 1
            if batched and self.tokenizer.pad_token_id is None:
                raise ValueError(f"model {self.name!r}: its tokenizer has no pad token, so batches need size 1")
            inputs = self.processor(images=list(images), text=list(prompts), return_tensors="pt", padding=batched)
            pixel_values, crops = self._crop_pixels(inputs)
            features = self.tap(pixel_values)
        with timer.stage("compress_ms"):
            budget = method_budget(method)
            per_row = None if budget is None else per_crop_budgets(budget, crops)
            text = self.text_query(questions) if method.needs_text and questions is not None else None
            groups = self._contexts(images, features, crops, text, per_row)
            result = compress_grouped(method, groups, crops.rows)
            limits = torch.full((crops.rows,), self.patches_per_crop, dtype=torch.long)
            check_rows(result, limits, features.hidden.shape[2], method)
        compress_end = timer.now()
        ids = to_device(inputs["input_ids"], self.device)
        mask = to_device(inputs["attention_mask"], self.device)
        uncompressed = ((ids == self.image_token_id) & mask.bool()).sum(dim=1)
        tokens, visual = self._layout(result, crops, inputs["image_sizes"])
        ids, mask = shorten_image_runs(ids, mask, visual, image_token_id=self.image_token_id,
                                       pad_token_id=self.pad_token_id, expected_runs=uncompressed)
        embeds = self.model.get_input_embeddings()(ids)
        image_mask = (ids == self.image_token_id).unsqueeze(-1)
        embeds = embeds.masked_scatter(image_mask, tokens.to(embeds.dtype))
        return NextBatch(ids, embeds, mask, result, crops, visual.cpu(), uncompressed.cpu(), timer, start,
                         compress_end)

    def _layout(self, result: CompressionResult, crops: Crops, image_sizes: torch.Tensor):
        """Projected tokens ``[L, D]`` of every image in batch order, and ``[B]`` counts."""
        projector = self.model.model.multi_modal_projector
        if keeps_every_patch(result, self.prefix, self.patches_per_crop):
            projected = projector(result.tokens)
            per_image = torch.split(projected, crops.per_image.tolist(), dim=0)
            packed, lengths = self.model.model.pack_image_features(
                list(per_image), image_sizes.to(self.device), vision_feature_select_strategy="default",
                image_newline=self.model.model.image_newline,
            )
            return torch.cat(packed, dim=0), lengths.to(self.device)
        tokens, counts = visionzip_layout(result, crops, self.side, self.prefix)
        return projector(tokens), counts

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
            max_new_tokens=max_new_tokens, num_beams=num_beams, pad_token_id=self.pad_token_id,
            timer=batch.timer, start=batch.start, compress_end=batch.compress_end,
        )
        # One read of the batch's per-crop K and crop owners from the device (not one per sample).
        per_crop_k, owner = batch.result.k.cpu(), batch.crops.image_index.cpu()
        extras = [{"k": int(per_crop_k[owner == b].sum()), "crops": int(batch.crops.per_image[b])}
                  for b in range(len(prompts))]
        return vision_stage_outputs(
            generated, tokenizer=self.tokenizer, eos=self.eos, text_config=self.model.config.text_config,
            visual=batch.visual, uncompressed=batch.uncompressed,
            prefill_tokens=batch.attention_mask.sum(1).tolist(), timings=timings, extras=extras,
        )

    def layerwise(
        self, images: Sequence[Image.Image], prompts: Sequence[str], method: LayerPruner, max_new_tokens: int, *,
        record_logits: bool = False,
    ) -> tuple[NextBatch, LayerwiseGeneration]:
        """An in-LLM method on a batch: the uncompressed image run (``none``), then the layer-wise loop over the
        language model's own decoder layers. ``record_logits`` keeps every step's logits (tests)."""
        self._check(images, prompts, method, None, max_new_tokens, 1)
        batch = self.prepare(images, prompts, method=NoCompression())
        run = run_in_llm(
            self.model.model.language_model, self.model.lm_head, method, inputs_embeds=batch.inputs_embeds,
            attention_mask=batch.attention_mask, visual_mask=batch.input_ids == self.image_token_id,
            num_patches=self.nominal_visual_tokens, max_new_tokens=max_new_tokens, eos=self.eos,
            clock=batch.timer.now, record_logits=record_logits,
        )
        return batch, run

    def _generate_in_llm(self, images, prompts, method: LayerPruner, max_new_tokens: int) -> list[GenerationOutput]:
        batch, run = self.layerwise(images, prompts, method, max_new_tokens)
        timings = stage_timings(batch.timer, batch.start, batch.compress_end, run.first_token_time, batch.timer.now())
        outputs = in_llm_outputs(run, tokenizer=self.tokenizer, text_config=self.model.config.text_config,
                                 uncompressed=batch.uncompressed, attention_mask=batch.attention_mask,
                                 timings=timings)
        for b, out in enumerate(outputs):
            out.extra["crops"] = int(batch.crops.per_image[b])
        return outputs
