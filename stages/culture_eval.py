"""culture_eval@<culture>: does tuning move a model's answers towards the culture's real answers?

Survey (held-out items only, never trained on by either tuned model): each system's answer
distribution over an item's options comes from the options' log-probabilities after the
culture-naming survey prompt (renormalised over the options; the mass they held is kept as
`option_mass`). Against the country's real distribution: Jensen-Shannon divergence (bits),
earth mover's distance on the ordinal scale (divided by K-1, so in [0, 1]) and modal-answer
accuracy; and the Jensen-Shannon divergence to the reference culture's (`culture.reference`,
default `us`) real answers, next to the real culture-vs-reference divergence.
Systems: `base` (the base model, the baseline of every row), `culture` (culture_sft@<C>) and
`all` (the model tuned on all enabled cultures together).

BLEnD (where the pack has it): short-answer accuracy (BLEnD's SEM-B without its language-
specific lemmatisers) on a seeded sample of valid questions, with BLEnD's own prompt
(`culture.blend.prompt`, default `inst-4`), in English and in the local language.

95% bootstrap CIs over items/questions (pipeline.stats); paired CIs for the deltas to the
base model go into results/<C>/culture_eval.json. Writes results/<C>/culture_eval.{json,
rows.json} and results/<C>/culture_eval.answers.json (every system's BLEnD answers).
A tuned model that is missing gives rows with value null and a note, not an error.
"""

from __future__ import annotations

import random
import time
from pathlib import Path

import numpy as np

from pipeline import culture as C
from pipeline import io
from pipeline.config import params_path, section
from pipeline.errors import PolyalignError, did_you_mean
from pipeline.packs import CulturePack, load_culture
from pipeline.paths import repo_root, results_dir
from pipeline.provenance import sha256_file, signature
from pipeline.report import row, write_stage
from pipeline.sources import read
from pipeline.stats import bootstrap_ci, paired_delta_ci
from stages.culture_augment import pack_origin, survey_targets, targets_path
from stages.culture_sft import ALL, base_model, model_dir, read_inputs

STAGE = "culture_eval"
SYSTEMS = ("base", "culture", "all")
SURVEY_METRICS = {  # metric -> higher is better
    "heldout_jsd": False, "heldout_emd": False, "heldout_modal_acc": True, "heldout_jsd_to_ref": True,
    "option_mass": True,
}


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


def survey_metrics(dists, real: list[np.ndarray], ref: list[np.ndarray | None]) -> dict[str, list[float]]:
    """Per-item scores (lists of length n_items) for one system."""
    out = {m: [] for m in SURVEY_METRICS}
    for (p, mass), q, r in zip(dists, real, ref):
        out["heldout_jsd"].append(C.jsd(p, q))
        out["heldout_emd"].append(C.emd_ordinal(p, q))
        out["heldout_modal_acc"].append(C.modal_hit(p, q))
        out["option_mass"].append(mass)
        if r is not None:
            out["heldout_jsd_to_ref"].append(C.jsd(p, r))
    return out


def heldout(targets: list[dict], ref_targets: list[dict] | None, max_items) -> tuple[list, list, list]:
    """(items, real distributions, reference distributions or None) for usable held-out items."""
    ref = {t["id"]: t for t in ref_targets or []}
    chosen = [t for t in targets if t["split"] == "heldout" and t["usable"]][:max_items or None]
    items = [C.Item.from_json(t) for t in chosen]
    real = [np.asarray(t["dist"]) for t in chosen]
    refs = [np.asarray(ref[t["id"]]["dist"]) if t["id"] in ref and ref[t["id"]]["usable"] else None
            for t in chosen]
    return items, real, refs


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


# --------------------------------------------------------------------------- rows
def ci_rows(pack_id: str, scores: dict[str, dict[str, list]], hib: dict[str, bool], notes: dict) -> list[dict]:
    """One row per (metric, system); baseline = the base model's value."""
    rows = []
    for metric, better in hib.items():
        base_vals = scores.get("base", {}).get(metric)
        base_value = float(np.mean(base_vals)) if base_vals else None
        for system in SYSTEMS:
            name = f"{metric}_{system}"
            vals = scores.get(system, {}).get(metric)
            if not vals:
                reason = notes.get(system) or notes.get(metric) or "nothing to score"
                rows.append(row(pack_id, "culture", STAGE, name, None, higher_is_better=better, note=reason))
                continue
            value, lo, hi = bootstrap_ci(vals)
            rows.append(row(pack_id, "culture", STAGE, name, value, ci=(lo, hi), n=len(vals), higher_is_better=better,
                            baseline=None if system == "base" else base_value, note=notes.get(metric)))
    return rows


