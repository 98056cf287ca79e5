"""taco_eval@<lang>: base vs plain instruction tuning vs TaCo, identical greedy decoding.

Prompts in the pack's language: the pack's `sources.eval_prompts` when set (TaCo's
translated Vicuna-80 for npi; English originals from `sources.eval_prompts_en`, aligned by
id, when the pack has them), else taco_data's held-out translated instructions (which also
carry a translated reference answer).

Systems and prompts: `base` (the untuned model) and `taco` get the TaCo prompt, which spells
out the three steps, so format adherence is defined for both; `plain` gets the plain
instruct prompt it was trained on. Same `max_new_tokens`, greedy, same batch size.

Metrics per system (mean over prompts, 95% bootstrap CI, pipeline.stats):
- `language_fidelity`: final answer in the pack's language by its identifier;
- `format_adherence`: all three TaCo parts present, in order, with a non-empty answer
  (taco/base only: plain has no such format);
- `english_rendering_chrf`: chrF of the model's English rendering of the instruction vs
  the English original (taco/base; needs English originals);
- `answer_chrf`: chrF of the final answer vs the translated reference answer (needs references);
- `judge_score`: an LLM judge's 1-10 score when `taco.judge` names a model; else null, noted.
Rows carry the base model's value as their baseline. Systems that could not be trained
(taco_sft status) get null rows with the reason.
"""

from __future__ import annotations

import re
import time

from pipeline import io
from pipeline.config import section
from pipeline.packs import LanguagePack, Template, load_language
from pipeline.paths import data_dir, results_dir
from pipeline.provenance import sha256_file, signature
from pipeline.report import lid_note, row, write_stage
from pipeline.sources import read
from pipeline.stats import bootstrap_ci, paired_delta_ci
from stages.taco_data import chrf, render, templates_of
from stages.taco_sft import out_dir as sft_dir

STAGE = "taco_eval"
SYSTEMS = ("base", "plain", "taco")
METRICS = ("language_fidelity", "format_adherence", "english_rendering_chrf", "answer_chrf", "judge_score")
FORMAT_SYSTEMS = ("base", "taco")  # prompted with the TaCo format
SENTINELS = ("\x00I", "\x00E", "\x00R")
JUDGE_TEMPLATE = Template(id="judge_v1", text="Rate how well the answer follows the instruction, in {tgt_name}, "
                          "from 1 to 10.\nInstruction: {instruction}\nAnswer: {answer}\nScore:")


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
    """Evaluation items {id, prompt, instruction_en|None, reference|None} and where they came from."""
    origin = f"languages/{pack.id}.yaml"
    if pack.sources.eval_prompts is not None:
        extra = pack.sources.eval_prompts_en
        english = dict(prompt_pairs(read(extra, origin=origin))) if extra is not None else {}
        items = [{"id": i, "prompt": t, "instruction_en": english.get(i), "reference": None}
                 for i, t in prompt_pairs(read(pack.sources.eval_prompts, origin=origin))]
        return items, "eval_prompts"
    items = [{"id": s["id"], "prompt": s["instruction"], "instruction_en": s["instruction_en"],
              "reference": s["response"]} for s in heldout]
    return items, "taco_heldout"


def system_prompts(pack: LanguagePack, items: list[dict]) -> dict[str, list[str]]:
    t = templates_of(pack)
    taco = [render(t["taco"], instruction=it["prompt"], tgt_name=pack.name) for it in items]
    plain = [render(t["instruct"], instruction=it["prompt"], tgt_name=pack.name) for it in items]
    return {"base": taco, "plain": plain, "taco": taco}


# --------------------------------------------------------------------------- parsing
def markers(pack: LanguagePack) -> tuple[str, str, str]:
    """The three part labels of the pack's taco_target template (derived, so a new version still parses)."""
    text = render(templates_of(pack)["taco_target"], instruction_en=SENTINELS[0], response_en=SENTINELS[1],
                  response=SENTINELS[2], tgt_name=pack.name)
    first, rest = text.split(SENTINELS[0])
    second, rest = rest.split(SENTINELS[1])
    third = rest.split(SENTINELS[2])[0]
    return first.strip(), second.strip(), third.strip()


def cut_runaway(text: str) -> str:
    """Drop what a model writes after its answer: a new 'Instruction...' block starts a new example."""
    return re.split(r"\n\s*Instruction\b", text, maxsplit=1)[0].strip()


def parse_taco(output: str, marks: tuple[str, str, str]) -> dict:
    """{instruction_en, response_en, answer, format_ok} from a TaCo-format continuation.

    format_ok: the three labels appear in order and the final answer is non-empty. Without
    the final label the whole (runaway-trimmed) output counts as the answer: that is what a
    user would read.
    """
    pos, spans = 0, []
    for mark in marks:
        at = output.find(mark, pos)
        spans.append(at)
        if at >= 0:
            pos = at + len(mark)
    parts = {}
    for k, (mark, at) in enumerate(zip(marks, spans)):
        if at < 0:
            parts[k] = None
            continue
        end = next((s for s in spans[k + 1:] if s >= 0), len(output))
        parts[k] = output[at + len(mark):end].strip()
    answer = cut_runaway(parts[2]) if parts[2] is not None else cut_runaway(output)
    ok = all(s >= 0 for s in spans) and bool(answer)
    return {"instruction_en": parts[0] or "", "response_en": parts[1] or "", "answer": answer, "format_ok": ok}


