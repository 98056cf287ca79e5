"""Batched greedy decoding tokens/s of the code in another checkout, for same-machine comparisons
across commits (the throughput issue's "N x today's batched figure").

    git worktree add /tmp/at-af03187 af03187
    python bench/decode_at.py --src /tmp/at-af03187 --batch 32    # that commit's pipeline.generate
    python bench/decode_at.py --src . --batch 32                  # this checkout's
    python bench/decode_at.py --src . --against /tmp/at-af03187 --pairs 4   # both, alternating: paired ratios
    python bench/decode_at.py --src . --against <checkout> --batch 9 --sentences 8 --new 400   # past the sliding window
    python bench/decode_at.py --src . --against /tmp/at-af03187 --pairs 3 --floor   # and the ceiling of the ratio
    python bench/decode_at.py --src . --against /tmp/at-af03187 --pairs 4 --isa avx2   # an AVX2-only CPU's kernels

Same model (gemma-3-270m from this checkout's cache), same prompts (bench_generate.prompts: NTREX
English -> Galician), `--batch` prompts in one batch, `--new` new tokens; prints one JSON line with the
new tokens decoded, a digest of the token ids, seconds, tokens/s and the machine. Run the two back
to back on an idle machine, or give `--against` to have `--pairs` runs of each alternate (each in its
own process) and get the ratio of every pair and whether the two decoded the same tokens: on a shared
machine the rate drifts by 10-30% within minutes, so only ratios of neighbouring runs compare code.
`ratio` is the pairs' geometric mean with a 95% t-interval (ratio_summary): whether a target such as
3x is inside it says more than any one pair. `--floor` also times --src's GEMMs and attention
(time_in_ops) and, with --against, divides the other checkout's seconds by them: the largest ratio
any code doing --src's arithmetic could reach. `--isa avx2` caps every kernel library at AVX2 through
its environment variable (ISA_CAPS: ATen, fbgemm, oneDNN, MKL; polyalign then sees no bf16 units), so a
machine with AVX-512/bf16 runs the code paths of an AVX2-only one; its memory, caches and clock stay
its own, so such a figure says which paths pay, not what an AVX2-only machine measures.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import sys
import time
from pathlib import Path

# Environment variables that hold each kernel library at an instruction set (read when the library
# first runs, so they are set before torch is imported): ATen's dispatch, fbgemm (fp16-weight GEMMs),
# oneDNN (bf16 GEMMs; pipeline.provenance.cpu_has_bf16 reads its cap) and MKL (fp32 GEMMs).
ISA_CAPS = {"avx2": {"ATEN_CPU_CAPABILITY": "avx2", "FBGEMM_ENABLE_INSTRUCTIONS": "AVX2",
                     "ONEDNN_MAX_CPU_ISA": "AVX2", "MKL_ENABLE_INSTRUCTIONS": "AVX2"}}


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--src", type=Path, required=True, help="a checkout whose pipeline/ is timed")
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--new", type=int, default=32)
    parser.add_argument("--threads", type=int, default=0)
    parser.add_argument("--sentences", type=int, default=1,
                        help="NTREX sentences a prompt (8 with --new 400: past gemma's 512-position sliding window)")
    parser.add_argument("--against", type=Path, help="a second checkout, run alternately with --src")
    parser.add_argument("--pairs", type=int, default=4, help="alternating runs of each with --against")
    parser.add_argument("--floor", action="store_true",
                        help="decode once more under torch.profiler: seconds in GEMMs and attention (time_in_ops)")
    parser.add_argument("--isa", choices=sorted(ISA_CAPS), help="cap the kernel libraries at this instruction set")
    args = parser.parse_args(argv)
    if args.against:
        return paired(args)
    os.environ.update(ISA_CAPS.get(args.isa, {}))
    src = args.src.resolve()
    sys.path[:0] = [str(src), str(src / "bench")]
    import torch

    if args.threads:
        torch.set_num_threads(args.threads)
    from pipeline import generate as G
    from pipeline.models import load_model
    from pipeline.provenance import hardware

    model, tok = load_model("gemma-3-270m")
    texts = workload(args.batch, args.sentences)
    G.generate_ids(model, tok, texts[:4], max_new_tokens=4, batch_size=4)  # warm-up (first-call allocations)
    start = time.perf_counter()
    ids = G.generate_ids(model, tok, texts, max_new_tokens=args.new, batch_size=args.batch)
    seconds = time.perf_counter() - start
    tokens = sum(len(rows[0]) for rows in ids)
    ops = time_in_ops(lambda: G.generate_ids(model, tok, texts, max_new_tokens=args.new, batch_size=args.batch)) \
        if args.floor else {}
    print(json.dumps(ops | {"src": str(src), "batch": args.batch, "new": args.new, "sentences": args.sentences,
                      "prompt_tokens": sum(len(G._encode_prompt(tok, t)) for t in texts),
                      "threads": torch.get_num_threads(), "tokens": tokens,
                      "ids_sha256": hashlib.sha256(json.dumps(ids).encode()).hexdigest()[:16],
                      "seconds": round(seconds, 2), "tokens_per_s": round(tokens / seconds, 1), "hardware": hardware(),
                      "isa_cap": ISA_CAPS.get(args.isa)}))
    return 0


# time_in_ops lives here, not in bench_generate (which imports it), because this file always runs from
# this checkout while --src puts another checkout's bench/ first on the path.
# The products with a weight matrix (the decoder's linear layers, the output layer's passes) and the
# attention kernels, by the names torch.profiler gives their ops on CPU.
GEMM_OPS = ("quantized::linear_dynamic_fp16", "mkldnn::_linear_pointwise", "aten::mm", "aten::addmm", "aten::bmm")
ATTENTION_OPS = ("aten::_scaled_dot_product_flash_attention_for_cpu", "aten::_scaled_dot_product_attention_math")


def time_in_ops(fn) -> dict:
    """fn() once under torch.profiler: seconds spent in weight GEMMs (GEMM_OPS) and in attention
    (ATTENTION_OPS), each op's own time. Their sum is a floor for any code that does the same
    arithmetic the same way: the rest (norms, activations, masks, Python) is what a faster
    implementation could remove."""
    from torch.profiler import ProfilerActivity, profile

    start = time.perf_counter()
    with profile(activities=[ProfilerActivity.CPU]) as prof:
        fn()
    wall = time.perf_counter() - start
    own = {e.key: e.self_cpu_time_total / 1e6 for e in prof.key_averages()}
    gemm = {k: round(v, 4) for k, v in own.items() if k in GEMM_OPS}
    return {"gemm_s": round(sum(gemm.values()), 4), "gemm_s_by_op": gemm,
            "attention_s": round(sum(v for k, v in own.items() if k in ATTENTION_OPS), 4),
            "profiled_wall_s": round(wall, 3)}


def ratio_summary(ratios: list[float]) -> dict:
    """Geometric mean of paired speed ratios and its 95% t-interval over the pairs' log ratios: each
    pair's two runs are neighbours, so the machine's slow drift cancels within a pair and what
    varies between pairs is the noise the interval reflects."""
    import math
    import statistics

    logs = [math.log(r) for r in ratios]
    mean = statistics.fmean(logs)
    out = {"pairs": len(logs), "geomean": round(math.exp(mean), 2), "ci95": None}
    if len(logs) > 1:
        from scipy import stats

        half = stats.t.ppf(0.975, len(logs) - 1) * statistics.stdev(logs) / math.sqrt(len(logs))
        out["ci95"] = [round(math.exp(mean - half), 2), round(math.exp(mean + half), 2)]
    return out


def workload(batch: int, sentences: int) -> list[str]:
    """`batch` translation prompts (bench_generate's), each of `sentences` consecutive NTREX sentences."""
    from bench_generate import PROMPT, prompts

    if sentences == 1:
        return prompts(batch)
    english = [p.split("English: ", 1)[1].rsplit("\n", 1)[0] for p in prompts(batch * sentences)]
    return [PROMPT.format(en=" ".join(english[i * sentences:(i + 1) * sentences])) for i in range(batch)]


def paired(args) -> int:
    """--pairs runs of --src and --against alternately, each in a fresh process: one JSON line with
    both series and the ratio src/against of each pair."""
    import subprocess

    rates: dict[str, list[float]] = {"src": [], "against": []}
    seconds: dict[str, list[float]] = {"src": [], "against": []}
    floors: list[float] = []
    hardware, outputs = None, {}
    for _ in range(args.pairs):
        for key in ("against", "src"):
            cmd = [sys.executable, __file__, "--src", str(getattr(args, key)), "--batch", str(args.batch),
                   "--new", str(args.new), "--threads", str(args.threads), "--sentences", str(args.sentences)]
            cmd += ["--floor"] if args.floor and key == "src" else []
            cmd += ["--isa", args.isa] if args.isa else []
            run = json.loads(subprocess.run(cmd, capture_output=True, text=True, check=True).stdout.splitlines()[-1])
            rates[key].append(run["tokens_per_s"])
            seconds[key].append(run["seconds"])
            floors += [run["gemm_s"] + run["attention_s"]] if "gemm_s" in run else []
            hardware, outputs[key] = run["hardware"], run["ids_sha256"]
    print(json.dumps({"src": str(args.src.resolve()), "against": str(args.against.resolve()), "batch": args.batch,
                      "new": args.new, "sentences": args.sentences, "tokens_per_s": rates, "hardware": hardware,
                      "isa_cap": ISA_CAPS.get(args.isa),
                      "same_tokens": outputs["src"] == outputs["against"],
                      "paired_ratio": [round(a / b, 2) for a, b in zip(rates["src"], rates["against"])],
                      "ratio": ratio_summary([a / b for a, b in zip(rates["src"], rates["against"])])}
                     | ({"src_gemm_attention_s": floors,
                         "at_most_ratio_same_arithmetic": [round(a / f, 2) for a, f in zip(seconds["against"], floors)]}
                        if floors else {})))
    return 0


if __name__ == "__main__":
    sys.exit(main())
