"""The model registry: which adapter runs a checkpoint, picked from its ``config.json`` ``model_type`` (like the
method registry), plus named embedded checkpoints registered like real ones (timm's ``test_*`` models):
``load_model("tiny-shapes")`` is the committed ``fixtures/tiny-llava``.

:func:`load_model` reads ``config.json`` first and refuses, before any weights load, a ``model_type`` no adapter
handles (transformers would otherwise build a default model from a foreign config: a ``LlamaForCausalLM``
checkpoint becomes a randomly initialised 7B LLaVA, and the process is OOM-killed), a configuration the adapter
does not support, and a folder without weight files, with a truncated safetensors file, or without processor
files (:mod:`sparsezip.adapters.checkpoint`). Only then does the adapter's loader run ``from_pretrained``.

Adding a model family: one adapter module that calls :func:`register_adapter` at import, plus its module name in
:data:`BUILTIN_ADAPTER_MODULES`.
"""

from __future__ import annotations

import dataclasses
import importlib
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

import torch

from sparsezip.adapters.api import ModelGeometry
from sparsezip.adapters.checkpoint import CheckpointFiles, check_files, read_config

if TYPE_CHECKING:
    from sparsezip.adapters.api import VisionLanguageModel

# Imported on first use of the registry; each registers its adapter(s). One line per model family.
BUILTIN_ADAPTER_MODULES: tuple[str, ...] = (
    "sparsezip.adapters.llava_loader",
    "sparsezip.adapters.llava_next_loader",
    "sparsezip.adapters.qwen2_5_vl_loader",
)
FIXTURES_DIR = Path(__file__).resolve().parents[2] / "fixtures"


@dataclass(frozen=True)
class ModelAdapter:
    """How the suite runs checkpoints of one ``config.json`` ``model_type``.

    Attributes:
        model_type: the HF ``config.model_type`` this adapter handles (``"llava"``).
        family: a human-readable name for messages (``"LLaVA-1.5 (LlavaForConditionalGeneration)"``).
        load: ``(checkpoint, device, dtype) -> VisionLanguageModel``; called only after every check passed.
        nominal_visual_tokens: ``config.json`` dict -> the uncompressed visual tokens of a nominal image (576 for
            LLaVA-1.5), the scale relative budgets are mapped by; per-sample counts come from the model's outputs.
        check_config: ``config.json`` dict -> ``None``, raising ``ValueError`` for a configuration the adapter
            cannot run (so it is refused before the weights load); ``None`` = any.
        geometry: ``config.json`` dict -> :class:`~sparsezip.adapters.api.ModelGeometry` (visual tokens, prefix,
            LLM layers), what a method's configuration is checked against before loading; ``None`` = only the
            nominal visual tokens are known (prefix 1, LLM layers unknown).
        nominal_visual_tokens_at: ``(checkpoint folder, config.json dict) -> int``, for families whose nominal count
            depends on other files too (Qwen2.5-VL: the image processor's resizing rule); used instead of
            ``nominal_visual_tokens`` when set.
        stages: the method stages the adapter runs (``"vision"``, ``"llm"``); the benchmark matrix skips rows
            of the others, saying why.
        calibrates_dynamic_k: whether SparseZip's dynamic-K calibration means one thing per image on this family
            (LLaVA-NeXT spreads an image's budget over its crops, so the per-image K range does not carry over).
        attention_source: the kind of attention row the adapter's contexts carry (``VisionContext.attention_source``:
            CLIP's ``"cls"``; Qwen2.5-VL's ``"mean_received"``); methods that need attention run only if they
            declare it in ``attention_sources`` (the benchmark matrix skips the others, saying why).
    """

    model_type: str
    family: str
    load: Callable[[Checkpoint, torch.device, torch.dtype], VisionLanguageModel] = field(repr=False)
    nominal_visual_tokens: Callable[[Mapping], int] = field(repr=False)
    check_config: Callable[[Mapping], None] | None = field(default=None, repr=False)
    geometry: Callable[[Mapping], ModelGeometry] | None = field(default=None, repr=False)
    nominal_visual_tokens_at: Callable[[Path, Mapping], int] | None = field(default=None, repr=False)
    stages: tuple[str, ...] = ("vision", "llm")
    calibrates_dynamic_k: bool = True
    attention_source: str = "cls"


