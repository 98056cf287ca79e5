"""pipeline.generate: batched greedy equals per-example greedy; scoring against hand computations."""

from __future__ import annotations

import math

import pytest
import torch

from pipeline import generate as G
from pipeline.batching import start_ids

TINY = "tiny-random"
PROMPTS = ["Translate to Galician: the house\n", "Hello", "A much longer prompt about the weather in Lilongwe today,",
           "Nepal", "Q: what is two plus two?\nA:"]


pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def lm():
    from pipeline.models import load_model

    return load_model(TINY, dtype=torch.float64)  # float64: no near-tie argmax flips between batch shapes


def full_logprobs(model, ids: list[int]) -> torch.Tensor:
    """log p(ids[i] | ids[:i]) for i >= 1 from one plain forward pass: shape (len(ids) - 1,)."""
    with torch.no_grad():
        logits = model(torch.tensor([ids])).logits[0, :-1].double()
    return torch.log_softmax(logits, -1).gather(1, torch.tensor(ids[1:])[:, None]).squeeze(1)


def test_batched_greedy_equals_per_example(lm):
    model, tok = lm
    batched = G.generate(model, tok, PROMPTS, max_new_tokens=12, batch_size=8)
    single = [G.generate(model, tok, [p], max_new_tokens=12, batch_size=1)[0] for p in PROMPTS]
    assert batched == single
    assert all(isinstance(s, str) for s in batched)


def test_generated_ids_stop_at_eos_and_follow_greedy_argmax(lm):
    model, tok = lm
    ids = G.generate_ids(model, tok, PROMPTS[:2], max_new_tokens=6, batch_size=2)
    for prompt, (new,) in zip(PROMPTS[:2], ids):
        assert 1 <= len(new) <= 6
        context = start_ids(tok) + tok(prompt, add_special_tokens=False)["input_ids"]
        with torch.no_grad():
            first = model(torch.tensor([context])).logits[0, -1].argmax().item()
        assert new[0] == first
        assert tok.eos_token_id not in new[:-1]


def test_sampling_returns_n_per_prompt_and_is_seeded(lm):
    model, tok = lm
    a = G.generate(model, tok, PROMPTS[:2], max_new_tokens=5, do_sample=True, temperature=1.0, top_p=0.9,
                   num_return_sequences=3, seed=7)
    b = G.generate(model, tok, PROMPTS[:2], max_new_tokens=5, do_sample=True, temperature=1.0, top_p=0.9,
                   num_return_sequences=3, seed=7)
    assert a == b and len(a) == 2 and all(len(x) == 3 for x in a)


def test_continuation_logprobs_against_hand_computation(lm):
    model, tok = lm
    prompts, conts = ["The capital of Malawi is", "Hello"], [" Lilongwe", " world, again"]
    got = G.continuation_logprobs(model, tok, prompts, conts, batch_size=2)
    for prompt, cont, value in zip(prompts, conts, got):
        ctx = start_ids(tok) + tok(prompt, add_special_tokens=False)["input_ids"]
        tgt = tok(cont, add_special_tokens=False)["input_ids"]
        want = full_logprobs(model, ctx + tgt)[len(ctx) - 1:].sum().item()
        assert value == pytest.approx(want, abs=1e-8)
    assert G.continuation_logprobs(model, tok, ["x"], [""]) == [0.0]


def test_text_nll_bits_sums_every_token_given_bos(lm):
    model, tok = lm
    texts = ["Muli bwanji?", "Namaste, how are you today?", ""]
    bits = G.text_nll_bits(model, tok, texts, batch_size=2)
    for text, value in zip(texts[:2], bits):
        ids = start_ids(tok) + tok(text, add_special_tokens=False)["input_ids"]
        assert value == pytest.approx(-full_logprobs(model, ids).sum().item() / math.log(2), rel=1e-9)
    assert bits[2] == 0.0


def test_windows_score_each_target_token_once():
    ctx, tgt = [1], list(range(10, 30))
    pieces = G.windows(ctx, tgt, max_len=8)
    assert sum((p[1] for p in pieces), []) == tgt
    assert all(len(c) + len(t) <= 8 and c for c, t in pieces)
    assert pieces[1] == (tgt[0:4], tgt[4:8])  # piece 2 sees the 4 target tokens before it
    assert G.windows(ctx, tgt[:3], max_len=8) == [(ctx, tgt[:3])]


