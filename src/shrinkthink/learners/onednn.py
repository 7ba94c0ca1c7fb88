"""Linear layers on oneDNN while a model trains on a CPU.

torch's float32 `F.linear` and its backward call MKL's GEMM. On a 2-core AMD EPYC (2 threads)
oneDNN's matmul runs the same products 1.1-3x faster at training shapes (1500-6000 rows of the
quickstart's 128/512-wide layers, scratch timings: forward 2.2x, input gradient 2-3x, weight
gradient 1.1-1.8x; `bench/matmul.py` has the decoding shapes). A warm-start step of the
quickstart's 1M-parameter model, where matmuls are a part of the work, got 7-9% faster;
SmolLM2-135M's GRPO step with every episode trained 6.7 -> 5.6 s (`bench/vs_trl.py`).
Inside `onednn_linears(model)` every float32 `nn.Linear` of a CPU model computes its forward and
both gradients through oneDNN; outside, and wherever oneDNN would not compute what `F.linear`
does (a GPU, autocast, another dtype, no oneDNN), nothing changes.
"""

from __future__ import annotations

import types
from contextlib import contextmanager

import torch
import torch.nn.functional as F

from shrinkthink.decoders import onednn_packs


def _matmul_t(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None = None) -> torch.Tensor:
    """x @ weight^T (+ bias), oneDNN; x may be N-D and either operand non-contiguous."""
    return torch.ops.mkldnn._linear_pointwise(x, weight, bias, "none", [], "")


class OneDNNLinear(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, weight, bias):
        ctx.save_for_backward(x, weight)
        ctx.has_bias = bias is not None
        return _matmul_t(x, weight, bias)

    @staticmethod
    def backward(ctx, grad):
        x, weight = ctx.saved_tensors
        grad_x = grad_weight = grad_bias = None
        if ctx.needs_input_grad[0]:
            grad_x = _matmul_t(grad, weight.t().contiguous())  # grad @ weight
        flat = grad.reshape(-1, grad.shape[-1])
        if ctx.needs_input_grad[1]:
            grad_weight = _matmul_t(flat.t(), x.reshape(-1, x.shape[-1]).t())  # grad^T @ x
        if ctx.has_bias and ctx.needs_input_grad[2]:
            grad_bias = flat.sum(0)
        return grad_x, grad_weight, grad_bias


def linear(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None = None, min_rows: int = 0) -> torch.Tensor:
    """`F.linear`, through oneDNN where it computes the same (float32 on a CPU with oneDNN, no
    autocast) and `x` has at least `min_rows` rows."""
    if (x.dtype != torch.float32 or x.device.type != "cpu" or torch.is_autocast_enabled(x.device.type)
            or x.numel() < min_rows * x.shape[-1] or not onednn_packs(torch.float32)):
        return F.linear(x, weight, bias)
    return OneDNNLinear.apply(x, weight, bias)


def _forward(self: torch.nn.Linear, x: torch.Tensor) -> torch.Tensor:
    return linear(x, self.weight, self.bias)


@contextmanager
def onednn_linears(model: torch.nn.Module):
    """Route `model`'s float32 CPU `nn.Linear` layers through oneDNN for the block (a peft LoRA
    layer's base and adapter linears included); their forward is restored on exit."""
    linears = [m for m in model.modules()
               if type(m) is torch.nn.Linear and m.weight.device.type == "cpu" and m.weight.dtype == torch.float32
               and "forward" not in vars(m)]
    if not linears or not onednn_packs(torch.float32):
        yield
        return
    for linear in linears:
        linear.forward = types.MethodType(_forward, linear)
    try:
        yield
    finally:
        for linear in linears:
            del linear.forward