@dataclass(frozen=True)
class EmbeddedModel:
    """A checkpoint shipped with the project, loadable by name."""

    name: str
    path: Path
    description: str


@dataclass(frozen=True)
class Checkpoint:
    """A checkpoint that passed every check: where it is, what it is called, its files and its adapter."""

    path: Path
    name: str
    adapter: ModelAdapter
    files: CheckpointFiles

    @property
    def config(self) -> Mapping:
        """``config.json``, parsed."""
        return self.files.config


_ADAPTERS: dict[str, ModelAdapter] = {}
_EMBEDDED: dict[str, EmbeddedModel] = {}
_builtins_loaded = False


def register_adapter(adapter: ModelAdapter) -> ModelAdapter:
    """Add ``adapter`` under its ``model_type`` (a second, different adapter for a type is a ``ValueError``)."""
    if not isinstance(adapter.model_type, str) or not adapter.model_type:
        raise ValueError(f"an adapter needs a non-empty model_type, got {adapter.model_type!r}")
    known = _ADAPTERS.get(adapter.model_type)
    if known is not None and known != adapter:
        raise ValueError(f"model_type {adapter.model_type!r} already has an adapter ({known.family})")
    _ADAPTERS[adapter.model_type] = adapter
    return adapter


def _registry() -> dict[str, ModelAdapter]:
    global _builtins_loaded
    if not _builtins_loaded:
        for module in BUILTIN_ADAPTER_MODULES:
            importlib.import_module(module)
        _builtins_loaded = True
    return _ADAPTERS


def list_adapters() -> list[str]:
    """The ``model_type`` values with an adapter, sorted."""
    return sorted(_registry())


def adapter_for(model_type: str) -> ModelAdapter:
    """The adapter for ``model_type``; ``ValueError`` naming the supported types otherwise."""
    adapters = _registry()
    if model_type not in adapters:
        raise ValueError(f"no adapter for model_type {model_type!r}; supported: {', '.join(sorted(adapters))}")
    return adapters[model_type]


def register_embedded_model(name: str, path: Path, description: str) -> EmbeddedModel:
    """Make the checkpoint folder ``path`` loadable as ``name`` (e.g. ``--model-path tiny-shapes``)."""
    if not name or "/" in name or "\\" in name:
        raise ValueError(f"an embedded model name must be non-empty and hold no path separator, got {name!r}")
    model = EmbeddedModel(name, Path(path), description)
    if name in _EMBEDDED and _EMBEDDED[name] != model:
        raise ValueError(f"embedded model {name!r} is already registered at {_EMBEDDED[name].path}")
    _EMBEDDED[name] = model
    return model


def list_embedded_models() -> list[str]:
    """Names of the registered embedded checkpoints, sorted."""
    return sorted(_EMBEDDED)


def embedded_model(name: str) -> EmbeddedModel:
    """The registered embedded checkpoint ``name``."""
    if name not in _EMBEDDED:
        raise ValueError(f"unknown embedded model {name!r}; registered: {', '.join(list_embedded_models())}")
    return _EMBEDDED[name]


def resolve_model(path_or_name: str | Path) -> tuple[Path, str]:
    """``(folder, name)`` for a checkpoint folder or a registered embedded model's name. An existing folder
    wins over a name; a name's folder must exist (it is built by ``sparsezip train-tiny``)."""
    path = Path(path_or_name)
    if path.is_dir() or str(path_or_name) not in _EMBEDDED:
        return path, path.name
    model = _EMBEDDED[str(path_or_name)]
    if not model.path.is_dir():
        raise ValueError(f"embedded model {model.name!r}: its checkpoint {model.path} is missing "
                         f"(`sparsezip train-tiny --out {model.path}` writes it)")
    return model.path, model.name


