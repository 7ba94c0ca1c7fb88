"""The report's figures, drawn with matplotlib (Agg): the accuracy-versus-tokens frontier, curves
over steps, accuracy per level. Each takes one run or several (`compare`): one run's lines are
coloured by what they measure, several runs' by run."""

from __future__ import annotations

import io
import math
from collections.abc import Callable
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
from matplotlib.figure import Figure  # noqa: E402

from shrinkthink.report.runs import Run  # noqa: E402

# (title, which metrics-line keys it draws)
PANELS: list[tuple[str, Callable[[str], bool]]] = [
    ("reward and its components (train batch)", lambda k: k == "reward" or k.startswith("reward_")),
    ("held-out accuracy (validation)", lambda k: k == "accuracy" or k.startswith("accuracy_level_")),
    ("reasoning tokens", lambda k: k in ("mean_reasoning_tokens", "eval_reasoning_tokens")),
    ("controller state", lambda k: k.endswith("_value")),
    ("sampling entropy (nats a token)", lambda k: k == "entropy"),
    ("groups with zero reward variance", lambda k: k == "zero_variance_share"),
    ("curriculum level", lambda k: k == "level"),
    ("latent steps (continuous thoughts)", lambda k: k == "latent_steps"),
    ("training loss", lambda k: k in ("loss", "learner_loss", "finetune_loss")),
]
LINE_STYLES = ["-", "--", ":", "-."]


def number(value: Any) -> float | None:
    """A finite number, else None (booleans, text, NaN and missing figures are not drawn)."""
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        return None
    return float(value)


def wilson_interval(accuracy: float, n: int, z: float = 1.96) -> tuple[float, float]:
    """evaluate.wilson_interval, here so that a report never imports torch (tests keep them equal)."""
    if n <= 0:
        return 0.0, 1.0
    centre = (accuracy + z * z / (2 * n)) / (1 + z * z / n)
    half = z * math.sqrt(accuracy * (1 - accuracy) / n + z * z / (4 * n * n)) / (1 + z * z / n)
    return max(0.0, centre - half), min(1.0, centre + half)


def to_png(figure: Figure, dpi: int = 90) -> bytes:
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", dpi=dpi)
    plt.close(figure)
    return buffer.getvalue()


def colour(i: int) -> Any:
    return plt.get_cmap("tab10")(i % 10)


def frontier_figure(runs: list[Run]) -> Figure | None:
    """Test accuracy against mean visible reasoning tokens, a point a stage joined in curriculum
    order, with its 95% interval. A stage that thinks in latent steps also gets a hollow point at
    its visible tokens plus its latent steps: the positions its answer really took."""
    points = [[(e, number(e.get("mean_reasoning_tokens")), number(e.get("accuracy"))) for e in run.entries]
              for run in runs]
    points = [[(e, x, y) for e, x, y in ps if x is not None and y is not None] for ps in points]
    if not any(points):
        return None
    figure, axis = plt.subplots(figsize=(8, 5))
    latent_drawn = False
    labels_at: dict[tuple[float, float], int] = {}  # stages that land on one point: their names stacked
    for i, (run, ps) in enumerate(zip(runs, points)):
        if not ps:
            continue
        c = colour(i)
        axis.plot([x for _, x, _ in ps], [y for _, _, y in ps], color=c, alpha=0.5, linewidth=1,
                  label=run.label if len(runs) > 1 else None)
        for entry, x, y in ps:
            n = int(number(entry.get("test_problems")) or 0)
            low, high = wilson_interval(y, n) if n else (y, y)
            axis.errorbar([x], [y], yerr=[[y - low], [high - y]], fmt="o", color=c, markersize=7, capsize=3)
            stacked = labels_at[round(x, 1), round(y, 3)] = labels_at.get((round(x, 1), round(y, 3)), -1) + 1
            axis.annotate(str(entry.get("name", "?")), (x, y), textcoords="offset points", xytext=(6, 6 + 10 * stacked),
                          fontsize=8, color=c)
            latent = number(entry.get("latent_steps")) or 0
            if latent > 0:
                latent_drawn = True
                axis.plot([x, x + latent], [y, y], ":", color=c)
                axis.plot([x + latent], [y], "o", markerfacecolor="white", markeredgecolor=c, markersize=7)
                axis.annotate(f"+{latent:g} latent steps", (x + latent, y), textcoords="offset points",
                              xytext=(6, -12), fontsize=7, color=c)
    if latent_drawn:
        axis.plot([], [], "o", markerfacecolor="white", markeredgecolor="grey", label="visible tokens + latent steps")
    axis.set_xlabel("mean visible reasoning tokens (test problems)")
    axis.set_ylabel("test accuracy (eval levels)")
    axis.set_title("accuracy versus reasoning tokens, a point a stage")
    axis.set_ylim(-0.05, 1.05)
    axis.set_xlim(left=min(0.0, axis.get_xlim()[0]))
    axis.grid(alpha=0.3)
    if axis.get_legend_handles_labels()[0]:
        axis.legend(fontsize=8)
    figure.tight_layout()
    return figure


def stage_offsets(run: Run) -> dict[str, int]:
    """Where each stage's step 0 falls on one axis of all the run's steps."""
    offsets, offset = {}, 0
    for name in run.stage_names:
        if name == "start":
            continue
        offsets[name] = offset
        steps = [r["step"] for r in run.steps if r["stage"] == name and number(r.get("step")) is not None]
        entry = next((e for e in run.entries if e.get("name") == name), {})
        offset += int(max(steps + [number(entry.get("steps")) or 0]))
    return offsets


