"""The in-LLM seam on LLaVA-NeXT (Llama decoder, GQA, 1-D RoPE) and Qwen2.5-VL (Qwen2 decoder, GQA, biased
projections, M-RoPE): a method that keeps everything reproduces plain ``generate`` (tokens, logits to 1e-5),
batched over images of several sizes, under either position policy; the layer states' attention rows are the
layers' own; what the position policies mean for M-RoPE (``sparsezip.adapters.layer_positions``) is what the
loop feeds the rotary embedding."""

from __future__ import annotations

from typing import ClassVar

import numpy as np
import pytest
import torch
from PIL import Image

from sparsezip.adapters.common import trim_at_eos
from sparsezip.adapters.layer_positions import Positions, renumbered
from sparsezip.context import CompressionResult, VisionContext
from sparsezip.methods.base import LayerDecision, LayerPruner, LayerState
from sparsezip.methods.none import NoCompression

QUESTION = "Is there a red circle?"
SIZES = {"next": [(40, 64), (64, 64), (30, 90), (20, 20)], "qwen": [(40, 64), (64, 64), (30, 90), (60, 60)]}
STEPS = 6


def _images(sizes) -> list[Image.Image]:
    rng = np.random.default_rng(3)
    return [Image.fromarray(rng.integers(0, 255, (h, w, 3), dtype=np.uint8)) for h, w in sizes]


class KeepAll(LayerPruner):
    """Acts after every layer and keeps every token; records the states (``position_policy`` set per test)."""

    name = "test-families-keep-all"
    seen: ClassVar[list[LayerState]] = []

    def pruning_layers(self, num_patches: int, num_layers: int) -> tuple[int, ...]:
        return tuple(range(num_layers))

    def prune(self, layer_index: int, state: LayerState) -> LayerDecision:
        self.seen.append(state)
        return LayerDecision(keep=state.visual_valid)

    def compress(self, ctx: VisionContext) -> CompressionResult:
        return NoCompression().compress(ctx)


class DropLastRows(KeepAll):
    """After layer 0, drop each row's last ``drop`` visual tokens (in Qwen's raster order: the last grid row of a
    2-column image when ``drop`` = 2)."""

    name = "test-families-drop-last"
    drop = 2

    def pruning_layers(self, num_patches: int, num_layers: int) -> tuple[int, ...]:
        return (0,)

    def prune(self, layer_index: int, state: LayerState) -> LayerDecision:
        rank = torch.arange(state.visual_index.shape[1], device=state.real.device)[None, :]
        return LayerDecision(keep=state.visual_valid & (rank < (state.visual_count - self.drop)[:, None]))


@pytest.fixture(params=["next", "qwen"])
def family(request: pytest.FixtureRequest):
    vlm = request.getfixturevalue("tiny_next_vlm" if request.param == "next" else "tiny_qwen_vlm")
    images = _images(SIZES[request.param])
    return request.param, vlm, images, [vlm.chat_prompt(QUESTION)] * len(images)


def _plain(kind: str, vlm, images, prompts) -> tuple[list[list[int]], torch.Tensor]:
    """HF ``generate`` on the processor's inputs: ``(tokens per row, logits [B, T, V])``."""
    if kind == "next":
        inputs = vlm.processor(images=images, text=prompts, return_tensors="pt", padding=True)
    else:
        inputs = vlm.encode(images, prompts)
    with torch.inference_mode():
        out = vlm.model.generate(**inputs, max_new_tokens=STEPS, do_sample=False, pad_token_id=vlm.pad_token_id,
                                 output_logits=True, return_dict_in_generate=True)
    tokens = [trim_at_eos(row, vlm.eos) for row in out.sequences[:, inputs["input_ids"].shape[1]:].tolist()]
    return tokens, torch.stack(out.logits, dim=1).float()


