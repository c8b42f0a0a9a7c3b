"""Another program writing a file: an upload written in place (scp, Samba, `rsync --inplace`)
that paused with the file still open."""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

_HOLD = "import sys, time; f = open(sys.argv[1], 'ab'); print('open', flush=True); time.sleep(60)"


@contextmanager
def held_open_for_writing(path: Path) -> Iterator[None]:
    """A process of its own holds `path` open for writing (appending) until the block ends."""
    writer = subprocess.Popen(
        [sys.executable, "-c", _HOLD, str(path)], stdout=subprocess.PIPE, text=True
    )
    assert writer.stdout is not None
    try:
        assert writer.stdout.readline() == "open\n"
        yield
    finally:
        writer.kill()
        writer.wait()
        writer.stdout.close()
