"""rm_transfer@<lang>: does a source-language reward model transfer to <lang>, and can it rerank there?

Following Wu et al. 2024 ("Reuse Your Rewards"), on held-out source pairs translated into
the language with the pack's translator (cached):
- zero-shot accuracy of each `rm_train` source reward model (a column of the source x
  target matrix), against the same model on the untranslated pairs and a length baseline;
- a translate-train reward model (trained on a small number of translated training pairs);
- a language-consistency probe: the same answer in <lang> and in English to a <lang>
  prompt; how often the reward model prefers the wrong (English) one;
- best-of-n in <lang>: n sampled answers from the TaCo model (base model if TaCo is off)
  per held-out prompt, picked by the source reward model: gain over a random pick, the
  language fidelity of the picks, and agreement with the translate-train reward model.
Everything with bootstrap CIs. Writes models/<lang>/rm_tt/, data/<lang>/rm_transfer/
and results/<lang>/rm_transfer.{json,rows.json}.
"""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np

from pipeline import io, rm
from pipeline.config import deep_merge, section
from pipeline.errors import PolyalignError
from pipeline.packs import LanguagePack, load_language
from pipeline.paths import data_dir, repo_root, results_dir
from pipeline.provenance import signature, sha256_text
from pipeline.report import lid_note, row, write_stage
from pipeline.stats import bootstrap_ci, paired_delta_ci
from stages.rm_train import base_model, load_reward_model, rm_dir, scorer, splits_dir

STAGE = "rm_transfer"


# --------------------------------------------------------------------------- inputs
def source_split(name: str, part: str) -> list[dict]:
    return io.read_jsonl(splits_dir() / name / f"{part}.jsonl")


def translated(translator, pairs: list[dict]) -> tuple[list[dict], int]:
    """Pairs translated into the pack's language (cached by the translator); failed ones dropped."""
    from pipeline.translate import FORWARD

    def forward(texts: list[str]) -> list[str | None]:
        result = translator.translate(texts, FORWARD)
        return [out if ok else None for out, ok in zip(result.outputs, result.ok)]

    return rm.translate_pairs(pairs, forward)


# --------------------------------------------------------------------------- policy samples
def policy_dir(pack_id: str) -> Path:
    return sft_dir(pack_id) / "taco" / "adapter"


def policy_prompts(pack: LanguagePack, instructions: list[str], use_taco: bool) -> list[str]:
    """Prompts in the policy's own training format (TaCo template, or the plain instruct one)."""
    return prompts_for(pack, instructions, "taco" if use_taco else "instruct")


def final_answer(text: str, pack: LanguagePack, use_taco: bool) -> tuple[str, bool]:
    """(the target-language answer inside a sample, whether the sample was complete).

    TaCo: the strict parser of pipeline.taco (the part after the template's last label; a chain
    cut off before it has an empty answer and counts as incomplete). Both policies: cut where
    the model starts a new "Instruction" on its own.
    """
    if not use_taco:
        return cut_runaway(text), True
    parsed = parse_taco(text, markers(pack))
    return parsed["answer"], parsed["format_ok"]


def sample_answers(pack: LanguagePack, base: str, instructions: list[str], cfg: dict) -> dict:
    """n sampled answers per instruction [P][n] from the TaCo model if trained, else the base model."""
    from pipeline.generate import generate

    adapter = policy_dir(pack.id)
    use_taco = cfg["policy"] == "taco" and adapter.exists()
    if use_taco:
        from pipeline.train import load_trained

        model, tok = load_trained(base, adapter)
    else:
        from pipeline.models import load_model

        model, tok = load_model(base)
    outs = generate(model, tok, policy_prompts(pack, instructions, use_taco), max_new_tokens=cfg["max_new_tokens"],
                    batch_size=cfg["gen_batch_size"], do_sample=True, temperature=cfg["temperature"],
                    top_p=cfg["top_p"], num_return_sequences=cfg["n"], seed=cfg["seed"])
    parsed = [[final_answer(t, pack, use_taco) for t in (o if isinstance(o, list) else [o])] for o in outs]
    return {"samples": [[a for a, _ in group] for group in parsed], "policy": "taco" if use_taco else "base",
            "complete": float(np.mean([c for group in parsed for _, c in group])) if parsed else float("nan")}