def test_long_text_is_scored_in_windows(lm):
    model, tok = lm
    text = "word " * 60
    whole = G.text_nll_bits(model, tok, [text], max_len=4096)[0]
    windowed = G.text_nll_bits(model, tok, [text], max_len=32)[0]
    assert windowed > 0 and abs(windowed - whole) / whole < 0.5


def test_token_logprobs_matches_log_softmax():
    torch.manual_seed(0)
    h, w, y = torch.randn(9, 4), torch.randn(12, 4), torch.randint(0, 12, (9,))
    want = torch.log_softmax(h @ w.t(), -1).gather(1, y[:, None]).squeeze(1)
    assert torch.allclose(G.token_logprobs(h, w, y, chunk=4), want, atol=1e-5)


def test_stop_after_first_line_keeps_the_first_non_empty_line(lm):
    """The stop only shortens decoding: the first non-empty line is what it is without it."""
    from pipeline.culture import first_line as culture_first_line
    from pipeline.translate import first_line

    model, tok = lm
    prompts = [p + "\n" for p in PROMPTS]  # a line break in the prompt makes newlines likely
    full = G.generate_ids(model, tok, prompts, max_new_tokens=40, batch_size=8)
    cut = G.generate_ids(model, tok, prompts, max_new_tokens=40, batch_size=8, stop_after_first_line=True)
    table = G._line_end(tok, model)
    for (a,), (b,) in zip(full, cut):
        text_a, text_b = tok.decode(a, skip_special_tokens=True), tok.decode(b, skip_special_tokens=True)
        assert first_line(text_a) == first_line(text_b)
        assert culture_first_line(text_a) == culture_first_line(text_b)
        assert b == a[:len(b)]  # same tokens, just fewer
        if len(b) < len(a):  # it stopped: the last kept token closes a non-empty line
            assert table.has_nl[b[-1]] and culture_first_line(text_b)


def test_line_end_table_on_hand_made_sequences(lm):
    model, tok = lm
    table = G._line_end(tok, model)
    nl = tok("\n", add_special_tokens=False)["input_ids"][-1]
    word = tok("house", add_special_tokens=False)["input_ids"][-1]
    assert table.has_nl[nl] and not table.has_text[nl]
    assert G._trim([nl, word, nl, word], set(), table) == [nl, word, nl]  # a leading blank line is skipped
    assert G._trim([word, word], set(), table) == [word, word]


def test_tall_head_gives_the_same_logits_and_restores_the_layer(lm):
    model, tok = lm
    ids = torch.tensor([start_ids(tok) + tok("Muli bwanji?", add_special_tokens=False)["input_ids"]])
    with torch.no_grad():
        plain = model(ids).logits
        with G._TallHead(model) as tall:
            assert tall.head is not None
            swapped = model(ids).logits
    assert torch.allclose(plain, swapped, atol=1e-10)
    assert "forward" not in vars(model.get_output_embeddings())  # nn.Linear.forward again



def hf_greedy(model, tok, prompts, max_new_tokens, stop_after_first_line=False, eos=None):
    """transformers' own greedy search on the same left-padded batch (the reference for G._greedy)."""
    pad = tok.pad_token_id if tok.pad_token_id is not None else tok.eos_token_id
    ids, mask = G._left_pad([G._encode_prompt(tok, p) for p in prompts], pad)
    table = G._line_end(tok, model) if stop_after_first_line else None
    extra = {} if table is None else {"stopping_criteria": [G._StopAfterFirstLine(table, len(prompts))]}
    extra |= {} if eos is None else {"eos_token_id": sorted(eos)}
    with torch.no_grad():
        seqs = model.generate(input_ids=ids, attention_mask=mask, max_new_tokens=max_new_tokens, do_sample=False,
                              temperature=None, top_p=None, top_k=None, pad_token_id=pad, **extra)
    return [G._trim(r, eos or G._eos_ids(model, tok), table) for r in seqs[:, ids.shape[1]:].tolist()]


def by_length(tok, prompts):
    return sorted(prompts, key=lambda p: -len(G._encode_prompt(tok, p)))  # generate_ids' batch order


