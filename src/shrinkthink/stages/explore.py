"""Explore: outcome-only reinforcement learning. The reward is the verified final answer and
nothing else (no format, length or style terms): the model may yap, digress and skip steps, as
long as it gets there. The level rises when held-out greedy accuracy at the current level passes
`promote_at`; a share of each batch replays lower levels so the climb does not erase them.

    shrinkthink run   # the quickstart (src/shrinkthink/configs/quickstart.yaml): its second stage
"""

from __future__ import annotations

import random
import time

from shrinkthink import distributed
from shrinkthink.config import ExploreStage
from shrinkthink.criteria import Batch, apply_criteria, build_criteria
from shrinkthink.learners import Learner
from shrinkthink.records import Episode, Problem
from shrinkthink.stages import Plateau, StageContext, StageResult
from shrinkthink.tasks.base import reasoning_part

POOL_PER_LEVEL = 4000
RESAMPLE_ROUNDS = 2  # dynamic sampling: extra rollouts to replace groups with no signal


def draw_problems(pools: dict[int, list[Problem]], level: int, n: int, replay: float,
                  rng: random.Random, lookahead: float = 0.0) -> list[Problem]:
    """`n` problems at `level`, of which a `replay` share comes from the levels below it (half of
    those from the level just mastered, the one a fresh climb most easily erases; the rest from any
    lower level) and a `lookahead` share from the level above it, when there is one."""
    lower = [lv for lv in pools if lv < level]
    replayed = round(n * replay) if lower else 0
    # however the shares round, the lookahead never takes the last problem at `level`
    ahead = max(0, min(round(n * lookahead), n - replayed - 1)) if (level + 1) in pools else 0
    drawn = [rng.choice(pools[level]) for _ in range(n - replayed - ahead)]
    drawn += [rng.choice(pools[level + 1]) for _ in range(ahead)]
    for i in range(replayed):
        source = level - 1 if i % 2 == 0 and (level - 1) in pools else rng.choice(lower)
        drawn.append(rng.choice(pools[source]))
    return drawn


