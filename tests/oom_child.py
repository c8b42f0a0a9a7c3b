"""Run by tests/test_pool.py inside a memory cgroup: the process that owns the pool holds
BALLAST_MB (a daemon's indexes, larger than a worker at rest), and its one worker decodes a
file whose decoder grows until the cgroup's limit. Prints the file's result as JSON; were
the kernel's OOM killer to pick this process, nothing is printed (exit -9)."""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

from dedupd.filestat import FileStat
from dedupd.hashers import Hasher
from dedupd.pool import Failure, HasherPool, Result
from dedupd.scanner import Entry
from tests import workers

BALLAST_MB = 300


def main(folder: Path) -> None:
    ballast = bytearray(BALLAST_MB << 20)
    for i in range(0, len(ballast), 4096):
        ballast[i] = 1
    (folder / "greedy.jpg").write_bytes(b"")
    entry = Entry(str(folder), "greedy.jpg", FileStat.of(os.stat(folder / "greedy.jpg")))
    with HasherPool(
        [Hasher("phash", 8)], workers=1, max_pixels=10**8, timeout=60, work=workers.scripted
    ) as pool:
        pool.submit(entry)
        results: list[tuple[Entry, Result]] = []
        while not results:
            results = pool.results(timeout=1.0)
    ((_, result),) = results
    assert isinstance(result, Failure), result
    print(json.dumps({"kind": result.kind, "message": result.message, "held": len(ballast)}))


if __name__ == "__main__":
    main(Path(sys.argv[1]))