@pytest.mark.parametrize("first_line", [False, True])
def test_greedy_equals_transformers_generate(lm, first_line):
    model, tok = lm
    prompts = by_length(tok, [p + "\n" for p in PROMPTS] if first_line else PROMPTS)
    ours = G.generate_ids(model, tok, prompts, max_new_tokens=30, batch_size=8, stop_after_first_line=first_line)
    assert [r[0] for r in ours] == hf_greedy(model, tok, prompts, 30, first_line)


def test_greedy_drops_finished_rows_and_keeps_hf_tokens(lm):
    """Rows that stop early leave the batch and its KV cache; the others go on with HF's tokens."""
    model, tok = lm
    prompts = by_length(tok, PROMPTS)
    free = hf_greedy(model, tok, prompts, 20)
    stop = {free[0][2]}  # a token the first row emits third: that row finishes early
    with torch.no_grad():
        ours = G._greedy(model, [G._encode_prompt(tok, p) for p in prompts], [20] * len(prompts), stop, None,
                         tok.pad_token_id)
    want = hf_greedy(model, tok, prompts, 20, eos=stop)
    assert ours == want
    assert len(ours[0]) <= 3 and max(map(len, ours)) == 20  # finished at different steps: the batch shrank


def test_greedy_with_a_logits_processor_falls_back_to_generate(lm):
    model, tok = lm
    assert G._plain_greedy(model)
    model.generation_config.repetition_penalty = 1.3
    try:
        assert not G._plain_greedy(model)
        prompts = by_length(tok, PROMPTS[:3])
        got = G.generate_ids(model, tok, prompts, max_new_tokens=8, batch_size=3)
        assert [r[0] for r in got] == hf_greedy(model, tok, prompts, 8)  # HF applies the penalty
    finally:
        model.generation_config.repetition_penalty = None


def test_per_prompt_budgets_cut_each_row_and_do_not_depend_on_the_batch(lm):
    model, tok = lm
    prompts = by_length(tok, PROMPTS)
    budgets = [3, 9, 1, 6, 12]
    free = hf_greedy(model, tok, prompts, 12)
    got = G.generate_ids(model, tok, prompts, max_new_tokens=budgets, batch_size=8)
    assert [r[0] for r in got] == [f[:b] for f, b in zip(free, budgets)]
    alone = [G.generate_ids(model, tok, [p], max_new_tokens=[b], batch_size=1)[0] for p, b in zip(prompts, budgets)]
    assert alone == got


def test_shared_prefix_runs_once_and_gives_hf_tokens(lm):
    """In-context prompts share their examples: computed once, copied to every row's cache."""
    model, tok = lm
    shots = "English: the house\nGalician: a casa\n"  # short: tiny-random's sliding window is 64 positions
    prompts = by_length(tok, [shots + f"English: {p}\nGalician:" for p in PROMPTS])
    seqs = [G._encode_prompt(tok, p) for p in prompts]
    shared = G._shared_prefix(model, seqs, 8)
    assert shared >= G.SHARED_PREFIX_MIN and all(s[:shared] == seqs[0][:shared] for s in seqs)
    ours = G.generate_ids(model, tok, prompts, max_new_tokens=8, batch_size=8, stop_after_first_line=True)
    assert [r[0] for r in ours] == hf_greedy(model, tok, prompts, 8, True)
    assert G._shared_prefix(model, seqs[:1], 8) == 0  # one row: nothing to share
    window = model.config.get_text_config().sliding_window
    if window:  # a sequence that could outgrow the sliding window is not split
        assert G._shared_prefix(model, seqs, window) == 0


def test_length_groups_split_where_padding_costs_more_than_a_pass():
    assert G._length_groups([5, 5, 5], 32) == [[0, 1, 2]]  # nothing to save
    assert G._length_groups([80, 10, 12, 78], 32) == [[0, 3], [2, 1]]  # 2 x 80 + 2 x 12 + 2 x 32 < 4 x 80 + 32
    assert G._length_groups([80, 10, 12, 78], 1000) == [[0, 3, 2, 1]]  # a pass costs more than the padding
    lengths = [21, 84, 33, 47, 62, 30, 45, 52]
    groups = G._length_groups(lengths, 8)
    assert sorted(i for g in groups for i in g) == list(range(len(lengths)))
    padded = sum(len(g) * max(lengths[i] for i in g) + 8 for g in groups)
    assert padded <= len(lengths) * max(lengths) + 8  # never worse than one batch


