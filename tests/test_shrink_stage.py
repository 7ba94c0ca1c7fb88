"""The shrink stage end to end through the CLI on a tiny model: criteria and their controllers
logged every step, editors fine-tuning on re-verified edits, the summary entry, changed
parameters, and a crash mid-stage that resumes to the same weights. Also which winners the
editors get."""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file
from test_pipeline import crash_in, metric_lines, run_to_end, step_keys, write_config

from shrinkthink.config import load_config
from shrinkthink.criteria import StepValidity
from shrinkthink.evaluate import evaluate
from shrinkthink.pipeline import eval_tokens, run_pipeline
from shrinkthink.policy import Policy
from shrinkthink.records import Episode, Problem
from shrinkthink.stages.shrink import next_best, winners
from shrinkthink.tasks import make_task

CONFIG = """\
name: shrink-e2e
seed: 0
threads: 1
model: {kind: tiny, depth: 2}
task: {name: arith, options: {max_operand: 3}, eval_levels: [1, 2], eval_problems: 8}
stages:
  - {name: warm, kind: warmstart, steps: 80, levels: [1, 2], batch_size: 32, lr: 0.01, digression_rate: 0.3,
     warmup_steps: 5, eval_every: 40, eval_problems: 8}
  - name: tighten
    kind: shrink
    steps: 6
    eval_every: 3
    eval_problems: 8
    checkpoint_every: 2
    criteria: [{name: length_penalty}, {name: token_budget}, {name: step_validity}]
    editors: [{name: ablation_critic}, {name: llm_critic}, {name: paraphrase}]
    probe_problems: 4
    reladder: true
    restore_best: false
    promote_at: 0.0
    learner: {group_size: 8, problems_per_step: 4, scale_rewards: batch}
    sampling: {max_new_tokens: 32}
"""


@pytest.fixture(scope="module")
def config_path(tmp_path_factory) -> Path:
    return write_config(tmp_path_factory, "shrink", CONFIG)


@pytest.fixture(scope="module")
def finished_run(config_path: Path, tmp_path_factory) -> Path:
    return run_to_end(config_path, tmp_path_factory)[0]


def test_every_step_logs_each_reward_component_and_controller(finished_run: Path) -> None:
    records = [r for r in metric_lines(finished_run) if r["stage"] == "tighten"]
    reference = [r for r in records if r.get("event") == "reference"]
    assert len(reference) == 1 and 0 <= reference[0]["accuracy"] <= 1
    steps = [r for r in records if "event" not in r]
    assert [r["step"] for r in steps] == list(range(1, 7))
    for r in steps:
        assert {"reward", "reward_correct", "reward_length_penalty", "reward_token_budget", "reward_step_validity",
                "length_penalty_value", "token_budget_value", "mean_reasoning_tokens", "seconds"} <= set(r), r
        assert r["seconds"] > 0 and r["reward_length_penalty"] <= 0 and 0 <= r["reward_token_budget"] <= 1
    evaluated = [r for r in steps if "accuracy" in r]
    assert [r["step"] for r in evaluated] == [3, 6]
    for r in evaluated:
        assert r["controller_length_penalty"] in ("tighten", "back_off") and "eval_valid_step_share" in r
        assert r["accuracy"] > 0 and {"probe_own_accuracy", "probe_paraphrased_accuracy", "probe_gap"} <= set(r)
        # every scheduled criterion took the round the paired decision said
        expected = "tighten" if r["held"] else "back_off"
        assert r["controller_token_budget"] == r["controller_length_penalty"] == expected
    # the re-ladder starts at the lowest level and climbs once held-out accuracy there passes
    # promote_at (0 here: at the first evaluation)
    assert [r["level"] for r in steps] == [1, 1, 1, 2, 2, 2] and evaluated[0]["promoted_to"] == 2
    # two controller rounds: lambda moved from its start
    assert steps[-1]["length_penalty_rounds"] == 2 and steps[-1]["length_penalty_value"] != 0.01
    assert any("edit_ablation_critic_forward_passes" in r and "edit_llm_critic_forward_passes" in r for r in steps)


