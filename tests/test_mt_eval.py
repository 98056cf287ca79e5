"""pipeline.mt_eval and the mt_errors stage: taxonomy, scores, domain similarity, COMET, outputs."""

from __future__ import annotations

import json
import math
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from pipeline import mt_eval as M
from pipeline.sources import read
from pipeline.text import ntrex_source


@pytest.fixture(scope="module")
def ntrex():
    """Aligned English / Galician / Nepali NTREX sentences from the mirror."""
    return {code: read(ntrex_source(code)) for code in ("eng", "glg", "nep")}


# --------------------------------------------------------------------------- taxonomy
def flags(src, hyp, ref, *, on_target=True, src_script="Latn", tgt_script="Latn"):
    return M.sentence_errors(src, hyp, ref, on_target=on_target, src_script=src_script, tgt_script=tgt_script)


SRC = "The company said on Monday that 1,250 workers in Madrid would lose their jobs."
REF = "A empresa dixo o luns que 1.250 traballadores en Madrid perderían o seu emprego."


def test_clean_translation_has_no_error():
    f = flags(SRC, "A compañía dixo o luns que 1.250 empregados de Madrid perderían os seus postos.", REF)
    assert M.primary_error(f) == "ok" and not any(f.values())


@pytest.mark.parametrize("hyp, kind", [
    ("", "empty"),
    ("   ", "empty"),
    (SRC, "copy"),
    ("The company said on Monday that 1,250 workers in Madrid would lose jobs.", "copy"),
    ("A empresa dixo o luns que 1.250 traballadores en Madrid perderían perderían perderían perderían o emprego.",
     "repetition"),
    ("A empresa dixo.", "truncated"),
    (REF + " " + REF.replace("A empresa", "E ademais a compañía") + " Tamén engadiu máis detalles.", "overgenerated"),
    ("A empresa dixo o luns que 1.520 traballadores en Madrid perderían o seu emprego.", "number"),
    ("A empresa dixo o luns que 1.250 traballadores en 2019 perderían o seu emprego.", "number"),
    ("A empresa dixo o luns que 1.250 traballadores na capital perderían o seu emprego.", "entity"),
])
def test_each_detector_fires_on_its_case(hyp, kind):
    f = flags(SRC, hyp, REF)
    assert f[kind] is True
    assert M.primary_error(f) == kind


def test_off_target_comes_from_the_language_identifier():
    assert flags(SRC, REF, REF, on_target=False)["off_target"] is True
    assert flags(SRC, REF, REF, on_target=None)["off_target"] is None  # unknown is not "fine"


def test_script_mismatch_and_digits_of_any_script():
    src = "Prices rose 12 percent in 2018."
    ref = "सन् २०१८ मा मूल्य १२ प्रतिशतले बढ्यो।"
    assert flags(src, ref, ref, tgt_script="Deva")["script"] is False
    assert flags(src, ref, ref, tgt_script="Deva")["number"] is False  # १२ == 12, २०१८ == 2018
    romanised = "San 2018 ma mulya 12 pratishatle badhyo."
    assert flags(src, romanised, ref, tgt_script="Deva")["script"] is True
    assert flags(src, ref, ref, tgt_script="Deva")["entity"] is None  # cross-script: not applicable


def test_number_and_entity_follow_the_reference():
    # the reference spells the number out and translates the exonym: neither is held against the output
    src, ref = "Three people flew to Germany.", "Tres persoas voaron a Alemaña."
    assert M.number_mismatch(src, "Tres persoas voaron a Alemaña.", ref) is False
    assert M.entity_missing(src, "Tres persoas voaron a Alemaña.", ref) is None  # 'Germany' not kept verbatim
    assert M.entity_missing("They flew to London.", "Voaron a Madrid.", "Voaron a Londres.") is True  # Lond- prefix
    assert M.entities("Donald Trump met NATO in London on Monday. He left.") == ["Trump", "NATO", "London", "Monday"]


