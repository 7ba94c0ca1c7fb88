"""Training through oneDNN linears (`learners.onednn`): the same outputs and gradients as
`F.linear`, a model's own forward back on exit, autocast left to torch, and a training step that
lands where the stock one lands."""

from __future__ import annotations

import pytest
import torch

from shrinkthink.decoders import onednn_packs
from shrinkthink.learners import make_optimizer, supervised_step
from shrinkthink.learners.onednn import OneDNNLinear, onednn_linears
from shrinkthink.model import tiny_policy
from shrinkthink.policy import Policy

pytestmark = pytest.mark.skipif(not onednn_packs(torch.float32), reason="no oneDNN on this CPU")


@pytest.mark.parametrize("shape", [(7, 16), (3, 5, 16)])
@pytest.mark.parametrize("bias", [True, False])
def test_outputs_and_gradients_equal_f_linear(shape, bias: bool) -> None:
    torch.manual_seed(0)
    linear = torch.nn.Linear(16, 24, bias=bias)
    x = torch.randn(shape, requires_grad=True)
    grad = torch.randn(*shape[:-1], 24)
    expected = torch.nn.functional.linear(x, linear.weight, linear.bias)
    reference = torch.autograd.grad(expected, [x, linear.weight] + ([linear.bias] if bias else []), grad)
    out = OneDNNLinear.apply(x, linear.weight, linear.bias)
    got = torch.autograd.grad(out, [x, linear.weight] + ([linear.bias] if bias else []), grad)
    assert torch.allclose(out, expected, atol=1e-5)
    for a, b in zip(got, reference):
        assert a.shape == b.shape and torch.allclose(a, b, atol=1e-4)


def test_the_context_routes_every_linear_and_restores_the_forward(monkeypatch) -> None:
    model, _ = tiny_policy(depth=2, seed=0)
    linears = [m for m in model.modules() if type(m) is torch.nn.Linear]
    calls = []
    apply = OneDNNLinear.apply
    monkeypatch.setattr(OneDNNLinear, "apply", lambda *args: calls.append(1) or apply(*args))
    ids = torch.tensor([[1, 5, 6, 7]])
    with onednn_linears(model):
        assert all("forward" in vars(m) for m in linears)
        inside = model(input_ids=ids).logits
        assert len(calls) == len(linears)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            model(input_ids=ids)  # autocast: torch's own bfloat16 path, not ours
        assert len(calls) == len(linears)
    assert not any("forward" in vars(m) for m in linears)
    assert torch.allclose(inside, model(input_ids=ids).logits, atol=1e-5)


def test_a_training_step_lands_where_the_stock_one_does(monkeypatch) -> None:
    """Two supervised steps of the tiny model, oneDNN against `F.linear` (the context made a
    no-op): the losses agree, and the weights within a tenth of one Adam step (lr 1e-3; Adam
    rescales near-zero gradients, so rounding shows as up to 2e-5)."""
    from shrinkthink.learners import onednn

    def train(stock: bool) -> tuple[list[float], dict]:
        if stock:
            monkeypatch.setattr(onednn, "onednn_packs", lambda dtype: False)
        model, tokenizer = tiny_policy(depth=2, seed=0)
        policy = Policy(model, tokenizer)
        optimizer = make_optimizer(policy, 1e-3)
        prompts = [policy.prompt_ids(f"{i}+{i + 1}=?") for i in range(8)]
        targets = [policy.completion_ids(f"{2 * i + 1}") for i in range(8)]
        losses = [supervised_step(policy, optimizer, prompts, targets) for _ in range(2)]
        monkeypatch.undo()
        return losses, {k: v.clone() for k, v in model.state_dict().items()}

    ours, stock = train(stock=False), train(stock=True)
    assert ours[0] == pytest.approx(stock[0], rel=1e-5)
    assert all(torch.allclose(ours[1][k], stock[1][k], atol=1e-4) for k in stock[1])
