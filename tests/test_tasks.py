"""Built-in tasks, the JSONL and reasoning-gym adapters, and the task table.

Every built-in generator is checked at every level: its gold transcript and its digressive
demonstrations score 1.0, wrong or missing answers score 0.0, splits never share a prompt, and
`classify_steps` recovers exactly which lines were injected.
"""

from __future__ import annotations

import json
import random
from collections import Counter
from pathlib import Path

import pytest

from shrinkthink.errors import UserError
from shrinkthink.records import Problem
from shrinkthink.tasks import TASKS, Task, gold_completion, list_tasks, make_task
from shrinkthink.tasks.arith import ArithTask, carry_steps, refer_steps, running_values
from shrinkthink.tasks.multiply import MultiplyTask, icot_steps, rev
from shrinkthink.tasks.prontoqa import ProntoQATask
from shrinkthink.tasks.prosqa import ProsQATask

BUILTINS: dict[str, Task] = {
    "arith-refer": ArithTask(),
    "arith-carry": ArithTask(step_format="carry", max_operand=30),
    "arith-minus-refer": ArithTask(ops="+-"),
    "arith-minus-carry": ArithTask(ops="+-", step_format="carry", min_operand=1),
    "multiply": MultiplyTask(),
    "prosqa": ProsQATask(),
    "prontoqa": ProntoQATask(),
}
CASES = [(key, level) for key, task in BUILTINS.items() for level in range(1, task.max_level + 1)]
PRINTABLE = set(map(chr, range(32, 127))) | {"\n"}


def sample(task: Task, level: int) -> list[Problem]:
    return task.problems(level, 6, "train", seed=3) + task.problems(level, 3, "test", seed=3)


def perturbed(problem: Problem) -> str:
    """A wrong answer close to the right one: another concept, or one digit changed."""
    if "other" in problem.metadata:
        return str(problem.metadata["other"])
    last = problem.answer[-1]
    return problem.answer[:-1] + str((int(last) + 1) % 10)


@pytest.mark.parametrize(("key", "level"), CASES)
def test_builtin_scores(key: str, level: int) -> None:
    task = BUILTINS[key]
    rng = random.Random(0)
    for problem in sample(task, level):
        assert problem.steps and problem.level == level
        assert problem.id.startswith(f"{task.name}-L{level}-")
        gold = gold_completion(problem.steps, problem.answer)
        demo = task.demonstration(problem, rng, digression_rate=0.5)
        assert task.score(problem, gold) == 1.0
        assert task.score(problem, demo) == 1.0
        wrong = "\n".join([*problem.steps[:-1], "Answer: " + perturbed(problem)])
        assert task.score(problem, wrong) == 0.0
        assert task.score(problem, "I am not sure.") == 0.0
        assert set(problem.prompt + gold + demo) <= PRINTABLE


@pytest.mark.parametrize(("key", "level"), CASES)
def test_builtin_splits_disjoint_and_seeded(key: str, level: int) -> None:
    task = BUILTINS[key]
    drawn = task.problems(level, 40, "train", seed=1)
    train = {p.prompt for p in drawn}
    test = task.problems(level, 10, "test", seed=1)
    validation = {p.prompt for p in task.problems(level, 10, "validation", seed=1)}
    # decisions (validation) never see a reported (test) problem; neither is trained on
    assert validation and not validation & {p.prompt for p in test}
    assert not train & {p.prompt for p in test} and not train & validation
    assert [p.prompt for p in task.problems(level, 10, "test", seed=1)] == [p.prompt for p in test]
    assert [p.id for p in task.problems(level, 40, "train", seed=1)] == [p.id for p in drawn]


def expected_flags(task: Task, problem: Problem, seed: int, rate: float) -> tuple[str, list[bool]]:
    """A demonstration and the ground truth of which of its lines are gold, recorded by counting
    the digressions injected after each step."""
    injected: Counter[int] = Counter()
    inject = task._safe_digression

    def recording(problem: Problem, step_index: int, rng: random.Random) -> str:
        injected[step_index] += 1
        return inject(problem, step_index, rng)

    task._safe_digression = recording  # type: ignore[method-assign]
    try:
        demo = task.demonstration(problem, random.Random(seed), rate)
    finally:
        del task._safe_digression
    steps = range(len(problem.steps or []))
    flags = [flag for i in steps for flag in [True] + [False] * injected[i]]
    return demo, flags


