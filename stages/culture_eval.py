"""culture_eval@<culture>: does tuning move a model's answers towards the culture's real answers,
further than the strongest trivial answer would?

Survey (held-out items only; the split is by WVS battery, so no held-out item's sibling was
trained on): each system's answer distribution over an item's options comes from the options'
log-probabilities after the culture-naming survey prompt (renormalised over the options; the
mass they held is kept as `option_mass`). Both CultureLLM target modes are measured on every
system: the soft distribution (Jensen-Shannon divergence in bits, and earth mover's distance on
the ordinal scale divided by K-1) and the majority answer (`heldout_modal_acc`: the system's most
likely option is a mode of the real answers). Which mode a tuned model was trained on
(`culture.sft.target`) is in its rows' notes.

Systems: `base` (the base model), `culture` (culture_sft@<C>), `all` (the model tuned on all
enabled cultures). Trivial baselines, computed from the survey alone:
- `uniform`: every option equally likely (for the majority answer: `chance`, modes / K);
- `prior`: the culture's own mean training-item distribution on the same answer scale
  (pipeline.culture.scale_prior; its majority answer for modal accuracy);
- `reference`: the reference culture's (`culture.reference`, default `us`) real answers.
Every tuned system is a report.comparison row against base, uniform/chance, prior and reference,
with the paired interval over held-out items resampled by battery (pipeline.stats) and a
verdict; a row that does not beat a trivial baseline says so in its note. The divergence of
each model from the reference culture (`heldout_jsd_to_ref_*`) is context, not a gain: a plain
row with a note.

BLEnD (where the pack has it): short-answer accuracy (BLEnD's SEM-B without its language-
specific lemmatisers) on a seeded sample of valid questions, with BLEnD's own prompt
(`culture.blend.prompt`, default `inst-4`), in English and in the local language; Wilson
intervals; baselines: the base model and `chance` (another question's most voted answer).

Writes results/<C>/culture_eval.{json,rows.json} and results/<C>/culture_eval.answers.json
(every system's BLEnD answers). A tuned model that is missing gives rows with value null and a
note, not an error.
"""

from __future__ import annotations

import random
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from pipeline import culture as C
from pipeline import io, stats
from pipeline.config import base_model, deep_merge, params_path, section
from pipeline.culture import ALL, model_dir, pack_origin, read_inputs, survey_targets, targets_path
from pipeline.errors import PolyalignError, did_you_mean
from pipeline.packs import CulturePack, load_culture
from pipeline.paths import repo_root, results_dir
from pipeline.provenance import sha256_file, signature
from pipeline.report import comparison, mde_for, row, write_stage
from pipeline.sources import read

STAGE = "culture_eval"
SYSTEMS = ("base", "culture", "all")
TUNED = ("culture", "all")
HIGHER = {"heldout_jsd": False, "heldout_emd": False, "heldout_modal_acc": True, "option_mass": True,
          "heldout_jsd_to_ref": False, "blend_acc_en": True, "blend_acc_local": True}
# baselines every tuned system is compared with, per metric (the first trivial one is the
# uninformed answer: uniform distribution, or a uniformly random option)
BASELINES = {"heldout_jsd": ("base", "uniform", "prior", "reference"),
             "heldout_emd": ("base", "uniform", "prior", "reference"),
             "heldout_modal_acc": ("base", "chance", "prior", "reference"),
             "blend_acc_en": ("base", "chance"), "blend_acc_local": ("base", "chance")}
TRIVIAL = ("uniform", "chance", "prior", "reference")
BASELINE_NOTES = {
    "uniform": "uniform over the item's options",
    "chance": "an option drawn uniformly at random (expected accuracy: modes / options)",
    "prior": "the culture's mean training-item distribution on the same answer scale",
    "reference": "the reference culture's real answers",
}
BLEND_CHANCE = "chance: each question answered with another question's most voted answer (seeded)"


# --------------------------------------------------------------------------- systems
def adapter_dir(system: str, pack_id: str) -> Path | None:
    return {"culture": model_dir(pack_id) / "adapter", "all": model_dir(ALL) / "adapter"}.get(system)


