"""The model registry: the adapter is picked by config.json's model_type, and every bad checkpoint is refused
from its files alone, before any weights load (``from_pretrained`` is never called for them)."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch
import transformers
from safetensors.torch import save_file

from sparsezip.adapters import registry
from sparsezip.adapters.llava import load_llava
from sparsezip.adapters.registry import (
    ModelAdapter,
    inspect_checkpoint,
    list_adapters,
    list_embedded_models,
    load_model,
    nominal_visual_tokens,
    parse_device,
    register_adapter,
    resolve_model,
)
from sparsezip.cli import main

ROOT = Path(__file__).resolve().parents[1]
EMBEDDED = ROOT / "fixtures" / "tiny-llava"
# config.json of meta-llama/Llama-2-7b-hf, trimmed: a language model, no vision tower.
LLAMA_CONFIG = {"architectures": ["LlamaForCausalLM"], "model_type": "llama", "hidden_size": 4096,
                "intermediate_size": 11008, "num_attention_heads": 32, "num_hidden_layers": 32, "vocab_size": 32000}


@pytest.fixture
def no_weight_loading(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """Make every ``from_pretrained`` (models and processors) record its call and fail the test."""
    calls: list[str] = []

    def refuse(cls, *args, **kwargs):
        calls.append(cls.__name__)
        raise AssertionError(f"{cls.__name__}.from_pretrained was called for a checkpoint that must be refused")

    for owner in (transformers.PreTrainedModel, transformers.AutoProcessor, transformers.AutoTokenizer,
                  transformers.AutoImageProcessor):
        monkeypatch.setattr(owner, "from_pretrained", classmethod(refuse))
    return calls


def _checkpoint(folder: Path, config: dict, *, weights: bool = True, processor: bool = True) -> Path:
    """A checkpoint folder with ``config`` and, optionally, the embedded model's weights and processor files."""
    folder.mkdir(parents=True)
    (folder / "config.json").write_text(json.dumps(config))
    if weights:
        (folder / "model.safetensors").symlink_to(EMBEDDED / "model.safetensors")
    if processor:
        for name in ("tokenizer.json", "tokenizer_config.json", "processor_config.json", "chat_template.jinja"):
            shutil.copy(EMBEDDED / name, folder / name)
    return folder


def _llava_config(**changes: object) -> dict:
    config = json.loads((EMBEDDED / "config.json").read_text())
    config.update(changes)
    return config


def test_a_llama_checkpoint_is_refused_before_any_weights_load(tmp_path: Path, no_weight_loading: list[str]) -> None:
    # Without the check, transformers builds a default (7B) LLaVA around this config and the process is OOM-killed.
    folder = _checkpoint(tmp_path / "llama-2-7b", LLAMA_CONFIG, weights=False, processor=False)
    with pytest.raises(ValueError) as err:
        load_model(folder)
    message = str(err.value)
    assert "model_type 'llama' (LlamaForCausalLM) has no adapter; supported model types: llava" in message
    assert "\n" not in message and no_weight_loading == []
    with pytest.raises(ValueError, match="model_type 'llama'"):
        load_llava(folder)
    assert no_weight_loading == []


def test_the_cli_refuses_it_with_one_line_and_exit_status_2(tmp_path: Path, no_weight_loading: list[str],
                                                            capsys: pytest.CaptureFixture[str]) -> None:
    folder = _checkpoint(tmp_path / "llama", LLAMA_CONFIG, weights=False, processor=False)
    status = main(["eval", "--dataset", "pope-random", "--data", str(ROOT / "fixtures" / "data"), "--limit", "1",
                   "--model-path", str(folder), "--device", "cpu", "--method", "none", "--out", str(tmp_path / "run"),
                   "--no-progress"])
    err = capsys.readouterr().err.strip()
    assert status == 2 and len(err.splitlines()) == 1 and "has no adapter" in err and "Traceback" not in err
    assert no_weight_loading == [] and not (tmp_path / "run").exists()


@pytest.mark.parametrize(
    ("config", "weights", "processor", "match"),
    [
        (_llava_config(), False, True, "no weight files"),
        (_llava_config(), True, False, "no processor files: missing a tokenizer"),
        (_llava_config(vision_feature_layer=[-2, -5]), True, True, "vision_feature_layer must be one int"),
        (_llava_config(vision_feature_select_strategy="full"), True, True, "vision_feature_select_strategy"),
        (_llava_config(vision_config={"model_type": "siglip_vision_model", "image_size": 384, "patch_size": 14}),
         True, True, "vision tower must be CLIP"),
        ({"architectures": ["LlavaForConditionalGeneration"]}, True, True, "no model_type"),
    ],
    ids=["no-weights", "no-processor", "feature-layer-list", "select-full", "siglip", "no-model-type"],
)
def test_bad_checkpoints_are_refused_from_their_files(tmp_path: Path, no_weight_loading: list[str], config: dict,
                                                      weights: bool, processor: bool, match: str) -> None:
    folder = _checkpoint(tmp_path / "ckpt", config, weights=weights, processor=processor)
    with pytest.raises(ValueError, match=match):
        load_model(folder)
    assert no_weight_loading == []


@pytest.mark.parametrize("keep", [0, 7, 20, 1000])
def test_truncated_safetensors_is_refused_naming_the_file(tmp_path: Path, no_weight_loading: list[str],
                                                          keep: int) -> None:
    folder = _checkpoint(tmp_path / "ckpt", _llava_config(), weights=False)
    (folder / "model.safetensors").write_bytes((EMBEDDED / "model.safetensors").read_bytes()[:keep])
    with pytest.raises(ValueError, match=r"model\.safetensors: unreadable safetensors file, truncated or corrupt"):
        load_model(folder)
    assert no_weight_loading == []


