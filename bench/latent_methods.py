"""Each way of internalising the reasoning, from one shrink checkpoint, for the same training budget
(the same updates of the same batch size): one table of test accuracy with its 95% interval,
visible reasoning tokens, latent steps, training seconds, greedy answers per second (batched),
inference FLOPs per answer and parameters. Every run is the library's pipeline with one latent
stage; nothing inside a run decides on test problems (no gate is set: each ends on its budget).

    python bench/latent_methods.py --base runs/quickstart-...       # a finished quickstart run
    python bench/latent_methods.py --base RUN --methods shrink coconut small
    python bench/latent_methods.py --base RUN --smoke                # the plumbing, in minutes

The checkpoint is the base run's `checkpoints/anneal` if present, else `checkpoints/shrink`. Rows:
- shrink: the checkpoint itself, no training (explicit short reasoning): a latent stage of 0
  steps, which also builds the reasoning pool (the checkpoint's own verified greedy transcripts,
  gold steps where it fails) that every other row trains on;
- no_reasoning: iCoT with all reasoning removed from the first step (`drop_all_after: 0`);
- icot: configs/quickstart-icot.yaml's stepwise removal, its removal rate scaled to the budget;
- coconut: the base run's latent stage (continuous thoughts), `steps_per_stage` scaled so the
  curriculum completes in the budget;
- pause: the same curriculum and fields with learned pause tokens (`method: pause`);
- ccot25, ccot50: compressed chain of thought at `compression_ratio` 0.25 and 0.5 (`method: ccot`);
- small: a tiny model of a smaller depth, from scratch, fine-tuned on the same pool (an iCoT stage
  that never removes a token is plain supervised fine-tuning), with the checkpoint's tokenizer so
  that tokens compare; the depth is the one whose estimated FLOPs per answer are closest to
  COCONUT's (the claim under test: thinking in the forward passes is cheaper to run than a small
  model trained on the transcripts).

Inference FLOPs per answer ≈ 2 × N × (P + L + V) (Kaplan et al. 2020, C ≈ 2N per position): N the
non-embedding parameters (the tied output projection left out with the embeddings), P the mean
prompt tokens, L the latent steps plus their two markers (<bot>, <eot>) when there are any, V the
mean tokens generated (reasoning, answer, end-of-sequence).

Each row runs in its own folder of `--out`; a finished one is read back, an interrupted one
resumes, so a re-run only prints. The last line is machine-readable:
`ccot25_acc=.. no_reasoning_acc=.. shrink_acc=.. ccot25_meets_half_gap=<true|false> best_latent=..`,
where meeting the half gap means CCoT at r = 0.25 reaches no_reasoning + half the gap to shrink
with no visible reasoning.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import shutil
import sys
import time
from pathlib import Path

import torch
import yaml
from pydantic import ValidationError

os.environ.setdefault("HF_HUB_OFFLINE", "1")

from transformers import AutoTokenizer, LlamaForCausalLM  # noqa: E402

from shrinkthink.config import RunConfig, format_validation_error, load_config  # noqa: E402
from shrinkthink.errors import UserError  # noqa: E402
from shrinkthink.evaluate import wilson_interval  # noqa: E402
from shrinkthink.model import tiny_config, tiny_policy  # noqa: E402
from shrinkthink.pipeline import run_pipeline  # noqa: E402
from shrinkthink.policy import Policy  # noqa: E402
from shrinkthink.tasks import make_task  # noqa: E402
from shrinkthink.tasks.base import ANSWER_PREFIX  # noqa: E402

METHODS = ["shrink", "no_reasoning", "icot", "coconut", "pause", "ccot25", "ccot50", "small"]
LATENT_METHODS = ["icot", "coconut", "pause", "ccot25", "ccot50"]  # best_latent is the most accurate of these
CCOT_RATIOS = {"ccot25": 0.25, "ccot50": 0.5}
# the latent stage's fields every method reads; a CCoT stage gets these and its own defaults
COMMON_FIELDS = ("kind", "levels", "source", "pool_problems", "batch_size", "lr", "warmup_steps", "max_new_tokens",
                 "max_grad_norm")
ICOT_CONFIG = Path(__file__).resolve().parents[1] / "configs" / "quickstart-icot.yaml"
SMOKE = {"steps": 12, "problems": 25, "pool_problems": 20, "validation_problems": 2, "speed_problems": 25}


def base_checkpoint(base: Path) -> Path:
    """The base run's last shrink checkpoint: anneal if it ran, else shrink."""
    for name in ("anneal", "shrink"):
        if (base / "checkpoints" / name / "config.json").is_file():
            return base / "checkpoints" / name
    raise UserError(f"--base: '{base}' has neither checkpoints/anneal nor checkpoints/shrink")


