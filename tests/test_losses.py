"""The learners' math on hand-computed values: GRPO and RLOO advantages, the clipped token-level
surrogate (both sides of the clip range, both signs of advantage), its three aggregations over a
batch and their shares of a split one, the k3 KL term, the entropy bonus, and the supervised
cross-entropy."""

from __future__ import annotations

import math

import pytest
import torch

from shrinkthink.learners.batch import token_entropy
from shrinkthink.learners.losses import (
    aggregation_weights,
    clipped_policy_loss,
    group_advantages,
    rloo_advantages,
    token_cross_entropy,
)


def test_group_advantages_scaled_by_std() -> None:
    rewards = torch.tensor([[1.0, 0.0, 0.0, 1.0], [2.0, 0.0, 1.0, 1.0]])
    # group 0: mean 0.5, unbiased std sqrt(1/3); group 1: mean 1, unbiased std sqrt(2/3)
    expected = torch.tensor([
        [0.5, -0.5, -0.5, 0.5],
        [1.0, -1.0, 0.0, 0.0],
    ]) / torch.tensor([[math.sqrt(1 / 3) + 1e-4], [math.sqrt(2 / 3) + 1e-4]])
    assert torch.allclose(group_advantages(rewards), expected, atol=1e-6)


def test_group_advantages_without_std_are_centred_rewards() -> None:
    rewards = torch.tensor([[1.0, 0.0, 0.0, 0.0], [3.0, 1.0, 2.0, 2.0]])
    expected = torch.tensor([[0.75, -0.25, -0.25, -0.25], [1.0, -1.0, 0.0, 0.0]])
    assert torch.allclose(group_advantages(rewards, scale="none"), expected)


def test_batch_scaled_advantages_divide_by_the_whole_batchs_std() -> None:
    rewards = torch.tensor([[1.0, 0.0, 0.0, 0.0], [3.0, 1.0, 2.0, 2.0]])
    # the eight rewards: mean 9/8, unbiased std sqrt((sum of squares 19 - 8 * (9/8)^2) / 7)
    std = math.sqrt((19 - 8 * (9 / 8) ** 2) / 7)
    expected = torch.tensor([[0.75, -0.25, -0.25, -0.25], [1.0, -1.0, 0.0, 0.0]]) / (std + 1e-4)
    assert torch.allclose(group_advantages(rewards, scale="batch"), expected, atol=1e-6)


def shaped_rewards(lam: float) -> torch.Tensor:
    """Rewards of two groups under a length penalty `lam * tokens / 20`: group 0 all correct
    (10, 20, 30, 40 tokens), group 1 half correct (correct: 20 and 20 tokens)."""
    group0 = [1.0 - lam * n / 20 for n in (10, 20, 30, 40)]
    group1 = [1.0 - lam * 20 / 20, 0.0, 1.0 - lam * 20 / 20, 0.0]
    return torch.tensor([group0, group1])


def test_a_tiny_length_penalty_is_tiny_unless_advantages_are_scaled_per_group() -> None:
    def all_correct_group(lam: float, scale: str) -> torch.Tensor:
        return group_advantages(shaped_rewards(lam), scale=scale)[0]

    # no scaling: the all-correct group's advantages are -lam * (tokens - 25) / 20, a thousandth for 1e-3
    assert torch.allclose(all_correct_group(1.0, "none"), torch.tensor([0.75, 0.25, -0.25, -0.75]))
    assert torch.allclose(all_correct_group(1e-3, "none"), 1e-3 * all_correct_group(1.0, "none"), atol=1e-6)
    # one scale for the batch: the half-correct group sets it, so lambda keeps its size
    ratio = all_correct_group(1e-3, "batch") / all_correct_group(1.0, "batch")
    assert torch.all((ratio > 0.5e-3) & (ratio < 2e-3)), ratio
    # per-group scaling: lambda 1e-3 pushes about as hard as lambda 1 (the defect config.py rejects)
    ratio = all_correct_group(1e-3, "group") / all_correct_group(1.0, "group")
    assert torch.all(ratio > 0.5), ratio


