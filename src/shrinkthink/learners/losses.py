"""The math of the policy-gradient learners as pure functions of tensors, unit-tested on
hand-computed values (tests/test_losses.py)."""

from __future__ import annotations

import torch


def group_advantages(rewards: torch.Tensor, scale_by_std: bool = True, eps: float = 1e-4) -> torch.Tensor:
    """GRPO advantages (Shao et al. 2024, DeepSeekMath eq. 3): each reward minus its group's mean,
    divided by the group's std unless `scale_by_std` is off (Dr. GRPO, Liu et al. 2025, drops it
    to remove the bias towards easy and impossible questions).

    rewards: [groups, G] → advantages [groups, G]. A group whose rewards are all equal gets 0.
    """
    centred = rewards - rewards.mean(dim=1, keepdim=True)
    if not scale_by_std:
        return centred
    return centred / (rewards.std(dim=1, keepdim=True, unbiased=True) + eps)


def rloo_advantages(rewards: torch.Tensor) -> torch.Tensor:
    """REINFORCE leave-one-out (Ahmadian et al. 2024): each reward minus the mean of the other
    G-1 rewards of its group. rewards: [groups, G]."""
    size = rewards.shape[1]
    others_mean = (rewards.sum(dim=1, keepdim=True) - rewards) / (size - 1)
    return rewards - others_mean


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
) -> tuple[torch.Tensor, dict[str, float]]:
    """PPO's clipped surrogate (Schulman et al. 2017) per token, averaged over all completion
    tokens of the batch (token-level loss, DAPO, Yu et al. 2025), so long completions are not
    down-weighted. Asymmetric clip range is DAPO's clip-higher. With `kl_coef`, adds the k3
    estimator of KL(policy || reference) per token, as GRPO does. With `entropy_coef`, subtracts
    that multiple of each token's entropy (an entropy bonus, as in PPO), which holds off the
    collapse to a near-deterministic policy that leaves every group of samples alike.

    logprobs, old_logprobs, ref_logprobs, entropy, mask: [B, T]; advantages: [B]. `tokens`: divide
    by this count instead of the mask's (a part of a batch contributing its share of the whole
    batch's mean; the statistics are shares too, and add up across the parts).
    """
    mask = mask.to(logprobs.dtype)
    ratio = torch.exp(logprobs - old_logprobs)
    adv = advantages[:, None]
    unclipped = ratio * adv
    clipped = ratio.clamp(1 - clip_low, 1 + clip_high) * adv
    per_token = -torch.minimum(unclipped, clipped)
    tokens = mask.sum().clamp(min=1) if tokens is None else tokens
    stats = {"clip_fraction": float(((unclipped > clipped).to(mask.dtype) * mask).sum() / tokens)}
    if ref_logprobs is not None and kl_coef > 0:
        log_ratio = ref_logprobs - logprobs
        kl = torch.exp(log_ratio) - log_ratio - 1
        per_token = per_token + kl_coef * kl
        stats["kl"] = float((kl.detach() * mask).sum() / tokens)
    if entropy is not None and entropy_coef > 0:
        per_token = per_token - entropy_coef * entropy
        stats["entropy"] = float((entropy.detach() * mask).sum() / tokens)
    loss = (per_token * mask).sum() / tokens
    return loss, stats


def token_cross_entropy(logits: torch.Tensor, targets: torch.Tensor, mask: torch.Tensor,
                        tokens: int | None = None) -> torch.Tensor:
    """Mean next-token cross-entropy over the masked target positions (supervised fine-tuning).
    logits: [B, T, V] predicting targets [B, T]. `tokens`: divide by this count instead of the
    mask's (a part of a batch contributing its share of the whole batch's mean)."""
    losses = torch.nn.functional.cross_entropy(logits.transpose(1, 2), targets, reduction="none")
    mask = mask.to(losses.dtype)
    return (losses * mask).sum() / (mask.sum().clamp(min=1) if tokens is None else tokens)
