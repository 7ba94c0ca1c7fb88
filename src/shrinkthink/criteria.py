"""Criteria: the reward terms that tighten "solve it any way" into "solve it the right way", and
the controllers that schedule them.

A criterion scores a batch of episodes (with their groups, for the group-relative terms) and
returns one float per episode. It either *adds* to the reward (a penalty or bonus) or *gates* it
(correctness counts only when the gate is 1). So

    reward = correct * prod(gates) + sum(additive terms)

Every component is stored on the episode and logged. A criterion with a schedule owns a
`Controller` (a pure function of held-out accuracy), whose state is logged each step and saved
in checkpoints.

    shrinkthink run configs/quickstart.yaml      # the shrink stage turns these on
"""

from __future__ import annotations

import re
import shutil
import subprocess
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from shrinkthink.errors import UserError
from shrinkthink.records import Episode
from shrinkthink.tasks.base import ANSWER_PREFIX, Task, reasoning_part


# --- controllers ----------------------------------------------------------------------------
@dataclass
class Controller:
    """Tightens a value each round while held-out accuracy holds, backs off when it dips.

    A round holds when `accuracy >= reference - tolerance` (reference: the stage's starting
    accuracy). Holding multiplies the value by `factor`; dipping by `backoff`. A length-penalty
    weight ramps up (factor > 1, backoff < 1); a token budget shrinks (factor < 1, backoff > 1).
    The value stays within [lower, upper].
    """

    value: float
    factor: float
    backoff: float
    tolerance: float
    lower: float = 0.0
    upper: float = float("inf")
    rounds: int = 0
    last: str = "start"

    def update(self, accuracy: float, reference: float) -> str:
        self.rounds += 1
        self.last = "tighten" if accuracy >= reference - self.tolerance - 1e-9 else "back_off"
        multiplier = self.factor if self.last == "tighten" else self.backoff
        self.value = min(self.upper, max(self.lower, self.value * multiplier))
        return self.last

    def state_dict(self) -> dict[str, Any]:
        return {"value": self.value, "rounds": self.rounds, "last": self.last}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.value, self.rounds, self.last = state["value"], state["rounds"], state["last"]


# --- the reward terms -------------------------------------------------------------------------
@dataclass
class Batch:
    """What a criterion sees: the episodes, their groups (indices of the G samples of one
    problem), the task, and the stage's reference length (mean reasoning tokens at its start)."""

    episodes: list[Episode]
    groups: list[list[int]]
    task: Task
    reference_tokens: float


class Criterion:
    name: str = ""
    gate: bool = False  # True: multiplies correctness; False: adds to the reward
    controller: Controller | None = None

    def __call__(self, batch: Batch) -> list[float]:
        raise NotImplementedError

    def state(self) -> dict[str, float]:
        """Logged every step: the controller's value and rounds, under this criterion's name."""
        if self.controller is None:
            return {}
        return {f"{self.name}_value": self.controller.value, f"{self.name}_rounds": self.controller.rounds}


class LengthPenalty(Criterion):
    """`- lambda * tokens / reference_tokens`, lambda ramped up from tiny while accuracy holds
    (the criterion is tightened only after the model can solve)."""

    name = "length_penalty"

    def __init__(self, start: float, factor: float, backoff: float, max_value: float, tolerance: float) -> None:
        self.controller = Controller(start, factor, backoff, tolerance, lower=0.0, upper=max_value)

    def __call__(self, batch: Batch) -> list[float]:
        weight = self.controller.value / max(batch.reference_tokens, 1.0)
        return [-weight * e.reasoning_tokens for e in batch.episodes]


class TokenBudget(Criterion):
    """Transcripts whose reasoning is longer than the budget score 0; the budget shrinks by a
    factor each round while accuracy holds (ThinkPrune, Hou et al. 2025)."""

    name = "token_budget"
    gate = True

    def __init__(self, start_tokens: float, factor: float, backoff: float, min_tokens: float, tolerance: float) -> None:
        self.controller = Controller(start_tokens, factor, backoff, tolerance, lower=min_tokens)

    def __call__(self, batch: Batch) -> list[float]:
        return [float(e.reasoning_tokens <= self.controller.value) for e in batch.episodes]


class GroupLength(Criterion):
    """Kimi k1.5's length reward (Kimi Team 2025, eq. in section 2.3.3): within a group,
    `lam = 0.5 - (len - min) / (max - min)`; a correct answer gets `lam`, a wrong one
    `min(0, lam)`. Scaled by `weight`."""

    name = "group_length"

    def __init__(self, weight: float) -> None:
        self.weight = weight

    def __call__(self, batch: Batch) -> list[float]:
        out = [0.0] * len(batch.episodes)
        for group in batch.groups:
            lengths = [batch.episodes[i].reasoning_tokens for i in group]
            low, high = min(lengths), max(lengths)
            if high == low:
                continue
            for i, length in zip(group, lengths):
                lam = 0.5 - (length - low) / (high - low)
                correct = batch.episodes[i].components.get("correct", 0.0) >= 1.0
                out[i] = self.weight * (lam if correct else min(0.0, lam))
        return out


