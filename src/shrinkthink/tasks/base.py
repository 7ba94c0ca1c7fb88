"""What every task provides: problems at a difficulty level, split into train, validation and test
sets that never overlap, and its own verifier (generic code never knows what a multiplication
is).

Built-in tasks also write demonstrations with injected digressions and classify the lines of any
transcript as necessary or digression, so that shrinking can be measured against ground truth.
"""

from __future__ import annotations

import hashlib
import random
import warnings
from abc import ABC, abstractmethod
from typing import ClassVar, Literal

from shrinkthink.records import Problem
from shrinkthink.verify import extract_answer

Split = Literal["train", "validation", "test"]
SPLITS: tuple[Split, ...] = ("train", "validation", "test")
ANSWER_PREFIX = "Answer: "
RECHECK_PREFIX = "check "  # a re-check line: `check 12+7=19`


def split_of(prompt: str, heldout_fraction: float, validation_fraction: float = 0.1) -> Split:
    """Assign a problem to a split by a hash of its prompt, so the same question can never sit in
    two splits, whatever seed or level produced it: the first `heldout_fraction` of the hash range
    is test (the reported figures), the next `validation_fraction` validation (every decision
    inside a run: promotion, gates, controllers, keeping the best), the rest train."""
    position = int.from_bytes(hashlib.sha256(prompt.encode()).digest()[:8], "big") / 2**64
    if position < heldout_fraction:
        return "test"
    return "validation" if position < heldout_fraction + validation_fraction else "train"


def problem_id(task_name: str, level: int, prompt: str) -> str:
    """`<task>-L<level>-<first 10 hex digits of the prompt's sha256>`: the same question always
    gets the same id."""
    return f"{task_name}-L{level}-{hashlib.sha256(prompt.encode()).hexdigest()[:10]}"


def gold_completion(steps: list[str], answer: str) -> str:
    """The clean transcript: one step a line, then the answer line."""
    return "\n".join([*steps, ANSWER_PREFIX + answer])


def reasoning_part(completion: str) -> str:
    """The completion up to (not including) its answer line: what counts as visible reasoning."""
    cut = completion.rfind(ANSWER_PREFIX)
    return completion if cut < 0 else completion[:cut]


