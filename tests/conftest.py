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
