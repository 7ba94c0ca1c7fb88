"""The summary's `start` entry (the model before the first stage) and transfer tasks (never trained
on, evaluated at the start and after every stage), on a tiny model's two explore steps."""

from __future__ import annotations

import json

import yaml

from shrinkthink.config import load_config
from shrinkthink.evaluate import evaluate
from shrinkthink.pipeline import format_table, run_pipeline
from shrinkthink.policy import Policy
from shrinkthink.tasks import make_task

CONFIG = {
    "name": "transfer", "seed": 0, "threads": 1, "model": {"kind": "tiny", "depth": 1},
    "task": {"name": "arith", "options": {"max_operand": 3}, "eval_levels": [1], "eval_problems": 6,
             "transfer": [{"name": "arith", "options": {"min_operand": 7, "max_operand": 9}, "levels": [2],
                           "problems": 5}]},
    "stages": [{"name": "climb", "kind": "explore", "steps": 2, "max_level": 1, "eval_every": 100, "eval_problems": 4,
                "learner": {"group_size": 2, "problems_per_step": 2, "lr": 0.05},
                "sampling": {"max_new_tokens": 8}}],
}


def test_start_entry_and_transfer_figures_after_every_stage(tmp_path) -> None:
    path = tmp_path / "c.yaml"
    path.write_text(yaml.safe_dump(CONFIG))
    config = load_config(path)
    summary = run_pipeline(config, run_dir=str(tmp_path / "run"), progress=False)
    start, climb = summary["start"], summary["stages"][0]
    assert [s["name"] for s in summary["stages"]] == ["climb"]  # the start is not a stage
    assert start["steps"] == 0 and start["test_problems"] == 6 and start["validation_problems"] == 4
    assert (tmp_path / "run" / "samples" / "start.txt").is_file()
    assert format_table(summary).splitlines()[2].startswith("start")
    for entry in (start, climb):
        assert entry["transfer"]["arith"]["test_problems"] == 5
        assert entry["mean_completion_tokens"] > 0

    # the start's figures are the initial model's, on the test problems; the transfer figure after the
    # stage is the trained model's on the transfer task's own test problems
    fresh = Policy.from_config(config.model, "cpu", seed=config.seed)
    task = make_task("arith", {"max_operand": 3})
    initial = evaluate(fresh, task, [1], 6, max_new_tokens=8, seed=1, split="test")
    assert start["accuracy"] == initial.accuracy
    assert start["mean_completion_tokens"] == initial.mean_completion_tokens
    trained = Policy.load(tmp_path / "run" / "checkpoints" / "climb")
    other = evaluate(trained, make_task("arith", {"min_operand": 7, "max_operand": 9}), [2], 5, max_new_tokens=8,
                     seed=1, split="test")
    assert climb["transfer"]["arith"]["accuracy"] == other.accuracy
    assert climb["transfer"]["arith"]["mean_completion_tokens"] == other.mean_completion_tokens
    assert json.loads((tmp_path / "run" / "summary.json").read_text())["start"] == start


def test_a_warm_start_run_has_no_start_entry_unless_asked(tmp_path) -> None:
    warm = {**CONFIG, "task": {**CONFIG["task"], "transfer": []},
            "stages": [{"name": "warm", "kind": "warmstart", "steps": 1, "levels": [1], "batch_size": 4}]}
    path = tmp_path / "c.yaml"
    path.write_text(yaml.safe_dump(warm))
    summary = run_pipeline(load_config(path), run_dir=str(tmp_path / "a"), progress=False)
    assert "start" not in summary
    summary = run_pipeline(load_config(path, ["task.eval_start=true"]), run_dir=str(tmp_path / "b"), progress=False)
    assert summary["start"]["test_problems"] == 6