class Task(ABC):
    """Base class. Subclasses set `name`, `description`, `max_level` and implement `generate`."""

    # An instance may refine `name` (the reasoning-gym adapter is "gym:<dataset>").
    name: str
    description: ClassVar[str]
    min_level: int = 1
    max_level: int = 1
    validation_fraction: float = 0.1  # of the hash range, after the test share (split_of)

    def __init__(self, heldout_fraction: float = 0.2) -> None:
        if not 0.0 <= heldout_fraction <= 1.0 - self.validation_fraction:
            raise ValueError(f"heldout_fraction must be in 0..{1 - self.validation_fraction:g}, got {heldout_fraction}")
        self.heldout_fraction = heldout_fraction

    def split_of(self, prompt: str) -> Split:
        return split_of(prompt, self.heldout_fraction, self.validation_fraction)

    def split_fraction(self, split: Split) -> float:
        """The share of the problem space `split` holds."""
        held = {"test": self.heldout_fraction, "validation": self.validation_fraction}
        return held.get(split, 1.0 - self.heldout_fraction - self.validation_fraction)

    # --- problems -------------------------------------------------------------------------
    @abstractmethod
    def generate(self, level: int, rng: random.Random) -> Problem:
        """One random problem at `level` (either split; `problems` filters)."""

    def problems(self, level: int, n: int, split: Split, seed: int = 0) -> list[Problem]:
        """`n` problems of one split at `level`, deterministic in `seed`.

        Validation and test sets are distinct problems where the space allows; training draws may
        repeat.
        """
        self.check_level(level)
        rng = random.Random(f"{self.name}:{seed}:{level}:{split}")
        out: list[Problem] = []
        seen: set[str] = set()
        attempts = 0
        while len(out) < n and attempts < 200 * n + 1000:
            attempts += 1
            problem = self.generate(level, rng)
            if self.split_of(problem.prompt) != split:
                continue
            if split != "train" and problem.prompt in seen:
                continue
            seen.add(problem.prompt)
            out.append(problem)
        if not out and split == "validation":
            return self.validation_stand_in(level, n, seed)
        if not out:
            raise RuntimeError(f"task {self.name}: no {split} problems at level {level}")
        while len(out) < n:  # a small space: repeat what exists rather than fail
            out.append(out[len(out) % len(seen)])
        return out

    def validation_stand_in(self, level: int, n: int, seed: int) -> list[Problem]:
        """A level too small to hold validation problems: its training problems stand in, so that
        decisions still never see a test problem."""
        warnings.warn(f"task {self.name}: no validation problems at level {level}; the run's decisions use "
                      "training problems there", stacklevel=3)
        return self.problems(level, n, "train", seed)

    def check_level(self, level: int) -> None:
        from shrinkthink.errors import UserError

        if not self.min_level <= level <= self.max_level:
            raise UserError(
                f"task {self.name}: level {level} is outside {self.min_level}..{self.max_level}"
            )

    # --- verifier -------------------------------------------------------------------------
    def extract(self, completion: str) -> str | None:
        """The final answer in a completion, leniently (explore only rewards the answer)."""
        return extract_answer(completion)

    @abstractmethod
    def is_correct(self, problem: Problem, answer: str) -> bool:
        """Whether an extracted answer is right."""

    def score(self, problem: Problem, completion: str) -> float:
        """Outcome reward: 1.0 when the extracted final answer is right, else 0.0."""
        answer = self.extract(completion)
        return float(answer is not None and self.is_correct(problem, answer))

    # --- ground truth for shrinking (built-in tasks) --------------------------------------
    def demonstration(self, problem: Problem, rng: random.Random, digression_rate: float,
                      recheck: bool = False) -> str:
        """A transcript that solves `problem`, with digressions injected: after each gold step,
        lines of `digression(...)` while a coin with `digression_rate` comes up heads (so
        rate/(1-rate) lines per step on average). With `recheck`, every gold step is first
        followed by `check <the step>`: a habit, where the coin's digressions are chance, so a
        model trained on it yaps even when decoded greedily. Tasks without gold steps return the
        bare answer line."""
        if not 0.0 <= digression_rate < 1.0:
            raise ValueError(f"digression_rate must be in [0, 1), got {digression_rate}")
        if not problem.steps:
            return ANSWER_PREFIX + problem.answer
        lines: list[str] = []
        for i, step in enumerate(problem.steps):
            lines.append(step)
            if recheck:
                lines.append(RECHECK_PREFIX + step)
            while rng.random() < digression_rate:
                lines.append(self._safe_digression(problem, i, rng))
        return "\n".join([*lines, ANSWER_PREFIX + problem.answer])

    def _safe_digression(self, problem: Problem, step_index: int, rng: random.Random) -> str:
        """A digression that `classify_steps` cannot mistake for the next gold step: when gold
        steps repeat (`5+0=5` twice), a repeated step would otherwise count as necessary."""
        steps = problem.steps or []
        upcoming = self.step_forms(problem, step_index + 1) if step_index + 1 < len(steps) else set()
        for _ in range(20):
            line = self.digression(problem, step_index, rng)
            if (line.strip() and self.canonical_step(problem, line) not in upcoming
                    and ANSWER_PREFIX.strip() not in line):
                return line
        return "hmm"

    def digression(self, problem: Problem, step_index: int, rng: random.Random) -> str:
        """One unnecessary line after gold step `step_index`: a repeated step, an irrelevant side
        computation, a re-check or filler. Subclasses add task-flavoured ones."""
        steps = problem.steps or []
        kind = rng.randrange(3)
        if kind == 0 and steps:
            return steps[step_index]
        if kind == 1 and steps:
            return RECHECK_PREFIX + steps[rng.randrange(step_index + 1)]
        return rng.choice(["hmm", "let me see", "ok", "wait", "so far so good"])

    def canonical_step(self, problem: Problem, line: str) -> str:
        """A line's meaning, in one spelling: two lines that say the same step (`12+7=19`,
        `7+12=19`, `19=12+7`) share it. Tasks with paraphrasable steps override this."""
        return " ".join(line.split())

    def step_forms(self, problem: Problem, index: int) -> set[str]:
        """The canonical spellings that count as writing gold step `index` (a task may accept a
        shortened form, like the running value alone)."""
        return {self.canonical_step(problem, (problem.steps or [])[index])}

    def classify_steps(self, problem: Problem, completion: str) -> list[tuple[str, bool]]:
        """Each reasoning line of `completion` with whether it is necessary.

        A line is necessary when it says the next gold step not yet written (in any spelling the
        task accepts); every other line (a repeat, a side computation, a re-check, filler) is a
        digression. Without gold steps, every line counts as necessary.
        """
        lines = [line for line in reasoning_part(completion).split("\n") if line.strip()]
        if not problem.steps:
            return [(line, True) for line in lines]
        out = []
        taken: list[str] = []
        for line in lines:
            necessary = self.is_next_step(problem, len(taken), line, taken)
            if necessary:
                taken.append(line)
            out.append((line, necessary))
        return out

    def is_next_step(self, problem: Problem, index: int, line: str, taken: list[str]) -> bool:
        """Whether `line` is step `index` of the transcript's chain, after its necessary lines
        `taken`: by default, when it says gold step `index` in a spelling the task accepts."""
        return (index < len(problem.steps or [])
                and self.canonical_step(problem, line) in self.step_forms(problem, index))

    # --- strict criteria and editors (built-in tasks) -------------------------------------
    has_step_checker: ClassVar[bool] = False
    has_paraphraser: ClassVar[bool] = False

    def step_valid(self, problem: Problem, line: str) -> bool:
        """Whether one reasoning line is a true, well-formed step of this problem ("solve it the
        right way"). A true but unneeded side computation is valid; filler and false statements
        are not. Tasks with `has_step_checker` implement it."""
        raise NotImplementedError(f"task {self.name} has no step checker")

    def check_steps(self, problem: Problem, completion: str) -> list[tuple[str, bool]]:
        """Each reasoning line with whether it is a valid step."""
        lines = [line for line in reasoning_part(completion).split("\n") if line.strip()]
        return [(line, self.step_valid(problem, line)) for line in lines]

    def paraphrase_step(self, problem: Problem, line: str, rng: random.Random) -> str:
        """The same step in other words (the rule-based paraphraser of built-in tasks). Tasks with
        `has_paraphraser` implement it; a line the task cannot read comes back unchanged."""
        raise NotImplementedError(f"task {self.name} has no rule-based paraphraser")

    def paraphrase(self, problem: Problem, reasoning: str, rng: random.Random) -> str:
        """Every line of a reasoning text paraphrased."""
        return "\n".join(self.paraphrase_step(problem, line, rng) if line.strip() else line
                         for line in reasoning.split("\n"))
