"""Each way of tightening, from one explore checkpoint, for the same budget of steps: one table of
test accuracy with its 95% interval, mean reasoning tokens, digression share, share of all-valid
transcripts and wall time. Every decision inside the runs (controllers, gates) is made on the
validation problems; the table's figures come from the test problems.

    python bench/shrink_methods.py --base runs/quickstart-...   # a finished quickstart run
    python bench/shrink_methods.py                                # runs warm start + explore first

Methods (all from the explore checkpoint, except the ablation):
- ramped_penalty: RL with `correct - lambda * tokens / reference`, lambda doubled each round while
  accuracy holds (the method);
- penalty_from_start: the ablation the method warns against: explore again from the warm-start
  checkpoint with the same penalty (the ramp's final lambda) on from its first step, for as many
  steps as the base run's explore took plus this budget;
- shrinking_budget: RL with a token budget that shrinks by 0.8 each round while accuracy holds;
- critic_finetune: no RL; fine-tune on winners pruned by the ablation critic;
- paraphrase_finetune: no RL; fine-tune on winners rewritten by the task's paraphraser;
- group_length: RL with Kimi k1.5's group-relative length reward;
- graded_validity: RL with correctness scaled by the share of valid lines (the task's step checker);
- validity_critic: the same RL, plus fine-tuning on winners the keep-rest ablation critic pruned.

With a config of several shrink stages (the quickstart's shrink and anneal), the first with editors is
the template (its fine-tuning learning rate is the editors' methods'), else the first.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
from pathlib import Path

import yaml

os.environ.setdefault("HF_HUB_OFFLINE", "1")

from shrinkthink.config import RunConfig, load_config  # noqa: E402
from shrinkthink.errors import UserError  # noqa: E402
from shrinkthink.evaluate import wilson_interval  # noqa: E402
from shrinkthink.pipeline import run_pipeline  # noqa: E402

METHODS = ["ramped_penalty", "penalty_from_start", "shrinking_budget", "critic_finetune", "paraphrase_finetune",
           "group_length", "graded_validity", "validity_critic"]
DEFAULT_PENALTY = {"name": "length_penalty", "start": 0.02, "factor": 2.0}


def shrink_stage(base: dict, method: str, steps: int) -> dict:
    """The quickstart's shrink stage with only `method`'s way of tightening switched on."""
    stage = {k: v for k, v in base.items() if k not in ("criteria", "editors", "rl")}
    # every method ends where its budget leaves it (no restore-best), so the table compares the
    # methods themselves
    stage.update(name=method, steps=steps, criteria=[], editors=[], rl=True, restore_best=False)
    if method in ("ramped_penalty", "group_length"):
        # a weighted term keeps its weight only without per-group scaling (config.py)
        stage["learner"] = {**base["learner"], "scale_rewards": "batch"}
    if method == "ramped_penalty":
        stage["criteria"] = [penalty(base)]
    elif method == "shrinking_budget":
        stage["criteria"] = [{"name": "token_budget", "factor": 0.8}]
    elif method == "critic_finetune":
        stage.update(rl=False, editors=[{"name": "ablation_critic"}])
    elif method == "paraphrase_finetune":
        stage.update(rl=False, editors=[{"name": "paraphrase"}])
    elif method == "group_length":
        stage["criteria"] = [{"name": "group_length", "weight": 0.5}]
    elif method == "graded_validity":
        stage["criteria"] = [{"name": "step_validity", "graded": True}]
    elif method == "validity_critic":
        stage.update(criteria=[{"name": "step_validity", "graded": True}],
                     editors=[{"name": "ablation_critic", "mode": "keep_rest"}])
    return stage


def first_stage(stages: list[dict], kind: str, config: str | None) -> dict:
    """The config's first stage of `kind`; for `shrink`, the first with editors if one has them."""
    of_kind = [s for s in stages if s["kind"] == kind]
    if not of_kind:
        raise UserError(f"{config or 'the quickstart config'}: stages: no {kind} stage to compare from")
    return next((s for s in of_kind if kind == "shrink" and s["editors"]), of_kind[0])


