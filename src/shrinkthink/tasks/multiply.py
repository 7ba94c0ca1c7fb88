"""Multi-digit multiplication in the iCoT format (Deng et al. 2023, "Implicit Chain of Thought
Reasoning via Knowledge Distillation", arXiv 2311.01460): every number is written least-significant
digit first, so a left-to-right model produces digits in the order carries need them, and zero-padded
to a width fixed by the digit counts, so every digit of every line sits at the same place in every
problem of a size.

For 2413*35 the prompt is `3142*53=?`; the steps are the partial product 2413*5 reversed, then one
line per further digit of the multiplier, `+P=S`, with P the shifted partial product and S the
running sum, both reversed. With an n-digit multiplicand, the partial product by digit j (from 0)
and the sum that takes it in have n+1+j digits, and the answer n+m:

    56021
    +093270=554480
    Answer: 554480

iCoT spaces its digits (`5 6 0 2 1`); we write them compact because tiny character-level models
pay per character. `fixed_width: false` writes each number with only its own digits (`+09327=55448`),
which moves every later digit with the carries; on 4x4 the quickstart's 1.06M-parameter model
learned more slowly that way (loss 0.79 against 0.64 after 800 steps; neither solved a problem).

    python -c "import random; from shrinkthink.tasks.multiply import MultiplyTask; \\
        print(MultiplyTask().generate(2, random.Random(0)))"
"""

from __future__ import annotations

import random
import re

from shrinkthink.records import Problem
from shrinkthink.tasks.base import Task, problem_id


class MultiplyTask(Task):
    """Level L multiplies two L-digit numbers (or fixed sizes, with `digits=[a, b]`)."""

    name = "multiply"
    description = "L-digit by L-digit multiplication, digits reversed as in iCoT: 3142*53=?"
    max_level = 9

    def __init__(self, digits: list[int] | None = None, fixed_width: bool = True,
                 heldout_fraction: float = 0.2) -> None:
        super().__init__(heldout_fraction)
        if not isinstance(fixed_width, bool):
            raise ValueError(f"fixed_width must be true or false, got {fixed_width!r}")
        self.fixed_width = fixed_width
        if digits is not None:
            if len(digits) != 2 or not all(isinstance(d, int) and d >= 1 for d in digits):
                raise ValueError(f"digits must be two positive integers [a, b], got {digits!r}")
            # Fixed sizes leave nothing for a level to vary: a single level says so honestly.
            self.max_level = 1
        self.digits = digits

    def generate(self, level: int, rng: random.Random) -> Problem:
        a_digits, b_digits = self.digits or (level, level)
        a = rng.randint(10 ** (a_digits - 1), 10**a_digits - 1)
        b = rng.randint(10 ** (b_digits - 1), 10**b_digits - 1)
        prompt = f"{rev(a)}*{rev(b)}=?"
        return Problem(
            id=problem_id(self.name, level, prompt),
            prompt=prompt,
            answer=rev(a * b, a_digits + b_digits if self.fixed_width else 0),
            level=level,
            steps=icot_steps(a, b, self.fixed_width),
            metadata={"a": a, "b": b},
        )

    def is_correct(self, problem: Problem, answer: str) -> bool:
        """The product's digits, reversed; padding zeros (or their absence) do not count."""
        text = "".join(answer.split())
        return text.isdigit() and text.isascii() and text.rstrip("0") == problem.answer.rstrip("0")

    # --- step checker, canonical steps, paraphraser -----------------------------------------
    has_step_checker = True
    has_paraphraser = True

    def canonical_step(self, problem: Problem, line: str) -> str:
        """Digits compact: iCoT's spaced `5 6 0 2 1` and our `56021` say the same."""
        return "".join(line.split())

    def step_valid(self, problem: Problem, line: str) -> bool:
        """A gold step (spaced or not) or a true product of two digits (`3*5=15`)."""
        text = self.canonical_step(problem, line)
        if text in {self.canonical_step(problem, s) for s in problem.steps or []}:
            return True
        match = _PRODUCT.fullmatch(text)
        return bool(match) and int(match[1]) * int(match[2]) == int(match[3])

    def paraphrase_step(self, problem: Problem, line: str, rng: random.Random) -> str:
        """Compact digits spaced out as iCoT writes them (`56021` -> `5 6 0 2 1`), and back."""
        if " " in line.strip():
            return "".join(line.split())
        return " ".join(line.strip())

    def digression(self, problem: Problem, step_index: int, rng: random.Random) -> str:
        """A single-digit product of two digits from the question (true, and unneeded as a line),
        else a generic digression. Gold lines never contain `*`, so these never collide."""
        if rng.random() < 0.5:
            x = int(rng.choice(str(problem.metadata["a"])))
            y = int(rng.choice(str(problem.metadata["b"])))
            return f"{x}*{y}={x * y}"
        return super().digression(problem, step_index, rng)


def rev(n: int, width: int = 0) -> str:
    """`n`'s digits least-significant first, zero-padded to `width`: 2413 -> "3142", (2413, 6) ->
    "314200"."""
    return str(n)[::-1].ljust(width, "0")


def icot_steps(a: int, b: int, fixed_width: bool = True) -> list[str]:
    """The partial product by b's lowest digit, then `+P=S` per further digit (reversed; with
    `fixed_width`, the j-th line's numbers padded to len(a)+1+j digits)."""
    def width(j: int) -> int:  # of line j's numbers; 0: their own digits only
        return len(str(a)) + 1 + j if fixed_width else 0

    b_digits = [int(d) for d in rev(b)]
    total = a * b_digits[0]
    steps = [rev(total, width(0))]
    for j, digit in enumerate(b_digits[1:], start=1):
        # The shifted partial product keeps its j trailing zeros, which lead once reversed.
        partial = ("0" * j + rev(a * digit)).ljust(width(j), "0")
        total += a * digit * 10**j
        steps.append(f"+{partial}={rev(total, width(j))}")
    return steps


_PRODUCT = re.compile(r"(\d)\*(\d)=(\d+)")
