"""Loss and schedule math of the training loop: pure tensor functions, shapes in the docstrings.

`linear_cross_entropy` computes the output layer and the cross-entropy in chunks, forming the
gradient with respect to the hidden states inside the forward pass, so the [tokens, vocab]
logits never exist in full (bench/README.md: why this matters for a 262k vocabulary).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

IGNORE = -100


class _LinearCrossEntropy(torch.autograd.Function):
    """Sum of token NLLs of `hidden @ weight.T` without materialising all logits.

    Works chunk by chunk; the gradients w.r.t. hidden (and weight, when it trains) are
    formed during the forward pass, so each chunk's logits are freed at once.
    """

    @staticmethod
    def forward(ctx, hidden, weight, targets, chunk, softcap, prob_sum):
        need_h, need_w = hidden.requires_grad, weight.requires_grad
        grad_h = torch.empty_like(hidden) if need_h else None
        grad_w = torch.zeros_like(weight, dtype=torch.promote_types(weight.dtype, torch.float32)) if need_w else None
        total = hidden.new_zeros((), dtype=torch.promote_types(weight.dtype, torch.float32))
        for start in range(0, hidden.shape[0], chunk):
            h = hidden[start:start + chunk]
            t = targets[start:start + chunk]
            logits = h.to(weight.dtype) @ weight.t()
            logits = logits.to(torch.promote_types(logits.dtype, torch.float32))  # (c, V), bf16 -> fp32
            if softcap:
                tanh = torch.tanh(logits / softcap)
                logits = tanh * softcap
            # logsumexp by hand, in place: the (c, V) buffer is the biggest tensor of the step and
            # torch.logsumexp allocates two more of it (measured ~7% of a Gemma step on CPU)
            picked = logits.gather(1, t[:, None]).squeeze(1)
            peak = logits.amax(dim=-1, keepdim=True)
            exps = logits.sub_(peak).exp_()  # (c, V)
            norm = exps.sum(dim=-1)  # (c,)
            total += (norm.log() + peak.squeeze(1) - picked).sum()
            if need_h or need_w or prob_sum is not None:
                probs = exps.div_(norm[:, None])  # softmax, in place: (c, V)
                if prob_sum is not None:
                    prob_sum += probs.sum(dim=0)
                probs[torch.arange(len(t), device=t.device), t] -= 1.0
                if softcap:
                    probs *= 1.0 - tanh * tanh
                probs = probs.to(weight.dtype)
                if need_h:
                    grad_h[start:start + chunk] = (probs @ weight).to(hidden.dtype)
                if need_w:
                    grad_w += (probs.t() @ h.to(weight.dtype)).to(grad_w.dtype)
        ctx.save_for_backward(grad_h if need_h else None, grad_w if need_w else None)
        ctx.weight_dtype = weight.dtype
        return total

    @staticmethod
    def backward(ctx, grad_out):
        grad_h, grad_w = ctx.saved_tensors
        return (grad_h * grad_out if grad_h is not None else None,
                (grad_w * grad_out).to(ctx.weight_dtype) if grad_w is not None else None,
                None, None, None, None)


def linear_cross_entropy(hidden: torch.Tensor, weight: torch.Tensor, targets: torch.Tensor, *,
                         chunk: int = 256, softcap: float | None = None,
                         prob_sum: torch.Tensor | None = None) -> torch.Tensor:
    """Summed cross-entropy of the logits `hidden @ weight.T` against `targets`.

    hidden: (N, d) final hidden states at the positions that predict a label;
    weight: (V, d) output embedding; targets: (N,) token ids in [0, V).
    Returns a 0-dim float32 tensor: sum over N of -log softmax(logits)[target]. `softcap`
    applies Gemma-2-style cap·tanh(logits/cap) first. Equal to
    F.cross_entropy(hidden @ weight.T, targets, reduction="sum") up to rounding.
    `prob_sum` (V,), if given, is incremented in place by the softmax summed over the N rows.
    """
    if hidden.shape[0] == 0:
        return hidden.sum() * 0.0 + weight.sum() * 0.0
    return _LinearCrossEntropy.apply(hidden, weight, targets, chunk, softcap, prob_sum)


def bradley_terry_loss(r_chosen: torch.Tensor, r_rejected: torch.Tensor) -> torch.Tensor:
    """Mean of -log σ(r_chosen - r_rejected) (Bradley–Terry / InstructGPT reward loss).

    r_chosen, r_rejected: (B,) scalar rewards of the preferred and the other response.
    Returns a 0-dim tensor. logsigmoid keeps large margins finite.
    """
    return -F.logsigmoid(r_chosen.float() - r_rejected.float()).mean()


def lr_at(step: int, total: int, lr: float, warmup: int = 0) -> float:
    """Linear warmup over `warmup` steps then linear decay to 0 at `total` (the Trainer's default shape).

    `step` counts optimizer steps already taken (0 for the first update).
    """
    if warmup and step < warmup:
        return lr * (step + 1) / warmup
    return lr * max(0.0, (total - step) / max(1, total - warmup))