@pytest.mark.parametrize("scale", ["group", "batch", "none"])
def test_group_of_equal_rewards_gets_zero_advantage(scale: str) -> None:
    rewards = torch.tensor([[1.0, 1.0, 1.0], [0.0, 0.0, 0.0], [0.5, 0.5, 0.5]])
    advantages = group_advantages(rewards, scale=scale)
    assert torch.equal(advantages, torch.zeros_like(rewards))


def test_rloo_advantages_subtract_the_mean_of_the_others() -> None:
    rewards = torch.tensor([[1.0, 0.0, 0.0, 0.0], [1.0, 2.0, 3.0, 6.0]])
    # row 1: others' means are 11/3, 10/3, 3, 2
    expected = torch.tensor([
        [1.0, -1 / 3, -1 / 3, -1 / 3],
        [1 - 11 / 3, 2 - 10 / 3, 0.0, 4.0],
    ])
    assert torch.allclose(rloo_advantages(rewards), expected, atol=1e-6)
    assert torch.equal(rloo_advantages(torch.ones(2, 5)), torch.zeros(2, 5))


def ratios_as_logprobs(ratios: list[list[float]]) -> tuple[torch.Tensor, torch.Tensor]:
    """New and old log-probabilities whose ratio is `ratios` (old = log 0.5 everywhere)."""
    old = torch.full((len(ratios), len(ratios[0])), math.log(0.5))
    new = (old + torch.tensor(ratios).log()).requires_grad_(True)
    return new, old


def test_clipped_loss_hand_values_inside_and_outside_the_clip_range() -> None:
    # row 0, advantage +1: ratio 1.1 (inside), 1.5 (above 1+0.28: clipped), 0.5 (below 0.8: the
    #   min keeps the unclipped 0.5).
    # row 1, advantage -1, two real tokens: ratio 1.5 (the min keeps -1.5), 0.5 (clipped to 0.8);
    #   its third token is padding with a wild ratio that must not count.
    new, old = ratios_as_logprobs([[1.1, 1.5, 0.5], [1.5, 0.5, 100.0]])
    mask = torch.tensor([[1, 1, 1], [1, 1, 0]], dtype=torch.bool)
    advantages = torch.tensor([1.0, -1.0])
    loss, stats = clipped_policy_loss(new, old, advantages, mask, clip_low=0.2, clip_high=0.28)
    per_token = [-1.1, -1.28, -0.5, 1.5, 0.8]
    assert loss.item() == pytest.approx(sum(per_token) / 5, abs=1e-6)
    assert stats["clip_fraction"] == pytest.approx(2 / 5)
    assert stats["ratio_deviation"] == pytest.approx((0.1 + 0.5 + 0.5 + 0.5 + 0.5) / 5)  # not the padding's 99
    assert "kl" not in stats

    # A clipped token passes no gradient; an unclipped one passes -A * ratio / tokens.
    loss.backward()
    expected_grad = torch.tensor([[-1.1, 0.0, -0.5], [1.5, 0.0, 0.0]]) / 5
    assert torch.allclose(new.grad, expected_grad, atol=1e-6)


def test_symmetric_clip_range() -> None:
    new, old = ratios_as_logprobs([[1.25, 0.75]])
    mask = torch.ones(1, 2, dtype=torch.bool)
    loss, stats = clipped_policy_loss(new, old, torch.tensor([2.0]), mask, clip_low=0.2, clip_high=0.2)
    # 1.25 is clipped to 1.2; 0.75 stays (min of 0.75 and 0.8)
    assert loss.item() == pytest.approx(-(2 * 1.2 + 2 * 0.75) / 2, abs=1e-6)
    assert stats["clip_fraction"] == pytest.approx(0.5)


def test_loss_is_a_token_level_mean_not_a_mean_of_sequence_means() -> None:
    # ratio 1 everywhere: row 0 has 3 tokens at advantage +1, row 1 one token at -1.
    new, old = ratios_as_logprobs([[1.0, 1.0, 1.0], [1.0, 1.0, 1.0]])
    mask = torch.tensor([[1, 1, 1], [1, 0, 0]], dtype=torch.bool)
    loss, stats = clipped_policy_loss(new, old, torch.tensor([1.0, -1.0]), mask)
    assert loss.item() == pytest.approx((-3 + 1) / 4)  # a per-sequence mean would give 0
    assert stats["clip_fraction"] == 0.0