def test_loops_not_reduplication():
    assert not M.has_loop("Ntchito zopulumutsa mwadzidzidzi zikuchitika ku Palu ndandanda")
    assert not M.has_loop("It cost 1,000,000,000 dollars.")
    assert M.has_loop("the the the the")
    assert M.has_loop("नमस्तेनमस्तेनमस्ते")


def test_primary_shares_add_up_to_any():
    all_flags = [flags(SRC, h, REF) for h in ("", SRC, REF, "A empresa dixo.")]
    rates = M.error_rates(all_flags)
    assert math.isclose(sum(rates[t]["primary_share"] for t in M.ERROR_TYPES), rates["any"]["rate"])
    assert rates["any"]["rate"] == 0.75 and rates["empty"]["rate"] == 0.25


def test_human_translation_is_mostly_clean(ntrex):
    """A human Galician translation scored as system output: the detectors stay quiet (false-positive floor)."""
    en, gl = ntrex["eng"][:300], ntrex["glg"][:300]
    rates = M.error_rates([flags(e, g, g) for e, g in zip(en, gl)])
    assert rates["any"]["rate"] < 0.02


# --------------------------------------------------------------------------- scores
def test_doc_scores_match_sacrebleu_and_resample_documents(ntrex):
    """Corpus scores equal sacrebleu's; intervals resample documents, so clustered errors widen them."""
    en, gl = ntrex["eng"][:60], ntrex["glg"][:60]
    systems = {"ref_like": [g.rsplit(" ", 1)[0] for g in gl], "copy": en}
    by_doc = [i // 6 for i in range(60)]
    scores = M.doc_scores(systems, gl, by_doc, n_boot=200)
    for name, hyps in systems.items():
        plain = M.corpus_scores(hyps, gl)
        for metric in M.METRICS:
            s = scores[name][metric]
            assert s["score"] == pytest.approx(plain[metric]["score"])
            assert s["ci_low"] <= s["score"] <= s["ci_high"] and s["signature"] == plain[metric]["signature"]
    assert "nrefs:1" in scores["copy"]["chrf++"]["signature"]
    delta = M.doc_delta(scores["ref_like"]["chrf++"], scores["copy"]["chrf++"], by_doc, n_boot=200)
    assert delta[0] == pytest.approx(scores["ref_like"]["chrf++"]["score"] - scores["copy"]["chrf++"]["score"])
    assert delta[1] > 0  # a near-reference system beats copying the English source
    assert M.strongest(scores, ["ref_like", "copy"], "chrf++") == "ref_like"
    assert M.strongest(scores, ["ref_like", "copy"], "ter") == "ref_like"  # lower TER is stronger
    # one cluster per item vs 10 documents: same estimate, the document interval is not the item one
    items = M.doc_scores({"copy": en}, gl, list(range(60)), n_boot=200)["copy"]["chrf++"]
    assert items["score"] == pytest.approx(scores["copy"]["chrf++"]["score"])
    assert (items["ci_low"], items["ci_high"]) != (scores["copy"]["chrf++"]["ci_low"], scores["copy"]["chrf++"]["ci_high"])


def test_bleu_tokenizer_by_script():
    assert M.bleu_tokenizer("Latn") == "13a" and M.bleu_tokenizer("Hans") == "zh" and M.bleu_tokenizer("Thai") == "char"


# --------------------------------------------------------------------------- domain similarity
def test_jensen_shannon_bounds():
    from collections import Counter

    p, q = Counter("aabbc"), Counter("xyz")
    assert M.jensen_shannon(p, p) == 0 and M.jensen_shannon(p, q) == pytest.approx(1.0)
    assert M.jensen_shannon(p, Counter("abz")) == pytest.approx(M.jensen_shannon(Counter("abz"), p))


def test_jensen_shannon_same_bits_under_any_string_hashing():
    """The set of token types iterates in an order set by Python's per-process string hashing;
    the divergence must not depend on it (it did in its last bits: mt_errors' JSDs changed run to run)."""
    code = ("from collections import Counter; import random; from pipeline.mt_eval import jensen_shannon as J; "
            "r = random.Random(0); w = [f'w{i}' for i in range(3000)]; "
            "print(repr(J(Counter(r.choice(w) for _ in range(20000)), Counter(r.choice(w[:2500]) for _ in range(20000)))))")
    root = Path(__file__).resolve().parents[1]
    runs = {subprocess.run([sys.executable, "-c", code], cwd=root, capture_output=True, text=True, check=True,
                           env={**os.environ, "PYTHONHASHSEED": str(seed)}).stdout for seed in (1, 2, 3)}
    assert len(runs) == 1, runs


def test_in_domain_corpus_is_closer(ntrex):
    """NTREX Galician news (other documents) is closer to NTREX test news than English or reversed text."""
    gl = ntrex["glg"]
    test, news = gl[:300], gl[300:1500]
    same = M.domain_divergence(news, test, samples=5)
    other = M.domain_divergence(ntrex["eng"][300:1500], test, samples=5)
    assert same["jsd"] < other["jsd"] and same["complete"]
    assert same["ci_low"] <= same["jsd"] <= same["ci_high"]


def test_correlations():
    assert M.pearson([1, 2, 3], [2, 4, 6]) == pytest.approx(1)
    assert M.spearman([1, 2, 3, 4], [10, 9, 8, 1]) == pytest.approx(-1)
    assert M.pearson([1, 2], [1, 2]) is None


def test_domain_correlation_needs_ten_points_and_pools_by_fisher_z():
    x = [float(i) for i in range(12)]
    y = [v + (1.5 if i % 2 else -1.5) for i, v in enumerate(x)]
    assert M.correlation_ci(x[:9], y[:9]) is None  # under MIN_CORR_POINTS: not a finding
    c = M.correlation_ci(x, y)
    assert c["n"] == 12 and c["ci_low"] < c["r"] < c["ci_high"] and c["r"] == pytest.approx(M.pearson(x, y))
    pooled = M.pooled_correlation([c, c, None])
    assert pooled["n"] == 24 and pooled["r"] == pytest.approx(c["r"])
    assert pooled["ci_high"] - pooled["ci_low"] < c["ci_high"] - c["ci_low"]  # more documents, narrower
    assert M.pooled_correlation([None]) is None


def test_doc_divergence_is_per_document(ntrex):
    gl, en = ntrex["glg"], ntrex["eng"]
    jsd = M.doc_divergence(gl[300:1500], {"gl": gl[:16], "en": en[:16]}, samples=3)
    assert set(jsd) == {"gl", "en"} and 0 < jsd["gl"] < jsd["en"] <= 1


# --------------------------------------------------------------------------- COMET
def test_comet_coverage_read_from_the_package():
    assert M.comet_covers("gl") is True and M.comet_covers("npi") is True  # npi -> macrolanguage ne
    assert M.comet_covers("ny") is False and M.comet_covers("yo") is False


@pytest.fixture(scope="module")
def tiny_comet(tmp_path_factory, ntrex):
    from helpers.tiny_comet import build_tiny_comet

    lines = ntrex["eng"][::5] + ntrex["glg"][::5]
    return build_tiny_comet(tmp_path_factory.mktemp("comet"), lines)


def test_comet_real_code_path_with_tiny_model(tiny_comet, ntrex):
    en, gl = ntrex["eng"][:6], ntrex["glg"][:6]
    system, segs = M.comet_scores(tiny_comet, en, gl, gl, batch_size=4)
    assert len(segs) == 6 and all(math.isfinite(s) for s in segs)
    assert system == pytest.approx(sum(segs) / 6)


def test_comet_rows_flag_uncovered_languages():
    from pipeline.packs import load_language
    from stages.mt_errors import comet_rows

    rows, _ = comet_rows(load_language("nya"), "en-xx", ["a"], ["b"], {"base": ["c"]}, "base", {})
    assert rows[0]["value"] is None and "skipped" in rows[0]["note"] and "outside the COMET encoder" in rows[0]["note"]
    rows, _ = comet_rows(load_language("glg"), "en-xx", ["a"], ["b"], {"base": ["c"]}, "base", {})
    assert "outside" not in rows[0]["note"]


# --------------------------------------------------------------------------- the stage
class FakeBackend:
    """A translation system defined by a function of (segment, direction)."""

    def __init__(self, name, fn):
        self.name, self.fn = name, fn

    def available(self):
        return True, ""

    def system_id(self):
        return f"fake:{self.name}"

    def translate(self, segments, direction):
        return [self.fn(s, direction) for s in segments]


@pytest.fixture
def glg_repo(repo_copy, tmp_path, monkeypatch, ntrex):
    """A repository copy with 36 single-sentence glg test rows in 12 documents, and fake systems."""
    from pipeline.translate import segments_of

    monkeypatch.setenv("POLYALIGN_CACHE", str(tmp_path / "cache"))
    pairs = [(e, g) for e, g in zip(ntrex["eng"], ntrex["glg"]) if segments_of(e) == [e] and segments_of(g) == [g]]
    rows = [{"doc": f"d{i // 3}", "line": i, "en": e, "tgt": g} for i, (e, g) in enumerate(pairs[:36])]
    data = repo_copy / "data" / "glg"
    data.mkdir(parents=True)
    (data / "test.jsonl").write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows))
    (data / "train.jsonl").write_text("".join(json.dumps({"doc": "t", "line": i, "en": e, "tgt": g},
                                                         ensure_ascii=False) + "\n" for i, (e, g) in
                                              enumerate(pairs[100:400])))
    to_tgt = {r["en"]: r["tgt"] for r in rows}
    to_en = {r["tgt"]: r["en"] for r in rows}

    def oracle(s, d):  # the reference, with every third sentence cut short
        out = (to_tgt if d == "en-tgt" else to_en).get(s, s)
        return out if len(out) % 3 else " ".join(out.split()[:3])

    def half(s, d):  # LAFT stand-in: the reference for every other document, an echo elsewhere
        return oracle(s, d) if (to_tgt | to_en).get(s, s)[:1] < "N" else s

    backends = {"apertium": FakeBackend("oracle", oracle), "base": FakeBackend("echo", lambda s, d: s),
                "laft": FakeBackend("half", half)}
    import stages.mt_errors as stage

    monkeypatch.setattr(stage, "build_systems", lambda pack, cfg: (backends, {"taco": "no adapter"}, "apertium"))
    # stand-in LID: an English source sentence is English, a Galician reference (or part of one) is not
    monkeypatch.setattr(stage, "default_lang_check",
                        lambda pack: lambda texts, lang: [(t in to_tgt) == (lang == "en") for t in texts])
    params = re.sub(r"(\nmt_errors:\n(?:  .*\n|\s*#.*\n)*?  max_sentences:) \w+", r"\1 12",
                    (repo_copy / "params.yaml").read_text())
    if "\nmt_errors:" not in params:
        params = params.replace("\nprofiles:", "\nmt_errors:\n  max_sentences: 12\n  shots: 4\n  n_boot: 200\n"
                                "  jsd_samples: 5\n  comet_checkpoint: null\n  comet_batch_size: 8\n"
                                "  domain_corpora:\n    train_tgt: data/{pack}/train.jsonl#tgt\n"
                                "    mono_train: data/{pack}/mono_train.txt\n\nprofiles:")
    (repo_copy / "params.yaml").write_text(params)
    return repo_copy


