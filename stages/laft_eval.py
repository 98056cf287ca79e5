"""laft_eval@<lang>: bits per byte of held-out text for the base model, LAFT and MAFT.

Bits per byte (total NLL in bits / UTF-8 bytes) is tokenizer-independent: it compares models
with different vocabularies, and languages with different tokenizer fertility, on the same
footing. Each sentence is scored on its own, given only BOS. Two held-out domains:
- `ntrex`: `laft_eval.sentences` NTREX test sentences spread over ALL test documents
  (pipeline.stats.stratified_sample, seeded; never a prefix): in-domain, since ~95% of the
  LAFT corpus is NTREX train documents;
- `udhr`: the held-out UDHR articles (`laft.udhr_heldout`), removed from every LAFT/MAFT
  corpus by laft_corpus: out-of-domain.
Sides: the target language (did adaptation help?), English and MAFT's high-resource languages
(`maft.high_resource`: did it cost them? a rise is forgetting).

Every interval resamples documents (NTREX) or articles (UDHR) whole, with the small-G
corrected bootstrap of pipeline.stats; every difference (LAFT - base, MAFT - base, MAFT -
LAFT, forgetting) is a report.comparison row with its paired interval, verdict, n and n_docs.
MAFT - base on English and the high-resource languages is the same for every language: it is
in `maft`'s rows (pack _shared). MAFT-vs-LAFT rows state the target-language tokens each saw.

Also the base tokenizer's fertility, characters per token and byte-fallback share, target
against English: why a language costs more tokens.

Writes results/<lang>/laft_eval.{json,rows.json}; lower bits per byte is better.
"""

from __future__ import annotations

from pathlib import Path

from pipeline import io
from pipeline.config import base_model, section
from pipeline.laft import (
    TOKENIZER_METRICS,
    Scorer,
    bpb_rows,
    eval_sample,
    forgetting_codes,
    language_sets,
    pack_udhr_sources,
    rows_bytes,
    score_sets,
    tokenizer_stats,
    udhr_eval_rows,
)
from pipeline.paths import data_dir, repo_root, results_dir
from pipeline.provenance import sha256_file, signature
from pipeline.report import SHARED, row, write_stage

STAGE = "laft_eval"
VARIANTS = ("base", "laft", "maft")
TARGET_COMPARE = (("laft", "base"), ("maft", "base"), ("maft", "laft"))
OTHER_COMPARE = (("laft", "base"), ("maft", "laft"))  # MAFT - base there: maft's own rows


def adapter_dir(variant: str, pack_id: str) -> Path | None:
    root = repo_root() / "models"
    return None if variant == "base" else (root / pack_id / "laft" if variant == "laft" else root / "maft") / "adapter"


def target_sets(pack_id: str, cfg: dict, udhr_cfg: dict) -> dict:
    """{("ntrex", "target"): sampled test rows, ("udhr", "target"): held-out UDHR paragraphs}, rows {doc, text}."""
    test = eval_sample(io.read_jsonl(data_dir(pack_id) / "test.jsonl"), cfg["sentences"], cfg["seed"])
    udhr = udhr_eval_rows(pack_udhr_sources(pack_id), udhr_cfg, f"languages/{pack_id}.yaml")
    return {("ntrex", "target"): [{"doc": r["doc"], "text": r["tgt"]} for r in test], ("udhr", "target"): udhr}


def eval_sets(pack_id: str, cfg: dict) -> dict:
    """Target sets, then English's and each high-resource language's (the sets `maft` scores)."""
    udhr_cfg, data_cfg = section("laft")["udhr_heldout"], section("data")
    sets = target_sets(pack_id, cfg, udhr_cfg)
    for code in forgetting_codes(section("maft")):
        sets |= {(domain, code): rows for domain, rows in language_sets(code, cfg, udhr_cfg, data_cfg).items()}
    return sets


def score_variants(pack_id: str, base: str, sets: dict, batch_size: int, metrics: dict) -> dict:
    """{variant: {set key: per-sentence bits}} for every variant whose weights exist."""
    bits = {}
    for variant in VARIANTS:
        adapter = adapter_dir(variant, pack_id)
        if adapter is not None and not adapter.exists():
            continue
        scorer = Scorer(base, adapter, batch_size)
        bits[variant] = score_sets(scorer, sets)
        metrics[f"wall_s_{variant}"], metrics[f"scored_{variant}"] = scorer.wall_s, scorer.scored
        scorer.close()
    return bits


