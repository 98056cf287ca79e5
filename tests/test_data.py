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
