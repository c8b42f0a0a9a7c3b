"""The standing hasher pool: worker processes that decode and hash files, fed one by one.

Nothing is decoded in the process that owns the store (the daemon, `dedupd scan`): a decoder
that crashes costs one worker and one file recorded as `crashed`, and one that hangs is killed
after `hashing.timeout` seconds and its file recorded as `timeout`. The pool is started once
and fed as files come; `results()` returns whatever has finished, waiting at most a given time,
so the caller's thread stays free to serve requests between files.

concurrent.futures' ProcessPoolExecutor can neither stop one hung worker nor survive a worker's
death (every pending future fails), hence this small pool over multiprocessing: each worker has
its own pipe, and the parent knows which file each worker is on and since when.
"""

from __future__ import annotations

import contextlib
import functools
import math
import multiprocessing
import os
import select
import signal
import time
import warnings
import weakref
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from multiprocessing.connection import Connection
from multiprocessing.connection import wait as wait_for_any
from multiprocessing.process import BaseProcess
from typing import Protocol

import structlog

from dedupd.errors import DedupdError, ImageError
from dedupd.filestat import Counterpart, FileStat, HashedImage, HashedVideo, Likeness
from dedupd.hashers import Hasher
from dedupd.scanner import PATH_MAX, Entry, path_too_long

__all__ = [
    "Failure",
    "HasherPool",
    "PoolClosed",
    "PoolError",
    "Result",
    "Waker",
    "Work",
    "hash_file",
]

log = structlog.get_logger("dedupd.pool")

MAX_CHUNK = 8  # files per message to a worker when many wait: a message costs ~1 ms
IN_FLIGHT_PER_WORKER = 4  # enough queued that no worker waits for the parent between files
STOP_GRACE = 5.0  # seconds an idle worker gets to exit before it is killed
HOLD = 2.0  # seconds a slow file may hold back the results of files submitted after it
READY = "ready"  # a worker's first message
BYE = "bye"  # a worker's last message when it stops on SIGTERM: it answers for nothing more
MAX_BACKOFF = 5.0  # seconds between attempts to start a worker that failed to start


@dataclass(frozen=True, slots=True)
class Failure:
    """Why one file could not be hashed (what the store records as state 'error')."""

    kind: str
    message: str


Result = HashedImage | HashedVideo | Failure
# (path, stat seen when queued, hashers, max_pixels) → result. Runs in a worker process, so it
# must be a module-level function (it is pickled by name) and must not raise.
Work = Callable[[str, FileStat, tuple[Hasher, ...], int], Result]


class PoolError(DedupdError):
    """The hasher pool was misused: started with impossible settings, or used once closed."""


class PoolClosed(PoolError):
    """Work was submitted to a pool that has been closed."""


def hash_file(
    path: str,
    expect: FileStat,
    hashers: tuple[Hasher, ...],
    max_pixels: int,
    *,
    video_fps: float = 1.0,
    thumbnails: bool = True,
    features: bool = True,
) -> Result:
    """The workers' default work. Returns a failure instead of raising: custom exceptions do
    not survive pickling, and one bad file must never take the others down with it.

    A video (by its name), or a GIF or WebP that holds several frames, is hashed frame-wise
    with the first of `hashers` at `video_fps` (`dedupd.video`); anything else as an image,
    with the crop stage's local features unless `features` is False (`hashing.crops`)."""
    if path_too_long(path):
        return Failure(
            "path_too_long",
            f"the path is {len(os.fsencode(path))} bytes, more than the system's limit of"
            f" {PATH_MAX - 1}; it cannot be opened by name: shorten its folder names",
        )
    # Here, not at the top: only the workers decode (importing imaging also registers the
    # HEIF opener, in the process that decodes).
    from dedupd import video
    from dedupd.imaging import hash_image

    ext = path.rpartition(".")[2].lower()
    try:
        if ext in video.VIDEO_EXTENSIONS:
            return video.hash_video(
                path, hashers[0], fps=video_fps, max_pixels=max_pixels, expect=expect
            )
        if ext in video.ANIMATED_EXTENSIONS:
            clip = video.hash_animation(
                path, hashers[0], fps=video_fps, max_pixels=max_pixels, expect=expect
            )
            if clip is not None:
                return clip
        return hash_image(
            path,
            hashers,
            max_pixels=max_pixels,
            expect=expect,
            thumbnails=thumbnails,
            features=features,
        )
    except ImageError as exc:
        return Failure(exc.kind, exc.detail)
    except MemoryError:
        return Failure("out_of_memory", "decoding needed more memory than was available")
    except Exception as exc:  # a decoder bug must not stop the others; record it instead
        return Failure("internal", f"{type(exc).__name__}: {exc}")


