"""The batched KV-cache sampler against references: greedy decoding equals `model.generate` per
prompt, sampled log-probabilities equal a full forward pass, rows that emit end-of-sequence stop
with the right flags whether or not finished rows have been dropped from the batch, and top-p keeps
the minimal nucleus."""

from __future__ import annotations

import math

import pytest
import torch

from shrinkthink import rollout
from shrinkthink.learners.batch import completion_logprobs, pack
from shrinkthink.model import tiny_policy
from shrinkthink.policy import Policy

TEXTS = ["1", "12+7+30=?", "3=?", "99+1+2+3+4+5+6=?", "4+4=?", "7+1+2=?", "x", "123+456=?"]
# Prompts that open alike (a chat template's system turn): the prefix is prefilled once for all rows.
PREFIX = "Add these up, then answer: "
EOS_BIAS = 1e4


@pytest.fixture(scope="module")
def policy() -> Policy:
    model, tokenizer = tiny_policy(depth=2, seed=1)
    return Policy(model.eval(), tokenizer)


class ForceEndAt(torch.nn.Module):
    """The tiny model with end-of-sequence made certain at every position >= `position`: rows
    with longer prompts finish sooner, whatever their index in a (compacted) batch."""

    def __init__(self, model, eos_id: int, position: int) -> None:
        super().__init__()
        self.model, self.eos_id, self.position = model, eos_id, position

    def forward(self, input_ids, attention_mask, position_ids=None, **kwargs):
        if position_ids is None:
            position_ids = (attention_mask.cumsum(-1) - 1).clamp(min=0)
        out = self.model(input_ids=input_ids, attention_mask=attention_mask, position_ids=position_ids, **kwargs)
        force = position_ids >= self.position  # [B, T]
        out.logits[..., self.eos_id] += EOS_BIAS * force.to(out.logits.dtype)
        return out


def greedy_reference(model, prompt: list[int], max_new_tokens: int) -> list[int]:
    ids = torch.tensor([prompt])
    out = model.generate(input_ids=ids, attention_mask=torch.ones_like(ids), max_new_tokens=max_new_tokens,
                         do_sample=False, eos_token_id=2, pad_token_id=0)
    return out[0, len(prompt):].tolist()


def test_shared_prefix_leaves_each_prompt_a_token_and_skips_short_ones() -> None:
    assert rollout.shared_prefix([list(range(20)), list(range(12)) + [99]]) == 12
    assert rollout.shared_prefix([list(range(12)), list(range(12))]) == 11  # the last is each row's own
    assert rollout.shared_prefix([list(range(20)), [0, 1, 2, 99]]) == 0  # under MIN_SHARED_PREFIX
    assert rollout.shared_prefix([list(range(20))]) == 0


@pytest.mark.parametrize("prefix", ["", PREFIX])
def test_greedy_sampling_equals_generate_per_prompt(policy: Policy, prefix: str) -> None:
    prompts = [policy.prompt_ids(prefix + t) for t in TEXTS]
    assert len({len(p) for p in prompts}) > 4  # really different lengths: padding matters
    assert rollout.shared_prefix(prompts) >= (len(prefix) if prefix else 0)
    samples = policy.sample(prompts, max_new_tokens=24, greedy=True)
    for prompt, completion in zip(prompts, samples.completion_ids):
        assert completion == greedy_reference(policy.model, prompt, 24)
    assert samples.tokens == sum(len(c) for c in samples.completion_ids)


def reference_logprobs(model, prompt: list[int], completion: list[int],
                       temperature: float) -> tuple[list[float], float]:
    """log-softmax of one unpadded forward pass over prompt + completion: each completion token's
    log-probability, and the summed entropy of the distributions they were drawn from."""
    ids = torch.tensor([prompt + completion])
    with torch.no_grad():
        logits = model(input_ids=ids, attention_mask=torch.ones_like(ids)).logits[0].float()
    logp = torch.log_softmax(logits / temperature, dim=-1)[len(prompt) - 1: len(prompt) - 1 + len(completion)]
    entropy = -(logp.exp() * logp).sum()
    return [float(logp[i, token]) for i, token in enumerate(completion)], float(entropy)


