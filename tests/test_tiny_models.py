"""The tiny-checkpoint builder: real HF format, loads with from_pretrained, deterministic."""

from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from sparsezip.data.prompts import llava_v1_prompt
from sparsezip.embedded.models import TinyLlavaSpec, build_tiny_llava


def test_checkpoint_loads_like_a_real_one_and_generates(tiny_llava_dir: Path) -> None:
    from transformers import AutoProcessor, LlavaForConditionalGeneration

    model = LlavaForConditionalGeneration.from_pretrained(tiny_llava_dir)
    processor = AutoProcessor.from_pretrained(tiny_llava_dir)
    assert (tiny_llava_dir / "model.safetensors").exists()
    image = Image.fromarray(np.full((50, 70, 3), 128, dtype=np.uint8))
    inputs = processor(images=[image], text=[llava_v1_prompt("Is there a cat?")], return_tensors="pt")
    n_image = int((inputs["input_ids"] == model.config.image_token_id).sum())
    assert n_image == TinyLlavaSpec().num_patches == 144
    out = model.generate(**inputs, max_new_tokens=3, do_sample=False)
    assert out.shape[1] <= inputs["input_ids"].shape[1] + 3


def test_same_seed_same_weights_and_global_rng_untouched() -> None:
    state = torch.random.get_rng_state()
    a, _ = build_tiny_llava(seed=3)
    b, _ = build_tiny_llava(seed=3)
    c, _ = build_tiny_llava(seed=4)
    assert torch.equal(torch.random.get_rng_state(), state)
    wa, wb, wc = (m.model.multi_modal_projector.linear_1.weight for m in (a, b, c))
    assert torch.equal(wa, wb) and not torch.equal(wa, wc)


def test_tokenizer_round_trips_any_text(tiny_llava_dir: Path) -> None:
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(tiny_llava_dir)
    text = "USER: <image>\nWhat is 3.14 × ünïcode? ASSISTANT:"
    ids = tok(text).input_ids
    assert ids[0] == tok.bos_token_id and tok.decode(ids, skip_special_tokens=False) == "<s>" + text
    assert tok.padding_side == "left"


def test_spec_rejects_bad_geometry() -> None:
    with pytest.raises(ValueError, match="patch_size"):
        TinyLlavaSpec(image_size=100, patch_size=8)
    with pytest.raises(ValueError, match="vision_layers"):
        TinyLlavaSpec(vision_layers=1)
