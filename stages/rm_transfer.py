"""rm_transfer@<lang>: does a source-language reward model transfer to <lang>, and can it rerank there?

Following Wu et al. 2024 ("Reuse Your Rewards"), on held-out source pairs translated into
the language with the pack's translator (cached):
- zero-shot accuracy of each `rm_train` source reward model (a column of the source x
  target matrix), against the same model on the untranslated pairs and a length baseline;
- zero-shot and translate-train accuracy against chance (0.5) and a length baseline (longer
  or shorter reply, the way rm_train found better on its dev split), paired over the pairs;
- a translate-train reward model at matched compute: the source RM's optimizer steps, learning
  rate and settings, on as many translated train pairs as the source RM had (`tt_pairs: null`),
  its loss curve in results/<lang>/rm_transfer_tt_curve.tsv;
- a language-consistency probe: the same answer in <lang> and in English to a <lang>
  prompt; how often the reward model prefers the wrong (English) one;
- best-of-n in <lang>: n sampled answers from the TaCo model (base model if TaCo is off)
  per held-out prompt, picked by one reward model and JUDGED BY THE OTHER (the picker's own
  reward of its pick is >= 0 by construction): gain over a random pick from the same n samples,
  paired over prompts, both ways (source picks judged by translate-train, and back); the
  language fidelity of the picks, and agreement between the two RMs.
Intervals: Wilson for accuracies, paired bootstrap for deltas. Writes models/<lang>/rm_tt/, data/<lang>/rm_transfer/
and results/<lang>/rm_transfer.{json,rows.json}.
"""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np

from pipeline import io, rm
from pipeline.config import base_model, deep_merge, section
from pipeline.errors import PolyalignError
from pipeline.packs import LanguagePack, load_language
from pipeline.paths import data_dir, repo_root, results_dir
from pipeline.provenance import sha256_text, signature
from pipeline.report import SHARED, comparison, lid_note, mde_for, row, write_stage
from pipeline.rm import load_reward_model, rm_dir, scorer, splits_dir
from pipeline.stats import bootstrap_ci, paired_delta, wilson_ci
from pipeline.taco import budget_info, context_length, cut_runaway, markers, parse_taco, prompts_for, sft_dir

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


