"""Answer extraction and equivalence: hand cases for every form, and fuzzing for totality."""

from __future__ import annotations

import threading
from fractions import Fraction

import pytest
from hypothesis import assume, given, settings
from hypothesis import strategies as st

from shrinkthink.verify import answers_match, extract_answer, numbers_equal, parse_number


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("think <answer> 42 </answer> then 7 more", "42"),
        ("<answer>1</answer> <answer>2</answer>", "2"),
        ("<ANSWER>\\boxed{7}</ANSWER>", "7"),
        ("x \\boxed{\\frac{1}{2}} then 9", "\\frac{1}{2}"),
        ("\\boxed{a{b}c} and a cut-off \\boxed{12", "a{b}c"),
        ("so\nANSWER: 12.\nthen 3", "12"),
        ("first answer: 1\nfinal Answer: wum", "wum"),
        ("Answer:\n 5", "5"),
        ("**Answer:** $42$", "42"),
        ("the work\n#### 1,234", "1,234"),
        ("we get -3 and then 1,234", "1,234"),
        ("a fraction 3/4", "3/4"),
        ("x = -3.5.", "-3.5"),
        ("12-7", "7"),
        ("no digits here", None),
        ("", None),
    ],
)
def test_extract_answer_forms(text: str, expected: str | None) -> None:
    assert extract_answer(text) == expected


def test_extraction_priority() -> None:
    # <answer> beats \boxed beats Answer: beats #### beats a bare number, wherever they sit.
    assert extract_answer("<answer>1</answer> \\boxed{2} Answer: 3 #### 4 5") == "1"
    assert extract_answer("\\boxed{2} Answer: 3\n#### 4 5") == "2"
    assert extract_answer("Answer: 3\n#### 4\n5") == "3"
    assert extract_answer("#### 4\n5") == "4"


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("1,234", Fraction(1234)),
        ("0.5", Fraction(1, 2)),
        (".5", Fraction(1, 2)),
        ("3/4", Fraction(3, 4)),
        ("-2", Fraction(-2)),
        ("+7", Fraction(7)),
        ("1e3", Fraction(1000)),
        ("2.5E-1", Fraction(1, 4)),
        ("abc", None),
        ("", None),
        ("-", None),
        ("1,23", None),
        ("1/0", None),
        ("1e999999999", None),
        ("9" * 10_000, None),
    ],
)
def test_parse_number(text: str, expected: Fraction | None) -> None:
    assert parse_number(text) == expected


def test_numbers_equal() -> None:
    assert numbers_equal("1,000", "1000.0")
    assert numbers_equal("0.75", "3/4")
    assert not numbers_equal("1", "2")
    assert not numbers_equal("x", "x")


@pytest.mark.parametrize(
    ("pred", "gold", "expected"),
    [
        ("\\frac{1}{2}", "0.5", True),
        ("1,000", "1000", True),
        ("x+1", "1+x", True),
        ("Yes.", "yes", True),
        ('"wum"', "Wum", True),
        ("3", "4", False),
        ("\\frac{1}{3}", "0.5", False),
        ("cat", "act", False),  # not c*a*t == a*c*t
        ("2^{2^{100}}", "3", False),  # bounded by math-verify's timeout, not a hang
        ("", "1", False),
    ],
)
def test_answers_match(pred: str, gold: str, expected: bool) -> None:
    assert answers_match(pred, gold) is expected


def test_answers_match_outside_main_thread() -> None:
    # math-verify's signal timeouts fail off the main thread; rollouts may score in workers.
    results: list[bool] = []

    def work() -> None:
        results.append(answers_match("\\frac{1}{2}", "0.5"))
        results.append(answers_match("2^{2^{100}}", "3"))

    thread = threading.Thread(target=work)
    thread.start()
    thread.join(timeout=30)
    assert results == [True, False]


@settings(max_examples=300, deadline=None)
@given(st.text())
def test_extract_answer_never_raises(text: str) -> None:
    result = extract_answer(text)
    assert result is None or isinstance(result, str)


@settings(max_examples=200, deadline=None)
@given(st.text(), st.integers(-(10**12), 10**12))
def test_answer_line_wins_over_text(text: str, n: int) -> None:
    assume("</answer>" not in text.lower() and "\\boxed" not in text)
    assert extract_answer(f"{text}\nAnswer: {n}") == str(n)


@settings(max_examples=200, deadline=None)
@given(st.integers(-(10**6), 10**6), st.lists(st.integers(0, 10**6), max_size=5))
def test_answer_tag_wins_over_later_numbers(n: int, later: list[int]) -> None:
    text = f"so <answer>{n}</answer> " + " ".join(map(str, later))
    assert extract_answer(text) == str(n)


@settings(max_examples=100, deadline=None)
@given(st.integers(0, 10**6), st.integers(0, 3))
def test_boxed_with_nested_braces(n: int, depth: int) -> None:
    inner = "{" * depth + str(n) + "}" * depth
    assert extract_answer(f"work 7 \\boxed{{{inner}}} then 8") == inner


@settings(max_examples=200, deadline=None)
@given(st.text(max_size=60), st.text(max_size=60))
def test_answers_match_never_raises(pred: str, gold: str) -> None:
    assert answers_match(pred, gold) in (True, False)
