"""SparseVLM: the schedule arithmetic (309 / 204 / 113, equivalent 206.50 with full pruning-layer caches), the
clustering and rater pieces, and the in-LLM run on a model with the real 24 x 24 grid and 16 decoder layers."""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from sparsezip.adapters.layer_cache import LayerwiseKVCache, check_llama_like, query_attention
from sparsezip.adapters.layerwise import generate_layerwise
from sparsezip.adapters.llava import LlavaVLM
from sparsezip.data.prompts import llava_v1_prompt
from sparsezip.embedded.models import TinyLlavaSpec, build_tiny_llava
from sparsezip.imageprep import expand2square, mean_fill
from sparsezip.methods import get_method
from sparsezip.methods.llm_budget import BudgetWarning
from sparsezip.methods.sparsevlm import (
    PruningPlan,
    counts_after_pruning,
    layer_averaged,
    paper_plan,
    recycle,
    recycle_sizes,
    scaled_plan,
    select_raters,
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
    plan = paper_plan(192, 576, 32)
    assert plan == PruningPlan(layers=(2, 6, 15), keep=(300, 200, 110))
    assert counts_after_pruning(plan, 576) == [309, 204, 113]
    per_layer = visual_tokens_per_layer(plan, 576, 32)
    # a pruning layer's cache keeps all its input: layers 0-2 hold 576, 3-6 309, 7-15 204, 16-31 113
    assert per_layer == [576] * 3 + [309] * 4 + [204] * 9 + [113] * 16
    assert layer_averaged(per_layer) == 6608 / 32 == 206.5


def test_the_documented_numbers_are_the_codes(repo_root: Path) -> None:
    """The paper-budget numbers quoted in the module docstring and the README come from these functions."""
    import sparsezip.methods.sparsevlm as module

    readme = (repo_root / "README.md").read_text(encoding="utf-8")
    for budget in (64, 128, 192):
        plan = paper_plan(budget, 576, 32)
        counts = " / ".join(map(str, counts_after_pruning(plan, 576)))
        equivalent = f"{layer_averaged(visual_tokens_per_layer(plan, 576, 32)):.2f}"
        assert counts in module.__doc__ and equivalent in module.__doc__
        if budget == 192:
            assert f"{counts} after layers 2 / 6 / 15, equivalent {equivalent}" in readme
    for match, where in ((r"57\.94 to 576", (576, 32)), (r"38\.50 to 144", (144, 4))):
        with pytest.raises(ValueError, match=match):
            scaled_plan(1, *where)
        number = match.split(" ")[0].replace("\\", "")
        assert number in module.__doc__ and number in readme


@pytest.mark.parametrize(
    ("budget", "after", "equivalent"),
    [(64, [82, 32, 18], (3 * 576 + 4 * 82 + 9 * 32 + 16 * 18) / 32),  # worked by hand from methods.md 3
     (128, [312, 117, 39], (3 * 576 + 4 * 312 + 9 * 117 + 16 * 39) / 32)],
)
def test_other_budgets(budget: int, after: list[int], equivalent: float) -> None:
    plan = paper_plan(budget, 576, 32)
    assert counts_after_pruning(plan, 576) == after
    assert layer_averaged(visual_tokens_per_layer(plan, 576, 32)) == pytest.approx(equivalent)


@pytest.mark.parametrize(
    ("budget", "num_patches", "num_layers", "layers"),
    [(100, 576, 32, (2, 6, 15)), (150, 576, 16, (1, 3, 7)), (40, 144, 4, (0, 1, 2)), (48, 144, 4, (0, 1, 2)),
     (72, 144, 4, (0, 1, 2)), (30, 64, 3, (0, 1, 2)), (8, 64, 24, (1, 4, 11))],
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
    assert paper_plan(192, 576, 16) == PruningPlan(layers=(1, 3, 7), keep=(300, 200, 110))


def test_nominal_settings_scale_the_paper_schedule_and_layer_averaged_ones_hit_the_budget() -> None:
    """budget_mode="nominal" is the paper's N-token schedule (times b / N_paper on another token count); the
    default reads the budget as the layer-averaged equivalent, also at the paper's own 64 / 128 / 192."""
    assert paper_plan(16, 144, 4) == PruningPlan(layers=(0, 1, 2), keep=(16, 8, 4))  # 66 / 30 / 17 x 16 / 64
    nominal = get_method("sparsevlm", budget=64, budget_mode="nominal").budget_plan(576, 32)
    assert nominal.setting.params["keep"] == [66, 30, 17] and nominal.nominal == 64
    assert nominal.layer_averaged == 82.25
    for budget in (64, 128, 192):
        plan = get_method("sparsevlm", budget=budget).budget_plan(576, 32)
        assert plan.applied == "layer_averaged" and plan.layer_averaged == pytest.approx(budget, abs=0.5)
        assert plan.per_layer == tuple(visual_tokens_per_layer(scaled_plan(budget, 576, 32), 576, 32))


def test_unreachable_budgets_and_shallow_models_are_refused() -> None:
    with pytest.raises(ValueError, match="too shallow"):
        scaled_plan(192, 576, 2)
    # layers 0 (the first pruning layer) holds all 144: at least (144 + 6 + 2 + 2) / 4 = 38.5 on average
    for budget in (2, 16, 32):
        with pytest.raises(ValueError, match=r"out of reach.*38\.50 to 144\.00"):
            scaled_plan(budget, 144, 4)
    with pytest.raises(ValueError, match="exceeds the model's 144"):
        get_method("sparsevlm", budget=200).plan(144, 4)
    # the method itself falls back to the paper's nominal setting, with a warning naming the equivalent it gives
    with pytest.warns(BudgetWarning, match=r"out of reach.*38\.50 to 144\.00.*nominal 16-token.*44\.50"):
        plan = get_method("sparsevlm", budget=16).budget_plan(144, 4)
    assert plan.applied == "nominal" and plan.per_layer == (144, 20, 9, 5)
    with pytest.raises(ValueError, match="too shallow"):
        get_method("sparsevlm", budget=8).plan(64, 2)
    with pytest.raises(ValueError, match="positive integer"):
        get_method("sparsevlm", budget=0)


def test_method_configuration() -> None:
    assert get_method("sparsevlm").config() == {"budget": None, "budget_mode": "layer_averaged"}
    assert get_method("sparsevlm").plan(576, 32) == PruningPlan(layers=(2, 6, 15), keep=(300, 200, 110))
    with pytest.raises(ValueError, match="budget_mode"):
        get_method("sparsevlm", budget=64, budget_mode="paper")
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
def test_recycling_takes_the_best_pruned_tokens_and_matches_the_scalar_sizes() -> None:
    g = torch.Generator().manual_seed(0)
    states = torch.randn(2, 20, 4, generator=g)
    scores = torch.arange(20.0).expand(2, 20)
    pruned = torch.ones(2, 20, dtype=torch.bool)
    pruned[1, 10:] = False  # row 1 pruned only its 10 lowest-scored tokens
    labels, groups = recycle(states, scores, pruned)
    assert labels[0].tolist() == [-1] * 13 + [0] * 7  # top floor(0.3 * 20) + 1 = 7 by score, one group
    assert labels[1].tolist() == [-1] * 6 + [0] * 4 + [-1] * 10  # floor(0.3 * 10) + 1 = 4 of tokens 0..9
    assert groups.tolist() == [1, 1]
    for p in range(0, 300, 7):  # the batched sizes are the scalar ones
        mask = torch.arange(300)[None] < p
        labels, groups = recycle(torch.randn(1, 300, 2, generator=g), torch.rand(1, 300, generator=g), mask)
        assert (int((labels >= 0).sum()), int(groups)) == recycle_sizes(p)
    with pytest.raises(ValueError, match="scores and pruned"):
        recycle(torch.zeros(1, 3, 2), torch.zeros(1, 4), torch.zeros(1, 3, dtype=torch.bool))


def test_select_raters() -> None:
    visual = torch.tensor([[[1.0, 0.0], [1.0, 0.1]]])
    text = torch.tensor([[[5.0, 0.0], [0.0, 1.0], [-5.0, 0.0]]])  # token 0 dominates every visual row
    ones = torch.ones(1, 2, dtype=torch.bool)
    assert select_raters(visual, ones, text, torch.ones(1, 3, dtype=torch.bool)).tolist() == [[True, False, False]]
    one_text = torch.tensor([[True, False, False]])  # one token: it rates
    assert select_raters(visual, ones, text, one_text).tolist() == [[True, False, False]]
    # batched with padding: each row as if alone
    both = select_raters(visual.expand(2, -1, -1), torch.tensor([[True, True], [True, False]]),
                         text.expand(2, -1, -1), torch.tensor([[True, True, True], [False, True, True]]))
    assert both.tolist() == [[True, False, False], [False, True, False]]
    with pytest.raises(ValueError, match="text after the image"):
        select_raters(visual, ones, text, torch.zeros(1, 3, dtype=torch.bool))


def test_query_attention_equals_the_layers_own_attention_rows(tiny_llava_dir: Path) -> None:
    from transformers import LlavaForConditionalGeneration

    model = LlavaForConditionalGeneration.from_pretrained(tiny_llava_dir, attn_implementation="eager").eval()
    decoder = model.model.language_model
    embeds = torch.randn(2, 12, decoder.config.hidden_size, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        out = decoder(inputs_embeds=embeds, use_cache=True, output_attentions=True, output_hidden_states=True)
        positions = torch.arange(12)[None].expand(2, -1)
        cos, sin = decoder.rotary_emb(embeds, position_ids=positions)
        rows = torch.tensor([[3, 7, 11], [0, 5, -1]])  # -1: a padding row
        safe = rows.clamp_min(0)
        for index, layer in enumerate(decoder.layers):
            hidden = out.hidden_states[index]
            normed = layer.input_layernorm(hidden.gather(1, safe[..., None].expand(-1, -1, hidden.shape[-1])))
            pick = safe[..., None].expand(-1, -1, cos.shape[-1])
            probs = query_attention(layer.self_attn, normed, cos.gather(1, pick), sin.gather(1, pick),
                                    out.cache.layers[index].keys, torch.ones(2, 12, dtype=torch.bool), rows)
            heads = out.attentions[index].shape[1]
            reference = out.attentions[index].gather(2, safe[:, None, :, None].expand(-1, heads, -1, 12)).float()
            real = (rows >= 0)[:, None, :, None].expand_as(probs)
            torch.testing.assert_close(probs[real], reference[real], rtol=1e-5, atol=1e-6)
            assert bool(probs.isfinite().all())


def test_layerwise_cache_and_llama_check() -> None:
    cache = LayerwiseKVCache(2)
    k = torch.zeros(2, 2, 3, 4)
    keys, _ = cache.update(k, k, 1)
    keys, _ = cache.update(k[:, :, :1], k[:, :, :1], 1)
    assert keys.shape[2] == 4 and cache.keys[0] is None
    cache.real[1] = torch.tensor([[False, True, True, True], [True] * 4])
    assert cache.tokens(1).tolist() == [3, 4]
    with pytest.raises(ValueError, match="no cache yet"):
        cache.tokens(0)
    with pytest.raises(ValueError, match="Llama-architecture"):
        check_llama_like(torch.nn.Linear(2, 2))


# ---------------------------------------------------------------------------------------------- in the LLM
@pytest.fixture(scope="module")
def grid_vlm() -> LlavaVLM:
    model, processor = build_tiny_llava(GRID_SPEC, seed=5)
    return LlavaVLM(model, processor)


def test_per_layer_counts_on_a_576_token_16_layer_model(grid_vlm: LlavaVLM) -> None:
    assert grid_vlm.num_patches == 576
    method = get_method("sparsevlm", budget=192, budget_mode="nominal")
    out = grid_vlm.generate([_image()], [PROMPT], method=method, max_new_tokens=3)[0]
    assert out.extra["counts_after_pruning"] == [309, 204, 113]
    assert out.visual_tokens_per_layer == [576] * 2 + [309] * 2 + [204] * 4 + [113] * 8  # layers (1, 3, 7)
    assert out.visual_tokens == pytest.approx(layer_averaged(out.visual_tokens_per_layer))
    assert out.visual_tokens_per_layer == visual_tokens_per_layer(paper_plan(192, 576, 16), 576, 16)
    assert out.extra["nominal_visual_tokens"] == 192
    assert out.prefill_tokens > 576


def test_the_pruning_layers_keep_their_full_cache_and_decoding_follows_each_cache(grid_vlm: LlavaVLM) -> None:
    """Upstream v1.5: layers 1, 3, 7 (of 16) run on and cache their whole input; only what leaves them is pruned.
    A decoded token's position in every layer is that layer's own cache length."""
    images = [_image(7), _image(8)]
    prompts = [PROMPT, llava_v1_prompt("Which shape is the largest one here?")]
    method = get_method("sparsevlm", budget=192, budget_mode="nominal")
    prepared = grid_vlm.prepare(images, prompts, method=method)
    decoder = grid_vlm.model.model.language_model
    positions: dict[int, list[torch.Tensor]] = {i: [] for i in range(16)}

    def record(index: int):
        def hook(module, args, kwargs) -> None:
            positions[index].append(kwargs["position_ids"])
        return hook

    handles = [layer.register_forward_pre_hook(record(i), with_kwargs=True) for i, layer in enumerate(decoder.layers)]
    try:
        run = generate_layerwise(decoder, grid_vlm.model.lm_head, prepared.inputs_embeds, prepared.attention_mask,
                                 prepared.image_mask, method, num_patches=576, max_new_tokens=3,
                                 eos_token_ids=set(), clock=time.perf_counter)
    finally:
        for handle in handles:
            handle.remove()
    for b in range(2):
        prefill, cached = run.prefill_tokens_per_layer[b], run.cache_tokens_per_layer[b]
        assert cached == prefill  # every layer's cache holds exactly what it processed: the pruning layers too
        assert run.visual_tokens_per_layer[b] == [576] * 2 + [309] * 2 + [204] * 4 + [113] * 8
        assert prefill[1] - prefill[2] == 576 - 309 and prefill[0] == prefill[1] == int(prepared.attention_mask[b].sum())
        for index in range(16):  # decode steps 1 and 2: position = that layer's cache length before the token
            assert [int(p[b, -1]) for p in positions[index][1:]] == [prefill[index], prefill[index] + 1]


def test_generation_is_deterministic_and_eager_matches_sdpa(grid_vlm: LlavaVLM) -> None:
    method = get_method("sparsevlm", budget=64, budget_mode="nominal")
    runs = [grid_vlm.generate([_image(1)], [PROMPT], method=method, max_new_tokens=5)[0] for _ in range(2)]
    assert runs[0].extra["token_ids"] == runs[1].extra["token_ids"]
    model, processor = build_tiny_llava(GRID_SPEC, seed=5)
    model.set_attn_implementation("eager")
    eager = LlavaVLM(model, processor).generate([_image(1)], [PROMPT], method=method, max_new_tokens=5)[0]
    assert eager.extra["token_ids"] == runs[0].extra["token_ids"]
    assert eager.visual_tokens_per_layer == runs[0].visual_tokens_per_layer


def test_batched_generation_equals_one_prompt_at_a_time(grid_vlm: LlavaVLM) -> None:
    """Rows of different lengths (left padding) and images: the batch gives each row its batch-size-1 answer."""
    images = [_image(4), _image(5), _image(6)]
    prompts = [PROMPT, llava_v1_prompt("What colour is the large shape on the left of the picture?"),
               llava_v1_prompt("Count.")]
    method = get_method("sparsevlm", budget=64, budget_mode="nominal")
    batched = grid_vlm.generate(images, prompts, method=method, max_new_tokens=4)
    singles = [grid_vlm.generate([i], [p], method=method, max_new_tokens=4)[0]
               for i, p in zip(images, prompts, strict=True)]
    for one, row in zip(singles, batched, strict=True):
        assert row.extra["token_ids"] == one.extra["token_ids"]
        assert row.visual_tokens_per_layer == one.visual_tokens_per_layer
        assert row.extra["counts_after_pruning"] == one.extra["counts_after_pruning"] == [82, 32, 18]
        assert row.prefill_tokens == one.prefill_tokens and row.batch_size == 3
    assert len({o.prefill_tokens for o in singles}) == 3  # the rows really differ in length


def test_keeping_everything_reproduces_the_plain_model(tiny_vlm: LlavaVLM, tiny_plain) -> None:
    """No pruning: the layer-wise prefill and decoding loop, batched (left padding), gives exactly HF generate's
    tokens."""
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
