"""Qwen2.5-VL's entry in the model registry (``model_type == "qwen2_5_vl"``): what the adapter supports, read
from ``config.json`` before any weights load, the nominal visual token count (from ``preprocessor_config.json``:
Qwen's token count depends on the image processor's resizing rule, not on the model config), and loading with
``from_pretrained``. The adapter itself is :class:`sparsezip.adapters.qwen2_5_vl.QwenVLM`."""

from __future__ import annotations

import json
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING

import torch

from sparsezip.adapters.api import ModelGeometry
from sparsezip.adapters.registry import ModelAdapter, llm_layers, register_adapter

if TYPE_CHECKING:
    from sparsezip.adapters.qwen2_5_vl import QwenVLM
    from sparsezip.adapters.registry import Checkpoint

# transformers' Qwen2-VL image processor defaults, used when preprocessor_config.json omits a key.
DEFAULT_MIN_PIXELS = 56 * 56
DEFAULT_MAX_PIXELS = 28 * 28 * 1280


def _load_checkpoint(checkpoint: Checkpoint, device: torch.device, dtype: torch.dtype) -> QwenVLM:
    """``from_pretrained`` on a checked checkpoint: offline (``local_files_only=True``), no remote code. The
    tokenizer and the image processor are loaded on their own (see :mod:`sparsezip.adapters.qwen2_5_vl`)."""
    from transformers import AutoImageProcessor, AutoTokenizer, Qwen2_5_VLForConditionalGeneration

    from sparsezip.adapters.qwen2_5_vl import QwenVLM

    model = Qwen2_5_VLForConditionalGeneration.from_pretrained(checkpoint.path, dtype=dtype, local_files_only=True)
    tokenizer = AutoTokenizer.from_pretrained(checkpoint.path, local_files_only=True, padding_side="left")
    from sparsezip.imageprep import PROCESSOR_BACKEND

    image_processor = AutoImageProcessor.from_pretrained(checkpoint.path, local_files_only=True,
                                                         backend=PROCESSOR_BACKEND)
    return QwenVLM(model.to(device), tokenizer, image_processor, chat_template=read_chat_template(checkpoint.path),
                   name=checkpoint.name)


def read_chat_template(path: Path) -> str | None:
    """The checkpoint's multimodal chat template: ``chat_template.jinja``, else ``chat_template.json``'s
    ``chat_template``; ``None`` = none there (the tokenizer's own, if any, is used)."""
    jinja, packed = path / "chat_template.jinja", path / "chat_template.json"
    if jinja.is_file():
        return jinja.read_text(encoding="utf-8")
    if packed.is_file():
        try:
            template = json.loads(packed.read_text(encoding="utf-8")).get("chat_template")
        except (UnicodeDecodeError, json.JSONDecodeError, AttributeError):
            raise ValueError(f"{packed}: not valid JSON with a chat_template") from None
        return template if isinstance(template, str) else None
    return None


def check_qwen_config(config: Mapping) -> None:
    """What :class:`QwenVLM` supports, from ``config.json`` alone: a vision tower with at least one full-attention
    block (the substitute attention is read from the last one), a positive integer patch size, merge size and
    window size. ``ValueError`` naming the value."""
    vision = config.get("vision_config")
    if not isinstance(vision, Mapping):
        raise ValueError("config.json has no vision_config")
    depth = vision.get("depth", 32)
    full = vision.get("fullatt_block_indexes", [7, 15, 23, 31])
    if not (isinstance(full, list) and full and all(isinstance(i, int) and 0 <= i < depth for i in full)):
        raise ValueError(f"vision_config.fullatt_block_indexes must list full-attention blocks of the {depth}, "
                         f"got {full!r}")
    for key, default in (("patch_size", 14), ("spatial_merge_size", 2), ("window_size", 112)):
        value = vision.get(key, default)
        if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
            raise ValueError(f"vision_config.{key} must be a positive int, got {value!r}")


def _processor_settings(path: Path, config: Mapping) -> tuple[int, int, int, int]:
    """``(min_pixels, max_pixels, patch_size, merge_size)`` from ``preprocessor_config.json`` (either the
    ``min_pixels`` / ``max_pixels`` keys or transformers 5's ``size`` dict), the config's vision values otherwise."""
    vision = config.get("vision_config") or {}
    settings: dict = {}
    file = path / "preprocessor_config.json"
    if file.is_file():
        try:
            settings = json.loads(file.read_text(encoding="utf-8"))
        except (UnicodeDecodeError, json.JSONDecodeError):
            raise ValueError(f"{file}: not valid JSON") from None
    size = settings.get("size") if isinstance(settings.get("size"), dict) else {}
    min_pixels = settings.get("min_pixels") or size.get("shortest_edge") or DEFAULT_MIN_PIXELS
    max_pixels = settings.get("max_pixels") or size.get("longest_edge") or DEFAULT_MAX_PIXELS
    patch = settings.get("patch_size") or vision.get("patch_size", 14)
    merge = settings.get("merge_size") or vision.get("spatial_merge_size", 2)
    return int(min_pixels), int(max_pixels), int(patch), int(merge)


def qwen_nominal_tokens(path: Path, config: Mapping) -> int:
    """Tokens of a 336 x 336 image under the checkpoint's resizing rule (144 for Qwen/Qwen2.5-VL-*)."""
    from sparsezip.adapters.qwen2_5_vl import qwen_visual_tokens

    return qwen_visual_tokens(*_processor_settings(path, config))


def _config_only_nominal(config: Mapping) -> int:
    """Without the checkpoint folder: transformers' default processor settings."""
    vision = config.get("vision_config") or {}
    from sparsezip.adapters.qwen2_5_vl import qwen_visual_tokens

    return qwen_visual_tokens(DEFAULT_MIN_PIXELS, DEFAULT_MAX_PIXELS, int(vision.get("patch_size", 14)),
                              int(vision.get("spatial_merge_size", 2)))


def qwen_geometry(config: Mapping) -> ModelGeometry:
    """No CLS (prefix 0) and the LLM's decoder layers (``text_config`` or, in older files, top level; transformers'
    default 80 when absent) of a Qwen2.5-VL ``config.json``; the visual tokens from transformers' default processor
    settings (the registry replaces them by :func:`qwen_nominal_tokens` of the checkpoint folder)."""
    return ModelGeometry(visual_tokens=_config_only_nominal(config), prefix=0, llm_layers=llm_layers(config, 80))


QWEN2_5_VL_ADAPTER = register_adapter(ModelAdapter(
    model_type="qwen2_5_vl",
    family="Qwen2.5-VL (Qwen2_5_VLForConditionalGeneration, no CLS, 2x2 merger, M-RoPE)",
    load=_load_checkpoint,
    nominal_visual_tokens=_config_only_nominal,
    check_config=check_qwen_config,
    geometry=qwen_geometry,
    nominal_visual_tokens_at=qwen_nominal_tokens,
    attention_source="mean_received",
))