def rollout(ctx: StageContext, stage: ExploreStage, problems: list[Problem]) -> tuple[list[Episode], dict]:
    """G samples of each problem, scored by the task's verifier (the only reward term)."""
    policy, size = ctx.policy, stage.learner.group_size
    prompts = [policy.prompt_ids(p.prompt) for p in problems]
    samples = policy.sample([p for p in prompts for _ in range(size)], max_new_tokens=stage.sampling.max_new_tokens,
                            temperature=stage.sampling.temperature, top_p=stage.sampling.top_p,
                            dtype=stage.sampling.dtype)
    episodes = []
    for i, (ids, logprobs, finished) in enumerate(zip(samples.completion_ids, samples.logprobs, samples.finished)):
        problem = problems[i // size]
        text = policy.decode(ids)
        correct = ctx.task.score(problem, text) if finished else 0.0
        episodes.append(Episode(
            problem=problem, prompt_ids=prompts[i // size], completion_ids=ids, logprobs=logprobs, text=text,
            finished=finished, answer=ctx.task.extract(text), reward=correct, outcome=correct,
            components={"correct": correct},
            reasoning_tokens=policy.count_tokens(reasoning_part(text)),
        ))
    return episodes, {"entropy_sum": samples.entropy_sum, "tokens": samples.tokens}


def batch_record(episodes: list[Episode], criteria, info: dict, sample_seconds: float) -> dict:
    """What every RL step logs of its batch: each reward component's mean, lengths, entropy,
    sampling speed."""
    n = len(episodes)
    return {
        "reward": sum(e.reward for e in episodes) / n,
        "reward_correct": sum(e.components["correct"] for e in episodes) / n,
        **{f"reward_{c.name}": sum(e.components[c.name] for e in episodes) / n for c in criteria},
        "mean_reasoning_tokens": sum(e.reasoning_tokens for e in episodes) / n,
        "mean_completion_tokens": sum(len(e.completion_ids) for e in episodes) / n,
        "finished_share": sum(e.finished for e in episodes) / n,
        "entropy": info["entropy_sum"] / max(1, info["tokens"]),
        "sample_seconds": sample_seconds,
        "tokens_per_s": info["tokens"] / max(sample_seconds, 1e-9),
    }


def train_accuracy(episodes: list[Episode], level: int) -> float:
    """The share of `level`'s sampled episodes that were verified correct."""
    at = [e.components["correct"] for e in episodes if e.problem.level == level]
    return sum(at) / max(1, len(at))


def run(ctx: StageContext, stage: ExploreStage) -> StageResult:
    policy, task, seed = ctx.policy, ctx.task, ctx.config.seed
    size = stage.learner.group_size
    learner = Learner(policy, stage.learner, stage.sampling.temperature,
                      max_new_tokens=stage.sampling.max_new_tokens, sampler_dtype=stage.sampling.dtype)
    ctx.anchor_reference(learner)
    pools = {lv: task.problems(lv, POOL_PER_LEVEL, "train", seed=seed)
             for lv in range(task.min_level, stage.max_level + 1)}
    level, start = stage.start_level, 0
    reference_tokens = None  # criteria only: the first batch's mean reasoning tokens
    plateau = Plateau(stage.gate.patience, stage.gate.min_delta)  # counted at max_level only
    if ctx.resume_state:
        start = ctx.resume_state["stage_step"]
        level = ctx.resume_state["stage_state"]["level"]
        reference_tokens = ctx.resume_state["stage_state"].get("reference_tokens")
        plateau.load(ctx.resume_state["stage_state"].get("plateau"))
        learner.load_state_dict(ctx.resume_state["trainer"])
    criteria = []
    bar = ctx.bar(stage.steps, start)
    stop_reason, step = "step budget", start
    shown = "-"  # the last held-out accuracy, for the progress bar
    for step in range(start, stage.steps):
        began = time.time()
        rng = random.Random(f"{seed}:{ctx.stage_name}:{step}")
        distributed.step_seed(f"{seed}:{ctx.stage_name}:{step}")
        problems = draw_problems(pools, level, stage.learner.problems_per_step, stage.replay, rng, stage.lookahead)
        episodes, info = rollout(ctx, stage, problems)
        groups = [list(range(i * size, (i + 1) * size)) for i in range(len(problems))]
        zero_variance = sum(len({episodes[j].reward for j in g}) == 1 for g in groups) / len(groups)
        rounds = 0
        while stage.dynamic_sampling and rounds < RESAMPLE_ROUNDS:
            flat = [g for g in groups if len({episodes[j].reward for j in g}) == 1]
            if not flat:
                break
            rounds += 1
            extra, more = rollout(ctx, stage,
                                  draw_problems(pools, level, len(flat), stage.replay, rng, stage.lookahead))
            info = {k: info[k] + more[k] for k in info}
            keep = [g for g in groups if g not in flat]
            offset = len(episodes)
            episodes += extra
            fresh = [list(range(offset + i * size, offset + (i + 1) * size)) for i in range(len(flat))]
            groups = keep + fresh
        sample_seconds = time.time() - began
        used = [episodes[j] for g in groups for j in g]
        if stage.criteria:
            # tightening from the first step (the ablation): fixed weights, no controller rounds
            if reference_tokens is None:
                reference_tokens = sum(e.reasoning_tokens for e in used) / len(used)
            criteria = criteria or build_criteria(stage.criteria, task, ctx.rewards,
                                                  f"stages.{ctx.stage_index}.criteria")
            apply_criteria(criteria, Batch(episodes, groups, task, reference_tokens))
        stats = learner.update(episodes, groups)
        seconds = time.time() - began
        record = {
            "level": level,
            **batch_record(used, criteria, info, sample_seconds),
            "train_accuracy_level": train_accuracy(used, level),
            **({"train_accuracy_ahead": train_accuracy(used, level + 1)}
               if stage.lookahead and level < stage.max_level else {}),
            "zero_variance_share": zero_variance,
            "resample_rounds": rounds,
            "seconds": seconds,
            **{f"learner_{k}": v for k, v in stats.items()},
        }
        done = step + 1
        ctx.run.log_completions(ctx.stage_name, done, used)
        if done % stage.eval_every == 0 or done == stage.steps:
            evaluation = ctx.evaluate([level], stage.eval_problems, stage.sampling.max_new_tokens)
            accuracy = evaluation.accuracy
            shown = f"{accuracy:.2f}"
            record |= {"accuracy": accuracy, f"accuracy_level_{level}": accuracy,
                       "eval_reasoning_tokens": evaluation.mean_reasoning_tokens}
            if accuracy >= stage.promote_at and level < stage.max_level:
                level += 1
                record["promoted_to"] = level
            elif level == stage.max_level and stage.gate.accuracy is not None and accuracy >= stage.gate.accuracy:
                stop_reason = f"gate: accuracy {accuracy:.2f} at level {level}"
            elif level == stage.max_level and plateau.update(accuracy):
                stop_reason = f"{plateau.reason()} at level {level}"
        ctx.log(done, **record)
        bar.set_postfix(level=level, reward=f"{record['reward']:.2f}", acc=shown)
        bar.update(1)
        if done % stage.checkpoint_every == 0 and done < stage.steps:
            ctx.checkpoint(done, learner.state_dict(), {"level": level, "reference_tokens": reference_tokens,
                                                        "plateau": plateau.state()})
        if stop_reason != "step budget":
            break
    bar.close()
    return StageResult(steps=step + 1 if stage.steps else 0, stop_reason=stop_reason, extra={"final_level": level})
