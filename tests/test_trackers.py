"""Live logging: with `logging: [tensorboard]` the event files hold exactly the scalars of
metrics.jsonl (read back with TensorBoard's own reader), and every `log_completions_every` steps a
completions table goes to samples/completions.jsonl and to TensorBoard's text panel; W&B in offline
mode writes its run folder; a tracker that is not installed is one line naming the field and the
pip command."""

from __future__ import annotations

import json
import sys
from collections import defaultdict
from pathlib import Path
from typing import Any

import pytest

from shrinkthink import trackers
from shrinkthink.cli import main
from shrinkthink.config import load_config
from shrinkthink.errors import UserError
from shrinkthink.pipeline import run_pipeline
from shrinkthink.records import Episode, Problem
from shrinkthink.rundir import RunDir

CONFIG = """\
name: trackers
seed: 0
threads: 1
logging: [tensorboard]
log_completions_every: 1
model: {kind: tiny, depth: 1}
task: {name: arith, options: {max_operand: 3}, eval_levels: [1, 2], eval_problems: 4}
stages:
  - {name: warm, kind: warmstart, steps: 6, levels: [1, 2], batch_size: 16, lr: 0.01, eval_every: 3,
     eval_problems: 4}
  - name: tighten
    kind: shrink
    steps: 2
    eval_every: 2
    eval_problems: 4
    criteria: [{name: length_penalty}]
    probe_problems: 0
    restore_best: false
    learner: {group_size: 4, problems_per_step: 2, scale_rewards: batch}
    sampling: {max_new_tokens: 16}
"""


def expected_scalars(record: dict[str, Any]) -> dict[str, float]:
    """What a metrics line must become: `stage[/event]/key` (nested keys joined by `/`), numbers
    and booleans only."""
    prefix = record["stage"] + (f"/{record['event']}" if "event" in record else "")
    out = {}

    def visit(tag: str, value: Any) -> None:
        if isinstance(value, dict):
            for key, inner in value.items():
                visit(f"{tag}/{key}", inner)
        elif isinstance(value, (bool, int, float)):
            out[tag] = float(value)

    for key, value in record.items():
        if key not in ("stage", "stage_index", "step", "event"):
            visit(f"{prefix}/{key}", value)
    return out


@pytest.fixture(scope="module")
def tracked_run(tmp_path_factory) -> Path:
    pytest.importorskip("tensorboard")
    path = tmp_path_factory.mktemp("config") / "trackers.yaml"
    path.write_text(CONFIG)
    run_dir = tmp_path_factory.mktemp("runs") / "trackers"
    run_pipeline(load_config(path), run_dir=str(run_dir), progress=False)
    return run_dir


def test_tensorboard_holds_the_scalars_of_metrics_jsonl(tracked_run: Path) -> None:
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    expected: dict[tuple[str, int], float] = {}
    for line in (tracked_run / "metrics.jsonl").read_text().splitlines():
        record = json.loads(line)
        for tag, value in expected_scalars(record).items():
            assert (tag, record["step"]) not in expected
            expected[tag, record["step"]] = value
    assert ("warm/loss", 6) in expected and ("tighten/reward_length_penalty", 2) in expected
    assert ("tighten/stage_end/accuracy_by_level/2", 2) in expected and ("tighten/reference/accuracy", 0) in expected

    events = EventAccumulator(str(tracked_run / "tensorboard"), size_guidance={"scalars": 0, "tensors": 0})
    events.Reload()
    found: dict[tuple[str, int], list[float]] = defaultdict(list)
    for tag in events.Tags()["scalars"]:
        for event in events.Scalars(tag):
            found[tag, event.step].append(event.value)
    assert set(found) == set(expected)
    for key, value in expected.items():
        assert found[key] == [pytest.approx(value, rel=1e-6, abs=1e-30)], key

    # the completions table, as text, at each step it was logged
    table = events.Tensors("tighten/completions/text_summary")
    assert [t.step for t in table] == [1, 2]
    text = table[0].tensor_proto.string_val[0].decode()
    assert text.startswith("| problem | answer | completion | reward | reward_correct | reward_length_penalty |")


def test_the_completions_table_is_the_steps_batch(tracked_run: Path) -> None:
    rows = [json.loads(line) for line in (tracked_run / "samples" / "completions.jsonl").read_text().splitlines()]
    steps = {r["step"]: r for r in map(json.loads, (tracked_run / "metrics.jsonl").read_text().splitlines())
             if r["stage"] == "tighten" and "event" not in r}
    assert [r["step"] for r in rows] == [1] * 8 + [2] * 8  # 2 problems x 4 samples a step
    for row in rows:
        assert {"problem", "answer", "completion", "reward", "reward_correct", "reward_length_penalty",
                "reasoning_tokens", "completion_tokens"} <= set(row)
    for step, record in steps.items():
        batch = [r for r in rows if r["step"] == step]
        for key in ("reward", "reward_correct", "reward_length_penalty", "mean_reasoning_tokens"):
            column = "reasoning_tokens" if key == "mean_reasoning_tokens" else key
            assert sum(r[column] for r in batch) / len(batch) == pytest.approx(record[key]), key


