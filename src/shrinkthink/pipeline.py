"""Runs the stages of one config in order: builds the policy and task, gives each stage its loop,
evaluates held-out greedy accuracy after each, writes checkpoints and `summary.json`, resumes from
the newest checkpoint after a crash.

    shrinkthink run                    # the quickstart
    shrinkthink run --resume runs/quickstart
"""

from __future__ import annotations

import json
import random
import time
import zlib
from collections.abc import Callable, Iterator, Mapping
from datetime import datetime
from pathlib import Path
from typing import Any

import torch

from shrinkthink import allocator, distributed, trackers
from shrinkthink.config import RunConfig, dump_config
from shrinkthink.errors import UserError
from shrinkthink.evaluate import Evaluation, evaluate, wilson_interval
from shrinkthink.policy import Policy, pick_device
from shrinkthink.rundir import RunDir
from shrinkthink.stages import StageContext, explore, latent, shrink, warmstart
from shrinkthink.tasks import Task, make_task
from shrinkthink.tasks.base import reasoning_part

STAGE_LOOPS = {"warmstart": warmstart.run, "explore": explore.run, "shrink": shrink.run, "latent": latent.run}


def default_run_dir(config: RunConfig) -> Path:
    return Path("runs") / f"{config.name}-{datetime.now():%Y%m%d-%H%M%S}"


def eval_tokens(config: RunConfig, results: dict[str, Any]) -> int:
    """Greedy evaluation length: the longest completion any stage allowed."""
    lengths = [s.sampling.max_new_tokens for s in config.stages if hasattr(s, "sampling")]
    lengths += [r["max_new_tokens"] for r in results.values() if "max_new_tokens" in r]
    return max(lengths or [128])


def starts_evaluated(config: RunConfig) -> bool:
    """Whether the run reports the model it starts from: asked for, or (by default) a first stage
    that trains a model which already answers, rather than a warm start from scratch."""
    if config.task.eval_start is not None:
        return config.task.eval_start
    return config.stages[0].kind != "warmstart"


def stage_figures(config: RunConfig, policy: Policy, measure: Callable[..., Evaluation], transfer: Mapping[str, Task],
                  max_new: int, validation_problems: int) -> tuple[Evaluation, dict[str, Any]]:
    """The test evaluation that a summary entry reports, with the validation figure beside it (the
    split the stage's decisions were made on) and each transfer task's test accuracy. `measure`
    is `StageContext.evaluate`'s signature: (levels, n, max_new_tokens, split=...)."""
    levels = config.task.eval_levels
    test = measure(levels, config.task.eval_problems, max_new, split="test")
    validation = measure(levels, validation_problems, max_new, split="validation")
    figures = {
        "accuracy": test.accuracy,
        "accuracy_by_level": {str(k): v for k, v in test.accuracy_by_level.items()},
        "test_problems": len(test.transcripts),
        "validation_accuracy": validation.accuracy,
        "validation_problems": len(validation.transcripts),
        "truncated_share": test.truncated_share,
        "mean_reasoning_tokens": test.mean_reasoning_tokens,
        "mean_completion_tokens": test.mean_completion_tokens,
        "latent_steps": test.latent_steps,
        "digression_share": test.digression_share,
        "valid_step_share": test.valid_step_share,
    }
    if transfer:
        figures["transfer"] = {}
        for spec in config.task.transfer:
            other = evaluate(policy, transfer[spec.name], spec.levels, spec.problems, max_new_tokens=max_new, seed=1,
                             split="test")
            figures["transfer"][spec.name] = {"accuracy": other.accuracy, "test_problems": len(other.transcripts),
                                              "mean_completion_tokens": other.mean_completion_tokens,
                                              "truncated_share": other.truncated_share}
    return test, figures


def run_levels(config: RunConfig) -> list[tuple[str, int]]:
    """Every level the config names, with the field that names it."""
    named = [("task.eval_levels", level) for level in config.task.eval_levels]
    for i, stage in enumerate(config.stages):
        named += [(f"stages.{i}.levels", level) for level in getattr(stage, "levels", None) or []]
        named += [(f"stages.{i}.{field}", getattr(stage, field)) for field in ("start_level", "max_level")
                  if hasattr(stage, field)]
    return named


def tokenizer_corpus(config: RunConfig, task, per_level: int = 1000) -> Iterator[str]:
    """The text a `bpe` tokenizer learns its merges from: training problems of every level the
    run names (and those between), each prompt beside a demonstration with digressions, so the
    words of every later stage's transcripts are in it. Never the held-out split."""
    levels = [level for _, level in run_levels(config)]
    rng = random.Random(f"{config.seed}:tokenizer")
    for level in range(min(levels), max(levels) + 1):
        for problem in task.problems(level, per_level, "train", seed=config.seed):
            yield problem.prompt + "\n" + task.demonstration(problem, rng, 0.3, rng.random() < 0.5)


def check_levels(config: RunConfig, task) -> None:
    """Every level the config names must exist in the task; the error names the field."""
    for field, level in run_levels(config):
        if not task.min_level <= level <= task.max_level:
            raise UserError(f"{field}: level {level} is outside task {task.name}'s levels "
                            f"{task.min_level}..{task.max_level}")


