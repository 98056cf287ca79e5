"""rm_train: source-language reward models (Bradley–Terry, seq-classification head + LoRA), once.

For each entry of `rm_train.sources` (default: English hh-rlhf harmless-base pairs from
the mirror): parse preference pairs, split them 80/10/10 by a seeded hash of the opening
user message, train a reward model on the train split for each candidate learning rate
(`rm_train.lrs`), keep the one with the best accuracy on the DEV split, and only then measure
its test accuracy, against chance (0.5) and a length baseline (longer or shorter reply,
whichever is right more often on dev), paired over the same test pairs. Whether it learned:
its accuracy on its own train pairs after training and its loss curve. Reads no language
pack, so editing languages/*.yaml never retrains it.

Writes models/rm/<source>/{adapter,curve.tsv,heldout_scores.jsonl}, data/_shared/rm/<source>/
{train,dev,test}.jsonl, results/_shared/rm_train_curve.tsv (source, step, loss) and
results/_shared/rm_train.{json,rows.json} (pack `_shared`: the scorecard gathers them).
"""

from __future__ import annotations

import shutil
import time
from pathlib import Path

import numpy as np
from pydantic import ValidationError

from pipeline import io, rm
from pipeline.config import base_model, params_path, section
from pipeline.errors import PolyalignError
from pipeline.packs import Source
from pipeline.paths import results_dir
from pipeline.provenance import signature
from pipeline.report import SHARED, comparison, row, write_stage
from pipeline.sources import read, resolve, sha256_path
from pipeline.stats import paired_delta, wilson_ci
from pipeline.train import curve_file, curve_paths

PACK = SHARED  # results of once-only stages live in results/_shared/ and reach the scorecard
STAGE = "rm_train"


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


def accuracy_on(score, pairs: list[dict]) -> dict:
    """Per-pair correctness of `score` on `pairs` [n], the raw scores and the scoring speed."""
    start = time.perf_counter()
    chosen, rejected = rm.score_pairs(score, pairs)
    seconds = time.perf_counter() - start
    return {"correct": rm.pairwise_correct(chosen, rejected), "chosen": chosen, "rejected": rejected,
            "pairs_per_s": len(pairs) / seconds if seconds > 0 else float("nan")}


def learning_rates(cfg: dict) -> list[float]:
    """Candidates chosen among on dev: `rm_train.lrs`, else the single `train.lr`."""
    lrs = cfg.get("lrs") or [cfg["train"]["lr"]]
    return [float(x) for x in lrs]


def rm_curve(name: str, lr: float | None = None) -> str:
    """DVC plot curves of one source: results/_curves/<quantity>/_shared.rm_train_<source>.tsv (the
    dev-picked lr; each candidate writes ..._lr_<lr> first)."""
    return curve_file(PACK, f"{STAGE}_{name}" + (f"_lr_{lr:g}" if lr is not None else ""))


def keep_picked_curves(name: str, picked: float, lrs: list[float]) -> None:
    final = curve_paths(rm_curve(name))
    for lr in lrs:
        for q, path in curve_paths(rm_curve(name, lr)).items():
            path.replace(final[q]) if lr == picked else path.unlink(missing_ok=True)


def fit_one(base: str, train: list[dict], dev: list[dict], lr: float, cfg: dict, out: Path,
            curve: str | None = None) -> dict:
    """Train at `lr` into `out`; its dev accuracy (the selection criterion) and its fit metrics."""
    from pipeline.train import train_reward_model

    fit = train_reward_model(base, rm.training_pairs(train), out, {**cfg["train"], "lr": lr, "seed": cfg["seed"],
                                                                  "curve_file": curve})
    model, tok = rm.load_reward_model(base, out / "adapter")
    dev_correct = accuracy_on(rm.scorer(model, tok, cfg["batch_size"]), dev)["correct"]
    del model
    return {"lr": lr, "fit": fit, "dev_correct": dev_correct, "dev_accuracy": float(np.mean(dev_correct)),
            "curve": rm.read_curve(out / "curve.tsv")}


def choose_on_dev(runs: list[dict]) -> dict:
    """The run with the highest dev accuracy (the first listed on ties): test never chooses."""
    return max(runs, key=lambda r: (r["dev_accuracy"], -runs.index(r)))