def flat_metrics(scores: dict[str, dict[str, list]]) -> dict:
    """Means, CIs and paired deltas to the base model, flat for DVC."""
    out = {}
    for system, by_metric in scores.items():
        for metric, vals in by_metric.items():
            if not vals or isinstance(vals[0], str):
                continue
            value, lo, hi = bootstrap_ci(vals)
            out.update({f"{metric}_{system}": value, f"{metric}_{system}_lo": lo, f"{metric}_{system}_hi": hi,
                        f"{metric}_{system}_n": len(vals)})
            base = scores.get("base", {}).get(metric)
            if system != "base" and base and len(base) == len(vals):
                d, dlo, dhi = paired_delta_ci(vals, base)
                out.update({f"{metric}_{system}_minus_base": d, f"{metric}_{system}_minus_base_lo": dlo,
                            f"{metric}_{system}_minus_base_hi": dhi})
    return out


# --------------------------------------------------------------------------- stage
def reference_targets(pack_id: str, ref_id: str) -> list[dict] | None:
    if not ref_id or ref_id == pack_id:
        return None
    return survey_targets(load_culture(ref_id))


def evaluate_system(model, tok, pack, items, real, refs, questions, prompts, cfg) -> dict[str, list]:
    scores = survey_metrics(option_distributions(model, tok, pack, items, cfg["eval"]["batch_size"]), real, refs)
    if questions:
        b = blend_scores(model, tok, questions, prompts, cfg["blend"])
        scores.update({f"blend_acc_{lang}": b[lang] for lang in prompts})
        scores.update({f"blend_answers_{lang}": b[f"{lang}_answers"] for lang in prompts})
    return scores


def run(pack_id: str) -> None:
    t0 = time.time()
    pack, cfg = load_culture(pack_id), section("culture")
    targets, _ = read_inputs(pack_id)
    ref_id = cfg.get("reference")
    items, real, refs = heldout(targets, reference_targets(pack_id, ref_id), cfg["eval"].get("max_items"))
    questions = blend_sample(pack, cfg["blend"]) if pack.blend and cfg["blend"]["max_questions"] != 0 else []
    prompts = blend_prompts(pack, cfg["blend"]) if questions else {}
    base = base_model(cfg["sft"])
    scores, notes = {}, {}
    wanted = cfg["eval"].get("systems", SYSTEMS)
    for s in wanted:
        if s not in SYSTEMS:
            raise PolyalignError(params_path(), "culture.eval.systems", f"unknown system '{s}'",
                                 did_you_mean(s, SYSTEMS) or f"use {', '.join(SYSTEMS)}")
    notes.update({s: "not in culture.eval.systems" for s in SYSTEMS if s not in wanted})
    for system in wanted:
        loaded, reason = load_system(system, base, pack_id)
        if loaded is None:
            notes[system] = reason
            continue
        scores[system] = evaluate_system(*loaded, pack, items, real, refs, questions, prompts, cfg)
    real_ref = [C.jsd(q, r) for q, r in zip(real, refs) if r is not None]
    hib = dict(SURVEY_METRICS)
    if not any(r is not None for r in refs):
        notes["heldout_jsd_to_ref"] = f"no reference culture distinct from '{pack_id}'"
    else:
        notes["heldout_jsd_to_ref"] = (f"descriptive: divergence from the '{ref_id}' real answers; "
                                       f"real {pack_id} vs {ref_id}: {np.mean(real_ref):.3f}")
    for lang in ("en", "local"):
        hib[f"blend_acc_{lang}"] = True
        if lang not in prompts:
            notes[f"blend_acc_{lang}"] = ("culture not in BLEnD" if not pack.blend else
                                          "BLEnD disabled (culture.blend.max_questions: 0)" if not questions else
                                          "no local-language BLEnD prompt")
    rows = ci_rows(pack_id, scores, hib, notes)
    if real_ref:
        v, lo, hi = bootstrap_ci(real_ref)
        rows.append(row(pack_id, "culture", STAGE, "real_jsd_to_ref", v, ci=(lo, hi), n=len(real_ref),
                        higher_is_better=True, note=f"real answers of {pack_id} vs {ref_id} (reference gap)"))
    metrics = {**flat_metrics(scores), "heldout_items": len(items), "blend_questions": len(questions),
               "real_jsd_to_ref": float(np.mean(real_ref)) if real_ref else None,
               "wall_s": round(time.time() - t0, 1)}
    sig = signature(stage=STAGE, pack=pack_id, base=base, reference=ref_id or "none", cfg=cfg["eval"],
                    blend=cfg["blend"], templates={k: pack.templates[k].id for k in ("system", "survey")},
                    targets=sha256_file(targets_path(pack_id))[:12],
                    **{s: sha256_file(p / "adapter_model.safetensors")[:12] for s in ("culture", "all")
                       if (p := adapter_dir(s, pack_id)) and (p / "adapter_model.safetensors").exists()})
    # the answers themselves, for reading; under results/ since culture_sft_all depends on data/
    io.write_json(results_dir(pack_id) / "culture_eval.answers.json",
                  {"signature": sig, **{s: {k: v for k, v in sc.items() if k.startswith("blend_answers")}
                                        for s, sc in scores.items()}})
    write_stage(pack_id, STAGE, metrics, rows, sig)


if __name__ == "__main__":
    from stages._cli import stage_main

    raise SystemExit(stage_main(run, __doc__))
