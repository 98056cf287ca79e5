"""taco_eval@<lang>: base vs plain instruction tuning vs TaCo, identical greedy decoding.

Prompts in the pack's language: the pack's `sources.eval_prompts` when set (TaCo's
translated Vicuna-80 for npi, sampled across its categories; English originals from
`sources.eval_prompts_en`, aligned by id, when the pack has them), else taco_data's held-out
translated instructions (which also carry a translated reference answer).

Systems and prompts: `base` (the untuned model) and `taco` get the TaCo prompt, which spells
out the three steps, so format adherence is defined for both; `plain` gets the plain
instruct prompt it was trained on. One decoding budget for all three, greedy, same batch.

Budget (`taco.eval.max_new_tokens: auto`): a TaCo answer comes after the English instruction
and the English answer, so a budget shorter than the target cuts off exactly the part that is
scored. The budget is the `budget.quantile` of the token lengths of the TaCo training targets
(taco_data's, +1 for the end token) times (1 + `budget.margin`), capped by the model's context
left after the longest prompt (and by `budget.max` when set); the length distribution, the
budget and the share of outputs that hit it are in the metrics.

Parsing is strict (pipeline.taco.parse_taco): the answer is the text after the final label; a
missing label is a format failure with an EMPTY answer. Metrics per system:
- `language_fidelity`: final answer non-empty and in the pack's language by its identifier
  (a proportion, Wilson interval);
- `format_adherence`: all three TaCo parts present, in order, with a non-empty answer
  (taco/base only: plain has no such format; Wilson interval);
- `english_rendering_chrf`: chrF of the model's English rendering of the instruction vs
  the English original (taco/base; needs English originals);
- `answer_chrf`: chrF of the parsed final answer vs the translated reference answer;
- `answer_chars`: mean length of the parsed answers (context);
- `judge_score`: an LLM judge's 1-10 score when `taco.judge` names a model; else null, noted.
plain and taco are comparison rows against base (paired over prompts, verdicts), and TaCo's
answer chrF also against plain. Systems that could not be trained (taco_sft status) get null
rows with the reason.
"""

from __future__ import annotations

import re
import time

import numpy as np

from pipeline import io
from pipeline.config import section
from pipeline.packs import LanguagePack, Template, load_language
from pipeline.paths import data_dir, results_dir
from pipeline.provenance import sha256_file, signature
from pipeline.report import comparison, lid_note, mde_for, row, write_stage
from pipeline.sources import read
from pipeline.stats import bootstrap_ci, paired_delta, stratified_sample, wilson_ci
from pipeline.taco import budget_info, chrf, context_length, markers, parse_plain, parse_taco, prompts_for, sft_dir, templates_of

STAGE = "taco_eval"
SYSTEMS = ("base", "plain", "taco")
METRICS = ("language_fidelity", "format_adherence", "english_rendering_chrf", "answer_chrf", "answer_chars",
           "judge_score")
RATES = ("language_fidelity", "format_adherence")  # proportions: Wilson intervals, mde `rate`
CONTEXT = ("answer_chars",)                         # reported, not compared
FORMAT_SYSTEMS = ("base", "taco")  # prompted with the TaCo format
JUDGE_TEMPLATE = Template(id="judge_v1", text="Rate how well the answer follows the instruction, in {tgt_name}, "
                          "from 1 to 10.\nInstruction: {instruction}\nAnswer: {answer}\nScore:")
LEARNED = 0.5  # format adherence whose Wilson upper bound stays below this: "did not learn the format"


# --------------------------------------------------------------------------- prompts
def prompt_pairs(records: list) -> list[tuple[str, str]]:
    """(id, text) from eval-prompt records: Vicuna jsonl ({question_id, turns}), {id, instruction|text|question},
    or a spreadsheet row whose first column is the id and second the text."""
    out = []
    for i, rec in enumerate(records):
        if isinstance(rec, str):
            out.append((str(i), rec))
            continue
        if rec.get("turns"):
            text = rec["turns"][0]
        else:
            text = next((rec[k] for k in ("instruction", "text", "question", "prompt") if rec.get(k)), None)
        ident = rec.get("question_id", rec.get("id"))
        if text is None:  # spreadsheet: first column id, second text (headers may be in any language)
            values = list(rec.values())
            ident, text = values[0], values[1] if len(values) > 1 else ""
        out.append((str(ident if ident is not None else i), str(text or "").strip()))
    return [(i, t) for i, t in out if t]


