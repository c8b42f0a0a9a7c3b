"""watchdog observers → a queue of hints → a settle set that yields files once they are still.

Events are only hints: the handler stamps each with the time it arrived, pushes it on a queue,
wakes the daemon and never raises (an exception would kill watchdog's thread). A path becomes
a candidate `settle_seconds` after the last write seen (its last event), provided its (inode,
size, mtime) has not changed since, so a slow in-place write (scp, Samba, rsync --inplace) or a
storm of modify events is hashed once, at the end, and a finished upload without delay.

When the kernel's inotify queue overflows, events were lost: watchdog re-adds its watches but
tells no handler, so the emitter here turns the overflow into an "overflow" hint per root,
and the daemon reconciles at once instead of waiting for the periodic rescan.
"""

from __future__ import annotations

import contextlib
import errno
import os
import queue
import stat
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal, NamedTuple

import structlog
from watchdog.events import FileSystemEvent, FileSystemEventHandler
from watchdog.observers import Observer
from watchdog.observers.api import BaseObserver, ObservedWatch

from dedupd.filestat import FileStat
from dedupd.scanner import why_unavailable

__all__ = ["Hint", "Settler", "Watcher"]

log = structlog.get_logger("dedupd.watcher")

HintKind = Literal["touch", "deleted", "moved", "dir", "overflow"]
WatchState = Literal["watching", "polling", "unavailable"]

INOTIFY_HINT = (
    "raise the inotify watch limit, e.g. `sysctl -w fs.inotify.max_user_watches=524288` "
    "(persist it in /etc/sysctl.d/); until then this root is only rescanned periodically"
)


class Hint(NamedTuple):
    kind: HintKind
    path: str
    dest: str | None = None
    at: float | None = None  # when the event arrived (the watcher's clock); None: now


# A write: created (also a file moved in from outside the roots), modified, closed after
# writing. Opening or reading a file ("opened", "closed_no_write") is none.
_WRITES = ("created", "modified", "closed")


class _Handler(FileSystemEventHandler):
    def __init__(
        self, hints: queue.Queue[Hint], clock: Callable[[], float], wake: Callable[[], None]
    ):
        self._hints, self._clock, self._wake = hints, clock, wake

    def dispatch(self, event: FileSystemEvent) -> None:
        try:
            hint = self._hint(event)
            if hint is not None:
                self._hints.put(hint)
                self._wake()
        except Exception:  # never let an exception reach watchdog's thread
            log.exception("watch_event_failed", event=repr(event))

    def _hint(self, event: FileSystemEvent) -> Hint | None:
        src = os.fsdecode(event.src_path)
        dest = os.fsdecode(event.dest_path) if event.dest_path else None
        kind, at = event.event_type, self._clock()
        if event.is_directory:
            if kind in ("created", "moved"):
                return Hint("dir", dest or src, at=at)
            if kind == "deleted":
                return Hint("dir", src, at=at)
        elif kind in _WRITES:
            return Hint("touch", src, at=at)
        elif kind == "moved":
            return Hint("moved", src, dest, at=at)
        elif kind == "deleted":
            return Hint("deleted", src, at=at)
        elif kind == _Overflow.event_type:
            return Hint("overflow", src, at=at)
        return None


def _nothing() -> None:
    pass


class _Overflow(FileSystemEvent):
    """Events under `src_path` (a watched root) were lost."""

    event_type = "overflow"


# watchdog picks the native observer; where that is inotify's, ours reports overflows.
_INOTIFY = Observer.__module__ == "watchdog.observers.inotify"


def _observer(out_of_watches: Callable[[str], None]) -> BaseObserver:
    return _InotifyObserver(out_of_watches) if _INOTIFY else Observer()


if _INOTIFY:
    from watchdog.observers.inotify import InotifyEmitter, InotifyObserver, InotifyWatchGroup

    @dataclass
    class _WatchGroup(InotifyWatchGroup):
        """watchdog's watch group (it rebuilds its watches after an overflow), telling its
        emitter too."""

        overflowed: Callable[[], None] = field(default=lambda: None, kw_only=True)
        out_of_watches: Callable[[], None] = field(default=lambda: None, kw_only=True)

        def on_queue_overflow(self) -> None:
            super().on_queue_overflow()  # called on watchdog's inotify thread
            self.overflowed()

        def _add_callback(self, path: bytes) -> None:
            # As InotifyWatchGroup._add_callback, which drops a sub-folder's error silently:
            # one the watch limit refused (ENOSPC, EMFILE) is told; that folder is unwatched.
            try:
                wd = self._inotify_fd.add_callback(path, self.event_mask, self._callback, self._id)
            except OSError as exc:
                if path == self.path:
                    raise
                if exc.errno in (errno.ENOSPC, errno.EMFILE):
                    self.out_of_watches()
                return
            self._active_callbacks_by_path[path] = wd
            self._active_callbacks_by_watch[wd] = path

    class _OverflowEmitter(InotifyEmitter):
        def __init__(self, *args: Any, out_of_watches: Callable[[str], None], **kw: Any):
            super().__init__(*args, **kw)
            self._out_of_watches = out_of_watches

        def on_thread_start(self) -> None:
            # As InotifyEmitter.on_thread_start, with a group that reports overflows.
            self._inotify = _WatchGroup(
                self._inotify_fd,
                os.fsencode(self.watch.path),
                is_recursive=self.watch.is_recursive,
                event_mask=self.get_event_mask_from_filter(),
                follow_symlink=self.watch.follow_symlink,
                overflowed=lambda: self.queue_event(_Overflow(self.watch.path)),
                out_of_watches=lambda: self._out_of_watches(self.watch.path),
            )

    class _InotifyObserver(InotifyObserver):
        def __init__(self, out_of_watches: Callable[[str], None], **kw: Any):
            super().__init__(**kw)
            self._emitter_class = _OverflowEmitter  # watchdog has no parameter for it
            self._emitter_kwargs["out_of_watches"] = out_of_watches


