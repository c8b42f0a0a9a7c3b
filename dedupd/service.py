"""The operations users ask for, behind one interface.

`Service` is what `dedupctl` and its review page call: status, search, groups, one file, the
quarantine, quarantine one file now, restore, purge, distinct, rescan, reload. Each answer is
a JSON-ready dict, printed by `render`. Three implementations:

- `DaemonService` runs inside the daemon, behind the control socket: reads use a read-only
  connection of their own and the in-memory index; changes run on the daemon's thread.
- `RemoteService` is dedupctl's side of the socket.
- `LocalService` works on the database itself, for when no daemon runs; its changes hold
  the database's lock, as every writer does.

`connect()` asks the daemon (the first of several sockets where one runs: the user's own,
then the system service's), and the database only when no daemon runs at all.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import TimeoutError as FutureTimeout
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

from dedupd.errors import Busy, DaemonBusy, DaemonNotRunning, NotFoundError, Refused, StoreError
from dedupd.filestat import LocalFeatures

if TYPE_CHECKING:
    from dedupd.actions import Actions
    from dedupd.config import Config
    from dedupd.control import ControlClient
    from dedupd.daemon import Daemon
    from dedupd.store import FileRecord, Store

__all__ = [
    "DaemonService",
    "LocalService",
    "RemoteService",
    "Service",
    "connect",
    "decode_features",
    "encode_features",
]

Answer = dict[str, Any]


def encode_features(f: LocalFeatures) -> str:
    """A query image's local features as the search request's `features=` parameter."""
    return ",".join(
        [
            f.kind,
            str(f.width),
            str(f.height),
            f.points.hex(),
            f.descriptors.hex(),
            f.words.hex(),
            f.patch.hex(),
        ]
    )


def decode_features(text: str) -> LocalFeatures:
    """Back from `encode_features`. Raises ValueError when malformed."""
    kind, width, height, points, descriptors, words, patch = text.split(",")
    return LocalFeatures(
        kind,
        int(width),
        int(height),
        bytes.fromhex(points),
        bytes.fromhex(descriptors),
        bytes.fromhex(words),
        bytes.fromhex(patch),
    )


COMMAND_TIMEOUT = 600.0  # seconds a change may wait for the daemon's thread (a long purge)


class Service(Protocol):
    """What users can ask of dedupd. Paths are absolute; durations are seconds."""

    def status(self) -> Answer: ...

    def search(
        self,
        bits: bytes,
        *,
        sha256: str | None,
        k: int,
        threshold: float | None,
        variants: Sequence[bytes] = (),
        features: LocalFeatures | None = None,
        frames: Sequence[bytes] = (),
    ) -> Answer:
        """Indexed photos nearest to `bits` (with `variants`, the 8 rotations and mirrors of
        the query image in hashers.TRANSFORMS order: nearest to any of them), and the clips
        with a frame like it; with the query image's local `features`, also those in a crop
        relation with it (`crops`); or, with `frames` (a query clip's frame hashes, `bits`
        being the first), the clips that match that clip."""
        ...

    def groups(self) -> Answer: ...

    def file_info(self, path: str) -> Answer: ...

    def quarantine_list(self, *, root: str | None = None, since: float | None = None) -> Answer:
        """What is in quarantine; `since` is a duration: only what was quarantined within
        that many seconds."""
        ...

    def quarantine(self, path: str, keeper: str) -> Answer:
        """Quarantine the photo at `path` now, as a duplicate of `keeper` (the user's choice
        of the worse copy in a reported group), through the journaled `actions`."""
        ...

    def restore(self, items: Sequence[str]) -> Answer: ...

    def purge(self, older_than: float, ids: Sequence[int] | None = None) -> Answer: ...

    def distinct(self, a: str, b: str) -> Answer: ...

    def rescan(self, root: str | None) -> Answer: ...

    def reload(self) -> Answer: ...


# -- the changes, on whichever thread owns the store --------------------------------------------


def _restore(store: Store, actions: Actions, items: Sequence[str]) -> Answer:
    """Restore by action id, original path or path in quarantine; one result per item."""
    from dedupd.actions import ActionError, motion_paths

    entries = store.quarantined()
    results: list[Answer] = []
    for item in items:
        path = os.path.abspath(item)
        match = [
            e
            for e in entries
            if str(e.id) == item or path in (e.src, e.dst, *(motion_paths(e) or ()))
        ]
        if not match:
            results.append({"item": item, "error": "not in quarantine"})
            continue
        try:
            results.append({"item": item, "restored": str(actions.restore(match[-1].id))})
        except ActionError as exc:
            results.append({"item": item, "error": str(exc)})
    return {"results": results}


def _purge(actions: Actions, older_than: float, ids: Sequence[int] | None) -> Answer:
    """Delete what was quarantined more than `older_than` seconds ago (journaled); with
    `ids`, only those of them (what the user confirmed)."""
    purged = actions.purge(older_than, only=None if ids is None else set(ids))
    return {"purged": purged, "older_than": older_than, "at": time.time()}


def _distinct(store: Store, a: str, b: str) -> Answer:
    """Remember that the photos at `a` and `b` are different: they never match again.
    Refused for two byte-identical files: they are the same photo, whatever the user says."""
    records = []
    for path in (a, b):
        record = store.file_at(Path(path).expanduser().absolute())
        if record is None or record.sha256 is None:
            raise NotFoundError(f"{path}: not a hashed photo in the database")
        records.append(record)
    if records[0].id == records[1].id:
        raise Refused(f"{records[0].path} is named twice: give two different photos")
    if records[0].sha256 == records[1].sha256:
        raise Refused(
            f"{records[0].path} and {records[1].path} are byte-identical: the same photo, not a"
            " false match; to keep one, remove the other (a policy with `exact: quarantine`"
            " does it for you)"
        )
    store.mark_distinct(records[0].sha256 or "", records[1].sha256 or "")
    return {"distinct": [str(r.path) for r in records]}


def _quarantine(
    store: Store, actions: Actions, config: Config, path: str, keeper: str
) -> tuple[Answer, int]:
    """Quarantine the photo at `path` as a duplicate of the one at `keeper`; returns the
    answer and the quarantined file's id (to leave the index). Refused unless dedupd itself
    found the two to be duplicates (a match between them, or one reported group): the page
    or a request can only pick among what dedupd reported, never name any file."""
    from dedupd import queries
    from dedupd.engine import duplicate_groups
    from dedupd.hashers import Hasher

    target, kept = (_hashed(store, p) for p in (path, keeper))
    for record in (target, kept):
        if record.state != "ok":
            raise Refused(f"{record.path} is {record.state}, not in its folder; nothing done")
    if target.id == kept.id:
        raise Refused(f"{target.path} cannot be its own keeper; nothing done")
    # What the engine never does, a request may not either: a page loaded before the pair
    # was marked distinct (or one of them restored) still offers the button (red team 12).
    policies = config.policies_of(str(target.root))
    if not policies or any(p.reference for p in policies):
        where = "a reference root, never acted on" if policies else "no watched folder"
        raise Refused(f"{target.path} is in {where}; nothing done")
    if kept.sha256 in store.distinct_from(target.sha256 or ""):
        raise Refused(
            f"{target.path} and {kept.path} are marked as different pictures (`dedupctl "
            "distinct`, or a restore); nothing done"
        )
    hasher = Hasher(config.hashing.algorithm, config.hashing.hash_size)
    distance: int | None = 0 if target.sha256 == kept.sha256 else None
    for m in store.matches_of(target.id, hasher.key):
        if m.other.id == kept.id and distance is None:
            distance = m.distance
    if distance is None:
        for g in duplicate_groups(store, config, queries.all_roots(store)):
            ids = {g.keeper.id} | {m.record.id for m in g.duplicates}
            if {target.id, kept.id} <= ids:
                distance = next(
                    (m.distance for m in g.duplicates if m.record.id == target.id), None
                )
                break
        else:
            raise Refused(
                f"{target.path} and {kept.path} are not duplicates dedupd found; nothing done"
            )
    action_id = actions.quarantine(target, kept, distance, "user: quarantined by hand")
    done = store.action(action_id)
    return {"id": action_id, "src": str(target.path), "dst": done.dst if done else None}, target.id


def _hashed(store: Store, path: str) -> FileRecord:
    record = store.file_at(Path(path).expanduser().absolute())
    if record is None or record.sha256 is None:
        raise NotFoundError(f"{path}: not a hashed photo in the database")
    return record


def _cutoff(since: float | None) -> float | None:
    return None if since is None else time.time() - since


# -- inside the daemon ------------------------------------------------------------------------


class DaemonService:
    """The service as the daemon gives it: what the control socket's routes call."""

    def __init__(self, daemon: Daemon, *, command_timeout: float = COMMAND_TIMEOUT):
        self._daemon = daemon
        self._timeout = command_timeout

    @property
    def hash_bits(self) -> int:
        return self._daemon.ingest.hasher.bits

    @property
    def quarantine_retain(self) -> float:
        return self._daemon.config.quarantine.retain

    def _on_daemon_thread(self, fn: Callable[[], Answer]) -> Answer:
        """Hand `fn` to the daemon's thread (the only one that changes state) and wait."""
        future = self._daemon.submit(fn)
        try:
            return future.result(self._timeout)
        except FutureTimeout as exc:
            if future.cancel():  # not started: it never will be, so "busy" is the whole truth
                raise Busy("the daemon did not get to it in time") from exc
            raise Busy("still running on the daemon; check again later") from exc

    def status(self) -> Answer:
        return self._daemon.status()

    def search(
        self,
        bits: bytes,
        *,
        sha256: str | None,
        k: int,
        threshold: float | None,
        variants: Sequence[bytes] = (),
        features: LocalFeatures | None = None,
        frames: Sequence[bytes] = (),
    ) -> Answer:
        from dedupd import queries

        ingest = self._daemon.ingest
        query = {"hash": bits.hex(), "sha256": sha256}
        with self._daemon.store_reader() as store:
            return queries.search(
                store,
                ingest.index,
                ingest.hasher,
                bits,
                k=k,
                threshold=threshold,
                query=query,
                policy_threshold=ingest.threshold_for,
                widest=ingest.widest_radius,
                lock=ingest.lock,
                variants=variants,
                features=features,
                crops=ingest.crops,
                clips=ingest,
                frames=frames,
            )

    def groups(self) -> Answer:
        from dedupd import queries

        with self._daemon.store_reader() as store:
            return queries.groups(store, self._daemon.config)

    def file_info(self, path: str) -> Answer:
        from dedupd import queries

        with self._daemon.store_reader() as store:
            ingest = self._daemon.ingest
            return queries.file_info(store, ingest.hasher, path, ingest.video_key)

    def quarantine_list(self, *, root: str | None = None, since: float | None = None) -> Answer:
        from dedupd import queries

        with self._daemon.store_reader() as store:
            return queries.quarantine_list(store, root=root, since=_cutoff(since))

    def quarantine(self, path: str, keeper: str) -> Answer:
        d = self._daemon

        def change() -> Answer:
            answer, file_id = _quarantine(d.store, d.actions, d.config, path, keeper)
            # Out of every index (photos, crop words, clips), as after the daemon's own moves,
            # with a Live Photo's motion file moved along with it.
            gone = [file_id]
            motion = d.actions.motion_record(answer["id"])
            if motion is not None:
                gone.append(motion.id)
            d.ingest.unindex(gone)
            return answer

        return self._on_daemon_thread(change)

    def restore(self, items: Sequence[str]) -> Answer:
        d = self._daemon
        return self._on_daemon_thread(lambda: _restore(d.store, d.actions, items))

    def purge(self, older_than: float, ids: Sequence[int] | None = None) -> Answer:
        d = self._daemon
        return self._on_daemon_thread(lambda: _purge(d.actions, older_than, ids))

    def distinct(self, a: str, b: str) -> Answer:
        d = self._daemon
        return self._on_daemon_thread(lambda: _distinct(d.store, a, b))

    def rescan(self, root: str | None) -> Answer:
        return self._on_daemon_thread(lambda: self._daemon.request_rescan(root))

    def reload(self) -> Answer:
        return self._on_daemon_thread(self._daemon.reload_now)


