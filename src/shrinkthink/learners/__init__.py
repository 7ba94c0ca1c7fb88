"""Learners turn scored episodes into a policy update.

- `grpo`: group-normalised advantages, clipped importance ratio over `inner_epochs`, a token-level
  loss (or GRPO's per-sequence mean, or Dr. GRPO's constant normaliser: `loss_aggregation`),
  optional KL to the frozen stage-start policy (DeepSeekMath; DAPO's clip-higher).
- `rloo`: the same update with REINFORCE leave-one-out advantages.
- `expert_iteration`: keep the verified winners and fine-tune on them (STaR, Zelikman et al. 2022;
  ReST-EM, Singh et al. 2023).
"""

from __future__ import annotations

import contextlib
import copy
from collections.abc import Iterator

import torch

from shrinkthink import distributed
from shrinkthink.config import LearnerConfig
from shrinkthink.learners.batch import (
    completion_log_softmax,
    completion_logits,
    completion_logprobs,
    length_buckets,
    pack,
    random_positions,
    token_entropy,
    token_logprobs,
)
from shrinkthink.learners.losses import (
    clipped_policy_loss,
    group_advantages,
    rloo_advantages,
    token_cross_entropy,
)
from shrinkthink.learners.onednn import onednn_linears
from shrinkthink.policy import Policy, compute_dtype
from shrinkthink.records import Episode


def supervised_step(policy: Policy, optimizer, prompts: list[list[int]], targets: list[list[int]],
                    max_grad_norm: float = 1.0, position_span: float | None = None,
                    generator: torch.Generator | None = None) -> float:
    """One fine-tuning step on (prompt, target completion) pairs; loss on the completion only,
    averaged over the batch's target tokens. The batch runs in runs of similar length
    (`length_buckets`), each adding its share to one gradient. `position_span`: randomised
    positions on [0, span) (`batch.random_positions`), drawn from `generator` for the whole batch."""
    lengths = [len(p) + len(t) for p, t in zip(prompts, targets)]
    positions = None
    if position_span is not None:
        width = max(lengths)
        attention = (torch.arange(width)[None, :] < torch.tensor(lengths)[:, None]).long()
        positions = random_positions(attention, position_span, generator)
    tokens = max(1, sum(len(t) for t in targets))
    optimizer.zero_grad(set_to_none=True)
    total = 0.0
    mine = distributed.balanced(lengths)  # on several ranks, this rank's rows; else all of them
    with onednn_linears(policy.model):
        for run in length_buckets([lengths[i] for i in mine], policy.device):
            run = [mine[j] for j in run]
            ids, attention, predictor, mask = pack([prompts[i] for i in run], [targets[i] for i in run],
                                                   policy.pad_id, policy.device)
            run_positions = None if positions is None else positions[run, : ids.shape[1]].to(policy.device)
            logits = completion_logits(policy.model, ids, attention, predictor, run_positions)
            target_ids = ids.gather(1, (predictor + 1).clamp(max=ids.shape[1] - 1))
            loss = token_cross_entropy(logits.float(), target_ids, mask, tokens)
            loss.backward()
            total += loss.item()
    (total,) = distributed.sync_gradients(policy.model.parameters(), [total])
    torch.nn.utils.clip_grad_norm_(policy.model.parameters(), max_grad_norm)
    optimizer.step()
    return total


@contextlib.contextmanager
def without_dropout(model: torch.nn.Module) -> Iterator[None]:
    """Every `nn.Dropout` module in eval mode (an identity) for the block, the rest as it is."""
    dropouts = [m for m in model.modules() if isinstance(m, torch.nn.Dropout) and m.training]
    for module in dropouts:
        module.eval()
    try:
        yield
    finally:
        for module in dropouts:
            module.train()


def make_optimizer(policy: Policy, lr: float) -> torch.optim.Optimizer:
    # The fused kernel updates every tensor in one call; the default CPU path loops in Python,
    # which on a small model costs as much as the backward pass.
    parameters = [p for p in policy.model.parameters() if p.requires_grad]
    fused = all(p.dtype in (torch.float32, torch.bfloat16, torch.float16) for p in parameters)
    return torch.optim.AdamW(parameters, lr=lr, betas=(0.9, 0.99), weight_decay=0.0, fused=fused)


