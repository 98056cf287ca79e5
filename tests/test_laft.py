"""LAFT/MAFT helpers: cleaning, temperature sampling, tokenizer statistics, bits per byte."""

from __future__ import annotations

import math
import unicodedata
from collections import Counter

import numpy as np
import pytest

from pipeline import io, laft


# --------------------------------------------------------------------------- cleaning
def test_clean_drops_numbers_punctuation_short_and_duplicates():
    lines = [
        "Mtsogoleri wa dziko anati zinthu zikuyenda bwino kwambiri lero",  # kept
        "12 , 345 . 2019 -- 7 ! ?",            # only numbers/punctuation, 9 tokens
        "Nkhani yachidule",                   # 2 tokens: short
        "   ",                                 # empty
        "Mtsogoleri  wa dziko anati zinthu zikuyenda bwino kwambiri lero ",  # duplicate after spacing fix
        "one two three four five six",       # exactly 6 tokens: kept
    ]
    kept, stats = laft.clean_lines(lines)
    assert kept == ["Mtsogoleri wa dziko anati zinthu zikuyenda bwino kwambiri lero", "one two three four five six"]
    assert stats == {"lines_in": 6, "dropped_empty": 1, "dropped_no_letters": 1, "dropped_short": 1,
                     "dropped_duplicate": 1, "lines_kept": 2}


def test_clean_applies_nfc_and_dedups_across_normal_forms():
    composed = "O descoñecemento e o menosprezo dos dereitos"
    decomposed = unicodedata.normalize("NFD", composed)
    assert decomposed != composed
    kept, stats = laft.clean_lines([decomposed, composed])
    assert kept == [composed] and stats["dropped_duplicate"] == 1


def test_devanagari_counts_as_letters_and_threshold_is_configurable():
    nepali = "नेपालको राजधानी काठमाडौं हो र यो सुन्दर छ"
    assert laft.has_letter(nepali) and not laft.has_letter("१२३ ४५६ — ।")
    assert laft.clean_lines([nepali])[0] == [nepali]
    assert laft.clean_lines(["a b c"], min_tokens=3)[0] == ["a b c"]


def test_read_target_text_reads_train_and_mono_not_test(tmp_path):
    io.write_jsonl(tmp_path / "train.jsonl", [{"doc": "d1", "line": 0, "en": "x", "tgt": "uno dous tres catro cinco seis"}])
    io.write_jsonl(tmp_path / "test.jsonl", [{"doc": "d9", "line": 1, "en": "x", "tgt": "segredo do test nunca visto aquí non"}])
    (tmp_path / "mono_train.txt").write_text("Artigo 1\nTodos os seres humanos nacen libres e iguais\n", encoding="utf-8")
    kept, stats = laft.clean_lines(laft.read_target_text(tmp_path))
    assert kept == ["uno dous tres catro cinco seis", "Todos os seres humanos nacen libres e iguais"]
    assert stats["dropped_short"] == 1


# --------------------------------------------------------------------------- sampling
def test_temperature_probs_hand_computed():
    # T=2: weights sqrt(100)=10 and sqrt(25)=5 -> 2/3, 1/3
    p = laft.temperature_probs({"a": 100, "b": 25}, 2.0)
    assert p["a"] == pytest.approx(2 / 3) and p["b"] == pytest.approx(1 / 3)
    assert laft.temperature_probs({"a": 100, "b": 25}, 1.0)["a"] == pytest.approx(0.8)
    big_t = laft.temperature_probs({"a": 10_000, "b": 1}, 1e6)
    assert big_t["a"] == pytest.approx(0.5, abs=1e-4)
    with pytest.raises(ValueError):
        laft.temperature_probs({"a": 1}, 0)


def test_allocate_sums_to_total():
    counts = laft.allocate({"a": 1 / 3, "b": 1 / 3, "c": 1 / 3}, 10)
    assert sum(counts.values()) == 10 and sorted(counts.values()) == [3, 3, 4]