# --------------------------------------------------------------------------- one reward model
def rm_measures(score, eval_l: list[dict], eval_en: list[dict], bon_turns: list, samples: list[list[str]]) -> dict:
    """Everything one reward model contributes on the translated pairs: accuracy, the
    consistency probe (the same chosen answer in English, to the prompt in the language)
    and best-of-n scores [P, n]. One batched scoring call per part."""
    start = time.perf_counter()
    chosen, rejected = rm.score_pairs(score, eval_l)
    seconds = time.perf_counter() - start
    english = np.asarray(score([rm.rm_text(t["turns"], e["chosen"]) for t, e in zip(eval_l, eval_en)]), dtype=float)
    texts = [rm.rm_text(turns, s) for turns, group in zip(bon_turns, samples) for s in group]
    bon = np.asarray(score(texts), dtype=float).reshape(len(samples), -1) if texts else np.zeros((0, 0))
    return {"correct": rm.pairwise_correct(chosen, rejected), "wrong_language": rm.wrong_language(chosen, english),
            "bon": bon, "pairs_per_s": len(eval_l) / seconds if seconds > 0 else float("nan")}


def untranslated_correct(name: str, eval_en: list[dict]) -> np.ndarray:
    """The source RM's correctness on the untranslated pairs, from rm_train's saved scores [n]."""
    saved = {r["id"]: r for r in io.read_jsonl(rm_dir() / name / "heldout_scores.jsonl")}
    missing = [p["id"] for p in eval_en if p["id"] not in saved]
    if missing:
        raise PolyalignError(rm_dir() / name / "heldout_scores.jsonl", "id", f"{len(missing)} eval pairs were "
                             "not scored by rm_train", "keep rm_transfer.eval_pairs <= rm_train.max_test_pairs")
    return rm.pairwise_correct([saved[p["id"]]["chosen"] for p in eval_en], [saved[p["id"]]["rejected"] for p in eval_en])


def source_measures(base: str, name: str, primary: bool, batch_size: int, *args) -> dict:
    """A source RM's measures; the primary source's eval pairs are its own held-out pairs, so
    its untranslated accuracy on exactly these pairs comes from rm_train's saved scores."""
    model, tok = load_reward_model(base, rm_dir() / name / "adapter")
    out = rm_measures(scorer(model, tok, batch_size), *args)
    del model
    return {**out, "correct_en": untranslated_correct(name, args[1])} if primary else out


def translate_train(base: str, pack_id: str, tt_pairs: list[dict], cfg: dict, train_cfg: dict,
                    *args) -> tuple[dict, dict]:
    """Train the translate-train reward model on translated pairs, then measure it like a source."""
    from pipeline.train import train_reward_model

    out = repo_root() / "models" / pack_id / "rm_tt"
    settings = deep_merge(train_cfg["train"], cfg.get("train") or {})
    with io.atomic_path(out) as tmp:
        fit = train_reward_model(base, rm.training_pairs(tt_pairs), tmp, {**settings, "seed": cfg["seed"]})
    model, tok = load_reward_model(base, out / "adapter")
    measures = rm_measures(scorer(model, tok, cfg["batch_size"]), *args)
    del model
    return fit, measures


# --------------------------------------------------------------------------- rows
def ci_row(pack_id: str, metric: str, stats: tuple, n: int, **kw) -> dict:
    return row(pack_id, "language", STAGE, metric, stats[0], ci=stats[1:], n=n, **kw)


