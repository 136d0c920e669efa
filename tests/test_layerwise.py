"""The in-LLM seam: the LayerPruner protocol and the generic batched layer-wise loop, shown with throwaway
methods registered for one test (keep the first k visual tokens after layer 1; keep everything)."""

from __future__ import annotations

from typing import ClassVar

import numpy as np
import pytest
import torch
from PIL import Image

from sparsezip.adapters.layerwise import repack_index, segments
from sparsezip.adapters.llava import LlavaVLM
from sparsezip.context import CompressionResult, VisionContext
from sparsezip.data.prompts import llava_v1_prompt
from sparsezip.imageprep import prepare_images
from sparsezip.methods import get_method, list_methods, method_class, register_method
from sparsezip.methods.base import LayerDecision, LayerPruner, LayerState, unregister_method
from sparsezip.methods.none import NoCompression
from sparsezip.testing.contract import check_declarations

QUESTIONS = ["Is there a red circle in the image?", "What is the total amount written on the form?", "Count."]
PROMPTS = [llava_v1_prompt(q) for q in QUESTIONS]


def _images() -> list[Image.Image]:
    rng = np.random.default_rng(7)
    return [Image.fromarray(rng.integers(0, 256, (64, 64 + 16 * i, 3), dtype=np.uint8)) for i in range(3)]


class KeepFirstVisual(LayerPruner):
    """After layer ``after``, keep each row's first ``k`` visual tokens (FastV-like: original positions)."""

    name = "test-keep-first-visual"
    position_policy = "original"

    def __init__(self, budget: int | None = None, k: int = 10, after: int = 1) -> None:
        self.k, self.after = k, after

    def pruning_layers(self, num_patches: int, num_layers: int) -> tuple[int, ...]:
        return (self.after,)

    def prune(self, layer_index: int, state: LayerState) -> LayerDecision:
        rank = torch.arange(state.visual_index.shape[1], device=state.visual_index.device)[None, :]
        return LayerDecision(keep=state.visual_valid & (rank < self.k))

    def compress(self, ctx: VisionContext) -> CompressionResult:
        return NoCompression().compress(ctx)


class KeepAll(KeepFirstVisual):
    """Acts at every layer and keeps everything, recording the states it saw; ``position_policy`` set per test."""

    name = "test-keep-all"
    seen: ClassVar[list[LayerState]] = []

    def pruning_layers(self, num_patches: int, num_layers: int) -> tuple[int, ...]:
        return tuple(range(num_layers))

    def prune(self, layer_index: int, state: LayerState) -> LayerDecision:
        self.seen.append(state)
        return LayerDecision(keep=state.visual_valid)


@pytest.fixture
def registry():
    """``registry(cls)`` registers a throwaway method for one test; it is unregistered afterwards."""
    added: list[str] = []

    def add(cls: type) -> type:
        added.append(register_method(cls).name)
        return cls

    yield add
    for name in added:
        unregister_method(name)


def test_a_new_in_llm_method_is_one_class_and_runs_batched(tiny_vlm: LlavaVLM, registry) -> None:
    registry(KeepFirstVisual)
    assert "test-keep-first-visual" in list_methods() and method_class("test-keep-first-visual").stage == "llm"
    method = get_method("test-keep-first-visual", k=10)
    check_declarations(method)
    assert method_class("test-keep-first-visual").benchmark.budgets  # the matrix would pick it up as well
    images = _images()
    batched = tiny_vlm.generate(images, PROMPTS, method=method, max_new_tokens=4)
    n = tiny_vlm.num_patches
    for b, out in enumerate(batched):
        assert out.visual_tokens_per_layer == [n, n, 10, 10]  # layer 1 keeps its full cache; 2 and 3 hold 10
        assert out.visual_tokens == (2 * n + 20) / 4 and out.extra["counts_after_pruning"] == [10]
        assert out.batch_size == 3 and 1 <= out.new_tokens <= 4
        single = tiny_vlm.generate([images[b]], [PROMPTS[b]], method=method, max_new_tokens=4)[0]
        assert out.extra["token_ids"] == single.extra["token_ids"]
    # what was dropped matters: keeping a different number of tokens changes the prefill cost
    fewer = tiny_vlm.generate(images[:1], PROMPTS[:1], method=KeepFirstVisual(k=3), max_new_tokens=1)[0]
    assert fewer.extra["prefill_flops"] < batched[0].extra["prefill_flops"]


