"""What a checkpoint folder holds, checked from its files alone: nothing here loads weights or imports
transformers.

A Hugging Face checkpoint is usable when it has a ``config.json`` naming its ``model_type``, weight files
(``model.safetensors``, or the shards an ``model.safetensors.index.json`` lists, or their ``pytorch_model.bin``
equivalents), a tokenizer vocabulary and an image-processor config. Safetensors files are checked by reading
their header with the ``safetensors`` library (a few KB, memory-mapped): a truncated or corrupt file is refused
here, with its name, instead of failing half-way through loading.

:func:`checkpoint_identity` names a checkpoint's weights by their content (a full sha256 of every weight file,
computed once per file version and cached, :mod:`sparsezip.hashcache`): what a run folder records so a resumed
run cannot mix answers of two models, and what published expectations are matched to. A full hash rather than
headers + sizes, because a fine-tuned or perturbed checkpoint has the same headers and sizes as its base; and
per-file sha256s are what the Hugging Face Hub lists for every LFS file, so the identity can be checked
against a hub snapshot without downloading it (:func:`identity_from_hashes` derives it from those alone). The
weight index (``model.safetensors.index.json``) is not part of it: it only maps tensor names to shard files,
which the shards' own headers already say, and as a plain git file on the Hub its sha256 is listed nowhere; it
counts among the settings files instead (:func:`settings_hashes`), so a run's identity still covers it.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

from sparsezip.hashcache import cached_sha256
from sparsezip.jsonio import sha256_file

SAFE_WEIGHTS = "model.safetensors"
SAFE_WEIGHTS_INDEX = "model.safetensors.index.json"
TORCH_WEIGHTS = "pytorch_model.bin"
TORCH_WEIGHTS_INDEX = "pytorch_model.bin.index.json"
# Any one of these is a tokenizer vocabulary (fast tokenizer, sentencepiece, BPE).
TOKENIZER_FILES: tuple[str, ...] = ("tokenizer.json", "tokenizer.model", "vocab.json", "spiece.model")
IMAGE_PROCESSOR_FILE = "preprocessor_config.json"
PROCESSOR_FILE = "processor_config.json"  # transformers >= 5 may nest the image processor here
# The small files that, besides the weights, decide a checkpoint's answers: configuration, generation defaults,
# tokenizer, processor and chat template (whichever exist).
SETTINGS_FILES: tuple[str, ...] = (
    "config.json", "generation_config.json", *TOKENIZER_FILES, "merges.txt", "tokenizer_config.json",
    "special_tokens_map.json", "added_tokens.json", IMAGE_PROCESSOR_FILE, PROCESSOR_FILE, "chat_template.json",
    "chat_template.jinja", SAFE_WEIGHTS_INDEX, TORCH_WEIGHTS_INDEX,
)  # fmt: skip


@dataclass(frozen=True)
class CheckpointFiles:
    """A checkpoint folder whose files passed :func:`check_files`.

    Attributes:
        path: the folder.
        config: ``config.json``, parsed.
        model_type: ``config["model_type"]`` (the key the adapter registry is indexed by).
        weight_files: the weight files that will be loaded (one file, or every shard of an index).
        tensors: how many tensors the safetensors headers list (0 for ``.bin`` weights, which have no header).
    """

    path: Path
    config: Mapping = field(repr=False)
    model_type: str
    weight_files: tuple[Path, ...]
    tensors: int


def read_config(path: Path) -> dict:
    """``path/config.json`` parsed; a missing folder or file, bad JSON or no ``model_type`` is a ``ValueError``
    naming the file."""
    config_file = path / "config.json"
    if not path.is_dir():
        raise ValueError(f"{path} is not a checkpoint directory (no checkpoint at that path)")
    if not config_file.is_file():
        raise ValueError(f"{path} is not a checkpoint directory (no config.json)")
    try:
        config = json.loads(config_file.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as err:
        raise ValueError(f"{config_file}: not valid JSON ({err})") from None
    if not isinstance(config, dict) or not isinstance(config.get("model_type"), str):
        raise ValueError(f"{config_file}: no model_type string, so the model family is unknown")
    return config


def weight_files(path: Path) -> tuple[Path, ...]:
    """The weight files of the checkpoint at ``path``: safetensors first (single file, else the index's shards),
    then PyTorch ``.bin``. Raises ``ValueError`` when there are none or an index names a missing shard."""
    for single, index in ((SAFE_WEIGHTS, SAFE_WEIGHTS_INDEX), (TORCH_WEIGHTS, TORCH_WEIGHTS_INDEX)):
        if (path / single).is_file():
            return (path / single,)
        if (path / index).is_file():
            return _index_shards(path / index)
    raise ValueError(
        f"{path}: no weight files ({SAFE_WEIGHTS}, {SAFE_WEIGHTS_INDEX}, {TORCH_WEIGHTS} or {TORCH_WEIGHTS_INDEX})"
    )


def _index_shards(index_file: Path) -> tuple[Path, ...]:
    try:
        weight_map = json.loads(index_file.read_text(encoding="utf-8"))["weight_map"]
        names = sorted(set(weight_map.values()))
    except (UnicodeDecodeError, json.JSONDecodeError, KeyError, TypeError, AttributeError) as err:
        raise ValueError(f"{index_file}: not a weight index with a weight_map ({err!r})") from None
    if not names:
        raise ValueError(f"{index_file}: the weight_map lists no files")
    shards = tuple(index_file.parent / name for name in names)
    missing = [shard.name for shard in shards if not shard.is_file()]
    if missing:
        raise ValueError(f"{index_file} lists weight files that are missing: {', '.join(missing)}")
    return shards


def safetensors_tensor_count(file: Path) -> int:
    """Tensors listed in a safetensors file's header. Reads only the header (``safetensors.safe_open``, which also
    checks the header covers the whole file), so a truncated or corrupt file is a ``ValueError`` naming it."""
    from safetensors import SafetensorError, safe_open

    try:
        with safe_open(str(file), framework="numpy") as handle:
            return len(list(handle.keys()))
    except (SafetensorError, OSError) as err:
        raise ValueError(f"{file}: unreadable safetensors file, truncated or corrupt ({err})") from None


def check_processor_files(path: Path) -> None:
    """Refuse a checkpoint without a tokenizer vocabulary or an image-processor config (what ``AutoProcessor``
    needs), naming what is missing."""
    missing = []
    if not any((path / name).is_file() for name in TOKENIZER_FILES):
        missing.append(f"a tokenizer ({' / '.join(TOKENIZER_FILES)})")
    if not (path / IMAGE_PROCESSOR_FILE).is_file() and not _nests_image_processor(path / PROCESSOR_FILE):
        missing.append(f"an image processor ({IMAGE_PROCESSOR_FILE}, or {PROCESSOR_FILE} with image_processor)")
    if missing:
        raise ValueError(f"{path}: no processor files: missing {' and '.join(missing)}")


def _nests_image_processor(processor_file: Path) -> bool:
    if not processor_file.is_file():
        return False
    try:
        return isinstance(json.loads(processor_file.read_text(encoding="utf-8")).get("image_processor"), dict)
    except (UnicodeDecodeError, json.JSONDecodeError, AttributeError):
        raise ValueError(f"{processor_file}: not valid JSON") from None


def check_files(path: Path, config: Mapping | None = None) -> CheckpointFiles:
    """Every file check above on the folder ``path`` (config, weights and their headers, processor files); the
    already-read ``config`` may be passed in. Returns what was found; loads no weights."""
    config = read_config(path) if config is None else config
    files = weight_files(path)
    tensors = sum(safetensors_tensor_count(f) for f in files if f.suffix == ".safetensors")
    empty = [f.name for f in files if f.suffix != ".safetensors" and f.stat().st_size == 0]
    if empty:
        raise ValueError(f"{path}: empty weight file(s) {', '.join(empty)}")
    if files[0].suffix == ".safetensors" and tensors == 0:
        raise ValueError(f"{path}: the safetensors weight files hold no tensors")
    check_processor_files(path)
    return CheckpointFiles(path=path, config=config, model_type=config["model_type"], weight_files=files,
                           tensors=tensors)


def weight_hashes(path: str | Path) -> dict[str, str]:
    """``{file name: sha256}`` of the checkpoint's weight files (the index that lists shards is not one), in name
    order. A weight file's sha256 is what the Hugging Face Hub lists as its LFS ``oid``."""
    return {f.name: cached_sha256(f) for f in sorted(weight_files(Path(path)), key=lambda f: f.name)}