def stats_verdicts():
    from pipeline.stats import VERDICTS

    return VERDICTS


def test_sample_is_stratified_over_the_test_documents():
    """The default profile's sample: 28 sentences over all 25 NTREX test documents, seeded, not a prefix."""
    from pipeline.text import split_documents
    from stages.mt_errors import sample_sentences

    docs = read(ntrex_source("documents"))
    split = split_documents(docs, test_docs=25, dev_docs=10, salt="ntrex_split_v1")
    test = [{"doc": d, "line": i} for i, d in enumerate(docs) if split[d] == "test"]
    cfg = {"max_sentences": 28, "seed": 0}
    sample = sample_sentences(test, cfg)
    assert len(sample) == 28 and len({r["doc"] for r in sample}) == 25
    assert sample != test[:28] and sample == sample_sentences(test, cfg)
    assert sample != sample_sentences(test, cfg | {"seed": 1})
    assert len({r["doc"] for r in test[:28]}) <= 3  # what the old prefix covered


def _sacrebleu_cli(*args) -> str:
    exe = Path(sys.executable).with_name("sacrebleu")
    return subprocess.run([str(exe), *args], capture_output=True, text=True, check=True).stdout.strip()


def test_stage_outputs_and_cli_reproduction(glg_repo):
    from stages import mt_errors
    from stages.scorecard import validate_rows

    mt_errors.run("glg")
    res = glg_repo / "results" / "glg"
    rows = validate_rows(json.loads((res / "mt_errors.rows.json").read_text()), res / "mt_errors.rows.json")
    by = {r["metric"]: r for r in rows}
    # 12 sentences stratified over the 12 documents, not the first 12 lines (4 documents)
    assert {r["n"] for r in rows if r["metric"].startswith("chrf++")} == {12}
    assert {r["n_docs"] for r in rows if r["metric"].startswith(("chrf++", "err."))} == {12}
    # the echo system copies the source: every sentence is an untranslated copy
    assert by["err.copy.en-xx.base"]["value"] == 1.0 and by["err.copy.xx-en.base"]["value"] == 1.0
    assert by["err.copy.en-xx.base"]["ci_low"] > 0.7  # Wilson, not a zero-width percentile interval
    assert by["err.truncated.en-xx.apertium"]["value"] > 0.05
    # trivial baselines: copy-source is a row; Apertium must beat it; the rest face the stronger of the two
    copy_row = by["chrf++.en-xx.copy-source"]
    assert "trivial baseline" in copy_row["note"] and "nc:6|nw:2" in copy_row["note"]
    assert by["chrf++.en-xx.copy-source"]["value"] == pytest.approx(by["chrf++.en-xx.base"]["value"])  # echo = copy
    ap = by["chrf++.en-xx.apertium"]
    assert ap["baseline_name"] == "copy-source" and ap["verdict"] == "better"
    assert ap["baseline"] == pytest.approx(copy_row["value"])
    base = by["chrf++.en-xx.base"]
    assert base["baseline_name"] == "apertium" and base["verdict"] == "worse"
    assert base["note"].startswith("does not beat apertium") and "nrefs:1" in base["note"]
    assert base["delta_ci_low"] <= base["delta"] <= base["delta_ci_high"] < 0 and base["n_needed"] is not None
    assert by["ter.en-xx.base"]["baseline_name"] == "apertium" and by["ter.en-xx.base"]["higher_is_better"] is False
    laft = by["vs_base.chrf++.en-xx.laft"]
    assert laft["baseline_name"] == "base" and laft["delta"] > 0 and laft["verdict"] in stats_verdicts()
    assert by["vs_base.err.any.en-xx.laft"]["baseline_name"] == "base" and "vs_base.err.any.en-xx.base" not in by
    assert by["err.any.en-xx.human"]["value"] == 0.0 and "chrf++.en-xx.human" not in by  # detectors' floor
    assert "err.copy.en-xx.copy-source" not in by
    assert by["comet.en-xx.base"]["value"] is None and "no COMET checkpoint" in by["comet.en-xx.base"]["note"]
    assert by["jsd.train_tgt"]["value"] > 0 and by["jsd.mono_train"]["value"] is None
    test_tgt = [json.loads(line)["tgt"] for line in (glg_repo / "data" / "glg" / "test.jsonl").open()]
    assert by["jsd.train_tgt"]["n"] == sum(M.unigrams(test_tgt).values())  # the whole test split, not max_sentences
    # Khiu et al.: per document (12 >= 10) for the corpus whose system ran; TaCo did not run: no figure
    corr = by["domain_r.train_tgt"]
    assert corr["n"] == 12 and corr["ci_low"] <= corr["value"] <= corr["ci_high"] and "context" in corr["note"]
    assert "domain_r.mono_train" not in by  # no corpus, no correlation
    few = mt_errors.doc_similarity_row("glg", "train_tgt", test_tgt, [], [], {}, {"jsd_samples": 1})[0]
    assert few["value"] is None and "not measured" in few["note"]
    tsv = (res / "mt_errors.sentences.tsv").read_text().splitlines()
    systems = {line.split("\t")[1] for line in tsv[1:]}
    assert {"apertium", "base", "laft", "human"} == systems
    sentences = {tuple(line.split("\t")[2:4]) for line in tsv[1:]}
    assert len(sentences) == 12 and len({doc for doc, _ in sentences}) == 12
    assert len(tsv) == 1 + 2 * len(systems) * len(sentences)  # sentences x 2 directions x systems (incl. human)
    assert tsv[0].startswith("direction\tsystem")
    details = json.loads((res / "mt_errors.details.json").read_text())
    assert details["en-xx"]["base"]["examples"]["copy"] and details["skipped"] == {"taco": "no adapter"}
    assert details["n_docs"] == 12 and details["test_docs"] == 12
    metrics = json.loads((res / "mt_errors.json").read_text())
    assert all(isinstance(v, (int, float)) for k, v in metrics.items() if k not in ("signature", "settings"))
    # chrF++ of one system, recomputed by the sacrebleu command line on the written files: same digits
    out = res / "mt_errors"
    cli = _sacrebleu_cli(str(out / "en-xx.ref.txt"), "-i", str(out / "en-xx.apertium.txt"), "-m", "chrf",
                         "--chrf-word-order", "2", "-w", "4", "-b")
    assert cli == f"{by['chrf++.en-xx.apertium']['value']:.4f}"
    cli_bleu = _sacrebleu_cli(str(out / "xx-en.ref.txt"), "-i", str(out / "xx-en.apertium.txt"), "-m", "bleu",
                              "-w", "4", "-b")
    assert cli_bleu == f"{by['bleu.xx-en.apertium']['value']:.4f}"


