"""ProntoQA-style deduction (Saparov and He 2023, "Language Models Are Greedy Reasoners", arXiv
2210.01240), the fictional-ontology, with-distractors form COCONUT (Hao et al. 2024, arXiv
2412.06769) trains on: a chain of made-up concepts, a property at the end of it, a person who is
the first, and the question whether the person has the property.

    Every dak is a wum.
    Every lin is bright.
    Tom is a dak.
    Every wum is not bright.
    Every ros is a lin.
    True or false: Tom is bright.

Gold steps walk the chain as ProntoQA's chain of thought does, each rule before what it
concludes, a hop a line (`Tom is a dak.`, `Every dak is a wum. Tom is a wum.`, `Every wum is not
bright. Tom is not bright.`), and the answer is `True` or `False`; level L is the number of
concept-to-concept hops before the property. The distractor chain carries the opposite property,
so the property word alone never tells the answer (ProntoQA's distractors); some concepts on the
path carry properties the question does not ask about.

    python -c "import random; from shrinkthink.tasks.prontoqa import ProntoQATask; \\
        print(ProntoQATask().generate(3, random.Random(0)).prompt)"
"""

from __future__ import annotations

import random
import re

from shrinkthink.records import Problem
from shrinkthink.tasks.base import Task, problem_id
from shrinkthink.tasks.prosqa import PEOPLE, concept_names
from shrinkthink.verify import normalise

PROPERTIES = ("bright", "hot", "kind", "large", "loud", "red", "shy", "sour", "spicy", "cold", "fast", "happy")


def said(adjective: str, holds: bool) -> str:
    """`bright` or `not bright`."""
    return adjective if holds else f"not {adjective}"