@pytest.mark.parametrize("policy", ["original", "renumber"])
def test_keeping_everything_is_the_plain_model(family, policy: str, monkeypatch: pytest.MonkeyPatch) -> None:
    kind, vlm, images, prompts = family
    monkeypatch.setattr(KeepAll, "position_policy", policy)
    monkeypatch.setattr(KeepAll, "seen", [])
    tokens, logits = _plain(kind, vlm, images, prompts)
    outputs = vlm.generate(images, prompts, method=KeepAll(), max_new_tokens=STEPS)
    assert [o.extra["token_ids"] for o in outputs] == tokens
    assert not bool(KeepAll.seen[0].real.all())  # images of several sizes: padded rows, masks exercised
    _, run = vlm.layerwise(images, prompts, KeepAll(), STEPS, record_logits=True)
    for b, row in enumerate(tokens):  # after its EOS, HF feeds a row padding, the loop its argmax: compare before
        torch.testing.assert_close(run.logits[b, :len(row)], logits[b, :len(row)], rtol=0, atol=1e-5)
    layers = vlm.config.text_config.num_hidden_layers
    for b, out in enumerate(outputs):
        assert out.visual_tokens_per_layer == [out.uncompressed_visual_tokens] * layers
        assert out.visual_tokens == out.uncompressed_visual_tokens and out.extra["counts_after_pruning"] == [
            out.uncompressed_visual_tokens] * layers
        single = vlm.generate([images[b]], [prompts[b]], method=KeepAll(), max_new_tokens=STEPS)[0]
        assert single.extra["token_ids"] == out.extra["token_ids"]


def test_state_attention_rows_are_the_layers_own(family, tmp_path, monkeypatch: pytest.MonkeyPatch) -> None:
    """``attention`` of layer 0 and ``next_attention`` equal HF's eager attention maps (GQA, biases, M-RoPE)."""
    kind, vlm, images, prompts = family
    monkeypatch.setattr(KeepAll, "seen", [])
    monkeypatch.setattr(vlm.model.config.text_config, "_attn_implementation", "eager")
    batch, _ = vlm.layerwise(images, prompts, KeepAll(), 1)
    extra = {} if kind == "next" else {"position_ids": batch.position_ids}
    with torch.inference_mode():
        maps = vlm.model.model.language_model(inputs_embeds=batch.inputs_embeds, attention_mask=batch.attention_mask,
                                              output_attentions=True, **extra).attentions
    state = KeepAll.seen[0]
    s = state.real.shape[1]
    rows = torch.tensor([[s - 1, s - 3]] * state.real.shape[0])
    with torch.inference_mode():
        pairs = ((state.attention(rows), maps[0]), (state.next_attention(rows), maps[1]))
    for probs, reference in pairs:
        expected = reference.gather(2, rows[:, None, :, None].expand(-1, reference.shape[1], -1, s))
        torch.testing.assert_close(probs, expected.float(), rtol=1e-5, atol=1e-6)


def _rope_calls(vlm, monkeypatch: pytest.MonkeyPatch) -> list[torch.Tensor]:
    """Every ``position_ids`` the decoder's rotary embedding receives, in call order."""
    calls: list[torch.Tensor] = []
    rotary = vlm.model.model.language_model.rotary_emb
    original = type(rotary).forward

    def spy(self, x, position_ids):
        calls.append(position_ids.clone())
        return original(self, x, position_ids)

    monkeypatch.setattr(type(rotary), "forward", spy)
    return calls


@pytest.mark.parametrize("policy", ["original", "renumber"])
def test_qwen_survivors_position_ids_follow_the_policy(tiny_qwen_vlm, policy: str,
                                                       monkeypatch: pytest.MonkeyPatch) -> None:
    vlm = tiny_qwen_vlm
    # 4 x 2 and 3 x 2 merged grids: dropping 2 tokens drops the last grid row, the one with the largest h id
    images = _images([(64, 32), (48, 32)])
    prompts = [vlm.chat_prompt(QUESTION)] * 2
    monkeypatch.setattr(DropLastRows, "position_policy", policy)
    calls = _rope_calls(vlm, monkeypatch)
    batch, run = vlm.layerwise(images, prompts, DropLastRows(), 3)
    full, real = batch.position_ids[1:], batch.attention_mask.bool()
    assert torch.equal(calls[0], full)  # the prefill starts from get_rope_index's ids
    image = (batch.input_ids == vlm.image_token_id) & real
    counts = image.sum(dim=1)
    last = image & (image.long().cumsum(dim=1) > (counts - DropLastRows.drop)[:, None])
    survivors = real & ~last
    after = real & ((image.long().cumsum(dim=1) == counts[:, None]) & ~image)
    pruned = calls[1]  # after layer 0: the survivors, left-padded again
    layers = vlm.config.text_config.num_hidden_layers
    for b in range(2):
        kept_full = full[:, b][:, survivors[b]]
        kept_now = pruned[:, b][:, -int(survivors[b].sum()):]
        gap = int(full[:, b][:, last[b]].max()) - int(full[:, b][:, image[b] & ~last[b]].max())  # one grid row
        assert gap == 1
        text_after = after[b][survivors[b]]
        if policy == "original":
            assert torch.equal(kept_now, kept_full)
        else:  # grid tokens and the text before keep theirs; the text after moves up by the dropped row
            assert torch.equal(kept_now[:, ~text_after], kept_full[:, ~text_after])
            assert torch.equal(kept_now[:, text_after], kept_full[:, text_after] - gap)
        # decoding: one past the largest id of each layer's cache (layer 0 holds the full sequence)
        decode = calls[2:2 + layers]
        top = int(full[:, b][:, real[b]].max())
        assert int(decode[0][0, b, 0]) == top + 1
        assert int(decode[1][0, b, 0]) == top + 1 - (0 if policy == "original" else gap)
    assert run.visual_tokens_per_layer == [[8] + [6] * (layers - 1), [6] + [4] * (layers - 1)]


