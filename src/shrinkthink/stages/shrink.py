"""Shrink: tighten the criteria only once the model can solve, a little at a time.

The stage starts by measuring where the explore stage left the policy (greedy accuracy on the
validation problems, problem by problem, and mean reasoning tokens: the reference). Then, every step:

1. sample G attempts at problems from the mastered levels (or, with `reladder`, from the lowest
   level up, climbing back as accuracy allows);
2. score them with the verifier and the criteria (`reward = correct * gates + penalties`);
3. RL under that reward (`rl: true`), and/or
4. rewrite the winners with the editors (critic, paraphraser), re-verify every edit, and
   fine-tune on the edits.

At each evaluation (the same validation problems) the controllers take a round: a length penalty
ramps up, a token budget shrinks, while accuracy holds; when it drops they back off. A drop counts
only past `tolerance` by more than `noise_z` standard errors of the paired difference with the
reference (`criteria.accuracy_held`), so the noise of a small evaluation does not steer them.
With `restore_best`, the stage ends on the evaluated policy with the fewest reasoning tokens
whose accuracy held; among evaluations within 2% of the fewest tokens (a plateau, where which is
shortest is evaluation noise), on the most accurate (`next_best`).

    shrinkthink run   # the quickstart (src/shrinkthink/configs/quickstart.yaml): its third stage
"""

from __future__ import annotations

import random
import time

from shrinkthink import distributed
from shrinkthink.config import ShrinkStage
from shrinkthink.criteria import (
    Batch,
    accuracy_held,
    apply_criteria,
    build_criteria,
    criteria_state,
    load_criteria_state,
    update_controllers,
)
from shrinkthink.editors import build_editors
from shrinkthink.editors.paraphrase import Paraphraser, steganography_probe
from shrinkthink.learners import Learner, make_optimizer, supervised_step
from shrinkthink.records import Episode, Problem
from shrinkthink.stages import StageContext, StageResult, load_weights
from shrinkthink.stages.explore import POOL_PER_LEVEL, batch_record, draw_problems, rollout

TOKEN_TIE = 0.02  # reasoning-token counts this close to the fewest are a tie, broken by accuracy


def next_best(best: dict, step: int, accuracy: float, tokens: float) -> tuple[dict, bool]:
    """`best` ({step, accuracy, tokens, fewest}) after an evaluation at `step` whose accuracy
    held, and whether that evaluation's policy is the new best: clearly fewer tokens (more than
    `TOKEN_TIE` below the best's), or more accurate on the plateau of the fewest tokens seen so far
    (within `TOKEN_TIE` above them, so a run of ties cannot creep upwards)."""
    fewest = min(best.get("fewest", best["tokens"]), tokens)
    if (tokens < best["tokens"] * (1 - TOKEN_TIE)
            or (tokens <= fewest * (1 + TOKEN_TIE) and accuracy > best["accuracy"])):
        return {"step": step, "accuracy": accuracy, "tokens": tokens, "fewest": fewest}, True
    return {**best, "fewest": fewest}, False


def winners(episodes: list[Episode], groups: list[list[int]], criteria) -> list[Episode]:
    """Per problem, the correct finished attempt that passes the most gates, shortest first.

    A gate's failure does not disqualify: the editors exist to turn a correct transcript that
    breaks a criterion (a filler line, a digression) into one that keeps it, and under a strict
    gate the policy may not yet write a single passing transcript."""
    gates = [c.name for c in criteria if c.gate]
    out = []
    for group in groups:
        correct = [episodes[i] for i in group if episodes[i].finished
                   and episodes[i].components.get("correct", 0.0) >= 1.0]
        if correct:
            out.append(min(correct, key=lambda e: (-sum(e.components[g] for g in gates), e.reasoning_tokens)))
    return out


