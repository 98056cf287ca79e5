"""taco_data@<lang>: translate English instructions into the pack's language, build TaCo targets.

TaCo (Upadhayay & Behzadan) trains on a three-part target: the instruction rendered in
English, the answer in English, the answer in the target language. Steps:

1. Read the pack's English instruction sets (`sources.instructions`; Self-Instruct style
   `instruction` + `instances[0].input/output`, or Alpaca/Dolly style), count and drop empty,
   duplicate and too-long items (`taco.max_chars`).
2. Fixed held-out split: items ordered by sha256(split_salt + id), the first
   `heldout_fraction` held out (depends only on the ids, so it never reshuffles).
3. Translate instruction and answer with the pack's first available translator
   (pipeline.translate; cached), then back into English. Quality gate: round-trip chrF of
   (instruction + answer) back-translated vs the English original, stored with each
   sample; samples under the threshold, or whose translation failed (empty / wrong
   language), are dropped and counted. An early stop saves hours on hopeless translators:
   items go shortest first, and once `probe` items are done, if even the upper 95% Wilson
   bound of the pass rate projects fewer than `min_samples` training samples, the stage
   stops and says so.
4. Curriculum (`taco.curriculum`): `length` orders training samples easy-first by the
   characters of the TaCo target (shorter first; ties: higher round-trip chrF first);
   `quality` by round-trip chrF, best first; `none` keeps the split order.

Writes data/<lang>/taco.jsonl (training samples, curriculum order), data/<lang>/taco_heldout.jsonl,
data/<lang>/taco_meta.json (translator, counts, gate, `usable` and the reason when not) and
results/<lang>/taco_data.json (+ rows). Round-trip chrF caveat: a rule-based pair translated
back by its own reverse pair shares dictionaries, so round trips flatter it; the gate is a
filter for garbage, not a quality score.
"""

from __future__ import annotations

import math
import time
import unicodedata
from collections import Counter

from tqdm import tqdm

from pipeline import io
from pipeline.config import section
from pipeline.errors import PolyalignError
from pipeline.packs import LanguagePack, load_language
from pipeline.paths import data_dir
from pipeline.provenance import sha256_text, signature
from pipeline.report import row, write_stage
from pipeline.sources import read
from pipeline.stats import bootstrap_ci
from pipeline.taco import TEMPLATE_KEYS, chrf, plain_example, taco_example, templates_of
from pipeline.translate import BACKWARD, FORWARD, Translator

STAGE = "taco_data"


# --------------------------------------------------------------------------- instructions
def _nfc(text) -> str:
    lines = unicodedata.normalize("NFC", str(text or "")).split("\n")
    return "\n".join(line.rstrip() for line in lines).strip()


def normalise_record(rec: dict, fallback_id: str) -> dict:
    """Self-Instruct ({instruction, instances:[{input, output}]}), Alpaca or Dolly record ->
    {id, instruction_en, response_en}; the input (context) joins the instruction on a new line."""
    inst = (rec.get("instances") or [{}])[0]
    task = _nfc(rec.get("instruction"))
    extra = _nfc(inst.get("input") or rec.get("input") or rec.get("context"))
    answer = _nfc(inst.get("output") or rec.get("output") or rec.get("response"))
    return {"id": str(rec.get("id") or fallback_id), "instruction_en": task + ("\n" + extra if extra else ""),
            "response_en": answer}


def load_instructions(pack: LanguagePack) -> list[dict]:
    origin = f"languages/{pack.id}.yaml"
    rows = []
    for i, source in enumerate(pack.sources.instructions):
        for j, rec in enumerate(read(source, origin=origin)):
            rows.append(normalise_record(rec, f"src{i}_{j}"))
    return rows


