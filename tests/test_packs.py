"""Every pack validates; every kind of bad input is one line naming file and field."""

from __future__ import annotations

import pytest
import yaml

from pipeline.errors import PolyalignError
from pipeline.packs import KINDS, load_file, pack_dir, pack_ids

ALL_PACKS = [(kind, pack_id) for kind in KINDS for pack_id in pack_ids(kind)]


@pytest.mark.parametrize(("kind", "pack_id"), ALL_PACKS, ids=[f"{k}/{p}" for k, p in ALL_PACKS])
def test_every_pack_validates(kind, pack_id):
    pack = load_file(pack_dir(kind) / f"{pack_id}.yaml", kind)
    assert pack.id == pack_id
    assert all(t.id.endswith(tuple(f"_v{i}" for i in range(1, 10))) for t in pack.templates.values())


def test_default_packs_present():
    assert {"nya", "npi", "glg", "yor", "hau", "amh", "swh", "eus"} <= set(pack_ids("languages"))


def _edit(repo, pack_id, change):
    path = repo / "languages" / f"{pack_id}.yaml"
    data = yaml.safe_load(path.read_text())
    change(data)
    path.write_text(yaml.safe_dump(data, allow_unicode=True))
    return path


def _error(path, kind="languages") -> str:
    with pytest.raises(PolyalignError) as info:
        load_file(path, kind)
    line = info.value.line()
    assert "\n" not in line and str(path) in line
    return line


def test_unknown_key_suggests(repo_copy):
    path = _edit(repo_copy, "glg", lambda d: d.update(scirpt="Latn"))
    line = _error(path)
    assert "scirpt: unknown key" in line and "did you mean 'script'" in line


def test_wrong_script_names_cldr(repo_copy):
    path = _edit(repo_copy, "npi", lambda d: d.update(script="Latn"))
    assert "script:" in _error(path) and "CLDR says 'Deva'" in _error(path)


def test_bad_iso_code(repo_copy):
    path = _edit(repo_copy, "glg", lambda d: d.update(iso639_3="zzq"))
    assert "iso639_3:" in _error(path)


def test_bad_bcp47(repo_copy):
    path = _edit(repo_copy, "glg", lambda d: d.update(bcp47="not a tag"))
    assert "bcp47:" in _error(path)


def test_missing_local_file(repo_copy):
    path = _edit(repo_copy, "glg", lambda d: d["translators"].insert(0, {"kind": "file", "path": "nope.tsv"}))
    assert "translators.0.path" in _error(path) and "not found" in _error(path)


def test_path_leaving_repository(repo_copy):
    path = _edit(repo_copy, "glg", lambda d: d["translators"].insert(0, {"kind": "file", "path": "../../etc/passwd"}))
    assert "leaves" in _error(path)


def test_invalid_yaml(repo_copy):
    path = repo_copy / "languages" / "glg.yaml"
    path.write_text("id: glg\nname: [unclosed\n")
    assert "invalid YAML" in _error(path)


def test_id_must_match_file(repo_copy):
    path = _edit(repo_copy, "glg", lambda d: d.update(id="gal"))
    assert "id:" in _error(path) and "use 'glg'" in _error(path)


def test_bad_sha_pattern(repo_copy):
    path = _edit(repo_copy, "glg", lambda d: d["sources"]["parallel"]["spec"].update(sha256="abc"))
    assert "sources.parallel.spec.sha256" in _error(path)


def test_include_cycle(repo_copy):
    (repo_copy / "languages" / "_a.yaml").write_text("include: _b.yaml\n")
    (repo_copy / "languages" / "_b.yaml").write_text("include: _a.yaml\n")
    path = _edit(repo_copy, "glg", lambda d: d.update(include=["_common.yaml", "_a.yaml"]))
    assert "include cycle" in _error(path)


def test_include_local_keys_win(repo_copy):
    path = _edit(repo_copy, "glg", lambda d: d.update(templates={"instruct": {"id": "instruct_v2", "text": "X {instruction}"}}))
    pack = load_file(path, "languages")
    assert pack.templates["instruct"].id == "instruct_v2"
    assert pack.templates["taco"].id == "taco_v1"  # still inherited from _common.yaml


def test_unversioned_template(repo_copy):
    path = _edit(repo_copy, "glg", lambda d: d.update(templates={"instruct": {"id": "instruct", "text": "x"}}))
    assert "templates.instruct.id" in _error(path) and "_v<N>" in _error(path)


def test_culture_bad_country(repo_copy):
    path = repo_copy / "cultures" / "gr.yaml"
    data = yaml.safe_load(path.read_text())
    data["country"] = "XX"
    path.write_text(yaml.safe_dump(data, allow_unicode=True))
    assert "country:" in _error(path, "cultures")
