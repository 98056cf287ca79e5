"""Translator component: segmentation, cache, failure counting, backend choice, Apertium batching."""

from __future__ import annotations

import shutil

import pytest

from pipeline.errors import PolyalignError
from pipeline.packs import Translator as Spec
from pipeline.packs import load_language
from pipeline.translate import (
    BACKWARD,
    FORWARD,
    Apertium,
    Cache,
    FileTranslator,
    HubMt,
    LlmIcl,
    Translator,
    choose,
    first_line,
    judge,
    reassemble,
    segments_of,
)


class FakeBackend:
    """Uppercases (forward) or lowercases (backward) each segment; records what it was asked."""

    def __init__(self, outputs: dict[str, str] | None = None):
        self.calls: list[list[str]] = []
        self.outputs = outputs or {}

    def system_id(self) -> str:
        return "fake:v1"

    def translate(self, segments, direction):
        self.calls.append(list(segments))
        return [self.outputs.get(s, s.upper() if direction == FORWARD else s.lower()) for s in segments]


def always(ok: bool):
    return lambda texts, lang: [ok] * len(texts)


@pytest.fixture
def glg():
    return load_language("glg")


def test_segments_split_lines_and_sentences_and_reassemble_keeps_layout():
    text = "First one. Second one?\n\n  - item one\nlast"
    segs = segments_of(text)
    assert segs == ["First one.", "Second one?", "- item one", "last"]
    out = reassemble(text, {s: s.upper() for s in segs})
    assert out == "FIRST ONE. SECOND ONE?\n\n  - ITEM ONE\nLAST"


def test_cache_second_call_does_not_call_backend(glg, tmp_path):
    backend = FakeBackend()
    tr = Translator(glg, backend, lang_check=always(True), cache_root=tmp_path)
    texts = ["Hello there. How are you?", "Hello there."]
    first = tr.translate(texts, FORWARD)
    assert first.outputs == ["HELLO THERE. HOW ARE YOU?", "HELLO THERE."]
    assert backend.calls == [["Hello there.", "How are you?"]]  # duplicates translated once
    again = Translator(glg, backend, lang_check=always(True), cache_root=tmp_path).translate(texts, FORWARD)
    assert again.outputs == first.outputs and len(backend.calls) == 1 and again.cached == 2
    tr.translate(texts, BACKWARD)  # the direction is part of the key
    assert len(backend.calls) == 2


def test_cache_key_includes_system(tmp_path):
    a, b = Cache("sys-a", tmp_path), Cache("sys-b", tmp_path)
    a.put_many(FORWARD, {"x": "y"})
    assert a.get_many(FORWARD, ["x"]) == {"x": "y"} and b.get_many(FORWARD, ["x"]) == {}


def test_failures_counted_never_kept(glg, tmp_path):
    backend = FakeBackend({"Vanishes.": ""})
    calls = []

    def check(texts, lang):
        calls.append((list(texts), lang))
        return ["WRONG" not in t for t in texts]

    tr = Translator(glg, backend, lang_check=check, cache_root=tmp_path)
    texts = ["Vanishes.", "This sentence is long enough to be judged wrong.", "short", ""]
    res = tr.translate(texts, FORWARD)
    assert res.ok == [False, False, True, True]
    assert res.failures == {"empty": 1, "wrong_language": 1}
    assert calls[0][1] == "tgt"  # forward outputs are judged as the target language
    assert "SHORT" not in calls[0][0]  # too few letters for LID to judge: not sent to it


def test_judge_checks_english_on_backward():
    ok, failures = judge(["a long enough source sentence here"], ["a long enough output sentence here"], "en",
                         lambda texts, lang: [lang == "en"] * len(texts))
    assert ok == [True] and not failures


def test_first_line_cuts_icl_continuation():
    assert first_line(" Moni dziko.\nEnglish: next example") == "Moni dziko."


