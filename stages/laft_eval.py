"""laft_eval@<lang>: bits per byte of held-out text for the base model, LAFT and MAFT.

Bits per byte (total NLL in bits / UTF-8 bytes) is tokenizer-independent: it compares models
with different vocabularies, and languages with different tokenizer fertility, on the same
footing. Scored text: the NTREX test documents of data/<lang>/test.jsonl, target side
(`tgt`: did adaptation help?) and English side (`en`: what did it cost in English?). Each
sentence is scored on its own, given only BOS, and its bits are summed per document; the
95% CIs are bootstraps over documents (sentences of one article are not independent), and
differences between models are paired over the same documents.

Also the base tokenizer's fertility (tokens per whitespace word), characters per token and
byte-fallback share, target against English: why a language costs more tokens.

Writes results/<lang>/laft_eval.{json,rows.json}; lower bits per byte is better.
"""

from __future__ import annotations

import gc
import json
import time
from pathlib import Path

from pipeline import io
from pipeline.config import section
from pipeline.laft import (TOKENIZER_METRICS, bits_per_byte, by_document, delta_bits_per_byte, tokenizer_stats,
                           utf8_bytes)
from pipeline.paths import cache_dir, data_dir, repo_root
from pipeline.provenance import sha256_file, sha256_text, signature
from pipeline.report import row, write_stage
from stages.laft import base_model

STAGE = "laft_eval"
VARIANTS = ("base", "laft", "maft")
SIDES = {"target": "tgt", "english": "en"}


def adapter_dir(variant: str, pack_id: str) -> Path:
    root = repo_root() / "models"
    return (root / pack_id / "laft" if variant == "laft" else root / "maft") / "adapter"


def held_out(pack_id: str, max_docs: int | None) -> list[dict]:
    """Test rows of the first `max_docs` test documents (file order), or all of them."""
    rows = io.read_jsonl(data_dir(pack_id) / "test.jsonl")
    docs = list(dict.fromkeys(r["doc"] for r in rows))[:max_docs] if max_docs else None
    return [r for r in rows if docs is None or r["doc"] in docs]


def load_variant(variant: str, base: str, pack_id: str):
    """(model, tokenizer) for 'base', 'laft' or 'maft'."""
    if variant == "base":
        from pipeline.models import load_model

        return load_model(base)
    from pipeline.train import load_trained

    return load_trained(base, adapter_dir(variant, pack_id))


def weights_id(variant: str, base: str, pack_id: str) -> str:
    """What a variant's scores depend on: the base build and, for an adapter, its files."""
    from pipeline.models import fingerprint

    parts = [base, fingerprint(base)]
    if variant != "base":
        parts += [sha256_file(f) for f in sorted(adapter_dir(variant, pack_id).glob("*")) if f.is_file()]
    return sha256_text("\x00".join(parts))


def bits_cache(variant: str, base: str, pack_id: str, texts: list[str], batch_size: int) -> Path:
    """Cache file of per-sentence bits. The English test side is the same for every language, so
    the base model's and MAFT's English bits are computed once, not once per language."""
    scorer = sha256_file(repo_root() / "pipeline" / "generate.py")  # a scoring change is a new key
    key = sha256_text(json.dumps({"v": 1, "weights": weights_id(variant, base, pack_id), "batch": batch_size,
                                  "scorer": scorer, "texts": sha256_text("\x00".join(texts))}))
    return cache_dir() / "nll_bits" / f"{key}.json"


def score_variants(pack_id: str, base: str, rows: list[dict], batch_size: int) -> tuple[dict, dict]:
    """{variant: {side: bits per doc}} for every variant whose weights exist, and wall seconds
    (a side found in the bits cache costs no scoring)."""
    import torch

    from pipeline.generate import text_nll_bits

    docs = [r["doc"] for r in rows]
    bits, wall = {}, {}
    for variant in VARIANTS:
        if variant != "base" and not adapter_dir(variant, pack_id).exists():
            continue
        start, model, bits[variant] = time.time(), None, {}
        for side, field in SIDES.items():
            texts = [r[field] for r in rows]
            path = bits_cache(variant, base, pack_id, texts, batch_size)
            if path.exists():
                sentence_bits = io.read_json(path)["bits"]
            else:
                if model is None:
                    model, tok = load_variant(variant, base, pack_id)
                with torch.inference_mode():
                    sentence_bits = text_nll_bits(model, tok, texts, batch_size=batch_size)
                io.write_json(path, {"variant": variant, "pack": pack_id, "bits": sentence_bits})
            bits[variant][side] = by_document(docs, sentence_bits)[1]
        wall[variant] = time.time() - start
        del model
        gc.collect()
    return bits, wall


