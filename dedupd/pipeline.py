"""The daemon's one path from a file on disk to a decision, on the daemon's thread.

Watch hints and reconcile results come in; what is a new or changed photo (by the one
identity rule, `scanner.same_version`) goes to the hasher pool, settled uploads before the
reconcile's backlog; moves are followed and deletions forgotten without decoding; results are
ingested (store, index, policy, actions) as they come back. The daemon owns the lifecycle
(start, the loop, signals, reloads, shutdown) and calls this, step by step.
"""

from __future__ import annotations

import os
import queue
import time
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from stat import S_ISREG
from typing import Any

import structlog

from dedupd import safefs
from dedupd.config import Config
from dedupd.engine import (
    Ingest,
    Interrupted,
    Outcome,
    ScanReport,
    excluded_dirs,
    ingest_guarded,
    moved_from,
    reconcile_roots,
    stored_keys,
)
from dedupd.errors import NotFoundError
from dedupd.filestat import FileStat, HashedImage, HashedVideo
from dedupd.pool import Failure, HasherPool
from dedupd.scanner import (
    Entry,
    NameFilter,
    identities,
    path_too_long,
    same_version,
    walk,
    why_unavailable,
)
from dedupd.store import Store
from dedupd.watcher import Hint, Settler

__all__ = ["Backlog", "Counts", "Pipeline"]

log = structlog.get_logger("dedupd.pipeline")

PROGRESS_INTERVAL = 5.0  # seconds between `backlog_progress` log lines while a backlog runs


@dataclass
class Counts:
    """What the pipeline did, for status and STATUS=."""

    hashed: int = 0
    errors: int = 0
    acted: int = 0
    reported: int = 0
    failed: int = 0  # decisions to act whose action failed (retried by the next start)
    rescans: int = 0
    # The latest failed actions, newest last: (the file to move, action, what came of it).
    failures: deque[tuple[str, str, str]] = field(default_factory=lambda: deque(maxlen=10))


class Backlog:
    """How far the reconciles' backlog has got, from its first file to its last.

    `total` counts the files queued since the backlog started; each is, at every moment,
    exactly one of: queued (waiting for the pool), hashing (in the pool) or done (ingested,
    found handled already, or its root gone by a reload), so queued + hashing + done ==
    total. Files dropped unhandled (a reload, a closed pool) leave the total. The files
    themselves are the pipeline's; this keeps the counts and the clock, logs
    `backlog_progress` every `interval` seconds and `backlog_done` when it drains.
    """

    def __init__(self, clock: Callable[[], float], interval: float = PROGRESS_INTERVAL):
        self.clock, self.interval = clock, interval
        self.total = self.done = 0
        self.started = self._next_log = 0.0

    def added(self, n: int) -> None:
        """`n` more files were queued (a reconcile); the first ones start the clock."""
        if n and not self.total:
            self.started = self.clock()
            self._next_log = self.started + self.interval
            log.info("backlog_started", files=n)
        self.total += n

    def dropped(self, n: int) -> None:
        """`n` files left the backlog unhandled (a reload, a pool closed) and are no longer
        counted: the next reconcile queues them again."""
        self.total -= n

    def finished(self, n: int = 1) -> None:
        self.done += n

    def status(self, queued: int, hashing: int) -> dict[str, Any] | None:
        """The progress as `dedupctl status` shows it, None when no backlog runs."""
        if not self.total:
            return None
        elapsed = max(0.0, self.clock() - self.started)
        rate = self.done / elapsed if elapsed > 0 else 0.0
        left = queued + hashing
        return {
            "total": self.total,
            "done": self.done,
            "queued": queued,
            "hashing": hashing,
            "elapsed_s": round(elapsed, 1),
            "rate": round(rate, 2),  # files per second since the backlog started
            "eta_s": round(left / rate) if rate > 0 else None,
        }

    def tick(self, queued: int, hashing: int) -> None:
        """Log progress when it is due, or the end when nothing is left."""
        if not self.total:
            return
        if queued or hashing:
            now = self.clock()
            if now >= self._next_log:
                self._next_log = now + self.interval
                log.info("backlog_progress", **(self.status(queued, hashing) or {}))
            return
        elapsed = max(0.0, self.clock() - self.started)
        log.info(
            "backlog_done",
            files=self.done,
            elapsed_s=round(elapsed, 1),
            rate=round(self.done / elapsed, 2) if elapsed > 0 else None,
        )
        self.total = self.done = 0


