"""Lenient final-answer extraction and exact number parsing.

The explore stage rewards only the final answer, so a policy must get credit however it chose to
mark that answer: `<answer>` tags, `\\boxed{}`, an `Answer:` line, GSM8K's `####`, or just a last
number. Every function here is total: arbitrary model output never raises.

    python -c "from shrinkthink.verify import extract_answer as e; print(e('so 12 Answer: 42.'))"
"""

from __future__ import annotations

import bisect
import re
from fractions import Fraction

_OPEN_TAG = re.compile(r"<answer>", re.IGNORECASE)
_CLOSE_TAG = re.compile(r"</answer>", re.IGNORECASE)
_BOXED = re.compile(r"\\boxed\s*\{")
# `\b` so that words like "reanswer:" do not count; the rest of the line is the answer.
_ANSWER_LINE = re.compile(r"\banswer\s*:[ \t]*([^\n]*)", re.IGNORECASE)
_HASHES = re.compile(r"####[ \t]*([^\n]*)")
# A minus sign only counts when it cannot be a binary minus (`12-7` ends in 7, not -7); thousands
# groups must be complete (`1,2345` is two numbers); a fraction is digits/digits.
_NUMBER = re.compile(
    r"(?:(?<![\w)\]}])-)?(?<![0-9.])"
    r"(?:[0-9]{1,3}(?:,[0-9]{3})+(?![0-9])|[0-9]+)(?:\.[0-9]+)?(?:/[0-9]+)?"
)
_PLAIN_NUMBER = re.compile(
    r"([+-]?)([0-9]{1,3}(?:,[0-9]{3})+|[0-9]*)(?:\.([0-9]*))?(?:[eE]([+-]?[0-9]+))?"
)
_FRACTION = re.compile(r"([+-]?[0-9]+)\s*/\s*([+-]?[0-9]+)")
# Exponents beyond this would make Fraction build enormous integers from a few characters.
_MAX_EXPONENT = 1000


def extract_answer(text: str) -> str | None:
    """The final answer in `text`, or None when it has none.

    Priority: the last `<answer>...</answer>`, the last balanced `\\boxed{...}`, the last
    `Answer:` line, the last `####` line, the last number.
    """
    for finder in (_last_answer_tag, _last_boxed, _last_answer_line, _last_hashes, _last_number):
        found = finder(text)
        if found:
            return found
    return None


def _last_answer_tag(text: str) -> str | None:
    # Pair each closing tag with the nearest opening tag before it (bisect keeps this linear on
    # adversarial text full of unclosed tags, where a lazy `.*?` regex would be quadratic).
    opens = [m.end() for m in _OPEN_TAG.finditer(text)]
    for close in reversed([m.start() for m in _CLOSE_TAG.finditer(text)]):
        i = bisect.bisect_right(opens, close) - 1
        if i < 0:
            break
        content = text[opens[i] : close]
        inner = _last_boxed(content) or _clean(content)
        if inner:
            return inner
    return None


def _last_boxed(text: str) -> str | None:
    starts = [m.end() for m in _BOXED.finditer(text)]
    if not starts:
        return None
    closing = _closing_braces(text)
    # From the last candidate back, because a truncated final `\boxed{` has no close.
    for start in reversed(starts):
        end = closing.get(start - 1)
        if end is not None and text[start:end].strip():
            return text[start:end].strip()
    return None


def _closing_braces(text: str) -> dict[int, int]:
    """Position of each `{` mapped to the position of the `}` that closes it (one linear pass,
    so text full of unclosed `\\boxed{` cannot make extraction quadratic)."""
    stack: list[int] = []
    closing: dict[int, int] = {}
    for i, char in enumerate(text):
        if char == "{":
            stack.append(i)
        elif char == "}" and stack:
            closing[stack.pop()] = i
    return closing


def _last_answer_line(text: str) -> str | None:
    matches = list(_ANSWER_LINE.finditer(text))
    if not matches:
        return None
    last = matches[-1]
    answer = _clean(last.group(1))
    if answer:
        return answer
    # "Answer:" alone on its line: models often put the value on the next line.
    for line in text[last.end() :].split("\n"):
        if _clean(line):
            return _clean(line)
    return None


def _last_hashes(text: str) -> str | None:
    matches = _HASHES.findall(text)
    return _clean(matches[-1]) if matches else None


def _last_number(text: str) -> str | None:
    last = None
    for match in _NUMBER.finditer(text):
        last = match
    return last.group(0) if last else None


def _clean(answer: str) -> str:
    """Strip the wrapping models add around an answer: whitespace, markdown bold, `$...$`, and a
    sentence-ending period."""
    answer = answer.strip().strip("*").strip()
    if len(answer) >= 2 and answer.startswith("$") and answer.endswith("$"):
        answer = answer.strip("$").strip()
    if answer.endswith("."):
        answer = answer[:-1].rstrip()
    return answer


def parse_number(s: str) -> Fraction | None:
    """`s` as an exact number ("1,234", "-0.5", "3/4", "1e3"), or None when it is not one."""
    s = s.strip()
    try:
        fraction = _FRACTION.fullmatch(s)
        if fraction:
            numerator, denominator = int(fraction.group(1)), int(fraction.group(2))
            return Fraction(numerator, denominator) if denominator else None
        plain = _PLAIN_NUMBER.fullmatch(s)
        if not plain:
            return None
        sign, whole, decimals, exponent = plain.groups()
        whole = whole.replace(",", "")
        decimals = decimals or ""
        if not whole and not decimals:
            return None
        power = int(exponent) if exponent else 0
        if abs(power) > _MAX_EXPONENT:
            return None
        value = Fraction(int(whole or "0") * 10 ** len(decimals) + int(decimals or "0"))
        value = value / 10 ** len(decimals) * Fraction(10) ** power
        return -value if sign == "-" else value
    except ValueError:  # more digits than int() will convert (sys.get_int_max_str_digits)
        return None


def numbers_equal(a: str, b: str) -> bool:
    """Whether `a` and `b` are both numbers and exactly equal ("1,000" equals "1000.0")."""
    x, y = parse_number(a), parse_number(b)
    return x is not None and y is not None and x == y
