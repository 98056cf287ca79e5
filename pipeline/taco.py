"""TaCo (Upadhayay & Behzadan): templates, rendering, strict parsing, the decoding budget, chrF.

Shared by taco_data (builds the targets), taco_sft (trains on them), taco_eval (parses what the
models write) and rm_transfer (its best-of-n policy is the TaCo model), so every stage reads the
same format the same way. Pure functions, except `sft_dir` (where taco_sft writes).

A TaCo target has three labelled parts: the instruction in English, the answer in English, the
answer in the target language. Parsing is strict: the answer is the text after the LAST label;
without that label there is no answer (an empty string and a format failure), so a chain cut
off by the decoding budget never scores its English half as if it were the answer.
"""

from __future__ import annotations

import math
import re
from pathlib import Path

import numpy as np
import sacrebleu

from pipeline.errors import PolyalignError
from pipeline.packs import LanguagePack, Template
from pipeline.paths import repo_root

TEMPLATE_KEYS = ("taco", "taco_target", "instruct")
SENTINELS = ("\x00I", "\x00E", "\x00R")


# --------------------------------------------------------------------------- templates
def render(template: Template, **fields: str) -> str:
    """Fill a versioned template; a placeholder without a value is a one-line error."""
    try:
        return template.text.format_map(fields)
    except KeyError as exc:
        raise PolyalignError("templates", template.id, f"placeholder {exc} has no value",
                             f"the template may use only {sorted(fields)}") from None


def templates_of(pack: LanguagePack) -> dict[str, Template]:
    missing = [k for k in TEMPLATE_KEYS if k not in pack.templates]
    if missing:
        raise PolyalignError(f"languages/{pack.id}.yaml", "templates", f"missing {missing}",
                             "include _common.yaml or define them")
    return {k: pack.templates[k] for k in TEMPLATE_KEYS}


def taco_example(templates: dict[str, Template], pack: LanguagePack, s: dict) -> dict:
    """{prompt, response} in the TaCo format for sample `s` (translated + English fields)."""
    prompt = render(templates["taco"], instruction=s["instruction"], tgt_name=pack.name)
    response = render(templates["taco_target"], instruction_en=s["instruction_en"], response_en=s["response_en"],
                      response=s["response"], tgt_name=pack.name)
    return {"prompt": prompt, "response": response}


def plain_example(templates: dict[str, Template], pack: LanguagePack, s: dict) -> dict:
    """{prompt, response} for plain instruction tuning on the same translated sample."""
    return {"prompt": render(templates["instruct"], instruction=s["instruction"], tgt_name=pack.name),
            "response": " " + s["response"]}


def prompts_for(pack: LanguagePack, instructions: list[str], kind: str) -> list[str]:
    """Prompts in a system's own format: kind "taco" (spells out the three steps) or "instruct"."""
    template = templates_of(pack)[kind]
    return [render(template, instruction=text, tgt_name=pack.name) for text in instructions]


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


def _label_spans(output: str, marks: tuple[str, ...]) -> list[int]:
    """Start of each label, searched in order after the previous one (-1 where absent)."""
    pos, spans = 0, []
    for mark in marks:
        at = output.find(mark, pos)
        spans.append(at)
        if at >= 0:
            pos = at + len(mark)
    return spans


def parse_taco(output: str, marks: tuple[str, str, str]) -> dict:
    """{instruction_en, response_en, answer, format_ok} from a TaCo-format continuation (strict).

    answer: the runaway-trimmed text after the final label; "" when that label is missing
    (never the whole output: chrF would reward the English half). format_ok: all three labels,
    in order, and a non-empty answer.
    """
    spans = _label_spans(output, marks)
    parts = []
    for k, (mark, at) in enumerate(zip(marks, spans)):
        end = next((s for s in spans[k + 1:] if s >= 0), len(output))
        parts.append(None if at < 0 else output[at + len(mark):end].strip())
    answer = cut_runaway(parts[2]) if parts[2] is not None else ""
    ok = all(s >= 0 for s in spans) and bool(answer)
    return {"instruction_en": parts[0] or "", "response_en": parts[1] or "", "answer": answer, "format_ok": ok}


