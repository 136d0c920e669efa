"""What the lmms-eval model does with lmms-eval's requests, in plain Python (lmms-eval is not imported here):
the prompt built from a task's context, the generation settings read from its ``gen_kwargs``, the batches, and
the per-sample and per-run cost records.

Prompts follow the LLaVA-1.5 protocol the suite's own runner uses (``sparsezip.data.prompts``): lmms-eval hands
the model the task's text (for POPE ``"{question}\\nAnswer the question using a single word or phrase."``) and
the model wraps it as ``SYSTEM USER: <image>\\n{context} ASSISTANT:``, which is exactly
``llava_v1_prompt(question)`` of ``sparsezip eval``. A context that already places its one ``<image>`` keeps it
where it is.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Hashable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from statistics import fmean
from typing import TYPE_CHECKING

from sparsezip.adapters.api import STAGES
from sparsezip.data.prompts import (
    IMAGE_PLACEHOLDER,
    LLAVA_V1_HUMAN_SYSTEM,
    LLAVA_V1_SYSTEM,
    PROMPT_STYLES,
    SHORT_ANSWER_SUFFIX,
    llava_v1_prompt,
)

if TYPE_CHECKING:
    from sparsezip.adapters.api import GenerationOutput
    from sparsezip.methods.base import CompressionMethod

# lmms-eval's own HF models generate up to 1024 new tokens when a task names no limit.
DEFAULT_MAX_NEW_TOKENS = 1024
# gen_kwargs that only shape sampling: harmless (ignored) when decoding greedily or with beams.
_SAMPLING_ONLY_KEYS = frozenset({"temperature", "top_p", "top_k", "typical_p"})
# Read by lmms-eval's original-LLaVA model for its own image preprocessing; here the checkpoint's processor
# preprocesses every image (llava-hf: resize + center crop), so it is ignored.
_PREPROCESSING_KEYS = frozenset({"image_aspect_ratio"})
_HANDLED_KEYS = (
    frozenset({"max_new_tokens", "num_beams", "until", "do_sample", "use_cache"}) | _SAMPLING_ONLY_KEYS
    | _PREPROCESSING_KEYS
)


@dataclass(frozen=True)
class GenerationSettings:
    """How to decode one group of requests.

    Attributes:
        max_new_tokens: the generation limit (``gen_kwargs["max_new_tokens"]``, else 1024 as lmms-eval's models).
        num_beams: 1 = greedy.
        until: stop strings; the answer is cut before the first one found (lmms-eval's ``until``).
    """

    max_new_tokens: int
    num_beams: int
    until: tuple[str, ...]


def generation_settings(gen_kwargs: Mapping) -> GenerationSettings:
    """Read a request's ``gen_kwargs``. The adapter decodes greedily (or with beams), so a request that asks
    for sampling (``do_sample`` true, or ``temperature > 0`` which lmms-eval's HF models treat as sampling) or
    for a decoding option the adapter lacks (``repetition_penalty`` ...) is a ``ValueError`` naming it.
    ``image_aspect_ratio`` (an original-LLaVA preprocessing switch) is ignored: the checkpoint's processor
    preprocesses the image."""
    unknown = sorted(set(gen_kwargs) - _HANDLED_KEYS)
    if unknown:
        raise ValueError(
            f"gen_kwargs {unknown} are not supported by the sparsezip adapter (it handles "
            f"{sorted(_HANDLED_KEYS)}); use a task variant without them"
        )
    temperature = float(gen_kwargs.get("temperature") or 0)
    if gen_kwargs.get("do_sample") or temperature > 0:
        raise ValueError(
            f"sampling requested (do_sample={gen_kwargs.get('do_sample')!r}, temperature={temperature}); the "
            "sparsezip adapter decodes greedily: pass --gen_kwargs do_sample=False,temperature=0"
        )
    max_new_tokens = gen_kwargs.get("max_new_tokens", DEFAULT_MAX_NEW_TOKENS)
    num_beams = gen_kwargs.get("num_beams", 1) or 1
    for name, value in (("max_new_tokens", max_new_tokens), ("num_beams", num_beams)):
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise ValueError(f"gen_kwargs {name} must be an integer >= 1, got {value!r}")
    until = gen_kwargs.get("until")
    if until is None:
        stops: tuple[str, ...] = ()
    elif isinstance(until, str):
        stops = (until,)
    elif isinstance(until, (list, tuple)) and all(isinstance(s, str) for s in until):
        stops = tuple(until)
    else:
        raise ValueError(f"gen_kwargs until must be a string or a list of strings, got {until!r}")
    return GenerationSettings(max_new_tokens, num_beams, tuple(s for s in stops if s))


def truncate_at_stops(text: str, until: Sequence[str]) -> str:
    """``text`` up to (not including) the earliest occurrence of any stop string; unchanged if none occurs."""
    cuts = [i for i in (text.find(stop) for stop in until if stop) if i >= 0]
    return text[: min(cuts)] if cuts else text


def build_prompt(context: str, style: str = "llava_v1", chat_prompt: Callable[[str], str] | None = None) -> str:
    """The model prompt for one lmms-eval context with one image.

    ``llava_v1``: ``SYSTEM USER: <image>\\n{context} ASSISTANT:`` (a context holding its own ``<image>`` keeps
    it in place; ``llava_v1_human``: the same with the seed's "human" system prompt). ``hf_chat``: the
    checkpoint's chat template (``chat_prompt``) on the context without the placeholder. More than one
    ``<image>`` in a context is a ``ValueError`` (one image per prompt).
    """
    count = context.count(IMAGE_PLACEHOLDER)
    if count > 1:
        raise ValueError(f"context holds {count} {IMAGE_PLACEHOLDER} placeholders; the adapter takes one image "
                         f"per prompt: {context[:120]!r}")
    if style in ("llava_v1", "llava_v1_human"):
        system = LLAVA_V1_SYSTEM if style == "llava_v1" else LLAVA_V1_HUMAN_SYSTEM
        if count == 0:
            return llava_v1_prompt(context, short_answer=False, system=system)
        return f"{system} USER: {context} ASSISTANT:"
    if style == "hf_chat":
        if chat_prompt is None:
            raise ValueError("prompt_style 'hf_chat' needs the model's chat template (chat_prompt=None given)")
        return chat_prompt(context.replace(IMAGE_PLACEHOLDER, "").strip())
    raise ValueError(f"unknown prompt_style {style!r}; choose one of {PROMPT_STYLES}")


def bare_question(context: str) -> str:
    """The question text-aware methods embed: the context without its placeholder and without LLaVA's
    short-answer instruction, i.e. the same text ``sparsezip eval`` passes as ``questions`` for POPE/MME."""
    text = context.replace(IMAGE_PLACEHOLDER, "").strip()
    suffix = SHORT_ANSWER_SUFFIX
    return text[: -len(suffix)].rstrip() if text.endswith(suffix) and len(text) > len(suffix) else text


def gen_kwargs_key(gen_kwargs: Mapping) -> str:
    """A hashable, order-independent key of ``gen_kwargs`` (requests are batched only with equal settings)."""
    return json.dumps(dict(gen_kwargs), sort_keys=True, default=repr)


def plan_batches(keys: Sequence[Hashable], batch_size: int) -> list[list[int]]:
    """Indices ``0..len(keys)-1`` grouped by equal key (groups in order of first appearance, request order
    kept inside a group) and cut into batches of at most ``batch_size``: the same batches ``sparsezip eval``
    forms on the same samples, so both give the same answers."""
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
        raise ValueError(f"batch_size must be an integer >= 1, got {batch_size!r}")
    groups: dict[Hashable, list[int]] = {}
    for index, key in enumerate(keys):
        groups.setdefault(key, []).append(index)
    return [members[i : i + batch_size] for members in groups.values() for i in range(0, len(members), batch_size)]


def parse_batch_size(value: object) -> int:
    """lmms-eval's ``--batch_size`` (a string on its command line) as a positive int; ``auto`` is refused."""
    text = str(value).strip()
    if not text.isdigit() or int(text) < 1:
        raise ValueError(f"batch_size must be a positive integer for --model sparsezip, got {value!r}")
    return int(text)


def build_method(name: str, budget: int | None = None, method_config: str | Path | None = None) -> CompressionMethod:
    """The registered method ``name`` with ``budget`` and, from ``method_config``, the ``model.sparsezip``
    block of a YAML file or a SparseZip preset name, as ``sparsezip eval --config`` takes it (strictly validated
    by ``sparsezip.methods.sparsezip.config.resolve_config``)."""
    from sparsezip.methods import get_method

    config: dict = {}
    if method_config is not None:
        from sparsezip.methods.sparsezip.config import resolve_config

        config = dict(resolve_config(method_config))
    if budget is not None:
        if isinstance(budget, bool) or not isinstance(budget, int):
            raise ValueError(f"budget must be an integer number of visual tokens, got {budget!r}")
        config["budget"] = budget
    return get_method(name, **config)


def sample_cost(out: GenerationOutput) -> dict:
    """What one answer cost, as logged per sample: visual tokens fed to the LLM (per layer for in-LLM
    methods), prefill and new tokens, stage times in ms (``STAGES``; shared by the ``batch_size`` samples
    of a batch)."""
    return {
        "visual_tokens": out.visual_tokens,
        "visual_tokens_per_layer": out.visual_tokens_per_layer,
        "prefill_tokens": out.prefill_tokens,
        "new_tokens": out.new_tokens,
        "stage_ms": {stage: out.timings[stage] for stage in STAGES},
        "batch_size": out.batch_size,
    }


def run_cost(costs: Sequence[Mapping], num_patches: int) -> dict:
    """Keyword arguments for lmms-eval's ``log_metrics`` from the per-sample costs of one ``generate_until``
    call: total time (each batch counted once: a sample's share is ``total_ms / batch_size``), generated
    tokens, speed, and ``additional_metrics`` with the means lmms-eval reports as ``avg_<key>`` in its results
    JSON (``throughput``): ``sparsezip_visual_tokens``, ``sparsezip_<stage>`` ms, token counts."""
    if not costs:
        raise ValueError("no samples to summarize")
    elapsed = sum(c["stage_ms"]["total_ms"] / c["batch_size"] for c in costs) / 1e3
    new_tokens = sum(int(c["new_tokens"]) for c in costs)
    additional = {
        "total_requests": len(costs),
        "sparsezip_num_patches": num_patches,
        "sparsezip_visual_tokens": fmean(float(c["visual_tokens"]) for c in costs),
        "sparsezip_prefill_tokens": fmean(float(c["prefill_tokens"]) for c in costs),
        "sparsezip_new_tokens": fmean(float(c["new_tokens"]) for c in costs),
    }
    for stage in STAGES:
        additional[f"sparsezip_{stage}"] = fmean(float(c["stage_ms"][stage]) for c in costs)
    return {
        "total_elapsed_time": elapsed,
        "total_gen_tokens": new_tokens,
        "avg_speed": new_tokens / elapsed if elapsed > 0 else 0.0,
        "additional_metrics": additional,
    }
