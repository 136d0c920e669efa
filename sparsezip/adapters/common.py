"""What the three adapters (LLaVA-1.5, LLaVA-NeXT, Qwen2.5-VL) share: request checks, EOS handling, stage timings,
the mean question embedding, analytic prefill FLOPs, the per-image result checks, per-image seeds and the
run-identity helpers."""

from __future__ import annotations

import hashlib
import json
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

import torch

from sparsezip.context import CompressionResult
from sparsezip.methods.base import CompressionMethod
from sparsezip.profiling import StageTimer, decoder_prefill_flops

if TYPE_CHECKING:
    from PIL import Image


def to_device(tensor: torch.Tensor, device: torch.device | str, dtype: torch.dtype | None = None) -> torch.Tensor:
    """A host tensor on ``device``: on CUDA through pinned memory and ``non_blocking`` (the copy is queued like a
    kernel, the host does not wait for the device), elsewhere a plain ``.to``; then cast to ``dtype`` there."""
    device = torch.device(device)
    if device.type == "cuda" and tensor.device.type == "cpu":
        tensor = tensor.pin_memory().to(device, non_blocking=True)
    else:
        tensor = tensor.to(device)
    return tensor if dtype is None else tensor.to(dtype)


def check_request(
    images: Sequence[Image.Image],
    prompts: Sequence[str],
    method: CompressionMethod,
    questions: Sequence[str] | None,
    max_new_tokens: int,
    num_beams: int,
    *,
    model_name: str,
    family: str,
    min_side: int,
) -> None:
    """The checks every ``generate`` call makes before any work: one image per prompt, a registered kind of method
    (an in-LLM one must be a ``LayerPruner`` and decode greedily), positive lengths, images at least ``min_side``
    pixels on each side. Each failure is a ``ValueError`` naming the bad value."""
    if not isinstance(method, CompressionMethod):
        raise ValueError(f"method must be a CompressionMethod, got {type(method).__name__}")
    if method.stage == "llm":
        from sparsezip.adapters.in_llm import check_in_llm

        check_in_llm(method, num_beams)
    elif method.stage != "vision":
        raise ValueError(f"method {method.name!r} has stage {method.stage!r}; the {family} adapter runs 'vision' "
                         f"and 'llm' methods (model {model_name!r})")
    if len(prompts) == 0:
        raise ValueError("generate needs at least one prompt")
    if len(images) != len(prompts):
        raise ValueError(f"got {len(images)} images for {len(prompts)} prompts; each prompt takes one image")
    if questions is not None and len(questions) != len(prompts):
        raise ValueError(f"got {len(questions)} questions for {len(prompts)} prompts")
    if max_new_tokens < 1:
        raise ValueError(f"max_new_tokens must be >= 1, got {max_new_tokens}")
    if num_beams < 1:
        raise ValueError(f"num_beams must be >= 1, got {num_beams}")
    for i, image in enumerate(images):
        width, height = image.size
        if min(width, height) < min_side:
            raise ValueError(
                f"image {i} is {width}x{height} px; {family} needs at least {min_side} px on each side "
                f"(model {model_name!r})"
            )


def eos_ids(generation_eos: int | Sequence[int] | None, tokenizer_eos: int | None) -> set[int]:
    """The EOS ids from a ``generation_config.eos_token_id`` (one id or a list), else the tokenizer's."""
    eos = generation_eos if generation_eos is not None else tokenizer_eos
    if eos is None:
        raise ValueError("neither the generation config nor the tokenizer names an EOS token")
    return {int(e) for e in eos} if isinstance(eos, (list, tuple)) else {int(eos)}


def trim_at_eos(tokens: list[int], eos: set[int]) -> list[int]:
    """Generated ids up to and including the first EOS (the padding HF adds after it removed)."""
    for i, token in enumerate(tokens):
        if token in eos:
            return tokens[: i + 1]
    return tokens


def stage_timings(
    timer: StageTimer, start: float, compress_end: float, first_token: float | None, end: float
) -> dict[str, float]:
    """``vision_ms`` / ``compress_ms`` as measured by ``timer``, ``prefill_ms`` from the end of compression to the
    first token, ``decode_ms`` from there to ``end``, ``total_ms`` the whole call (timestamps in seconds)."""
    if first_token is None:
        raise ValueError("generation produced no token, so time to first token is undefined")
    timings = {"vision_ms": 0.0, "compress_ms": 0.0, **timer.ms}
    timings["prefill_ms"] = (first_token - compress_end) * 1e3
    timings["decode_ms"] = (end - first_token) * 1e3
    timings["total_ms"] = (end - start) * 1e3
    return timings


