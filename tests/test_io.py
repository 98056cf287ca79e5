"""Atomic writes: all or nothing, and only rank 0 writes under a multi-process launch."""

from __future__ import annotations

import pytest

from pipeline import io


def test_failed_write_leaves_nothing(tmp_path):
    target = tmp_path / "out" / "model"
    with pytest.raises(RuntimeError):
        with io.atomic_path(target) as tmp:
            tmp.mkdir()
            (tmp / "half.bin").write_bytes(b"x")
            raise RuntimeError("crash mid-write")
    assert not target.exists() and list(target.parent.iterdir()) == []


def test_directory_output_replaced_in_one_piece(tmp_path):
    target = tmp_path / "adapter"
    for content in ("old", "new"):
        with io.atomic_path(target) as tmp:
            tmp.mkdir()
            (tmp / "w.txt").write_text(content)
    assert [p.name for p in target.iterdir()] == ["w.txt"] and (target / "w.txt").read_text() == "new"


def test_only_rank_zero_writes(tmp_path, monkeypatch):
    monkeypatch.setenv("RANK", "1")
    io.write_json(tmp_path / "m.json", {"a": 1})
    assert not (tmp_path / "m.json").exists()
    monkeypatch.setenv("RANK", "0")
    io.write_json(tmp_path / "m.json", {"a": 1})
    assert io.read_json(tmp_path / "m.json") == {"a": 1}
