"""The only code that moves or deletes a user's file.

Every operation is written to the actions journal (state ``planned``) before the first
filesystem change and marked ``done``, ``failed`` or ``rolled_back`` after. A crash at any
instant leaves a ``planned`` entry that `recover()` finishes or rolls back on the next start,
so that each photo exists exactly once: in place, or in quarantine.

Moves never overwrite: the new name is created with ``link()`` (which fails if the name
exists), and the old one is unlinked only after. Across filesystems the bytes are copied to a
temporary name, fsynced and checked against the recorded sha256 before that link.
A delete happens only for an exact duplicate whose keeper, at another inode, is read again
just before and still has the same sha256.
"""

from __future__ import annotations

import contextlib
import errno
import functools
import os
import shutil
import stat
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import structlog

from dedupd.errors import DedupdError
from dedupd.imaging import FileStat, file_sha256
from dedupd.store import FileRecord, Store

__all__ = ["ActionError", "Actions", "Recovered", "quarantine_path_for"]

log = structlog.get_logger("dedupd.actions")

# Test seam: the cross-filesystem path is exercised by making link() report EXDEV.
_link = os.link


class ActionError(DedupdError):
    """An action was refused or failed; the file was left where it was."""


@dataclass(frozen=True, slots=True)
class Recovered:
    action_id: int
    kind: str
    outcome: str  # "done" | "rolled_back" | "failed"
    detail: str


def _no_checkpoint(step: str) -> None:
    pass


def quarantine_path_for(quarantine: Path, record: FileRecord) -> Path:
    """Where a file goes in quarantine: its root's path, then its path inside the root.

    /srv/photos/uploads + 2026/IMG_1.jpg → <quarantine>/srv/photos/uploads/2026/IMG_1.jpg
    """
    return quarantine / record.root.lstrip(os.sep) / record.relpath


def _free_name(path: Path) -> Path:
    """`path`, or `name (1).ext`, `name (2).ext`, … whichever does not exist yet."""
    candidate, n = path, 0
    while os.path.lexists(candidate):
        n += 1
        candidate = path.with_name(f"{path.stem} ({n}){path.suffix}")
    return candidate


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _exists(path: str | None) -> bool:
    return path is not None and os.path.lexists(path)


