"""Generation throughput: pipeline.generate's batched greedy decoding against a per-example loop.

Baseline: the plain recipe, one prompt at a time, `tokenizer(prompt)` then
`model.generate(max_new_tokens, do_sample=False)`. Ours: pipeline.generate.generate_ids
(length-sorted, left-padded batches, KV cache, rows leave the batch when they reach EOS).
Same model object, same prompts
(NTREX English -> Galician translation prompts), greedy. Tokens counted are the new
tokens really generated (up to and including EOS), in both cases. Also reported: the
share of prompts whose batched output equals the per-example output token for token.

    python bench/bench_generate.py --prompts 32 --new 32 --batch-sizes 8 16 32 --out result.json
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

MODEL = "gemma-3-270m"
PROMPT = "Translate from English to Galician.\nEnglish: {en}\nGalician:"


def prompts(n: int, offset: int = 1000) -> list[str]:
    from pipeline.sources import read
    from pipeline.text import ntrex_source

    return [PROMPT.format(en=en) for en in read(ntrex_source("eng"))[offset:offset + n]]


def per_example(model, tok, texts: list[str], new: int) -> tuple[list[list[int]], float, float]:
    """The baseline loop; returns new token ids (trimmed at EOS), wall and CPU seconds."""
    import torch

    from pipeline.generate import _eos_ids, _trim

    stop, outs = _eos_ids(model, tok), []
    start, cpu = time.perf_counter(), time.process_time()
    with torch.inference_mode():
        for text in texts:
            enc = tok(text, return_tensors="pt")
            seq = model.generate(**enc, max_new_tokens=new, do_sample=False, pad_token_id=tok.pad_token_id)
            outs.append(_trim(seq[0, enc["input_ids"].shape[1]:].tolist(), stop))
    return outs, time.perf_counter() - start, time.process_time() - cpu


def batched(model, tok, texts: list[str], new: int, batch_size: int) -> tuple[list[list[int]], float, float]:
    from pipeline.generate import generate_ids

    start, cpu = time.perf_counter(), time.process_time()
    ids = generate_ids(model, tok, texts, max_new_tokens=new, batch_size=batch_size)
    return [rows[0] for rows in ids], time.perf_counter() - start, time.process_time() - cpu


def head_shapes(model, rows=(1, 8, 16, 256), reps: int = 3) -> dict:
    """Milliseconds of the output layer for `rows` hidden states: h @ W.T (what nn.Linear runs)
    against (W @ h.T).T (what pipeline.generate runs on CPU), same weights, same products."""
    import torch

    weight = model.get_output_embeddings().weight.detach()
    out = {}
    with torch.inference_mode():
        for n in rows:
            h = torch.randn(n, weight.shape[1], dtype=weight.dtype)
            times = {}
            for name, fn in (("h_at_wt", lambda: h @ weight.t()), ("w_at_ht", lambda: (weight @ h.t()).t())):
                fn()
                start = time.perf_counter()
                for _ in range(reps):
                    fn()
                times[name] = (time.perf_counter() - start) / reps * 1000
            out[f"rows_{n}"] = {**{f"{k}_ms": round(v, 1) for k, v in times.items()},
                                "speedup": round(times["h_at_wt"] / times["w_at_ht"], 2)}
    return out


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--prompts", type=int, default=32)
    parser.add_argument("--new", type=int, default=32, help="max new tokens")
    parser.add_argument("--batch-sizes", type=int, nargs="+", default=[8, 16, 32])
    parser.add_argument("--threads", type=int, default=0)
    parser.add_argument("--out", type=Path, required=True)
    args = parser.parse_args(argv)
    import torch

    from pipeline.models import load_model
    from pipeline.train import peak_rss_gb

    if args.threads:
        torch.set_num_threads(args.threads)
    model, tok = load_model(MODEL)
    texts = prompts(args.prompts)
    batched(model, tok, texts[:2], 2, 2)  # warm-up: first-call allocations are not generation speed
    base_ids, base_s, base_cpu = per_example(model, tok, texts, args.new)
    base_tokens = sum(map(len, base_ids))
    result = {"model": MODEL, "dtype": str(model.dtype), "prompts": len(texts), "max_new_tokens": args.new,
              "threads": torch.get_num_threads(),
              "per_example": {"tokens": base_tokens, "seconds": base_s, "cpu_s": base_cpu,
                              "tokens_per_s": base_tokens / base_s}}
    for bs in args.batch_sizes:
        ids, secs, cpu = batched(model, tok, texts, args.new, bs)
        tokens = sum(map(len, ids))
        result[f"batch_{bs}"] = {"tokens": tokens, "seconds": secs, "cpu_s": cpu, "tokens_per_s": tokens / secs,
                                 "speedup": (tokens / secs) / (base_tokens / base_s),
                                 "speedup_cpu_time": (tokens / cpu) / (base_tokens / base_cpu),
                                 "same_as_per_example": sum(a == b for a, b in zip(ids, base_ids)) / len(ids)}
    result["output_layer"] = head_shapes(model)
    result["peak_rss_gb"] = peak_rss_gb()
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
