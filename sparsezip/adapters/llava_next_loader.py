"""LLaVA-NeXT's entry in the model registry (``model_type == "llava_next"``): what the adapter supports, read
from ``config.json`` before any weights load, the nominal visual token count, and loading with
``from_pretrained``. The adapter itself is :class:`sparsezip.adapters.llava_next.LlavaNextVLM`."""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING

import torch

from sparsezip.adapters.api import ModelGeometry
from sparsezip.adapters.registry import ModelAdapter, llm_layers, register_adapter

if TYPE_CHECKING:
    from sparsezip.adapters.llava_next import LlavaNextVLM
    from sparsezip.adapters.registry import Checkpoint

# transformers' LlavaNextConfig default, used when config.json omits the key.
DEFAULT_PINPOINTS = [[336, 672], [672, 336], [672, 672], [1008, 336], [336, 1008]]


def _load_checkpoint(checkpoint: Checkpoint, device: torch.device, dtype: torch.dtype) -> LlavaNextVLM:
    """``from_pretrained`` on a checked checkpoint: offline (``local_files_only=True``), no remote code."""
    from transformers import AutoProcessor, LlavaNextForConditionalGeneration

    from sparsezip.adapters.llava_next import LlavaNextVLM
    from sparsezip.imageprep import PROCESSOR_BACKEND

    model = LlavaNextForConditionalGeneration.from_pretrained(checkpoint.path, dtype=dtype, local_files_only=True)
    processor = AutoProcessor.from_pretrained(checkpoint.path, local_files_only=True, backend=PROCESSOR_BACKEND)
    return LlavaNextVLM(model.to(device), processor, name=checkpoint.name)


def _vision(config: Mapping) -> tuple[int, int]:
    try:
        vision = config.get("vision_config") or {}
        image_size, patch_size = int(vision.get("image_size", 336)), int(vision.get("patch_size", 14))
    except (TypeError, ValueError, AttributeError) as err:
        raise ValueError(f"cannot read vision_config image_size/patch_size ({err!r})") from None
    if image_size <= 0 or patch_size <= 0 or image_size % patch_size:
        raise ValueError(f"vision_config image_size {image_size} must be a positive multiple of patch_size "
                         f"{patch_size}")
    return image_size, patch_size


def _pinpoints(config: Mapping, crop: int) -> list[list[int]]:
    pinpoints = config.get("image_grid_pinpoints") or DEFAULT_PINPOINTS
    ok = isinstance(pinpoints, list) and all(
        isinstance(p, (list, tuple)) and len(p) == 2 and all(isinstance(v, int) and v > 0 and v % crop == 0 for v in p)
        for p in pinpoints
    )
    if not ok:
        raise ValueError(f"image_grid_pinpoints must be [height, width] pairs of positive multiples of the {crop} px "
                         f"crop size, got {pinpoints!r}")
    return [list(p) for p in pinpoints]


def check_llava_next_config(config: Mapping) -> None:
    """What :class:`LlavaNextVLM` supports, from ``config.json`` alone: a CLIP tower whose image size is a multiple
    of its patch size, one integer ``vision_feature_layer``, ``vision_feature_select_strategy == "default"``, and
    crop grids (``image_grid_pinpoints``) that are multiples of the crop size. ``ValueError`` naming the value."""
    strategy = config.get("vision_feature_select_strategy", "default")
    if strategy != "default":
        raise ValueError(f"only vision_feature_select_strategy='default' (CLS dropped) is supported, got {strategy!r}")
    layer = config.get("vision_feature_layer", -2)
    if isinstance(layer, bool) or not isinstance(layer, int):
        raise ValueError(f"vision_feature_layer must be one int, got {layer!r}")
    tower = (config.get("vision_config") or {}).get("model_type", "clip_vision_model")
    if tower != "clip_vision_model":
        raise ValueError(f"the vision tower must be CLIP (vision_config.model_type 'clip_vision_model'), got {tower!r}")
    crop, _ = _vision(config)
    _pinpoints(config, crop)


def next_visual_tokens(config: Mapping) -> int:
    """Nominal visual tokens of a LLaVA-NeXT image from ``config.json``: the most crops any pinpoint gives (its
    tiles + the base view) times the patches per crop, 5 x 576 = 2880 for llava-v1.6 (unpadding and newlines make
    an image's real count differ; each output reports its own)."""
    crop, patch = _vision(config)
    most_tiles = max((h // crop) * (w // crop) for h, w in _pinpoints(config, crop))
    return (most_tiles + 1) * (crop // patch) ** 2


def next_geometry(config: Mapping) -> ModelGeometry:
    """Nominal visual tokens (:func:`next_visual_tokens`), each crop's CLS as the prefix (1) and the LLM's decoder
    layers (transformers' Llama default, 32, when absent) of a LLaVA-NeXT ``config.json``."""
    crop, patch = _vision(config)
    tokens = next_visual_tokens(config)
    return ModelGeometry(visual_tokens=tokens, prefix=1, llm_layers=llm_layers(config, 32),
                         views=tokens // (crop // patch) ** 2)


LLAVA_NEXT_ADAPTER = register_adapter(ModelAdapter(
    model_type="llava_next",
    family="LLaVA-NeXT (LlavaNextForConditionalGeneration, CLIP tower, anyres crops)",
    load=_load_checkpoint,
    nominal_visual_tokens=next_visual_tokens,
    check_config=check_llava_next_config,
    geometry=next_geometry,
    calibrates_dynamic_k=False,
))
