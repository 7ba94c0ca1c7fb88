"""Questions and answers from anything the Hugging Face `datasets` library reads: a local file (json,
jsonl, csv, tsv, parquet, arrow, compressed or not), a folder saved with `save_to_disk` or of data
files, or a dataset name, resolved as `datasets` does: the local cache first, a download only where the
environment allows it (`HF_HUB_OFFLINE=1` is honoured).

    task:
      name: datasets
      options: {path: data.csv, columns: {question: problem, answer: solution, level: difficulty}}

`columns` maps each of our keys to the source's column: `question` and `answer` are required,
`steps` (a list of strings, or one string of lines), `level`, `split` (train, validation or test)
and `id` are optional. A key left out means a column of the same name, where there is one; map an
optional key to null to ignore that column. Rows are checked as the JSONL task checks its lines
(the one `check_row`), so a bad row fails the run before any training, naming `path: row N`;
without a split column, a hash of the question splits the rows.

    python -c "from shrinkthink.tasks import make_task; \\
        print(make_task('datasets', {'path': 'data.csv'}).problems(1, 3, 'train'))"
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from shrinkthink.errors import UserError
from shrinkthink.tasks.jsonl import RowTask, check_row

REQUIRED = ("question", "answer")
OPTIONAL = ("steps", "level", "split", "id")
# the `datasets` builder of each file extension (after a compression suffix)
BUILDERS = {".json": "json", ".jsonl": "json", ".csv": "csv", ".tsv": "csv", ".parquet": "parquet",
            ".arrow": "arrow", ".txt": "text"}
COMPRESSED = (".gz", ".bz2", ".xz", ".zst", ".zip")


class DatasetTask(RowTask):
    """Rows of a `datasets` source, sampled per level and split."""

    name = "datasets"
    description = "questions and answers from a local file or cached dataset that `datasets` reads (column mapping)"

    def __init__(self, path: str, columns: dict[str, str | None] | None = None, subset: str | None = None,
                 source_split: str | None = None, heldout_fraction: float = 0.2) -> None:
        """`subset`: the dataset's configuration (`datasets`' `name`, e.g. gsm8k's 'main');
        `source_split`: read only this split of the source (default: all of them)."""
        super().__init__(heldout_fraction)
        self.path = str(path)
        parts = load_source(self.path, subset)
        if source_split is not None:
            if source_split not in parts:
                raise UserError(f"task.options.source_split: '{source_split}' is not a split of {self.path} "
                                f"(splits: {', '.join(parts)})")
            parts = {source_split: parts[source_split]}
        names = column_names(columns, parts, self.path)
        rows = []
        for part, data in parts.items():
            label = "row" if len(parts) == 1 else f"{part} row"
            for number, row in enumerate(data.select_columns(sorted(set(names.values()))), start=1):
                rows.append(check_row(as_row(row, names), f"{self.path}: {label} {number}", self.split_of,
                                      self.name, names))
        self.use_rows(rows)


def load_source(path: str, subset: str | None) -> dict[str, Any]:
    """Every split of the source as a `datasets.Dataset`, by split name."""
    import datasets  # imported late: it brings pyarrow and pandas, a second or more

    source = Path(path)
    # its progress bars and log lines would surround a one-line error, and a run has its own bar
    quiet = not datasets.is_progress_bar_enabled()
    verbosity = datasets.logging.get_verbosity()
    datasets.disable_progress_bars()
    datasets.logging.set_verbosity_error()
    try:
        if source.is_file():
            loaded = datasets.load_dataset(builder_of(source), data_files=str(source))
        elif source.is_dir() and any((source / f).is_file() for f in ("dataset_dict.json", "dataset_info.json")):
            loaded = datasets.load_from_disk(str(source))
        else:  # a folder of data files, or a dataset name
            loaded = datasets.load_dataset(path, subset)
    except (OSError, ValueError, datasets.exceptions.DatasetGenerationError) as error:
        detail = " ".join(str(error).split())
        if source.exists():
            raise UserError(f"task.options.path: cannot read '{path}' ({detail})") from None
        raise UserError(f"task.options.path: '{path}' is not a file or folder, nor a dataset in the local cache "
                        f"or on the hub ({detail})") from None
    finally:
        if not quiet:
            datasets.enable_progress_bars()
        datasets.logging.set_verbosity(verbosity)
    return dict(loaded) if isinstance(loaded, datasets.DatasetDict) else {"train": loaded}


def builder_of(source: Path) -> str:
    suffixes = [s for s in source.suffixes if s not in COMPRESSED]
    builder = BUILDERS.get(suffixes[-1].lower()) if suffixes else None
    if builder is None:
        raise UserError(f"task.options.path: cannot tell the format of '{source}' from its extension "
                        f"(known: {', '.join(BUILDERS)})")
    return builder


def column_names(columns: dict[str, str | None] | None, parts: dict[str, Any], path: str) -> dict[str, str]:
    """Our key -> the source's column, for every key the rows will have."""
    if columns is not None and not isinstance(columns, dict):
        raise UserError("task.options.columns: expected a mapping such as {question: problem, answer: solution}")
    columns = dict(columns or {})
    unknown = sorted(set(columns) - set(REQUIRED) - set(OPTIONAL))
    if unknown:
        raise UserError(f"task.options.columns: unknown key '{unknown[0]}' (known: {', '.join(REQUIRED + OPTIONAL)})")
    present = list(next(iter(parts.values())).column_names) if parts else []
    for data in parts.values():  # every split must have what the first has
        present = [c for c in present if c in data.column_names]
    names = {}
    for key in REQUIRED + OPTIONAL:
        column = columns.get(key, key)
        if column is None and key in REQUIRED:
            raise UserError(f"task.options.columns.{key}: required, name the column that holds it")
        if column is None or (key not in columns and key in OPTIONAL and column not in present):
            continue
        if not isinstance(column, str) or column not in present:
            raise UserError(f"task.options.columns.{key}: column {column!r} is not in {path} "
                            f"(columns: {', '.join(present)})")
        names[key] = column
    return names


def as_row(record: dict[str, Any], names: dict[str, str]) -> dict[str, Any]:
    """A source record under our keys, as `check_row` reads them: an empty optional cell is left
    out, steps in one string are its lines, and a whole number read as a float (a CSV column with
    empty cells or fractions in it: 5.0 beside 0.5) is an integer again."""
    row = {key: record[column] for key, column in names.items()}
    for key in OPTIONAL:
        if row.get(key) is None:
            row.pop(key, None)
    if isinstance(row.get("steps"), str):
        row["steps"] = [line.strip() for line in row["steps"].splitlines() if line.strip()]
    for key in ("answer", "level"):
        if isinstance(row.get(key), float) and row[key].is_integer():
            row[key] = int(row[key])
    return row
