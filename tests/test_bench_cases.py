"""Running one matrix case: run folders, fingerprints, dynamic-K calibration, and what a case records."""

from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
from PIL import Image

from sparsezip.bench.cases import (
    batch_size_for,
    build_method,
    case_dir,
    dataset_fingerprint,
    extra_info,
    k_distribution,
    run_fingerprint,
    unreachable_reason,
)
from sparsezip.bench.matrix import build_matrix, checkpoint_num_patches, model_name
from sparsezip.context import CompressionResult, VisionContext
from sparsezip.data import load_dataset
from sparsezip.data.prompts import llava_v1_prompt
from sparsezip.eval.runner import evaluate
from sparsezip.methods import CompressionMethod, get_method
from sparsezip.methods.llm_budget import BudgetWarning
from sparsezip.testing.fake import FakeVisionLanguageModel
from sparsezip.testing.trees import write_tree


def test_every_case_has_its_own_run_folder(tmp_path: Path) -> None:
    cases = build_matrix("tiny-shapes", 144)
    dirs = {case_dir(tmp_path, c) for c in cases}
    assert len(dirs) == len(cases)
    case = next(c for c in cases if c.id == "pope-random[tiny-shapes]-visionzip-k16")
    assert case_dir(tmp_path, case) == tmp_path / "tiny-shapes" / "pope-random" / "visionzip-k16"


def _tree(root: Path) -> tuple[Path, Path]:
    package, model = root / "pkg", root / "model"
    package.mkdir()
    model.mkdir()
    (package / "a.py").write_text("x = 1\n")
    (model / "config.json").write_text("{}")
    return package, model


def test_run_fingerprint_changes_with_code_model_device_and_limit(tmp_path: Path) -> None:
    package, model = _tree(tmp_path)

    def fp(**kw) -> str:
        args = {"package_dir": package, "model_path": model, "data_root": tmp_path, "device_type": "cpu",
                "limit": None, **kw}
        return run_fingerprint(**args)

    base = fp()
    assert fp() == base and len(base) == 12
    assert fp(device_type="cuda") != base and fp(limit=5) != base
    (package / "a.py").write_text("x = 2\n")
    changed_code = fp()
    assert changed_code != base
    (model / "model.safetensors").write_bytes(b"weights")
    assert fp() != changed_code


def test_dataset_fingerprint_ignores_file_locations() -> None:
    assert dataset_fingerprint({}) is None
    assert dataset_fingerprint({"/a/coco_pope_random.json": "abc"}) == "abc"
    assert dataset_fingerprint({"/x/1.txt": "h1", "/x/2.txt": "h2"}) == dataset_fingerprint(
        {"/elsewhere/2.txt": "h2", "/elsewhere/1.txt": "h1"})


def test_k_distribution() -> None:
    dist = k_distribution([8, 9, 9, 10])
    assert dist == {"mean": 9.0, "std": pytest.approx(0.7071, abs=1e-4), "min": 8, "max": 10,
                    "histogram": {"8": 1, "9": 2, "10": 1}}
    with pytest.raises(ValueError, match="at least one"):
        k_distribution([])


def test_model_identity_from_the_checkpoint_folder(tmp_path: Path) -> None:
    snapshot = tmp_path / "models--llava-hf--llava-1.5-7b-hf" / "snapshots" / "0123abcd"
    snapshot.mkdir(parents=True)
    assert model_name(snapshot) == "llava-1.5-7b-hf"
    assert model_name(tmp_path / "my-llava") == "my-llava"
    assert model_name("tiny-shapes") == "tiny-shapes"  # a registered embedded model keeps its name
    # The count comes from the adapter that config.json's model_type names (so the config must name one).
    (snapshot / "config.json").write_text(
        '{"model_type": "llava", "vision_config": {"image_size": 336, "patch_size": 14}}')
    assert checkpoint_num_patches(snapshot) == 576
    with pytest.raises(ValueError, match="no checkpoint"):
        checkpoint_num_patches(tmp_path / "missing")
    (snapshot / "config.json").write_text('{"model_type": "llava", "vision_config": {}}')
    with pytest.raises(ValueError, match="image_size/patch_size"):
        checkpoint_num_patches(snapshot)
    (snapshot / "config.json").write_text('{"model_type": "llama"}')
    with pytest.raises(ValueError, match=r"model_type 'llama'.*has no adapter"):
        checkpoint_num_patches(snapshot)


def test_extra_info_from_a_real_run_of_the_fake_model(tmp_path: Path) -> None:
    """The runner's real summary (fake model, real method and metrics) -> everything a case records."""
    samples = list(load_dataset("pope", write_tree("pope", "files", tmp_path / "data"), category="random"))
    model = FakeVisionLanguageModel(grid=12)
    case = next(c for c in build_matrix("fake", 144, datasets=["pope-random"], methods=["none"]))
    method = get_method("none")
    summary = evaluate(model, method, samples, tmp_path / "run", dataset=case.dataset,
                       batch_size=batch_size_for(method), progress=False)
    [timed] = model.generate([samples[0].load_image()], ["<image>"], method=method, questions=["q"])
    info = extra_info(case, method, summary, timed, num_patches=model.num_patches)

    assert info["headline"] == {"name": "f1", "value": summary["metrics"]["f1"], "scale": 1.0}
    assert info["metrics"]["n"] == info["n"] == len(samples) == 4
    assert info["visual_tokens"]["mean"] == info["visual_tokens"]["llm_input"] == 144
    assert info["visual_tokens"]["per_layer"] is None
    assert set(info["stage_ms"]) == {"vision_ms", "compress_ms", "prefill_ms", "decode_ms", "total_ms"}
    assert info["timed_sample"]["visual_tokens"] == 144 and info["new_tokens_mean"] >= 1
    assert info["kv_cache_saved_bytes"] == 0  # `none` saves nothing
    assert info["dataset_sha256"] == samples[0].meta["source_sha256"]
    assert info["method_config"] == {"budget": None} and info["eval_batch_size"] == 8
    assert info["peak_memory_bytes"] > 0 and "k_distribution" not in info


