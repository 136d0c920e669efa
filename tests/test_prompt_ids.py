"""Prompt ids equal LLaVA's ``tokenizer_image_token`` on the llava-1.5 prompt with a Llama-style tokenizer
(``fixtures/golden/tokenization``: a locally built SentencePiece-BPE-style tokenizer with the llama / vicuna
normalizer, decoder and byte fallback, and the ids LLaVA's own function gave for it), for both settings of the
tokenizer's ``legacy`` flag; and the adapter feeds exactly those ids."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from sparsezip.adapters.llava import LlavaVLM
from sparsezip.adapters.prompt_ids import encode_prompts, llava_prompt_ids
from sparsezip.embedded.models import TinyLlavaSpec, build_config, build_processor
from sparsezip.methods import get_method

GOLDEN = Path(__file__).resolve().parent.parent / "fixtures" / "golden" / "tokenization"
LLAVA = json.loads((GOLDEN / "llava_input_ids.json").read_text(encoding="utf-8"))
IMAGE_INDEX = LLAVA["image_token_index"]  # LLaVA's -200 stand-in for the image


@pytest.fixture(scope="module", params=[False, True], ids=["legacy-false", "legacy-true"])
def tokenizer(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory):
    """The fixture tokenizer as transformers loads it, with ``legacy`` as llava-1.5-7b-hf ships it (false) or
    flipped (true)."""
    from transformers import AutoTokenizer

    folder = tmp_path_factory.mktemp(f"llama-legacy-{request.param}")
    shutil.copy(GOLDEN / "llama-style" / "tokenizer.json", folder)
    config = json.loads((GOLDEN / "llama-style" / "tokenizer_config.json").read_text())
    (folder / "tokenizer_config.json").write_text(json.dumps({**config, "legacy": request.param}))
    return AutoTokenizer.from_pretrained(folder)


def collapse(ids: list[int], image_id: int) -> list[int]:
    """A run of image placeholders -> LLaVA's single ``IMAGE_TOKEN_INDEX``."""
    out: list[int] = []
    for i in ids:
        if i == image_id:
            if out[-1:] != [IMAGE_INDEX]:
                out.append(IMAGE_INDEX)
        else:
            out.append(i)
    return out


@pytest.mark.parametrize("case", LLAVA["cases"], ids=lambda c: c["name"])
def test_ids_equal_llavas_tokenizer_image_token(tokenizer, case: dict) -> None:
    image_id = tokenizer.convert_tokens_to_ids("<image>")
    ids = llava_prompt_ids(tokenizer, case["prompt"], image_token="<image>", image_token_id=image_id, run_length=7)
    assert collapse(ids, image_id) == case["llava_input_ids"]
    assert ids.count(image_id) == 7
    after = ids[ids.index(image_id) + 7:][:2]
    assert tokenizer.convert_ids_to_tokens(after) == ["▁", "<0x0A>"]  # the dummy prefix LLaVA-1.5 was trained with


def test_the_hf_processor_drops_the_prefix_after_the_image_with_llava_hfs_settings(tokenizer) -> None:
    """Why the adapter does not let the processor tokenize: with ``legacy: false`` (llava-1.5-7b-hf) the text after
    ``<image>`` gets no ``▁``; with ``legacy: true`` the processor happens to agree with LLaVA."""
    spec = TinyLlavaSpec(image_size=16, patch_size=8)
    processor = build_processor(tokenizer, spec)
    case = LLAVA["cases"][0]
    image_id = tokenizer.convert_tokens_to_ids("<image>")
    ids = processor(images=[Image.new("RGB", (16, 16))], text=[case["prompt"]], return_tensors="pt")["input_ids"]
    ids = ids[0].tolist()
    assert ids.count(image_id) == 4  # (16 / 8) ** 2 patches
    if tokenizer.legacy:
        assert collapse(ids, image_id) == case["llava_input_ids"]
    else:
        expected = case["llava_input_ids"]
        at = expected.index(IMAGE_INDEX)
        assert collapse(ids, image_id) == expected[: at + 1] + expected[at + 2:]  # the "▁" after the image is gone


def test_batches_are_left_padded_rows_of_the_same_ids(tokenizer) -> None:
    image_id = tokenizer.convert_tokens_to_ids("<image>")
    prompts = [c["prompt"] for c in LLAVA["cases"]] + ["USER: <image>\nHi ASSISTANT:"]
    ids, mask = encode_prompts(tokenizer, prompts, image_token="<image>", image_token_id=image_id, run_length=3,
                               pad_token_id=-1)
    assert ids.dtype == mask.dtype == torch.long and ids.shape == mask.shape
    for row, m, prompt in zip(ids.tolist(), mask.tolist(), prompts, strict=True):
        real = llava_prompt_ids(tokenizer, prompt, image_token="<image>", image_token_id=image_id, run_length=3)
        pad = len(row) - len(real)
        assert row == [-1] * pad + real and m == [0] * pad + [1] * len(real)
    with pytest.raises(ValueError, match="run_length must be >= 1"):
        llava_prompt_ids(tokenizer, prompts[0], image_token="<image>", image_token_id=image_id, run_length=0)


def test_the_adapter_feeds_llavas_ids(tokenizer) -> None:
    """A tiny random LLaVA around the Llama-style tokenizer: the prompt the LLM gets is LLaVA's, with the image's
    placeholder run as long as the method's output."""
    from transformers import LlavaForConditionalGeneration

    spec = TinyLlavaSpec(image_size=32, patch_size=8)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        model = LlavaForConditionalGeneration(build_config(spec, tokenizer))
    vlm = LlavaVLM(model, build_processor(tokenizer, spec))
    images = [Image.fromarray(np.random.default_rng(i).integers(0, 256, (40, 30, 3), dtype=np.uint8)) for i in (0, 1)]
    cases = LLAVA["cases"][:2]
    prepared = vlm.prepare(images, [c["prompt"] for c in cases], method=get_method("random", budget=5))
    for row, mask, case in zip(prepared.input_ids.tolist(), prepared.attention_mask.tolist(), cases, strict=True):
        real = [i for i, m in zip(row, mask, strict=True) if m]
        assert real.count(vlm.image_token_id) == 5
        assert collapse(real, vlm.image_token_id) == case["llava_input_ids"]
