"""The database lock: one writer per database, refusals that name the holder, and no lock that
outlives its holder."""

from __future__ import annotations

import os
import signal
import time
from pathlib import Path

import pytest

from dedupd.errors import StoreError
from dedupd.lock import DatabaseBusy, DatabaseLock, lock_path
from tests.locking import held_elsewhere


def test_a_second_holder_is_refused_with_the_first_ones_pid_and_role(tmp_path: Path) -> None:
    db = tmp_path / "state" / "dedupd.db"
    with held_elsewhere(db, "daemon") as holder, pytest.raises(DatabaseBusy) as busy:
        DatabaseLock(db, "scan").acquire()
    assert (busy.value.pid, busy.value.role) == (holder.pid, "daemon")
    assert str(busy.value) == f"{db} is in use by the dedupd daemon (pid {holder.pid})"
    with DatabaseLock(db, "scan") as lock:  # released when the holder ended
        assert lock.held and lock_path(db).read_text() == f"{os.getpid()} scan\n"
    assert not lock.held


def test_the_lock_of_a_process_killed_with_sigkill_is_free_and_its_stale_pid_ignored(
    tmp_path: Path,
) -> None:
    """flock dies with its holder: a lock file still naming a dead pid never blocks."""
    db = tmp_path / "dedupd.db"
    with held_elsewhere(db, "daemon") as holder:
        holder.send_signal(signal.SIGKILL)
        holder.wait(timeout=10)
        assert lock_path(db).read_text() == f"{holder.pid} daemon\n"  # stale, left behind
        with DatabaseLock(db, "dedupctl"):
            assert lock_path(db).read_text() == f"{os.getpid()} dedupctl\n"


def test_two_locks_in_one_process_exclude_each_other(tmp_path: Path) -> None:
    """flock is per open file: a daemon thread and a CLI call in one process do not share."""
    db = tmp_path / "dedupd.db"
    with DatabaseLock(db, "daemon"), pytest.raises(DatabaseBusy, match=f"pid {os.getpid()}"):
        DatabaseLock(db, "scan").acquire()


def test_a_symlink_planted_at_the_lock_path_is_not_followed(tmp_path: Path) -> None:
    db = tmp_path / "dedupd.db"
    victim = tmp_path / "victim"
    victim.write_text("keep me")
    lock_path(db).symlink_to(victim)
    with pytest.raises(StoreError, match="symlink"):
        DatabaseLock(db, "scan").acquire()
    assert victim.read_text() == "keep me"


def test_a_deleted_lock_file_is_taken_back_so_no_second_writer_gets_in(tmp_path: Path) -> None:
    """`rm dedupd.db*` also removes the lock file; verify() locks the new one at once."""
    db = tmp_path / "dedupd.db"
    with DatabaseLock(db, "daemon") as lock:
        lock_path(db).unlink()
        lock.verify()
        assert lock_path(db).read_text() == f"{os.getpid()} daemon\n"
        with pytest.raises(DatabaseBusy):
            DatabaseLock(db, "scan").acquire()


def test_verify_refuses_when_another_process_locked_the_new_lock_file(tmp_path: Path) -> None:
    db = tmp_path / "dedupd.db"
    with DatabaseLock(db, "daemon") as lock:
        lock_path(db).unlink()
        with held_elsewhere(db, "scan") as other, pytest.raises(DatabaseBusy) as busy:
            lock.verify()
        assert busy.value.pid == other.pid


def test_a_database_named_through_a_symlink_shares_the_lock_of_the_file_it_names(
    tmp_path: Path,
) -> None:
    """A database path that is a symlink (`~/.local/state/dedupd/dedupd.db` pointing at the
    service's) names the same database: a writer going by either name is refused while one
    going by the other holds it, not given a lock file of its own beside the symlink."""
    real = tmp_path / "service" / "dedupd.db"
    real.parent.mkdir()
    real.write_bytes(b"")
    link = tmp_path / "home" / "dedupd.db"
    link.parent.mkdir()
    link.symlink_to(real)
    with held_elsewhere(real, "daemon") as holder, pytest.raises(DatabaseBusy) as busy:
        DatabaseLock(link, "scan").acquire()
    assert busy.value.pid == holder.pid
    with DatabaseLock(link, "daemon"), pytest.raises(DatabaseBusy):
        DatabaseLock(real, "scan").acquire()
    assert not lock_path(link).exists()


_HOLD_AS_DEDUPD = """
import sys
from dedupd.lock import DatabaseLock
lock = DatabaseLock(sys.argv[1], sys.argv[2])
lock.acquire()
print("locked", flush=True)
sys.stdin.read()
"""


