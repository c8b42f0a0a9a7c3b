"""`dedupd run`: watch the roots and handle every photo within seconds of its upload.

The lifecycle only: start-up, the loop, signals, reloads, shutdown. What happens to a file
(watch hints → candidates → the hasher pool → ingest) is `pipeline.Pipeline`'s, on this
thread, which owns the store, the index and every decision; watchdog's threads only push
hints onto a queue, and a standing pool of worker processes decodes and hashes. Each turn
of the loop runs queued commands, hands hints to the pipeline, feeds settled and backlog
files to the pool (a bounded number in flight), and ingests the results that come back, so
`status`, `rescan` and signals are served between files, never after a whole batch. Between
turns the loop sleeps until a result, a hint, a command or the next file's settle time. Signal
handlers only set flags (`note_signal`) and wake the loop; the loop acts on them. The systemd
notify protocol is spoken directly on $NOTIFY_SOCKET.

Start-up takes the database's lock first (one writer per database), then binds the socket,
then opens the store and recovers the journal; whatever fails, what was set up is undone, so
a failed start leaves no socket file behind. While running, the database file is checked
every few seconds: deleted under the daemon, it is written back from the open connection.
"""

from __future__ import annotations

import os
import queue
import signal
import socket
import sqlite3
import stat
import tempfile
import threading
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from concurrent.futures import Future
from contextlib import suppress
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import structlog

from dedupd import safefs
from dedupd.actions import Actions
from dedupd.config import Config, load_config
from dedupd.control import ControlServer
from dedupd.engine import (
    Ingest,
    Interrupted,
    start_pool,
)
from dedupd.errors import ConfigError, DaemonStopping, DedupdError, NotFoundError, StoreError
from dedupd.lock import DatabaseLock
from dedupd.pipeline import PROGRESS_INTERVAL, Counts, Pipeline
from dedupd.pool import HasherPool, Waker, Work, hash_file
from dedupd.scanner import root_key, why_unavailable
from dedupd.service import DaemonService
from dedupd.store import Store
from dedupd.watcher import Watcher

__all__ = ["Daemon", "Notifier", "Stats"]

log = structlog.get_logger("dedupd.daemon")

UNAVAILABLE_RETRY = 10.0  # seconds between checks whether a missing root came back
POLLING_RESCAN = 60.0  # rescan interval for roots that cannot be watched whole
DATABASE_CHECK = 5.0  # seconds between checks that the database file is still the one open
EXIT_FATAL = 1  # run()'s exit code after a stop forced by a lost database (systemd restarts)
STATUS_INTERVAL = 2.0  # seconds between STATUS= notifications
MAX_SLEEP = 1.0  # the loop looks at the watches (lost roots) at least this often


class Notifier:
    """sd_notify(3) without libsystemd: datagrams to $NOTIFY_SOCKET, if systemd set one."""

    def __init__(self, env: Mapping[str, str] | None = None):
        env = os.environ if env is None else env
        address = env.get("NOTIFY_SOCKET", "")
        self.address = "\0" + address[1:] if address.startswith("@") else address
        usec = env.get("WATCHDOG_USEC", "")
        pid = env.get("WATCHDOG_PID", "")
        watched = usec.isdigit() and (not pid or pid == str(os.getpid()))
        # Ping at half the interval systemd waits, as sd_watchdog_enabled(3) advises.
        self.watchdog_interval = int(usec) / 2e6 if watched else None

    def send(self, *fields: str) -> None:
        if not self.address:
            return
        try:
            with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
                sock.sendto("\n".join(fields).encode(), self.address)
        except OSError as exc:  # systemd gone or socket unwritable: never fatal
            log.warning("notify_failed", error=str(exc))


@dataclass
class Stats(Counts):
    started: float = 0.0


def _holds_anything(root: str) -> bool:
    """Whether the folder at `root`, reached as a walk reaches it, has any entry."""
    try:
        with safefs.directory(safefs.trusted_path(root)) as fd, os.scandir(fd) as it:
            return next(it, None) is not None
    except (safefs.UnsafePath, OSError):
        return False


_SAID_WHY = ("unavailable", "polling")  # root states status gives a reason for