def test_temperature_sample_upsamples_small_language_evenly_and_is_seeded():
    pools = {"big": [f"big {i}" for i in range(900)], "small": [f"small {i}" for i in range(100)]}
    sample, counts = laft.temperature_sample(pools, 600, temperature=2.0, seed=1)
    # sqrt(900)=30, sqrt(100)=10 -> 3/4 and 1/4 of 600
    assert counts == {"big": 450, "small": 150}
    assert Counter(s["lang"] for s in sample) == counts
    small = Counter(s["text"] for s in sample if s["lang"] == "small")
    assert len(small) == 100 and set(small.values()) <= {1, 2}  # one full pass, then half another
    big = [s["text"] for s in sample if s["lang"] == "big"]
    assert len(set(big)) == 450  # subsampled without repeats
    assert laft.temperature_sample(pools, 600, 2.0, seed=1)[0] == sample
    assert laft.temperature_sample(pools, 600, 2.0, seed=2)[0] != sample


# --------------------------------------------------------------------------- tokenizer statistics
class PieceTokenizer:
    """Whitespace 'tokenizer': a word is one piece if in vocab, else one <0xNN> piece per byte."""

    vocab = {"hello", "world"}

    def __call__(self, text, add_special_tokens=False):
        pieces = []
        for word in text.split():
            pieces += [word] if word in self.vocab else [f"<0x{b:02X}>" for b in word.encode("utf-8")]
        return {"input_ids": pieces}

    def convert_ids_to_tokens(self, ids):
        return list(ids)


def test_tokenizer_stats_hand_computed():
    stats = laft.tokenizer_stats(PieceTokenizer(), ["hello world", "hello ñu"])
    # tokens: 2 + (1 + 3 bytes for "ñu") = 6; words 4; chars 11 + 8 = 19; fallback 3
    assert stats["tokens"] == 6 and stats["words"] == 4
    assert stats["fertility"] == pytest.approx(1.5)
    assert stats["chars_per_token"] == pytest.approx(19 / 6)
    assert stats["byte_fallback_share"] == pytest.approx(0.5)
    assert stats["bytes"] == 11 + 9
    assert laft.is_byte_piece("<0xE2>") and not laft.is_byte_piece("<0x>") and not laft.is_byte_piece("▁the")


# --------------------------------------------------------------------------- bits per byte
def test_bits_per_byte_hand_computed():
    # two sentences per document: 8+24 bits over 4+8 bytes and 10+10 over 5+5 -> 52/22 bits per byte
    value, lo, hi = laft.bpb_interval([8.0, 24.0, 10.0, 10.0], [4, 8, 5, 5], ["a", "a", "b", "b"])
    assert value == pytest.approx(52 / 22) and lo <= value <= hi
    # identical per-sentence ratios: the interval collapses onto the value
    assert laft.bpb_interval([2.0, 4.0, 6.0], [1, 2, 3], ["a", "b", "c"])[1:] == pytest.approx((2.0, 2.0))
    assert laft.nats_to_bits(math.log(2) * 5) == pytest.approx(5.0)


def test_bpb_paired_is_paired_over_documents():
    rng = np.random.default_rng(0)
    nbytes = rng.integers(100, 1000, size=40).astype(float)
    docs = np.repeat(np.arange(20), 2)
    base = nbytes * rng.uniform(1.5, 3.0, size=40)  # sentences differ a lot in difficulty ...
    better = base - 0.1 * nbytes  # ... but the adapted model is better on every one by 0.1 bpb
    value, lo, hi = laft.bpb_paired(better, base, nbytes, docs)
    assert value == pytest.approx(-0.1) and lo == pytest.approx(-0.1) and hi == pytest.approx(-0.1)
    _, ulo, uhi = laft.bpb_interval(better, nbytes, docs)
    assert uhi - ulo > 0.05  # the unpaired interval is much wider than the paired one


# --------------------------------------------------------------------------- held-out sets
UDHR_HTML = """<html><body><header><h2>Preamble</h2><p>Whereas recognition of the inherent dignity</p></header>
<article data-number="1"><h2>Article 1</h2><p>All human beings are born free &amp; equal.</p></article>
<article data-number="2"><h2>Article 2</h2><p>Everyone is  entitled to all the rights.</p>
<p>Furthermore, no <em>distinction</em> shall be made.</p></article>
<article data-number="3"><h2>Article 3</h2><p>Everyone has the right to life.</p></article></body></html>"""


