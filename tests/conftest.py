"""Fixtures shared by the tests: tiny LLaVA checkpoints built once per session (CPU, seconds)."""

from __future__ import annotations

import os
import shutil
from collections.abc import Iterator
from pathlib import Path

import pytest

from sparsezip.embedded.models import TinyLlavaSpec, save_tiny_llava
from sparsezip.hashcache import CACHE_ENV

EMBEDDED_MODEL = Path(__file__).resolve().parents[1] / "fixtures" / "tiny-llava"

# 12 x 12 = 144 patches and a 4-layer LM: deep enough for SparseVLM's three pruning layers.
ADAPTER_SPEC = TinyLlavaSpec(text_layers=4)


def pytest_configure(config: pytest.Config) -> None:
    """One torch thread for the tests unless ``--torch-threads`` says otherwise: their tensors are small, and on a
    shared 2-core machine torch's default (every logical CPU) made this suite 4x slower (oversubscription).
    Subprocesses the tests start choose their own threads (the benchmark matrix: 1 for the embedded model)."""
    import torch

    torch.set_num_threads(config.getoption("--torch-threads") or 1)


@pytest.fixture(scope="session", autouse=True)
def _session_hash_cache(tmp_path_factory: pytest.TempPathFactory) -> Iterator[None]:
    """Checkpoint hashes (run identities) are remembered in a session folder, not in the user's ~/.cache."""
    before = os.environ.get(CACHE_ENV)
    os.environ[CACHE_ENV] = str(tmp_path_factory.mktemp("hash-cache"))
    yield
    if before is None:
        os.environ.pop(CACHE_ENV, None)
    else:
        os.environ[CACHE_ENV] = before


@pytest.fixture(scope="session")
def tiny_llava_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A random tiny LLaVA checkpoint on disk (safetensors, config, tokenizer, processor)."""
    return save_tiny_llava(tmp_path_factory.mktemp("tiny-llava"), ADAPTER_SPEC, seed=1)


@pytest.fixture(scope="session")
def perturbed_tiny_llava_dir(tiny_llava_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """``tiny_llava_dir`` copied under the same folder name with a few bytes of its last tensor changed: the same
    safetensors header and file size, different weights (what a header + size identity cannot tell apart)."""
    dest = shutil.copytree(tiny_llava_dir, tmp_path_factory.mktemp("other") / tiny_llava_dir.name)
    weights = dest / "model.safetensors"
    data = bytearray(weights.read_bytes())
    for offset in range(len(data) - 64, len(data) - 32):
        data[offset] ^= 0x5A
    weights.write_bytes(bytes(data))
    return dest


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