class ShortestCorrect(Criterion):
    """ShorterBetter (Yi et al. 2025): the target length is the group's shortest correct
    transcript (its mean length when none is correct); every sample pays
    `weight * |len - target| / reference_tokens`."""

    name = "shortest_correct"

    def __init__(self, weight: float) -> None:
        self.weight = weight

    def __call__(self, batch: Batch) -> list[float]:
        out = [0.0] * len(batch.episodes)
        scale = self.weight / max(batch.reference_tokens, 1.0)
        for group in batch.groups:
            episodes = [batch.episodes[i] for i in group]
            correct = [e.reasoning_tokens for e in episodes if e.components.get("correct", 0.0) >= 1.0]
            target = min(correct) if correct else sum(e.reasoning_tokens for e in episodes) / len(episodes)
            for i, episode in zip(group, episodes):
                out[i] = -scale * abs(episode.reasoning_tokens - target)
        return out


class Overlong(Criterion):
    """DAPO's soft overlong punishment (Yu et al. 2025, eq. 13): 0 up to
    `max_tokens - cache_tokens`, then falling linearly to -1 at `max_tokens`, -1 beyond."""

    name = "overlong"

    def __init__(self, max_tokens: int, cache_tokens: int) -> None:
        self.max_tokens, self.cache_tokens = max_tokens, cache_tokens

    def __call__(self, batch: Batch) -> list[float]:
        return [overlong_penalty(len(e.completion_ids), self.max_tokens, self.cache_tokens) for e in batch.episodes]


def overlong_penalty(length: int, max_tokens: int, cache_tokens: int) -> float:
    safe = max_tokens - cache_tokens
    if length <= safe:
        return 0.0
    if length <= max_tokens:
        return (safe - length) / max(cache_tokens, 1)
    return -1.0


class StepValidity(Criterion):
    """Strict: correctness counts only when every reasoning line is a valid step by the task's
    own step checker (no filler, no false statements). `graded`: correctness counts in
    proportion to the share of valid lines, so that a policy whose every transcript has some
    invalid lines (a habit) still sees which of its samples have fewer."""

    name = "step_validity"
    gate = True

    def __init__(self, task: Task, graded: bool = False) -> None:
        if not task.has_step_checker:
            raise UserError(f"criterion step_validity: task {task.name} has no step checker")
        self.graded = graded

    def __call__(self, batch: Batch) -> list[float]:
        values = []
        for e in batch.episodes:
            valid = [ok for _, ok in batch.task.check_steps(e.problem, e.text)]
            if self.graded:
                values.append(sum(valid) / len(valid) if valid else 1.0)
            else:
                values.append(float(all(valid)))
        return values


class Format(Criterion):
    """Strict: the completion is reasoning lines, then one answer line, then nothing; with
    `line_pattern`, every reasoning line must match it (a regular expression)."""

    name = "format"
    gate = True

    def __init__(self, line_pattern: str | None) -> None:
        self.pattern = re.compile(line_pattern) if line_pattern else None

    def __call__(self, batch: Batch) -> list[float]:
        return [float(format_ok(e.text, self.pattern)) for e in batch.episodes]


def format_ok(text: str, pattern: re.Pattern | None = None) -> bool:
    if text.count(ANSWER_PREFIX) != 1:
        return False
    answer_line = text[text.index(ANSWER_PREFIX):]
    if "\n" in answer_line.strip() or not answer_line[len(ANSWER_PREFIX):].strip():
        return False
    lines = [line for line in reasoning_part(text).split("\n") if line.strip()]
    return pattern is None or all(pattern.fullmatch(line.strip()) for line in lines)


class LeanProof(Criterion):
    """Strict: the reasoning is a Lean 4 proof of the problem's statement
    (`problem.metadata["lean_statement"]`, e.g. `theorem t : 2 + 2 = 4 :=`) and it checks."""

    name = "lean"
    gate = True

    def __init__(self, checker: "LeanChecker") -> None:
        self.checker = checker

    def __call__(self, batch: Batch) -> list[float]:
        out = []
        for episode in batch.episodes:
            statement = episode.problem.metadata.get("lean_statement", "")
            out.append(float(self.checker.check(statement + "\n" + reasoning_part(episode.text))))
        return out