def load_system(system: str, base: str, pack_id: str):
    """(model, tokenizer), or None with the reason when the tuned model does not exist."""
    if system == "base":
        from pipeline.models import load_model

        return load_model(base), None
    path = adapter_dir(system, pack_id)
    if not path.exists():
        stage = f"culture_sft@{pack_id}" if system == "culture" else "culture_sft_all"
        return None, f"{stage} has not produced {path.relative_to(repo_root())}"
    from pipeline.train import load_trained

    return load_trained(base, path), None


# --------------------------------------------------------------------------- survey
def option_distributions(model, tok, pack: CulturePack, items: list[C.Item], batch_size: int):
    """Per item: (distribution over item.codes, option mass) from continuation log-probs."""
    from pipeline.generate import continuation_logprobs

    prompts, conts = [], []
    for item in items:
        prompt = C.survey_prompt(pack.templates, pack.name, item)
        prompts += [prompt] * len(item.codes)
        conts += [f" {code}" for code in item.codes]
    lps = continuation_logprobs(model, tok, prompts, conts, batch_size=batch_size)
    out, i = [], 0
    for item in items:
        k = len(item.codes)
        ids = [tok(f" {code}", add_special_tokens=False)["input_ids"] for code in item.codes]
        out.append(C.option_distribution(lps[i:i + k], C.nested_pairs(ids)))
        i += k
    return out


NAN = float("nan")


def dist_scores(dists: list[np.ndarray | None], real: list[np.ndarray]) -> dict[str, list[float]]:
    """Per item (lists of length n): JSD and ordinal EMD to the real answers (shape [K] each) and
    whether the distribution's top option is a real mode; NaN where a distribution is None."""
    out = {"heldout_jsd": [], "heldout_emd": [], "heldout_modal_acc": []}
    for p, q in zip(dists, real):
        out["heldout_jsd"].append(NAN if p is None else C.jsd(p, q))
        out["heldout_emd"].append(NAN if p is None else C.emd_ordinal(p, q))
        out["heldout_modal_acc"].append(NAN if p is None else C.modal_hit(p, q))
    return out


def survey_metrics(dists, real: list[np.ndarray], ref: list[np.ndarray | None]) -> dict[str, list[float]]:
    """Per-item scores of one system (lists of length n); dists: (distribution shape [K], option
    mass) per item. heldout_jsd_to_ref is NaN where the reference culture has no answers."""
    out = dist_scores([p for p, _ in dists], real)
    out["option_mass"] = [mass for _, mass in dists]
    out["heldout_jsd_to_ref"] = [NAN if r is None else C.jsd(p, r) for (p, _), r in zip(dists, ref)]
    return out


@dataclass
class Heldout:
    """The usable held-out items of one culture, in parallel lists of length n."""

    items: list[C.Item]
    real: list[np.ndarray]  # the culture's real answer distribution, shape [K] each
    refs: list[np.ndarray | None]  # the reference culture's, None where it has none
    priors: list[np.ndarray]  # pipeline.culture.scale_prior, shape [K] each
    prior_how: list[str]  # 'scale' | 'codes' | 'uniform'
    batteries: list[str]  # cluster label of each item (items of a battery are not independent)


def heldout(targets: list[dict], ref_targets: list[dict] | None, max_items, seed: int = 0) -> Heldout:
    """Usable held-out items; max_items draws a seeded sample spread over batteries, not a prefix."""
    ref = {t["id"]: t for t in ref_targets or []}
    chosen = [t for t in targets if t["split"] == "heldout" and t["usable"]]
    chosen = stats.stratified_sample(chosen, lambda t: t["battery"], max_items or None, seed)
    priors = [C.scale_prior(t, targets) for t in chosen]
    return Heldout(items=[C.Item.from_json(t) for t in chosen], real=[np.asarray(t["dist"]) for t in chosen],
                   refs=[np.asarray(ref[t["id"]]["dist"]) if t["id"] in ref and ref[t["id"]]["usable"] else None
                         for t in chosen],
                   priors=[p for p, _ in priors], prior_how=[how for _, how in priors],
                   batteries=[t["battery"] for t in chosen])


