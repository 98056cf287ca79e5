"""Document-level splits, normalisation and the data stage's refusal of bad input."""

from __future__ import annotations

import subprocess
import sys

from pipeline.sources import read
from pipeline.text import normalise, ntrex_source, split_documents


def test_split_is_document_level_deterministic_and_disjoint():
    docs = read(ntrex_source("documents"))
    a = split_documents(docs, test_docs=25, dev_docs=10, salt="ntrex_split_v1")
    b = split_documents(list(reversed(docs)), test_docs=25, dev_docs=10, salt="ntrex_split_v1")
    assert a == b  # depends on the ids only, not their order
    assert sum(v == "test" for v in a.values()) == 25 and sum(v == "dev" for v in a.values()) == 10
    lines = {name: {i for i, d in enumerate(docs) if a[d] == name} for name in ("train", "dev", "test")}
    assert not (lines["train"] & lines["test"]) and len(set().union(*lines.values())) == len(docs)
    assert split_documents(docs, test_docs=25, dev_docs=10, salt="other") != a


def test_normalise_nfc_and_spaces():
    assert normalise("e\u0301  x\t y ") == "\u00e9 x y"


def test_data_stage_bad_pack_exits_2_and_writes_nothing(repo_copy):
    (repo_copy / "languages" / "glg.yaml").write_text("id: glg\nbogus: 1\n")
    proc = subprocess.run([sys.executable, "-m", "stages.data", "--pack", "glg"], cwd=repo_copy,
                          capture_output=True, text=True)
    assert proc.returncode == 2
    assert proc.stderr.count("\n") == 1 and "glg.yaml" in proc.stderr
    assert not (repo_copy / "data").exists() and not (repo_copy / "results").exists()


# --------------------------------------------------------------------------- language identifier: dev picks, test reports
def _fake_identifiers(monkeypatch, right_on: dict[str, set[str]]):
    """Identifier m labels a text 'gl' when the text is in right_on[m], 'pt' otherwise."""
    import pipeline.text as text
    from stages import data

    def fake(texts, m):
        return ["gl" if t in right_on[m] else "pt" for t in texts]
    monkeypatch.setattr(text, "identify_with", fake)
    monkeypatch.setattr(data, "identify_with", fake)


def test_auto_lid_is_picked_on_dev_and_reported_on_test(monkeypatch):
    from pipeline.packs import load_language
    from stages import data

    dev = [f"dev {i}" for i in range(20)]
    test = [{"doc": f"d{i % 5}", "line": i, "tgt": f"test {i}"} for i in range(40)]
    # cld3 is better on dev, lid176 better on test: the pick must follow dev
    _fake_identifiers(monkeypatch, {"cld3": set(dev[:18]) | {t["tgt"] for t in test[:20]},
                                    "lid176": set(dev[:10]) | {t["tgt"] for t in test},
                                    "ntrex-fasttext": set(dev[:5])})
    pack = load_language("glg").model_copy(update={"lid": load_language("glg").lid.model_copy(
        update={"model": "auto", "label": None, "labels": {"ntrex-fasttext": "gl", "cld3": "gl", "lid176": "gl"}})})
    choice = data.pick_lid(pack, dev)
    assert choice["model"] == "cld3" and choice["dev"] == {"ntrex-fasttext": 0.25, "cld3": 0.9, "lid176": 0.5}
    lid = data.lid_check(choice, test, None, seed=0)
    assert lid["lid_accuracy"] == 0.5 and lid["lid_n"] == 40 and lid["lid_docs"] == 5
    assert 0.34 < lid["lid_ci"][0] < 0.5 < lid["lid_ci"][1] < 0.66  # Wilson at 20/40
    some = data.lid_check(choice, test, 10, seed=0)
    assert some["lid_n"] == 10 and some["lid_docs"] == 5  # a capped sample still spans every document
    row = data.lid_row(pack, choice, lid)
    assert row["n_docs"] == 5 and "picked on dev" in row["note"] and "cld3 0.900" in row["note"]


def test_auto_lid_needs_candidates_and_a_pick(repo_copy):
    import json

    import pytest

    from pipeline.errors import PolyalignError
    from pipeline.packs import Lid, load_language
    from pipeline.text import LID_CHOICE, resolved_lid

    with pytest.raises(ValueError, match="labels"):
        Lid(model="auto")
    with pytest.raises(ValueError, match="label"):
        Lid(model="cld3")
    pack = load_language("glg")
    auto = pack.model_copy(update={"lid": Lid(model="auto", labels={"cld3": "gl", "ntrex-fasttext": "glg"})})
    with pytest.raises(PolyalignError, match="data@glg"):
        resolved_lid(auto)
    (repo_copy / "data" / "glg").mkdir(parents=True)
    (repo_copy / "data" / "glg" / LID_CHOICE).write_text(json.dumps({"model": "ntrex-fasttext", "label": "glg"}))
    assert resolved_lid(auto) == ("ntrex-fasttext", "glg")
