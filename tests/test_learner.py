"""The learners on a tiny randomly initialised policy: rollout, score, update, and the reward
rises (GRPO, RLOO, expert iteration). Plus the invariance that makes the loss token-level: one
batch of 8 episodes has the loss and gradient of the token-weighted combination of 8 batches of 1.
"""

from __future__ import annotations

import random

import pytest
import torch

from shrinkthink.config import LearnerConfig, LoraConfig, ModelConfig
from shrinkthink.criteria import Batch, LengthPenalty, apply_criteria
from shrinkthink.learners import Learner, make_optimizer, supervised_step
from shrinkthink.learners.batch import (
    completion_log_softmax,
    completion_logprobs,
    length_buckets,
    pack,
    random_positions,
    token_entropy,
)
from shrinkthink.learners.losses import clipped_policy_loss, group_advantages
from shrinkthink.model import tiny_policy
from shrinkthink.policy import Policy
from shrinkthink.records import Episode, Problem
from shrinkthink.rollout import sample
from shrinkthink.tasks.base import Task

TARGET = "7"


class FirstDigitTask(Task):
    """Reward 1.0 when the completion starts with the digit 7: a signal a random policy finds
    about once in a hundred samples, so only learning can raise it."""

    name = "first-digit"
    description = "test task: start the answer with 7"

    def generate(self, level: int, rng: random.Random) -> Problem:
        a, b = rng.randrange(100), rng.randrange(100)
        return Problem(id=f"fd-{a}-{b}", prompt=f"{a}+{b}=?", answer=TARGET, level=level)

    def is_correct(self, problem: Problem, answer: str) -> bool:
        return answer == TARGET

    def score(self, problem: Problem, completion: str) -> float:
        return float(completion[:1] == TARGET)


