"""A reward term of your own on top of correctness: a plain function over a batch of completions
with their problems, returning one float per completion (None: it adds nothing), named in a stage's
criteria. Here a shrink stage pays for brevity beside correctness, after a short warm start.

    python examples/custom_reward.py [run_dir]
"""

import sys

import shrinkthink


def brevity(completions: list[str], problems: list[shrinkthink.Problem], **kwargs) -> list[float | None]:
    """Up to 0.5 more for a short completion (nothing at 40 characters); one without an answer line
    is skipped (None). `kwargs["correct"]` holds the verifier's 1.0 or 0.0 for each completion."""
    return [0.5 * max(0.0, 1 - len(text) / 40) if "Answer:" in text else None for text in completions]


CONFIG = {"name": "custom-reward", "model": {"kind": "tiny", "depth": 2},
          "task": {"name": "arith", "options": {"max_operand": 3}, "eval_levels": [2], "eval_problems": 32},
          "stages": [{"name": "warm", "kind": "warmstart", "steps": 40, "levels": [2], "batch_size": 32, "lr": 0.01,
                      "digression_rate": 0.0, "warmup_steps": 5, "eval_problems": 8},
                     # a weighted additive term needs rewards scaled by the batch, not per group
                     {"name": "shrink", "kind": "shrink", "steps": 2, "eval_problems": 8,
                      "criteria": [{"name": "reward", "function": "brevity", "weight": 1.0}],
                      "learner": {"group_size": 4, "problems_per_step": 4, "scale_rewards": "batch"},
                      "sampling": {"max_new_tokens": 24}}]}


def main(run_dir: str | None = None) -> dict:
    return shrinkthink.run(CONFIG, rewards={"brevity": brevity}, run_dir=run_dir)


if __name__ == "__main__":
    print({stage["name"]: round(stage["accuracy"], 3) for stage in main(*sys.argv[1:2])["stages"]})