class Actions:
    """Journaled quarantine, delete, restore and purge over one store.

    `checkpoint(step)` is called after each step of an operation; tests use it to kill the
    process at every instant and check that `recover()` leaves each photo exactly once.
    """

    def __init__(
        self,
        store: Store,
        quarantine: Path | None,
        *,
        checkpoint: Callable[[str], None] = _no_checkpoint,
    ):
        self.store = store
        self.quarantine_dir = quarantine
        self._checkpoint = checkpoint

    # -- moving -------------------------------------------------------------------------------
    def _move(self, action_id: int, src: Path, dst: Path, sha256: str) -> None:
        """Make `dst` hold src's bytes, then remove `src`. Never overwrites anything."""
        dst.parent.mkdir(parents=True, exist_ok=True)
        try:
            _link(src, dst)
        except OSError as exc:
            if exc.errno not in (errno.EXDEV, errno.EPERM, errno.ENOTSUP, errno.EMLINK):
                raise
            self._copy_in(action_id, src, dst, sha256)
        self._checkpoint("linked")
        _fsync_dir(dst.parent)
        os.unlink(src)
        _fsync_dir(src.parent)
        self._checkpoint("unlinked")

    def _copy_in(self, action_id: int, src: Path, dst: Path, sha256: str) -> None:
        """Cross-filesystem: copy to a temporary name, fsync, verify, then link into place."""
        tmp = dst.with_name(f".dedupd-{action_id}.tmp")
        self.store.journal_update(action_id, tmp=str(tmp))
        with open(src, "rb") as fin, open(tmp, "xb") as fout:
            shutil.copyfileobj(fin, fout, 1 << 20)
            fout.flush()
            os.fsync(fout.fileno())
        shutil.copystat(src, tmp)
        self._checkpoint("copied")
        if file_sha256(str(tmp)) != sha256:
            os.unlink(tmp)
            raise ActionError(f"{src}: the copy in quarantine does not match; source left in place")
        os.link(tmp, dst)  # same filesystem now; fails rather than overwrite
        os.unlink(tmp)

    def _check_unchanged(self, record: FileRecord) -> None:
        try:
            now = FileStat.of(os.stat(record.path))
        except FileNotFoundError as exc:
            raise ActionError(f"{record.path}: vanished before it could be acted on") from exc
        if now != record.stat:
            raise ActionError(f"{record.path}: changed since it was hashed; left in place")

    def _run(self, action_id: int, operation: Callable[[], None]) -> None:
        try:
            operation()
        except (OSError, ActionError) as exc:
            self.store.journal_finish(action_id, "failed", str(exc))
            log.error("action_failed", action=action_id, error=str(exc))
            if isinstance(exc, ActionError):
                raise
            raise ActionError(str(exc)) from exc

    # -- the operations ------------------------------------------------------------------------
    def quarantine(
        self, record: FileRecord, keeper: FileRecord | None, distance: int | None, reason: str
    ) -> int:
        """Move `record` into quarantine with what a restore needs; returns the action id."""
        if self.quarantine_dir is None:
            raise ActionError("quarantine.path is not configured; cannot quarantine")
        if record.sha256 is None:
            raise ActionError(f"{record.path}: not hashed; cannot quarantine")
        self._check_unchanged(record)
        if keeper is not None:
            self._check_keeper_is_another_file(record, keeper)
        dst = _free_name(quarantine_path_for(self.quarantine_dir, record))
        action_id = self.store.journal_plan(
            kind="quarantine",
            file_id=record.id,
            src=str(record.path),
            dst=str(dst),
            sha256=record.sha256,
            keeper_id=keeper.id if keeper else None,
            keeper_path=str(keeper.path) if keeper else None,
            distance=distance,
            reason=reason,
        )
        self._checkpoint("planned")
        self._run(action_id, lambda: self._move(action_id, record.path, dst, record.sha256 or ""))
        self._finish_removal(action_id, record, "quarantined")
        return action_id

    def delete(self, record: FileRecord, keeper: FileRecord, reason: str) -> int:
        """Delete an exact duplicate after re-verifying its keeper; returns the action id."""
        if record.sha256 is None or record.sha256 != keeper.sha256:
            raise ActionError(f"{record.path}: only exact duplicates are deleted")
        self._check_unchanged(record)
        action_id = self.store.journal_plan(
            kind="delete",
            file_id=record.id,
            src=str(record.path),
            sha256=record.sha256,
            keeper_id=keeper.id,
            keeper_path=str(keeper.path),
            distance=0,
            reason=reason,
        )
        self._checkpoint("planned")

        def verify_and_unlink() -> None:
            self._verify_keeper(record, keeper)
            self._checkpoint("verified")
            os.unlink(record.path)
            _fsync_dir(record.path.parent)
            self._checkpoint("unlinked")

        self._run(action_id, verify_and_unlink)
        self._finish_removal(action_id, record, "deleted")
        return action_id

    @staticmethod
    def _check_keeper_is_another_file(record: FileRecord, keeper: FileRecord) -> None:
        """The keeper must be a regular file (not a symlink) at another inode, present now."""
        try:
            k, r = os.lstat(keeper.path), os.lstat(record.path)
        except FileNotFoundError as exc:
            raise ActionError(f"{exc.filename}: gone; nothing done") from exc
        if not stat.S_ISREG(k.st_mode):
            raise ActionError(f"{keeper.path} is not a regular file; nothing done")
        if (k.st_dev, k.st_ino) == (r.st_dev, r.st_ino):
            raise ActionError(f"{keeper.path} is the same file as {record.path}; nothing done")

    @classmethod
    def _verify_keeper(cls, record: FileRecord, keeper: FileRecord) -> None:
        try:
            cls._check_keeper_is_another_file(record, keeper)
        except ActionError as exc:
            raise ActionError(f"{exc}; nothing deleted") from exc
        if file_sha256(str(keeper.path)) != record.sha256:
            raise ActionError(f"{keeper.path} no longer has the same bytes; nothing deleted")
        if file_sha256(str(record.path)) != record.sha256:
            raise ActionError(f"{record.path} changed; nothing deleted")

    def _finish_removal(self, action_id: int, record: FileRecord, state: Any) -> None:
        self.store.journal_finish(action_id, "done")
        self.store.add_tombstone(record.sha256 or "", str(record.path), action_id)
        self.store.set_state(record.id, state)

    def restore(self, action_id: int) -> Path:
        """Put a quarantined file back at its original path (never overwriting) and remember
        the pair as distinct so it is not quarantined again. Returns the restored path."""
        original = self.store.action(action_id)
        if original is None or original["kind"] != "quarantine" or original["state"] != "done":
            raise ActionError(f"action {action_id} is not a finished quarantine")
        if self.store.actions(
            "of_action = ? AND kind IN ('restore', 'purge') AND state = 'done'", (action_id,)
        ):
            raise ActionError(f"action {action_id} was already restored or purged")
        src, dst = Path(original["dst"]), Path(original["src"])
        if os.path.lexists(dst):
            raise ActionError(f"{dst} exists; refusing to overwrite it")
        try:
            intact = file_sha256(str(src)) == original["sha256"]
        except DedupdError as exc:
            raise ActionError(f"{exc}; nothing restored") from exc
        if not intact:
            raise ActionError(f"{src} no longer holds the quarantined photo; nothing restored")
        # Remember the user's decision before the file reappears, so that a daemon watching
        # the folder never sees it back without the distinct mark.
        self._mark_restored_distinct(original)
        restore_id = self.store.journal_plan(
            kind="restore",
            file_id=original["file_id"],
            src=str(src),
            dst=str(dst),
            sha256=original["sha256"],
            keeper_id=original["keeper_id"],
            keeper_path=original["keeper_path"],
            of_action=action_id,
            reason="user restore",
        )
        self._checkpoint("planned")
        self._run(restore_id, lambda: self._move(restore_id, src, dst, original["sha256"]))
        self._finish_restore(restore_id, original)
        return dst

    def _mark_restored_distinct(self, original: dict[str, Any]) -> None:
        self.store.remove_tombstones(original["sha256"], original["src"])
        keeper = self.store.file(original["keeper_id"]) if original["keeper_id"] else None
        if keeper is not None and keeper.sha256:
            self.store.mark_distinct(original["sha256"], keeper.sha256)

    def _finish_restore(self, restore_id: int, original: dict[str, Any]) -> None:
        self.store.journal_finish(restore_id, "done")
        self._mark_restored_distinct(original)
        if original["file_id"] is not None:
            self.store.set_state(original["file_id"], "missing")  # the next scan re-finds it

    def purge(self, older_than: float, *, only: set[int] | None = None) -> list[int]:
        """Delete files quarantined more than `older_than` seconds ago (by the store's clock);
        with `only`, just those quarantine action ids among them."""
        cutoff = self.store.now() - older_than
        purged = []
        for q in self.store.quarantined():
            if q["finished"] > cutoff or (only is not None and q["id"] not in only):
                continue
            purge_id = self.store.journal_plan(
                kind="purge",
                file_id=q["file_id"],
                src=q["dst"],
                sha256=q["sha256"],
                of_action=q["id"],
                reason=f"quarantined more than {older_than:.0f}s ago",
            )
            self._checkpoint("planned")
            try:
                self._run(purge_id, functools.partial(_unlink_verified, q["dst"], q["sha256"]))
            except ActionError:
                continue  # journaled as failed and logged; purge the others
            self.store.journal_finish(purge_id, "done")
            purged.append(q["id"])
        return purged

    # -- crash recovery -----------------------------------------------------------------------
    def recover(self) -> list[Recovered]:
        """Finish or roll back every action a crash left `planned`. Run before anything else."""
        results = []
        for a in self.store.actions("state = 'planned'"):
            try:
                outcome, detail = self._recover_one(a)
            except (OSError, DedupdError) as exc:  # one bad entry must not stop the start
                outcome, detail = "failed", f"recovery failed, files left as they are: {exc}"
            if outcome == "done":
                if a["kind"] in ("quarantine", "delete"):
                    record = self.store.file(a["file_id"]) if a["file_id"] else None
                    self.store.journal_finish(a["id"], "done", "completed during recovery")
                    self.store.add_tombstone(a["sha256"], a["src"], a["id"])
                    if record is not None:
                        self.store.set_state(
                            record.id, "quarantined" if a["kind"] == "quarantine" else "deleted"
                        )
                elif a["kind"] == "restore":
                    original = self.store.action(a["of_action"])
                    assert original is not None  # a restore always names its quarantine
                    self._finish_restore(a["id"], original)
                else:
                    self.store.journal_finish(a["id"], "done", "completed during recovery")
            else:
                self.store.journal_finish(a["id"], outcome, detail)
            log.warning(
                "action_recovered", action=a["id"], kind=a["kind"], outcome=outcome, detail=detail
            )
            results.append(Recovered(a["id"], a["kind"], outcome, detail))
        return results

    def _recover_one(self, a: dict[str, Any]) -> tuple[str, str]:
        src, dst, tmp = a["src"], a["dst"], a["tmp"]
        if a["kind"] == "delete":
            if _exists(src):
                return "rolled_back", "crashed before the delete; file kept"
            return "done", "file was deleted before the crash"
        if a["kind"] == "purge":
            if _exists(src) and file_sha256(src) != a["sha256"]:
                return "failed", f"{src} no longer holds the quarantined bytes; kept"
            _unlink_if_present(src)
            return "done", "purge finished"
        # quarantine and restore: a move from src to dst
        if _exists(src) and _exists(dst):
            # Remove the source only when it provably is the file now safe at dst: the same
            # inode, or both holding the journaled bytes. Anything else (an edit saved over
            # the source while we were down) is kept, whatever it costs.
            same = os.path.samefile(src, dst) or (
                file_sha256(src) == a["sha256"] and file_sha256(dst) == a["sha256"]
            )
            if same:
                os.unlink(src)
                _unlink_if_present(tmp)
                return "done", "both names existed; the source was removed"
            _unlink_if_present(tmp)
            return "failed", f"{src} and {dst} hold different bytes; both left in place"
        if _exists(dst):
            _unlink_if_present(tmp)
            return "done", "the move had completed"
        if _exists(src):
            _unlink_if_present(tmp)
            return "rolled_back", "crashed before the move; file left in place"
        if _exists(tmp) and file_sha256(tmp) == a["sha256"]:
            Path(dst).parent.mkdir(parents=True, exist_ok=True)
            os.link(tmp, dst)
            os.unlink(tmp)
            return "done", "finished from the verified temporary copy"
        return "failed", "neither the source nor the destination exists"


def _unlink_verified(path: str, sha256: str) -> None:
    """Unlink `path` only if it still holds `sha256` (a purge must not hit a stranger)."""
    try:
        if os.path.lexists(path) and file_sha256(path) != sha256:
            raise ActionError(f"{path} no longer holds the quarantined bytes; kept")
    except DedupdError as exc:
        raise ActionError(str(exc)) from exc
    _unlink_if_present(path)


def _unlink_if_present(path: str | None) -> None:
    if path is not None:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(path)