def accuracy_rows(pack_id: str, m: dict, names: list[str], ctx: dict) -> list[dict]:
    primary = names[0]
    n = len(m[primary]["correct"])
    zs, en = bootstrap_ci(m[primary]["correct"]), bootstrap_ci(m[primary]["correct_en"])
    rows = [
        ci_row(pack_id, "zero_shot_accuracy", zs, n, baseline=en[0],
               note=f"source '{primary}' RM on held-out pairs translated by {ctx['translator']}; "
                    "baseline: the same RM on the same pairs untranslated"),
        ci_row(pack_id, "source_accuracy", en, n, note=f"source '{primary}' RM on the untranslated pairs"),
        ci_row(pack_id, "translate_train_accuracy", bootstrap_ci(m["tt"]["correct"]), n, baseline=zs[0],
               note=f"RM trained on {ctx['tt_pairs']} translated train pairs (source RM: {ctx['src_pairs']}); "
                    "baseline: zero-shot accuracy"),
        ci_row(pack_id, "length_baseline_accuracy", bootstrap_ci(ctx["length"]), n,
               note=f"prefers the {ctx['length_way']} reply (direction fit on the translated train pairs)"),
        ci_row(pack_id, "zero_shot_minus_length", paired_delta_ci(m[primary]["correct"], ctx["length"]), n),
    ]
    rows += [ci_row(pack_id, f"zero_shot_accuracy_{s}", bootstrap_ci(m[s]["correct"]), n,
                    note=f"source x target matrix: RM '{s}' on {pack_id}") for s in names[1:]]
    return rows


def probe_rows(pack_id: str, m: dict, primary: str) -> list[dict]:
    note = ("share of items where the RM scores the English answer above the same answer in the language, "
            "given the prompt in the language (0.5: indifferent)")
    return [ci_row(pack_id, "wrong_language_preference", bootstrap_ci(m[primary]["wrong_language"]),
                   len(m[primary]["wrong_language"]), higher_is_better=False, baseline=0.5, note=note),
            ci_row(pack_id, "wrong_language_preference_tt", bootstrap_ci(m["tt"]["wrong_language"]),
                   len(m["tt"]["wrong_language"]), higher_is_better=False, baseline=0.5,
                   note="the same probe for the translate-train RM")]


def bon_rows(pack_id: str, bon: dict, ctx: dict) -> list[dict]:
    P, n = bon["n_prompts"], bon["n"]
    if P == 0:
        return [row(pack_id, "language", STAGE, "bon_reward_gain", None, note="best-of-n disabled (bon.prompts: 0)")]
    fid_note = ctx["lid_note"]
    return [
        ci_row(pack_id, "bon_reward_gain", bon["gain"], P, baseline=0.0,
               note=f"best-of-{n} by the source RM over a random pick, in within-prompt reward sd (>= 0 by "
                    f"construction; see bon_gain_judged_by_tt); policy: {ctx['policy']}, "
                    f"{ctx['complete']:.0%} of samples complete"),
        ci_row(pack_id, "bon_pick_fidelity", bon["pick_fidelity"], P, baseline=bon["random_fidelity"][0],
               note=fid_note or f"share of picks in the language; baseline: a random pick of {n}"),
        ci_row(pack_id, "bon_agreement_tt", bon["agreement"], P, baseline=1.0 / n,
               note=f"translate-train RM picks the same sample; baseline: chance 1/{n}"),
        ci_row(pack_id, "bon_gain_judged_by_tt", bon["judged_gain"], P, baseline=0.0,
               note="translate-train RM's reward of the source RM's pick over a random pick (its sd units)"),
    ]


# --------------------------------------------------------------------------- best-of-n summary
def bon_summary(src_scores: np.ndarray, tt_scores: np.ndarray, fidelity: np.ndarray) -> dict:
    """Best-of-n statistics from scores [P, n] of both RMs and language fidelity [P, n] (0/1)."""
    P, n = src_scores.shape if src_scores.size else (0, 0)
    if P == 0:
        return {"n_prompts": 0, "n": n}
    picks = rm.best_of_n(src_scores)
    gain = rm.standardise(rm.gain_over_random(src_scores, picks), src_scores)
    judged = rm.standardise(rm.gain_over_random(tt_scores, picks), tt_scores)
    return {"n_prompts": P, "n": n, "gain": bootstrap_ci(gain),
            "raw_gain": bootstrap_ci(rm.gain_over_random(src_scores, picks)),
            "pick_fidelity": bootstrap_ci(rm.pick(fidelity, picks)), "random_fidelity": bootstrap_ci(fidelity.mean(1)),
            "fidelity_delta": paired_delta_ci(rm.pick(fidelity, picks), fidelity.mean(1)),
            "agreement": bootstrap_ci(rm.agreement(src_scores, tt_scores)), "judged_gain": bootstrap_ci(judged)}


def flat(prefix: str, stats: tuple) -> dict:
    return {prefix: stats[0], f"{prefix}_ci_low": stats[1], f"{prefix}_ci_high": stats[2]}


