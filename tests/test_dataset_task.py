"""The `datasets` task: questions and answers from a local file in any format `datasets` reads, a
saved folder or a dataset name in the local cache, through a column mapping; rows checked as the
JSONL task checks its lines; a missing column or a bad row is one line naming it; a CSV trains."""

from __future__ import annotations

import csv
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import datasets
import pytest

import shrinkthink
from shrinkthink.errors import UserError
from shrinkthink.tasks import make_task

ROWS = [
    {"q": "What is 2+3?", "a": "5", "how": "2+3=5", "lvl": 1, "part": "train"},
    {"q": "Half of one?", "a": "0.5", "how": None, "lvl": None, "part": "test"},  # a CSV then reads 5 as 5.0
    {"q": "Two times four?", "a": "8", "how": "2*4=8\nso 8", "lvl": 2, "part": "validation"},
    {"q": "Seven times six?", "a": "42", "how": None, "lvl": 1, "part": "train"},
]
COLUMNS = {"question": "q", "answer": "a", "steps": "how", "level": "lvl", "split": "part"}


@pytest.fixture(autouse=True)
def cache(tmp_path: Path, monkeypatch) -> Path:
    """`datasets` writes what it reads into its cache: a fresh one for each test, not the user's."""
    folder = tmp_path / "datasets-cache"
    monkeypatch.setattr(datasets.config, "HF_DATASETS_CACHE", str(folder))
    return folder


def write(path: Path, rows: list[dict]) -> Path:
    """`rows` in the format `path`'s extension names."""
    if path.suffix == ".jsonl":
        path.write_text("".join(json.dumps(row) + "\n" for row in rows))
    elif path.suffix == ".csv":
        with path.open("w", newline="") as file:
            writer = csv.DictWriter(file, fieldnames=list(rows[0]))
            writer.writeheader()
            writer.writerows(rows)
    else:
        datasets.Dataset.from_list(rows).to_parquet(str(path))
    return path


@pytest.mark.parametrize("name", ["qa.csv", "qa.jsonl", "qa.parquet"])
def test_columns_map_each_format_to_the_same_problems(tmp_path: Path, name: str) -> None:
    path = write(tmp_path / name, ROWS)
    task = make_task("datasets", {"path": str(path), "columns": COLUMNS})
    assert (task.min_level, task.max_level) == (1, 2)
    by_prompt = {problem.prompt: (problem, split) for problem, split in task.rows}
    five, split = by_prompt["What is 2+3?"]
    assert split == "train" and five.answer == "5" and five.steps == ["2+3=5"] and five.level == 1
    half, split = by_prompt["Half of one?"]
    assert split == "test" and half.steps is None and half.level == 1  # empty cells: the defaults
    eight, split = by_prompt["Two times four?"]
    assert split == "validation" and eight.level == 2 and eight.steps == ["2*4=8", "so 8"]  # one string of lines
    assert task.problems(1, 1, "test")[0].prompt == "Half of one?"
    assert {p.prompt for p in task.problems(1, 4, "train")} == {"What is 2+3?", "Seven times six?"}
    assert task.score(half, "Answer: 1/2") == 1.0 and task.score(five, "Answer: 6") == 0.0  # the JSONL verifier
    assert five.metadata["source"] == f"{path}: row 1"


def test_without_a_split_column_the_hash_splits(tmp_path: Path) -> None:
    rows = [{"question": f"What is {i}+1?", "answer": i + 1} for i in range(60)]
    task = make_task("datasets", {"path": str(write(tmp_path / "qa.jsonl", rows)), "heldout_fraction": 0.3})
    assert {split for _, split in task.rows} == {"train", "validation", "test"}
    assert all(split == task.split_of(problem.prompt) for problem, split in task.rows)


def test_saved_folder_and_cached_name(tmp_path: Path, monkeypatch) -> None:
    saved = tmp_path / "saved"
    datasets.DatasetDict({"train": datasets.Dataset.from_list(ROWS[:2]),
                          "test": datasets.Dataset.from_list(ROWS[2:])}).save_to_disk(str(saved))
    task = make_task("datasets", {"path": str(saved), "columns": COLUMNS})
    assert len(task.rows) == 4 and task.rows[2][0].metadata["source"] == f"{saved}: test row 1"
    only = make_task("datasets", {"path": str(saved), "columns": COLUMNS, "source_split": "test"})
    assert [p.prompt for p, _ in only.rows] == ["Two times four?", "Seven times six?"]
    # a folder of data files read once is in the cache under its name; then the name alone loads it
    folder = tmp_path / "toyqa"
    folder.mkdir()
    write(folder / "train.csv", ROWS)
    make_task("datasets", {"path": str(folder), "columns": COLUMNS})
    shutil.rmtree(folder)
    monkeypatch.chdir(tmp_path)
    cached = make_task("datasets", {"path": "toyqa", "columns": COLUMNS})
    assert sorted(p.prompt for p, _ in cached.rows) == sorted(row["q"] for row in ROWS)