@pytest.mark.parametrize("shots", ["", "English: the house\nGalician: a casa\n"])
def test_length_grouped_prefill_gives_the_one_batch_tokens(lm, monkeypatch, shots):
    """Prompts of different lengths prefilled in separate groups (one a length, with the shared
    prefix run once) and laid out as one left-padded cache: greedy gives HF's tokens for the
    batch, sampling the same rows as one padded prefill."""
    model, tok = lm
    prompts = by_length(tok, [shots + f"English: {p}\nGalician:" for p in PROMPTS])
    lengths = [len(G._encode_prompt(tok, p)) for p in prompts]
    assert len(set(lengths)) >= 4
    sample = dict(do_sample=True, temperature=1.0, top_p=0.9, num_return_sequences=2, seed=3)
    monkeypatch.setattr(G, "PREFILL_CALL_TOKENS", 10**6)  # one group: the plain left-padded prefill
    one = G.generate_ids(model, tok, prompts, max_new_tokens=10, batch_size=8, **sample)
    monkeypatch.setattr(G, "PREFILL_CALL_TOKENS", 0)  # a group per length
    seen = []
    grouped = G._grouped_prefill
    monkeypatch.setattr(G, "_grouped_prefill", lambda *a, **k: seen.append(len(a[4])) or grouped(*a, **k))
    ours = G.generate_ids(model, tok, prompts, max_new_tokens=10, batch_size=8)
    assert seen == [len(set(lengths))]
    assert [r[0] for r in ours] == hf_greedy(model, tok, prompts, 10)
    assert G.generate_ids(model, tok, prompts, max_new_tokens=10, batch_size=8, **sample) == one


def test_rows_leave_the_batch_after_the_sliding_window_fills(lm):
    """Past tiny-random's 64-position sliding window the in-place KV cache keeps the last 63
    positions of the sliding layers by moving its view, and copies them to the buffer's start only
    when the buffer's end is reached (here more than once); rows that end later still leave the
    batch (with their cache): each row's tokens are HF's greedy tokens for that prompt alone."""
    model, tok = lm
    window = model.config.get_text_config().sliding_window
    assert window
    prompts = by_length(tok, PROMPTS)
    budgets = [3 * window + 30 - 9 * i for i in range(len(prompts))]  # past the window, each row ending at its own step
    got = G.generate_ids(model, tok, prompts, max_new_tokens=budgets, batch_size=8)
    assert max(len(G._encode_prompt(tok, p)) + len(r[0]) for p, r in zip(prompts, got)) > window
    assert [r[0] for r in got] == [hf_greedy(model, tok, [p], b)[0] for p, b in zip(prompts, budgets)]


# --------------------------------------------------------------------------- sampling in our loop
SAMPLE = dict(do_sample=True, temperature=0.9, top_p=0.9, seed=3)


def test_sampled_row_does_not_depend_on_its_batch_mates(lm):
    """Each row draws from its own generator (seeded by seed, prompt ids, copy): alone == batched."""
    model, tok = lm
    batched = G.generate_ids(model, tok, PROMPTS, max_new_tokens=10, batch_size=8, num_return_sequences=2, **SAMPLE)
    alone = [G.generate_ids(model, tok, [p], max_new_tokens=10, batch_size=1, num_return_sequences=2, **SAMPLE)[0]
             for p in PROMPTS]
    assert batched == alone
    assert any(a != b for a, b in batched)  # the two copies of a prompt draw differently
    other = G.generate_ids(model, tok, PROMPTS, max_new_tokens=10, batch_size=8, num_return_sequences=2,
                           **(SAMPLE | {"seed": 4}))
    assert other != batched


