"""``checkpoint_identity``: a content identity of a checkpoint's weights, cheap to recompute (cached per file
version), blind to where the files are stored, and not fooled by weights with the same headers and sizes."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import pytest
from safetensors import safe_open

from sparsezip import hashcache
from sparsezip.adapters.checkpoint import (
    checkpoint_identity,
    identity_from_hashes,
    settings_hashes,
    weight_hashes,
)
from sparsezip.jsonio import sha256_file


def header(path: Path) -> dict:
    with safe_open(str(path), framework="numpy") as handle:
        return {key: handle.get_slice(key).get_shape() for key in handle.keys()}


def test_identity_is_the_content_not_the_place(tiny_llava_dir: Path, perturbed_tiny_llava_dir: Path,
                                               tmp_path: Path) -> None:
    identity = checkpoint_identity(tiny_llava_dir)
    assert len(identity) == 64 and int(identity, 16) >= 0
    copy = shutil.copytree(tiny_llava_dir, tmp_path / "elsewhere" / tiny_llava_dir.name)
    assert checkpoint_identity(copy) == identity
    other = perturbed_tiny_llava_dir
    same_shape = other / "model.safetensors"
    assert same_shape.stat().st_size == (tiny_llava_dir / "model.safetensors").stat().st_size
    assert header(same_shape) == header(tiny_llava_dir / "model.safetensors")
    assert checkpoint_identity(other) != identity
    # the per-file hashes are plain sha256s of the files (what the Hugging Face Hub lists for LFS files)
    assert weight_hashes(other) == {"model.safetensors": sha256_file(same_shape)}
    assert set(settings_hashes(other)) >= {"config.json", "tokenizer.json", "processor_config.json"}


def test_hashes_are_cached_per_file_version(tiny_llava_dir: Path, perturbed_tiny_llava_dir: Path, tmp_path: Path,
                                            monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(hashcache.CACHE_ENV, str(tmp_path / "cache"))
    monkeypatch.setattr(hashcache, "_memory", {})
    copy = shutil.copytree(tiny_llava_dir, tmp_path / "ckpt")
    hashed: list[Path] = []
    real = hashcache.sha256_file
    monkeypatch.setattr(hashcache, "sha256_file", lambda p: hashed.append(Path(p)) or real(p))
    first = checkpoint_identity(copy)
    assert [p.name for p in hashed] == ["model.safetensors"]
    monkeypatch.setattr(hashcache, "_memory", {})  # a new process: only the cache file remembers
    assert checkpoint_identity(copy) == first and len(hashed) == 1
    assert json.loads((tmp_path / "cache" / hashcache.CACHE_FILE).read_text())
    # rewritten in place (new bytes, new mtime): hashed again
    weights = copy / "model.safetensors"
    shutil.copyfile(perturbed_tiny_llava_dir / "model.safetensors", weights)
    os.utime(weights, ns=(weights.stat().st_atime_ns, weights.stat().st_mtime_ns + 10**9))
    assert checkpoint_identity(copy) != first and len(hashed) == 2


def test_sharded_weights_are_all_in_the_identity(tiny_llava_dir: Path, tmp_path: Path) -> None:
    from safetensors.torch import load_file, save_file

    tensors = load_file(tiny_llava_dir / "model.safetensors")
    names = sorted(tensors)
    folder = tmp_path / "sharded"
    shutil.copytree(tiny_llava_dir, folder, ignore=shutil.ignore_patterns("model.safetensors"))
    halves = {"model-00001-of-00002.safetensors": names[::2], "model-00002-of-00002.safetensors": names[1::2]}
    for shard, keys in halves.items():
        save_file({k: tensors[k] for k in keys}, folder / shard)
    index = {"metadata": {}, "weight_map": {k: shard for shard, keys in halves.items() for k in keys}}
    (folder / "model.safetensors.index.json").write_text(json.dumps(index))
    # the index is a settings file, not weights: the identity follows from the shards' sha256s alone
    assert list(weight_hashes(folder)) == [*halves]
    assert "model.safetensors.index.json" in settings_hashes(folder)
    identity = checkpoint_identity(folder)
    assert identity == identity_from_hashes({name: sha256_file(folder / name) for name in halves})
    save_file({k: tensors[k] * 2 for k in halves["model-00002-of-00002.safetensors"]},
              folder / "model-00002-of-00002.safetensors")
    assert checkpoint_identity(folder) != identity
    (folder / "model-00002-of-00002.safetensors").unlink()
    with pytest.raises(ValueError, match=r"model-00002-of-00002\.safetensors"):
        checkpoint_identity(folder)