def parse_plain(output: str) -> dict:
    return {"instruction_en": "", "response_en": "", "answer": cut_runaway(output), "format_ok": None}


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


def run_system(name: str, base: str, pack: LanguagePack, items: list[dict], prompts: list[str], cfg: dict):
    """Generate with one system; return (outputs, parsed, in_language, seconds)."""
    from pipeline.generate import generate
    from pipeline.seeding import seed_everything
    from pipeline.text import is_lang

    start = time.time()
    seed_everything(cfg["eval"]["seed"])
    model, tok = load_system(name, base, pack.id)
    outputs = generate(model, tok, prompts, max_new_tokens=cfg["eval"]["max_new_tokens"],
                       batch_size=cfg["eval"]["batch_size"])
    del model
    marks = markers(pack)
    parsed = [parse_taco(o, marks) if name in FORMAT_SYSTEMS else parse_plain(o) for o in outputs]
    answers = [p["answer"] for p in parsed]
    nonempty = [i for i, a in enumerate(answers) if a]
    verdict = dict(zip(nonempty, is_lang([answers[i] for i in nonempty], pack))) if nonempty else {}
    in_lang = [verdict.get(i, False) for i in range(len(answers))]
    return outputs, parsed, in_lang, time.time() - start


def rows_for(pack_id: str, scores: dict[str, dict], reasons: dict[str, str], source: str, judge_on: bool,
             lid: str | None) -> tuple[list[dict], dict]:
    """Scorecard rows and flat metrics for every (metric, system), base as the baseline."""
    rows, flat = [], {}
    for metric in METRICS:
        base_vals = (scores.get("base") or {}).get(metric)
        base_value = bootstrap_ci(base_vals)[0] if base_vals else None
        for system in SYSTEMS:
            name = f"{metric}_{system}"
            vals = (scores.get(system) or {}).get(metric)
            if system in reasons:
                note = f"not evaluated: {reasons[system]}"
            elif metric == "judge_score" and not judge_on:
                note = "skipped: no judge model configured (params taco.judge)"
            elif not vals:
                note = why_missing(metric, system, source)
            else:
                note = lid if metric == "language_fidelity" else None
                value, lo, hi = bootstrap_ci(vals)
                flat |= {name: value, f"{name}_lo": lo, f"{name}_hi": hi, f"{name}_n": len(vals)}
                if system != "base" and base_vals and len(base_vals) == len(vals):
                    d, dlo, dhi = paired_delta_ci(vals, base_vals)
                    flat |= {f"{name}_delta": d, f"{name}_delta_lo": dlo, f"{name}_delta_hi": dhi}
                rows.append(row(pack_id, "language", STAGE, name, value, ci=(lo, hi), n=len(vals), note=note,
                                baseline=None if system == "base" else base_value))
                continue
            rows.append(row(pack_id, "language", STAGE, name, None, note=note))
    return rows, flat


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


def run(pack_id: str, cfg: dict | None = None) -> None:
    start = time.time()
    pack, cfg = load_language(pack_id), cfg or section("taco")
    folder = data_dir(pack_id)
    meta = io.read_json(folder / "taco_meta.json")
    items, source = eval_items(pack, io.read_jsonl(folder / "taco_heldout.jsonl"))
    base = cfg.get("base") or section("model")["base"]
    reasons = unavailable(pack_id, items, cfg, meta)
    items = items[: cfg["eval"]["max_prompts"]]
    prompts = system_prompts(pack, items)
    scores, samples, timing = {}, [], {}
    for system in SYSTEMS:
        if system in reasons:
            continue
        outputs, parsed, in_lang, secs = run_system(system, base, pack, items, prompts[system], cfg)
        scores[system] = item_scores(items, parsed, in_lang, system)
        judged = judge_scores(cfg.get("judge"), pack, items, [p["answer"] for p in parsed])
        scores[system]["judge_score"] = judged
        timing[f"generate_s_{system}"] = round(secs, 1)
        samples += [{"system": system, "id": it["id"], "prompt": pr, "output": o, **p, "in_language": ok}
                    for it, pr, o, p, ok in zip(items, prompts[system], outputs, parsed, in_lang)]
    rows, flat = rows_for(pack_id, scores, reasons, source, bool(cfg.get("judge")), lid_note(pack_id))
    io.write_jsonl(results_dir(pack_id) / "taco_eval_outputs.jsonl", samples)
    metrics = {"prompts": len(items), **flat, **timing, "wall_s": round(time.time() - start, 1)}
    sig = signature(stage=STAGE, pack=pack_id, base=base, source=source, eval=cfg["eval"],
                    judge=f"{cfg.get('judge')}:{JUDGE_TEMPLATE.id}" if cfg.get("judge") else None,
                    translator=meta["translator"], heldout=sha256_file(folder / "taco_heldout.jsonl")[:12],
                    templates="+".join(t.id for t in templates_of(pack).values()))
    write_stage(pack_id, STAGE, metrics, rows, sig)


if __name__ == "__main__":
    from stages._cli import stage_main

    raise SystemExit(stage_main(run, __doc__))
