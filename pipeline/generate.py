"""Batched generation and scoring: every stage's way to run a causal LM forward.

Prompts are encoded exactly as training encodes them (start token + prompt, no other
special tokens; pipeline.train.encode_example), so a fine-tuned model sees at inference
the token boundary it was trained on.

Speed (bench/bench_generate.py, figures in reports/bench.json): prompts are sorted by
length and generated in left-padded batches with the KV cache, so one pass over the
weights (the 262k x 640 output layer alone is 671 MB in fp32) serves a whole batch
instead of one sequence. Scoring computes output-layer logits only at the positions
being scored, in chunks, never the full (batch, length, vocab) tensor.
"""

from __future__ import annotations

import math

import torch
from transformers import StoppingCriteria, StoppingCriteriaList

from pipeline.errors import PolyalignError
from pipeline.train import lm_parts, start_ids


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


def _trim(new: list[int], stop: set[int], line_end: "_LineEnd | None" = None) -> list[int]:
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


def _keep_last(model) -> dict:
    """logits_to_keep=1 where the model's forward takes it (BLOOM's refuses unknown arguments)."""
    import inspect

    return {"logits_to_keep": 1} if "logits_to_keep" in inspect.signature(model.forward).parameters else {}


def _greedy(model, seqs: list[list[int]], budgets: list[int], stop: set[int], table: "_LineEnd | None",
            pad: int) -> list[list[int]]:
    """Greedy decoding of a batch of prompts (token ids) that drops each row from the batch (and
    its KV cache) as soon as it is done: a stop token, its own token budget (`budgets`, one a
    row) reached, or its first line complete when `table` is given.

    HF's generate keeps finished rows in the batch until the last one ends, so one long row
    makes every row pay for its length; here a step costs only the rows still running. The
    prefix all rows share (_shared_prefix) is run once and its KV cache copied to every row.
    Otherwise the inputs of generate's greedy search (left padding, position ids from the
    mask, cache positions, one logit row per step), so the same tokens: tests compare the two.
    """
    from transformers import DynamicCache

    out: list[list[int]] = [[] for _ in seqs]
    alive = torch.tensor([i for i in range(len(seqs)) if budgets[i] > 0], dtype=torch.long)
    if len(alive) == 0:
        return out
    seqs = [seqs[i] for i in alive.tolist()]
    left = torch.tensor([budgets[i] for i in alive.tolist()])
    device = _device(model)
    cache = DynamicCache(config=model.config)
    last_only = _keep_last(model)
    shared = _shared_prefix(model, seqs, int(left.max()))
    if shared:
        positions = torch.arange(shared, device=device)
        model(input_ids=torch.tensor([seqs[0][:shared]], device=device), past_key_values=cache,
              position_ids=positions[None], cache_position=positions, use_cache=True, **last_only)
        cache.batch_repeat_interleave(len(seqs))
    ids, mask = _left_pad([s[shared:] for s in seqs], pad)
    ids, mask = ids.to(device), mask.to(device)
    step_ids, position = ids, (mask.cumsum(-1) - 1).masked_fill(mask == 0, 1) + shared
    mask = torch.cat([mask.new_ones((mask.shape[0], shared)), mask], dim=-1)
    cache_position = torch.arange(shared, mask.shape[1], device=device)
    stop_ids = torch.tensor(sorted(stop), dtype=torch.long, device=device)
    seen = torch.zeros(len(alive), dtype=torch.bool)
    while True:
        logits = model(input_ids=step_ids, attention_mask=mask, position_ids=position, past_key_values=cache,
                       cache_position=cache_position, use_cache=True, **last_only).logits[:, -1, :]
        nxt = logits.argmax(-1)
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
        step_ids, position = nxt[:, None], (mask.sum(-1, keepdim=True) - 1)
        cache_position = cache_position[-1:] + 1
    return out


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
    device = _device(model)
    sampling = dict(do_sample=True, temperature=temperature, top_p=top_p) if do_sample else \
        dict(do_sample=False, temperature=None, top_p=None, top_k=None)
    table = _line_end(tok, model) if stop_after_first_line else None
    starts = range(0, len(order), batch_size)
    for b, start in enumerate(tqdm(starts, desc=desc, unit="batch", leave=False, disable=desc is None)):
        idx = order[start:start + batch_size]
        torch.manual_seed(seed + b)
        n_rows = len(idx) * num_return_sequences
        extra = {} if table is None else {"stopping_criteria": StoppingCriteriaList([_StopAfterFirstLine(table, n_rows)])}
        with _TallHead(model):
            if not do_sample and num_return_sequences == 1 and _plain_greedy(model):
                new = _greedy(model, [encoded[i] for i in idx], [budgets[i] for i in idx], stop, table, pad)
            else:
                ids, mask = _left_pad([encoded[i] for i in idx], pad)
                seqs = model.generate(input_ids=ids.to(device), attention_mask=mask.to(device),
                                      max_new_tokens=max(budgets[i] for i in idx),
                                      num_return_sequences=num_return_sequences, pad_token_id=pad, **sampling, **extra)
                new = seqs[:, ids.shape[1]:].tolist()
        for k, i in enumerate(idx):
            rows = new[k * num_return_sequences:(k + 1) * num_return_sequences]
            out[i] = [_trim(r[:budgets[i]], stop, table) for r in rows]
    return out


