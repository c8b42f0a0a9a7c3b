"""The database lock: one writer per database, refusals that name the holder, and no lock that
outlives its holder."""

from __future__ import annotations

import os
import signal
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