# Three completions of 3, 1 and 2 tokens at ratio 1 (one padded column after row 1's token, two
# after row 2's); advantages +1, -1, +0.5, so the token losses are -1 -1 -1 | +1 | -0.5 -0.5.
LENGTHS_MASK = torch.tensor([[1, 1, 1], [1, 0, 0], [1, 1, 0]], dtype=torch.bool)
MIXED_ADVANTAGES = torch.tensor([1.0, -1.0, 0.5])
# token: (-3 + 1 - 1) / 6 tokens; sequence: (-3/3 + 1/1 - 1/2) / 3 sequences;
# constant: (-3 + 1 - 1) / (3 sequences * max_tokens 4)
AGGREGATED = {"token": -3 / 6, "sequence": -0.5 / 3, "constant": -3 / 12}


@pytest.mark.parametrize("aggregation", ["token", "sequence", "constant"])
def test_loss_aggregations_hand_values(aggregation: str) -> None:
    new, old = ratios_as_logprobs([[1.0] * 3] * 3)
    loss, stats = clipped_policy_loss(new, old, MIXED_ADVANTAGES, LENGTHS_MASK, aggregation=aggregation, max_tokens=4)
    assert loss.item() == pytest.approx(AGGREGATED[aggregation], abs=1e-6)
    assert stats["ratio_deviation"] == 0.0
    # each token's gradient is -A * ratio times its weight: Dr. GRPO's is the same 1/12 in every row
    loss.backward()
    weights = {"token": torch.full((3, 1), 1 / 6), "sequence": torch.tensor([[1 / 9], [1 / 3], [1 / 6]]),
               "constant": torch.full((3, 1), 1 / 12)}[aggregation]
    expected = -MIXED_ADVANTAGES[:, None] * weights * LENGTHS_MASK
    assert torch.allclose(new.grad, expected, atol=1e-6)


@pytest.mark.parametrize("aggregation", ["token", "sequence", "constant"])
def test_the_parts_of_a_split_batch_add_up_to_its_loss(aggregation: str) -> None:
    """As the learner runs a minibatch: rows {0} and {1, 2} apart, each told the whole batch's
    counts (6 tokens, 3 sequences), give losses and statistics that add up to the whole batch's.
    The ratios differ from 1 (some clipped) so the statistics are not 0."""
    new, old = ratios_as_logprobs([[1.1, 1.5, 0.5], [1.5, 2.0, 2.0], [0.9, 0.5, 3.0]])
    whole, whole_stats = clipped_policy_loss(new, old, MIXED_ADVANTAGES, LENGTHS_MASK, 0.2, 0.28,
                                             aggregation=aggregation, max_tokens=4)
    parts = [clipped_policy_loss(new[rows], old[rows], MIXED_ADVANTAGES[rows], LENGTHS_MASK[rows], 0.2, 0.28,
                                 tokens=6, aggregation=aggregation, sequences=3, max_tokens=4)
             for rows in ([0], [1, 2])]
    # token losses: row 0: -1.1, -1.28, -0.5; row 1: 1.5; row 2: -0.45, -0.25
    rows = [-1.1 - 1.28 - 0.5, 1.5, -0.45 - 0.25]
    expected = {"token": sum(rows) / 6, "sequence": (rows[0] / 3 + rows[1] + rows[2] / 2) / 3,
                "constant": sum(rows) / 12}[aggregation]
    assert whole.item() == pytest.approx(expected, abs=1e-6)
    assert sum(loss.item() for loss, _ in parts) == pytest.approx(whole.item(), abs=1e-6)
    for key in ("clip_fraction", "ratio_deviation"):
        assert sum(stats[key] for _, stats in parts) == pytest.approx(whole_stats[key], abs=1e-6)
    assert whole_stats["clip_fraction"] == pytest.approx(1 / 6)  # row 0's 1.5 (row 2's 0.5 keeps the unclipped)
    assert whole_stats["ratio_deviation"] == pytest.approx((0.1 + 0.5 + 0.5 + 0.5 + 0.1 + 0.5) / 6)


