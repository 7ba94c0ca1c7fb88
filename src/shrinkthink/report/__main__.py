"""`python -m shrinkthink.report RUN_DIR [--out FILE]`: `shrinkthink report`, and plots/*.png redrawn."""

import sys
from pathlib import Path

from shrinkthink.cli import main
from shrinkthink.report import plot_run

args = sys.argv[1:]
status = main(["report", *args])
if status == 0 and args and Path(args[0]).is_dir():
    try:
        for written in plot_run(args[0]):
            print(written)
    except Exception as error:  # the report is written; the loose images are a courtesy
        print(f"shrinkthink: plots not redrawn: {type(error).__name__}: {error}", file=sys.stderr)
sys.exit(status)
