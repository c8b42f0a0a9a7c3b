"""watchdog observers → a queue of hints → a settle set that yields files once they are still.

Events are only hints: the handler stamps each with the time it arrived, pushes it on a queue,
wakes the daemon and never raises (an exception would kill watchdog's thread). A path becomes
a candidate `settle_seconds` after the last write seen (its last event), provided its (inode,
size, mtime) has not changed since, so a slow in-place write (scp, Samba, rsync --inplace) or a
storm of modify events is hashed once, at the end, and a finished upload without delay.

When the kernel's inotify queue overflows, events were lost: watchdog re-adds its watches but
tells no handler, so the emitter here turns the overflow into an "overflow" hint per root,
and the daemon reconciles at once instead of waiting for the periodic rescan.

What is in a root must never end watchdog's threads: an exception there (a folder tree deeper
than Python's recursion limit, which watchdog walks recursively) ended the one thread that
reads inotify for every root, and nothing was seen any more while each root still said
"watching". Such an exception is caught on the thread, where it happens, and the root it
concerns is "polling" from then on, as with the watch limit; a thread that ends all the same
is noticed and the observer replaced (`Watcher.revive`).
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

from dedupd import safefs
from dedupd.filestat import FileStat
from dedupd.scanner import why_unavailable

__all__ = ["Hint", "Settler", "Watcher"]

log = structlog.get_logger("dedupd.watcher")

# "written": a file closed after writing; the pipeline hashes it again even when its size and
# mtime are those recorded (an in-place edit that keeps both, as `exiftool -P` does).
HintKind = Literal["touch", "written", "deleted", "moved", "dir", "overflow"]
WatchState = Literal["watching", "polling", "unavailable"]

REVIVE_INTERVAL = 30.0  # seconds: the observer is replaced (`Watcher.revive`) at most this often

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
            if event.is_synthetic:
                # A folder in one moved in, or moved: watchdog lists the whole tree to report
                # each. The folder's own hint walks it all (`Pipeline._dir`); a walk for
                # each folder in it too was quadratic in its depth (a tree 1,000 deep: half
                # a million folders opened, the daemon's loop stalled for minutes).
                return None
            if kind in ("created", "moved"):
                return Hint("dir", dest or src, at=at)
            if kind == "deleted":
                return Hint("dir", src, at=at)
        elif kind == "closed":
            return Hint("written", src, at=at)
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


# watchdog picks the native observer; where that is inotify's, ours reports overflows, and
# what it could not watch or follow.
_INOTIFY = Observer.__module__ == "watchdog.observers.inotify"

# Why a folder of a root is unwatched, when the watch limit is (logged with the fix)
_WATCH_LIMIT = "the inotify watch limit is reached for a folder in it"


def _failure(exc: BaseException) -> str:
    return f"{type(exc).__name__}: {exc}"


def _observer(unwatched: Callable[[str, str], None]) -> BaseObserver:
    return _InotifyObserver(unwatched) if _INOTIFY else Observer()


def _reading(observer: BaseObserver) -> bool:
    """Whether the observer's threads that bring events are alive: its own (it calls the
    handler) and, for inotify, the one reading the kernel's events for every root."""
    if not observer.is_alive():
        return False
    return not _INOTIFY or not isinstance(observer, _InotifyObserver) or observer.reading()