def baseline_scores(h: Heldout) -> dict[str, dict[str, list[float]]]:
    """Per-item scores of the trivial baselines (no model): uniform, chance, prior, reference."""
    uniform = dist_scores([C.uniform_dist(len(q)) for q in h.real], h.real)
    del uniform["heldout_modal_acc"]  # a uniform distribution has no top option: see chance
    return {"uniform": uniform, "chance": {"heldout_modal_acc": [C.chance_hit(q) for q in h.real]},
            "prior": dist_scores(h.priors, h.real), "reference": dist_scores(h.refs, h.real)}


# --------------------------------------------------------------------------- BLEnD
def blend_sample(pack: CulturePack, cfg: dict) -> list[dict]:
    qs = C.blend_questions(read(pack.blend.annotations, origin=pack_origin(pack.id)))
    k = min(cfg["max_questions"] or len(qs), len(qs))
    return sorted(random.Random(cfg["seed"]).sample(qs, k), key=lambda q: C.natural_key(q["id"]))


def blend_prompts(pack: CulturePack, cfg: dict) -> dict[str, str]:
    prompts = read(pack.blend.prompts, origin=pack_origin(pack.id)) if pack.blend.prompts else []
    if not prompts:  # a pack without BLEnD's prompt file: BLEnD's inst-4 wording, English only
        return {"en": "Read the following question and provide a single answer without any "
                      "explanations.\n\nQuestion: {q}\nAnswer:"}
    return {"en": C.blend_prompt(prompts, cfg["prompt"], False, pack_origin(pack.id)),
            "local": C.blend_prompt(prompts, cfg["prompt"], True, pack_origin(pack.id))}


def blend_scores(model, tok, questions: list[dict], prompts: dict[str, str], cfg: dict) -> dict[str, list]:
    """Per language: 0/1 correctness per question, and the answers given."""
    from pipeline.generate import generate

    out = {}
    for lang, template in prompts.items():
        texts = [template.replace("{q}", q["question" if lang == "local" else "en_question"]) for q in questions]
        gens = generate(model, tok, texts, max_new_tokens=cfg["max_new_tokens"], batch_size=cfg["batch_size"],
                        stop_after_first_line=True)
        answers = [C.first_line(g) for g in gens]
        out[lang] = [float(C.blend_correct(q, a, lang == "local")) for q, a in zip(questions, answers)]
        out[f"{lang}_answers"] = answers
    return out


def blend_chance(questions: list[dict], prompts: dict[str, str], seed: int) -> dict[str, list]:
    """The chance baseline's 0/1 correctness per question and language, and its answers."""
    out = {}
    for lang in prompts:
        answers = C.blend_chance_answers(questions, lang == "local", seed)
        out[f"blend_acc_{lang}"] = [float(C.blend_correct(q, a, lang == "local")) for q, a in zip(questions, answers)]
        out[f"blend_answers_{lang}"] = answers
    return out


# --------------------------------------------------------------------------- rows
def _finite(values, clusters=None):
    """(values, clusters) where the value is finite (NaN marks an item a system cannot score)."""
    v = np.asarray(values, dtype=float)
    keep = np.isfinite(v)
    return v[keep], None if clusters is None else [c for c, k in zip(clusters, keep) if k]


def mean_ci(values, clusters=None) -> tuple[float, float, float, int]:
    """(mean, low, high, n) over the finite values, clusters resampled whole. For 0/1 values the
    interval is the wider of that and Wilson's (sound at 0/n and n/n, where a bootstrap is flat)."""
    v, cl = _finite(values, clusters)
    if not v.size:
        return NAN, NAN, NAN, 0
    est, lo, hi = stats.cluster_bootstrap_ci(v, cl)
    if set(np.unique(v)) <= {0.0, 1.0}:
        _, wlo, whi = stats.wilson_ci(float(v.sum()), int(v.size))
        lo, hi = (min(wlo, lo), max(whi, hi)) if np.isfinite(lo) else (wlo, whi)
        lo, hi = max(lo, 0.0), min(hi, 1.0)
    return est, lo, hi, int(v.size)


def value_row(pack_id: str, metric: str, values, clusters, note: str | None) -> dict:
    """A plain row: one system's (or baseline's) mean with its interval, or null with the note."""
    name = metric.rsplit("_", 1)[0] if metric.rsplit("_", 1)[0] in HIGHER else metric
    est, lo, hi, n = mean_ci(values, clusters) if values is not None else (NAN, NAN, NAN, 0)
    if not n:
        return row(pack_id, "culture", STAGE, metric, None, higher_is_better=HIGHER[name],
                   note=note or "nothing to score")
    return row(pack_id, "culture", STAGE, metric, est, ci=(lo, hi), n=n, higher_is_better=HIGHER[name], note=note)