@pytest.mark.parametrize(("key", "level"), CASES)
def test_classify_steps_recovers_injected_lines(key: str, level: int) -> None:
    task = BUILTINS[key]
    injected_total = 0
    for seed, problem in enumerate(sample(task, level)):
        demo, flags = expected_flags(task, problem, seed, 0.5)
        classified = task.classify_steps(problem, demo)
        assert [necessary for _, necessary in classified] == flags
        assert [line for line, necessary in classified if necessary] == problem.steps
        injected_total += flags.count(False)
    assert injected_total > 0


@pytest.mark.parametrize(("key", "level"), CASES)
def test_recheck_habit_follows_every_gold_step_and_counts_as_digression(key: str, level: int) -> None:
    task = BUILTINS[key]
    for seed, problem in enumerate(sample(task, level)):
        demo = task.demonstration(problem, random.Random(seed), 0.0, recheck=True)
        steps = problem.steps or []
        assert demo.split("\n")[:-1] == [line for step in steps for line in (step, "check " + step)]
        assert task.score(problem, demo) == 1.0
        classified = task.classify_steps(problem, demo)
        assert [necessary for _, necessary in classified] == [True, False] * len(steps)
        if task.has_step_checker:  # a re-check is not a step: "solve it the right way" rejects it
            assert [ok for _, ok in task.check_steps(problem, demo)] == [True, False] * len(steps)


def test_repeated_gold_steps_are_not_mistaken_for_digressions() -> None:
    # With zeros, refer steps repeat ("5+0=5" twice); a repeated step injected between the two
    # copies must still count as the digression.
    task = ArithTask(max_operand=1)
    problems = [task.generate(8, random.Random(seed)) for seed in range(200)]
    repeats = [p for p in problems if any(a == b for a, b in zip(p.steps, p.steps[1:]))]
    assert repeats
    for seed, problem in enumerate(repeats):
        demo, flags = expected_flags(task, problem, seed, 0.9)
        assert [necessary for _, necessary in task.classify_steps(problem, demo)] == flags


def test_a_slip_in_a_sum_is_an_error_not_a_digression_and_the_chain_after_it_counts() -> None:
    task = ArithTask(min_operand=1, max_operand=20)
    problem = task.generate(3, random.Random(0))
    terms = problem.metadata["terms"]
    wrong = terms[0] + terms[1] + 10  # the first sum, 10 too high
    transcript = "\n".join([f"{terms[0]}+{terms[1]}={wrong}",              # a slip: still the next step
                             f"check {terms[0]}+{terms[1]}={wrong}",        # a re-check: a digression
                             f"{wrong}+{terms[2]}={wrong + terms[2]}",     # carries on from the slip
                             f"{terms[1]}+{terms[3]}={terms[1] + terms[3]}",  # a side sum: a digression
                             "hmm",
                             f"{terms[3]}+{wrong + terms[2]}={wrong + terms[2] + terms[3]}",
                             f"Answer: {wrong + terms[2] + terms[3]}"])
    assert [necessary for _, necessary in task.classify_steps(problem, transcript)] == \
        [True, False, True, False, False, True]
    assert task.score(problem, transcript) == 0.0
    # skipping a term is not the next step either
    skipped = f"{terms[0]}+{terms[2]}={terms[0] + terms[2]}\nAnswer: 0"
    assert [necessary for _, necessary in task.classify_steps(problem, skipped)] == [False]


def test_a_slip_in_the_carry_format_is_an_error_not_a_digression() -> None:
    task = ArithTask(min_operand=1, max_operand=20, step_format="carry")
    problem = task.generate(3, random.Random(0))  # four terms: three carry lines
    terms = problem.metadata["terms"]
    wrong = terms[0] + terms[1] + 10
    transcript = "\n".join([f"{wrong}+{terms[2]}+{terms[3]}",           # a slip: still the next step
                             f"check {terms[0]}+{terms[1]}={wrong}",      # a re-check: a digression
                             f"{wrong}+{terms[2]}+{terms[3]}",            # a repeat: a digression
                             f"{wrong + terms[2]}+{terms[1]}",           # the wrong term left: a digression
                             f"{wrong + terms[2]} + {terms[3]}",         # carries on from the slip
                             f"{wrong + terms[2] + terms[3]}",
                             f"Answer: {wrong + terms[2] + terms[3]}"])
    assert [necessary for _, necessary in task.classify_steps(problem, transcript)] == \
        [True, False, False, False, True, True]
    assert task.score(problem, transcript) == 0.0
    # the gold transcript, every line necessary; a skipped term is not the next step
    assert all(necessary for _, necessary in task.classify_steps(problem, "\n".join(problem.steps)))
    assert [n for _, n in task.classify_steps(problem, f"{terms[0] + terms[2]}+{terms[3]}")] == [False]