OOM_SCORE_ADJ = 1000  # the most: the first process the kernel's OOM killer ends


def _first_to_go() -> None:
    """Offer this worker to the kernel's OOM killer before any other process. A decode can
    still outgrow the memory a pixel bound allows for (a codec's own buffers, a crafted
    file): the killer then ends the worker, the pool records that one file as `crashed` and
    starts another. Chosen by size alone, the victim could be the daemon (its indexes
    outweigh a worker at rest) or another service on a small NAS. Any process may raise its
    own score; only lowering one takes privileges."""
    try:
        with open("/proc/self/oom_score_adj", "w") as f:
            f.write(str(OOM_SCORE_ADJ))
    except OSError as exc:  # not Linux, or /proc not mounted: nothing to offer
        log.debug("oom_score_adj_unset", error=str(exc))


def _serve(conn: Connection, work: Work, hashers: tuple[Hasher, ...], max_pixels: int) -> None:
    """A worker's life: hash each file it is sent and answer file by file, until told to stop
    (None), until the parent is gone (end of file), or on SIGTERM once it has answered for
    every file it was sent."""
    # The parent decides when a file is given up. Ctrl-C and a terminal's hang-up reach the
    # whole process group, and systemd's SIGTERM the whole cgroup: a worker dying of them
    # mid-file would be recorded as a crash. So SIGINT and SIGHUP are ignored, and SIGTERM
    # only asks the worker to stop when it has nothing left to answer for. The handler just
    # records it; the wake-up pipe ends a wait that the signal would otherwise only resume.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGHUP, signal.SIG_IGN)
    _first_to_go()
    # A decoder's warnings (Pillow's "Corrupt EXIF data" on a photo's odd EXIF, numpy's)
    # went to stderr as bare text, naming no file, between the JSON lines of the log
    # (journald; `dedupd scan --log-level info 2>&1 | jq` stopped at the first). What a
    # worker finds wrong with a file is its result: a recorded error, or nothing.
    warnings.simplefilter("ignore")
    woken, wake = os.pipe()
    os.set_blocking(woken, False)
    os.set_blocking(wake, False)
    signal.set_wakeup_fd(wake)
    stopping: list[bool] = []
    signal.signal(signal.SIGTERM, lambda signum, frame: stopping.append(True))
    # A match's confirmation is always the real, full decode: the default work's, with its
    # settings (clip rate, features), without the embedded thumbnail.
    is_default = work is hash_file or (
        isinstance(work, functools.partial) and work.func is hash_file
    )
    default: Callable[..., Result] = work if is_default else hash_file
    full: Work = functools.partial(default, thumbnails=False)
    conn.send(READY)  # only now may it be given files: a signal can no longer lose one
    while True:
        if stopping and not conn.poll():
            # Files sent after this are the parent's to give to another worker.
            with contextlib.suppress(OSError):
                conn.send(BYE)
            return
        if woken in wait_for_any([conn, woken]):
            with contextlib.suppress(BlockingIOError):
                os.read(woken, 512)
            continue  # look at `stopping` again
        try:
            chunk: list[tuple[str, FileStat, bool, tuple[Counterpart, ...]]] | None = conn.recv()
        except EOFError:
            return  # the parent is gone
        if chunk is None:
            return
        for path, stat, full_decode, compare in chunk:
            try:
                if full_decode:
                    result = full(path, stat, hashers, max_pixels)
                else:
                    result = work(path, stat, hashers, max_pixels)
                if compare and isinstance(result, HashedImage):
                    result = _compared(result, path, compare, max_pixels)
                elif compare and isinstance(result, HashedVideo):
                    result = _clips_compared(result, path, compare, full, hashers, max_pixels)
            except Exception as exc:  # a pluggable `work` that raises still answers
                result = Failure("internal", f"{type(exc).__name__}: {exc}")
            try:
                conn.send(result)
            except OSError:  # the parent is gone: nobody to answer
                return


