"""One decoding step of a Gemma-3 text decoder without transformers' forward machinery.

A decoding step does ~0.2 GFLOP of weight GEMMs per row and little else, yet around them
transformers' `Gemma3TextModel.forward` rebuilds the boolean masks through `vmap` at every step
and goes through 18 layers of module calls (decorators, keyword plumbing, the cache's dispatch):
on the bench batch (gemma-3-270m, 32 rows, AVX512-BF16 EPYC, torch.profiler) 1.25 s of 5.7 s was
neither a GEMM nor attention, 1.05 s with this step. `Gemma3Step` runs the same operations in the
same order on the same tensors, with the masks built directly from the padding mask, the q/k/v
projections and the MLP's gate/up projections as one GEMM each where fbgemm's fp16-weight kernel
runs all of them (the fused GEMM reduces over the same inputs in the same order), and the
query/key norms and rotary embedding applied to queries and keys together. Hidden states and
keys/values are bit-equal to transformers' forward (tests), so every decoded token is the same.

It takes only what it reproduces: `Gemma3TextModel` in eval mode with sdpa attention, no attention
softcapping, no bidirectional attention, bias-free plain `nn.Linear` projections (merged LoRA is
fine), no hooks, on CPU, with polyalign's in-place cache layers; `Gemma3Step.fits` says whether
it applies and everything else keeps transformers' forward.
"""

from __future__ import annotations

import torch


def _rms(x: torch.Tensor, scale: torch.Tensor, eps: float) -> torch.Tensor:
    """Gemma3RMSNorm with its (1 + weight) precomputed as `scale` (fp32): the same operations, in fp32
    whatever x's dtype, as Gemma3RMSNorm computes them."""
    y = x.float()
    return (y * torch.rsqrt(y.pow(2).mean(-1, keepdim=True) + eps) * scale).type_as(x)