def clean(rows: list[dict], max_chars: int) -> tuple[list[dict], Counter]:
    """Drop (and count) empty, duplicate and too-long items; the first of duplicates is kept."""
    kept, counts, seen = [], Counter(), set()
    for r in rows:
        key = " ".join(r["instruction_en"].lower().split())
        if not r["instruction_en"] or not r["response_en"]:
            counts["empty"] += 1
        elif key in seen:
            counts["duplicate"] += 1
        elif len(r["instruction_en"]) + len(r["response_en"]) > max_chars:
            counts["too_long"] += 1
        else:
            seen.add(key)
            kept.append(r)
    return kept, counts


def split_order(rows: list[dict], salt: str) -> list[dict]:
    """Rows in the fixed order sha256(salt + id): a function of the ids alone."""
    return sorted(rows, key=lambda r: sha256_text(f"{salt}{r['id']}"))


def n_heldout(n: int, fraction: float) -> int:
    return min(n, max(1, round(n * fraction))) if n else 0


# --------------------------------------------------------------------------- gate and curriculum
def round_trip_text(s: dict) -> tuple[str, str]:
    """(back-translation, original): instruction and answer together, so long answers weigh more."""
    return f"{s['rt_instruction_en']}\n{s['rt_response_en']}", f"{s['instruction_en']}\n{s['response_en']}"


def gate(samples: list[dict], threshold: float) -> tuple[list[dict], Counter]:
    """Keep samples whose translation succeeded and whose round-trip chrF >= threshold."""
    kept, drops = [], Counter()
    for s in samples:
        if s["failure"]:
            drops[f"failed_{s['failure']}"] += 1
        elif s["rt_chrf"] < threshold:
            drops["below_gate"] += 1
        else:
            kept.append(s)
    return kept, drops


def curriculum(samples: list[dict], how: str) -> list[dict]:
    """Training order; writes `curriculum_score` (lower = earlier) into each sample."""
    if how not in ("length", "quality", "none"):
        raise PolyalignError("params.yaml", "taco.curriculum", f"unknown curriculum '{how}'",
                             "use length, quality or none")
    for i, s in enumerate(samples):
        s["curriculum_score"] = {"length": len(s["taco"]["response"]), "quality": -s["rt_chrf"], "none": i}[how]
    return sorted(samples, key=lambda s: (s["curriculum_score"], -s["rt_chrf"], s["id"]))


def wilson_upper(k: int, n: int, z: float = 1.96) -> float:
    """Upper end of the Wilson score interval for a proportion k/n (1.0 when n == 0)."""
    if n == 0:
        return 1.0
    p = k / n
    centre = p + z * z / (2 * n)
    spread = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n))
    return min(1.0, (centre + spread) / (1 + z * z / n))


def hopeless(passed: int, done: int, n_train: int, min_samples: int, probe: int) -> bool:
    """After `probe` items, stop if even the optimistic pass rate cannot reach `min_samples`."""
    return done >= probe and wilson_upper(passed, done) * n_train < min_samples


# --------------------------------------------------------------------------- translation
STEPS = (("instruction_en", "instruction", FORWARD), ("response_en", "response", FORWARD),
         ("instruction", "rt_instruction_en", BACKWARD), ("response", "rt_response_en", BACKWARD))


def translate_chunk(rows: list[dict], tr: Translator, counts: Counter) -> list[dict]:
    """Translate instruction and answer, back-translate both, score the round trip.

    An item stops at its first failed forward step: it is dropped anyway, so its answer is
    not translated and nothing is back-translated (most of the cost of a hopeless
    translator). `rt_chrf` is None for such items.
    """
    out = [dict(r, instruction="", response="", rt_instruction_en="", rt_response_en="", failure="",
                back_ok=True) for r in rows]
    for src, dst, direction in STEPS:
        todo = [s for s in out if not s["failure"]]
        if not todo:
            break
        t = tr.translate([s[src] for s in todo], direction)
        name = "forward" if direction == FORWARD else "backward"
        counts.update({f"{name}_{kind}": n for kind, n in t.failures.items()})
        counts["segments_translated"] += t.translated
        counts["segments_cached"] += t.cached
        for s, text, ok in zip(todo, t.outputs, t.ok):
            s[dst] = text
            if not ok and direction == FORWARD:
                s["failure"] = _kind(text)
            s["back_ok"] = s["back_ok"] and (ok or direction == FORWARD)
    for s in out:
        done = not s["failure"]
        s["rt_chrf"] = round(chrf(*round_trip_text(s)), 2) if done else None
        s["rt_chrf_instruction"] = round(chrf(s["rt_instruction_en"], s["instruction_en"]), 2) if done else None
        s["rt_chrf_response"] = round(chrf(s["rt_response_en"], s["response_en"]), 2) if done else None
    return out