def test_sampler_keeps_the_nucleus_and_draws_its_distribution():
    torch.manual_seed(0)
    logits = torch.randn(1, 40) * 2
    sampler = G._Sampler([11], temperature=0.7, top_k=10, top_p=0.8)
    top = torch.softmax(logits / 0.7, -1)[0].topk(10)
    ids, probs = sampler.nucleus(logits.topk(10).values)  # what _Head.topk hands it
    ids = top.indices[ids]
    top_p = top.values / top.values.sum()
    n = int(((top_p.cumsum(0) - top_p) < 0.8).sum())  # HF's TopP after TopK, written out
    assert ids[0, :n].tolist() == top.indices[:n].tolist() and bool((probs[0, n:] == 0).all())
    assert torch.allclose(probs[0, :n], top_p[:n] / top_p[:n].sum(), atol=1e-6)
    draws = torch.cat([top.indices[sampler.draw(logits.topk(10).values, torch.tensor([0]))] for _ in range(3000)])
    freq = torch.bincount(draws, minlength=40).double() / len(draws)
    want = torch.zeros(40, dtype=torch.float64)
    want[top.indices[:n]] = (top_p[:n] / top_p[:n].sum()).double()
    assert set(draws.tolist()) <= set(top.indices[:n].tolist())
    assert (freq - want).abs().max() < 4 * math.sqrt(0.25 / len(draws))  # within ~4 standard errors


def test_sampling_falls_back_to_generate_with_a_logits_processor(lm):
    model, tok = lm
    model.generation_config.repetition_penalty = 1.3
    try:
        assert not G._plain_sampling(model)
        a = G.generate(model, tok, PROMPTS[:2], max_new_tokens=5, num_return_sequences=2, **SAMPLE)
        assert a == G.generate(model, tok, PROMPTS[:2], max_new_tokens=5, num_return_sequences=2, **SAMPLE)
    finally:
        model.generation_config.repetition_penalty = None


# --------------------------------------------------------------------------- the pre-scored head
class _HeadOnly(torch.nn.Module):
    """A model that is only an output layer (lm_parts is patched to (None, weight, None))."""

    def __init__(self, weight):
        super().__init__()
        self.lm_head = torch.nn.Linear(weight.shape[1], weight.shape[0], bias=False)
        self.lm_head.weight.data = weight

    def get_output_embeddings(self):
        return self.lm_head


@pytest.mark.parametrize("kind", ["fp16", "bf16"])
def test_prescored_head_gives_the_exact_top_k_within_its_bound(monkeypatch, kind):
    """Output layer of the real shape ratio, hidden states with outliers: the cheap pass's error
    stays within its bound, and topk / argmax equal those of the full logits."""
    monkeypatch.setenv("POLYALIGN_PRESCORE", kind)
    torch.manual_seed(0)
    weight = torch.randn(5000, 64) * 0.05
    hidden = torch.randn(24, 64) * 3
    hidden[:, 5] *= 20  # an outlier dimension, as gemma's final norm makes
    hidden[1] = hidden[0]  # identical rows, and a near-tie between two tokens:
    weight[7] = weight[3] + 1e-9
    model = _HeadOnly(weight)
    monkeypatch.setattr("pipeline.lm_parts.lm_parts", lambda m: (None, m.lm_head.weight, None))
    head = G._Head(model)
    assert list(head.pre) == [kind] and head.prescorer(len(hidden)).kind == kind
    full = hidden @ weight.t()
    approx, bound = head.pre[kind].approx(hidden)
    assert bool(((approx - full).abs() <= bound).all())
    assert head.argmax(hidden).tolist() == full.argmax(-1).tolist()
    vals, ids = head.topk(hidden, 20)
    assert ids.tolist() == full.topk(20).indices.tolist()
    assert torch.allclose(vals, full.topk(20).values, atol=1e-5)
    assert G._Head(model).pre[kind] is head.pre[kind]  # built once per weight


@pytest.mark.parametrize("kind", ["fp16", "bf16"])
def test_prescored_head_works_piece_by_piece_across_the_vocabulary(monkeypatch, kind):
    """Pieces smaller than the vocabulary (the last one smaller than k): the running top k across
    pieces still gives the exact top k and argmax of the full logits, the winners in any piece."""
    monkeypatch.setenv("POLYALIGN_PRESCORE", kind)
    monkeypatch.setattr(G, "PRESCORE_PIECE", 700)  # 5000 = 7 pieces of 700 + one of 100
    monkeypatch.setattr("pipeline.lm_parts.lm_parts", lambda m: (None, m.lm_head.weight, None))
    torch.manual_seed(2)
    weight = torch.randn(5000, 48) * 0.05
    hidden = torch.randn(9, 48) * 3
    weight[4950] = hidden[0] / hidden[0].norm()  # row 0's winner in the short last piece
    head = G._Head(_HeadOnly(weight))
    assert len(head.pre[kind].pieces) == 8
    full = hidden @ weight.t()
    assert head.argmax(hidden).tolist() == full.argmax(-1).tolist() and head.argmax(hidden)[0] == 4950
    for k in (5, 150, 300):  # k larger than the last piece
        vals, ids = head.topk(hidden, k)
        assert ids.tolist() == full.topk(k).indices.tolist()
        assert torch.allclose(vals, full.topk(k).values, atol=1e-5)