def _compared(
    result: HashedImage, path: str, compare: tuple[Counterpart, ...], max_pixels: int
) -> HashedImage:
    """`result` with what comparing its pixels with each of `compare` found, measured here in
    the worker like the hashes (a file that changed since it was hashed is not compared)."""
    from dedupd import likeness

    found = tuple(
        (
            c,
            likeness.compare_files(path, c, max_pixels, expect=result.stat),
        )
        for c in compare
    )
    return replace(result, likeness=found)


def _clips_compared(
    result: HashedVideo,
    path: str,
    compare: tuple[Counterpart, ...],
    full: Work,
    hashers: tuple[Hasher, ...],
    max_pixels: int,
) -> HashedVideo:
    """`result` with what comparing its frames and sound with each of `compare` found
    (`dedupd.cliplikeness`); each counterpart is hashed again here, as it is now, for the
    times its frames lie at."""
    from dedupd import cliplikeness

    found = []
    for c in compare:
        try:
            other = full(c.path, c.stat, hashers, max_pixels)
        except Exception as exc:  # the counterpart's failure is no failure of this clip
            other = Failure("internal", f"{type(exc).__name__}: {exc}")
        if isinstance(other, HashedVideo):
            measured = cliplikeness.compare_clips(
                path, result, c.path, other, hashers[0], max_pixels
            )
        else:
            why = other.message if isinstance(other, Failure) else "it is not a clip now"
            measured = Likeness(math.inf, error=f"the other clip could not be read: {why}")
        found.append((c, measured))
    return replace(result, likeness=tuple(found))


def _readable(fds: Sequence[int], timeout: float) -> set[int]:
    """Which of `fds` can be read (a message, or end of file) within `timeout` seconds.

    One poll(2): multiprocessing's `wait` and `Connection.poll` build a selector on every
    call (~20 us each, several calls per file hashed, on the thread that also writes the
    store). Not select(): it fails for descriptors above 1023."""
    poller = select.poll()
    for fd in fds:
        poller.register(fd, select.POLLIN)
    return {fd for fd, _ in poller.poll(max(0, math.ceil(timeout * 1000)))}


class _Fileno(Protocol):
    def fileno(self) -> int: ...


def _close_fds(*fds: int) -> None:
    for fd in fds:
        os.close(fd)


class Waker:
    """`threading.Event`'s set/clear/wait over a pipe: one `select` can then wait for a wake-up
    and for worker results at once, and `set()` (one `os.write`) is safe in a signal handler."""

    def __init__(self) -> None:
        self._read, self._write = os.pipe()
        os.set_blocking(self._read, False)
        os.set_blocking(self._write, False)
        weakref.finalize(self, _close_fds, self._read, self._write)

    def fileno(self) -> int:
        return self._read

    def set(self) -> None:
        with contextlib.suppress(BlockingIOError):  # the pipe is full: it is set already
            os.write(self._write, b"\0")

    def clear(self) -> None:
        try:
            while os.read(self._read, 4096):
                pass
        except BlockingIOError:
            pass

    def is_set(self) -> bool:
        return self.wait(0)

    def wait(self, timeout: float | None = None) -> bool:
        poller = select.poll()  # not select(): it fails for descriptors above 1023
        poller.register(self._read, select.POLLIN)
        return bool(poller.poll(None if timeout is None else max(0, math.ceil(timeout * 1000))))


Job = tuple[int, Entry]  # (submission number, file)


@dataclass(eq=False)
class _Worker:
    process: BaseProcess
    conn: Connection
    files: deque[Job] = field(default_factory=deque)  # sent, not answered yet, in order
    since: float = 0.0  # when files[0] started, as far as the parent can tell
    ready: bool = False  # it said READY: its signal handlers are in place
    leaving: bool = False  # it said BYE: files it holds were never started


