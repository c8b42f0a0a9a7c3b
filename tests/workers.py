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
from typing import TYPE_CHECKING

from dedupd.filestat import HashedVideo
from dedupd.hashers import Hasher
from dedupd.imaging import FileStat
from dedupd.pool import Failure, Result, hash_file
from dedupd.scanner import Entry

if TYPE_CHECKING:
    from dedupd.engine import Ingest, Outcome

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


def work_through(ingest: Ingest, hashers: tuple[Hasher, ...]) -> list[Outcome | None]:
    """What the pool does for the decisions `ingest` holds, in this process (a test's stand-in
    for a worker that calls `Ingest.ingest` itself): hash each queued file again in full,
    compare its pixels with the files it asks for, and ingest it; until nothing is queued."""
    from dedupd.pool import _compared

    outcomes = []
    while ingest.confirm:
        entry = ingest.confirm.popleft()
        result = hash_file(entry.path, entry.stat, hashers, 10**9, thumbnails=False)
        if entry.compare and not isinstance(result, Failure):
            assert not isinstance(result, HashedVideo)
            result = _compared(result, entry.path, entry.compare, 10**9)
        outcomes.append(ingest.ingest(entry, result))
    return outcomes


class StandInPool:
    """A stand-in for `HasherPool` fed by a `Pipeline`: it keeps what it is sent, and the test
    hashes those files itself, in the order it wants them to come back."""

    in_flight, capacity = 0, 4

    def __init__(self) -> None:
        self.sent: list[Entry] = []

    def submit(self, entry: Entry) -> None:
        self.sent.append(entry)

    def take(self, root: Path, *, compare: bool = False) -> Entry:
        """The first file sent from `root` (a comparison if `compare`), no longer sent."""
        for i, e in enumerate(self.sent):
            if e.root == str(root) and bool(e.compare) == compare:
                return self.sent.pop(i)
        raise AssertionError(f"not sent: {[(e.path, bool(e.compare)) for e in self.sent]}")