def token_note(pack_id: str) -> str:
    """What MAFT-vs-LAFT rows compare: equal steps, not equal target-language tokens (issue 13.3)."""
    laft = io.read_json(results_dir(pack_id) / "laft.json") if (results_dir(pack_id) / "laft.json").exists() else {}
    maft_path = results_dir(SHARED) / "maft.json"
    maft = io.read_json(maft_path) if maft_path.exists() else {}
    key = f"tokens_{pack_id}"
    if key not in laft or key not in maft:
        return "tokens seen in training not recorded (rerun laft and maft)"
    ratio = maft[key] / max(laft[key], 1)
    equal = "at about equal" if abs(ratio - 1) <= 0.05 else "NOT at equal"
    return (f"{equal} target-language tokens: MAFT saw {maft[key]:,} {pack_id} tokens in training, LAFT "
            f"{laft[key]:,} ({ratio:.2f}x), in {maft.get('steps', '?')} vs {laft.get('steps', '?')} steps")


def bpb_all(pack_id: str, sets: dict, bits: dict, metrics: dict) -> list[dict]:
    """Rows bpb_<domain>_<side>_<variant> for every scored set."""
    missing = {v: f"no {v.upper()} weights at {adapter_dir(v, pack_id)}" for v in VARIANTS[1:] if v not in bits}
    out = []
    for (domain, side), rows in sets.items():
        if not rows:  # only UDHR can be missing: the pack (or resources/udhr.tsv) names no translation
            out.append(row(pack_id, "language", STAGE, f"bpb_{domain}_{side}_base", None, higher_is_better=False,
                           note=f"no held-out {domain.upper()} text for {side}: no udhr-html source"))
            continue
        target = side == "target"
        notes = {("maft", "laft"): token_note(pack_id)} if "maft" in bits and "laft" in bits else {}
        if not target:
            notes[("laft", "base")] = f"forgetting of {side}: a rise in bits per byte is a loss"
        got, more = bpb_rows(pack_id, STAGE, f"bpb_{domain}_{side}", {v: b[(domain, side)] for v, b in bits.items()},
                             rows_bytes(rows), [r["doc"] for r in rows], TARGET_COMPARE if target else OTHER_COMPARE,
                             notes=notes, missing=missing)
        out += got
        metrics |= more | {f"sentences_{domain}_{side}": len(rows), f"documents_{domain}_{side}": len({r['doc'] for r in rows}),
                           f"bytes_{domain}_{side}": float(rows_bytes(rows).sum())}
    return out


def tokenizer_rows(pack: str, tok, sets: dict, metrics: dict) -> list[dict]:
    """Fertility, characters per token and byte-fallback share on the NTREX sample, target and English
    (the parallel sentences): context for reading bits per byte across languages, not a comparison
    of methods, so no baseline or delta (those rows carry paired intervals and verdicts)."""
    texts = {"target": sets[("ntrex", "target")], "english": sets[("ntrex", "eng")]}
    stats = {side: tokenizer_stats(tok, [r["text"] for r in rows]) for side, rows in texts.items()}
    out = []
    for key, hib in TOKENIZER_METRICS.items():
        for side in ("english", "target"):
            metrics[f"{key}_{side}"] = stats[side][key]
            note = (f"context: English on the parallel sentences {stats['english'][key]:.3g}" if side == "target"
                    else None)
            out.append(row(pack, "language", STAGE, f"{key}_{side}", stats[side][key], n=stats[side]["words"],
                           higher_is_better=hib, note=note))
    metrics |= {f"tokens_{side}": s["tokens"] for side, s in stats.items()}
    return out


def run(pack_id: str) -> None:
    cfg = section(STAGE)
    base = base_model(cfg)
    sets = eval_sets(pack_id, cfg)
    metrics = {"documents": len({r["doc"] for r in sets[("ntrex", "target")]}),
               "sentences": len(sets[("ntrex", "target")])}
    bits = score_variants(pack_id, base, sets, cfg["batch_size"], metrics)
    out_rows = bpb_all(pack_id, sets, bits, metrics)
    from pipeline.models import load_tokenizer

    out_rows += tokenizer_rows(pack_id, load_tokenizer(base), sets, metrics)
    weights = {v: sha256_file(f)[:12] for v in VARIANTS[1:] if v in bits
               for f in sorted(adapter_dir(v, pack_id).glob("*.safetensors"))}
    sig = signature(stage=STAGE, pack=pack_id, base=base, cfg=cfg, udhr=section("laft")["udhr_heldout"],
                    high_resource=",".join(forgetting_codes(section("maft"))),
                    test=sha256_file(data_dir(pack_id) / "test.jsonl")[:12], **weights)
    write_stage(pack_id, STAGE, metrics, out_rows, sig)


if __name__ == "__main__":
    from stages._cli import stage_main

    raise SystemExit(stage_main(run, __doc__))