def test_a_tracker_that_is_not_installed_is_one_line(tmp_path: Path, monkeypatch, capsys) -> None:
    monkeypatch.setitem(sys.modules, "wandb", None)  # import wandb now fails, installed or not
    config = tmp_path / "run.yaml"
    config.write_text(CONFIG.replace("logging: [tensorboard]", "logging: [wandb]"))
    assert main(["run", str(config), "--run-dir", str(tmp_path / "run"), "--no-progress"]) == 2
    err = capsys.readouterr().err
    assert err == "shrinkthink: error: logging.0: 'wandb' is not installed; pip install 'shrinkthink[wandb]' " \
                  "(or leave it out of logging)\n"
    assert not (tmp_path / "run").exists()
    monkeypatch.setitem(sys.modules, "tensorboard", None)
    monkeypatch.setitem(sys.modules, "tensorboardX", None)
    with pytest.raises(UserError, match=r"^logging\.0: 'tensorboard' is not installed; pip install "):
        trackers.check(["tensorboard"])


def test_wandb_mode_is_offline_without_an_account(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.setenv("HOME", str(tmp_path))  # no ~/.netrc from `wandb login`
    monkeypatch.delenv("NETRC", raising=False)
    monkeypatch.delenv("WANDB_API_KEY", raising=False)
    monkeypatch.delenv("WANDB_MODE", raising=False)
    assert trackers.wandb_mode() == "offline"
    monkeypatch.setenv("WANDB_API_KEY", "x" * 40)
    assert trackers.wandb_mode() == "online"
    monkeypatch.setenv("WANDB_MODE", "disabled")
    assert trackers.wandb_mode() == "disabled"


def test_wandb_offline_writes_its_run_folder(tmp_path: Path, monkeypatch) -> None:
    pytest.importorskip("wandb")
    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_SILENT", "true")
    run = RunDir(tmp_path / "run")
    run.track(["wandb"], 1, {"name": "trackers"})
    run.log({"stage": "climb", "stage_index": 0, "step": 1, "reward": 0.5, "level": 2})
    problem = Problem(id="p", prompt="1+2=?", answer="3")
    episode = Episode(problem=problem, prompt_ids=[1], completion_ids=[2, 3], logprobs=[0.0, 0.0], text="Answer: 3",
                      finished=True, reward=1.0, components={"correct": 1.0}, reasoning_tokens=0)
    run.log_completions("climb", 1, [episode])
    run.close()
    run_id = (tmp_path / "run" / "wandb-run-id").read_text()
    folders = list((tmp_path / "run" / "wandb").glob(f"offline-run-*-{run_id}"))
    assert len(folders) == 1 and (folders[0] / f"run-{run_id}.wandb").stat().st_size > 0
    assert (tmp_path / "run" / "samples" / "completions.jsonl").read_text().count("\n") == 1


def test_the_markdown_table_keeps_a_completion_in_its_cell() -> None:
    rows = [{"stage": "s", "step": 1, "problem": "1+2=?", "completion": "a|b\nAnswer: 3", "reward": 0.123456}]
    assert trackers.markdown_table(rows) == ("| problem | completion | reward |\n|---|---|---|\n"
                                             "| 1+2=? | a\\|b<br>Answer: 3 | 0.1235 |")


def test_explore_steps_log_their_completions_too(tmp_path: Path) -> None:
    config = tmp_path / "explore.yaml"
    config.write_text(CONFIG.replace("logging: [tensorboard]\n", "").replace(
        "log_completions_every: 1", "log_completions_every: 2").split("stages:")[0] + """stages:
  - name: climb
    kind: explore
    steps: 4
    max_level: 1
    eval_every: 100
    eval_problems: 2
    learner: {group_size: 2, problems_per_step: 2}
    sampling: {max_new_tokens: 8}
""")
    run_pipeline(load_config(config), run_dir=str(tmp_path / "run"), progress=False)
    rows = [json.loads(line) for line in (tmp_path / "run" / "samples" / "completions.jsonl").read_text().splitlines()]
    assert [(r["stage"], r["step"]) for r in rows] == [("climb", 2)] * 4 + [("climb", 4)] * 4