@pytest.mark.parametrize("kind", ["fp16", "bf16"])
def test_candidates_are_the_columns_some_row_keeps(monkeypatch, kind):
    """The sieve (a column's largest approximate logit against the lowest row floor, then the rows)
    keeps exactly the columns where some row's approximate logit is within twice the bound of that
    row's k-th largest, with rows of very different size (a small row's floor lets most columns
    through the first pass)."""
    monkeypatch.setattr(G, "PRESCORE_PIECE", 1000)
    torch.manual_seed(3)
    weight = torch.randn(4000, 40) * 0.05
    hidden = torch.randn(6, 40) * torch.tensor([[0.01], [1], [3], [3], [10], [0.1]])
    pre = G._Prescore(weight, kind)
    y, bound = pre.approx(hidden)
    for k in (1, 7):
        floor = y.topk(k, dim=1).values[:, -1:] - 2 * bound
        expected = (y >= floor).any(0).nonzero().squeeze(1)
        assert pre.candidates(hidden, k).tolist() == expected.tolist()


def test_head_takes_fp16_for_few_rows_and_bf16_for_many_where_both_run(monkeypatch):
    """On a CPU with bf16 units both first passes exist: fbgemm's fp16 below
    BF16_PRESCORE_MIN_ROWS rows, bf16 from there on, each giving the exact argmax."""
    monkeypatch.setattr(G, "prescore_kinds", lambda weight: ("fp16", "bf16"))
    monkeypatch.setattr("pipeline.lm_parts.lm_parts", lambda m: (None, m.lm_head.weight, None))
    torch.manual_seed(1)
    weight = torch.randn(3000, 32) * 0.05
    head = G._Head(_HeadOnly(weight))
    few, many = G.BF16_PRESCORE_MIN_ROWS - 1, G.BF16_PRESCORE_MIN_ROWS
    assert head.prescorer(few).kind == "fp16" and head.prescorer(many).kind == "bf16"
    for rows in (few, many):
        hidden = torch.randn(rows, 32) * 3
        assert head.argmax(hidden).tolist() == (hidden @ weight.t()).argmax(-1).tolist()


def test_greedy_with_the_bf16_prescore_equals_transformers_generate(lm, monkeypatch):
    """The path CPUs with bf16 units take (slow here, emulated): still HF's greedy tokens."""
    monkeypatch.setenv("POLYALIGN_PRESCORE", "bf16")
    model, tok = lm
    prompts = by_length(tok, PROMPTS)
    ours = G.generate_ids(model, tok, prompts, max_new_tokens=20, batch_size=8)
    assert [r[0] for r in ours] == hf_greedy(model, tok, prompts, 20)


def test_fp16_body_layers_give_the_fp32_logits_and_greedy_tokens(monkeypatch):
    """Weights that fp16 holds exactly (gemma's, stored in bf16): the fbgemm fp16 layers compute
    the same products, so logits agree to float rounding and greedy decoding is unchanged."""
    from pipeline.models import load_model

    monkeypatch.setenv("POLYALIGN_PRESCORE", "fp16")
    model, tok = load_model(TINY, dtype=torch.float32)
    with torch.no_grad():
        for p in model.parameters():
            p.copy_(p.bfloat16().float())
    head = G._Head(model)
    assert len(head.fp16_body.layers) >= 4 * model.config.num_hidden_layers  # q, k, v, o (and the MLP)
    ids = torch.tensor([G._encode_prompt(tok, PROMPTS[2])])
    with torch.no_grad():
        plain = model(ids).logits
        with head.fp16_body:
            assert "forward" in vars(head.fp16_body.layers[0])  # fbgemm's fp16 GEMM
            fast = model(ids).logits
    assert "forward" not in vars(head.fp16_body.layers[0])  # restored
    assert torch.allclose(plain, fast, atol=1e-4)
    prompts = by_length(tok, PROMPTS)
    ours = G.generate_ids(model, tok, prompts, max_new_tokens=12, batch_size=8)
    monkeypatch.setenv("POLYALIGN_PRESCORE", "off")
    assert ours == G.generate_ids(model, tok, prompts, max_new_tokens=12, batch_size=8)