def _kind(output: str) -> str:
    """Failure kind of a rejected forward translation (see pipeline.translate.judge)."""
    return "empty" if not output.strip() else "wrong_language"


def threshold_for(pack: LanguagePack, cfg: dict) -> float:
    return float(pack.thresholds.get("taco_round_trip_chrf", cfg["round_trip_chrf"]))


def translate_all(rows: list[dict], tr: Translator, cfg: dict, threshold: float, n_train: int):
    """Translate in chunks of `cfg.chunk`, shortest items first, stopping early when the gate is hopeless.

    Shortest first: short items are the easiest to round-trip, so the pass rate seen so far
    errs on the optimistic side and the early stop does not give up on a translator too soon;
    and a hopeless translator is found at the lowest cost.
    """
    ordered = sorted(rows, key=lambda r: (len(r["instruction_en"]) + len(r["response_en"]), r["id"]))
    samples, counts, stopped = [], Counter(), False
    bounds = chunk_bounds(len(ordered), cfg["probe"], cfg["chunk"])
    bar = tqdm(bounds, desc=f"translate ({tr.system.split(':')[0]})", unit="chunk")
    for start, end in bar:
        samples += translate_chunk(ordered[start:end], tr, counts)
        passed = len(gate(samples, threshold)[0])
        bar.set_postfix(passed=passed, done=len(samples))
        if end < len(ordered) and hopeless(passed, len(samples), n_train, cfg["min_samples"], cfg["probe"]):
            stopped = True
            break
    return samples, counts, stopped


def chunk_bounds(n: int, probe: int, chunk: int) -> list[tuple[int, int]]:
    """[start, end) ranges: the first `probe` items (the early-stop check), then `chunk` at a time."""
    cuts = [0, *range(min(probe, n), n, max(1, chunk)), n] if probe else [*range(0, n, max(1, chunk)), n]
    return [(a, b) for a, b in zip(cuts, cuts[1:]) if b > a]


# --------------------------------------------------------------------------- the stage
# how many segments the translation cache answered: results/<lang>/taco_data.json only. In taco_meta.json
# (a dependency of taco_sft, taco_eval and rm_transfer) they made a rerun with a warm cache retrain downstream
CACHE_COUNTS = ("segments_translated", "segments_cached")


def summary(pack: LanguagePack, tr: Translator, samples: list[dict], train: list[dict], held: list[dict],
            counts: Counter, cfg: dict, threshold: float, stopped: bool) -> dict:
    """taco_meta.json: everything a downstream stage needs to explain itself."""
    rt = [s["rt_chrf"] for s in samples if s["rt_chrf"] is not None]
    usable = len(train) >= cfg["min_samples"]
    mean_rt = sum(rt) / len(rt) if rt else float("nan")
    failed = Counter(s["failure"] for s in samples if s["failure"])
    reason = "" if usable else (
        f"only {len(train)} of {cfg['min_samples']} required training samples passed the gate with translator "
        f"{tr.system}: of {len(samples)} items translated, {sum(failed.values())} failed forward translation "
        f"({', '.join(f'{k}: {v}' for k, v in sorted(failed.items())) or 'none'}), mean round-trip chrF of the "
        f"rest {mean_rt:.1f} over {len(rt)} (gate >= {threshold:g})"
        + ("; stopped early: even the optimistic pass rate cannot reach the minimum" if stopped else ""))
    return {"pack": pack.id, "translator": tr.system, "translator_kind": tr.system.split(":")[0],
            "skipped_translators": tr.skipped, "threshold": threshold, "min_samples": cfg["min_samples"],
            "usable": usable, "reason": reason, "stopped_early": stopped, "translated_items": len(samples),
            "round_trip_chrf_mean": None if not rt else round(mean_rt, 2), "train_samples": len(train),
            "heldout_samples": len(held), "counts": {k: v for k, v in counts.items() if k not in CACHE_COUNTS}}


