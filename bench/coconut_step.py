"""Seconds per COCONUT training step (loss, backward, clip, AdamW), the model's own `forward` for
every pass against the lean passes (`latent/passes.py`), side by side in one run, alternating
steps: the quickstart's model size, the arith task's gold steps at levels 1-5, batch 32, 3
thoughts a step, `thought_targets`, at curriculum stages 1 (3 thoughts) and 5 (15). The weights
are random: only time is measured.

    python bench/coconut_step.py --threads 2 --repeats 20
"""

from __future__ import annotations

import argparse
import os
import random
import statistics
import time
from unittest.mock import patch

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import torch  # noqa: E402

from shrinkthink.latent import coconut  # noqa: E402
from shrinkthink.latent.passes import LlamaPasses  # noqa: E402
from shrinkthink.learners import make_optimizer  # noqa: E402
from shrinkthink.model import tiny_policy  # noqa: E402
from shrinkthink.policy import Policy  # noqa: E402
from shrinkthink.tasks import make_task  # noqa: E402
from shrinkthink.tasks.base import ANSWER_PREFIX  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=20)
    parser.add_argument("--depth", type=int, default=4)
    parser.add_argument("--batch", type=int, default=32)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    model, tokenizer = tiny_policy(args.depth)
    policy = Policy(model, tokenizer)
    tokens = coconut.add_latent_tokens(model, tokenizer, " ")
    task = make_task("arith", {"step_format": "refer", "min_operand": 1, "max_operand": 20})
    problems = [p for level in range(1, 6) for p in task.problems(level, 100, "train", seed=0)]

    def ids(text: str) -> list[int]:
        return tokenizer(text, add_special_tokens=False).input_ids

    prompts = [policy.prompt_ids(p.prompt) for p in problems]
    steps = [[ids(s + "\n") for s in p.steps] for p in problems]
    texts = [[ids(s) for s in p.steps] for p in problems]
    answers = [policy.completion_ids(ANSWER_PREFIX + p.answer) for p in problems]
    wrapper = coconut.ContinuousThoughts(model, tokens.thought)
    optimizer = make_optimizer(policy, 1e-4)
    model.train()

    def batch(stage: int, rng: random.Random):
        rows, masks, anchors, contents = [], [], [], []
        for i in (rng.randrange(len(problems)) for _ in range(args.batch)):
            row, mask = coconut.coconut_example(prompts[i], steps[i], answers[i], stage, 3, 5, tokens)
            rows.append(row)
            masks.append(mask)
            anchors.append(len(prompts[i]))
            contents.append(coconut.thought_targets(texts[i], stage, 3, 5))
        ids_, attention, loss_mask = coconut.pad_aligned(rows, masks, anchors, policy.pad_id)
        return ids_, attention, loss_mask, coconut.thought_label_columns(contents, anchors, ids_.shape[1])

    def step(data, lean: bool) -> float:
        began = time.perf_counter()
        with patch.object(LlamaPasses, "supports", staticmethod(lambda _model: lean)):
            loss = coconut.coconut_loss(wrapper, *data)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        loss.item()
        return time.perf_counter() - began

    print(f"threads {args.threads}, depth {args.depth} ({sum(p.numel() for p in model.parameters()) / 1e6:.2f}M "
          f"parameters), batch {args.batch}, {args.repeats} steps each, alternating")
    print("| stage | thoughts | model forward s/step | lean passes s/step | speedup |")
    print("|---|---|---|---|---|")
    for stage in (1, 5):
        rng = random.Random(stage)
        times = {True: [], False: []}
        for repeat in range(args.repeats + 2):
            data = batch(stage, rng)
            for lean in (repeat % 2 == 0, repeat % 2 == 1):
                seconds = step(data, lean)
                if repeat >= 2:  # the first two of each are warm-up
                    times[lean].append(seconds)
        forward, lean = statistics.median(times[False]), statistics.median(times[True])
        print(f"| {stage} | {stage * 3} | {forward:.3f} | {lean:.3f} | {forward / lean:.2f}x |")


if __name__ == "__main__":
    main()