@pytest.mark.parametrize(("temperature", "prefix"), [(1.0, ""), (0.7, ""), (1.0, PREFIX)])
def test_sampled_logprobs_equal_a_full_forward_pass(policy: Policy, temperature: float, prefix: str) -> None:
    prompts = [policy.prompt_ids(prefix + t) for t in TEXTS for _ in range(2)]
    torch.manual_seed(0)
    samples = policy.sample(prompts, max_new_tokens=16, temperature=temperature)
    entropy = 0.0
    for prompt, completion, logprobs in zip(prompts, samples.completion_ids, samples.logprobs):
        assert len(logprobs) == len(completion) > 0
        expected, row_entropy = reference_logprobs(policy.model, prompt, completion, temperature)
        assert torch.allclose(torch.tensor(logprobs), torch.tensor(expected), atol=1e-4)
        entropy += row_entropy
    assert samples.entropy_sum == pytest.approx(entropy, rel=1e-4)
    # the learner's right-padded batch recomputes the same numbers
    ids, attention, predictor, mask = pack(prompts, samples.completion_ids, policy.pad_id, "cpu")
    with torch.no_grad():
        batch = completion_logprobs(policy.model, ids, attention, predictor, temperature)
    old = torch.zeros_like(batch)
    for row, logprobs in enumerate(samples.logprobs):
        old[row, : len(logprobs)] = torch.tensor(logprobs)
    assert torch.allclose(batch[mask], old[mask], atol=1e-4)


def expected_length(prompt_length: int, end_position: int, max_new_tokens: int) -> tuple[int, bool]:
    """Token t is predicted at position prompt_length - 1 + t; the first one at or past
    `end_position` is end-of-sequence."""
    eos_index = max(0, end_position - prompt_length + 1)
    if eos_index >= max_new_tokens:
        return max_new_tokens, False
    return eos_index + 1, True


@pytest.mark.parametrize("idle_share", [0.0, 0.25, 2.0])  # compact at once, by default, never
def test_rows_that_end_stop_and_keep_their_tokens(policy: Policy, monkeypatch, idle_share: float) -> None:
    monkeypatch.setattr(rollout, "COMPACT_IDLE_SHARE", idle_share)
    eos = policy.tokenizer.eos_token_id
    end_position, max_new = 12, 10
    forced = ForceEndAt(policy.model, eos, end_position).eval()
    prompts = [policy.prompt_ids(t) for t in TEXTS]
    samples = rollout.sample(forced, prompts, eos_ids={eos}, pad_id=policy.pad_id, max_new_tokens=max_new, greedy=True)
    lengths = [len(c) for c in samples.completion_ids]
    expected = [expected_length(len(p), end_position, max_new) for p in prompts]
    assert lengths == [n for n, _ in expected]
    assert samples.finished == [f for _, f in expected]
    assert len(set(lengths)) >= 4 and any(samples.finished) and not all(samples.finished)
    assert samples.tokens == sum(lengths)
    assert math.isfinite(samples.entropy_sum)
    for prompt, completion, finished in zip(prompts, samples.completion_ids, samples.finished):
        free = greedy_reference(policy.model, prompt, max_new)  # the unforced model's choices
        assert eos not in free
        if finished:
            assert completion == free[: len(completion) - 1] + [eos]
        else:
            assert completion == free


def test_sampled_logprobs_survive_compaction(policy: Policy, monkeypatch) -> None:
    monkeypatch.setattr(rollout, "COMPACT_IDLE_SHARE", 0.0)
    eos = policy.tokenizer.eos_token_id
    forced = ForceEndAt(policy.model, eos, 12).eval()
    prompts = [policy.prompt_ids(t) for t in TEXTS for _ in range(3)]
    torch.manual_seed(3)
    samples = rollout.sample(forced, prompts, eos_ids={eos}, pad_id=policy.pad_id, max_new_tokens=10)
    assert any(samples.finished) and not all(samples.finished)
    for prompt, completion, logprobs, finished in zip(prompts, samples.completion_ids, samples.logprobs,
                                                      samples.finished):
        assert finished == (completion[-1] == eos)
        assert eos not in completion[:-1]
        expected, _ = reference_logprobs(forced, prompt, completion, 1.0)
        assert torch.allclose(torch.tensor(logprobs), torch.tensor(expected), atol=1e-4)


