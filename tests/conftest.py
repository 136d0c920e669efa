"""Fixtures shared by the tests: tiny LLaVA checkpoints built once per session (CPU, seconds)."""

from __future__ import annotations

from pathlib import Path

import pytest

from sparsezip.embedded.models import TinyLlavaSpec, save_tiny_llava

EMBEDDED_MODEL = Path(__file__).resolve().parents[1] / "fixtures" / "tiny-llava"

# 12 x 12 = 144 patches and a 4-layer LM: deep enough for SparseVLM's three pruning layers.
ADAPTER_SPEC = TinyLlavaSpec(text_layers=4)


@pytest.fixture(scope="session")
def tiny_llava_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A random tiny LLaVA checkpoint on disk (safetensors, config, tokenizer, processor)."""
    return save_tiny_llava(tmp_path_factory.mktemp("tiny-llava"), ADAPTER_SPEC, seed=1)


@pytest.fixture(scope="session")
def tiny_vlm(tiny_llava_dir: Path):
    """That checkpoint behind the adapter, loaded through the model registry. Tests must not modify it."""
    from sparsezip.adapters.registry import load_model

    return load_model(tiny_llava_dir)


@pytest.fixture(scope="session")
def tiny_plain(tiny_llava_dir: Path):
    """The same checkpoint loaded a second time, used unmodified as the reference: ``(model, processor)``."""
    from transformers import AutoProcessor, LlavaForConditionalGeneration

    model = LlavaForConditionalGeneration.from_pretrained(tiny_llava_dir).eval()
    return model, AutoProcessor.from_pretrained(tiny_llava_dir)


@pytest.fixture(scope="session")
def embedded_plain():
    """The committed embedded default (``fixtures/tiny-llava``) loaded with plain ``from_pretrained``, once per
    session: ``(model, processor)``. Tests must not modify it."""
    from transformers import AutoProcessor, LlavaForConditionalGeneration

    model = LlavaForConditionalGeneration.from_pretrained(EMBEDDED_MODEL).eval()
    return model, AutoProcessor.from_pretrained(EMBEDDED_MODEL)


@pytest.fixture(scope="session")
def embedded_vlm():
    """The committed embedded default behind the adapter, loaded by its registered name, once per session. Tests
    must not modify it."""
    from sparsezip.adapters.registry import load_model

    return load_model("tiny-shapes")


# --- the LLaVA-NeXT and Qwen2.5-VL families: random tiny checkpoints, built once per session -----------------
@pytest.fixture(scope="session")
def tiny_next_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A random tiny LLaVA-NeXT checkpoint (32 px crops of 16 patches, 3 or 5 crops per image, GQA Llama)."""
    from sparsezip.embedded.tiny_llava_next import save_tiny_llava_next

    return save_tiny_llava_next(tmp_path_factory.mktemp("tiny-llava-next"), seed=1)


@pytest.fixture(scope="session")
def tiny_next_vlm(tiny_next_dir: Path):
    """That checkpoint behind its adapter, loaded through the model registry. Tests must not modify it."""
    from sparsezip.adapters.registry import load_model

    return load_model(tiny_next_dir)


@pytest.fixture(scope="session")
def tiny_qwen_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A random tiny Qwen2.5-VL checkpoint (8 px patches merged 2 x 2, 4-16 tokens per image, window attention)."""
    from sparsezip.embedded.tiny_qwen2_5_vl import save_tiny_qwen

    return save_tiny_qwen(tmp_path_factory.mktemp("tiny-qwen2.5-vl"), seed=1)


@pytest.fixture(scope="session")
def tiny_qwen_vlm(tiny_qwen_dir: Path):
    """That checkpoint behind its adapter, loaded through the model registry. Tests must not modify it."""
    from sparsezip.adapters.registry import load_model

    return load_model(tiny_qwen_dir)
