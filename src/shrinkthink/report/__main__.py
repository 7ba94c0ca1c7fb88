"""`python -m shrinkthink.report RUN_DIR`: (re)draw a run's plots."""

import sys

from shrinkthink.report import plot_run

if len(sys.argv) != 2:
    sys.exit("usage: python -m shrinkthink.report RUN_DIR")
for written in plot_run(sys.argv[1]):
    print(written)