def _config_and_adapter(path: Path) -> tuple[dict, ModelAdapter]:
    config = read_config(path)
    model_type = config["model_type"]
    adapters = _registry()
    if model_type not in adapters:
        arch = ", ".join(config.get("architectures") or []) or "no architectures listed"
        raise ValueError(f"{path}: model_type {model_type!r} ({arch}) has no adapter; supported model types: "
                         f"{', '.join(sorted(adapters))}")
    adapter = adapters[model_type]
    if adapter.check_config is not None:
        try:
            adapter.check_config(config)
        except ValueError as err:
            raise ValueError(f"{path}: unsupported {adapter.family} configuration: {err}") from None
    return config, adapter


def nominal_visual_tokens(path_or_name: str | Path) -> int:
    """The checkpoint's nominal uncompressed visual tokens per image, from ``config.json`` alone (no weights,
    no file checks): what relative budgets (the benchmark matrix's LLaVA-1.5 scale) are mapped by."""
    path, _ = resolve_model(path_or_name)
    config, adapter = _config_and_adapter(path)
    if adapter.nominal_visual_tokens_at is not None:
        return int(adapter.nominal_visual_tokens_at(path, config))
    return int(adapter.nominal_visual_tokens(config))


def checkpoint_geometry(checkpoint: Checkpoint) -> ModelGeometry:
    """The :class:`~sparsezip.adapters.api.ModelGeometry` of a checked checkpoint, from its ``config.json`` (and,
    for families whose nominal count depends on other files, ``nominal_visual_tokens_at``: the same number the
    loaded model reports, so the run identity known before loading is the one after it)."""
    adapter, config = checkpoint.adapter, checkpoint.config
    geometry = (adapter.geometry(config) if adapter.geometry is not None
                else ModelGeometry(visual_tokens=int(adapter.nominal_visual_tokens(config))))
    if adapter.nominal_visual_tokens_at is not None:
        geometry = dataclasses.replace(
            geometry, visual_tokens=int(adapter.nominal_visual_tokens_at(checkpoint.path, config)))
    return geometry


def llm_layers(config: Mapping, default: int | None) -> int | None:
    """The language model's decoder layers from a ``config.json`` dict: ``text_config.num_hidden_layers``, else a
    top-level ``num_hidden_layers`` (older Qwen2.5-VL files), else ``default``. ``ValueError`` for a value that
    is not a positive int."""
    text = config.get("text_config") or {}
    layers = text.get("num_hidden_layers", config.get("num_hidden_layers", default))
    if layers is None:
        return None
    if isinstance(layers, bool) or not isinstance(layers, int) or layers < 1:
        raise ValueError(f"text_config.num_hidden_layers must be a positive int, got {layers!r}")
    return layers


def checkpoint_adapter(path_or_name: str | Path) -> ModelAdapter:
    """The adapter that would run the checkpoint, from its ``config.json`` alone (refusals as in
    :func:`load_model`); loads nothing."""
    path, _ = resolve_model(path_or_name)
    return _config_and_adapter(path)[1]


def inspect_checkpoint(path_or_name: str | Path) -> Checkpoint:
    """Every check :func:`load_model` makes before loading, in order: the folder, ``config.json``, an adapter
    for its ``model_type`` and its configuration, the weight files (safetensors headers read), the processor
    files. Raises a one-line ``ValueError`` naming the first problem; loads nothing."""
    path, name = resolve_model(path_or_name)
    config, adapter = _config_and_adapter(path)
    return Checkpoint(path=path, name=name, adapter=adapter, files=check_files(path, config))


