"""Small, strict file helpers shared by the loaders, the runner and the ``score`` command: JSON lines with
errors that name the file and line, atomic JSON writes, and content hashes.
"""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
import warnings
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

_HASH_CHUNK = 1 << 20


def iter_jsonl(path: str | Path) -> Iterator[tuple[int, dict]]:
    """Yield ``(line_number, object)`` for every non-blank line of a JSON-lines file (1-based numbers).

    Raises ``ValueError`` naming the file and line for a line that is not JSON or not a JSON object, or for a
    file that is missing, a folder or not UTF-8. A byte-order mark at the start (Windows editors) is accepted.
    """
    path = Path(path)
    if path.is_dir():
        raise ValueError(f"{path} is a folder, not a JSON-lines file")
    if not path.is_file():
        raise ValueError(f"{path}: no such file")
    with path.open(encoding="utf-8-sig") as fh:
        lineno = 0
        try:
            for lineno, line in enumerate(fh, start=1):
                if line.strip():
                    yield lineno, _parse_line(path, lineno, line)
        except UnicodeDecodeError:
            raise ValueError(f"{path}: not valid UTF-8 text (near line {lineno + 1})") from None


def _parse_line(path: Path, lineno: int, line: str) -> dict:
    try:
        obj = json.loads(line)
    except json.JSONDecodeError as err:
        raise ValueError(f"{path}:{lineno}: malformed JSON line ({err.msg})") from None
    if not isinstance(obj, dict):
        raise ValueError(f"{path}:{lineno}: expected a JSON object, got {type(obj).__name__}")
    return obj


def read_jsonl_resumable(path: str | Path) -> list[dict]:
    """Read an append-only JSON-lines log that a killed writer may have left with a torn last line.

    Every record is written with its terminating newline in one write, so a kill can only leave bytes
    after the last newline: that unterminated tail is a torn write. It is dropped, the file is truncated to
    the last complete line (so later appends continue cleanly) and a warning says so. A malformed
    *terminated* line is corruption, not a torn write: ``ValueError`` naming file and line.
    A missing file reads as empty.
    """
    path = Path(path)
    if not path.exists():
        return []
    data = path.read_bytes()
    lines = data.split(b"\n")
    tail = lines.pop()  # the bytes after the last newline: empty when the file ends cleanly
    records = []
    for lineno, raw in enumerate(lines, start=1):
        if raw.strip():
            try:
                text = raw.decode("utf-8")
            except UnicodeDecodeError:
                raise ValueError(f"{path}:{lineno}: line is not valid UTF-8") from None
            records.append(_parse_line(path, lineno, text))
    if tail:
        warnings.warn(
            f"{path}:{len(lines) + 1}: dropping a torn last line (a previous run was killed mid-write)",
            stacklevel=2,
        )
        with path.open("r+b") as fh:
            fh.truncate(len(data) - len(tail))
    return records


def append_jsonl(fh: Any, records: Iterable[dict]) -> None:
    """Append ``records`` to the open binary file ``fh`` as one write, then flush and fsync.

    One write per batch keeps a kill from interleaving partial records; the fsync makes "finished" mean
    "on disk", so a resumed run never redoes or loses a sample that was reported done.
    """
    payload = b"".join(json.dumps(r, ensure_ascii=False).encode("utf-8") + b"\n" for r in records)
    if payload:
        fh.write(payload)
        fh.flush()
        os.fsync(fh.fileno())


def atomic_write_json(path: str | Path, obj: Any) -> None:
    """Write ``obj`` as indented JSON to ``path`` atomically (temp file in the same folder + ``os.replace``),
    so a reader never sees a half-written file."""
    path = Path(path)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as fh:
            json.dump(obj, fh, indent=2, ensure_ascii=False, sort_keys=False)
            fh.write("\n")
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def atomic_write_jsonl(path: str | Path, records: Iterable[dict]) -> None:
    """Write ``records`` as a JSON-lines file atomically (temp file in the same folder + ``os.replace``)."""
    path = Path(path)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as fh:
            append_jsonl(fh, records)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def sha256_file(path: str | Path) -> str:
    """Hex sha256 of a file's bytes."""
    digest = hashlib.sha256()
    with Path(path).open("rb") as fh:
        while chunk := fh.read(_HASH_CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


def sha256_files(paths: Iterable[str | Path], root: str | Path) -> str:
    """One hex sha256 over several files (e.g. MME's 1000+ annotation .txt files): each file's path
    relative to ``root`` and its content hash, in sorted order, so the digest names the whole label set."""
    digest = hashlib.sha256()
    root = Path(root)
    for rel, path in sorted((Path(p).relative_to(root).as_posix(), p) for p in paths):
        digest.update(f"{rel}\0{sha256_file(path)}\n".encode())
    return digest.hexdigest()