# --------------------------------------------------------------------------- attention of a decoding step
class _Attention(torch.nn.Module):
    num_key_value_groups = 4


def test_grouped_step_attention_equals_transformers_sdpa_and_is_restored():
    """A one-position query over a key/value head shared by 4 query heads: one sdpa call with the
    query heads as the query axis gives transformers' sdpa (keys repeated per head) to float
    rounding, with padding masked; several positions go to transformers' function unchanged."""
    from transformers.integrations.sdpa_attention import sdpa_attention_forward
    from transformers.modeling_utils import ALL_ATTENTION_FUNCTIONS

    torch.manual_seed(4)
    k, v = torch.randn(3, 2, 9, 16), torch.randn(3, 2, 9, 16)
    mask = torch.ones(3, 1, 1, 11, dtype=torch.bool)  # longer than the keys: cut as transformers does
    mask[0, ..., :4] = False  # left padding of row 0
    module, q = _Attention(), torch.randn(3, 8, 1, 16)
    want, _ = sdpa_attention_forward(module, q, k, v, mask, scaling=0.25)
    got, _ = G._grouped_step(sdpa_attention_forward, module, q, k, v, mask, scaling=0.25)
    assert got.shape == want.shape == (3, 1, 8, 16)
    assert torch.allclose(got, want, atol=1e-6)
    moved = torch.randn(9, 16)
    k2 = k.clone()
    k2[0, :, :4] = moved[:4]  # masked positions do not matter
    assert torch.allclose(G._grouped_step(sdpa_attention_forward, module, q, k2, v, mask, scaling=0.25)[0], got)
    prefill = torch.randn(3, 8, 9, 16)
    full = torch.ones(3, 1, 9, 9, dtype=torch.bool).tril()
    assert torch.equal(G._grouped_step(sdpa_attention_forward, module, prefill, k, v, full, scaling=0.25)[0],
                       sdpa_attention_forward(module, prefill, k, v, full, scaling=0.25)[0])
    before = ALL_ATTENTION_FUNCTIONS["sdpa"]
    with pytest.raises(RuntimeError), G._GroupedStepAttention():
        assert ALL_ATTENTION_FUNCTIONS["sdpa"] is not before
        raise RuntimeError
    assert ALL_ATTENTION_FUNCTIONS["sdpa"] is before


# --------------------------------------------------------------------------- Gemma3Step (pipeline.decode_step)
def _hf_step(head, nxt, mask, cache, position):
    """One decoding step through transformers' forward, as _decode_loop runs it without Gemma3Step."""
    return head.body(input_ids=nxt[:, None], attention_mask=mask, position_ids=mask.sum(-1, keepdim=True) - 1,
                     past_key_values=cache, cache_position=position, use_cache=True).last_hidden_state[:, -1]


