"""Human-annotated questions from a JSON Lines file, one object a line:

    {"question": "What is 2+3?", "answer": 5, "steps": ["2+3=5"], "level": 1, "split": "test"}

Only `question` and `answer` are required. `level` defaults to 1; `split` (train, validation or test)
defaults to a hash of the question (so no two splits share a question); `id` defaults to a hash too. The file is
read and checked when the task is built, so a bad row fails the run before any training, naming
`file:line`. `RowTask` and `check_row` are shared with the `datasets` task (tasks/dataset.py).

    python -c "from shrinkthink.tasks import make_task; \\
        print(make_task('jsonl', {'path': 'data.jsonl'}).problems(1, 3, 'train'))"
"""

from __future__ import annotations

import json
import random
from collections.abc import Callable
from pathlib import Path
from typing import Any

from shrinkthink.errors import UserError
from shrinkthink.records import Problem
from shrinkthink.tasks.base import SPLITS, Split, Task, problem_id
from shrinkthink.verify import answers_match


class RowTask(Task):
    """Problems read from rows when the task is built, sampled per level and split, verified by
    lenient answer matching: what the JSONL and `datasets` tasks share. A subclass reads its rows
    (`check_row` each) and hands them to `use_rows`."""

    path: str  # where the rows came from: error messages name it

    def use_rows(self, rows: list[tuple[Problem, Split]]) -> None:
        if not rows:
            raise UserError(f"task.options.path: '{self.path}' has no rows")
        self.rows: list[tuple[Problem, Split]] = rows
        levels = [problem.level for problem, _ in rows]
        self.min_level, self.max_level = min(levels), max(levels)

    def generate(self, level: int, rng: random.Random) -> Problem:
        pool = [problem for problem, _ in self.rows if problem.level == level]
        if not pool:
            raise UserError(f"task.options.path: '{self.path}' has no problems at level {level}")
        return rng.choice(pool)

    def problems(self, level: int, n: int, split: Split, seed: int = 0) -> list[Problem]:
        """`n` rows of `level` and `split` in a seeded order: distinct while the file has enough,
        then repeating it."""
        self.check_level(level)
        pool = [p for p, s in self.rows if p.level == level and s == split]
        if not pool and split == "validation":
            return self.validation_stand_in(level, n, seed)
        if not pool:
            raise UserError(
                f"task.options.path: '{self.path}' has no {split} problems at level {level}"
            )
        random.Random(f"{self.name}:{seed}:{level}:{split}").shuffle(pool)
        return [pool[i % len(pool)] for i in range(n)]

    def is_correct(self, problem: Problem, answer: str) -> bool:
        return answers_match(answer, problem.answer)


class JsonlTask(RowTask):
    """Rows of a JSONL file, sampled per level and split."""

    name = "jsonl"
    description = "questions and answers from a JSONL file (question, answer, optional steps/level)"

    def __init__(self, path: str, heldout_fraction: float = 0.2) -> None:
        super().__init__(heldout_fraction)
        self.path = path
        self.use_rows(read_rows(Path(path), self.split_of))


def read_rows(path: Path, split_of: Callable[[str], Split]) -> list[tuple[Problem, Split]]:
    """Every row of `path` as a Problem and its split; a bad row raises UserError at `file:line`."""
    if not path.is_file():
        raise UserError(f"task.options.path: no such file '{path}'")
    rows = []
    for number, raw in enumerate(path.read_bytes().split(b"\n"), start=1):
        try:
            line = raw.decode("utf-8")
        except UnicodeDecodeError:
            raise UserError(f"{path}:{number}: not UTF-8 text") from None
        if line.strip():
            rows.append(parse_row(line, f"{path}:{number}", split_of))
    return rows


def parse_row(line: str, where: str, split_of: Callable[[str], Split]) -> tuple[Problem, Split]:
    """One JSONL line as a Problem and its split (its own, else `split_of` its question); `where`
    is the `file:line` for errors."""
    try:
        row: Any = json.loads(line)
    except json.JSONDecodeError as exc:
        raise UserError(f"{where}: invalid JSON ({exc.msg} at column {exc.colno})") from None
    if not isinstance(row, dict):
        raise UserError(f"{where}: expected a JSON object, got {type(row).__name__}")
    return check_row(row, where, split_of)


def check_row(row: dict[str, Any], where: str, split_of: Callable[[str], Split], task_name: str = "jsonl",
              columns: dict[str, str] | None = None) -> tuple[Problem, Split]:
    """A row with the keys question, answer and optional steps, level, split, id, as a Problem and
    its split (its own, else `split_of` its question). `where` locates the row for errors;
    `columns` names the source's column for a key, where it has another name."""

    def named(key: str) -> str:
        column = (columns or {}).get(key, key)
        return f"'{column}'" if column == key else f"'{column}' ({key})"

    question = row.get("question")
    if not isinstance(question, str) or not question.strip():
        raise UserError(f"{where}: {named('question')} must be a non-empty string")
    answer = row.get("answer")
    if isinstance(answer, bool) or not isinstance(answer, (str, int, float)) or answer == "":
        raise UserError(f"{where}: {named('answer')} must be a non-empty string or a number")
    steps = row.get("steps")
    if steps is not None and (
        not isinstance(steps, list) or not all(isinstance(s, str) for s in steps)
    ):
        raise UserError(f"{where}: {named('steps')} must be a list of strings")
    level = row.get("level", 1)
    if isinstance(level, bool) or not isinstance(level, int) or level < 1:
        raise UserError(f"{where}: {named('level')} must be an integer >= 1, got {level!r}")
    split = row.get("split", split_of(question))
    if split not in SPLITS:
        raise UserError(f"{where}: {named('split')} must be one of {', '.join(SPLITS)}, got {split!r}")
    problem = Problem(
        id=str(row.get("id", problem_id(task_name, level, question))),
        prompt=question,
        answer=str(answer),
        level=level,
        steps=steps or None,
        metadata={"source": where},
    )
    return problem, split
