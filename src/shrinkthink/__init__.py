"""shrinkthink: solve it any way first, then solve it the right way, then solve it in your head.

The Python API: build or load a config, pass your own task object and reward functions, run, read
the summary (examples/custom_task.py, examples/custom_reward.py).

    import shrinkthink
    config = shrinkthink.load_config(None, ["model.depth=2"])  # None: the quickstart, embedded
    summary = shrinkthink.run(config, task=MyTask(), rewards={"brevity": brevity}, run_dir="runs/mine")
    print(summary["stages"][-1]["accuracy"])

Names resolve on first use, so `import shrinkthink` stays light (torch loads with `run`).
"""

from __future__ import annotations

import importlib
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"

# name -> the module that defines it
_LAZY = {
    "RunConfig": "shrinkthink.config",
    "load_config": "shrinkthink.config",
    "UserError": "shrinkthink.errors",
    "Problem": "shrinkthink.records",
    "Episode": "shrinkthink.records",
    "Task": "shrinkthink.tasks.base",
    "make_task": "shrinkthink.tasks",
}

__all__ = ["run", *_LAZY]

if TYPE_CHECKING:
    from shrinkthink.config import RunConfig
    from shrinkthink.tasks.base import Task


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'shrinkthink' has no attribute '{name}'")


def run(config: RunConfig | Mapping[str, Any] | str | Path, *, task: Task | None = None,
        rewards: Mapping[str, Callable[..., Any]] | None = None, run_dir: str | Path | None = None,
        resume: bool = False, progress: bool = True) -> dict[str, Any]:
    """Run every stage of `config` (a `RunConfig`, a mapping of its fields, or a YAML file) and
    return the summary that `summary.json` holds: per stage, test accuracy, reasoning tokens, steps.

    `task`: a `Task` object used instead of the one `config.task` names. `rewards`: reward
    functions by name, which a criterion `{name: reward, function: <name>}` names (criteria.py
    `UserReward` documents the call). Bad input raises `UserError`, with a one-line message that
    names the field.
    """
    from pydantic import ValidationError

    from shrinkthink import distributed
    from shrinkthink.config import RunConfig, format_validation_error, load_config
    from shrinkthink.errors import UserError
    from shrinkthink.pipeline import run_pipeline
    from shrinkthink.tasks.base import Task

    if isinstance(config, (str, Path)):
        config = load_config(config)
    elif not isinstance(config, RunConfig):
        try:
            config = RunConfig.model_validate(dict(config))
        except ValidationError as error:
            raise UserError(format_validation_error(error, "config")) from None
    if task is not None and not isinstance(task, Task):
        raise UserError(f"task: expected a shrinkthink Task object, got {type(task).__name__}")
    for name, function in (rewards or {}).items():
        if not callable(function):
            raise UserError(f"rewards.{name}: expected a callable, got {type(function).__name__}")
    try:
        return run_pipeline(config, run_dir=None if run_dir is None else str(run_dir), resume=resume,
                            progress=progress, task=task, rewards=rewards)
    finally:
        distributed.teardown()
