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


# --------------------------------------------------------------------------- malformed variants
# Each variant edits the shipped glg pack's text (or params.yaml) the way a user might break it;
# `packs validate` must name the file and the field in one line, exit 2, and write nothing.
GLG_SHA = "6865106cf7073f74b8094c08009afbc06ade4a967b3d939626c0a6b288e39162"
GLG_COMMIT = "8561f6a622db9edad1217683e5c83daefd8bb2bf"
MALFORMED = [
    # (name, file, old text, new text, substrings the one line must hold)
    ("duplicate-key", "languages/glg.yaml", "name: Galician\n", "name: Galician\nscript: Latn\n",
     ["script (line", "duplicate key 'script'", "keep one"]),
    ("duplicate-nested-key", "languages/glg.yaml", "  model: auto\n", "  model: auto\n  model: cld3\n",
     ["duplicate key 'model'"]),
    ("not-utf8", "languages/glg.yaml", "autonym: galego", b"autonym: gal\xe9go",
     ["line 8", "not UTF-8", "save the file as UTF-8"]),
    ("sha256-all-zeros-unquoted", "languages/glg.yaml", GLG_SHA, "0" * 64,
     ["sources.parallel.spec.sha256", "malformed sha256", "64 lowercase hex", "the number 0", "in quotes"]),
    ("sha256-too-short", "languages/glg.yaml", GLG_SHA, "abc123",
     ["sources.parallel.spec.sha256", "malformed sha256", "'abc123'"]),
    ("sha256-list", "languages/glg.yaml", f"sha256: {GLG_SHA}", f"sha256: [{GLG_SHA}]",
     ["sources.parallel.spec.sha256", "malformed sha256"]),
    ("commit-all-digits", "languages/glg.yaml", GLG_COMMIT, "1234567890" * 4,
     ["sources.parallel.spec.commit", "malformed commit", "40 lowercase hex", "the number", "in quotes"]),
    ("commit-short", "languages/glg.yaml", GLG_COMMIT, "8561f6a",
     ["sources.parallel.spec.commit", "malformed commit"]),
    ("path-leaves-mirror", "languages/glg.yaml", "path: NTREX-128/newstest2019-ref.glg.txt",
     "path: ../../../../etc/passwd", ["sources.parallel.spec.path", "leaves", "without '..'"]),
    ("absolute-path", "languages/glg.yaml", "path: declaration/glg.html", "path: /etc/passwd",
     ["sources.monolingual.0.spec.path", "leaves"]),
    ("repo-leaves-mirror", "languages/glg.yaml", "repo: MicrosoftTranslator/NTREX", "repo: ../..",
     ["sources.parallel.spec.repo", "leave the mirror or cache"]),
    ("package-version-leaves-cache", "languages/glg.yaml", "version: 6.0.0", "version: ../../../tmp",
     ["sources.monolingual.0.spec.version", "leave the mirror or cache"]),
    ("translator-file-leaves-repo", "languages/glg.yaml", "- kind: llm-icl\n",
     "- kind: file\n  path: ../../etc/passwd\n- kind: llm-icl\n", ["translators.1.path", "leaves"]),
    ("unquoted-version-number", "languages/glg.yaml", "version: 6.0.0", "version: 6.0",
     ["sources.monolingual.0.spec.version", "in quotes"]),
    ("id-not-iso", "languages/glg.yaml", "id: glg", "id: galician", ["id:", "differs from the file name"]),
    ("params-duplicate-key", "params.yaml", "profile: default\n", "profile: default\nprofile: smoke\n",
     ["params.yaml: profile (line", "duplicate key 'profile'"]),
    ("params-not-utf8", "params.yaml", "profile: default", b"profile: d\xffefault", ["params.yaml", "not UTF-8"]),
]


def _snapshot(repo):
    return {p: p.stat().st_mtime_ns for p in repo.rglob("*") if p.is_file()}


@pytest.mark.parametrize(("name", "rel", "old", "new", "expect"), MALFORMED, ids=[m[0] for m in MALFORMED])
def test_validate_rejects_malformed_variant(repo_copy, name, rel, old, new, expect):
    from typer.testing import CliRunner

    from pipeline.cli import app

    path = repo_copy / rel
    raw = path.read_bytes()
    assert old.encode() in raw, f"{name}: the shipped file changed; update the variant"
    new = new if isinstance(new, bytes) else new.encode()
    path.write_bytes(raw.replace(old.encode(), new, 1))
    before = _snapshot(repo_copy)
    result = CliRunner().invoke(app, ["packs", "validate"])
    lines = [line for line in result.output.splitlines() if line.strip()]
    assert result.exit_code == 2 and len(lines) == 1, result.output
    assert lines[0].startswith(f"error: {path}: ") or lines[0].startswith(f"error: {rel}"), lines[0]
    for part in expect:
        assert part in lines[0], (part, lines[0])
    assert _snapshot(repo_copy) == before  # nothing written


def test_all_zeros_sha_quoted_is_well_formed(repo_copy):
    """The fix the message gives works: quoted, 64 zeros is a hash (that then fails to match)."""
    path = repo_copy / "languages" / "glg.yaml"
    path.write_text(path.read_text().replace(GLG_SHA, "'" + "0" * 64 + "'"))
    assert load_file(path, "languages").sources.parallel.spec.sha256 == "0" * 64
