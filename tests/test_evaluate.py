"""Evaluation: a completion cut off by the length cap scores 0 (as in training), the cut-off share
is reported, the splits are the ones asked for, and the Wilson interval on hand-computed values."""

from __future__ import annotations

import pytest

from shrinkthink.evaluate import evaluate, wilson_interval
from shrinkthink.rollout import Samples
from shrinkthink.tasks import make_task


class ScriptedPolicy:
    """Answers every problem correctly; `cut` of them hit the length cap before their end."""

    latent_steps = 0

    def __init__(self, cut: int) -> None:
        self.cut = cut
        self.problems: list = []
        self.asked = 0

    def prompt_ids(self, prompt: str) -> list[int]:
        self.asked += 1  # the problems are asked in order: their index is the prompt
        return [self.asked - 1]

    def sample(self, prompts, *, max_new_tokens: int, greedy: bool = False, **_) -> Samples:
        return Samples(completion_ids=[[p[0]] for p in prompts], logprobs=[[0.0] for _ in prompts],
                       finished=[i >= self.cut for i in range(len(prompts))], entropy_sum=0.0, tokens=len(prompts))

    def decode(self, ids: list[int]) -> str:
        problem = self.problems[ids[0]]
        return "\n".join([*problem.steps, "Answer: " + problem.answer])

    def count_tokens(self, text: str) -> int:
        return len(text)


@pytest.mark.parametrize("split", ["test", "validation"])
def test_a_cut_off_answer_scores_zero_and_is_counted(split: str) -> None:
    task = make_task("arith")
    policy = ScriptedPolicy(cut=3)
    problems = task.problems(2, 10, split, seed=1)
    original = task.problems

    def recorded(level, n, which, seed=0):
        assert which == split  # the evaluation draws from the split it was asked for
        drawn = original(level, n, which, seed)
        policy.problems = drawn
        return drawn

    task.problems = recorded
    result = evaluate(policy, task, [2], 10, max_new_tokens=8, seed=1, split=split)
    assert [p.prompt for p in policy.problems] == [p.prompt for p in problems]
    # every completion is right, but three never ended: they gave no answer within the cap
    assert result.accuracy == pytest.approx(0.7) and result.truncated_share == pytest.approx(0.3)
    assert result.scores == [0.0] * 3 + [1.0] * 7


def test_wilson_interval_hand_values() -> None:
    # 0.9 on 500: centre (0.9 + 1.96^2/1000) / (1 + 1.96^2/500), half-width 0.0264
    low, high = wilson_interval(0.9, 500)
    assert low == pytest.approx(0.8706, abs=1e-4) and high == pytest.approx(0.9233, abs=1e-4)
    assert wilson_interval(0.0, 10) == pytest.approx((0.0, 0.2775), abs=1e-4)  # never below 0
    assert wilson_interval(0.5, 0) == (0.0, 1.0)


class SlipPolicy(ScriptedPolicy):
    """Even problems: the gold steps plus a filler line, answered right. Odd problems: a wrong
    first term, so every line is off the gold chain and the answer is wrong."""

    def __init__(self) -> None:
        super().__init__(cut=0)

    def decode(self, ids: list[int]) -> str:
        problem = self.problems[ids[0]]
        if ids[0] % 2 == 0:
            return "\n".join([problem.steps[0], "hmm", *problem.steps[1:], "Answer: " + problem.answer])
        return "\n".join(["1+1=2", "2+1=3", "Answer: -1"])


def test_the_digression_share_counts_the_correct_transcripts_only() -> None:
    task = make_task("arith")
    policy = SlipPolicy()
    original = task.problems

    def recorded(level, n, which, seed=0):
        policy.problems = original(level, n, which, seed)
        return policy.problems

    task.problems = recorded
    result = evaluate(policy, task, [2], 10, max_new_tokens=8, seed=1)
    assert result.accuracy == pytest.approx(0.5)
    right = policy.problems[::2]
    necessary = sum(len(s) for p in right for s in p.steps)
    # the wrong transcripts' slips are errors, which accuracy counts; only "hmm" is a digression
    assert result.digression_share == pytest.approx(3 * 5 / (3 * 5 + necessary))