def identity_from_hashes(hashes: Mapping[str, str]) -> str:
    """The identity :func:`checkpoint_identity` gives a checkpoint whose weight files are ``{file name: sha256}``
    (e.g. the LFS sha256s a Hugging Face model page lists): a hex sha256 over ``name NUL sha256 LF`` per file, in
    name order. Raises ``ValueError`` for no files or a value that is not a 64-digit hex sha256."""
    if not hashes:
        raise ValueError("identity_from_hashes needs at least one weight file")
    bad = {name: sha for name, sha in hashes.items()
           if not (isinstance(sha, str) and len(sha) == 64 and all(c in "0123456789abcdef" for c in sha))}
    if bad:
        raise ValueError(f"not lowercase hex sha256 values: {bad}")
    digest = hashlib.sha256()
    for name in sorted(hashes):
        digest.update(f"{name}\0{hashes[name]}\n".encode())
    return digest.hexdigest()


def checkpoint_identity(path: str | Path) -> str:
    """The content identity of the weights of the checkpoint folder ``path``: :func:`identity_from_hashes` of its
    :func:`weight_hashes`. Equal for byte-identical weight files of the same names wherever they are stored;
    different for any changed byte (and for the same tensors re-sharded or renamed). Raises ``ValueError`` when
    the folder has no weight files."""
    return identity_from_hashes(weight_hashes(path))


def settings_hashes(path: str | Path) -> dict[str, str]:
    """``{file name: sha256}`` of the checkpoint's :data:`SETTINGS_FILES` that exist (small; not cached)."""
    path = Path(path)
    return {name: sha256_file(path / name) for name in SETTINGS_FILES if (path / name).is_file()}