def test_choose_skips_unavailable_and_says_why(glg, repo_copy, monkeypatch):
    from pipeline import io

    io.write_jsonl(repo_copy / "data" / "glg" / "train.jsonl", [{"doc": "d", "line": 0, "en": "a", "tgt": "b"}])
    monkeypatch.setattr(shutil, "which", lambda name: None)  # no apertium binary
    backend, skipped = choose(glg)
    assert isinstance(backend, LlmIcl) and skipped == ["apertium: apertium binary not installed"]


def test_no_available_translator_is_one_line_error(glg, monkeypatch):
    monkeypatch.setattr(shutil, "which", lambda name: None)
    pack = glg.model_copy(update={"translators": [Spec(kind="apertium", pair="en-gl", apt_package="x")]})
    with pytest.raises(PolyalignError, match="no translator is available"):
        choose(pack)


def test_hub_mt_unavailable_offline(glg, monkeypatch):
    monkeypatch.setenv("POLYALIGN_OFFLINE", "1")
    ok, why = HubMt(Spec(kind="hub-mt", model="facebook/nllb-200-distilled-600M"), glg).available()
    assert not ok and "offline" in why


def test_file_translator(glg, repo_copy):
    (repo_copy / "mt.tsv").write_text("Hello there.\tOla.\nOla.\tHello.\n", encoding="utf-8")
    spec = Spec(kind="file", path="mt.tsv")
    backend = FileTranslator(spec, glg)
    assert backend.available()[0] and backend.system_id().startswith("file:mt.tsv:")
    assert backend.translate(["Hello  there.", "Unknown."], FORWARD) == ["Ola.", ""]
    assert not FileTranslator(Spec(kind="file", path="missing.tsv"), glg).available()[0]


def test_icl_prompt_uses_train_pairs_and_template(glg, repo_copy):
    from pipeline import io

    rows = [{"doc": "d", "line": i, "en": f"English sentence number {i} is long enough.",
             "tgt": f"Frase galega número {i} longa abondo."} for i in range(10)]
    io.write_jsonl(repo_copy / "data" / "glg" / "train.jsonl", rows)
    icl = LlmIcl(Spec(kind="llm-icl", model="tiny-random", shots=2), glg)
    assert icl.available()[0]
    fwd, bwd = icl.prompts(["Source."], FORWARD)[0], icl.prompts(["Fonte."], BACKWARD)[0]
    assert fwd.startswith("Translate from English to Galician.\nEnglish: ") and fwd.endswith("English: Source.\nGalician:")
    assert fwd.count("\nGalician: Frase") == 2 and bwd.endswith("Galician: Fonte.\nEnglish:")


@pytest.mark.skipif(not Apertium.installed_pairs() >= {"en-gl", "gl-en"}, reason="apertium-en-gl not installed")
def test_apertium_batch_keeps_segments_apart(glg):
    backend = Apertium(glg.translators[0], glg)
    # a single newline is not a boundary to Apertium ("star\nLine two." mixes); blank lines are
    out = backend.translate(["It has a * star", "Line two.", "the big", "red car is fast"], FORWARD)
    assert len(out) == 4 and "Liña" in out[1] and "coche" in out[3]
    assert backend.system_id().startswith("apertium:en-gl:apertium-en-gl=")


def test_adapted_system_id_follows_the_weights_not_the_training_log(glg, repo_copy, tmp_path):
    """mt_errors names an adapted system by its adapter's weights and config: a rerun that writes
    new timings into training.json keeps the id, other weights change it."""
    from stages.mt_errors import AdaptedIcl

    adapter = tmp_path / "adapter"
    adapter.mkdir()
    for name, text in (("adapter_config.json", "{}"), ("adapter_model.safetensors", "w1"),
                       ("training.json", '{"wall_s": 40.1}'), ("README.md", "card")):
        (adapter / name).write_text(text, encoding="utf-8")
    system = AdaptedIcl(glg, adapter, "tiny-random", shots=2)
    first = system.system_id()
    assert first.startswith("llm-icl:tiny-random:") and ":adapter" in first
    (adapter / "training.json").write_text('{"wall_s": 48.3}', encoding="utf-8")
    assert system.system_id() == first
    (adapter / "adapter_model.safetensors").write_text("w2", encoding="utf-8")
    assert system.system_id() != first