def sizes(split: dict[str, list[dict]], cfg: dict) -> tuple[list[dict], list[dict], list[dict]]:
    cap = lambda key, items: items[: cfg[key]] if cfg.get(key) else items  # noqa: E731
    return cap("max_train_pairs", split["train"]), cap("max_dev_pairs", split["dev"]), cap("max_test_pairs", split["test"])


def train_source(base: str, name: str, split: dict[str, list[dict]], cfg: dict, out: Path) -> dict:
    """Train one source's reward model per candidate lr, keep the dev pick in `out`, test it once."""
    train, dev, test = sizes(split, cfg)
    runs = [fit_one(base, train, dev, lr, cfg, out / f"lr_{lr:g}", rm_curve(name, lr)) for lr in learning_rates(cfg)]
    pick = choose_on_dev(runs)
    keep_picked_curves(name, pick["lr"], [r["lr"] for r in runs])
    for item in ("adapter", "curve.tsv"):
        (out / f"lr_{pick['lr']:g}" / item).rename(out / item)
    for r in runs:
        shutil.rmtree(out / f"lr_{r['lr']:g}")
    model, tok = rm.load_reward_model(base, out / "adapter")
    score = rm.scorer(model, tok, cfg["batch_size"])
    result = accuracy_on(score, test)
    on_train = accuracy_on(score, train[: cfg.get("train_eval_pairs") or None])["correct"]
    del model
    # per-pair scores: rm_transfer reuses them for the untranslated side of its comparison
    io.write_jsonl(out / "heldout_scores.jsonl", [{"id": p["id"], "chosen": float(c), "rejected": float(r)}
                                                   for p, c, r in zip(test, result["chosen"], result["rejected"])])
    direction = rm.length_direction(dev)  # longer or shorter, whichever is right more often on dev
    return {**result, "pick": pick, "runs": runs, "train_correct": on_train, "train_pairs": len(train),
            "dev_pairs": len(dev), "n": len(test), "direction": direction,
            "length_dev": float(np.mean(rm.length_correct(dev, direction))) if dev else float("nan"),
            "length": rm.length_correct(test, direction)}


def way(direction: int) -> str:
    return "longer" if direction > 0 else "shorter"


def source_rows(name: str, res: dict) -> list[dict]:
    """Scorecard rows for one source (pack `_shared`): test accuracy against chance and against the
    length baseline (paired over pairs), with what chose it on dev and whether it learned."""
    correct, length, n, pick = res["correct"], res["length"], res["n"], res["pick"]
    acc = wilson_ci(float(np.sum(correct)), n)
    dev = ", ".join(f"lr {r['lr']:g}: {r['dev_accuracy']:.3f}" for r in res["runs"])
    chosen = f"lr {pick['lr']:g} chosen on {res['dev_pairs']} dev pairs ({dev}); {res['train_pairs']} train pairs"
    tr = wilson_ci(float(np.sum(res["train_correct"])), len(res["train_correct"]))
    curve = rm.curve_summary(pick["curve"])
    return [
        comparison(PACK, "language", STAGE, f"heldout_accuracy_{name}", acc[0], 0.5, ci=acc[1:], n=n,
                   delta_ci=paired_delta(correct, rm.chance(n)), baseline_name="chance", note=chosen),
        comparison(PACK, "language", STAGE, f"heldout_accuracy_{name}_vs_length", acc[0], float(np.mean(length)),
                   ci=acc[1:], n=n, delta_ci=paired_delta(correct, length), baseline_name="length",
                   note=f"length baseline prefers the {way(res['direction'])} reply (the better way on dev: "
                        f"{res['length_dev']:.3f})"),
        row(PACK, "language", STAGE, f"train_accuracy_{name}", tr[0], ci=tr[1:], n=len(res["train_correct"]),
            note=f"the picked RM scored on its own train pairs after training (did it learn?); training loss "
                 f"{curve.get('loss_first', float('nan')):.3f} -> {curve.get('loss_last', float('nan')):.3f} over "
                 f"{curve.get('steps', 0)} steps; batch accuracy of the last steps {pick['fit'].get('final_accuracy')}"),
        row(PACK, "language", STAGE, f"dev_accuracy_{name}", pick["dev_accuracy"], n=res["dev_pairs"],
            ci=wilson_ci(float(np.sum(pick["dev_correct"])), res["dev_pairs"])[1:], note=f"selection split: {dev}"),
        row(PACK, "language", STAGE, f"length_baseline_accuracy_{name}", float(np.mean(length)), n=n,
            ci=wilson_ci(float(np.sum(length)), n)[1:], note=f"prefers the {way(res['direction'])} reply"),
        row(PACK, "language", STAGE, f"pairs_per_s_{name}", res["pairs_per_s"], n=n),
    ]


