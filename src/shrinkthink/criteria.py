"""Criteria: the reward terms that tighten "solve it any way" into "solve it the right way", and
the controllers that schedule them.

A criterion scores a batch of episodes (with their groups, for the group-relative terms) and
returns one float per episode. It either *adds* to the reward (a penalty or bonus) or *gates* it
(correctness counts only when the gate is 1). So

    reward = correct * prod(gates) + sum(additive terms)

Every component is stored on the episode and logged. A criterion with a schedule owns a
`Controller`, stepped at each evaluation by whether validation accuracy held against the stage's
start (`accuracy_held`, a paired comparison that ignores drops the size of the evaluation's
noise); its state is logged each step and saved in checkpoints. Length terms apply to correct
transcripts only.

    shrinkthink run   # the quickstart (src/shrinkthink/configs/quickstart.yaml): its shrink stage turns these on
"""

from __future__ import annotations

import inspect
import math
import numbers
import re
import shutil
import subprocess
import tempfile
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy

from shrinkthink.dotted import import_dotted
from shrinkthink.errors import UserError
from shrinkthink.records import Episode
from shrinkthink.tasks.base import ANSWER_PREFIX, Task, reasoning_part


# --- controllers ----------------------------------------------------------------------------
def accuracy_held(scores: list[float], reference: list[float], tolerance: float, z: float = 2.0) -> bool:
    """Whether accuracy held against the stage's start, on the same validation problems scored
    then (`reference`) and now (`scores`), in the same order.

    A paired comparison: with d_i = reference_i - scores_i, the drop is mean(d) and its standard
    error sd(d) / sqrt(n). Accuracy held unless the drop exceeds `tolerance` by more than `z`
    standard errors (a one-sided test that the true drop is beyond the tolerance), so a dip the
    size of the evaluation's noise does not count. Problems that did not change contribute no
    variance: the more alike the two evaluations, the smaller a drop that counts."""
    if len(scores) != len(reference) or not scores:
        raise ValueError(f"accuracy_held: {len(scores)} scores against {len(reference)} reference scores")
    n = len(scores)
    diffs = [r - s for r, s in zip(reference, scores)]
    drop = sum(diffs) / n
    variance = sum((d - drop) ** 2 for d in diffs) / (n - 1) if n > 1 else 0.0
    return drop <= tolerance + z * math.sqrt(variance / n) + 1e-9


@dataclass
class Controller:
    """Tightens a value each round while accuracy holds (`accuracy_held`), backs off when it does
    not: holding multiplies the value by `factor`, a real drop by `backoff`. A length-penalty
    weight ramps up (factor > 1, backoff < 1); a token budget shrinks (factor < 1, backoff > 1).
    The value stays within [lower, upper]. A value of None is set by its criterion on first use
    (the token budget's start, from the first batch's lengths)."""

    value: float | None
    factor: float
    backoff: float
    lower: float = 0.0
    upper: float = float("inf")
    rounds: int = 0
    last: str = "start"

    def update(self, held: bool) -> str:
        self.rounds += 1
        self.last = "tighten" if held else "back_off"
        if self.value is not None:
            multiplier = self.factor if held else self.backoff
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


def is_correct(episode: Episode) -> bool:
    """Verified correct, and through every gate scored so far: what a length term needs before it
    applies (a wrong answer never gains by being short; Arora & Zanette 2025, Short-RL's length
    penalty on correct answers only; a transcript a gate failed already scores 0 and is not charged
    for its length on top, which would rank it below a wrong one)."""
    return episode.outcome >= 1.0


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
    """`- lambda * tokens / reference_tokens` on correct transcripts (0 on wrong ones), lambda
    ramped up from tiny while accuracy holds (the criterion is tightened only after the model can
    solve). Lambda means what it says only where advantages are not rescaled per group
    (`learner.scale_rewards`: batch or none; config.py rejects group)."""

    name = "length_penalty"

    def __init__(self, start: float, factor: float, backoff: float, max_value: float) -> None:
        self.controller = Controller(start, factor, backoff, lower=0.0, upper=max_value)

    def __call__(self, batch: Batch) -> list[float]:
        weight = self.controller.value / max(batch.reference_tokens, 1.0)
        return [-weight * e.reasoning_tokens if is_correct(e) else 0.0 for e in batch.episodes]