Series = tuple[int, str, str, list[float], list[float]]  # (run index, key, stage, steps, values)


def curve_panels(runs: list[Run]) -> list[tuple[str, list[Series]]]:
    """The panels that have data, each with its lines: a key's values in one stage of one run,
    against the step counted across the run's stages."""
    offsets = [stage_offsets(run) for run in runs]
    panels = []
    for title, wanted in PANELS:
        series: list[Series] = []
        for i, run in enumerate(runs):
            keys = sorted({k for r in run.steps for k in r if wanted(k)}, key=lambda k: (k.count("_"), k))
            for key in keys:
                for stage, start in offsets[i].items():
                    xy = [(start + number(r.get("step")), number(r.get(key))) for r in run.steps
                          if r["stage"] == stage and number(r.get("step")) is not None]
                    xy = [(x, y) for x, y in xy if y is not None]
                    if xy:
                        series.append((i, key, stage, [x for x, _ in xy], [y for _, y in xy]))
        if series:
            panels.append((title, series))
    return panels


def draw_panel(axis, runs: list[Run], title: str, series: list[Series]) -> None:
    """One run: a colour a key, the stages named where they begin. Several: a colour a run, a
    line style a key."""
    keys = list(dict.fromkeys(key for _, key, _, _, _ in series))
    labelled = set()
    for i, key, _stage, xs, ys in series:
        if len(runs) > 1:
            style = dict(color=colour(i), linestyle=LINE_STYLES[keys.index(key) % len(LINE_STYLES)])
            label = f"{runs[i].label}: {key}" if len(keys) > 1 else runs[i].label
        else:
            style, label = dict(color=colour(keys.index(key))), key
        axis.plot(xs, ys, marker="." if len(xs) <= 40 else None, linewidth=1.2,
                  label=label if label not in labelled else None, **style)
        labelled.add(label)
    for i, run in enumerate(runs):
        for stage, start in stage_offsets(run).items():
            axis.axvline(start, color=colour(i) if len(runs) > 1 else "grey", linewidth=0.6, alpha=0.6)
            if len(runs) == 1:
                axis.annotate(stage, (start, 1), xycoords=("data", "axes fraction"), xytext=(3, -10),
                              textcoords="offset points", fontsize=7, color="grey")
    axis.set_title(title, fontsize=10)
    axis.set_xlabel("step (all stages, in order)")
    axis.grid(alpha=0.3)
    axis.legend(fontsize=7, loc="best")


def curve_figures(runs: list[Run]) -> list[tuple[str, Figure]]:
    """A figure a panel that has data."""
    figures = []
    for title, series in curve_panels(runs):
        figure, axis = plt.subplots(figsize=(7, 3.6))
        draw_panel(axis, runs, title, series)
        figure.tight_layout()
        figures.append((title, figure))
    return figures


def curves_sheet(runs: list[Run]) -> Figure | None:
    """Every panel on one sheet (plots/curves.png)."""
    panels = curve_panels(runs)
    if not panels:
        return None
    rows = math.ceil(len(panels) / 3)
    figure, axes = plt.subplots(rows, 3, figsize=(18, 4 * rows), squeeze=False)
    for axis, (title, series) in zip(axes.flat, panels):
        draw_panel(axis, runs, title, series)
    for axis in list(axes.flat)[len(panels):]:
        axis.set_visible(False)
    figure.suptitle(" vs ".join(run.label for run in runs))
    figure.tight_layout()
    return figure


def level_figure(runs: list[Run]) -> Figure | None:
    """Test accuracy at each level after each stage: a group of bars a stage, a bar a level."""
    tables = []
    for run in runs:
        rows = []
        for entry in run.entries:
            by_level = entry.get("accuracy_by_level")
            if isinstance(by_level, dict):
                values = {str(k): number(v) for k, v in by_level.items()}
                rows.append((str(entry.get("name", "?")), {k: v for k, v in values.items() if v is not None}))
        tables.append(rows)
    shown = [(run, rows) for run, rows in zip(runs, tables) if rows]
    if not shown:
        return None
    widest = max(len(rows) for _, rows in shown)
    figure, axes = plt.subplots(1, len(shown), figsize=(max(6.0, 1.2 * widest * len(shown) + 2), 3.8), sharey=True,
                                squeeze=False)
    for axis, (run, rows) in zip(axes[0], shown):
        levels = sorted({k for _, values in rows for k in values}, key=lambda k: (len(k), k))
        width = 0.8 / max(1, len(levels))
        for j, level in enumerate(levels):
            xs = [s + (j - (len(levels) - 1) / 2) * width for s in range(len(rows))]
            axis.bar(xs, [values.get(level, 0.0) for _, values in rows], width, label=f"level {level}",
                     color=plt.get_cmap("viridis")(j / max(1, len(levels) - 1)))
        axis.set_xticks(range(len(rows)), [name for name, _ in rows], rotation=20 if len(rows) > 4 else 0, fontsize=8)
        axis.set_ylim(0, 1.05)
        axis.set_title(run.label if len(runs) > 1 else "test accuracy per level, after each stage", fontsize=9)
        axis.grid(axis="y", alpha=0.3)
    axes[0][0].set_ylabel("test accuracy")
    axes[0][-1].legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.0, 1.0))
    figure.tight_layout()
    return figure