def mean_question_embedding(
    tokenizer: object, embedding: torch.nn.Module, questions: Sequence[str], device: torch.device
) -> torch.Tensor:
    """``[B, D]`` float32: the mean LLM input embedding of each question's tokens (no special tokens)."""
    empty = [i for i, q in enumerate(questions) if not q or not q.strip()]
    if empty:
        raise ValueError(f"questions {empty} are empty; pass questions=None for no text awareness")
    encoded = tokenizer(list(questions), add_special_tokens=False, padding=True, return_tensors="pt")
    ids, mask = to_device(encoded["input_ids"], device), to_device(encoded["attention_mask"], device)
    embeds = embedding(ids).float()
    weights = mask.unsqueeze(-1).float()
    return (embeds * weights).sum(dim=1) / weights.sum(dim=1)


def prefill_flops(text_config: object, seq_lens: int | list[int]) -> int:
    """Analytic prefill FLOPs of an HF decoder config (Llama / Mistral / Qwen2: GQA and ``head_dim`` read from the
    config) for ``seq_lens`` tokens (one int, or one per layer)."""
    return decoder_prefill_flops(
        seq_lens,
        num_layers=text_config.num_hidden_layers,
        hidden=text_config.hidden_size,
        intermediate=text_config.intermediate_size,
        num_heads=text_config.num_attention_heads,
        num_kv_heads=getattr(text_config, "num_key_value_heads", None),
        vocab_size=text_config.vocab_size,
        head_dim=getattr(text_config, "head_dim", None),
    )


def check_rows(result: CompressionResult, limits: torch.Tensor, channels: int, method: CompressionMethod) -> None:
    """``result`` must hold ``[R, T, C]`` tokens and, per row, 1 to ``limits[r]`` of them."""
    rows = limits.shape[0]
    if result.tokens.shape[0] != rows or result.tokens.shape[2] != channels:
        raise ValueError(
            f"method {method.name!r} returned tokens {tuple(result.tokens.shape)}; expected [R={rows}, T, C={channels}]"
        )
    lengths, bounds = result.lengths.tolist(), limits.tolist()
    if any(not 1 <= n <= limit for n, limit in zip(lengths, bounds, strict=True)):
        raise ValueError(
            f"method {method.name!r} returned {lengths} tokens per row; each must be in [1, that row's {bounds}]"
        )


def method_budget(method: CompressionMethod) -> int | None:
    """The method's ``budget`` (visual tokens per image) when it is an int, else ``None`` (its default)."""
    budget = method.config().get("budget")
    return budget if isinstance(budget, int) and not isinstance(budget, bool) else None


def checkpoint_folder(model: torch.nn.Module) -> Path | None:
    """The checkpoint folder an HF model was loaded from (``from_pretrained`` records it as ``name_or_path``), or
    ``None`` for a model built in memory. Its weights' content identity goes into ``run.json``."""
    folder = Path(str(getattr(model, "name_or_path", "") or ""))
    return folder if str(folder) not in ("", ".") and (folder / "config.json").is_file() else None


def image_processor_settings(image_processor: object) -> dict:
    """The image processor's class (its backend: PIL or torchvision) and every setting, as sorted JSON: what
    ``run_settings()`` records of the preprocessing."""
    return {
        "image_processor_class": type(image_processor).__name__,
        "image_processor": json.loads(json.dumps(image_processor.to_dict(), sort_keys=True, default=str)),
    }


def image_seed(image: Image.Image) -> int:
    """A per-image seed from the image's mode, size and pixels (``VisionContext.sample_seeds``): methods that
    draw random numbers then give an image the same result in any batch, in any run."""
    digest = hashlib.sha256(f"{image.mode}:{image.size}".encode())
    digest.update(image.tobytes())
    return int.from_bytes(digest.digest()[:8], "little") & (2**63 - 1)


class WrappedModel:
    """What every adapter exposes about the Hugging Face model it wraps (``self.model``): where and in which dtype
    its weights live, its config (the runner reads ``text_config`` for the KV-cache bytes) and the checkpoint
    folder it was loaded from (its weights' content identity goes into ``run.json``)."""

    model: torch.nn.Module

    @property
    def device(self) -> torch.device:
        """Where the model's weights live."""
        return self.model.device

    @property
    def config(self) -> object:
        """The checkpoint's config (``LlavaConfig``, ``LlavaNextConfig``, ``Qwen2_5_VLConfig``)."""
        return self.model.config

    @property
    def dtype(self) -> torch.dtype:
        """The weights' dtype."""
        return self.model.dtype

    @property
    def checkpoint_path(self) -> Path | None:
        """The checkpoint folder the weights were loaded from; ``None`` for a model built in memory."""
        return checkpoint_folder(self.model)
