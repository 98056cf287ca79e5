"""rm_train: source-language reward models (Bradley–Terry, seq-classification head + LoRA), once.

For each entry of `rm_train.sources` (default: English hh-rlhf harmless-base pairs from
the mirror): parse preference pairs, split them 80/10/10 by a seeded hash of the opening
user message, train a reward model on the train split, and measure its held-out accuracy
against a length-only baseline. Reads no language pack, so editing languages/*.yaml never
retrains it.

Writes models/rm/<source>/{adapter,curve.tsv,heldout_scores.jsonl}, data/_shared/rm/<source>/
{train,dev,test}.jsonl and results/_shared/rm_train.{json,rows.json}.
"""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np
from pydantic import ValidationError

from pipeline import io, rm
from pipeline.config import params_path, section
from pipeline.errors import PolyalignError
from pipeline.packs import Source
from pipeline.paths import data_dir, repo_root
from pipeline.provenance import signature
from pipeline.report import row, write_stage
from pipeline.train import curve_file
from pipeline.sources import read, resolve, sha256_path
from pipeline.stats import bootstrap_ci, paired_delta_ci

PACK = "_shared"  # results of once-only stages live in results/_shared/
STAGE = "rm_train"


def rm_dir() -> Path:
    return repo_root() / "models" / "rm"


def splits_dir() -> Path:
    return data_dir(PACK) / "rm"


def base_model(cfg: dict) -> str:
    """`rm_train.base` if set, else the project's base model (`model.base`)."""
    return cfg.get("base") or section("model")["base"]


def source_spec(name: str, src: dict) -> Source:
    """Validate a source's `data` entry with the packs' own Source schema (one-line errors)."""
    field = f"rm_train.sources.{name}.data"
    try:
        return Source.model_validate(src.get("data"))
    except ValidationError as exc:
        err = exc.errors()[0]
        where = ".".join(str(p) for p in err["loc"] if p not in {"github", "hub", "pypi", "npm", "local"})
        raise PolyalignError(params_path(), f"{field}.{where}".rstrip("."), err["msg"],
                             "see the default entry in params.yaml") from None


def source_pairs(name: str, src: dict, cfg: dict) -> tuple[list[dict], dict, str]:
    """(pairs, parse counts, data sha256) of one preference source."""
    source = source_spec(name, src)
    origin = f"{params_path()}: rm_train.sources.{name}"
    parser = src.get("parser", "hh")
    if parser not in ("hh", "fields"):
        raise PolyalignError(params_path(), f"rm_train.sources.{name}.parser", f"unknown parser '{parser}'",
                             "use 'hh' (Human/Assistant dialogues) or 'fields' (prompt/chosen/rejected)")
    records = read(source, origin=origin)
    pairs, counts = rm.parse_pairs(records, parser=parser, context_turns=cfg["context_turns"],
                                   max_chars=cfg["max_chars"])
    return pairs, counts, sha256_path(resolve(source, origin=origin))


def load_reward_model(base: str, adapter: Path):
    """The trained reward model (seq-classification head + LoRA) and its tokenizer."""
    from pipeline.train import load_trained

    return load_trained(base, adapter, head="reward")


def scorer(model, tok, batch_size: int):
    """texts -> rewards, batched (the callable pipeline.rm's math takes)."""
    from pipeline.train import reward_scores

    return lambda texts: reward_scores(model, tok, list(texts), batch_size=batch_size)


def heldout_eval(score, train: list[dict], test: list[dict]) -> dict:
    """Accuracy of `score` on `test` pairs vs the length baseline fit on `train`, with CIs."""
    start = time.perf_counter()
    chosen, rejected = rm.score_pairs(score, test)
    seconds = time.perf_counter() - start
    correct = rm.pairwise_correct(chosen, rejected)
    direction = rm.length_direction(train)
    by_length = rm.length_correct(test, direction)
    return {"chosen": chosen, "rejected": rejected,
            "accuracy": bootstrap_ci(correct), "length": bootstrap_ci(by_length), "length_direction": direction,
            "vs_length": paired_delta_ci(correct, by_length), "n": len(test),
            "pairs_per_s": len(test) / seconds if seconds > 0 else float("nan"),
            "margin": float(np.mean(chosen - rejected))}


def rm_curve(name: str) -> str:
    """One curve per source: results/_curves/<quantity>/_shared.rm_train_<source>.tsv."""
    return curve_file(PACK, f"{STAGE}_{name}")


