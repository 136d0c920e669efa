"""LLaVA-1.5's entry in the model registry (``model_type == "llava"``): what the adapter supports, read from
``config.json`` before any weights load, the nominal visual token count, and loading with ``from_pretrained``.
The adapter itself is :class:`sparsezip.adapters.llava.LlavaVLM`."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING

import torch

from sparsezip.adapters.api import ModelGeometry
from sparsezip.adapters.registry import (
    ModelAdapter,
    inspect_checkpoint,
    llm_layers,
    parse_device,
    register_adapter,
    resolve_dtype,
)

if TYPE_CHECKING:
    from sparsezip.adapters.llava import LlavaVLM
    from sparsezip.adapters.registry import Checkpoint


def load_llava(
    model_path: str | Path, *, device: str | torch.device = "cpu", dtype: torch.dtype | str | None = None,
    pad: bool = True,
) -> LlavaVLM:
    """Load a local LLaVA checkpoint (llava-hf layout) or a registered embedded model's name: the checks and
    loading of :func:`sparsezip.adapters.registry.load_model`, for ``model_type == "llava"`` only. ``dtype`` (a
    ``torch.dtype`` or its name, e.g. ``"bfloat16"``) defaults to float32 on CPU and float16 on CUDA; ``pad``:
    LLaVA-1.5's pad-to-square (default) or, ``False``, the processor's center crop."""
    device = parse_device(device)
    dtype = resolve_dtype(dtype, device)
    checkpoint = inspect_checkpoint(model_path)
    if checkpoint.adapter is not LLAVA_ADAPTER:
        raise ValueError(f"{checkpoint.path}: model_type {checkpoint.files.model_type!r} is not a LLaVA-1.5 "
                         "checkpoint; use sparsezip.adapters.registry.load_model")
    return _load_checkpoint(checkpoint, device, dtype, pad=pad)


def _load_checkpoint(checkpoint: Checkpoint, device: torch.device, dtype: torch.dtype, *, pad: bool = True) -> LlavaVLM:
    """``from_pretrained`` on a checked checkpoint: offline (``local_files_only=True``), no remote code, the image
    processor on the PIL backend (``sparsezip.imageprep.PROCESSOR_BACKEND``) whatever is installed; ``pad`` =
    LLaVA-1.5's pad-to-square (see :class:`~sparsezip.adapters.llava.LlavaVLM`)."""
    from transformers import AutoProcessor, LlavaForConditionalGeneration

    from sparsezip.adapters.llava import LlavaVLM
    from sparsezip.imageprep import PROCESSOR_BACKEND

    model = LlavaForConditionalGeneration.from_pretrained(checkpoint.path, dtype=dtype, local_files_only=True)
    processor = AutoProcessor.from_pretrained(checkpoint.path, local_files_only=True, backend=PROCESSOR_BACKEND)
    return LlavaVLM(model.to(device), processor, name=checkpoint.name, pad=pad)


def check_llava_config(config: Mapping) -> None:
    """What :class:`LlavaVLM` supports, from ``config.json`` alone: a CLIP vision tower, one integer
    ``vision_feature_layer`` and ``vision_feature_select_strategy == "default"`` (transformers' defaults when a
    key is absent). Raises ``ValueError`` naming the unsupported value."""
    strategy = config.get("vision_feature_select_strategy", "default")
    if strategy != "default":
        raise ValueError(f"only vision_feature_select_strategy='default' (CLS dropped) is supported, got {strategy!r}")
    layer = config.get("vision_feature_layer", -2)
    if isinstance(layer, bool) or not isinstance(layer, int):
        raise ValueError(f"vision_feature_layer must be one int, got {layer!r}")
    tower = (config.get("vision_config") or {}).get("model_type", "clip_vision_model")
    if tower != "clip_vision_model":
        raise ValueError(f"the vision tower must be CLIP (vision_config.model_type 'clip_vision_model'), got {tower!r}")
    llava_visual_tokens(config)


def llava_visual_tokens(config: Mapping) -> int:
    """Patch tokens per image from a LLaVA ``config.json`` dict: ``(image_size // patch_size) ** 2`` of its
    ``vision_config`` (576 for LLaVA-1.5). Every image has exactly this many: the processor resizes and crops
    to ``image_size``."""
    try:
        vision = config["vision_config"]
        return (int(vision["image_size"]) // int(vision["patch_size"])) ** 2
    except (KeyError, TypeError, ValueError, ZeroDivisionError) as err:
        raise ValueError(f"cannot read vision_config image_size/patch_size ({err!r})") from None


def llava_geometry(config: Mapping) -> ModelGeometry:
    """Visual tokens (:func:`llava_visual_tokens`), CLS prefix 1 (the "default" strategy drops it) and the LLM's
    ``text_config.num_hidden_layers`` (transformers' Llama default, 32, when absent) of a LLaVA ``config.json``."""
    return ModelGeometry(visual_tokens=llava_visual_tokens(config), prefix=1, llm_layers=llm_layers(config, 32))


LLAVA_ADAPTER = register_adapter(ModelAdapter(
    model_type="llava",
    family="LLaVA-1.5 (LlavaForConditionalGeneration, CLIP tower)",
    load=_load_checkpoint,
    nominal_visual_tokens=llava_visual_tokens,
    check_config=check_llava_config,
    geometry=llava_geometry,
))