def test_udhr_articles_parse_paragraphs_by_article_without_preamble(tmp_path):
    path = tmp_path / "x.html"
    path.write_text(UDHR_HTML, encoding="utf-8")
    rows = laft.udhr_articles(path)
    assert [(r["doc"], r["text"]) for r in rows] == [
        ("udhr.1", "All human beings are born free & equal."), ("udhr.2", "Everyone is entitled to all the rights."),
        ("udhr.2", "Furthermore, no distinction shall be made."), ("udhr.3", "Everyone has the right to life.")]
    held = laft.udhr_heldout(rows, 2, seed=0)
    assert {r["article"] for r in held} == laft.heldout_articles([1, 2, 3], 2, 0)
    assert all(r in held for r in rows if r["article"] in {r["article"] for r in held})  # whole articles
    assert laft.heldout_articles(range(1, 31), 15, 0) == laft.heldout_articles(range(30, 0, -1), 15, 0)
    assert laft.heldout_articles(range(1, 31), 15, 0) != laft.heldout_articles(range(1, 31), 15, 1)
    with pytest.raises(ValueError):
        laft.heldout_articles([1, 2, 3], 3, 0)  # nothing left to train on


def test_drop_lines_compares_normalised_text():
    kept, removed = laft.drop_lines(["a  b c", "d e f", "g h i"], {"a b c", "g h i"})
    assert kept == ["d e f"] and removed == 2


def test_eval_sample_spreads_over_every_document_never_a_prefix():
    rows = [{"doc": f"doc{d}", "line": d * 16 + i} for d in range(25) for i in range(16)]
    picked = laft.eval_sample(rows, 100, seed=0)
    per_doc = Counter(r["doc"] for r in picked)
    assert len(picked) == 100 and len(per_doc) == 25 and set(per_doc.values()) == {4}
    assert picked != rows[:100] and picked == sorted(picked, key=lambda r: r["line"])
    assert laft.eval_sample(rows, 100, seed=0) == picked and laft.eval_sample(rows, 100, seed=1) != picked
    assert laft.eval_sample(rows, None, seed=0) == rows


def test_bpb_rows_are_valid_comparisons_with_verdicts():
    from pipeline.report import validate_rows

    rng = np.random.default_rng(0)
    docs = np.repeat([f"d{i}" for i in range(25)], 4)
    nbytes = rng.integers(80, 200, size=100).astype(float)
    base = nbytes * rng.uniform(1.8, 2.6, size=25).repeat(4)
    bits = {"base": base, "laft": base - 0.2 * nbytes, "maft": base + rng.normal(0, 2, size=100)}
    rows, metrics = laft.bpb_rows("nya", "laft_eval", "bpb_ntrex_target", bits, nbytes, docs,
                                  [("laft", "base"), ("maft", "base"), ("maft", "laft")], notes={("maft", "laft"): "x"})
    rows = {r["metric"]: r for r in validate_rows(rows, "rows")}
    laft_row = rows["bpb_ntrex_target_laft"]
    assert laft_row["verdict"] == "better" and laft_row["delta"] == pytest.approx(-0.2)
    assert laft_row["n"] == 100 and laft_row["n_docs"] == 25 and laft_row["baseline_name"] == "base"
    assert rows["bpb_ntrex_target_maft"]["verdict"] in ("no difference shown", "underpowered")
    assert rows["bpb_ntrex_target_maft_vs_laft"]["verdict"] == "worse" and rows["bpb_ntrex_target_maft_vs_laft"]["note"] == "x"
    assert metrics["bpb_ntrex_target_laft_delta"] == pytest.approx(-0.2)
    missing, _ = laft.bpb_rows("nya", "laft_eval", "m", {"base": base}, nbytes, docs, [("laft", "base")],
                               missing={"laft": "no LAFT weights at models/nya/laft"})
    assert missing[1]["value"] is None and "no LAFT weights" in missing[1]["note"]


