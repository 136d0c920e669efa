"""SparseVLM: the schedule arithmetic (309 / 204 / 113, equivalent 192.03), the clustering and rater pieces, and the
in-LLM run on a model with the real 24 x 24 grid and 16 decoder layers."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from sparsezip.adapters.llava import LlavaVLM
from sparsezip.adapters.sparsevlm_llama import LayerwiseKVCache, check_llama_like, rater_attention
from sparsezip.data.prompts import llava_v1_prompt
from sparsezip.embedded.models import TinyLlavaSpec, build_tiny_llava
from sparsezip.imageprep import expand2square, mean_fill
from sparsezip.methods import get_method
from sparsezip.methods.sparsevlm import (
    PruningPlan,
    counts_after_pruning,
    density_peak_clusters,
    group_mean,
    layer_averaged,
    plan_recycling,
    recycle_sizes,
    scaled_plan,
    select_raters,
    split_by_score,
    visual_tokens_per_layer,
)

# The real LLaVA-1.5 token grid (336 px / 14 px = 24 x 24 = 576 patches) and 16 decoder layers, at tiny width.
GRID_SPEC = TinyLlavaSpec(
    image_size=336, patch_size=14, vision_hidden=32, vision_intermediate=64, vision_layers=2, vision_heads=2,
    text_hidden=32, text_intermediate=64, text_layers=16, text_heads=2,
)
PROMPT = llava_v1_prompt("Is there a red circle in the image?")


def _image(seed: int = 0) -> Image.Image:
    rng = np.random.default_rng(seed)
    return Image.fromarray(rng.integers(0, 256, (90, 120, 3), dtype=np.uint8))


# ---------------------------------------------------------------------------------------------- schedule
def test_spec_counts_and_layer_averaged_equivalent_for_llava15() -> None:
    plan = scaled_plan(192, 576, 32)
    assert plan == PruningPlan(layers=(2, 6, 15), keep=(300, 200, 110))
    assert counts_after_pruning(plan, 576) == [309, 204, 113]
    per_layer = visual_tokens_per_layer(plan, 576, 32)
    assert per_layer == [576] * 2 + [309] * 4 + [204] * 9 + [113] * 17
    assert layer_averaged(per_layer) == pytest.approx(192.03, abs=0.005)


@pytest.mark.parametrize(
    ("budget", "after", "equivalent"),
    [(64, [82, 32, 18], 2074 / 32), (128, [312, 117, 39], 4116 / 32)],  # worked by hand from methods.md 3
)
def test_other_budgets(budget: int, after: list[int], equivalent: float) -> None:
    plan = scaled_plan(budget, 576, 32)
    assert counts_after_pruning(plan, 576) == after
    assert layer_averaged(visual_tokens_per_layer(plan, 576, 32)) == pytest.approx(equivalent)


@pytest.mark.parametrize(
    ("budget", "num_patches", "num_layers", "layers"),
    [(100, 576, 32, (2, 6, 15)), (150, 576, 16, (1, 3, 7)), (16, 144, 4, (0, 1, 2)), (32, 144, 4, (0, 1, 2)),
     (48, 144, 4, (0, 1, 2)), (21, 64, 3, (0, 1, 2)), (7, 64, 24, (1, 4, 11))],
)
def test_other_budgets_and_models_hit_the_budget_as_the_layer_averaged_equivalent(
    budget: int, num_patches: int, num_layers: int, layers: tuple[int, ...]
) -> None:
    plan = scaled_plan(budget, num_patches, num_layers)
    assert plan.layers == layers
    equivalent = layer_averaged(visual_tokens_per_layer(plan, num_patches, num_layers))
    assert equivalent == pytest.approx(budget, abs=0.5)
    # the shape of the nearest paper schedule is kept: strictly fewer tokens at every later pruning layer
    counts = counts_after_pruning(plan, num_patches)
    assert counts == sorted(counts, reverse=True) and len(set(counts)) == len(counts)


def test_paper_counts_hold_on_any_depth_with_576_tokens() -> None:
    assert scaled_plan(192, 576, 16) == PruningPlan(layers=(1, 3, 7), keep=(300, 200, 110))


def test_unreachable_budgets_and_shallow_models_are_refused() -> None:
    with pytest.raises(ValueError, match="too shallow"):
        scaled_plan(192, 576, 2)
    with pytest.raises(ValueError, match=r"out of reach.*3\.00 to 144\.00"):
        scaled_plan(2, 144, 4)
    with pytest.raises(ValueError, match="exceeds the model's 144"):
        get_method("sparsevlm", budget=200).plan(144, 4)
    with pytest.raises(ValueError, match="positive integer"):
        get_method("sparsevlm", budget=0)


def test_method_configuration() -> None:
    assert get_method("sparsevlm").config() == {"budget": None}
    assert get_method("sparsevlm").plan(576, 32) == PruningPlan(layers=(2, 6, 15), keep=(300, 200, 110))
    method = get_method("sparsevlm", keep=(10, 5), layers=(0, 3))
    assert method.plan(144, 4) == PruningPlan(layers=(0, 3), keep=(10, 5))
    with pytest.raises(ValueError, match="exceed"):
        method.plan(144, 3)
    with pytest.raises(ValueError, match="both keep and layers"):
        get_method("sparsevlm", keep=(10,))
    with pytest.raises(ValueError, match="strictly increasing"):
        PruningPlan(layers=(3, 3), keep=(5, 4))
    with pytest.raises(ValueError, match="one keep count per layer"):
        PruningPlan(layers=(1, 2), keep=(5,))


def test_recycle_sizes() -> None:
    assert recycle_sizes(0) == (0, 0)
    assert recycle_sizes(1) == (1, 1)
    assert recycle_sizes(276) == (83, 9)
    with pytest.raises(ValueError, match="num_pruned"):
        recycle_sizes(-1)


# ---------------------------------------------------------------------------------------------- pieces
def test_density_peak_clusters_recover_separated_blobs() -> None:
    g = torch.Generator().manual_seed(0)
    centres = torch.tensor([[0.0, 0.0], [10.0, 0.0], [0.0, 10.0]])
    sizes = [5, 7, 4]
    x = torch.cat([c + 0.1 * torch.randn(n, 2, generator=g) for c, n in zip(centres, sizes, strict=True)])
    assignment = density_peak_clusters(x, 3)
    blobs = torch.split(assignment, sizes)
    assert all(len(set(b.tolist())) == 1 for b in blobs)
    assert len({int(b[0]) for b in blobs}) == 3
    assert torch.equal(density_peak_clusters(x, 3), assignment)  # deterministic (no random tie noise)


def test_density_peak_clusters_edge_cases() -> None:
    assert density_peak_clusters(torch.ones(1, 4), 1).tolist() == [0]
    same = density_peak_clusters(torch.ones(5, 4), 2)  # all identical: ties broken by index
    assert set(same.tolist()) <= {0, 1} and 0 in same.tolist() and 1 in same.tolist()
    with pytest.raises(ValueError, match="num_clusters"):
        density_peak_clusters(torch.ones(3, 2), 4)


def test_group_mean_and_recycling_plan() -> None:
    values = torch.tensor([[1.0], [3.0], [10.0]])
    torch.testing.assert_close(group_mean(values, torch.tensor([0, 0, 1]), 2), torch.tensor([[2.0], [10.0]]))
    scores = torch.arange(20.0)
    plan = plan_recycling(torch.randn(20, 4, generator=torch.Generator().manual_seed(0)), scores)
    assert plan.members.tolist() == list(range(13, 20))  # top floor(0.3 * 20) + 1 = 7 by score, ascending
    assert plan.num_groups == 1 and plan.assignment.tolist() == [0] * 7
    with pytest.raises(ValueError, match="pruned_scores"):
        plan_recycling(torch.zeros(3, 2), torch.zeros(4))


def test_split_by_score_breaks_ties_by_lower_index() -> None:
    kept, pruned = split_by_score(torch.tensor([1.0, 5.0, 5.0, 0.0, 5.0]), 2)
    assert kept.tolist() == [1, 2] and pruned.tolist() == [0, 3, 4]
    with pytest.raises(ValueError, match="keep"):
        split_by_score(torch.zeros(3), 4)


def test_select_raters() -> None:
    visual = torch.tensor([[1.0, 0.0], [1.0, 0.1]])
    text = torch.tensor([[5.0, 0.0], [0.0, 1.0], [-5.0, 0.0]])  # token 0 dominates every visual row
    assert select_raters(visual, text).tolist() == [0]
    assert select_raters(visual, text[:1]).tolist() == [0]  # one token: it rates
    with pytest.raises(ValueError, match="text after the image"):
        select_raters(visual, text[:0])


def test_rater_attention_equals_the_layers_own_attention_rows(tiny_llava_dir: Path) -> None:
    from transformers import LlavaForConditionalGeneration

    model = LlavaForConditionalGeneration.from_pretrained(tiny_llava_dir, attn_implementation="eager").eval()
    decoder = model.model.language_model
    embeds = torch.randn(1, 12, decoder.config.hidden_size, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        out = decoder(inputs_embeds=embeds, use_cache=True, output_attentions=True, output_hidden_states=True)
        positions = torch.arange(12)[None]
        cos, sin = decoder.rotary_emb(embeds, position_ids=positions)
        rows = torch.tensor([3, 7, 11])
        for index, layer in enumerate(decoder.layers):
            normed = layer.input_layernorm(out.hidden_states[index][:, rows])
            probs = rater_attention(layer.self_attn, normed, cos[:, rows], sin[:, rows],
                                    out.cache.layers[index].keys, rows)
            torch.testing.assert_close(probs, out.attentions[index][0][:, rows].float(), rtol=1e-5, atol=1e-6)


def test_layerwise_cache_and_llama_check() -> None:
    cache = LayerwiseKVCache(2)
    k = torch.zeros(1, 2, 3, 4)
    keys, _ = cache.update(k, k, 1)
    keys, _ = cache.update(k[:, :, :1], k[:, :, :1], 1)
    assert keys.shape[2] == 4 and cache.length(1) == 4 and cache.length(0) == 0
    with pytest.raises(ValueError, match="Llama-architecture"):
        check_llama_like(torch.nn.Linear(2, 2))


# ---------------------------------------------------------------------------------------------- in the LLM
@pytest.fixture(scope="module")
def grid_vlm() -> LlavaVLM:
    model, processor = build_tiny_llava(GRID_SPEC, seed=5)
    return LlavaVLM(model, processor)


def test_per_layer_counts_on_a_576_token_16_layer_model(grid_vlm: LlavaVLM) -> None:
    assert grid_vlm.num_patches == 576
    out = grid_vlm.generate([_image()], [PROMPT], method=get_method("sparsevlm", budget=192), max_new_tokens=3)[0]
    assert out.extra["counts_after_pruning"] == [309, 204, 113]
    assert out.visual_tokens_per_layer == [576] + [309] * 2 + [204] * 4 + [113] * 9  # layers (1, 3, 7)
    assert out.visual_tokens == pytest.approx(layer_averaged(out.visual_tokens_per_layer))
    assert out.visual_tokens_per_layer == visual_tokens_per_layer(scaled_plan(192, 576, 16), 576, 16)
    assert out.prefill_tokens > 576


def test_generation_is_deterministic_and_eager_matches_sdpa(grid_vlm: LlavaVLM) -> None:
    method = get_method("sparsevlm", budget=64)
    runs = [grid_vlm.generate([_image(1)], [PROMPT], method=method, max_new_tokens=5)[0] for _ in range(2)]
    assert runs[0].extra["token_ids"] == runs[1].extra["token_ids"]
    model, processor = build_tiny_llava(GRID_SPEC, seed=5)
    model.set_attn_implementation("eager")
    eager = LlavaVLM(model, processor).generate([_image(1)], [PROMPT], method=method, max_new_tokens=5)[0]
    assert eager.extra["token_ids"] == runs[0].extra["token_ids"]
    assert eager.visual_tokens_per_layer == runs[0].visual_tokens_per_layer


def test_keeping_everything_reproduces_the_plain_model(tiny_vlm: LlavaVLM, tiny_plain) -> None:
    """No pruning: the hand-written prefill and decoding loop must give exactly HF generate's tokens."""
    vlm, (model, processor) = tiny_vlm, tiny_plain
    n = vlm.num_patches
    keep_all = get_method("sparsevlm", keep=(n, n, n), layers=(0, 1, 2))
    images, prompts = [_image(2), _image(3)], [PROMPT, llava_v1_prompt("What is the total amount?")]
    outputs = vlm.generate(images, prompts, method=keep_all, max_new_tokens=8)
    for image, prompt, out in zip(images, prompts, outputs, strict=True):
        padded = expand2square(image, mean_fill(processor.image_processor.image_mean))  # as the adapter does
        inputs = processor(images=[padded], text=[prompt], return_tensors="pt")
        ref = model.generate(**inputs, max_new_tokens=8, do_sample=False)[0, inputs["input_ids"].shape[1]:].tolist()
        eos = model.generation_config.eos_token_id
        assert out.extra["token_ids"] == (ref[: ref.index(eos) + 1] if eos in ref else ref)
        assert out.visual_tokens_per_layer == [n] * 4


def test_text_after_the_image_is_required(tiny_vlm: LlavaVLM) -> None:
    with pytest.raises(ValueError, match="text after the image"):
        tiny_vlm.generate([_image()], ["USER: <image>"], method=get_method("sparsevlm"), max_new_tokens=2)
