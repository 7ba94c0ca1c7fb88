"""The `shrinkthink` command on bad input, run as a user runs it (a subprocess): exit status 2,
one line on stderr that starts `shrinkthink: error:` and names what is wrong, never a traceback
unless `--debug` asks for one. And `shrinkthink tasks` lists the task table."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

SMALL = """\
name: cli
model: {kind: tiny, depth: 2}
task: {name: arith, eval_levels: [1], eval_problems: 4}
stages:
  - {name: warm, kind: warmstart, steps: 1, levels: [1], batch_size: 2}
"""


def cli(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_VERBOSITY": "error", "OMP_NUM_THREADS": "1"}
    return subprocess.run([sys.executable, "-m", "shrinkthink", *args], cwd=cwd, env=env, capture_output=True,
                          text=True, timeout=120)


@pytest.fixture
def config(tmp_path: Path) -> Path:
    path = tmp_path / "cli.yaml"
    path.write_text(SMALL)
    return path


def user_error(result: subprocess.CompletedProcess) -> str:
    """The one stderr line of a user error, after checking the exit status and the shape."""
    assert result.returncode == 2, result.stderr
    assert "Traceback" not in result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("shrinkthink: error: ")
    return lines[0]


def test_unknown_config_field(config: Path, tmp_path: Path) -> None:
    line = user_error(cli("run", str(config), "stages.0.batchsize=3", "--run-dir", "out", cwd=tmp_path))
    assert line == f"shrinkthink: error: {config}: stages.0.batchsize: unknown field"
    assert not (tmp_path / "out").exists()


def test_unknown_task_name(config: Path, tmp_path: Path) -> None:
    line = user_error(cli("run", str(config), "task.name=nope", "--run-dir", "out", cwd=tmp_path))
    assert "task.name: unknown task 'nope'" in line and "arith" in line


def test_wrong_type(config: Path, tmp_path: Path) -> None:
    line = user_error(cli("run", str(config), "seed=abc", cwd=tmp_path))
    assert f"{config}: seed: " in line and "integer" in line


def test_overrides_after_options_are_overrides(config: Path, tmp_path: Path) -> None:
    line = user_error(cli("run", "--no-progress", str(config), "--run-dir", "out", "seed=abc", cwd=tmp_path))
    assert f"{config}: seed: " in line and "integer" in line
    result = cli("run", str(config), "--run-dir", "out", "--bogus", cwd=tmp_path)
    assert result.returncode == 2 and "unrecognized arguments: --bogus" in result.stderr


def test_missing_model_path(config: Path, tmp_path: Path) -> None:
    line = user_error(cli("run", str(config), "model.kind=pretrained", "model.path=/nope", "--run-dir", "out",
                          cwd=tmp_path))
    assert "model.path: no such file or folder '/nope'" in line


def test_level_outside_the_task_names_the_field_and_writes_nothing(config: Path, tmp_path: Path) -> None:
    line = user_error(cli("run", str(config), "stages.0.levels=[1,99]", "--run-dir", "out", cwd=tmp_path))
    assert "stages.0.levels: level 99 is outside task arith's levels" in line
    assert not (tmp_path / "out").exists()


def test_jsonl_row_without_answer_names_file_and_line(config: Path, tmp_path: Path) -> None:
    data = tmp_path / "data.jsonl"
    data.write_text('{"question": "1+1?", "answer": 2}\n\n{"question": "2+2?"}\n')
    line = user_error(cli("run", str(config), "task.name=jsonl", f"task.options={{path: {data}}}",
                          "--run-dir", "out", cwd=tmp_path))
    assert f"{data}:3:" in line and "'answer'" in line


def test_eval_on_a_missing_checkpoint(tmp_path: Path) -> None:
    line = user_error(cli("eval", str(tmp_path / "nothing"), "--task", "arith", cwd=tmp_path))
    assert "checkpoint: no such file or folder" in line and "nothing" in line


@pytest.mark.parametrize("where", ["before the command", "after the command"])
def test_debug_shows_the_traceback(config: Path, tmp_path: Path, where: str) -> None:
    args = ["run", str(config), "task.name=nope", "--run-dir", "out"]
    args = ["--debug", *args] if where == "before the command" else [*args, "--debug"]
    result = cli(*args, cwd=tmp_path)
    assert result.returncode != 0
    assert "Traceback" in result.stderr and "UserError" in result.stderr
    assert "unknown task 'nope'" in result.stderr


def test_tasks_lists_builtins_and_reasoning_gym(tmp_path: Path) -> None:
    result = cli("tasks", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    names = [line.split()[0] for line in result.stdout.splitlines() if line.strip()]
    assert names[:5] == ["arith", "jsonl", "multiply", "prontoqa", "prosqa"]  # built-ins first
    gym = [n for n in names if n.startswith("gym:")]
    assert len(gym) > 20 and "gym:chain_sum" in gym
    assert all(len(line.split(maxsplit=1)) == 2 for line in result.stdout.splitlines())  # name, description


SHRINK = SMALL + """\
  - name: shrink
    kind: shrink
    steps: 1
    criteria: [{name: length_penalty}]
    editors: [{name: ablation_critic}]
    learner: {scale_rewards: batch}
"""


@pytest.fixture
def shrink_config(tmp_path: Path) -> Path:
    path = tmp_path / "shrink.yaml"
    path.write_text(SHRINK)
    return path


def test_unknown_criterion_name(shrink_config: Path, tmp_path: Path) -> None:
    line = user_error(cli("run", str(shrink_config), "stages.1.criteria.0.name=brevity", "--run-dir", "out",
                          cwd=tmp_path))
    assert f"{shrink_config}: stages.1.criteria.0" in line and "'brevity'" in line and "length_penalty" in line
    assert not (tmp_path / "out").exists()


def test_unknown_editor_name(shrink_config: Path, tmp_path: Path) -> None:
    line = user_error(cli("run", str(shrink_config), "stages.1.editors.0.name=oracle", cwd=tmp_path))
    assert "stages.1.editors.0" in line and "'oracle'" in line and "ablation_critic" in line


def test_tolerance_outside_zero_one(shrink_config: Path, tmp_path: Path) -> None:
    line = user_error(cli("run", str(shrink_config), "stages.1.tolerance=1.5", cwd=tmp_path))
    assert f"{shrink_config}: stages.1.tolerance: " in line and "1" in line


def test_critic_model_that_cannot_be_loaded(shrink_config: Path, tmp_path: Path) -> None:
    line = user_error(cli("run", str(shrink_config), "stages.1.editors.0={name: llm_critic, model: nowhere/critic}",
                          "--run-dir", "out", cwd=tmp_path))
    assert "stages.1.editors.0.model: " in line and "nowhere/critic" in line
    assert not (tmp_path / "out").exists()
