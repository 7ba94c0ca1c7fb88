"""The math of the policy-gradient learners as pure functions of tensors, unit-tested on
hand-computed values (tests/test_losses.py)."""

from __future__ import annotations

import torch

SCALES = ("group", "batch", "none")  # `LearnerConfig.scale_rewards`


def group_advantages(rewards: torch.Tensor, scale: str = "group", eps: float = 1e-4) -> torch.Tensor:
    """GRPO advantages (Shao et al. 2024, DeepSeekMath eq. 3): each reward minus its group's mean,
    divided by

    - "group": the group's std (GRPO). Inside a group whose answers are all correct, an additive
      shaping term is then rescaled to order one whatever its weight: a length penalty of
      lambda 1e-3 moves the policy as hard as lambda 1;
    - "batch": the std of every reward in the batch (TRL's `scale_rewards="batch"`, DLER, Liu et al.
      2025), one scale for all groups, so a shaping term keeps its size against correctness;
    - "none": nothing (Dr. GRPO, Liu et al. 2025, which also removes the bias towards easy and
      impossible questions): a term's weight is its advantage.

    rewards: [groups, G] → advantages [groups, G]. A group whose rewards are all equal gets 0.
    """
    if scale not in SCALES:
        raise ValueError(f"scale must be one of {SCALES}, got {scale!r}")
    centred = rewards - rewards.mean(dim=1, keepdim=True)
    if scale == "none":
        return centred
    if scale == "batch":
        return centred / (rewards.std(unbiased=True) + eps)
    return centred / (rewards.std(dim=1, keepdim=True, unbiased=True) + eps)


def rloo_advantages(rewards: torch.Tensor) -> torch.Tensor:
    """REINFORCE leave-one-out (Ahmadian et al. 2024): each reward minus the mean of the other
    G-1 rewards of its group. rewards: [groups, G]."""
    size = rewards.shape[1]
    others_mean = (rewards.sum(dim=1, keepdim=True) - rewards) / (size - 1)
    return rewards - others_mean


AGGREGATIONS = ("token", "sequence", "constant")  # `LearnerConfig.loss_aggregation`


def aggregation_weights(mask: torch.Tensor, aggregation: str = "token", tokens: int | None = None,
                        sequences: int | None = None, max_tokens: int | None = None) -> torch.Tensor:
    """The weight [B, T] of each token's loss in a batch's loss (0 on padding):

    - "token": 1 / tokens, the batch's token-level mean (DAPO, Yu et al. 2025), so long
      completions are not down-weighted;
    - "sequence": 1 / (sequences * |o_i|), each completion's mean, then the mean over completions
      (GRPO, Shao et al. 2024, eq. 3);
    - "constant": 1 / (sequences * max_tokens), a sum over tokens divided by a constant (Dr. GRPO,
      Liu et al. 2025, arXiv 2503.20783), so a completion's length does not rescale its own gradient.

    `tokens`, `sequences`: the whole batch's counts when `mask` is a part of it (default: the
    mask's); a row's length |o_i| is its own. The parts' weights are then the whole batch's rows'.
    """
    mask = mask.to(torch.float32)
    if aggregation == "token":
        return mask / (mask.sum().clamp(min=1) if tokens is None else tokens)
    sequences = mask.shape[0] if sequences is None else sequences
    if aggregation == "sequence":
        return mask / (mask.sum(1, keepdim=True).clamp(min=1) * sequences)
    if aggregation == "constant":
        if max_tokens is None:
            raise ValueError("the 'constant' aggregation needs max_tokens (the sampler's max_new_tokens)")
        return mask / (sequences * max_tokens)
    raise ValueError(f"aggregation: {aggregation!r} is none of {AGGREGATIONS}")


def clipped_policy_loss(
    logprobs: torch.Tensor,
    old_logprobs: torch.Tensor,
    advantages: torch.Tensor,
    mask: torch.Tensor,
    clip_low: float = 0.2,
    clip_high: float = 0.2,
    ref_logprobs: torch.Tensor | None = None,
    kl_coef: float = 0.0,
    entropy: torch.Tensor | None = None,
    entropy_coef: float = 0.0,
    tokens: int | None = None,
    aggregation: str = "token",
    sequences: int | None = None,
    max_tokens: int | None = None,
) -> tuple[torch.Tensor, dict[str, float]]:
    """PPO's clipped surrogate (Schulman et al. 2017) per token, aggregated over the batch as
    `aggregation_weights` says (default the token-level mean of DAPO, Yu et al. 2025). Asymmetric
    clip range is DAPO's clip-higher. With `kl_coef`, adds the k3 estimator of KL(policy ||
    reference) per token, as GRPO does. With `entropy_coef`, subtracts that multiple of each
    token's entropy (an entropy bonus, as in PPO), which holds off the collapse to a
    near-deterministic policy that leaves every group of samples alike.

    logprobs, old_logprobs, ref_logprobs, entropy, mask: [B, T]; advantages: [B]. `tokens`,
    `sequences`: the whole batch's counts when this is a part of it (the part's loss is then its
    share of the whole batch's, and the parts' losses add up to it; the statistics, token means
    whatever the aggregation, are shares too). `max_tokens`: the "constant" aggregation's length.
    The statistic `ratio_deviation`, the mean |ratio - 1|, is 0 up to rounding before any update
    when `old_logprobs` come from the learner's own computation.
    """
    weights = aggregation_weights(mask, aggregation, tokens, sequences, max_tokens).to(logprobs.dtype)
    mask = mask.to(logprobs.dtype)
    ratio = torch.exp(logprobs - old_logprobs)
    adv = advantages[:, None]
    unclipped = ratio * adv
    clipped = ratio.clamp(1 - clip_low, 1 + clip_high) * adv
    per_token = -torch.minimum(unclipped, clipped)
    tokens = mask.sum().clamp(min=1) if tokens is None else tokens
    stats = {"clip_fraction": float(((unclipped > clipped).to(mask.dtype) * mask).sum() / tokens),
             "ratio_deviation": float(((ratio.detach() - 1).abs() * mask).sum() / tokens)}
    if ref_logprobs is not None and kl_coef > 0:
        log_ratio = ref_logprobs - logprobs
        kl = torch.exp(log_ratio) - log_ratio - 1
        per_token = per_token + kl_coef * kl
        stats["kl"] = float((kl.detach() * mask).sum() / tokens)
    if entropy is not None and entropy_coef > 0:
        per_token = per_token - entropy_coef * entropy
        stats["entropy"] = float((entropy.detach() * mask).sum() / tokens)
    loss = (per_token * weights).sum()
    return loss, stats


def token_cross_entropy(logits: torch.Tensor, targets: torch.Tensor, mask: torch.Tensor,
                        tokens: int | None = None) -> torch.Tensor:
    """Mean next-token cross-entropy over the masked target positions (supervised fine-tuning).
    logits: [B, T, V] predicting targets [B, T]. `tokens`: divide by this count instead of the
    mask's (a part of a batch contributing its share of the whole batch's mean)."""
    losses = torch.nn.functional.cross_entropy(logits.transpose(1, 2), targets, reduction="none")
    mask = mask.to(losses.dtype)
    return (losses * mask).sum() / (mask.sum().clamp(min=1) if tokens is None else tokens)
