"""One writer per database: an exclusive flock(2) on `<database>.lock`, beside the database
(the file its name leads to, through symlinks).

The daemon holds it for its lifetime; `dedupd scan` and dedupctl's offline changes hold it
while they write. Whoever finds it taken gets `DatabaseBusy`, naming the holder's pid and
role, which the holder wrote into the file after locking. The kernel drops the lock when its
holder dies however it dies, so a lock file left behind by a killed process (a stale pid in
it) never blocks anyone: only a live holder does.

    with DatabaseLock(config.database, "scan"):
        ...  # write the database
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import os
from pathlib import Path
from typing import Literal

from dedupd.errors import DedupdError, StoreError

__all__ = ["DatabaseBusy", "DatabaseLock", "Role", "lock_path"]

Role = Literal["daemon", "scan", "dedupctl"]

_WHO = {"daemon": "the dedupd daemon", "scan": "dedupd scan", "dedupctl": "dedupctl"}
_MODE = 0o660  # like the socket: the service's group may run offline dedupctl commands


class DatabaseBusy(DedupdError):
    """Another live process holds the database's lock. `pid`/`role` are None if it had not
    yet written them (it took the lock a moment ago)."""

    def __init__(self, database: Path, pid: int | None, role: str | None):
        self.database, self.pid, self.role = database, pid, role
        who = _WHO.get(role or "", "another process") + (f" (pid {pid})" if pid else "")
        super().__init__(f"{database} is in use by {who}")


def lock_path(database: Path) -> Path:
    return database.with_name(database.name + ".lock")


class DatabaseLock:
    """The exclusive lock on one database, as a context manager (or acquire/release)."""

    def __init__(self, database: Path, role: Role):
        self.database, self.role = Path(database), role
        # Beside the file the name leads to: a database named through a symlink (or by its
        # own path) is one database, so its writers must meet at one lock file.
        self.path = lock_path(Path(os.path.realpath(self.database)))
        self._fd: int | None = None

    def acquire(self) -> None:
        """Take the lock or raise DatabaseBusy at once (never waits); StoreError if the
        lock file cannot be opened (a read-only directory, a symlink planted there)."""
        fd = self._open()
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            pid, role = _holder(fd)
            os.close(fd)
            raise DatabaseBusy(self.database, pid, role) from None
        except BaseException:
            os.close(fd)
            raise
        # After locking, so that what a refused process reads is the live holder's.
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()} {self.role}\n".encode(), 0)
        self._fd = fd

    def release(self) -> None:
        """Drop the lock. The file stays: unlinking it would let a process that opened it
        meanwhile lock an inode nobody else looks at."""
        if self._fd is not None:
            fd, self._fd = self._fd, None
            with contextlib.suppress(OSError):
                os.ftruncate(fd, 0)
            os.close(fd)  # closing the last descriptor releases the flock

    @property
    def held(self) -> bool:
        return self._fd is not None

    def verify(self) -> None:
        """Make sure the lock file at the path is still the one held. If it was deleted or
        replaced (`rm dedupd.db*`), lock the one there now, so that no second writer can
        take it; DatabaseBusy if one already has (the old lock is kept until release())."""
        if self._fd is None:
            raise StoreError(f"{self.path}: the database lock is not held")
        held = os.fstat(self._fd)
        try:
            st = os.stat(self.path, follow_symlinks=False)
            if (st.st_dev, st.st_ino) == (held.st_dev, held.st_ino):
                return
        except FileNotFoundError:
            pass
        old, self._fd = self._fd, None
        try:
            self.acquire()
        except BaseException:
            self._fd = old
            raise
        os.close(old)

    def __enter__(self) -> DatabaseLock:
        self.acquire()
        return self

    def __exit__(self, *exc: object) -> None:
        self.release()

    def _open(self) -> int:
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            return os.open(
                self.path,
                os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC,
                _MODE,
            )
        except OSError as exc:
            why = "is a symlink; refusing to follow it" if exc.errno == errno.ELOOP else exc
            raise StoreError(f"{self.path}: cannot open the database lock: {why}") from exc


def _holder(fd: int) -> tuple[int | None, str | None]:
    """The pid and role written in the lock file, if any (it may be mid-write)."""
    try:
        pid, role = os.pread(fd, 64, 0).decode("ascii").split()
        return int(pid), role
    except (OSError, ValueError):
        return None, None