def check_stages(config: RunConfig, task, device, rewards: Mapping[str, Callable[..., Any]] | None = None) -> None:
    """Build every criterion and editor once, so that a missing Lean toolchain, a task without a
    step checker, a reward function that does not import or a critic model that does not load is
    reported before anything runs."""
    from shrinkthink.criteria import build_criteria
    from shrinkthink.editors import build_editors

    named = set()
    for i, stage in enumerate(config.stages):
        if getattr(stage, "criteria", None):
            field = f"stages.{i}.criteria"
            named |= {c.function for c in stage.criteria if c.name == "reward"}
            try:
                build_criteria(stage.criteria, task, rewards, field)
            except UserError as error:  # a user reward's error names its own field already
                message = str(error)
                raise UserError(message if message.startswith(field) else f"{field}: {message}") from None
        if getattr(stage, "editors", None):
            build_editors(stage.editors, task, device, field=f"stages.{i}.editors")
    unused = sorted(set(rewards or {}) - named)
    if unused:
        raise UserError(f"rewards: '{unused[0]}' was passed, but no stage's criteria name it "
                        f"(add {{name: reward, function: {unused[0]}}} to a stage's criteria)")


def run_pipeline(config: RunConfig, run_dir: str | None = None, resume: bool = False, progress: bool = True,
                 task: Task | None = None, rewards: Mapping[str, Callable[..., Any]] | None = None) -> dict[str, Any]:
    """Run every stage of `config`; returns the summary (also written to `summary.json`). `task`
    replaces the one `config.task` names; `rewards` are the functions a `reward` criterion may name
    by key (the Python API, `shrinkthink.run`)."""
    began = time.time()
    if config.threads or distributed.launched():
        torch.set_num_threads(config.threads or distributed.threads_per_rank())
    device = pick_device(config.device)
    distributed.setup(device)
    # rank 0's: the default name has the time in it, which the ranks need not read alike
    path = Path(distributed.agree(str(run_dir or config.run_dir or default_run_dir(config))))
    if not resume and ((path / "summary.json").exists() or (path / "checkpoints").exists()):
        raise UserError(f"run_dir: '{path}' already holds a run; pass --resume or choose another run_dir")
    # Check everything a user can get wrong before the run directory is touched.
    task = task if task is not None else make_task(config.task.name, config.task.options)
    check_levels(config, task)
    check_stages(config, task, device, rewards)
    trackers.check(config.logging)
    # the corpus is a generator: nothing is drawn unless a `bpe` tokenizer reads it
    fresh_policy = None if resume else Policy.from_config(config.model, device, seed=config.seed,
                                                          corpus=tokenizer_corpus(config, task))
    distributed.barrier()  # every rank has checked the run directory before rank 0 writes to it
    run = RunDir(path)

    summary: dict[str, Any] = {"run_dir": str(path), "seconds": 0.0, "stages": []}
    first_stage, resume_state = 0, None
    latest = run.latest() if resume else None
    if latest:
        checkpoint, state = latest
        policy = Policy.load(checkpoint, device, config=config.model)
        summary = run.read_summary() or summary
        first_stage = state["stage_index"]
        if state.get("stage_step"):
            resume_state = state
            trainer_file = checkpoint / "trainer.pt"
            resume_state["trainer"] = torch.load(trainer_file, map_location=device) if trainer_file.exists() else None
        run.truncate_metrics(lambda r: r.get("stage_index", 0) < first_stage or (
            r.get("stage_index") == first_stage and r.get("step", 0) <= state.get("stage_step", 0)))
        began -= summary.get("seconds", 0.0)
    else:
        if resume:
            raise UserError(f"--resume: no checkpoint in '{path}'")
        # the ranks this run has, whoever started them: `--resume` starts as many again
        run.write_config(dump_config(config.model_copy(update={"procs": distributed.world()})))
        run.truncate_metrics(lambda record: False)  # lines of a run that crashed before any checkpoint
        policy = fresh_policy
    run.track(config.logging, config.log_completions_every, config.model_dump(mode="json"))
    # ranks built their policies from the same seed and corpus; make sure of it
    distributed.check_replicated("the tokenizer",
                                 zlib.crc32(json.dumps(sorted(policy.tokenizer.get_vocab().items())).encode()))
    distributed.broadcast_parameters(policy.model)
    summary["model_parameters"] = sum(p.numel() for p in policy.model.parameters())
    summary["allocator"] = allocator.loaded()
    # a resumed run's finished stages still count: their extras (warm start's completion length)
    # set how long later evaluations sample
    stage_extras: dict[str, Any] = {s["name"]: s for s in summary["stages"]}
    transfer = {t.name: make_task(t.name, t.options) for t in config.task.transfer}
    if first_stage == 0 and resume_state is None and "start" not in summary and starts_evaluated(config):
        started = time.time()
        def measure(levels, n, max_new, split):
            return evaluate(policy, task, levels, n, max_new_tokens=max_new, seed=1, split=split)

        evaluation, figures = stage_figures(config, policy, measure, transfer, eval_tokens(config, stage_extras),
                                            getattr(config.stages[0], "eval_problems", config.task.eval_problems))
        summary["start"] = {"name": "start", "kind": "start", **figures, "seconds": time.time() - started, "steps": 0}
        run.write_text("samples/start.txt", format_samples(evaluation.transcripts))
        run.write_text("samples/start.jsonl", sample_records(policy, evaluation))
        run.write_summary(summary)

    for index in range(first_stage, len(config.stages)):
        stage = config.stages[index]
        ctx = StageContext(config=config, policy=policy, task=task, run=run, stage_index=index,
                           stage_name=stage.name, progress=progress, resume_state=resume_state, rewards=rewards or {})
        if resume_state:
            ctx.started -= resume_state.get("stage_seconds", 0.0)
        resume_state = None
        result = STAGE_LOOPS[stage.kind](ctx, stage)
        stage_extras[stage.name] = result.extra
        stage_seconds = time.time() - ctx.started
        # the reported figures come from the test problems; the validation figure beside them is the
        # split every decision inside the stage was made on
        max_new = eval_tokens(config, stage_extras)
        evaluation, figures = stage_figures(config, policy, ctx.evaluate, transfer, max_new, stage.eval_problems)
        entry = {"name": stage.name, "kind": stage.kind, **figures, "seconds": stage_seconds, "steps": result.steps,
                 "stop_reason": result.stop_reason, **result.extra}
        summary["stages"] = [s for s in summary["stages"] if s["name"] != stage.name] + [entry]
        summary["seconds"] = time.time() - began
        run.log({"stage": stage.name, "stage_index": index, "step": result.steps, "event": "stage_end",
                 **{k: v for k, v in entry.items() if k not in ("name", "kind")}})
        run.write_text(f"samples/{stage.name}.txt", format_samples(evaluation.transcripts))
        run.write_text(f"samples/{stage.name}.jsonl", sample_records(policy, evaluation))
        run.save_policy(stage.name, policy)
        # summary first: a crash between the two then reruns the stage's tail instead of
        # resuming past a stage the summary never recorded
        run.write_summary(summary)
        run.save_latest(policy, None, {"stage_index": index + 1, "stage_step": 0})
    run.close()
    if run.writes:
        try:
            from shrinkthink.report import plot_run, write_report

            summary["plots"] = [str(p) for p in plot_run(run.path)]
            summary["report"] = str(write_report(run.path).path)
        except Exception as error:  # a plot must never cost the run its results
            summary["plots_error"] = f"{type(error).__name__}: {error}"
    summary["seconds"] = time.time() - began
    run.write_summary(summary)
    return summary


