"""One writer per database: an exclusive flock(2) on `<database>.lock`, beside the database
(the file its name leads to, through symlinks), and one on the database file itself.

The lock file carries the holder's pid and role; the database's own flock is what makes
one database one lock whatever it is called: a hard link (`ln dedupd.db snapshot.db`, a
`cp -al` of the state folder) is another name for the same file, with a lock file of its
own, and a writer through it beside the daemon corrupted the database (SQLite keeps a WAL
per name, and one replayed its pages over the other's). flock and SQLite's own locks
(fcntl) do not interact on Linux.

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
import stat
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
        self._file: int | None = None  # the database file's descriptor, flock'ed

    def acquire(self) -> None:
        """Take the lock or raise DatabaseBusy at once (never waits); StoreError if the
        lock file cannot be opened (a read-only directory, a symlink planted there)."""
        fd = self._lock_file()
        try:
            # Made if missing (SQLite takes an empty file for a new database): a hard link
            # to it can only be made once it exists, and then it is locked already.
            self._file = self._lock_database(create=True)
            self._sign(fd)
        except BaseException:
            if self._file is not None:
                os.close(self._file)
                self._file = None
            os.close(fd)
            raise
        self._fd = fd

    def _lock_file(self) -> int:
        """The lock file's descriptor, flock'ed; DatabaseBusy naming the holder written in
        it when another process has it."""
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
        return fd

    def _sign(self, fd: int) -> None:
        # After locking, so that what a refused process reads is the live holder's.
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()} {self.role}\n".encode(), 0)

    def _lock_database(self, *, create: bool) -> int | None:
        """The database file's descriptor, flock'ed; None when there is none (and not
        `create`). DatabaseBusy when another process holds it under another name: its pid
        from /proc/locks where the kernel says, its role unknown."""
        # O_NONBLOCK: opening a FIFO planted there would wait for a writer, forever
        flags = os.O_RDONLY | os.O_CLOEXEC | os.O_NOFOLLOW | os.O_NONBLOCK
        real = os.path.realpath(self.database)
        # Looked at before it is opened: opening a device may act (a watchdog device arms)
        with contextlib.suppress(FileNotFoundError):
            if not stat.S_ISREG(os.stat(real, follow_symlinks=False).st_mode):
                raise StoreError(f"{real}: the database is not a regular file")
        try:
            fd = os.open(real, flags | (os.O_CREAT if create else 0), 0o644)  # SQLite's mode
        except FileNotFoundError:
            if create:
                raise
            return None
        except OSError as exc:
            raise StoreError(f"{real}: cannot open the database to lock it: {exc}") from exc
        try:
            _regular(fd, real, "the database")
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            pid = _flock_holder(os.fstat(fd))
            os.close(fd)
            raise DatabaseBusy(self.database, pid, None) from None
        except OSError as exc:  # NFS refuses an exclusive flock on a read-only descriptor
            os.close(fd)
            raise StoreError(
                f"{real}: cannot lock the database ({exc.strerror}); keep it on a local disk"
            ) from exc
        except BaseException:
            os.close(fd)
            raise
        return fd

    def release(self) -> None:
        """Drop the lock. The file stays: unlinking it would let a process that opened it
        meanwhile lock an inode nobody else looks at."""
        if self._file is not None:
            os.close(self._file)
            self._file = None
        if self._fd is not None:
            fd, self._fd = self._fd, None
            with contextlib.suppress(OSError):
                os.ftruncate(fd, 0)
            os.close(fd)  # closing the last descriptor releases the flock

    @property
    def held(self) -> bool:
        return self._fd is not None

    def verify(self) -> None:
        """Make sure the lock file and the database at their paths are still the ones held.
        If one was deleted or replaced (`rm dedupd.db*`; the daemon writing its database
        back), lock the one there now, so that no second writer can take it; DatabaseBusy if
        one already has (the old lock is kept until release())."""
        if self._fd is None:
            raise StoreError(f"{self.path}: the database lock is not held")
        self._verify_database()
        held = os.fstat(self._fd)
        try:
            st = os.stat(self.path, follow_symlinks=False)
            if (st.st_dev, st.st_ino) == (held.st_dev, held.st_ino):
                return
        except FileNotFoundError:
            pass
        fd = self._lock_file()  # DatabaseBusy: the old lock is kept until release()
        try:
            self._sign(fd)
        except BaseException:
            os.close(fd)
            raise
        os.close(self._fd)
        self._fd = fd

    def _verify_database(self) -> None:
        """The database file's lock: a missing database keeps the old one (the daemon is
        about to write it back), one at another inode is locked in its place."""
        try:
            st = os.stat(os.path.realpath(self.database))
        except FileNotFoundError:
            return
        if self._file is not None:
            held = os.fstat(self._file)
            if (st.st_dev, st.st_ino) == (held.st_dev, held.st_ino):
                return
        new = self._lock_database(create=False)
        if new is not None:
            if self._file is not None:
                os.close(self._file)
            self._file = new

    def __enter__(self) -> DatabaseLock:
        self.acquire()
        return self

    def __exit__(self, *exc: object) -> None:
        self.release()

    def _open(self) -> int:
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            fd = os.open(
                self.path,
                os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC | os.O_NONBLOCK,
                _MODE,
            )
        except OSError as exc:
            why = "is a symlink; refusing to follow it" if exc.errno == errno.ELOOP else exc
            raise StoreError(f"{self.path}: cannot open the database lock: {why}") from exc
        try:
            _regular(fd, str(self.path), "the database lock")
        except BaseException:
            os.close(fd)
            raise
        return fd


def _regular(fd: int, path: str, what: str) -> None:
    """StoreError unless `fd` is a regular file: a folder, a FIFO or a device there (a
    mistyped `database:` naming a folder, say) is never taken for a database or its lock."""
    mode = os.fstat(fd).st_mode
    if not stat.S_ISREG(mode):
        kind = "a folder" if stat.S_ISDIR(mode) else "not a regular file"
        raise StoreError(f"{path}: {what} is {kind}; give the path of a file")


def _flock_holder(st: os.stat_result) -> int | None:
    """The pid holding a flock on the file `st` describes, as /proc/locks lists it (Linux;
    None elsewhere, or when the lock went meanwhile)."""
    device = f"{os.major(st.st_dev):02x}:{os.minor(st.st_dev):02x}:{st.st_ino}"
    try:
        with open("/proc/locks") as locks:
            for line in locks:
                fields = line.split()  # 1: FLOCK ADVISORY WRITE <pid> <maj:min:inode> 0 EOF
                if len(fields) >= 6 and fields[1] == "FLOCK" and fields[5] == device:
                    return int(fields[4])
    except (OSError, ValueError):
        pass
    return None


def _holder(fd: int) -> tuple[int | None, str | None]:
    """The pid and role written in the lock file, if any (it may be mid-write)."""
    try:
        pid, role = os.pread(fd, 64, 0).decode("ascii").split()
        return int(pid), role
    except (OSError, ValueError):
        return None, None