def run(ctx: StageContext, stage: ShrinkStage) -> StageResult:
    policy, task, seed = ctx.policy, ctx.task, ctx.config.seed
    levels = stage.levels or ctx.config.task.eval_levels
    max_new = stage.sampling.max_new_tokens
    state = dict(ctx.resume_state["stage_state"]) if ctx.resume_state else {}
    if "reference" not in state:
        # where explore left the policy: what the criteria are measured against
        start_eval = ctx.evaluate(levels, stage.eval_problems, max_new)
        state["reference"] = {"accuracy": start_eval.accuracy, "tokens": start_eval.mean_reasoning_tokens,
                              "scores": start_eval.scores}
        ctx.log(0, event="reference", accuracy=start_eval.accuracy,
                mean_reasoning_tokens=start_eval.mean_reasoning_tokens,
                digression_share=start_eval.digression_share)
    reference = state["reference"]
    if stage.restore_best and "best" not in state:
        # the stage-start policy is the first candidate: a shrink that never holds accuracy ends
        # where it began rather than worse
        ctx.run.save_policy(f".{ctx.stage_name}-best", policy)
        state["best"] = {"step": 0, "accuracy": reference["accuracy"], "tokens": reference["tokens"],
                         "fewest": reference["tokens"]}
    criteria = build_criteria(stage.criteria, task, ctx.rewards, f"stages.{ctx.stage_index}.criteria")
    editors = build_editors(stage.editors, task, policy.device, field=f"stages.{ctx.stage_index}.editors")
    paraphraser = next((e for e in editors if isinstance(e, Paraphraser)), None)
    learner = Learner(policy, stage.learner, stage.sampling.temperature, max_new_tokens=stage.sampling.max_new_tokens,
                      sampler_dtype=stage.sampling.dtype) if stage.rl else None
    if learner is not None:
        ctx.anchor_reference(learner)
    finetune = make_optimizer(policy, stage.finetune_lr) if editors else None
    pools = {lv: task.problems(lv, POOL_PER_LEVEL, "train", seed=seed) for lv in levels}
    level = state.get("level", min(levels) if stage.reladder else None)
    best = state.get("best")
    start = 0
    if ctx.resume_state:
        start = ctx.resume_state["stage_step"]
        trainer = ctx.resume_state["trainer"] or {}
        if learner is not None and "learner" in trainer:
            learner.load_state_dict(trainer["learner"])
        if finetune is not None and "finetune" in trainer:
            finetune.load_state_dict(trainer["finetune"])
        load_criteria_state(criteria, state.get("criteria", {}))

    bar = ctx.bar(stage.steps, start)
    size = stage.learner.group_size
    step = start
    stop_reason = "step budget"
    shown = "-"  # the last held-out accuracy, for the progress bar
    for step in range(start, stage.steps):
        began = time.time()
        rng = random.Random(f"{seed}:{ctx.stage_name}:{step}")
        distributed.step_seed(f"{seed}:{ctx.stage_name}:{step}")
        problems = draw(pools, levels, level, stage, rng)
        episodes, info = rollout(ctx, stage, problems)
        groups = [list(range(i * size, (i + 1) * size)) for i in range(len(problems))]
        apply_criteria(criteria, Batch(episodes, groups, task, reference["tokens"]))
        sample_seconds = time.time() - began
        record = batch_record(episodes, criteria, info, sample_seconds)
        if level is not None:
            record["level"] = level
        if learner is not None:
            record |= {f"learner_{k}": v for k, v in learner.update(episodes, groups).items()}
        done = step + 1
        ctx.run.log_completions(ctx.stage_name, done, episodes)
        if editors and done % stage.finetune_every == 0:
            record |= edit_and_finetune(ctx, stage, editors, finetune, winners(episodes, groups, criteria))
        record["seconds"] = time.time() - began  # the step's own work, its evaluation not counted
        if done % stage.eval_every == 0 or done == stage.steps:
            evaluation = ctx.evaluate(levels, stage.eval_problems, max_new)
            accuracy = evaluation.accuracy
            shown = f"{accuracy:.2f}"
            record |= {"accuracy": accuracy, "eval_reasoning_tokens": evaluation.mean_reasoning_tokens,
                       "eval_digression_share": evaluation.digression_share,
                       **{f"accuracy_level_{k}": v for k, v in evaluation.accuracy_by_level.items()}}
            if evaluation.valid_step_share is not None:
                record["eval_valid_step_share"] = evaluation.valid_step_share
            held = accuracy_held(evaluation.scores, reference["scores"], stage.tolerance, stage.noise_z)
            record |= {f"controller_{k}": v for k, v in update_controllers(criteria, held).items()}
            if stage.reladder and level is not None and level < max(levels) \
                    and evaluation.accuracy_by_level.get(level, 0.0) >= stage.promote_at:
                level = min(lv for lv in levels if lv > level)
                record["promoted_to"] = level
            record["held"] = held
            if stage.restore_best and held:
                best, improved = next_best(best, done, accuracy, evaluation.mean_reasoning_tokens)
                if improved:
                    ctx.run.save_policy(f".{ctx.stage_name}-best", policy)
                    record["best"] = True
            if paraphraser is not None and stage.probe_problems:
                own = [(p, text) for p, text, score in evaluation.transcripts if score >= 1.0][: stage.probe_problems]
                record |= steganography_probe(policy, task, paraphraser, own, max_new)
            if stage.gate.accuracy is not None and accuracy >= stage.gate.accuracy and held \
                    and (not stage.reladder or level == max(levels)):
                stop_reason = f"gate: accuracy {accuracy:.2f}"
        record |= {k: v for c in criteria for k, v in c.state().items()}  # after this step's round
        ctx.log(done, **record)
        bar.set_postfix(reward=f"{record['reward']:.2f}", tok=f"{record['mean_reasoning_tokens']:.1f}",
                        acc=shown)
        bar.update(1)
        if done % stage.checkpoint_every == 0 and done < stage.steps:
            trainer = {}
            if learner is not None:
                trainer["learner"] = learner.state_dict()
            if finetune is not None:
                trainer["finetune"] = finetune.state_dict()
            ctx.checkpoint(done, trainer, {**state, "level": level, "best": best, "criteria": criteria_state(criteria)})
        if stop_reason != "step budget":
            break
    bar.close()
    restored = False
    if stage.restore_best and best is not None and best["step"] != step + 1:
        load_weights(policy.model, ctx.run.checkpoints / f".{ctx.stage_name}-best")
        restored = True
    extra = {"reference_accuracy": reference["accuracy"], "reference_tokens": reference["tokens"],
             "controllers": criteria_state(criteria), "best": best, "restored_best": restored}
    if level is not None:
        extra["final_level"] = level
    return StageResult(steps=step + 1 if stage.steps else 0, stop_reason=stop_reason, extra=extra)