def parse_device(device: str | torch.device) -> torch.device:
    """``device`` as a ``torch.device``; an unknown device type or an unavailable CUDA device is a
    ``ValueError`` (torch raises ``RuntimeError`` / asserts at first use instead)."""
    try:
        parsed = torch.device(device)
    except (RuntimeError, TypeError):
        raise ValueError(f"device {device!r} is not a torch device (e.g. cpu, cuda, cuda:1)") from None
    if parsed.type == "cuda":
        if not torch.cuda.is_available():
            raise ValueError(f"device {device!r}: CUDA is not available (torch {torch.__version__})")
        if parsed.index is not None and parsed.index >= torch.cuda.device_count():
            raise ValueError(f"device {device!r}: only {torch.cuda.device_count()} CUDA device(s)")
    return parsed


def resolve_dtype(dtype: torch.dtype | str | None, device: torch.device) -> torch.dtype:
    """A ``torch.dtype`` from a dtype or its name (``"bfloat16"``); ``None`` = float16 on CUDA, else float32."""
    if isinstance(dtype, str):
        named = getattr(torch, dtype, None)
        if not isinstance(named, torch.dtype) or not named.is_floating_point:
            raise ValueError(f"dtype {dtype!r} is not a torch floating-point dtype (e.g. float16, bfloat16, float32)")
        return named
    if dtype is None:
        return torch.float16 if device.type == "cuda" else torch.float32
    if not isinstance(dtype, torch.dtype) or not dtype.is_floating_point:
        raise ValueError(f"dtype {dtype!r} is not a torch floating-point dtype")
    return dtype


def load_model(
    path_or_name: str | Path, *, device: str | torch.device = "cpu", dtype: torch.dtype | str | None = None,
    **options: object,
) -> VisionLanguageModel:
    """Load a local checkpoint folder (or a registered embedded model's name, e.g. ``"tiny-shapes"``) with the
    adapter its ``config.json`` ``model_type`` names: offline, no remote code. ``dtype`` (a ``torch.dtype`` or
    its name) defaults to float16 on CUDA and float32 on CPU. ``options`` are the adapter's own (LLaVA-1.5:
    ``pad``); one the adapter does not take is a ``ValueError``. Everything :func:`inspect_checkpoint` checks is
    refused before any weights load."""
    device = parse_device(device)
    dtype = resolve_dtype(dtype, device)
    checkpoint = inspect_checkpoint(path_or_name)
    return load_checked(checkpoint, device, dtype, **options)


def load_checked(checkpoint: Checkpoint, device: torch.device, dtype: torch.dtype, **options: object
                 ) -> VisionLanguageModel:
    """``checkpoint.adapter.load`` with the adapter's own ``options``, refusing options it does not take."""
    import inspect

    accepted = [name for name, p in inspect.signature(checkpoint.adapter.load).parameters.items()
                if p.kind is inspect.Parameter.KEYWORD_ONLY]
    unknown = sorted(set(options) - set(accepted))
    if unknown:
        raise ValueError(f"model {checkpoint.name!r} ({checkpoint.adapter.family}) takes no option(s) {unknown}"
                         f"{'; it takes ' + ', '.join(accepted) if accepted else ''}")
    return checkpoint.adapter.load(checkpoint, device, dtype, **options)


register_embedded_model(
    "tiny-shapes", FIXTURES_DIR / "tiny-llava",
    "the embedded default: a tiny LlavaForConditionalGeneration trained here on synthetic shapes (144 patches)",
)
register_embedded_model(
    "tiny-llava-next", FIXTURES_DIR / "tiny-llava-next",
    "a tiny LlavaNextForConditionalGeneration trained here by the same recipe (anyres: base view + 2 x 2 tiles, "
    "192 visual tokens on a 96 px image)",
)
register_embedded_model(
    "tiny-qwen2.5-vl", FIXTURES_DIR / "tiny-qwen2.5-vl",
    "a tiny Qwen2_5_VLForConditionalGeneration trained here by the same recipe (no CLS, 2 x 2 merger, M-RoPE: "
    "36 visual tokens on a 96 px image)",
)
