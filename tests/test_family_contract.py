"""Every registered method (any added later included) on each model family. Vision-side: on the contexts each
family really makes and through its adapter, the generic contract holds, budgets are visual tokens per image, and
a method that cannot run on a family is refused with an error naming it and the model. In-LLM: through the
adapter's layer-wise loop, batched over images of different sizes, each row as at batch size 1, with consistent
per-layer counts."""

from __future__ import annotations

import itertools

import numpy as np
import pytest
from PIL import Image

from sparsezip.methods import get_method, list_methods, method_class
from sparsezip.testing.contract import check_method

VISION_METHODS = [name for name in list_methods() if method_class(name).stage == "vision"]
IN_LLM_METHODS = [name for name in list_methods() if method_class(name).stage == "llm"]
FAMILIES = {
    # fixture, image sizes (height, width), budget per image
    "llava-next": ("tiny_next_vlm", [(40, 64), (30, 90), (64, 40)], 24),  # 5 + 3 + 5 crops of 16 patches
    "qwen2.5-vl": ("tiny_qwen_vlm", [(40, 64), (64, 64), (30, 90), (64, 64)], 6),  # 8 / 16 / 12 / 16 tokens
}
QUESTION = "Is there a red circle?"


def _images(sizes: list[tuple[int, int]]) -> list[Image.Image]:
    rng = np.random.default_rng(3)
    return [Image.fromarray(rng.integers(0, 255, (h, w, 3), dtype=np.uint8)) for h, w in sizes]


@pytest.fixture(scope="module", params=sorted(FAMILIES))
def family(request: pytest.FixtureRequest):
    fixture, sizes, budget = FAMILIES[request.param]
    vlm = request.getfixturevalue(fixture)
    images = _images(sizes)
    questions = [QUESTION] * len(images)
    contexts = (vlm.vision_contexts(images, questions) if hasattr(vlm, "vision_contexts")
                else [vlm.vision_context(images, questions)])
    return vlm, images, contexts, budget


def _method(name: str, budget: int | None):
    return get_method(name) if name == "none" or budget is None else get_method(name, budget=budget)


def _runs_on(name: str, vlm) -> bool:
    cls = method_class(name)
    return not cls.needs_attention or vlm.prefix == 1 or "mean_received" in cls.attention_sources


@pytest.mark.parametrize("name", VISION_METHODS)
def test_contract_holds_on_each_familys_contexts(family, name: str) -> None:
    vlm, _, contexts, _ = family
    for ctx in contexts:
        method = _method(name, min(4, ctx.num_patches))
        if not _runs_on(name, vlm):
            with pytest.raises(ValueError, match="declares no substitute"):
                method(ctx)
            continue
        result = check_method(method, ctx)
        assert int(result.lengths.max()) <= (ctx.num_patches if name == "none" else 4)


@pytest.mark.parametrize("name", VISION_METHODS)
def test_every_vision_method_runs_through_each_adapter(family, name: str) -> None:
    vlm, images, _, budget = family
    prompts = [vlm.chat_prompt(QUESTION)] * len(images)
    method = _method(name, budget)
    if not _runs_on(name, vlm):
        with pytest.raises(ValueError, match=rf"method {name!r} needs a CLS attention row.*{vlm.name}"):
            vlm.generate(images, prompts, method=method, questions=[QUESTION] * len(images), max_new_tokens=2)
        return
    outs = vlm.generate(images, prompts, method=method, questions=[QUESTION] * len(images), max_new_tokens=2)
    assert len(outs) == len(images)
    for out in outs:
        assert 1 <= out.new_tokens <= 2 and out.batch_size == len(images)
        if name == "none":
            assert out.visual_tokens == out.uncompressed_visual_tokens
        else:  # a budget is visual tokens per image (fewer only when a merged cluster ends up empty)
            assert 1 <= out.visual_tokens <= budget
        assert out.prefill_tokens > out.visual_tokens and out.extra["prefill_flops"] > 0
        assert all(out.timings[stage] >= 0 for stage in ("vision_ms", "compress_ms", "prefill_ms", "decode_ms"))


@pytest.mark.parametrize("name", IN_LLM_METHODS)
def test_every_in_llm_method_runs_through_each_adapter(family, name: str) -> None:
    vlm, images, _, _ = family
    prompts = [vlm.chat_prompt(QUESTION)] * len(images)
    layers = vlm.config.text_config.num_hidden_layers
    for method in (get_method(name), get_method(name, budget=vlm.nominal_visual_tokens // 2)):
        outs = vlm.generate(images, prompts, method=method, max_new_tokens=2)
        for image, prompt, out in zip(images, prompts, outs, strict=True):
            per_layer = out.visual_tokens_per_layer
            assert len(per_layer) == layers and per_layer[0] == out.uncompressed_visual_tokens
            assert all(a >= b for a, b in itertools.pairwise(per_layer)) and per_layer[-1] >= 1
            assert out.visual_tokens == sum(per_layer) / layers and out.extra["prefill_flops"] > 0
            one = vlm.generate([image], [prompt], method=method, max_new_tokens=2)[0]
            assert (one.extra["token_ids"], one.visual_tokens_per_layer) == (out.extra["token_ids"], per_layer)
