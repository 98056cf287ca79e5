"""Batched generation and scoring: every stage's way to run a causal LM forward.

Prompts are encoded exactly as training encodes them (start token + prompt, no other
special tokens; pipeline.train.encode_example), so a fine-tuned model sees at inference
the token boundary it was trained on.

Speed (bench/bench_generate.py, figures in reports/bench.json): prompts are sorted by
length and generated in left-padded batches with the KV cache, so one pass over the
weights (the 262k x 640 output layer alone is 671 MB in fp32) serves a whole batch
instead of one sequence. Decoding (greedy and sampling) is our own loop (_decode): a row
leaves the batch when it is done, a prefix all rows share runs once, prompts of very different
lengths run their forward pass in length groups (no padding to the longest), a step's attention reads
each key/value head once for all the query heads that share it, a Gemma-3 decoder's step runs
transformers' operations without its per-step machinery (pipeline.decode_step), and the next token comes
from _Head: the exact argmax / top-k of the logits found through a cheap fp16 (bf16 where the
CPU has bf16 units) pass over the output layer with a proven error bound, plus an exact pass
over the few rows the bound cannot rule out. Sampling draws from one seeded generator per row,
so a row's sample does not depend on its batch-mates. Scoring computes output-layer logits
only at the positions being scored, in chunks, never the full (batch, length, vocab) tensor,
and runs a context shared by several targets (answer options) once.
"""

from __future__ import annotations

import logging
import math
import time

import torch
from transformers import StoppingCriteria, StoppingCriteriaList
from transformers.cache_utils import DynamicLayer, DynamicSlidingWindowLayer

from pipeline.batching import start_ids
from pipeline.decode_step import Gemma3Step
from pipeline.errors import PolyalignError
from pipeline.lm_parts import base_lm, lm_parts

log = logging.getLogger("polyalign.generate")


def _device(model) -> torch.device:
    return next(model.parameters()).device


def _encode_prompt(tok, prompt: str) -> list[int]:
    from pipeline.models import chat_text

    prompt = chat_text(tok, prompt)  # as encode_example: the chat template where the stage uses it
    return start_ids(tok) + (tok(prompt, add_special_tokens=False)["input_ids"] if prompt else [])


