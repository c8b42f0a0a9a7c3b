"""Stand-ins for the hashers' work, run inside pool worker processes (monkeypatching cannot
cross a process boundary, so tests hand these to the pool or the daemon by name).

What a file's name starts with decides what happens to it:
  hang…   the decoder never returns (a Ghostscript stuck on a PostScript file named .jpg)
  crash…  the worker process dies at once (a segfault, the OOM killer)
  slow…   takes a moment, then hashes normally
  pid…    answers Failure("pid", <the worker's pid>) so a test can see where it ran
  greedy… allocates memory until the kernel's OOM killer ends a process (a decoder whose
          buffers outgrow the machine)
  wait…   blocks until a file named `release` exists in a folder above it, then hashes
          normally (a test holds a backlog in the pool, looks at it, then lets it go)
anything else is hashed for real.
"""

from __future__ import annotations

import os
import signal
import threading
import time
from pathlib import Path

from dedupd.hashers import Hasher
from dedupd.imaging import FileStat
from dedupd.pool import Failure, Result, hash_file

SLOW_SECONDS = 0.5


def scripted(
    path: str, expect: FileStat, hashers: tuple[Hasher, ...], max_pixels: int
) -> Result:
    name = os.path.basename(path)
    if name.startswith("hang"):
        threading.Event().wait()  # forever: only the pool's timeout (a SIGKILL) ends it
    if name.startswith("crash"):
        os.kill(os.getpid(), signal.SIGKILL)
    if name.startswith("greedy"):
        held = []
        while True:  # touched, not only reserved: counted by the memory cgroup
            held.append(bytearray(16 << 20))
            for i in range(0, 16 << 20, 4096):
                held[-1][i] = 1
    if name.startswith("slow"):
        time.sleep(SLOW_SECONDS)  # a slow decode, not a test waiting for something
    if name.startswith("wait"):
        while not any((folder / "release").exists() for folder in Path(path).parents):
            time.sleep(0.01)  # a worker waiting for the test's signal, across processes
    if name.startswith("pid"):
        return Failure("pid", str(os.getpid()))
    return hash_file(path, expect, hashers, max_pixels)