def widen_for_proportions(d: tuple, a: np.ndarray, b: np.ndarray) -> tuple:
    """For 0/1 scores on both sides (shape [n]), the union of the paired bootstrap interval and
    Newcombe's hybrid score interval for p_a - p_b (his method 10, from the two Wilson intervals).
    Why: when every pair agrees (4 BLEnD questions all wrong) the bootstrap has zero width and
    would read "no difference shown"; Newcombe's is sound at 0/n. It ignores the pairing, so it
    is wider than a paired interval when the two systems' errors are positively correlated."""
    if not (set(np.unique(a)) <= {0.0, 1.0} and set(np.unique(b)) <= {0.0, 1.0}):
        return d
    pa, la, ua = stats.wilson_ci(float(a.sum()), a.size)
    pb, lb, ub = stats.wilson_ci(float(b.sum()), b.size)
    lo = pa - pb - float(np.hypot(pa - la, ub - pb))
    hi = pa - pb + float(np.hypot(ua - pa, pb - lb))
    return d[0], min(lo, d[1]) if np.isfinite(d[1]) else lo, max(hi, d[2]) if np.isfinite(d[2]) else hi


def compare_row(pack_id: str, metric: str, system: str, baseline: str, a, b, clusters, note: str) -> dict:
    """report.comparison of system vs baseline on the items both can score (paired, by battery)."""
    name = f"{metric}_{system}_vs_{baseline}"
    mde = mde_for(STAGE, "accuracy" if HIGHER[metric] else metric)
    if a is None or b is None:
        return comparison(pack_id, "culture", STAGE, name, None, None, delta_ci=(None, None, None), n=0,
                          mde=mde, baseline_name=baseline, higher_is_better=HIGHER[metric], note=note)
    x, y = np.asarray(a, dtype=float), np.asarray(b, dtype=float)
    keep = np.isfinite(x) & np.isfinite(y)
    cl = None if clusters is None else [c for c, k in zip(clusters, keep) if k]
    if not keep.any():
        return compare_row(pack_id, metric, system, baseline, None, None, clusters, note)
    d = widen_for_proportions(stats.paired_delta(x[keep], y[keep], cl), x[keep], y[keep])
    out = comparison(pack_id, "culture", STAGE, name, float(x[keep].mean()), float(y[keep].mean()), delta_ci=d,
                     n=int(keep.sum()), mde=mde, baseline_name=baseline, higher_is_better=HIGHER[metric],
                     n_docs=len(set(cl)) if cl else None, note=note)
    if baseline in TRIVIAL and out["verdict"] != "better":
        out["note"] = f"does not beat the {baseline} baseline ({out['verdict'] or 'no interval'}); {note}"
    return out


def survey_rows(pack_id: str, scores: dict, h: Heldout, notes: dict) -> list[dict]:
    """Value rows of every system and baseline, then every tuned system's comparisons."""
    rows = []
    for metric in ("heldout_jsd", "heldout_emd", "heldout_modal_acc", "option_mass"):
        for who in (*SYSTEMS, *TRIVIAL):
            if metric in scores.get(who, {}) or who in SYSTEMS:
                rows.append(value_row(pack_id, f"{metric}_{who}", scores.get(who, {}).get(metric), h.batteries,
                                      notes.get(who) or BASELINE_NOTES.get(who)))
    for system in SYSTEMS:  # distance to another culture: context, neither a gain nor a loss
        rows.append(value_row(pack_id, f"heldout_jsd_to_ref_{system}",
                              scores.get(system, {}).get("heldout_jsd_to_ref"), h.batteries,
                              notes.get(system) or notes["heldout_jsd_to_ref"]))
    for metric in ("heldout_jsd", "heldout_emd", "heldout_modal_acc"):
        rows += tuned_comparisons(pack_id, metric, scores, h.batteries, notes)
    return rows


