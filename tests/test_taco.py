"""TaCo stages: templates, cleaning, the round-trip quality gate, curriculum, early stop, stage outputs."""

from __future__ import annotations

from collections import Counter

import pytest

from pipeline import io
from pipeline import taco as pt
from pipeline.errors import PolyalignError
from pipeline.packs import Template, load_language
from pipeline.translate import FORWARD, Translator
from stages import taco_data as td

CFG = {"split_salt": "taco_split_v1", "heldout_fraction": 0.25, "max_chars": 2000, "max_instructions": 16,
       "round_trip_chrf": 40, "min_samples": 4, "min_eval": 2, "chunk": 8, "probe": 8, "curriculum": "length"}


class Reverser:
    """A perfect round-tripper: swaps letter case both ways (keeps sentence boundaries)."""

    def system_id(self):
        return "reverser:v1"

    def translate(self, segments, direction):
        return [s.swapcase() for s in segments]


def sample(i, rt=80.0, target="x" * 10, failure=""):
    return {"id": f"s{i}", "rt_chrf": rt, "failure": failure, "taco": {"prompt": "p", "response": target}}


@pytest.fixture
def glg():
    return load_language("glg")


def test_render_fills_and_refuses_missing_placeholder():
    t = Template(id="x_v1", text="Instruction: {instruction}\nResponse:")
    assert pt.render(t, instruction="Fai isto") == "Instruction: Fai isto\nResponse:"
    with pytest.raises(PolyalignError, match="x_v1"):
        pt.render(t, other="x")


def test_taco_target_has_three_parts_in_order(glg):
    s = {"instruction": "Escribe un poema.", "instruction_en": "Write a poem.", "response_en": "Roses are red.",
         "response": "As rosas son vermellas."}
    ex = pt.taco_example(pt.templates_of(glg), glg, s)
    assert ex["prompt"].startswith("Instruction: Escribe un poema.\nRespond in Galician.")
    r = ex["response"]
    assert r.index("Instruction in English: Write a poem.") < r.index("Response in English: Roses are red.") \
        < r.index("Response in Galician: As rosas son vermellas.")
    plain = pt.plain_example(pt.templates_of(glg), glg, s)
    assert plain == {"prompt": "Instruction: Escribe un poema.\nResponse:", "response": " As rosas son vermellas."}


def test_normalise_record_formats():
    si = {"id": "t1", "instruction": "Sum.", "instances": [{"input": "1 2", "output": "3"}]}
    assert td.normalise_record(si, "f") == {"id": "t1", "instruction_en": "Sum.\n1 2", "response_en": "3"}
    alpaca = {"instruction": "Hi", "input": "", "output": "Hello"}
    assert td.normalise_record(alpaca, "f7") == {"id": "f7", "instruction_en": "Hi", "response_en": "Hello"}


def test_clean_counts_empty_duplicate_too_long():
    rows = [{"id": "a", "instruction_en": "Do X", "response_en": "ok"},
            {"id": "b", "instruction_en": "do  x", "response_en": "ok"},
            {"id": "c", "instruction_en": "", "response_en": "ok"},
            {"id": "d", "instruction_en": "Long", "response_en": "y" * 100}]
    kept, counts = td.clean(rows, max_chars=50)
    assert [r["id"] for r in kept] == ["a"] and counts == {"duplicate": 1, "empty": 1, "too_long": 1}


def test_split_order_depends_on_ids_only():
    rows = [{"id": str(i)} for i in range(20)]
    assert td.split_order(rows, "s") == td.split_order(list(reversed(rows)), "s")
    assert td.split_order(rows, "s") != td.split_order(rows, "t")


def test_quality_gate_drops_and_counts():
    samples = [sample(0, 80), sample(1, 39.9), sample(2, 95, failure="wrong_language"), sample(3, 40)]
    kept, drops = td.gate(samples, 40)
    assert [s["id"] for s in kept] == ["s0", "s3"]
    assert drops == {"below_gate": 1, "failed_wrong_language": 1}


def test_curriculum_orders():
    samples = [sample(0, 50, "x" * 30), sample(1, 90, "x" * 10), sample(2, 70, "x" * 10), sample(3, 99, "x" * 20)]
    assert [s["id"] for s in td.curriculum([dict(s) for s in samples], "length")] == ["s1", "s2", "s3", "s0"]
    assert [s["id"] for s in td.curriculum([dict(s) for s in samples], "quality")] == ["s3", "s1", "s2", "s0"]
    assert [s["id"] for s in td.curriculum([dict(s) for s in samples], "none")] == ["s0", "s1", "s2", "s3"]
    with pytest.raises(PolyalignError, match="curriculum"):
        td.curriculum(samples, "random")


