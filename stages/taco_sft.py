"""taco_sft@<lang>: two LoRA adapters on the same translated instructions (pipeline.train).

- `taco`:  prompt = the TaCo instruction template (instruction in the pack's language),
           response = the three-part target (instruction in English, answer in English,
           answer in the pack's language); loss on response tokens only;
- `plain`: prompt = the plain instruct template, response = the translated answer only.

Same samples, same order (taco_data's curriculum), same settings (`taco.sft`), so the
difference between the two is the chain-of-thought format alone.

`taco.schedule`: `taco_only` trains the TaCo adapter on TaCo targets for all `sft.max_steps`;
`staged` follows the paper's curriculum (an instruction-following model first, then TaCo
tuning): the first `staged_fraction` of the steps on the plain examples, the rest on the TaCo
examples, in one run of the same adapter, so the total steps match the plain adapter's. When taco_data found too
few samples above the round-trip gate, nothing is trained: models/<lang>/taco_sft/status.json
and the scorecard rows say why (translator, measured round-trip chrF, counts).

Writes models/<lang>/taco_sft/{taco,plain}/{adapter/,curve.tsv} and status.json (one atomic
rename), results/<lang>/taco_sft.{json,rows.json} and the curves for DVC plots as
results/_curves/{loss,lr,tokens_per_s}/<lang>.taco_sft_{taco,plain}.tsv (DVC plots).
"""

from __future__ import annotations

import math
from pathlib import Path

from pipeline import io
from pipeline.config import section
from pipeline.errors import PolyalignError
from pipeline.paths import data_dir
from pipeline.provenance import sha256_file, signature
from pipeline.report import row, write_stage
from pipeline.taco import sft_dir
from pipeline.train import DEFAULTS, curve_file, write_curves

STAGE = "taco_sft"
SYSTEMS = ("taco", "plain")
COST = (("final_loss", False), ("train_tokens", True), ("tokens_per_s", True), ("wall_s", False),
        ("peak_rss_gb", False))


SCHEDULES = ("taco_only", "staged")


def out_dir(pack_id: str) -> Path:
    return sft_dir(pack_id)


def curve_name(pack_id: str, name: str) -> str:
    """DVC plot curves of one adapter: results/_curves/<quantity>/<pack>.taco_sft_<name>.tsv."""
    return curve_file(pack_id, f"{STAGE}_{name}")


def train_cfg(cfg: dict) -> dict:
    """`taco.sft` as pipeline.train settings; batches follow taco_data's curriculum order by default."""
    return {"order": "given", **cfg["sft"]}


def skipped_rows(pack_id: str, reason: str) -> list[dict]:
    note = f"not trained: {reason}"
    return [row(pack_id, "language", STAGE, f"final_loss_{name}", None, higher_is_better=False, note=note)
            for name in SYSTEMS]


def trained_rows(pack_id: str, results: dict[str, dict]) -> list[dict]:
    """Training cost and final loss per adapter (one run each: no CI)."""
    return [row(pack_id, "language", STAGE, f"{key}_{name}", results[name].get(key), higher_is_better=hib,
                note=None if results[name].get(key) is not None else "not reported by the trainer")
            for name in SYSTEMS for key, hib in COST]


def fitting(base: str, samples: list[dict], max_len: int) -> tuple[list[dict], int]:
    """Samples whose TaCo example (the longer of the two) fits `max_len` tokens, and how many did not.

    The trainer would cut a too-long response from the right, which removes exactly the
    target-language answer TaCo is about; such samples are dropped for both adapters and counted.
    """
    from pipeline.batching import encode_example
    from pipeline.models import load_tokenizer

    tok = load_tokenizer(base)
    size = [len(encode_example(tok, s["taco"]["prompt"], s["taco"]["response"], 10**9)[0]) for s in samples]
    kept = [s for s, n in zip(samples, size) if n <= max_len]
    return kept, len(samples) - len(kept)


def schedule_of(cfg: dict) -> str:
    how = cfg.get("schedule", "taco_only")
    if how not in SCHEDULES:
        raise PolyalignError("params.yaml", "taco.schedule", f"unknown schedule '{how}'", f"use one of {SCHEDULES}")
    return how