def eval_items(pack: LanguagePack, heldout: list[dict]) -> tuple[list[dict], str]:
    """Evaluation items {id, prompt, instruction_en|None, reference|None, group} and where they came
    from; `group` (the Vicuna category, else the item itself) stratifies the prompt sample."""
    origin = f"languages/{pack.id}.yaml"
    if pack.sources.eval_prompts is not None:
        extra = pack.sources.eval_prompts_en
        english = dict(prompt_pairs(read(extra, origin=origin))) if extra is not None else {}
        records = read(pack.sources.eval_prompts, origin=origin)
        groups = {str(r.get("question_id", r.get("id"))): r.get("category") for r in records if isinstance(r, dict)}
        items = [{"id": i, "prompt": t, "instruction_en": english.get(i), "reference": None,
                  "group": groups.get(i) or i} for i, t in prompt_pairs(records)]
        return items, "eval_prompts"
    items = [{"id": s["id"], "prompt": s["instruction"], "instruction_en": s["instruction_en"],
              "reference": s["response"], "group": s["id"]} for s in heldout]
    return items, "taco_heldout"


def system_prompts(pack: LanguagePack, items: list[dict]) -> dict[str, list[str]]:
    taco = prompts_for(pack, [it["prompt"] for it in items], "taco")
    return {"base": taco, "plain": prompts_for(pack, [it["prompt"] for it in items], "instruct"), "taco": taco}


def pick_items(items: list[dict], n: int | None, seed: int) -> list[dict]:
    """At most n items spread over groups (categories), seeded: never a prefix of the file."""
    return stratified_sample(items, lambda it: it["group"], n, seed=seed)


# --------------------------------------------------------------------------- decoding budget
def decoding_budget(base: str, train: list[dict], held: list[dict], prompts: list[str], cfg: dict) -> dict:
    """{budget, source, cap, target length summaries}: one budget for every system
    (pipeline.taco.budget_info on the TaCo targets of taco_data's train and held-out samples)."""
    from pipeline.models import load_tokenizer

    ctx = context_length(base) if cfg["eval"]["max_new_tokens"] == "auto" else None
    return budget_info(load_tokenizer(base), ctx, [s["taco"]["response"] for s in train],
                       [s["taco"]["response"] for s in held], prompts, cfg["eval"])


# --------------------------------------------------------------------------- scoring
def item_scores(items: list[dict], parsed: list[dict], in_lang: list[bool], system: str) -> dict[str, list]:
    """Per-item values of each metric for one system (None where it does not apply)."""
    fmt = system in FORMAT_SYSTEMS
    return {
        "language_fidelity": [float(ok and bool(p["answer"])) for p, ok in zip(parsed, in_lang)],
        "format_adherence": [float(p["format_ok"]) for p in parsed] if fmt else None,
        "english_rendering_chrf": [chrf(p["instruction_en"], it["instruction_en"]) for p, it in zip(parsed, items)
                                   if it["instruction_en"]] if fmt else None,
        "answer_chrf": [chrf(p["answer"], it["reference"]) for p, it in zip(parsed, items) if it["reference"]],
        "answer_chars": [float(len(p["answer"])) for p in parsed],
    }


def why_missing(metric: str, system: str, source: str) -> str:
    if metric in ("format_adherence", "english_rendering_chrf") and system == "plain":
        return "plain instruction tuning has no chain-of-thought format"
    if metric == "english_rendering_chrf":
        return "no English originals for these prompts (pack has no sources.eval_prompts_en)"
    if metric == "answer_chrf":
        return f"no reference answers for {source} prompts"
    return "no values"