def test_sharded_weights_need_every_shard_and_other_bad_files(tmp_path: Path, no_weight_loading: list[str]) -> None:
    folder = _checkpoint(tmp_path / "ckpt", _llava_config(), weights=False)
    index = {"weight_map": {"a.weight": "model-00001-of-00002.safetensors", "b": "model-00002-of-00002.safetensors"}}
    (folder / "model.safetensors.index.json").write_text(json.dumps(index))
    (folder / "model-00001-of-00002.safetensors").symlink_to(EMBEDDED / "model.safetensors")
    with pytest.raises(ValueError, match=r"missing: model-00002-of-00002\.safetensors"):
        load_model(folder)
    (folder / "model-00002-of-00002.safetensors").symlink_to(EMBEDDED / "model.safetensors")
    assert [f.name for f in inspect_checkpoint(folder).files.weight_files] == [
        "model-00001-of-00002.safetensors", "model-00002-of-00002.safetensors"]
    (folder / "config.json").write_text("{not json")
    with pytest.raises(ValueError, match=r"config\.json: not valid JSON"):
        load_model(folder)
    with pytest.raises(ValueError, match="not a checkpoint directory"):
        load_model(tmp_path / "missing")
    empty = _checkpoint(tmp_path / "bin", _llava_config(), weights=False)
    (empty / "pytorch_model.bin").write_bytes(b"")
    with pytest.raises(ValueError, match=r"empty weight file\(s\) pytorch_model.bin"):
        load_model(empty)
    assert no_weight_loading == []


def test_the_guard_itself_catches_a_weight_load(tiny_llava_dir: Path, no_weight_loading: list[str]) -> None:
    # A good checkpoint gets through every check, so the (patched) from_pretrained is reached: the guard works.
    with pytest.raises(AssertionError, match="from_pretrained was called"):
        load_model(tiny_llava_dir)
    assert no_weight_loading == ["LlavaForConditionalGeneration"]


def test_a_good_checkpoint_passes_every_check(tiny_llava_dir: Path) -> None:
    checkpoint = inspect_checkpoint(tiny_llava_dir)
    assert checkpoint.adapter.model_type == "llava" and checkpoint.name == tiny_llava_dir.name
    assert checkpoint.files.tensors > 0 and checkpoint.files.weight_files == (tiny_llava_dir / "model.safetensors",)
    assert nominal_visual_tokens(tiny_llava_dir) == 144


def test_embedded_models_are_registered_like_real_ones(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                       embedded_vlm) -> None:
    assert "tiny-shapes" in list_embedded_models() and list_adapters() == ["llava", "llava_next", "qwen2_5_vl"]
    assert resolve_model("tiny-shapes") == (EMBEDDED, "tiny-shapes")
    assert nominal_visual_tokens("tiny-shapes") == 144
    assert embedded_vlm.name == "tiny-shapes" and embedded_vlm.nominal_visual_tokens == 144  # load_model by name
    monkeypatch.chdir(tmp_path)
    (tmp_path / "tiny-shapes").mkdir()
    assert resolve_model("tiny-shapes") == (Path("tiny-shapes"), "tiny-shapes")  # an existing folder wins
    monkeypatch.setitem(registry._EMBEDDED, "gone", registry.EmbeddedModel("gone", tmp_path / "nope", "missing"))
    with pytest.raises(ValueError, match=r"embedded model 'gone'.*sparsezip train-tiny"):
        load_model("gone")


def test_the_adapter_is_chosen_by_model_type(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    loaded = []
    adapter = ModelAdapter(model_type="test-vlm", family="a test family",
                           load=lambda ckpt, device, dtype: loaded.append((ckpt.name, device, dtype)) or "model",
                           nominal_visual_tokens=lambda config: int(config["tokens"]))
    monkeypatch.setitem(registry._ADAPTERS, "test-vlm", adapter)
    folder = tmp_path / "my-vlm"
    folder.mkdir()
    (folder / "config.json").write_text('{"model_type": "test-vlm", "tokens": 7}')
    save_file({"w": torch.zeros(2)}, folder / "model.safetensors")
    (folder / "tokenizer.json").write_text("{}")
    (folder / "preprocessor_config.json").write_text("{}")
    assert load_model(folder, dtype="bfloat16") == "model"
    assert loaded == [("my-vlm", torch.device("cpu"), torch.bfloat16)]
    assert nominal_visual_tokens(folder) == 7 and "test-vlm" in list_adapters()
    with pytest.raises(ValueError, match=r"is not a LLaVA-1\.5 checkpoint"):
        load_llava(folder)
    with pytest.raises(ValueError, match="already has an adapter"):
        register_adapter(ModelAdapter(model_type="test-vlm", family="another", load=print,
                                      nominal_visual_tokens=len))


def test_devices_and_dtypes_are_checked_before_loading(tmp_path: Path, no_weight_loading: list[str]) -> None:
    with pytest.raises(ValueError, match="'tpu' is not a torch device"):
        parse_device("tpu")
    if not torch.cuda.is_available():
        with pytest.raises(ValueError, match="CUDA is not available"):
            load_model("tiny-shapes", device="cuda")
    with pytest.raises(ValueError, match="floating-point dtype"):
        load_model("tiny-shapes", dtype="int8")
    assert no_weight_loading == []