def test_early_stop_is_conservative():
    assert td.wilson_upper(0, 0) == 1.0
    assert 0 < td.wilson_upper(0, 64) < 0.06 and td.wilson_upper(64, 64) == 1.0
    assert td.hopeless(passed=0, done=64, n_train=380, min_samples=100, probe=64)
    assert not td.hopeless(passed=0, done=32, n_train=380, min_samples=100, probe=64)  # probe not reached
    assert not td.hopeless(passed=20, done=64, n_train=380, min_samples=100, probe=64)


def _run(glg, root, cfg, backend):
    tr = Translator(glg, backend, lang_check=lambda texts, lang: [True] * len(texts), cache_root=root.parent)
    td.run("glg", cfg=cfg, translator=tr)
    return root, io.read_json(root / "data" / "glg" / "taco_meta.json")


def test_stage_writes_gated_samples_with_round_trip(glg, repo_copy, tmp_path):
    root, meta = _run(glg, repo_copy, CFG, Reverser())
    train = io.read_jsonl(root / "data" / "glg" / "taco.jsonl")
    held = io.read_jsonl(root / "data" / "glg" / "taco_heldout.jsonl")
    assert meta["usable"] and meta["translator"] == "reverser:v1"
    assert len(train) + len(held) == 16 and len(held) == 4
    assert all(s["rt_chrf"] == 100 and "taco" in s and "plain" in s for s in train)
    lengths = [len(s["taco"]["response"]) for s in train]
    assert lengths == sorted(lengths)  # curriculum: shortest first
    metrics = io.read_json(root / "results" / "glg" / "taco_data.json")
    assert metrics["train_samples"] == len(train) and "translator:reverser:v1" in metrics["signature"]
    assert metrics["segments_cached"] == 0 and metrics["segments_translated"] > 0


def test_stage_rerun_from_the_translation_cache_leaves_its_data_unchanged(glg, repo_copy):
    """The second run answers every segment from the cache; the files downstream stages depend on
    (taco.jsonl, taco_heldout.jsonl, taco_meta.json) must not change, or dvc would retrain on them."""
    names = ("taco.jsonl", "taco_heldout.jsonl", "taco_meta.json")
    root, _ = _run(glg, repo_copy, CFG, Reverser())
    first = {n: (root / "data" / "glg" / n).read_bytes() for n in names}
    _run(glg, root, CFG, Reverser())
    assert {n: (root / "data" / "glg" / n).read_bytes() for n in names} == first
    metrics = io.read_json(root / "results" / "glg" / "taco_data.json")
    assert metrics["segments_translated"] == 0 and metrics["segments_cached"] > 0


def test_stage_too_few_samples_records_reason(glg, repo_copy, tmp_path):
    class Garbler(Reverser):
        def translate(self, segments, direction):
            return ["zzz qqq"] * len(segments) if direction != FORWARD else super().translate(segments, direction)

    cfg = dict(CFG, max_instructions=40, min_samples=30)
    root, meta = _run(glg, repo_copy, cfg, Garbler())
    assert not meta["usable"] and meta["stopped_early"] and meta["translated_items"] < 40
    assert "reverser:v1" in meta["reason"] and "round-trip" in meta["reason"]
    rows = io.read_json(root / "results" / "glg" / "taco_data.rows.json")
    assert all(r["note"] and "reverser:v1" in r["note"] for r in rows)
    assert io.read_jsonl(root / "data" / "glg" / "taco.jsonl") == []


# --------------------------------------------------------------------------- taco_sft / taco_eval
from stages import taco_eval as te  # noqa: E402
from stages import taco_sft as ts  # noqa: E402


def test_markers_follow_the_template(glg):
    assert pt.markers(glg) == ("Instruction in English:", "Response in English:", "Response in Galician:")


def test_parse_taco_full_partial_and_runaway(glg):
    marks = pt.markers(glg)
    out = ("Instruction in English: Write a poem.\nResponse in English: Roses.\nResponse in Galician: Rosas.\n"
           "Instruction: next example")
    p = pt.parse_taco(out, marks)
    assert p == {"instruction_en": "Write a poem.", "response_en": "Roses.", "answer": "Rosas.", "format_ok": True}
    assert not pt.parse_taco("Response in Galician:   ", marks)["format_ok"]  # empty answer
    assert pt.parse_plain(" Ola.\n\nInstruction: more")["answer"] == "Ola."


