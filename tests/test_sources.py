"""Source resolution order, sha256 verification, offline errors and the readers."""

from __future__ import annotations

import gzip
import json

import pytest

from pipeline.errors import PolyalignError
from pipeline.packs import GithubSource, LocalSource, Source
from pipeline.sources import read, read_jsonl, read_udhr, resolve, sha256_path
from pipeline.text import ntrex_source

NTREX_ENG = ntrex_source("eng")


def test_mirror_first_and_verified():
    path = resolve(NTREX_ENG)
    assert "mirror" in str(path) or "shared" in str(path)
    lines = read(NTREX_ENG)
    assert len(lines) == 1997 and lines[0]


def test_cache_used_when_no_mirror(tmp_path, monkeypatch):
    body = b"hello\nworld\n"
    spec = GithubSource(kind="github", repo="o/r", commit="a" * 40, path="x.txt",
                        sha256=__import__("hashlib").sha256(body).hexdigest())
    monkeypatch.setenv("POLYALIGN_CACHE", str(tmp_path))
    monkeypatch.delenv("POLYALIGN_MIRROR")
    cached = tmp_path / "github" / "o/r" / ("a" * 40) / "x.txt"
    cached.parent.mkdir(parents=True)
    cached.write_bytes(body)
    assert resolve(spec) == cached
    assert read(Source(spec=spec, format="lines")) == ["hello", "world"]


def test_sha_mismatch_is_one_line(tmp_path, monkeypatch):
    spec = NTREX_ENG.spec.model_copy(update={"sha256": "0" * 64})
    with pytest.raises(PolyalignError) as info:
        resolve(spec, origin="languages/x.yaml")
    assert info.value.line().startswith("languages/x.yaml: sha256:")


def test_offline_missing_names_where_to_put_it(tmp_path, monkeypatch):
    monkeypatch.setenv("POLYALIGN_CACHE", str(tmp_path))
    monkeypatch.setenv("POLYALIGN_OFFLINE", "1")
    monkeypatch.delenv("POLYALIGN_MIRROR")
    with pytest.raises(PolyalignError) as info:
        resolve(NTREX_ENG, origin="languages/glg.yaml")
    line = info.value.line()
    assert "languages/glg.yaml" in line and str(tmp_path) in line and "POLYALIGN_MIRROR" in line


def test_local_source_cannot_leave_repo(repo_copy):
    from pydantic import ValidationError

    with pytest.raises(ValidationError, match="leaves"):  # refused when the pack is validated
        LocalSource(kind="local", path="../outside.txt")
    unchecked = LocalSource.model_construct(kind="local", path="../outside.txt")
    with pytest.raises(PolyalignError, match="leaves"):  # and again when resolved
        resolve(unchecked, origin="languages/glg.yaml")


def test_folder_hash_is_listing_hash(tmp_path):
    (tmp_path / "a").mkdir()
    (tmp_path / "a" / "1.json").write_text("[]")
    first = sha256_path(tmp_path)
    (tmp_path / "a" / "2.json").write_text("[]")
    assert sha256_path(tmp_path) != first


def test_jsonl_gz_and_udhr_readers(tmp_path):
    gz = tmp_path / "p.jsonl.gz"
    with gzip.open(gz, "wt") as f:
        f.write(json.dumps({"chosen": "a", "rejected": "b"}) + "\n")
    assert read_jsonl(gz) == [{"chosen": "a", "rejected": "b"}]
    html = tmp_path / "u.html"
    html.write_text("<html><body><h1>T</h1><p>Article <b>one</b> &amp; more</p><p> </p></body></html>")
    assert read_udhr(html) == ["Article one & more"]
