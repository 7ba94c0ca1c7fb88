"""The task table: a config names a task and its options, `make_task` builds it.

Built-ins are listed in `TASKS`; `gym:<dataset>` is any reasoning-gym dataset; a dotted path
`package.module:ClassName` loads a user's own `Task` subclass: a small name-to-class table at
the edge, no plugin framework.

    python -c "from shrinkthink.tasks import list_tasks; print(list_tasks()[:5])"
"""

from __future__ import annotations

import inspect
from typing import Any

from shrinkthink.dotted import import_dotted
from shrinkthink.errors import UserError
from shrinkthink.tasks.arith import ArithTask
from shrinkthink.tasks.base import ANSWER_PREFIX, Task, gold_completion, reasoning_part, split_of
from shrinkthink.tasks.dataset import DatasetTask
from shrinkthink.tasks.jsonl import JsonlTask
from shrinkthink.tasks.multiply import MultiplyTask
from shrinkthink.tasks.prontoqa import ProntoQATask
from shrinkthink.tasks.prosqa import ProsQATask

TASKS: dict[str, type[Task]] = {
    "arith": ArithTask,
    "jsonl": JsonlTask,
    "multiply": MultiplyTask,
    "prontoqa": ProntoQATask,
    "prosqa": ProsQATask,
    "datasets": DatasetTask,
}

_GYM_PREFIX = "gym:"

__all__ = [
    "ANSWER_PREFIX",
    "TASKS",
    "Task",
    "gold_completion",
    "list_tasks",
    "make_task",
    "reasoning_part",
    "split_of",
]


def make_task(name: str, options: dict[str, Any] | None = None) -> Task:
    """The task called `name`, built with `options` as keyword arguments."""
    options = dict(options or {})
    if name.startswith(_GYM_PREFIX):
        from shrinkthink.tasks.gym import GymTask  # imported late: reasoning-gym takes about 1 s

        if "dataset" in options:
            raise UserError("task.options: 'dataset' comes from the name, as gym:<dataset>")
        return _build(GymTask, name, {"dataset": name[len(_GYM_PREFIX) :], **options})
    if name == "gym-mix":
        from shrinkthink.tasks.gym import GymMixTask

        return _build(GymMixTask, name, options)
    if name in TASKS:
        return _build(TASKS[name], name, options)
    if ":" in name and "." in name.split(":")[0]:
        return _build(_import_task(name), name, options)
    known = ", ".join(sorted(TASKS))
    raise UserError(
        f"task.name: unknown task '{name}' (known: {known}, gym-mix, {_GYM_PREFIX}<dataset>; "
        "see `shrinkthink tasks`)"
    )


def list_tasks() -> list[tuple[str, str]]:
    """(name, one-line description) of every task: built-ins first, then reasoning-gym's."""
    from shrinkthink.tasks.gym import gym_datasets

    builtins = [(name, cls.description) for name, cls in TASKS.items()]
    builtins.append(("gym-mix", "a weighted mix of reasoning-gym datasets; level L raises each one's own config"))
    return builtins + [(_GYM_PREFIX + name, doc) for name, doc in gym_datasets().items()]


def _build(cls: type[Task], name: str, options: dict[str, Any]) -> Task:
    """`cls(**options)`, with unknown options and bad values reported as one-line UserErrors."""
    parameters = list(inspect.signature(cls.__init__).parameters.values())[1:]
    named = [p for p in parameters if p.kind not in (p.VAR_POSITIONAL, p.VAR_KEYWORD)]
    missing = [p.name for p in named if p.default is p.empty and p.name not in options]
    if missing:
        raise UserError(f"task.options: task '{name}' needs option '{missing[0]}'")
    if not any(p.kind is p.VAR_KEYWORD for p in parameters):
        unknown = sorted(set(options) - {p.name for p in named})
        if unknown:
            accepted = ", ".join(p.name for p in named if p.name != "dataset")
            raise UserError(
                f"task.options: unknown option '{unknown[0]}' for task '{name}' "
                f"(accepted: {accepted})"
            )
    try:
        return cls(**options)
    except (TypeError, ValueError) as exc:
        detail = " ".join(str(exc).split())
        raise UserError(f"task.options: {name}: {detail}") from None


def _import_task(path: str) -> type[Task]:
    """The class at `package.module:ClassName`, which must subclass Task."""
    cls = import_dotted(path, "task.name")
    if not (isinstance(cls, type) and issubclass(cls, Task)):
        raise UserError(f"task.name: '{path}' is not a shrinkthink Task subclass")
    return cls