# -- dedupctl's two sides --------------------------------------------------------------------


class RemoteService:
    """The daemon's service over its socket. Raises DaemonUnavailable and its kinds. Its
    answers are checked as they arrive (`control.ControlClient`: who listens, and each
    answer's shape), so those it returns are what `render` and the CLI may index into."""

    def __init__(self, client: ControlClient):
        self.client = client

    def status(self) -> Answer:
        return self.client.get("status")

    def search(
        self,
        bits: bytes,
        *,
        sha256: str | None,
        k: int,
        threshold: float | None,
        variants: Sequence[bytes] = (),
        features: LocalFeatures | None = None,
        frames: Sequence[bytes] = (),
    ) -> Answer:
        fields: dict[str, Any] = dict(
            hash=bits.hex(),
            sha256=sha256,
            k=k,
            threshold=threshold,
            variants=",".join(v.hex() for v in variants) or None,
            frames=",".join(f.hex() for f in frames) or None,
        )
        if features is None:
            return self.client.get("search", **fields)
        # ~25 KB of features: in a body, not a request head
        return self.client.post("search", {**fields, "features": encode_features(features)})

    def groups(self) -> Answer:
        return self.client.get("groups")

    def file_info(self, path: str) -> Answer:
        return self.client.get("files", path=path)

    def quarantine_list(self, *, root: str | None = None, since: float | None = None) -> Answer:
        return self.client.get("quarantine", root=root, since=since)

    def quarantine(self, path: str, keeper: str) -> Answer:
        return self.client.post("quarantine/add", {"path": path, "keeper": keeper})

    def restore(self, items: Sequence[str]) -> Answer:
        return self.client.post("quarantine/restore", {"items": list(items)})

    def purge(self, older_than: float, ids: Sequence[int] | None = None) -> Answer:
        body: Answer = {"older_than": older_than}
        if ids is not None:
            body["ids"] = list(ids)
        return self.client.post("quarantine/purge", body)

    def distinct(self, a: str, b: str) -> Answer:
        return self.client.post("distinct", {"paths": [a, b]})

    def rescan(self, root: str | None) -> Answer:
        return self.client.post("rescan", {"root": root})

    def reload(self) -> Answer:
        return self.client.post("reload")


