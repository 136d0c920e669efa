"""``lmms-eval --model sparsezip``: any checkpoint our adapters load, under any registered compression method.

``--model_args`` (lmms-eval's ``key=value,...``):
    pretrained     a local checkpoint folder (required), loaded offline by the adapters.
    method         a registered method (``sparsezip methods``; default ``none``).
    budget         visual tokens per image (the method's own meaning, as ``sparsezip eval --budget``).
    method_config  a YAML file with a ``model.sparsezip`` block (the seed's layout) or a SparseZip preset name
                   (``pope``, ``mme``, ``docvqa``, ``seed-live``, ``seed-live-mme``), strictly validated.
    device, dtype  e.g. ``cuda:1``, ``bfloat16`` (default: CUDA when available, the adapter's dtype).
    prompt_style   ``llava_v1`` (default: LLaVA-1.5's eval template) or ``hf_chat`` (the checkpoint's own).
``--batch_size N`` batches requests with equal generation settings, in request order.

What lands where: every answer is returned as lmms-eval's ``GenerationResult`` whose ``token_counts``
(``input_tokens`` = prefill tokens, ``output_tokens`` = new tokens) also carries a ``sparsezip`` record
(visual tokens, per-layer counts, stage ms, batch size), so it is written into each logged sample
(``--log_samples``); per ``generate_until`` call the means go to lmms-eval's ``log_metrics`` and appear in the
results JSON under ``throughput`` as ``avg_sparsezip_visual_tokens``, ``avg_sparsezip_vision_ms``, ...

Limits (each a clear error): one image per request (LLaVA-1.5), no video/audio or text-only requests, greedy
or beam decoding only (no sampling; ``image_aspect_ratio`` is ignored, the checkpoint's processor preprocesses),
``generate_until`` tasks only (no loglikelihood / multi-round / visual CoT), one process (``WORLD_SIZE > 1`` is
refused: run several lmms-eval processes on ``--limit/--offset`` slices of a task instead).
"""

from __future__ import annotations

import importlib.util
import os
from collections.abc import Sequence
from dataclasses import dataclass, field

from lmms_eval.api.instance import GenerationResult, Instance, TokenCounts
from lmms_eval.api.model import lmms
from lmms_eval.models.model_utils.gen_metrics import log_metrics
from loguru import logger
from PIL import Image
from tqdm.auto import tqdm

from sparsezip.adapters.api import VisionLanguageModel
from sparsezip.integrations.lmms_eval.requests import (
    bare_question,
    build_method,
    build_prompt,
    gen_kwargs_key,
    generation_settings,
    parse_batch_size,
    plan_batches,
    run_cost,
    sample_cost,
    truncate_at_stops,
)


@dataclass
class SparseZipCounts(TokenCounts):
    """lmms-eval's per-request ``TokenCounts`` plus what the compression did: ``to_dict`` (what lmms-eval
    writes into the logged sample's ``token_counts``) adds a ``sparsezip`` record (:func:`sample_cost`)."""

    sparsezip: dict = field(default_factory=dict)

    def to_dict(self) -> dict:
        return {**super().to_dict(), "sparsezip": self.sparsezip}


def load_vision_language_model(path: str, *, device: str | None = None, dtype: str | None = None) -> VisionLanguageModel:
    """The adapter for the checkpoint at ``path``: ``sparsezip.adapters.registry.load_model`` (by
    ``config.model_type``) where that registry exists, else the LLaVA adapter."""
    import torch

    device = device or ("cuda" if torch.cuda.is_available() else "cpu")
    if importlib.util.find_spec("sparsezip.adapters.registry") is not None:
        from sparsezip.adapters import registry

        if hasattr(registry, "load_model"):
            return registry.load_model(path, device=device, dtype=dtype)
    from sparsezip.adapters.llava import load_llava

    return load_llava(path, device=device, dtype=dtype)


