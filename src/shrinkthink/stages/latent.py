"""Latent: internalise what reasoning is left, so the model answers with few or no visible
reasoning tokens ("distill the knowledge into the forward passes").

- `method: coconut`: curriculum stage k replaces the first k reasoning steps by k*c continuous
  thoughts (latent/coconut.py); the stage advances every `steps_per_stage` steps. With
  `thought_targets`, each thought also learns to predict one of its step's last c tokens.
- `method: pause`: the same curriculum with pause tokens: each `<thought>` is an ordinary learned
  token, no hidden state fed back (the baseline a latent method must beat).
- `method: icot`: the first s reasoning tokens are removed, s growing a token at a time,
  `remove_tokens` every `remove_every_steps` steps, with removal smoothing (latent/icot.py).
- `method: ccot`: about `compression_ratio` times as many dense contemplation tokens as the
  reasoning had tokens, taught by teacher forcing to reproduce the stage-start model's layer-l
  states at evenly spaced reasoning positions, and the answer after the ones the model generates;
  an END classifier decides how many (latent/ccot.py). No curriculum: nothing resets.

Either way the optimizer is reset whenever the curriculum moves on, until it reaches its last step
(coconut: every step latent; icot: all reasoning removed). The reasoning comes from the
policy's own verified greedy transcripts (after a shrink stage, the short ones; a line a step), or
the task's gold steps where the policy fails or with `source: gold`. The pool is written to
`latent/<stage>.jsonl` in the run directory, so a resumed run trains on the same one.

    shrinkthink run                                   # the quickstart: its last stage is COCONUT
    shrinkthink run configs/quickstart-icot.yaml      # the same, ending with iCoT
    shrinkthink run configs/icot-multiply-4x4-cpu.yaml
    shrinkthink run configs/coconut-prosqa-cpu.yaml
    shrinkthink run configs/coconut-prontoqa-cpu.yaml
"""

from __future__ import annotations

import json
import math
import random
import time

import torch

from shrinkthink import distributed
from shrinkthink.config import LatentStage
from shrinkthink.latent import ccot, coconut, icot
from shrinkthink.learners import make_optimizer, supervised_step
from shrinkthink.records import Problem
from shrinkthink.stages import Plateau, StageContext, StageResult
from shrinkthink.tasks.base import ANSWER_PREFIX, reasoning_part

CURRICULUM = ("coconut", "pause")  # the methods whose thoughts replace reasoning steps one stage at a time


def transcript_steps(text: str) -> list[str]:
    """The reasoning lines of a transcript, a step each."""
    return [line for line in reasoning_part(text).split("\n") if line.strip()]


def reasoning_pool(ctx: StageContext, stage: LatentStage, problems: list[Problem]
                   ) -> tuple[list[list[str]], list[str]]:
    """Steps for every problem and where they came from: the policy's own when its greedy answer
    verifies, else gold."""
    gold = [list(p.steps or []) for p in problems]
    if stage.source == "gold":
        return gold, ["gold"] * len(gold)
    policy = ctx.policy
    samples = policy.sample([policy.prompt_ids(p.prompt) for p in problems],
                            max_new_tokens=stage.max_new_tokens, greedy=True)
    steps, source = [], []
    for problem, ids, finished, fallback in zip(problems, samples.completion_ids, samples.finished, gold):
        text = policy.decode(ids)
        solved = finished and ctx.task.score(problem, text) >= 1.0
        steps.append(transcript_steps(text) if solved else fallback)
        source.append("policy" if solved else "gold")
    return steps, source


def load_pool(ctx: StageContext, stage: LatentStage) -> tuple[list[Problem], list[list[str]], float]:
    """(problems, their steps, share taken from the policy), built once per run."""
    problems = [p for level in stage.levels
                for p in ctx.task.problems(level, stage.pool_problems, "train", seed=ctx.config.seed)]
    name = f"latent/{stage.name}.jsonl"
    if distributed.agree((ctx.run.path / name).is_file()):
        rows = [json.loads(line) for line in (ctx.run.path / name).read_text().splitlines()]
        steps = [row["steps"] for row in rows]
        source = [row["source"] for row in rows]
    else:
        steps, source = reasoning_pool(ctx, stage, problems)
        ctx.run.write_text(name, "".join(json.dumps({"id": p.id, "source": src, "steps": s}) + "\n"
                                         for p, src, s in zip(problems, source, steps)))
    return problems, steps, source.count("policy") / max(1, len(source))