def test_stage_scores_comet_with_a_configured_checkpoint(glg_repo, tiny_comet, monkeypatch):
    import stages.mt_errors as stage

    every = stage.build_systems
    monkeypatch.setattr(stage, "build_systems", lambda p, c: ({"apertium": every(p, c)[0]["apertium"]}, {}, "apertium"))
    params = (glg_repo / "params.yaml").read_text().replace("comet_checkpoint: null",
                                                            f"comet_checkpoint: {tiny_comet}")
    (glg_repo / "params.yaml").write_text(params)
    stage.run("glg")
    rows = json.loads((glg_repo / "results" / "glg" / "mt_errors.rows.json").read_text())
    comet = [r for r in rows if r["metric"].startswith("comet.")]
    assert [r["metric"] for r in comet] == [f"comet.{d}.{s}" for d in ("en-xx", "xx-en")
                                            for s in ("apertium", "copy-source")]  # the trivial baseline too
    assert all(math.isfinite(r["value"]) and r["ci_low"] <= r["ci_high"] for r in comet)
    assert all(M.COMET_NOT_COMPARABLE in r["note"] and "outside" not in r["note"] for r in comet)
    metrics = json.loads((glg_repo / "results" / "glg" / "mt_errors.json").read_text())
    assert metrics["en-xx.apertium.comet"] == pytest.approx(comet[0]["value"])


def test_adapted_systems_are_found_where_their_stages_write_them(repo_copy):
    """taco_sft writes models/<lang>/taco_sft/taco/adapter, laft models/<lang>/laft/adapter."""
    from pipeline.packs import load_language
    from stages import mt_errors

    pack = load_language("glg")
    cfg = {"shots": 2}
    _, skipped, _ = mt_errors.build_systems(pack, cfg)
    assert {"taco", "laft"} <= set(skipped)
    for rel in ("taco_sft/taco/adapter", "laft/adapter"):
        (repo_copy / "models" / "glg" / rel).mkdir(parents=True)
    backends, skipped, _ = mt_errors.build_systems(pack, cfg)
    assert {"taco", "laft"} <= set(backends) and not {"taco", "laft"} & set(skipped)
    assert backends["taco"].adapter == repo_copy / "models" / "glg" / "taco_sft" / "taco" / "adapter"