def judge_scores(judge: str | None, pack: LanguagePack, items: list[dict], answers: list[str]) -> list[float] | None:
    """The LLM-judge hook: a 1-10 score per answer from `judge` (a model name/path); None when unset.

    Scores the first integer the judge writes after 'Score:'; unparseable answers are dropped.
    """
    if not judge:
        return None
    from pipeline.generate import generate
    from pipeline.models import load_model

    model, tok = load_model(judge)
    prompts = [JUDGE_TEMPLATE.text.format(tgt_name=pack.name, instruction=it["prompt"], answer=a)
               for it, a in zip(items, answers)]
    outs = generate(model, tok, prompts, max_new_tokens=4)
    found = [re.search(r"\d+", o) for o in outs]
    return [min(10.0, max(1.0, float(m.group()))) for m in found if m]


# --------------------------------------------------------------------------- the stage
def load_system(name: str, base: str, pack_id: str):
    from pipeline.models import load_model
    from pipeline.train import load_trained

    if name == "base":
        return load_model(base)
    return load_trained(base, sft_dir(pack_id) / name / "adapter")


def run_system(name: str, base: str, pack: LanguagePack, prompts: list[str], cfg: dict, budget: int):
    """Generate with one system; return (outputs, parsed, in_language, output tokens, seconds)."""
    from pipeline.generate import generate
    from pipeline.seeding import seed_everything
    from pipeline.text import is_lang

    start = time.time()
    seed_everything(cfg["eval"]["seed"])
    model, tok = load_system(name, base, pack.id)
    outputs = generate(model, tok, prompts, max_new_tokens=budget, batch_size=cfg["eval"]["batch_size"])
    del model
    marks = markers(pack)
    parsed = [parse_taco(o, marks) if name in FORMAT_SYSTEMS else parse_plain(o) for o in outputs]
    answers = [p["answer"] for p in parsed]
    nonempty = [i for i, a in enumerate(answers) if a]
    verdict = dict(zip(nonempty, is_lang([answers[i] for i in nonempty], pack))) if nonempty else {}
    in_lang = [verdict.get(i, False) for i in range(len(answers))]
    n_tok = [len(tok(o, add_special_tokens=False)["input_ids"]) for o in outputs]
    return outputs, parsed, in_lang, n_tok, time.time() - start


def interval(metric: str, vals: list[float]) -> tuple[float, float, float]:
    """Wilson for proportions, bootstrap for means."""
    return wilson_ci(sum(vals), len(vals)) if metric in RATES else bootstrap_ci(vals)


def mde_of(metric: str) -> float:
    return mde_for(STAGE, "rate" if metric in RATES else ("judge" if metric == "judge_score" else metric))


def compare_row(pack_id: str, metric: str, system: str, vals: list, other: list, other_name: str, **kw) -> dict:
    """`system` against `other_name` on the same prompts: paired interval and verdict."""
    value, lo, hi = interval(metric, vals)
    d = paired_delta(vals, other)
    return comparison(pack_id, "language", STAGE, f"{metric}_{system}" + ("" if other_name == "base" else
                      f"_vs_{other_name}"), value, float(np.mean(other)), delta_ci=d, n=len(vals),
                      mde=mde_of(metric), baseline_name=other_name, ci=(lo, hi), **kw)


def format_note(vals: list[float], steps: int | None) -> str | None:
    """Measured: the TaCo model did not learn the format when even its Wilson upper bound is low."""
    k, n = int(sum(vals)), len(vals)
    if n and wilson_ci(k, n)[2] < LEARNED:
        return (f"at this size ({steps} training steps) the model did not learn the TaCo format: {k} of {n} "
                f"outputs carry all three parts (95% upper bound {wilson_ci(k, n)[2]:.2f})")
    return None


def system_row(pack_id: str, metric: str, system: str, vals: list, base_vals: list | None, note: str | None) -> dict:
    """The row of one (metric, system) with values: comparison with base where paired, else plain."""
    if system != "base" and metric not in CONTEXT and base_vals and len(base_vals) == len(vals):
        return compare_row(pack_id, metric, system, vals, base_vals, "base", note=note)
    value, lo, hi = interval(metric, vals)
    return row(pack_id, "language", STAGE, f"{metric}_{system}", value, ci=(lo, hi), n=len(vals), note=note,
               higher_is_better=metric not in CONTEXT)


