"""pipeline.rm: hh-rlhf parsing, grouped split, probes and best-of-n math on hand cases."""

from __future__ import annotations

import numpy as np
import pytest

from pipeline import rm

DIALOGUE = "\n\nHuman: hi there\n\nAssistant: hello\n\nHuman: how do I bake bread?\n\nAssistant: "


def record(chosen: str, rejected: str, prefix: str = DIALOGUE) -> dict:
    return {"chosen": prefix + chosen, "rejected": prefix + rejected}


# --------------------------------------------------------------------------- parsing
def test_split_turns_roles_and_text():
    assert rm.split_turns("\n\nHuman: a b \n\nAssistant:  c\n\nd") == [["Human", "a b"], ["Assistant", "c\n\nd"]]


def test_parse_hh_last_turn_only_by_default():
    pair = rm.parse_hh(record("Use flour, water, yeast.", "No."))
    assert pair["turns"] == [["Human", "how do I bake bread?"]]
    assert (pair["chosen"], pair["rejected"]) == ("Use flour, water, yeast.", "No.")


def test_parse_hh_full_context_round_trips():
    pair = rm.parse_hh(record("Knead it.", "No."), context_turns=None)
    assert len(pair["turns"]) == 3
    assert rm.rm_text(pair["turns"], pair["chosen"]) == DIALOGUE + "Knead it."


@pytest.mark.parametrize("rec", [
    record("same", "same"),  # identical replies: no preference
    record("", "No."),  # empty reply
    {"chosen": "\n\nHuman: a\n\nAssistant: x", "rejected": "\n\nHuman: b\n\nAssistant: y"},  # contexts differ
    {"chosen": "\n\nHuman: a\n\nAssistant: x\n\nHuman: more", "rejected": "\n\nHuman: a\n\nAssistant: x\n\nHuman: less"},
    {"chosen": "no markers", "rejected": "at all"},
])
def test_parse_hh_rejects_non_pairs(rec):
    assert rm.parse_hh(rec) is None


def test_parse_pairs_counts_drops_and_dedupes():
    recs = [record("a", "b"), record("a", "b"), record("x", "x"), record("long " * 100, "b")]
    pairs, counts = rm.parse_pairs(recs, max_chars=200)
    assert len(pairs) == 1
    assert counts == {"records": 4, "unparsable": 1, "duplicate": 1, "too_long": 1, "pairs": 1}


def test_parse_fields_flat_records():
    pair = rm.parse_fields({"prompt": "q", "chosen": "good", "rejected": "bad"})
    assert pair["turns"] == [["Human", "q"]] and pair["chosen"] == "good"
    assert rm.parse_fields({"prompt": "q", "chosen": "same", "rejected": "same"}) is None


def test_pair_id_is_stable_and_content_sensitive():
    a = rm.parse_hh(record("a", "b"))
    assert a["id"] == rm.parse_hh(record("a", "b"))["id"]
    assert a["id"] != rm.parse_hh(record("b", "a"))["id"]


def test_training_pairs_render_dialogue():
    pair = rm.parse_hh(record("yes", "no"))
    assert rm.training_pairs([pair]) == [{"chosen": "\n\nHuman: how do I bake bread?\n\nAssistant: yes",
                                          "rejected": "\n\nHuman: how do I bake bread?\n\nAssistant: no"}]


# --------------------------------------------------------------------------- splitting
def synthetic_pairs(n: int) -> list[dict]:
    return [rm.parse_hh({"chosen": f"\n\nHuman: q{i % (n // 2)}\n\nAssistant: good {i}",
                         "rejected": f"\n\nHuman: q{i % (n // 2)}\n\nAssistant: bad {i}"}) for i in range(n)]


FRACTIONS = {"train": 0.8, "dev": 0.1, "test": 0.1}


def test_split_is_deterministic_disjoint_and_complete():
    pairs = synthetic_pairs(2000)
    a, b = rm.split_pairs(pairs, FRACTIONS, seed=0), rm.split_pairs(list(reversed(pairs)), FRACTIONS, seed=0)
    ids = {k: {p["id"] for p in v} for k, v in a.items()}
    assert ids == {k: {p["id"] for p in v} for k, v in b.items()}  # order of input does not matter
    assert sum(len(v) for v in ids.values()) == len(pairs)
    assert not (ids["train"] & ids["test"]) and not (ids["dev"] & ids["test"]) and not (ids["train"] & ids["dev"])
    assert abs(len(a["test"]) - 200) < 60 and abs(len(a["train"]) - 1600) < 80


