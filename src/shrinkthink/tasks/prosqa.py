"""ProsQA-style graph reachability, as COCONUT (Hao et al. 2024, "Training Large Language Models to
Reason in a Continuous Latent Space", arXiv 2412.06769) generates it: a random DAG over made-up
concepts, a person who is an instance of one root concept, and the question whether the person is
one of two concepts, exactly one of which is reachable.

    Every wum is a yip.
    Tom is a dak.
    Every dak is a wum.
    Every ros is a lin.
    Is Tom a yip or a lin?

Gold steps walk the path (`Tom is a dak.`, `Every dak is a wum.`, `Every wum is a yip.`); level L
is the number of concept-to-concept hops on it. Distractor edges branch off the path and build a
chain toward the unreachable concept, but never create a second route to the answer (which would
shorten the gold path) nor any route to the other concept.

    python -c "import random; from shrinkthink.tasks.prosqa import ProsQATask; \\
        print(ProsQATask().generate(3, random.Random(0)).prompt)"
"""

from __future__ import annotations

import random
import re
from collections import defaultdict

from shrinkthink.records import Problem
from shrinkthink.tasks.base import Task, problem_id
from shrinkthink.verify import normalise

PEOPLE = ("Tom", "Ann", "Max", "Sam", "Eva", "Bob", "Kim", "Leo", "Mia", "Zoe")
# Lower-case consonant-vowel syllables make pronounceable nonsense words of 3-4 letters, always
# starting with a consonant so that "a <concept>" is grammatical.
_ONSETS = "bdfgklmnprstvwyz"
_VOWELS = "aeiou"
_CODAS = "mnprstx"

Graph = dict[str, set[str]]


class ProsQATask(Task):
    """Is the person a reachable concept or an unreachable one? Level L: L hops to the answer."""

    name = "prosqa"
    description = "ProsQA-style reachability over made-up concepts (level L: L hops), as in COCONUT"
    max_level = 6

    def __init__(
        self, num_concepts: int = 12, extra_edges: int = 6, heldout_fraction: float = 0.2
    ) -> None:
        super().__init__(heldout_fraction)
        if num_concepts < 3:
            raise ValueError(f"num_concepts must be at least 3, got {num_concepts}")
        if extra_edges < 0:
            raise ValueError(f"extra_edges must be non-negative, got {extra_edges}")
        self.num_concepts = num_concepts
        self.extra_edges = extra_edges
        # A level-L path needs L+1 concepts plus the unreachable one.
        self.max_level = min(6, num_concepts - 2)
        self._facts: dict[str, tuple[set, set]] = {}  # problem id -> (rules, concepts the person is)

    def generate(self, level: int, rng: random.Random) -> Problem:
        person = rng.choice(PEOPLE)
        names = concept_names(self.num_concepts, rng)
        path, other, rest = names[: level + 1], names[level + 1], names[level + 2 :]
        answer = path[-1]
        graph = build_graph(path, other, rest, self.extra_edges, rng)
        facts = [f"{person} is a {path[0]}."] + [
            f"Every {u} is a {v}." for u in sorted(graph) for v in sorted(graph[u])
        ]
        rng.shuffle(facts)
        choices = [answer, other]
        rng.shuffle(choices)
        prompt = "\n".join([*facts, f"Is {person} a {choices[0]} or a {choices[1]}?"])
        steps = [f"{person} is a {path[0]}."] + [
            f"Every {u} is a {v}." for u, v in zip(path, path[1:])
        ]
        return Problem(
            id=problem_id(self.name, level, prompt),
            prompt=prompt,
            answer=answer,
            level=level,
            steps=steps,
            metadata={
                "person": person,
                "path": path,
                "other": other,
                "edges": sorted((u, v) for u in graph for v in graph[u]),
            },
        )

    def is_correct(self, problem: Problem, answer: str) -> bool:
        said = normalise(answer)
        person = normalise(problem.metadata["person"])
        # Accept "yip", "a yip" and the ProsQA sentence "Tom is a yip".
        for prefix in (f"{person} is a ", f"{person} is an ", "a ", "an "):
            if said.startswith(prefix):
                said = said[len(prefix) :]
                break
        return said == normalise(problem.answer)

    # --- step checker, canonical steps, paraphraser -----------------------------------------
    has_step_checker = True
    has_paraphraser = True

    def canonical_step(self, problem: Problem, line: str) -> str:
        """`Every dak is a wum.`, `Each dak is a wum.` and `A dak is always a wum.` read as the
        first; `Tom is a dak.` and `We know Tom is a dak.` as `Tom is a dak.`."""
        fact = parse_fact(line)
        if fact is None:
            return super().canonical_step(problem, line)
        subject, concept, universal = fact
        return f"Every {subject} is a {concept}." if universal else f"{subject} is a {concept}."

    def step_valid(self, problem: Problem, line: str) -> bool:
        """A rule stated in the question (`Every dak is a wum.`), or the person being a concept
        the question's rules reach from their first one. Filler and made-up rules are not."""
        fact = parse_fact(line)
        if fact is None:
            return False
        subject, concept, universal = fact
        edges, reached = self._problem_facts(problem)
        if universal:
            return (subject, concept) in edges
        return subject == problem.metadata["person"] and concept in reached

    def _problem_facts(self, problem: Problem) -> tuple[set, set]:
        """The question's rules and every concept they make its person, once per problem (a
        transcript's lines are checked one at a time)."""
        if problem.id not in self._facts:
            if len(self._facts) > 10_000:
                self._facts.clear()
            edges = {tuple(edge) for edge in problem.metadata["edges"]}
            graph: Graph = defaultdict(set)
            for u, v in edges:
                graph[u].add(v)
            self._facts[problem.id] = (edges, reachable_set(graph, problem.metadata["path"][0]))
        return self._facts[problem.id]

    def paraphrase_step(self, problem: Problem, line: str, rng: random.Random) -> str:
        """`Every dak is a wum.` becomes `Each dak is a wum.` or `A dak is always a wum.`;
        `Tom is a dak.` becomes `We know Tom is a dak.`."""
        fact = parse_fact(line)
        if fact is None:
            return line
        subject, concept, universal = fact
        if not universal:
            return f"We know {subject} is a {concept}."
        return rng.choice([f"Each {subject} is a {concept}.", f"A {subject} is always a {concept}."])

    def digression(self, problem: Problem, step_index: int, rng: random.Random) -> str:
        """A fact from the prompt that is off the gold path, else a generic digression."""
        path: list[str] = problem.metadata["path"]
        on_path = set(zip(path, path[1:]))
        off_path = [(u, v) for u, v in problem.metadata["edges"] if (u, v) not in on_path]
        if off_path and rng.random() < 0.5:
            u, v = rng.choice(off_path)
            return f"Every {u} is a {v}."
        return super().digression(problem, step_index, rng)


