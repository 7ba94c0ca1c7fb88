"""Held-out evaluation: greedy accuracy per level (and pass@k on request), visible reasoning
tokens, the share cut off by the length cap, and the task's own digression share.

The digression share is measured on the transcripts whose answer is right: in a wrong one, a line
off the gold chain is as often an error (a misread term) as a digression, and accuracy already
counts errors.

Stages decide on the validation split; the figures a run reports come from the test split. A
completion cut off by the length cap scores 0, as it does in training: it never gave its answer."""

from __future__ import annotations

import math
from dataclasses import dataclass, field

from shrinkthink.policy import Policy
from shrinkthink.records import Problem
from shrinkthink.tasks.base import Split, Task, reasoning_part


@dataclass
class Evaluation:
    accuracy_by_level: dict[int, float]
    mean_reasoning_tokens: float
    digression_share: float | None  # of the correct transcripts' reasoning tokens; None without gold steps
    pass_at_k: dict[int, float] = field(default_factory=dict)
    latent_steps: int = 0  # continuous thoughts per answer; never counted as reasoning tokens
    valid_step_share: float | None = None  # transcripts whose every step the task's checker accepts
    truncated_share: float = 0.0  # completions that reached the length cap without ending
    transcripts: list[tuple[Problem, str, float]] = field(default_factory=list)
    mean_completion_tokens: float = 0.0  # everything sampled, the answer and end-of-sequence included

    @property
    def accuracy(self) -> float:
        values = list(self.accuracy_by_level.values())
        return sum(values) / len(values) if values else 0.0

    @property
    def scores(self) -> list[float]:
        """Each problem's score, in a fixed order: two evaluations of the same problems pair up."""
        return [score for _, _, score in self.transcripts]


def wilson_interval(accuracy: float, n: int, z: float = 1.96) -> tuple[float, float]:
    """The 95% Wilson score interval of a share `accuracy` measured on `n` problems (Wilson 1927):
    unlike the normal approximation it stays inside [0, 1] and is honest near 0 and 1."""
    if n <= 0:
        return 0.0, 1.0
    centre = (accuracy + z * z / (2 * n)) / (1 + z * z / n)
    half = z * math.sqrt(accuracy * (1 - accuracy) / n + z * z / (4 * n * n)) / (1 + z * z / n)
    return max(0.0, centre - half), min(1.0, centre + half)


def digression_tokens(policy: Policy, task: Task, problem: Problem, text: str) -> tuple[int, int]:
    """(digression tokens, reasoning tokens) of one transcript, by the task's step classifier."""
    lines = task.classify_steps(problem, text)
    total = sum(policy.count_tokens(line) for line, _ in lines)
    wasted = sum(policy.count_tokens(line) for line, necessary in lines if not necessary)
    return wasted, total


def evaluate(policy: Policy, task: Task, levels: list[int], n: int, *, max_new_tokens: int,
             seed: int = 0, pass_k: int = 0, temperature: float = 1.0, split: Split = "test") -> Evaluation:
    accuracy: dict[int, float] = {}
    pass_at_k: dict[int, float] = {}
    transcripts = []
    reasoning = wasted = counted = completion = 0
    gold_steps = False
    valid = truncated = 0
    for level in levels:
        problems = task.problems(level, n, split, seed=seed)
        prompts = [policy.prompt_ids(p.prompt) for p in problems]
        samples = policy.sample(prompts, max_new_tokens=max_new_tokens, greedy=True)
        correct = 0.0
        for problem, ids, finished in zip(problems, samples.completion_ids, samples.finished):
            text = policy.decode(ids)
            score = task.score(problem, text) if finished else 0.0
            truncated += not finished
            completion += len(ids)
            correct += score
            reasoning += policy.count_tokens(reasoning_part(text))
            if problem.steps:
                gold_steps = True
            if problem.steps and finished and score >= 1.0:
                w, t = digression_tokens(policy, task, problem, text)
                wasted, counted = wasted + w, counted + t
            if task.has_step_checker:
                valid += all(ok for _, ok in task.check_steps(problem, text))
            transcripts.append((problem, text, score))
        accuracy[level] = correct / len(problems)
        if pass_k > 1:
            repeated = [p for p in prompts for _ in range(pass_k)]
            drawn = policy.sample(repeated, max_new_tokens=max_new_tokens, temperature=temperature)
            solved = 0
            for i, problem in enumerate(problems):
                texts = [policy.decode(ids) for ids in drawn.completion_ids[i * pass_k : (i + 1) * pass_k]]
                ends = drawn.finished[i * pass_k : (i + 1) * pass_k]
                solved += any(done and task.score(problem, t) >= 1.0 for t, done in zip(texts, ends))
            pass_at_k[level] = solved / len(problems)
    return Evaluation(
        accuracy_by_level=accuracy,
        mean_reasoning_tokens=reasoning / max(1, len(transcripts)),
        digression_share=(wasted / counted if counted else 0.0) if gold_steps else None,
        pass_at_k=pass_at_k,
        latent_steps=policy.latent_steps,
        valid_step_share=valid / max(1, len(transcripts)) if task.has_step_checker else None,
        truncated_share=truncated / max(1, len(transcripts)),
        mean_completion_tokens=completion / max(1, len(transcripts)),
        transcripts=transcripts,
    )