def test_aggregation_weights_need_a_length_for_the_constant() -> None:
    with pytest.raises(ValueError, match="max_tokens"):
        aggregation_weights(LENGTHS_MASK, "constant")
    with pytest.raises(ValueError, match="aggregation"):
        aggregation_weights(LENGTHS_MASK, "median")


def test_k3_kl_term() -> None:
    # policy p = 0.5, reference q = 0.25 on one token: k3 = q/p - log(q/p) - 1
    logprobs = torch.tensor([[math.log(0.5), math.log(0.5)]])
    reference = torch.tensor([[math.log(0.25), math.log(0.5)]])
    mask = torch.tensor([[1, 1]], dtype=torch.bool)
    k3 = 0.5 - math.log(0.5) - 1  # second token: p == q, k3 = 0
    zero = torch.zeros(1)  # no policy-gradient term: only the KL remains
    loss, stats = clipped_policy_loss(logprobs, logprobs, zero, mask, ref_logprobs=reference, kl_coef=0.1)
    assert stats["kl"] == pytest.approx(k3 / 2, abs=1e-6)
    assert loss.item() == pytest.approx(0.1 * k3 / 2, abs=1e-6)

    loss, stats = clipped_policy_loss(logprobs, logprobs, zero, mask, ref_logprobs=reference, kl_coef=0.0)
    assert loss.item() == 0.0 and "kl" not in stats


def test_kl_adds_to_the_policy_term() -> None:
    new, old = ratios_as_logprobs([[1.1]])
    reference = old + math.log(2.0)  # q/p = 2/1.1
    mask = torch.ones(1, 1, dtype=torch.bool)
    loss, _ = clipped_policy_loss(new, old, torch.tensor([1.0]), mask, ref_logprobs=reference, kl_coef=0.5)
    q_over_p = 2 / 1.1
    assert loss.item() == pytest.approx(-1.1 + 0.5 * (q_over_p - math.log(q_over_p) - 1), abs=1e-5)


def test_entropy_bonus_subtracts_the_token_mean_entropy() -> None:
    # uniform over 4 entries: log 4 nats; one-hot: 0 nats; the padded position does not count
    log_softmax = torch.log(torch.tensor([[[0.25] * 4, [1.0, 0.0, 0.0, 0.0], [0.25] * 4]]))
    entropy = token_entropy(log_softmax)
    assert entropy[0, 0].item() == pytest.approx(math.log(4))
    assert entropy[0, 1].item() == pytest.approx(0.0)  # 0 * log 0 taken as 0, not nan
    mask = torch.tensor([[1, 1, 0]], dtype=torch.bool)
    logprobs = torch.zeros(1, 3)
    zero = torch.zeros(1)  # no policy-gradient term: only the bonus remains
    loss, stats = clipped_policy_loss(logprobs, logprobs, zero, mask, entropy=entropy, entropy_coef=0.1)
    assert stats["entropy"] == pytest.approx(math.log(4) / 2)
    assert loss.item() == pytest.approx(-0.1 * math.log(4) / 2)
    loss, stats = clipped_policy_loss(logprobs, logprobs, zero, mask, entropy=entropy, entropy_coef=0.0)
    assert loss.item() == 0.0 and "entropy" not in stats


def test_token_cross_entropy_matches_torch_on_the_masked_positions() -> None:
    generator = torch.Generator().manual_seed(0)
    logits = torch.randn(3, 5, 11, generator=generator)
    targets = torch.randint(0, 11, (3, 5), generator=generator)
    mask = torch.tensor([[1, 1, 1, 1, 1], [1, 1, 0, 0, 0], [0, 1, 1, 0, 0]], dtype=torch.bool)
    expected = torch.nn.functional.cross_entropy(logits[mask], targets[mask])
    assert torch.allclose(token_cross_entropy(logits, targets, mask), expected, atol=1e-6)
    # unmasked targets do not matter
    scrambled = targets.masked_fill(~mask, 3)
    assert torch.allclose(token_cross_entropy(logits, scrambled, mask), expected, atol=1e-6)