class SparseZipLMM(lmms):
    """An lmms-eval "simple" model: lmms-eval's contexts -> LLaVA-1.5 prompts -> the adapter's batched
    ``generate`` under one compression method."""

    is_simple = True
    _KNOWN_ARGS = ("pretrained", "method", "budget", "method_config", "device", "dtype", "prompt_style",
                   "batch_size", "max_batch_size")  # fmt: skip

    def __init__(
        self,
        pretrained: str | None = None,
        method: str = "none",
        budget: int | None = None,
        method_config: str | None = None,
        device: str | None = None,
        dtype: str | None = None,
        prompt_style: str = "llava_v1",
        batch_size: int | str = 1,
        max_batch_size: int | None = None,  # lmms-eval passes it to every model; only "auto" batching uses it
        **unknown: object,
    ) -> None:
        super().__init__()
        if unknown:
            raise ValueError(f"unknown --model_args for sparsezip: {sorted(unknown)}; known: {list(self._KNOWN_ARGS)}")
        if not pretrained:
            raise ValueError("--model_args pretrained=PATH (a local checkpoint folder) is required")
        world_size = os.environ.get("WORLD_SIZE", "1")
        if world_size != "1":
            raise ValueError(f"--model sparsezip runs in one process (WORLD_SIZE={world_size}); run one lmms-eval "
                             "process per --limit/--offset slice instead")
        build_prompt("", prompt_style, chat_prompt=lambda q: q)  # refuse an unknown style before loading
        self.method = build_method(str(method), budget, method_config)
        self.batch_size = parse_batch_size(batch_size)
        self.prompt_style = prompt_style
        self.vlm = load_vision_language_model(str(pretrained), device=device, dtype=dtype)
        logger.info(
            f"sparsezip: {self.vlm.name} ({self.vlm.num_patches} patches/image) on {self.vlm.device}, "
            f"method {self.method.name} {self.method.config()}, batch size {self.batch_size}"
        )

    # ------------------------------------------------------------------------------------------ requests
    def generate_until(self, requests: Sequence[Instance]) -> list[GenerationResult]:
        """Answer every request (``args = (context, gen_kwargs, doc_to_visual, doc_id, task, split)``) in
        batches of equal ``gen_kwargs``; results come back in request order."""
        args = [request.args for request in requests]
        results: list[GenerationResult | None] = [None] * len(args)
        costs: list[dict] = []
        progress = tqdm(total=len(args), disable=self.rank != 0, desc="sparsezip")
        for batch in plan_batches([gen_kwargs_key(a[1]) for a in args], self.batch_size):
            settings = generation_settings(args[batch[0]][1])
            contexts = [args[i][0] for i in batch]
            images = [self._image(*args[i][2:6]) for i in batch]
            prompts = [build_prompt(c, self.prompt_style, chat_prompt=self.vlm.chat_prompt) for c in contexts]
            outputs = self.vlm.generate(
                images, prompts, method=self.method, questions=[bare_question(c) for c in contexts],
                max_new_tokens=settings.max_new_tokens, num_beams=settings.num_beams,
            )  # fmt: skip
            if len(outputs) != len(batch):
                raise ValueError(f"model {self.vlm.name} returned {len(outputs)} outputs for {len(batch)} prompts")
            for i, out in zip(batch, outputs, strict=True):
                cost = sample_cost(out)
                costs.append(cost)
                counts = SparseZipCounts(input_tokens=out.prefill_tokens, output_tokens=out.new_tokens, sparsezip=cost)
                results[i] = GenerationResult(text=truncate_at_stops(out.text, settings.until), token_counts=counts)
            progress.update(len(batch))
        progress.close()
        if costs:
            log_metrics(**run_cost(costs, self.vlm.num_patches))
        return results  # type: ignore[return-value]  # every index was filled by exactly one batch

    def _image(self, doc_to_visual, doc_id, task: str, split: str) -> Image.Image:
        visuals = doc_to_visual(self.task_dict[task][split][doc_id])
        visuals = visuals if isinstance(visuals, (list, tuple)) else [visuals]
        if len(visuals) != 1 or not isinstance(visuals[0], Image.Image):
            kinds = [type(v).__name__ for v in visuals]
            raise ValueError(
                f"task {task!r} doc {doc_id}: the sparsezip adapter answers about exactly one image per prompt "
                f"(LLaVA-1.5); got {len(visuals)} visual(s) {kinds}"
            )
        image = visuals[0]
        return image if image.mode == "RGB" else image.convert("RGB")

    def loglikelihood(self, requests: Sequence[Instance]) -> list[tuple[float, bool]]:
        raise NotImplementedError(
            "--model sparsezip runs generate_until tasks only (the adapter generates; it does not score "
            "continuations): choose a generation variant of the task"
        )

    def generate_until_multi_round(self, requests: Sequence[Instance]) -> list[str]:
        raise NotImplementedError("--model sparsezip does not run multi-round tasks (one image, one answer)")