def lr_factor(stage: LatentStage, step: int, phase_start: int, final_start: int | None) -> float:
    """The share of `lr` at `step`: a linear warm-up after each optimizer reset (at `phase_start`),
    then constant; with `final_decay`, from `final_start`, the first step of the last curriculum
    step, a cosine down to 0 at the stage's last step. No reset happens inside the decay: iCoT's
    removal goes on growing after all reasoning is gone, but the task no longer changes."""
    warm = min(1.0, (step - phase_start + 1) / stage.warmup_steps) if stage.warmup_steps else 1.0
    if not stage.final_decay or final_start is None or step < final_start:
        return warm
    return warm * 0.5 * (1.0 + math.cos(math.pi * (step - final_start) / (stage.steps - final_start)))


def ccot_targets(ctx: StageContext, stage: LatentStage, prompts: list[list[int]], reasoning: list[list[int]],
                 counts: list[int], layer: int) -> tuple[list[torch.Tensor], float]:
    """CCoT's gold states and their variance: the policy as the stage found it (the frozen teacher)
    read once over every pool example, and written to `latent/<stage>.ccot.pt`, so a resumed run,
    whose policy has trained since, reads the same ones."""
    path = ctx.run.path / f"latent/{stage.name}.ccot.pt"
    if ctx.resume_state is not None:
        if not distributed.agree(path.is_file()):
            raise RuntimeError(f"{path}: the teacher's states are missing, so this stage cannot resume")
        saved = torch.load(path)
        if saved["layer"] != layer:
            raise RuntimeError(f"{path}: the teacher's states are of layer {saved['layer']}, the stage's is {layer}")
        return saved["states"], saved["scale"]
    states = ccot.teacher_states(ctx.policy.model, prompts, reasoning, counts, layer, ctx.policy.pad_id)
    scale = ccot.target_scale(states)
    if ctx.run.writes:
        path.parent.mkdir(parents=True, exist_ok=True)
        partial = path.with_name(path.name + ".tmp")
        torch.save({"layer": layer, "states": states, "scale": scale}, partial)
        partial.replace(path)
    return states, scale


