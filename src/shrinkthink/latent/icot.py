"""iCoT stepwise internalisation (Deng et al. 2024, "From Explicit CoT to Implicit CoT: Learning to
Internalize CoT Step by Step", arXiv 2405.14838), written from the paper.

Fine-tune on transcripts whose first s reasoning tokens are removed, s growing a token at a time
(`scheduled_removal`), so the model gradually carries the removed reasoning in its hidden states; at
the end it answers with no visible reasoning. Removal smoothing (Sec. 3): each example removes
s + o tokens, o drawn with P(o) ∝ exp(-λ o), which softens each step of the schedule. The optimizer
is reset whenever s grows (Sec. 3, "optimizer reset"), until every reasoning token is gone: the task
no longer changes then, and the reference code (`all_cot_removed_in_batch`) stops resetting too.
`drop_all_after`: once s reaches it, remove all reasoning (the reference's
`remove_all_when_remove_beyond`, compared with >=).

    python -m pytest tests/test_latent.py -q
"""

from __future__ import annotations

import math
import random


def scheduled_removal(step: int, remove_tokens: int, remove_every_steps: int, remove_start: int = 0) -> int:
    """s at `step`: `remove_start`, then one token more each time `step * remove_tokens /
    remove_every_steps` passes a whole number, so `remove_tokens` more every `remove_every_steps`
    steps (the paper's tokens per epoch) but a token at a time. Our choice: this exact rate, where
    the reference code rounds the steps per token (`steps_per_removed_token = round(steps_per_epoch
    / remove_per_epoch)`: 8 tokens per 100 steps becomes one every 12 steps, 8.33 per 100)."""
    return remove_start + step * remove_tokens // remove_every_steps


def all_removed(scheduled: int, longest: int, drop_all_after: int | None) -> bool:
    """Whether s leaves no reasoning in any example: it reached the longest transcript's length or
    the drop-all bound."""
    return scheduled >= longest or (drop_all_after is not None and scheduled >= drop_all_after)


def smoothing_probs(smoothing_lambda: float | None, max_offset: int) -> list[float]:
    """P(o) ∝ exp(-λ o) for o = 0..max_offset, renormalised over those offsets (the reference code
    cuts at o = 99 and puts the tail's mass on 99); None (no smoothing) puts all mass on 0."""
    if smoothing_lambda is None or max_offset == 0:
        return [1.0] + [0.0] * max_offset
    weights = [math.exp(-smoothing_lambda * o) for o in range(max_offset + 1)]
    total = sum(weights)
    return [w / total for w in weights]


def sample_offset(probs: list[float], rng: random.Random) -> int:
    return rng.choices(range(len(probs)), weights=probs)[0]


def tokens_to_remove(scheduled: int, offset: int, reasoning_length: int, drop_all_after: int | None) -> int:
    """How many leading reasoning tokens one example loses: s + o, capped at its length; all of
    them once s reaches `drop_all_after`."""
    if drop_all_after is not None and scheduled >= drop_all_after:
        return reasoning_length
    return min(scheduled + offset, reasoning_length)


def icot_target(reasoning: list[int], answer: list[int], removed: int) -> list[int]:
    """The supervised completion: what is left of the reasoning, then the answer (with eos)."""
    return reasoning[removed:] + answer