def tuned_comparisons(pack_id: str, metric: str, scores: dict, clusters, notes: dict) -> list[dict]:
    """Each tuned system against each baseline of BASELINES[metric]; the strongest trivial
    baseline (best mean on the items) is named in its row's note."""
    trivial = [b for b in BASELINES[metric] if b in TRIVIAL and metric in scores.get(b, {})]
    sign = 1 if HIGHER[metric] else -1
    best = max(trivial, key=lambda b: sign * float(np.nanmean(scores[b][metric])), default=None)
    rows = []
    for system in TUNED:
        for b in BASELINES[metric]:
            note = notes.get(system) if system not in scores else notes[f"trained_{system}"]
            if b not in scores or metric not in scores[b]:
                note = notes.get(b) or f"no {b} baseline"
            elif b == best:
                note = f"{note}; {b} is the strongest trivial baseline"
            rows.append(compare_row(pack_id, metric, system, b, scores.get(system, {}).get(metric),
                                    scores.get(b, {}).get(metric), clusters, note))
    return rows


def blend_rows(pack_id: str, scores: dict, prompts: dict, notes: dict) -> list[dict]:
    """BLEnD accuracy per system and chance (Wilson intervals), then tuned vs base and chance."""
    rows = []
    for lang in ("en", "local"):
        metric = f"blend_acc_{lang}"
        for who in (*SYSTEMS, "chance"):
            vals = scores.get(who, {}).get(metric) if lang in prompts else None
            note = notes.get(metric) or notes.get(who) or (BLEND_CHANCE if who == "chance" else None)
            rows.append(wilson_row(pack_id, f"{metric}_{who}", vals, note))
        if lang not in prompts:
            continue
        for system in (*TUNED, "base"):
            for b in BASELINES[metric] if system != "base" else ("chance",):
                note = notes.get(system) if system not in scores else notes[f"trained_{system}"]
                rows.append(compare_row(pack_id, metric, system, b, scores.get(system, {}).get(metric),
                                        scores.get(b, {}).get(metric), None, note))
    return rows


def wilson_row(pack_id: str, metric: str, values, note: str | None) -> dict:
    if not values:
        return row(pack_id, "culture", STAGE, metric, None, note=note or "nothing to score")
    p, lo, hi = stats.wilson_ci(float(np.sum(values)), len(values))
    return row(pack_id, "culture", STAGE, metric, p, ci=(lo, hi), n=len(values), note=note)


def flat_metrics(rows: list[dict]) -> dict:
    """Every row's numbers, flat for DVC: value, interval, n, and a comparison's delta interval."""
    out = {}
    for r in rows:
        m = r["metric"]
        out.update({m: r["value"], f"{m}_lo": r["ci_low"], f"{m}_hi": r["ci_high"], f"{m}_n": r["n"]})
        if "baseline_name" in r:
            out.update({f"{m}_delta": r["delta"], f"{m}_delta_lo": r.get("delta_ci_low"),
                        f"{m}_delta_hi": r.get("delta_ci_high"), f"{m}_n_needed": r.get("n_needed")})
    return {k: v for k, v in out.items() if v is not None}


# --------------------------------------------------------------------------- stage
def reference_targets(pack_id: str, ref_id: str) -> list[dict] | None:
    if not ref_id or ref_id == pack_id:
        return None
    return survey_targets(load_culture(ref_id))


def evaluate_system(model, tok, pack, h: Heldout, questions, prompts, cfg) -> dict[str, list]:
    dists = option_distributions(model, tok, pack, h.items, cfg["eval"]["batch_size"])
    scores = survey_metrics(dists, h.real, h.refs)
    if questions:
        b = blend_scores(model, tok, questions, prompts, cfg["blend"])
        scores.update({f"blend_acc_{lang}": b[lang] for lang in prompts})
        scores.update({f"blend_answers_{lang}": b[f"{lang}_answers"] for lang in prompts})
    return scores


def wanted_systems(cfg: dict) -> list[str]:
    wanted = cfg["eval"].get("systems", SYSTEMS)
    for s in wanted:
        if s not in SYSTEMS:
            raise PolyalignError(params_path(), "culture.eval.systems", f"unknown system '{s}'",
                                 did_you_mean(s, SYSTEMS) or f"use {', '.join(SYSTEMS)}")
    return list(wanted)


