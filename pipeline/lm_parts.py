"""The parts of any transformers causal LM the training loss and the scorers need (decoder body,
output layer, final soft-cap), found generically for every family, and the losses built on them:
`CausalLMLoss` (labels only, optional trimmed output vocabulary) and `RewardLoss` (Bradley–Terry)."""

from __future__ import annotations

import torch

from pipeline.errors import PolyalignError
from pipeline.losses import IGNORE, bradley_terry_loss, linear_cross_entropy

# Config fields that rescale logits after the output layer in some families (Cohere, Granite):
# lm_parts has no place for them, so such models are refused rather than scored wrongly.
_LOGIT_SCALES = ("logit_scale", "logits_scaling")


def base_lm(model):
    """The transformers causal LM inside a peft wrapper (or the model itself)."""
    from peft import PeftModel

    return model.get_base_model() if isinstance(model, PeftModel) else model


def decoder_body(lm):
    """The module whose output is `last_hidden_state` (the input of the output layer).

    `get_decoder()` finds it for Llama-style models (Gemma-3 names its prefix
    "language_model" but stores it as `model`); for GPT-2, BLOOM and GPT-NeoX it returns
    the whole LM, and `base_model` (transformer / gpt_neox) is the body. Last resort:
    the LM's only child that is itself a transformers model.
    """
    from transformers import PreTrainedModel

    for body in (lm.get_decoder(), lm.base_model):
        if body is not lm:
            return body
    children = [m for m in lm.children() if isinstance(m, PreTrainedModel)]
    if len(children) != 1:
        raise PolyalignError("(model)", type(lm).__name__, "cannot find the decoder body",
                             "use a causal LM whose base model transformers exposes as base_model")
    return children[0]


def lm_parts(model):
    """(decoder body, output embedding weight, softcap) of a causal LM, peft-wrapped or not."""
    lm = base_lm(model)
    head = lm.get_output_embeddings()
    if getattr(head, "bias", None) is not None:
        raise PolyalignError("(model)", "lm_head", "output layer with a bias is not supported", "use a bias-free LM")
    config = lm.config.get_text_config()
    scaled = [k for k in _LOGIT_SCALES if getattr(config, k, None) not in (None, 1, 1.0)]
    if scaled:
        raise PolyalignError("(model)", f"config.{scaled[0]}", "logits rescaled after the output layer are not "
                             "supported", "use a model family without output-logit scaling")
    return decoder_body(lm), head.weight, getattr(config, "final_logit_softcapping", None)


def body_hidden(body, input_ids, position_ids=None) -> torch.Tensor:
    """Last hidden states (B, T, d) of the decoder body; position ids only where given
    (BLOOM has none: ALiBi positions come from the attention mask)."""
    extra = {} if position_ids is None else {"position_ids": position_ids}
    return body(input_ids=input_ids, use_cache=False, **extra).last_hidden_state


@torch.no_grad()
def check_lm_parts(model, n_tokens: int = 6) -> None:
    """Fail loudly unless lm_parts reproduces the model's own logits on a few tokens.

    One short forward (milliseconds even for a 2B model): any family whose logits are
    not head(body(x)) (an extra scale, a bias, a different final norm) is refused here,
    at load time, instead of silently training or scoring on wrong log-probabilities.
    """
    body, weight, softcap = lm_parts(model)
    device = weight.device
    ids = torch.arange(n_tokens, device=device)[None] % weight.shape[0] + min(3, weight.shape[0] - n_tokens)
    expected = model(input_ids=ids, use_cache=False).logits.float()  # (1, T, V)
    got = (body_hidden(body, ids).to(weight.dtype) @ weight.t()).float()
    if softcap:
        got = torch.tanh(got / softcap) * softcap
    tol = (1e-3 if weight.dtype == torch.float32 else 3e-2) * (1 + expected.abs().max())
    if not torch.allclose(got, expected, atol=float(tol), rtol=0):
        raise PolyalignError("(model)", type(base_lm(model)).__name__, "logits of decoder body + output layer differ "
                             "from the model's own", "this architecture is not supported by the chunked loss/scorer")


@torch.no_grad()
def packing_honoured(model) -> bool:
    """True when the model attends within each packed example given restarting position ids
    (transformers' mask utilities detect the restarts); BLOOM and XGLM do not, so their
    packed rows would let each example attend to the ones before it. Measured, not listed:
    two random examples packed vs. alone."""
    body, weight, _ = lm_parts(model)
    gen = torch.Generator().manual_seed(0)
    a, b = (torch.randint(3, weight.shape[0], (1, n), generator=gen).to(weight.device) for n in (5, 4))
    pos = torch.cat([torch.arange(5), torch.arange(4)])[None].to(weight.device)
    was_training = body.training
    body.eval()
    try:
        packed = body_hidden(body, torch.cat([a, b], 1), pos)[:, 5:].float()
        alone = body_hidden(body, b).float()
    finally:
        body.train(was_training)
    tol = (1e-3 if weight.dtype == torch.float32 else 5e-2) * (1 + float(alone.abs().max()))
    return torch.allclose(packed, alone, atol=tol, rtol=0)