def latent_template(config: RunConfig, method: str) -> dict:
    """The config's first latent stage of `method`, as plain data."""
    stage = next((s for s in config.stages if s.kind == "latent" and s.method == method), None)
    if stage is None:
        raise UserError(f"config '{config.name}': no latent stage with method {method} to scale")
    return stage.model_dump(mode="json")


def scaled(value: int, base_steps: int, steps: int) -> int:
    """A step count of the template rescaled to this budget (at least 1)."""
    return max(1, round(value * steps / base_steps))


def curriculum_stage(coconut: dict, steps: int) -> dict:
    """The COCONUT (or pause) stage over `steps`: each curriculum stage the template's share of the
    budget, so every stage, the all-latent one included, is reached."""
    stage = dict(coconut, steps=steps, steps_per_stage=scaled(coconut["steps_per_stage"], coconut["steps"], steps))
    stages_before_last = coconut["max_latent_stage"] + 1 - coconut["start_stage"]
    if stages_before_last * stage["steps_per_stage"] >= steps:
        # a budget too small for the template's shares: whatever is left after the earlier stages
        stage["steps_per_stage"] = max(1, (steps - 1) // (stages_before_last + 1))
    if stages_before_last * stage["steps_per_stage"] >= steps:
        stage["final_decay"] = False  # the config rejects a decay that would never start
    return stage


def method_stage(method: str, coconut: dict, icot: dict, steps: int, small_lr: float) -> dict:
    """The latent stage of one row (name and evaluation sizes are set by the caller)."""
    common = {k: coconut[k] for k in COMMON_FIELDS}
    if method == "shrink":
        return dict(icot, steps=0)  # no update: the checkpoint as it is (and the pool built)
    if method == "no_reasoning":
        return dict(icot, steps=steps, drop_all_after=0)
    if method == "icot":
        return dict(icot, steps=steps,
                    remove_every_steps=scaled(icot["remove_every_steps"], icot["steps"], steps))
    if method == "coconut":
        return curriculum_stage(coconut, steps)
    if method == "pause":
        return dict(curriculum_stage(coconut, steps), method="pause")
    if method in CCOT_RATIOS:
        return dict(common, method="ccot", steps=steps, compression_ratio=CCOT_RATIOS[method])
    if method == "small":
        # the schedule never reaches its first removal: supervised fine-tuning on whole transcripts,
        # at the warm start's learning rate, as a model from scratch needs
        return dict(common, method="icot", steps=steps, lr=small_lr, remove_tokens=1, remove_every_steps=steps + 1,
                    smoothing_lambda=None, max_offset=0, drop_all_after=None)
    raise ValueError(method)


def nonembedding(model) -> int:
    """Parameters outside the input embedding and the output projection (one matrix when tied)."""
    skip = {id(model.get_input_embeddings().weight)}
    if model.get_output_embeddings() is not None:
        skip.add(id(model.get_output_embeddings().weight))
    return sum(p.numel() for p in model.parameters() if id(p) not in skip)


def tiny_nonembedding(depth: int, vocab_size: int) -> int:
    with torch.device("meta"):  # counted, never allocated
        return nonembedding(LlamaForCausalLM(tiny_config(depth, vocab_size)))


def choose_depth(base_nonembedding: int, vocab_size: int, target_flops: float, positions: float) -> tuple[int, list]:
    """The tiny depth, smaller than the checkpoint, whose 2·N·positions is closest to `target_flops`;
    with every candidate's (depth, N, FLOPs)."""
    candidates = []
    for depth in range(1, 33):
        n = tiny_nonembedding(depth, vocab_size)
        if n >= base_nonembedding:
            break
        candidates.append((depth, n, 2 * n * positions))
    if not candidates:
        raise UserError("small: no tiny depth has fewer parameters than the checkpoint")
    best = min(candidates, key=lambda c: abs(c[2] - target_flops))
    return best[0], candidates


def small_init(folder: Path, checkpoint: Path, depth: int, seed: int) -> Path:
    """A fresh tiny model of `depth` with the checkpoint's own tokenizer, saved once."""
    if not (folder / "config.json").is_file():
        tokenizer = AutoTokenizer.from_pretrained(checkpoint, local_files_only=True)
        model, tokenizer = tiny_policy(depth, seed=seed, tokenizer=tokenizer)
        model.save_pretrained(folder, safe_serialization=True)
        tokenizer.save_pretrained(folder)
    return folder


def check_same_run(run_dir: Path, config: RunConfig) -> None:
    """A folder that holds a run of another config (another budget, another --problems) is not
    read back as this one."""
    if not (run_dir / "config.yaml").is_file():
        return
    ours = config.model_dump(mode="json")
    try:
        # validated again, so that fields the library gained since keep their defaults on both sides
        saved = RunConfig.model_validate(yaml.safe_load((run_dir / "config.yaml").read_text())).model_dump(mode="json")
    except ValidationError:
        saved = {}
    if any(saved.get(k) != ours[k] for k in ("seed", "model", "task", "stages")):
        raise UserError(f"--out: '{run_dir}' holds a run of another config (budget or problem counts differ); "
                        "choose another --out or remove it")


def training_seconds(run_dir: Path, stage: str) -> float:
    """The sum of the stage's per-step seconds: training alone, no pool, no evaluation."""
    total = 0.0
    for line in (run_dir / "metrics.jsonl").read_text().splitlines():
        record = json.loads(line)
        if record.get("stage") == stage and "seconds" in record and record.get("event") != "stage_end":
            total += record["seconds"]
    return total


def measure(run_dir: Path, method: str, config: RunConfig, entry: dict, speed_problems: int, repeats: int) -> dict:
    """Answers per second (the fastest of `repeats` batched greedy passes over the same test
    prompts), parameters, and the FLOPs per answer from the test evaluation's token counts."""
    policy = Policy.load(run_dir / "checkpoints" / method, "cpu", config=config.model)
    task = make_task(config.task.name, config.task.options)
    levels = config.task.eval_levels
    problems = [p for level in levels for p in task.problems(level, config.task.eval_problems, "test", seed=1)]
    prompt_tokens = sum(len(policy.prompt_ids(p.prompt)) for p in problems) / len(problems)
    answer_tokens = sum(len(policy.completion_ids(ANSWER_PREFIX + p.answer)) for p in problems) / len(problems)
    per_level = max(1, math.ceil(speed_problems / len(levels)))
    timed = [policy.prompt_ids(p.prompt) for level in levels for p in task.problems(level, per_level, "test", seed=1)]
    cap = entry["max_new_tokens"]
    policy.sample(timed[:8], max_new_tokens=cap, greedy=True)  # first-call allocations stay out of the timing
    seconds = math.inf
    for _ in range(repeats):  # the fastest pass: the others lost time to whatever else the machine ran
        began = time.perf_counter()
        policy.sample(timed, max_new_tokens=cap, greedy=True)
        seconds = min(seconds, time.perf_counter() - began)
    latent = entry["latent_steps"] + (2 if entry["latent_steps"] else 0)
    positions = prompt_tokens + latent + entry["mean_completion_tokens"]
    n = nonembedding(policy.model)
    return {"answers_per_s": len(timed) / seconds, "parameters": sum(p.numel() for p in policy.model.parameters()),
            "nonembedding_parameters": n, "prompt_tokens": prompt_tokens, "answer_tokens": answer_tokens,
            "positions": positions, "flops_per_answer": 2 * n * positions,
            "vocab_size": policy.model.get_input_embeddings().num_embeddings}


def run_row(method: str, stage: dict, data: dict, model: dict, out: Path, pool: Path | None,
            speed: tuple[int, int], extra: dict) -> dict:
    """Train (or resume, or read back) one row and measure it; `extra` is kept with it."""
    run_dir = out / method
    config = RunConfig.model_validate({**data, "name": method, "model": model, "stages": [stage]})
    check_same_run(run_dir, config)
    if (run_dir / "row.json").is_file():
        return json.loads((run_dir / "row.json").read_text())
    if not (run_dir / "summary.json").is_file() or not (run_dir / "checkpoints" / method).is_dir():
        resume = (run_dir / "checkpoints" / "latest").is_dir()
        if pool is not None and not resume:
            # the pool is the checkpoint's greedy output: built once (the shrink row), read by every run
            (run_dir / "latent").mkdir(parents=True, exist_ok=True)
            shutil.copyfile(pool, run_dir / "latent" / f"{method}.jsonl")
        run_pipeline(config, run_dir=str(run_dir), resume=resume, progress=False)
    summary = json.loads((run_dir / "summary.json").read_text())
    entry = summary["stages"][-1]
    row = {"method": method, "accuracy": entry["accuracy"], "test_problems": entry["test_problems"],
           "validation_accuracy": entry["validation_accuracy"], "by_level": entry["accuracy_by_level"],
           "reasoning_tokens": entry["mean_reasoning_tokens"], "completion_tokens": entry["mean_completion_tokens"],
           "latent_steps": entry["latent_steps"], "steps": entry["steps"], "batch_size": stage["batch_size"],
           "curriculum_final": entry.get("curriculum_final"), "policy_source_share": entry.get("policy_source_share"),
           "training_seconds": training_seconds(run_dir, method), "stage_seconds": entry["seconds"],
           **measure(run_dir, method, config, entry, *speed), **extra}
    (run_dir / "row.json").write_text(json.dumps(row, indent=2))
    return row


def print_table(rows: list[dict]) -> None:
    print("| method | test acc | 95% interval | reasoning tok | latent steps | train s | answers/s | "
          "MFLOP/answer | params |")
    print("|---|---:|---:|---:|---:|---:|---:|---:|---:|")
    for r in rows:
        low, high = wilson_interval(r["accuracy"], r["test_problems"])
        print(f"| {r['method']} | {r['accuracy']:.3f} | {low:.3f}-{high:.3f} | {r['reasoning_tokens']:.1f} | "
              f"{r['latent_steps']} | {r['training_seconds']:.0f} | {r['answers_per_s']:.1f} | "
              f"{r['flops_per_answer'] / 1e6:.1f} | {r['parameters'] / 1e6:.3f}M |")


def verdict(by_method: dict) -> str:
    """The machine-readable last line."""
    def acc(method: str) -> str:
        return f"{by_method[method]['accuracy']:.3f}" if method in by_method else "nan"

    meets = False
    if {"ccot25", "no_reasoning", "shrink"} <= set(by_method):
        ccot, none, shrink = (by_method[m] for m in ("ccot25", "no_reasoning", "shrink"))
        # "no visible reasoning": under half a token a answer on average
        meets = (ccot["accuracy"] >= none["accuracy"] + 0.5 * (shrink["accuracy"] - none["accuracy"])
                 and ccot["reasoning_tokens"] < 0.5)
    latent = [by_method[m] for m in LATENT_METHODS if m in by_method]
    best = max(latent, key=lambda r: r["accuracy"])["method"] if latent else "none"
    return (f"ccot25_acc={acc('ccot25')} no_reasoning_acc={acc('no_reasoning')} shrink_acc={acc('shrink')} "
            f"ccot25_meets_half_gap={str(meets).lower()} best_latent={best}")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--base", required=True, help="a finished quickstart run (its config.yaml and checkpoints)")
    parser.add_argument("--steps", type=int, default=None,
                        help="updates of every trained row, each of the latent stage's batch size (default 1000; "
                             f"{SMOKE['steps']} with --smoke)")
    parser.add_argument("--problems", type=int, default=500,
                        help="test problems, pooled over the evaluation levels (split evenly among them)")
    parser.add_argument("--validation-problems", type=int, default=20,
                        help="validation problems per level (each run's own figure; no decision reads it)")
    parser.add_argument("--speed-problems", type=int, default=200, help="test prompts in the timed batched pass")
    parser.add_argument("--speed-repeats", type=int, default=3, help="timed passes; the fastest is reported")
    parser.add_argument("--methods", nargs="+", default=METHODS, choices=METHODS,
                        help="rows to run (shrink always runs: it builds the pool and is the reference)")
    parser.add_argument("--icot-config", default=str(ICOT_CONFIG), help="the config whose iCoT stage is scaled")
    parser.add_argument("--out", default=None, help="default bench/out/latent_methods (…_smoke with --smoke)")
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--smoke", action="store_true",
                        help=f"plumbing only: {SMOKE['steps']} steps, {SMOKE['problems']} test problems, "
                             f"{SMOKE['pool_problems']} pool problems a level")
    args = parser.parse_args()
    steps = args.steps if args.steps is not None else SMOKE["steps"] if args.smoke else 1000
    if args.smoke:
        args.problems, args.validation_problems = SMOKE["problems"], SMOKE["validation_problems"]
        args.speed_problems = SMOKE["speed_problems"]
    out = Path(args.out or ("bench/out/latent_methods_smoke" if args.smoke else "bench/out/latent_methods"))
    methods = ["shrink"] + [m for m in METHODS if m in args.methods and m != "shrink"]
    if args.threads:
        torch.set_num_threads(args.threads)

    try:
        base = Path(args.base)
        checkpoint = base_checkpoint(base)
        base_config = load_config(base / "config.yaml")
        has_latent = any(s.kind == "latent" and s.method == "coconut" for s in base_config.stages)
        coconut = latent_template(base_config if has_latent else load_config(), "coconut")
        icot = latent_template(load_config(args.icot_config), "icot")
    except UserError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    warm = next((s for s in base_config.stages if s.kind == "warmstart"), None)
    small_lr = warm.lr if warm is not None else coconut["lr"]
    data = base_config.model_dump(mode="json")
    levels = data["task"]["eval_levels"]
    data.update(procs=1, threads=args.threads, task={
        **data["task"], "eval_problems": max(1, math.ceil(args.problems / len(levels))), "eval_start": False,
        "transfer": []})
    sizes = {"eval_every": max(1, steps), "eval_problems": args.validation_problems}
    if args.smoke:
        coconut["pool_problems"] = icot["pool_problems"] = SMOKE["pool_problems"]
    # every row draws its pool from the same problems: the COCONUT stage's levels and count
    icot.update(levels=coconut["levels"], pool_problems=coconut["pool_problems"], source=coconut["source"],
                max_new_tokens=coconut["max_new_tokens"])
    checkpoint_model = {"kind": "pretrained", "path": str(checkpoint)}

    rows, pool = [], None
    for method in methods:
        stage = {**method_stage(method, coconut, icot, steps, small_lr), "name": method, **sizes}
        model, extra = checkpoint_model, {}
        if method == "small":
            reference = rows[0]
            # COCONUT's answer: the prompt, its thoughts and markers, then the answer line alone
            thoughts = coconut["thoughts_per_step"] * coconut["max_latent_stage"]
            target = 2 * reference["nonembedding_parameters"] * (
                reference["prompt_tokens"] + thoughts + 2 + reference["answer_tokens"])
            depth, candidates = choose_depth(reference["nonembedding_parameters"], reference["vocab_size"], target,
                                             reference["positions"])
            print(f"small: COCONUT's estimated {target / 1e6:.1f} MFLOP/answer; the small model writes the "
                  f"checkpoint's {reference['positions']:.1f} positions: "
                  + ", ".join(f"depth {d} {2 * n * reference['positions'] / 1e6:.1f}" for d, n, _ in candidates)
                  + f" -> depth {depth}", flush=True)
            model = {"kind": "pretrained", "path": str(small_init(out / f"small_init_depth{depth}", checkpoint,
                                                                  depth, data["seed"]))}
            extra = {"depth": depth, "estimated_coconut_flops": target}
        began = time.time()
        try:
            row = run_row(method, stage, data, model, out, pool, (args.speed_problems, args.speed_repeats),
                          extra)
        except ValidationError as error:
            # a method the library does not have yet (or a field it does not take) skips its row
            print(f"{method}: skipped: {format_validation_error(error, 'stage')}", file=sys.stderr, flush=True)
            continue
        except UserError as error:
            print(f"error: {method}: {error}", file=sys.stderr)
            return 2
        if method == "shrink":
            pool = out / "shrink" / "latent" / "shrink.jsonl"
        rows.append(row)
        print(f"{method}: {time.time() - began:.0f} s  " + json.dumps(
            {k: row[k] for k in ("accuracy", "reasoning_tokens", "latent_steps", "training_seconds", "answers_per_s",
                                 "flops_per_answer")}), flush=True)

    print(f"\nmachine: {platform.machine()}, {os.cpu_count()} CPUs, torch threads {torch.get_num_threads()}, "
          f"python {platform.python_version()}")
    print(f"checkpoint: {checkpoint}; budget: {steps} updates of {coconut['batch_size']} sequences a row; "
          f"test: {rows[0]['test_problems'] if rows else 0} problems over levels {levels}\n")
    print_table(rows)
    out.mkdir(parents=True, exist_ok=True)
    (out / "results.json").write_text(json.dumps({"checkpoint": str(checkpoint), "steps": steps, "rows": rows},
                                                 indent=2))
    print()
    print(verdict({r["method"]: r for r in rows}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