def test_missing_column_is_one_line_naming_it(tmp_path: Path) -> None:
    path = write(tmp_path / "data.csv", [{"a": 1, "b": 2}])
    with pytest.raises(UserError) as caught:
        make_task("datasets", {"path": str(path), "columns": {"question": "problem", "answer": "b"}})
    assert str(caught.value) == f"task.options.columns.question: column 'problem' is not in {path} (columns: a, b)"
    with pytest.raises(UserError, match=r"^task.options.columns.answer: column 'answer' is not in"):
        make_task("datasets", {"path": str(path), "columns": {"question": "a"}})
    with pytest.raises(UserError, match=r"^task.options.columns: unknown key 'questoin'"):
        make_task("datasets", {"path": str(path), "columns": {"questoin": "a"}})


@pytest.mark.parametrize(("row", "message"), [
    ({"q": "Fine?", "a": None, "lvl": 1}, "'a' (answer) must be a non-empty string or a number"),
    ({"q": "Fine?", "a": 1, "lvl": 0}, "'lvl' (level) must be an integer >= 1, got 0"),
    ({"q": " ", "a": 1, "lvl": 1}, "'q' (question) must be a non-empty string"),
])
def test_bad_row_names_file_and_row(tmp_path: Path, row: dict, message: str) -> None:
    path = write(tmp_path / "data.jsonl", [{"q": "Good?", "a": 1, "lvl": 1}, row])
    with pytest.raises(UserError) as caught:
        make_task("datasets", {"path": str(path), "columns": {"question": "q", "answer": "a", "level": "lvl"}})
    assert str(caught.value) == f"{path}: row 2: {message}"


def test_sources_that_cannot_be_read(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.chdir(tmp_path)
    with pytest.raises(UserError, match=r"^task.options.path: 'nobody/nothing' is not a file or folder, nor a "
                                        r"dataset in the local cache or on the hub \(.*\)$"):
        make_task("datasets", {"path": "nobody/nothing"})
    (tmp_path / "data.xyz").write_text("?")
    with pytest.raises(UserError, match=r"^task.options.path: cannot tell the format of 'data.xyz'"):
        make_task("datasets", {"path": "data.xyz"})
    with pytest.raises(UserError, match=r"^task.options.source_split: 'dev' is not a split of .* \(splits: train\)$"):
        make_task("datasets", {"path": str(write(tmp_path / "qa.csv", ROWS)), "columns": COLUMNS,
                               "source_split": "dev"})


def test_a_csv_trains_for_two_steps(tmp_path: Path) -> None:
    rows = [{"problem": f"{i}+{j}=?", "solution": i + j} for i in range(10) for j in range(10)]
    path = write(tmp_path / "sums.csv", rows)
    config = {
        "name": "csv", "threads": 1, "model": {"kind": "tiny", "depth": 2},
        "task": {"name": "datasets", "options": {"path": str(path), "columns": {"question": "problem",
                                                                                 "answer": "solution"}},
                 "eval_levels": [1], "eval_problems": 4},
        "stages": [{"name": "climb", "kind": "explore", "steps": 2, "max_level": 1, "eval_every": 2,
                    "eval_problems": 4, "learner": {"group_size": 2, "problems_per_step": 2},
                    "sampling": {"max_new_tokens": 8}}],
    }
    summary = shrinkthink.run(config, run_dir=tmp_path / "run", progress=False)
    assert summary["stages"][0]["steps"] == 2
    lines = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in lines if "reward" in r] == [1, 2]


def test_cli_missing_column_is_one_line(tmp_path: Path) -> None:
    path = write(tmp_path / "data.csv", [{"a": 1, "b": 2}])
    config = tmp_path / "run.yaml"
    config.write_text(f"""\
model: {{kind: tiny, depth: 2}}
task: {{name: datasets, options: {{path: {path}, columns: {{question: problem, answer: b}}}}, eval_levels: [1]}}
stages:
  - {{name: warm, kind: warmstart, steps: 1, levels: [1], batch_size: 2}}
""")
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_DATASETS_CACHE": str(tmp_path / "cache"), "OMP_NUM_THREADS": "1"}
    result = subprocess.run([sys.executable, "-m", "shrinkthink", "run", str(config), "--run-dir", "out"],
                            cwd=tmp_path, env=env, capture_output=True, text=True, timeout=120)
    assert result.returncode == 2, result.stderr
    assert result.stderr.strip().splitlines() == [
        f"shrinkthink: error: task.options.columns.question: column 'problem' is not in {path} (columns: a, b)"]
    assert not (tmp_path / "out").exists()