class CausalLMLoss(torch.nn.Module):
    """Wraps a causal LM so DDP/FSDP see one forward: mean NLL over label tokens.

    The decoder runs on every position; the output layer only on positions whose next
    token carries a label, and, after `set_support(ids)`, only over those rows of the
    output embedding (every target must then lie in the support).
    """

    def __init__(self, model, chunk: int):
        super().__init__()
        self.model, self.chunk = model, chunk
        # plain attributes, not buffers: DDP must not broadcast them, checkpoints keep them apart
        self.support = self.remap = self._frozen_rows = self.prob_sum = None
        self.prob_rows = 0

    def set_support(self, support: torch.Tensor) -> None:
        """Restrict the softmax to the sorted token ids `support` (S,)."""
        device = lm_parts(self.model)[1].device
        self.support = support.to(device)
        self.remap = torch.full((int(support.max()) + 1,), -1, dtype=torch.long, device=device)
        self.remap[self.support] = torch.arange(len(support), device=device)
        self._frozen_rows = None

    def output_rows(self, weight: torch.Tensor) -> torch.Tensor:
        """The output embedding restricted to the support (cached while it is frozen)."""
        if self.support is None:
            return weight
        if weight.requires_grad:
            return weight.index_select(0, self.support)
        if self._frozen_rows is None:
            self._frozen_rows = weight.index_select(0, self.support)
        return self._frozen_rows

    def forward(self, input_ids, labels, position_ids=None):
        body, weight, softcap = lm_parts(self.model)
        hidden = body_hidden(body, input_ids, position_ids)  # (B, T, d)
        target = labels[:, 1:]
        keep = target != IGNORE
        target = target[keep] if self.remap is None else self.remap[target[keep]]
        probing = self.prob_sum is not None and self.support is None
        nll = linear_cross_entropy(hidden[:, :-1][keep], self.output_rows(weight), target, chunk=self.chunk,
                                   softcap=softcap, prob_sum=self.prob_sum if probing else None)
        n = keep.sum()
        if probing:
            self.prob_rows += int(n)
        return nll / n.clamp(min=1), n

    def start_probe(self) -> None:
        """Sum the full-vocabulary softmax over label positions until `set_support` is called."""
        weight = lm_parts(self.model)[1]
        self.prob_sum = torch.zeros(weight.shape[0], dtype=torch.float32, device=weight.device)
        self.prob_rows = 0


def label_support(units: list[tuple[list[int], list[int]]]) -> torch.Tensor:
    """Sorted ids of every token that occurs as a label: (S,) long."""
    return torch.tensor(sorted({t for _, labels in units for t in labels if t != IGNORE}), dtype=torch.long)


def mass_support(mean_probs: torch.Tensor, labels: torch.Tensor, mass: float, max_size: int) -> tuple[torch.Tensor, float]:
    """Label tokens plus the most probable other tokens until they hold `mass` of the probability.

    mean_probs: (V,) mean next-token distribution; labels: (L,) token ids that must be in.
    Adds tokens by decreasing probability until the covered mass reaches `mass` or the
    support has `max_size` ids (never fewer than the labels). Returns (sorted ids (S,),
    covered probability mass).
    """
    probs = mean_probs.float().cpu()
    inside = torch.zeros(len(probs), dtype=torch.bool)
    inside[labels] = True
    covered = float(probs[inside].sum())
    others = torch.argsort(probs.masked_fill(inside, -1.0), descending=True)[:max(0, max_size - len(labels))]
    cumulative = covered + torch.cumsum(probs[others], 0)
    k = int((cumulative < mass).sum()) + 1 if covered < mass else 0
    k = min(k, len(others))
    if k:
        covered = float(cumulative[k - 1])
    return torch.sort(torch.cat([labels, others[:k]]))[0], covered


class RewardLoss(torch.nn.Module):
    """Bradley–Terry loss of a sequence-classification model on (chosen, rejected) batches."""

    def __init__(self, model):
        super().__init__()
        self.model = model

    def forward(self, input_ids, attention_mask, n_pairs: int):
        rewards = self.model(input_ids=input_ids, attention_mask=attention_mask).logits[:, 0]
        chosen, rejected = rewards[:n_pairs], rewards[n_pairs:]
        return bradley_terry_loss(chosen, rejected), (chosen > rejected).float().mean()
