"""The run directory: resolved config, an append-only metrics log, checkpoints and a summary.

Every file that matters is replaced atomically (written beside, then renamed), so a crash at any
moment leaves the previous version whole. Checkpoints keep the previous one until the new one is
complete.

    runs/<name>/config.yaml  metrics.jsonl  summary.json  report.html  plots/
                samples/<stage>.txt, <stage>.jsonl  (held-out transcripts at the end of each stage)
                samples/<stage>-edits.jsonl         (a few of the shrink editors' edits)
                samples/completions.jsonl           (sampled completions, `log_completions_every`)
                tensorboard/  wandb/                (the trackers `logging` names, trackers.py)
                checkpoints/latest/  (resumable: weights, optimizer, state.json)
                checkpoints/<stage>/ (each finished stage's policy, loadable by `eval` and `sample`)

On several ranks (distributed.py) only rank 0 writes; every rank reads. A folder is complete on
disk for every rank once `_save_folder` returns (a barrier), so a later read finds it.
"""

from __future__ import annotations

import json
import os
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

from shrinkthink import distributed
from shrinkthink.policy import Policy
from shrinkthink.trackers import Tracker, append_jsonl, completion_rows, open_trackers

EDIT_EXAMPLES = 2  # changed edits kept from one editor's call
EDIT_EXAMPLES_PER_STAGE = 24


def write_atomic(path: Path, text: str) -> None:
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "w") as handle:
        handle.write(text)
        handle.flush()
        os.fsync(handle.fileno())
    os.replace(tmp, path)