def test_split_keeps_groups_together_and_seed_matters():
    pairs = synthetic_pairs(400)
    split = rm.split_pairs(pairs, FRACTIONS, seed=0)
    where = {}
    for name, items in split.items():
        for p in items:
            assert where.setdefault(rm.group_key(p), name) == name
    other = rm.split_pairs(pairs, FRACTIONS, seed=1)
    assert {p["id"] for p in other["test"]} != {p["id"] for p in split["test"]}


def test_split_rejects_bad_fractions():
    with pytest.raises(ValueError):
        rm.split_pairs(synthetic_pairs(4), {"train": 0, "test": 0})


# --------------------------------------------------------------------------- translation
def test_translate_pairs_batches_distinct_strings_and_keeps_ids():
    calls = []

    def upper(texts):
        calls.append(list(texts))
        return [t.upper() for t in texts]

    pairs = [rm.parse_hh(record("yes", "no")), rm.parse_hh(record("yes", "maybe"))]
    out, dropped = rm.translate_pairs(pairs, upper)
    assert dropped == 0 and len(calls) == 1 and len(calls[0]) == len(set(calls[0])) == 4  # question, yes, no, maybe
    assert out[0]["id"] == pairs[0]["id"] and out[1]["rejected"] == "MAYBE"
    assert out[0]["turns"] == [["Human", "HOW DO I BAKE BREAD?"]]


def test_translate_pairs_drops_pairs_with_a_failed_text():
    pairs = [rm.parse_hh(record("yes", "no")), rm.parse_hh(record("yes", "maybe")), rm.parse_hh(record("si", "yes"))]
    out, dropped = rm.translate_pairs(pairs, lambda texts: [None if t == "no" else t.upper() for t in texts])
    assert dropped == 1 and [p["rejected"] for p in out] == ["MAYBE", "YES"]
    # a translator that merges the two replies into one string is no pair any more
    out, dropped = rm.translate_pairs(pairs[2:], lambda texts: ["same" if t in ("si", "yes") else t for t in texts])
    assert (out, dropped) == ([], 1)


# --------------------------------------------------------------------------- accuracy and probes
def test_pairwise_correct_counts_ties_half():
    assert rm.pairwise_correct([2, 1, 3, 0], [1, 2, 3, -1]).tolist() == [1, 0, 0.5, 1]
    assert rm.pairwise_correct([2, 1, 3, 0], [1, 2, 3, -1]).mean() == pytest.approx(0.625)


def test_score_pairs_one_batched_call():
    pairs = [rm.parse_hh(record("good answer", "bad")), rm.parse_hh(record("ok", "terrible answer"))]
    seen = []

    def score(texts):
        seen.append(len(texts))
        return [float(len(t)) for t in texts]

    chosen, rejected = rm.score_pairs(score, pairs)
    assert seen == [4]
    assert rm.pairwise_correct(chosen, rejected).tolist() == [1.0, 0.0]


def test_length_baseline_direction_fit_on_train():
    train = [rm.parse_hh(record("short", "much longer reply")) for _ in range(3)]
    assert rm.length_direction(train) == -1
    test = [rm.parse_hh(record("a", "bbb")), rm.parse_hh(record("cccc", "dd")), rm.parse_hh(record("ee", "ff"))]
    assert rm.length_correct(test, -1).tolist() == [1.0, 0.0, 0.5]
    assert rm.length_correct(test, +1).tolist() == [0.0, 1.0, 0.5]


def test_wrong_language_rate():
    # RM scores the target-language answer higher, lower, equal: wrong-language preference 0, 1, 0.5
    assert rm.wrong_language([1.0, 0.0, 2.0], [0.5, 0.3, 2.0]).tolist() == [0.0, 1.0, 0.5]


# --------------------------------------------------------------------------- best-of-n
SCORES = np.array([[0.0, 3.0, 1.0, 0.0],
                   [2.0, 2.0, 2.0, 2.0],
                   [-1.0, -4.0, 1.0, 0.0]])