class LocalService:
    """The service over the database, for when no daemon runs. Reads open it read-only;
    changes hold the database's lock (DatabaseBusy if another process has it). `on_use` is
    called before the first answer (dedupctl says that it works without the daemon)."""

    def __init__(
        self,
        config: Config,
        on_use: Callable[[], None] = lambda: None,
        *,
        sockets: Sequence[Path] = (),
    ):
        """`sockets`: where a daemon was looked for, named when one is needed (default:
        the config's socket)."""
        self.config = config
        self._on_use = on_use
        self._sockets = tuple(sockets) or (config.socket,)

    def _used(self) -> None:
        self._on_use()
        self._on_use = lambda: None

    def _no_daemon(self) -> DaemonNotRunning:
        return DaemonNotRunning(
            f"dedupd is not running (nothing answers on {' or '.join(map(str, self._sockets))})"
            "; start it with `dedupd run` or `systemctl start dedupd`"
        )

    def _reader(self) -> Store:
        from dedupd.store import Store

        self._used()
        return Store(self.config.database, readonly=True)

    def _change(self, change: Callable[[Store, Actions], Answer]) -> Answer:
        from dedupd.actions import Actions
        from dedupd.lock import DatabaseBusy, DatabaseLock
        from dedupd.store import Store

        self._used()
        # Never a new database: one that is not there means the wrong one was found (or
        # none exists yet), and a change made to a new one would be lost to the daemon.
        if not os.path.exists(self.config.database):
            raise StoreError(
                f"{self.config.database}: no database yet; start the daemon or run `dedupd "
                "scan` first (or name the daemon's database with --database)"
            )
        lock = DatabaseLock(self.config.database, "dedupctl")
        try:
            lock.acquire()
        except DatabaseBusy as exc:
            if exc.role != "daemon":
                raise
            # A daemon holds it, yet did not answer where we asked: say where, and how else.
            raise DaemonBusy(
                "busy",
                f"{exc}, but nothing answers on {' or '.join(map(str, self._sockets))}: it is"
                " starting or stopping, or listens on another socket; pass that one with"
                " --socket",
            ) from exc
        try:
            with Store(self.config.database) as st:
                actions = Actions(st, self.config.quarantine.path, owners=self.config.owners)
                return change(st, actions)
        finally:
            lock.release()

    def status(self) -> Answer:
        raise self._no_daemon()

    def search(
        self,
        bits: bytes,
        *,
        sha256: str | None,
        k: int,
        threshold: float | None,
        variants: Sequence[bytes] = (),
        features: LocalFeatures | None = None,
        frames: Sequence[bytes] = (),
    ) -> Answer:
        from dedupd import queries
        from dedupd.engine import Ingest

        with self._reader() as store:
            ingest = Ingest(store, self.config, roots=queries.all_roots(store))
            ingest.load_crops_now()  # swapped in on this thread
            ingest.close()
            query = {"hash": bits.hex(), "sha256": sha256}
            return queries.search(
                store,
                ingest.index,
                ingest.hasher,
                bits,
                k=k,
                threshold=threshold,
                query=query,
                variants=variants,
                policy_threshold=ingest.threshold_for,
                widest=ingest.widest_radius,
                features=features,
                crops=ingest.crops,
                clips=ingest,
                frames=frames,
            )

    def groups(self) -> Answer:
        from dedupd import queries

        with self._reader() as store:
            return queries.groups(store, self.config)

    def file_info(self, path: str) -> Answer:
        from dedupd import queries
        from dedupd.hashers import Hasher
        from dedupd.video import video_key

        hashing = self.config.hashing
        hasher = Hasher(hashing.algorithm, hashing.hash_size)
        clips = video_key(hasher, hashing.video_fps)
        with self._reader() as store:
            return queries.file_info(store, hasher, path, clips)

    def quarantine_list(self, *, root: str | None = None, since: float | None = None) -> Answer:
        from dedupd import queries

        with self._reader() as store:
            return queries.quarantine_list(store, root=root, since=_cutoff(since))

    def quarantine(self, path: str, keeper: str) -> Answer:
        config = self.config
        return self._change(lambda st, actions: _quarantine(st, actions, config, path, keeper)[0])

    def restore(self, items: Sequence[str]) -> Answer:
        return self._change(lambda store, actions: _restore(store, actions, items))

    def purge(self, older_than: float, ids: Sequence[int] | None = None) -> Answer:
        return self._change(lambda store, actions: _purge(actions, older_than, ids))

    def distinct(self, a: str, b: str) -> Answer:
        return self._change(lambda store, actions: _distinct(store, a, b))

    def rescan(self, root: str | None) -> Answer:
        raise self._no_daemon()

    def reload(self) -> Answer:
        raise self._no_daemon()


