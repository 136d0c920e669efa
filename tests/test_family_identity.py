"""Run identity and pre-load checks of the LLaVA-NeXT and Qwen2.5-VL adapters, as for LLaVA-1.5: run.json holds
the weights' content identity and every adapter setting that changes answers; the registry's geometry (from
config.json, before any weights load) is the loaded model's; a method that cannot fit is refused before loading."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import transformers

from sparsezip.adapters.api import model_geometry
from sparsezip.adapters.registry import checkpoint_geometry, inspect_checkpoint
from sparsezip.cli import main
from sparsezip.data import load_dataset, resolve_dataset
from sparsezip.eval.rundir import RUN_FILE
from sparsezip.eval.runner import evaluate
from sparsezip.methods import get_method
from sparsezip.testing.trees import write_tree

FAMILIES = [("tiny_next_dir", "tiny_next_vlm"), ("tiny_qwen_dir", "tiny_qwen_vlm")]


@pytest.fixture(scope="module")
def pope() -> list:
    """The first synthetic POPE questions (96 px scenes: every family's minimum image size is met)."""
    _, path, options = resolve_dataset(Path(__file__).resolve().parents[1] / "fixtures" / "data", "pope-random")
    return list(load_dataset("pope", path, **options))[:3]


@pytest.mark.parametrize(("folder", "model"), FAMILIES)
def test_geometry_from_config_is_the_loaded_models(folder: str, model: str, request: pytest.FixtureRequest) -> None:
    path, vlm = request.getfixturevalue(folder), request.getfixturevalue(model)
    before = checkpoint_geometry(inspect_checkpoint(path))
    assert before == model_geometry(vlm)
    assert before.prefix == vlm.prefix and before.llm_layers == vlm.config.text_config.num_hidden_layers


@pytest.mark.parametrize(("folder", "model"), FAMILIES)
def test_run_json_holds_the_weights_identity_and_the_adapter_settings(folder: str, model: str, pope: list,
                                                                      tmp_path: Path,
                                                                      request: pytest.FixtureRequest,
                                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    path, vlm = request.getfixturevalue(folder), request.getfixturevalue(model)
    assert vlm.checkpoint_path == path
    out = tmp_path / "out"
    evaluate(vlm, get_method("none"), pope[:2], out, dataset="pope", progress=False)
    config = json.loads((out / RUN_FILE).read_text())
    assert len(config["checkpoint"]["weights"]) == 64 and "config.json" in config["checkpoint"]["files"]
    settings = config["model_settings"]
    assert settings == json.loads(json.dumps(vlm.run_settings()))
    assert settings["image_processor_class"].endswith("Pil") and settings["prefix"] == vlm.prefix
    assert settings["padding_side"] == "left" and "pad_token_id" in settings
    # a resumed run whose adapter settings differ is refused, naming the setting
    changed = {**vlm.run_settings(), "pad_token_id": -1}
    monkeypatch.setattr(type(vlm), "run_settings", lambda self: changed)
    with pytest.raises(ValueError, match=r"different run \(model_settings\.pad_token_id: "):
        evaluate(vlm, get_method("none"), pope, out, dataset="pope", progress=False)


@pytest.mark.parametrize("folder", ["tiny_next_dir", "tiny_qwen_dir"])
def test_a_method_that_cannot_fit_is_refused_before_any_weights_load(folder: str, tmp_path: Path,
                                                                    request: pytest.FixtureRequest,
                                                                    monkeypatch: pytest.MonkeyPatch,
                                                                    capsys: pytest.CaptureFixture) -> None:
    path = request.getfixturevalue(folder)
    tokens = checkpoint_geometry(inspect_checkpoint(path)).visual_tokens
    data = tmp_path / "data"
    write_tree("pope", "files", data)

    def refuse(cls, *args, **kwargs):
        raise AssertionError(f"{cls.__name__}.from_pretrained was called")

    for owner in (transformers.PreTrainedModel, transformers.AutoProcessor, transformers.AutoTokenizer,
                  transformers.AutoImageProcessor):
        monkeypatch.setattr(owner, "from_pretrained", classmethod(refuse))
    args = ["eval", "--dataset", "pope-random", "--data", str(data), "--model-path", str(path), "--no-progress",
            "--out", str(tmp_path / "out"), "--device", "cpu"]
    assert main([*args, "--method", "visionzip", "--budget", str(tokens + 1)]) == 2
    err = capsys.readouterr().err
    assert f"({tokens} visual tokens per image" in err and err.count("\n") == 1 and "Traceback" not in err
    assert not (tmp_path / "out").exists()