def staged_examples(samples: list[dict], steps: int, batch_size: int, fraction: float) -> tuple[list[dict], int]:
    """The staged curriculum as one example list of steps x batch_size, in order: the plain
    examples (cycled) for round(fraction x steps) steps, then the TaCo examples (cycled).
    Returns (examples, plain steps)."""
    first = min(steps - 1, max(0, round(fraction * steps)))
    take = lambda key, n: [samples[i % len(samples)][key] for i in range(n)]  # noqa: E731
    return take("plain", first * batch_size) + take("taco", (steps - first) * batch_size), first


def taco_run(samples: list[dict], cfg: dict) -> tuple[list[dict], dict, int]:
    """(examples, trainer settings, plain steps first) of the TaCo adapter under `taco.schedule`."""
    s = train_cfg(cfg)
    if schedule_of(cfg) == "taco_only":
        return [x["taco"] for x in samples], s, 0
    full = {**DEFAULTS, **s}
    steps = full["max_steps"] or math.ceil(len(samples) / full["batch_size"]) * full["epochs"]
    examples, first = staged_examples(samples, steps, full["batch_size"], float(cfg.get("staged_fraction", 0.5)))
    return examples, {**s, "max_steps": steps, "epochs": 1, "order": "given"}, first


def train_both(base: str, samples: list[dict], out: Path, cfg: dict, pack_id: str) -> dict[str, dict]:
    """Train the taco and plain adapters into `out` (an atomic temporary folder)."""
    from pipeline.train import train_causal_lm

    results = {"plain": train_causal_lm(base, [s["plain"] for s in samples], out / "plain",
                                       {**train_cfg(cfg), "curve_file": curve_name(pack_id, "plain")})}
    examples, settings, first = taco_run(samples, cfg)
    taco = train_causal_lm(base, examples, out / "taco", {**settings, "curve_file": curve_name(pack_id, "taco")})
    results["taco"] = {**taco, "plain_steps_first": first}
    return results


def run(pack_id: str, cfg: dict | None = None) -> None:
    cfg = cfg or section("taco")
    folder = data_dir(pack_id)
    meta, samples = io.read_json(folder / "taco_meta.json"), io.read_jsonl(folder / "taco.jsonl")
    base = cfg.get("base") or section("model")["base"]
    too_long = 0
    if meta["usable"] and samples:
        samples, too_long = fitting(base, samples, {**DEFAULTS, **train_cfg(cfg)}["max_len"])
    trained = bool(meta["usable"]) and len(samples) >= cfg["min_samples"]
    reason = meta["reason"] or (f"only {len(samples)} samples fit max_len (need {cfg['min_samples']})"
                                if not trained else "")
    with io.atomic_path(out_dir(pack_id)) as tmp:
        tmp.mkdir()
        results = train_both(base, samples, tmp, cfg, pack_id) if trained else {}
        io.write_json(tmp / "status.json", {"trained": trained, "reason": "" if trained else reason, "base": base,
                                            "translator": meta["translator"], "samples": len(samples), "too_long": too_long,
                                            "results": results})
    for name in SYSTEMS if not trained else ():  # header only, so the plot is empty, not missing
        write_curves(curve_name(pack_id, name), [])
    metrics = {"trained": trained, "samples": len(samples), "too_long": too_long, "staged": schedule_of(cfg) == "staged"}
    metrics |= {f"{k}_{name}": v for name, res in results.items() for k, v in res.items()}
    rows = trained_rows(pack_id, results) if trained else skipped_rows(pack_id, reason)
    sig = signature(stage=STAGE, pack=pack_id, base=base, cfg=cfg["sft"], schedule=schedule_of(cfg),
                    staged_fraction=cfg.get("staged_fraction"), translator=meta["translator"],
                    data=sha256_file(folder / "taco.jsonl")[:12])
    write_stage(pack_id, STAGE, metrics, rows, sig)


if __name__ == "__main__":
    from stages._cli import stage_main

    raise SystemExit(stage_main(run, __doc__))