# --------------------------------------------------------------------------- run
def translated_sets(translator, primary: str, cfg: dict) -> dict:
    """Held-out and translate-train pairs, in English and translated (failed ones dropped, counted)."""
    eval_en = source_split(primary, "test")[: cfg["eval_pairs"]]
    eval_l, eval_dropped = translated(translator, eval_en)
    kept = {p["id"] for p in eval_l}
    tt_l, tt_dropped = translated(translator, source_split(primary, "train")[: cfg["tt_pairs"]])
    return {"eval_l": eval_l, "eval_en": [p for p in eval_en if p["id"] in kept], "tt_l": tt_l,
            "dropped": (eval_dropped, tt_dropped), "translator": translator.system}


def write_unmeasurable(pack_id: str, metrics: dict, note: str, sig: str) -> None:
    """Rows with value None when there is nothing sound to measure (never made-up numbers); the
    stage's folders hold a status.json with the reason, so DVC still finds its outputs."""
    for folder in (repo_root() / "models" / pack_id / "rm_tt", data_dir(pack_id) / STAGE):
        with io.atomic_path(folder) as tmp:
            tmp.mkdir()
            io.write_json(tmp / "status.json", {"measured": False, "reason": note})
    rows = [row(pack_id, "language", STAGE, metric, None, note=note) for metric in
            ("zero_shot_accuracy", "translate_train_accuracy", "wrong_language_preference", "bon_reward_gain")]
    write_stage(pack_id, STAGE, metrics, rows, sig)


def translator_gate(pack_id: str, translator: str) -> str | None:
    """Why not to translate pairs with this translator, measured by taco_data@<lang>; None to go on.

    When TaCo's round-trip quality gate rejected the very translator this stage would use,
    translated preference pairs would measure the translator, not the reward model (and cost
    the most CPU time of the graph). `rm_transfer.translator_gate: off` translates anyway."""
    path = data_dir(pack_id) / "taco_meta.json"
    meta = io.read_json(path) if path.exists() else {}
    if meta.get("usable", True) or meta.get("translator") != translator:
        return None
    counts = meta.get("counts", {})
    return (f"not measured: translator {translator} failed taco_data's quality gate on {meta.get('translated_items')} "
            f"items (round-trip chrF {meta.get('round_trip_chrf_mean')} vs gate {meta.get('threshold')}; "
            f"{counts.get('forward_wrong_language', 0)} outputs in the wrong language), so translated pairs would "
            "measure the translator, not the reward model; set rm_transfer.translator_gate: off to translate anyway")


def write_artifacts(pack_id: str, sets: dict, bon_pairs: list[dict], samples, measures: dict, primary: str,
                    fidelity: np.ndarray) -> None:
    """The translated pairs and every best-of-n sample with both RMs' scores, for inspection."""
    out = data_dir(pack_id) / STAGE
    io.write_jsonl(out / "eval_pairs.jsonl", sets["eval_l"])
    io.write_jsonl(out / "tt_pairs.jsonl", sets["tt_l"])
    io.write_jsonl(out / "bon_samples.jsonl", [
        {"id": p["id"], "prompt": rm.last_human(p["turns"]), "samples": s, "src_scores": a.tolist(),
         "tt_scores": b.tolist(), "in_language": f.tolist()}
        for p, s, a, b, f in zip(bon_pairs, samples, measures[primary]["bon"], measures["tt"]["bon"], fidelity)])