def _rotate(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """transformers' apply_rotary_pos_emb on one tensor (rotate_half: (-x2, x1))."""
    half = x.shape[-1] // 2
    return x * cos + torch.cat((-x[..., half:], x[..., :half]), dim=-1) * sin


def _fp16_linear(x: torch.Tensor, packed, width: int) -> torch.Tensor:
    return torch.ops.quantized.linear_dynamic_fp16(x.reshape(-1, x.shape[-1]), packed).reshape(*x.shape[:-1], width)


class _Proj:
    """Linear projections applied to one input, their outputs side by side: one fbgemm fp16 GEMM on
    the concatenated weights where every part has an exact fp16 copy, else each part as the decoding
    loop runs it (its fbgemm copy where it has one, as _Fp16Linears; its fp32 weight otherwise: a
    merged LoRA adapter's layers)."""

    def __init__(self, linears: list[torch.nn.Linear], fp16_pack):
        self.parts = [(fp16_pack(m), m) for m in linears]
        self.packed = None
        if len(linears) > 1 and all(p is not None for p, _ in self.parts):
            self.packed = torch.ops.quantized.linear_prepack_fp16(torch.cat([m.weight.detach() for m in linears]), None)
        self.width = sum(m.out_features for m in linears)

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        if self.packed is not None:
            return _fp16_linear(x, self.packed, self.width)
        outs = [torch.nn.functional.linear(x, m.weight) if p is None else _fp16_linear(x, p, m.out_features)
                for p, m in self.parts]
        return outs[0] if len(outs) == 1 else torch.cat(outs, dim=-1)


class _Layer:
    """A Gemma3DecoderLayer's weights as the step reads them."""

    def __init__(self, layer, fp16_pack):
        attn, mlp = layer.self_attn, layer.mlp
        self.qkv = _Proj([attn.q_proj, attn.k_proj, attn.v_proj], fp16_pack)
        self.o = _Proj([attn.o_proj], fp16_pack)
        self.gate_up = _Proj([mlp.gate_proj, mlp.up_proj], fp16_pack)
        self.down = _Proj([mlp.down_proj], fp16_pack)
        self.act = mlp.act_fn
        self.sliding = attn.is_sliding
        self.heads, self.kv_heads, self.head_dim = (attn.q_proj.out_features // attn.head_dim,
                                                    attn.k_proj.out_features // attn.head_dim, attn.head_dim)
        self.inter = mlp.gate_proj.out_features
        self.scaling = attn.scaling
        self.eps = layer.input_layernorm.eps
        norms = (layer.input_layernorm, layer.post_attention_layernorm, layer.pre_feedforward_layernorm,
                 layer.post_feedforward_layernorm)
        self.norms = [1.0 + n.weight.detach().float() for n in norms]
        # query heads then key heads, each normed with its own weight (q_norm / k_norm)
        self.qk_norm = torch.cat([(1.0 + attn.q_norm.weight.detach().float()).expand(self.heads, 1, -1),
                                  (1.0 + attn.k_norm.weight.detach().float()).expand(self.kv_heads, 1, -1)])

    def __call__(self, x, cos, sin, mask, cache_layer) -> torch.Tensor:
        """x (R, 1, d) -> (R, 1, d); appends this position's keys and values to `cache_layer`."""
        rows, h, kv, hd = x.shape[0], self.heads, self.kv_heads, self.head_dim
        y = _rms(x, self.norms[0], self.eps)
        qkv = self.qkv(y)
        qk = qkv[..., :(h + kv) * hd].view(rows, 1, h + kv, hd).transpose(1, 2)
        qk = _rotate(_rms(qk, self.qk_norm, self.eps), cos, sin)
        v = qkv[..., (h + kv) * hd:].view(rows, 1, kv, hd).transpose(1, 2)
        keys, values = cache_layer.update(qk[:, h:], v)
        out = torch.nn.functional.scaled_dot_product_attention(qk[:, :h].reshape(rows, kv, h // kv, hd), keys, values,
                                                               attn_mask=mask, scale=self.scaling)
        y = self.o(out.reshape(rows, 1, h * hd).contiguous())
        x = x + _rms(y, self.norms[1], self.eps)
        gu = self.gate_up(_rms(x, self.norms[2], self.eps))
        y = self.down(self.act(gu[..., :self.inter]) * gu[..., self.inter:])
        return x + _rms(y, self.norms[3], self.eps)


class Gemma3Step:
    """`step(ids (R,), mask (R, S), cache) -> last hidden state (R, d)`: what
    `body(input_ids=ids[:, None], attention_mask=mask, position_ids=mask.sum(-1, keepdim=True) - 1,
    past_key_values=cache, cache_position=[S - 1], use_cache=True).last_hidden_state[:, -1]` returns,
    for a body `fits` accepts (module docstring)."""

    def __init__(self, body, fp16_pack):
        self.body = body
        self.layers = [_Layer(layer, fp16_pack) for layer in body.layers[:body.config.num_hidden_layers]]
        self.window = body.config.sliding_window

    @classmethod
    def of(cls, body, fp16_pack, fp16: bool) -> Gemma3Step:
        """The step of `body`, built once (fused fbgemm copies: ~130 MB for gemma-3-270m) and kept on
        it while its weights are the same tensors, unchanged; `fp16` False: no fbgemm copies."""
        key = (fp16,) + tuple((m.weight.data_ptr(), m.weight._version) for m in body.modules()
                              if type(m) is torch.nn.Linear)
        cached = getattr(body, "_polyalign_step", None)
        if cached is None or cached[0] != key:
            cached = (key, cls(body, fp16_pack if fp16 else lambda m: None))
            body._polyalign_step = cached
        return cached[1]

    @staticmethod
    def fits(body, cache) -> bool:
        from transformers.models.gemma3.modeling_gemma3 import Gemma3TextModel

        from pipeline.generate import _InPlace

        if type(body) is not Gemma3TextModel or body.training:
            return False
        config = body.config
        if (config._attn_implementation != "sdpa" or config.attn_logit_softcapping is not None
                or getattr(config, "use_bidirectional_attention", False)
                or next(body.parameters()).device.type != "cpu"
                or not cache.layers or not all(isinstance(x, _InPlace) for x in cache.layers)):
            return False
        if any(m._forward_hooks or m._forward_pre_hooks or hasattr(m, "_hf_hook") for m in body.modules()):
            return False
        projections = [getattr(part, name) for layer in body.layers
                       for part, names in ((layer.self_attn, ("q_proj", "k_proj", "v_proj", "o_proj")),
                                           (layer.mlp, ("gate_proj", "up_proj", "down_proj"))) for name in names]
        return all(type(m) is torch.nn.Linear and m.bias is None for m in projections)

    def masks(self, mask: torch.Tensor) -> tuple[torch.Tensor | None, torch.Tensor | None]:
        """(full-attention, sliding-window) boolean masks (R, 1, 1, keys) of a one-position step over the
        padding mask (R, S), as transformers builds them for sdpa (None where it skips an all-true one)."""
        keys = min(mask.shape[1], self.window)
        full = None if bool(mask.all()) else mask.bool()[:, None, None, :]
        window = mask[:, -keys:]
        sliding = None if keys < self.window and bool(window.all()) else window.bool()[:, None, None, :]
        return full, sliding

    @torch.inference_mode()
    def __call__(self, ids: torch.Tensor, mask: torch.Tensor, cache) -> torch.Tensor:
        body = self.body
        positions = mask.sum(-1, keepdim=True) - 1
        x = body.embed_tokens(ids[:, None])
        cos_g, sin_g = (t.unsqueeze(1) for t in body.rotary_emb(x, positions))
        cos_l, sin_l = (t.unsqueeze(1) for t in body.rotary_emb_local(x, positions))
        full, sliding = self.masks(mask)
        for layer, cache_layer in zip(self.layers, cache.layers):
            if layer.sliding:
                x = layer(x, cos_l, sin_l, sliding, cache_layer)
            else:
                x = layer(x, cos_g, sin_g, full, cache_layer)
        return body.norm(x)[:, -1]
