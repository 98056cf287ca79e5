"""laft@<lang>: language-adaptive fine-tuning (Alabi et al. 2022), LoRA continued pre-training.

Plain causal-LM training (prompt "", loss on every token) on the pack's cleaned monolingual
TRAIN text, data/_mono/<lang>.txt (written by laft_corpus@<lang>: NTREX train documents,
UDHR, and for nya the Chichewa Bible, cleaned as in MAFT), shuffled by line with `seed`.
Packing into `max_len` blocks is pipeline.train's job. `laft.full_finetune: true` trains
every weight instead of a LoRA adapter.

Writes models/<lang>/laft/{adapter/, curve.tsv} (one atomic rename) and
results/<lang>/laft.{json,rows.json} (training cost).
"""

from __future__ import annotations

from pipeline.config import base_model, section
from pipeline.laft import corpus_path, read_corpus, shuffled, tokens_seen, train, utf8_bytes
from pipeline.paths import repo_root
from pipeline.provenance import sha256_file, signature
from pipeline.report import row, write_stage
from pipeline.train import curve_file

COST = [("train_tokens", True), ("tokens_per_s", True), ("wall_s", False), ("final_loss", False)]


def train_rows(pack: str, stage: str, metrics: dict, cost=COST) -> list[dict]:
    """Cost rows for the scorecard (no CI: one training run)."""
    return [row(pack, "language", stage, key, metrics.get(key), higher_is_better=hib,
                note=None if metrics.get(key) is not None else "not reported by the trainer")
            for key, hib in cost]


def run(pack_id: str) -> None:
    cfg = section("laft")
    lines, base = read_corpus(pack_id), base_model(cfg)
    examples = [{"prompt": "", "response": text} for text in shuffled(lines, cfg["seed"])]
    metrics = train(base, examples, repo_root() / "models" / pack_id / "laft", {**cfg, "curve_file": curve_file(pack_id, "laft")})
    from pipeline.models import load_tokenizer

    seen = tokens_seen(load_tokenizer(base), examples, [pack_id] * len(examples), cfg)[pack_id]
    metrics |= {"corpus_lines": len(lines), "corpus_bytes": sum(map(utf8_bytes, lines)), f"tokens_{pack_id}": seen}
    sig = signature(stage="laft", pack=pack_id, base=base, cfg=cfg, corpus=sha256_file(corpus_path(pack_id))[:12])
    cost = COST + [(f"tokens_{pack_id}", True)]  # target-language tokens the optimizer saw (MAFT compares at these)
    write_stage(pack_id, "laft", metrics, train_rows(pack_id, "laft", metrics, cost), sig)


if __name__ == "__main__":
    from stages._cli import stage_main

    raise SystemExit(stage_main(run, __doc__))
