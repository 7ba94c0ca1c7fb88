"""Live logging beside metrics.jsonl (always written): the trackers a config's `logging` names get
every scalar of every metrics line while the run goes, and the completions tables.

- `tensorboard`: event files in <run_dir>/tensorboard (`tensorboard --logdir runs/<name>`).
- `wandb`: Weights & Biases, in <run_dir>/wandb. Offline (no account needed; `wandb sync` uploads
  later) unless WANDB_MODE says otherwise or an API key is set (WANDB_API_KEY, `wandb login`).

A metrics line `{"stage": "climb", "step": 7, "reward": 0.5, "event": ...}` becomes the scalar
`climb/reward` at step 7 (an event line: `climb/<event>/reward`); nested figures are flattened
(`climb/stage_end/accuracy_by_level/2`), booleans are 0 or 1, text is left out. Each stage keeps its
own step axis, as metrics.jsonl does.

    shrinkthink run logging=[tensorboard] log_completions_every=10
"""

from __future__ import annotations

import importlib.util
import json
import netrc
import os
import secrets
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

from shrinkthink.errors import UserError

# tracker -> (the modules that provide it, any one will do; how to install it)
REQUIRES = {
    "tensorboard": (("tensorboard", "tensorboardX"), "pip install 'shrinkthink[tensorboard]'"),
    "wandb": (("wandb",), "pip install 'shrinkthink[wandb]'"),
}
LINE_KEYS = ("stage", "stage_index", "step", "event")  # what places a metrics line, not what it measures


def installed(module: str) -> bool:
    try:
        return importlib.util.find_spec(module) is not None
    except (ImportError, ValueError):  # a module set to None in sys.modules, a broken parent package
        return False


def check(names: Sequence[str], field: str = "logging") -> None:
    """Every tracker asked for can be imported; the error names the field and the pip command."""
    for i, name in enumerate(names):
        modules, command = REQUIRES[name]
        if not any(installed(m) for m in modules):
            raise UserError(f"{field}.{i}: '{name}' is not installed; {command} (or leave it out of {field})")


def scalars(record: dict[str, Any]) -> dict[str, float]:
    """The tracker scalars of one metrics line, by tag."""
    prefix = "/".join(str(record[k]) for k in ("stage", "event") if k in record)
    return dict(_leaves(prefix, {k: v for k, v in record.items() if k not in LINE_KEYS}))


def _leaves(prefix: str, value: Any) -> Iterator[tuple[str, float]]:
    if isinstance(value, dict):
        for key, inner in value.items():
            yield from _leaves(f"{prefix}/{key}" if prefix else str(key), inner)
    elif isinstance(value, (bool, int, float)):
        yield prefix, float(value)


def completion_rows(stage: str, step: int, episodes) -> list[dict[str, Any]]:
    """One row per sampled completion, as TRL's completions table has them: the problem, the
    completion, the reward and each of its components, the token counts."""
    return [{"stage": stage, "step": step, "problem": e.problem.prompt, "answer": e.problem.answer,
             "completion": e.text, "reward": e.reward, **{f"reward_{k}": v for k, v in e.components.items()},
             "reasoning_tokens": e.reasoning_tokens, "completion_tokens": len(e.completion_ids)} for e in episodes]


class Tracker:
    def log(self, record: dict[str, Any]) -> None:
        raise NotImplementedError

    def table(self, stage: str, step: int, rows: list[dict[str, Any]]) -> None:
        raise NotImplementedError

    def close(self) -> None:
        raise NotImplementedError


class TensorBoard(Tracker):
    def __init__(self, folder: Path) -> None:
        if installed("tensorboard"):
            from torch.utils.tensorboard import SummaryWriter
        else:
            from tensorboardX import SummaryWriter
        self.writer = SummaryWriter(str(folder))

    def log(self, record: dict[str, Any]) -> None:
        for tag, value in scalars(record).items():
            self.writer.add_scalar(tag, value, record.get("step", 0))
        self.writer.flush()  # a line a step: a run killed mid-stage keeps every curve

    def table(self, stage: str, step: int, rows: list[dict[str, Any]]) -> None:
        self.writer.add_text(f"{stage}/completions", markdown_table(rows), step)

    def close(self) -> None:
        self.writer.close()


def markdown_table(rows: list[dict[str, Any]]) -> str:
    """TensorBoard's text panel renders Markdown: a table, with line breaks kept inside cells."""
    columns = list(dict.fromkeys(k for row in rows for k in row if k not in ("stage", "step")))

    def cell(value: Any) -> str:
        text = f"{value:.4g}" if isinstance(value, float) else str(value)
        return text.replace("|", "\\|").replace("\n", "<br>")

    lines = ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
    lines += ["| " + " | ".join(cell(row.get(c, "")) for c in columns) + " |" for row in rows]
    return "\n".join(lines)


def wandb_mode() -> str:
    """WANDB_MODE when set; online when an API key is known; offline otherwise."""
    if os.environ.get("WANDB_MODE"):
        return os.environ["WANDB_MODE"]
    if os.environ.get("WANDB_API_KEY"):
        return "online"
    try:
        logged_in = netrc.netrc().authenticators("api.wandb.ai") is not None  # `wandb login` writes it
    except (OSError, netrc.NetrcParseError):
        logged_in = False
    return "online" if logged_in else "offline"


class WandB(Tracker):
    def __init__(self, folder: Path, config: dict[str, Any]) -> None:
        import wandb

        self.wandb = wandb
        # the id stays with the run directory, so `--resume` continues the same W&B run
        id_file = folder / "wandb-run-id"
        run_id = id_file.read_text().strip() if id_file.is_file() else secrets.token_hex(4)
        id_file.write_text(run_id)
        self.run = wandb.init(project=os.environ.get("WANDB_PROJECT", "shrinkthink"), name=folder.name, id=run_id,
                              resume="allow", dir=str(folder), config=config, mode=wandb_mode())
        self.stages: set[str] = set()

    def log(self, record: dict[str, Any]) -> None:
        stage = str(record.get("stage", "run"))
        if stage not in self.stages:  # each stage keeps its own step axis, as in metrics.jsonl
            self.stages.add(stage)
            self.run.define_metric(f"{stage}/step")
            self.run.define_metric(f"{stage}/*", step_metric=f"{stage}/step")
        self.run.log({**scalars(record), f"{stage}/step": record.get("step", 0)})

    def table(self, stage: str, step: int, rows: list[dict[str, Any]]) -> None:
        columns = list(dict.fromkeys(k for row in rows for k in row))
        table = self.wandb.Table(columns=columns, data=[[row.get(c) for c in columns] for row in rows])
        self.run.log({f"{stage}/completions": table, f"{stage}/step": step})

    def close(self) -> None:
        self.run.finish()


def open_trackers(names: Sequence[str], folder: Path, config: dict[str, Any]) -> list[Tracker]:
    check(names)
    built: list[Tracker] = []
    for name in dict.fromkeys(names):
        built.append(TensorBoard(folder / "tensorboard") if name == "tensorboard" else WandB(folder, config))
    return built


def append_jsonl(path: Path, rows: list[dict[str, Any]]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a") as handle:
        handle.write("".join(json.dumps(row) + "\n" for row in rows))
