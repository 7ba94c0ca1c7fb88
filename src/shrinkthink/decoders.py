"""Two ways to run a causal LM one token at a time, behind one small interface
(`prefill`, `step`, `select`):

- `LlamaDecoder`: for Llama-family models (Llama, SmolLM2, Mistral, Qwen2): a preallocated KV
  cache and the layers' own modules called directly, skipping the per-call work of the generic
  `forward` (mask building, cache objects, output records). On a small model that overhead is
  most of the time per token.
- `HFDecoder`: any Hugging Face causal LM through its own `forward` and a `DynamicCache`.

Both take left-padded batches whose rows all write their next token into the same column.
"""

from __future__ import annotations

import functools
import inspect

import torch
import torch.nn.functional as F
from transformers import DynamicCache

LLAMA_FAMILY = {"llama", "mistral", "qwen2"}


def cache_argument(model) -> str:
    """The name `model.forward` takes its KV cache under: `cache` from transformers 5.24 on
    (`past_key_values` is deprecated there, and goes in 5.40), `past_key_values` before."""
    parameters = inspect.signature(_unwrapped(model).forward).parameters  # a peft wrapper takes **kwargs
    return "cache" if "cache" in parameters else "past_key_values"


class HFDecoder:
    def __init__(self, model, dtype: torch.dtype | None = None) -> None:
        """`dtype`: run the forward under autocast to this precision; default the model's own."""
        self.model = model
        self.cache = DynamicCache()
        self.cache_name = cache_argument(model)
        self.mask: torch.Tensor | None = None
        device = next(model.parameters()).device.type
        self.autocast = torch.autocast(device, dtype=dtype, enabled=dtype is not None)

    def prefill(self, ids, mask, positions) -> torch.Tensor:
        self.mask = mask
        with self.autocast:
            out = self.model(input_ids=ids, attention_mask=mask, position_ids=positions,
                             use_cache=True, **{self.cache_name: self.cache})
        return out.logits[:, -1, :].float()

    def step(self, token, live, position) -> torch.Tensor:
        self.mask = torch.cat([self.mask, live.long()[:, None]], dim=-1)
        with self.autocast:
            out = self.model(input_ids=token[:, None], attention_mask=self.mask, position_ids=position[:, None],
                             use_cache=True, **{self.cache_name: self.cache})
        return out.logits[:, -1, :].float()

    def select(self, keep: torch.Tensor) -> None:
        self.cache.batch_select_indices(keep)
        self.mask = self.mask[keep]