def run(pack_id: str) -> None:
    from pipeline.seeding import seed_everything
    from pipeline.text import is_lang

    pack, cfg, train_cfg = load_language(pack_id), section(STAGE), section("rm_train")
    seed_everything(cfg["seed"])
    base, names = base_model(train_cfg), list(train_cfg["sources"])
    from pipeline.translate import Translator

    translator = Translator(pack)
    gate = translator_gate(pack_id, translator.system) if cfg.get("translator_gate", "taco") == "taco" else None
    if gate:
        sig = signature(stage=STAGE, pack=pack_id, model=base, cfg=cfg, translator=translator.system, gate="taco")
        write_unmeasurable(pack_id, {"eval_pairs": 0, "tt_pairs": 0}, gate, sig)
        return
    sets = translated_sets(translator, names[0], cfg)
    sig = signature(stage=STAGE, pack=pack_id, model=base, cfg=cfg, rm_train=train_cfg, translator=sets["translator"],
                    template=rm.RM_TEMPLATE_ID, eval_sha=sha256_text("\n".join(p["id"] for p in sets["eval_l"]))[:12])
    if not sets["eval_l"] or not sets["tt_l"]:
        note = (f"translator {sets['translator']} failed on every pair ({sets['dropped'][0]} held-out, "
                f"{sets['dropped'][1]} train pairs dropped as empty or wrong-language)")
        write_unmeasurable(pack_id, {"eval_pairs": len(sets["eval_l"]), "tt_pairs": len(sets["tt_l"])}, note, sig)
        return
    bon_pairs = sets["eval_l"][: cfg["bon"]["prompts"]]
    policy = sample_answers(pack, base, [rm.last_human(p["turns"]) for p in bon_pairs], cfg["bon"]) \
        if bon_pairs else {"samples": [], "policy": "none", "complete": float("nan")}
    samples = policy["samples"]
    args = (sets["eval_l"], sets["eval_en"], [p["turns"] for p in bon_pairs], samples)
    measures = {name: source_measures(base, name, name == names[0], cfg["batch_size"], *args) for name in names}
    fit, measures["tt"] = translate_train(base, pack_id, sets["tt_l"], cfg, train_cfg, *args)
    fidelity = np.array([is_lang(group, pack) for group in samples], dtype=float).reshape(len(samples), -1)
    bon = bon_summary(measures[names[0]]["bon"], measures["tt"]["bon"], fidelity)
    write_artifacts(pack_id, sets, bon_pairs, samples, measures, names[0], fidelity)
    direction = rm.length_direction(sets["tt_l"])
    ctx = {"translator": sets["translator"], "dropped": sets["dropped"], "tt_pairs": len(sets["tt_l"]),
           "src_pairs": train_cfg["max_train_pairs"], "length": rm.length_correct(sets["eval_l"], direction),
           "length_way": "longer" if direction > 0 else "shorter", "policy": policy["policy"],
           "complete": policy["complete"], "lid_note": lid_note(pack_id)}
    rows = accuracy_rows(pack_id, measures, names, ctx) + probe_rows(pack_id, measures, names[0])
    rows += bon_rows(pack_id, bon, ctx)
    rows.append(row(pack_id, "language", STAGE, "pairs_per_s", measures[names[0]]["pairs_per_s"],
                    n=len(sets["eval_l"]), note=f"pairs scored per second, batched ({cfg['batch_size']}), source RM"))
    write_stage(pack_id, STAGE, metrics_of(measures, names, bon, fit, ctx), rows, f"{sig}|policy:{policy['policy']}")


def metrics_of(measures: dict, names: list[str], bon: dict, fit: dict, ctx: dict) -> dict:
    out = {}
    for name in [*names, "tt"]:
        m = measures[name]
        out |= flat(f"{name}_accuracy", bootstrap_ci(m["correct"]))
        out |= flat(f"{name}_wrong_language", bootstrap_ci(m["wrong_language"]))
        if "correct_en" in m:
            out[f"{name}_accuracy_untranslated"] = float(np.mean(m["correct_en"]))
    out |= flat("length_accuracy", bootstrap_ci(ctx["length"]))
    out["pairs_per_s"] = measures[names[0]]["pairs_per_s"]
    out["eval_pairs"], out["tt_pairs"] = len(ctx["length"]), ctx["tt_pairs"]
    out["eval_dropped"], out["tt_dropped"] = ctx["dropped"]
    out |= {f"tt_train_{k}": v for k, v in fit.items() if isinstance(v, (int, float))}
    for key in ("gain", "raw_gain", "pick_fidelity", "random_fidelity", "fidelity_delta", "agreement", "judged_gain"):
        if key in bon:
            out |= flat(f"bon_{key}", bon[key])
    out["bon_prompts"], out["bon_n"], out["bon_complete"] = bon["n_prompts"], bon["n"], ctx["complete"]
    return out


if __name__ == "__main__":
    from stages._cli import stage_main

    raise SystemExit(stage_main(run, __doc__))
