"""How much a checkpoint yaps: held-out transcripts, greedy and sampled at temperature 1, with the
task's own digression share over all transcripts and over the verified ones only, and the mean
visible reasoning tokens.

    python bench/digression.py runs/quickstart-.../checkpoints/explore --levels 1 2 3 4 5 --n 40
"""

from __future__ import annotations

import argparse
import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import torch  # noqa: E402

from shrinkthink.evaluate import digression_tokens  # noqa: E402
from shrinkthink.policy import Policy  # noqa: E402
from shrinkthink.tasks import make_task  # noqa: E402
from shrinkthink.tasks.base import reasoning_part  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("checkpoint")
    parser.add_argument("--task", default="arith")
    parser.add_argument("--options", default="{step_format: refer, min_operand: 1, max_operand: 20}")
    parser.add_argument("--levels", type=int, nargs="+", default=[1, 2, 3, 4, 5])
    parser.add_argument("--n", type=int, default=40, help="held-out problems a level")
    parser.add_argument("--max-new-tokens", type=int, default=96)
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    import yaml

    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    policy = Policy.load(args.checkpoint)
    task = make_task(args.task, yaml.safe_load(args.options))
    print(f"{'decoding':<8} {'digression, all':>16} {'digression, correct':>20} {'reasoning tokens':>17}")
    for greedy in (True, False):
        wasted = counted = wasted_ok = counted_ok = tokens = n = 0
        for level in args.levels:
            problems = task.problems(level, args.n, "test", seed=1)
            drawn = policy.sample([policy.prompt_ids(p.prompt) for p in problems], max_new_tokens=args.max_new_tokens,
                                  greedy=greedy, temperature=1.0)
            for problem, ids in zip(problems, drawn.completion_ids):
                text = policy.decode(ids)
                w, t = digression_tokens(policy, task, problem, text)
                wasted, counted = wasted + w, counted + t
                if task.score(problem, text) >= 1.0:
                    wasted_ok, counted_ok = wasted_ok + w, counted_ok + t
                tokens += policy.count_tokens(reasoning_part(text))
                n += 1
        print(f"{'greedy' if greedy else 'T=1':<8} {wasted / max(counted, 1):>16.3f} "
              f"{wasted_ok / max(counted_ok, 1):>20.3f} {tokens / n:>17.1f}")


if __name__ == "__main__":
    main()
