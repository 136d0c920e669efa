"""The append-only log reader: what a kill can leave behind, and what it cannot."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from sparsezip.jsonio import atomic_write_json, atomic_write_jsonl, read_jsonl_resumable


def test_missing_file_reads_empty(tmp_path: Path) -> None:
    assert read_jsonl_resumable(tmp_path / "none.jsonl") == []


@pytest.mark.parametrize("tail", [b'{"a": 3', b'{"a": 3}', b"\xff\xfe", b"   "])
def test_any_unterminated_tail_is_a_torn_write(tmp_path: Path, tail: bytes) -> None:
    path = tmp_path / "log.jsonl"
    atomic_write_jsonl(path, [{"a": 1}, {"a": 2}])
    clean = path.read_bytes()
    path.write_bytes(clean + tail)
    with pytest.warns(UserWarning, match="log.jsonl:3: dropping a torn last line"):
        assert read_jsonl_resumable(path) == [{"a": 1}, {"a": 2}]
    assert path.read_bytes() == clean  # truncated, so the next append starts on a fresh line


def test_terminated_garbage_is_corruption(tmp_path: Path) -> None:
    path = tmp_path / "log.jsonl"
    path.write_bytes(b'{"a": 1}\n[1, 2]\n')
    with pytest.raises(ValueError, match=r"log.jsonl:2: expected a JSON object, got list"):
        read_jsonl_resumable(path)
    path.write_bytes(b'{"a": 1}\n\xff\n{"a": 2}\n')
    with pytest.raises(ValueError, match=r"log.jsonl:2: line is not valid UTF-8"):
        read_jsonl_resumable(path)


def test_atomic_write_leaves_no_temp_files(tmp_path: Path) -> None:
    atomic_write_json(tmp_path / "s.json", {"x": [1, 2]})
    with pytest.raises(TypeError):
        atomic_write_json(tmp_path / "s.json", {"x": object()})
    assert json.loads((tmp_path / "s.json").read_text()) == {"x": [1, 2]}  # the old file survives
    assert sorted(p.name for p in tmp_path.iterdir()) == ["s.json"]