def test_document_interval_covers_at_the_default_shape():
    """Coverage of the bits-per-byte interval at laft_eval's default shape (100 sentences over 25
    documents; 27 paragraphs over 15 UDHR articles) with document effects: the sentences of one
    article are correlated. 6 documents (the old max_docs) covered ~82%."""
    from pipeline.stats import cluster_ratio_ci  # what laft.bpb_interval calls, with fewer resamples

    rng = np.random.default_rng(1)
    for n_docs, per_doc in ((25, 4), (15, 2)):
        hits, reps = 0, 150
        for rep in range(reps):
            nbytes = rng.integers(60, 250, size=n_docs * per_doc).astype(float)
            doc_rate = rng.lognormal(np.log(1.5), 0.25, size=n_docs).repeat(per_doc)  # true doc difficulty
            bits = nbytes * doc_rate * rng.lognormal(0, 0.15, size=nbytes.size)
            truth = 1.5 * np.exp(0.25 ** 2 / 2 + 0.15 ** 2 / 2)  # population bits per byte
            _, lo, hi = cluster_ratio_ci(bits, nbytes, np.arange(n_docs).repeat(per_doc), n_boot=200, seed=rep)
            hits += lo <= truth <= hi
        assert hits / reps >= 0.9, (n_docs, hits / reps)


# --------------------------------------------------------------------------- stages (tiny-random)
SENTENCES = {
    "nya": ["Boma lalengeza kuti sukulu zonse zitsegulidwa sabata yamawa mdziko lonse",
            "Alimi ambiri akuti mvula ya chaka chino yabweretsa chakudya chochuluka kwambiri",
            "Mtsogoleri wa dziko anakumana ndi akuluakulu a mabungwe osiyanasiyana dzulo"],
    "glg": ["O goberno anunciou que todas as escolas abrirán a próxima semana en todo o país",
            "Moitos agricultores din que a choiva deste ano trouxo moita comida ás aldeas",
            "O presidente reuniuse onte cos responsables de varias organizacións do país"],
}
ENGLISH = ["The government announced that all schools will open next week across the country",
           "Many farmers say that this year's rain brought a lot of food to the villages",
           "The president met yesterday with the heads of several organisations in the country"]
TINY = {"lora_r": 4, "lora_alpha": 8, "target_modules": ["q_proj", "v_proj"], "max_steps": 2, "batch_size": 2,
        "max_len": 32, "seed": 0, "progress": False, "checkpoint_every": 0}


def udhr_paragraphs(lang):
    """The pack's UDHR paragraphs as data@<lang> writes them into mono_train.txt."""
    from pipeline.sources import read
    from pipeline.text import normalise

    return [normalise(t) for s in laft.pack_udhr_sources(lang) for t in read(s)]


def _fixture_data(root, lang):
    rows = [{"doc": f"d{i // 2}", "line": i, "en": ENGLISH[i % 3], "tgt": SENTENCES[lang][i % 3] + f" {i}"}
            for i in range(6)]
    io.write_jsonl(root / "data" / lang / "train.jsonl", rows[:4])
    io.write_jsonl(root / "data" / lang / "test.jsonl", rows[2:])  # documents d1, d2
    mono = ["Ndime 1", *SENTENCES[lang], *udhr_paragraphs(lang)]
    (root / "data" / lang / "mono_train.txt").write_text("\n".join(mono) + "\n")


@pytest.fixture
def laft_repo(repo_copy):
    import yaml

    params_file = repo_copy / "params.yaml"
    params = yaml.safe_load(params_file.read_text())
    params |= {"languages": ["nya", "glg"], "model": {**params.get("model", {}), "base": "tiny-random"},
               "laft": {"base": None, "min_tokens": 6, "udhr_heldout": {"articles": 15, "seed": 0}, **TINY},
               "maft": {"base": None, "high_resource": ["eng", "fra"], "temperature": 3.33, "examples": 16,
                        **TINY},
               "laft_eval": {"base": None, "sentences": 6, "forgetting_sentences": 5, "seed": 0, "batch_size": 4}}
    params["profile"] = "default"
    params_file.write_text(yaml.safe_dump(params, sort_keys=False))
    from stages import laft_corpus

    for lang in ("nya", "glg"):
        _fixture_data(repo_copy, lang)
        laft_corpus.run(lang)
    return repo_copy


