"""pipeline.generate scoring: length-bucketed batches and shared-context groups give the
per-item numbers (one plain forward pass per item) in item order."""

from __future__ import annotations

import pytest
import torch

from pipeline import generate as G
from pipeline.batching import start_ids
from pipeline.lm_parts import lm_parts

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def lm():
    from pipeline.models import load_model

    return load_model("tiny-random", dtype=torch.float64)


def plain_sum(model, ctx: list[int], tgt: list[int]) -> float:
    """log p(tgt | ctx) summed, from one unbatched forward pass over ctx + tgt."""
    with torch.no_grad():
        logits = model(torch.tensor([ctx + tgt])).logits[0].double()
    lp = torch.log_softmax(logits[len(ctx) - 1:-1], -1)
    return float(lp.gather(1, torch.tensor(tgt)[:, None]).sum())


def items_with_shared_contexts(tok):
    enc = lambda s: tok(s, add_special_tokens=False)["input_ids"]  # noqa: E731
    questions = ["Q: Is family important in your life?\nA:", "Q: How often do you pray?\nA:",
                 "Q: Would you trust a stranger?\nA: I would say"]
    options = [" 1", " 2", " very much", " not at all, never"]
    items = [(start_ids(tok) + enc(q), enc(o)) for q in questions for o in options]
    items += [(start_ids(tok) + enc("Hello there"), enc(" my friend")), (start_ids(tok), enc("Muli bwanji?"))]
    return items[::-1]  # interleaved lengths: the order must be restored


def test_shared_context_groups_equal_plain_sums_in_item_order(lm):
    model, tok = lm
    items = items_with_shared_contexts(tok)
    body, _, _ = lm_parts(model)
    groups, rest = G._context_groups(body, [(k, c, t) for k, (c, t) in enumerate(items)], 2048)
    assert len(groups) == 3 and len(rest) == 2  # the three questions run once each
    for batch_size in (3, 8, 64):  # groups split over batches, several groups of different lengths in one
        got = G.sum_logprobs(model, items, batch_size=batch_size)
        want = [plain_sum(model, c, t) for c, t in items]
        assert got == pytest.approx(want, abs=1e-8)


def test_grouped_scoring_matches_ungrouped_in_float32(lm):
    """Float32 (what stages run): grouped vs ungrouped rows agree to float rounding."""
    from pipeline.models import load_model

    model, tok = load_model("tiny-random", dtype=torch.float32)
    items = items_with_shared_contexts(tok)
    body, weight, softcap = lm_parts(model)
    pieces = [(k, c, t) for k, (c, t) in enumerate(items)]
    with torch.inference_mode():
        plain = G._score_rows(body, weight, softcap, pieces)
    assert G.sum_logprobs(model, items, batch_size=8) == pytest.approx(plain, abs=2e-4)


def test_contexts_that_could_outgrow_the_sliding_window_are_not_grouped(lm):
    model, _ = lm
    body, _, _ = lm_parts(model)
    window = body.config.sliding_window
    long_ctx = list(range(5, 5 + window))
    groups, rest = G._context_groups(body, [(0, long_ctx, [7]), (1, long_ctx, [8])], 4096)
    assert groups == [] and len(rest) == 2
