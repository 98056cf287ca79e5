"""Generation and scoring throughput: pipeline.generate's batched decoding against a per-example loop.

Baseline: the plain recipe, one prompt at a time, `tokenizer(prompt)` then
`model.generate(max_new_tokens, do_sample=False)`. Ours: pipeline.generate.generate_ids
(length-sorted, left-padded batches, KV cache, rows leave the batch when they reach EOS).
Same model object, same prompts
(NTREX English -> Galician translation prompts), greedy. Tokens counted are the new
tokens really generated (up to and including EOS), in both cases. Also reported: the
share of prompts whose batched output equals the per-example output token for token.

Also, same prompts and model: greedy with the output layer's fp32 GEMM instead of the
pre-scored head (POLYALIGN_PRESCORE=off: outputs must be identical); sampling (temperature
0.8, top-p 0.95, the model's top-k) ours vs the per-example `model.generate(do_sample=True)`
loop; scoring (sum_logprobs) of NTREX sentences (bits per byte, every token scored) and of
survey-like items (one question, several answer options: shared context vs one row each).
The positions the prompts' forward pass runs (one padded batch vs the length groups), and, on CPUs
with bf16 units, greedy with the decoder's linear layers in bf16: its speed and how often its tokens
differ from the exact ones (it is not what the pipeline runs). And the floor of greedy decoding at the
largest batch: the seconds its GEMMs and attention take (torch.profiler), so the most any code that
does the same arithmetic could gain over ours.

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


def batched(model, tok, texts: list[str], new: int, batch_size: int, **opts) -> tuple[list[list[int]], float, float]:
    from pipeline.generate import generate_ids

    start, cpu = time.perf_counter(), time.process_time()
    ids = generate_ids(model, tok, texts, max_new_tokens=new, batch_size=batch_size, **opts)
    return [rows[0] for rows in ids], time.perf_counter() - start, time.process_time() - cpu


SAMPLE = dict(do_sample=True, temperature=0.8, top_p=0.95)


def per_example_sampled(model, tok, texts: list[str], new: int) -> tuple[int, float]:
    """transformers' sampling one prompt at a time: (new tokens up to EOS, wall seconds)."""
    import torch

    from pipeline.generate import _eos_ids, _trim

    stop, tokens, start = _eos_ids(model, tok), 0, time.perf_counter()
    torch.manual_seed(0)
    with torch.inference_mode():
        for text in texts:
            enc = tok(text, return_tensors="pt")
            seq = model.generate(**enc, max_new_tokens=new, pad_token_id=tok.pad_token_id, **SAMPLE)
            tokens += len(_trim(seq[0, enc["input_ids"].shape[1]:].tolist(), stop))
    return tokens, time.perf_counter() - start


def rate(tokens: int, seconds: float, cpu: float | None = None) -> dict:
    out = {"tokens": tokens, "seconds": round(seconds, 2), "tokens_per_s": tokens / seconds}
    return out if cpu is None else out | {"cpu_s": round(cpu, 2)}


def without_prescore(model, tok, texts, new, batch_size) -> tuple[list[list[int]], float, float]:
    """Batched greedy with the full fp32 output layer at every step (the loop before the pre-scored head)."""
    import os

    os.environ["POLYALIGN_PRESCORE"] = "off"
    try:
        return batched(model, tok, texts, new, batch_size)
    finally:
        del os.environ["POLYALIGN_PRESCORE"]


