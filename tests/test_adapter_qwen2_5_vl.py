"""The Qwen2.5-VL adapter on a random tiny checkpoint: `none` is the plain model, batched over images of several
sizes; kept tokens carry their original M-RoPE position ids (checked against the full sequence with the dropped
tokens masked out); the substitute attention is the mean attention received in the last full-attention block, put
back in raster order; methods without a declared substitute and bad input are refused."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from sparsezip.adapters.common import trim_at_eos
from sparsezip.adapters.qwen2_5_vl import qwen_visual_tokens
from sparsezip.adapters.qwen_tower import mean_received_attention
from sparsezip.adapters.registry import inspect_checkpoint, nominal_visual_tokens
from sparsezip.eval.summary import kv_bytes_per_token
from sparsezip.methods import get_method
from sparsezip.testing.methods import KeepFirst

# (height, width) -> merged grids 2x4, 4x4, 2x6, 4x4 on the tiny model (16 px per token, 32..64 px a side).
SIZES = [(40, 64), (64, 64), (30, 90), (60, 60)]
QUESTION = "Is there a red circle?"


def _images(sizes=SIZES, seed: int = 0) -> list[Image.Image]:
    rng = np.random.default_rng(seed)
    return [Image.fromarray(rng.integers(0, 255, (h, w, 3), dtype=np.uint8)) for h, w in sizes]


@pytest.fixture(scope="module")
def batch(tiny_qwen_vlm):
    images = _images()
    return images, [tiny_qwen_vlm.chat_prompt(QUESTION)] * len(images)


def test_none_reproduces_plain_generate_batched_over_image_sizes(tiny_qwen_vlm, batch) -> None:
    images, prompts = batch
    vlm = tiny_qwen_vlm
    inputs = vlm.encode(images, prompts)
    with torch.inference_mode():
        plain = vlm.model.generate(**inputs, max_new_tokens=5, do_sample=False, pad_token_id=vlm.pad_token_id)
        outs = vlm.generate(images, prompts, method=get_method("none"), max_new_tokens=5)
        prepared = vlm.prepare(images, prompts, method=get_method("none"))
        plain_logits = vlm.model(**inputs).logits
        our_logits = vlm.model(inputs_embeds=prepared.inputs_embeds, attention_mask=prepared.attention_mask,
                               position_ids=prepared.position_ids[1:]).logits
    prompt_len = inputs["input_ids"].shape[1]
    assert [o.extra["token_ids"] for o in outs] == [trim_at_eos(row, vlm.eos) for row in plain[:, prompt_len:].tolist()]
    assert torch.allclose(our_logits, plain_logits, atol=1e-5)
    assert [o.visual_tokens for o in outs] == [8.0, 16.0, 12.0, 16.0]
    assert [o.uncompressed_visual_tokens for o in outs] == [8, 16, 12, 16]


def test_prompts_with_the_suites_image_placeholder_become_qwens_vision_block(tiny_qwen_vlm, batch) -> None:
    images, prompts = batch
    generic = [p.replace("<|vision_start|><|image_pad|><|vision_end|>", "<image>") for p in prompts]
    assert generic[0] != prompts[0]
    native, ours = (tiny_qwen_vlm.encode(images, p)["input_ids"] for p in (prompts, generic))
    assert torch.equal(native, ours)


def test_kept_tokens_keep_their_original_mrope_positions(tiny_qwen_vlm, batch) -> None:
    images, prompts = batch
    vlm = tiny_qwen_vlm
    prepared = vlm.prepare(images, prompts, method=get_method("random", budget=5))
    keep, full = prepared.keep, prepared.full_position_ids
    assert prepared.visual.tolist() == [5, 5, 5, 5]
    real = prepared.attention_mask.bool()
    for b in range(len(images)):
        # Every kept token (visual and text) carries the (t, h, w) id it had in the uncompressed sequence ...
        assert torch.equal(prepared.position_ids[1:, b][:, real[b]], full[:, b][:, keep[b]])
        # ... so the text after the image keeps its numbering and the next token continues it.
        assert int(prepared.position_ids[1:, b, -1].max()) == int(full[:, b].max())
    # Row 0 (text positions, for the attention mask) is the packed sequence's own numbering.
    assert torch.equal(prepared.position_ids[0][real], (prepared.attention_mask.cumsum(1) - 1)[real])


def test_compressed_sequence_equals_full_sequence_with_dropped_tokens_masked(tiny_qwen_vlm, batch) -> None:
    # With original positions, cutting tokens is the same as hiding them from attention; a renumbering (or an
    # off-by-one in the kept positions) would change every logit after the image.
    images, prompts = batch
    vlm = tiny_qwen_vlm
    prepared = vlm.prepare(images, prompts, method=get_method("random", budget=5))
    inputs = vlm.encode(images, prompts)
    hidden_mask = inputs["attention_mask"] * prepared.keep.long()
    with torch.inference_mode():
        full = vlm.model(**{**inputs, "attention_mask": hidden_mask}, position_ids=prepared.full_position_ids).logits
        cut = vlm.model(inputs_embeds=prepared.inputs_embeds, attention_mask=prepared.attention_mask,
                        position_ids=prepared.position_ids[1:]).logits
        renumbered = vlm.model(inputs_embeds=prepared.inputs_embeds, attention_mask=prepared.attention_mask).logits
    assert torch.allclose(cut[:, -1], full[:, -1], atol=1e-5)
    assert not torch.allclose(renumbered[:, -1], full[:, -1], atol=1e-3)


def test_merged_tokens_sit_on_their_first_members_placeholder(tiny_qwen_vlm, batch) -> None:
    images, prompts = batch
    prepared = tiny_qwen_vlm.prepare(images[:1], prompts[:1], method=get_method("pool", budget=2))
    # A 2 x 4 grid pooled to 1 x 2 cells: cells start at merged tokens 0 and 2 (raster order).
    run = (tiny_qwen_vlm.encode(images[:1], prompts[:1])["input_ids"][0] == tiny_qwen_vlm.image_token_id)
    offsets = torch.nonzero(prepared.keep[0] & run).flatten() - int(torch.nonzero(run)[0])
    assert offsets.tolist() == [0, 2]


def test_contexts_have_no_cls_a_substitute_row_and_each_images_grid(tiny_qwen_vlm, batch) -> None:
    images, _ = batch
    contexts = tiny_qwen_vlm.vision_contexts(images, questions=[QUESTION] * len(images))
    assert [(c.batch_size, c.grid) for c in contexts] == [(1, (2, 4)), (1, (2, 6)), (2, (4, 4))]
    for ctx in contexts:
        assert ctx.prefix == 0 and ctx.attention_source == "mean_received"
        n = ctx.num_patches
        # Mean over an image's queries of their softmax rows sums to 1 over its patches per head; each merged
        # token holds the mean of its 4 patches (as the port does), so the row sums to 1/4.
        total = ctx.cls_attn.sum(dim=-1)
        assert torch.allclose(total, torch.full_like(total, 0.25), atol=1e-5)
        assert ctx.keys.shape[:2] == (ctx.batch_size, n) and ctx.text_query.shape == (ctx.batch_size, ctx.hidden.shape[2])


def test_mean_received_attention_matches_dense_softmax_per_segment() -> None:
    generator = torch.Generator().manual_seed(0)
    q, k = torch.randn(2, 11, 3, 4, generator=generator).unbind(0)
    bounds = torch.tensor([0, 4, 11])
    expected = torch.zeros(3, 11)
    for lo, hi in ((0, 4), (4, 11)):
        probs = (torch.einsum("qhd,khd->hqk", q[lo:hi], k[lo:hi]) * 0.5).softmax(-1)
        expected[:, lo:hi] = probs.mean(dim=1)
    assert torch.allclose(mean_received_attention(q, k, bounds, 0.5), expected, atol=1e-6)


def test_substitute_attention_is_in_raster_order(tiny_qwen_vlm) -> None:
    # Recompute the last full-attention block's attention densely in *raster* order (full attention does not care
    # about the window permutation) from its input, and compare with the tap's window-order result put back.
    from transformers.models.qwen2_5_vl.modeling_qwen2_5_vl import apply_rotary_pos_emb_vision
    from transformers.vision_utils import get_vision_window_index

    vlm = tiny_qwen_vlm
    image = _images([(40, 64)])
    pixels = vlm.image_processor(image, return_tensors="pt")
    grid = pixels["image_grid_thw"]
    block = vlm.model.model.visual.blocks[vlm.tap.layer_index]
    seen = {}
    handle = block.register_forward_pre_hook(lambda m, a, kw: seen.update(x=a[0], pe=kw["position_embeddings"]),
                                             with_kwargs=True)
    try:
        features = vlm.tap(pixels["pixel_values"], grid)
    finally:
        handle.remove()
    window_index, _ = get_vision_window_index(grid, 2, vlm.tap.window_size, vlm.tap.patch_size)
    unit_raster = torch.argsort(window_index)
    patch_raster = (unit_raster[:, None] * 4 + torch.arange(4)).flatten()  # window slot of each raster patch
    attn = block.attn
    x = block.norm1(seen["x"])[patch_raster]
    cos, sin = (t[patch_raster] for t in seen["pe"])
    q, k, _ = attn.qkv(x).reshape(x.shape[0], 3, attn.num_heads, -1).permute(1, 0, 2, 3).unbind(0)
    q, k = apply_rotary_pos_emb_vision(q, k, cos, sin)
    probs = (torch.einsum("qhd,khd->hqk", q.float(), k.float()) * attn.scaling).softmax(-1)
    expected = probs.mean(dim=1).reshape(attn.num_heads, -1, 4).mean(dim=2)
    assert torch.allclose(features.received, expected, atol=1e-5)


def test_a_method_without_a_declared_substitute_is_refused(tiny_qwen_vlm, batch) -> None:
    images, prompts = batch
    with pytest.raises(ValueError, match=r"method 'test-keep-first' needs a CLS attention row.*declares no substitute"):
        tiny_qwen_vlm.generate(images, prompts, method=KeepFirst(budget=2, needs_attention=True))
    for name in ("visionzip", "sparsezip"):  # their ports' substitute is declared
        outs = tiny_qwen_vlm.generate(images, prompts, method=get_method(name, budget=4),
                                      questions=[QUESTION] * len(images), max_new_tokens=2)
        assert [o.visual_tokens for o in outs] == [4.0] * len(images)


def test_nominal_tokens_and_gqa_kv_bytes(tiny_qwen_vlm, tiny_qwen_dir: Path) -> None:
    assert tiny_qwen_vlm.nominal_visual_tokens == nominal_visual_tokens(tiny_qwen_dir) == 16  # 336 px -> 64 px
    # Qwen/Qwen2.5-VL-*: min 56*56, max 28*28*1280 px, 14 px patches merged 2 x 2: a 336 px image = 144 tokens.
    assert qwen_visual_tokens(56 * 56, 28 * 28 * 1280, 14, 2) == 144
    text = tiny_qwen_vlm.config.text_config  # 2 KV heads x 16 dims, not hidden 64
    assert kv_bytes_per_token(tiny_qwen_vlm) == 2 * text.num_hidden_layers * 2 * 16 * 4


def test_bad_input_is_refused_with_one_clear_error(tiny_qwen_vlm, batch) -> None:
    images, prompts = batch
    with pytest.raises(ValueError, match=r"image 0 is 12x40 px; Qwen2.5-VL needs at least 16 px"):
        tiny_qwen_vlm.generate([Image.new("RGB", (12, 40))], prompts[:1], method=get_method("none"))
    with pytest.raises(ValueError, match="aspect ratio below 200"):
        tiny_qwen_vlm.generate([Image.new("RGB", (16, 3400))], prompts[:1], method=get_method("none"))
    with pytest.raises(ValueError, match="greedy decoding only; got num_beams=2"):  # in-LLM methods: greedy
        tiny_qwen_vlm.generate(images[:1], prompts[:1], method=get_method("sparsevlm"), num_beams=2)
    with pytest.raises(ValueError, match="exactly 1 image is needed"):
        tiny_qwen_vlm.generate(images[:1], ["<image> and <image>"], method=get_method("none"))
    with pytest.raises(ValueError, match="not a multiple of the 2 x 2 merge"):
        tiny_qwen_vlm.tap(torch.zeros(6, 384), torch.tensor([[1, 2, 3]]))


@pytest.mark.parametrize(("change", "message"), [
    ({"fullatt_block_indexes": []}, "fullatt_block_indexes must list full-attention blocks"),
    ({"fullatt_block_indexes": [9]}, "fullatt_block_indexes must list full-attention blocks of the 4"),
    ({"spatial_merge_size": 0}, "spatial_merge_size must be a positive int"),
])
def test_unsupported_configs_are_refused_before_loading(tiny_qwen_dir: Path, tmp_path: Path, change, message) -> None:
    copy = tmp_path / "ckpt"
    shutil.copytree(tiny_qwen_dir, copy)
    config = json.loads((copy / "config.json").read_text())
    config["vision_config"].update(change)
    (copy / "config.json").write_text(json.dumps(config))
    with pytest.raises(ValueError, match=message):
        inspect_checkpoint(copy)