def ci_row(pack_id: str, stage: str, metric: str, values: list[float], **kw) -> dict:
    """A scorecard row for the mean of per-item `values` with its bootstrap CI."""
    value, lo, hi = bootstrap_ci(values)
    return row(pack_id, "language", stage, metric, value, ci=(lo, hi), n=len(values), **kw)


def stage_rows(pack_id: str, samples: list[dict], meta: dict) -> list[dict]:
    """Round-trip chrF (items that got that far), gate pass rate (all translated items), sample count."""
    rt = [s["rt_chrf"] for s in samples if s["rt_chrf"] is not None]
    passed = [float(not s["failure"] and s["rt_chrf"] >= meta["threshold"]) for s in samples]
    note = f"translator {meta['translator']}" + ("" if meta["usable"] else f"; {meta['reason']}")
    rows = [ci_row(pack_id, STAGE, "round_trip_chrf", rt, note=note) if rt else
            row(pack_id, "language", STAGE, "round_trip_chrf", None, note=f"no item was round-tripped; {note}")]
    if passed:
        rows.append(ci_row(pack_id, STAGE, "gate_pass_rate", passed, note=note))
    return rows + [row(pack_id, "language", STAGE, "train_samples", meta["train_samples"], note=note)]


def run(pack_id: str, cfg: dict | None = None, translator: Translator | None = None) -> None:
    """`cfg` (params `taco`) and `translator` default to the configured ones; tests inject both."""
    start = time.time()
    pack, cfg = load_language(pack_id), cfg or section("taco")
    templates = templates_of(pack)
    raw = load_instructions(pack)
    rows, counts = clean(raw, cfg["max_chars"])
    ordered = split_order(rows, cfg["split_salt"])[: cfg.get("max_instructions") or None]
    k = n_heldout(len(ordered), cfg["heldout_fraction"])
    heldout_ids = {r["id"] for r in ordered[:k]}
    tr, threshold = translator or Translator(pack), threshold_for(pack, cfg)
    samples, tcounts, stopped = translate_all(ordered, tr, cfg, threshold, len(ordered) - k)
    counts.update(tcounts)
    for s in samples:
        s["translator"] = tr.system
        s["taco"], s["plain"] = taco_example(templates, pack, s), plain_example(templates, pack, s)
    kept, drops = gate(samples, threshold)
    counts.update(drops)
    train = curriculum([s for s in kept if s["id"] not in heldout_ids], cfg["curriculum"])
    held = [s for s in kept if s["id"] in heldout_ids]
    meta = summary(pack, tr, samples, train, held, counts, cfg, threshold, stopped)
    out = data_dir(pack_id)
    io.write_jsonl(out / "taco.jsonl", train)
    io.write_jsonl(out / "taco_heldout.jsonl", held)
    io.write_json(out / "taco_meta.json", meta)
    metrics = {"instructions_read": len(raw), "items": len(ordered), "heldout_items": k, **counts,
               "translated_items": len(samples), "train_samples": len(train), "heldout_samples": len(held),
               "round_trip_chrf_mean": meta["round_trip_chrf_mean"], "threshold": threshold,
               "usable": meta["usable"], "stopped_early": stopped, "wall_s": round(time.time() - start, 1)}
    sig = signature(stage=STAGE, pack=pack_id, translator=tr.system, cfg=cfg,
                    templates="+".join(templates[key].id for key in TEMPLATE_KEYS))
    write_stage(pack_id, STAGE, metrics, stage_rows(pack_id, samples, meta), sig)


if __name__ == "__main__":
    from stages._cli import stage_main

    raise SystemExit(stage_main(run, __doc__))