def test_missing_final_label_is_a_format_failure_with_an_empty_answer(glg):
    """A chain cut off before the target-language label has no answer: chrF must not score the
    English half (issue 13.1), so the answer is empty and the format failed."""
    marks = pt.markers(glg)
    partial = pt.parse_taco("Instruction in English: Hi\nResponse in English: Hello there, friend", marks)
    assert partial == {"instruction_en": "Hi", "response_en": "Hello there, friend", "answer": "", "format_ok": False}
    assert pt.parse_taco("Ola, que tal?", marks)["answer"] == ""  # no labels at all
    items = [{"instruction_en": "Hi", "reference": "Ola, amigo"}]
    scores = te.item_scores(items, [partial], [True], "taco")
    assert scores["answer_chrf"] == [0.0] and scores["format_adherence"] == [0.0]
    assert scores["language_fidelity"] == [0.0] and scores["answer_chars"] == [0.0]


def test_budget_from_target_lengths():
    lengths = list(range(1, 101))  # p95 = 95.05
    assert pt.budget_from_lengths(lengths, quantile=95, margin=0.1, cap=10_000) == 105
    assert pt.budget_from_lengths(lengths, quantile=95, margin=0.1, cap=64) == 64  # the context caps it
    assert pt.budget_from_lengths([], quantile=95, margin=0.1, cap=64, floor=8) == 8
    summary = pt.length_summary([10, 20, 30, 40])
    assert summary["median"] == 25 and summary["max"] == 40 and summary["n"] == 4


def test_decoding_budget_is_measured_from_the_training_targets(monkeypatch):
    class Tok:  # one token per word
        def __call__(self, text, add_special_tokens=False):
            return {"input_ids": text.split()}

    monkeypatch.setattr("pipeline.models.load_tokenizer", lambda base: Tok())
    monkeypatch.setattr(te, "context_length", lambda base: 200)
    train = [{"taco": {"response": " ".join(["w"] * n)}} for n in range(10, 110)]  # 11..110 tokens with EOS
    cfg = {"eval": {"max_new_tokens": "auto", "budget": {"quantile": 95, "margin": 0.0, "max": None, "fallback": 7}}}
    info = te.decoding_budget("m", train, [], ["a b c"], cfg)
    assert info["source"] == "train" and info["budget"] == 106 and info["cap"] == 196  # 200 - prompt (3 tokens + start)
    assert info["target_tokens_train_p95"] == pytest.approx(105.05) and info["target_tokens_heldout_n"] == 0
    assert te.decoding_budget("m", [], [], ["a"], cfg)["budget"] == 7  # no targets: the declared fallback
    cfg["eval"]["budget"]["max"] = 50
    assert te.decoding_budget("m", train, [], ["a"], cfg)["budget"] == 50
    assert te.decoding_budget("m", train, [], ["a"], {"eval": {"max_new_tokens": 12}})["source"] == "fixed"


def test_staged_schedule_plain_first_then_taco_same_total_steps():
    samples = [{"plain": f"p{i}", "taco": f"t{i}"} for i in range(3)]
    examples, first = ts.staged_examples(samples, steps=4, batch_size=2, fraction=0.5)
    assert first == 2 and examples == ["p0", "p1", "p2", "p0", "t0", "t1", "t2", "t0"]
    cfg = {"schedule": "staged", "staged_fraction": 0.25, "sft": {"max_steps": 4, "batch_size": 2}}
    ex, settings, first = ts.taco_run(samples, cfg)
    assert first == 1 and settings["max_steps"] == 4 and settings["order"] == "given" and len(ex) == 8
    assert ts.taco_run(samples, {"sft": {"max_steps": 4}})[0] == ["t0", "t1", "t2"]  # taco_only
    with pytest.raises(PolyalignError, match="taco.schedule"):
        ts.taco_run(samples, {"schedule": "mixed", "sft": {}})


def test_prompt_pairs_vicuna_and_spreadsheet():
    vicuna = [{"question_id": 1, "category": "generic", "turns": ["How?"]}]
    sheet = [{"प्रश्न_आईडी": 1, " पाठ": " कसरी?"}, {"प्रश्न_आईडी": 2, " पाठ": None}]
    assert te.prompt_pairs(vicuna) == [("1", "How?")]
    assert te.prompt_pairs(sheet) == [("1", "कसरी?")]