def _folder(path: str) -> tuple[int, int, int] | None:
    """(device, inode, ctime) of the folder at `path`, None when there is none: a mount, an
    entry made or removed, a change of owner or mode each change it."""
    try:
        st = os.stat(path)
    except OSError:
        return None
    return (st.st_dev, st.st_ino, st.st_ctime_ns)


@dataclass
class Watcher:
    """One watchdog observer over all roots; records each root's watch state.

    Every hint is stamped with `clock()` and followed by `wake()` (the daemon's loop sleeps
    until then, or until the next file is due)."""

    hints: queue.Queue[Hint] = field(default_factory=queue.Queue)
    clock: Callable[[], float] = time.monotonic
    wake: Callable[[], None] = _nothing
    states: dict[str, WatchState] = field(default_factory=dict)
    # Why each root marked "unavailable" is (for status); an entry left from an earlier
    # time means nothing while the root's state is another
    reasons: dict[str, str] = field(default_factory=dict)
    _observer: BaseObserver | None = None
    _watches: dict[str, ObservedWatch] = field(default_factory=dict)
    _identity: dict[str, tuple[int, int]] = field(default_factory=dict)
    # Roots found unavailable although their path looks fine (an empty mount point where
    # photos are recorded, a root it may not read): the folder there then (`_folder`)
    _judged: dict[str, tuple[int, int, int] | None] = field(default_factory=dict)
    # Roots a folder of which the watch limit left unwatched (set from watchdog's thread too)
    _limited: dict[str, bool] = field(default_factory=dict)

    def start(self, roots: Sequence[str]) -> None:
        self._observer = _observer(self._out_of_watches)
        self._observer.start()
        self._handler = _Handler(self.hints, self.clock, self.wake)
        for root in roots:
            self.add_root(root)

    def add_root(self, root: str) -> WatchState:
        """Watch `root` recursively; a missing root is "unavailable", as is one whose path
        passes through another user's symbolic link (`why_unavailable`: inotify would follow
        it), and a watch limit (ENOSPC/EMFILE) leaves it "polling" (periodic rescans only),
        logged with the fix: for the root's own watch, or a folder's in it
        (`out_of_watches`)."""
        assert self._observer is not None, "start() first"
        self._unwatch(root)  # a watch it still has is of what was there before
        why = why_unavailable(root)
        if why is not None:
            self.unavailable(root, why)
            return "unavailable"
        self._limited.pop(root, None)
        try:
            st = os.stat(root)
            self._identity[root] = (st.st_dev, st.st_ino)
            self._watches[root] = self._observer.schedule(self._handler, root, recursive=True)
            self.states[root] = "watching"
        except OSError as exc:
            if exc.errno not in (errno.ENOSPC, errno.EMFILE):
                raise
            self.states[root] = "polling"
            log.error("watch_limit_reached", root=root, error=str(exc), fix=INOTIFY_HINT)
        self.out_of_watches()
        return self.states[root]

    def unavailable(self, root: str, why: str) -> None:
        """Mark `root` "unavailable" for the reason `why`, and drop its watch; `add_root`
        watches it again.

        inotify watches a folder, not its name: kept, the watch of a root moved aside (or
        swapped for a link) would go on reporting the changes of the folder where it went
        under the root's name, each one queueing a reconcile that finds the root unavailable
        again, and a file deleted there marking the record at the root's path missing."""
        self._unwatch(root)
        if why_unavailable(root) is None:  # a reconcile's judgement of what it found there
            self._judged[root] = _folder(root)
        else:
            self._judged.pop(root, None)
        self.reasons[root] = why  # first: status, on another thread, reads the state first
        self.states[root] = "unavailable"

    def may_be_back(self, root: str) -> bool:
        """Whether an unavailable `root` is worth watching and walking again: its path leads
        to a folder now (`why_unavailable`) and, where a reconcile found that folder wanting
        (an unplugged disk's empty mount point), the folder there changed since (a disk
        mounted on it, a file added, its permissions): looking again at the same empty
        folder every few seconds only logged it available and unavailable again, forever."""
        if self.states.get(root) != "unavailable" or why_unavailable(root) is not None:
            return False
        return root not in self._judged or _folder(root) != self._judged[root]

    def _unwatch(self, root: str) -> None:
        watch = self._watches.pop(root, None)
        if watch is not None and self._observer is not None:
            with contextlib.suppress(KeyError):  # gone: the observer ended and dropped all
                self._observer.unschedule(watch)

    def _out_of_watches(self, root: str) -> None:
        """A folder in `root` could not be watched (on watchdog's thread for a folder made
        later): the loop is woken to look (`out_of_watches`)."""
        self._limited[root] = True
        self.wake()

    def out_of_watches(self) -> list[str]:
        """Roots marked watching where the watch limit left a folder unwatched since (at
        start, or a folder made later): watchdog drops that error silently, and no event of
        that folder ever comes. Each is "polling" from now on (periodic rescans), logged with
        the fix; the caller reconciles them."""
        limited = [r for r in list(self._limited) if self.states.get(r) == "watching"]
        for root in limited:
            self.states[root] = "polling"
            log.error(
                "watch_limit_reached",
                root=root,
                error="inotify watch limit reached for a folder in it",
                fix=INOTIFY_HINT,
            )
        return limited

    def lost_roots(self) -> list[str]:
        """Roots marked watching that are no longer what is watched: the watch ended, or the
        folder was moved away, deleted, or replaced (a disk unmounted under its mount point)."""
        if self._observer is None:
            return []
        alive = {e.watch.path for e in self._observer.emitters if e.is_alive()}
        lost = []
        for root, state in self.states.items():
            if state != "watching":
                continue
            try:
                st = os.stat(root)
                same = (st.st_dev, st.st_ino) == self._identity.get(root)
            except OSError:
                same = False
            if not same or self._watches[root].path not in alive:
                lost.append(root)
        return lost

    def stop(self) -> None:
        if self._observer is not None:
            self._observer.stop()
            self._observer.join(timeout=10)
            self._observer = None

    def alive(self) -> bool:
        return self._observer is not None and self._observer.is_alive()


