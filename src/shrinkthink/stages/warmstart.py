"""Supervised warm start: fine-tune on the task's own demonstrations of the lowest levels only,
digressions and all ("let it yap"): the model learns the format and the easy cases, and the
explore stage must climb from there with outcome reward alone.

    shrinkthink run   # the quickstart (src/shrinkthink/configs/quickstart.yaml): its first stage
"""

from __future__ import annotations

import math
import random
import time

import torch

from shrinkthink.config import WarmStartStage
from shrinkthink.learners import make_optimizer, supervised_step
from shrinkthink.stages import Plateau, StageContext, StageResult


def warmup_cosine(step: int, total: int, warmup: int) -> float:
    """Learning-rate multiplier: linear warm-up, then cosine decay to 10%."""
    if step < warmup:
        return (step + 1) / warmup
    progress = (step - warmup) / max(1, total - warmup)
    return 0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * min(1.0, progress)))


def run(ctx: StageContext, stage: WarmStartStage) -> StageResult:
    policy, task = ctx.policy, ctx.task
    seed = ctx.config.seed
    pool = [p for level in stage.levels for p in task.problems(level, stage.pool_problems, "train", seed=seed)]
    optimizer = make_optimizer(policy, stage.lr)
    start = 0
    plateau = Plateau(stage.gate.patience, stage.gate.min_delta)
    if ctx.resume_state:
        start = ctx.resume_state["stage_step"]
        optimizer.load_state_dict(ctx.resume_state["trainer"]["optimizer"])
        plateau.load(ctx.resume_state["stage_state"].get("plateau"))
    habit = stage.recheck > 0
    max_new = max(len(policy.completion_ids(task.demonstration(p, random.Random(0), stage.digression_rate, habit)))
                  for p in pool[:: max(1, len(pool) // 200)]) * 2
    bar = ctx.bar(stage.steps, start)
    stop_reason = "step budget"
    step = start
    for step in range(start, stage.steps):
        began = time.time()
        rng = random.Random(f"{seed}:{ctx.stage_name}:{step}")
        for group in optimizer.param_groups:
            group["lr"] = stage.lr * warmup_cosine(step, stage.steps, stage.warmup_steps)
        batch = [rng.choice(pool) for _ in range(stage.batch_size)]
        prompts = [policy.prompt_ids(p.prompt) for p in batch]
        # no draw for the habit unless it is on: the default stream stays what it was
        targets = [policy.completion_ids(task.demonstration(p, rng, stage.digression_rate,
                                                            habit and rng.random() < stage.recheck))
                   for p in batch]
        policy.model.train()
        generator = None
        if stage.random_positions is not None:  # no draw otherwise: the default stream stays what it was
            generator = torch.Generator().manual_seed(rng.getrandbits(63))
        loss = supervised_step(policy, optimizer, prompts, targets, position_span=stage.random_positions,
                               generator=generator)
        seconds = time.time() - began
        tokens = sum(len(t) for t in targets)
        record = {"loss": loss, "lr": optimizer.param_groups[0]["lr"], "seconds": seconds,
                  "tokens_per_s": tokens / max(seconds, 1e-9)}
        done = step + 1
        if done % stage.eval_every == 0 or done == stage.steps:
            evaluation = ctx.evaluate(stage.levels, stage.eval_problems, max_new)
            record |= {"accuracy": evaluation.accuracy, "mean_reasoning_tokens": evaluation.mean_reasoning_tokens,
                       "digression_share": evaluation.digression_share,
                       **{f"accuracy_level_{k}": v for k, v in evaluation.accuracy_by_level.items()}}
            bar.set_postfix(loss=f"{loss:.3f}", acc=f"{evaluation.accuracy:.2f}")
            if stage.gate.accuracy is not None and evaluation.accuracy >= stage.gate.accuracy:
                stop_reason = f"gate: accuracy {evaluation.accuracy:.2f}"
            elif plateau.update(evaluation.accuracy):
                stop_reason = plateau.reason()
        ctx.log(done, **record)
        bar.update(1)
        if done % stage.checkpoint_every == 0 and done < stage.steps:
            ctx.checkpoint(done, {"optimizer": optimizer.state_dict()}, {"plateau": plateau.state()})
        if stop_reason != "step budget":
            break
    bar.close()
    return StageResult(steps=step + 1 if stage.steps else 0, stop_reason=stop_reason,
                       extra={"max_new_tokens": max_new})
