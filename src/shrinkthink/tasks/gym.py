"""Adapter to `reasoning-gym`'s procedural datasets: `gym:<dataset>` is any of its generators, with
its own verifier (`score_answer`, which may give partial credit).

Difficulty comes from the dataset's own config: `levels` maps a level to config overrides, applied
cumulatively on top of `config` (level 3 inherits what levels 1 and 2 raised). There are no gold
steps, so demonstrations are the bare answer line.

    python -c "from shrinkthink.tasks import make_task; \\
        print(make_task('gym:chain_sum', {}).problems(1, 2, 'train')[0].prompt)"
"""

from __future__ import annotations

import dataclasses
import difflib
import hashlib
import random
from typing import Any

from shrinkthink.errors import UserError
from shrinkthink.records import Problem
from shrinkthink.tasks.base import Split, Task, problem_id

# Entries a `generate` call draws from (reasoning-gym items are indexed; most datasets derive
# each item from seed + index, some precompute, so the pool is finite and cached).
_GENERATE_POOL = 1000


def gym_datasets() -> dict[str, str]:
    """Every reasoning-gym dataset name with the first line of its docstring."""
    from reasoning_gym.factory import DATASETS  # imported late: the package takes about 1 s

    return {
        name: _first_line(dataset_cls.__doc__) or "reasoning-gym dataset"
        for name, (dataset_cls, _config_cls) in sorted(DATASETS.items())
    }


class GymTask(Task):
    """One reasoning-gym dataset, problems drawn per (level, split, seed) from a cached dataset."""

    name = "gym"
    description = "any reasoning-gym dataset, as gym:<dataset>; levels raise its own config"

    def __init__(
        self,
        dataset: str,
        config: dict[str, Any] | None = None,
        levels: dict[int, dict[str, Any]] | None = None,
        heldout_fraction: float = 0.2,
    ) -> None:
        super().__init__(heldout_fraction)
        from reasoning_gym.factory import DATASETS

        if dataset not in DATASETS:
            close = difflib.get_close_matches(dataset, DATASETS, n=3)
            hint = f" (did you mean: {', '.join('gym:' + c for c in close)}?)" if close else ""
            raise UserError(
                f"task.name: unknown reasoning-gym dataset 'gym:{dataset}'{hint}; "
                "see `shrinkthink tasks`"
            )
        self.dataset = dataset
        self.name = f"gym:{dataset}"
        self.config = dict(config or {})
        self.levels = _level_overrides(levels or {})
        self.max_level = max(self.levels, default=1)
        self._dataset_cls, self._config_cls = DATASETS[dataset]
        self._check_config(self.config, "task.options.config")
        for level in sorted(self.levels):
            self._check_config(self.level_config(level), f"task.options.levels.{level}")
        self._datasets: dict[tuple[int, str, int], Any] = {}

    # --- problems -------------------------------------------------------------------------
    def level_config(self, level: int) -> dict[str, Any]:
        """The dataset config at `level`: `config` with every override up to `level` applied."""
        merged = dict(self.config)
        for k in sorted(self.levels):
            if k <= level:
                merged.update(self.levels[k])
        return merged

    def generate(self, level: int, rng: random.Random) -> Problem:
        pool = self._get_dataset(level, "any", 0, _GENERATE_POOL)
        return self._problem(pool[rng.randrange(_GENERATE_POOL)], level)

    def problems(self, level: int, n: int, split: Split, seed: int = 0) -> list[Problem]:
        """`n` problems of one split, read in order from a dataset seeded by (level, split,
        seed); entries whose question hashes to the other split are skipped."""
        self.check_level(level)
        budget = int(4 * n / max(self.split_fraction(split), 0.01)) + 100
        dataset = self._get_dataset(level, split, seed, budget)
        out: list[Problem] = []
        seen: set[str] = set()
        for idx in range(budget):
            if len(out) >= n:
                break
            entry = dataset[idx]
            question = str(entry["question"])
            if self.split_of(question) != split:
                continue
            if split != "train" and question in seen:
                continue
            seen.add(question)
            out.append(self._problem(entry, level))
        if not out and split == "validation":
            return self.validation_stand_in(level, n, seed)
        if not out:
            raise UserError(f"task {self.name}: no {split} problems at level {level}")
        while len(out) < n:  # a small space: repeat what exists rather than fail
            out.append(out[len(out) % len(seen)])
        return out

    def _problem(self, entry: dict[str, Any], level: int) -> Problem:
        question = str(entry["question"])
        answer = entry.get("answer")
        return Problem(
            id=problem_id(self.name, level, question),
            prompt=question,
            answer="" if answer is None else str(answer),
            level=level,
            steps=None,
            metadata={"entry": entry, "level": level},
        )

    def _get_dataset(self, level: int, split: str, seed: int, size: int) -> Any:
        """The dataset for (level, split, seed), created once (recreated only to grow: items
        depend on seed and index, not on size)."""
        key = (level, split, seed)
        cached = self._datasets.get(key)
        if cached is None or len(cached) < size:
            digest = hashlib.sha256(f"{self.name}:{level}:{split}:{seed}".encode()).digest()
            dataset_seed = int.from_bytes(digest[:4], "big")
            config = {**self.level_config(level), "seed": dataset_seed, "size": size}
            cached = self._dataset_cls(config=self._config_cls(**config))
            self._datasets[key] = cached
        return cached

    def _check_config(self, config: dict[str, Any], where: str) -> None:
        try:
            built = self._config_cls(**config)
            if hasattr(built, "validate"):
                built.validate()
        except (TypeError, ValueError, AssertionError) as exc:
            detail = " ".join(str(exc).split()) or type(exc).__name__
            fields = ", ".join(f.name for f in dataclasses.fields(self._config_cls))
            raise UserError(
                f"{where}: bad config for {self.name}: {detail} (fields: {fields})"
            ) from None

    # --- verifier -------------------------------------------------------------------------
    def score(self, problem: Problem, completion: str) -> float:
        """reasoning-gym's own score (partial credit allowed) of the extracted answer."""
        answer = self.extract(completion)
        return 0.0 if answer is None else self._score_answer(problem, answer)

    def is_correct(self, problem: Problem, answer: str) -> bool:
        return self._score_answer(problem, answer) >= 1.0

    def _score_answer(self, problem: Problem, answer: str) -> float:
        level = int(problem.metadata.get("level", 1))
        scorer = self._get_dataset(level, "score", 0, 1)
        try:
            return float(scorer.score_answer(answer=answer, entry=problem.metadata["entry"]))
        except Exception:  # some scorers raise on malformed answers; that is a wrong answer
            return 0.0


