"""watchdog observers → a queue of hints → a settle set that yields files once they are still.

Events are only hints: the handler pushes them on a queue and never raises (an exception
would kill watchdog's thread). A path becomes a candidate after its (inode, size, mtime) has
not changed for `settle_seconds`, however many events arrive meanwhile, so a slow in-place
write (scp, Samba, rsync --inplace) or a storm of modify events is hashed once, at the end.
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
from typing import Literal, NamedTuple

import structlog
from watchdog.events import FileSystemEvent, FileSystemEventHandler
from watchdog.observers import Observer
from watchdog.observers.api import BaseObserver, ObservedWatch

from dedupd.filestat import FileStat

__all__ = ["Hint", "Settler", "Watcher"]

log = structlog.get_logger("dedupd.watcher")

HintKind = Literal["touch", "deleted", "moved", "dir"]
WatchState = Literal["watching", "polling", "unavailable"]

INOTIFY_HINT = (
    "raise the inotify watch limit, e.g. `sysctl -w fs.inotify.max_user_watches=524288` "
    "(persist it in /etc/sysctl.d/); until then this root is only rescanned periodically"
)


class Hint(NamedTuple):
    kind: HintKind
    path: str
    dest: str | None = None


class _Handler(FileSystemEventHandler):
    def __init__(self, hints: queue.Queue[Hint]):
        self._hints = hints

    def dispatch(self, event: FileSystemEvent) -> None:
        try:
            self._hint(event)
        except Exception:  # never let an exception reach watchdog's thread
            log.exception("watch_event_failed", event=repr(event))

    def _hint(self, event: FileSystemEvent) -> None:
        src = os.fsdecode(event.src_path)
        dest = os.fsdecode(event.dest_path) if event.dest_path else None
        kind = event.event_type
        if event.is_directory:
            if kind in ("created", "moved"):
                self._hints.put(Hint("dir", dest or src))
            elif kind == "deleted":
                self._hints.put(Hint("dir", src))
        elif kind in ("created", "modified", "closed"):
            self._hints.put(Hint("touch", src))
        elif kind == "moved":
            self._hints.put(Hint("moved", src, dest))
        elif kind == "deleted":
            self._hints.put(Hint("deleted", src))


@dataclass
class Watcher:
    """One watchdog observer over all roots; records each root's watch state."""

    hints: queue.Queue[Hint] = field(default_factory=queue.Queue)
    states: dict[str, WatchState] = field(default_factory=dict)
    _observer: BaseObserver | None = None
    _watches: dict[str, ObservedWatch] = field(default_factory=dict)
    _identity: dict[str, tuple[int, int]] = field(default_factory=dict)

    def start(self, roots: Sequence[str]) -> None:
        self._observer = Observer()
        self._observer.start()
        self._handler = _Handler(self.hints)
        for root in roots:
            self.add_root(root)

    def add_root(self, root: str) -> WatchState:
        """Watch `root` recursively; a missing root is "unavailable", and a watch limit
        (ENOSPC/EMFILE) leaves it "polling" (periodic rescans only), logged with the fix."""
        assert self._observer is not None, "start() first"
        old = self._watches.pop(root, None)
        if old is not None:  # a root that vanished and came back: its emitter is dead
            with contextlib.suppress(KeyError):
                self._observer.unschedule(old)
        if not os.path.isdir(root):
            self.states[root] = "unavailable"
            return "unavailable"
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
        return self.states[root]

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


class Settler:
    """Paths waiting to stop changing. `due()` returns those unchanged for settle_seconds."""

    def __init__(self, settle_seconds: float, now: Callable[[], float] = time.monotonic):
        self.settle_seconds = settle_seconds
        self._now = now
        self._pending: dict[str, tuple[FileStat | None, float]] = {}

    def __len__(self) -> int:
        return len(self._pending)

    def add(self, path: str) -> None:
        """Start (or keep) watching `path`. Repeated hints do not restart its clock."""
        if path not in self._pending:
            self._pending[path] = (None, self._now())

    def discard(self, path: str) -> None:
        self._pending.pop(path, None)

    def due(self) -> list[tuple[str, FileStat]]:
        """Paths whose stat has been unchanged for settle_seconds (they leave the set).

        Paths that vanished leave the set silently: a temp file renamed away, a deleted
        upload. A changed stat restarts the path's clock.
        """
        now = self._now()
        ready = []
        for path, (seen, since) in list(self._pending.items()):
            try:
                st = os.lstat(path)
            except OSError:
                del self._pending[path]
                continue
            if not stat.S_ISREG(st.st_mode):  # symlinks and specials are never photos
                del self._pending[path]
                continue
            current = FileStat.of(st)
            if current != seen:
                self._pending[path] = (current, now)
            elif now - since >= self.settle_seconds:
                del self._pending[path]
                ready.append((path, current))
        return ready