class _Recorder(CompressionMethod):
    """Keeps every patch and remembers the context the adapter handed it."""

    name = "test-recorder"
    needs_attention = True
    needs_text = True

    def compress(self, ctx: VisionContext) -> CompressionResult:
        self.seen = ctx
        return get_method("none").compress(ctx)


def test_vision_context_is_what_generate_hands_the_method(tiny_vlm) -> None:
    images = [Image.new("RGB", (40, 30), (200, 10, 10)), Image.new("RGB", (30, 40), (10, 10, 200))]
    questions = ["Is there a red circle?", "Is there a blue square in the image?"]
    recorder = _Recorder()
    tiny_vlm.generate(images, [llava_v1_prompt(q) for q in questions], method=recorder, questions=questions,
                      max_new_tokens=1)
    ctx = tiny_vlm.vision_context(images, questions=questions)
    for field in ("hidden", "keys", "cls_attn", "text_query", "sample_seeds"):
        assert torch.allclose(getattr(ctx, field), getattr(recorder.seen, field), atol=1e-5), field
    assert tiny_vlm.vision_context(images).text_query is None
    with pytest.raises(ValueError, match="1 questions for 2 images"):
        tiny_vlm.vision_context(images, questions=questions[:1])


def test_dynamic_k_row_is_calibrated_to_the_budget(tiny_vlm, tmp_path: Path) -> None:
    samples = list(load_dataset("pope", write_tree("pope", "files", tmp_path / "data"), category="random"))
    [case] = build_matrix("tiny", tiny_vlm.num_patches, datasets=["pope-random"], methods=["sparsezip-dynk"])
    method, calibration = build_method(case, tiny_vlm, samples)
    config = method.config()
    assert config["dynamic_k"] is True and (config["k_min"], config["k_max"]) == (8, 16)  # 32/64 of 576 -> 144
    assert calibration["target_mean_k"] == config["dominant"] == 9  # fixed-K split of 16: 1 + 9 + 6
    assert abs(calibration["mean_k"] - 9) <= 0.5 and calibration["num_images"] == len(samples)
    assert config["dynk"]["c"] == pytest.approx(calibration["c"])
    plain, none_calibration = build_method(next(iter(build_matrix("tiny", 144, methods=["visionzip"]))),
                                           tiny_vlm, samples)
    assert none_calibration is None and plain.name == "visionzip"


def test_in_llm_methods_run_batched_and_unreachable_schedules_are_named(tiny_vlm) -> None:
    assert batch_size_for(get_method("sparsevlm")) == batch_size_for(get_method("none")) > 1
    assert unreachable_reason(get_method("sparsevlm", budget=48), tiny_vlm) is None
    assert unreachable_reason(get_method("visionzip", budget=16), tiny_vlm) is None
    # a layer-averaged budget out of reach (144 patches x 4 layers: SparseVLM needs >= 38.50) is no reason to
    # skip: the method runs its paper's nominal setting and warns
    with pytest.warns(BudgetWarning, match="38.50 to 144.00"):
        assert unreachable_reason(get_method("sparsevlm", budget=16), tiny_vlm) is None
    shallow = SimpleNamespace(nominal_visual_tokens=144, config=SimpleNamespace(
        text_config=SimpleNamespace(num_hidden_layers=2)))
    assert "too shallow" in unreachable_reason(get_method("sparsevlm", budget=48), shallow)
    assert unreachable_reason(get_method("sparsevlm", budget=16), FakeVisionLanguageModel(grid=12)) is None


def test_extra_info_of_an_in_llm_case_records_nominal_layer_averaged_and_per_layer(tiny_vlm, tmp_path: Path) -> None:
    """FastV at 16 of 144 on 4 layers: out of reach as a layer average, so the nominal 16 kept (a warning), and
    both figures with the per-layer list are recorded: per sample, in the summary and in the case."""
    samples = list(load_dataset("pope", write_tree("pope", "files", tmp_path / "data"), category="random"))
    case = next(c for c in build_matrix("tiny", 144, datasets=["pope-random"], methods=["fastv"]) if c.budget == 16)
    method, _ = build_method(case, tiny_vlm, samples)
    with pytest.warns(BudgetWarning, match="fastv budget 16"):
        summary = evaluate(tiny_vlm, method, samples, tmp_path / "run", dataset=case.dataset,
                           batch_size=batch_size_for(method), progress=False)
    assert summary["tokens"]["visual_nominal_mean"] == 16 and summary["tokens"]["visual"]["mean"] == 80
    [timed] = tiny_vlm.generate([samples[0].load_image()], [llava_v1_prompt(samples[0].question)], method=method)
    info = extra_info(case, method, summary, timed, num_patches=144)
    assert info["visual_tokens"]["nominal"] == 16 and info["visual_tokens"]["mean"] == 80
    assert info["visual_tokens"]["per_layer"] == [144, 144, 16, 16] and info["visual_tokens"]["llm_input"] == 144
    budget = info["in_llm_budget"]
    assert budget["applied"] == "nominal" and budget["layer_averaged"] == 80 and "out of reach" in budget["warning"]
    assert info["method_config"] == {"budget": 16, "budget_mode": "layer_averaged", "layer": 2}