def test_summary_entry_and_changed_parameters(finished_run: Path, config_path: Path) -> None:
    summary = json.loads((finished_run / "summary.json").read_text())
    assert [s["name"] for s in summary["stages"]] == ["warm", "tighten"]
    entry = summary["stages"][1]
    records = [r for r in metric_lines(finished_run) if r["stage"] == "tighten"]
    assert entry["reference_accuracy"] == next(r["accuracy"] for r in records if r.get("event") == "reference")
    # the controllers' state is where the logged rounds took them: lambda from 0.01, x2 or x0.5 a round
    rounds = [r["controller_length_penalty"] for r in records if "controller_length_penalty" in r]
    expected = 0.01
    for decision in rounds:
        expected *= 2.0 if decision == "tighten" else 0.5
    assert entry["controllers"]["length_penalty"] == {"value": pytest.approx(expected), "rounds": 2, "last": rounds[-1]}
    assert set(entry["controllers"]) == {"length_penalty", "token_budget"}
    # reported accuracy: the test split (2 levels x 8 problems); decisions: the validation split
    config = load_config(config_path)
    policy = Policy.load(finished_run / "checkpoints" / "tighten", torch.device("cpu"), config=config.model)
    task = make_task("arith", config.task.options)
    for split, key in (("test", "accuracy"), ("validation", "validation_accuracy")):
        max_new = eval_tokens(config, {stage["name"]: stage for stage in summary["stages"]})
        again = evaluate(policy, task, [1, 2], 8, max_new_tokens=max_new, seed=1, split=split)
        assert entry[key] == pytest.approx(again.accuracy), split
    assert entry["test_problems"] == entry["validation_problems"] == 16
    warm = load_file(finished_run / "checkpoints" / "warm" / "model.safetensors")
    tightened = load_file(finished_run / "checkpoints" / "tighten" / "model.safetensors")
    assert any(not torch.equal(warm[k], tightened[k]) for k in warm)


def test_crash_mid_shrink_resumes_to_the_same_weights(finished_run: Path, config_path: Path, tmp_path: Path,
                                                      monkeypatch) -> None:
    config = load_config(config_path)
    whole = tmp_path / "whole"
    run_pipeline(config, run_dir=str(whole), progress=False)
    crashed = tmp_path / "crashed"
    crash_in("tighten", 5, monkeypatch)
    with pytest.raises(RuntimeError, match="simulated crash"):
        run_pipeline(config, run_dir=str(crashed), progress=False)
    monkeypatch.undo()
    state = json.loads((crashed / "checkpoints" / "latest" / "state.json").read_text())
    assert (state["stage_index"], state["stage_step"]) == (1, 4)
    assert state["stage_state"]["criteria"]["length_penalty"]["rounds"] == 1  # controller state saved
    run_pipeline(config, run_dir=str(crashed), resume=True, progress=False)
    assert not [k for k, n in Counter(step_keys(crashed)).items() if n > 1]
    assert step_keys(crashed) == step_keys(whole)
    resumed = load_file(crashed / "checkpoints" / "tighten" / "model.safetensors")
    reference = load_file(whole / "checkpoints" / "tighten" / "model.safetensors")
    assert all(torch.equal(resumed[k], reference[k]) for k in reference)


def test_editors_get_each_problems_correct_attempt_that_passes_most_gates_even_when_none_passes_all() -> None:
    gate = StepValidity(make_task("arith", {}))

    def attempt(tokens: int, correct: float, valid: float, finished: bool = True) -> Episode:
        return Episode(Problem("p", "1+2=?", "3"), [], [], [], "", finished, reasoning_tokens=tokens,
                       components={"correct": correct, "step_validity": valid})

    episodes = [
        attempt(30, 1.0, 0.0), attempt(20, 1.0, 0.0), attempt(5, 0.0, 1.0), attempt(3, 1.0, 1.0, finished=False),
        attempt(40, 1.0, 1.0), attempt(12, 1.0, 0.0), attempt(25, 1.0, 1.0),
        attempt(9, 0.0, 1.0), attempt(9, 0.0, 0.0),
    ]
    chosen = winners(episodes, [[0, 1, 2, 3], [4, 5, 6], [7, 8]], [gate])
    # problem 1: no finished correct attempt passes the gate, so the shortest correct one (an editor
    # may repair it); problem 2: the shortest that passes; problem 3: nothing correct, nothing chosen
    assert [e.reasoning_tokens for e in chosen] == [20, 25]


def test_restore_best_takes_fewer_tokens_and_on_a_token_plateau_the_more_accurate_policy() -> None:
    best = {"step": 0, "accuracy": 0.90, "tokens": 60.0, "fewest": 60.0}
    picked = []
    # (step, accuracy, tokens) of evaluations whose accuracy held
    for step, accuracy, tokens in [(50, 0.88, 30.0),    # clearly fewer tokens: new best
                                   (100, 0.86, 29.8),   # 0.7% fewer, less accurate: a tie, kept
                                   (150, 0.91, 30.2),   # on the plateau and more accurate: new best
                                   (200, 0.95, 40.0),   # more accurate but off the plateau: kept
                                   (250, 0.87, 25.0)]:  # clearly fewer again, whatever its accuracy
        best, improved = next_best(best, step, accuracy, tokens)
        if improved:
            picked.append(step)
    assert picked == [50, 150, 250]
    assert best == {"step": 250, "accuracy": 0.87, "tokens": 25.0, "fewest": 25.0}
    # ties are measured from the fewest tokens, not from the last best: they cannot creep upwards
    best = {"step": 10, "accuracy": 0.90, "tokens": 30.0, "fewest": 30.0}
    best, improved = next_best(best, 20, 0.92, 30.5)
    assert improved and best["tokens"] == 30.5 and best["fewest"] == 30.0
    best, improved = next_best(best, 30, 0.94, 31.0)
    assert not improved and best["step"] == 20
