"""What the curriculum did, for a person to look at: one self-contained report.html (figures
embedded, nothing fetched) with the accuracy-versus-reasoning-tokens frontier, a point a stage;
curves over steps of the reward components, accuracy, tokens, controllers, entropy, zero-variance
share and level; accuracy per level after each stage; the same held-out problems at the end of
each stage side by side; the shrink editors' deletions and paraphrases. A run killed mid-stage
gets the report of what it wrote, and one line saying what is missing.

    shrinkthink report runs/quickstart                  # runs/quickstart/report.html
    shrinkthink compare runs/a runs/b --out ab.html     # the runs on the same plots and table
    python -m shrinkthink.report runs/quickstart        # the report, and plots/*.png redrawn
"""

from __future__ import annotations

import os
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

from shrinkthink.report.figures import curves_sheet, frontier_figure
from shrinkthink.report.page import page
from shrinkthink.report.runs import Run, read_json_lines, read_run

__all__ = ["Run", "Written", "plot_run", "read_metrics", "read_run", "write_comparison", "write_report"]


@dataclass
class Written:
    """A report: where it went (None: nothing to write), and a phrase for each thing it lacks,
    its run's folder first."""

    path: Path | None
    missing: list[str] = field(default_factory=list)

    def missing_line(self) -> str:
        return " | ".join(self.missing)


def read_metrics(run_dir: str | Path) -> list[dict]:
    """metrics.jsonl's lines, those cut short left out."""
    return read_json_lines(Path(run_dir) / "metrics.jsonl")[0]


def write_report(run_dir: str | Path, out: str | Path | None = None) -> Written:
    """`run_dir`'s report, to `out` (default: RUN_DIR/report.html)."""
    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        return Written(None, [f"{run_dir}: no run directory"])
    run = read_run(run_dir)
    text, unable = page(f"shrinkthink run {run.label}", [run], run.missing)
    path = Path(out) if out else run_dir / "report.html"
    _write(path, text)
    return Written(path, [f"{run_dir}: missing {'; '.join(run.missing + unable)}"] if run.missing + unable else [])


def write_comparison(run_dirs: list[str | Path], out: str | Path = "compare.html") -> Written:
    """The runs `run_dirs` on the same plots and table, to `out`; a folder that is no run is
    named in `missing` and left out."""
    found = [Path(d) for d in run_dirs if Path(d).is_dir()]
    missing = [f"{d}: no run directory" for d in run_dirs if not Path(d).is_dir()]
    if not found:
        return Written(None, missing)
    runs = [read_run(path, label) for path, label in zip(found, labels(found))]
    text, unable = page("shrinkthink runs " + ", ".join(run.label for run in runs), runs,
                        [run.missing_line() for run in runs if run.missing])
    path = Path(out)
    _write(path, text)
    missing += [run.missing_line() for run in runs if run.missing]
    if unable:
        missing.append(f"{path}: could not draw {'; '.join(unable)}")
    return Written(path, missing)


def labels(paths: list[Path]) -> list[str]:
    """Each run's name in a comparison: its folder's name, or more of its path where two share one."""
    names = [path.name or str(path) for path in paths]
    repeated = Counter(names)
    names = [f"{path.parent.name}/{name}" if repeated[name] > 1 else name for path, name in zip(paths, names)]
    repeated = Counter(names)
    return [f"{name} ({i + 1})" if repeated[name] > 1 else name for i, name in enumerate(names)]


def plot_run(run_dir: str | Path) -> list[Path]:
    """plots/curves.png (every curve panel on one sheet) and plots/accuracy_vs_tokens.png (the
    frontier), for those who want the images alone."""
    from shrinkthink.report.figures import to_png

    run = read_run(run_dir)
    out = run.path / "plots"
    out.mkdir(parents=True, exist_ok=True)
    written = []
    for name, figure in (("curves.png", curves_sheet([run])), ("accuracy_vs_tokens.png", frontier_figure([run]))):
        if figure is not None:
            (out / name).write_bytes(to_png(figure))
            written.append(out / name)
    return written


def _write(path: Path, text: str) -> None:
    """Replaced whole: a reader never sees half a report."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(text, encoding="utf-8")
    os.replace(tmp, path)