def policy_budget(pack_id: str, base: str, tok, prompts: list[str], cfg: dict) -> int:
    """`bon.max_new_tokens`, or with `auto` taco_eval's budget rule (params taco.eval.budget) on
    taco_data's targets: a TaCo sample cut off before its last label has no answer at all."""
    if cfg["max_new_tokens"] != "auto":
        return int(cfg["max_new_tokens"])
    folder = data_dir(pack_id)
    targets = lambda name: [s["taco"]["response"] for s in io.read_jsonl(folder / name)]  # noqa: E731
    ev = {**section("taco")["eval"], "max_new_tokens": "auto"}
    return budget_info(tok, context_length(base), targets("taco.jsonl"), targets("taco_heldout.jsonl"), prompts,
                       ev)["budget"]


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
    prompts = policy_prompts(pack, instructions, use_taco)
    outs = generate(model, tok, prompts, max_new_tokens=policy_budget(pack.id, base, tok, prompts, cfg),
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


def tt_settings(train_cfg: dict, cfg: dict, src: dict) -> dict:
    """The source RM's trainer settings and dev-chosen lr, with exactly its optimizer steps."""
    settings = deep_merge(train_cfg["train"], cfg.get("train") or {})
    return rm.matched_steps({**settings, "lr": src["lr"], "seed": cfg["seed"]}, src["steps"])


def translate_train(base: str, pack_id: str, tt_pairs: list[dict], cfg: dict, train_cfg: dict, src: dict,
                    *args) -> tuple[dict, dict]:
    """Train the translate-train reward model on translated pairs (matched compute), then measure
    it like a source; its loss curve goes to results/<lang>/rm_transfer_tt_curve.tsv."""
    from pipeline.train import train_reward_model

    out = repo_root() / "models" / pack_id / "rm_tt"
    with io.atomic_path(out) as tmp:
        fit = train_reward_model(base, rm.training_pairs(tt_pairs), tmp, tt_settings(train_cfg, cfg, src))
    io.write_text(results_dir(pack_id) / f"{STAGE}_tt_curve.tsv", (out / "curve.tsv").read_text())
    fit |= rm.curve_summary(rm.read_curve(out / "curve.tsv"))
    model, tok = load_reward_model(base, out / "adapter")
    measures = rm_measures(scorer(model, tok, cfg["batch_size"]), *args)
    del model
    return fit, measures


# --------------------------------------------------------------------------- rows
def ci_row(pack_id: str, metric: str, stats: tuple, n: int, **kw) -> dict:
    return row(pack_id, "language", STAGE, metric, stats[0], ci=stats[1:], n=n, **kw)


def acc_ci(correct) -> tuple:
    """Pairwise accuracy with its Wilson interval (ties count half)."""
    return wilson_ci(float(np.sum(correct)), len(correct))


def versus(pack_id: str, metric: str, correct, other, other_name: str, note: str | None = None, **kw) -> dict:
    """Accuracy of per-pair `correct` [n] against a baseline's `other` [n] on the same pairs."""
    acc = acc_ci(correct)
    return comparison(pack_id, "language", STAGE, metric, acc[0], float(np.mean(other)), ci=acc[1:], n=len(correct),
                      delta_ci=paired_delta(correct, other), baseline_name=other_name, note=note, **kw)


def baseline_rows(pack_id: str, name: str, correct, ctx: dict) -> list[dict]:
    """`name`_accuracy against chance and against the length baseline (the strongest trivial ones)."""
    n = len(correct)
    return [versus(pack_id, f"{name}_vs_chance", correct, rm.chance(n), "chance"),
            versus(pack_id, f"{name}_vs_length", correct, ctx["length"], "length",
                   note=f"length baseline prefers the {ctx['length_way']} reply ({ctx['length_from']})")]


def accuracy_rows(pack_id: str, m: dict, names: list[str], ctx: dict) -> list[dict]:
    primary, n = names[0], len(m[names[0]]["correct"])
    zs, tt = m[primary]["correct"], m["tt"]["correct"]
    rows = [
        versus(pack_id, "zero_shot_accuracy", zs, m[primary]["correct_en"], "untranslated",
               note=f"source '{primary}' RM on held-out pairs translated by {ctx['translator']}; baseline: the "
                    "same RM on the same pairs untranslated"),
        ci_row(pack_id, "source_accuracy", acc_ci(m[primary]["correct_en"]), n,
               note=f"source '{primary}' RM on the untranslated pairs"),
        versus(pack_id, "translate_train_accuracy", tt, zs, "zero-shot", note=ctx["matched"]),
        ci_row(pack_id, "length_baseline_accuracy", acc_ci(ctx["length"]), n,
               note=f"prefers the {ctx['length_way']} reply ({ctx['length_from']})"),
    ]
    rows += baseline_rows(pack_id, "zero_shot_accuracy", zs, ctx) + baseline_rows(pack_id, "translate_train_accuracy", tt, ctx)
    rows += [ci_row(pack_id, f"zero_shot_accuracy_{s}", acc_ci(m[s]["correct"]), n,
                    note=f"source x target matrix: RM '{s}' on {pack_id}") for s in names[1:]]
    return rows


def matched_note(fit: dict, src: dict, tt_pairs: int) -> str:
    """How the translate-train RM's training compares with the source RM's (matched compute)."""
    return (f"translate-train RM: {tt_pairs} translated pairs, {fit.get('steps')} steps at lr {src['lr']:g}, loss "
            f"{fit.get('loss_first', float('nan')):.3f} -> {fit.get('loss_last', float('nan')):.3f}; source RM: "
            f"{src['pairs']} pairs, {src['steps']} steps, loss {src.get('loss_first') or float('nan'):.3f} -> "
            f"{src.get('loss_last') or float('nan'):.3f}; baseline: zero-shot transfer")


def versus_constant(pack_id: str, metric: str, hits, constant: float, name: str, note: str,
                    higher_is_better: bool = True) -> dict:
    """A share of items (per-item 0/1, ties 1/2) against a fixed rate (indifference, chance): its Wilson
    interval, shifted by the constant, is the interval of the difference (the constant has no spread)."""
    share = acc_ci(hits)
    return comparison(pack_id, "language", STAGE, metric, share[0], constant, ci=share[1:], n=len(hits),
                      delta_ci=tuple(x - constant for x in share), baseline_name=name,
                      higher_is_better=higher_is_better, note=note)


def probe_rows(pack_id: str, m: dict, primary: str) -> list[dict]:
    note = ("share of items where the RM scores the English answer above the same answer in the language, "
            "given the prompt in the language (0.5: indifferent)")
    return [versus_constant(pack_id, "wrong_language_preference", m[primary]["wrong_language"], 0.5, "indifferent",
                            note, higher_is_better=False),
            versus_constant(pack_id, "wrong_language_preference_tt", m["tt"]["wrong_language"], 0.5, "indifferent",
                            "the same probe for the translate-train RM", higher_is_better=False)]


def judged_row(pack_id: str, metric: str, gain: np.ndarray, picker: str, judge: str, n: int) -> dict:
    """Best-of-n by `picker`, judged by `judge`, against a random pick of the same n samples."""
    est = paired_delta(gain, np.zeros_like(gain))
    return comparison(pack_id, "language", STAGE, metric, float(np.mean(gain)), 0.0, ci=est[1:], n=len(gain),
                      delta_ci=est, baseline_name="random pick", mde=mde_for(STAGE, "reward"),
                      note=f"best-of-{n} picked by the {picker} RM, reward by the {judge} RM (its within-prompt "
                           "sd units) over a random pick from the same samples (their mean), paired over prompts")


def bon_rows(pack_id: str, bon: dict, ctx: dict) -> list[dict]:
    P, n = bon["n_prompts"], bon["n"]
    if P == 0:
        return [row(pack_id, "language", STAGE, "bon_reward_gain", None, note="best-of-n disabled (bon.prompts: 0)")]
    return [
        ci_row(pack_id, "bon_reward_gain", bootstrap_ci(bon["self_gain"]), P,
               note=f"context, not a claim: best-of-{n} by the source RM judged by itself (>= 0 by construction); "
                    f"policy: {ctx['policy']}, {ctx['complete']:.0%} of samples complete"),
        judged_row(pack_id, "bon_gain_judged_by_tt", bon["judged_by_tt"], "source", "translate-train", n),
        judged_row(pack_id, "bon_gain_tt_judged_by_source", bon["judged_by_src"], "translate-train", "source", n),
        comparison(pack_id, "language", STAGE, "bon_pick_fidelity", float(np.mean(bon["pick_fidelity"])),
                   float(np.mean(bon["random_fidelity"])), n=P, baseline_name="random pick",
                   delta_ci=paired_delta(bon["pick_fidelity"], bon["random_fidelity"]),
                   note=ctx["lid_note"] or f"share of source-RM picks in the language; baseline: a random pick of {n}"),
        versus_constant(pack_id, "bon_agreement_tt", bon["agreement"], 1.0 / n, "chance",
                        f"translate-train RM picks the same sample; baseline: chance 1/{n}"),
    ]


# --------------------------------------------------------------------------- best-of-n summary
def bon_summary(src_scores: np.ndarray, tt_scores: np.ndarray, fidelity: np.ndarray) -> dict:
    """Per-prompt best-of-n values [P] from scores [P, n] of both RMs and language fidelity [P, n]:
    each RM's picks judged by the other, the self-judged gain (context), fidelity, agreement."""
    P, n = src_scores.shape if src_scores.size else (0, 0)
    if P == 0:
        return {"n_prompts": 0, "n": n}
    src_picks, tt_picks = rm.best_of_n(src_scores), rm.best_of_n(tt_scores)
    return {"n_prompts": P, "n": n, "self_gain": rm.judged_gain(src_scores, src_picks),
            "judged_by_tt": rm.judged_gain(tt_scores, src_picks), "judged_by_src": rm.judged_gain(src_scores, tt_picks),
            "pick_fidelity": rm.pick(fidelity, src_picks), "random_fidelity": fidelity.mean(1),
            "agreement": rm.agreement(src_scores, tt_scores)}


def flat(prefix: str, stats: tuple) -> dict:
    return {prefix: stats[0], f"{prefix}_ci_low": stats[1], f"{prefix}_ci_high": stats[2]}


# --------------------------------------------------------------------------- run
def source_fit(primary: str) -> dict:
    """What rm_train did for the primary source: train pairs, optimizer steps, chosen lr, the
    length direction chosen on dev, loss (results/_shared/rm_train.json)."""
    path = results_dir(SHARED) / "rm_train.json"
    got = io.read_json(path)
    keys = {"pairs": "train_pairs", "steps": "train_steps", "lr": "lr", "direction": "length_direction",
            "loss_first": "loss_first", "loss_last": "loss_last"}
    missing = [v for v in ("train_pairs", "train_steps", "lr") if f"{primary}_{v}" not in got]
    if missing:
        raise PolyalignError(path, f"{primary}_{missing[0]}", "missing from rm_train's metrics", "rerun rm_train")
    return {k: got.get(f"{primary}_{v}") for k, v in keys.items()}


def translated_sets(translator, primary: str, cfg: dict, src: dict) -> dict:
    """Held-out and translate-train pairs, in English and translated (failed ones dropped, counted).
    Translate-train pairs: as many as the source RM trained on (`tt_pairs: null`), up to what exists."""
    eval_en = source_split(primary, "test")[: cfg["eval_pairs"]]
    eval_l, eval_dropped = translated(translator, eval_en)
    kept = {p["id"] for p in eval_l}
    tt_l, tt_dropped = translated(translator, source_split(primary, "train")[: cfg.get("tt_pairs") or src["pairs"]])
    return {"eval_l": eval_l, "eval_en": [p for p in eval_en if p["id"] in kept], "tt_l": tt_l,
            "dropped": (eval_dropped, tt_dropped), "translator": translator.system}


def write_unmeasurable(pack_id: str, metrics: dict, note: str, sig: str) -> None:
    """Rows with value None when there is nothing sound to measure (never made-up numbers); the
    stage's folders hold a status.json with the reason and its curve file only a header (nothing
    trained), so DVC still finds its outputs."""
    from pipeline.train import curve_tsv

    for folder in (repo_root() / "models" / pack_id / "rm_tt", data_dir(pack_id) / STAGE):
        with io.atomic_path(folder) as tmp:
            tmp.mkdir()
            io.write_json(tmp / "status.json", {"measured": False, "reason": note})
    io.write_text(results_dir(pack_id) / f"{STAGE}_tt_curve.tsv", curve_tsv([], columns=4))
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


def length_baseline(sets: dict, src: dict) -> tuple[np.ndarray, str, str]:
    """Length baseline on the translated held-out pairs: the direction rm_train chose on its dev
    split (fit on the translated train pairs when rm_train did not record one)."""
    direction, origin = src.get("direction"), "direction chosen on rm_train's dev split"
    if direction not in (1, -1):
        direction, origin = rm.length_direction(sets["tt_l"]), "direction fit on the translated train pairs"
    return rm.length_correct(sets["eval_l"], direction), ("longer" if direction > 0 else "shorter"), origin


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
    src = source_fit(names[0])
    sets = translated_sets(translator, names[0], cfg, src)
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
    fit, measures["tt"] = translate_train(base, pack_id, sets["tt_l"], cfg, train_cfg, src, *args)
    fidelity = np.array([is_lang(group, pack) for group in samples], dtype=float).reshape(len(samples), -1)
    bon = bon_summary(measures[names[0]]["bon"], measures["tt"]["bon"], fidelity)
    write_artifacts(pack_id, sets, bon_pairs, samples, measures, names[0], fidelity)
    length, length_way, length_from = length_baseline(sets, src)
    ctx = {"translator": sets["translator"], "dropped": sets["dropped"], "tt_pairs": len(sets["tt_l"]),
           "length": length, "length_way": length_way, "length_from": length_from, "policy": policy["policy"],
           "complete": policy["complete"], "lid_note": lid_note(pack_id), "src": src,
           "matched": matched_note(fit, src, len(sets["tt_l"]))}
    rows = accuracy_rows(pack_id, measures, names, ctx) + probe_rows(pack_id, measures, names[0])
    rows += bon_rows(pack_id, bon, ctx)
    rows.append(row(pack_id, "language", STAGE, "pairs_per_s", measures[names[0]]["pairs_per_s"],
                    n=len(sets["eval_l"]), note=f"pairs scored per second, batched ({cfg['batch_size']}), source RM"))
    write_stage(pack_id, STAGE, metrics_of(measures, names, bon, fit, ctx), rows, f"{sig}|policy:{policy['policy']}")


def metrics_of(measures: dict, names: list[str], bon: dict, fit: dict, ctx: dict) -> dict:
    out = {}
    for name in [*names, "tt"]:
        m = measures[name]
        out |= flat(f"{name}_accuracy", acc_ci(m["correct"]))
        out |= flat(f"{name}_wrong_language", bootstrap_ci(m["wrong_language"]))
        if "correct_en" in m:
            out[f"{name}_accuracy_untranslated"] = float(np.mean(m["correct_en"]))
    out |= flat("length_accuracy", acc_ci(ctx["length"]))
    out["pairs_per_s"] = measures[names[0]]["pairs_per_s"]
    out["eval_pairs"], out["tt_pairs"], out["src_pairs"] = len(ctx["length"]), ctx["tt_pairs"], ctx["src"]["pairs"]
    out["src_steps"], out["src_lr"] = ctx["src"]["steps"], ctx["src"]["lr"]
    out["eval_dropped"], out["tt_dropped"] = ctx["dropped"]
    out |= {f"tt_train_{k}": v for k, v in fit.items() if isinstance(v, (int, float))}
    for key in ("self_gain", "judged_by_tt", "judged_by_src", "pick_fidelity", "random_fidelity", "agreement"):
        if key in bon:
            out |= flat(f"bon_{key}", bootstrap_ci(bon[key]))
    out["bon_prompts"], out["bon_n"], out["bon_complete"] = bon["n_prompts"], bon["n"], ctx["complete"]
    return out


if __name__ == "__main__":
    from stages._cli import stage_main

    raise SystemExit(stage_main(run, __doc__))