class _Refused:
    """Whether a root is unavailable now (`why_unavailable`), looked at once per root.

    The pool hashes files by path, so each root is looked at again just before its files go
    there: one walked before a link of another user replaced it (a backlog takes hours), or
    still watched (inotify watches the folder it had, which goes on reporting its files under
    the root's name, now through the link), must not lead a worker to the photos the link
    leads to. Its files are dropped, and the root is reconciled, which reports it
    unavailable and keeps its records."""

    def __init__(self) -> None:
        self._seen: dict[str, bool] = {}

    def __call__(self, root: str) -> bool:
        if root not in self._seen:
            self._seen[root] = why_unavailable(root) is not None
        return self._seen[root]


class Pipeline:
    """Candidates → hasher pool → ingest, for one configuration (`configure` swaps it)."""

    def __init__(
        self,
        counts: Counts,
        clock: Callable[[], float],
        progress_interval: float = PROGRESS_INTERVAL,
    ):
        self.counts, self.clock = counts, clock
        self.progress = Backlog(clock, progress_interval)
        # Backlog files in the pool, by id(): whatever becomes of each, it is done once.
        self.backlog_hashing: dict[int, Entry] = {}
        self.backlog: deque[Entry] = deque()  # found by a reconcile, oldest first
        self.settled: deque[Entry] = deque()  # uploads that settled: hashed before the backlog
        self.hashing: dict[str, Entry] = {}  # path → the version last sent to the pool
        self.ingesting = 0  # results taken from the pool and not yet ingested
        self.rescan_due: set[str] = set()  # roots to reconcile once the backlog is empty

    def configure(
        self, config: Config, roots: Sequence[str], store: Store, ingest: Ingest
    ) -> None:
        """Take a (new) configuration: the roots, their names, the store and the ingest. What
        was queued for the old one is dropped; the start-up or reload reconcile finds it."""
        self.config, self.roots, self.store, self.ingest = config, list(roots), store, ingest
        self.names = NameFilter(config.watch)
        self.excluded = [p + os.sep for p in excluded_dirs(config)]
        self.settler = Settler(config.watch.settle_seconds, self.clock)
        # settling paths last closed after a write: hashed again even when unchanged (`_entry`)
        self.rewritten: set[str] = set()
        self.progress.dropped(len(self.backlog))
        self.backlog.clear()
        self.settled.clear()
        self._redecide = True  # at the first reconcile: see `Ingest.redecide`

    def forget_in_flight(self) -> None:
        """The pool was closed: nothing sent to it will come back."""
        self.hashing.clear()
        self.progress.dropped(len(self.backlog_hashing))
        self.backlog_hashing.clear()

    def backlog_status(self) -> dict[str, Any] | None:
        """The backlog's progress (total, done, queued, hashing, rate, ETA), None if none."""
        return self.progress.status(len(self.backlog), len(self.backlog_hashing))

    def tick(self) -> None:
        """Log the backlog's progress when due, and its end (the daemon's heartbeat)."""
        self.progress.tick(len(self.backlog), len(self.backlog_hashing))

    def idle(self, pool: HasherPool) -> bool:
        return not (
            self.backlog
            or self.settled
            or pool.in_flight
            or self.ingesting
            or len(self.settler)
            or self.ingest.confirm
        )

    def queued(self) -> int:
        """Files waiting for the pool: the backlog, settled uploads, and those a held decision
        waits to have hashed again and compared (`Ingest.confirm`; left out, status said the
        queue was empty while such decisions were still to come)."""
        return len(self.backlog) + len(self.settled) + len(self.ingest.confirm)

    # -- reconcile ----------------------------------------------------------------------------
    def reconcile(self, roots: Sequence[str], tick: Callable[[], object]) -> ScanReport:
        """Walk `roots`: follow renames, forget deletions, queue what changed."""
        report = ScanReport(roots=[])
        done = reconcile_roots(self.config, self.store, roots, report, tick=tick)
        self.ingest.unindex(done.gone)
        self.ingest.index_again(done.revived)
        self.ingest.await_decisions(done.awaiting)  # after: a revived one may await too
        queued = {e.path for e in self.backlog}
        new = [e for e in done.work if e.path not in queued and not self._writing(e)]
        self.backlog.extend(new)
        self.progress.added(len(new))
        self.counts.rescans += 1
        if self._redecide or done.moved:  # a dry run or the policies changed (once per start
            # or reload), or photos moved into another root: decided by its policy
            only, self._redecide = (None if self._redecide else done.moved), False
            for outcome in self.ingest.redecide(tick, only=only):
                self._count(outcome)
        log.info(
            "reconciled",
            roots=len(report.roots),
            files=report.files,
            queued=len(done.work),
            renamed=report.renamed,
            missing=report.missing,
            unavailable=[r for r, _ in report.unavailable],
        )
        return report

    def _writing(self, entry: Entry) -> bool:
        """Whether a file a reconcile found may still be being written, and is left to the
        settler (invariant 3): it waits there for a write seen, or was written within the
        settle time (its mtime: a write whose events a reload or an overflow lost, or one
        under way at start; or an mtime ahead of the clock). A re-hash is of a version
        recorded before, and a path too long to look at by name is recorded as an error: never
        left to the settler."""
        if entry.rehash is not None or path_too_long(entry.path):
            return False
        if entry.path in self.settler:
            return True
        if time.time_ns() - entry.stat.mtime_ns < self.settler.settle_seconds * 1e9:
            self.settler.add(entry.path)
            return True
        return False

    # -- watch hints ----------------------------------------------------------------------------
    def drain(self, hints: queue.Queue[Hint], limit: int = 10_000) -> None:
        for _ in range(limit):
            try:
                hint = hints.get_nowait()
            except queue.Empty:
                return
            self.handle(hint)

    def handle(self, hint: Hint) -> None:
        if hint.kind in ("touch", "written"):
            if self.root_of(hint.path):
                self.settler.add(hint.path, hint.at)
                if hint.kind == "written":
                    self.rewritten.add(hint.path)
        elif hint.kind == "deleted":
            self.settler.discard(hint.path)
            self.rewritten.discard(hint.path)
            self._forget(hint.path)
        elif hint.kind == "moved":
            self._moved(hint.path, hint.dest or "", hint.at)
        elif hint.kind == "dir":
            self._dir(hint.path)
        elif hint.kind == "overflow":
            self._overflowed(hint.path)

    def root_of(self, path: str) -> str | None:
        """The root `path` is a wanted file under, or None (ignored names, excluded dirs)."""
        if any(path.startswith(e) for e in self.excluded):
            return None
        for root in self.roots:
            if path.startswith(root + os.sep):
                parts = os.path.relpath(path, root).split(os.sep)
                if any(self.names.ignored(p) for p in parts[:-1]):
                    return None
                return root if self.names.wanted(parts[-1]) else None
        return None

    def _overflowed(self, watched: str) -> None:
        """The kernel's event queue overflowed and events under `watched` were lost:
        reconcile it now, not at the next rescan_interval (an hour by default)."""
        roots = [r for r in self.roots if r == watched] or list(self.roots)
        log.warning("watch_overflow", roots=roots, detail="events were lost; reconciling now")
        self.rescan_due.update(roots)

    def _forget(self, path: str) -> None:
        record = self.store.file_at(path)
        if record is not None and record.state in ("ok", "error"):
            self.store.mark_missing([record.id])
            self.ingest.unindex([record.id])
            log.info("file_deleted", path=path)

    def _moved(self, src: str, dest: str, at: float | None = None) -> None:
        """A rename inside the roots is followed without re-hashing (unless it was written
        in place just before: `_entry`); a temp file renamed into place (Syncthing, rsync,
        browsers) is a new upload."""
        self.settler.discard(src)
        record = self.store.file_at(src)
        root = self.root_of(dest)
        if record is not None and record.state in ("ok", "error") and root is not None:
            try:
                st = os.lstat(dest)
                stat = FileStat.of(st) if S_ISREG(st.st_mode) else None
            except OSError:
                stat = None
            if stat is not None and same_version(record, stat):
                relpath = os.path.relpath(dest, root)
                self._revive(record.id, root, relpath, stat)
                if src in self.rewritten:  # written in place, then renamed before it settled
                    self.rewritten.discard(src)
                    self.settled.append(Entry(root, relpath, stat, rehash="rewritten"))
                return
        if record is not None:
            self._forget(src)
        if root is not None:
            self.settler.add(dest, at)

    def _dir(self, path: str) -> None:
        root = next((r for r in self.roots if path == r or path.startswith(r + os.sep)), None)
        # an excluded folder itself too (the staging folder, removed after each action)
        if root is None or any((path + os.sep).startswith(e) for e in self.excluded):
            return
        if os.path.isdir(path) and path != root:
            try:
                for entry in walk(path, self.names, excluded_dirs(self.config)):
                    if self.root_of(entry.path):
                        self.settler.add(entry.path)
                return
            except NotFoundError:  # gone meanwhile, or now reached through a user's link
                pass
        # a folder went away (or the root itself): let a reconcile sort it out
        self.rescan_due.add(root)

    # -- settled files ----------------------------------------------------------------------
    def take_settled(self) -> None:
        """Files that stopped changing become candidates (or are found to be moves)."""
        due = self.settler.due()
        # the excluded folders' identities, once for all that settled (each is a few opens)
        excluded = identities([e.rstrip(os.sep) for e in self.excluded]) if due else frozenset()
        for path, stat in due:
            try:
                entry = self._entry(path, stat, excluded)
            except Interrupted:  # stopping while a moved photo's decision waited: its
                raise  # 'moved' note stays, and the next start decides it
            except Exception:  # e.g. the database is locked: try this file again later
                log.exception("settled_file_failed", path=path)
                self.counts.errors += 1
                self.settler.add(path)
                continue
            if entry is not None:
                self.settled.append(entry)
        # what the settler let go of unsettled (vanished, or reached through a link)
        self.rewritten = {p for p in self.rewritten if p in self.settler}

    def _entry(
        self, path: str, stat: FileStat, excluded: frozenset[tuple[int, int]]
    ) -> Entry | None:
        """A candidate for hashing, or None when it is not ours or did not change.
        `excluded`: the identities of the excluded folders (`scanner.identities`)."""
        root = self.root_of(path)
        if root is None:
            return None
        if _under_excluded(root, path, excluded):
            log.debug("file_in_excluded_folder", path=path)
            return None
        relpath = os.path.relpath(path, root)
        record = self.store.record(root, relpath)
        written = path in self.rewritten
        self.rewritten.discard(path)
        if record is not None and record.state in ("ok", "error") and same_version(record, stat):
            if written and record.state == "ok" and _changed_since(path, record.updated):
                # Closed after a write, with its size and mtime as recorded but its inode
                # changed since the record was written (ctime): an in-place edit that kept
                # both (`exiftool -P`). A keeper whose record were trusted would stand for
                # bytes it no longer holds (red team 7: a copy of the old version was
                # quarantined as "exact" against it). Opened for writing and closed
                # untouched, a file is unchanged.
                log.info("file_rewritten", path=path)
                return Entry(root, relpath, stat, rehash="rewritten")
            log.debug("file_unchanged", path=path)
            return None  # invariant 4: unchanged → never decoded again
        if record is None or record.state not in ("ok", "error"):
            # or a present record elsewhere: a move whose delete has not arrived yet
            # (watchdog holds an unpaired move-out back for 0.5 s, longer than a short
            # settle time)
            moved = self.store.missing_with_stat(stat) or moved_from(self.store, stat)
            if moved is not None:  # a move whose events arrived as delete + create
                self._revive(moved.id, root, relpath, stat)
                return None
        return Entry(root, relpath, stat)

    def _revive(self, file_id: int, root: str, relpath: str, stat: FileStat) -> None:
        """Follow a move of `file_id` to `relpath` under `root`; one into another root is then
        decided by that root's policy (`Store.move` noted it), as a photo arriving there."""
        before = self.store.file(file_id)
        replaced = self.store.move(file_id, root, relpath, stat)
        self.ingest.unindex(replaced)
        self.ingest.index_again([file_id])
        log.info("file_moved", dest=os.path.join(root, relpath), file=file_id)
        if before is not None and before.root != root:
            for outcome in self.ingest.redecide(only={file_id}):
                self._count(outcome)

    # -- the pool -----------------------------------------------------------------------------
    def feed(self, pool: HasherPool) -> None:
        """Hand settled uploads, then backlog files, to the pool, up to its capacity: enough
        to keep every worker busy, few enough that a new upload does not wait long."""
        refused = _Refused()
        while self.ingest.confirm:  # a held match waits for these full decodes
            entry = self.ingest.confirm.popleft()
            if refused(entry.root):
                self.ingest.dropped(entry)
                self.rescan_due.add(entry.root)
                continue
            self.hashing[entry.path] = entry
            pool.submit(entry)
        while pool.in_flight < pool.capacity and (self.settled or self.backlog):
            from_backlog = not self.settled
            entry = (self.settled or self.backlog).popleft()
            if refused(entry.root):
                if from_backlog:
                    self.progress.dropped(1)
                self.rescan_due.add(entry.root)  # whose reconcile reports it unavailable
                continue
            if self.hashing.get(entry.path) == entry or self._handled(entry):
                # this very version is being hashed, or was since it was queued
                log.debug("file_unchanged", path=entry.path)
                if from_backlog:
                    self.progress.finished()
                continue
            self.hashing[entry.path] = entry
            if from_backlog:
                self.backlog_hashing[id(entry)] = entry
            pool.submit(entry)

    def _handled(self, entry: Entry) -> bool:
        """This version of the file has a record already: a reconcile (a rescan) and the
        settler can both queue one upload, and a quarantined file must not be "hashed" again
        at the path it left (it would be recorded as vanished). A re-hash the reconcile asked
        for (the record lacks a hash or features) is handled once the record is no longer a
        present file of this version: gone, moved on, or changed since (queued anew then)."""
        record = self.store.record(entry.root, entry.relpath)
        if entry.rehash == "rewritten":  # handled once gone or changed (queued anew then)
            return record is None or record.state != "ok" or not same_version(record, entry.stat)
        if entry.rehash is not None:  # or no longer lacking anything: hashed since it was queued
            if record is None or record.state != "ok" or not same_version(record, entry.stat):
                return True
            return not self.store.unhashed(entry.root, *stored_keys(self.config), ids=[record.id])
        return (
            record is not None and record.state != "missing" and same_version(record, entry.stat)
        )

    def ingest_results(
        self,
        results: Sequence[tuple[Entry, HashedImage | HashedVideo | Failure]],
        between: Callable[[], None] = lambda: None,
    ) -> None:
        """Ingest what the pool returned (`between` runs after each: the daemon's heartbeat)."""
        self.ingesting = len(results)  # not idle until the last is in the store and index
        try:
            for entry, result in results:
                if self.backlog_hashing.pop(id(entry), None) is not None:
                    self.progress.finished()
                if self.hashing.get(entry.path) is entry:  # else a newer version is queued
                    del self.hashing[entry.path]
                    if entry.root in self.roots:  # a reload may have dropped its root
                        self._ingest_one(entry, result)
                else:
                    self.ingest.dropped(entry)
                self.ingesting -= 1
                between()
        finally:
            self.ingesting = 0

    def _ingest_one(self, entry: Entry, result: HashedImage | HashedVideo | Failure) -> None:
        outcome, result = ingest_guarded(self.ingest, entry, result)
        if entry.again:
            pass  # a held decision's file hashed again: counted when it was first hashed
        elif isinstance(result, Failure):
            self.counts.errors += 1  # `file_skipped` (a warning with the error's kind) said so
        else:
            self.counts.hashed += 1
        if outcome is None and not isinstance(result, Failure):
            # A decision (an action, or a report of a duplicate) is logged at info by
            # `Ingest.apply`; a photo with no duplicate gets its line here.
            log.debug("file_unique", path=entry.path, sha256=result.sha256)
        if outcome is not None:
            self._count(outcome)

    def _count(self, outcome: Outcome) -> None:
        if outcome.decision.action != "none":
            if outcome.result == "done":
                self.counts.acted += 1
            elif outcome.result.startswith("failed"):
                # Never counted as reported: the policy said to act and nothing moved (a
                # read-only quarantine, a full disk); status names it until a restart.
                self.counts.failed += 1
                action = str(outcome.decision.action)
                # The file that was to move: with act_on_existing, not the newcomer (which is
                # then the one kept).
                target = outcome.decision.target
                path = outcome.path if target is None else str(target.path)
                self.counts.failures.append((path, action, outcome.result))
            elif not outcome.result.startswith("held"):  # counted once decided
                self.counts.reported += 1


