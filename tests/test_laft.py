"""LAFT/MAFT helpers: cleaning, temperature sampling, tokenizer statistics, bits per byte."""

from __future__ import annotations

import math
import unicodedata
from collections import Counter

import numpy as np
import pytest

from pipeline import io
from pipeline import laft


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


def test_target_corpus_reads_train_and_mono_not_test(tmp_path):
    io.write_jsonl(tmp_path / "train.jsonl", [{"doc": "d1", "line": 0, "en": "x", "tgt": "uno dous tres catro cinco seis"}])
    io.write_jsonl(tmp_path / "test.jsonl", [{"doc": "d9", "line": 1, "en": "x", "tgt": "segredo do test nunca visto aquí non"}])
    (tmp_path / "mono_train.txt").write_text("Artigo 1\nTodos os seres humanos nacen libres e iguais\n", encoding="utf-8")
    kept, stats = laft.target_corpus(tmp_path)
    assert kept == ["uno dous tres catro cinco seis", "Todos os seres humanos nacen libres e iguais"]
    assert stats["dropped_short"] == 1 and stats["bytes_kept"] == sum(len(k.encode()) for k in kept)


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
def test_by_document_sums_in_first_seen_order():
    docs, sums = laft.by_document(["b", "a", "b", "c"], [1.0, 2.0, 3.0, 4.0])
    assert docs == ["b", "a", "c"] and sums.tolist() == [4.0, 2.0, 4.0]


def test_bits_per_byte_hand_computed():
    # two documents: 8 bits over 4 bytes and 24 bits over 8 bytes -> 32/12 bits per byte
    value, lo, hi = laft.bits_per_byte([8.0, 24.0], [4, 8])
    assert value == pytest.approx(32 / 12)
    assert 2.0 <= lo <= value <= hi <= 3.0  # resamples are {2, 8/3, 3}
    # identical per-document ratios: the CI collapses onto the value
    assert laft.bits_per_byte([2.0, 4.0, 6.0], [1, 2, 3])[1:] == pytest.approx((2.0, 2.0))
    assert laft.nats_to_bits(math.log(2) * 5) == pytest.approx(5.0)


def test_delta_bits_per_byte_is_paired():
    rng = np.random.default_rng(0)
    nbytes = rng.integers(100, 1000, size=40).astype(float)
    base = nbytes * rng.uniform(1.5, 3.0, size=40)  # documents differ a lot in difficulty ...
    better = base - 0.1 * nbytes  # ... but the adapted model is better on every one by 0.1 bpb
    value, lo, hi = laft.delta_bits_per_byte(better, base, nbytes)
    assert value == pytest.approx(-0.1) and lo == pytest.approx(-0.1) and hi == pytest.approx(-0.1)
    _, ulo, uhi = laft.bits_per_byte(better, nbytes)
    assert uhi - ulo > 0.05  # the unpaired CI is much wider than the paired one


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


def _fixture_data(root, lang):
    rows = [{"doc": f"d{i // 2}", "line": i, "en": ENGLISH[i % 3], "tgt": SENTENCES[lang][i % 3] + f" {i}"}
            for i in range(6)]
    io.write_jsonl(root / "data" / lang / "train.jsonl", rows[:4])
    io.write_jsonl(root / "data" / lang / "test.jsonl", rows[2:])  # documents d1, d2
    (root / "data" / lang / "mono_train.txt").write_text("Ndime 1\n" + "\n".join(SENTENCES[lang]) + "\n")


@pytest.fixture
def laft_repo(repo_copy):
    import yaml

    params_file = repo_copy / "params.yaml"
    params = yaml.safe_load(params_file.read_text())
    params |= {"languages": ["nya", "glg"], "model": {**params.get("model", {}), "base": "tiny-random"},
               "laft": {"base": None, "min_tokens": 6, **TINY},
               "maft": {"base": None, "temperature": 3.33, "examples": None, **TINY},
               "laft_eval": {"base": None, "max_docs": None, "batch_size": 4}}
    params["profile"] = "default"
    params_file.write_text(yaml.safe_dump(params, sort_keys=False))
    from stages import laft_corpus

    for lang in ("nya", "glg"):
        _fixture_data(repo_copy, lang)
        laft_corpus.run(lang)
    return repo_copy