def draw(pools: dict[int, list[Problem]], levels: list[int], level: int | None, stage: ShrinkStage,
         rng: random.Random) -> list[Problem]:
    """Re-ladder: the current level with replay of those below it. Otherwise: any mastered level."""
    n = stage.learner.problems_per_step
    if level is not None:
        below = {lv: pool for lv, pool in pools.items() if lv <= level}
        return draw_problems(below, level, n, stage.replay, rng)
    return [rng.choice(pools[rng.choice(levels)]) for _ in range(n)]


def edit_and_finetune(ctx: StageContext, stage: ShrinkStage, editors, optimizer, chosen: list[Episode]) -> dict:
    """Run the editors in order over this step's winners; fine-tune on the re-verified results."""
    if not chosen:
        return {"edit_winners": 0}
    policy, task = ctx.policy, ctx.task
    began = time.time()
    items = [(e.problem, e.text) for e in chosen]
    before_tokens = sum(policy.count_tokens(text) for _, text in items)
    stats: dict[str, float] = {"edit_winners": len(items)}
    for editor in editors:
        edits = editor.edit(policy, task, items, stage.sampling.max_new_tokens)
        ctx.run.log_edits(ctx.stage_name, editor.name, edits)
        stats[f"edit_{editor.name}_changed"] = sum(e.changed for e in edits) / len(edits)
        stats[f"edit_{editor.name}_forward_passes"] = sum(e.forward_passes for e in edits)
        items = [(e.problem, e.after) for e in edits]
    stats["edit_tokens_before"] = before_tokens / len(items)
    stats["edit_tokens_after"] = sum(policy.count_tokens(text) for _, text in items) / len(items)
    prompts = [policy.prompt_ids(p.prompt) for p, _ in items]
    targets = [policy.completion_ids(text) for _, text in items]
    policy.model.train()
    for _ in range(stage.finetune_batches):
        stats["finetune_loss"] = supervised_step(policy, optimizer, prompts, targets)
    stats["edit_seconds"] = time.time() - began
    return stats