def test_arith_formats() -> None:
    problem = Problem(id="x", prompt="12+7+30=?", answer="49", metadata={"terms": [12, 7, 30]})
    values = running_values([12, 7, 30], ["+", "+"])
    assert refer_steps([12, 7, 30], ["+", "+"], values) == ["12+7=19", "19+30=49"]
    assert carry_steps([12, 7, 30, 5], ["+", "+", "+"], values + [54]) == ["19+30+5", "49+5", "54"]
    assert ArithTask().is_correct(problem, "49.0")


def test_arith_subtraction_stays_non_negative() -> None:
    task = ArithTask(ops="+-", max_operand=20)
    problems = [task.generate(8, random.Random(seed)) for seed in range(300)]
    assert sum("-" in p.prompt for p in problems) > 200
    for problem in problems:
        meta = problem.metadata
        assert min(running_values(meta["terms"], meta["ops"])) >= 0


def test_multiply_icot_format() -> None:
    assert rev(2413) == "3142" and rev(2413, 6) == "314200"
    # iCoT's layout: the j-th line's numbers have len(a)+1+j digits, the answer len(a)+len(b)
    assert icot_steps(2413, 35) == ["56021", "+093270=554480"]
    assert icot_steps(12, 3) == ["630"]
    assert icot_steps(12, 101) == ["210", "+0000=2100", "+00210=21210"]
    # each number with only its own digits
    assert icot_steps(2413, 35, fixed_width=False) == ["56021", "+09327=55448"]
    assert icot_steps(12, 101, fixed_width=False) == ["21", "+00=21", "+0021=2121"]
    for fixed_width in (True, False):
        task = MultiplyTask(digits=[4, 2], fixed_width=fixed_width)
        problem = task.generate(1, random.Random(0))
        a, b = problem.prompt[:-2].split("*")
        assert int(a[::-1]) * int(b[::-1]) == int(problem.answer[::-1])
        assert len(a) == 4 and len(b) == 2
        assert problem.steps[-1].endswith("=" + problem.answer)


def test_multiply_layout_is_fixed_by_the_sizes() -> None:
    task = MultiplyTask(digits=[4, 4])
    problems = [task.generate(1, random.Random(seed)) for seed in range(200)]
    layouts = {tuple(len(step) for step in p.steps) + (len(p.answer),) for p in problems}
    assert layouts == {(5, 14, 16, 18, 8)}
    natural = MultiplyTask(digits=[4, 4], fixed_width=False)
    assert len({tuple(len(s) for s in natural.generate(1, random.Random(seed)).steps) for seed in range(200)}) > 1


def test_multiply_scores_the_value_not_the_padding() -> None:
    task = MultiplyTask(digits=[4, 2])
    # a product with fewer digits than the width: its answer ends in padding
    problem = next(p for p in (task.generate(1, random.Random(seed)) for seed in range(100)) if p.answer[-1] == "0")
    value = problem.answer.rstrip("0")
    assert len(value) < len(problem.answer)
    assert task.is_correct(problem, problem.answer) and task.is_correct(problem, value)
    assert task.is_correct(problem, " ".join(problem.answer))  # iCoT's spaced digits
    wrong = str((int(value[0]) + 1) % 10) + value[1:]
    assert not task.is_correct(problem, wrong)
    assert not task.is_correct(problem, "0" + problem.answer)  # a leading zero moves every digit
    assert not task.is_correct(problem, "") and not task.is_correct(problem, "x")
    with pytest.raises(ValueError, match="fixed_width"):
        MultiplyTask(fixed_width="no")


def reach(edges: list[tuple[str, str]], start: str) -> dict[str, int]:
    """Shortest hop count from `start` to every concept it reaches."""
    distance = {start: 0}
    frontier = [start]
    while frontier:
        nxt = []
        for u in frontier:
            for a, b in edges:
                if a == u and b not in distance:
                    distance[b] = distance[u] + 1
                    nxt.append(b)
        frontier = nxt
    return distance