def _level_overrides(levels: dict[Any, dict[str, Any]]) -> dict[int, dict[str, Any]]:
    """`levels` with integer keys (YAML and JSON may give "2"), each at least 1."""
    out: dict[int, dict[str, Any]] = {}
    for key, overrides in levels.items():
        try:
            level = int(key)
        except (TypeError, ValueError):
            raise UserError(f"task.options.levels: level {key!r} is not an integer") from None
        if level < 1:
            raise UserError(f"task.options.levels: level {level} must be at least 1")
        if not isinstance(overrides, dict):
            raise UserError(f"task.options.levels.{level}: expected a mapping of config fields")
        out[level] = dict(overrides)
    return out


def _first_line(doc: str | None) -> str:
    return (doc or "").strip().split("\n")[0].strip()


class GymMixTask(Task):
    """Several reasoning-gym datasets as one task: level L is each dataset at its own level L
    (capped at its top level), so one curriculum raises every dataset's difficulty through its own
    config. Problems are drawn by weight; each is scored by the dataset it came from.

        task: {name: gym-mix, options: {datasets: {chain_sum: {weight: 2, levels: {2: {max_terms: 3}}},
                                                   leg_counting: {}}}}
    """

    name = "gym-mix"
    description = "a weighted mix of reasoning-gym datasets; level L raises each one's own config"

    def __init__(self, datasets: dict[str, dict[str, Any]], heldout_fraction: float = 0.2) -> None:
        super().__init__(heldout_fraction)
        if not isinstance(datasets, dict) or not datasets:
            raise UserError("task.options.datasets: expected a mapping of reasoning-gym dataset names to "
                            "{weight, config, levels}")
        self.members: dict[str, GymTask] = {}
        self.weights: dict[str, float] = {}
        for dataset, spec in datasets.items():
            spec = dict(spec or {})
            weight = spec.pop("weight", 1.0)
            unknown = sorted(set(spec) - {"config", "levels"})
            if unknown:
                raise UserError(f"task.options.datasets.{dataset}: unknown field '{unknown[0]}' "
                                "(accepted: weight, config, levels)")
            if not isinstance(weight, (int, float)) or weight <= 0:
                raise UserError(f"task.options.datasets.{dataset}.weight: must be a positive number")
            self.members[dataset] = GymTask(dataset, spec.get("config"), spec.get("levels"), heldout_fraction)
            self.weights[dataset] = float(weight)
        self.max_level = max(member.max_level for member in self.members.values())

    def _member_level(self, dataset: str, level: int) -> int:
        return min(level, self.members[dataset].max_level)

    def _tagged(self, dataset: str, problem: Problem) -> Problem:
        return dataclasses.replace(problem, metadata={**problem.metadata, "dataset": dataset})

    def generate(self, level: int, rng: random.Random) -> Problem:
        dataset = rng.choices(list(self.weights), weights=list(self.weights.values()))[0]
        member = self.members[dataset]
        return self._tagged(dataset, member.generate(self._member_level(dataset, level), rng))

    def problems(self, level: int, n: int, split: Split, seed: int = 0) -> list[Problem]:
        """`n` problems, each dataset's share in proportion to its weight (largest remainder),
        interleaved so that any prefix is mixed too."""
        self.check_level(level)
        total = sum(self.weights.values())
        exact = {d: n * w / total for d, w in self.weights.items()}
        counts = {d: int(x) for d, x in exact.items()}
        for d in sorted(exact, key=lambda d: counts[d] - exact[d])[: n - sum(counts.values())]:
            counts[d] += 1
        parts = {d: [self._tagged(d, p) for p in self.members[d].problems(self._member_level(d, level), c, split, seed)]
                 for d, c in counts.items() if c}
        out: list[Problem] = []
        for i in range(max((len(p) for p in parts.values()), default=0)):
            out += [p[i] for p in parts.values() if i < len(p)]
        return out

    def _member(self, problem: Problem) -> GymTask:
        return self.members[problem.metadata["dataset"]]

    def score(self, problem: Problem, completion: str) -> float:
        return self._member(problem).score(problem, completion)

    def is_correct(self, problem: Problem, answer: str) -> bool:
        return self._member(problem).is_correct(problem, answer)
