"""maft: multilingual adaptive fine-tuning (Alabi et al. 2022), one adapter for every language.

The mix, as in the paper, holds every enabled language AND high-resource languages
(`maft.high_resource`, NTREX codes; default English, French and Arabic, the paper's three) so
that adapting to the new languages does not cost the model the ones it had. Target languages
bring their cleaned training text (data/_mono/<lang>.txt, the file laft@<lang> trains on); a
high-resource language brings its NTREX TRAIN documents (data@<lang>'s document split,
params `data`), cleaned the same way. Languages are mixed by temperature sampling over their
sizes (cleaned lines), p_i ∝ n_i^(1/T) (pipeline.laft.temperature_sample). T = 3.33 is
α = 0.3, the value XLM-R (Conneau et al. 2020) and mT5 (Xue et al. 2021) chose.

Measured here, so that the comparison with LAFT is honest:
- tokens of each language the optimizer saw (pipeline.laft.tokens_seen), `tokens_<lang>`: MAFT
  spends its steps on all languages, so at equal steps it sees a fraction of LAFT's
  target-language tokens; laft_eval@<lang> states that ratio in its MAFT-vs-LAFT rows;
- forgetting: bits per byte of the base model and MAFT on each high-resource language's NTREX
  test sentences (stratified over all test documents, `laft_eval.sentences`) and held-out UDHR
  articles, as comparison rows (paired document/article intervals, verdicts).

Writes models/maft/{adapter/, curve.tsv} and results/_shared/maft.{json,rows.json} (pack
report.SHARED: these rows belong to no single language). DVC reruns it when `languages`,
`maft`, `data`, `laft_eval`, `laft` or a file in data/_mono/ changes (see dvc.yaml).
"""

from __future__ import annotations

from pipeline.config import base_model, enabled, section
from pipeline.errors import PolyalignError
from pipeline.laft import (
    Scorer,
    bpb_rows,
    clean_lines,
    corpus_path,
    forgetting_codes,
    language_sets,
    ntrex_rows,
    read_corpus,
    rows_bytes,
    score_sets,
    temperature_probs,
    temperature_sample,
    tokens_seen,
    train,
    utf8_bytes,
)
from pipeline.paths import repo_root
from pipeline.provenance import sha256_file, signature
from pipeline.report import SHARED, row, write_stage
from pipeline.train import curve_file

STAGE = "maft"


def check_languages(languages: list[str], high_resource: list[str]) -> None:
    if not languages:
        raise PolyalignError("params.yaml", "languages", "no language enabled", "enable at least one language pack")
    both = sorted(set(languages) & set(high_resource))
    if both:
        raise PolyalignError("params.yaml", "maft.high_resource", f"'{both[0]}' is also an enabled target language",
                             f"remove '{both[0]}' from maft.high_resource")


def pools(languages: list[str], high_resource: list[str], data_cfg: dict, min_tokens: int) -> dict[str, list[str]]:
    """Cleaned training lines per language: target corpora, then high-resource NTREX train documents."""
    out = {lang: read_corpus(lang) for lang in languages}
    for code in high_resource:
        out[code] = clean_lines([r["text"] for r in ntrex_rows(code, data_cfg, "train")], min_tokens=min_tokens)[0]
    return out


def mix_metrics(lines: dict, cfg: dict, counts: dict, seen: dict) -> dict:
    """Sizes, temperature probabilities, lines sampled and tokens seen, per language."""
    probs = temperature_probs({k: len(v) for k, v in lines.items()}, cfg["temperature"])
    out = {}
    for lang, pool in lines.items():
        out |= {f"{lang}_lines": len(pool), f"{lang}_bytes": sum(map(utf8_bytes, pool)), f"{lang}_p": probs[lang],
                f"{lang}_sampled": counts[lang], f"tokens_{lang}": seen[lang]}
    return out


def mix_rows(lines: dict, high_resource: list[str], metrics: dict) -> list[dict]:
    """Context rows: tokens of each language the optimizer saw, with its share of the mix."""
    return [row(SHARED, "language", STAGE, f"tokens_{lang}", metrics[f"tokens_{lang}"], higher_is_better=True,
                note=f"{'high-resource' if lang in high_resource else 'target'} language; temperature share "
                     f"{metrics[f'{lang}_p']:.3f} of the mix")
            for lang in lines]


def forgetting(base: str, codes: list[str], metrics: dict) -> list[dict]:
    """Bits per byte of the base model and MAFT on English's and each high-resource language's
    held-out text (the same sentences laft_eval@<lang> scores: its bits cache then serves them)."""
    eval_cfg, udhr_cfg, data_cfg = section("laft_eval"), section("laft")["udhr_heldout"], section("data")
    sets = {(domain, code): rows for code in codes
            for domain, rows in language_sets(code, eval_cfg, udhr_cfg, data_cfg).items()}
    bits = {}
    for variant, adapter in (("base", None), ("maft", repo_root() / "models" / "maft" / "adapter")):
        scorer = Scorer(base, adapter, eval_cfg["batch_size"])
        bits[variant] = score_sets(scorer, sets)
        metrics[f"eval_wall_s_{variant}"], metrics[f"eval_scored_{variant}"] = scorer.wall_s, scorer.scored
        scorer.close()
    out = []
    for (domain, code), rows in sets.items():
        if not rows:
            continue
        got, more = bpb_rows(SHARED, STAGE, f"bpb_{domain}_{code}", {v: b[(domain, code)] for v, b in bits.items()},
                             rows_bytes(rows), [r["doc"] for r in rows], [("maft", "base")],
                             notes={("maft", "base"): f"forgetting of {code}: a rise in bits per byte is a loss"})
        out += got
        metrics |= more
    return out


def run() -> None:
    cfg, languages = section(STAGE), enabled("languages")
    high_resource = list(cfg.get("high_resource") or [])
    check_languages(languages, high_resource)
    lines = pools(languages, high_resource, section("data"), section("laft")["min_tokens"])
    total = cfg.get("examples") or sum(len(v) for v in lines.values())
    sample, counts = temperature_sample(lines, total, cfg["temperature"], seed=cfg["seed"])
    base = base_model(cfg)
    examples = [{"prompt": "", "response": s["text"]} for s in sample]
    metrics = train(base, examples, repo_root() / "models" / "maft", {**cfg, "curve_file": curve_file(SHARED, "maft")})
    from pipeline.models import load_tokenizer

    seen = tokens_seen(load_tokenizer(base), examples, [s["lang"] for s in sample], cfg)
    metrics |= mix_metrics(lines, cfg, counts, seen) | {"high_resource": len(high_resource)}
    out = mix_rows(lines, high_resource, metrics) + forgetting(base, forgetting_codes(cfg), metrics)
    hashes = {lang: sha256_file(corpus_path(lang))[:12] for lang in languages}
    sig = signature(stage=STAGE, languages=",".join(languages), high_resource=",".join(high_resource), base=base,
                    cfg=cfg, eval=section("laft_eval"), udhr=section("laft")["udhr_heldout"], **hashes)
    write_stage(SHARED, STAGE, metrics, out, sig)


if __name__ == "__main__":
    from stages._cli import stage_main

    raise SystemExit(stage_main(run, __doc__, pack=False))