def test_policy_logprobs_teacher_forced_equal_the_samplers(policy: Policy) -> None:
    """`Policy.logprobs` (the critic's likelihood guard) scores given completions the way the
    sampler scored the tokens it drew."""
    prompts = [policy.prompt_ids(q) for q in ("12+7=?", "3+4+5=?", "1=?")]
    torch.manual_seed(0)
    samples = policy.sample(prompts, max_new_tokens=10)
    scored = policy.logprobs(prompts, samples.completion_ids, batch_size=2)  # two batches
    assert [len(row) for row in scored] == [len(ids) for ids in samples.completion_ids]
    for got, expected in zip(scored, samples.logprobs):
        assert torch.allclose(torch.tensor(got), torch.tensor(expected), atol=1e-4)


def test_top_p_keeps_the_minimal_nucleus() -> None:
    probs = torch.tensor([[0.15, 0.5, 0.05, 0.3], [0.25, 0.25, 0.25, 0.25]])
    logits = probs.log()
    kept = lambda p: torch.isfinite(rollout.top_p_filter(logits, p))  # noqa: E731
    assert kept(0.75)[0].tolist() == [False, True, False, True]  # 0.5 + 0.3 reaches 0.75
    assert kept(0.45)[0].tolist() == [False, True, False, False]
    assert kept(0.9)[0].tolist() == [True, True, False, True]
    assert kept(0.6)[1].sum() == 3  # ties: three quarters are needed for 0.6
    assert torch.equal(rollout.top_p_filter(logits, 1.0), logits)
    filtered = rollout.top_p_filter(logits, 0.75)
    assert torch.equal(filtered[0, [1, 3]], logits[0, [1, 3]])  # kept logits are unchanged


def test_lean_llama_decoder_matches_the_models_own_forward():
    """The preallocated-cache decoder must sample exactly what the generic HF path samples."""
    from shrinkthink.decoders import LlamaDecoder
    from shrinkthink.rollout import sample

    model, tokenizer = tiny_policy(depth=2, seed=3)
    model.eval()
    assert LlamaDecoder.supports(model)
    prompts = [[1] + tokenizer(f"{i * 37}+{i}=?\n", add_special_tokens=False).input_ids for i in range(6)]
    prompts[2] = prompts[2][:3]  # ragged left padding
    for greedy in (True, False):
        runs = []
        for generic in (False, True):
            generator = torch.Generator().manual_seed(7)
            runs.append(sample(model, prompts, eos_ids={2}, pad_id=0, max_new_tokens=12, greedy=greedy,
                               generator=generator, generic=generic))
        lean, generic_run = runs
        assert lean.completion_ids == generic_run.completion_ids
        for a, b in zip(lean.logprobs, generic_run.logprobs):
            assert torch.allclose(torch.tensor(a), torch.tensor(b), atol=1e-5)


def test_bfloat16_decoder_tracks_the_float32_model() -> None:
    """Projections from bfloat16 copies of a float32 model's weights: next-token log-probabilities
    stay close to the float32 forward's, and the model's own weights are untouched."""
    from shrinkthink.decoders import LlamaDecoder

    model, tokenizer = tiny_policy(depth=2, seed=3)
    model.eval()
    with torch.no_grad():  # weights large enough that the next-token distribution is far from uniform
        for parameter in model.parameters():
            if parameter.dim() == 2:
                parameter.normal_(0.0, 0.15, generator=torch.Generator().manual_seed(parameter.numel()))
    before = {k: v.clone() for k, v in model.state_dict().items()}
    ids = torch.tensor([[1] + tokenizer(f"{10 + i}+{20 + i}=?", add_special_tokens=False).input_ids for i in range(4)])
    mask, positions = torch.ones_like(ids), torch.arange(ids.shape[1]).expand(4, -1)
    with torch.no_grad():
        reference = model(input_ids=ids).logits.log_softmax(-1)
        decoder = LlamaDecoder(model, 4, ids.shape[1], dtype=torch.bfloat16)
        assert decoder.qkv[0].weight.dtype == torch.bfloat16
        prefill = decoder.prefill(ids[:, :-1], mask[:, :-1], positions[:, :-1]).log_softmax(-1)
        step = decoder.step(ids[:, -1], torch.ones(4, dtype=torch.bool), positions[:, -1]).log_softmax(-1)
    uniform = -math.log(reference.shape[-1])
    assert reference[:, -2:].max(-1).values.min() > uniform + 1.0  # far from uniform: errors would show
    assert torch.allclose(prefill, reference[:, -2], atol=0.05)
    assert torch.allclose(step, reference[:, -1], atol=0.05)
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())


