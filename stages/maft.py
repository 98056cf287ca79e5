"""maft: multilingual adaptive fine-tuning, one adapter over every enabled language.

Each enabled language's cleaned training text (data/_mono/<lang>.txt, the same file
laft@<lang> trains on) is one pool; languages are mixed by temperature sampling over their sizes (cleaned lines), p_i ∝ n_i^(1/T)
(pipeline.laft.temperature_sample). T = 1 would follow the sizes (on the default packs
Chichewa, with its Bible, would be 92% of the mix); T → ∞ is uniform and repeats the
smallest corpus many times. The default T = 3.33 is α = 0.3, the value XLM-R (Conneau et
al. 2020) and mT5 (Xue et al. 2021) chose; on the default packs (31.8k, 1.4k and 1.4k
cleaned lines) it gives Chichewa 0.56, Nepali 0.22 and Galician 0.22 (T = 2: 0.71/0.15/0.15;
T = 5: 0.48/0.26/0.26). In a sample as large as all corpora together each small corpus
recurs about 5.5 times; training reads only the first max_steps x batch_size blocks.

Writes models/maft/{adapter/, curve.tsv} and results/_shared/maft.json (no scorecard rows:
MAFT is scored per language by laft_eval@<lang>). DVC reruns it when `languages`, the
`maft` section or a file in data/_mono/ changes (see dvc.yaml).
"""

from __future__ import annotations

from pipeline.config import enabled, section
from pipeline.errors import PolyalignError
from pipeline.laft import corpus_path, read_corpus, temperature_probs, temperature_sample, utf8_bytes
from pipeline.paths import repo_root
from pipeline.provenance import sha256_file, signature
from pipeline.report import write_stage
from stages.laft import base_model, train

SHARED = "_shared"  # results/_shared/: stages that belong to no single pack


def pools(languages: list[str]) -> tuple[dict[str, list[str]], dict]:
    """Cleaned training lines per language, and their sizes (flat metrics)."""
    out = {lang: read_corpus(lang) for lang in languages}
    stats = {f"{lang}_{unit}": n for lang, lines in out.items()
             for unit, n in (("lines", len(lines)), ("bytes", sum(map(utf8_bytes, lines))))}
    return out, stats


def run() -> None:
    cfg, languages = section("maft"), enabled("languages")
    if not languages:
        raise PolyalignError("params.yaml", "languages", "no language enabled", "enable at least one language pack")
    lines, stats = pools(languages)
    total = cfg.get("examples") or sum(len(v) for v in lines.values())
    sample, counts = temperature_sample(lines, total, cfg["temperature"], seed=cfg["seed"])
    probs = temperature_probs({k: len(v) for k, v in lines.items()}, cfg["temperature"])
    base = base_model(cfg)
    examples = [{"prompt": "", "response": s["text"]} for s in sample]
    metrics = train(base, examples, repo_root() / "models" / "maft", cfg)
    metrics |= stats | {f"{k}_p": p for k, p in probs.items()} | {f"{k}_sampled": n for k, n in counts.items()}
    hashes = {lang: sha256_file(corpus_path(lang))[:12] for lang in languages}
    sig = signature(stage="maft", languages=",".join(languages), base=base, cfg=cfg, **hashes)
    write_stage(SHARED, "maft", metrics, [], sig)


if __name__ == "__main__":
    from stages._cli import stage_main

    raise SystemExit(stage_main(run, __doc__, pack=False))