def _left_pad(seqs: list[list[int]], pad_id: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Left-padded ids (B, T) and attention mask (B, T): generation appends on the right."""
    width = max(map(len, seqs))
    ids = torch.full((len(seqs), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(seqs), width), dtype=torch.long)
    for row, s in enumerate(seqs):
        if s:
            ids[row, width - len(s):] = torch.tensor(s)
            mask[row, width - len(s):] = 1
    return ids, mask


def _eos_ids(model, tok) -> set[int]:
    eos = getattr(model.generation_config, "eos_token_id", None)
    ids = set(eos if isinstance(eos, (list, tuple)) else [eos] if eos is not None else [])
    if tok.eos_token_id is not None:
        ids.add(tok.eos_token_id)
    return ids


def _trim(new: list[int], stop: set[int], line_end: _LineEnd | None = None) -> list[int]:
    """New tokens up to and including the first stop token (what was really generated),
    or the token that ended the first non-empty line when generation stopped there."""
    seen = torch.zeros(1, dtype=torch.bool)
    for i, t in enumerate(new):
        if t in stop:
            return new[:i + 1]
        if line_end is not None:
            done, seen = line_end.step(torch.tensor([t]), seen)
            if done[0]:
                return new[:i + 1]
    return new


class _LineEnd:
    """Per-token facts for "the first non-empty line is complete": the piece holds a line
    break, holds non-blank text, holds non-blank text before its first line break."""

    def __init__(self, tok, size: int):
        pieces = tok.batch_decode([[i] for i in range(len(tok))], skip_special_tokens=False)
        pieces += [""] * max(0, size - len(pieces))  # output rows the tokenizer has no piece for
        self.has_nl = torch.tensor(["\n" in p for p in pieces])
        self.has_text = torch.tensor([bool(p.strip()) for p in pieces])
        self.text_first = torch.tensor([bool(p.split("\n", 1)[0].strip()) for p in pieces])

    def step(self, last: torch.Tensor, seen: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """One generated token per row (`last`, `seen`: rows so far with non-blank text) ->
        (rows whose first non-empty line this token completes, updated `seen`)."""
        return self.has_nl[last] & (seen | self.text_first[last]), seen | self.has_text[last]


def _line_end(tok, model) -> _LineEnd:
    """The tokenizer's _LineEnd table, built once per tokenizer object (~1 s for 262k pieces)."""
    size = max(len(tok), int(getattr(model.config, "vocab_size", 0) or 0))
    cached = getattr(tok, "_polyalign_line_end", None)
    if cached is None or cached.has_nl.shape[0] < size:
        cached = _LineEnd(tok, size)
        tok._polyalign_line_end = cached
    return cached


class _StopAfterFirstLine(StoppingCriteria):
    """Ends each row once its first non-empty line is complete: for callers that keep only
    that line (in-context translation, one-line rewrites and answers). A row's first
    non-empty line, and so what those callers keep, is the same as without the stop; the
    batch ends when every row is done instead of running on to max_new_tokens."""

    def __init__(self, table: _LineEnd, batch: int):
        self.table, self.seen = table, torch.zeros(batch, dtype=torch.bool)

    def __call__(self, input_ids, scores, **kwargs):
        last = input_ids[:, -1].cpu()
        if self.seen.shape[0] != last.shape[0]:  # num_return_sequences expands the batch
            self.seen = torch.zeros(last.shape[0], dtype=torch.bool)
        done, self.seen = self.table.step(last, self.seen)
        return done.to(input_ids.device)


class _TallHead:
    """While generating, the output layer computes (weight @ h.T).T instead of h @ weight.T.

    Same products, other GEMM shape: for the few rows of a decoding step MKL runs the tall
    (V, d) x (d, B) product ~1.6x faster on CPU (gemma-3-270m's 262k x 640 head, batch 16:
    88 ms instead of 145 ms; bench/bench_generate.py: output_layer), and that layer is over
    half of a decoding step. Logits agree to float rounding. CPU only (not measured on accelerators)."""

    def __init__(self, model):
        head = model.get_output_embeddings()
        on_cpu = _device(model).type == "cpu"
        self.head = head if on_cpu and isinstance(head, torch.nn.Linear) and head.bias is None else None

    @staticmethod
    def forward(weight: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        flat = x.reshape(-1, x.shape[-1]).to(weight.dtype)
        return (weight @ flat.t()).t().reshape(*x.shape[:-1], weight.shape[0])

    def __enter__(self):
        if self.head is not None:
            weight = self.head.weight
            self.head.forward = lambda x: self.forward(weight, x)
        return self

    def __exit__(self, *exc):
        if self.head is not None:
            del self.head.forward  # back to nn.Linear.forward


def prescore_kinds(weight: torch.Tensor) -> tuple[str, ...]:
    """The cheap first passes of _Head on this machine: fbgemm's fp16-weight GEMM (fp32 arithmetic)
    on x86 CPUs, and bf16 where the CPU has bf16 matrix units (AVX512-BF16/AMX); () elsewhere (GPU,
    no fbgemm, no bf16). POLYALIGN_PRESCORE=off|fp16|bf16 forces one (tests, bench)."""
    import os

    from pipeline.provenance import cpu_has_bf16

    forced = os.environ.get("POLYALIGN_PRESCORE", "")
    if forced:
        return () if forced == "off" else (forced,)
    if weight.device.type != "cpu" or weight.dtype not in (torch.float32, torch.float64):
        return ()
    fbgemm = ("fp16",) if "fbgemm" in torch.backends.quantized.supported_engines else ()
    return fbgemm + (("bf16",) if cpu_has_bf16() else ())


# Where both run, the bf16 GEMM is the faster first pass from this many rows on, fbgemm's fp16 below
# (gemma-3-270m's 262k x 640 head in 16k-row pieces, oneDNN's pre-packed bf16 weights, 2 threads,
# AMD EPYC with AVX512-BF16, 2026-12-07, ms for fp16 / bf16: 1 row 12.6 / 15.8, 4 rows 15.7 / 16.7,
# 8 rows 19.4 / 19.6, 16 rows 39.4 / 24.9, 32 rows 71.7 / 41.8; unpacked bf16 was 22.8 at 1 row,
# 56.1 at 32: oneDNN reorders a plain weight on every call).
BF16_PRESCORE_MIN_ROWS = 8


# Vocabulary rows per piece of the first pass: a piece's (rows, 16384) approximate logits stay in
# cache while they are reduced; one (rows, 262k) fp32 tensor did not, and reducing it cost more than
# the GEMM (gemma-3-270m, 32 rows, AVX512-BF16 EPYC: max over it 54 ms, the bf16 GEMM 41 ms).
PRESCORE_PIECE = 16384


# oneDNN's linear on weights reordered once into its blocked layout (the ops torch.compile's CPU
# backend uses); a plain bf16 weight is reordered again by every matmul. The same products.
_MKLDNN_LINEAR = torch.backends.mkldnn.is_available() and hasattr(torch.ops.mkldnn, "_reorder_linear_weight") \
    and hasattr(torch.ops.mkldnn, "_linear_pointwise")


def _bf16_pack(low: torch.Tensor) -> torch.Tensor:
    """A bf16 weight (c, d) as the bf16 first pass reads it: oneDNN's packed copy where it runs."""
    return torch.ops.mkldnn._reorder_linear_weight(low, 32) if _MKLDNN_LINEAR else low


class _Prescore:
    """A low-precision copy of the output layer W (V, d), in pieces of PRESCORE_PIECE rows, and
    what bounds its error.

    For a hidden state h: |w_i.h - approx_i| <= (err + slack) * |h| + wnorm * |h - h'|
    + out_round * (wnorm + slack) * |h'| (h' the hidden state as the cheap pass reads it; err, wnorm:
    the largest |w_i - w'_i| and |w'_i| over rows; slack: fp32 accumulation of d products, in both
    passes; the last term: bf16 rounding of an output that is at most |w'_i| |h'| in size)."""

    def __init__(self, weight: torch.Tensor, kind: str):
        w = weight.detach().float()
        dtype = torch.float16 if kind == "fp16" else torch.bfloat16
        self.kind, self.key = kind, (weight.data_ptr(), weight._version, tuple(weight.shape))
        self.err, self.wnorm, self.pieces = 0.0, 0.0, []
        for first in range(0, w.shape[0], PRESCORE_PIECE):
            rows = w[first:first + PRESCORE_PIECE]
            low = rows.to(dtype)
            self.err = max(self.err, float((rows - low.float()).norm(dim=1).max()))  # 0 for weights stored in bf16
            self.wnorm = max(self.wnorm, float(low.float().norm(dim=1).max()))
            self.pieces.append((first, torch.ops.quantized.linear_prepack_fp16(rows, None) if kind == "fp16"
                                else _bf16_pack(low)))
        self.slack = 2 * w.shape[1] * 2.0 ** -24 * self.wnorm
        self.out_round = 2.0 ** -8 if kind == "bf16" else 0.0  # bf16 GEMM output is rounded to bf16

    def _low(self, h: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """h (R, d) -> (h as the cheap pass reads it, bound (R, 1) fp32 on every approximate logit's error)."""
        h_low = h.float() if self.kind == "fp16" else h.to(torch.bfloat16)
        n = h.double().norm(dim=1, keepdim=True)
        moved = (h.double() - h_low.double()).norm(dim=1, keepdim=True)
        n_low = h_low.double().norm(dim=1, keepdim=True)
        bound = (self.err + self.slack) * n + self.wnorm * moved + self.out_round * (self.wnorm + self.slack) * n_low
        return h_low, bound.float()

    def _piece(self, h_low: torch.Tensor, low) -> torch.Tensor:
        """Approximate logits (R, piece) fp32 of one piece."""
        if self.kind == "fp16":
            return torch.ops.quantized.linear_dynamic_fp16(h_low, low)
        if _MKLDNN_LINEAR:
            return torch.ops.mkldnn._linear_pointwise(h_low, low, None, "none", [None], "").float()
        return (h_low @ low.t()).float()

    def approx(self, h: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """h (R, d) -> (approximate logits (R, V) fp32, bound (R, 1) on their error)."""
        h_low, bound = self._low(h)
        return torch.cat([self._piece(h_low, low) for _, low in self.pieces], 1), bound

    def candidates(self, h: torch.Tensor, k: int) -> torch.Tensor:
        """Token ids (U,), ascending, that can be among the exact top k of some row of h (R, d): those
        whose approximate logit is within twice the bound of the row's k-th largest, found piece by
        piece (a running top k; what a later piece rules out is dropped at the end)."""
        h_low, bound = self._low(h)
        best, ids, vals = None, [], []
        for first, low in self.pieces:
            y = self._piece(h_low, low)  # (R, c)
            top = y.topk(min(k, y.shape[1]), dim=1).values if k > 1 else y.amax(1, keepdim=True)
            best = top if best is None else torch.cat([best, top], 1).topk(min(k, best.shape[1] + top.shape[1]),
                                                                          dim=1).values
            # a column stays if some row's y reaches that row's floor; its largest y reaching the lowest
            # floor is a cheap first sieve (comparing all of y (32, 16k) took 4x as long), same columns
            floor = best[:, -1:] - 2 * bound
            cols = (y.amax(0) >= floor.min()).nonzero().squeeze(1)
            some = y[:, cols]
            keep = (some >= floor).any(0)
            ids.append(cols[keep] + first)
            vals.append(some[:, keep])
        ids, vals = torch.cat(ids), torch.cat(vals, 1)
        floor = best[:, -1:] - 2 * bound  # the final top k's: what an earlier piece kept may now be out
        return ids[(vals >= floor).any(0)]


class _Fp16Linears:
    """While decoding, the decoder's linear layers whose fp32 weights are exactly fp16 numbers
    (gemma's: stored in bf16, all in fp16's range) run fbgemm's fp16-weight GEMM: the same
    products in fp32 arithmetic, summed in another order (outputs agree to float rounding, as
    with _TallHead), reading half the bytes. Decoding steps are memory-bound on CPU: the layers
    of gemma-3-270m at 16-32 rows ran in 0.45-0.6x the CPU time on an AVX2-only EPYC, and whole
    greedy decoding at 16 rows in 0.37x on an EPYC with AVX512-BF16 (bench/bench_generate.py).
    Wherever fbgemm runs (prescore_kinds has 'fp16'); a layer with any weight fp16 cannot hold
    exactly is left as it is."""

    def __init__(self, body, enabled: bool):
        self.layers = [m for m in body.modules() if type(m) is torch.nn.Linear] if enabled and body else []
        self.layers = [m for m in self.layers if _fp16_pack(m) is not None]

    def __enter__(self):
        for m in self.layers:
            packed = m._polyalign_fp16[1]
            m.forward = lambda x, packed=packed, n=m.out_features: torch.ops.quantized.linear_dynamic_fp16(
                x.reshape(-1, x.shape[-1]), packed).reshape(*x.shape[:-1], n)
        return self

    def __exit__(self, *exc):
        for m in self.layers:
            del m.forward  # back to nn.Linear.forward


def _fp16_pack(m: torch.nn.Linear):
    """fbgemm's packed fp16 copy of a linear layer (built once, kept on the layer), or None
    where its weight is not fp32 on CPU or not exactly representable in fp16."""
    w = m.weight
    key = (w.data_ptr(), w._version)
    cached = getattr(m, "_polyalign_fp16", None)
    if cached is None or cached[0] != key:
        exact = w.dtype == torch.float32 and w.device.type == "cpu" and bool(torch.equal(w.half().float(), w))
        bias = None if m.bias is None else m.bias.detach()
        cached = (key, torch.ops.quantized.linear_prepack_fp16(w.detach(), bias) if exact else None)
        m._polyalign_fp16 = cached
    return cached[1]


class _Head:
    """The output layer for decoding: logits (all V, the tall GEMM of _TallHead) or the exact
    top-k / argmax of the logits found cheaply.

    topk: a low-precision pass over all V rows (_Prescore: fbgemm's fp16 weights on x86, bf16 on
    CPUs with bf16 units from BF16_PRESCORE_MIN_ROWS rows) gives approximate logits y with a proven
    bound B on their error; a token whose y is more than 2B below the k-th largest y cannot be
    among the true top k. The rows that remain (a few dozen to a few hundred of 262k on
    gemma-3-270m) are scored exactly in the model's dtype, so the argmax is that of the full
    logits (up to ties within float rounding: the exact products are summed in another order
    than a full GEMM's)."""

    def __init__(self, model):
        from pipeline.lm_parts import lm_parts

        self.body, self.weight, self.softcap = lm_parts(model)
        module = model.get_output_embeddings()
        key = (self.weight.data_ptr(), self.weight._version, tuple(self.weight.shape))
        cached = getattr(module, "_polyalign_prescore", {})
        self.pre = {}
        for kind in prescore_kinds(self.weight):
            if kind not in cached or cached[kind].key != key:
                cached[kind] = _Prescore(self.weight, kind)  # built once per model (~1 s, V x d x 2 bytes)
            self.pre[kind] = cached[kind]
        module._polyalign_prescore = cached
        self.fp16_body = _Fp16Linears(self.body, "fp16" in self.pre)

    def prescorer(self, rows: int) -> _Prescore | None:
        """The first pass for a step of `rows` hidden states (BF16_PRESCORE_MIN_ROWS), None for none."""
        if "bf16" in self.pre and (rows >= BF16_PRESCORE_MIN_ROWS or "fp16" not in self.pre):
            return self.pre["bf16"]
        return self.pre.get("fp16")

    def _cap(self, logits: torch.Tensor) -> torch.Tensor:
        return torch.tanh(logits / self.softcap) * self.softcap if self.softcap else logits

    def logits(self, h: torch.Tensor) -> torch.Tensor:
        """h (R, d) -> logits (R, V) in the model's dtype (softcap applied)."""
        return self._cap(_TallHead.forward(self.weight, h))

    def topk(self, h: torch.Tensor, k: int) -> tuple[torch.Tensor, torch.Tensor]:
        """h (R, d) -> (exact logits (R, k), token ids (R, k)) of the k largest logits, descending;
        k = 1 breaks ties as argmax does (lowest id)."""
        pre = self.prescorer(h.shape[0])
        if pre is None:
            full = self.logits(h)
            return _top(full, k, torch.arange(full.shape[1], device=h.device))
        keep = pre.candidates(h, k).to(h.device)  # (U,), ascending
        exact = self._cap((self.weight[keep] @ h.to(self.weight.dtype).t()).t())  # (R, U)
        return _top(exact, k, keep)

    def argmax(self, h: torch.Tensor) -> torch.Tensor:
        return self.topk(h, 1)[1][:, 0]


def _top(logits: torch.Tensor, k: int, ids: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(top-k values (R, k), ids[their columns] (R, k)) of logits (R, U); argmax for k = 1."""
    if k == 1:
        pos = logits.argmax(-1, keepdim=True)
        return logits.gather(1, pos), ids[pos]
    vals, pos = logits.topk(min(k, logits.shape[1]))
    return vals, ids[pos]


# generation_config fields that make HF greedy decoding more than the argmax of the logits
_GREEDY_PROCESSORS = {"repetition_penalty": (None, 1.0), "no_repeat_ngram_size": (None, 0),
                      "encoder_no_repeat_ngram_size": (None, 0), "bad_words_ids": (None,),
                      "suppress_tokens": (None,), "begin_suppress_tokens": (None,), "forced_bos_token_id": (None,),
                      "forced_eos_token_id": (None,), "min_length": (None, 0), "min_new_tokens": (None, 0),
                      "sequence_bias": (None,), "renormalize_logits": (None, False),
                      "exponential_decay_length_penalty": (None,)}


def _plain_greedy(model) -> bool:
    """True when HF's greedy search on this model is the argmax of the logits at every step
    (no logits processor from its generation_config), so _greedy gives the same tokens."""
    gc = getattr(model, "generation_config", None)
    return gc is not None and all(getattr(gc, k, None) in ok for k, ok in _GREEDY_PROCESSORS.items())


# rows share their first tokens (the few-shot examples of in-context translation): computed once
SHARED_PREFIX_MIN = 16


def _shared_prefix(model, seqs: list[list[int]], budget: int) -> int:
    """Tokens every row starts with, to run once for the whole batch (0: none worth sharing).

    Every row keeps at least one token of its own. Not used where the sequence could outgrow
    a sliding attention window: the window counts cache slots, padding included, and the
    padding sits after the prefix instead of before it, so the windows would differ."""
    if len(seqs) < 2:
        return 0
    n = min(map(len, seqs)) - 1
    first = seqs[0]
    shared = next((i for i in range(n) if any(s[i] != first[i] for s in seqs)), n)
    if shared < SHARED_PREFIX_MIN:
        return 0
    window = getattr(model.config.get_text_config(), "sliding_window", None)
    if window and max(map(len, seqs)) + budget > window:
        return 0
    return shared


# generation_config fields that make sampling more than temperature, top-k and top-p
_SAMPLE_PROCESSORS = _GREEDY_PROCESSORS | {"typical_p": (None, 1.0), "epsilon_cutoff": (None, 0.0),
                                           "eta_cutoff": (None, 0.0), "min_p": (None, 0.0)}


def _plain_sampling(model) -> bool:
    """True when HF's sampling on this model is temperature, top-k and top-p only (what _Sampler does)."""
    gc = getattr(model, "generation_config", None)
    return gc is not None and all(getattr(gc, k, None) in ok for k, ok in _SAMPLE_PROCESSORS.items())


def _argmax(head: _Head, hidden: torch.Tensor, rows: torch.Tensor) -> torch.Tensor:
    """Greedy choice: hidden states (R, d) -> (R,) token ids (rows: the running rows, unused)."""
    return head.argmax(hidden)


def row_seed(seed: int, ids: list[int], copy: int) -> int:
    """The seed of one sampled row: a function of the call's seed, the prompt's token ids and the
    return-sequence number only, so a row's sample does not depend on its batch-mates."""
    import hashlib

    digest = hashlib.sha256(f"{seed}:{copy}:{','.join(map(str, ids))}".encode()).digest()
    return int.from_bytes(digest[:8], "little") & (2**63 - 1)


class _Sampler:
    """Temperature, then top-k, then top-p (HF's order and definitions), one seeded
    torch.Generator per row: each row draws one uniform number a step from its own generator.

    top-p keeps the smallest prefix of the probability-sorted tokens whose mass reaches top_p
    (a token is kept when the mass strictly above it is below top_p; the first always is)."""

    def __init__(self, seeds: list[int], temperature: float, top_k: int | None, top_p: float):
        self.gens = [torch.Generator().manual_seed(s) for s in seeds]
        self.temperature, self.top_k, self.top_p = temperature, top_k or 0, top_p

    def nucleus(self, logits: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """logits (R, V) -> (token ids (R, k), probabilities (R, k)) of the kept tokens, sorted
        by probability, zero beyond each row's nucleus, rows summing to 1."""
        logits = logits.float() / self.temperature
        k = self.top_k if 0 < self.top_k < logits.shape[-1] else logits.shape[-1]
        lse = torch.logsumexp(logits.topk(k).values if k < logits.shape[-1] else logits, -1, keepdim=True)
        width = min(k, 256)
        while True:  # widen the sorted window until every row's nucleus fits in it
            vals, ids = logits.topk(width)
            probs = (vals - lse).exp()
            keep = (probs.cumsum(-1) - probs) < self.top_p
            if width >= k or not bool(keep[:, -1].any()):
                break
            width = min(k, width * 4)
        keep[:, 0] = True
        probs = probs * keep
        return ids, probs / probs.sum(-1, keepdim=True)

    def __call__(self, head: _Head, hidden: torch.Tensor, rows: torch.Tensor) -> torch.Tensor:
        """hidden states (R, d) of the running rows (indices `rows` into the seeds) -> (R,) ids.
        With top-k, only the exact top-k logits are computed (_Head.topk): the same distribution."""
        if 0 < self.top_k < head.weight.shape[0]:
            vals, top_ids = head.topk(hidden, self.top_k)
            return top_ids.gather(1, self.draw(vals, rows)[:, None]).squeeze(1)
        return self.draw(head.logits(hidden), rows)

    def draw(self, logits: torch.Tensor, rows: torch.Tensor) -> torch.Tensor:
        """logits (R, V) -> (R,) columns drawn from each row's nucleus with the row's generator."""
        ids, probs = self.nucleus(logits)
        u = torch.stack([torch.rand((), generator=self.gens[r], dtype=torch.float64) for r in rows.tolist()])
        cdf = probs.double().cumsum(-1)
        pick = torch.searchsorted(cdf, u[:, None].to(cdf.device) * cdf[:, -1:]).clamp_max(ids.shape[1] - 1)
        return ids.gather(1, pick).squeeze(1)


class _InPlace:
    """Cache-layer mixin: new key/value states are written after the cached ones in a buffer whose
    capacity doubles when full, and keys/values are views of its filled part (the values torch.cat
    gives). transformers' layers concatenate the whole cache with each new position (torch.cat, 21%
    of gemma-3-270m's decoding time at 32 rows, AVX512-BF16 EPYC); here a step writes one position.

    A sliding-window layer (`keep` = window - 1) keeps its last `keep` positions as transformers'
    does, by moving the start of the view: the buffer is copied only when its end is reached (once
    every `keep` or more steps) instead of the whole window at every step once the window is full."""

    _room: list[torch.Tensor] | None = None
    _start = 0  # where keys/values begin in the buffer
    keep: int | None = None

    def _append(self, key_states: torch.Tensor, value_states: torch.Tensor):
        """Write the new states; return (cached + new) keys and values, as transformers' update does."""
        n, q = self.keys.shape[-2] if self._room is not None else 0, key_states.shape[-2]
        if self._room is None or self._start + n + q > self._room[0].shape[-2]:
            old = self._room
            self._room = [t.new_empty(*t.shape[:2], max(2 * (n + q), 64), t.shape[-1]) for t in (key_states, value_states)]
            if old is not None:
                self._room[0][:, :, :n], self._room[1][:, :, :n] = self.keys, self.values
            self._start = 0
        begin, end = self._start, self._start + n + q
        for t, new in zip(self._room, (key_states, value_states)):
            t[:, :, end - q:end] = new
        full = self._span(begin, end)
        if self.keep is not None and n + q > self.keep:
            self._start = end - self.keep
        self.keys, self.values = self._span(self._start, end)
        return full

    def _span(self, begin: int, end: int) -> tuple[torch.Tensor, torch.Tensor]:
        """(keys, values) views of buffer positions [begin, end)."""
        return self._room[0][:, :, begin:end], self._room[1][:, :, begin:end]

    def _batch_op(self, op) -> None:
        """On the buffer (views kept)."""
        if self._room is not None:
            n = self.keys.shape[-2]
            self._room = [op(t) for t in self._room]
            self.keys, self.values = self._span(self._start, self._start + n)

    def batch_select_indices(self, indices: torch.Tensor) -> None:
        self._batch_op(lambda t: t[indices])

    def batch_repeat_interleave(self, repeats: int) -> None:
        self._batch_op(lambda t: t.repeat_interleave(repeats, dim=0))


class _InPlaceLayer(_InPlace, DynamicLayer):
    def update(self, key_states, value_states, cache_kwargs=None):
        if not self.is_initialized:
            self.lazy_initialization(key_states)
        return self._append(key_states, value_states)


class _InPlaceSlidingLayer(_InPlace, DynamicSlidingWindowLayer):
    """transformers' sliding-window layer (keeps the last window - 1 positions), appending in place."""

    def __init__(self, sliding_window: int):
        super().__init__(sliding_window=sliding_window)
        self.keep = sliding_window - 1

    def update(self, key_states, value_states, cache_kwargs=None):
        if not self.is_initialized:
            self.lazy_initialization(key_states)
        self.cumulative_length += key_states.shape[-2]
        return self._append(key_states, value_states)


class _GroupedStepAttention:
    """While decoding, a one-position query attends in one sdpa call per key/value head, with the
    query heads that share it as the query axis (gemma-3-270m: 4 query heads, 1 key/value head),
    instead of transformers' sdpa on keys and values first copied to every query head (repeat_kv:
    the whole cache copied in every layer at every step). The same products; outputs agree to float
    rounding. Prefill (several query positions), attention logit softcapping, dropout and other
    devices keep transformers' function."""

    def __init__(self):
        from transformers.modeling_utils import ALL_ATTENTION_FUNCTIONS

        self.table = ALL_ATTENTION_FUNCTIONS

    def __enter__(self):
        self.saved = self.table._local_mapping.get("sdpa")
        plain = self.table["sdpa"]
        self.table["sdpa"] = lambda *args, **kwargs: _grouped_step(plain, *args, **kwargs)
        return self

    def __exit__(self, *exc):
        if self.saved is None:
            del self.table["sdpa"]
        else:
            self.table["sdpa"] = self.saved


def _grouped_step(plain, module, query, key, value, attention_mask, dropout=0.0, scaling=None, is_causal=None,
                  **kwargs):
    """transformers' sdpa attention function (`plain`) for a one-position query (B, H, 1, d) over
    keys/values (B, KV, S, d) as one sdpa call with the H // KV query heads of each key/value head
    as its query axis: (B, 1, H, d), as `plain` returns it."""
    groups = getattr(module, "num_key_value_groups", 1)
    b, h, length, d = query.shape
    mask = attention_mask
    if (length != 1 or groups == 1 or dropout or kwargs.get("softcap") is not None or query.device.type != "cpu"
            or mask is not None and (mask.ndim != 4 or mask.shape[1] != 1)):
        return plain(module, query, key, value, attention_mask, dropout=dropout, scaling=scaling,
                     is_causal=is_causal, **kwargs)
    if mask is not None:
        mask = mask[:, :, :, :key.shape[-2]]
    out = torch.nn.functional.scaled_dot_product_attention(query.reshape(b, key.shape[1], groups, d), key, value,
                                                           attn_mask=mask, scale=scaling)
    return out.reshape(b, 1, h, d), None


def _in_place_cache(cache) -> None:
    """Swap a fresh DynamicCache's layers for their in-place-appending versions (_InPlace)."""
    for i, layer in enumerate(cache.layers):
        if type(layer) is DynamicLayer:
            cache.layers[i] = _InPlaceLayer()
        elif type(layer) is DynamicSlidingWindowLayer:
            cache.layers[i] = _InPlaceSlidingLayer(sliding_window=layer.sliding_window)


# A prefill forward pass costs about this many prompt tokens' worth of time on top of its tokens
# (18 layer calls, small GEMMs, masks): the price of one more length group in _length_groups.
PREFILL_CALL_TOKENS = 32


def _length_groups(lengths: list[int], overhead: int) -> list[list[int]]:
    """Rows (indices into `lengths`) in groups of similar length, each to be prefilled as its own
    left-padded batch: of all splits of the rows sorted by length, the one with the fewest padded
    tokens plus `overhead` per group (dynamic programming over the cut points)."""
    order = sorted(range(len(lengths)), key=lambda i: -lengths[i])
    best, cut = [0] + [math.inf] * len(order), [0] * (len(order) + 1)
    for j in range(1, len(order) + 1):
        for i in range(j):
            cost = best[i] + (j - i) * lengths[order[i]] + overhead
            if cost < best[j]:
                best[j], cut[j] = cost, i
    groups, j = [], len(order)
    while j:
        groups.append(order[cut[j]:j])
        j = cut[j]
    return groups[::-1]


def _new_cache(model):
    from transformers import DynamicCache

    cache = DynamicCache(config=model.config)
    _in_place_cache(cache)
    return cache


def _run_rows(body, cache, rows: list[list[int]], shared: int, pad: int, device):
    """Left-padded `rows` through `body` after the `shared` positions already in `cache`:
    (hidden state of each row's last position, attention mask over the whole cache)."""
    ids, mask = _left_pad(rows, pad)
    ids, mask = ids.to(device), mask.to(device)
    position = (mask.cumsum(-1) - 1).masked_fill(mask == 0, 1) + shared
    full_mask = torch.cat([mask.new_ones((mask.shape[0], shared)), mask], dim=-1)
    cache_position = torch.arange(shared, full_mask.shape[1], device=device)
    hidden = body(input_ids=ids, attention_mask=full_mask, position_ids=position, past_key_values=cache,
                  cache_position=cache_position, use_cache=True).last_hidden_state[:, -1]
    return hidden, full_mask


def _prefill(model, body, seqs: list[list[int]], budget: int, pad: int, copies: int):
    """Run the prompts once through the decoder `body`: (hidden state of each row's last position
    (B * copies, d), cache, mask, cache position), every prompt's state repeated `copies` times
    (rows of one prompt stay together). The prefix all rows share (_shared_prefix) runs once.

    Rows of very different lengths are prefilled in length groups (_length_groups), each padded
    only to its own longest row, and their caches laid out afterwards exactly as one left-padded
    batch would have them (padding positions masked, their keys and values zero): on the bench's
    32 translation prompts (21-84 tokens) one batch ran 2688 positions for 1366 real ones."""
    device = _device(model)
    cache = _new_cache(model)
    shared = _shared_prefix(model, seqs, budget)
    if shared:
        positions = torch.arange(shared, device=device)
        body(input_ids=torch.tensor([seqs[0][:shared]], device=device), past_key_values=cache,
             position_ids=positions[None], cache_position=positions, use_cache=True)
    own = [s[shared:] for s in seqs]
    total = shared + max(map(len, own))
    window = getattr(model.config.get_text_config(), "sliding_window", None)
    groups = _length_groups(list(map(len, own)), PREFILL_CALL_TOKENS)
    if len(groups) > 1 and (window and total > window - 1 or not cache.layers
                            or not all(isinstance(x, _InPlace) for x in cache.layers)):
        groups = [list(range(len(seqs)))]  # a sliding window full during prefill: one batch, as transformers does
    if len(groups) == 1:
        if shared:
            cache.batch_repeat_interleave(len(seqs))
        hidden, full_mask = _run_rows(body, cache, own, shared, pad, device)
    else:
        hidden, full_mask, cache = _grouped_prefill(model, body, cache, own, groups, shared, total, pad, device)
    if copies > 1:
        cache.batch_repeat_interleave(copies)
        hidden, full_mask = hidden.repeat_interleave(copies, 0), full_mask.repeat_interleave(copies, 0)
    return hidden, cache, full_mask, torch.tensor([total - 1], device=device)


def _grouped_prefill(model, body, prefix, own, groups, shared: int, total: int, pad: int, device):
    """_prefill by length groups: each group runs after a copy of the `prefix` cache (the shared
    positions); its keys and values go right-aligned into one (B, heads, total, d) layout."""
    rows = len(own)
    _, mask = _left_pad(own, pad)
    full_mask = torch.cat([mask.new_ones((rows, shared)), mask], dim=-1).to(device)
    hidden, merged = None, None
    for group in groups:
        cache = _new_cache(model)
        if shared:
            for layer, p in zip(cache.layers, prefix.layers):
                layer.update(p.keys.expand(len(group), -1, -1, -1), p.values.expand(len(group), -1, -1, -1))
        h, _ = _run_rows(body, cache, [own[i] for i in group], shared, pad, device)
        if hidden is None:
            hidden = h.new_empty(rows, h.shape[-1])
            merged = [[t.new_zeros(rows, *t.shape[1:-2], total, t.shape[-1]) for t in (x.keys, x.values)]
                      for x in cache.layers]
        idx = torch.tensor(group, device=device)
        hidden[idx] = h
        width = cache.layers[0].keys.shape[-2] - shared
        for (k, v), x in zip(merged, cache.layers):
            k[idx, ..., :shared, :], v[idx, ..., :shared, :] = x.keys[..., :shared, :], x.values[..., :shared, :]
            k[idx, ..., total - width:, :], v[idx, ..., total - width:, :] = x.keys[..., shared:, :], x.values[..., shared:, :]
    cache = _new_cache(model)
    for layer, (k, v) in zip(cache.layers, merged):
        layer.update(k, v)
    return hidden, full_mask, cache


def _decode(model, seqs: list[list[int]], budgets: list[int], stop: set[int], table: _LineEnd | None,
            pad: int, pick=_argmax, copies: int = 1) -> list[list[int]]:
    """Decoding of a batch of prompts (token ids), `copies` rows each (row r continues prompt
    r // copies), that drops each row from the batch (and its KV cache) as soon as it is done:
    a stop token, its own token budget (`budgets`, one a prompt) reached, or its first line
    complete when `table` is given. `pick(head, hidden (R, d), rows (R,)) -> (R,)` chooses the
    next tokens from the last hidden states: the argmax (greedy, _Head.argmax: exact, found
    through a cheap first pass) or a _Sampler.

    HF's generate keeps finished rows in the batch until the last one ends, so one long row
    makes every row pay for its length; here a step costs only the rows still running. The
    prefix all rows share (_shared_prefix) is run once and its KV cache copied to every row;
    each prompt's own tokens run once and are copied to its `copies` rows.
    Otherwise the inputs of generate's greedy search (left padding, position ids from the
    mask, cache positions, one logit row per step), so the same tokens: tests compare the two.
    """
    out: list[list[int]] = [[] for _ in range(len(seqs) * copies)]
    live = [i for i in range(len(seqs)) if budgets[i] > 0]
    if not live:
        return out
    head = _Head(model)
    with head.fp16_body, _GroupedStepAttention():
        return _decode_loop(head, model, seqs, live, budgets, stop, table, pad, pick, copies, out)


# Decoding steps of Gemma-3 text decoders run pipeline.decode_step.Gemma3Step (same operations,
# same tokens, without transformers' per-step machinery); False: transformers' forward (tests, A/B timing).
LEAN_STEP = True


def _decode_loop(head, model, seqs, live, budgets, stop, table, pad, pick, copies, out) -> list[list[int]]:
    """The body of _decode (prefill, then one step a token while any row runs)."""
    hidden, cache, mask, cache_position = _prefill(model, head.body, [seqs[i] for i in live], max(budgets), pad,
                                                   copies)
    alive = torch.tensor([i * copies + c for i in live for c in range(copies)], dtype=torch.long)
    left = torch.tensor([budgets[i // copies] for i in alive.tolist()])
    device = _device(model)
    stop_ids = torch.tensor(sorted(stop), dtype=torch.long, device=device)
    seen = torch.zeros(len(alive), dtype=torch.bool)
    lean = Gemma3Step.of(head.body, _fp16_pack, "fp16" in head.pre) \
        if LEAN_STEP and Gemma3Step.fits(head.body, cache) else None
    while True:
        nxt = pick(head, hidden, alive)
        for row, t in zip(alive.tolist(), nxt.tolist()):
            out[row].append(t)
        left -= 1
        done = torch.isin(nxt, stop_ids).cpu() | (left <= 0)
        if table is not None:
            line_done, seen = table.step(nxt.cpu(), seen)
            done |= line_done
        if bool(done.all()):
            break
        if bool(done.any()):
            keep = (~done).nonzero().squeeze(1)
            alive, seen, left = alive[keep], seen[keep], left[keep]
            keep = keep.to(device)
            cache.batch_select_indices(keep)
            nxt, mask = nxt[keep], mask[keep]
        mask = torch.cat([mask, mask.new_ones((mask.shape[0], 1))], dim=-1)
        cache_position = cache_position + 1
        if lean is not None:
            hidden = lean(nxt, mask, cache)
        else:
            hidden = head.body(input_ids=nxt[:, None], attention_mask=mask, position_ids=mask.sum(-1, keepdim=True) - 1,
                               past_key_values=cache, cache_position=cache_position,
                               use_cache=True).last_hidden_state[:, -1]
    return out


def _greedy(model, seqs, budgets, stop, table, pad) -> list[list[int]]:
    """Greedy _decode (the argmax at every step)."""
    return _decode(model, seqs, budgets, stop, table, pad)


def _own_loop(model, seqs, budgets, stop, table, pad, sample: dict | None, copies: int):
    """_decode with argmax or a _Sampler where it gives what generate would (None where it cannot:
    a logits processor in the model's generation_config, or several greedy copies)."""
    if sample is None:
        return _decode(model, seqs, budgets, stop, table, pad) if copies == 1 and _plain_greedy(model) else None
    if not _plain_sampling(model):
        return None
    gc = model.generation_config
    seeds = [row_seed(sample["seed"], s, c) for s in seqs for c in range(copies)]
    pick = _Sampler(seeds, sample["temperature"], getattr(gc, "top_k", None), sample["top_p"])
    return _decode(model, seqs, budgets, stop, table, pad, pick=pick, copies=copies)


def _hf_generate(model, seqs, budgets, stop, table, pad, sample: dict | None, copies: int, seed: int):
    """transformers' generate on one left-padded batch (seeded per batch): new ids per row."""
    torch.manual_seed(seed)
    ids, mask = _left_pad(seqs, pad)
    device = _device(model)
    opts = dict(do_sample=True, temperature=sample["temperature"], top_p=sample["top_p"]) if sample else \
        dict(do_sample=False, temperature=None, top_p=None, top_k=None)
    if table is not None:
        opts["stopping_criteria"] = StoppingCriteriaList([_StopAfterFirstLine(table, len(seqs) * copies)])
    out = model.generate(input_ids=ids.to(device), attention_mask=mask.to(device), max_new_tokens=max(budgets),
                         num_return_sequences=copies, pad_token_id=pad, **opts)
    return out[:, ids.shape[1]:].tolist()


@torch.inference_mode()
def generate_ids(model, tok, prompts: list[str], *, max_new_tokens: int | list[int], batch_size: int = 8,
                 do_sample: bool = False, temperature: float = 1.0, top_p: float = 1.0,
                 num_return_sequences: int = 1, seed: int = 0, stop_after_first_line: bool = False,
                 desc: str | None = None) -> list[list[list[int]]]:
    """New token ids per prompt and return sequence (up to and including EOS), in prompt order.

    `max_new_tokens`: one budget for all prompts, or one per prompt (a prompt's output then
    does not depend on which prompts share its batch). `stop_after_first_line`: each row ends
    once its first non-empty line is complete (for callers that keep only that line; what
    they keep is unchanged, the decoding is shorter). `desc`: a progress bar over batches."""
    from tqdm.auto import tqdm

    budgets = [max_new_tokens] * len(prompts) if isinstance(max_new_tokens, int) else list(max_new_tokens)
    pad = tok.pad_token_id if tok.pad_token_id is not None else tok.eos_token_id
    stop = _eos_ids(model, tok)
    encoded = [_encode_prompt(tok, p) for p in prompts]
    order = sorted(range(len(encoded)), key=lambda i: -len(encoded[i]))  # similar lengths share a batch
    out: list = [None] * len(encoded)
    sample = dict(temperature=temperature, top_p=top_p, seed=seed) if do_sample else None
    table = _line_end(tok, model) if stop_after_first_line else None
    starts, began = range(0, len(order), batch_size), time.perf_counter()
    log.info("decoding %d prompts x %d (%s, up to %d new tokens, batch %d)", len(prompts), num_return_sequences,
             "sampled" if do_sample else "greedy", max(budgets, default=0), batch_size)
    for b, start in enumerate(tqdm(starts, desc=desc, unit="batch", leave=False, disable=desc is None)):
        idx = order[start:start + batch_size]
        with _TallHead(model):
            new = _own_loop(model, [encoded[i] for i in idx], [budgets[i] for i in idx], stop, table, pad, sample,
                            num_return_sequences)
            if new is None:  # a logits processor our loop does not apply: transformers' generate
                new = _hf_generate(model, [encoded[i] for i in idx], [budgets[i] for i in idx], stop, table, pad,
                                   sample, num_return_sequences, seed + b)
        for k, i in enumerate(idx):
            rows = new[k * num_return_sequences:(k + 1) * num_return_sequences]
            out[i] = [_trim(r[:budgets[i]], stop, table) for r in rows]
    made = sum(len(r) for rows in out for r in rows)
    log.info("decoded %d new tokens in %.1f s", made, time.perf_counter() - began)
    return out


def generate(model, tok, prompts: list[str], *, max_new_tokens: int | list[int], batch_size: int = 8,
             do_sample: bool = False, temperature: float = 1.0, top_p: float = 1.0, num_return_sequences: int = 1,
             seed: int = 0, stop_after_first_line: bool = False,
             desc: str | None = None) -> list[str] | list[list[str]]:
    """Continuations only (prompt not repeated, special tokens dropped), batched and left-padded.

    Greedy by default; `do_sample` samples with temperature, the model's top-k, then top_p,
    each row from its own generator seeded by (seed, prompt, return sequence number).
    One string per prompt, or a list of `num_return_sequences` strings per prompt.
    """
    ids = generate_ids(model, tok, prompts, max_new_tokens=max_new_tokens, batch_size=batch_size,
                       do_sample=do_sample, temperature=temperature, top_p=top_p,
                       num_return_sequences=num_return_sequences, seed=seed,
                       stop_after_first_line=stop_after_first_line, desc=desc)
    texts = [[tok.decode(r, skip_special_tokens=True) for r in rows] for rows in ids]
    return [t[0] for t in texts] if num_return_sequences == 1 else texts


# --------------------------------------------------------------------------- scoring
def token_logprobs(hidden: torch.Tensor, weight: torch.Tensor, targets: torch.Tensor, *,
                   chunk: int = 256, softcap: float | None = None, packed=None) -> torch.Tensor:
    """log softmax(hidden @ weight.T)[target] per row, chunked over rows.

    hidden: (N, d); weight: (V, d); targets: (N,). Returns (N,) float32 log-probabilities.
    `packed`: fbgemm's fp16 copy of a weight fp16 holds exactly (_fp16_pack), for the same
    products in fp32 arithmetic from half the bytes (_Fp16Linears).
    """
    out = []
    for start in range(0, hidden.shape[0], chunk):
        t = targets[start:start + chunk]
        if packed is not None:
            logits = torch.ops.quantized.linear_dynamic_fp16(hidden[start:start + chunk].float(), packed)  # (c, V)
            if softcap:
                logits = torch.tanh(logits / softcap) * softcap
            out.append(logits.gather(1, t[:, None]).squeeze(1) - torch.logsumexp(logits, dim=1))
            continue
        # (V, c) = weight @ h.T rather than (c, V) = h @ weight.T: the same products, but MKL
        # runs this tall shape 1.4-1.8x faster on CPU (bench/bench_generate.py: output_layer)
        logits = weight @ hidden[start:start + chunk].to(weight.dtype).t()
        logits = logits.to(torch.promote_types(logits.dtype, torch.float32))  # (V, c), bf16 -> fp32
        if softcap:
            logits = torch.tanh(logits / softcap) * softcap
        out.append(logits.gather(0, t[None, :]).squeeze(0) - torch.logsumexp(logits, dim=0))
    return torch.cat(out) if out else hidden.new_zeros(0, dtype=torch.float32)


def windows(context: list[int], target: list[int], max_len: int) -> list[tuple[list[int], list[int]]]:
    """Split a (context, target) item longer than `max_len` into scoreable pieces.

    Each piece of at most max_len // 2 target tokens is scored after up to
    max_len - len(piece) preceding tokens (context and earlier target). Items that fit
    are returned unchanged; every target token is scored exactly once.
    """
    if len(context) + len(target) <= max_len:
        return [(context, target)]
    step, full, out = max(1, max_len // 2), context + target, []
    for start in range(0, len(target), step):
        piece = target[start:start + step]
        end = len(context) + start
        out.append((full[max(0, end - (max_len - len(piece))):end], piece))
    return out


def _score_rows(body, weight, softcap, batch, packed=None) -> list[float]:
    """Summed log-probs of a batch of (k, context, target) pieces, one right-padded forward pass:
    causal attention never looks at the padding on the right, so no mask is needed."""
    device = weight.device
    seqs = [c + t for _, c, t in batch]
    ids = torch.zeros((len(seqs), max(map(len, seqs))), dtype=torch.long)
    for row, s in enumerate(seqs):
        ids[row, :len(s)] = torch.tensor(s)
    hidden = body(input_ids=ids.to(device), use_cache=False).last_hidden_state  # (B, T, d)
    rows = torch.cat([torch.full((len(t),), r) for r, (_, _, t) in enumerate(batch)])
    cols = torch.cat([torch.arange(len(c) - 1, len(c) + len(t) - 1) for _, c, t in batch])
    targets = torch.tensor([tok for _, _, t in batch for tok in t], device=device)
    lp = token_logprobs(hidden[rows.to(device), cols.to(device)], weight, targets, softcap=softcap, packed=packed).cpu()
    return [float(x.sum()) for x in lp.split([len(t) for _, _, t in batch])]


def _score_groups(body, weight, softcap, groups, packed=None) -> list[float]:
    """Summed log-probs for groups of pieces that share their context: [(context, [target, ...])].

    Each context runs once (left-padded, with the KV cache), its cache is copied to its
    targets' rows, then all targets run in one pass after it. Returns one sum per target,
    groups in order. (G contexts, R target rows, T longest target.)"""
    from transformers import DynamicCache

    device = weight.device
    ctx_ids, ctx_mask = _left_pad([c for c, _ in groups], 0)
    ctx_ids, ctx_mask = ctx_ids.to(device), ctx_mask.to(device)
    cache = DynamicCache(config=body.config)
    last = body(input_ids=ctx_ids, attention_mask=ctx_mask, position_ids=(ctx_mask.cumsum(-1) - 1).clamp_min(0),
                past_key_values=cache, use_cache=True).last_hidden_state[:, -1]  # (G, d)
    rep = torch.tensor([g for g, (_, ts) in enumerate(groups) for _ in ts], device=device)  # (R,)
    cache.batch_select_indices(rep)
    targets = [t for _, ts in groups for t in ts]
    width = max(map(len, targets))
    ids = torch.zeros((len(targets), width), dtype=torch.long, device=device)
    for row, t in enumerate(targets):
        ids[row, :len(t)] = torch.tensor(t)
    mask = torch.cat([ctx_mask[rep], ctx_mask.new_ones((len(targets), width))], dim=-1)
    start = ctx_ids.shape[1]
    hidden = body(input_ids=ids, attention_mask=mask, position_ids=ctx_mask.sum(-1)[rep, None] + torch.arange(width, device=device),
                  past_key_values=cache, cache_position=torch.arange(start, start + width, device=device),
                  use_cache=True).last_hidden_state  # (R, T, d): position j predicts target token j + 1
    hidden = torch.cat([last[rep][:, None], hidden[:, :-1]], dim=1)
    rows = torch.cat([torch.full((len(t),), r) for r, t in enumerate(targets)]).to(device)
    cols = torch.cat([torch.arange(len(t)) for t in targets]).to(device)
    flat = torch.tensor([tok for t in targets for tok in t], device=device)
    lp = token_logprobs(hidden[rows, cols], weight, flat, softcap=softcap, packed=packed).cpu()
    return [float(x.sum()) for x in lp.split([len(t) for t in targets])]


def _context_groups(body, pieces, max_len: int) -> tuple[list, list]:
    """(groups of pieces that share a context worth running once, the other pieces).

    A group: [(context, [(k, target), ...])] with at least two targets. Not used where a padded
    row could outgrow a sliding attention window (the window counts padding too)."""
    by_ctx: dict[tuple, list] = {}
    for k, c, t in pieces:
        by_ctx.setdefault(tuple(c), []).append((k, t))
    window = getattr(body.config, "sliding_window", None) or max_len
    groups, rest = [], []
    for c, members in by_ctx.items():
        if len(members) >= 2 and len(c) + max(len(t) for _, t in members) <= min(window, max_len) // 2:
            groups.append((list(c), members))
        else:
            rest += [(k, list(c), t) for k, t in members]
    return groups, rest


@torch.inference_mode()
def sum_logprobs(model, items: list[tuple[list[int], list[int]]], batch_size: int = 8,
                 max_len: int = 2048, share_contexts: bool = True) -> list[float]:
    """Sum of log p(target | context) in nats for each (context ids, target ids) item.

    Items are scored in batches of similar length (sorted, longest first; results in item
    order). Items that share a context (answer options after one question) run the context
    once and copy its KV cache to each option (_score_groups); up to float rounding, the same sums
    (`share_contexts=False`: every item on its own row, for comparison)."""
    body, weight, softcap = lm_parts(model)
    pieces = [(k, ctx, tgt) for k, item in enumerate(items) if item[1] for ctx, tgt in windows(*item, max_len)]
    if any(not c for _, c, _ in pieces):
        raise PolyalignError("(tokenizer)", "bos_token", "no start token to condition the first token on",
                             "use a tokenizer with a BOS or EOS token")
    groups, rest = _context_groups(body, pieces, max_len) if share_contexts else ([], pieces)
    log.info("scoring %d items (%d windows, %d shared contexts)", len(items), len(pieces), len(groups))
    fp16 = "fp16" in prescore_kinds(weight)  # the decoding's fp16-weight GEMMs: same products, fp32 arithmetic
    head = base_lm(model).get_output_embeddings()
    packed = _fp16_pack(head) if fp16 and type(head) is torch.nn.Linear and head.weight is weight else None
    totals = [0.0] * len(items)
    rest.sort(key=lambda p: -(len(p[1]) + len(p[2])))
    with _Fp16Linears(body, fp16):
        for start in range(0, len(rest), batch_size):
            batch = rest[start:start + batch_size]
            for (k, _, _), v in zip(batch, _score_rows(body, weight, softcap, batch, packed)):
                totals[k] += v
        groups.sort(key=lambda g: -len(g[0]))
        for batch in _group_batches(groups, batch_size):
            keys = [k for _, members in batch for k, _ in members]
            values = _score_groups(body, weight, softcap, [(c, [t for _, t in m]) for c, m in batch], packed)
            for k, v in zip(keys, values):
                totals[k] += v
    return totals


def _group_batches(groups: list, batch_size: int):
    """Consecutive groups with at most `batch_size` target rows a batch (a larger group alone)."""
    batch, rows = [], 0
    for g in groups:
        if batch and rows + len(g[1]) > batch_size:
            yield batch
            batch, rows = [], 0
        batch.append(g)
        rows += len(g[1])
    if batch:
        yield batch


def continuation_logprobs(model, tok, prompts: list[str], continuations: list[str], batch_size: int = 8,
                          max_len: int = 2048) -> list[float]:
    """Sum log-prob (nats) of each continuation given its prompt.

    Prompt and continuation are tokenised separately (start token + prompt, then the
    continuation without special tokens), so the scored tokens are exactly
    tok(continuation); put a leading space in the continuation where one belongs.
    """
    if len(prompts) != len(continuations):
        raise PolyalignError("(caller)", "continuations", "prompts and continuations differ in length",
                             "pass one continuation per prompt")
    items = [(_encode_prompt(tok, p), tok(c, add_special_tokens=False)["input_ids"])
             for p, c in zip(prompts, continuations)]
    return sum_logprobs(model, items, batch_size=batch_size, max_len=max_len)


def text_nll_bits(model, tok, texts: list[str], batch_size: int = 8, max_len: int = 2048) -> list[float]:
    """Total negative log-likelihood in bits of each text given only the start token.

    Every token of the text is scored (the first one given BOS), so dividing by the
    text's UTF-8 bytes gives tokenizer-independent bits per byte. Empty text: 0 bits.
    """
    head = start_ids(tok)
    items = [(head, tok(t, add_special_tokens=False)["input_ids"]) for t in texts]
    return [0.0 - v / math.log(2) for v in sum_logprobs(model, items, batch_size=batch_size, max_len=max_len)]