def rows_for(pack_id: str, scores: dict[str, dict], reasons: dict[str, str], source: str, judge_on: bool,
             lid: str | None, steps: int | None = None) -> tuple[list[dict], dict]:
    """Scorecard rows and flat metrics for every (metric, system); base is the baseline."""
    rows, flat = [], {}
    for metric in METRICS:
        base_vals = (scores.get("base") or {}).get(metric)
        for system in SYSTEMS:
            name, vals = f"{metric}_{system}", (scores.get(system) or {}).get(metric)
            if system in reasons:
                rows.append(row(pack_id, "language", STAGE, name, None, note=f"not evaluated: {reasons[system]}"))
                continue
            if metric == "judge_score" and not judge_on:
                rows.append(row(pack_id, "language", STAGE, name, None,
                                note="skipped: no judge model configured (params taco.judge)"))
                continue
            if not vals:
                rows.append(row(pack_id, "language", STAGE, name, None, note=why_missing(metric, system, source)))
                continue
            note = lid if metric == "language_fidelity" else (
                format_note(vals, steps) if (metric, system) == ("format_adherence", "taco") else None)
            rows.append(system_row(pack_id, metric, system, vals, base_vals, note))
            flat |= flat_of(name, rows[-1])
    rows += versus_plain(pack_id, scores, reasons)
    return rows, flat


def versus_plain(pack_id: str, scores: dict, reasons: dict) -> list[dict]:
    """TaCo's answer chrF against plain instruction tuning on the same prompts (the paper's claim)."""
    taco, plain = ((scores.get(s) or {}).get("answer_chrf") for s in ("taco", "plain"))
    if "taco" in reasons or "plain" in reasons or not taco or not plain or len(taco) != len(plain):
        return []
    return [compare_row(pack_id, "answer_chrf", "taco", taco, plain, "plain")]


def flat_of(name: str, r: dict) -> dict:
    out = {name: r["value"], f"{name}_lo": r["ci_low"], f"{name}_hi": r["ci_high"], f"{name}_n": r["n"]}
    if r.get("delta_ci_low") is not None:
        out |= {f"{name}_delta": r["delta"], f"{name}_delta_lo": r["delta_ci_low"], f"{name}_delta_hi": r["delta_ci_high"]}
    return out


def unavailable(pack_id: str, items: list[dict], cfg: dict, meta: dict) -> dict[str, str]:
    """Systems that cannot be evaluated, with the reason."""
    status_path = sft_dir(pack_id) / "status.json"
    status = io.read_json(status_path) if status_path.exists() else {"trained": False, "reason": "taco_sft has not run"}
    reasons = {}
    if not status["trained"]:
        reasons |= {"plain": status["reason"], "taco": status["reason"]}
    if len(items) < cfg["min_eval"]:
        why = (f"only {len(items)} evaluation prompts (held-out prompts must pass the round-trip gate; need "
               f"{cfg['min_eval']}); translator {meta['translator']}, mean round-trip chrF {meta['round_trip_chrf_mean']}")
        reasons = {s: why for s in SYSTEMS}
    return reasons


def sft_steps(pack_id: str) -> int | None:
    path = sft_dir(pack_id) / "status.json"
    res = (io.read_json(path).get("results") or {}).get("taco", {}) if path.exists() else {}
    return res.get("steps")