def train(name: str, steps: int, *, lr: float = 3e-3, max_new_tokens: int = 3, seed: int = 0,
          dtype: str = "model", entropy_coef: float = 0.0, check=None) -> list[float]:
    """Mean reward of each step's rollout, as stages/explore.py runs it: G samples per problem,
    scored by the task, then one learner update. `dtype`: the sampler's and the learner's
    (`sampling.dtype`, `learner.dtype`); `check(policy)` runs at the end."""
    config = LearnerConfig(name=name, group_size=16, problems_per_step=4, lr=lr, dtype=dtype, entropy_coef=entropy_coef)
    model, tokenizer = tiny_policy(depth=2, seed=seed)
    policy = Policy(model, tokenizer)
    learner = Learner(policy, config)
    task = FirstDigitTask()
    pool = task.problems(1, 64, "train", seed=seed)
    rng = random.Random(seed)
    torch.manual_seed(seed)
    size = config.group_size
    rewards = []
    for _ in range(steps):
        problems = [rng.choice(pool) for _ in range(config.problems_per_step)]
        prompts = [policy.prompt_ids(p.prompt) for p in problems]
        samples = policy.sample([p for p in prompts for _ in range(size)], max_new_tokens=max_new_tokens, dtype=dtype)
        episodes = []
        for i, (ids, logprobs) in enumerate(zip(samples.completion_ids, samples.logprobs)):
            text = policy.decode(ids)
            reward = task.score(problems[i // size], text)
            # The answer is the first character, so every attempt is complete once it has one;
            # expert iteration only keeps finished winners.
            episodes.append(Episode(problem=problems[i // size], prompt_ids=prompts[i // size], completion_ids=ids,
                                    logprobs=logprobs, text=text, finished=True, reward=reward, outcome=reward,
                                    components={"correct": reward}))
        groups = [list(range(g * size, (g + 1) * size)) for g in range(len(problems))]
        stats = learner.update(episodes, groups)
        assert stats["trained_episodes"] == trained(name, episodes, groups)
        rewards.append(sum(e.reward for e in episodes) / len(episodes))
    if check is not None:
        check(policy)
    return rewards


def trained(name: str, episodes: list[Episode], groups: list[list[int]]) -> int:
    """The episodes an update without a KL term trains on: expert iteration's distinct finished
    winners; GRPO's and RLOO's episodes of groups whose rewards vary (the others' advantage is 0)."""
    if name == "expert_iteration":
        return len({(e.problem.id, tuple(e.completion_ids)) for e in episodes if e.outcome >= 1 and e.finished})
    return sum(len(g) for g in groups if len({episodes[i].reward for i in g}) > 1)


def mean(values: list[float]) -> float:
    return sum(values) / len(values)


def test_grpo_raises_the_reward() -> None:
    rewards = train("grpo", 30)
    assert mean(rewards[:5]) < 0.15
    assert mean(rewards[-5:]) > mean(rewards[:5]) + 0.4


def test_grpo_in_bfloat16_raises_the_reward_and_keeps_float32_weights() -> None:
    """bfloat16 sampling and a mixed-precision update: the sampler's log-probabilities differ
    slightly from the learner's, the clipped ratio absorbs it, and the weights and the Adam
    state stay float32."""
    def float32_state(policy: Policy) -> None:
        assert all(p.dtype == torch.float32 for p in policy.model.parameters())

    rewards = train("grpo", 30, dtype="bfloat16", check=float32_state)
    assert mean(rewards[:5]) < 0.15
    assert mean(rewards[-5:]) > mean(rewards[:5]) + 0.4


def test_entropy_bonus_keeps_the_policy_from_collapsing() -> None:
    """Without the bonus GRPO drives the first token to the rewarded 7 and its entropy towards
    0; with it, the same run ends with the first token's entropy several times higher."""
    def first_token_entropy(policy: Policy) -> float:
        prompts = [policy.prompt_ids(p.prompt) for p in FirstDigitTask().problems(1, 16, "test")]
        ids, attention, predictor, _ = pack(prompts, [[policy.pad_id]] * len(prompts), policy.pad_id, policy.device)
        with torch.no_grad():
            log_softmax = completion_log_softmax(policy.model, ids, attention, predictor)
        return token_entropy(log_softmax)[:, 0].mean().item()

    ended = {}
    for coef in (0.0, 0.5):
        rewards = train("grpo", 30, entropy_coef=coef,
                        check=lambda policy, coef=coef: ended.__setitem__(coef, first_token_entropy(policy)))
        assert mean(rewards[-5:]) > mean(rewards[:5]) + 0.2  # the bonus does not stop the learning
    assert ended[0.5] > 3 * ended[0.0]


def test_rloo_raises_the_reward() -> None:
    rewards = train("rloo", 25)
    assert mean(rewards[-5:]) > mean(rewards[:5]) + 0.3


def test_expert_iteration_raises_the_reward() -> None:
    rewards = train("expert_iteration", 20, lr=1e-2)
    assert mean(rewards[-5:]) > mean(rewards[:5]) + 0.3


def episodes_of_different_lengths(policy: Policy, n: int = 8) -> tuple[list[Episode], torch.Tensor]:
    """`n` sampled episodes with stale 'old' log-probabilities (so ratios differ from 1 and some
    are clipped) and mixed-sign advantages."""
    texts = ["1+2=?", "12+7+30=?", "3=?", "99+1+2+3+4=?"]
    prompts = [policy.prompt_ids(texts[i % len(texts)]) for i in range(n)]
    torch.manual_seed(0)
    # no end-of-sequence: every completion has 12 tokens to cut, whatever the random stream
    samples = sample(policy.model, prompts, eos_ids=set(), pad_id=policy.pad_id, max_new_tokens=12)
    generator = torch.Generator().manual_seed(1)
    episodes = []
    for i, (prompt, ids, logprobs) in enumerate(zip(prompts, samples.completion_ids, samples.logprobs)):
        length = 3 + i  # 3..10 completion tokens
        stale = (torch.tensor(logprobs[:length]) + 0.3 * torch.randn(length, generator=generator)).tolist()
        episodes.append(Episode(problem=Problem(id=str(i), prompt=texts[i % len(texts)], answer="0"),
                                prompt_ids=prompt, completion_ids=ids[:length], logprobs=stale, text="",
                                finished=False))
    advantages = torch.tensor([1.0, -0.5, 2.0, -1.5, 0.3, -0.2, 1.2, -0.8])[:n]
    return episodes, advantages


def loss_and_grad(policy: Policy, episodes: list[Episode], advantages: torch.Tensor, **options):
    """The learner's loss on one packed batch, and the gradient it leaves on the parameters.
    `options`: more of `clipped_policy_loss`'s arguments."""
    ids, attention, predictor, mask = pack([e.prompt_ids for e in episodes], [e.completion_ids for e in episodes],
                                           policy.pad_id, "cpu")
    old = torch.zeros(mask.shape)
    for row, episode in enumerate(episodes):
        old[row, : len(episode.logprobs)] = torch.tensor(episode.logprobs)
    policy.model.zero_grad(set_to_none=True)
    logprobs = completion_logprobs(policy.model, ids, attention, predictor)
    loss, stats = clipped_policy_loss(logprobs, old, advantages, mask, 0.2, 0.28, **options)
    loss.backward()
    grads = torch.cat([p.grad.flatten() for p in policy.model.parameters()])
    return loss.item(), grads, stats


def test_one_batch_equals_the_token_weighted_sum_of_single_episodes() -> None:
    model, tokenizer = tiny_policy(depth=2, seed=0)
    policy = Policy(model.eval(), tokenizer)  # eval: no dropout, though the tiny model has none
    episodes, advantages = episodes_of_different_lengths(policy)
    lengths = torch.tensor([len(e.completion_ids) for e in episodes], dtype=torch.float)
    assert len(set(lengths.tolist())) == len(episodes)
    batch_loss, batch_grad, stats = loss_and_grad(policy, episodes, advantages)
    assert 0 < stats["clip_fraction"] < 1  # both branches of the clip are exercised
    singles = [loss_and_grad(policy, [e], advantages[i : i + 1]) for i, e in enumerate(episodes)]
    weights = lengths / lengths.sum()
    combined_loss = sum(w * loss for w, (loss, _, _) in zip(weights.tolist(), singles))
    combined_grad = sum(w * grad for w, (_, grad, _) in zip(weights.tolist(), singles))
    assert batch_loss == pytest.approx(combined_loss, abs=1e-5)
    assert torch.allclose(batch_grad, combined_grad, atol=1e-5, rtol=1e-4)
    # and it is not the per-episode mean: that would weight short episodes up
    per_episode_mean = mean([loss for loss, _, _ in singles])
    assert abs(batch_loss - per_episode_mean) > 1e-3


def test_length_buckets_split_mixed_lengths_into_sorted_runs_and_keep_equal_ones_whole() -> None:
    lengths = [200, 12, 180, 10, 15, 190, 11, 14] * 4
    runs = length_buckets(lengths, "cpu")
    assert len(runs) > 1
    assert sorted(i for run in runs for i in run) == list(range(len(lengths)))  # every row once
    assert all(lengths[run[-1]] <= lengths[later[0]] for run, later in zip(runs, runs[1:]))
    padded = sum(len(run) * max(lengths[i] for i in run) for run in runs)
    assert padded < 0.6 * len(lengths) * max(lengths)
    assert length_buckets([50] * 32, "cpu") == [list(range(32))]  # nothing to save: one call
    assert length_buckets([], "cpu") == []


def parameters_after(update, runs_of, monkeypatch) -> torch.Tensor:
    """The parameters of a fresh tiny policy after `update(policy)`, with the batch cut into runs
    by `runs_of(lengths)` in place of `length_buckets`."""
    monkeypatch.setattr("shrinkthink.learners.length_buckets", lambda lengths, device: runs_of(lengths))
    model, tokenizer = tiny_policy(depth=2, seed=0)
    policy = Policy(model.eval(), tokenizer)
    update(policy)
    return torch.cat([p.detach().flatten() for p in policy.model.parameters()])


def in_three_runs(lengths: list[int]) -> list[list[int]]:
    order = sorted(range(len(lengths)), key=lengths.__getitem__)
    return [order[:2], order[2:5], order[5:]]


def test_a_batch_run_by_run_updates_the_weights_as_the_whole_batch_does(monkeypatch) -> None:
    """Cut into runs of similar length, the fine-tuning step and the GRPO update leave the
    weights where one call on the whole padded batch leaves them (plain SGD, so a difference in
    the gradient shows in the weights)."""
    def finetune(policy: Policy) -> None:
        episodes, _ = episodes_of_different_lengths(policy)
        optimizer = torch.optim.SGD(policy.model.parameters(), lr=1.0)
        supervised_step(policy, optimizer, [e.prompt_ids for e in episodes], [e.completion_ids for e in episodes],
                        position_span=40.0, generator=torch.Generator().manual_seed(0))

    def grpo(policy: Policy, aggregation: str = "token") -> None:
        episodes, _ = episodes_of_different_lengths(policy)
        for i, episode in enumerate(episodes):
            episode.reward = REWARDS[i]
        config = LearnerConfig(group_size=4, problems_per_step=2, loss_aggregation=aggregation)
        learner = Learner(policy, config, max_new_tokens=12)
        learner.optimizer = torch.optim.SGD(policy.model.parameters(), lr=1.0)
        learner.schedule = torch.optim.lr_scheduler.LambdaLR(learner.optimizer, lambda update: 1.0)
        learner.update(episodes, [[0, 1, 2, 3], [4, 5, 6, 7]])

    by_sequence, by_constant = (lambda policy, a=a: grpo(policy, a) for a in ("sequence", "constant"))
    for update in (finetune, grpo, by_sequence, by_constant):
        start = parameters_after(lambda policy: None, in_three_runs, monkeypatch)
        whole = parameters_after(update, lambda lengths: [list(range(len(lengths)))], monkeypatch)
        runs = parameters_after(update, in_three_runs, monkeypatch)
        assert not torch.allclose(whole, start)
        assert torch.allclose(runs, whole, atol=1e-6, rtol=1e-5)


REWARDS = [1.0, 0.0, 1.0, 1.0, 0.0, 1.0, 0.0, 0.0]  # two groups of 4, each with a signal


def test_the_learner_loss_is_the_whole_batch_loss_for_every_aggregation(monkeypatch) -> None:
    """Cut into three runs, the learner's loss adds up to `clipped_policy_loss` on the whole batch
    under each `loss_aggregation`; on these mixed lengths (3 to 10 tokens) the three differ."""
    monkeypatch.setattr("shrinkthink.learners.length_buckets", lambda lengths, device: in_three_runs(lengths))
    losses = {}
    for aggregation in ("token", "sequence", "constant"):
        model, tokenizer = tiny_policy(depth=2, seed=0)
        policy = Policy(model.eval(), tokenizer)
        episodes, _ = episodes_of_different_lengths(policy)
        for episode, reward in zip(episodes, REWARDS):
            episode.reward = reward
        advantages = group_advantages(torch.tensor(REWARDS).view(2, 4)).flatten()
        expected, _, _ = loss_and_grad(policy, episodes, advantages, aggregation=aggregation, max_tokens=12)
        config = LearnerConfig(group_size=4, problems_per_step=2, loss_aggregation=aggregation)
        learner = Learner(policy, config, max_new_tokens=12)
        losses[aggregation] = learner.update(episodes, [[0, 1, 2, 3], [4, 5, 6, 7]])["loss"]
        assert losses[aggregation] == pytest.approx(expected, abs=1e-6)
    assert min(abs(a - b) for a, b in [(losses["token"], losses["sequence"]), (losses["token"], losses["constant"]),
                                       (losses["sequence"], losses["constant"])]) > 1e-3
    with pytest.raises(ValueError, match="max_new_tokens"):
        Learner(policy, LearnerConfig(loss_aggregation="constant"))


def sampled_groups(policy: Policy, dtype: str = "model") -> tuple[list[Episode], list[list[int]]]:
    """4 groups of 4 completions sampled at the sampler's `dtype`, with the sampler's log-probabilities;
    rewards alternate, so every episode trains."""
    texts = ["1+2=?", "12+7+30=?", "3=?", "99+1+2+3+4=?"]
    prompts = [policy.prompt_ids(t) for t in texts for _ in range(4)]
    torch.manual_seed(0)
    samples = policy.sample(prompts, max_new_tokens=12, dtype=dtype)
    episodes = [Episode(problem=Problem(id=str(i // 4), prompt=texts[i // 4], answer="0"), prompt_ids=prompt,
                        completion_ids=ids, logprobs=logprobs, text="", finished=True, reward=float(i % 2))
                for i, (prompt, ids, logprobs) in enumerate(zip(prompts, samples.completion_ids, samples.logprobs))]
    return episodes, [list(range(g * 4, g * 4 + 4)) for g in range(4)]


def ratio_deviations(monkeypatch) -> list[float]:
    """Filled by each update of the learner: the mean |ratio - 1| over the completion tokens its
    loss sees (the batch in one run: one loss an update)."""
    seen: list[float] = []

    def spy(logprobs, old, advantages, mask, *args, **kwargs):
        seen.append(((logprobs.detach() - old).exp() - 1).abs()[mask].mean().item())
        return clipped_policy_loss(logprobs, old, advantages, mask, *args, **kwargs)

    monkeypatch.setattr("shrinkthink.learners.clipped_policy_loss", spy)
    monkeypatch.setattr("shrinkthink.learners.length_buckets", lambda lengths, device: [list(range(len(lengths)))])
    return seen


def check_the_ratio_starts_at_one(policy: Policy, monkeypatch, sampler_dtype: str = "model",
                                  learner_dtype: str = "model") -> None:
    """Two inner epochs on sampled groups: 1 on every token at the first (float32 rounding is
    1e-7 here; bfloat16's, 5e-4); the logged `ratio_deviation` is that first epoch's, not the
    second's, after the policy moved."""
    episodes, groups = sampled_groups(policy, sampler_dtype)
    deviations = ratio_deviations(monkeypatch)
    config = LearnerConfig(group_size=4, problems_per_step=4, dtype=learner_dtype, inner_epochs=2, lr=1e-2,
                           warmup_steps=0)
    stats = Learner(policy, config, sampler_dtype=sampler_dtype).update(episodes, groups)
    assert len(deviations) == 2
    assert deviations[0] < 1e-5
    assert stats["ratio_deviation"] == pytest.approx(deviations[0], abs=1e-7)
    assert deviations[1] > 1e-3


@pytest.mark.parametrize("sampler_dtype, learner_dtype",
                         [("model", "model"), ("bfloat16", "bfloat16"), ("bfloat16", "model"), ("model", "bfloat16")])
def test_the_ratio_starts_at_one(sampler_dtype: str, learner_dtype: str, monkeypatch) -> None:
    """Before the first update the policy is the sampler's, so is every token's probability. A
    bfloat16 sampler or learner computes them differently: the learner recomputes the old ones."""
    model, tokenizer = tiny_policy(depth=2, seed=0)
    check_the_ratio_starts_at_one(Policy(model, tokenizer), monkeypatch, sampler_dtype, learner_dtype)


def test_lora_dropout_does_not_move_the_ratio_off_one(monkeypatch) -> None:
    """The sampler draws from the model without dropout; with dropout 0.5 on the adapters'
    input, a learner in training mode saw a mean |ratio - 1| of 0.17 before any update."""
    pytest.importorskip("peft")
    config = ModelConfig(kind="tiny", depth=2, lora=LoraConfig(r=4, alpha=8, dropout=0.5))
    policy = Policy.from_config(config, torch.device("cpu"))
    with torch.no_grad():  # peft starts B at zero (a no-op adapter, dropout or not); make the adapters matter
        for name, p in policy.model.named_parameters():
            if "lora_B" in name:
                p.normal_(0, 0.5)
    check_the_ratio_starts_at_one(policy, monkeypatch)


def test_expert_iteration_keeps_correct_winners_under_an_additive_shaping_term() -> None:
    model, tokenizer = tiny_policy(depth=2, seed=0)
    policy = Policy(model, tokenizer)
    episodes, _ = episodes_of_different_lengths(policy)
    for i, episode in enumerate(episodes):
        episode.finished, episode.reasoning_tokens = True, len(episode.completion_ids)
        episode.components = {"correct": float(i % 2 == 0)}
    # every correct transcript pays a length penalty, so no reward reaches the threshold of 1
    apply_criteria([LengthPenalty(0.1, 2.0, 0.5, 1.0)], Batch(episodes, [list(range(8))], FirstDigitTask(), 5.0))
    assert max(e.reward for e in episodes) < 1.0
    stats = Learner(policy, LearnerConfig(name="expert_iteration")).update(episodes, [list(range(8))])
    assert stats["trained_episodes"] == 4  # the four correct ones: correctness decides, not the shaped reward


def test_zero_advantage_groups_are_skipped_unless_a_reference_needs_them() -> None:
    model, tokenizer = tiny_policy(depth=2, seed=0)
    policy = Policy(model, tokenizer)
    episodes, _ = episodes_of_different_lengths(policy)
    for i, episode in enumerate(episodes):
        episode.reward = [1.0, 0.0, 1.0, 1.0, 0.0, 0.0, 0.0, 0.0][i]
    groups = [[0, 1, 2, 3], [4, 5, 6, 7]]  # the second group has no signal
    stats = Learner(policy, LearnerConfig(group_size=4, problems_per_step=2)).update(episodes, groups)
    assert stats["trained_episodes"] == 4
    before = [p.detach().clone() for p in policy.model.parameters()]
    learner = Learner(policy, LearnerConfig(group_size=4, problems_per_step=2, kl_coef=0.1, lr=1e-2, warmup_steps=0))
    stats = learner.update(episodes, groups)
    # the reference is a copy of the policy: k3 of equal log-probabilities is 0 (up to rounding)
    assert stats["trained_episodes"] == 8 and stats["kl"] < 1e-9
    assert any(not torch.equal(b, p) for b, p in zip(before, policy.model.parameters()))
    # the update moved the policy off the reference: k3 = e^x - x - 1 > 0 wherever x != 0
    assert learner.update(episodes, groups)["kl"] > 1e-6


def head_dtypes_of_one_update(dtype: str) -> tuple[Policy, list[torch.dtype]]:
    """The output dtypes of every lm_head forward in one learner update at `dtype`."""
    model, tokenizer = tiny_policy(depth=2, seed=0)
    policy = Policy(model, tokenizer)
    episodes, _ = episodes_of_different_lengths(policy, n=4)
    for i, episode in enumerate(episodes):
        episode.reward = float(i % 2)
    seen: list[torch.dtype] = []
    hook = policy.model.lm_head.register_forward_hook(lambda module, args, out: seen.append(out.dtype))
    Learner(policy, LearnerConfig(group_size=4, problems_per_step=1, dtype=dtype)).update(episodes, [[0, 1, 2, 3]])
    hook.remove()
    return policy, seen


@pytest.mark.parametrize("dtype, expected", [("model", torch.float32), ("bfloat16", torch.bfloat16)])
def test_learner_dtype_runs_the_update_under_autocast(dtype: str, expected: torch.dtype) -> None:
    policy, seen = head_dtypes_of_one_update(dtype)
    # in bfloat16 the old log-probabilities are recomputed first, by the same forward; in float32 not
    assert seen == [expected] * (1 if dtype == "model" else 2)
    assert all(p.dtype == torch.float32 for p in policy.model.parameters())


def test_random_positions_are_sorted_draws_inside_the_span_and_padding_comes_after() -> None:
    attention = torch.tensor([[1, 1, 1, 1, 1, 0, 0], [1, 1, 1, 1, 1, 1, 1]])
    positions = random_positions(attention, 20.0, torch.Generator().manual_seed(0))
    again = random_positions(attention, 20.0, torch.Generator().manual_seed(0))
    other = random_positions(attention, 20.0, torch.Generator().manual_seed(1))
    assert torch.equal(positions, again) and not torch.equal(positions, other)
    real = positions[0, :5]
    assert torch.all(real[1:] > real[:-1]) and real.min() >= 0 and real.max() < 20
    assert torch.all(positions[1, 1:] > positions[1, :-1]) and positions[1].max() < 20
    assert torch.all(positions[0, 5:] >= 20)


def second_character_accuracy(span: float | None, seed: int = 0) -> tuple[float, float]:
    """Train on "name the second character of a 3-8 letter string", then score 3-8 letters and
    16-24 letters: the answer sits at a fixed place, so the model must find it by position."""
    model, tokenizer = tiny_policy(depth=2, seed=seed)
    policy = Policy(model, tokenizer)
    optimizer = make_optimizer(policy, 3e-3)
    rng, generator = random.Random(seed), torch.Generator().manual_seed(seed)

    def example(low: int, high: int) -> tuple[str, str]:
        letters = "".join(rng.choice("abcdefgh") for _ in range(rng.randint(low, high)))
        return letters + "?", letters[1]

    for _ in range(1050):
        batch = [example(3, 8) for _ in range(32)]
        supervised_step(policy, optimizer, [policy.prompt_ids(q) for q, _ in batch],
                        [policy.completion_ids(a) for _, a in batch], position_span=span, generator=generator)

    def accuracy(low: int, high: int) -> float:
        tests = [example(low, high) for _ in range(100)]
        samples = policy.sample([policy.prompt_ids(q) for q, _ in tests], max_new_tokens=3, greedy=True)
        return mean([float(policy.decode(ids).strip() == a) for (_, a), ids in zip(tests, samples.completion_ids)])

    return accuracy(3, 8), accuracy(16, 24)


def test_random_positions_carry_a_positional_lookup_past_the_training_lengths() -> None:
    """0, 1, 2, ... never reached 16-24 letters: what a model makes of those distances depends
    on its seed and machine (0.0 to 0.98 over seeds 0-4; 1/8 by chance). Drawn positions on
    [0, 30) had put tokens that far apart, and the character is found there too. Drawn positions
    learn the short strings more slowly (on an AMD EPYC, seed 0 sat at 0.42 after 700 steps and
    reached 0.93 by 1050), so each model gets 1050 steps, and one seed's long-string figure swings
    with rounding (0.2 to 0.74 for drawn seed 0 under two matmul libraries): the claims are means
    over five seeds (there: drawn 0.80-0.95, usual 0.28-0.42; a run at this learning rate can
    also stall on the short strings, as usual seed 3 did at 0.43 once)."""
    usual, drawn = zip(*[(second_character_accuracy(None, seed), second_character_accuracy(30.0, seed))
                         for seed in range(5)])
    assert mean([short for short, _ in usual]) >= 0.8 and mean([short for short, _ in drawn]) >= 0.8
    assert mean([long for _, long in drawn]) >= 0.7
    assert mean([long for _, long in usual]) <= mean([long for _, long in drawn]) - 0.25


@pytest.mark.parametrize("flags, expected", [("fpu sse avx2 avx512f amx_bf16 amx_tile", torch.bfloat16),
                                             ("fpu sse avx2 avx512f avx512_bf16", torch.bfloat16),
                                             ("fpu sse avx2 fma", torch.float32)])
def test_auto_dtype_is_bfloat16_only_on_a_cpu_with_bfloat16_units(flags: str, expected: torch.dtype, tmp_path,
                                                                  monkeypatch) -> None:
    import shrinkthink.policy as policy_module

    cpuinfo = tmp_path / "cpuinfo"
    cpuinfo.write_text(f"processor\t: 0\nflags\t\t: {flags}\n")
    real_path = policy_module.Path
    monkeypatch.setattr(policy_module, "Path", lambda p: real_path(cpuinfo) if p == "/proc/cpuinfo" else real_path(p))
    _, seen = head_dtypes_of_one_update("auto")
    assert seen[-1] == expected
    assert policy_module.compute_dtype("auto", torch.device("cpu")) == ("model" if expected == torch.float32
                                                                        else "bfloat16")
    assert policy_module.compute_dtype("model", torch.device("cpu")) == "model"