class RunDir:
    def __init__(self, path: str | os.PathLike) -> None:
        self.path = Path(path)
        self.writes = distributed.is_main()
        if self.writes:
            self.path.mkdir(parents=True, exist_ok=True)
        self.checkpoints = self.path / "checkpoints"
        self.metrics_path = self.path / "metrics.jsonl"
        self._metrics = None
        self.trackers: list[Tracker] = []
        self.completions_every = 0
        self._edit_calls: dict[tuple[str, str], tuple[int, int]] = {}  # (stage, editor): (calls, examples kept)
        self._edit_rows: dict[str, int] = {}

    def track(self, names: list[str], completions_every: int, config: dict[str, Any]) -> None:
        """Send every metrics line to the trackers `names` too (trackers.py), and every
        `completions_every` steps (0: never) a table of the step's sampled completions."""
        self.completions_every = completions_every
        if self.writes:
            self.trackers = open_trackers(names, self.path, config)

    def write_config(self, text: str) -> None:
        self.write_text("config.yaml", text)

    def write_text(self, name: str, text: str) -> None:
        """A file of the run directory (`name` relative to it), replaced atomically."""
        if self.writes:
            (self.path / name).parent.mkdir(parents=True, exist_ok=True)
            write_atomic(self.path / name, text)

    def log(self, record: dict[str, Any]) -> None:
        if not self.writes:
            return
        if self._metrics is None:
            self._metrics = open(self.metrics_path, "a")
        self._metrics.write(json.dumps(record) + "\n")
        self._metrics.flush()
        for tracker in self.trackers:
            tracker.log(record)

    def log_completions(self, stage: str, step: int, episodes) -> None:
        """Every `completions_every` steps, the step's sampled episodes as a table (problem,
        completion, reward and its components, tokens): to samples/completions.jsonl and each tracker."""
        if not self.writes or not self.completions_every or step % self.completions_every:
            return
        rows = completion_rows(stage, step, episodes)
        append_jsonl(self.path / "samples" / "completions.jsonl", rows)
        for tracker in self.trackers:
            tracker.table(stage, step, rows)

    def log_edits(self, stage: str, editor: str, edits) -> None:
        """A few of an editor's edits that changed their winner, for the report's viewer:
        samples/<stage>-edits.jsonl. Kept from the editor's first call that changed anything, then
        from its 2nd, 4th, 8th... call, so that they span the stage; `EDIT_EXAMPLES_PER_STAGE` at most."""
        if not self.writes:
            return
        calls, kept = self._edit_calls.get((stage, editor), (0, 0))
        calls += 1
        path = self.path / "samples" / f"{stage}-edits.jsonl"
        if stage not in self._edit_rows:  # a resumed stage counts the examples it already has
            self._edit_rows[stage] = len(path.read_text().splitlines()) if path.is_file() else 0
        room = min(EDIT_EXAMPLES, EDIT_EXAMPLES_PER_STAGE - self._edit_rows[stage])
        rows = []
        if room > 0 and (kept == 0 or calls & (calls - 1) == 0):
            rows = [{"editor": editor, "call": calls, "problem_id": e.problem.id, "level": e.problem.level,
                     "prompt": e.problem.prompt, "answer": e.problem.answer, "before": e.before, "after": e.after}
                    for e in edits if e.changed][:room]
        if rows:
            append_jsonl(path, rows)
            self._edit_rows[stage] += len(rows)
        self._edit_calls[stage, editor] = (calls, kept + len(rows))

    def close(self) -> None:
        if self._metrics is not None:
            self._metrics.close()
            self._metrics = None
        for tracker in self.trackers:
            tracker.close()
        self.trackers = []

    def write_summary(self, summary: dict[str, Any]) -> None:
        self.write_text("summary.json", json.dumps(summary, indent=2))

    def read_summary(self) -> dict[str, Any] | None:
        path = self.path / "summary.json"
        return json.loads(path.read_text()) if path.is_file() else None

    def save_policy(self, name: str, policy: Policy) -> Path:
        """A finished stage's policy, loadable with `Policy.load`."""
        return self._save_folder(name, policy.save)

    def save_adapter(self, name: str, policy: Policy) -> Path:
        """A LoRA policy's adapter alone (peft's folder layout), without the frozen base."""
        return self._save_folder(name, lambda tmp: policy.model.save_pretrained(tmp, safe_serialization=True))

    def save_latest(self, policy: Policy, trainer: dict[str, Any] | None, state: dict[str, Any]) -> None:
        """The resumable checkpoint: weights, the trainer's state (optimizer, schedule), and where
        the run stands."""
        def write(tmp: Path) -> None:
            policy.save(tmp)
            if trainer is not None:
                torch.save(trainer, tmp / "trainer.pt")
            write_atomic(tmp / "state.json", json.dumps(state, indent=2))

        self._save_folder("latest", write)

    def _save_folder(self, name: str, write: Callable[[Path], None]) -> Path:
        """`write` fills a fresh temporary folder, which then replaces checkpoints/<name>: a crash
        part-way leaves the previous folder whole."""
        target = self.checkpoints / name
        if self.writes:
            tmp = self.checkpoints / f".{name}.tmp"
            shutil.rmtree(tmp, ignore_errors=True)
            write(tmp)
            self._swap_in(tmp, target)
        distributed.barrier()
        return target

    def _swap_in(self, tmp: Path, target: Path) -> None:
        old = target.with_name(f".{target.name}.old")
        shutil.rmtree(old, ignore_errors=True)
        if target.exists():
            os.replace(target, old)
        os.replace(tmp, target)
        shutil.rmtree(old, ignore_errors=True)

    def latest(self) -> tuple[Path, dict[str, Any]] | None:
        """The newest complete resumable checkpoint (the previous one if a crash hit a swap)."""
        for candidate in (self.checkpoints / "latest", self.checkpoints / ".latest.old"):
            state = candidate / "state.json"
            if state.is_file():
                return candidate, json.loads(state.read_text())
        return None

    def truncate_metrics(self, keep) -> None:
        """Drop metric lines written after the checkpoint a resumed run restarts from (a crashed
        run logged steps that will be run again); `keep(record)` says which lines stay."""
        if not self.writes or not self.metrics_path.is_file():
            return
        kept = []
        for line in self.metrics_path.read_text().splitlines():
            try:
                record = json.loads(line)
            except json.JSONDecodeError:
                continue  # a line cut short by the crash
            if keep(record):
                kept.append(line)
        write_atomic(self.metrics_path, "".join(line + "\n" for line in kept))
