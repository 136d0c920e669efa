"""The LLaVA adapter on a tiny random checkpoint loaded with from_pretrained: exactness against the plain model,
every registered method end to end, isolation from other models, and every bad input."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from torch import nn

from sparsezip.adapters.api import STAGES
from sparsezip.adapters.llava import LlavaVLM, load_llava
from sparsezip.context import CompressionResult, VisionContext
from sparsezip.data.prompts import llava_v1_prompt
from sparsezip.embedded.models import build_tiny_llava
from sparsezip.methods import CompressionMethod, get_method, list_methods, method_class
from sparsezip.testing.methods import KeepEveryNth, KeepFirst

QUESTIONS = ["Is there a red circle in the image?", "What is the total amount?", "How many shapes are there?"]
PROMPTS = [llava_v1_prompt(q) for q in QUESTIONS]
MAX_NEW = 4


def _images() -> list[Image.Image]:
    rng = np.random.default_rng(0)
    return [Image.fromarray(rng.integers(0, 256, (60 + 12 * i, 80 - 8 * i, 3), dtype=np.uint8)) for i in range(3)]


IMAGES = _images()


METHOD_NAMES = [*list_methods(), KeepEveryNth.name]


def make_method(name: str) -> CompressionMethod:
    return KeepEveryNth() if name == KeepEveryNth.name else get_method(name)


def is_llm_stage(name: str) -> bool:
    return name != KeepEveryNth.name and method_class(name).stage == "llm"


@pytest.fixture
def vlm(tiny_vlm: LlavaVLM) -> LlavaVLM:
    return tiny_vlm


@pytest.fixture
def plain(tiny_plain):
    return tiny_plain


@pytest.fixture(scope="module")
def batched_run(tiny_vlm: LlavaVLM):
    """``batched_run(name)``: the outputs of one batched generate over all three samples, computed once per
    method and shared by the tests below (generation is the slow part)."""
    cache: dict[str, list] = {}

    def run(name: str) -> list:
        if name not in cache:
            cache[name] = tiny_vlm.generate(IMAGES, PROMPTS, method=make_method(name), questions=QUESTIONS,
                                            max_new_tokens=MAX_NEW)
        return cache[name]

    return run


def llava_padded(image: Image.Image, image_mean) -> Image.Image:
    """LLaVA-1.5's ``expand2square`` written out from its definition: the image centred on a square of
    ``int(255 * mean)`` per channel (offset ``(side - w) // 2``, ``(side - h) // 2``)."""
    pixels = np.asarray(image.convert("RGB"))
    h, w, _ = pixels.shape
    side = max(h, w)
    square = np.empty((side, side, 3), dtype=np.uint8)
    square[:] = [int(x * 255) for x in image_mean]
    top, left = (side - h) // 2, (side - w) // 2
    square[top:top + h, left:left + w] = pixels
    return Image.fromarray(square)


def plain_generate(plain, images, prompts, *, pad: bool = True, **kwargs) -> list[list[int]]:
    """HF generate on the images as LLaVA-1.5 evaluates them (padded to squares), or as given (``pad=False``:
    the processor center-crops)."""
    model, processor = plain
    if pad:
        images = [llava_padded(im, processor.image_processor.image_mean) for im in images]
    inputs = processor(images=images, text=prompts, return_tensors="pt", padding=True)
    with torch.inference_mode():
        out = model.generate(**inputs, **{"max_new_tokens": MAX_NEW, "do_sample": False, **kwargs})
    return [trim_at_eos(row, model.generation_config.eos_token_id) for row in out[:, inputs["input_ids"].shape[1]:].tolist()]


def trim_at_eos(row: list[int], eos: int) -> list[int]:
    return row[: row.index(eos) + 1] if eos in row else row


# ---------------------------------------------------------------------------------------------- exactness
@pytest.mark.parametrize("batch", [1, 3])
def test_none_reproduces_the_plain_model(vlm: LlavaVLM, plain, batched_run, batch: int) -> None:
    images, prompts = IMAGES[:batch], PROMPTS[:batch]
    outputs = batched_run("none") if batch == 3 else vlm.generate(images, prompts, method=get_method("none"),
                                                                  max_new_tokens=MAX_NEW)
    assert [o.extra["token_ids"] for o in outputs] == plain_generate(plain, images, prompts)

    model, processor = plain
    padded = [llava_padded(im, processor.image_processor.image_mean) for im in images]
    inputs = processor(images=padded, text=prompts, return_tensors="pt", padding=True)
    prepared = vlm.prepare(images, prompts, method=get_method("none"))
    assert torch.equal(prepared.attention_mask, inputs["attention_mask"])
    with torch.inference_mode():
        reference = model(**inputs).logits
        adapted = vlm.model(inputs_embeds=prepared.inputs_embeds, attention_mask=prepared.attention_mask).logits
    real = inputs["attention_mask"].bool()
    torch.testing.assert_close(adapted[real], reference[real], rtol=1e-5, atol=1e-5)


def test_pad_to_square_is_llava_15s_protocol_and_crop_stays_available(tiny_llava_dir: Path, vlm: LlavaVLM,
                                                                       plain) -> None:
    """Issue 10: on non-square images ``none`` through the adapter gives exactly plain HF generate's tokens on
    the expand2square-padded images (default), and ``pad=False`` those on the images as given (center crop);
    on this checkpoint the two protocols give different tokens, so the test can tell them apart."""
    images, prompts = [IMAGES[0], IMAGES[2]], [PROMPTS[0], PROMPTS[2]]
    assert all(im.width != im.height for im in images)
    assert vlm.image_aspect_ratio == "pad" and vlm.processor.image_processor.backend == "pil"
    padded = [o.extra["token_ids"] for o in vlm.generate(images, prompts, method=get_method("none"),
                                                          max_new_tokens=8)]
    crop_vlm = load_llava(tiny_llava_dir, pad=False)
    cropped = [o.extra["token_ids"] for o in crop_vlm.generate(images, prompts, method=get_method("none"),
                                                                max_new_tokens=8)]
    assert crop_vlm.image_aspect_ratio == "crop"
    assert padded == plain_generate(plain, images, prompts, max_new_tokens=8)
    assert cropped == plain_generate(plain, images, prompts, pad=False, max_new_tokens=8)
    assert padded != cropped
    # calibration sees the same pixels as generation: the padded image's features
    padded_ctx = vlm.vision_context(images[:1])
    reference = crop_vlm.vision_context([llava_padded(images[0], vlm.processor.image_processor.image_mean)])
    torch.testing.assert_close(padded_ctx.hidden, reference.hidden, rtol=0, atol=0)


def test_scatter_agrees_with_hf_mm_encoder_outputs(vlm: LlavaVLM, batched_run) -> None:
    """The adapter scatters projected tokens into inputs_embeds; transformers 5's own route for precomputed
    features (mm_encoder_outputs) gives the same tokens, here with a different K per image."""
    from transformers.modeling_outputs import BaseModelOutputWithPooling

    prepared = vlm.prepare(IMAGES, PROMPTS, method=KeepEveryNth())
    ids = prepared.input_ids
    with torch.inference_mode():
        projected = vlm.model.model.multi_modal_projector(prepared.result.tokens)
        per_image = [projected[b, :n] for b, n in enumerate(prepared.result.lengths.tolist())]
        out = vlm.model.generate(
            input_ids=ids, attention_mask=prepared.attention_mask, max_new_tokens=MAX_NEW, do_sample=False,
            mm_encoder_outputs={"image": BaseModelOutputWithPooling(pooler_output=per_image)},
        )
    rows = [trim_at_eos(row, vlm.model.generation_config.eos_token_id) for row in out[:, ids.shape[1]:].tolist()]
    assert rows == [o.extra["token_ids"] for o in batched_run(KeepEveryNth.name)]


# ---------------------------------------------------------------------------------------------- every method
@pytest.mark.parametrize("name", METHOD_NAMES)
def test_visual_positions_fed_equal_the_methods_token_count(vlm: LlavaVLM, batched_run, name: str) -> None:
    prepared = vlm.prepare(IMAGES, PROMPTS, method=make_method(name), questions=QUESTIONS)
    fed = prepared.image_mask.sum(dim=1)
    assert torch.equal(fed, prepared.result.lengths)
    outputs = batched_run(name)
    text_tokens = prepared.attention_mask.sum(dim=1) - fed
    assert prepared.uncompressed.tolist() == [vlm.nominal_visual_tokens] * len(IMAGES) == [144] * len(IMAGES)
    for b, out in enumerate(outputs):
        assert out.prefill_tokens == int(prepared.attention_mask[b].sum())
        assert out.uncompressed_visual_tokens == 144  # every LLaVA-1.5 image: all its patches
        if is_llm_stage(name):
            assert out.visual_tokens == pytest.approx(np.mean(out.visual_tokens_per_layer))
            assert len(out.visual_tokens_per_layer) == vlm.model.config.text_config.num_hidden_layers
        else:
            assert out.visual_tokens == int(fed[b]) and out.visual_tokens_per_layer is None
        assert int(text_tokens[b]) > 0


def test_variable_token_counts_per_image_really_differ(vlm: LlavaVLM) -> None:
    prepared = vlm.prepare(IMAGES, PROMPTS, method=KeepEveryNth())
    assert prepared.result.lengths.tolist() == [72, 48, 36]  # 144 patches, every 2nd / 3rd / 4th
    assert prepared.image_mask.sum(dim=1).tolist() == [72, 48, 36]


@pytest.mark.parametrize("name", METHOD_NAMES)
def test_batched_generation_equals_per_sample(vlm: LlavaVLM, batched_run, name: str) -> None:
    batched = batched_run(name)
    if name == KeepEveryNth.name:
        # per-sample K depends on the position in the batch for this test method; compare like with like
        singles = [
            vlm.generate(IMAGES[: b + 1], PROMPTS[: b + 1], method=KeepEveryNth(), questions=QUESTIONS[: b + 1],
                         max_new_tokens=MAX_NEW)[b]
            for b in range(3)
        ]
    else:
        singles = [
            vlm.generate([IMAGES[b]], [PROMPTS[b]], method=make_method(name), questions=[QUESTIONS[b]],
                         max_new_tokens=MAX_NEW)[0]
            for b in range(3)
        ]
    assert [o.extra["token_ids"] for o in batched] == [o.extra["token_ids"] for o in singles]
    assert [o.visual_tokens for o in batched] == [o.visual_tokens for o in singles]


@pytest.mark.parametrize("name", METHOD_NAMES)
def test_beam_search(vlm: LlavaVLM, plain, name: str) -> None:
    if is_llm_stage(name):
        with pytest.raises(ValueError, match="greedy decoding only"):
            vlm.generate(IMAGES[:2], PROMPTS[:2], method=make_method(name), num_beams=2)
        return
    outputs = vlm.generate(IMAGES[:2], PROMPTS[:2], method=make_method(name), questions=QUESTIONS[:2],
                           num_beams=2, max_new_tokens=MAX_NEW)
    assert len(outputs) == 2 and all(1 <= o.new_tokens <= MAX_NEW for o in outputs)
    if name == "none":  # beams through the adapter are HF's own beam search
        assert [o.extra["token_ids"] for o in outputs] == plain_generate(plain, IMAGES[:2], PROMPTS[:2], num_beams=2)


@pytest.mark.parametrize("name", METHOD_NAMES)
def test_generation_is_deterministic(vlm: LlavaVLM, batched_run, name: str) -> None:
    again = vlm.generate(IMAGES, PROMPTS, method=make_method(name), questions=QUESTIONS, max_new_tokens=MAX_NEW)
    assert [o.extra["token_ids"] for o in again] == [o.extra["token_ids"] for o in batched_run(name)]
    assert [o.visual_tokens_per_layer for o in again] == [o.visual_tokens_per_layer for o in batched_run(name)]


# ---------------------------------------------------------------------------------------------- outputs
def test_stage_timings_and_counts_are_reported(vlm: LlavaVLM) -> None:
    outputs = vlm.generate(IMAGES, PROMPTS, method=KeepEveryNth(), max_new_tokens=MAX_NEW)
    for out in outputs:
        assert set(out.timings) == set(STAGES)
        parts = [out.timings[k] for k in STAGES if k != "total_ms"]
        assert all(v >= 0 for v in parts) and out.timings["total_ms"] > 0
        assert sum(parts) <= out.timings["total_ms"] * (1 + 1e-9) + 1e-6  # stages never overlap
        assert out.batch_size == 3 and 1 <= out.new_tokens <= MAX_NEW
        assert out.text == vlm.tokenizer.decode(out.extra["token_ids"], skip_special_tokens=True)
        assert out.extra["prefill_flops"] > 0
    assert outputs[0].to_json()["timings"] == outputs[0].timings


def test_text_query_is_the_projected_mean_question_embedding(vlm: LlavaVLM) -> None:
    method = KeepEveryNth()
    vlm.prepare(IMAGES[:2], PROMPTS[:2], method=method, questions=QUESTIONS[:2])
    query = method.seen_text_query
    assert query is not None and tuple(query.shape) == (2, vlm.model.config.vision_config.hidden_size)
    projector = vlm.model.model.multi_modal_projector
    w1, w2 = projector.linear_1.weight.detach(), projector.linear_2.weight.detach()
    for b, question in enumerate(QUESTIONS[:2]):
        ids = vlm.tokenizer(question, add_special_tokens=False, return_tensors="pt")["input_ids"]
        t = vlm.model.get_input_embeddings()(ids)[0].mean(dim=0).detach()
        torch.testing.assert_close(query[b], w1.T @ (w2.T @ t), rtol=1e-4, atol=1e-5)

    vlm.prepare(IMAGES[:2], PROMPTS[:2], method=method, questions=None)
    assert method.seen_text_query is None


def test_chat_prompt_uses_the_checkpoint_template(vlm: LlavaVLM) -> None:
    prompt = vlm.chat_prompt("Is it red?")
    assert prompt.count("<image>") == 1 and "Is it red?" in prompt and prompt.endswith("ASSISTANT:")
    assert vlm.generate(IMAGES[:1], [prompt], method=get_method("none"), max_new_tokens=2)[0].new_tokens >= 1


# ---------------------------------------------------------------------------------------------- isolation
def _hook_count(model: nn.Module) -> int:
    return sum(len(m._forward_hooks) + len(m._forward_pre_hooks) for m in model.modules())


def test_adapter_leaves_other_models_in_the_process_unmodified(vlm: LlavaVLM, plain) -> None:
    from transformers.models.clip.modeling_clip import CLIPAttention

    forward_before = CLIPAttention.forward
    before = plain_generate(plain, IMAGES, PROMPTS)
    hooks = (_hook_count(vlm.model), _hook_count(plain[0]))
    vlm.generate(IMAGES, PROMPTS, method=KeepEveryNth(), max_new_tokens=MAX_NEW)
    assert plain_generate(plain, IMAGES, PROMPTS) == before
    assert (_hook_count(vlm.model), _hook_count(plain[0])) == hooks
    assert CLIPAttention.forward is forward_before
    assert vlm.model.config.vision_config._attn_implementation == "sdpa"


def test_hooks_are_removed_when_the_method_fails(vlm: LlavaVLM) -> None:
    class Broken(CompressionMethod):
        name = "test-broken"

        def compress(self, ctx: VisionContext) -> CompressionResult:
            raise RuntimeError("boom")

    hooks = _hook_count(vlm.model)
    with pytest.raises(RuntimeError, match="boom"):
        vlm.generate(IMAGES[:1], PROMPTS[:1], method=Broken())
    assert _hook_count(vlm.model) == hooks


# ---------------------------------------------------------------------------------------------- bad input
class _AttentionWithoutProjections(nn.Module):
    """Stands in for an attention module the tap cannot read (e.g. a fused qkv projection)."""

    def __init__(self, inner: nn.Module) -> None:
        super().__init__()
        self.inner = inner

    def forward(self, *args, **kwargs):
        return self.inner(*args, **kwargs)


def test_method_needing_attention_on_a_tower_that_cannot_provide_it() -> None:
    model, processor = build_tiny_llava(seed=2)
    layer = model.model.vision_tower.encoder.layers[-2]
    layer.self_attn = _AttentionWithoutProjections(layer.self_attn)
    vlm = LlavaVLM(model, processor)
    with pytest.raises(ValueError, match=r"needs the CLS attention row.*no nn.Linear q_proj"):
        vlm.generate(IMAGES[:1], PROMPTS[:1], method=KeepFirst(8, needs_attention=True))
    # methods that do not need attention still run
    assert vlm.generate(IMAGES[:1], PROMPTS[:1], method=get_method("none"), max_new_tokens=1)[0].new_tokens == 1


@pytest.mark.parametrize(
    ("images", "prompts", "match"),
    [
        (IMAGES[:2], PROMPTS[:1], "2 images for 1 prompts"),
        (IMAGES[:1], ["USER: no placeholder ASSISTANT:"], "prompt 0 holds 0 <image>"),
        (IMAGES[:2], [PROMPTS[0], "<image> <image> twice"], "prompt 1 holds 2 <image>"),
        ([], [], "at least one prompt"),
    ],
)
def test_image_count_must_match_the_placeholders(vlm: LlavaVLM, images, prompts, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        vlm.generate(images, prompts, method=get_method("none"))


@pytest.mark.parametrize("name", list_methods())
def test_budget_larger_than_the_token_count(vlm: LlavaVLM, name: str) -> None:
    with pytest.raises(ValueError, match="budget"):
        vlm.generate(IMAGES[:1], PROMPTS[:1], method=get_method(name, budget=vlm.num_patches * 8))


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"questions": QUESTIONS[:2]}, "2 questions for 1 prompts"),
        ({"questions": ["  "]}, "questions \\[0\\] are empty"),
        ({"max_new_tokens": 0}, "max_new_tokens"),
        ({"num_beams": 0}, "num_beams"),
    ],
)
def test_bad_generation_arguments(vlm: LlavaVLM, kwargs: dict, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        vlm.generate(IMAGES[:1], PROMPTS[:1], method=KeepEveryNth(), **kwargs)


def test_bad_models_and_paths(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="not a checkpoint directory"):
        load_llava(tmp_path / "missing")
    model, processor = build_tiny_llava(seed=3)
    with pytest.raises(ValueError, match="expected a LlavaForConditionalGeneration"):
        LlavaVLM(model.model.language_model, processor)
    model.config.vision_feature_select_strategy = "full"
    with pytest.raises(ValueError, match="vision_feature_select_strategy"):
        LlavaVLM(model, processor)
    with pytest.raises(ValueError, match="must be a CompressionMethod"):
        LlavaVLM(build_tiny_llava(seed=3)[0], processor).generate(IMAGES[:1], PROMPTS[:1], method="none")


def test_dtype_by_name_and_a_half_precision_run(tiny_llava_dir: Path) -> None:
    vlm = load_llava(tiny_llava_dir, dtype="bfloat16")
    assert vlm.model.dtype == torch.bfloat16
    out = vlm.generate(IMAGES[:2], PROMPTS[:2], method=KeepEveryNth(), questions=QUESTIONS[:2], max_new_tokens=2)
    assert all(o.new_tokens >= 1 for o in out)
    for bad in ("int8", "banana"):
        with pytest.raises(ValueError, match="floating-point dtype"):
            load_llava(tiny_llava_dir, dtype=bad)


def test_padding_falls_back_to_eos_without_a_pad_token() -> None:
    model, processor = build_tiny_llava(seed=4)
    processor.tokenizer.pad_token = None
    vlm = LlavaVLM(model, processor)
    assert vlm.pad_token_id == model.generation_config.eos_token_id
    assert vlm.generate(IMAGES[:1], PROMPTS[:1], method=KeepFirst(16), max_new_tokens=2)[0].new_tokens >= 1
    with pytest.raises(ValueError, match="no pad token, so batches need size 1"):
        vlm.generate(IMAGES[:2], PROMPTS[:2], method=KeepFirst(16))


def test_a_batch_encodes_each_distinct_image_once(vlm: LlavaVLM, monkeypatch: pytest.MonkeyPatch) -> None:
    """POPE asks several questions about one image in a row: the tower sees each distinct image once per batch,
    and every question gets the answer it gets alone."""
    images = [IMAGES[0], IMAGES[1], IMAGES[0].copy(), IMAGES[0]]  # a copy: same pixels, another object
    prompts = [PROMPTS[0], PROMPTS[1], PROMPTS[2], PROMPTS[1]]
    questions = [QUESTIONS[0], QUESTIONS[1], QUESTIONS[2], QUESTIONS[1]]
    method = get_method("sparsezip", budget=16)
    alone = [vlm.generate([i], [p], method=method, questions=[q], max_new_tokens=MAX_NEW)[0]
             for i, p, q in zip(images, prompts, questions, strict=True)]
    tower_call, seen = type(vlm.tap).__call__, []
    monkeypatch.setattr(type(vlm.tap), "__call__",
                        lambda tap, pixels: seen.append(pixels.shape[0]) or tower_call(tap, pixels))
    together = vlm.generate(images, prompts, method=method, questions=questions, max_new_tokens=MAX_NEW)
    assert seen == [2]
    assert [o.extra["token_ids"] for o in together] == [o.extra["token_ids"] for o in alone]
    assert [o.extra["k"] for o in together] == [o.extra["k"] for o in alone]
