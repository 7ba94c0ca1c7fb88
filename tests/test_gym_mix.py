"""`gym-mix`: several reasoning-gym datasets as one task, drawn by weight, each at its own level
(its own config raised), each problem scored by the dataset it came from."""

from __future__ import annotations

import random
from collections import Counter

import pytest

from shrinkthink.errors import UserError
from shrinkthink.tasks import make_task

OPTIONS = {
    "datasets": {
        "chain_sum": {"weight": 3, "config": {"min_terms": 2, "max_terms": 2, "max_digits": 1},
                      "levels": {2: {"max_digits": 2}, 3: {"max_terms": 3}}},
        "leg_counting": {"config": {"min_animals": 1, "max_animals": 2, "max_instances": 3}},
    }
}


@pytest.fixture(scope="module")
def mix():
    return make_task("gym-mix", OPTIONS)


def test_problems_follow_the_weights_and_interleave(mix) -> None:
    problems = mix.problems(1, 8, "train")
    sources = [p.metadata["dataset"] for p in problems]
    assert Counter(sources) == {"chain_sum": 6, "leg_counting": 2}
    assert sources[:2] == ["chain_sum", "leg_counting"]  # any prefix is mixed
    assert mix.problems(1, 8, "train") == problems  # deterministic in the seed
    assert {p.prompt for p in mix.problems(1, 8, "test")}.isdisjoint(p.prompt for p in problems)


def test_each_dataset_climbs_its_own_levels(mix) -> None:
    assert mix.max_level == 3
    chain = [p for p in mix.problems(3, 96, "train") if p.metadata["dataset"] == "chain_sum"]
    assert all(p.metadata["level"] == 3 for p in chain)
    assert any(p.prompt.count("+") == 2 for p in chain)  # level 3: up to three terms
    legs = [p for p in mix.problems(3, 24, "train") if p.metadata["dataset"] == "leg_counting"]
    assert legs and all(p.metadata["level"] == 1 for p in legs)  # its only level


def test_scored_by_the_dataset_it_came_from(mix) -> None:
    for problem in mix.problems(1, 6, "test"):
        assert mix.score(problem, f"The answer is {problem.answer}.") == 1.0
        assert mix.score(problem, "no idea") == 0.0
    drawn = mix.generate(2, random.Random(0))
    assert drawn.metadata["dataset"] in OPTIONS["datasets"]
    assert mix.is_correct(drawn, drawn.answer)


@pytest.mark.parametrize("options, field", [
    ({"datasets": {}}, "task.options.datasets"),
    ({"datasets": {"chain_sum": {"wieght": 2}}}, "task.options.datasets.chain_sum: unknown field 'wieght'"),
    ({"datasets": {"chain_sum": {"weight": 0}}}, "task.options.datasets.chain_sum.weight"),
    ({"datasets": {"chain_sums": {}}}, "unknown reasoning-gym dataset 'gym:chain_sums'"),
])
def test_bad_options_name_the_field(options, field) -> None:
    with pytest.raises(UserError, match=field):
        make_task("gym-mix", options)