class Daemon:
    """The service. `run()` blocks until `request_stop()` or a SIGTERM/SIGINT flag."""

    def __init__(
        self,
        config_path: Path | None,
        dirs: Sequence[Path] = (),
        *,
        database: Path | None = None,
        notifier: Notifier | None = None,
        clock: Callable[[], float] = time.monotonic,
        retry_interval: float = UNAVAILABLE_RETRY,
        polling_interval: float = POLLING_RESCAN,
        database_check_interval: float = DATABASE_CHECK,
        progress_interval: float = PROGRESS_INTERVAL,
        work: Work = hash_file,
    ):
        """`work` is what the hasher workers run per file (tests swap in one that hangs);
        `progress_interval` is the time between `backlog_progress` log lines."""
        self.retry_interval, self.polling_interval = retry_interval, polling_interval
        self.database_check_interval = database_check_interval
        self.work = work
        self.config_path, self.dirs, self.database = config_path, tuple(dirs), database
        self.notifier = notifier or Notifier()
        self.clock = clock
        self.stats = Stats(started=clock())
        self._stop_flag = False
        self._reload_flag = False
        self._wake = Waker()
        self._ready = threading.Event()
        self.pipeline = Pipeline(self.stats, clock, progress_interval)
        # The backlog's progress as of the last heartbeat, taken on this thread so that its
        # counts add up for a status read from a control-socket thread.
        self._backlog: dict[str, Any] | None = None
        # Folders of each root the last reconcile could not read (for status).
        self._unreadable: dict[str, list[tuple[str, str]]] = {}
        self._pool: HasherPool | None = None
        self._pool_key: tuple[object, ...] = ()
        self._last_ping = self._last_status = -1e18
        self._commands: queue.Queue[tuple[Callable[[], dict[str, Any]], Future[dict[str, Any]]]]
        self._commands = queue.Queue()
        self._commands_lock = threading.Lock()
        self._closed = False
        self._exit_code = 0
        self._next_database_check = clock() + database_check_interval
        self._database_identity: tuple[int, int] | None = None

    # -- requests (thread- and signal-safe) -------------------------------------------------
    def note_signal(self, signum: int, frame: object = None) -> None:
        """A signal handler: record the request only; the loop acts on it."""
        if signum == signal.SIGHUP:
            self._reload_flag = True
        else:
            self._stop_flag = True
        self._wake.set()  # one os.write: safe here, unlike threading.Event.set (a lock)

    def request_stop(self) -> None:
        self._stop_flag = True
        self._wake.set()

    def request_reload(self) -> None:
        self._reload_flag = True
        self._wake.set()

    def wait_ready(self, timeout: float) -> bool:
        return self._ready.wait(timeout)

    def submit(self, fn: Callable[[], dict[str, Any]]) -> Future[dict[str, Any]]:
        """Run `fn` on the daemon's thread (from a control-socket thread); its answer or its
        exception arrives through the future."""
        future: Future[dict[str, Any]] = Future()
        with self._commands_lock:
            if self._closed:
                raise DaemonStopping("dedupd is stopping")
            self._commands.put((fn, future))
        self._wake.set()
        return future

    def _pending_commands(self) -> Iterator[tuple[Callable[[], dict[str, Any]], Future[Any]]]:
        """Queued commands whose requester still waits (cancelled ones are dropped)."""
        while True:
            try:
                fn, future = self._commands.get_nowait()
            except queue.Empty:
                return
            if future.set_running_or_notify_cancel():
                yield fn, future

    def _run_commands(self) -> None:
        for fn, future in self._pending_commands():
            try:
                future.set_result(fn())
            except Interrupted as exc:  # a reload's decisions, put off: the daemon stops
                log.info("decision_deferred", reason=str(exc), detail="decided at the next start")
                future.set_exception(DaemonStopping("dedupd is stopping"))
            except BaseException as exc:  # the requester gets it; the daemon goes on
                future.set_exception(exc)

    def status(self) -> dict[str, Any]:
        """What `dedupctl status` shows. Read from other threads: values may be a moment old."""
        ingest = self.ingest
        index = ingest.index
        with ingest.lock:
            size, pending, rebuilding = len(index), index.pending, index.rebuilding
            crops = ingest.crops
            crop_index = {
                "enabled": self.config.hashing.crops,
                "loading": ingest.crops_loading,  # the first crop decision waits for it
                "size": len(crops),
                "pending": crops.pending,
                "rebuilding": crops.rebuilding and not crops.loading,
            }
        watcher = self.watcher  # a reload may replace it meanwhile
        # One atomic copy each, the states first: the daemon thread may change them, and
        # it sets a root's reason before its state.
        states, reasons = dict(watcher.states), dict(watcher.reasons)
        config, roots = self.config, list(self.roots)  # a reload may swap them meanwhile
        policies = {root_key(r.path): r.policy for r in config.roots}
        with self.store_reader() as store:
            recent = store.recent_errors(10)
        return {
            "pid": os.getpid(),
            "uptime_s": round(self.clock() - self.stats.started, 1),
            "config": str(config.source) if config.source else None,
            "database": str(config.database),
            # (st_dev, st_ino) of the file open: dedupctl checks that it asks the daemon of
            # the database it means (two configs can share a socket path)
            "database_id": list(self._database_identity) if self._database_identity else None,
            "hasher": ingest.hasher.key,
            "roots": [
                {
                    "path": r,
                    "state": states.get(r, "unknown"),
                    "policy": policies.get(r, "?"),
                    # why, from the moment it was found unavailable (or polling)
                    "reason": reasons.get(r) if states.get(r) in _SAID_WHY else None,
                }
                for r in roots
            ],
            "indexed": size,
            "backlog": self._backlog,  # None unless a backlog runs; its counts add up
            "queue": {
                "backlog": self.pipeline.queued(),
                "settling": len(self.pipeline.settler),
                "hashing": self._in_flight(),
            },
            "index": {
                "backend": index.backend,
                "size": size,
                "pending": pending,
                "rebuilding": rebuilding,
                "last_rebuild": index.last_rebuild,
            },
            "crops": crop_index,
            "stats": {
                "hashed": self.stats.hashed,
                "errors": self.stats.errors,
                "acted": self.stats.acted,
                "reported": self.stats.reported,
                "failed": self.stats.failed,
                "rescans": self.stats.rescans,
            },
            "recent_failures": [
                {"path": path, "action": action, "result": result}
                for path, action, result in list(self.stats.failures)
            ],
            "recent_errors": [
                {"path": str(r.path), "kind": r.error_kind, "error": r.error} for r in recent
            ],
            # Folders the last reconcile could not read: their photos are not looked at.
            "unreadable": [
                {"folder": folder, "reason": why}
                for found in list(self._unreadable.values())
                for folder, why in found
            ],
        }

    def store_reader(self) -> Store:
        """A read-only connection of its own, for a control-socket thread."""
        return Store(self.config.database, readonly=True)

    def request_rescan(self, root: str | None) -> dict[str, Any]:
        """Queue a reconcile of one root, or all. Raises NotFoundError for an unknown root."""
        if root is None:
            roots = list(self.roots)
        else:
            try:
                key = root_key(root)
            except (ValueError, OSError):  # no path at all (a NUL byte), or one unresolvable
                key = None
            if key not in self.roots:
                raise NotFoundError(f"{root}: not a configured root ({', '.join(self.roots)})")
            roots = [str(key)]
        self.pipeline.rescan_due.update(roots)
        return {"queued": roots}

    def reload_now(self) -> dict[str, Any]:
        """Reload the config now; raises ConfigError (the old config stays) if it is invalid."""
        error = self._reload()
        if error is not None:
            raise ConfigError(error)
        return {"reloaded": True, "roots": self.roots}

    # -- set-up -----------------------------------------------------------------------------
    def _load(self) -> Config:
        config = load_config(self.config_path)
        if self.dirs:
            config = config.with_roots(self.dirs)
        if self.database is not None:
            config = replace(config, database=self.database)
        if not config.roots:
            raise ConfigError(
                "no roots to watch: pass DIRS or configure `roots:`",
                source=str(self.config_path) if self.config_path else None,
            )
        return config

    def _configure(self, config: Config) -> None:
        self.config = config
        self.roots = [root_key(r.path) for r in config.roots]
        self.ingest = Ingest(self.store, config, self.roots, self.actions, load_crops=False)
        self.ingest.waiting = self._waiting
        self.pipeline.configure(config, self.roots, self.store, self.ingest)
        self._start_pool(config)
        self.watcher = Watcher(clock=self.clock, wake=self._wake.set)
        self.watcher.start(self.roots)
        now = self.clock()
        self._next_rescan = now + config.watch.rescan_interval
        self._next_poll = now + min(self.polling_interval, config.watch.rescan_interval)
        self._next_retry = now + self.retry_interval
        self._queue_reconcile(self.roots)

    def _start_pool(self, config: Config) -> None:
        """Start the hasher pool, or keep the running one when a reload left its settings."""
        # Every hashing setting, whatever it is: workers given another one must be new (a
        # reload turning `crops` on kept workers that skipped features, so the photos they
        # hashed lacked them and were hashed again at every reconcile).
        key = (config.hashing, self.work)
        if self._pool is not None and key == self._pool_key:
            return
        self._close_pool()
        self._pool = start_pool(config, self.ingest.hasher, self.work)
        self._pool_key = key

    def _close_pool(self) -> None:
        """Stop the workers; files they held are found again by the next reconcile."""
        if self._pool is not None:
            self._pool.close()
            self._pool = None
            self.pipeline.forget_in_flight()

    @property
    def pool(self) -> HasherPool:
        assert self._pool is not None, "the pool starts with the daemon"
        return self._pool

    def _in_flight(self) -> int:
        pool = self._pool  # read from other threads: one look
        return pool.in_flight if pool is not None else 0

    def _queue_reconcile(self, roots: Sequence[str]) -> None:
        if self.store.actions("state = 'planned'"):
            # An action that could not put its file back (or a recovery that found a root
            # not mounted yet) left its entry planned: recover it before walking the roots.
            self._recover()
        report = self.pipeline.reconcile(roots, tick=self._heartbeat)
        for root, why in report.unavailable:
            # Back already, with something in it (a disk plugged in again while the walk
            # found its folder gone): watched and walked again, as after `root_lost`. Judged
            # by the folder now there, it stayed unavailable until that folder changed (CI:
            # a root renamed back during the walk was not watched again within 20 s).
            if (
                why_unavailable(root) is None
                and _holds_anything(root)
                and self.watcher.add_root(root) != "unavailable"
            ):
                log.info("root_available", root=root)
                self.pipeline.rescan_due.add(root)
                continue
            self.watcher.unavailable(root, why)
        for root in report.roots:  # walked: a root found unavailable before is back
            if self.watcher.states.get(root) == "unavailable":
                log.info("root_available", root=root)
                self.watcher.add_root(root)
                self.pipeline.rescan_due.add(root)  # what changed before its watch began
        unreadable = dict(self._unreadable)  # replaced whole: status reads it elsewhere
        for root in report.roots:
            inside = root.rstrip(os.sep) + os.sep
            unreadable[root] = [(f, why) for f, why in report.unreadable if f.startswith(inside)]
        self._unreadable = {root: found for root, found in unreadable.items() if found}

    # -- the loop ---------------------------------------------------------------------------
    def run(self) -> int:
        """Serve until stopped; returns the exit code (EXIT_FATAL after a stop forced by a
        lost database). Raises ConfigError for a bad config, DatabaseBusy when another
        process holds the database, StoreError when the database cannot be used."""
        config = self._load()
        # The lock first: a second daemon (or a running scan) on this database stops here,
        # before it could recover (and so disturb) the journal, or touch the socket, of the
        # process that has it. The kernel releases it however this process ends.
        self._lock = DatabaseLock(config.database, "daemon")
        self._lock.acquire()
        try:
            # Bind the socket next: a second daemon on the same socket stops here.
            self._server = ControlServer(config.socket, DaemonService(self))
        except BaseException:
            self._lock.release()
            raise
        try:
            self._open(config)
            self._server.start()
            self.notifier.send("READY=1", self._status())
            self._ready.set()
            log.info("started", roots=self.roots, backlog=len(self.pipeline.backlog))
            self.ingest.start_crop_load()  # after READY: it reads in the background
            while not self._stop_flag:
                for step in self._steps:
                    self._guarded(step)
                self._heartbeat()
                self._guarded(self._collect)
        except Interrupted as exc:  # stopped while the start's own decisions waited
            log.info("decision_deferred", reason=str(exc), detail="decided at the next start")
        finally:
            self._shutdown()
        return self._exit_code

    def _open(self, config: Config) -> None:
        """The store, the journal's recovery, the watches and the first reconcile."""
        try:
            self.store = Store(config.database)
            self._database_identity = _identity(config.database)
            self._check_roots(config)
            self.actions = Actions(self.store, config.quarantine.path, owners=config.owners)
            self._recover()
            self._configure(config)
        except sqlite3.DatabaseError as exc:  # it opened, but reading it failed (corrupt)
            raise StoreError(f"{config.database}: {exc}") from exc

    def _check_roots(self, config: Config) -> None:
        """Raise ConfigError for a root that is no folder and never held a photo: a typo,
        not an unmounted disk. A root with records in the store that is missing now is
        "unavailable" instead (its records are kept, and it is looked for again)."""
        for i, root in enumerate(root_key(r.path) for r in config.roots):
            try:
                if stat.S_ISDIR(os.stat(root).st_mode):
                    continue
                why = "not a directory"
            except OSError as exc:
                why = (exc.strerror or str(exc)).lower()
            if self.store.count_by_state([root]):
                continue  # known: the reconcile reports it unavailable and keeps its records
            raise ConfigError(
                f"{root}: {why}, and no photo was ever recorded there; fix the path or "
                "create the folder",
                source=None if self.dirs or config.source is None else str(config.source),
                key=None if self.dirs else f"roots[{i}].path",
            )

    def _recover(self) -> None:
        for r in self.actions.recover():
            log.warning(
                "journal_recovered",
                action=r.action_id,
                kind=r.kind,
                outcome=r.outcome,
                detail=r.detail,
            )

    def _shutdown(self) -> None:
        """Undo whatever start-up got to, in reverse order; the lock goes last."""
        self.notifier.send("STOPPING=1")
        with self._commands_lock:
            self._closed = True
        self._server.stop()
        self._fail_pending_commands()
        if hasattr(self, "watcher"):
            self.watcher.stop()
            self.ingest.close()
        self._close_pool()
        if hasattr(self, "store"):
            self.store.close()
        self._lock.release()
        if self._ready.is_set():  # a failed start says why once, as the CLI's error line
            log.info("stopped", hashed=self.stats.hashed, acted=self.stats.acted)

    @property
    def _steps(self) -> tuple[Callable[[], None], ...]:
        return (
            self._run_commands,
            self._maybe_reload,
            self._drain_hints,
            self._hash_settled,
            self._feed,
            self._periodic,
        )

    def _guarded(self, step: Callable[[], None]) -> None:
        """Run one step of the loop; an unexpected error is logged, never fatal (a locked
        database, a folder turning unreadable). What it was doing is retried by the next
        reconcile."""
        try:
            step()
        except Interrupted as exc:  # stopping: the loop ends after this turn
            log.info("decision_deferred", reason=str(exc), detail="decided at the next start")
        except Exception:
            log.exception("loop_step_failed", step=step.__name__)
            self.stats.errors += 1
            self._wake.wait(1.0)  # do not spin on a persistent failure
            self._wake.clear()

    def _heartbeat(self) -> None:
        """STATUS= every 2 s, WATCHDOG=1 at half systemd's interval while healthy; the
        backlog's progress (a log line every few seconds, one when it drains)."""
        self.pipeline.tick()
        self._backlog = self.pipeline.backlog_status()
        now = self.clock()
        interval = self.notifier.watchdog_interval
        if interval is not None and now - self._last_ping >= interval and self._healthy():
            self.notifier.send("WATCHDOG=1")
            self._last_ping = now
        if now - self._last_status >= 2.0:
            self.notifier.send(self._status())
            self._last_status = now

    def _waiting(self) -> None:
        """While the crop stage waits for the crop index's load: the heartbeat, and a stop
        acted on now (systemd would otherwise SIGKILL a daemon still waiting at
        TimeoutStopSec). The upload being decided is decided by the next start."""
        self._heartbeat()
        if self._stop_flag:
            raise Interrupted("stopping while the crop stage waits for the crop index")

    def _fail_pending_commands(self) -> None:
        for _, future in self._pending_commands():
            future.set_exception(DaemonStopping("dedupd is stopping"))

    def _maybe_reload(self) -> None:
        if self._reload_flag:
            self._reload()

    def _healthy(self) -> bool:
        """WATCHDOG=1 only while the observer's threads are alive (the pool replaces its own
        workers; `_periodic` replaces the observer)."""
        return self.watcher.alive()

    def _status(self) -> str:
        degraded = [
            f"{state}: {root}" for root, state in self.watcher.states.items() if state != "watching"
        ]
        backlog = self._backlog
        return (
            (f"STATUS=backlog {backlog['done']}/{backlog['total']}, " if backlog else "STATUS=")
            + f"{len(self.ingest.index)} indexed, "
            f"{self.pipeline.queued()} queued, {self._in_flight()} hashing, "
            f"{len(self.pipeline.settler)} settling, {self.stats.hashed} hashed, "
            f"{self.stats.acted} acted on, {self.stats.failed} actions failed, "
            f"{self.stats.errors} errors"
            + ("; " + "; ".join(degraded) if degraded else "")
        )

    def _drain_hints(self) -> None:
        self.pipeline.drain(self.watcher.hints)

    def _hash_settled(self) -> None:
        self.pipeline.take_settled()

    def _feed(self) -> None:
        self.pipeline.feed(self.pool)

    def _sleep_time(self) -> float:
        """Seconds until something is due: the next settled file (to the moment), a STATUS=
        or WATCHDOG=1, a periodic check. Results, hints, commands and signals wake earlier."""
        if self._stop_flag or self._reload_flag or not self.watcher.hints.empty():
            return 0.0
        now = self.clock()
        times = [self._next_retry, self._next_poll, self._next_rescan]
        # A time already past was handled this turn, or waits for the backlog (a rescan).
        later = [t for t in times if t > now]
        later += [now + MAX_SLEEP, self._last_status + STATUS_INTERVAL]
        interval = self.notifier.watchdog_interval
        if interval is not None and self._healthy():
            later.append(self._last_ping + interval)
        due = self.pipeline.settler.next_due()
        if due is not None:
            later.append(due)
        return max(0.0, min(later) - now)

    def _collect(self) -> None:
        """Sleep until something is due or arrives; ingest the results that came back."""
        results = self.pool.results(self._sleep_time(), wake=self._wake)
        self._wake.clear()  # everything that woke us is looked at by the next turn
        self.pipeline.ingest_results(results, between=self._heartbeat)

    def _periodic(self) -> None:
        now = self.clock()
        self.ingest.swap_finished()
        if now >= self._next_database_check:
            self._next_database_check = now + self.database_check_interval
            self._check_database()
        # A thread of watchdog's that ended is replaced: events stopped for every root
        self.pipeline.rescan_due.update(self.watcher.revive())
        self.pipeline.rescan_due.update(self.watcher.incomplete())
        for root in self.watcher.lost_roots():
            log.warning("root_lost", root=root, detail="watch ended; will reconcile and retry")
            self.pipeline.rescan_due.add(root)
            # Another folder with something in it (a disk mounted again on its mount point):
            # watched at once, not once the reconcile (after the backlog: hours) has walked
            # it; an empty one waits for the reconcile's judgement.
            if (
                why_unavailable(root) is None
                and _holds_anything(root)
                and self.watcher.add_root(root) != "unavailable"
            ):
                continue
            # Said now: the reconcile that would say it waits for the backlog (hours).
            why = why_unavailable(root) or (
                f"{root}: the watched folder was moved, deleted or replaced, or its watch "
                "ended; it is looked for again"
            )
            self.watcher.unavailable(root, why)
        if now >= self._next_retry:
            self._next_retry = now + self.retry_interval
            for root in list(self.watcher.states):
                if self.watcher.may_be_back(root):
                    log.info("root_available", root=root)
                    self.watcher.add_root(root)
                    self.pipeline.rescan_due.add(root)
        if now >= self._next_poll:  # roots without a watch are rescanned more often
            self._next_poll = now + min(self.polling_interval, self.config.watch.rescan_interval)
            polling = [r for r, state in self.watcher.states.items() if state == "polling"]
            self.pipeline.rescan_due.update(polling)
        if now >= self._next_rescan:
            self.pipeline.rescan_due.update(self.roots)
        if self.pipeline.rescan_due and not self.pipeline.backlog:
            roots = sorted(self.pipeline.rescan_due)
            self.pipeline.rescan_due.clear()
            if set(roots) == set(self.roots):
                if now >= self._next_rescan:  # the full rescan, once the backlog is done
                    self.watcher.watch_again()  # a limit raised since, a tree too deep gone
                self._next_rescan = now + self.config.watch.rescan_interval
            self._queue_reconcile(roots)

    def _check_database(self) -> None:
        """Notice the database (or its lock) deleted or replaced under the daemon. Deleted:
        write it back from the open connection and go on. Replaced, or not restorable: stop
        with EXIT_FATAL, so that systemd restarts the daemon on whatever is there now."""
        path = self.config.database
        try:
            self._lock.verify()  # `rm dedupd.db*` takes the lock file too: take it back first
        except DedupdError as exc:
            self._fatal("database_lock_lost", str(exc))
            return
        identity = _identity(path)
        if identity == self._database_identity:
            return
        if identity is not None:
            self._fatal("database_replaced", f"{path} is not the database this daemon opened")
            return
        try:
            self._restore_database()
        except Exception as exc:  # any failure leaves nothing safe to go on with
            log.exception("database_restore_failed", path=str(path))
            self._fatal("database_lost", f"{path} was deleted and could not be restored: {exc}")
            return
        log.error("database_restored", path=str(path), detail="it was deleted; written back")
        try:  # the file written back is new: locked now, not at the next check (a link to it
            self._lock.verify()  # and a scan by that name would be a second writer meanwhile)
        except DedupdError as exc:
            self._fatal("database_lock_lost", str(exc))

    def _restore_database(self) -> None:
        """Back the open connection up into a temp file beside the database, then link it
        into place: a link, unlike a rename, never replaces a file that appeared meanwhile."""
        path = self.config.database
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".restore", dir=path.parent)
        os.close(fd)
        try:
            copy = sqlite3.connect(name)
            try:
                self.store.db.conn.backup(copy)
            finally:
                copy.close()
            self.watcher.stop()
            self.ingest.close()
            self.store.close()
            # The deleted database's WAL and shared memory must not be applied to the copy.
            for suffix in ("-wal", "-shm"):
                with suppress(FileNotFoundError):
                    os.unlink(f"{path}{suffix}")
            os.link(name, path)
        finally:
            with suppress(FileNotFoundError):
                os.unlink(name)
        self.store = Store(path)
        self._database_identity = _identity(path)
        self.actions = Actions(
            self.store, self.config.quarantine.path, owners=self.config.owners
        )
        self._configure(self.config)  # fresh watches and index, and a reconcile of every root

    def _fatal(self, event: str, error: str) -> None:
        log.error(event, error=error, detail="stopping; a restart (systemd) opens it again")
        self._exit_code = EXIT_FATAL
        self.request_stop()

    def _reload(self) -> str | None:
        """Reload the config; returns why it was rejected, or None."""
        self._reload_flag = False
        self.notifier.send("RELOADING=1", f"MONOTONIC_USEC={time.monotonic_ns() // 1000}")
        try:
            config = self._load()
            self._check_roots(config)
        except ConfigError as exc:
            log.warning("reload_rejected", error=str(exc), detail="keeping the running config")
            self.notifier.send("READY=1", "STATUS=reload rejected: " + str(exc)[:200])
            return str(exc)
        if (config.database, config.socket) != (self.config.database, self.config.socket):
            log.warning("reload_paths_ignored", detail="database and socket need a restart")
            config = replace(config, database=self.config.database, socket=self.config.socket)
        old_config = self.config
        self.watcher.stop()
        self.ingest.close()
        try:
            self.actions = Actions(self.store, config.quarantine.path, owners=config.owners)
            self._configure(config)
        except Interrupted:  # stopping: the new config's work is done by the next start
            raise
        except Exception as exc:  # e.g. the database was locked: go back to the old config
            log.exception("reload_failed", detail="restoring the running config")
            try:
                self.actions = Actions(
                    self.store, old_config.quarantine.path, owners=old_config.owners
                )
                self._configure(old_config)
            except Exception:
                log.exception("restore_after_reload_failed", detail="stopping; restart me")
                self._stop_flag = True
            self.notifier.send("READY=1", "STATUS=reload failed: " + str(exc)[:200])
            return f"reload failed, running config kept: {exc}"
        log.info("reloaded", roots=self.roots)
        self.notifier.send("READY=1", self._status())
        return None


def _identity(path: Path) -> tuple[int, int] | None:
    """(st_dev, st_ino) of what is at `path` now, None if nothing is."""
    try:
        st = os.stat(path)
    except FileNotFoundError:
        return None
    return st.st_dev, st.st_ino