def parse_plain(output: str) -> dict:
    return {"instruction_en": "", "response_en": "", "answer": cut_runaway(output), "format_ok": None}


# --------------------------------------------------------------------------- decoding budget
def length_summary(lengths: list[int]) -> dict:
    """Median, p90, p95 and max of token lengths [n] (empty: zeros)."""
    x = np.asarray(lengths, dtype=float)
    if not x.size:
        return {"n": 0, "median": 0, "p90": 0, "p95": 0, "max": 0}
    return {"n": int(x.size), "median": float(np.median(x)), "p90": float(np.percentile(x, 90)),
            "p95": float(np.percentile(x, 95)), "max": int(x.max())}


def budget_from_lengths(lengths: list[int], *, quantile: float, margin: float, cap: int, floor: int = 1) -> int:
    """Decoding budget (new tokens) from target token lengths [n]: the `quantile` (0..100) times
    (1 + margin), at least `floor`, at most `cap` (the model's context left after the prompt)."""
    if not lengths:
        return max(1, min(floor, cap))
    q = float(np.percentile(np.asarray(lengths, dtype=float), quantile))
    return int(max(1, min(cap, max(floor, math.ceil(q * (1 + margin))))))


def token_lengths(tok, texts: list[str]) -> list[int]:
    """Tokens of each text plus one (the end token a target needs; the start token of a prompt)."""
    return [len(tok(t, add_special_tokens=False)["input_ids"]) + 1 for t in texts]


def context_length(base: str) -> int | None:
    """The base model's context (max_position_embeddings of its config, or of its text config)."""
    from transformers import AutoConfig

    from pipeline.models import materialise

    conf = AutoConfig.from_pretrained(materialise(base))
    conf = getattr(conf, "text_config", None) or conf
    return getattr(conf, "max_position_embeddings", None)


def budget_info(tok, context: int | None, train: list[str], held: list[str], prompts: list[str], ev: dict) -> dict:
    """The decoding budget of TaCo-format generation and what it was measured from.

    ev (params taco.eval): `max_new_tokens` an integer is a fixed budget (tests, smoke); `auto`
    takes the token lengths of the TaCo training targets `train` (held-out targets `held` when
    there are none, `budget.fallback` when neither exists) through budget_from_lengths, capped by
    the context left after the longest prompt and by `budget.max` when set."""
    lens = {"train": token_lengths(tok, train), "heldout": token_lengths(tok, held)}
    info = {f"target_tokens_{k}_{stat}": v for k, ls in lens.items() for stat, v in length_summary(ls).items()}
    if ev["max_new_tokens"] != "auto":
        return {"budget": int(ev["max_new_tokens"]), "source": "fixed", **info}
    b = ev["budget"]
    ctx = context or 10**6
    cap = min(ctx - max(token_lengths(tok, prompts), default=0), b.get("max") or ctx)
    source = "train" if lens["train"] else ("heldout" if lens["heldout"] else "fallback")
    lengths = lens[source] if source != "fallback" else [int(b["fallback"])]
    budget = budget_from_lengths(lengths, quantile=b["quantile"], margin=b["margin"], cap=cap)
    return {"budget": budget, "source": source, "cap": cap, "capped": budget >= cap, **info}


# --------------------------------------------------------------------------- metrics
def chrf(hyp: str, ref: str) -> float:
    """Sentence chrF (sacrebleu defaults: char 6-grams, beta 2), 0..100."""
    return float(sacrebleu.sentence_chrf(hyp, [ref]).score)


# --------------------------------------------------------------------------- paths
def sft_dir(pack_id: str) -> Path:
    """Where taco_sft@<pack> writes its adapters ({taco,plain}/adapter) and status.json."""
    return repo_root() / "models" / pack_id / "taco_sft"
