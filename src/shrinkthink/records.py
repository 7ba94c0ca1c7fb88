"""The two records that flow through shrinkthink: a `Problem` a task poses and an `Episode`,
one attempt at it. Task → rollout → criteria → learner → editors pass these and nothing else."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any


@dataclass
class Problem:
    """One verifiable question. `steps` are the gold reasoning lines, when the task knows them."""

    id: str
    prompt: str
    answer: str
    level: int = 1
    steps: list[str] | None = None
    metadata: dict[str, Any] = field(default_factory=dict)


@dataclass
class Episode:
    """One sampled attempt at a problem, with what the learner needs to score and train on it.

    `logprobs[i]` is the log-probability the sampling policy gave `completion_ids[i]`
    (temperature applied, before top-p truncation), so it is the "old" policy of a clipped ratio.
    """

    problem: Problem
    prompt_ids: list[int]
    completion_ids: list[int]
    logprobs: list[float]
    text: str
    finished: bool
    answer: str | None = None
    reward: float = 0.0
    outcome: float = 0.0  # correctness times the gates, before additive shaping terms
    components: dict[str, float] = field(default_factory=dict)
    reasoning_tokens: int = 0
