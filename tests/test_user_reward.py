"""A user's reward function as a criterion: named by dotted path or by a key the Python API was
given, called on a batch of completions with their problems (and the keyword arguments its
signature names), one float or None per completion, weighted, ramped or gating; a path that does
not import or a value that is not a callable is one line naming the field; through the CLI its
component is logged as reward_<label> and its values reach the learner."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from pydantic import ValidationError

import shrinkthink
from shrinkthink.config import ExploreStage, RewardCriterion
from shrinkthink.criteria import Batch, apply_criteria, build_criteria, criteria_state, update_controllers
from shrinkthink.errors import UserError
from shrinkthink.records import Episode, Problem
from shrinkthink.tasks import make_task

MODULE = '''\
def length(completions, problems):
    return [len(text) / 10 for text in completions]


def graded(completions, problems, *, correct):
    return [None if ok else 0.5 for ok in correct]


def everything(completions, problems, **kwargs):
    return [float(sorted(kwargs) == ["correct", "episodes", "groups"]) for _ in completions]


def short(completions, problems):
    return [1.0]


NOT_CALLABLE = 3
'''


@pytest.fixture
def rewards_module(tmp_path: Path, monkeypatch) -> str:
    """A module of reward functions on sys.path, as a user's package would be."""
    (tmp_path / "my_rewards.py").write_text(MODULE)
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.delitem(sys.modules, "my_rewards", raising=False)
    return "my_rewards"


def batch(texts: list[str], correct: list[float]) -> Batch:
    problem = Problem(id="p", prompt="1+1=?", answer="2")
    episodes = [Episode(problem=problem, prompt_ids=[1], completion_ids=[0], logprobs=[0.0], text=text, finished=True,
                        reward=ok, outcome=ok, components={"correct": ok}) for text, ok in zip(texts, correct)]
    return Batch(episodes, [list(range(len(texts)))], make_task("arith"), reference_tokens=1.0)


def reward(**fields) -> RewardCriterion:
    return RewardCriterion(name="reward", **fields)


def test_dotted_path_adds_the_weighted_values(rewards_module: str) -> None:
    (criterion,) = build_criteria([reward(function=f"{rewards_module}:length", weight=2.0)], make_task("arith"))
    scored = batch(["Answer: 2", "1+1=2\nAnswer: 2"], [1.0, 0.0])
    apply_criteria([criterion], scored)
    assert criterion.name == "length"  # the function's name, by default
    assert [e.components["length"] for e in scored.episodes] == [pytest.approx(1.8), pytest.approx(3.0)]
    assert [e.reward for e in scored.episodes] == [pytest.approx(2.8), pytest.approx(3.0)]
    assert [e.outcome for e in scored.episodes] == [1.0, 0.0]


def test_none_adds_nothing_and_a_gate_multiplies(rewards_module: str) -> None:
    additive, gate = build_criteria([reward(function=f"{rewards_module}:graded"),
                                     reward(function=f"{rewards_module}:graded", label="strict", gate=True)],
                                    make_task("arith"))
    scored = batch(["a", "b"], [1.0, 0.0])
    apply_criteria([additive, gate], scored)
    assert [e.components["graded"] for e in scored.episodes] == [0.0, 0.5]  # correct: None -> 0
    assert [e.components["strict"] for e in scored.episodes] == [1.0, 0.5]  # a gate's None leaves it be
    assert [e.reward for e in scored.episodes] == [1.0, 0.5]


def test_keyword_arguments_follow_the_signature(rewards_module: str) -> None:
    (everything,) = build_criteria([reward(function=f"{rewards_module}:everything")], make_task("arith"))
    assert everything(batch(["a"], [0.0])) == [1.0]  # **kwargs: all of them
    (mapped,) = build_criteria([reward(function="mine", label="mine")], make_task("arith"),
                               rewards={"mine": lambda completions, problems: [len(p.answer) for p in problems]})
    assert mapped(batch(["a", "b"], [0.0, 1.0])) == [1.0, 1.0]  # no keywords named: none passed


def test_a_ramped_weight_is_a_controller(rewards_module: str) -> None:
    config = reward(function=f"{rewards_module}:length", weight=0.1, ramp={"factor": 2.0, "backoff": 0.5,
                                                                             "max_value": 0.3})
    (criterion,) = build_criteria([config], make_task("arith"))
    values = []
    for held in [True, True, False]:
        update_controllers([criterion], held)
        values.append(round(criterion(batch(["x" * 10], [1.0]))[0], 6))
    assert values == [0.2, 0.3, 0.15]
    assert criteria_state([criterion])["length"]["rounds"] == 3
    assert criterion.state() == {"length_value": pytest.approx(0.15), "length_rounds": 3}


