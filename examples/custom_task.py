"""A task of your own: a `Task` subclass poses problems and owns their verifier; shrinkthink warm-starts
a tiny model on its demonstrations, then trains it by outcome-only RL, for a few steps on a CPU.

    python examples/custom_task.py [run_dir]
"""

import random
import sys

import shrinkthink


class CountLetters(shrinkthink.Task):
    """How many a's are in a string of a, b and c? Level L: 4 + L letters. The default `extract`
    reads the answer line; `is_correct` is this task's verifier."""

    name, description, max_level = "count_letters", "count the a's in a string", 2

    def generate(self, level: int, rng: random.Random) -> shrinkthink.Problem:
        text = "".join(rng.choice("abc") for _ in range(4 + level))
        return shrinkthink.Problem(id=f"count-{text}", prompt=f"count a in {text}", answer=str(text.count("a")),
                                   level=level)

    def is_correct(self, problem: shrinkthink.Problem, answer: str) -> bool:
        return answer.strip() == problem.answer


CONFIG = {"name": "custom-task", "model": {"kind": "tiny", "depth": 2}, "task": {"eval_levels": [1, 2]},
          "stages": [{"name": "warm", "kind": "warmstart", "steps": 20, "levels": [1], "batch_size": 16, "lr": 0.01},
                     {"name": "climb", "kind": "explore", "steps": 2, "max_level": 2, "eval_problems": 8,
                      "learner": {"group_size": 4, "problems_per_step": 4}, "sampling": {"max_new_tokens": 16}}]}


def main(run_dir: str | None = None) -> dict:
    return shrinkthink.run(CONFIG, task=CountLetters(), run_dir=run_dir)


if __name__ == "__main__":
    print({stage["name"]: round(stage["accuracy"], 3) for stage in main(*sys.argv[1:2])["stages"]})