def source_metrics(name: str, res: dict, counts: dict) -> dict:
    pick, n = res["pick"], res["n"]
    out = {f"{name}_{k}": v for k, v in counts.items()}
    acc = wilson_ci(float(np.sum(res["correct"])), n)
    out |= {f"{name}_accuracy": acc[0], f"{name}_accuracy_ci_low": acc[1], f"{name}_accuracy_ci_high": acc[2],
            f"{name}_length_accuracy": float(np.mean(res["length"])), f"{name}_length_direction": res["direction"],
            f"{name}_length_dev_accuracy": res["length_dev"], f"{name}_test_pairs": n,
            f"{name}_train_pairs": res["train_pairs"], f"{name}_dev_pairs": res["dev_pairs"],
            f"{name}_pairs_per_s": res["pairs_per_s"], f"{name}_lr": pick["lr"],
            f"{name}_dev_accuracy": pick["dev_accuracy"],
            f"{name}_train_accuracy": float(np.mean(res["train_correct"])) if len(res["train_correct"]) else None,
            f"{name}_mean_margin": float(np.mean(res["chosen"] - res["rejected"]))}
    out |= {f"{name}_dev_accuracy_lr_{r['lr']:g}": r["dev_accuracy"] for r in res["runs"]}
    out |= {f"{name}_train_{k}": v for k, v in pick["fit"].items() if isinstance(v, (int, float))}
    out |= {f"{name}_{k}": v for k, v in rm.curve_summary(pick["curve"]).items()}
    return out


def curve_rows(name: str, res: dict) -> list[str]:
    """The picked run's loss per step, for results/_shared/rm_train_curve.tsv (DVC plots)."""
    return [f"{name}\t{step}\t{loss}\n" for step, loss in res["pick"]["curve"]]


def check(cfg: dict) -> None:
    if not cfg.get("sources"):
        raise PolyalignError(params_path(), "rm_train.sources", "no preference source", "add one (see README)")
    if not {"train", "dev", "test"} <= set(cfg["split"]):
        raise PolyalignError(params_path(), "rm_train.split", f"needs 'train', 'dev' and 'test' parts, got "
                             f"{sorted(cfg['split'])}", "e.g. {train: 0.8, dev: 0.1, test: 0.1}")


def run() -> None:
    from pipeline.seeding import seed_everything

    cfg = section(STAGE)
    check(cfg)
    base = base_model(cfg)
    metrics, rows, hashes, curves = {}, [], {}, []
    with io.atomic_path(rm.rm_dir()) as models_tmp, io.atomic_path(rm.splits_dir()) as splits_tmp:
        for name, src in cfg["sources"].items():
            seed_everything(cfg["seed"])
            pairs, counts, hashes[name] = source_pairs(name, src, cfg)
            split = rm.split_pairs(pairs, cfg["split"], seed=cfg["seed"])
            for part, items in split.items():
                io.write_jsonl(splits_tmp / name / f"{part}.jsonl", items)
            res = train_source(base, name, split, cfg, models_tmp / name)
            metrics |= source_metrics(name, res, counts)
            rows += source_rows(name, res)
            curves += curve_rows(name, res)
    io.write_text(results_dir(PACK) / "rm_train_curve.tsv", "source\tstep\tloss\n" + "".join(curves))
    sig = signature(stage=STAGE, model=base, cfg=cfg, template=rm.RM_TEMPLATE_ID,
                    **{f"data_{k}": v[:12] for k, v in hashes.items()})
    write_stage(PACK, STAGE, metrics, rows, sig)


if __name__ == "__main__":
    from stages._cli import stage_main

    raise SystemExit(stage_main(run, __doc__, pack=False))
