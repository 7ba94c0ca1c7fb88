"""Stages of the curriculum. Each owns an explicit loop (warmstart.py, explore.py, shrink.py,
latent.py) and talks to the run through a `StageContext`: log a step, save a resumable checkpoint,
evaluate."""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from safetensors.torch import load_file
from tqdm.auto import tqdm

from shrinkthink.config import RunConfig
from shrinkthink.evaluate import Evaluation, evaluate
from shrinkthink.policy import Policy
from shrinkthink.rundir import RunDir
from shrinkthink.tasks.base import Split, Task


@dataclass
class StageResult:
    steps: int
    stop_reason: str
    extra: dict[str, Any] = field(default_factory=dict)


@dataclass
class Plateau:
    """Early stopping on held-out accuracy (`gate.patience`): `update` says whether `patience`
    evaluations in a row have gone by without beating the best by more than `min_delta`."""

    patience: int | None
    min_delta: float = 0.0
    best: float | None = None
    since: int = 0  # evaluations since the best

    def update(self, accuracy: float) -> bool:
        if self.best is None or accuracy > self.best + self.min_delta:
            self.best, self.since = accuracy, 0
        else:
            self.since += 1
        return self.patience is not None and self.since >= self.patience

    def reason(self) -> str:
        return f"gate: plateau, {self.since} evaluations without beating {self.best:.2f}"

    def state(self) -> dict[str, Any]:
        return {"best": self.best, "since": self.since}

    def load(self, state: dict[str, Any] | None) -> None:
        if state:
            self.best, self.since = state["best"], state["since"]


@dataclass
class StageContext:
    config: RunConfig
    policy: Policy
    task: Task
    run: RunDir
    stage_index: int
    stage_name: str
    progress: bool = True
    resume_state: dict[str, Any] | None = None
    started: float = field(default_factory=time.time)
    # reward functions the Python API was given, by the name a `reward` criterion's `function` uses
    rewards: Mapping[str, Callable[..., Any]] = field(default_factory=dict)

    def log(self, step: int, **fields: Any) -> None:
        self.run.log({"stage": self.stage_name, "stage_index": self.stage_index, "step": step, **fields})

    def checkpoint(self, step: int, trainer: dict[str, Any], stage_state: dict[str, Any]) -> None:
        self.run.save_latest(
            self.policy,
            trainer,
            {"stage_index": self.stage_index, "stage_step": step, "stage_state": stage_state,
             "stage_seconds": time.time() - self.started},
        )

    def evaluate(self, levels: list[int], n: int, max_new_tokens: int, seed: int = 1,
                 split: Split = "validation") -> Evaluation:
        """Greedy evaluation; a stage decides on the validation split, the run reports the test split.
        The same `seed` draws the same problems each time, so two evaluations pair up."""
        return evaluate(self.policy, self.task, levels, n, max_new_tokens=max_new_tokens, seed=seed, split=split)

    def anchor_reference(self, learner) -> None:
        """KL's frozen reference is the stage-start policy. It is written beside the checkpoints
        when the stage starts, so that a resumed stage anchors to it rather than to the
        mid-stage policy it resumes from."""
        if learner.reference is None:
            return
        folder = self.run.checkpoints / f".{self.stage_name}-reference"
        lora = hasattr(self.policy.model, "peft_config")  # the frozen base plus the stage-start adapter
        if self.resume_state is None:
            if lora:
                self.run.save_adapter(folder.name, self.policy)  # the base is the checkpoints' own
            else:
                self.run.save_policy(folder.name, self.policy)
        elif lora and (folder / "adapter_config.json").is_file():
            from peft.utils import load_peft_weights, set_peft_model_state_dict

            set_peft_model_state_dict(learner.reference, load_peft_weights(str(folder), device=str(self.policy.device)))
        elif not lora and (folder / "model.safetensors").is_file():
            load_weights(learner.reference, folder)

    def bar(self, total: int, initial: int) -> tqdm:
        return tqdm(total=total, initial=initial, desc=self.stage_name, disable=not (self.progress and self.run.writes),
                    dynamic_ncols=True, leave=True)


def load_weights(model, folder: Path) -> None:
    """Weights saved by `Policy.save` into `model` (same architecture), in place."""
    state = load_file(str(folder / "model.safetensors"), device=str(next(model.parameters()).device))
    missing, unexpected = model.load_state_dict(state, strict=False)
    # save_pretrained drops a tied output matrix; anything else missing would be a real loss
    tied = set(getattr(model, "_tied_weights_keys", None) or []) | {"lm_head.weight"}
    if unexpected or set(missing) - tied:
        raise RuntimeError(f"{folder}: weights do not fit the model (missing {missing}, unexpected {unexpected})")
