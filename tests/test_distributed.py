"""Data-parallel ranks (distributed.py): each rank's share of the rows, and through the CLI, two
gloo ranks on this CPU (`--procs 2`, or the config's `procs: 2`) train the warm start to the
1-rank run's losses (their gradients sum to the whole batch's), evaluate the same, write one run
directory, resume a run a single process began, and report a bad input found inside a rank as one
line; ranks that cannot meet (a port taken) say so in one line too, with `--procs 1` as the way out."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file
from test_allocator import AUTO
from test_pipeline import CONFIG, cli, crash_in, metric_lines, step_keys

from shrinkthink import allocator, distributed
from shrinkthink.config import load_config
from shrinkthink.errors import SetupError, UserError
from shrinkthink.pipeline import run_pipeline
from shrinkthink.policy import pick_device


def launched_as(monkeypatch, me: int, size: int) -> None:
    """The environment torchrun gives rank `me` of `size` on one machine."""
    for key, value in {"RANK": me, "LOCAL_RANK": me, "WORLD_SIZE": size, "LOCAL_WORLD_SIZE": size}.items():
        monkeypatch.setenv(key, str(value))


def as_rank(monkeypatch, me: int, size: int) -> None:
    monkeypatch.setattr(distributed, "world", lambda: size)
    monkeypatch.setattr(distributed, "rank", lambda: me)


@pytest.mark.parametrize("size", [2, 3])
def test_blocks_and_balanced_shares_cover_every_row_once(monkeypatch, size: int) -> None:
    lengths = [5, 90, 7, 60, 61, 3, 40, 41, 8]
    blocks, shares = [], []
    for me in range(size):
        as_rank(monkeypatch, me, size)
        blocks.append(list(distributed.block(len(lengths))))
        shares.append(distributed.balanced(lengths))
    assert [i for b in blocks for i in b] == list(range(len(lengths)))  # contiguous, in rank order
    assert sorted(i for s in shares for i in s) == list(range(len(lengths)))
    tokens = [sum(lengths[i] for i in s) for s in shares]
    assert max(tokens) - min(tokens) <= max(lengths)  # dealt by length, not cut in runs
    as_rank(monkeypatch, 0, 1)
    assert distributed.balanced(lengths) == list(range(len(lengths)))


def test_one_rank_changes_nothing() -> None:
    grads = torch.nn.Linear(3, 2)
    grads(torch.ones(1, 3)).sum().backward()
    before = grads.weight.grad.clone()
    assert distributed.sync_gradients(grads.parameters(), [1.5]) == [1.5]
    assert torch.equal(grads.weight.grad, before)
    assert distributed.gather([1, 2]) == [1, 2]


@pytest.fixture(scope="module")
def runs(tmp_path_factory) -> tuple[Path, Path]:
    """The e2e config run on one rank and on two (these asked for by the config's `procs`)."""
    folder = tmp_path_factory.mktemp("ranks")
    (folder / "e2e.yaml").write_text(CONFIG)
    for procs, ask in (("1", ["--procs", "1"]), ("2", ["procs=2"])):
        result = cli("run", "e2e.yaml", "--run-dir", f"run{procs}", "--no-progress", *ask, cwd=folder)
        assert result.returncode == 0, result.stderr
        assert result.stdout.count("run dir:") == 1  # rank 0 alone prints the table
    return folder / "run1", folder / "run2"


def test_two_ranks_train_the_warm_start_as_one_does(runs: tuple[Path, Path]) -> None:
    one, two = runs
    losses = [[r["loss"] for r in metric_lines(d) if r["stage"] == "warm" and "loss" in r] for d in (one, two)]
    assert len(losses[0]) == len(losses[1]) == 30
    # the same batches, half on each rank: the summed gradients are the whole batch's
    assert losses[1] == pytest.approx(losses[0], rel=1e-4)
    weights = [load_file(d / "checkpoints" / "warm" / "model.safetensors") for d in (one, two)]
    assert all(torch.allclose(weights[0][k], weights[1][k], atol=1e-4) for k in weights[0])
    # and the evaluation of (nearly) the same weights, its rows split and gathered, is the same
    stages = [json.loads((d / "summary.json").read_text())["stages"][0] for d in (one, two)]
    assert (stages[1]["accuracy_by_level"], stages[1]["mean_reasoning_tokens"]) == \
        (stages[0]["accuracy_by_level"], stages[0]["mean_reasoning_tokens"])


def test_two_ranks_write_one_run_directory(runs: tuple[Path, Path]) -> None:
    one, two = runs
    # the resolved config records the ranks the run had: `--resume` starts as many again
    assert [load_config(d / "config.yaml").procs for d in (one, two)] == [1, 2]
    assert step_keys(two) == step_keys(one)  # a line a step, not a line a rank
    summary = json.loads((two / "summary.json").read_text())
    assert [s["name"] for s in summary["stages"]] == ["warm", "climb"]
    assert (two / "checkpoints" / "climb" / "model.safetensors").is_file()
    assert (two / "samples" / "climb.txt").read_text()
    assert not list(two.glob("checkpoints/.*.tmp"))
    # the explore stage samples differently on two ranks, but it trained
    before = load_file(two / "checkpoints" / "warm" / "model.safetensors")
    after = load_file(two / "checkpoints" / "climb" / "model.safetensors")
    assert any(not torch.equal(before[k], after[k]) for k in before)


def test_torchrun_starts_the_ranks_procs_does(runs: tuple[Path, Path]) -> None:
    """`torchrun --nproc-per-node 2 -m shrinkthink run CFG`, the multi-GPU and multi-machine way
    in: its two ranks log what `--procs 2` logs, step for step, and rank 0, which torchrun started
    with no allocator preloaded, relaunched itself with the one `auto` picks."""
    _, two = runs
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_VERBOSITY": "error", "OMP_NUM_THREADS": "1"}
    env.pop(allocator.TRIED, None)
    result = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2",
                             "-m", "shrinkthink", "run", "e2e.yaml", "--run-dir", "torchrun", "--no-progress"],
                            cwd=two.parent, env=env, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr
    assert result.stdout.count("run dir:") == 1
    launched = two.parent / "torchrun"
    assert step_keys(launched) == step_keys(two)

    def measured(run_dir: Path) -> list[dict]:
        return [{k: row[k] for k in ("loss", "reward", "accuracy", "mean_reasoning_tokens") if k in row}
                for row in metric_lines(run_dir)]

    for ours, theirs in zip(measured(launched), measured(two), strict=True):
        assert ours == pytest.approx(theirs, rel=1e-6)
    summary = json.loads((launched / "summary.json").read_text())
    assert summary["allocator"] == json.loads((two / "summary.json").read_text())["allocator"] == AUTO
    assert load_config(launched / "config.yaml").procs == 2


