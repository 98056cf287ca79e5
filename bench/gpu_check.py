"""One-command GPU check: measure training, scoring and generation throughput and peak memory
of a model on this machine, then estimate the paper profile's GPU time per pack from them.

    python bench/gpu_check.py                                  # the paper profile's base model
    python bench/gpu_check.py --model tiny-random --steps 2    # wiring check (CPU, seconds)
    python bench/gpu_check.py --assume-tflops 312 --assume-tbs 2.0   # no GPU: estimate from FLOPs

Measured: LoRA training tokens/s (pipeline.train.train_causal_lm, packed NTREX text, the
paper profile's laft batch and length), scoring tokens/s (pipeline.generate.text_nll_bits),
generated tokens/s (pipeline.generate.generate_ids, greedy, batched), peak GPU memory.
Estimate: the paper workload (tokens each stage trains on, scores or generates, from
params.yaml's paper profile; `workload()`) divided by those rates. With --assume-*, rates
come from FLOPs instead: training 4N FLOPs a token for LoRA over frozen weights (forward 2N,
backward to the activations 2N, no weight gradients), scoring 2N, decoding bound by reading
the bf16 weights once a step for the whole batch or by a per-step overhead (--step-ms),
whichever is slower; FLOPs and bandwidth times an achievable fraction (--mfu). Model loading
and Python set-up per stage are not counted.
Writes JSON to --out (default stdout).
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

PAPER_BASE = "Qwen/Qwen2.5-1.5B@8faed761d45a263340a0528343f099c05c9a4323"


def _sync() -> None:
    import torch

    if torch.cuda.is_available():
        torch.cuda.synchronize()


def measure(name: str, steps: int, batch_size: int, max_len: int, n_score: int, n_gen: int, new: int) -> dict:
    """Throughputs (tokens/s) and peak GPU memory of model `name`."""
    import torch

    from pipeline.generate import generate_ids, text_nll_bits
    from pipeline.models import load_model, materialise, n_parameters, ntrex_sample
    from pipeline.train import train_causal_lm

    texts = ntrex_sample("eng", max(64, n_score, n_gen))
    cfg = {"max_steps": steps, "batch_size": batch_size, "max_len": max_len, "target_modules": "auto",
           "progress": False, "checkpoint_every": 0}
    with tempfile.TemporaryDirectory() as tmp:
        fit = train_causal_lm(name, [{"prompt": "", "response": t} for t in texts], Path(tmp) / "out",
                              {**cfg, "checkpoint_dir": str(Path(tmp) / "ckpt")})
    model, tok = load_model(name)
    model.to("cuda" if torch.cuda.is_available() else "cpu")
    _sync()
    start = time.perf_counter()
    text_nll_bits(model, tok, texts[:n_score], batch_size=16)
    _sync()
    scored = sum(len(tok(t, add_special_tokens=False)["input_ids"]) for t in texts[:n_score])
    score_s = time.perf_counter() - start
    start = time.perf_counter()
    out = generate_ids(model, tok, [f"{t}\nTranslate:" for t in texts[:n_gen]], max_new_tokens=new, batch_size=n_gen)
    _sync()
    gen_s = time.perf_counter() - start
    peak = torch.cuda.max_memory_allocated() / 1024**3 if torch.cuda.is_available() else None
    return {"model": name, "n_params": n_parameters(materialise(name)), "device": _device_name(),
            "train_tokens_per_s": fit["tokens_per_s"], "score_tokens_per_s": scored / score_s,
            "generate_tokens_per_s": sum(len(r[0]) for r in out) / gen_s, "peak_gpu_gb": peak,
            "train_peak_gpu_gb": fit.get("peak_gpu_gb"), "settings": {**cfg, "n_score": n_score, "n_gen": n_gen,
                                                                       "new_tokens": new}}


def _device_name() -> str:
    from pipeline.provenance import hardware

    return hardware()


def assumed_rates(n_params: float, tflops: float, tbs: float, mfu: float, gen_batch: int,
                  step_overhead_s: float) -> dict:
    """Rates (tokens/s) from FLOPs and memory bandwidth: see the module docstring. A decoding
    step costs at least `step_overhead_s` (transformers' eager per-layer Python and kernel
    launches, which dominate a 1.5B model's weight read)."""
    flops = tflops * 1e12 * mfu
    step_s = max(2 * n_params / (tbs * 1e12 * mfu), step_overhead_s)  # bf16 weights read once a step
    return {"train_tokens_per_s": flops / (4 * n_params), "score_tokens_per_s": flops / (2 * n_params),
            "generate_tokens_per_s": gen_batch / step_s}


# Tokens of each stage for one language pack (+ the shared stages once), from the paper profile.
# Upper bounds where rows are packed full; counts of items are the data's (TaCo 427 instructions,
# NTREX 25 test documents ~400 sentences, hh-rlhf ~1,750 train / ~220 test pairs).
def workload(p: dict) -> dict[str, dict[str, float]]:
    laft, maft, taco, rmt = p["laft"], p["maft"], p["taco"], p["rm_transfer"]
    # `auto` budgets come from the TaCo targets' lengths at run time; estimate with the fallback
    budget = taco["eval"].get("max_new_tokens", "auto")
    budget = budget if isinstance(budget, int) else taco["eval"].get("budget", {}).get("fallback", 574)
    sent_tokens = 40          # NTREX sentence, ~1.3 tokens a word for a multilingual 150k vocabulary
    return {
        "taco_data@L": {"generate": 427 * 2 * 150, "score": 427 * 2 * 300},   # translate + round-trip prompts
        "taco_sft@L": {"train": 384 * taco["sft"]["max_len"]},
        "taco_eval@L": {"generate": 43 * 2 * budget, "score": 43 * 600},
        "laft@L": {"train": laft["max_steps"] * laft["batch_size"] * laft["max_len"]},
        "laft_eval@L": {"score": 3 * 2 * 404 * sent_tokens},                   # 3 models x 2 sides
        "mt_errors@L": {"generate": 2 * 404 * 60, "score": 2 * 404 * 400},    # 4-shot prompts, both directions
        "rm_transfer@L": {"generate": (rmt["eval_pairs"] + rmt["tt_pairs"]) * 2 * 150
                          + rmt["bon"]["prompts"] * 4 * budget, "train": rmt["tt_pairs"] * 2 * 200,
                          "score": rmt["eval_pairs"] * 2 * 200 * 3},
        "maft (shared, once)": {"train": maft["max_steps"] * maft["batch_size"] * maft["max_len"]},
        "rm_train (shared, once)": {"train": 1750 * 2 * 200, "score": 220 * 2 * 200},
    }


def estimate(rates: dict, work: dict) -> dict:
    """GPU seconds per stage and for one pack (per-pack stages + shared ones), from rates."""
    keys = {"train": "train_tokens_per_s", "score": "score_tokens_per_s", "generate": "generate_tokens_per_s"}
    per_stage = {s: sum(n / rates[keys[k]] for k, n in w.items()) for s, w in work.items()}
    per_pack = sum(v for s, v in per_stage.items() if s.endswith("@L"))
    return {"stage_s": {s: round(v, 1) for s, v in per_stage.items()}, "pack_s": round(per_pack, 1),
            "shared_s": round(sum(per_stage.values()) - per_pack, 1)}


def paper_params() -> dict:
    from pipeline.config import load_params, section

    params = load_params()
    params["profile"] = "paper"
    return {name: section(name, params) for name in ("laft", "maft", "taco", "rm_transfer")}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--model", default=PAPER_BASE)
    ap.add_argument("--steps", type=int, default=8)
    ap.add_argument("--batch-size", type=int, default=16)
    ap.add_argument("--max-len", type=int, default=1024)
    ap.add_argument("--score", type=int, default=256, help="sentences scored")
    ap.add_argument("--gen", type=int, default=64, help="prompts generated in one batch")
    ap.add_argument("--new", type=int, default=64, help="new tokens a prompt")
    ap.add_argument("--assume-tflops", type=float, help="no measurement: peak bf16 TFLOP/s of the GPU")
    ap.add_argument("--assume-tbs", type=float, default=2.0, help="memory bandwidth, TB/s (with --assume-tflops)")
    ap.add_argument("--assume-params", type=float, default=1.54e9, help="parameters (with --assume-tflops)")
    ap.add_argument("--mfu", type=float, default=0.3, help="achievable fraction of peak (with --assume-tflops)")
    ap.add_argument("--step-ms", type=float, default=25.0, help="decoding step overhead, ms (with --assume-tflops)")
    ap.add_argument("--out", type=Path)
    args = ap.parse_args(argv)
    if args.assume_tflops:
        rates = assumed_rates(args.assume_params, args.assume_tflops, args.assume_tbs, args.mfu, args.gen,
                              args.step_ms / 1000)
        result = {"assumed": vars(args) | {"out": None}, **rates}
    else:
        result = measure(args.model, args.steps, args.batch_size, args.max_len, args.score, args.gen, args.new)
    result["estimate"] = estimate(result, workload(paper_params()))
    text = json.dumps(result, indent=1, default=str)
    if args.out:
        args.out.write_text(text + "\n")
    else:
        print(text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