def scoring(model, tok, n: int, batch_size: int = 8) -> dict:
    """Scored tokens a second: NTREX sentences given BOS (laft_eval's bits per byte) and
    survey-like items (a question, 5 answer options: culture_eval's scoring) with and without
    running the shared question once."""
    from pipeline.generate import _encode_prompt, sum_logprobs, text_nll_bits

    texts = prompts(n, offset=500)
    enc = lambda s: tok(s, add_special_tokens=False)["input_ids"]  # noqa: E731
    out = {}
    start = time.perf_counter()
    text_nll_bits(model, tok, texts, batch_size=batch_size)
    out["text_bits"] = rate(sum(len(enc(t)) for t in texts), time.perf_counter() - start)
    options = [" 1", " 2", " 3", " 4", " 5"]
    items = [(_encode_prompt(tok, f"{t}\nHow much do you agree? Answer 1-5:"), enc(o)) for t in texts[:n // 2]
             for o in options]
    sums = {}
    for share in (False, True):
        start = time.perf_counter()
        sums[share] = sum_logprobs(model, items, batch_size=batch_size, share_contexts=share)
        out[f"options_{'shared' if share else 'rows'}"] = rate(sum(len(c) + len(t) for c, t in items),
                                                              time.perf_counter() - start)
    out["options_shared"]["speedup"] = out["options_shared"]["tokens_per_s"] / out["options_rows"]["tokens_per_s"]
    out["options_max_abs_diff_nats"] = max(abs(a - b) for a, b in zip(sums[False], sums[True]))
    return out


def head_shapes(model, rows=(1, 8, 16, 256), reps: int = 3) -> dict:
    """Milliseconds of the output layer for `rows` hidden states: h @ W.T (what nn.Linear runs)
    against (W @ h.T).T (the tall GEMM pipeline.generate runs for full logits on CPU), same
    weights, same products; and the pre-scored exact argmax (_Head.argmax) greedy decoding runs."""
    import torch

    from pipeline.generate import _Head

    weight, head = model.get_output_embeddings().weight.detach(), _Head(model)
    out = {"prescore": list(head.pre)}
    with torch.inference_mode():
        for n in rows:
            h = torch.randn(n, weight.shape[1], dtype=weight.dtype)
            times = {}
            for name, fn in (("h_at_wt", lambda h=h: h @ weight.t()), ("w_at_ht", lambda h=h: (weight @ h.t()).t()),
                             ("prescored_argmax", lambda h=h: head.argmax(h))):
                fn()
                start = time.perf_counter()
                for _ in range(reps):
                    fn()
                times[name] = (time.perf_counter() - start) / reps * 1000
            pre = head.prescorer(n)
            out[f"rows_{n}"] = {**{f"{k}_ms": round(v, 1) for k, v in times.items()},
                                "prescorer": pre.kind if pre else None,
                                "speedup": round(times["h_at_wt"] / times["w_at_ht"], 2),
                                "prescored_speedup": round(times["w_at_ht"] / times["prescored_argmax"], 2)}
    return out


def others(model, tok, texts: list[str], new: int, batch: int, greedy_ids: list[list[int]]) -> dict:
    """At batch `batch`: greedy with the fp32 output layer (identical to `greedy_ids`, ours at that
    batch?) and sampling, ours vs the per-example loop."""
    ids, secs, cpu = without_prescore(model, tok, texts, new, batch)
    out = {f"batch_{batch}_fp32_head": rate(sum(map(len, ids)), secs, cpu) | {
        "same_as_prescored": sum(a == b for a, b in zip(ids, greedy_ids)) / len(ids)}}
    tokens, secs = per_example_sampled(model, tok, texts, new)
    out["sampled_per_example"] = rate(tokens, secs)
    ids, secs, cpu = batched(model, tok, texts, new, batch, **SAMPLE)
    out[f"sampled_batch_{batch}"] = rate(sum(map(len, ids)), secs, cpu) | {
        "speedup": (sum(map(len, ids)) / secs) / out["sampled_per_example"]["tokens_per_s"]}
    return out


class _Bf16Body:
    """While active, the decoder's linear layers take bf16 inputs and oneDNN's packed bf16 weights
    (outputs back in fp32; norms, attention and the output layer as in the pipeline): not exact, so
    not what pipeline.generate runs. Measured here for speed and for how often it changes the tokens.
    Its steps go through transformers' forward (Gemma3Step off), so its speed ratio against the exact
    decoding also carries Gemma3Step's gain, against it."""

    def __init__(self, model):
        import torch

        from pipeline.generate import _bf16_pack
        from pipeline.lm_parts import lm_parts

        self.layers = [m for m in lm_parts(model)[0].modules() if type(m) is torch.nn.Linear]
        self.packed = [_bf16_pack(m.weight.detach().to(torch.bfloat16)) for m in self.layers]

    def __enter__(self):
        import torch

        from pipeline import generate as G

        self.fp16, self.lean = G._fp16_pack, G.LEAN_STEP
        G._fp16_pack = lambda m: None  # the fp16 layers would take over again
        G.LEAN_STEP = False  # Gemma3Step calls its own GEMMs, not the layers' forward
        for m, w in zip(self.layers, self.packed):
            bias = None if m.bias is None else m.bias.detach().to(torch.bfloat16)
            m.forward = lambda x, w=w, b=bias: self.linear(x.to(torch.bfloat16), w, b).to(x.dtype)
        return self

    @staticmethod
    def linear(x, w, b):
        """bf16 x @ w.T + b on the weight as _bf16_pack left it (oneDNN-packed where it runs)."""
        import torch

        from pipeline import generate as G

        if G._MKLDNN_LINEAR:
            return torch.ops.mkldnn._linear_pointwise(x, w, b, "none", [None], "")
        return torch.nn.functional.linear(x, w, b)

    def __exit__(self, *exc):
        from pipeline import generate as G

        G._fp16_pack, G.LEAN_STEP = self.fp16, self.lean
        for m in self.layers:
            del m.forward


def agreement(ids: list[list[int]], ref: list[list[int]]) -> dict:
    """How far outputs follow the reference: identical rows, and the share of reference tokens
    decoded before a row's first difference."""
    common = lambda a, b: next((i for i, (x, y) in enumerate(zip(a, b)) if x != y), min(len(a), len(b)))  # noqa: E731
    return {"identical_rows": sum(a == b for a, b in zip(ids, ref)) / len(ref),
            "tokens_before_first_difference": sum(common(a, b) for a, b in zip(ids, ref)) / max(1, sum(map(len, ref)))}


def bf16_body(model, tok, texts, new, batch, greedy_ids) -> dict:
    """Greedy at batch `batch` with the decoder's linear layers in bf16 (_Bf16Body), on CPUs with bf16
    matrix units: tokens/s and agreement with the exact greedy tokens `greedy_ids`."""
    from pipeline.provenance import cpu_has_bf16

    if not cpu_has_bf16():
        return {"skipped": "no bf16 matrix units (AVX512-BF16/AMX): bf16 GEMMs are emulated and slower than fp32"}
    with _Bf16Body(model):
        batched(model, tok, texts[:2], 2, 2)
        ids, secs, cpu = batched(model, tok, texts, new, batch)
    return rate(sum(map(len, ids)), secs, cpu) | agreement(ids, greedy_ids)


def floor(model, tok, texts: list[str], new: int, batch: int, seconds: float) -> dict:
    """time_in_ops of greedy decoding at batch `batch`, and how much faster than its unprofiled
    `seconds` that decoding could get if nothing but the GEMMs (and attention) took time."""
    from decode_at import time_in_ops

    ops = time_in_ops(lambda: batched(model, tok, texts, new, batch))
    return ops | {"seconds": round(seconds, 2), "at_most_x_if_only_gemms": round(seconds / ops["gemm_s"], 2),
                  "at_most_x_if_only_gemms_and_attention": round(seconds / (ops["gemm_s"] + ops["attention_s"]), 2)}


def prefill_positions(tok, texts: list[str], batch: int) -> dict:
    """Positions the prompts' forward pass runs at batch `batch`: one left-padded batch against
    pipeline.generate's length groups (tokens of the prompts themselves for reference)."""
    from pipeline import generate as G

    out = {"prompt_tokens": 0, "one_batch": 0, "length_groups": 0}
    lengths = sorted((len(G._encode_prompt(tok, t)) for t in texts), reverse=True)
    for start in range(0, len(lengths), batch):
        part = lengths[start:start + batch]
        out["prompt_tokens"] += sum(part)
        out["one_batch"] += len(part) * part[0]
        out["length_groups"] += sum(len(g) * max(part[i] for i in g) for g in G._length_groups(part, G.PREFILL_CALL_TOKENS))
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
    start = time.perf_counter()
    batched(model, tok, texts[:2], 2, 2)  # warm-up: first-call allocations and the pre-scored head's copy
    warmup_s = time.perf_counter() - start
    base_ids, base_s, base_cpu = per_example(model, tok, texts, args.new)
    base_tokens = sum(map(len, base_ids))
    result = {"model": MODEL, "dtype": str(model.dtype), "prompts": len(texts), "max_new_tokens": args.new,
              "threads": torch.get_num_threads(), "warmup_s_incl_prescore_copy": round(warmup_s, 2),
              "per_example": {"tokens": base_tokens, "seconds": base_s, "cpu_s": base_cpu,
                              "tokens_per_s": base_tokens / base_s}}
    for bs in sorted(args.batch_sizes):  # the largest last: `ids` below are its outputs
        ids, secs, cpu = batched(model, tok, texts, args.new, bs)
        tokens = sum(map(len, ids))
        result[f"batch_{bs}"] = {"tokens": tokens, "seconds": secs, "cpu_s": cpu, "tokens_per_s": tokens / secs,
                                 "speedup": (tokens / secs) / (base_tokens / base_s),
                                 "speedup_cpu_time": (tokens / cpu) / (base_tokens / base_cpu),
                                 "same_as_per_example": sum(a == b for a, b in zip(ids, base_ids)) / len(ids)}
    big = max(args.batch_sizes)
    result[f"batch_{big}_floor"] = floor(model, tok, texts, args.new, big, result[f"batch_{big}"]["seconds"])
    result |= others(model, tok, texts, args.new, big, ids)
    result["prefill_positions"] = prefill_positions(tok, texts, big)
    result[f"batch_{big}_bf16_body"] = bf16_body(model, tok, texts, args.new, big, ids)
    result["scoring"] = scoring(model, tok, args.prompts)
    result["output_layer"] = head_shapes(model)
    result["peak_rss_gb"] = peak_rss_gb()
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