def test_two_ranks_resume_a_run_one_process_began(tmp_path: Path, monkeypatch) -> None:
    config_path = tmp_path / "e2e.yaml"
    config_path.write_text(CONFIG)
    run_dir = tmp_path / "crashed"
    crash_in("climb", 3, monkeypatch)
    with pytest.raises(RuntimeError, match="simulated crash"):
        run_pipeline(load_config(config_path), run_dir=str(run_dir), progress=False)
    monkeypatch.undo()
    result = cli("run", "--resume", str(run_dir), "--no-progress", "--procs", "2", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    keys = step_keys(run_dir)
    assert len(keys) == len(set(keys)) == 35  # 30 warm-start steps and 5 explore steps, none twice
    summary = json.loads((run_dir / "summary.json").read_text())
    assert [(s["name"], s["steps"]) for s in summary["stages"]] == [("warm", 30), ("climb", 5)]


def test_a_bad_input_found_inside_a_rank_is_one_line(tmp_path: Path) -> None:
    (tmp_path / "e2e.yaml").write_text(CONFIG.replace("max_level: 2", "max_level: 99"))
    result = cli("run", "e2e.yaml", "--run-dir", "run", "--no-progress", "--procs", "2", cwd=tmp_path)
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and "stages.1.max_level" in lines[0] and "Traceback" not in result.stderr
    assert not (tmp_path / "run" / "checkpoints").exists()


def test_procs_must_be_a_positive_count(tmp_path: Path) -> None:
    result = cli("run", "--procs", "0", cwd=tmp_path)
    assert result.returncode == 2 and "--procs" in result.stderr
    result = cli("run", "procs=0", cwd=tmp_path)
    assert result.returncode == 2
    assert result.stderr.strip().endswith("procs: Input should be greater than or equal to 1")


@pytest.fixture
def taken_port():
    with socket.socket() as taken:  # listening: a process group cannot open its store here
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        yield taken.getsockname()[1]


def test_ranks_that_cannot_meet_say_so_in_one_line(monkeypatch, tmp_path: Path, taken_port: int) -> None:
    monkeypatch.setenv("MASTER_ADDR", "127.0.0.1")
    monkeypatch.setenv("MASTER_PORT", str(taken_port))
    launched_as(monkeypatch, 0, 2)
    with pytest.raises(SetupError, match=r"2 ranks could not meet \(gloo at 127\.0\.0\.1:\d+\).*--procs 1"):
        distributed.setup(torch.device("cpu"))
    # through the command, as torchrun would start rank 0: one line, status 1, nothing written
    (tmp_path / "e2e.yaml").write_text(CONFIG)
    result = cli("run", "e2e.yaml", "--run-dir", "run", "--no-progress", cwd=tmp_path)
    assert result.returncode == 1
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("shrinkthink: error: rank 0: 2 ranks could not meet"), lines
    assert not (tmp_path / "run").exists()


SPAWN_ON_A_TAKEN_PORT = """
import socket, sys
from shrinkthink import cli

if __name__ == "__main__":
    taken = socket.socket()
    taken.bind(("127.0.0.1", 0))
    taken.listen()
    port = taken.getsockname()[1]

    class Probe(socket.socket):  # the free port `--procs` looks for is the taken one
        def getsockname(self):
            return ("127.0.0.1", port)

    socket.socket = Probe
    sys.exit(cli.main(["run", "e2e.yaml", "--run-dir", "run", "--no-progress", "--procs", "2"]))
"""


def test_ranks_started_by_procs_that_cannot_meet_say_so_in_one_line(tmp_path: Path) -> None:
    (tmp_path / "e2e.yaml").write_text(CONFIG)
    (tmp_path / "spawn.py").write_text(SPAWN_ON_A_TAKEN_PORT)
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1"}
    result = subprocess.run([sys.executable, "spawn.py"], cwd=tmp_path, env=env, capture_output=True, text=True,
                            timeout=300)
    assert result.returncode == 1
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and "ranks could not meet (gloo at 127.0.0.1:" in lines[0] and "--procs 1" in lines[0], lines
    assert not (tmp_path / "run").exists()


def test_the_quickstarts_ranks_start_on_a_machine_with_one_gpu(monkeypatch) -> None:
    """`shrinkthink run` on a one-GPU machine: the quickstart's 2 ranks are the CPU job there too,
    where a config that asks for CUDA with more ranks than GPUs is one line naming `device`."""
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 1)
    launched_as(monkeypatch, 1, 2)
    quickstart = load_config(None)
    assert quickstart.procs == 2 and pick_device(quickstart.device) == torch.device("cpu")
    with pytest.raises(UserError, match=r"^device: rank 1 of this machine has no CUDA device of its own \(1 here\)"):
        pick_device("auto")