class _DaemonElseDatabase:
    """Asks the daemon, on the first of `remotes` where one runs; when none runs at all (no
    socket, nothing accepting), the database.

    Trying the next socket is safe for any request: "not running" means the connection was
    refused (or the socket is missing), so nothing was sent. Only that case is worked
    around: a busy or stopping daemon still owns the database, one this user may not talk
    to is still there, an answer that is not dedupd's may come from a daemon of another
    version, and a process of another user at the path may be keeping the daemon from its
    socket: those errors go to the caller, to be seen. The first daemon that answers
    is the one asked from then on. The daemon is asked again before every fallback: one
    started since (`dedupctl review` runs for hours) holds the database and is the writer."""

    def __init__(
        self,
        remotes: Sequence[RemoteService],
        local: Callable[[], LocalService],
        database: Path | None = None,
        on_other: Callable[[RemoteService, str], None] = lambda remote, theirs: None,
    ):
        """`database`: the database the caller named (None: whichever the daemon serves);
        a daemon that serves another one is not asked (`on_other` is told), as if none ran
        there."""
        self._remotes, self._local = list(remotes), local
        self._fallback: LocalService | None = None
        self._database, self._on_other = database, on_other

    def _ask(self, question: Callable[[Service], Answer]) -> Answer:
        others = []  # sockets whose daemon serves another database
        for remote in self._remotes:
            try:
                if not self._serves_database(remote):
                    others.append(str(remote.client.path))
                    continue
                answer = question(remote)
            except DaemonNotRunning:
                continue
            self._remotes = [remote]
            return answer
        if self._fallback is None:
            self._fallback = self._local()
        try:
            return question(self._fallback)
        except DaemonNotRunning as exc:
            if not others:
                raise
            raise DaemonNotRunning(
                f"no dedupd serving {self._database} is running (the daemon on"
                f" {' and '.join(others)} serves another database); start one with"
                " `dedupd run` and this config"
            ) from exc

    def _serves_database(self, remote: RemoteService) -> bool:
        """Whether `remote`'s daemon serves the database the caller named (asked by its
        status, before every question: `dedupctl review` runs for hours, and the daemon on a
        socket path may have stopped and another, of another config, started there since): a
        config that names its own database but shares a socket path with another daemon's
        (the default one, or a copied `socket:`) must never list, restore or purge that
        daemon's quarantine. Raises DaemonNotRunning."""
        if self._database is None:
            return True
        status = remote.status()
        if _same_database(status, self._database):
            return True
        self._on_other(remote, str(status.get("database")))
        return False

    def status(self) -> Answer:
        return self._ask(lambda s: s.status())

    def search(
        self,
        bits: bytes,
        *,
        sha256: str | None,
        k: int,
        threshold: float | None,
        variants: Sequence[bytes] = (),
        features: LocalFeatures | None = None,
        frames: Sequence[bytes] = (),
    ) -> Answer:
        return self._ask(
            lambda s: s.search(
                bits,
                sha256=sha256,
                k=k,
                threshold=threshold,
                variants=variants,
                features=features,
                frames=frames,
            )
        )

    def groups(self) -> Answer:
        return self._ask(lambda s: s.groups())

    def file_info(self, path: str) -> Answer:
        return self._ask(lambda s: s.file_info(path))

    def quarantine_list(self, *, root: str | None = None, since: float | None = None) -> Answer:
        return self._ask(lambda s: s.quarantine_list(root=root, since=since))

    def quarantine(self, path: str, keeper: str) -> Answer:
        return self._ask(lambda s: s.quarantine(path, keeper))

    def restore(self, items: Sequence[str]) -> Answer:
        return self._ask(lambda s: s.restore(items))

    def purge(self, older_than: float, ids: Sequence[int] | None = None) -> Answer:
        return self._ask(lambda s: s.purge(older_than, ids))

    def distinct(self, a: str, b: str) -> Answer:
        return self._ask(lambda s: s.distinct(a, b))

    def rescan(self, root: str | None) -> Answer:
        return self._ask(lambda s: s.rescan(root))

    def reload(self) -> Answer:
        return self._ask(lambda s: s.reload())