class HasherPool:
    """`workers` processes that run `work` on submitted files; see the module docstring.

    Results come back in the order files were submitted, so that of two copies arriving
    together the later one is "the newcomer" whichever worker was faster; a file that takes
    longer than `hold` seconds (a huge TIFF, a hung decoder) stops holding back those after it.
    Not thread-safe: one thread submits and collects (the daemon's loop, or `scan`).
    """

    def __init__(
        self,
        hashers: Sequence[Hasher],
        *,
        workers: int,
        max_pixels: int,
        timeout: float,
        work: Work = hash_file,
        hold: float = HOLD,
    ):
        if workers < 1 or not timeout > 0 or hold < 0:
            raise PoolError(f"workers {workers}, timeout {timeout} must be > 0; hold {hold} >= 0")
        self.workers, self.timeout, self.hold = workers, timeout, hold
        self._args = (work, tuple(hashers), max_pixels)
        # forkserver: forking a process that runs threads (the daemon) is unsafe. Workers
        # fork from a server that has imported the decoders once, so a replacement is quick.
        self._context = multiprocessing.get_context("forkserver")
        self._context.set_forkserver_preload(["dedupd.pool", "dedupd.imaging", "av"])
        self._todo: deque[Job] = deque()
        self._workers: list[_Worker] = []
        self._finished: dict[int, tuple[Entry, Result]] = {}  # held back for the order
        self._submitted = self._spawned = 0
        self._retry_at = self._backoff = 0.0
        self._closed = False
        try:
            self._fill()
        except BaseException:
            self.close()
            raise

    def __enter__(self) -> HasherPool:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    @property
    def capacity(self) -> int:
        """How many files a caller should keep in flight: all workers busy, none waiting."""
        return IN_FLIGHT_PER_WORKER * self.workers

    @property
    def in_flight(self) -> int:
        """Files submitted and not yet returned by `results()`. Safe to read from any thread."""
        queued = sum(len(w.files) for w in list(self._workers))
        return len(self._todo) + queued + len(self._finished)

    def pids(self) -> list[int]:
        """The workers' process ids."""
        return [w.process.pid for w in self._workers if w.process.pid is not None]

    def submit(self, entry: Entry) -> None:
        """Queue `entry` for hashing; it comes back from `results()` exactly once."""
        if self._closed:
            raise PoolClosed("the hasher pool is closed")
        self._submitted += 1
        self._todo.append((self._submitted, entry))
        self._dispatch()

    def results(self, timeout: float, wake: _Fileno | None = None) -> list[tuple[Entry, Result]]:
        """What has finished, waiting up to `timeout` seconds for at least one result, or
        less when `wake` (anything with a fileno, e.g. a `Waker`) becomes readable.

        A file whose worker died is returned as Failure("crashed"); one that took longer
        than `timeout` of the pool as Failure("timeout"); the worker is replaced either way,
        and the other files it held are hashed by the next worker.
        """
        deadline = time.monotonic() + max(0.0, timeout)
        while True:
            self._collect()
            self._dispatch()
            done = self._release()
            now = time.monotonic()
            if done or now >= deadline or self._closed:
                return done
            until = min([deadline, *self._deadlines()])
            waiting = [w.conn.fileno() for w in self._workers]
            if wake is not None:
                waiting.append(wake.fileno())
            ready = _readable(waiting, max(0.0, until - now))
            if wake is not None and wake.fileno() in ready:
                self._collect()
                return self._release()

    def close(self) -> None:
        """Stop every worker (those busy at once: their files are simply not recorded, and
        the next reconcile finds them). Idempotent."""
        if self._closed:
            return
        self._closed = True
        workers, self._workers = self._workers, []
        self._todo.clear()
        self._finished.clear()
        for w in workers:
            if w.files:
                w.process.kill()
            else:
                with contextlib.suppress(OSError):  # it is gone already
                    w.conn.send(None)
        for w in workers:
            self._reap(w, grace=STOP_GRACE)

    # -- internals ------------------------------------------------------------------------
    def _fill(self) -> None:
        """Start workers until there are `workers` of them (at start, and after a loss).

        A start that fails (the fork server was killed a moment ago, fork() refused) is
        retried later, backing off up to a few seconds; queued files wait meanwhile.
        """
        while len(self._workers) < self.workers and not self._closed:
            if time.monotonic() < self._retry_at:
                return
            parent, child = self._context.Pipe(duplex=True)
            self._spawned += 1
            process = self._context.Process(
                target=_serve,
                args=(child, *self._args),
                name=f"dedupd-hasher-{self._spawned}",
                daemon=True,  # never outlives the daemon, even if close() is never reached
            )
            try:
                process.start()
            except OSError as exc:
                parent.close()
                self._backoff = min(2 * self._backoff or 0.05, MAX_BACKOFF)
                self._retry_at = time.monotonic() + self._backoff
                log.warning("hasher_start_failed", error=str(exc), retry_in=self._backoff)
                return
            finally:
                child.close()  # only the worker holds it, so its death reads as end of file
            self._backoff = 0.0
            self._workers.append(_Worker(process, parent))

    def _chunk(self) -> int:
        """Files per message: one at a time when few wait (lowest latency, no file stuck
        behind a slow one), up to MAX_CHUNK when many do (less IPC per file)."""
        return max(1, min(MAX_CHUNK, len(self._todo) // (2 * self.workers)))

    def _dispatch(self) -> None:
        if self._closed:
            return
        self._fill()
        for w in sorted(self._workers, key=lambda w: len(w.files)):
            size = self._chunk()
            if not self._todo or not w.ready or len(w.files) > size // 2:
                continue
            chunk = [self._todo.popleft() for _ in range(min(size, len(self._todo)))]
            try:
                w.conn.send([(e.path, e.stat, e.full_decode, e.compare) for _, e in chunk])
            except OSError:  # it died; _collect() notices, and these go to another worker
                self._todo.extendleft(reversed(chunk))
                continue
            if not w.files:
                w.since = time.monotonic()
            w.files.extend(chunk)

    def _collect(self) -> None:
        """Read every answer that has arrived; replace workers that died or overran.

        A worker's death shows as end of file on its pipe, never by its process sentinel:
        that comes from the fork server, and reads as a death of every worker when the
        server itself is killed (systemd's SIGTERM reaches the whole cgroup).
        """
        for w in list(self._workers):
            ended = False
            try:
                while _readable([w.conn.fileno()], 0):
                    result = w.conn.recv()
                    if not w.ready:
                        w.ready = result == READY
                        continue
                    if result == BYE:
                        w.leaving = True
                        break
                    seq, entry = w.files.popleft()
                    self._finished[seq] = (entry, result)
                    w.since = time.monotonic()
            except Exception:  # end of file, or a message cut short by the worker's death
                ended = True
            if w.leaving:
                self._lose(w, None, "it stopped on SIGTERM")
            elif ended:
                self._lose(w, "crashed", self._death_message(w))
            elif w.files and time.monotonic() - w.since >= self.timeout:
                self._lose(
                    w,
                    "timeout",
                    f"decoding took longer than hashing.timeout ({self.timeout:g} s); "
                    "the worker was stopped",
                )

    def _release(self) -> list[tuple[Entry, Result]]:
        """Finished results in submission order, up to the first file still being worked on
        that has not yet taken `hold` seconds (nor waits behind one that has)."""
        now = time.monotonic()
        blocking = [seq for seq, _ in self._todo]
        for w in self._workers:
            if now - w.since < self.hold:
                blocking += [seq for seq, _ in w.files]
        first = min(blocking, default=self._submitted + 1)
        out = [self._finished.pop(seq) for seq in sorted(self._finished) if seq < first]
        return out

    def _deadlines(self) -> list[float]:
        """When a busy worker times out or stops holding back the results after its file, and
        when to try again to start a missing worker."""
        now, times = time.monotonic(), []
        if len(self._workers) < self.workers:
            times.append(self._retry_at)
        for w in self._workers:
            if w.files:
                times.append(w.since + self.timeout)
                if self._finished and w.since + self.hold > now:
                    times.append(w.since + self.hold)
        return times

    def _death_message(self, w: _Worker) -> str:
        w.process.join(timeout=STOP_GRACE)
        code = w.process.exitcode
        if code is not None and code < 0:
            how = f"killed by {signal.Signals(-code).name}"
            if code == -signal.SIGKILL:
                how += " (out of memory?)"
        else:
            how = f"exit code {code}"
        return f"the hashing worker died ({how}) while decoding this file"

    def _lose(self, w: _Worker, kind: str | None, why: str) -> None:
        """Take `w` out: its current file fails with `kind` (None: it never started it), the
        files queued behind it go back to the front of the queue for another worker."""
        self._workers.remove(w)
        pid = w.process.pid
        w.process.kill()
        self._reap(w, grace=STOP_GRACE)
        current = w.files.popleft() if w.files and kind is not None else None
        self._todo.extendleft(reversed(w.files))
        if current is not None and kind is not None:
            seq, entry = current
            self._finished[seq] = (entry, Failure(kind, why))
        log.warning(
            "hasher_replaced",
            reason=kind or why,
            pid=pid,
            path=current[1].path if current else None,
            requeued=len(w.files),
        )

    @staticmethod
    def _reap(w: _Worker, grace: float) -> None:
        w.process.join(timeout=grace)
        if w.process.is_alive():
            w.process.kill()
            w.process.join()
        w.conn.close()
        w.process.close()