def run(ctx: StageContext, stage: LatentStage) -> StageResult:
    policy, seed = ctx.policy, ctx.config.seed
    problems, steps, policy_share = load_pool(ctx, stage)
    tok = policy.tokenizer

    def ids(text: str) -> list[int]:
        return tok(text, add_special_tokens=False).input_ids

    prompts = [policy.prompt_ids(p.prompt) for p in problems]
    step_ids = [[ids(s + "\n") for s in row] for row in steps]
    # what `thought_targets` reads: each step without its line break
    step_text_ids = ([[ids(s) for s in row] for row in steps]
                     if stage.method in CURRICULUM and stage.thought_targets else [])
    answers = [policy.completion_ids(ANSWER_PREFIX + p.answer) for p in problems]
    longest = max(sum(len(s) for s in row) for row in step_ids)

    if stage.method in CURRICULUM:
        tokens = coconut.add_latent_tokens(policy.model, tok, stage.marker_init or None)
        if stage.method == "pause":
            wrapper = coconut.PauseTokens(policy.model)  # a <thought> is an ordinary, learned token
        else:
            if stage.thought_scale == "embedding" and ctx.resume_state is None:
                setattr(policy.model.config, coconut.THOUGHT_NORM_KEY, coconut.mean_embedding_norm(policy.model))
            elif stage.thought_scale == "hidden":
                setattr(policy.model.config, coconut.THOUGHT_NORM_KEY, None)
            wrapper = coconut.ContinuousThoughts(policy.model, tokens.thought)
        last_phase = stage.max_latent_stage + 1

        def phase_at(step: int) -> int:
            return min(stage.start_stage + step // stage.steps_per_stage, last_phase)

        def final(phase: int) -> bool:
            return phase == last_phase

        def latent_mode(phase: int) -> dict:
            return {"method": stage.method, "stage": phase, "thoughts":
                    coconut.thoughts_at(phase, stage.thoughts_per_step, stage.max_latent_stage)}
    elif stage.method == "ccot":
        layer = ccot.resolve_layer(policy.model, stage.autoregressive_layer)
        reasoning_ids = [[t for s in row for t in s] for row in step_ids]
        thought_counts = [ccot.thought_count(len(r), stage.compression_ratio) for r in reasoning_ids]
        gold_states, scale = ccot_targets(ctx, stage, prompts, reasoning_ids, thought_counts, layer)
        tokens = coconut.add_latent_tokens(policy.model, tok, stage.marker_init or None)
        # what generation needs, saved with the checkpoint as latent.json
        mode = {"method": "ccot", "thoughts": round(sum(thought_counts) / len(thought_counts)), "layer": layer,
                "stop_rule": stage.stop_rule, "end_threshold": stage.end_threshold,
                "max_thoughts": max(thought_counts)}

        def phase_at(step: int) -> int:
            return 0

        def final(phase: int) -> bool:
            return True

        def latent_mode(phase: int) -> dict:
            return dict(mode)
    else:
        offsets = icot.smoothing_probs(stage.smoothing_lambda, stage.max_offset)

        def phase_at(step: int) -> int:
            return icot.scheduled_removal(step, stage.remove_tokens, stage.remove_every_steps, stage.remove_start)

        def final(phase: int) -> bool:
            return icot.all_removed(phase, longest, stage.drop_all_after)

        def latent_mode(phase: int) -> dict:
            return {"method": "icot", "removed_tokens": phase, "thoughts": 0}

    # the schedule is a function of the step alone (O(1) a step), so a resumed run finds the same start
    final_start = next((s for s in range(stage.steps) if final(phase_at(s))), None)
    optimizer = make_optimizer(policy, stage.lr)
    start, phase, phase_start = 0, phase_at(0), 0
    plateau = Plateau(stage.gate.patience, stage.gate.min_delta)  # counted in the last phase only
    if ctx.resume_state:
        start = ctx.resume_state["stage_step"]
        phase = ctx.resume_state["stage_state"]["phase"]
        phase_start = ctx.resume_state["stage_state"]["phase_start"]
        optimizer.load_state_dict(ctx.resume_state["trainer"]["optimizer"])
        plateau.load(ctx.resume_state["stage_state"].get("plateau"))
    policy.latent = latent_mode(phase)
    bar = ctx.bar(stage.steps, start)
    stop_reason, step = "step budget", start
    for step in range(start, stage.steps):
        began = time.time()
        rng = random.Random(f"{seed}:{ctx.stage_name}:{step}")
        record: dict = {}
        if phase_at(step) != phase:
            # a new curriculum step changes the task under the optimizer's moment estimates; past
            # the last one (iCoT's removal growing beyond all reasoning) the task stays the same
            if not final(phase):
                phase_start = step
                optimizer = make_optimizer(policy, stage.lr)
                record["optimizer_reset"] = True
            phase = phase_at(step)
            policy.latent = latent_mode(phase)
        for group in optimizer.param_groups:
            group["lr"] = stage.lr * lr_factor(stage, step, phase_start, final_start)
        batch = [rng.randrange(len(problems)) for _ in range(stage.batch_size)]
        policy.model.train()
        if stage.method in CURRICULUM:
            rows, masks, anchors, thoughts, contents = [], [], [], [], []
            for i in batch:
                at = coconut.example_stage(phase, len(step_ids[i]), rng, stage.earlier_stage_share, stage.uniform_prob)
                row, mask = coconut.coconut_example(prompts[i], step_ids[i], answers[i], at, stage.thoughts_per_step,
                                                    stage.max_latent_stage, tokens)
                rows.append(row)
                masks.append(mask)
                anchors.append(len(prompts[i]))
                thoughts.append(row.count(tokens.thought))
                if stage.thought_targets:
                    contents.append(coconut.thought_targets(step_text_ids[i], at, stage.thoughts_per_step,
                                                            stage.max_latent_stage))
            optimizer.zero_grad(set_to_none=True)
            loss = 0.0
            # on several ranks, this rank's rows, each loss divided by the whole batch's counts
            mine = distributed.balanced([len(r) for r in rows])
            counts = None
            if distributed.world() > 1:
                counts = (sum(map(sum, masks)), sum(t >= 0 for c in contents for t in c))
            if mine:
                def pick(values: list, mine: list[int] = mine) -> list:
                    return [values[j] for j in mine] if values else values

                batch_ids, attention, loss_mask = coconut.pad_aligned(pick(rows), pick(masks), pick(anchors),
                                                                      policy.pad_id)
                thought_labels = (coconut.thought_label_columns(pick(contents), pick(anchors), batch_ids.shape[1])
                                  if stage.thought_targets else None)
                device = policy.device
                # not inside onednn_linears: a thought pass is one token a row, where oneDNN's call
                # costs more than MKL's; the lean passes (latent/passes.py) choose per pass
                share = coconut.coconut_loss(wrapper, batch_ids.to(device), attention.to(device),
                                             loss_mask.to(device),
                                             None if thought_labels is None else thought_labels.to(device), counts)
                share.backward()
                loss = share.item()
            (loss,) = distributed.sync_gradients(policy.model.parameters(), [loss])
            torch.nn.utils.clip_grad_norm_(policy.model.parameters(), stage.max_grad_norm)
            optimizer.step()
            tokens_seen = sum(len(r) for r in rows)
            record |= {"curriculum_stage": phase, "thoughts": sum(thoughts) / len(thoughts),
                       "target_tokens": sum(map(sum, masks)) / len(batch)}
        elif stage.method == "ccot":
            optimizer.zero_grad(set_to_none=True)
            ks = [thought_counts[i] for i in batch]
            # on several ranks, this rank's rows, each loss divided by the whole batch's counts
            mine = [batch[j] for j in distributed.balanced([len(prompts[i]) + len(answers[i]) + k
                                                            for i, k in zip(batch, ks)])]
            totals = None
            if distributed.world() > 1:  # (gold states, END positions, answer tokens)
                totals = (sum(ks), sum(ks) + len(ks), sum(len(answers[i]) for i in batch))
            parts = [0.0, 0.0, 0.0]
            if mine:
                losses = ccot.training_losses(policy.model, [prompts[i] for i in mine], [answers[i] for i in mine],
                                              [gold_states[i] for i in mine], tokens, layer, scale, policy.pad_id,
                                              totals)
                losses.total.backward()
                parts = [losses.state.item(), losses.end.item(), losses.answer.item()]
            parts = distributed.sync_gradients(policy.model.parameters(), parts)
            torch.nn.utils.clip_grad_norm_(policy.model.parameters(), stage.max_grad_norm)
            optimizer.step()
            loss = sum(parts)
            tokens_seen = 2 * sum(len(prompts[i]) + k + 2 + len(answers[i]) for i, k in zip(batch, ks))
            record |= {"thoughts": sum(ks) / len(ks), "state_loss": parts[0], "end_loss": parts[1],
                       "answer_loss": parts[2], "target_tokens": sum(len(answers[i]) for i in batch) / len(batch)}
        else:
            removed, targets = [], []
            for i in batch:
                reasoning = [t for s in step_ids[i] for t in s]
                cut = icot.tokens_to_remove(phase, icot.sample_offset(offsets, rng), len(reasoning),
                                            stage.drop_all_after)
                removed.append(cut)
                targets.append(icot.icot_target(reasoning, answers[i], cut))
            loss = supervised_step(policy, optimizer, [prompts[i] for i in batch], targets, stage.max_grad_norm)
            tokens_seen = sum(len(prompts[i]) + len(t) for i, t in zip(batch, targets))
            record |= {"removed_tokens": phase, "mean_removed_tokens": sum(removed) / len(removed),
                       "target_tokens": sum(len(t) for t in targets) / len(targets)}
        seconds = time.time() - began
        record |= {"loss": loss, "lr": optimizer.param_groups[0]["lr"], "latent_steps": policy.latent_steps,
                   "seconds": seconds, "tokens_per_s": tokens_seen / max(seconds, 1e-9)}
        done = step + 1
        if done % stage.eval_every == 0 or done == stage.steps:
            evaluation = ctx.evaluate(stage.levels, stage.eval_problems, stage.max_new_tokens)
            record |= {"accuracy": evaluation.accuracy, "mean_reasoning_tokens": evaluation.mean_reasoning_tokens,
                       **{f"accuracy_level_{k}": v for k, v in evaluation.accuracy_by_level.items()}}
            bar.set_postfix(loss=f"{loss:.3f}", acc=f"{evaluation.accuracy:.2f}", phase=phase)
            # the gate only ends a finished curriculum: earlier, accuracy is bought with visible reasoning
            if final(phase) and stage.gate.accuracy is not None and evaluation.accuracy >= stage.gate.accuracy:
                stop_reason = f"gate: accuracy {evaluation.accuracy:.2f}"
            elif final(phase) and plateau.update(evaluation.accuracy):
                stop_reason = plateau.reason()
        ctx.log(done, **record)
        bar.update(1)
        if done % stage.checkpoint_every == 0 and done < stage.steps:
            ctx.checkpoint(done, {"optimizer": optimizer.state_dict()}, {"phase": phase, "phase_start": phase_start,
                                                                          "plateau": plateau.state()})
        if stop_reason != "step budget":
            break
    bar.close()
    return StageResult(steps=step + 1 if stage.steps else 0, stop_reason=stop_reason,
                       extra={"max_new_tokens": stage.max_new_tokens, "latent_steps": policy.latent_steps,
                              "method": stage.method, "curriculum_final": final(phase),
                              "policy_source_share": policy_share})
