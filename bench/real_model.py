"""The curriculum on SmolLM2-135M-Instruct (configs/smollm2-cpu.yaml): one table of the model before
explore, after explore, after shrink, and (with --ablation) the same length pressure on from the first
explore step, each with test accuracy and its 95% interval, mean completion tokens, the share cut off by
the length cap, the transfer task and the wall time of each stage.

    python bench/real_model.py                      # runs the recipe, then prints the table
    python bench/real_model.py --run RUN_DIR        # reads a finished run
    python bench/real_model.py --run RUN_DIR --ablation   # and runs (or reads) the ablation beside it
    python bench/real_model.py --run RUN_DIR --latent 20  # a COCONUT stage from the shrink checkpoint

The ablation starts from the same pretrained model and runs one explore stage with the recipe's final
shrink pressure (the length penalty's lambda and the token budget where the shrink stage's controllers
left them) switched on from its first step, for as many steps as the recipe's explore and shrink took
together. `--latent N` runs N steps of a COCONUT stage from the shrink checkpoint (each first reasoning
line of the policy's own transcripts replaced by continuous thoughts) and prints its seconds a step: the
full stage is GPU work, this measures what it costs here. The last line is machine-readable:
    explore_gain_pts=X shrink_token_ratio=Y shrink_acc_delta_pts=Z wall_min=W
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
from pathlib import Path

os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")

from shrinkthink.config import RunConfig, load_config  # noqa: E402
from shrinkthink.errors import UserError  # noqa: E402
from shrinkthink.evaluate import wilson_interval  # noqa: E402
from shrinkthink.pipeline import run_pipeline  # noqa: E402

CONFIG = Path(__file__).resolve().parents[1] / "configs" / "smollm2-cpu.yaml"


def ablation_config(config: RunConfig, summary: dict) -> RunConfig:
    """One explore stage under the shrink stage's final pressure from its first step, for the steps
    the recipe's explore and shrink took together (no gate: it runs them all)."""
    data = config.model_dump(mode="json")
    explore = next(s for s in data["stages"] if s["kind"] == "explore")
    shrink = next(s for s in data["stages"] if s["kind"] == "shrink")
    entries = {s["name"]: s for s in summary["stages"]}
    controllers = entries[shrink["name"]].get("controllers") or {}
    criteria = []
    for criterion in shrink["criteria"]:
        state = controllers.get(criterion["name"], {})
        if criterion["name"] == "length_penalty":
            criteria.append({"name": "length_penalty", "start": state.get("value", criterion["start"]), "factor": 1.0})
        elif criterion["name"] == "token_budget" and state.get("value"):
            criteria.append({"name": "token_budget", "start_tokens": state["value"], "factor": 1.0})
        else:
            criteria.append(criterion)
    steps = entries[explore["name"]]["steps"] + entries[shrink["name"]]["steps"]
    stage = dict(explore, name="ablation", steps=steps, gate={}, criteria=criteria,
                 learner={**explore["learner"], "scale_rewards": shrink["learner"]["scale_rewards"]})
    return RunConfig.model_validate({**data, "name": f"{config.name}-ablation", "stages": [stage],
                                     "task": {**data["task"], "eval_start": False}})


def latent_config(config: RunConfig, run_dir: Path, steps: int) -> RunConfig:
    """A COCONUT stage on the shrink checkpoint: the first reasoning line of each of the policy's
    verified transcripts becomes two continuous thoughts, for `steps` updates."""
    data = config.model_dump(mode="json")
    shrink = next(s for s in data["stages"] if s["kind"] == "shrink")
    stage = {"name": "latent", "kind": "latent", "method": "coconut", "source": "policy",
             "levels": data["task"]["eval_levels"], "pool_problems": 64, "steps": steps, "batch_size": 8,
             "lr": 1e-5, "max_new_tokens": shrink["sampling"]["max_new_tokens"], "thoughts_per_step": 2,
             "start_stage": 1, "steps_per_stage": steps, "max_latent_stage": 1, "eval_every": steps,
             "eval_problems": 20, "checkpoint_every": steps}
    return RunConfig.model_validate({
        **data, "name": f"{config.name}-latent", "stages": [stage],
        "model": {**data["model"], "path": str(run_dir / "checkpoints" / shrink["name"])},
        "task": {**data["task"], "eval_start": False, "transfer": []}})


def row(name: str, entry: dict, transfer: str | None) -> dict:
    low, high = wilson_interval(entry["accuracy"], entry["test_problems"])
    other = (entry.get("transfer") or {}).get(transfer) if transfer else None
    return {"row": name, "accuracy": entry["accuracy"], "low": low, "high": high, "n": entry["test_problems"],
            "tokens": entry.get("mean_completion_tokens", entry["mean_reasoning_tokens"]),
            "cut_off": entry.get("truncated_share", 0.0), "steps": entry["steps"], "minutes": entry["seconds"] / 60,
            "transfer": None if other is None else other["accuracy"],
            "transfer_n": None if other is None else other["test_problems"]}


