"""Runs the quickstart exactly as `shrinkthink run` does and prints the wall time and the summary.

    python bench/quickstart.py [key=value ...]
"""

from __future__ import annotations

import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path


def main() -> int:
    run_dir = Path(tempfile.mkdtemp(prefix="shrinkthink-quickstart-")) / "run"
    command = [sys.executable, "-m", "shrinkthink", "run", *sys.argv[1:], "--run-dir", str(run_dir), "--no-progress"]
    began = time.time()
    result = subprocess.run(command, env={**os.environ, "HF_HUB_OFFLINE": "1"})
    wall = time.time() - began
    print(f"machine: {platform.machine()}, {os.cpu_count()} CPUs, python {platform.python_version()}")
    print(f"command: {' '.join(command)}")
    print(f"exit status: {result.returncode}")
    print(f"wall time: {wall:.0f} s ({wall / 60:.1f} min)")
    summary = run_dir / "summary.json"
    if summary.is_file():
        data = json.loads(summary.read_text())
        print(json.dumps({"seconds": data["seconds"], "allocator": data.get("allocator"), "stages": data["stages"]},
                         indent=2))
    return result.returncode


if __name__ == "__main__":
    sys.exit(main())