def _changed_since(path: str, when: float) -> bool:
    """Whether the file at `path` (no link followed) changed after `when` (seconds since the
    epoch) by its ctime, which every write and every `utime` sets to now."""
    try:
        return os.lstat(path).st_ctime > when
    except OSError:
        return False  # gone: its deletion is on its way


def _under_excluded(root: str, path: str, excluded: frozenset[tuple[int, int]]) -> bool:
    """Whether a folder between `root` and `path` is an excluded one (the quarantine, a
    staging folder; `excluded`: their device and inode) reached by another name: the
    quarantine bind-mounted inside a root, which the path filter (`Pipeline.root_of`) cannot
    see. Walks skip those folders by device and inode; so does this (red team 7: the daemon
    recorded its own quarantined photos as uploads and quarantined them again, 13 folders
    deep). Or a folder holding the quarantine's marker: an earlier configuration's
    quarantine, as walks skip it too."""
    folder = os.path.dirname(path)
    while len(folder) > len(root):
        try:
            st = os.lstat(folder)
        except OSError:
            return False  # gone: the file is too
        if (st.st_dev, st.st_ino) in excluded:
            return True
        if os.path.lexists(os.path.join(folder, safefs.QUARANTINE_MARKER)):
            return True
        folder = os.path.dirname(folder)
    return False