if _INOTIFY:
    from watchdog.observers.inotify import InotifyEmitter, InotifyObserver, InotifyWatchGroup
    from watchdog.observers.inotify_c import InotifyEvent, WatchDescriptor
    from watchdog.utils import Seconds

    @dataclass
    class _WatchGroup(InotifyWatchGroup):
        """watchdog's watch group (it rebuilds its watches after an overflow), telling its
        emitter too; and telling what it left unwatched instead of raising.

        Its callbacks run on the thread that reads inotify for every root of the observer:
        an exception let through there ended that thread, and no root got an event again."""

        overflowed: Callable[[], None] = field(default=lambda: None, kw_only=True)
        # Why a folder of the root is unwatched from now on
        unwatched: Callable[[str], None] = field(default=lambda why: None, kw_only=True)

        def on_event(self, event: InotifyEvent) -> None:
            try:
                super().on_event(event)
            except Exception as exc:  # the event is lost: the root's rescans find it
                self.unwatched(_failure(exc))

        def on_queue_overflow(self) -> None:
            try:
                super().on_queue_overflow()
            except Exception as exc:
                self.unwatched(_failure(exc))
            self.overflowed()

        def on_watch_deleted(self, wd: WatchDescriptor) -> None:
            try:
                super().on_watch_deleted(wd)
            except Exception as exc:
                self.unwatched(_failure(exc))

        def _add_all_callbacks(self, path: bytes) -> None:
            # watchdog walks the folders to watch with os.walk, one frame a level before
            # Python 3.12: a tree deeper than the recursion limit raised RecursionError on
            # whatever thread added the watch (the daemon's, at start: it died). What was
            # watched before stays watched; the rest is told.
            try:
                super()._add_all_callbacks(path)
            except OSError:
                raise  # the root's own watch failed (watchdog drops a sub-folder's): add_root's
            except Exception as exc:
                self.unwatched(_failure(exc))

        def _add_callback(self, path: bytes) -> None:
            # As InotifyWatchGroup._add_callback, which drops a sub-folder's error silently:
            # one the watch limit refused (ENOSPC, EMFILE) is told; that folder is unwatched.
            try:
                wd = self._inotify_fd.add_callback(path, self.event_mask, self._callback, self._id)
            except OSError as exc:
                if path == self.path:
                    raise
                if exc.errno in (errno.ENOSPC, errno.EMFILE):
                    self.unwatched(_WATCH_LIMIT)
                return
            self._active_callbacks_by_path[path] = wd
            self._active_callbacks_by_watch[wd] = path

    class _OverflowEmitter(InotifyEmitter):
        def __init__(self, *args: Any, unwatched: Callable[[str, str], None], **kw: Any):
            super().__init__(*args, **kw)
            self._unwatched = unwatched

        def on_thread_start(self) -> None:
            # As InotifyEmitter.on_thread_start, with a group that reports overflows.
            self._inotify = _WatchGroup(
                self._inotify_fd,
                os.fsencode(self.watch.path),
                is_recursive=self.watch.is_recursive,
                event_mask=self.get_event_mask_from_filter(),
                follow_symlink=self.watch.follow_symlink,
                overflowed=lambda: self.queue_event(_Overflow(self.watch.path)),
                unwatched=lambda why: self._unwatched(self.watch.path, why),
            )

        def queue_events(self, timeout: Seconds, *, full_events: bool = False) -> None:
            # watchdog lists a folder moved in with os.walk to report what it holds: a tree
            # deeper than the recursion limit raised RecursionError, which ended this thread,
            # and the root's events with it. The rest of that listing is lost: the root's
            # rescans find it.
            try:
                super().queue_events(timeout, full_events=full_events)
            except Exception as exc:
                self._unwatched(self.watch.path, _failure(exc))

    class _InotifyObserver(InotifyObserver):
        def __init__(self, unwatched: Callable[[str, str], None], **kw: Any):
            super().__init__(**kw)
            self._emitter_class = _OverflowEmitter  # watchdog has no parameter for it
            self._emitter_kwargs["unwatched"] = unwatched

        def reading(self) -> bool:
            """Whether the thread reading inotify (for every watch) is alive."""
            return self._inotify_fd.is_alive()


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
    # Roots a folder of which is unwatched since their watch was added, and the first reason
    # why: the watch limit, or an exception of watchdog's (set from its threads too)
    _unwatched: dict[str, str] = field(default_factory=dict)
    # When the observer may be replaced again (`revive`), on `clock`
    _next_revive: float = float("-inf")

    def start(self, roots: Sequence[str]) -> None:
        self._observer = _observer(self._unwatched_in)
        self._observer.start()
        self._handler = _Handler(self.hints, self.clock, self.wake)
        for root in roots:
            self.add_root(root)

    def add_root(self, root: str) -> WatchState:
        """Watch `root` recursively; a missing root is "unavailable", as is one whose path
        passes through another user's symbolic link (`why_unavailable`: inotify would follow
        it). A root that cannot be watched whole is "polling" (periodic rescans only), logged
        with why: a watch limit (ENOSPC/EMFILE), logged with the fix, or any other error of
        watchdog's (`watch_failed`), for the root's own watch; or for a folder's in it, then
        or later (`incomplete`: a tree deeper than the recursion limit). Never raises for
        what is in the root."""
        assert self._observer is not None, "start() first"
        self._unwatch(root)  # a watch it still has is of what was there before
        why = why_unavailable(root)
        if why is not None:
            self.unavailable(root, why)
            return "unavailable"
        self._unwatched.pop(root, None)
        try:
            st = os.stat(root)
            self._identity[root] = (st.st_dev, st.st_ino)
            self._watches[root] = self._observer.schedule(self._handler, root, recursive=True)
            self.states[root] = "watching"
        except OSError as exc:
            if exc.errno not in (errno.ENOSPC, errno.EMFILE):
                self._cannot_watch(root, exc)
            else:
                self._polling(root, f"the inotify watch limit is reached ({exc.strerror})")
                log.error("watch_limit_reached", root=root, error=str(exc), fix=INOTIFY_HINT)
        except Exception as exc:  # a failure of watchdog's must not stop the daemon (a start)
            self._cannot_watch(root, exc)
        self.incomplete()
        return self.states[root]

    def _cannot_watch(self, root: str, exc: BaseException) -> None:
        self._polling(root, f"it cannot be watched: {_failure(exc)}")
        log.error(
            "watch_failed",
            root=root,
            error=_failure(exc),
            detail="this root is only rescanned periodically",
        )

    def _polling(self, root: str, why: str) -> None:
        """Mark `root` "polling" (rescanned periodically, `Daemon.polling_interval`) because
        `why`, said by status; the full rescan watches it again (`watch_again`)."""
        self.reasons[root] = why  # first: status, on another thread, reads the state first
        self.states[root] = "polling"

    def watch_again(self) -> list[str]:
        """Watch each "polling" root again, from scratch: the watch limit may have been
        raised (`sysctl`), the tree too deep to watch may be gone. Those still not watched
        whole are "polling" again, logged again (once per full rescan). Returns the roots
        now watched whole, which the caller reconciles (their events were lost). Nothing
        while the observer's threads are dead: `revive` replaces it first."""
        if not self.alive():
            return []
        polling = [r for r, state in self.states.items() if state == "polling"]
        watched = [r for r in polling if self.add_root(r) == "watching"]
        for root in watched:
            log.info("root_watched", root=root, detail="watched whole again")
        return watched

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

    def _unwatched_in(self, root: str, why: str) -> None:
        """A folder in `root` could not be watched, or an event of it followed, for the reason
        `why` (on watchdog's threads, for a folder made later): the loop is woken to look
        (`incomplete`), once."""
        if root not in self._unwatched:
            self._unwatched[root] = why
            self.wake()

    def incomplete(self) -> list[str]:
        """Roots marked watching where a folder is unwatched since (at start, or a folder made
        or moved in later), or an event was lost: the watch limit (watchdog drops that error
        silently), or an exception in watchdog's code (a tree deeper than the recursion
        limit). No event of that folder ever comes. Each is "polling" from now on (periodic
        rescans), logged with why (and the fix, for the watch limit); the caller reconciles
        them."""
        found = [r for r in list(self._unwatched) if self.states.get(r) == "watching"]
        for root in found:
            why = self._unwatched[root]
            said = why if why == _WATCH_LIMIT else f"a folder in it is not watched ({why})"
            self._polling(root, said)
            if why == _WATCH_LIMIT:
                log.error("watch_limit_reached", root=root, error=why, fix=INOTIFY_HINT)
            else:
                log.error(
                    "watch_incomplete",
                    root=root,
                    error=why,
                    detail="a folder in it is not watched (a folder tree too deep?); this "
                    "root is only rescanned periodically",
                )
        return found

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

    def revive(self) -> list[str]:
        """When a thread of watchdog's that brings events has ended (an exception none of
        the catches here saw), no event comes any more, for any root, while each is still
        marked watching: a new observer then watches again every root not unavailable
        (`add_root`), which the caller reconciles (their events were lost); they are
        returned. A thread that ends again within `REVIVE_INTERVAL` leaves those roots
        "polling" until then: replacing it at every turn of the loop would rebuild every
        watch and reconcile every root each second. Returns [] while all is well."""
        if self._observer is None or _reading(self._observer):
            return []
        roots = [r for r, state in self.states.items() if state != "unavailable"]
        now = self.clock()
        if now < self._next_revive:
            silent = [r for r in roots if self.states[r] == "watching"]
            for root in silent:
                self._polling(root, "the watch's thread ended again; watched again soon")
            if silent:
                log.error(
                    "watch_thread_died",
                    roots=silent,
                    detail=f"again; rescanned periodically, watched again in "
                    f"{self._next_revive - now:.0f} s",
                )
            return []
        log.error("watch_thread_died", roots=roots, detail="watching them again; reconciling")
        self._next_revive = now + REVIVE_INTERVAL
        self.stop()
        self._watches.clear()
        self._observer = _observer(self._unwatched_in)
        self._observer.start()
        for root in roots:
            self.add_root(root)
        return roots

    def stop(self) -> None:
        if self._observer is not None:
            self._observer.stop()
            self._observer.join(timeout=10)
            self._observer = None

    def alive(self) -> bool:
        """Whether events can come: the observer's threads that bring them are alive."""
        return self._observer is not None and _reading(self._observer)


