"""The examples run, and each changes what is trained: the custom task's problems are the ones the
learner updates on, scored by its own verifier; the custom reward's values are logged as
reward_brevity and are in the rewards, and so the advantages, the learner updates with."""

from __future__ import annotations

import json
import runpy
from pathlib import Path

import pytest
import torch

from shrinkthink.learners import Learner

EXAMPLES = Path(__file__).resolve().parent.parent / "examples"


@pytest.fixture
def updates(monkeypatch) -> list[tuple]:
    """(episodes, groups, learner) of every RL update, in order."""
    seen = []
    update = Learner.update

    def recording(self, episodes, groups):
        seen.append((list(episodes), [list(g) for g in groups], self))
        return update(self, episodes, groups)

    monkeypatch.setattr(Learner, "update", recording)
    return seen


def example(name: str) -> dict:
    """The example's names, as `python examples/<name>` defines them, without running its main."""
    source = EXAMPLES / name
    assert len(source.read_text().splitlines()) < 40
    return runpy.run_path(str(source), run_name="example")


def test_custom_task_is_what_is_trained(tmp_path: Path, updates: list, monkeypatch) -> None:
    names = example("custom_task.py")
    task_class = names["CountLetters"]
    verified = []
    is_correct = task_class.is_correct

    def verifying(self, problem, answer):
        verified.append(problem.id)
        return is_correct(self, problem, answer)

    monkeypatch.setattr(task_class, "is_correct", verifying)
    summary = names["main"](str(tmp_path / "run"))
    assert [(s["name"], s["steps"]) for s in summary["stages"]] == [("warm", 20), ("climb", 2)]
    assert len(updates) == 2
    episodes = [e for batch, _, _ in updates for e in batch]
    task = task_class()
    assert all(e.problem.prompt.startswith("count a in ") and task.split_of(e.problem.prompt) == "train"
               for e in episodes)
    for e in episodes:  # the task's own verifier set every reward the learner saw
        expected = float(e.finished and e.answer is not None and e.answer.strip() == e.problem.answer)
        assert e.reward == e.components["correct"] == expected
    assert {e.problem.id for e in episodes if e.finished and e.answer is not None} <= set(verified)


def test_custom_reward_reaches_the_learner(tmp_path: Path, updates: list) -> None:
    names = example("custom_reward.py")
    brevity = names["brevity"]
    names["main"](str(tmp_path / "run"))
    lines = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    records = [r for r in lines if r["stage"] == "shrink" and "reward_brevity" in r]
    assert len(records) == len(updates) == 2
    for record, (episodes, groups, learner) in zip(records, updates):
        values = brevity([e.text for e in episodes], [e.problem for e in episodes])
        assert any(v for v in values)
        assert [e.components["brevity"] for e in episodes] == [0.0 if v is None else v for v in values]
        assert record["reward_brevity"] == pytest.approx(sum(v or 0.0 for v in values) / len(values))
        assert all(e.reward == pytest.approx(e.outcome + e.components["brevity"]) for e in episodes)
        with_brevity = learner.advantages(torch.tensor([[episodes[i].reward for i in g] for g in groups]))
        without = learner.advantages(torch.tensor([[episodes[i].outcome for i in g] for g in groups]))
        assert not torch.allclose(with_brevity, without)