class Learner:
    """Updates a policy from groups of episodes: `groups[i]` holds the indices of the G episodes
    sampled for one problem."""

    def __init__(self, policy: Policy, config: LearnerConfig, temperature: float = 1.0, *,
                 max_new_tokens: int | None = None, sampler_dtype: str = "model") -> None:
        """`temperature`, `max_new_tokens`, `sampler_dtype`: the sampler's (`Sampling`); the length
        is the normaliser of the "constant" `loss_aggregation`."""
        if config.loss_aggregation == "constant" and max_new_tokens is None:
            raise ValueError("learner.loss_aggregation 'constant' needs the sampler's max_new_tokens")
        self.policy = policy
        self.config = config
        self.temperature = temperature
        self.max_new_tokens = max_new_tokens
        # The sampler's log-probabilities are the learner's up to float32 rounding only when both
        # compute in float32; bfloat16 on either side (a bfloat16 sampler's weight copies, the
        # learner's autocast, bfloat16 weights) differs by bfloat16 rounding, which the clipped
        # ratio would read as a policy change. Then the old log-probabilities are recomputed by
        # the learner's own forward: one more forward pass an update, paid only here.
        self.dtype = compute_dtype(config.dtype, policy.device)
        self.recompute_old = (compute_dtype(sampler_dtype, policy.device) != "model" or self.dtype != "model"
                              or any(p.dtype != torch.float32 for p in policy.model.parameters()))
        self.optimizer = make_optimizer(policy, config.lr)
        warmup = max(1, config.warmup_steps)
        self.schedule = torch.optim.lr_scheduler.LambdaLR(self.optimizer,
                                                          lambda update: min(1.0, (update + 1) / warmup))
        # mixed precision: only the forward and backward run under bfloat16 autocast
        self.autocast = torch.autocast(policy.device.type, dtype=torch.bfloat16, enabled=self.dtype == "bfloat16")
        self.reference = None
        if config.kl_coef > 0 and config.name != "expert_iteration":
            self.reference = copy.deepcopy(policy.model).eval().requires_grad_(False)

    def advantages(self, rewards: torch.Tensor) -> torch.Tensor:
        if self.config.name == "rloo":
            return rloo_advantages(rewards)
        return group_advantages(rewards, scale=self.config.scale_rewards)

    def update(self, episodes: list[Episode], groups: list[list[int]]) -> dict[str, float]:
        if self.config.name == "expert_iteration":
            return self._expert_iteration(episodes)
        return self._policy_gradient(episodes, groups)

    def _policy_gradient(self, episodes: list[Episode], groups: list[list[int]]) -> dict[str, float]:
        rewards = torch.tensor([[episodes[i].reward for i in group] for group in groups])
        advantages = self.advantages(rewards).flatten()
        order = [i for group in groups for i in group]
        # A zero advantage contributes nothing but dilutes the token mean and costs a forward
        # pass; without a KL term such episodes are skipped.
        keep = [(i, float(a)) for i, a in zip(order, advantages) if a != 0 or self.reference is not None]
        keep = [(i, a) for i, a in keep if episodes[i].completion_ids]
        stats = {"loss": 0.0, "clip_fraction": 0.0, "trained_episodes": float(len(keep))}
        if not keep:
            return stats
        model = self.policy.model
        # The ratio compares the policy with what the sampler drew from, the model without dropout:
        # dropout (LoRA's, say) would move it off 1 before any update (TRL's GRPO disables it too).
        # Training mode otherwise, so gradient checkpointing still saves memory; expert iteration's
        # fine-tuning keeps its dropout.
        model.train()
        chunks = [keep[j :: self.config.minibatches] for j in range(self.config.minibatches)]
        chunks = [c for c in chunks if c]
        updates = 0
        with onednn_linears(model), without_dropout(model):
            # all before the first update: every minibatch's old log-probabilities are the sampler's policy's
            old = self._learner_logprobs(chunks, episodes) if self.recompute_old else None
            for _ in range(self.config.inner_epochs):
                for chunk in chunks:
                    self.optimizer.zero_grad(set_to_none=True)
                    tokens = sum(len(episodes[i].completion_ids) for i, _ in chunk)
                    # the same keys on every rank (a rank may have no rows), summed in one call
                    shares = dict.fromkeys(self._statistics(), 0.0)
                    for run in self._runs(chunk, episodes):
                        loss, run_stats = self._run_loss(run, episodes, tokens, len(chunk), old)
                        loss.backward()
                        shares["loss"] += loss.item()
                        for key, value in run_stats.items():
                            shares[key] += value
                    summed = distributed.sync_gradients(model.parameters(), list(shares.values()))
                    for key, value in zip(shares, summed):
                        # the ratio's departure from 1 before any update (a check of the old
                        # log-probabilities); later minibatches' departure is the learning
                        if key != "ratio_deviation" or updates == 0:
                            stats[key] = stats.get(key, 0.0) + value
                    torch.nn.utils.clip_grad_norm_(model.parameters(), self.config.max_grad_norm)
                    self.optimizer.step()
                    self.schedule.step()
                    updates += 1
        for key in ("loss", "clip_fraction", "kl", "entropy"):
            if key in stats:
                stats[key] /= updates
        return stats

    def _statistics(self) -> tuple[str, ...]:
        """The statistics a minibatch's loss reports (`clipped_policy_loss`), with the loss."""
        return ("loss", "clip_fraction", "ratio_deviation", *(("kl",) if self.reference is not None else ()),
                *(("entropy",) if self.config.entropy_coef > 0 else ()))

    def _runs(self, chunk: list[tuple[int, float]], episodes: list[Episode]) -> list[list[tuple[int, float]]]:
        """This rank's rows of a minibatch, in runs of similar length (`length_buckets`)."""
        lengths = [len(episodes[i].prompt_ids) + len(episodes[i].completion_ids) for i, _ in chunk]
        mine = distributed.balanced(lengths)  # on several ranks, this rank's rows
        return [[chunk[mine[j]] for j in run] for run in length_buckets([lengths[i] for i in mine], self.policy.device)]

    @torch.no_grad()
    def _learner_logprobs(self, chunks: list[list[tuple[int, float]]],
                          episodes: list[Episode]) -> dict[int, torch.Tensor]:
        """Each kept episode's completion log-probabilities [C] under the learner's forward (the
        runs, precision and mode of `_run_loss`), by episode index."""
        out = {}
        for chunk in chunks:
            for run in self._runs(chunk, episodes):
                chosen = [episodes[i] for i, _ in run]
                ids, attention, predictor, _ = pack([e.prompt_ids for e in chosen], [e.completion_ids for e in chosen],
                                                    self.policy.pad_id, self.policy.device)
                with self.autocast:
                    logprobs = completion_logprobs(self.policy.model, ids, attention, predictor, self.temperature)
                for row, (i, _) in enumerate(run):
                    out[i] = logprobs[row, : len(episodes[i].completion_ids)]
        return out

    def _run_loss(self, run: list[tuple[int, float]], episodes: list[Episode], tokens: int, sequences: int,
                  recomputed: dict[int, torch.Tensor] | None = None) -> tuple[torch.Tensor, dict[str, float]]:
        """The clipped loss of `run` (episode index, advantage) as its share of a minibatch of
        `sequences` episodes and `tokens` completion tokens, with its share of the minibatch's
        token-mean statistics. Old log-probabilities: `recomputed`'s, else the sampler's."""
        chosen = [episodes[i] for i, _ in run]
        ids, attention, predictor, mask = pack(
            [e.prompt_ids for e in chosen], [e.completion_ids for e in chosen], self.policy.pad_id, self.policy.device
        )
        old = torch.zeros(mask.shape, device=mask.device)
        for row, (i, _) in enumerate(run):
            values = recomputed[i] if recomputed is not None else torch.tensor(episodes[i].logprobs)
            old[row, : len(values)] = values
        reference = None
        with self.autocast:
            if self.reference is not None:
                with torch.no_grad():
                    reference = completion_logprobs(self.reference, ids, attention, predictor, self.temperature)
            log_softmax = completion_log_softmax(self.policy.model, ids, attention, predictor, self.temperature)
        logprobs = token_logprobs(log_softmax, ids, predictor)
        entropy = token_entropy(log_softmax) if self.config.entropy_coef > 0 else None
        adv = torch.tensor([a for _, a in run], device=mask.device)
        return clipped_policy_loss(
            logprobs, old, adv, mask, self.config.clip_low, self.config.clip_high, reference, self.config.kl_coef,
            entropy, self.config.entropy_coef, tokens, self.config.loss_aggregation, sequences, self.max_new_tokens,
        )

    def state_dict(self) -> dict:
        return {"optimizer": self.optimizer.state_dict(), "schedule": self.schedule.state_dict()}

    def load_state_dict(self, state: dict) -> None:
        self.optimizer.load_state_dict(state["optimizer"])
        self.schedule.load_state_dict(state["schedule"])

    def _expert_iteration(self, episodes: list[Episode]) -> dict[str, float]:
        seen: set[tuple[str, tuple[int, ...]]] = set()
        winners = []
        for episode in episodes:
            key = (episode.problem.id, tuple(episode.completion_ids))
            # correctness and gates decide a winner; an additive shaping term (a length penalty) would
            # push every reward under the threshold and leave nothing to train on
            if episode.outcome >= self.config.winner_threshold and episode.finished and key not in seen:
                seen.add(key)
                winners.append(episode)
        stats = {"loss": 0.0, "trained_episodes": float(len(winners))}
        if not winners:
            return stats
        self.policy.model.train()
        for _ in range(self.config.inner_epochs):
            # completion_ids end with the sampled end-of-sequence token already
            with self.autocast:
                stats["loss"] = supervised_step(
                    self.policy, self.optimizer, [w.prompt_ids for w in winners], [w.completion_ids for w in winners],
                    self.config.max_grad_norm,
                )
            self.schedule.step()
        return stats
