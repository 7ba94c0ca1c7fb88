"""Whether a predicted answer equals a gold one: exactly as numbers, as math via `math-verify`
(`\\frac{1}{2}` equals `0.5`, `x+1` equals `1+x`), or as normalised text.

    python -c "from shrinkthink.verify import answers_match; print(answers_match('1,000', '1000'))"
"""

from __future__ import annotations

import logging
import re
import string
import threading

from shrinkthink.verify.extract import parse_number

# math-verify parses with sympy, which can take unbounded time (`2^{2^{100}}`); longer inputs than
# this are compared as text only.
_MAX_MATH_CHARS = 200
# Timeouts use signal.alarm, which only works in the main thread; elsewhere they are off and
# inputs with these operators, which make sympy evaluate huge integers, skip math-verify.
_EXPLOSIVE = ("^", "**", "!")
_MATH_TIMEOUT_S = 2
# A symbol-free word like "cat" would parse as the product c*a*t and equal "act"; only strings
# with one of these characters are treated as math.
_MATH_CHARS = re.compile(r"[0-9\\+\-*/^=()]")
_STRIP = string.punctuation + string.whitespace + "\u201c\u201d\u2018\u2019"


class _DropTimeoutWarning(logging.Filter):
    """math-verify warns once per process that timeouts are off; off is our deliberate choice
    outside the main thread, so the warning is noise."""

    def filter(self, record: logging.LogRecord) -> bool:
        return "Timeout is disabled" not in record.getMessage()


for _name in ("math_verify.parser", "math_verify.grader"):
    logging.getLogger(_name).addFilter(_DropTimeoutWarning())


def answers_match(pred: str, gold: str) -> bool:
    """Whether `pred` is the same answer as `gold`. Never raises."""
    try:
        x, y = parse_number(pred), parse_number(gold)
        if x is not None and y is not None:
            return x == y
        if normalise(pred) == normalise(gold) and normalise(gold):
            return True
        return _math_equal(pred, gold)
    except Exception:  # a verifier must score any model output, never crash the training loop
        return False


def normalise(text: str) -> str:
    """Case-folded, whitespace collapsed, surrounding punctuation and quotes stripped."""
    return " ".join(text.casefold().split()).strip(_STRIP)


def _math_equal(pred: str, gold: str) -> bool:
    if not (_looks_mathematical(pred) and _looks_mathematical(gold)):
        return False
    in_main = threading.current_thread() is threading.main_thread()
    if not in_main and any(op in pred + gold for op in _EXPLOSIVE):
        return False
    from math_verify import parse, verify  # imported late: it pulls in sympy (about 0.4 s)

    timeout_s = _MATH_TIMEOUT_S if in_main else None
    gold_parsed = parse(_as_latex(gold), parsing_timeout=timeout_s)  # type: ignore[arg-type]
    pred_parsed = parse(_as_latex(pred), parsing_timeout=timeout_s)  # type: ignore[arg-type]
    if not gold_parsed or not pred_parsed:
        return False
    return bool(verify(gold_parsed, pred_parsed, timeout_seconds=timeout_s))


def _looks_mathematical(text: str) -> bool:
    return len(text) <= _MAX_MATH_CHARS and bool(_MATH_CHARS.search(text))


def _as_latex(text: str) -> str:
    """Wrap in `$...$` so math-verify reads `x+1` as an expression rather than hunting for a number
    inside it."""
    text = text.strip()
    return text if text.startswith("$") else f"${text}$"
