"""End to end through the CLI on a tiny model: a warm-start stage then an explore stage write the
config, a metrics line per step, the summary, checkpoints and plots; a run that crashes mid-stage
resumes to the same weights as one that did not; `eval` and `sample` read the checkpoints."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections import Counter
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from shrinkthink.config import load_config
from shrinkthink.pipeline import run_pipeline
from shrinkthink.stages import StageContext

CONFIG = """\
name: e2e
seed: 0
threads: 1
model: {kind: tiny, depth: 2}
task: {name: arith, options: {max_operand: 3}, eval_levels: [1, 2], eval_problems: 8}
stages:
  - name: warm
    kind: warmstart
    steps: 30
    levels: [1]
    batch_size: 32
    lr: 0.01
    digression_rate: 0.0
    warmup_steps: 5
    eval_every: 30
    eval_problems: 8
    checkpoint_every: 10
  - name: climb
    kind: explore
    steps: 5
    max_level: 2
    eval_every: 5
    eval_problems: 8
    checkpoint_every: 2
    learner: {group_size: 8, problems_per_step: 4}
    sampling: {max_new_tokens: 24}
"""
EXPLORE_FIELDS = {"reward", "level", "entropy", "zero_variance_share", "seconds", "tokens_per_s"}


def cli(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_VERBOSITY": "error", "OMP_NUM_THREADS": "1"}
    return subprocess.run([sys.executable, "-m", "shrinkthink", *args], cwd=cwd, env=env, capture_output=True,
                          text=True, timeout=300)


def metric_lines(run_dir: Path) -> list[dict]:
    return [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]


def step_keys(run_dir: Path) -> list[tuple[str, int]]:
    return [(r["stage"], r["step"]) for r in metric_lines(run_dir) if r.get("event") != "stage_end"]


def write_config(tmp_path_factory, name: str, text: str) -> Path:
    path = tmp_path_factory.mktemp("config") / f"{name}.yaml"
    path.write_text(text)
    return path


def run_to_end(config_path: Path, tmp_path_factory) -> tuple[Path, subprocess.CompletedProcess]:
    """`shrinkthink run` on the config in a fresh run dir; it must exit 0."""
    run_dir = tmp_path_factory.mktemp("runs") / config_path.stem
    result = cli("run", str(config_path), "--run-dir", str(run_dir), "--no-progress", cwd=config_path.parent)
    assert result.returncode == 0, result.stderr
    return run_dir, result


@pytest.fixture(scope="module")
def config_path(tmp_path_factory) -> Path:
    return write_config(tmp_path_factory, "e2e", CONFIG)


@pytest.fixture(scope="module")
def finished_run(config_path: Path, tmp_path_factory) -> Path:
    run_dir, result = run_to_end(config_path, tmp_path_factory)
    assert "climb" in result.stdout and "accuracy" in result.stdout  # the closing table
    return run_dir


def test_run_writes_config_metrics_summary_checkpoints_and_plots(finished_run: Path, config_path: Path) -> None:
    assert load_config(finished_run / "config.yaml") == load_config(config_path)  # the resolved config

    assert step_keys(finished_run) == [("warm", s) for s in range(1, 31)] + [("climb", s) for s in range(1, 6)]
    records = metric_lines(finished_run)
    for record in records:
        if record["stage"] == "climb" and record.get("event") != "stage_end":
            assert EXPLORE_FIELDS <= set(record), record
            assert record["level"] in (1, 2) and 0 <= record["reward"] <= 1 and record["tokens_per_s"] > 0
        elif record["stage"] == "warm" and record.get("event") != "stage_end":
            assert {"loss", "lr", "seconds", "tokens_per_s"} <= set(record)
    assert [r["stage"] for r in records if r.get("event") == "stage_end"] == ["warm", "climb"]

    summary = json.loads((finished_run / "summary.json").read_text())
    assert isinstance(summary["seconds"], float) and summary["seconds"] > 0
    assert [s["name"] for s in summary["stages"]] == ["warm", "climb"]
    for stage, steps in zip(summary["stages"], (30, 5)):
        assert {"name", "accuracy", "mean_reasoning_tokens", "digression_share", "seconds", "steps"} <= set(stage)
        assert stage["steps"] == steps and 0 <= stage["accuracy"] <= 1
        assert set(stage["accuracy_by_level"]) == {"1", "2"}

    for stage in ("warm", "climb"):
        assert (finished_run / "checkpoints" / stage / "model.safetensors").is_file()
    assert sorted(p.name for p in (finished_run / "plots").glob("*.png")) == ["accuracy_vs_tokens.png", "curves.png"]
    assert (finished_run / "samples" / "climb.txt").read_text().startswith("### level")


def test_explore_changed_the_parameters(finished_run: Path) -> None:
    warm = load_file(finished_run / "checkpoints" / "warm" / "model.safetensors")
    climb = load_file(finished_run / "checkpoints" / "climb" / "model.safetensors")
    assert warm.keys() == climb.keys()
    assert any(not torch.equal(warm[k], climb[k]) for k in warm)
    trained = [r.get("learner_trained_episodes", 0) for r in metric_lines(finished_run) if r["stage"] == "climb"]
    assert sum(trained) > 0  # some group had a reward to learn from


def test_a_finished_run_dir_is_not_overwritten(finished_run: Path, config_path: Path) -> None:
    with pytest.raises(Exception, match="already holds a run"):
        run_pipeline(load_config(config_path), run_dir=str(finished_run), progress=False)


def crash_in(stage: str, after_step: int, monkeypatch) -> None:
    """Make the run die right after logging `stage`'s step `after_step` (a step that comes after
    a checkpoint and will be run again)."""
    log = StageContext.log

    def crashing_log(self, step, **fields):
        log(self, step, **fields)
        if self.stage_name == stage and step == after_step:
            raise RuntimeError("simulated crash")

    monkeypatch.setattr(StageContext, "log", crashing_log)


def test_crash_then_resume_by_cli_ends_where_an_uninterrupted_run_ends(
    finished_run: Path, config_path: Path, tmp_path: Path, monkeypatch
) -> None:
    run_dir = tmp_path / "crashed"
    crash_in("climb", 3, monkeypatch)
    with pytest.raises(RuntimeError, match="simulated crash"):
        run_pipeline(load_config(config_path), run_dir=str(run_dir), progress=False)
    monkeypatch.undo()
    state = json.loads((run_dir / "checkpoints" / "latest" / "state.json").read_text())
    assert (state["stage_index"], state["stage_step"]) == (1, 2)
    assert ("climb", 3) in step_keys(run_dir)  # logged after the checkpoint: must not be doubled

    result = cli("run", "--resume", str(run_dir), "--no-progress", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    keys = step_keys(run_dir)
    assert not [k for k, n in Counter(keys).items() if n > 1]
    assert keys == step_keys(finished_run)
    summary = json.loads((run_dir / "summary.json").read_text())
    assert [(s["name"], s["steps"]) for s in summary["stages"]] == [("warm", 30), ("climb", 5)]
    # explore seeds every step from (seed, stage, step): the resumed run is the same run
    resumed = load_file(run_dir / "checkpoints" / "climb" / "model.safetensors")
    reference = load_file(finished_run / "checkpoints" / "climb" / "model.safetensors")
    assert all(torch.equal(resumed[k], reference[k]) for k in reference)
    expected = json.loads((finished_run / "summary.json").read_text())["stages"]
    for got, want in zip(summary["stages"], expected):
        assert (got["accuracy_by_level"], got["mean_reasoning_tokens"]) == (want["accuracy_by_level"],
                                                                              want["mean_reasoning_tokens"])


def test_resumed_run_evaluates_as_long_as_an_uninterrupted_one(config_path: Path, tmp_path: Path,
                                                               monkeypatch) -> None:
    """The stage-end evaluation length comes from every stage so far, finished ones included."""
    calls: list[tuple[str, int]] = []
    evaluate = StageContext.evaluate

    def spying_evaluate(self, levels, n, max_new_tokens, seed=1, split="validation"):
        calls.append((self.stage_name, max_new_tokens))
        return evaluate(self, levels, n, max_new_tokens, seed, split)

    monkeypatch.setattr(StageContext, "evaluate", spying_evaluate)
    config = load_config(config_path, ["stages.0.steps=10", "stages.0.eval_every=10", "stages.1.steps=3"])
    run_pipeline(config, run_dir=str(tmp_path / "whole"), progress=False)
    uninterrupted = list(calls)

    log = StageContext.log
    crash_in("climb", 2, monkeypatch)
    with pytest.raises(RuntimeError, match="simulated crash"):
        run_pipeline(config, run_dir=str(tmp_path / "crashed"), progress=False)
    monkeypatch.setattr(StageContext, "log", log)
    calls.clear()
    run_pipeline(config, run_dir=str(tmp_path / "crashed"), resume=True, progress=False)
    warm_tokens = json.loads((tmp_path / "whole" / "summary.json").read_text())["stages"][0]["max_new_tokens"]
    assert warm_tokens > 24
    assert uninterrupted[-1] == ("climb", warm_tokens)
    assert calls[-1] == uninterrupted[-1]


def test_eval_and_sample_read_a_stage_checkpoint(finished_run: Path, tmp_path: Path) -> None:
    checkpoint = finished_run / "checkpoints" / "climb"
    result = cli("eval", str(checkpoint), "--task", "arith", "--levels", "1", "2", "--n", "4",
                 "--max-new-tokens", "24", "--options", "{max_operand: 3}", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    report = json.loads(result.stdout)
    assert 0 <= report["accuracy"] <= 1 and set(report["accuracy_by_level"]) == {"1", "2"}

    result = cli("sample", str(checkpoint), "1+2=?", "--max-new-tokens", "16", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert 0 < len(result.stdout.strip()) <= 16


def test_a_fresh_run_in_a_dir_that_crashed_before_any_checkpoint_starts_a_clean_log(
    config_path: Path, tmp_path: Path, monkeypatch
) -> None:
    config = load_config(config_path, ["stages.0.steps=4", "stages.0.eval_every=4", "stages.1.steps=1"])
    log = StageContext.log
    crash_in("warm", 3, monkeypatch)
    with pytest.raises(RuntimeError, match="simulated crash"):
        run_pipeline(config, run_dir=str(tmp_path), progress=False)
    monkeypatch.setattr(StageContext, "log", log)
    run_pipeline(config, run_dir=str(tmp_path), progress=False)
    assert step_keys(tmp_path) == [("warm", 1), ("warm", 2), ("warm", 3), ("warm", 4), ("climb", 1)]


def test_a_resumed_stage_keeps_its_kl_reference(config_path: Path, tmp_path: Path, monkeypatch) -> None:
    """With a KL term the reference is the stage-start policy, also after a crash mid-stage: the
    resumed run ends on the same weights as one that never stopped."""
    config = load_config(config_path, ["stages.0.steps=10", "stages.0.eval_every=10", "stages.1.learner.kl_coef=0.5"])
    run_pipeline(config, run_dir=str(tmp_path / "whole"), progress=False)
    crash_in("climb", 3, monkeypatch)
    with pytest.raises(RuntimeError, match="simulated crash"):
        run_pipeline(config, run_dir=str(tmp_path / "crashed"), progress=False)
    monkeypatch.undo()
    run_pipeline(config, run_dir=str(tmp_path / "crashed"), resume=True, progress=False)
    resumed = load_file(tmp_path / "crashed" / "checkpoints" / "climb" / "model.safetensors")
    reference = load_file(tmp_path / "whole" / "checkpoints" / "climb" / "model.safetensors")
    assert all(torch.equal(resumed[k], reference[k]) for k in reference)
    kl = [r["learner_kl"] for r in metric_lines(tmp_path / "crashed") if r["stage"] == "climb" and "learner_kl" in r]
    assert kl and all(v >= 0 for v in kl)


def test_draw_problems_splits_a_batch_into_current_replayed_and_lookahead_levels() -> None:
    import random

    from shrinkthink.records import Problem
    from shrinkthink.stages.explore import draw_problems

    pools = {lv: [Problem(id=f"{lv}-{i}", prompt="", answer="0", level=lv) for i in range(5)] for lv in (1, 2, 3, 4)}
    drawn = Counter(p.level for p in draw_problems(pools, 3, 16, 0.25, random.Random(0), lookahead=0.25))
    assert drawn[3] == 8 and drawn[4] == 4 and drawn[2] + drawn[1] == 4 and drawn[2] >= 2
    # at the top level there is nothing to look ahead to: those problems stay at the current level
    top = Counter(p.level for p in draw_problems(pools, 4, 16, 0.25, random.Random(0), lookahead=0.25))
    assert top[4] == 12 and sum(top.values()) == 16
    # however the shares round, one problem stays at the current level
    small = Counter(p.level for p in draw_problems(pools, 2, 3, 0.5, random.Random(0), lookahead=0.45))
    assert small[2] >= 1 and sum(small.values()) == 3
    for n in range(1, 6):  # never more problems than asked for
        assert len(draw_problems(pools, 2, n, 0.6, random.Random(0), lookahead=0.3)) == n


def test_plateau_counts_evaluations_without_a_new_best_and_survives_a_resume() -> None:
    from shrinkthink.stages import Plateau

    plateau = Plateau(patience=2, min_delta=0.05)
    # 0.5 is the best; 0.52 is within min_delta (no progress); 0.6 is progress and resets the count
    assert [plateau.update(a) for a in (0.5, 0.52, 0.6, 0.58)] == [False, False, False, False]
    assert plateau.since == 1 and plateau.best == 0.6
    resumed = Plateau(patience=2, min_delta=0.05)
    resumed.load(plateau.state())
    assert resumed.update(0.64) is True  # the second evaluation without beating 0.6 by 0.05
    assert "2 evaluations without beating 0.60" in resumed.reason()
    assert not any(Plateau(patience=None).update(0.1) for _ in range(5))  # off by default


def test_explore_leaves_on_a_plateau_at_its_top_level(config_path: Path, tmp_path: Path) -> None:
    """A policy that cannot learn (learning rate ~0) keeps one accuracy: with patience 2 explore
    stops at the third evaluation, long before its step budget, and says why."""
    config = load_config(config_path, [
        "stages.0.steps=0", "stages.1.steps=20", "stages.1.max_level=1", "stages.1.eval_every=1",
        "stages.1.learner.lr=1e-12", "stages.1.gate.patience=2", "stages.1.learner.group_size=2",
        "stages.1.learner.problems_per_step=2", "stages.1.sampling.max_new_tokens=8"])
    run_pipeline(config, run_dir=str(tmp_path / "run"), progress=False)
    summary = json.loads((tmp_path / "run" / "summary.json").read_text())
    climb = next(s for s in summary["stages"] if s["name"] == "climb")
    assert climb["steps"] == 3 and climb["stop_reason"].startswith("gate: plateau, 2 evaluations")


@pytest.mark.parametrize("pool", [2, 4000])
def test_the_warm_start_draws_from_pool_problems_a_level(pool: int, tmp_path: Path, monkeypatch) -> None:
    from shrinkthink.stages import warmstart

    seen: set[tuple[int, ...]] = set()

    def recording_step(policy, optimizer, prompts, targets, **kwargs):
        seen.update(tuple(p) for p in prompts)
        return 0.0

    monkeypatch.setattr(warmstart, "supervised_step", recording_step)
    config = load_config(None, ["name=pool", "threads=1", "model.depth=1", "task.eval_levels=[1]",
                                "task.eval_problems=2", f"stages=[{{name: warm, kind: warmstart, levels: [1, 2], "
                                f"steps: 3, batch_size: 16, eval_every: 3, eval_problems: 2, pool_problems: {pool}}}]"])
    run_pipeline(config, run_dir=str(tmp_path / "run"), progress=False)
    assert len(seen) <= 2 * pool and (pool > 2) == (len(seen) > 4)
