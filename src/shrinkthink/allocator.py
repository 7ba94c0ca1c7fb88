"""The memory allocator a run's processes use: `allocator` in the config.

glibc's malloc is slow for what a training loop asks of it, thousands of tensors a step, freed as
fast as they are made; jemalloc and tcmalloc keep such memory for reuse. PyTorch's own CPU launcher
(`python -m torch.backends.xeon.run_cpu`) preloads one for the same reason. On a 2-core AMD EPYC, on two
ranks, the quickstart's stages ran 1.19x faster with jemalloc than with glibc's malloc, and 1.19x
faster again with tcmalloc, computing the same numbers to the last bit (docs/results.md).

An allocator is chosen when a process starts, so `shrinkthink run` starts itself again with the
library in `LD_PRELOAD` (the same process id: torchrun and job schedulers see nothing); ranks that
`--procs` spawns inherit it, and each rank torchrun starts does the same for itself. `auto` takes
tcmalloc, else jemalloc, where the system has one, and glibc's otherwise; `system` never
relaunches; one preloaded already (by the user's own `LD_PRELOAD`) is kept. The summary's
`allocator` says which one the run had.

    apt install libtcmalloc-minimal4   # or libjemalloc2, or conda's; then `shrinkthink run` uses it
"""

from __future__ import annotations

import ctypes.util
import os
import sys
from pathlib import Path

from shrinkthink.errors import UserError

# Which library each name means; `auto` tries them in this order.
LIBRARIES = {"tcmalloc": ("tcmalloc", "tcmalloc_minimal"), "jemalloc": ("jemalloc",)}
PACKAGES = {"tcmalloc": "libtcmalloc-minimal4", "jemalloc": "libjemalloc2"}  # Debian's, for the error
# Set before the relaunch: a library that would not preload is not tried again.
TRIED = "SHRINKTHINK_ALLOCATOR_TRIED"


def find(name: str) -> str | None:
    """The shared library for `name` ('jemalloc' or 'tcmalloc'): in this Python's prefix (a conda
    environment), else where the dynamic loader finds it; None if neither has it."""
    for stem in LIBRARIES[name]:
        for folder in dict.fromkeys([Path(sys.prefix) / "lib", Path(sys.base_prefix) / "lib"]):  # in order, once
            found = sorted(folder.glob(f"lib{stem}.so*"))
            if found:
                return str(found[0])
        soname = ctypes.util.find_library(stem)
        if soname:
            return soname
    return None


def loaded() -> str:
    """Which allocator this process runs: 'jemalloc', 'tcmalloc' or 'system'."""
    try:
        maps = Path("/proc/self/maps").read_text()
    except OSError:  # not Linux
        return "system"
    for name, stems in LIBRARIES.items():
        if any(f"lib{stem}.so" in maps for stem in stems):
            return name
    return "system"


def relaunch(choice: str) -> None:
    """Start this command again, as it was typed (`sys.orig_argv`), with `choice`'s library
    preloaded, if it is not loaded yet and can be; otherwise return and go on as is. `auto` settles
    for the system's malloc where no other is installed; a named one that is missing is a bad input."""
    if choice == "system" or loaded() != "system" or os.environ.get(TRIED) or not sys.platform.startswith("linux"):
        return
    names = list(LIBRARIES) if choice == "auto" else [choice]
    library = next((path for path in map(find, names) if path), None)
    if library is None:
        if choice == "auto":
            return
        raise UserError(f"allocator: no {choice} library on this system (apt install {PACKAGES[choice]}, "
                        "or allocator: auto)")
    preload = " ".join(filter(None, [library, os.environ.get("LD_PRELOAD")]))
    env = {**os.environ, "LD_PRELOAD": preload, TRIED: library}
    sys.stdout.flush()
    sys.stderr.flush()
    os.execve(sys.executable, sys.orig_argv, env)
