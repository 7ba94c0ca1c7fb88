"""Launch settings side by side on the same config: one process against N data-parallel ranks,
glibc's malloc against jemalloc or tcmalloc. Each stage's median seconds a step, its wall seconds
and its accuracy, and the ratio of each to the first setting's.

    python bench/ranks.py CONFIG [key=value ...] [--procs 1 2] [--allocator system jemalloc] [--repeats 2]

Runs `shrinkthink run CONFIG ... --procs P allocator=A` as a user does, for each P in `--procs` and
A in `--allocator` (left out: the config's), in turn, `--repeats` times (the order reversed on
every other repeat, so a machine that slows down in the middle charges both sides), and reads each
run's `metrics.jsonl` and `summary.json`. Ranks sample with their own seeds, so their accuracies
are draws of the same run, not copies; an allocator computes the same numbers. The times are what
this bench is for. Short probes (a few dozen steps a stage) keep it to minutes.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
import typing
from pathlib import Path

from shrinkthink.config import RunConfig


def run_once(config: list[str], procs: int, allocator: str | None, root: Path, index: int) -> dict[str, dict]:
    """Per stage: median step seconds, wall seconds and final accuracy of one run."""
    run_dir = root / f"p{procs}-{allocator}-{index}"
    command = [sys.executable, "-m", "shrinkthink", "run", *config, *([f"allocator={allocator}"] if allocator else []),
               "--procs", str(procs), "--run-dir", str(run_dir), "--no-progress"]
    began = time.time()
    result = subprocess.run(command, env={**os.environ, "HF_HUB_OFFLINE": "1"}, capture_output=True, text=True)
    if result.returncode != 0:
        sys.exit(f"{' '.join(command)} exited {result.returncode}:\n{result.stderr[-2000:]}")
    stages: dict[str, dict] = {}
    for line in (run_dir / "metrics.jsonl").read_text().splitlines():
        row = json.loads(line)
        entry = stages.setdefault(row["stage"], {"steps": []})
        if row.get("event") == "stage_end":
            entry |= {"stage_s": row.get("seconds"), "accuracy": row.get("accuracy")}
        elif row.get("event") is None and "seconds" in row:
            entry["steps"].append(row["seconds"])
    for entry in stages.values():
        entry["step_s"] = statistics.median(entry.pop("steps")) if entry.get("steps") else None
    stages["(process)"] = {"stage_s": time.time() - began,
                           "allocator": json.loads((run_dir / "summary.json").read_text()).get("allocator")}
    return stages


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("config", nargs="+", help="a config, then overrides, as `shrinkthink run` takes them")
    parser.add_argument("--procs", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--allocator", nargs="+", default=[None],
                        choices=typing.get_args(RunConfig.model_fields["allocator"].annotation))  # the config's
    parser.add_argument("--repeats", type=int, default=1)
    args = parser.parse_args()
    root = Path(tempfile.mkdtemp(prefix="shrinkthink-ranks-"))
    settings = [(p, a) for p in args.procs for a in args.allocator]
    runs: dict[tuple, list[dict]] = {s: [] for s in settings}
    for repeat in range(args.repeats):
        order = settings if repeat % 2 == 0 else list(reversed(settings))
        for procs, allocator in order:
            runs[procs, allocator].append(run_once(args.config, procs, allocator, root, repeat))
            print(f"repeat {repeat + 1}, {procs} proc(s), allocator {allocator or 'as configured'}: done", flush=True)
    print(f"machine: {platform.machine()}, {os.cpu_count()} CPUs, python {platform.python_version()}")
    print(f"config: {' '.join(args.config)}; repeats: {args.repeats}")
    base = settings[0]
    print("| stage | procs | allocator (loaded) | median s/step | stage s | accuracy | step speed-up "
          "| stage speed-up |")
    print("|---|---|---|---|---|---|---|---|")
    for stage in runs[base][0]:
        for setting in settings:
            cells = [r.get(stage, {}) for r in runs[setting]]
            step = [c["step_s"] for c in cells if c.get("step_s")]
            wall = [c["stage_s"] for c in cells if c.get("stage_s")]
            acc = [c["accuracy"] for c in cells if c.get("accuracy") is not None]
            loaded = ", ".join(sorted({r["(process)"]["allocator"] or "-" for r in runs[setting]}))

            def ratio(key: str, cells: list[dict] = cells, stage: str = stage) -> str:
                mine = [c[key] for c in cells if c.get(key)]
                theirs = [r[stage][key] for r in runs[base] if r.get(stage, {}).get(key)]
                if not mine or not theirs:
                    return "-"
                return f"{statistics.median(theirs) / statistics.median(mine):.2f}x"

            print(f"| {stage} | {setting[0]} | {setting[1] or 'config'} ({loaded}) | "
                  f"{', '.join(f'{s:.3f}' for s in step) or '-'} | "
                  f"{', '.join(f'{s:.0f}' for s in wall) or '-'} | {', '.join(f'{a:.3f}' for a in acc) or '-'} | "
                  f"{ratio('step_s')} | {ratio('stage_s')} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