def trained_notes(cfg: dict) -> dict[str, str]:
    """Which target mode each tuned model was trained on (culture.sft.target; sft_all overrides)."""
    modes = {"culture": cfg["sft"]["target"], "all": deep_merge(cfg["sft"], cfg.get("sft_all") or {})["target"]}
    return {"trained_base": "the base model, untuned",
            **{f"trained_{s}": f"trained on the '{m}' target (culture.sft.target)" for s, m in modes.items()}}


def context_notes(pack, h: Heldout, pack_id: str, ref_id: str, prompts: dict, questions: list) -> dict[str, str]:
    """Notes for rows that are context or could not be scored."""
    notes = {}
    real_ref = [C.jsd(q, r) for q, r in zip(h.real, h.refs) if r is not None]
    notes["heldout_jsd_to_ref"] = (
        f"no reference culture distinct from '{pack_id}'" if not real_ref else
        f"context, not a gain: divergence from the '{ref_id}' real answers "
        f"(real {pack_id} vs {ref_id}: {np.mean(real_ref):.3f})")
    if not real_ref:
        notes["reference"] = notes["heldout_jsd_to_ref"]
    for lang in ("en", "local"):
        if lang not in prompts:
            notes[f"blend_acc_{lang}"] = ("culture not in BLEnD" if not pack.blend else
                                          "BLEnD disabled (culture.blend.max_questions: 0)" if not questions else
                                          "no local-language BLEnD prompt")
    return notes


def heldout_counts(h: Heldout) -> dict:
    return {"heldout_items": len(h.items), "heldout_batteries": len(set(h.batteries)),
            "reference_items": sum(r is not None for r in h.refs),
            **{f"prior_{how}_items": h.prior_how.count(how) for how in ("scale", "codes", "uniform")}}


def run(pack_id: str) -> None:
    t0 = time.time()
    pack, cfg = load_culture(pack_id), section("culture")
    targets, _ = read_inputs(pack_id)
    ref_id = cfg.get("reference")
    h = heldout(targets, reference_targets(pack_id, ref_id), cfg["eval"].get("max_items"))
    questions = blend_sample(pack, cfg["blend"]) if pack.blend and cfg["blend"]["max_questions"] != 0 else []
    prompts = blend_prompts(pack, cfg["blend"]) if questions else {}
    base = base_model(cfg["sft"])
    wanted = wanted_systems(cfg)
    notes = {s: "not in culture.eval.systems" for s in SYSTEMS if s not in wanted}
    notes |= trained_notes(cfg) | context_notes(pack, h, pack_id, ref_id, prompts, questions)
    scores = baseline_scores(h)
    if questions:
        scores["chance"] |= blend_chance(questions, prompts, cfg["blend"]["seed"])
    for system in wanted:
        loaded, reason = load_system(system, base, pack_id)
        if loaded is None:
            notes[system] = reason
            continue
        scores[system] = evaluate_system(*loaded, pack, h, questions, prompts, cfg)
    rows = survey_rows(pack_id, scores, h, notes) + blend_rows(pack_id, scores, prompts, notes)
    metrics = {**flat_metrics(rows), **heldout_counts(h), "blend_questions": len(questions),
               "wall_s": round(time.time() - t0, 1)}
    sig = signature(stage=STAGE, pack=pack_id, base=base, reference=ref_id or "none", cfg=cfg["eval"],
                    blend=cfg["blend"], target=cfg["sft"]["target"],
                    templates={k: pack.templates[k].id for k in ("system", "survey")},
                    targets=sha256_file(targets_path(pack_id))[:12],
                    **{s: sha256_file(p / "adapter_model.safetensors")[:12] for s in ("culture", "all")
                       if (p := adapter_dir(s, pack_id)) and (p / "adapter_model.safetensors").exists()})
    # the answers themselves, for reading; under results/ since culture_sft_all depends on data/
    io.write_json(results_dir(pack_id) / "culture_eval.answers.json",
                  {"signature": sig, **{s: {k: v for k, v in sc.items() if k.startswith("blend_answers")}
                                        for s, sc in scores.items() if s in (*SYSTEMS, "chance")}})
    write_stage(pack_id, STAGE, metrics, rows, sig)


if __name__ == "__main__":
    from stages._cli import stage_main

    raise SystemExit(stage_main(run, __doc__))
