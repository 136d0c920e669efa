"""Running one matrix case: run folders, fingerprints, and what a case records (on the fake model)."""

from pathlib import Path

import pytest

from sparsezip.testing.cases import (
    batch_size_for,
    case_dir,
    dataset_fingerprint,
    extra_info,
    k_distribution,
    run_fingerprint,
)
from sparsezip.testing.matrix import build_matrix, checkpoint_num_patches, model_name


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
    (snapshot / "config.json").write_text('{"vision_config": {"image_size": 336, "patch_size": 14}}')
    assert checkpoint_num_patches(snapshot) == 576
    with pytest.raises(ValueError, match="no checkpoint"):
        checkpoint_num_patches(tmp_path / "missing")
    (snapshot / "config.json").write_text('{"vision_config": {}}')
    with pytest.raises(ValueError, match="image_size/patch_size"):
        checkpoint_num_patches(snapshot)


def _summary(n: int = 4) -> dict:
    return {
        "n": n, "expected": n, "complete": True,
        "metrics": {"accuracy": 0.75, "precision": 1.0, "recall": 0.5, "f1": 2 / 3, "yes_ratio": 0.25, "n": n},
        "latency_ms": {s: {"mean": 1.0, "median": 1.0, "p90": 1.0} for s in
                       ("vision_ms", "compress_ms", "prefill_ms", "decode_ms", "total_ms")},
        "tokens": {"visual": {"mean": 16.0, "min": 16.0, "max": 16.0}, "visual_per_layer_mean": None,
                   "prefill_mean": 60.0, "new_tokens_mean": 2.0, "max_new_tokens": 16},
        "memory": {"peak_bytes": 123, "peak_kind": "cpu_rss_high_water", "kv_cache_saved_bytes_per_sample": 512.0,
                   "kv_bytes_per_token": 4.0},
        "config": {"sources": {"/d/coco_pope_random.json": "sha"}, "batch_size": 8},
    }


def test_extra_info_holds_quality_tokens_cost_and_config() -> None:
    from sparsezip.adapters.api import GenerationOutput
    from sparsezip.methods import get_method

    case = next(c for c in build_matrix("tiny-shapes", 144, datasets=["pope-random"], methods=["none"]))
    method = get_method("none")
    timed = GenerationOutput(text="Yes", new_tokens=2, visual_tokens=144.0, prefill_tokens=200,
                             timings={"total_ms": 5.0})
    info = extra_info(case, method, _summary(), timed, num_patches=144)
    assert info["headline"] == {"name": "f1", "value": pytest.approx(2 / 3), "scale": 1.0}
    assert info["visual_tokens"]["mean"] == 16.0 and info["visual_tokens"]["per_layer"] is None
    assert info["stage_ms"]["prefill_ms"] == 1.0 and info["timed_sample"]["new_tokens"] == 2
    assert info["kv_cache_saved_bytes"] == 512.0 and info["dataset_sha256"] == "sha"
    assert info["method_config"] == {"budget": None} and info["row"] == "none"
    assert "k_distribution" not in info
    assert batch_size_for(method) == 8