@pytest.mark.parametrize(("function", "message"), [
    ("nowhere_at_all:brevity",
     "criteria.0.function: cannot import 'nowhere_at_all' (No module named 'nowhere_at_all')"),
    ("my_rewards:missing", "criteria.0.function: module 'my_rewards' has no 'missing'"),
    ("my_rewards:NOT_CALLABLE", "criteria.0.function: 'my_rewards:NOT_CALLABLE' is not callable (type int)"),
    ("brevity", "criteria.0.function: 'brevity' is neither 'package.module:function' nor a key of the rewards "
                "passed to shrinkthink.run (passed: none)"),
])
def test_a_bad_function_is_one_line_naming_the_field(rewards_module: str, function: str, message: str) -> None:
    with pytest.raises(UserError) as caught:
        build_criteria([reward(function=function)], make_task("arith"))
    assert str(caught.value) == message


def test_wrong_values_and_taken_labels_are_user_errors(rewards_module: str) -> None:
    (short,) = build_criteria([reward(function=f"{rewards_module}:short")], make_task("arith"),
                              field="stages.1.criteria")
    with pytest.raises(UserError, match=r"^stages.1.criteria.0: reward 'short' returned 1 values for 2 completions"):
        short(batch(["a", "b"], [0.0, 0.0]))
    (nan,) = build_criteria([reward(function="nan")], make_task("arith"), {"nan": lambda c, p: [float("nan")]})
    with pytest.raises(UserError, match="returned nan; expected a finite float or None"):
        nan(batch(["a"], [0.0]))
    with pytest.raises(UserError, match=r"^criteria.1.label: 'length' already names another reward term"):
        build_criteria([reward(function=f"{rewards_module}:length"), reward(function=f"{rewards_module}:length")],
                       make_task("arith"))


def test_config_rejects_what_cannot_mean_what_it_says() -> None:
    stage = {"name": "climb", "kind": "explore", "steps": 1, "max_level": 1}
    with pytest.raises(ValidationError, match="learner.scale_rewards: 'group' rescales criteria.0 \\(reward\\)"):
        ExploreStage(**stage, criteria=[{"name": "reward", "function": "m:f"}])
    ExploreStage(**stage, criteria=[{"name": "reward", "function": "m:f", "gate": True}])  # a gate has no weight
    with pytest.raises(ValidationError, match="weight, ramp: a gate multiplies correctness"):
        reward(function="m:f", gate=True, weight=0.5)
    with pytest.raises(ValidationError, match="label"):
        reward(function="m:f", label="two words")


def test_an_unused_reward_passed_to_run_is_named(tmp_path: Path) -> None:
    config = shrinkthink.load_config(None, ["model.depth=2"])
    with pytest.raises(UserError, match=r"^rewards: 'brevity' was passed, but no stage's criteria name it"):
        shrinkthink.run(config, rewards={"brevity": lambda c, p: [0.0] * len(c)}, run_dir=tmp_path / "run")
    assert not (tmp_path / "run").exists()


# --- through the CLI ----------------------------------------------------------------------------
CONFIG = """\
name: user-reward
threads: 1
model: {kind: tiny, depth: 2}
task: {name: arith, options: {max_operand: 3}, eval_levels: [1], eval_problems: 4}
stages:
  - name: climb
    kind: explore
    steps: 2
    max_level: 1
    eval_every: 2
    eval_problems: 4
    learner: {group_size: 4, problems_per_step: 2, scale_rewards: none}
    sampling: {max_new_tokens: 8}
    criteria: [{name: reward, function: "my_rewards:length", label: chars}]
"""


def cli(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_VERBOSITY": "error", "OMP_NUM_THREADS": "1",
           "PYTHONPATH": os.pathsep.join([str(cwd), os.environ.get("PYTHONPATH", "")])}
    return subprocess.run([sys.executable, "-m", "shrinkthink", *args], cwd=cwd, env=env, capture_output=True,
                          text=True, timeout=300)


def test_cli_reward_by_dotted_path_reaches_the_learner(tmp_path: Path) -> None:
    (tmp_path / "my_rewards.py").write_text(MODULE)
    (tmp_path / "run.yaml").write_text(CONFIG)
    result = cli("run", "run.yaml", "--run-dir", "out", "--no-progress", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    steps = [json.loads(line) for line in (tmp_path / "out" / "metrics.jsonl").read_text().splitlines()]
    steps = [r for r in steps if "reward" in r]
    assert len(steps) == 2
    for record in steps:
        assert record["reward_chars"] > 0.0
        assert record["reward"] == pytest.approx(record["reward_correct"] + record["reward_chars"])
        # an untrained model's answers are almost all wrong: the lengths are what sets advantages apart
        assert record["learner_trained_episodes"] > 0


def test_cli_bad_dotted_path_is_one_line(tmp_path: Path) -> None:
    (tmp_path / "run.yaml").write_text(CONFIG.replace("my_rewards:length", "my_rewards:nope"))
    (tmp_path / "my_rewards.py").write_text(MODULE)
    result = cli("run", "run.yaml", "--run-dir", "out", cwd=tmp_path)
    assert result.returncode == 2, result.stderr
    assert result.stderr.strip().splitlines() == [
        "shrinkthink: error: stages.0.criteria.0.function: module 'my_rewards' has no 'nope'"]
    assert not (tmp_path / "out").exists()