def _same_database(status: Mapping[str, Any], database: Path) -> bool:
    """Whether a daemon's `status` says it has `database` open: the same file (device and
    inode; a path given through a symlink or another mount is the same database)."""
    try:
        st = os.stat(database)
    except OSError:
        return False  # no database there: the daemon cannot be serving it
    ident = status.get("database_id")
    if isinstance(ident, list) and len(ident) == 2:
        return (st.st_dev, st.st_ino) == (ident[0], ident[1])
    theirs = status.get("database")  # a daemon from before `database_id`
    return isinstance(theirs, str) and os.path.realpath(theirs) == os.path.realpath(database)


def connect(
    sockets: Sequence[Path],
    config: Callable[[], Config],
    on_local: Callable[[], None],
    *,
    database: Path | None = None,
    on_other: Callable[[RemoteService, str], None] = lambda remote, theirs: None,
) -> Service:
    """The service of the daemon on the first of `sockets` where one runs; the database's
    (`config()`'s, which calls `on_local` before its first answer) when none runs. With
    `database` (the caller named one), a daemon serving another is passed over (`on_other`
    is told its socket and database)."""
    from dedupd.control import ControlClient  # the HTTP client: not for commands without

    remotes = [RemoteService(ControlClient(path)) for path in sockets]
    return _DaemonElseDatabase(
        remotes,
        lambda: LocalService(config(), on_local, sockets=sockets),
        database,
        on_other,
    )