def bpb_rows(pack: str, side: str, bits: dict, nbytes, metrics: dict) -> list[dict]:
    """Rows bpb_<side>_<variant> (baseline: the base model) and paired differences."""
    n, out = len(nbytes), []
    base_value = bits_per_byte(bits["base"][side], nbytes)[0]
    for variant in VARIANTS:
        name = f"bpb_{side}_{variant}"
        if variant not in bits:
            out.append(row(pack, "language", STAGE, name, None, higher_is_better=False,
                           note=f"no {variant.upper()} weights at {adapter_dir(variant, pack)}"))
            continue
        value, lo, hi = bits_per_byte(bits[variant][side], nbytes)
        metrics |= {name: value, f"{name}_lo": lo, f"{name}_hi": hi}
        out.append(row(pack, "language", STAGE, name, value, ci=(lo, hi), n=n, higher_is_better=False,
                       baseline=None if variant == "base" else base_value))
    for a, b in (("laft", "base"), ("maft", "base"), ("maft", "laft")):
        if a in bits and b in bits:
            out.append(delta_row(pack, side, a, b, bits, nbytes, metrics))
    return out


def delta_row(pack: str, side: str, a: str, b: str, bits: dict, nbytes, metrics: dict) -> dict:
    """bpb(a) - bpb(b) with a paired bootstrap CI over documents; negative means a is better."""
    value, lo, hi = delta_bits_per_byte(bits[a][side], bits[b][side], nbytes)
    name = f"bpb_{side}_{a}_minus_{b}"
    metrics |= {name: value, f"{name}_lo": lo, f"{name}_hi": hi}
    note = None if hi < 0 or lo > 0 else f"95% CI includes 0 over {len(nbytes)} documents"
    return row(pack, "language", STAGE, name, value, ci=(lo, hi), n=len(nbytes), higher_is_better=False, note=note)


def tokenizer_rows(pack: str, tok, rows: list[dict], metrics: dict) -> list[dict]:
    """Fertility, characters per token and byte-fallback share; target rows have English as baseline."""
    stats = {side: tokenizer_stats(tok, [r[field] for r in rows]) for side, field in SIDES.items()}
    out = []
    for key, hib in TOKENIZER_METRICS.items():
        for side in ("english", "target"):
            metrics[f"{key}_{side}"] = stats[side][key]
            out.append(row(pack, "language", STAGE, f"{key}_{side}", stats[side][key], n=stats[side]["words"],
                           higher_is_better=hib, baseline=stats["english"][key] if side == "target" else None))
    metrics |= {f"tokens_{side}": s["tokens"] for side, s in stats.items()}
    return out


def run(pack_id: str) -> None:
    cfg = section(STAGE)
    base = base_model(cfg)
    rows = held_out(pack_id, cfg.get("max_docs"))
    docs = [r["doc"] for r in rows]
    nbytes = {side: by_document(docs, [utf8_bytes(r[field]) for r in rows])[1] for side, field in SIDES.items()}
    bits, wall = score_variants(pack_id, base, rows, cfg["batch_size"])
    metrics = {"documents": len(nbytes["target"]), "sentences": len(rows),
               **{f"bytes_{side}": float(b.sum()) for side, b in nbytes.items()},
               **{f"wall_s_{variant}": w for variant, w in wall.items()}}
    out_rows = [r for side in SIDES for r in bpb_rows(pack_id, side, bits, nbytes[side], metrics)]
    from pipeline.models import load_tokenizer

    out_rows += tokenizer_rows(pack_id, load_tokenizer(base), rows, metrics)
    weights = {v: sha256_file(f)[:12] for v in VARIANTS[1:] for f in sorted(adapter_dir(v, pack_id).glob("*.safetensors"))}
    sig = signature(stage=STAGE, pack=pack_id, base=base, cfg=cfg, test=sha256_file(data_dir(pack_id) / "test.jsonl")[:12],
                    **weights)
    write_stage(pack_id, STAGE, metrics, out_rows, sig)


if __name__ == "__main__":
    from stages._cli import stage_main

    raise SystemExit(stage_main(run, __doc__))