def shown_transcripts(transcripts, per_level: int = 3) -> list:
    """The first `per_level` held-out transcripts of each level: the same problems after every stage."""
    shown: dict[int, int] = {}
    kept = []
    for problem, text, score in transcripts:
        if shown.get(problem.level, 0) < per_level:
            shown[problem.level] = shown.get(problem.level, 0) + 1
            kept.append((problem, text, score))
    return kept


def format_samples(transcripts, per_level: int = 3) -> str:
    """A few held-out transcripts per level, for a person to read."""
    return "\n".join(f"### level {problem.level}  score {score:.0f}  answer {problem.answer}\n"
                     f"{problem.prompt}\n---\n{text}\n"
                     for problem, text, score in shown_transcripts(transcripts, per_level))


def sample_records(policy: Policy, evaluation: Evaluation, per_level: int = 3) -> str:
    """`format_samples`'s transcripts as JSON lines, for the report's transcript viewer."""
    return "".join(json.dumps({"id": problem.id, "level": problem.level, "prompt": problem.prompt,
                               "answer": problem.answer, "completion": text, "score": score,
                               "reasoning_tokens": policy.count_tokens(reasoning_part(text)),
                               "latent_steps": evaluation.latent_steps}) + "\n"
                   for problem, text, score in shown_transcripts(evaluation.transcripts, per_level))


def format_table(summary: dict[str, Any]) -> str:
    """The table the CLI prints at the end of a run."""
    rows = [("stage", "test accuracy", "95% interval", "by level", "reasoning tok", "digression", "steps", "seconds")]
    for s in ([summary["start"]] if "start" in summary else []) + summary["stages"]:
        by_level = " ".join(f"{k}:{v:.2f}" for k, v in s["accuracy_by_level"].items())
        digression = "-" if s["digression_share"] is None else f"{s['digression_share']:.2f}"
        low, high = wilson_interval(s["accuracy"], s.get("test_problems", 0))
        rows.append((s["name"], f"{s['accuracy']:.3f}", f"{low:.3f}-{high:.3f}", by_level,
                     f"{s['mean_reasoning_tokens']:.1f}", digression, str(s["steps"]), f"{s['seconds']:.0f}"))
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    lines = ["  ".join(cell.ljust(w) for cell, w in zip(row, widths)) for row in rows]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(lines) + f"\n\nrun dir: {summary['run_dir']}   total: {summary['seconds']:.0f} s"
