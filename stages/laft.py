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

from pathlib import Path

from pipeline import io
from pipeline.config import section
from pipeline.laft import corpus_path, read_corpus, shuffled, utf8_bytes
from pipeline.paths import repo_root
from pipeline.provenance import sha256_file, signature
from pipeline.report import row, write_stage

# keys of the laft/maft sections that are not pipeline.train settings
OWN_KEYS = {"base", "min_tokens", "temperature", "examples"}
COST = [("train_tokens", True), ("tokens_per_s", True), ("wall_s", False), ("final_loss", False)]


def base_model(cfg: dict) -> str:
    """`laft.base` if set, else the project's base model (`model.base`)."""
    return cfg.get("base") or section("model")["base"]


def train_cfg(cfg: dict) -> dict:
    return {k: v for k, v in cfg.items() if k not in OWN_KEYS}


def train_rows(pack: str, stage: str, metrics: dict) -> list[dict]:
    """Cost rows for the scorecard (no CI: one training run)."""
    return [row(pack, "language", stage, key, metrics.get(key), higher_is_better=hib,
                note=None if metrics.get(key) is not None else "not reported by the trainer")
            for key, hib in COST]


def train(base: str, examples: list[dict], out: Path, cfg: dict) -> dict:
    """pipeline.train.train_causal_lm into `out`, atomically (adapter and curve appear together)."""
    from pipeline.train import train_causal_lm

    with io.atomic_path(out) as tmp:
        tmp.mkdir()
        return train_causal_lm(base, examples, tmp, train_cfg(cfg))


def run(pack_id: str) -> None:
    cfg = section("laft")
    lines, base = read_corpus(pack_id), base_model(cfg)
    examples = [{"prompt": "", "response": text} for text in shuffled(lines, cfg["seed"])]
    metrics = train(base, examples, repo_root() / "models" / pack_id / "laft", cfg)
    metrics |= {"corpus_lines": len(lines), "corpus_bytes": sum(map(utf8_bytes, lines))}
    sig = signature(stage="laft", pack=pack_id, base=base, cfg=cfg, corpus=sha256_file(corpus_path(pack_id))[:12])
    write_stage(pack_id, "laft", metrics, train_rows(pack_id, "laft", metrics), sig)


if __name__ == "__main__":
    from stages._cli import stage_main

    raise SystemExit(stage_main(run, __doc__))