class TokenBudget(Criterion):
    """Transcripts whose reasoning is longer than the budget score 0; the budget shrinks by a
    factor each round while accuracy holds (ThinkPrune, Hou et al. 2025). Without a start it
    begins at the `start_percentile` of the first batch's correct reasoning lengths, above nearly
    every transcript the policy writes, so the first rounds cut only the longest."""

    name = "token_budget"
    gate = True

    def __init__(self, start_tokens: float | None, factor: float, backoff: float, min_tokens: float,
                 start_percentile: float = 95.0) -> None:
        self.controller = Controller(start_tokens, factor, backoff, lower=min_tokens)
        self.start_percentile = start_percentile

    def __call__(self, batch: Batch) -> list[float]:
        if self.controller.value is None:
            lengths = [e.reasoning_tokens for e in batch.episodes if is_correct(e)]
            lengths = lengths or [e.reasoning_tokens for e in batch.episodes]
            start = float(numpy.percentile(lengths, self.start_percentile))  # linear between order statistics
            self.controller.value = max(self.controller.lower, start, 1.0)
        return [float(e.reasoning_tokens <= self.controller.value) for e in batch.episodes]


class GroupLength(Criterion):
    """Kimi k1.5's length reward (Kimi Team 2025, eq. in section 2.3.3): within a group,
    `lam = 0.5 - (len - min) / (max - min)`; a correct answer gets `lam`. Scaled by `weight`.
    Kimi gives a wrong answer `min(0, lam)`, under which a short wrong answer beats a long one;
    here a wrong answer gets 0, as under every length term: an all-wrong group has no length
    signal."""

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
                if is_correct(batch.episodes[i]):
                    out[i] = self.weight * (0.5 - (length - low) / (high - low))
        return out


class ShortestCorrect(Criterion):
    """ShorterBetter (Yi et al. 2025): the target length is the group's shortest correct
    transcript; every correct sample pays `weight * |len - target| / reference_tokens`. Wrong
    samples pay nothing (ShorterBetter charges them the distance to the group's mean length too,
    under which a wrong answer gains by being short)."""

    name = "shortest_correct"

    def __init__(self, weight: float) -> None:
        self.weight = weight

    def __call__(self, batch: Batch) -> list[float]:
        out = [0.0] * len(batch.episodes)
        scale = self.weight / max(batch.reference_tokens, 1.0)
        for group in batch.groups:
            episodes = [batch.episodes[i] for i in group]
            correct = [e.reasoning_tokens for e in episodes if is_correct(e)]
            for i, episode in zip(group, episodes):
                if is_correct(episode):
                    out[i] = -scale * abs(episode.reasoning_tokens - min(correct))
        return out


class Overlong(Criterion):
    """DAPO's soft overlong punishment (Yu et al. 2025, eq. 13): 0 up to
    `max_tokens - cache_tokens`, then falling linearly to -1 at `max_tokens`, -1 beyond. The one
    length term on every transcript, right or wrong, as in DAPO: it punishes running into the cap,
    where a transcript is cut off before its answer."""

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

    def __init__(self, checker: LeanChecker) -> None:
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


REWARD_KEYWORDS = ("correct", "episodes", "groups")


class UserReward(Criterion):
    """A user's reward function, TRL-style: called once a batch as

        fn(completions: list[str], problems: list[Problem], **kwargs) -> list[float | None]

    with one completion's full text and its `Problem` (prompt, answer, level, steps, metadata) at
    each position, returning one float per completion. None skips a completion: it adds 0 (a gate:
    leaves correctness as it is). The keyword arguments are `correct` (the task verifier's 1.0 or
    0.0 for each completion), `episodes` (the `Episode` records) and `groups` (indices of the
    samples of one problem); a function gets those its signature names, all of them with
    `**kwargs`. An additive reward adds `weight * value`, the weight optionally ramped by a
    `Controller` like the length penalty's lambda; a gate multiplies correctness by the value."""

    def __init__(self, function: Callable[..., Any], name: str, where: str, weight: float = 1.0,
                 gate: bool = False, ramp: Any = None) -> None:
        self.function, self.name, self.where, self.gate, self.weight = function, name, where, gate, weight
        if ramp is not None:
            upper = float("inf") if ramp.max_value is None else ramp.max_value
            self.controller = Controller(weight, ramp.factor, ramp.backoff, lower=0.0, upper=upper)
        try:
            parameters = list(inspect.signature(function).parameters.values())
        except (TypeError, ValueError):  # a builtin without a signature: offer it nothing extra
            parameters = []
        named = {p.name for p in parameters if p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)}
        self.keywords = set(REWARD_KEYWORDS) if any(p.kind is p.VAR_KEYWORD for p in parameters) \
            else named & set(REWARD_KEYWORDS)

    def __call__(self, batch: Batch) -> list[float]:
        offered = {"correct": [e.components.get("correct", 0.0) for e in batch.episodes],
                   "episodes": batch.episodes, "groups": batch.groups}
        values = self.function([e.text for e in batch.episodes], [e.problem for e in batch.episodes],
                               **{k: v for k, v in offered.items() if k in self.keywords})
        if not isinstance(values, (list, tuple)) or len(values) != len(batch.episodes):
            got = f"{len(values)} values" if isinstance(values, (list, tuple)) else f"a {type(values).__name__}"
            raise UserError(f"{self.where}: reward '{self.name}' returned {got} for {len(batch.episodes)} completions; "
                            "it must return a list of one float (or None) per completion")
        for value in values:
            if value is not None and not (isinstance(value, numbers.Real) and math.isfinite(value)):
                raise UserError(f"{self.where}: reward '{self.name}' returned {value!r}; expected a finite float "
                                "or None")
        if self.gate:
            return [1.0 if v is None else float(v) for v in values]
        weight = self.controller.value if self.controller is not None else self.weight
        return [0.0 if v is None else weight * float(v) for v in values]


