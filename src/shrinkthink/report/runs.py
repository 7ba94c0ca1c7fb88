"""A run directory read for the report, whatever state it is in: finished, killed mid-stage (a
metrics line cut short, no summary.json), or empty. What cannot be read is noted in `missing`,
never raised: the report draws what is there and says in one line what is not."""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

SAMPLE_HEADER = re.compile(r"^### level (\d+)  score (\S+)  answer (.*)$", re.MULTILINE)


@dataclass
class Run:
    path: Path
    label: str
    config_text: str | None = None
    stage_names: list[str] = field(default_factory=list)  # the curriculum's order; "start" first when evaluated
    kinds: dict[str, str] = field(default_factory=dict)
    steps: list[dict[str, Any]] = field(default_factory=list)  # metrics lines of training steps
    entries: list[dict[str, Any]] = field(default_factory=list)  # figures of each evaluated stage, in order
    samples: dict[str, list[dict[str, Any]]] = field(default_factory=dict)  # stage -> held-out transcripts
    edits: dict[str, list[dict[str, Any]]] = field(default_factory=dict)  # stage -> editors' examples
    missing: list[str] = field(default_factory=list)

    def missing_line(self) -> str:
        return f"{self.path}: missing {'; '.join(self.missing)}" if self.missing else ""


def read_json_lines(path: Path) -> tuple[list[dict[str, Any]], int]:
    """The lines of a JSON-lines file that parse as objects, and how many did not (a line cut
    short by a killed run)."""
    rows, bad = [], 0
    for line in path.read_text(errors="replace").splitlines():
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError:
            row = None
        if isinstance(row, dict):
            rows.append(row)
        else:
            bad += 1
    return rows, bad


def parse_samples(text: str) -> list[dict[str, Any]]:
    """samples/<stage>.txt (pipeline.format_samples) back into records, for runs written before
    the .jsonl beside it."""
    records = []
    headers = list(SAMPLE_HEADER.finditer(text))
    for header, following in zip(headers, headers[1:] + [None]):
        body = text[header.end() + 1 : following.start() if following else len(text)].rstrip("\n")
        prompt, _, completion = body.partition("\n---\n")
        try:
            score = float(header.group(2))
        except ValueError:
            score = 0.0
        records.append({"level": int(header.group(1)), "score": score, "answer": header.group(3),
                        "prompt": prompt, "completion": completion})
    return records


def read_run(path: str | Path, label: str | None = None) -> Run:
    path = Path(path)
    run = Run(path=path, label=label or path.name)
    config = _read_config(run)
    summary = _read_summary(run)
    lines = _read_metrics(run)
    run.steps = [r for r in lines if "event" not in r and isinstance(r.get("stage"), str)]
    ends = {r["stage"]: r for r in lines if r.get("event") == "stage_end" and isinstance(r.get("stage"), str)}

    stages = config.get("stages") if isinstance(config, dict) else None
    for stage in stages if isinstance(stages, list) else []:
        if isinstance(stage, dict) and isinstance(stage.get("name"), str):
            run.stage_names.append(stage["name"])
            run.kinds[stage["name"]] = str(stage.get("kind", ""))
    # a run without its config: the stages in the order their lines came
    for stage in [r["stage"] for r in run.steps] + list(ends):
        if stage not in run.stage_names:
            run.stage_names.append(stage)

    entries = {}
    for entry in summary.get("stages", []) if isinstance(summary.get("stages"), list) else []:
        if isinstance(entry, dict) and isinstance(entry.get("name"), str):
            entries[entry["name"]] = entry
    for name, end in ends.items():  # a stage that ended after the last summary was written
        entries.setdefault(name, {"name": name, "kind": run.kinds.get(name, ""), **end})
    if isinstance(summary.get("start"), dict):
        entries["start"] = summary["start"]
    if "start" in entries or _read_samples(path / "samples", "start"):
        run.stage_names.insert(0, "start")
        run.kinds["start"] = "start"
    run.entries = [entries[name] for name in run.stage_names if name in entries]

    unfinished = []
    for name in run.stage_names:
        if name in entries or name == "start":
            continue
        stepped = [r["step"] for r in run.steps if r["stage"] == name and isinstance(r.get("step"), int)]
        unfinished.append(f"{name} (stopped at step {max(stepped)})" if stepped else f"{name} (not started)")
    if unfinished:
        run.missing.append(f"the end of stage {', '.join(unfinished)}")

    for name in run.stage_names:
        samples = _read_samples(path / "samples", name)
        if samples:
            run.samples[name] = samples
        elif name in entries:
            run.missing.append(f"samples/{name}.jsonl")
        edits_path = path / "samples" / f"{name}-edits.jsonl"
        if edits_path.is_file():
            run.edits[name] = read_json_lines(edits_path)[0]
    return run


def _read_config(run: Run) -> dict[str, Any]:
    path = run.path / "config.yaml"
    if not path.is_file():
        run.missing.append("config.yaml")
        return {}
    run.config_text = path.read_text(errors="replace")
    try:
        config = yaml.safe_load(run.config_text)
    except yaml.YAMLError:
        config = None
    if not isinstance(config, dict):
        run.missing.append("a readable config.yaml")
        return {}
    return config


def _read_summary(run: Run) -> dict[str, Any]:
    path = run.path / "summary.json"
    if not path.is_file():
        run.missing.append("summary.json (the stages' figures come from metrics.jsonl)")
        return {}
    try:
        summary = json.loads(path.read_text(errors="replace"))
    except json.JSONDecodeError:
        summary = None
    if not isinstance(summary, dict):
        run.missing.append("a readable summary.json (the stages' figures come from metrics.jsonl)")
        return {}
    return summary


def _read_metrics(run: Run) -> list[dict[str, Any]]:
    path = run.path / "metrics.jsonl"
    if not path.is_file():
        run.missing.append("metrics.jsonl")
        return []
    lines, bad = read_json_lines(path)
    if bad:
        run.missing.append(f"{bad} cut-off line{'s' if bad > 1 else ''} of metrics.jsonl")
    return lines


def _read_samples(folder: Path, stage: str) -> list[dict[str, Any]]:
    jsonl, text = folder / f"{stage}.jsonl", folder / f"{stage}.txt"
    if jsonl.is_file():
        return [r for r in read_json_lines(jsonl)[0] if isinstance(r.get("completion"), str)]
    if text.is_file():
        return parse_samples(text.read_text(errors="replace"))
    return []