def test_a_hard_link_to_the_database_is_the_same_database(tmp_path: Path) -> None:
    """`ln dedupd.db snapshot.db` (or a `cp -al` of the state folder) names the same file,
    but gave a lock file of its own: a `dedupd scan --database snapshot.db` beside the daemon
    wrote the daemon's database through its own WAL, and the database was corrupt. The
    database file itself is locked too: a writer by any name is refused, naming the pid."""
    import subprocess
    import sys

    db = tmp_path / "state" / "dedupd.db"
    db.parent.mkdir()
    db.write_bytes(b"")  # the daemon's database
    holder = subprocess.Popen(
        [sys.executable, "-c", _HOLD_AS_DEDUPD, str(db), "daemon"],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert holder.stdout is not None and holder.stdout.readline() == "locked\n"
        snapshot = tmp_path / "elsewhere" / "snapshot.db"
        snapshot.parent.mkdir()
        os.link(db, snapshot)
        with pytest.raises(DatabaseBusy) as busy:
            DatabaseLock(snapshot, "scan").acquire()
        assert busy.value.pid == holder.pid
        assert str(busy.value) == f"{snapshot} is in use by another process (pid {holder.pid})"
        assert not lock_path(snapshot).read_text()  # its lock file given back, empty
    finally:
        holder.kill()
        holder.communicate(timeout=10)
    with DatabaseLock(snapshot, "scan") as lock:  # free once the holder is gone
        assert lock.held


def test_a_database_written_back_at_a_new_inode_is_locked_at_once(tmp_path: Path) -> None:
    """The daemon writes a deleted database back (a new file): verify() locks it, so that a
    hard link to the new file gives no second writer; while the database is missing,
    verify() keeps what it holds and makes no empty database in its place."""
    db = tmp_path / "dedupd.db"
    with DatabaseLock(db, "daemon") as lock:
        db.unlink()
        lock.verify()
        assert not db.exists()
        db.write_bytes(b"")  # written back
        lock.verify()
        os.link(db, tmp_path / "snapshot.db")
        with pytest.raises(DatabaseBusy, match=f"pid {os.getpid()}"):
            DatabaseLock(tmp_path / "snapshot.db", "scan").acquire()


def test_a_lock_taken_before_the_database_exists_makes_it_so_a_link_names_a_locked_file(
    tmp_path: Path,
) -> None:
    """A daemon's first start locks before SQLite makes the database: an empty file is made
    then (SQLite takes it for a new database), so no link can name an unlocked one."""
    db = tmp_path / "dedupd.db"
    with DatabaseLock(db, "daemon"):
        assert db.exists() and db.stat().st_size == 0
        os.link(db, tmp_path / "snapshot.db")
        with pytest.raises(DatabaseBusy):
            DatabaseLock(tmp_path / "snapshot.db", "scan").acquire()


@pytest.mark.parametrize("planted", ["fifo", "folder"])
@pytest.mark.parametrize("at", ["database", "lock"])
def test_a_fifo_or_folder_at_the_database_or_lock_path_is_refused_at_once(
    tmp_path: Path, planted: str, at: str
) -> None:
    """Opening a FIFO for reading waits for a writer: one planted at the database's path
    hung `dedupd run` (and scan, and offline dedupctl) before its first log line; one at the
    lock's path failed with a bare OSError. Each is refused now, naming the path, as a
    folder there is."""
    db = tmp_path / "dedupd.db"
    path = db if at == "database" else lock_path(db)
    if planted == "fifo":
        os.mkfifo(path)
    else:
        path.mkdir()
    pid = os.fork()
    if pid == 0:  # a child, so that a hang is a failure here, not a hung suite
        try:
            DatabaseLock(db, "daemon").acquire()
        except StoreError as exc:
            os._exit(0 if str(path) in str(exc) else 3)
        except BaseException:
            os._exit(2)
        os._exit(1)
    for _ in range(100):
        done, status = os.waitpid(pid, os.WNOHANG)
        if done:
            assert os.waitstatus_to_exitcode(status) == 0, "not refused, or not named"
            break
        time.sleep(0.05)
    else:
        os.kill(pid, signal.SIGKILL)
        os.waitpid(pid, 0)
        pytest.fail(f"a {planted} at the {at} path hung the lock")
    assert path.is_fifo() if planted == "fifo" else path.is_dir()


def test_a_device_at_the_database_path_is_refused_without_being_opened(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Opening a device may act (a watchdog device arms, a tape rewinds): one at the
    database's path is refused from its stat, never opened."""
    import stat

    db = tmp_path / "dedupd.db"
    os.mknod(db, stat.S_IFCHR | 0o600, os.makedev(1, 3))  # what /dev/null is
    opened: list[str] = []
    real = os.open

    def watched(path: object, *args: object, **kw: object) -> int:
        opened.append(str(path))
        return real(path, *args, **kw)  # type: ignore[arg-type]

    monkeypatch.setattr(os, "open", watched)
    with pytest.raises(StoreError, match="not a regular file"):
        DatabaseLock(db, "daemon").acquire()
    assert str(db) not in opened
