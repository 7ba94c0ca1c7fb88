"""Chained arithmetic: `12+7+30=?`.

Two difficulty axes. `axis="terms"`: level L has L+1 terms, so harder means longer transcripts,
which a small model generalises to badly. `axis="magnitude"`: a fixed number of terms
whose operands grow with the level (up to 10*L-1 at level L), so harder means new numbers in the
same shape of transcript.

Two step formats, because the format decides how far a tiny model generalises in length:
- `refer`: each line names its operands, `12+7=19` then `19+30=49`;
- `carry`: each line is the remaining work with the first operation done, `19+30` then `49`, so
  every line is computable from the line before alone.

    python -c "import random; from shrinkthink.tasks.arith import ArithTask; \\
        print(ArithTask(step_format='carry').generate(2, random.Random(0)))"
"""

from __future__ import annotations

import random
import re
from typing import Literal

from shrinkthink.records import Problem
from shrinkthink.tasks.base import Task, problem_id
from shrinkthink.verify import numbers_equal

StepFormat = Literal["refer", "carry"]
Axis = Literal["terms", "magnitude"]


class ArithTask(Task):
    """Sums (and, with `ops="+-"`, differences) of small non-negative integers."""

    name = "arith"
    description = "chained sums like 12+7+30=? (level L: L+1 terms); step formats refer or carry"
    max_level = 8

    def __init__(
        self,
        ops: str = "+",
        max_operand: int = 9,
        min_operand: int = 0,
        step_format: StepFormat = "refer",
        axis: Axis = "terms",
        terms: int = 3,
        heldout_fraction: float = 0.2,
    ) -> None:
        super().__init__(heldout_fraction)
        if not ops or set(ops) - set("+-"):
            raise ValueError(f"ops must be a non-empty subset of '+-', got {ops!r}")
        if not 0 <= min_operand <= max_operand:
            raise ValueError(
                f"need 0 <= min_operand <= max_operand, got {min_operand} and {max_operand}"
            )
        if step_format not in ("refer", "carry"):
            raise ValueError(f"step_format must be 'refer' or 'carry', got {step_format!r}")
        if axis not in ("terms", "magnitude"):
            raise ValueError(f"axis must be 'terms' or 'magnitude', got {axis!r}")
        if terms < 2:
            raise ValueError(f"terms must be at least 2, got {terms}")
        self.axis: Axis = axis
        self.terms = terms
        self.ops = "".join(sorted(set(ops)))
        self.max_operand = max_operand
        self.min_operand = min_operand
        self.step_format: StepFormat = step_format

    def generate(self, level: int, rng: random.Random) -> Problem:
        terms, ops = self._draw(level + 1 if self.axis == "terms" else self.terms, rng, self._top(level))
        prompt = expression(terms, ops) + "=?"
        values = running_values(terms, ops)
        steps = (
            refer_steps(terms, ops, values)
            if self.step_format == "refer"
            else carry_steps(terms, ops, values)
        )
        return Problem(
            id=problem_id(self.name, level, prompt),
            prompt=prompt,
            answer=str(values[-1]),
            level=level,
            steps=steps,
            metadata={"terms": terms, "ops": ops},
        )

    def _top(self, level: int) -> int:
        """The largest operand at `level`."""
        return self.max_operand if self.axis == "terms" else max(self.min_operand, 10 * level - 1)

    def _draw(self, n_terms: int, rng: random.Random, top: int) -> tuple[list[int], list[str]]:
        """Terms and the operators between them; a subtraction never takes the running value below
        zero (when it would, that term is added instead)."""
        terms = [rng.randint(self.min_operand, top)]
        ops: list[str] = []
        value = terms[0]
        for _ in range(n_terms - 1):
            op = rng.choice(self.ops)
            if op == "-" and value >= self.min_operand:
                term = rng.randint(self.min_operand, min(value, top))
                value -= term
            else:
                op = "+"
                term = rng.randint(self.min_operand, top)
                value += term
            terms.append(term)
            ops.append(op)
        return terms, ops

    def is_correct(self, problem: Problem, answer: str) -> bool:
        return numbers_equal(answer, problem.answer)

    # --- step checker, canonical steps, paraphraser -----------------------------------------
    has_step_checker = True
    has_paraphraser = True

    def canonical_step(self, problem: Problem, line: str) -> str:
        """`12+7=19`, `7+12=19` and `19=12+7` read as `7+12=19` (a sum's operands sorted); a bare
        number `19` reads as `=19`, the step written as its result alone; `49+5` (a carry-format
        line) as itself."""
        parsed = parse_step(line)
        if parsed is None:
            return super().canonical_step(problem, line)
        left, op, right, result = parsed
        if left is None:
            return f"={result}"
        if op == "+":
            left, right = sorted((left, right))
        return f"{left}{op}{right}={result}"

    def step_forms(self, problem: Problem, index: int) -> set[str]:
        """The gold step, or its running value alone (`19` for `12+7=19`): a shortened step says
        the same thing, and shrinking may well arrive at it."""
        forms = super().step_forms(problem, index)
        if self.step_format == "refer":
            parsed = parse_step((problem.steps or [])[index])
            if parsed is not None:
                forms.add(f"={parsed[3]}")
        return forms

    def is_next_step(self, problem: Problem, index: int, line: str, taken: list[str]) -> bool:
        """The gold step, or the transcript's own next step whatever its result. In the `refer`
        format: its last running value and the next term (`39+5=44` after `18+11=39`); in the
        `carry` format: any leading value and the gold rest of the expression (`39+5` where the
        gold line is `29+5`; the last line, any number). A slip in a sum is an error, which
        accuracy counts, and the lines that carry on from the wrong value are the chain itself,
        not side computations. Without this, one slip made every later line a digression."""
        if super().is_next_step(problem, index, line, taken):
            return True
        terms, ops = problem.metadata["terms"], problem.metadata["ops"]
        if index >= len(ops):
            return False
        if self.step_format == "carry":
            text = "".join(line.split())
            rest = operations(ops[index + 1:], terms[index + 2:])  # the gold line after its value
            value = text[: len(text) - len(rest)] if text.endswith(rest) else ""
            return value.isdigit()
        parsed = parse_step(line)
        if parsed is None or parsed[0] is None:
            return False
        last = parse_step(taken[-1]) if taken else None
        running = last[3] if last else running_values(terms, ops)[index]
        left, op, right, _ = parsed
        operands = {(left, right), (right, left)} if op == "+" else {(left, right)}
        return op == ops[index] and (running, terms[index + 1]) in operands

    def step_valid(self, problem: Problem, line: str) -> bool:
        """A true operation on numbers (`12+7=19`, `19=12+7`), a running value written alone, or a
        gold step in either format. Filler and false sums are not valid."""
        if line.strip() in {s.strip() for s in problem.steps or []}:
            return True
        parsed = parse_step(line)
        if parsed is None:
            return False
        left, op, right, result = parsed
        if left is None:
            return result in running_values(problem.metadata["terms"], problem.metadata["ops"])
        return (left + right if op == "+" else left - right) == result

    def paraphrase_step(self, problem: Problem, line: str, rng: random.Random) -> str:
        """`12+7=19` becomes `19=7+12` or `19=12+7` (or `7+12=19`): the same step, spelled
        otherwise."""
        parsed = parse_step(line)
        if parsed is None or parsed[0] is None:
            return line
        left, op, right, result = parsed
        if op == "+" and rng.random() < 0.5:
            left, right = right, left
        if rng.random() < 0.5 or (left, right) == parsed[:3:2]:
            return f"{result}={left}{op}{right}"
        return f"{left}{op}{right}={result}"

    def digression(self, problem: Problem, step_index: int, rng: random.Random) -> str:
        """An unrelated sum of two terms from the question, else a generic digression."""
        terms: list[int] = problem.metadata["terms"]
        gold = {s.strip() for s in problem.steps or []}
        if rng.random() < 0.5 and len(terms) > 1:
            i, j = rng.sample(range(len(terms)), 2)
            line = f"{terms[i]}+{terms[j]}={terms[i] + terms[j]}"
            if line not in gold:
                return line
        return super().digression(problem, step_index, rng)