def test_best_of_n_picks_and_gain():
    picks = rm.best_of_n(SCORES)
    assert picks.tolist() == [1, 0, 2]
    assert rm.gain_over_random(SCORES, picks).tolist() == pytest.approx([2.0, 0.0, 2.0])
    random_like = np.array([0, 0, 1])
    assert rm.gain_over_random(SCORES, random_like).tolist() == pytest.approx([-1.0, 0.0, -3.0])


def test_pick_fidelity_and_agreement():
    fidelity = np.array([[0, 1, 0, 0], [1, 1, 0, 0], [1, 1, 1, 1]], dtype=float)
    picks = rm.best_of_n(SCORES)
    assert rm.pick(fidelity, picks).tolist() == [1, 1, 1]
    other = np.array([[0, 5, 0, 0], [0, 1, 0, 0], [0, 0, 0, 9]], dtype=float)
    assert rm.agreement(SCORES, other).tolist() == [1.0, 0.0, 0.0]


def test_standardise_by_within_prompt_spread():
    scores = np.array([[1.0, -1.0], [3.0, 1.0]])  # within-prompt sd = 1
    assert rm.standardise(np.array([1.0, 2.0]), scores).tolist() == pytest.approx([1.0, 2.0])
    assert rm.standardise(np.array([0.0]), np.array([[2.0, 2.0]])).tolist() == [0.0]


def test_best_of_n_is_judged_by_the_other_rm():
    """The picker's own reward of its pick is >= 0 by construction; the other RM can say it is worse
    than a random pick of the same samples (issue 13.2)."""
    picker = np.array([[3.0, 1.0, 0.0], [0.0, 2.0, 1.0]])
    judge = np.array([[0.0, 1.0, 2.0], [1.0, 1.0, 1.0]])
    picks = rm.best_of_n(picker)
    assert (rm.judged_gain(picker, picks) > 0).all()  # self-judged: always a gain
    judged = rm.judged_gain(judge, picks)
    assert judged[0] < 0 and judged[1] == 0.0  # the judge disagrees / is indifferent
    assert rm.chance(3).tolist() == [0.5, 0.5, 0.5]


def test_translate_train_settings_match_the_source_steps_and_lr():
    from stages.rm_transfer import tt_settings

    train_cfg = {"train": {"lr": 1.0, "batch_size": 8, "max_steps": 0, "epochs": 1}}
    src = {"steps": 56, "lr": 0.0003, "pairs": 448}
    s = tt_settings(train_cfg, {"seed": 0, "train": {}}, src)
    assert s["max_steps"] == 56 and s["lr"] == 0.0003 and s["batch_size"] == 8
    with pytest.raises(ValueError):
        rm.matched_steps({}, 0)


def test_learning_rate_is_chosen_on_dev_not_test():
    from stages.rm_train import choose_on_dev, learning_rates

    runs = [{"lr": 3e-4, "dev_accuracy": 0.55, "test": 0.70}, {"lr": 1e-3, "dev_accuracy": 0.60, "test": 0.50},
            {"lr": 3e-3, "dev_accuracy": 0.60, "test": 0.90}]
    assert choose_on_dev(runs)["lr"] == 1e-3  # best dev; ties go to the first listed; test never looks
    assert learning_rates({"lrs": None, "train": {"lr": 2e-4}}) == [2e-4]


def test_length_baseline_direction_chosen_on_dev():
    dev = [{"chosen": "a" * 10, "rejected": "a" * 20}] * 3 + [{"chosen": "a" * 20, "rejected": "a"}]
    assert rm.length_direction(dev) == -1  # shorter wins 3 of 4 on dev
    test = [{"chosen": "aa", "rejected": "aaaa"}, {"chosen": "aaaa", "rejected": "aa"}]
    assert rm.length_correct(test, -1).tolist() == [1.0, 0.0]


def test_curve_summary_reads_the_trainer_curve(tmp_path):
    path = tmp_path / "curve.tsv"
    path.write_text("step\ttokens\tloss\n" + "".join(f"{i}\t{i * 10}\t{1.0 - i / 10}\n" for i in range(1, 11)))
    summary = rm.curve_summary(rm.read_curve(path), k=5)
    assert summary == {"loss_first": pytest.approx(0.7), "loss_last": pytest.approx(0.2), "steps": 10}


def test_last_human():
    assert rm.last_human([["Human", "a"], ["Assistant", "b"], ["Human", "c"]]) == "c"


