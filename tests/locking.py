"""Another process holding a database's lock, for tests of whoever must respect it."""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

# Another process holding the lock as dedupd does (flock on <database>.lock, "pid role" in
# it), spelled out without dedupd so that the protocol on disk is what is tested.
_HOLD = """
import fcntl, os, sys
os.makedirs(os.path.dirname(sys.argv[1]), exist_ok=True)
fd = os.open(sys.argv[1] + ".lock", os.O_RDWR | os.O_CREAT, 0o660)
fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
os.ftruncate(fd, 0)
os.write(fd, f"{os.getpid()} {sys.argv[2]}\\n".encode())
print("locked", flush=True)
sys.stdin.read()  # until the parent closes stdin, or kills us
"""


@contextmanager
def held_elsewhere(database: Path, role: str = "scan") -> Iterator[subprocess.Popen[str]]:
    """Another process holding `database`'s lock until the block ends (or it is killed)."""
    proc = subprocess.Popen(
        [sys.executable, "-c", _HOLD, str(database), role],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert proc.stdout is not None and proc.stdout.readline() == "locked\n"
        yield proc
    finally:
        proc.kill()
        proc.communicate(timeout=10)
