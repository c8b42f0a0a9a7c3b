"""The settle clock, on a fake clock: a file is due `settle_seconds` after the last write
seen, once, and never while it is still being written."""

from __future__ import annotations

import errno
import fcntl
import os
import queue
from pathlib import Path

import pytest
from watchdog.events import (
    FileClosedEvent,
    FileClosedNoWriteEvent,
    FileCreatedEvent,
    FileModifiedEvent,
    FileMovedEvent,
    FileOpenedEvent,
)

from dedupd import safefs
from dedupd.imaging import FileStat
from dedupd.watcher import Hint, Settler, _Handler
from tests import writers

SETTLE = 2.0  # and steps of SETTLE / 8: exact in binary floating point


class Clock:
    def __init__(self) -> None:
        self.t = 1000.0

    def __call__(self) -> float:
        return self.t


def _write(path: Path, data: bytes) -> None:
    with open(path, "ab") as f:
        f.write(data)


def test_a_file_still_being_written_is_never_due(tmp_path: Path) -> None:
    """A slow in-place upload (scp, Samba): writes keep coming, each a bit under the settle
    time apart. At no moment may the half-written file be handed on to be decoded (it would
    be recorded as `truncated`); once quiet it is due exactly once."""
    clock = Clock()
    settler = Settler(SETTLE, clock)
    path = tmp_path / "IMG_0001.jpg"
    for _ in range(20):
        _write(path, b"x" * 1000)
        settler.add(str(path))  # the event of that write
        for _ in range(7):
            clock.t += SETTLE / 8
            assert settler.due() == []
    clock.t += SETTLE / 8  # settle_seconds since the last write, to the moment
    assert settler.due() == [(str(path), FileStat.of(os.stat(path)))]
    clock.t += 10 * SETTLE
    assert settler.due() == []
    assert len(settler) == 0


def test_a_file_another_program_holds_open_for_writing_is_not_due_until_closed(
    tmp_path: Path,
) -> None:
    """Red team 12: an upload written in place that paused for longer than the settle time
    (its writer still holding it open) was hashed, found to be a photo of the library byte
    for byte, and deleted; the rest of the upload went to a file without a name. Open for
    writing, a file is never due; closed, it is due settle_seconds after that was seen."""
    clock = Clock()
    settler = Settler(SETTLE, clock)
    path = tmp_path / "MVIMG_0001.jpg"
    _write(path, b"the still's bytes")
    settler.add(str(path))
    with writers.held_open_for_writing(path):
        for _ in range(3):
            clock.t += SETTLE
            assert settler.due() == []
    assert settler.due() == []  # closed now, but noticed open a moment ago
    clock.t += SETTLE
    assert settler.due() == [(str(path), FileStat.of(os.stat(path)))]


