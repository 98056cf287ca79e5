"""Batched greedy decoding tokens/s of the code in another checkout, for same-machine comparisons
across commits (the throughput issue's "N x today's batched figure").

    git worktree add /tmp/at-af03187 af03187
    python bench/decode_at.py --src /tmp/at-af03187 --batch 32    # that commit's pipeline.generate
    python bench/decode_at.py --src . --batch 32                  # this checkout's

Same model (gemma-3-270m from this checkout's cache), same prompts (bench_generate.prompts: NTREX
English -> Galician), `--batch` prompts in one batch, `--new` new tokens; prints one JSON line with the
new tokens decoded, seconds, tokens/s and the machine. Run the two back to back on an idle machine.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--src", type=Path, required=True, help="a checkout whose pipeline/ is timed")
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--new", type=int, default=32)
    parser.add_argument("--threads", type=int, default=0)
    args = parser.parse_args(argv)
    src = args.src.resolve()
    sys.path[:0] = [str(src), str(src / "bench")]
    import torch

    if args.threads:
        torch.set_num_threads(args.threads)
    from bench_generate import prompts

    from pipeline import generate as G
    from pipeline.models import load_model
    from pipeline.provenance import hardware

    model, tok = load_model("gemma-3-270m")
    texts = prompts(args.batch)
    G.generate_ids(model, tok, texts[:4], max_new_tokens=4, batch_size=4)  # warm-up (first-call allocations)
    start = time.perf_counter()
    ids = G.generate_ids(model, tok, texts, max_new_tokens=args.new, batch_size=args.batch)
    seconds = time.perf_counter() - start
    tokens = sum(len(rows[0]) for rows in ids)
    print(json.dumps({"src": str(src), "batch": args.batch, "new": args.new, "threads": torch.get_num_threads(),
                      "tokens": tokens, "seconds": round(seconds, 2), "tokens_per_s": round(tokens / seconds, 1),
                      "hardware": hardware()}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