def print_table(rows: list[dict], transfer: str | None) -> None:
    header = (f"{'':<15} {'test acc':>8} {'95% interval':>13} {'n':>4} {'tokens':>7} {'cut off':>7} "
              f"{'transfer':>9} {'steps':>5} {'minutes':>7}")
    print(header + "\n" + "-" * len(header))
    for r in rows:
        other = "-" if r["transfer"] is None else f"{r['transfer']:.3f}"
        interval = f"{r['low']:.3f}-{r['high']:.3f}"
        print(f"{r['row']:<15} {r['accuracy']:>8.3f} {interval:>13} {r['n']:>4} "
              f"{r['tokens']:>7.1f} {r['cut_off']:>7.3f} {other:>9} {r['steps']:>5} {r['minutes']:>7.1f}")
    if transfer:
        n = next((r["transfer_n"] for r in rows if r["transfer_n"]), 0)
        print(f"transfer: {transfer}, {n} test problems, never trained on")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", default=str(CONFIG))
    parser.add_argument("--run", help="a finished run of the config (else the recipe runs first)")
    parser.add_argument("--out", default="bench/out/real_model", help="where the recipe and ablation runs go")
    parser.add_argument("--ablation", action="store_true",
                        help="also the same pressure from the first explore step (outside the recipe's time bound)")
    parser.add_argument("--latent", type=int, default=0, metavar="STEPS",
                        help="also this many steps of a COCONUT stage from the shrink checkpoint (its speed here)")
    parser.add_argument("overrides", nargs="*", help="config overrides, e.g. stages.explore.steps=5")
    args = parser.parse_args()
    try:
        config = load_config(args.config, args.overrides)
    except UserError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    out = Path(args.out)
    run_dir = Path(args.run) if args.run else out / "recipe"
    summary_file = run_dir / "summary.json"
    if not args.run or not summary_file.exists():
        began = time.time()
        run_pipeline(config, run_dir=str(run_dir), resume=(run_dir / "checkpoints").exists())
        print(f"recipe: {(time.time() - began) / 60:.1f} min in {run_dir}", flush=True)
    summary = json.loads(summary_file.read_text())
    transfer = config.task.transfer[0].name if config.task.transfer else None
    explore = next(s for s in summary["stages"] if s["kind"] == "explore")
    shrink = next(s for s in summary["stages"] if s["kind"] == "shrink")
    rows = [row("before explore", summary["start"], transfer), row("after explore", explore, transfer),
            row("after shrink", shrink, transfer)]
    if args.ablation:
        ablation_dir = out / "ablation"
        ablation = ablation_dir / "summary.json"
        if not ablation.exists():
            run_pipeline(ablation_config(config, summary), run_dir=str(ablation_dir),
                         resume=(ablation_dir / "checkpoints").exists())
        rows.append(row("ablation", json.loads(ablation.read_text())["stages"][0], transfer))
    latent = None
    if args.latent:
        latent_dir = out / "latent"
        began = time.time()
        if not (latent_dir / "summary.json").exists():
            run_pipeline(latent_config(config, run_dir, args.latent), run_dir=str(latent_dir),
                         resume=(latent_dir / "checkpoints").exists())
        entry = json.loads((latent_dir / "summary.json").read_text())["stages"][0]
        steps = [json.loads(line) for line in (latent_dir / "metrics.jsonl").read_text().splitlines()]
        seconds = [r["seconds"] for r in steps if r.get("stage") == "latent" and "loss" in r and "seconds" in r]
        latent = (entry, sum(seconds) / max(1, len(seconds)), time.time() - began)

    print(f"\nmachine: {platform.machine()}, {os.cpu_count()} CPUs, python {platform.python_version()}; "
          f"run: {run_dir}")
    print_table(rows, transfer)
    if latent:
        entry, per_step, _ = latent
        low, high = wilson_interval(entry["accuracy"], entry["test_problems"])
        print(f"COCONUT from the shrink checkpoint, {entry['steps']} steps: {per_step:.1f} s a step; test accuracy "
              f"{entry['accuracy']:.3f} ({low:.3f}-{high:.3f}, n={entry['test_problems']}), "
              f"{entry['mean_completion_tokens']:.1f} completion tokens, {entry['latent_steps']} thoughts")
    start, after_explore, after_shrink = rows[:3]
    print(f"explore_gain_pts={100 * (after_explore['accuracy'] - start['accuracy']):.1f} "
          f"shrink_token_ratio={after_shrink['tokens'] / after_explore['tokens']:.3f} "
          f"shrink_acc_delta_pts={100 * (after_shrink['accuracy'] - after_explore['accuracy']):.1f} "
          f"wall_min={summary['seconds'] / 60:.1f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