def test_open_for_writing_is_told_from_proc_on_a_filesystem_without_leases(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A filesystem without leases: the descriptors /proc lists tell, by the file's name.
    A lease refused for want of CAP_LEASE (another user's file) tells nothing: that user's
    processes are hidden too (review: it answered "no writer")."""
    path = tmp_path / "upload.jpg"
    _write(path, b"half a photo")
    real = fcntl.fcntl
    refusal = [errno.EACCES]

    def no_leases(fd: int, cmd: int, arg: int = 0) -> int:
        if cmd == fcntl.F_SETLEASE:
            raise OSError(refusal[0], "no lease for you")
        return real(fd, cmd, arg)

    monkeypatch.setattr(fcntl, "fcntl", no_leases)
    fd = os.open(path, os.O_RDONLY)
    try:
        with writers.held_open_for_writing(path):
            assert safefs.open_for_writing(fd, (str(path),)) is None
        refusal[0] = errno.EINVAL  # no leases on this filesystem
        assert safefs.open_for_writing(fd, (str(path),)) is False
        with writers.held_open_for_writing(path):
            assert safefs.open_for_writing(fd, (str(path),)) is True
            assert safefs.open_for_writing(fd, (str(tmp_path / "other.jpg"),)) is False
            assert safefs.open_for_writing(fd) is None  # no name to look for: cannot tell
        with open(path, "rb"):  # a reader is no writer
            assert safefs.open_for_writing(fd, (str(path),)) is False
    finally:
        os.close(fd)


def test_the_clock_starts_at_the_event_not_when_the_settler_looks(tmp_path: Path) -> None:
    """An event stamped at t (by the watch thread) makes the file due at t + settle, even if
    the daemon only handled the hint later; and the loop is told exactly when."""
    clock = Clock()
    settler = Settler(SETTLE, clock)
    path = tmp_path / "a.jpg"
    _write(path, b"photo")
    written = clock.t
    clock.t += 1.0  # the hint waited in the queue
    settler.add(str(path), at=written)
    assert settler.next_due() == written + SETTLE
    clock.t = written + SETTLE - 1 / 1024
    assert settler.due() == []
    clock.t = written + SETTLE
    assert [p for p, _ in settler.due()] == [str(path)]
    assert settler.next_due() is None


def test_a_change_without_an_event_restarts_the_clock(tmp_path: Path) -> None:
    """A missed event (inotify overflow): the stat check catches the write, and the clock
    starts again from when the change was noticed."""
    clock = Clock()
    settler = Settler(SETTLE, clock)
    path = tmp_path / "a.jpg"
    _write(path, b"first half")
    settler.add(str(path))
    clock.t += 1.0
    _write(path, b"second half")  # no event for this one
    clock.t += SETTLE - 1.0
    assert settler.due() == []
    noticed = clock.t
    assert settler.next_due() == noticed + SETTLE
    clock.t = noticed + SETTLE - 1 / 1024
    assert settler.due() == []
    clock.t = noticed + SETTLE
    assert settler.due() == [(str(path), FileStat.of(os.stat(path)))]


def test_a_file_replaced_by_another_inode_restarts_the_clock(tmp_path: Path) -> None:
    """Same name, same size, another file (a rename over it whose event was lost)."""
    clock = Clock()
    settler = Settler(SETTLE, clock)
    path = tmp_path / "a.jpg"
    path.write_bytes(b"A" * 100)
    settler.add(str(path))
    clock.t += 1.0
    other = tmp_path / "b.jpg"
    other.write_bytes(b"B" * 100)
    st = os.stat(path)
    os.utime(other, ns=(st.st_atime_ns, st.st_mtime_ns))  # only the inode differs
    os.replace(other, path)
    clock.t += SETTLE
    assert settler.due() == []
    clock.t += SETTLE
    ((_, stat),) = settler.due()
    assert stat.inode == os.stat(path).st_ino != st.st_ino


def test_vanished_and_non_regular_paths_leave_silently(tmp_path: Path) -> None:
    clock = Clock()
    settler = Settler(SETTLE, clock)
    gone = tmp_path / ".tmp-upload"
    gone.write_bytes(b"x")
    settler.add(str(gone))
    gone.unlink()
    (tmp_path / "real.jpg").write_bytes(b"x")
    os.symlink(tmp_path / "real.jpg", tmp_path / "link.jpg")
    settler.add(str(tmp_path / "link.jpg"))
    clock.t += SETTLE
    assert settler.due() == []
    assert len(settler) == 0 and settler.next_due() is None


def test_writes_become_stamped_touch_hints_and_wake_the_loop_reads_do_not() -> None:
    """The handler maps each write event (created, modified, closed after writing, moved in)
    to a hint stamped with its arrival time, and wakes the daemon; opening or reading a file
    is not a write. Closed after writing is a hint of its own ("written"): the file is hashed
    again even when its size and mtime are as recorded."""
    hints: queue.Queue[Hint] = queue.Queue()
    wakes: list[int] = []
    handler = _Handler(hints, lambda: 42.0, lambda: wakes.append(1))
    for event in (
        FileCreatedEvent("/r/a.jpg"),
        FileModifiedEvent("/r/a.jpg"),
        FileClosedEvent("/r/a.jpg"),
        FileMovedEvent("/r/.a.tmp", "/r/b.jpg"),
        FileOpenedEvent("/r/a.jpg"),
        FileClosedNoWriteEvent("/r/a.jpg"),
    ):
        handler.dispatch(event)
    got = [hints.get_nowait() for _ in range(hints.qsize())]
    assert got == [
        Hint("touch", "/r/a.jpg", at=42.0),
        Hint("touch", "/r/a.jpg", at=42.0),
        Hint("written", "/r/a.jpg", at=42.0),
        Hint("moved", "/r/.a.tmp", "/r/b.jpg", at=42.0),
    ]
    assert len(wakes) == 4


def test_a_file_reached_through_a_symlinked_folder_never_settles(tmp_path: Path) -> None:
    """The red team's loop: `loop/up -> ..` made in a watched folder, and watchdog replayed
    the root's photos under it; each was handed on, refused by the worker ("is a symbolic
    link") and recorded as an error of a file that does not exist. Such a path names no file
    of the root: it leaves the settler silently. The photo by its own path settles."""
    clock = Clock()
    settler = Settler(SETTLE, clock)
    root = tmp_path.resolve()
    (root / "loop").mkdir()
    os.symlink("..", root / "loop" / "up")
    _write(root / "IMG_0001.jpg", b"x" * 1000)
    through = str(root / "loop" / "up" / "IMG_0001.jpg")
    assert os.path.isfile(through)  # the path does lead to the photo
    settler.add(through)
    settler.add(str(root / "IMG_0001.jpg"))
    clock.t += SETTLE
    photo = root / "IMG_0001.jpg"
    assert settler.due() == [(str(photo), FileStat.of(os.stat(photo)))]
    assert len(settler) == 0


_LEASE_BROKEN = """
import fcntl, os, subprocess, sys, time
from dedupd import safefs

path = sys.argv[1]
real = fcntl.fcntl

def hook(fd, cmd, arg=0):
    if cmd == fcntl.F_SETLEASE and arg == fcntl.F_UNLCK:
        # a writer opens the file while the lease is held: the kernel signals the holder
        # and holds the writer's open until the lease is given up
        code = "import sys; open(sys.argv[1], 'ab').close()"
        writer = subprocess.Popen([sys.executable, "-c", code, path])
        time.sleep(0.5)
        result = real(fd, cmd, arg)
        writer.wait(timeout=30)
        return result
    return real(fd, cmd, arg)

fcntl.fcntl = hook
fd = os.open(path, os.O_RDONLY)
print(safefs.open_for_writing(fd, (path,)))
"""


def test_a_writer_breaking_the_lease_does_not_end_the_daemon(tmp_path: Path) -> None:
    """Review: a writer opening the file in the instant the read lease is held breaks it,
    and the kernel signals the holder: SIGIO by default, whose default action ended the
    process. The signal is SIGURG (F_SETSIG), ignored."""
    import subprocess
    import sys

    path = tmp_path / "upload.jpg"
    _write(path, b"half a photo")
    child = subprocess.run(
        [sys.executable, "-c", _LEASE_BROKEN, str(path)], capture_output=True, text=True,
        timeout=60,
    )
    assert (child.returncode, child.stdout) == (0, "False\n"), child