def concept_names(n: int, rng: random.Random, exclude: tuple[str, ...] = ()) -> list[str]:
    """`n` distinct nonsense words of 3-4 letters (consonant-vowel-consonant, sometimes plus a
    vowel), none of them in `exclude`."""
    names: list[str] = []
    # "Tom is a tom." would make the person and a concept indistinguishable once case-folded.
    seen: set[str] = {person.lower() for person in PEOPLE} | set(exclude)
    while len(names) < n:
        word = rng.choice(_ONSETS) + rng.choice(_VOWELS) + rng.choice(_CODAS)
        if rng.random() < 0.3:
            word += rng.choice(_VOWELS)
        if word not in seen:
            seen.add(word)
            names.append(word)
    return names


def build_graph(
    path: list[str], other: str, rest: list[str], extra_edges: int, rng: random.Random
) -> Graph:
    """The gold path plus up to `extra_edges` distractor edges, kept a DAG in which the path is the
    only route from `path[0]` to `path[-1]` and `other` is unreachable from `path[0]`."""
    graph: Graph = defaultdict(set)
    for u, v in zip(path, path[1:]):
        graph[u].add(v)
    root, answer = path[0], path[-1]
    # First a chain toward `other`, so the wrong choice has ancestry too (as in ProsQA) and
    # cannot be spotted as the concept nothing points to.
    chain = rng.sample(rest, min(len(rest), len(path) - 1, extra_edges))
    for u, v in zip(chain, [*chain[1:], other]):
        graph[u].add(v)
    added = len(chain)
    nodes = [*path, other, *rest]
    for _ in range(50 * extra_edges):
        if added >= extra_edges:
            break
        u, v = rng.sample(nodes, 2)
        if v in graph[u] or reachable(graph, v, u):
            continue
        graph[u].add(v)
        if other in reachable_set(graph, root) or count_paths(graph, root, answer) != 1:
            graph[u].discard(v)
            continue
        added += 1
    return {u: vs for u, vs in graph.items() if vs}


def reachable_set(graph: Graph, start: str) -> set[str]:
    """Every concept reachable from `start`, `start` included."""
    seen = {start}
    frontier = [start]
    while frontier:
        for v in graph.get(frontier.pop(), ()):
            if v not in seen:
                seen.add(v)
                frontier.append(v)
    return seen


def reachable(graph: Graph, start: str, goal: str) -> bool:
    return goal in reachable_set(graph, start)


def count_paths(graph: Graph, start: str, goal: str) -> int:
    """Number of distinct directed paths from `start` to `goal` in a DAG."""
    memo: dict[str, int] = {}

    def paths_from(u: str) -> int:
        if u == goal:
            return 1
        if u not in memo:
            memo[u] = sum(paths_from(v) for v in graph.get(u, ()))
        return memo[u]

    return paths_from(start)


def parse_fact(line: str) -> tuple[str, str, bool] | None:
    """(subject, concept, universal) of a rule or a fact about the person, in any of the spellings
    `ProsQATask.paraphrase_step` writes; None for anything else."""
    text = " ".join(line.split())
    for pattern, universal in _FACTS:
        match = pattern.fullmatch(text)
        if match:
            return match["s"], match["c"], universal
    return None


_FACTS = [
    (re.compile(r"(?:Every|Each) (?P<s>[a-z]+) is an? (?P<c>[a-z]+)\."), True),
    (re.compile(r"An? (?P<s>[a-z]+) is always an? (?P<c>[a-z]+)\."), True),
    (re.compile(r"(?:We know )?(?P<s>[A-Z][a-z]+) is an? (?P<c>[a-z]+)\."), False),
]