def user_reward(config: Any, rewards: Mapping[str, Callable[..., Any]], where: str) -> UserReward:
    """The `UserReward` a `reward` criterion names: a key of `rewards` (the Python API's), else a
    dotted path `package.module:function`. `where` is the criterion's field, for errors."""
    path = config.function
    if path in rewards:
        function, default = rewards[path], path
    elif ":" in path:
        module_name, _, attribute = path.partition(":")
        function, default = import_dotted(path, f"{where}.function"), attribute.split(".")[-1]
        if function is None:
            raise UserError(f"{where}.function: module '{module_name}' has no '{attribute}'")
    else:
        passed = ", ".join(sorted(rewards)) or "none"
        raise UserError(f"{where}.function: '{path}' is neither 'package.module:function' nor a key of the rewards "
                        f"passed to shrinkthink.run (passed: {passed})")
    if not callable(function):
        raise UserError(f"{where}.function: '{path}' is not callable (type {type(function).__name__})")
    return UserReward(function, config.label or default, where, config.weight, config.gate, config.ramp)


# --- composition -----------------------------------------------------------------------------
def build_criteria(configs: list, task: Task, rewards: Mapping[str, Callable[..., Any]] | None = None,
                   field: str = "criteria") -> list[Criterion]:
    """Criteria from their configs (config.py's `*Criterion` models); a `reward` criterion may name
    a key of `rewards`. `field` names the config list, for errors."""
    built: list[Criterion] = []
    for i, c in enumerate(configs):
        if c.name == "length_penalty":
            built.append(LengthPenalty(c.start, c.factor, c.backoff, c.max_value))
        elif c.name == "token_budget":
            built.append(TokenBudget(c.start_tokens, c.factor, c.backoff, c.min_tokens, c.start_percentile))
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
        elif c.name == "reward":
            built.append(user_reward(c, rewards or {}, f"{field}.{i}"))
        else:  # the config's discriminated union makes this unreachable
            raise UserError(f"criterion '{c.name}' does not exist")
    names = [b.name for b in built]
    for i, b in enumerate(built):  # a component under a taken name would overwrite the other's
        builtin = [n for n, other in zip(names[i + 1:], built[i + 1:]) if not isinstance(other, UserReward)]
        if isinstance(b, UserReward) and b.name in ["correct", *names[:i], *builtin]:
            raise UserError(f"{field}.{i}.label: '{b.name}' already names another reward term; give this one "
                            "its own label")
    return built


def apply_criteria(criteria: list[Criterion], batch: Batch) -> None:
    """Score every episode: `reward = correct * prod(gates) + sum(additive)`; each term is stored
    in `episode.components` under its name, and `correct * prod(gates)` as `episode.outcome`.
    Gates are scored first, so that the additive terms see the gated outcome (`is_correct`)."""
    for episode in batch.episodes:
        episode.outcome = episode.components.get("correct", 0.0)
    for criterion in [c for c in criteria if c.gate] + [c for c in criteria if not c.gate]:
        for episode, value in zip(batch.episodes, criterion(batch)):
            episode.components[criterion.name] = value
            if criterion.gate:
                episode.outcome *= value
    for episode in batch.episodes:
        episode.reward = episode.outcome + sum(episode.components[c.name] for c in criteria if not c.gate)


def update_controllers(criteria: list[Criterion], held: bool) -> dict[str, str]:
    """One round for every scheduled criterion (`held`: `accuracy_held`); returns what each did."""
    return {c.name: c.controller.update(held) for c in criteria if c.controller is not None}


def criteria_state(criteria: list[Criterion]) -> dict[str, Any]:
    return {c.name: c.controller.state_dict() for c in criteria if c.controller is not None}


def load_criteria_state(criteria: list[Criterion], state: dict[str, Any]) -> None:
    for c in criteria:
        if c.controller is not None and c.name in state:
            c.controller.load_state_dict(state[c.name])
