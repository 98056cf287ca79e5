"""All benchmarks in one run -> reports/bench.json (`make bench`).

Side by side, each variant in its own process (so peak memory is its own):
- matmul peaks of this machine in fp32 and bf16 (torch.matmul on square matrices);
- training (bench/bench_train.py): plain transformers Trainer vs pipeline.train, on a
  taco_sft-like (`sft`) and a laft-like (`lm`) scenario, same examples and settings;
  pipeline.train runs once per configured variant (`exact`: full-vocabulary loss;
  `trimmed`: output_vocab=data);
- generation and scoring (bench/bench_generate.py): per-example greedy and sampling loops vs
  batched; the pre-scored output layer vs the fp32 one (same outputs); scoring tokens/s.

Utilisation = model FLOP/s (4 * N * tokens/s for LoRA: forward 2N, backward w.r.t.
activations 2N, N = all parameters) over the bf16 matmul peak measured here, and over
the best measured peak; `executed_*` counts the FLOPs really run, N less the output-layer
rows a trimmed vocabulary skips (model FLOPs overstate that variant's work: above 1 once).
The figures are only as quiet as the machine: the file records the load average before and
after, and CPU-time rates beside wall-clock ones.

    python bench/run_all.py [--steps 24] [--quick] [--scenarios sft lm] [--out reports/bench.json] [--dvc-root DIR]
    python bench/run_all.py --isa avx2 --out bench/results/<date>-bench-avx2-capped.json   # or: make bench ISA=avx2

`--isa avx2` caps every kernel library at AVX2 (decode_at.ISA_CAPS), for this run and its children: a
machine with AVX-512/bf16 units runs an AVX2-only machine's code paths (fp32 training, fbgemm's fp16
first pass), on its own memory and clock; `machine.isa_cap` in the report says so.

Exits non-zero, naming each failed benchmark, when any child fails (the report keeps its traceback).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from decode_at import ISA_CAPS  # noqa: E402

# explicit, so params.yaml `train` (which pipeline.train also reads) cannot change what is compared
VARIANTS = {"exact": {"output_vocab": "full"}, "trimmed": {"output_vocab": "data"}}
TARGETS = {"train_speedup": 3.0, "generate_speedup": 5.0, "peak_rss_gb": 6.0}


def matmul_gflops(dtype, seconds: float = 2.0, max_n: int = 2048) -> dict:
    """Best-of sustained GFLOP/s of an n x n matmul; n shrinks where the dtype is slow (bf16 without hardware)."""
    import torch

    n = 256
    while True:
        a, b = torch.randn(n, n).to(dtype), torch.randn(n, n).to(dtype)
        start = time.perf_counter()
        a @ b
        once = time.perf_counter() - start
        if n >= max_n or once > 0.05:
            break
        n *= 2
    reps, best, deadline = 0, 0.0, time.perf_counter() + seconds
    while time.perf_counter() < deadline or reps < 3:
        start = time.perf_counter()
        a @ b
        best = max(best, 2 * n**3 / (time.perf_counter() - start) / 1e9)
        reps += 1
    return {"n": n, "gflops": round(best, 1), "reps": reps}


def machine() -> dict:
    import torch

    from pipeline.provenance import cpu_has_bf16, hardware, package_versions

    model_name = platform.processor()
    try:
        model_name = next(line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
                          if line.startswith("model name"))
    except (OSError, StopIteration):
        pass
    capped = {k: os.environ[k] for k in sorted({k for cap in ISA_CAPS.values() for k in cap}) if k in os.environ}
    return {"hardware": hardware(), "isa_cap": capped or None, "cpu": model_name, "cores": os.cpu_count(),
            "torch_threads": torch.get_num_threads(),
            "cpu_bf16_matrix_units": cpu_has_bf16(), "torch_cpu_capability": torch.backends.cpu.get_cpu_capability(),
            "ram_gb": round(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 1024**3, 1),
            "python": platform.python_version(),
            "packages": package_versions(("torch", "transformers", "peft", "accelerate", "numpy", "polyalign"))}


def child(script: str, args: list[str], out: Path) -> dict:
    """Run one benchmark in a fresh process; its JSON result, or the error tail."""
    cmd = [sys.executable, str(ROOT / "bench" / script), *args, "--out", str(out)]
    proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True)
    if proc.returncode != 0 or not out.exists():
        return {"error": (proc.stderr or proc.stdout)[-2000:]}
    return json.loads(out.read_text())


def train_block(scenario: str, steps: int, n_eval: int, threads: int, tmp: Path) -> dict:
    common = ["--scenario", scenario, "--steps", str(steps), "--eval", str(n_eval), "--threads", str(threads)]
    runs = {"trainer": child("bench_train.py", ["--variant", "trainer", *common], tmp / f"{scenario}-trainer.json")}
    for name, cfg in VARIANTS.items():
        runs[name] = child("bench_train.py", ["--variant", "polyalign", "--cfg", json.dumps(cfg), *common],
                           tmp / f"{scenario}-{name}.json")
    return runs


def derive(train: dict, gen: dict, peaks: dict, n_params: int, width: int | None = None) -> dict:
    """Ratios, utilisation and pass/fail against the targets of issues 3 and 4 (`width`: the
    hidden size, for the FLOPs a trimmed output vocabulary really runs)."""
    out = {}
    best_peak = max(p["gflops"] for p in peaks.values())
    for scenario, runs in train.items():
        base = runs.get("trainer", {})
        for name in VARIANTS:
            r = runs.get(name, {})
            if "error" in r or "error" in base or not r:
                continue
            flops = 4 * n_params * r["tokens_per_s"] / 1e9
            vocabs = (base.get("output_vocab"), r.get("output_vocab"))
            skipped = (vocabs[0] - vocabs[1]) * width if width and None not in vocabs else 0
            executed = 4 * (n_params - skipped) * r["tokens_per_s"] / 1e9
            out[f"{scenario}.{name}"] = {
                "speedup_wall": r["tokens_per_s"] / base["tokens_per_s"],
                "speedup_cpu_time": (r["tokens"] / r["loop_cpu_s"]) / (base["tokens"] / base["loop_cpu_s"]),
                "model_gflops": flops,
                "utilisation_vs_bf16_peak": flops / peaks["bf16"]["gflops"],
                "executed_gflops": executed,
                "executed_utilisation_vs_bf16_peak": executed / peaks["bf16"]["gflops"],
                "utilisation_vs_best_peak": flops / best_peak,
                "trainer_utilisation_vs_best_peak": 4 * n_params * base["tokens_per_s"] / 1e9 / best_peak,
                "heldout_loss_delta": r["heldout_loss"] - base["heldout_loss"],
                "meets_speedup": r["tokens_per_s"] / base["tokens_per_s"] >= TARGETS["train_speedup"],
                "meets_memory": r["peak_rss_gb"] <= TARGETS["peak_rss_gb"],
                "quality_kept": r["heldout_loss"] <= base["heldout_loss"] + 0.02,
            }
    if "error" not in gen:
        out["generate"] = generate_summary(gen, peaks, n_params)
    return out


def generate_summary(gen: dict, peaks: dict, n_params: int) -> dict:
    """Decoding and scoring rates, model GFLOP/s (2 N a token) over the fp32 matmul peak, the
    pre-scored head against the fp32 output layer in the same run, greedy decoding's share of time in
    GEMMs and attention (its floor: the most any code doing the same arithmetic could gain), and the
    default graph's decode/score share from the newest recorded run (bench/stage_seconds.py, bench/results/)."""
    batches = {k: v for k, v in gen.items() if k.startswith("batch_") and k.split("_")[1].isdigit() and len(k.split("_")) == 2}
    name, best = max(batches.items(), key=lambda kv: kv[1]["tokens_per_s"])
    gflops = lambda r: 2 * n_params * r / 1e9  # noqa: E731
    out = {"greedy_best": name, "greedy_tokens_per_s": best["tokens_per_s"], "best_speedup": best["speedup"],
           "meets_speedup": best["speedup"] >= TARGETS["generate_speedup"],
           "greedy_gflops": gflops(best["tokens_per_s"]),
           "greedy_utilisation_vs_fp32_peak": gflops(best["tokens_per_s"]) / peaks["fp32"]["gflops"],
           "greedy_same_as_per_example": best["same_as_per_example"]}
    big = max(batches, key=lambda k: int(k.split("_")[1]))
    if f"{big}_fp32_head" in gen:
        full = gen[f"{big}_fp32_head"]
        out |= {"prescored_vs_fp32_head_same_run": batches[big]["tokens_per_s"] / full["tokens_per_s"],
                "prescored_same_as_fp32_head": full["same_as_prescored"]}
    bf16 = gen.get(f"{big}_bf16_body", {})
    if "tokens_per_s" in bf16:
        out |= {"bf16_body_tokens_per_s": bf16["tokens_per_s"],
                "bf16_body_vs_exact_same_run": bf16["tokens_per_s"] / batches[big]["tokens_per_s"],
                "bf16_body_identical_rows": bf16["identical_rows"]}
    elif bf16:
        out["bf16_body"] = bf16["skipped"]
    floor = gen.get(f"{big}_floor")
    if floor:
        out |= {"greedy_gemm_attention_share": (floor["gemm_s"] + floor["attention_s"]) / floor["profiled_wall_s"],
                "greedy_at_most_x_same_arithmetic": floor["at_most_x_if_only_gemms_and_attention"]}
    if "prefill_positions" in gen:
        out["prefill_positions"] = gen["prefill_positions"]
    sampled = next((v for k, v in gen.items() if k.startswith("sampled_batch_")), None)
    if sampled:
        out |= {"sampled_tokens_per_s": sampled["tokens_per_s"], "sampled_speedup": sampled["speedup"]}
    if "scoring" in gen:
        sc = gen["scoring"]
        out |= {"scoring_text_tokens_per_s": sc["text_bits"]["tokens_per_s"],
                "scoring_options_tokens_per_s": sc["options_shared"]["tokens_per_s"],
                "scoring_shared_context_speedup": sc["options_shared"]["speedup"]}
    from stage_seconds import latest

    graph = latest(ROOT / "bench" / "results")
    if graph is None:
        return out | {"default_graph_decode_score_share": None, "default_graph_note": "no recorded default-graph run "
                      "(bench/stage_seconds.py)"}
    return out | {"default_graph_decode_score_share": graph["decode_score_share"],
                  "default_graph_stage_s": graph["stage_s"], "default_graph_run": graph["file"],
                  "default_graph_hardware": graph.get("hardware")}


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=24, help="optimizer steps of batch 8 per training run")
    parser.add_argument("--eval", type=int, default=32, help="held-out examples for the loss check")
    parser.add_argument("--scenarios", nargs="+", default=["sft", "lm"], choices=["sft", "lm"])
    parser.add_argument("--threads", type=int, default=0, help="torch threads per child (0: torch's default)")
    parser.add_argument("--quick", action="store_true", help="3 steps, 8 held-out, sft only: checks the bench runs")
    parser.add_argument("--out", type=Path, default=ROOT / "reports" / "bench.json")
    parser.add_argument("--dvc-root", type=Path, default=ROOT,
                        help="a repository whose graph is built (reports/scorecard.json): its no-op `dvc repro` is timed")
    parser.add_argument("--isa", choices=sorted(ISA_CAPS), help="cap the kernel libraries at this instruction set")
    args = parser.parse_args(argv)
    if args.isa:
        os.environ.update(ISA_CAPS[args.isa])  # before torch loads; the children inherit it
    if args.quick:
        args.steps, args.eval, args.scenarios = 3, 8, ["sft"]
    import tempfile

    import torch

    from pipeline import io
    from pipeline.models import materialise, n_parameters

    started, load_before = time.strftime("%Y-%m-%dT%H:%M:%S"), os.getloadavg()
    if args.threads:
        torch.set_num_threads(args.threads)
    peaks = {"fp32": matmul_gflops(torch.float32), "bf16": matmul_gflops(torch.bfloat16)}
    model_dir = materialise("gemma-3-270m")
    n_params, width = n_parameters(model_dir), io.read_json(model_dir / "config.json").get("hidden_size")
    with tempfile.TemporaryDirectory() as tmp:
        train = {s: train_block(s, args.steps, args.eval, args.threads, Path(tmp)) for s in args.scenarios}
        gen = child("bench_generate.py", ["--threads", str(args.threads), *(["--prompts", "8", "--new", "16", "--batch-sizes", "8"]
                                                                           if args.quick else [])], Path(tmp) / "gen.json")
    report = {"started": started, "finished": time.strftime("%Y-%m-%dT%H:%M:%S"),
              "load_average_before": load_before, "load_average_after": os.getloadavg(),
              "machine": machine(), "model": "gemma-3-270m", "model_parameters": n_params,
              "matmul_peak": peaks, "settings": {"steps": args.steps, "batch": 8, "eval": args.eval,
                                                 "variants": VARIANTS, "targets": TARGETS},
              "train": train, "generate": gen, "summary": derive(train, gen, peaks, n_params, width)}
    from bench_dvc import noop_repro_seconds

    report["dvc"] = noop_repro_seconds(args.dvc_root) | {"root": str(args.dvc_root)}
    report["summary"]["dvc_noop_repro"] = {"skipped": report["dvc"]["skipped"]} if "skipped" in report["dvc"] else \
        {"median_s": report["dvc"]["dvc_noop_repro_s_median"], "meets_5s": report["dvc"]["dvc_noop_repro_s_median"] < 5.0}
    io.write_json(args.out, report)
    print(json.dumps(report["summary"], indent=2))
    failed = failures(train, gen)
    for name, last in failed.items():
        print(f"error: bench {name} failed: {last} (details in {args.out})", file=sys.stderr)
    return 1 if failed else 0


def failures(train: dict, gen: dict) -> dict[str, str]:
    """{benchmark: last line of its error} for every child that failed."""
    runs = {f"train.{s}.{v}": r for s, rs in train.items() for v, r in rs.items()} | {"generate": gen}
    return {name: (r["error"].strip().splitlines() or ["?"])[-1] for name, r in runs.items() if "error" in r}


if __name__ == "__main__":
    sys.exit(main())
