"""The LLaVA-NeXT adapter on a random tiny checkpoint: `none` is the plain model, batched over images of several
sizes (3 and 5 crops); budgets are spread equally over an image's crops; compressed crops are laid out as
VisionZip's LLaVA-NeXT port does; bad input is refused with one clear error."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from sparsezip.adapters.anyres import Crops, per_crop_budgets, visionzip_layout
from sparsezip.adapters.common import trim_at_eos
from sparsezip.adapters.llava_next_loader import check_llava_next_config, next_visual_tokens
from sparsezip.adapters.registry import inspect_checkpoint, load_model, nominal_visual_tokens
from sparsezip.context import VisionContext
from sparsezip.eval.summary import kv_bytes_per_token
from sparsezip.methods import get_method

# (height, width): 5, 5, 3 and 3 crops on the tiny model's 32 px crops and 32x64 / 64x32 / 64x64 pinpoints.
SIZES = [(40, 64), (64, 64), (30, 90), (20, 20)]
QUESTION = "Is there a red circle?"


def _images(sizes=SIZES, seed: int = 0) -> list[Image.Image]:
    rng = np.random.default_rng(seed)
    return [Image.fromarray(rng.integers(0, 255, (h, w, 3), dtype=np.uint8)) for h, w in sizes]


@pytest.fixture(scope="module")
def batch(tiny_next_vlm):
    images = _images()
    return images, [tiny_next_vlm.chat_prompt(QUESTION)] * len(images)


def test_none_reproduces_plain_generate_batched_over_image_sizes(tiny_next_vlm, batch) -> None:
    images, prompts = batch
    vlm = tiny_next_vlm
    inputs = vlm.processor(images=images, text=prompts, return_tensors="pt", padding=True)
    with torch.inference_mode():
        plain = vlm.model.generate(**inputs, max_new_tokens=5, do_sample=False, pad_token_id=vlm.pad_token_id)
        outs = vlm.generate(images, prompts, method=get_method("none"), max_new_tokens=5)
        prepared = vlm.prepare(images, prompts, method=get_method("none"))
        plain_logits = vlm.model(**inputs).logits
        our_logits = vlm.model(inputs_embeds=prepared.inputs_embeds, attention_mask=prepared.attention_mask).logits
    prompt_len = inputs["input_ids"].shape[1]
    assert [o.extra["token_ids"] for o in outs] == [trim_at_eos(row, vlm.eos) for row in plain[:, prompt_len:].tolist()]
    assert torch.allclose(our_logits, plain_logits, atol=1e-5)
    placeholders = (inputs["input_ids"] == vlm.image_token_id).sum(dim=1).tolist()
    assert [o.uncompressed_visual_tokens for o in outs] == placeholders == [o.visual_tokens for o in outs]
    assert [o.extra["crops"] for o in outs] == [5, 5, 3, 3]


def test_budget_is_per_image_spread_equally_over_crops(tiny_next_vlm, batch) -> None:
    images, prompts = batch
    budget = 20
    prepared = tiny_next_vlm.prepare(images, prompts, method=get_method("random", budget=budget))
    crops = prepared.crops
    assert prepared.visual.tolist() == [budget] * len(images)
    # 20 over 5 crops -> 4 each; over 3 crops -> 7, 7, 6 (base view first).
    per_row = prepared.result.lengths.cpu()
    assert per_row.tolist() == [4] * 10 + [7, 7, 6] * 2
    assert torch.equal(per_row, per_crop_budgets(budget, crops))
    # Each image's run of placeholders is shortened to its budget (no image-newline tokens are added).
    assert ((prepared.input_ids == tiny_next_vlm.image_token_id).sum(dim=1) == budget).all()


def test_crops_carry_their_own_cls_signals_and_image_index(tiny_next_vlm, batch) -> None:
    images, _ = batch
    ctx = tiny_next_vlm.vision_context(images, questions=[QUESTION] * len(images))
    assert ctx.prefix == 1 and ctx.num_patches == 16 and ctx.batch_size == 16
    assert ctx.image_index.tolist() == [0] * 5 + [1] * 5 + [2] * 3 + [3] * 3
    assert torch.allclose(ctx.cls_attn.sum(dim=-1), torch.ones(16, ctx.cls_attn.shape[1]), atol=1e-5)
    assert len(set(ctx.sample_seeds.tolist())) == 16  # every crop draws its own random numbers
    assert ctx.text_query.shape == (16, ctx.hidden.shape[2])
    assert torch.equal(ctx.text_query[0], ctx.text_query[2])  # an image's crops share its question


def _reference_layout(result, crops: Crops, side: int, prefix: int) -> list[list[tuple[int, int]]]:
    """VisionZip's layout written out with loops: per image, (row, slot) of each output token in order."""
    out = []
    for image in range(int(crops.per_image.numel())):
        rows = [r for r in range(crops.rows) if int(crops.image_index[r]) == image]
        base, tiles = rows[0], rows[1:]
        order = [(base, t) for t in range(int(result.lengths[base]))]
        cols = int(crops.tile_grid[image, 1])
        kept, cls, merged = [], [], []
        for j, r in enumerate(tiles):
            for t in range(int(result.lengths[r])):
                sources = [int(s) for s in result.kept_index[r] if s >= 0 and int(result.assignment[r, s]) == t]
                if sources and sources[0] >= prefix:
                    patch = sources[0] - prefix
                    y, x = (j // cols) * side + patch // side, (j % cols) * side + patch % side
                    kept.append(((y, x), (r, t)))
                elif sources:
                    cls.append((r, t))
                else:
                    merged.append((r, t))
        order += [rt for _, rt in sorted(kept)] + cls + merged
        out.append(order)
    return out


def test_compressed_layout_follows_visionzips_next_port() -> None:
    # Two images: 1x2 tiles (3 crops) and 2x2 tiles (5 crops), 4x4 patches per crop, CLS first.
    crops = Crops(per_image=torch.tensor([3, 5]), tile_grid=torch.tensor([[1, 2], [2, 2]]),
                  image_index=torch.tensor([0, 0, 0, 1, 1, 1, 1, 1]),
                  crop_in_image=torch.tensor([0, 1, 2, 0, 1, 2, 3, 4]))
    generator = torch.Generator().manual_seed(0)
    hidden = torch.randn(8, 17, 6, generator=generator)
    ctx = VisionContext(hidden=hidden, keys=torch.randn(8, 17, 3, generator=generator),
                        cls_attn=torch.rand(8, 2, 17, generator=generator).softmax(-1),
                        image_index=crops.image_index)
    result = get_method("visionzip", dominant=4, contextual=2)(ctx)  # CLS + 3 patches + 2 merged per crop
    tokens, counts = visionzip_layout(result, crops, side=4, prefix=1)
    assert counts.tolist() == [18, 30]
    expected = [result.tokens[r, t] for image in _reference_layout(result, crops, 4, 1) for r, t in image]
    assert torch.equal(tokens, torch.stack(expected))


def test_every_method_gives_each_image_its_budget(tiny_next_vlm, batch) -> None:
    images, prompts = batch
    for name in ("visionzip", "sparsezip", "pool", "random"):
        outs = tiny_next_vlm.generate(images, prompts, method=get_method(name, budget=24),
                                      questions=[QUESTION] * len(images), max_new_tokens=2)
        assert [o.visual_tokens for o in outs] == [24.0] * len(images), name
        assert all(o.prefill_tokens < o.uncompressed_visual_tokens + 40 for o in outs)
        assert set(outs[0].timings) == {"vision_ms", "compress_ms", "prefill_ms", "decode_ms", "total_ms"}


def test_nominal_tokens_and_gqa_kv_bytes(tiny_next_vlm, tiny_next_dir: Path) -> None:
    assert tiny_next_vlm.nominal_visual_tokens == nominal_visual_tokens(tiny_next_dir) == 5 * 16
    # llava-v1.6 (CLIP-L/336, default pinpoints up to 2x2 tiles): 5 crops x 576 = 2880.
    assert next_visual_tokens({"vision_config": {"image_size": 336, "patch_size": 14}}) == 2880
    text = tiny_next_vlm.config.text_config  # 2 layers, 2 KV heads x 16 dims (4 query heads): GQA
    assert kv_bytes_per_token(tiny_next_vlm) == 2 * text.num_hidden_layers * 2 * 16 * 4


def test_bad_input_is_refused_with_one_clear_error(tiny_next_vlm, batch) -> None:
    images, prompts = batch
    with pytest.raises(ValueError, match=r"image 0 is 5x40 px; LLaVA-NeXT needs at least 8 px"):
        tiny_next_vlm.generate([Image.new("RGB", (5, 40))], prompts[:1], method=get_method("none"))
    with pytest.raises(ValueError, match="greedy decoding only; got num_beams=2"):  # in-LLM methods: greedy
        tiny_next_vlm.generate(images[:1], prompts[:1], method=get_method("sparsevlm"), num_beams=2)
    with pytest.raises(ValueError, match=r"budget 2 cannot be spread over images of \[5\] crops"):
        tiny_next_vlm.generate(images[:1], prompts[:1], method=get_method("random", budget=2))
    with pytest.raises(ValueError, match="holds 0 <image> placeholders"):
        tiny_next_vlm.generate(images[:1], ["no image here"], method=get_method("none"))


@pytest.mark.parametrize(("change", "message"), [
    ({"vision_feature_select_strategy": "full"}, "vision_feature_select_strategy='default'"),
    ({"vision_feature_layer": [-2, -1]}, "vision_feature_layer must be one int"),
    ({"image_grid_pinpoints": [[32, 50]]}, "multiples of the 32 px crop size"),
    ({"vision_config": {"model_type": "siglip_vision_model"}}, "the vision tower must be CLIP"),
])
def test_unsupported_configs_are_refused_before_loading(tiny_next_dir: Path, tmp_path: Path, change, message) -> None:
    copy = tmp_path / "ckpt"
    shutil.copytree(tiny_next_dir, copy)
    config = json.loads((copy / "config.json").read_text())
    for key, value in change.items():
        config[key] = {**config[key], **value} if isinstance(value, dict) else value
    (copy / "config.json").write_text(json.dumps(config))
    with pytest.raises(ValueError, match=message):
        inspect_checkpoint(copy)
    with pytest.raises(ValueError, match=message):
        check_llava_next_config(config)


def test_a_processor_crop_grid_the_config_does_not_allow_is_refused(tiny_next_dir: Path, tmp_path: Path) -> None:
    copy = tmp_path / "ckpt"
    shutil.copytree(tiny_next_dir, copy)
    processor = json.loads((copy / "processor_config.json").read_text())
    processor["image_processor"]["image_grid_pinpoints"].append([96, 32])
    (copy / "processor_config.json").write_text(json.dumps(processor))
    with pytest.raises(ValueError, match=r"crop grids \[\[96, 32\]\] are not among the config's"):
        load_model(copy)


def test_dynamic_k_is_refused_with_the_reason(tiny_next_vlm, batch) -> None:
    """SparseZip's dynamic K has no per-crop meaning here (README): generation and calibration refuse it."""
    from sparsezip.data.sample import Sample
    from sparsezip.eval.calibration import calibrate_on_samples

    images, prompts = batch
    dynamic = get_method("sparsezip", budget=20, dynamic_k=True, skip_dynamic_k=False, k_min=5, k_max=15)
    with pytest.raises(ValueError, match=r"dynamic K is refused on LLaVA-NeXT: .* crops"):
        tiny_next_vlm.generate(images[:1], prompts[:1], method=dynamic)
    sample = Sample(id="0", image_ref="unused.png", question="Is there a red circle?", answers=("yes",))
    with pytest.raises(ValueError, match="dynamic K is refused on LLaVA-NeXT"):
        calibrate_on_samples(dynamic, tiny_next_vlm, [sample], "pope")
    fixed = get_method("sparsezip", budget=20)  # fixed K runs
    assert tiny_next_vlm.generate(images[:1], prompts[:1], method=fixed, max_new_tokens=1)[0].visual_tokens <= 20