def test_bad_source_spec_is_one_line_error_naming_the_field():
    from pipeline.errors import PolyalignError
    from stages.rm_train import source_spec

    with pytest.raises(PolyalignError) as err:
        source_spec("en", {"data": {"format": "jsonl.gz", "spec": {"kind": "github", "repo": "a/b",
                                                                   "commit": "xyz", "path": "p", "sha256": "0" * 64}}})
    assert "rm_train.sources.en.data.spec.commit" in err.value.line() and "\n" not in err.value.line()


def test_final_answer_takes_taco_target_part():
    from pipeline.packs import load_language
    from stages.rm_transfer import final_answer

    pack = load_language("glg")
    chain = f"Instruction in English: q\nResponse in English: a\nResponse in {pack.name}: resposta\nInstruction: x"
    assert final_answer(chain, pack, True) == ("resposta", True)
    assert final_answer("Instruction in English: q\nResponse in Eng", pack, True)[1] is False
    assert final_answer(" unha resposta\nInstruction: next", pack, False) == ("unha resposta", True)


# --------------------------------------------------------------------------- stages (tiny-random, smoke profile)
@pytest.fixture
def rm_repo(repo_copy, monkeypatch):
    """A repo copy on the smoke profile (tiny-random model, a handful of pairs), with a fake
    translator (reverses words) and a fake identifier, so the stages' wiring runs in seconds."""
    import re

    from pipeline import translate

    params = repo_copy / "params.yaml"
    params.write_text(re.sub(r"^profile: .*$", "profile: smoke", params.read_text(), flags=re.M))

    class FakeTranslator:
        def __init__(self, pack, *a, **k):
            self.system = "fake:reverse-words"

        def translate(self, texts, direction):
            outs = [" ".join(reversed(t.split())) for t in texts]
            ok = [not t.startswith("I can't") for t in texts]  # some failures, to exercise dropping
            return translate.Translation(outs, ok)

    monkeypatch.setattr(translate, "Translator", FakeTranslator)
    monkeypatch.setattr("pipeline.text.is_lang", lambda texts, pack: [len(t) % 2 == 0 for t in texts])
    return repo_copy


