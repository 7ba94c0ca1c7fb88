"""Differentiable forward passes over consecutive column spans of one batch, each attending to
the spans before it through a KV cache: what COCONUT's training step runs n+1 times for n
thoughts (one column a thought, the question before them and the answer after).

For Llama-family models (`LlamaPasses.supports`) the passes call the layers' weights directly:
q/k/v as one matmul and gate/up as another, `F.rms_norm`, a rotary table looked up once a step,
the key mask built from one boolean row a pass, and a cache of plain tensors that autograd sees
through. The model's own `forward` does the same arithmetic, but on a small model its per-call
work (mask and cache objects, six-op norms, five separate projections a layer, output records)
costs more than the arithmetic, and autograd records all of it, once a pass. Any other model,
a peft wrapper, one with hooks on a module's forward or with gradient checkpointing on, runs
through `forward` (`ContinuousThoughts`).

On a CPU in float32 the wide passes' matmuls (the question, the answer) run on oneDNN, faster
there than MKL (learners/onednn.py); a thought's one column a row stays on `F.linear`, where
oneDNN's call costs more.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from shrinkthink.decoders import LlamaDecoder, signed_sine
from shrinkthink.learners.onednn import linear

WIDE = 128  # rows from which a CPU float32 matmul goes to oneDNN
OUTPUT_CAPTURING = "transformers.utils.output_capturing"  # the module of transformers' own hooks


class LlamaPasses:
    """The passes of one batch: `LlamaPasses(model, attention, positions)`, then `run(embeds,
    start)` for the columns [start, start + width) in order. `attention` [B, T] (1 where a token
    is) and `positions` [B, T] cover the whole batch."""

    @staticmethod
    def supports(model) -> bool:
        if hasattr(model, "get_base_model") or not LlamaDecoder.supports(model):
            return False
        if any(_watched(m) for m in model.modules()):
            return False  # someone watches a module's forward: let them see every pass
        checkpointing = getattr(model, "is_activation_checkpointing", None)  # transformers >= 5.24
        if checkpointing is None:
            checkpointing = getattr(model, "is_gradient_checkpointing", False)
        if checkpointing:
            return False  # the passes keep every activation
        if model.training and getattr(model.config, "attention_dropout", 0.0):
            return False
        layers = model.model.layers
        plain = [model.lm_head] + [linear for layer in layers for linear in (
            layer.self_attn.q_proj, layer.self_attn.k_proj, layer.self_attn.v_proj, layer.self_attn.o_proj,
            layer.mlp.gate_proj, layer.mlp.up_proj, layer.mlp.down_proj)]
        # q/k norms (Qwen3, Gemma) are layers the passes would skip
        return (all(type(linear) is nn.Linear for linear in plain)
                and not any(hasattr(layer.self_attn, "q_norm") for layer in layers))

    def __init__(self, model, attention: torch.Tensor, positions: torch.Tensor) -> None:
        core = model.model
        self.model, self.core = model, core
        config = model.config
        attn = core.layers[0].self_attn
        self.heads, self.kv_heads, self.head_dim = config.num_attention_heads, config.num_key_value_heads, attn.head_dim
        self.scaling = attn.scaling
        self.act = core.layers[0].mlp.act_fn
        # one matmul for q, k, v and one for gate, up: concatenated once a batch, so gradients
        # flow back into the model's own weights
        self.qkv, self.gate_up = [], []
        for layer in core.layers:
            a, m = layer.self_attn, layer.mlp
            self.qkv.append(_fused(a.q_proj, a.k_proj, a.v_proj))
            self.gate_up.append(_fused(m.gate_proj, m.up_proj))
        with torch.no_grad():
            cos, sin = core.rotary_emb(model.get_input_embeddings().weight[:1], positions)  # [B, T, D]
        self.cos, self.signed = cos[:, :, None], signed_sine(sin)[:, :, None]
        self.keep = attention.bool()  # [B, T]
        self.keys: list[torch.Tensor | None] = [None] * len(core.layers)
        self.values: list[torch.Tensor | None] = [None] * len(core.layers)

    def run(self, embeds: torch.Tensor, start: int) -> tuple[torch.Tensor, torch.Tensor]:
        """Logits [B, width, V] of the columns [start, start + width) from their input embeddings
        [B, width, H], and the last column's final-norm hidden state [B, H]."""
        batch, width, size = embeds.shape
        end = start + width
        cos, signed = self.cos[:, start:end], self.signed[:, start:end]
        # a query sees the tokens up to itself; a padding query, which would see none, sees itself
        # (softmax stays finite, and it is never a target)
        columns = torch.arange(end, device=embeds.device)
        rows = torch.arange(start, end, device=embeds.device)
        allowed = (self.keep[:, None, :end] & (columns[None, :] <= rows[:, None])) | (columns[None, :] == rows[:, None])
        allowed = allowed[:, None]  # [B, 1, width, end]
        heads, kv_heads, dim, half = self.heads, self.kv_heads, self.head_dim, self.head_dim // 2
        hidden = embeds
        for index, layer in enumerate(self.core.layers):
            attention, mlp = layer.self_attn, layer.mlp
            x = F.rms_norm(hidden, (size,), layer.input_layernorm.weight, layer.input_layernorm.variance_epsilon)
            qkv = _wide(x, *self.qkv[index]).view(batch, width, heads + 2 * kv_heads, dim)
            qk = qkv[:, :, : heads + kv_heads]
            qk = qk * cos + qk.roll(half, dims=-1) * signed
            q = qk[:, :, :heads].transpose(1, 2)
            k = qk[:, :, heads:].transpose(1, 2)
            v = qkv[:, :, heads + kv_heads:].transpose(1, 2)
            if self.keys[index] is not None:
                k = torch.cat([self.keys[index], k], dim=2)
                v = torch.cat([self.values[index], v], dim=2)
            self.keys[index], self.values[index] = k, v
            out = F.scaled_dot_product_attention(q, k, v, attn_mask=allowed, scale=self.scaling,
                                                 enable_gqa=heads != kv_heads)
            out = out.transpose(1, 2).reshape(batch, width, heads * dim)
            hidden = hidden + _wide(out, attention.o_proj.weight, attention.o_proj.bias)
            x = F.rms_norm(hidden, (size,), layer.post_attention_layernorm.weight,
                           layer.post_attention_layernorm.variance_epsilon)
            gate, up = _wide(x, *self.gate_up[index]).chunk(2, dim=-1)
            hidden = hidden + _wide(self.act(gate) * up, mlp.down_proj.weight, mlp.down_proj.bias)
        hidden = F.rms_norm(hidden, (size,), self.core.norm.weight, self.core.norm.variance_epsilon)
        return _wide(hidden, self.model.lm_head.weight, self.model.lm_head.bias), hidden[:, -1]


def _wide(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:
    """oneDNN for a wide pass (at least WIDE rows), `F.linear` for a thought's one column."""
    return linear(x, weight, bias, min_rows=WIDE)


def _watched(module: nn.Module) -> bool:
    """Whether `module` has forward hooks other than transformers' own output capturing, which
    its `forward` installs for good the first time it is asked for hidden states (generation
    with thoughts does) and which only serves that `forward`."""
    hooks = [*module._forward_hooks.values(), *module._forward_pre_hooks.values()]
    return any(getattr(hook, "__module__", None) != OUTPUT_CAPTURING for hook in hooks)


def _fused(*linears: nn.Linear) -> tuple[torch.Tensor, torch.Tensor | None]:
    """(weight, bias) of the linears stacked along their outputs."""
    weight = torch.cat([linear.weight for linear in linears])
    biases = [linear.bias for linear in linears]
    return weight, torch.cat(biases) if all(b is not None for b in biases) else None