def test_laft_maft_eval_stages_write_adapters_and_rows(laft_repo):
    from pipeline.report import validate_rows
    from pipeline.stats import VERDICTS
    from stages import laft as laft_stage
    from stages import laft_eval, maft

    laft_stage.run("nya")
    maft.run()
    laft_eval.run("nya")
    assert (laft_repo / "models" / "nya" / "laft" / "adapter" / "adapter_config.json").exists()
    assert (laft_repo / "models" / "nya" / "laft" / "curve.tsv").exists()
    # tokens per language seen in training: the trainer's own count, split by language
    trained = io.read_json(laft_repo / "results" / "nya" / "laft.json")
    assert trained["tokens_nya"] == trained["train_tokens"] > 0
    shared = io.read_json(laft_repo / "results" / "_shared" / "maft.json")
    langs = ("glg", "nya", "eng", "fra")
    assert sum(shared[f"tokens_{k}"] for k in langs) == shared["train_tokens"]
    # the mix holds the high-resource languages, temperature-weighted by their sizes
    weights = {k: shared[f"{k}_lines"] ** (1 / 3.33) for k in langs}
    for k in langs:
        assert shared[f"{k}_p"] == pytest.approx(weights[k] / sum(weights.values()))
    assert shared["eng_lines"] > 1000 and shared["eng_p"] > shared["nya_p"]  # NTREX train documents
    assert sum(shared[f"{k}_sampled"] for k in langs) == 16
    shared_rows = validate_rows(io.read_json(laft_repo / "results" / "_shared" / "maft.rows.json"), "maft")
    by_metric = {r["metric"]: r for r in shared_rows}
    assert {r["pack"] for r in shared_rows} == {"_shared"}
    assert "bpb_udhr_fra_base" not in by_metric  # UDHR: target languages and English only
    for name in ("bpb_ntrex_eng_maft", "bpb_udhr_eng_maft", "bpb_ntrex_fra_maft"):
        r = by_metric[name]
        assert r["baseline_name"] == "base" and r["verdict"] in VERDICTS and "forgetting" in r["note"]
    assert by_metric["bpb_ntrex_fra_maft"]["n"] == 5 and by_metric["bpb_ntrex_fra_maft"]["n_docs"] == 5
    assert by_metric["bpb_udhr_eng_maft"]["n_docs"] == 15  # articles are the clusters
    assert by_metric["tokens_fra"]["value"] == shared["tokens_fra"]

    metrics = io.read_json(laft_repo / "results" / "nya" / "laft_eval.json")
    rows = {r["metric"]: r for r in validate_rows(
        io.read_json(laft_repo / "results" / "nya" / "laft_eval.rows.json"), "laft_eval")}
    for domain, side, docs in (("ntrex", "target", 2), ("udhr", "target", 15), ("ntrex", "eng", 5),
                               ("udhr", "eng", 15), ("ntrex", "fra", 5)):
        name = f"bpb_{domain}_{side}"
        base = rows[f"{name}_base"]
        assert base["value"] > 0 and base["ci_low"] <= base["value"] <= base["ci_high"]
        assert base["n_docs"] == docs and base["higher_is_better"] is False
        compared = ["laft", "maft", "maft_vs_laft"] if side == "target" else ["laft", "maft_vs_laft"]
        for suffix in compared:
            r = rows[f"{name}_{suffix}"]
            assert r["verdict"] in VERDICTS and r["n_docs"] == docs and r["n"] >= docs
            assert r["delta_ci_low"] <= r["delta"] <= r["delta_ci_high"]
            assert r["delta"] == pytest.approx(r["value"] - r["baseline"])
        assert rows[f"{name}_laft"]["baseline"] == base["value"] and rows[f"{name}_laft"]["baseline_name"] == "base"
        assert rows[f"{name}_maft_vs_laft"]["baseline"] == rows[f"{name}_laft"]["value"]
        assert "tokens" in rows[f"{name}_maft_vs_laft"]["note"]
        assert f"{name}_maft" in rows if side == "target" else f"{name}_maft" not in rows  # _shared has it
    assert rows["bpb_udhr_target_base"]["n"] == len(laft.udhr_eval_rows(
        laft.pack_udhr_sources("nya"), {"articles": 15, "seed": 0}, "nya"))
    # tokenizer figures are context (no delta without a paired interval): English rides in the note
    assert rows["fertility_target"]["baseline"] is None and rows["fertility_target"]["delta"] is None
    assert f"{rows['fertility_english']['value']:.3g}" in rows["fertility_target"]["note"]
    assert metrics["documents"] == 2 and metrics["sentences"] == 4 and "signature" in metrics
    corpus = io.read_json(laft_repo / "results" / "nya" / "laft_corpus.json")
    assert corpus["dropped_short"] >= 1 and corpus["dropped_udhr_heldout"] == corpus["udhr_heldout_paragraphs"] > 20