@dataclass(slots=True)
class _Settling:
    last_event: float  # when the last write was seen, or a changed stat noticed
    stat: FileStat | None  # as of the last look; None: not there, or not a regular file


def _open_for_writing(path: str) -> bool:
    """Whether another program holds the regular file at `path` open for writing
    (`safefs.open_for_writing`); False when that cannot be told or the file not opened (the
    settle time stands then, and actions look again)."""
    parent, name = os.path.split(path)
    try:
        with safefs.directory(parent) as folder:
            fd = safefs.open_file_at(folder, name)
    except (OSError, safefs.UnsafePath):  # gone, unreadable, a link: the hashing says so
        return False
    try:
        return bool(safefs.open_for_writing(fd, (path,)))
    except OSError:
        return False
    finally:
        os.close(fd)


def _lstat(path: str) -> FileStat | Literal["gone"] | None:
    """The stat of the file at `path`, looked up folder by folder without following a link
    (`safefs.directory`): "gone" when nothing is there, None when it is no regular file or
    its path passes through a symlinked folder. Such a path names no file of the root (a
    link `loop/up -> ..` made in a watched folder had watchdog replay the root's photos under
    it, each then recorded as an error, "is a symbolic link"): it never settles."""
    parent, name = os.path.split(path)
    try:
        with safefs.directory(parent) as fd:
            st = safefs.stat_at(fd, name)
    except safefs.UnsafePath:
        return None
    except OSError:
        return "gone"
    if st is None:
        return "gone"
    # symlinks and specials are never photos
    return FileStat.of(st) if stat.S_ISREG(st.st_mode) else None


class Settler:
    """Paths waiting to stop changing.

    A path is due `settle_seconds` after its last event if its stat is the same as when that
    event was handled: the clock starts at the last write seen, not when someone looked. A
    stat that changed without an event (a missed or late event, a file replaced by another
    inode) restarts the clock from when the change was noticed, and so does a file another
    program still has open for writing (an upload written in place that paused).
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
            elif current != p.stat or current is None or _open_for_writing(path):
                self._pending[path] = _Settling(now, current)
            else:
                del self._pending[path]
                ready.append((path, current))
        return ready
