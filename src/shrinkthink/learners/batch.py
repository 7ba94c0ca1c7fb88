"""Turning (prompt, completion) token lists into padded tensors and per-token log-probabilities.
Right-padded: positions count from 0 at each row's first token, as in the rollout."""

from __future__ import annotations

import torch


def pack(prompts: list[list[int]], completions: list[list[int]], pad_id: int, device):
    """ids [B, T], attention mask [B, T], and for the completion tokens: the index of the logit
    that predicts each one [B, C] and a mask [B, C]."""
    rows = [p + c for p, c in zip(prompts, completions)]
    width = max(len(r) for r in rows)
    longest = max(1, max(len(c) for c in completions))
    ids = torch.full((len(rows), width), pad_id, dtype=torch.long)
    attention = torch.zeros((len(rows), width), dtype=torch.long)
    predictor = torch.zeros((len(rows), longest), dtype=torch.long)
    completion_mask = torch.zeros((len(rows), longest), dtype=torch.bool)
    for i, (prompt, completion) in enumerate(zip(prompts, completions)):
        ids[i, : len(prompt) + len(completion)] = torch.tensor(prompt + completion)
        attention[i, : len(prompt) + len(completion)] = 1
        predictor[i, : len(completion)] = torch.arange(len(prompt) - 1, len(prompt) - 1 + len(completion))
        completion_mask[i, : len(completion)] = True
    return ids.to(device), attention.to(device), predictor.to(device), completion_mask.to(device)


def length_buckets(lengths: list[int], device: torch.device | str = "cpu", most: int = 8) -> list[list[int]]:
    """Row indices sorted by length and cut into 1 to `most` runs of equal count, whichever count
    costs least: padded tokens plus a fixed cost a run (one more forward and backward call). A
    batch of mixed lengths padded to its longest row computes its padding too; run by run, a
    warm-start batch of the quickstart costs 0.22 s instead of 0.41 s on a 2-core CPU
    (`bench/train_step.py`). The runs' gradients add up to the whole batch's. The cost of a call: about
    100 tokens' work for a small model on a CPU (measured); on an accelerator a call costs many
    more tokens' worth (not measured here: 2048), so runs are fewer."""
    overhead = 128 if torch.device(device).type == "cpu" else 2048
    order = sorted(range(len(lengths)), key=lengths.__getitem__)
    best: tuple[int, list[list[int]]] | None = None
    for count in range(1, min(most, len(order)) + 1):
        runs = [order[j * len(order) // count : (j + 1) * len(order) // count] for j in range(count)]
        cost = sum(len(run) * lengths[run[-1]] for run in runs) + overhead * count
        if best is None or cost < best[0]:
            best = (cost, runs)
    return best[1] if best else []


def random_positions(attention: torch.Tensor, span: float, generator: torch.Generator | None = None) -> torch.Tensor:
    """Randomised positions (Ruoss et al. 2023, arXiv 2305.16843): each row's real tokens get
    sorted uniform draws on [0, span) instead of 0, 1, 2, ... [B, T] floats. A model trained on
    them has seen every distance up to `span`, so a longer sequence decoded at 0, 1, 2, ... puts
    no two tokens further apart than it has seen. Padding follows at span, span + 1, ...

    (Drawing each row's range between its length and `span` instead, so that short rows also see
    the unit gaps of decoding, fitted the demonstrated levels better in the quickstart but carried
    less to the longer ones: docs/results.md.)"""
    width = attention.shape[1]
    draws = (torch.rand(attention.shape, generator=generator) * span).to(attention.device)  # a CPU generator
    draws = draws.masked_fill(attention == 0, float("inf")).sort(dim=1).values
    after = max(span, width) + torch.arange(width, dtype=draws.dtype, device=draws.device)
    return torch.where(attention == 1, draws, after)


def completion_logits(model, ids, attention, predictor, positions=None) -> torch.Tensor:
    """Logits [B, C, V] at the positions that predict each completion token. The output layer
    runs only from the first such position on (`logits_to_keep`): over a large vocabulary it is a
    fifth of a small model's work, and the prompt's logits are never used. `positions`: position
    ids [B, T] (default: 0, 1, 2, ... from each row's first token)."""
    first = int(predictor[:, 0].min())  # padded entries are 0: never past a real one
    logits = model(input_ids=ids, attention_mask=attention, position_ids=positions,
                   logits_to_keep=ids.shape[1] - first).logits
    return logits.gather(1, (predictor - first).clamp(min=0)[:, :, None].expand(-1, -1, logits.shape[-1]))


def completion_log_softmax(model, ids, attention, predictor, temperature: float = 1.0) -> torch.Tensor:
    """log p(every vocabulary entry) [B, C, V] at each completion position under `model` at
    `temperature`."""
    return torch.log_softmax(completion_logits(model, ids, attention, predictor).float() / temperature, dim=-1)


def completion_logprobs(model, ids, attention, predictor, temperature: float = 1.0) -> torch.Tensor:
    """log p(token) [B, C] of each completion token under `model` at `temperature`."""
    return token_logprobs(completion_log_softmax(model, ids, attention, predictor, temperature), ids, predictor)


def token_logprobs(log_softmax: torch.Tensor, ids, predictor) -> torch.Tensor:
    """The entries of `log_softmax` [B, C, V] at the completion tokens themselves: [B, C]."""
    targets = ids.gather(1, (predictor + 1).clamp(max=ids.shape[1] - 1))
    return log_softmax.gather(-1, targets[:, :, None]).squeeze(-1)


def token_entropy(log_softmax: torch.Tensor) -> torch.Tensor:
    """The policy's entropy in nats at each completion position [B, C] (an entry of probability
    0 adds 0, not 0 * -inf)."""
    return -(log_softmax.exp() * log_softmax.clamp(min=torch.finfo(log_softmax.dtype).min)).sum(-1)