def evaluate(pack: LanguagePack, base: str, items: list[dict], prompts: dict, reasons: dict, cfg: dict,
             budget: int) -> tuple[dict, list[dict], dict]:
    """Every available system on the same prompts: (scores, per-output samples, timing and lengths)."""
    scores, samples, extra = {}, [], {}
    for system in SYSTEMS:
        if system in reasons:
            continue
        outputs, parsed, in_lang, n_tok, secs = run_system(system, base, pack, prompts[system], cfg, budget)
        scores[system] = item_scores(items, parsed, in_lang, system)
        scores[system]["judge_score"] = judge_scores(cfg.get("judge"), pack, items, [p["answer"] for p in parsed])
        extra |= {f"generate_s_{system}": round(secs, 1), f"output_tokens_mean_{system}": float(np.mean(n_tok)),
                  f"hit_budget_{system}": float(np.mean([n >= budget for n in n_tok]))}
        samples += [{"system": system, "id": it["id"], "prompt": pr, "output": o, "output_tokens": t, **p,
                     "in_language": ok} for it, pr, o, t, p, ok in zip(items, prompts[system], outputs, n_tok, parsed, in_lang)]
    return scores, samples, extra


def budget_row(pack_id: str, info: dict, extra: dict, quantile) -> dict:
    """The decoding budget as a context row: how it was set, and how many outputs hit it."""
    hits = ", ".join(f"{s} {extra[f'hit_budget_{s}']:.0%}" for s in SYSTEMS if f"hit_budget_{s}" in extra)
    src = info["source"]
    how = "fixed by params" if src == "fixed" else (
        f"p{quantile} of {src} TaCo target tokens (median {info.get(f'target_tokens_{src}_median', 0):.0f}, "
        f"p95 {info.get(f'target_tokens_{src}_p95', 0):.0f}) plus margin, cap {info['cap']}")
    return row(pack_id, "language", STAGE, "decoding_budget", info["budget"],
               note=f"new tokens, the same for every system: {how}; outputs that hit it: {hits or 'none run'}")


def budget_metrics(info: dict) -> dict:
    """Budget facts for the metrics file (numbers only: the source becomes flags)."""
    out = {k: v for k, v in info.items() if k not in ("source", "cap", "capped")}
    out |= {"budget_cap": info.get("cap"), "budget_capped": info.get("capped"),
            **{f"budget_from_{s}": info["source"] == s for s in ("train", "heldout", "fallback", "fixed")}}
    return {k: v for k, v in out.items() if v is not None}


def run(pack_id: str, cfg: dict | None = None) -> None:
    start = time.time()
    pack, cfg = load_language(pack_id), cfg or section("taco")
    folder = data_dir(pack_id)
    meta = io.read_json(folder / "taco_meta.json")
    held = io.read_jsonl(folder / "taco_heldout.jsonl")
    items, source = eval_items(pack, held)
    base = cfg.get("base") or section("model")["base"]
    reasons = unavailable(pack_id, items, cfg, meta)
    items = pick_items(items, cfg["eval"]["max_prompts"], cfg["eval"]["seed"])
    prompts = system_prompts(pack, items)
    info = decoding_budget(base, io.read_jsonl(folder / "taco.jsonl"), held, prompts["base"] + prompts["plain"], cfg) \
        if len(reasons) < len(SYSTEMS) else {"budget": 0, "source": "none"}
    scores, samples, extra = evaluate(pack, base, items, prompts, reasons, cfg, info["budget"])
    rows, flat = rows_for(pack_id, scores, reasons, source, bool(cfg.get("judge")), lid_note(pack_id),
                          sft_steps(pack_id))
    if info["budget"]:
        rows.append(budget_row(pack_id, info, extra, (cfg["eval"].get("budget") or {}).get("quantile")))
    io.write_jsonl(results_dir(pack_id) / "taco_eval_outputs.jsonl", samples)
    metrics = {"prompts": len(items), **flat, **extra, **budget_metrics(info), "wall_s": round(time.time() - start, 1)}
    sig = signature(stage=STAGE, pack=pack_id, base=base, source=source, eval=cfg["eval"], budget=info["budget"],
                    judge=f"{cfg.get('judge')}:{JUDGE_TEMPLATE.id}" if cfg.get("judge") else None,
                    translator=meta["translator"], heldout=sha256_file(folder / "taco_heldout.jsonl")[:12],
                    templates="+".join(t.id for t in templates_of(pack).values()))
    write_stage(pack_id, STAGE, metrics, rows, sig)


if __name__ == "__main__":
    from stages._cli import stage_main

    raise SystemExit(stage_main(run, __doc__))