@pytest.mark.parametrize("weights", ["fp64", "fp32", "fp16-exact", "some-fp16-exact"])
def test_gemma3_step_is_transformers_forward_bit_for_bit(monkeypatch, weights):
    """Every step's hidden states and appended keys/values equal transformers' forward exactly (not
    to rounding): a left-padded row, past tiny-random's 64-position sliding window, with fbgemm's fused
    fp16 GEMMs (weights fp16 holds exactly, as gemma's bf16 weights), fbgemm's and MKL's side by side
    (only some layers exact), MKL's fp32 and fp64."""
    import copy

    from pipeline.decode_step import Gemma3Step
    from pipeline.models import load_model

    monkeypatch.setenv("POLYALIGN_PRESCORE", "fp16")
    model, tok = load_model(TINY, dtype=torch.float64 if weights == "fp64" else torch.float32)
    if weights.endswith("fp16-exact"):
        with torch.no_grad():
            for name, p in model.named_parameters():
                if weights == "fp16-exact" or not name.endswith(("q_proj.weight", "up_proj.weight")):
                    p.copy_(p.half().float())  # some-: as a merged LoRA adapter on q and up would leave them
    head = G._Head(model)
    assert bool(head.fp16_body.layers) == weights.endswith("fp16-exact")
    seqs = [G._encode_prompt(tok, p) for p in by_length(tok, PROMPTS[:3])]
    window = model.config.sliding_window
    with torch.inference_mode(), head.fp16_body, G._GroupedStepAttention():
        hidden, cache, mask, position = G._prefill(model, head.body, seqs, window + 20, 0, 1)
        assert Gemma3Step.fits(head.body, cache)
        lean = Gemma3Step.of(head.body, G._fp16_pack, "fp16" in head.pre)
        assert all(layer.qkv.packed is not None for layer in lean.layers) == (weights == "fp16-exact")
        assert all(layer.down.parts[0][0] is not None for layer in lean.layers) == weights.endswith("fp16-exact")
        ours = copy.deepcopy(cache)
        for _ in range(window + 20):
            nxt = head.logits(hidden).argmax(-1)
            mask = torch.cat([mask, mask.new_ones((mask.shape[0], 1))], dim=-1)
            position = position + 1
            hidden = _hf_step(head, nxt, mask, cache, position)
            assert torch.equal(lean(nxt, mask, ours), hidden)
        assert mask.shape[1] > window + 20 and not bool(mask.all())
        for a, b in zip(cache.layers, ours.layers):
            assert torch.equal(a.keys, b.keys) and torch.equal(a.values, b.values)


def test_gemma3_step_masks_are_transformers_masks(lm):
    """The step's full and sliding-window masks are the ones transformers builds for sdpa (None where it
    skips an all-true mask), before and after the window fills, with and without padding."""
    from transformers.masking_utils import create_causal_mask, create_sliding_window_causal_mask

    from pipeline.decode_step import Gemma3Step

    model, _ = lm
    body, config = G.lm_parts(model)[0], model.config
    window = config.sliding_window
    for length in (5, window - 1, window, window + 7):
        for padded in (False, True):
            cache = G._new_cache(model)
            for layer in cache.layers:
                layer.update(*(torch.zeros(2, config.num_key_value_heads, length - 1, config.head_dim,
                                           dtype=torch.float64),) * 2)
            mask = torch.ones(2, length, dtype=torch.long)
            mask[1, :2] = 0 if padded else 1
            kwargs = dict(config=config, input_embeds=torch.zeros(2, 1, config.hidden_size, dtype=torch.float64),
                          attention_mask=mask, cache_position=torch.tensor([length - 1]), past_key_values=cache,
                          position_ids=mask.sum(-1, keepdim=True) - 1)
            want = create_causal_mask(**kwargs), create_sliding_window_causal_mask(**kwargs)
            got = Gemma3Step(body, lambda m: None).masks(mask)
            for w, g in zip(want, got):
                assert (w is None and g is None) or torch.equal(w, g), (length, padded)


def test_gemma3_step_is_used_only_where_it_reproduces_the_forward(lm, monkeypatch):
    """_decode_loop steps with Gemma3Step on a plain Gemma-3 body (same tokens as without it) and keeps
    transformers' forward for a body with a hook, in training mode, or with eager attention."""
    from pipeline.decode_step import Gemma3Step

    model, tok = lm
    body = G.lm_parts(model)[0]
    cache = G._new_cache(model)
    assert Gemma3Step.fits(body, cache)
    calls, original = [], Gemma3Step.__call__
    monkeypatch.setattr(Gemma3Step, "__call__", lambda self, *a: calls.append(1) or original(self, *a))
    prompts = by_length(tok, PROMPTS)
    lean = G.generate_ids(model, tok, prompts, max_new_tokens=8, batch_size=8)
    assert calls
    monkeypatch.setattr(G, "LEAN_STEP", False)
    assert lean == G.generate_ids(model, tok, prompts, max_new_tokens=8, batch_size=8)
    handle = body.layers[0].mlp.register_forward_hook(lambda *a: None)
    assert not Gemma3Step.fits(body, cache)
    handle.remove()
    assert Gemma3Step.fits(body, cache)
    body.train()
    assert not Gemma3Step.fits(body, cache)
    body.eval()
    monkeypatch.setattr(body.config, "_attn_implementation", "eager")
    assert not Gemma3Step.fits(body, cache)
    assert not Gemma3Step.fits(body, type("Cache", (), {"layers": [object()]})())
