"""Held-out evaluation: greedy accuracy per level (and pass@k on request), visible reasoning
tokens, and the task's own digression share."""

from __future__ import annotations

from dataclasses import dataclass, field

from shrinkthink.policy import Policy
from shrinkthink.records import Problem
from shrinkthink.tasks.base import Task, reasoning_part


@dataclass
class Evaluation:
    accuracy_by_level: dict[int, float]
    mean_reasoning_tokens: float
    digression_share: float | None
    pass_at_k: dict[int, float] = field(default_factory=dict)
    latent_steps: int = 0  # continuous thoughts per answer; never counted as reasoning tokens
    valid_step_share: float | None = None  # transcripts whose every step the task's checker accepts
    transcripts: list[tuple[Problem, str, float]] = field(default_factory=list)

    @property
    def accuracy(self) -> float:
        values = list(self.accuracy_by_level.values())
        return sum(values) / len(values) if values else 0.0


def digression_tokens(policy: Policy, task: Task, problem: Problem, text: str) -> tuple[int, int]:
    """(digression tokens, reasoning tokens) of one transcript, by the task's step classifier."""
    lines = task.classify_steps(problem, text)
    total = sum(policy.count_tokens(line) for line, _ in lines)
    wasted = sum(policy.count_tokens(line) for line, necessary in lines if not necessary)
    return wasted, total


def evaluate(policy: Policy, task: Task, levels: list[int], n: int, *, max_new_tokens: int,
             seed: int = 0, pass_k: int = 0, temperature: float = 1.0) -> Evaluation:
    accuracy: dict[int, float] = {}
    pass_at_k: dict[int, float] = {}
    transcripts = []
    reasoning = wasted = counted = 0
    gold_steps = False
    valid = 0
    for level in levels:
        problems = task.problems(level, n, "test", seed=seed)
        prompts = [policy.prompt_ids(p.prompt) for p in problems]
        samples = policy.sample(prompts, max_new_tokens=max_new_tokens, greedy=True)
        correct = 0.0
        for problem, ids in zip(problems, samples.completion_ids):
            text = policy.decode(ids)
            score = task.score(problem, text)
            correct += score
            reasoning += policy.count_tokens(reasoning_part(text))
            if problem.steps:
                gold_steps = True
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
                solved += any(task.score(problem, t) >= 1.0 for t in texts)
            pass_at_k[level] = solved / len(problems)
    return Evaluation(
        accuracy_by_level=accuracy,
        mean_reasoning_tokens=reasoning / max(1, len(transcripts)),
        digression_share=(wasted / counted if counted else 0.0) if gold_steps else None,
        pass_at_k=pass_at_k,
        latent_steps=policy.latent_steps,
        valid_step_share=valid / max(1, len(transcripts)) if task.has_step_checker else None,
        transcripts=transcripts,
    )
