"""What every benchmark records about the machine it ran on."""

from __future__ import annotations

import os
import platform
import resource
import subprocess
import time
from datetime import UTC, datetime
from importlib.metadata import version
from pathlib import Path
from typing import Any

from PIL import features


def machine_info() -> dict[str, object]:
    return {
        "python": platform.python_version(),
        "implementation": platform.python_implementation(),
        "platform": platform.platform(),
        "numpy": version("numpy"),
        "scipy": version("scipy"),
        "Pillow": version("Pillow"),
        "ImageHash": version("ImageHash"),
        "libjpeg_turbo": features.version("libjpeg_turbo"),
        "cpu_count": os.cpu_count(),
        "cpus_usable": len(os.sched_getaffinity(0)),
        "loadavg_start": list(os.getloadavg()),
        "timestamp": datetime.now(UTC).isoformat(timespec="seconds"),
    }


def run_timed(
    cmd: list[str], **kwargs: Any
) -> tuple[subprocess.CompletedProcess[str], float, float]:
    """Run `cmd` (`subprocess.run` with text output captured, `kwargs` passed on); return it
    with its wall seconds and the CPU seconds of it and every process it started.

    On a machine others share, CPU time is the steadier measure. It counts the processes
    `cmd` left behind too (a multiprocessing fork server and the workers it forked, which
    `cmd` never waits for): this process becomes their subreaper and reaps them. Waits for
    every child of this process, so call it with none of its own running.
    """
    _become_subreaper()
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    t = time.perf_counter()
    proc = subprocess.run(cmd, capture_output=True, text=True, check=False, **kwargs)
    wall = time.perf_counter() - t
    while True:  # the orphans, now ours: their CPU time counts once they are reaped
        try:
            os.waitpid(-1, 0)
        except ChildProcessError:
            break
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    return proc, wall, cpu


def _become_subreaper() -> None:
    import ctypes

    pr_set_child_subreaper = 36
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.prctl(pr_set_child_subreaper, 1, 0, 0, 0) != 0:
        raise OSError(ctypes.get_errno(), "prctl(PR_SET_CHILD_SUBREAPER) failed")


# A benchmark "player" is a source tree, or a source tree followed by CROPS_OFF: the same tree
# with `hashing: {crops: false}` (bench/small.py, bench/scan_cost.py --crops-off).
CROPS_OFF = "#crops-off"


def player_tree(player: str) -> Path:
    """The source tree a player runs from."""
    return Path(player.removesuffix(CROPS_OFF))


def player_config(player: str) -> str:
    """The config file's text a player runs with: empty (every default), or the crop stage off."""
    return "hashing: {crops: false}\n" if player.endswith(CROPS_OFF) else ""