class LlamaDecoder:
    """Decodes with a preallocated cache [layers, batch, kv_heads, max_len, head_dim]."""

    @staticmethod
    def supports(model) -> bool:
        model = _unwrapped(model)
        config = getattr(model, "config", None)
        return (
            config is not None
            and getattr(config, "model_type", None) in LLAMA_FAMILY
            and getattr(config, "sliding_window", None) in (None, 0)
            and hasattr(getattr(model, "model", None), "rotary_emb")
        )

    def __init__(self, model, batch: int, max_len: int, dtype: torch.dtype | None = None) -> None:
        """`dtype`: compute in this precision from copies of the weights (say bfloat16 from a
        float32 model being trained); default the model's own."""
        model = _unwrapped(model)
        self.model = model
        self.core = model.model
        config = model.config
        attention = self.core.layers[0].self_attn
        self.head_dim = attention.head_dim
        self.heads = config.num_attention_heads
        self.kv_heads = config.num_key_value_heads
        self.scaling = attention.scaling
        self.act = self.core.layers[0].mlp.act_fn
        parameter = next(model.parameters())
        self.dtype = dtype = dtype or parameter.dtype
        self.eps = [(layer.input_layernorm.variance_epsilon, layer.post_attention_layernorm.variance_epsilon)
                    for layer in self.core.layers]
        # One new token a step: on a CPU our own two-matmul attention (`_forward_one`), which keeps
        # the residual stream, norms, rotary and attention in float32 and runs only the
        # projections in `dtype` (bfloat16 matmuls on a CPU need contiguous operands: a float32
        # cache saves a copy of every layer's keys a token); on a GPU SDPA's kernels.
        self.one_token_path = parameter.device.type == "cpu"
        stream = torch.float32 if self.one_token_path else dtype
        self.norms = [(layer.input_layernorm.weight.detach().to(stream),
                       layer.post_attention_layernorm.weight.detach().to(stream)) for layer in self.core.layers]
        self.final_norm = self.core.norm.weight.detach().to(stream)
        # One matmul for q, k and v and one for gate and up: fewer calls per token. The weights
        # are copied afresh for every batch, so they match the model being trained.
        with torch.no_grad():
            attentions = [block.self_attn for block in self.core.layers]
            mlps = [block.mlp for block in self.core.layers]

            def fuse(*linears):
                return Projection(linears, dtype, batch)

            self.qkv = [fuse(a.q_proj, a.k_proj, a.v_proj) for a in attentions]
            self.gate_up = [fuse(m.gate_proj, m.up_proj) for m in mlps]
            self.o = [fuse(a.o_proj) for a in attentions]
            self.down = [fuse(m.down_proj) for m in mlps]
            self.head = fuse(model.lm_head)
        shape = (len(self.core.layers), batch, self.kv_heads, max_len, self.head_dim)
        self.keys = torch.zeros(shape, dtype=stream, device=parameter.device)
        self.values = torch.zeros_like(self.keys)
        # the key mask, additive (0 where a key may be seen, -inf where not), one row per
        # key/value head so one-token attention can take it as a batched matmul's input:
        # [batch, kv_heads, 1, max_len]
        self.bias = torch.full((batch, self.kv_heads, 1, max_len), float("-inf"), dtype=stream,
                               device=parameter.device)
        self.length = 0
        # A rotary table for every position, looked up per token, where the rotation depends on
        # the position alone (dynamic variants rescale with the sequence length seen so far).
        rotary = self.core.rotary_emb
        self.rope_table = None
        if "dynamic" not in getattr(rotary, "rope_type", "default") and getattr(rotary, "rope_type", "") != "longrope":
            with torch.no_grad():
                probe = torch.zeros((), dtype=stream, device=parameter.device)
                cos, sin = rotary(probe, torch.arange(max_len, device=parameter.device)[None])
            self.rope_table = (cos[0], signed_sine(sin[0]))

    def _rope(self, hidden, positions) -> tuple[torch.Tensor, torch.Tensor]:
        """cos and signed sin, [batch, width, 1, head_dim]."""
        if self.rope_table is not None:
            cos, signed = self.rope_table[0][positions], self.rope_table[1][positions]
        else:
            cos, sin = self.core.rotary_emb(hidden, positions)
            signed = signed_sine(sin)
        return cos[:, :, None], signed[:, :, None]

    def _forward(self, ids, positions) -> torch.Tensor:
        batch, width = ids.shape
        if width == 1 and self.one_token_path:
            return self._forward_one(ids, positions)
        start, end = self.length, self.length + width
        hidden = self.core.embed_tokens(ids).to(self.dtype)
        dtype = self.dtype
        if width == 1:
            hidden = hidden[:, 0]  # [B, H]: 2-D matmuls from here on
        cos, signed = self._rope(hidden, positions)
        cos, signed = cos.to(dtype), signed.to(dtype)
        half = self.head_dim // 2
        # A batch of one row into a wider cache is a prefix all rows share (`prefill`): its keys
        # and values are written to every row, and it attends over the first row's.
        if width == 1:
            bias = self.bias[:batch, :1, :, :end].to(dtype)  # [B, 1, 1, end]: one additive mask for every layer
        else:
            causal = torch.ones((width, end), dtype=torch.bool, device=ids.device).tril(diagonal=start)
            allowed = (self.bias[:batch, :1, :, :end] == 0) & causal
            # A padding query may see no key at all; letting it see itself keeps softmax finite.
            allowed[:, :, torch.arange(width), torch.arange(start, end)] = True
        q_heads, kv_heads = self.heads, self.kv_heads
        for index, _layer in enumerate(self.core.layers):
            eps_attention, eps_mlp = self.eps[index]
            x = F.rms_norm(hidden, (hidden.shape[-1],), self.norms[index][0].to(dtype), eps_attention)
            qkv = self.qkv[index](x).view(batch, width, q_heads + 2 * kv_heads, self.head_dim)
            # q and k rotate together: they share the positions
            qk = qkv[:, :, : q_heads + kv_heads]
            qk = qk * cos + qk.roll(half, dims=-1) * signed
            q = qk[:, :, :q_heads].transpose(1, 2)
            k = qk[:, :, q_heads:].transpose(1, 2)
            v = qkv[:, :, q_heads + kv_heads:].transpose(1, 2)
            self.keys[index, :, :, start:end] = k
            self.values[index, :, :, start:end] = v
            keys, values = self.keys[index, :batch, :, :end].to(dtype), self.values[index, :batch, :, :end].to(dtype)
            if width == 1:
                out = F.scaled_dot_product_attention(q, keys, values, attn_mask=bias, scale=self.scaling,
                                                     enable_gqa=self.heads != self.kv_heads)
            else:
                out = F.scaled_dot_product_attention(q, keys, values, attn_mask=allowed, scale=self.scaling,
                                                     enable_gqa=self.heads != self.kv_heads)
            out = (out.transpose(1, 2).reshape(batch, -1) if width == 1
                   else out.transpose(1, 2).reshape(batch, width, -1))
            hidden = self.o[index](out, residual=hidden)
            x = F.rms_norm(hidden, (hidden.shape[-1],), self.norms[index][1].to(dtype), eps_mlp)
            gate, up = self.gate_up[index](x).chunk(2, dim=-1)
            hidden = self.down[index](self.act(gate) * up, residual=hidden)
        self.length = end
        last = hidden if width == 1 else hidden[:, -1]
        last = F.rms_norm(last, (last.shape[-1],), self.final_norm.to(dtype), self.core.norm.variance_epsilon)
        return self.head(last).float()

    def _forward_one(self, ids, positions) -> torch.Tensor:
        """One new token per row on a CPU: the same layers as `_forward` in fewer calls. Attention
        is two batched matmuls with the query heads that share a key/value head stacked (SDPA's
        CPU kernel is built for long queries: 0.26 ms a layer against 0.46 ms at batch 32 in
        float32), the scale and the key mask folded into the first (`baddbmm`), and each residual
        add folded into its projection (`addmm`). Only the projections run in `self.dtype`."""
        batch, position, end = ids.shape[0], self.length, self.length + 1
        heads, kv_heads, dim = self.heads, self.kv_heads, self.head_dim
        mm = self.dtype  # the projections' precision; everything else float32
        hidden = self.core.embed_tokens(ids[:, 0]).float()  # [B, H]
        cos, signed = self._rope(hidden, positions)
        cos, signed = cos[:, 0], signed[:, 0]  # [B, 1, D]
        bias = self.bias.view(batch * kv_heads, 1, -1)[:, :, :end]
        for index, _layer in enumerate(self.core.layers):
            eps_attention, eps_mlp = self.eps[index]
            x = F.rms_norm(hidden, (hidden.shape[-1],), self.norms[index][0], eps_attention).to(mm)
            qkv = self.qkv[index](x).float().view(batch, heads + 2 * kv_heads, dim)
            qk = qkv[:, : heads + kv_heads]
            qk = torch.addcmul(qk * cos, qk.roll(dim // 2, dims=-1), signed)
            self.keys[index, :, :, position] = qk[:, heads:]
            self.values[index, :, :, position] = qkv[:, heads + kv_heads:]
            q = qk[:, :heads].reshape(batch * kv_heads, heads // kv_heads, dim)
            keys = self.keys[index, :, :, :end].reshape(batch * kv_heads, end, dim)
            values = self.values[index, :, :, :end].reshape(batch * kv_heads, end, dim)
            scores = torch.baddbmm(bias, q, keys.transpose(1, 2), alpha=self.scaling)
            out = torch.bmm(scores.softmax(-1), values).view(batch, heads * dim).to(mm)
            hidden = self.o[index](out, residual=hidden)
            x = F.rms_norm(hidden, (hidden.shape[-1],), self.norms[index][1], eps_mlp).to(mm)
            gate, up = self.gate_up[index](x).chunk(2, dim=-1)
            hidden = self.down[index](self.act(gate) * up, residual=hidden)
        self.length = end
        last = F.rms_norm(hidden, (hidden.shape[-1],), self.final_norm, self.core.norm.variance_epsilon).to(mm)
        return self.head(last).float()

    def prefill(self, ids, mask, positions) -> torch.Tensor:
        """Append `ids` [rows, width] to the cache and return the last column's logits. Called
        more than once, each call continues the cache; one row when the cache holds more is a
        prefix every row shares, written once into all of them."""
        start, width = self.length, ids.shape[1]
        self.bias[..., start:start + width].masked_fill_(mask.bool()[:, None, None, :], 0.0)
        return self._forward(ids, positions)

    def step(self, token, live, position) -> torch.Tensor:
        self.bias[..., self.length] = torch.where(live, 0.0, float("-inf"))[:, None, None]
        return self._forward(token[:, None], position[:, None])

    def select(self, keep: torch.Tensor) -> None:
        # only the filled positions are copied: those past `length` are written before read
        filled = self.length
        for name in ("keys", "values"):
            cache = getattr(self, name)
            kept = cache.new_empty((cache.shape[0], len(keep), *cache.shape[2:]))
            kept[:, :, :, :filled] = cache[:, keep, :, :filled]
            setattr(self, name, kept)
        self.bias = self.bias[keep]


def signed_sine(sin: torch.Tensor) -> torch.Tensor:
    """`sin` [..., head_dim] with its first half negated: rotate_half(x) * sin equals
    x.roll(head_dim // 2, dims=-1) * signed_sine(sin), one op instead of four."""
    half = sin.shape[-1] // 2
    return torch.cat((-sin[..., :half], sin[..., half:]), dim=-1)


def _unwrapped(model):
    """The Hugging Face model inside a peft wrapper (its LoRA layers stay in place)."""
    return model.get_base_model() if hasattr(model, "get_base_model") else model


def _weight(linear: torch.nn.Module) -> torch.Tensor:
    """The weight a linear layer applies: a peft LoRA layer's base weight plus its active,
    unmerged adapters' low-rank updates."""
    base = getattr(linear, "base_layer", None)
    if base is None or getattr(linear, "merged", False) or getattr(linear, "disable_adapters", False):
        return linear.weight
    weight = base.weight
    for name in linear.active_adapters:
        if name in linear.lora_A:
            weight = weight + linear.get_delta_weight(name).to(weight.dtype)
    return weight


@functools.cache
def onednn_packs(dtype: torch.dtype) -> bool:
    """Whether this CPU's oneDNN takes prepacked weights in `dtype` and computes what `mm` does (a
    probe, once per dtype: the ops are the ones `torch.compile` uses for frozen CPU linears)."""
    if not torch.backends.mkldnn.is_available():
        return False
    try:
        # fixed values: a draw from the global generator would shift the first sampling call's stream
        weight = torch.linspace(-1, 1, 128).view(8, 16).to(dtype)
        x = torch.linspace(1, -0.5, 64).view(4, 16).to(dtype)
        packed = torch.ops.mkldnn._reorder_linear_weight(weight, 4)
        out = torch.ops.mkldnn._linear_pointwise(x, packed, None, "none", [], "")
    except (RuntimeError, AttributeError, NotImplementedError):
        return False
    return torch.allclose(out.float(), (x @ weight.t()).float(), atol=1e-2, rtol=1e-2)


class Projection:
    """One or more linears applied as one matmul: x @ W^T (+ bias) (+ residual), the weights
    copied in `dtype`.

    On a CPU the weight is prepacked for oneDNN's matmul kernel (`batch` is the expected rows, a
    layout hint; any row count works). On a 2-core AMD EPYC (2 threads) a 32-row float32
    matmul against SmolLM2's projections then runs 2.0-3.2x faster than `mm` (MKL): 99 against
    221 us for q/k/v, 286 against 844 us for gate/up, 5.5 against 17.4 ms for the vocabulary
    head (`bench/matmul.py`).
    Elsewhere (a GPU, a dtype oneDNN cannot prepack here) the weight is stored transposed and
    contiguous for `mm`/`addmm` (on an Intel CPU with AMX those took 4.4 us at batch
    8 x 128 against 9.4 us for `F.linear`)."""

    def __init__(self, linears, dtype: torch.dtype, batch: int) -> None:
        weight = torch.cat([_weight(linear) for linear in linears]).to(dtype)  # [out, in]
        biases = [getattr(linear, "bias", None) for linear in linears]
        self.bias = torch.cat(biases).to(dtype) if all(b is not None for b in biases) else None
        self.packed = weight.device.type == "cpu" and onednn_packs(dtype)
        if self.packed:
            self.weight = torch.ops.mkldnn._reorder_linear_weight(weight, batch)
        else:
            self.weight = weight.t().contiguous()  # [in, out]

    def __call__(self, x: torch.Tensor, residual: torch.Tensor | None = None) -> torch.Tensor:
        """A residual of another dtype than x keeps its own (a float32 stream, bfloat16
        projections); one of x's dtype is added inside the matmul call."""
        if residual is not None and residual.dtype != x.dtype:
            return residual + self(x).to(residual.dtype)
        if self.packed:
            if residual is None:
                return torch.ops.mkldnn._linear_pointwise(x, self.weight, self.bias, "none", [], "")
            return torch.ops.mkldnn._linear_pointwise.binary(x, residual, self.weight, self.bias, "add")
        if x.dim() == 2:
            if residual is not None:
                out = torch.addmm(residual, x, self.weight)
                return out if self.bias is None else out + self.bias
            return torch.mm(x, self.weight) if self.bias is None else torch.addmm(self.bias, x, self.weight)
        out = torch.matmul(x, self.weight)
        out = out if self.bias is None else out + self.bias
        return out if residual is None else residual + out


def make_decoder(model, batch: int, max_len: int):
    if LlamaDecoder.supports(model):
        return LlamaDecoder(model, batch, max_len)
    return HFDecoder(model)