class KeepFirstMergeRest(KeepFirstVisual):
    """Keep the first ``k`` visual tokens and merge the rest into one mean token after them (renumbered)."""

    name = "test-keep-first-merge-rest"
    position_policy = "renumber"

    def prune(self, layer_index: int, state: LayerState) -> LayerDecision:
        decision = super().prune(layer_index, state)
        rest = (state.visual_valid & ~decision.keep).float()[:, :, None]
        visual = state.hidden.gather(1, state.visual_index.clamp_min(0)[:, :, None].expand(-1, -1,
                                                                                           state.hidden.shape[2]))
        mean = (visual * rest).sum(1, keepdim=True) / rest.sum(1, keepdim=True)
        return LayerDecision(keep=decision.keep, merged=mean.to(state.hidden.dtype))


def test_merged_tokens_are_inserted_after_the_kept_ones(tiny_vlm: LlavaVLM) -> None:
    images = _images()
    method = KeepFirstMergeRest(k=5, after=0)
    batched = tiny_vlm.generate(images, PROMPTS, method=method, max_new_tokens=3)
    n = tiny_vlm.num_patches
    for b, out in enumerate(batched):
        assert out.visual_tokens_per_layer == [n, 6, 6, 6] and out.extra["counts_after_pruning"] == [6]
        single = tiny_vlm.generate([images[b]], [PROMPTS[b]], method=method, max_new_tokens=3)[0]
        assert out.extra["token_ids"] == single.extra["token_ids"]


@pytest.mark.parametrize("policy", ["original", "renumber"])
def test_keeping_everything_at_every_layer_is_the_plain_model(tiny_vlm: LlavaVLM, tiny_plain, policy: str,
                                                              monkeypatch: pytest.MonkeyPatch) -> None:
    """Re-packing after every layer, with either position policy, leaves a padded batch exactly as HF runs it."""
    monkeypatch.setattr(KeepAll, "position_policy", policy)
    monkeypatch.setattr(KeepAll, "seen", [])
    model, processor = tiny_plain
    images = _images()
    # The adapter pads images to squares (LLaVA-1.5's protocol): the reference gets the same pixels.
    padded = prepare_images(images, processor.image_processor, True)
    inputs = processor(images=padded, text=PROMPTS, return_tensors="pt", padding=True)
    with torch.inference_mode():
        ref = model.generate(**inputs, max_new_tokens=6, do_sample=False)[:, inputs["input_ids"].shape[1]:]
    eos = model.generation_config.eos_token_id
    expected = [row[: row.index(eos) + 1] if eos in row else row for row in ref.tolist()]
    outputs = tiny_vlm.generate(images, PROMPTS, method=KeepAll(), max_new_tokens=6)
    assert [o.extra["token_ids"] for o in outputs] == expected
    assert len(KeepAll.seen) == 4 and not bool(KeepAll.seen[0].real.all())  # padded, so masks were exercised