def test_heldout_udhr_articles_never_reach_the_training_corpus(laft_repo):
    for lang in ("nya", "glg"):
        corpus = set((laft_repo / "data" / "_mono" / f"{lang}.txt").read_text().splitlines())
        heldout = laft.udhr_eval_rows(laft.pack_udhr_sources(lang), {"articles": 15, "seed": 0}, lang)
        assert heldout and not corpus & {r["text"] for r in heldout}
        kept = [p for p in udhr_paragraphs(lang) if p not in {r["text"] for r in heldout} and len(p.split()) >= 6]
        assert kept and set(kept) <= corpus  # the other articles stay in training
        assert {r["article"] for r in heldout} == laft.heldout_articles(range(1, 31), 15, 0)


def test_maft_rejects_a_high_resource_language_that_is_also_a_target():
    from pipeline.errors import PolyalignError
    from stages import maft

    with pytest.raises(PolyalignError, match="maft.high_resource"):
        maft.check_languages(["nya", "fra"], ["eng", "fra"])


def test_laft_without_corpus_is_one_line_error(laft_repo):
    import subprocess
    import sys

    (laft_repo / "data" / "_mono" / "nya.txt").unlink()
    proc = subprocess.run([sys.executable, "-m", "stages.laft", "--pack", "nya"], cwd=laft_repo,
                          capture_output=True, text=True)
    assert proc.returncode == 2 and proc.stderr.count("\n") == 1 and "laft_corpus@nya" in proc.stderr


def test_laft_eval_without_maft_reports_null_row(laft_repo):
    from stages import laft_eval

    laft_eval.run("glg")
    rows = {r["metric"]: r for r in io.read_json(laft_repo / "results" / "glg" / "laft_eval.rows.json")}
    assert rows["bpb_ntrex_target_laft"]["value"] is None and "no LAFT weights" in rows["bpb_ntrex_target_laft"]["note"]
    assert rows["bpb_ntrex_target_base"]["value"] > 0 and rows["bpb_udhr_eng_base"]["value"] > 0


def test_scorer_bits_cache_serves_the_second_language(tmp_path, monkeypatch):
    """Same model, same texts: the second scorer loads no model and returns the same bits."""
    monkeypatch.setenv("POLYALIGN_CACHE", str(tmp_path / "cache"))
    texts = ["The house is red.", "It rained.", "Hello there."]
    first = laft.Scorer("tiny-random", None, 2)
    bits = first.bits(texts)
    assert bits.shape == (3,) and first.scored == 3

    def no_model(*args, **kwargs):
        raise AssertionError("scored again although cached")

    second = laft.Scorer("tiny-random", None, 2)
    monkeypatch.setattr(second, "load", no_model)
    assert np.array_equal(second.bits(texts), bits) and second.scored == 0
    with pytest.raises(AssertionError, match="scored again"):  # other text: a new key, so it scores
        second.bits([t + "!" for t in texts])