class ProntoQATask(Task):
    """Does the person have the property? Level L: L hops to the concept that carries it."""

    name = "prontoqa"
    description = "ProntoQA-style deduction over made-up concepts (level L: L hops), as in COCONUT"
    max_level = 6

    def __init__(self, distractors: int = 2, extra_properties: float = 0.5, negated_queries: float = 0.5,
                 heldout_fraction: float = 0.2) -> None:
        """`distractors`: concepts in the chain that carries the opposite property (0: none, and
        the property word alone gives the answer); `extra_properties`: the chance that a concept
        other than a chain's last carries an unasked property; `negated_queries`: the share of
        questions asked as `... is not bright.` (0: the answer is whether the last step says
        `not`; otherwise it compares that with the question)."""
        super().__init__(heldout_fraction)
        if distractors < 0:
            raise ValueError(f"distractors must be non-negative, got {distractors}")
        for name, share in (("extra_properties", extra_properties), ("negated_queries", negated_queries)):
            if not 0.0 <= share <= 1.0:
                raise ValueError(f"{name} must be in 0..1, got {share}")
        self.distractors = distractors
        self.extra_properties = extra_properties
        self.negated_queries = negated_queries

    def generate(self, level: int, rng: random.Random) -> Problem:
        person = rng.choice(PEOPLE)
        names = concept_names(level + 1 + self.distractors, rng, exclude=(*PROPERTIES, "not"))
        path, branch = names[: level + 1], names[level + 1 :]
        asked = rng.choice(PROPERTIES)
        holds = rng.random() < 0.5
        rules = list(zip(path, path[1:])) + list(zip(branch, branch[1:]))
        # (concept, adjective, holds): the asked one at the chain's end, its opposite at the
        # distractor chain's end, and unasked ones on the way
        properties = [(path[-1], asked, holds)]
        if branch:
            properties.append((branch[-1], asked, not holds))
        # each adjective once at most, so no concept inherits it both ways
        others = [p for p in PROPERTIES if p != asked]
        rng.shuffle(others)
        for concept in path[:-1] + branch[:-1]:
            if others and rng.random() < self.extra_properties:
                properties.append((concept, others.pop(), rng.random() < 0.5))
        facts = ([f"{person} is a {path[0]}."] + [f"Every {u} is a {v}." for u, v in rules]
                 + [f"Every {c} is {said(a, h)}." for c, a, h in properties])
        rng.shuffle(facts)
        query = rng.random() < 1.0 - self.negated_queries  # True: asked as `is bright`
        answer = "True" if query == holds else "False"
        prompt = "\n".join([*facts, f"True or false: {person} is {said(asked, query)}."])
        # ProntoQA's chain of thought, each rule it uses written before its conclusion: a line a hop
        ends = [f"a {c}" for c in path[1:]] + [said(asked, holds)]
        steps = [f"{person} is a {path[0]}."] + [f"Every {c} is {end}. {person} is {end}."
                                                 for c, end in zip(path, ends)]
        return Problem(
            id=problem_id(self.name, level, prompt),
            prompt=prompt,
            answer=answer,
            level=level,
            steps=steps,
            metadata={
                "person": person,
                "path": path,
                "other": "False" if answer == "True" else "True",
                "rules": [list(rule) for rule in rules],
                "properties": [list(p) for p in properties],
            },
        )

    def is_correct(self, problem: Problem, answer: str) -> bool:
        return normalise(answer) == normalise(problem.answer)

    # --- step checker ------------------------------------------------------------------------
    has_step_checker = True

    def step_valid(self, problem: Problem, line: str) -> bool:
        """Every sentence of the line is a rule or property the question states, the person being
        a concept its rules reach from their first one, or having a property one of those
        concepts has. Filler, re-checks and made-up facts are not."""
        sentences = re.findall(r"[^.]*\.", line.strip())
        return bool(sentences) and "".join(sentences) == line.strip() and all(
            self._sentence_valid(problem, sentence) for sentence in sentences)

    def _sentence_valid(self, problem: Problem, sentence: str) -> bool:
        fact = parse_fact(sentence)
        if fact is None:
            return False
        subject, predicate, holds, universal = fact
        meta = problem.metadata
        rules = {tuple(rule) for rule in meta["rules"]}
        properties = {(c, a, h) for c, a, h in meta["properties"]}
        if universal:
            return (subject, predicate) in rules if holds is None else (subject, predicate, holds) in properties
        if subject != meta["person"]:
            return False
        reached = reachable(rules, meta["path"][0])
        if holds is None:
            return predicate in reached
        return any((c, predicate, holds) in properties for c in reached)

    def digression(self, problem: Problem, step_index: int, rng: random.Random) -> str:
        """A rule or property from the question that is off the chain, else a generic digression."""
        path = problem.metadata["path"]
        on_path = set(zip(path, path[1:]))
        off_path = [f"Every {u} is a {v}." for u, v in problem.metadata["rules"] if (u, v) not in on_path]
        off_path += [f"Every {c} is {said(a, h)}." for c, a, h in problem.metadata["properties"][1:]]
        if off_path and rng.random() < 0.5:
            return rng.choice(off_path)
        return super().digression(problem, step_index, rng)


def reachable(rules: set[tuple[str, str]], start: str) -> set[str]:
    """Every concept the rules make an instance of `start` also, `start` included."""
    seen, frontier = {start}, [start]
    while frontier:
        u = frontier.pop()
        for a, b in rules:
            if a == u and b not in seen:
                seen.add(b)
                frontier.append(b)
    return seen


def parse_fact(line: str) -> tuple[str, str, bool | None, bool] | None:
    """(subject, concept or adjective, None for a concept or whether the adjective holds,
    universal) of a line such as `Every dak is a wum.`, `Every wum is not bright.`, `Tom is a
    wum.` or `Tom is bright.`; None for anything else."""
    match = _FACT.fullmatch(" ".join(line.split()))
    if match is None:
        return None
    universal = match["every"] is not None
    subject = match["s"]
    if universal != subject.islower():
        return None  # `Every Tom ...` or `dak is ...`
    if match["concept"]:
        return subject, match["concept"], None, universal
    if match["adjective"] not in PROPERTIES:
        return None
    return subject, match["adjective"], match["negated"] is None, universal


_FACT = re.compile(r"(?P<every>(?:Every|Each) )?(?P<s>[A-Za-z][a-z]*) is "
                   r"(?:an? (?P<concept>[a-z]+)|(?P<negated>not )?(?P<adjective>[a-z]+))\.")