class LeanChecker:
    """Checks Lean 4 proofs. `backend="lean-interact"` keeps one Lean REPL alive through the
    `lean-interact` package (optionally inside a local Lean project with Mathlib);
    `backend="cli"` runs the `lean` executable on a temporary file. Either way, without a Lean
    toolchain on the PATH it fails at once with a message saying so, rather than scoring every
    proof 0."""

    def __init__(self, executable: str = "lean", timeout_s: float = 60.0, header: str = "",
                 backend: str = "cli", project: str | None = None) -> None:
        path = shutil.which(executable)
        if path is None:
            raise UserError(
                f"criterion lean: no Lean toolchain on the PATH ('{executable}' not found); install Lean 4 "
                "(elan) where the network allows it, or drop the lean criterion"
            )
        self.executable, self.timeout_s, self.header = path, timeout_s, header
        self.server = None
        if backend == "lean-interact":
            try:
                from lean_interact import LeanREPLConfig, LeanServer, LocalProject
            except ImportError:
                raise UserError("criterion lean: backend 'lean-interact' needs `pip install lean-interact`") from None
            config = LeanREPLConfig(project=LocalProject(directory=project)) if project else LeanREPLConfig()
            self.server = LeanServer(config)

    def check(self, proof: str) -> bool:
        """True when Lean accepts `proof` with no error and no `sorry`."""
        if "sorry" in proof:
            return False
        if self.server is not None:
            return self._check_repl(self.header + "\n" + proof)
        with tempfile.TemporaryDirectory() as folder:
            source = Path(folder) / "Proof.lean"
            source.write_text(self.header + "\n" + proof + "\n")
            try:
                done = subprocess.run([self.executable, str(source)], capture_output=True, text=True,
                                      timeout=self.timeout_s)
            except subprocess.TimeoutExpired:
                return False
        return done.returncode == 0 and "error" not in done.stdout.lower()

    def _check_repl(self, code: str) -> bool:
        from lean_interact import Command
        from lean_interact.interface import LeanError

        response = self.server.run(Command(cmd=code), timeout=self.timeout_s)
        if isinstance(response, LeanError):
            return False
        return response.lean_code_is_valid(allow_sorry=False)


# --- composition -----------------------------------------------------------------------------
def build_criteria(configs: list, task: Task, tolerance: float, reference_tokens: float) -> list[Criterion]:
    """Criteria from their configs (config.py's `*Criterion` models)."""
    built: list[Criterion] = []
    for c in configs:
        if c.name == "length_penalty":
            built.append(LengthPenalty(c.start, c.factor, c.backoff, c.max_value, tolerance))
        elif c.name == "token_budget":
            start = c.start_tokens if c.start_tokens is not None else max(1.0, reference_tokens)
            built.append(TokenBudget(start, c.factor, c.backoff, c.min_tokens, tolerance))
        elif c.name == "group_length":
            built.append(GroupLength(c.weight))
        elif c.name == "shortest_correct":
            built.append(ShortestCorrect(c.weight))
        elif c.name == "overlong":
            built.append(Overlong(c.max_tokens, c.cache_tokens))
        elif c.name == "step_validity":
            built.append(StepValidity(task, c.graded))
        elif c.name == "format":
            built.append(Format(c.line_pattern))
        elif c.name == "lean":
            built.append(LeanProof(LeanChecker(c.executable, c.timeout_s, c.header, c.backend, c.project)))
        else:  # the config's discriminated union makes this unreachable
            raise UserError(f"criterion '{c.name}' does not exist")
    return built


def apply_criteria(criteria: list[Criterion], batch: Batch) -> None:
    """Score every episode: `reward = correct * prod(gates) + sum(additive)`; each term is stored
    in `episode.components` under its name."""
    for criterion in criteria:
        for episode, value in zip(batch.episodes, criterion(batch)):
            episode.components[criterion.name] = value
    for episode in batch.episodes:
        gated = episode.components.get("correct", 0.0)
        added = 0.0
        for criterion in criteria:
            value = episode.components[criterion.name]
            if criterion.gate:
                gated *= value
            else:
                added += value
        episode.reward = gated + added


def update_controllers(criteria: list[Criterion], accuracy: float, reference: float) -> dict[str, str]:
    """One round for every scheduled criterion; returns what each did."""
    return {c.name: c.controller.update(accuracy, reference) for c in criteria if c.controller is not None}


def criteria_state(criteria: list[Criterion]) -> dict[str, Any]:
    return {c.name: c.controller.state_dict() for c in criteria if c.controller is not None}


def load_criteria_state(criteria: list[Criterion], state: dict[str, Any]) -> None:
    for c in criteria:
        if c.controller is not None and c.name in state:
            c.controller.load_state_dict(state[c.name])