def test_state_attention_rows_are_the_layers_own_and_the_next_layers(tiny_llava_dir, tiny_plain,
                                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    """``attention`` of layer l and ``next_attention`` (layer l + 1's projections on layer l's output) equal the
    rows of HF's eager attention maps of layers l and l + 1 on the same padded batch."""
    from transformers import LlavaForConditionalGeneration

    monkeypatch.setattr(KeepAll, "seen", [])
    eager = LlavaForConditionalGeneration.from_pretrained(tiny_llava_dir, attn_implementation="eager").eval()
    vlm = LlavaVLM(eager, tiny_plain[1])
    images = _images()
    vlm.generate(images, PROMPTS, method=KeepAll(), max_new_tokens=1)
    prepared = vlm.prepare(images, PROMPTS, method=KeepAll())
    with torch.inference_mode():
        maps = eager(inputs_embeds=prepared.inputs_embeds, attention_mask=prepared.attention_mask,
                     output_attentions=True).attentions
    state = KeepAll.seen[1]
    real = state.real
    rows = torch.tensor([[real.shape[1] - 1, real.shape[1] - 4, -1]] * 3)
    keep_rows = (rows >= 0)[:, None, :, None]
    with torch.inference_mode():  # the states hold inference tensors
        pairs = ((state.attention(rows), maps[1]), (state.next_attention(rows), maps[2]))
    for probs, reference in pairs:
        heads = reference.shape[1]
        expected = reference.gather(2, rows.clamp_min(0)[:, None, :, None].expand(-1, heads, -1, real.shape[1]))
        torch.testing.assert_close(probs.masked_select(keep_rows), expected.float().masked_select(keep_rows),
                                   rtol=1e-5, atol=1e-6)
        assert bool(probs.isfinite().all())
        padding_keys = ~real[:, None, None, :].expand_as(probs) & keep_rows
        assert bool(padding_keys.any()) and bool((probs[padding_keys] == 0).all())  # padding gets no attention
    assert KeepAll.seen[-1].next_attention is None


def test_repack_inserts_after_the_kept_tokens_and_pads_on_the_left() -> None:
    keep = torch.tensor([[True, True, False, True, True], [False, True, True, False, True]])
    index, real = repack_index(keep, torch.tensor([2, 0]), torch.tensor([3, 4]), num_inserted=2)
    # row 0: positions 0 1 | slots 5 6 (before position 3) | 3 4; row 1: 1 2 4, left-padded to width 6
    assert real.tolist() == [[True] * 6, [False] * 3 + [True] * 3]
    assert index[0].tolist() == [0, 1, 5, 6, 3, 4]
    assert index[1, 3:].tolist() == [1, 2, 4]


def test_segments_need_one_contiguous_image_run() -> None:
    real = torch.ones(1, 6, dtype=torch.bool)
    assert segments(real, torch.tensor([[False, True, True, False, False, False]])).tolist() == [[0, 1, 1, 2, 2, 2]]
    with pytest.raises(ValueError, match="contiguous"):
        segments(real, torch.tensor([[True, False, True, False, False, False]]))
    with pytest.raises(ValueError, match="visual tokens"):
        segments(real, torch.zeros(1, 6, dtype=torch.bool))


class BadKeep(KeepFirstVisual):
    name = "test-bad-keep"

    def prune(self, layer_index: int, state: LayerState) -> LayerDecision:
        return LayerDecision(keep=torch.ones(1, 3, dtype=torch.bool))


class MergesWithOriginalPositions(KeepFirstVisual):
    name = "test-merge-original"

    def prune(self, layer_index: int, state: LayerState) -> LayerDecision:
        return LayerDecision(keep=state.visual_valid, merged=state.hidden[:, :2])


class VisionStageOnly(NoCompression):
    name = "test-llm-without-protocol"
    stage = "llm"


def test_bad_decisions_and_undeclared_protocols_are_refused(tiny_vlm: LlavaVLM) -> None:
    images = _images()[:1]
    with pytest.raises(ValueError, match="keep must be bool"):
        tiny_vlm.generate(images, PROMPTS[:1], method=BadKeep(), max_new_tokens=1)
    with pytest.raises(ValueError, match="cannot place merged tokens"):
        tiny_vlm.generate(images, PROMPTS[:1], method=MergesWithOriginalPositions(), max_new_tokens=1)
    with pytest.raises(ValueError, match="not a LayerPruner"):
        tiny_vlm.generate(images, PROMPTS[:1], method=VisionStageOnly(), max_new_tokens=1)
    with pytest.raises(ValueError, match="strictly increasing"):
        tiny_vlm.generate(images, PROMPTS[:1], method=KeepFirstVisual(after=4), max_new_tokens=1)
