"""Plots a person can look at: for each stage, held-out accuracy and visible reasoning tokens
against step, the reward, and the level the curriculum stands at.

    python -m shrinkthink.report runs/quickstart   # writes runs/quickstart/plots/*.png
"""

from __future__ import annotations

import json
from collections import defaultdict
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402


def read_metrics(run_dir: Path) -> list[dict]:
    records = []
    for line in (run_dir / "metrics.jsonl").read_text().splitlines():
        try:
            records.append(json.loads(line))
        except json.JSONDecodeError:
            continue
    return records


def plot_run(run_dir: str | Path) -> list[Path]:
    run_dir = Path(run_dir)
    records = [r for r in read_metrics(run_dir) if r.get("event") != "stage_end"]
    stages: dict[str, list[dict]] = defaultdict(list)
    for record in records:
        stages[record["stage"]].append(record)
    out = run_dir / "plots"
    out.mkdir(exist_ok=True)
    written = []

    panels = [
        ("accuracy", "held-out greedy accuracy (current level)"),
        ("eval_reasoning_tokens", "held-out reasoning tokens"),
        ("reward", "mean reward (train batch)"),
        ("level", "curriculum level"),
        ("loss", "supervised loss"),
        ("zero_variance_share", "groups with zero reward variance"),
        ("mean_reasoning_tokens", "reasoning tokens (train batch)"),
        ("*_value", "controllers (penalty weight, token budget)"),
    ]
    figure, axes = plt.subplots(2, 4, figsize=(20, 8))
    offset = 0
    for name, rows in stages.items():
        steps = [offset + r["step"] for r in rows if "event" not in r]
        rows = [r for r in rows if "event" not in r]
        for axis, (key, title) in zip(axes.flat, panels):
            keys = sorted({k for r in rows for k in r if k.endswith("_value")}) if key == "*_value" else [key]
            for k in keys:
                points = [(s, r[k]) for s, r in zip(steps, rows) if isinstance(r.get(k), (int, float))]
                if points:
                    label = name if key != "*_value" else f"{name}: {k.removesuffix('_value')}"
                    axis.plot(*zip(*points), marker="." if key in ("accuracy", "eval_reasoning_tokens") else None,
                              label=label)
            axis.set_title(title)
            axis.set_xlabel("step (all stages)")
        offset = steps[-1] if steps else offset
        for axis in axes.flat:
            axis.axvline(offset, color="grey", linewidth=0.5)
    for axis in axes.flat:
        if any(not line.get_label().startswith("_") for line in axis.lines):
            axis.legend(fontsize=8)
    figure.suptitle(f"shrinkthink run: {run_dir.name}")
    figure.tight_layout()
    path = out / "curves.png"
    figure.savefig(path, dpi=90)
    plt.close(figure)
    written.append(path)

    summary_path = run_dir / "summary.json"
    if summary_path.is_file():
        summary = json.loads(summary_path.read_text())
        if summary.get("stages"):
            figure, axis = plt.subplots(figsize=(7, 5))
            for stage in summary["stages"]:
                axis.scatter(stage["mean_reasoning_tokens"], stage["accuracy"], s=60)
                axis.annotate(stage["name"], (stage["mean_reasoning_tokens"], stage["accuracy"]),
                              textcoords="offset points", xytext=(5, 5))
            axis.set_xlabel("mean visible reasoning tokens (held-out)")
            axis.set_ylabel("held-out greedy accuracy (eval levels)")
            axis.set_title("accuracy vs reasoning tokens, per stage")
            axis.set_ylim(-0.05, 1.05)
            figure.tight_layout()
            path = out / "accuracy_vs_tokens.png"
            figure.savefig(path, dpi=90)
            plt.close(figure)
            written.append(path)
    return written