def test_mrope_renumbering_rule() -> None:
    """Text before the image and grid tokens keep their ids; merged tokens and the text after them continue one past
    the largest kept id; 1-D ids are numbered contiguously; padding gets 0."""
    # row: pad | text 0 1 | image cells (2,2,2) (2,2,3) (2,3,2)->dropped | merged | text after (old 5, 6)
    rope = torch.tensor([[0, 0, 1, 2, 2, 0, 5, 6], [0, 0, 1, 2, 2, 0, 5, 6], [0, 0, 1, 2, 3, 0, 5, 6]])[:, None]
    real = torch.tensor([[False, True, True, True, True, True, True, True]])
    before = torch.tensor([[False, True, True, False, False, False, False, False]])
    gridded = torch.tensor([[False, False, False, True, True, False, False, False]])
    out = renumbered(Positions(torch.zeros(1, 8, dtype=torch.long), rope), real, before, gridded)
    assert out.rope[:, 0].tolist() == [[0, 0, 1, 2, 2, 4, 5, 6], [0, 0, 1, 2, 2, 4, 5, 6], [0, 0, 1, 2, 3, 4, 5, 6]]
    assert out.text.tolist() == [[0, 0, 1, 2, 3, 4, 5, 6]]
    flat = renumbered(Positions(rope[0], rope[0]), real, before, gridded)
    assert flat.rope.tolist() == flat.text.tolist() == [[0, 0, 1, 2, 3, 4, 5, 6]]


def test_in_llm_costs_are_the_familys(family, tmp_path) -> None:
    """Prefill FLOPs count each layer's own tokens with the family's GQA widths; the run's KV-cache saving is the
    layer-averaged visual tokens saved times the family's (GQA) bytes per token."""
    from pathlib import Path

    from sparsezip.adapters.common import prefill_flops
    from sparsezip.data import load_dataset, resolve_dataset
    from sparsezip.eval.runner import evaluate
    from sparsezip.eval.summary import kv_bytes_per_token

    _, vlm, images, prompts = family
    full = vlm.generate(images, prompts, method=KeepAll(), max_new_tokens=2)
    pruned = vlm.generate(images, prompts, method=DropLastRows(), max_new_tokens=2)
    text = vlm.config.text_config
    assert text.num_key_value_heads < text.num_attention_heads  # GQA
    for a, b in zip(full, pruned, strict=True):
        layers = text.num_hidden_layers
        assert b.visual_tokens_per_layer == [a.uncompressed_visual_tokens] + [a.uncompressed_visual_tokens - 2] * (
            layers - 1)
        expected = prefill_flops(text, [b.prefill_tokens] + [b.prefill_tokens - 2] * (layers - 1))
        assert b.extra["prefill_flops"] == expected < a.extra["prefill_flops"]
    _, path, options = resolve_dataset(Path(__file__).resolve().parents[1] / "fixtures" / "data", "pope-random")
    samples = list(load_dataset("pope", path, **options))[:2]
    summary = evaluate(vlm, DropLastRows(), samples, tmp_path / "run", dataset="pope", progress=False)
    saved = 2 * (text.num_hidden_layers - 1) / text.num_hidden_layers
    assert summary["memory"]["kv_cache_saved_bytes_per_sample"] == pytest.approx(saved * kv_bytes_per_token(vlm))