@pytest.mark.parametrize("level", range(1, 7))
def test_prosqa_graph(level: int) -> None:
    task = BUILTINS["prosqa"]
    for problem in sample(task, level):
        meta = problem.metadata
        edges = [tuple(e) for e in meta["edges"]]
        root = meta["path"][0]
        distance = reach(edges, root)
        assert problem.answer in distance and distance[problem.answer] == level
        assert meta["other"] not in distance
        assert len(meta["path"]) == level + 1
        facts = set(problem.prompt.split("\n")[:-1])
        stated = {f"Every {u} is a {v}." for u, v in edges}
        assert facts == {f"{meta['person']} is a {root}."} | stated
        assert set(problem.steps or []) <= facts
        question = problem.prompt.split("\n")[-1]
        assert problem.answer in question and meta["other"] in question
        assert task.is_correct(problem, f"a {problem.answer}.")
        assert task.is_correct(problem, f"{meta['person']} is a {problem.answer}")
        assert not task.is_correct(problem, meta["other"])


@pytest.mark.parametrize("level", range(1, 7))
def test_prontoqa_chain(level: int) -> None:
    task = BUILTINS["prontoqa"]
    for problem in sample(task, level):
        meta = problem.metadata
        person, path = meta["person"], meta["path"]
        facts = problem.prompt.split("\n")
        question = facts.pop()
        assert len(path) == level + 1 and f"{person} is a {path[0]}." in facts
        assert all(f"Every {u} is a {v}." in facts for u, v in zip(path, path[1:]))
        asked, holds = meta["properties"][0][1:]
        # the asked property is stated both ways (at the chain's end and at the distractor's),
        # so the word alone does not give the answer
        assert f"Every {path[-1]} is {'' if holds else 'not '}{asked}." in facts
        assert f"is {'not ' if holds else ''}{asked}." in "\n".join(facts)
        negated = question.endswith(f"is not {asked}.")
        assert question.startswith(f"True or false: {person} is ")
        assert problem.answer == ("True" if negated != holds else "False")
        assert task.is_correct(problem, problem.answer.lower())
        assert not task.is_correct(problem, meta["other"])
        # the step checker: true conclusions only
        branch_end = meta["properties"][1][0]
        assert task.step_valid(problem, f"{person} is a {path[-1]}.")
        assert not task.step_valid(problem, f"{person} is a {branch_end}.")
        assert not task.step_valid(problem, f"{person} is {'not ' if holds else ''}{asked}.")
        assert not task.step_valid(problem, f"Every {path[-1]} is a {path[0]}.")
        assert not task.step_valid(problem, "Max is a.")
        # a line of two sentences is a step when both are true
        assert task.step_valid(problem, f"Every {path[-2]} is a {path[-1]}. {person} is a {path[-1]}.")
        assert not task.step_valid(problem, f"Every {path[-2]} is a {path[-1]}. {person} is a {branch_end}.")


@pytest.mark.parametrize("share", [0.0, 1.0])
def test_prontoqa_negated_queries(share: float) -> None:
    task = ProntoQATask(negated_queries=share)
    problems = task.problems(2, 40, "train", seed=0)
    assert all(("is not " in p.prompt.split("\n")[-1]) == (share == 1.0) for p in problems)
    # the answer still depends on the chain: both answers occur
    assert {p.answer for p in problems} == {"True", "False"}
    with pytest.raises(ValueError, match="negated_queries"):
        ProntoQATask(negated_queries=1.5)


# --- jsonl ----------------------------------------------------------------------------------

GOOD_ROWS = [
    {"question": "What is 2+3?", "answer": 5, "steps": ["2+3=5"], "split": "train"},
    {"question": "Half of one?", "answer": "\\frac{1}{2}", "split": "test"},
    {"question": "Capital?", "answer": "Paris", "level": 2, "id": "geo-1", "split": "train"},
    {"question": "Seven times six?", "answer": "42", "split": "train"},
]


def write_jsonl(path: Path, lines: list[str]) -> Path:
    path.write_text("\n".join(lines) + "\n")
    return path


