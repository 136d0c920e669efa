"""Content hashes of large files (checkpoint weights), computed once per file version and remembered.

Hashing a 7B checkpoint's 13.5 GB takes tens of seconds, so :func:`cached_sha256` remembers each file's
sha256 under its *version*: resolved path, size, modification time (ns), inode and device. A file rewritten in
place gets a new mtime and is hashed again; one copied elsewhere is a different path and is hashed once there.
A file modified with its mtime restored (and its size unchanged) would be missed -- the same trade-off ``make``
and ``rsync`` make.

The memory lives in this process and in ``sha256.json`` under the cache folder: ``$SPARSEZIP_CACHE_DIR``, else
``$XDG_CACHE_HOME/sparsezip``, else ``~/.cache/sparsezip``. An unwritable cache folder only costs the re-hash.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

from sparsezip.jsonio import atomic_write_json, sha256_file

CACHE_ENV = "SPARSEZIP_CACHE_DIR"
CACHE_FILE = "sha256.json"

_memory: dict[str, str] = {}


def cache_dir() -> Path:
    """Where :func:`cached_sha256` keeps its hashes (see the module docstring)."""
    if os.environ.get(CACHE_ENV):
        return Path(os.environ[CACHE_ENV])
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base) / "sparsezip"


def _version(path: Path) -> tuple[str, str]:
    """``(resolved path, version key)`` of an existing file."""
    resolved = path.resolve()
    st = resolved.stat()
    return str(resolved), f"{st.st_size}:{st.st_mtime_ns}:{st.st_ino}:{st.st_dev}"


def cached_sha256(path: str | Path) -> str:
    """Hex sha256 of the file at ``path``, from memory or the cache file when this version was hashed before."""
    resolved, version = _version(Path(path))
    key = f"{resolved}\0{version}"
    if key in _memory:
        return _memory[key]
    store_file = cache_dir() / CACHE_FILE
    store = _read_store(store_file)
    entry = store.get(resolved)
    if isinstance(entry, dict) and entry.get("version") == version and isinstance(entry.get("sha256"), str):
        digest = entry["sha256"]
    else:
        digest = sha256_file(resolved)
        store[resolved] = {"version": version, "sha256": digest}
        try:
            store_file.parent.mkdir(parents=True, exist_ok=True)
            atomic_write_json(store_file, store)
        except OSError:
            pass  # a read-only home: the hash is still right, only not remembered across processes
    _memory[key] = digest
    return digest


def _read_store(store_file: Path) -> dict:
    try:
        store = json.loads(store_file.read_text(encoding="utf-8"))
    except (OSError, ValueError):  # absent, unreadable or corrupt: start afresh
        return {}
    return store if isinstance(store, dict) else {}