def penalty(shrink: dict) -> dict:
    """The shrink stage's length penalty, or a tiny ramped one when it has none."""
    return next((c for c in shrink["criteria"] if c["name"] == "length_penalty"), DEFAULT_PENALTY)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", default=None,
                        help="the run config whose shrink stage is varied (default: quickstart)")
    parser.add_argument("--base", default=None, help="a finished run of the config's warmstart and explore stages")
    parser.add_argument("--steps", type=int, default=100, help="step budget of every method")
    parser.add_argument("--methods", nargs="+", default=METHODS, choices=METHODS)
    parser.add_argument("--out", default="bench/out/shrink_methods")
    parser.add_argument("--threads", type=int, default=None)
    args = parser.parse_args()

    try:
        config = load_config(args.config)
        data = config.model_dump(mode="json")
        stages = {kind: first_stage(data["stages"], kind, args.config) for kind in ("warmstart", "explore", "shrink")}
    except UserError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    out = Path(args.out)
    base = Path(args.base) if args.base else out / "base"
    if not (base / "checkpoints" / "explore").is_dir():
        base_config = RunConfig.model_validate({**data, "stages": [stages["warmstart"], stages["explore"]],
                                                "threads": args.threads})
        print(f"training the base run (warm start + explore) in {base}", flush=True)
        run_pipeline(base_config, run_dir=str(base), progress=False)
    warm_checkpoint = base / "checkpoints" / stages["warmstart"]["name"]
    explore_checkpoint = base / "checkpoints" / stages["explore"]["name"]
    # the base run's explore stage (a whole quickstart run has shrink and latent stages after it)
    explored = next(s for s in json.loads((base / "summary.json").read_text())["stages"]
                    if s["name"] == stages["explore"]["name"])

    rows = []
    lambda_after_ramp = None
    for method in args.methods:
        run_dir = out / method
        if method == "penalty_from_start":
            # the same penalty, from the first explore step: the ramp's final lambda, held fixed
            lam = lambda_after_ramp or penalty(stages["shrink"])["start"]
            # as many steps as explore took plus this budget, with no gate to end it sooner
            explore = dict(stages["explore"], name=method, steps=explored["steps"] + args.steps, gate={},
                           criteria=[{"name": "length_penalty", "start": lam, "factor": 1.0}],
                           learner={**stages["explore"]["learner"], "scale_rewards": "batch"})
            model, stage = str(warm_checkpoint), explore
        else:
            model, stage = str(explore_checkpoint), shrink_stage(stages["shrink"], method, args.steps)
        run_config = RunConfig.model_validate({
            **data, "name": method, "threads": args.threads,
            "model": {"kind": "pretrained", "path": model}, "stages": [stage],
        })
        began = time.time()
        summary = run_pipeline(run_config, run_dir=str(run_dir), resume=(run_dir / "checkpoints").exists(),
                               progress=False)
        entry = summary["stages"][-1]
        if method == "ramped_penalty":
            lambda_after_ramp = entry["controllers"]["length_penalty"]["value"]
        rows.append({"method": method, "accuracy": entry["accuracy"], "test_problems": entry["test_problems"],
                     "validation_accuracy": entry["validation_accuracy"],
                     "mean_reasoning_tokens": entry["mean_reasoning_tokens"],
                     "digression_share": entry["digression_share"], "valid_step_share": entry.get("valid_step_share"),
                     "seconds": time.time() - began, "steps": entry["steps"],
                     "by_level": entry["accuracy_by_level"]})
        print(json.dumps(rows[-1]), flush=True)

    print(f"\nmachine: {platform.machine()}, {os.cpu_count()} CPUs, python {platform.python_version()}")
    low, high = wilson_interval(explored["accuracy"], explored["test_problems"])
    print(f"base: {base} (explore: test accuracy {explored['accuracy']:.3f} [{low:.3f}, {high:.3f}] on "
          f"{explored['test_problems']} problems, reasoning tokens {explored['mean_reasoning_tokens']:.1f}, "
          f"digression {explored['digression_share']:.3f}, valid {explored.get('valid_step_share')})")
    header = (f"{'method':<20} {'accuracy':>8} {'95% interval':>13} {'reason tok':>10} {'tok vs explore':>14} "
              f"{'digression':>10} {'all valid':>9} {'seconds':>8}")
    print(header + "\n" + "-" * len(header))
    for r in rows:
        valid = "-" if r["valid_step_share"] is None else f"{r['valid_step_share']:.2f}"
        low, high = wilson_interval(r["accuracy"], r["test_problems"])
        print(f"{r['method']:<20} {r['accuracy']:>8.3f} {f'{low:.3f}-{high:.3f}':>13} "
              f"{r['mean_reasoning_tokens']:>10.1f} "
              f"{r['mean_reasoning_tokens'] / explored['mean_reasoning_tokens']:>14.2f} "
              f"{r['digression_share']:>10.3f} {valid:>9} {r['seconds']:>8.0f}")
    by_method = {r["method"]: r for r in rows}
    if {"ramped_penalty", "penalty_from_start"} <= set(by_method):
        ramped, early = by_method["ramped_penalty"], by_method["penalty_from_start"]
        print(f"ramped after convergence - from the first explore step: "
              f"{100 * (ramped['accuracy'] - early['accuracy']):+.1f} accuracy points, "
              f"{ramped['mean_reasoning_tokens'] - early['mean_reasoning_tokens']:+.1f} reasoning tokens")
    out.mkdir(parents=True, exist_ok=True)
    (out / "results.json").write_text(json.dumps({"explore": explored, "rows": rows}, indent=2))
    print(yaml.safe_dump({"steps": args.steps}).strip())
    return 0


if __name__ == "__main__":
    sys.exit(main())
