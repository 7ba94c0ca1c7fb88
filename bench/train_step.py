"""Seconds per training step with the batch padded to its longest row in one call, against the
same batch in runs of similar length (`learners.batch.length_buckets`), side by side in one run:
the quickstart's warm-start batch (64 demonstrations of levels 1-3 with the re-check habit and
digressions, random positions) and a GRPO update on 8 groups of 8 attempts at levels 4-5.

    python bench/train_step.py --threads 2 --repeats 10
"""

from __future__ import annotations

import argparse
import os
import random
import statistics
import time

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import torch  # noqa: E402

import shrinkthink.learners as learners  # noqa: E402
from shrinkthink.config import LearnerConfig  # noqa: E402
from shrinkthink.learners.batch import length_buckets  # noqa: E402
from shrinkthink.model import tiny_policy  # noqa: E402
from shrinkthink.policy import Policy  # noqa: E402
from shrinkthink.records import Episode  # noqa: E402
from shrinkthink.tasks import make_task  # noqa: E402


def one_run(lengths: list[int], device) -> list[list[int]]:
    return [list(range(len(lengths)))]


def demonstrations(policy: Policy, task, levels: list[int], n: int, rng: random.Random):
    problems = [rng.choice(task.problems(rng.choice(levels), 50, "train", seed=0)) for _ in range(n)]
    prompts = [policy.prompt_ids(p.prompt) for p in problems]
    targets = [policy.completion_ids(task.demonstration(p, rng, 0.3, rng.random() < 0.8)) for p in problems]
    return problems, prompts, targets


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=10)
    parser.add_argument("--depth", type=int, default=4)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    model, tokenizer = tiny_policy(args.depth)
    policy = Policy(model, tokenizer)
    task = make_task("arith", {"step_format": "refer", "min_operand": 1, "max_operand": 20})
    rng = random.Random(0)

    _, prompts, targets = demonstrations(policy, task, [1, 2, 3], 64, rng)
    optimizer = learners.make_optimizer(policy, 1e-4)

    def warm_start() -> None:
        learners.supervised_step(policy, optimizer, prompts, targets, position_span=120.0,
                                 generator=torch.Generator().manual_seed(0))

    problems, prompts_rl, completions = demonstrations(policy, task, [4, 5], 64, rng)
    episodes = [Episode(problem=p, prompt_ids=q, completion_ids=c, logprobs=[-1.0] * len(c), text="", finished=True,
                        reward=float(i % 2)) for i, (p, q, c) in enumerate(zip(problems, prompts_rl, completions))]
    groups = [list(range(g * 8, (g + 1) * 8)) for g in range(8)]
    learner = learners.Learner(policy, LearnerConfig(group_size=8, problems_per_step=8))

    def grpo() -> None:
        learner.update(episodes, groups)

    print(f"tiny model depth {args.depth} ({sum(p.numel() for p in model.parameters()) / 1e6:.2f}M), "
          f"{args.threads} threads, best and median of {args.repeats}, the two ways interleaved")
    print(f"{'step':<28} {'rows':>4} {'runs':>4} {'padded tokens':>14} {'one call s':>11} {'runs s':>8} {'ratio':>6}")
    for name, step, rows in (("warm start (fine-tuning)", warm_start, [p + t for p, t in zip(prompts, targets)]),
                             ("GRPO update", grpo, [p + c for p, c in zip(prompts_rl, completions)])):
        lengths = [len(r) for r in rows]
        runs = length_buckets(lengths, "cpu")
        padded = (len(lengths) * max(lengths), sum(len(r) * max(lengths[i] for i in r) for r in runs))
        times: dict[str, list[float]] = {"one": [], "runs": []}
        for repeat in range(args.repeats + 1):
            for way in ("one", "runs"):
                learners.length_buckets = one_run if way == "one" else length_buckets
                began = time.perf_counter()
                step()
                if repeat:  # the first round warms up
                    times[way].append(time.perf_counter() - began)
        learners.length_buckets = length_buckets
        one, split = min(times["one"]), min(times["runs"])
        print(f"{name:<28} {len(rows):>4} {len(runs):>4} {padded[0]:>6} -> {padded[1]:<5} {one:>11.3f} {split:>8.3f} "
              f"{one / split:>5.2f}x   (median {statistics.median(times['one']):.3f} / "
              f"{statistics.median(times['runs']):.3f})")


if __name__ == "__main__":
    main()