def generate(model, tok, prompts: list[str], *, max_new_tokens: int | list[int], batch_size: int = 8,
             do_sample: bool = False, temperature: float = 1.0, top_p: float = 1.0, num_return_sequences: int = 1,
             seed: int = 0, stop_after_first_line: bool = False,
             desc: str | None = None) -> list[str] | list[list[str]]:
    """Continuations only (prompt not repeated, special tokens dropped), batched and left-padded.

    Greedy by default; `do_sample` with temperature/top_p samples (seeded per batch).
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
                   chunk: int = 256, softcap: float | None = None) -> torch.Tensor:
    """log softmax(hidden @ weight.T)[target] per row, chunked over rows.

    hidden: (N, d); weight: (V, d); targets: (N,). Returns (N,) float32 log-probabilities.
    """
    out = []
    for start in range(0, hidden.shape[0], chunk):
        # (V, c) = weight @ h.T rather than (c, V) = h @ weight.T: the same products, but MKL
        # runs this tall shape 1.4-1.8x faster on CPU (bench/bench_generate.py: output_layer)
        logits = weight @ hidden[start:start + chunk].to(weight.dtype).t()
        logits = logits.to(torch.promote_types(logits.dtype, torch.float32))  # (V, c), bf16 -> fp32
        if softcap:
            logits = torch.tanh(logits / softcap) * softcap
        t = targets[start:start + chunk]
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


@torch.inference_mode()
def sum_logprobs(model, items: list[tuple[list[int], list[int]]], batch_size: int = 8,
                 max_len: int = 2048) -> list[float]:
    """Sum of log p(target | context) in nats for each (context ids, target ids) item."""
    body, weight, softcap = lm_parts(model)
    device = _device(model)
    pieces = [(k, ctx, tgt) for k, item in enumerate(items) if item[1] for ctx, tgt in windows(*item, max_len)]
    if any(not c for _, c, _ in pieces):
        raise PolyalignError("(tokenizer)", "bos_token", "no start token to condition the first token on",
                             "use a tokenizer with a BOS or EOS token")
    pieces.sort(key=lambda p: -(len(p[1]) + len(p[2])))
    totals = [0.0] * len(items)
    for start in range(0, len(pieces), batch_size):
        batch = pieces[start:start + batch_size]
        seqs = [c + t for _, c, t in batch]
        width = max(map(len, seqs))
        ids = torch.zeros((len(seqs), width), dtype=torch.long)
        for row, s in enumerate(seqs):
            ids[row, :len(s)] = torch.tensor(s)
        # right padding and no mask: causal attention never looks at the padding on the right
        hidden = body(input_ids=ids.to(device), use_cache=False).last_hidden_state  # (B, T, d)
        rows = torch.cat([torch.full((len(t),), r) for r, (_, _, t) in enumerate(batch)])
        cols = torch.cat([torch.arange(len(c) - 1, len(c) + len(t) - 1) for _, c, t in batch])
        targets = torch.tensor([tok for _, _, t in batch for tok in t], device=device)
        lp = token_logprobs(hidden[rows.to(device), cols.to(device)], weight, targets, softcap=softcap).cpu()
        pos = 0
        for k, _, t in batch:
            totals[k] += float(lp[pos:pos + len(t)].sum())
            pos += len(t)
    return totals


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