def test_bfloat16_sampling_is_close_to_the_learners_float32_log_probabilities() -> None:
    """`Sampling.dtype: bfloat16`, lean and generic decoders alike: the sampled log-probabilities
    (the learner's "old" ones) stay within a clipped ratio's reach of the float32 recomputation,
    and the policy keeps its float32 weights."""
    model, tokenizer = tiny_policy(depth=2, seed=5)
    with torch.no_grad():  # far from uniform, so precision errors would show
        for parameter in model.parameters():
            if parameter.dim() == 2:
                parameter.normal_(0.0, 0.15, generator=torch.Generator().manual_seed(parameter.numel()))
    policy = Policy(model.eval(), tokenizer)
    prompts = [policy.prompt_ids(t) for t in TEXTS]
    for generic in (False, True):
        torch.manual_seed(0)
        samples = rollout.sample(policy.model, prompts, eos_ids=policy.eos_ids, pad_id=policy.pad_id,
                                 max_new_tokens=16, generic=generic, dtype=torch.bfloat16)
        ids, attention, predictor, mask = pack(prompts, samples.completion_ids, policy.pad_id, "cpu")
        with torch.no_grad():
            fresh = completion_logprobs(policy.model, ids, attention, predictor, 1.0)
        old = torch.zeros_like(fresh)
        for row, logprobs in enumerate(samples.logprobs):
            old[row, : len(logprobs)] = torch.tensor(logprobs)
        gap = (fresh - old)[mask].abs()
        assert fresh[mask].mean() < -0.5  # real choices, not near-certain tokens
        assert gap.max() < 0.1 and gap.mean() < 0.02, (generic, gap.max(), gap.mean())
        assert gap.max() > 1e-3  # it really sampled in bfloat16 (float32 agrees to 1e-5)
    assert all(p.dtype == torch.float32 for p in policy.model.parameters())


def test_draw_follows_the_probabilities_and_never_picks_a_zero() -> None:
    probs = torch.tensor([[0.1, 0.0, 0.6, 0.3], [0.0, 0.0, 0.0, 2.0], [1.0, 1.0, 0.0, 0.0]])  # unnormalised ok
    generator = torch.Generator().manual_seed(0)
    draws = torch.stack([rollout.draw(probs, generator) for _ in range(4000)])  # [4000, 3]
    first = torch.bincount(draws[:, 0], minlength=4).float() / 4000
    assert torch.allclose(first, torch.tensor([0.1, 0.0, 0.6, 0.3]), atol=0.03)
    assert first[1] == 0 and (draws[:, 1] == 3).all() and set(draws[:, 2].tolist()) == {0, 1}
    again = torch.Generator().manual_seed(0)
    assert torch.equal(rollout.draw(probs, again), draws[0])  # reproducible from the generator


@pytest.mark.parametrize("packed", [True, False])
def test_projection_is_the_fused_linears_plus_bias_and_residual(monkeypatch, packed: bool) -> None:
    """The decoder's matmul, on oneDNN's prepacked weights or on `mm`: q, k and v fused into one
    call equal the three linears, with their biases, on 2-D (decode) and 3-D (prefill) input, and
    a residual is added inside the call."""
    from shrinkthink import decoders

    if packed and not decoders.onednn_packs(torch.float32):
        pytest.skip("no oneDNN on this CPU")
    monkeypatch.setattr(decoders, "onednn_packs", lambda dtype: packed)
    torch.manual_seed(0)
    linears = [torch.nn.Linear(16, out) for out in (16, 8, 8)]
    projection = decoders.Projection(linears, torch.float32, batch=4)
    assert projection.packed == packed
    for shape in ((5, 16), (3, 7, 16)):  # a row count other than the packing hint
        x = torch.randn(shape)
        residual = torch.randn(*shape[:-1], 32)
        expected = torch.cat([linear(x) for linear in linears], dim=-1).detach()
        assert torch.allclose(projection(x), expected, atol=1e-5)
        assert torch.allclose(projection(x, residual=residual), expected + residual, atol=1e-5)