def expression(terms: list[int], ops: list[str]) -> str:
    """`12+7-3`: the terms joined by their operators."""
    return str(terms[0]) + operations(ops, terms[1:])


def operations(ops: list[str], terms: list[int]) -> str:
    """`+7-3`: each operator with the term it applies."""
    return "".join(op + str(term) for op, term in zip(ops, terms))


def running_values(terms: list[int], ops: list[str]) -> list[int]:
    """The value after each term: [12, 19, 49] for 12+7+30."""
    values = [terms[0]]
    for op, term in zip(ops, terms[1:]):
        values.append(values[-1] + term if op == "+" else values[-1] - term)
    return values


def refer_steps(terms: list[int], ops: list[str], values: list[int]) -> list[str]:
    """`12+7=19`, `19+30=49`: each line applies one operator to the previous result."""
    return [
        f"{values[k]}{ops[k]}{terms[k + 1]}={values[k + 1]}" for k in range(len(ops))
    ]


def carry_steps(terms: list[int], ops: list[str], values: list[int]) -> list[str]:
    """`19+30`, `49`: each line is the expression left after one more operation."""
    return [expression([values[k]] + terms[k + 1 :], ops[k:]) for k in range(1, len(terms))]


def parse_step(line: str) -> tuple[int | None, str, int | None, int] | None:
    """(left, op, right, result) of `a+b=c`, `a-b=c` or `c=a+b`; (None, "", None, c) of a bare
    number `c`; None for anything else."""
    text = "".join(line.split())
    if text.isdigit():
        return None, "", None, int(text)
    match = _STEP.fullmatch(text) or _STEP_REVERSED.fullmatch(text)
    if match is None:
        return None
    return int(match["left"]), match["op"], int(match["right"]), int(match["result"])


_STEP = re.compile(r"(?P<left>\d+)(?P<op>[+-])(?P<right>\d+)=(?P<result>\d+)")
_STEP_REVERSED = re.compile(r"(?P<result>\d+)=(?P<left>\d+)(?P<op>[+-])(?P<right>\d+)")