def test_jsonl_loads(tmp_path: Path) -> None:
    path = write_jsonl(tmp_path / "qa.jsonl", [json.dumps(r) for r in GOOD_ROWS] + [""])
    task = make_task("jsonl", {"path": str(path)})
    assert (task.min_level, task.max_level) == (1, 2)
    test = task.problems(1, 1, "test")
    assert test[0].prompt == "Half of one?" and task.score(test[0], "Answer: 0.5") == 1.0
    train = task.problems(1, 5, "train", seed=0)
    assert {p.prompt for p in train} <= {"What is 2+3?", "Seven times six?"}
    assert train == task.problems(1, 5, "train", seed=0)
    five = next(p for p in train if p.answer == "5")
    assert five.steps == ["2+3=5"] and task.score(five, "2+3=5\nAnswer: 5") == 1.0
    assert task.score(five, "Answer: 6") == 0.0
    (geo,) = {p.id: p for p in task.problems(2, 3, "train")}.values()
    assert geo.id == "geo-1" and task.is_correct(geo, "paris.")


@pytest.mark.parametrize(
    "bad_line",
    [
        "{not json",
        "[1, 2]",
        '{"answer": 1}',
        '{"question": "  ", "answer": 1}',
        '{"question": "q?"}',
        '{"question": "q?", "answer": true}',
        '{"question": "q?", "answer": 1, "steps": "one step"}',
        '{"question": "q?", "answer": 1, "steps": [1, 2]}',
        '{"question": "q?", "answer": 1, "level": 0}',
        '{"question": "q?", "answer": 1, "split": "dev"}',
    ],
)
def test_jsonl_bad_row(tmp_path: Path, bad_line: str) -> None:
    path = write_jsonl(tmp_path / "bad.jsonl", [json.dumps(GOOD_ROWS[0]), "", bad_line])
    with pytest.raises(UserError) as caught:
        make_task("jsonl", {"path": str(path)})
    message = str(caught.value)
    assert f"{path}:3" in message and "\n" not in message


def test_jsonl_missing_file(tmp_path: Path) -> None:
    with pytest.raises(UserError, match="task.options.path: no such file"):
        make_task("jsonl", {"path": str(tmp_path / "nope.jsonl")})


# --- reasoning-gym --------------------------------------------------------------------------


def test_gym_dataset_scores() -> None:
    task = make_task("gym:chain_sum", {"levels": {1: {"max_terms": 2}, 2: {"max_terms": 4}}})
    assert task.name == "gym:chain_sum" and task.max_level == 2
    train = task.problems(2, 5, "train", seed=0)
    test = task.problems(2, 5, "test", seed=0)
    assert not {p.prompt for p in train} & {p.prompt for p in test}
    assert [p.prompt for p in task.problems(2, 5, "train", seed=0)] == [p.prompt for p in train]
    for problem in train + test:
        assert problem.steps is None and problem.metadata["level"] == 2
        assert task.score(problem, f"I think\nAnswer: {problem.answer}") == 1.0
        assert task.score(problem, f"Answer: {int(problem.answer) + 1}") == 0.0
        assert task.score(problem, "no idea") == 0.0
        assert task.score(problem, task.demonstration(problem, random.Random(0), 0.5)) == 1.0


def test_gym_errors() -> None:
    with pytest.raises(UserError, match="task.name.*chain_sum"):
        make_task("gym:chain_sun", {})
    with pytest.raises(UserError, match="task.options.config"):
        make_task("gym:chain_sum", {"config": {"min_terms": 0}})
    with pytest.raises(UserError, match="task.options.config"):
        make_task("gym:chain_sum", {"config": {"no_such_field": 1}})


# --- the table ------------------------------------------------------------------------------


def test_make_task_errors() -> None:
    with pytest.raises(UserError, match="task.name: unknown task 'foo'"):
        make_task("foo", {})
    with pytest.raises(UserError, match="task.options: unknown option 'colour'"):
        make_task("arith", {"colour": "red"})
    with pytest.raises(UserError, match="task.options"):
        make_task("arith", {"ops": "*"})
    with pytest.raises(UserError, match="task.name"):
        make_task("no_such_package.mod:Thing", {})


def test_make_task_dotted_path() -> None:
    task = make_task("shrinkthink.tasks.arith:ArithTask", {"step_format": "carry"})
    assert isinstance(task, ArithTask) and task.step_format == "carry"


def test_list_tasks() -> None:
    listed = list_tasks()
    names = [name for name, _ in listed]
    assert names[: len(TASKS)] == list(TASKS)
    assert "gym:chain_sum" in names
    assert all(description and "\n" not in description for _, description in listed)
