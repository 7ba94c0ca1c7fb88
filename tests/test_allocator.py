"""`allocator`: `shrinkthink run` starts itself again with tcmalloc (or jemalloc) preloaded, says
which allocator the run had, and computes the same numbers with each."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import typing
from pathlib import Path

import pytest

from shrinkthink import allocator
from shrinkthink.config import RunConfig
from shrinkthink.errors import UserError

RUN = """\
name: alloc
model: {kind: tiny, depth: 2}
task: {name: arith, eval_levels: [1], eval_problems: 4}
stages:
  - {name: warm, kind: warmstart, steps: 6, levels: [1, 2], batch_size: 8, eval_every: 6, eval_problems: 4}
"""
HAS_JEMALLOC = sys.platform.startswith("linux") and allocator.find("jemalloc") is not None
# what `auto` picks here: the first of LIBRARIES installed (on Linux; elsewhere it never relaunches)
AUTO = next((name for name in allocator.LIBRARIES if allocator.find(name)), "system") \
    if sys.platform.startswith("linux") else "system"


def run(tmp_path: Path, name: str, *overrides: str, env: dict | None = None) -> subprocess.CompletedProcess:
    (tmp_path / "alloc.yaml").write_text(RUN)
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1", **(env or {})}
    env.pop(allocator.TRIED, None)
    return subprocess.run([sys.executable, "-m", "shrinkthink", "run", "alloc.yaml", *overrides, "--run-dir", name,
                           "--no-progress"], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)


def losses(run_dir: Path) -> list[float]:
    return [row["loss"] for row in map(json.loads, (run_dir / "metrics.jsonl").read_text().splitlines())
            if "loss" in row]


@pytest.mark.skipif(AUTO == "system", reason="no tcmalloc or jemalloc here")
def test_auto_preloads_one_and_the_numbers_stay_the_same(tmp_path: Path) -> None:
    auto = run(tmp_path, "auto")
    system = run(tmp_path, "system", "allocator=system")
    assert auto.returncode == 0 and system.returncode == 0, auto.stderr + system.stderr
    assert json.loads((tmp_path / "auto" / "summary.json").read_text())["allocator"] == AUTO
    assert json.loads((tmp_path / "system" / "summary.json").read_text())["allocator"] == "system"
    assert len(losses(tmp_path / "auto")) == 6
    assert losses(tmp_path / "auto") == losses(tmp_path / "system")  # to the last bit
    assert "allocator: auto" in (tmp_path / "auto" / "config.yaml").read_text()


@pytest.mark.skipif(not HAS_JEMALLOC, reason="no jemalloc library on this machine")
def test_ranks_inherit_the_allocator(tmp_path: Path) -> None:
    result = run(tmp_path, "ranks", "allocator=jemalloc", "procs=2", "stages.0.steps=2", "stages.0.eval_every=2")
    assert result.returncode == 0, result.stderr
    assert json.loads((tmp_path / "ranks" / "summary.json").read_text())["allocator"] == "jemalloc"


def test_relaunch(monkeypatch: pytest.MonkeyPatch) -> None:
    calls = []
    monkeypatch.setattr(allocator.os, "execve", lambda path, argv, env: calls.append((path, argv, env)))
    monkeypatch.setattr(allocator.sys, "platform", "linux")
    monkeypatch.setattr(allocator, "loaded", lambda: "system")
    monkeypatch.delenv(allocator.TRIED, raising=False)
    monkeypatch.setenv("LD_PRELOAD", "libother.so")
    found = {"tcmalloc": None, "jemalloc": "libjemalloc.so.2"}
    monkeypatch.setattr(allocator, "find", found.get)

    allocator.relaunch("auto")  # no tcmalloc here: the next one
    (path, argv, env), = calls
    assert path == sys.executable and argv == sys.orig_argv
    assert env["LD_PRELOAD"] == "libjemalloc.so.2 libother.so"
    assert env[allocator.TRIED] == "libjemalloc.so.2"

    calls.clear()
    found["tcmalloc"] = "libtcmalloc_minimal.so.4"
    allocator.relaunch("auto")  # both: tcmalloc first
    assert calls[0][2]["LD_PRELOAD"] == "libtcmalloc_minimal.so.4 libother.so"

    calls.clear()
    allocator.relaunch("system")
    monkeypatch.setenv(allocator.TRIED, "libtcmalloc_minimal.so.4")
    allocator.relaunch("auto")  # tried already, and it did not load
    assert calls == []

    monkeypatch.delenv(allocator.TRIED)
    found["tcmalloc"] = found["jemalloc"] = None
    allocator.relaunch("auto")  # none installed: glibc's it is
    assert calls == []
    with pytest.raises(UserError, match="^allocator: no jemalloc library on this system"):
        allocator.relaunch("jemalloc")

    monkeypatch.setattr(allocator, "loaded", lambda: "jemalloc")  # preloaded by the user already
    found["tcmalloc"] = "libtcmalloc_minimal.so.4"
    allocator.relaunch("tcmalloc")
    assert calls == []


def test_an_unknown_allocator_is_one_line(tmp_path: Path) -> None:
    result = run(tmp_path, "bad", "allocator=mimalloc")
    assert result.returncode == 2 and "Traceback" not in result.stderr
    (line,) = result.stderr.strip().splitlines()
    assert line.startswith("shrinkthink: error: ") and "allocator: " in line and "jemalloc" in line
    assert not (tmp_path / "bad").exists()


def test_the_config_offers_each_library_allocator_knows() -> None:
    """`allocator` in the config names what relaunch() can find, and a package hint for each."""
    offered = set(typing.get_args(RunConfig.model_fields["allocator"].annotation))
    assert offered == {"auto", "system", *allocator.LIBRARIES}
    assert set(allocator.PACKAGES) == set(allocator.LIBRARIES)