def test_rm_train_then_transfer_write_models_and_rows(rm_repo):
    from pipeline import io as pio
    from stages import rm_train, rm_transfer

    rm_train.run()
    assert (rm_repo / "models" / "rm" / "en" / "adapter" / "adapter_config.json").exists()
    splits = {k: pio.read_jsonl(rm_repo / "data" / "_shared" / "rm" / "en" / f"{k}.jsonl") for k in ("train", "dev", "test")}
    ids = [{p["id"] for p in v} for v in splits.values()]
    assert not (ids[0] & ids[2]) and sum(map(len, ids)) > 2000
    shared = pio.read_json(rm_repo / "results" / "_shared" / "rm_train.json")
    assert shared["en_test_pairs"] == 16 and 0 <= shared["en_accuracy"] <= 1 and "signature" in shared
    assert {"en_dev_accuracy_lr_0.0003", "en_dev_accuracy_lr_0.001", "en_train_accuracy", "en_loss_last"} <= set(shared)
    assert shared["en_dev_accuracy"] == max(shared["en_dev_accuracy_lr_0.0003"], shared["en_dev_accuracy_lr_0.001"])
    src_rows = {r["metric"]: r for r in pio.read_json(rm_repo / "results" / "_shared" / "rm_train.rows.json")}
    assert src_rows["heldout_accuracy_en"]["baseline_name"] == "chance" and src_rows["heldout_accuracy_en"]["pack"] == "_shared"
    assert src_rows["heldout_accuracy_en_vs_length"]["baseline_name"] == "length"
    assert src_rows["heldout_accuracy_en"]["verdict"] is not None and "train_accuracy_en" in src_rows
    assert (rm_repo / "results" / "_shared" / "rm_train_curve.tsv").read_text().startswith("source\tstep\tloss\n")

    rm_transfer.run("glg")
    rows = {r["metric"]: r for r in pio.read_json(rm_repo / "results" / "glg" / "rm_transfer.rows.json")}
    for metric in ("zero_shot_accuracy", "translate_train_accuracy", "wrong_language_preference",
                   "bon_reward_gain", "bon_pick_fidelity", "bon_agreement_tt", "pairs_per_s"):
        r = rows[metric]
        assert r["value"] is not None and r["pack"] == "glg" and r["kind"] == "language", metric
    assert rows["zero_shot_accuracy"]["baseline"] == rows["source_accuracy"]["value"]
    assert rows["bon_agreement_tt"]["baseline"] == pytest.approx(0.5)  # chance with n=2
    for metric in ("bon_gain_judged_by_tt", "bon_gain_tt_judged_by_source"):
        assert rows[metric]["baseline_name"] == "random pick" and rows[metric]["mde"] == 0.1
    for metric in ("zero_shot_accuracy_vs_chance", "translate_train_accuracy_vs_length"):
        assert rows[metric]["verdict"] is not None, metric
    assert "baseline_name" not in rows["bon_reward_gain"]  # self-judged: context only
    assert rows["wrong_language_preference"]["higher_is_better"] is False
    # every row with a delta has its paired interval and a verdict; shares stay within [0, 1] (Wilson)
    for metric in ("wrong_language_preference", "wrong_language_preference_tt", "bon_agreement_tt"):
        r = rows[metric]
        assert r["verdict"] is not None and r["delta_ci_low"] <= r["delta"] <= r["delta_ci_high"], metric
        assert 0 <= r["ci_low"] <= r["value"] <= r["ci_high"] <= 1, metric
    assert all(r["verdict"] is not None for r in rows.values() if r.get("delta") is not None)
    samples = pio.read_jsonl(rm_repo / "data" / "glg" / "rm_transfer" / "bon_samples.jsonl")
    assert len(samples) == rows["bon_reward_gain"]["n"] and all(len(s["samples"]) == 2 for s in samples)
    metrics = pio.read_json(rm_repo / "results" / "glg" / "rm_transfer.json")
    assert metrics["eval_pairs"] + metrics["eval_dropped"] == 6
    # matched compute: the translate-train RM makes the source RM's steps on as many pairs as translated
    assert metrics["tt_train_steps"] == metrics["src_steps"] == shared["en_train_steps"]
    assert metrics["tt_pairs"] + metrics["tt_dropped"] == shared["en_train_pairs"] == 16
    assert (rm_repo / "results" / "glg" / "rm_transfer_tt_curve.tsv").read_text().startswith("step\ttokens\tloss")


def test_translator_gate_follows_taco_datas_measurement(repo_copy):
    from pipeline import io
    from stages.rm_transfer import translator_gate

    meta = repo_copy / "data" / "nya" / "taco_meta.json"
    assert translator_gate("nya", "llm-icl:x") is None  # not measured yet: go on
    io.write_json(meta, {"usable": False, "translator": "llm-icl:x", "translated_items": 24, "threshold": 40.0,
                         "round_trip_chrf_mean": 15.0, "counts": {"forward_wrong_language": 14}})
    note = translator_gate("nya", "llm-icl:x")
    assert note.startswith("not measured") and "15.0" in note and "14 outputs in the wrong language" in note
    assert translator_gate("nya", "apertium:en-ny") is None  # another translator was not judged
    io.write_json(meta, {"usable": True, "translator": "llm-icl:x"})
    assert translator_gate("nya", "llm-icl:x") is None


def test_unmeasurable_transfer_still_writes_every_declared_output(repo_copy):
    """A pack whose translator failed taco_data's gate gets null rows with the reason, and every
    output dvc.yaml declares for rm_transfer exists (the curve as a header only): DVC can go on."""
    import json

    import yaml

    from stages.rm_transfer import write_unmeasurable

    write_unmeasurable("nya", {"eval_pairs": 0, "tt_pairs": 0}, "not measured: the translator failed", "sig")
    outs = yaml.safe_load((repo_copy / "dvc.yaml").read_text())["stages"]["rm_transfer"]["outs"]
    for out in outs:
        path = next(iter(out)) if isinstance(out, dict) else out
        assert (repo_copy / path.replace("${item.lang}", "nya")).exists(), path
    assert (repo_copy / "results" / "nya" / "rm_transfer_tt_curve.tsv").read_text() == "step\ttokens\tloss\tlr\n"
    rows = json.loads((repo_copy / "results" / "nya" / "rm_transfer.rows.json").read_text())
    assert rows and all(r["value"] is None and "translator failed" in r["note"] for r in rows)