def test_laft_maft_eval_stages_write_adapters_and_rows(laft_repo):
    from stages import laft as laft_stage
    from stages import laft_eval, maft

    laft_stage.run("nya")
    maft.run()
    laft_eval.run("nya")
    assert (laft_repo / "models" / "nya" / "laft" / "adapter" / "adapter_config.json").exists()
    assert (laft_repo / "models" / "nya" / "laft" / "curve.tsv").exists()
    shared = io.read_json(laft_repo / "results" / "_shared" / "maft.json")
    assert shared["nya_p"] == pytest.approx(0.5) and shared["glg_sampled"] + shared["nya_sampled"] == 14
    metrics = io.read_json(laft_repo / "results" / "nya" / "laft_eval.json")
    rows = {r["metric"]: r for r in io.read_json(laft_repo / "results" / "nya" / "laft_eval.rows.json")}
    for side in ("target", "english"):
        for variant in ("base", "laft", "maft"):
            r = rows[f"bpb_{side}_{variant}"]
            assert r["value"] > 0 and r["ci_low"] <= r["value"] <= r["ci_high"] and r["n"] == 2
            assert r["higher_is_better"] is False
        assert rows[f"bpb_{side}_laft"]["baseline"] == rows[f"bpb_{side}_base"]["value"]
        delta = rows[f"bpb_{side}_maft_minus_laft"]["value"]
        assert delta == pytest.approx(rows[f"bpb_{side}_maft"]["value"] - rows[f"bpb_{side}_laft"]["value"])
    assert rows["fertility_target"]["baseline"] == rows["fertility_english"]["value"]
    assert metrics["documents"] == 2 and "signature" in metrics
    assert io.read_json(laft_repo / "results" / "nya" / "laft_corpus.json")["dropped_short"] == 1
    assert io.read_json(laft_repo / "results" / "nya" / "laft.json")["corpus_lines"] == 7
    assert (laft_repo / "data" / "_mono" / "nya.txt").read_text().count("\n") == 7


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
    assert rows["bpb_target_laft"]["value"] is None and "no LAFT weights" in rows["bpb_target_laft"]["note"]
    assert rows["bpb_target_base"]["value"] > 0


def test_laft_eval_bits_cache_serves_the_second_language(tmp_path, monkeypatch):
    """Same model, same English test side: the second call scores nothing and returns the same bits."""
    from stages import laft_eval

    monkeypatch.setenv("POLYALIGN_CACHE", str(tmp_path / "cache"))
    rows = [{"doc": "d1", "en": "The house is red.", "tgt": "Nyumba ndi yofiira."},
            {"doc": "d1", "en": "It rained.", "tgt": "Kunagwa mvula."},
            {"doc": "d2", "en": "Hello there.", "tgt": "Moni."}]
    first, _ = laft_eval.score_variants("zz1", "tiny-random", rows, batch_size=2)

    def no_model(*args, **kwargs):
        raise AssertionError("scored again although cached")

    monkeypatch.setattr(laft_eval, "load_variant", no_model)
    second, _ = laft_eval.score_variants("zz2", "tiny-random", rows, batch_size=2)
    assert set(first) == {"base"}  # no adapters for these packs
    for side in laft_eval.SIDES:
        assert np.array_equal(first["base"][side], second["base"][side]) and first["base"][side].shape == (2,)
    other = [dict(r, en=r["en"] + "!") for r in rows]  # other text: a new key, so it scores (and fails here)
    with pytest.raises(AssertionError, match="scored again"):
        laft_eval.score_variants("zz2", "tiny-random", other, batch_size=2)