def train_source(base: str, name: str, split: dict[str, list[dict]], cfg: dict, out: Path) -> dict:
    """Train one source's reward model into `out` and evaluate it on its held-out pairs."""
    from pipeline.train import train_reward_model

    train = split["train"][: cfg["max_train_pairs"]]
    test = split["test"][: cfg["max_test_pairs"]] if cfg.get("max_test_pairs") else split["test"]
    fit = train_reward_model(base, rm.training_pairs(train), out, {**cfg["train"], "seed": cfg["seed"],
                                                                  "curve_file": rm_curve(name)})
    model, tok = load_reward_model(base, out / "adapter")
    result = heldout_eval(scorer(model, tok, cfg["batch_size"]), train, test)
    del model
    # per-pair scores: rm_transfer reuses them for the untranslated side of its comparison
    io.write_jsonl(out / "heldout_scores.jsonl", [{"id": p["id"], "chosen": float(c), "rejected": float(r)}
                                                   for p, c, r in zip(test, result["chosen"], result["rejected"])])
    return {"fit": fit, "train_pairs": len(train), **result}


def source_rows(name: str, res: dict) -> list[dict]:
    """Scorecard rows for one source (pack `_shared`)."""
    acc, length = res["accuracy"], res["length"]
    way = "longer" if res["length_direction"] > 0 else "shorter"
    return [
        row(PACK, "language", STAGE, f"heldout_accuracy_{name}", acc[0], ci=acc[1:], baseline=length[0],
            n=res["n"], note=f"baseline: length-only (prefers the {way} reply; direction fit on train)"),
        row(PACK, "language", STAGE, f"length_baseline_accuracy_{name}", length[0], ci=length[1:], n=res["n"]),
        row(PACK, "language", STAGE, f"pairs_per_s_{name}", res["pairs_per_s"], n=res["n"]),
    ]


def source_metrics(name: str, res: dict, counts: dict) -> dict:
    acc, length, delta = res["accuracy"], res["length"], res["vs_length"]
    out = {f"{name}_{k}": v for k, v in counts.items()}
    out |= {f"{name}_accuracy": acc[0], f"{name}_accuracy_ci_low": acc[1], f"{name}_accuracy_ci_high": acc[2],
            f"{name}_length_accuracy": length[0], f"{name}_vs_length": delta[0],
            f"{name}_vs_length_ci_low": delta[1], f"{name}_vs_length_ci_high": delta[2],
            f"{name}_test_pairs": res["n"], f"{name}_train_pairs": res["train_pairs"],
            f"{name}_pairs_per_s": res["pairs_per_s"], f"{name}_mean_margin": res["margin"]}
    out |= {f"{name}_train_{k}": v for k, v in res["fit"].items() if isinstance(v, (int, float))}
    return out


def run() -> None:
    from pipeline.seeding import seed_everything

    cfg = section(STAGE)
    base = base_model(cfg)
    if not cfg.get("sources"):
        raise PolyalignError(params_path(), "rm_train.sources", "no preference source", "add one (see README)")
    if not {"train", "test"} <= set(cfg["split"]):
        raise PolyalignError(params_path(), "rm_train.split", f"needs 'train' and 'test' parts, got {sorted(cfg['split'])}",
                             "e.g. {train: 0.8, dev: 0.1, test: 0.1}")
    metrics, rows, hashes = {}, [], {}
    with io.atomic_path(rm_dir()) as models_tmp, io.atomic_path(splits_dir()) as splits_tmp:
        for name, src in cfg["sources"].items():
            seed_everything(cfg["seed"])
            pairs, counts, hashes[name] = source_pairs(name, src, cfg)
            split = rm.split_pairs(pairs, cfg["split"], seed=cfg["seed"])
            for part, items in split.items():
                io.write_jsonl(splits_tmp / name / f"{part}.jsonl", items)
            res = train_source(base, name, split, cfg, models_tmp / name)
            metrics |= source_metrics(name, res, counts)
            rows += source_rows(name, res)
    sig = signature(stage=STAGE, model=base, cfg=cfg, template=rm.RM_TEMPLATE_ID,
                    **{f"data_{k}": v[:12] for k, v in hashes.items()})
    write_stage(PACK, STAGE, metrics, rows, sig)


if __name__ == "__main__":
    from stages._cli import stage_main

    raise SystemExit(stage_main(run, __doc__, pack=False))