def test_eval_rows_compare_with_base_and_plain(repo_copy):
    scores = {"base": {"language_fidelity": [0.0, 1.0], "format_adherence": [0.0, 0.0],
                       "english_rendering_chrf": [], "answer_chrf": [10.0, 20.0], "answer_chars": [5.0, 7.0],
                       "judge_score": None},
              "taco": {"language_fidelity": [1.0, 1.0], "format_adherence": [1.0, 0.0],
                       "english_rendering_chrf": [], "answer_chrf": [30.0, 40.0], "answer_chars": [9.0, 9.0],
                       "judge_score": None}}
    rows, flat = te.rows_for("glg", scores, {"plain": "reason X"}, "taco_heldout", False, None, steps=24)
    by = {r["metric"]: r for r in rows}
    assert len(rows) == len(te.METRICS) * len(te.SYSTEMS)
    chrf_row = by["answer_chrf_taco"]
    assert chrf_row["value"] == 35 and chrf_row["baseline"] == 15 and chrf_row["baseline_name"] == "base"
    assert chrf_row["delta"] == 20 and chrf_row["verdict"] in ("better", "underpowered") and chrf_row["mde"] == 2.0
    fmt = by["format_adherence_taco"]
    assert fmt["mde"] == 0.1 and 0 < fmt["ci_low"] < 0.5 < fmt["ci_high"] < 1  # Wilson on 1 of 2
    assert "did not learn" not in (fmt.get("note") or "")  # upper bound 0.91: not ruled out
    assert by["answer_chrf_base"]["baseline"] is None
    assert "baseline_name" not in by["answer_chars_taco"]  # context, not a claim
    assert by["language_fidelity_plain"]["value"] is None and "reason X" in by["language_fidelity_plain"]["note"]
    assert by["judge_score_taco"]["note"].startswith("skipped: no judge model configured")
    assert "no English originals" in by["english_rendering_chrf_taco"]["note"]
    assert flat["answer_chrf_taco_delta"] == 20


def test_format_not_learned_is_said_measured():
    note = te.format_note([0.0] * 12, steps=24)
    assert "did not learn the TaCo format: 0 of 12" in note and "24 training steps" in note
    assert te.format_note([1.0] * 6 + [0.0] * 6, steps=24) is None


def test_sft_and_eval_record_reason_when_data_unusable(glg, repo_copy):
    folder = repo_copy / "data" / "glg"
    meta = {"usable": False, "reason": "only 3 of 100 samples passed (translator x:y)", "translator": "x:y",
            "round_trip_chrf_mean": 12.5}
    io.write_json(folder / "taco_meta.json", meta)
    io.write_jsonl(folder / "taco.jsonl", [])
    io.write_jsonl(folder / "taco_heldout.jsonl", [])
    cfg = dict(CFG, sft={}, eval={"max_prompts": 4, "max_new_tokens": 8, "batch_size": 2, "seed": 0}, judge=None)
    ts.run("glg", cfg=cfg)
    status = io.read_json(repo_copy / "models" / "glg" / "taco_sft" / "status.json")
    assert not status["trained"] and "translator x:y" in status["reason"]
    te.run("glg", cfg=cfg)
    rows = io.read_json(repo_copy / "results" / "glg" / "taco_eval.rows.json")
    assert len(rows) == len(te.METRICS) * len(te.SYSTEMS) and all(r["value"] is None for r in rows)
    assert all("round-trip" in r["note"] or "passed" in r["note"] for r in rows)


def test_curriculum_order_reaches_the_trainer():
    from pipeline.train import _epoch_plan, settings

    s = settings({"batch_size": 2, **{"order": ts.train_cfg({"sft": {}})["order"]}})
    assert _epoch_plan([None] * 5, [9, 1, 5, 3, 7], s, packed=False, epochs=2) == [[0, 1], [2, 3], [4]] * 2


def test_failed_forward_translation_stops_the_item_early(glg, tmp_path):
    class Silent:
        calls = 0

        def system_id(self):
            return "silent:v1"

        def translate(self, segments, direction):
            Silent.calls += 1
            return [""] * len(segments)

    tr = Translator(glg, Silent(), lang_check=lambda texts, lang: [True] * len(texts), cache_root=tmp_path)
    rows = [{"id": "a", "instruction_en": "Do X.", "response_en": "Done."}]
    counts = Counter()
    (s,) = td.translate_chunk(rows, tr, counts)
    assert Silent.calls == 1 and s["failure"] == "empty" and s["rt_chrf"] is None
    assert counts["forward_empty"] == 1 and td.gate([s], 0)[1] == {"failed_empty": 1}


def test_chunk_bounds_probe_first():
    assert td.chunk_bounds(10, 3, 4) == [(0, 3), (3, 7), (7, 10)]
    assert td.chunk_bounds(2, 3, 4) == [(0, 2)]
    assert td.chunk_bounds(5, 0, 2) == [(0, 2), (2, 4), (4, 5)]