@dataclass(slots=True)
class _Settling:
    last_event: float  # when the last write was seen, or a changed stat noticed
    stat: FileStat | None  # as of the last look; None: not there, or not a regular file


def _lstat(path: str) -> FileStat | Literal["gone"] | None:
    try:
        st = os.lstat(path)
    except OSError:
        return "gone"
    # symlinks and specials are never photos
    return FileStat.of(st) if stat.S_ISREG(st.st_mode) else None


class Settler:
    """Paths waiting to stop changing.

    A path is due `settle_seconds` after its last event if its stat is the same as when that
    event was handled: the clock starts at the last write seen, not when someone looked. A
    stat that changed without an event (a missed or late event, a file replaced by another
    inode) restarts the clock from when the change was noticed.
    """

    def __init__(self, settle_seconds: float, now: Callable[[], float] = time.monotonic):
        self.settle_seconds = settle_seconds
        self._now = now
        self._pending: dict[str, _Settling] = {}

    def __len__(self) -> int:
        return len(self._pending)

    def __contains__(self, path: object) -> bool:
        return path in self._pending

    def add(self, path: str, at: float | None = None) -> None:
        """An event for `path` at time `at` (default: now): its clock starts again from then."""
        at = self._now() if at is None else at
        seen = _lstat(path)
        current = self._pending.get(path)
        if current is not None:
            at = max(at, current.last_event)  # hints are handled in order; be safe anyway
        self._pending[path] = _Settling(at, None if seen == "gone" else seen)

    def discard(self, path: str) -> None:
        self._pending.pop(path, None)

    def next_due(self) -> float | None:
        """When the next path may become due (on the settler's clock), or None if none waits."""
        if not self._pending:
            return None
        return min(p.last_event for p in self._pending.values()) + self.settle_seconds

    def due(self) -> list[tuple[str, FileStat]]:
        """Paths quiet for settle_seconds with an unchanged stat (they leave the set).

        Paths that vanished or are not regular files leave the set silently: a temp file
        renamed away, a deleted upload, a symlink. Only paths whose time has come are looked at.
        """
        now = self._now()
        ready = []
        for path, p in list(self._pending.items()):
            if now - p.last_event < self.settle_seconds:
                continue
            current = _lstat(path)
            if current == "gone" or (current is None and p.stat is None):
                del self._pending[path]
            elif current != p.stat or current is None:
                self._pending[path] = _Settling(now, current)
            else:
                del self._pending[path]
                ready.append((path, current))
        return ready
