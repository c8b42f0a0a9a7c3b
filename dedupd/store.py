"""The SQLite database: the one source of truth (the index is rebuilt from it).

WAL mode and a busy timeout let `dedupctl` read while the daemon writes. The schema is
versioned with ``PRAGMA user_version``; `MIGRATIONS[n]` takes a database from version n to
n + 1, and a database newer than this code is refused rather than guessed at.
"""

from __future__ import annotations

import json
import os
import sqlite3
import time
from collections.abc import Callable, Collection, Iterable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal, NamedTuple

from dedupd.errors import StoreError
from dedupd.filestat import FileStat, HashedImage, HashedVideo, LocalFeatures
from dedupd.hashers import INVERSE, TRANSFORMS, Transform
from dedupd.live import Beside, Motion

if TYPE_CHECKING:
    import numpy as np
    import numpy.typing as npt

__all__ = [
    "DECIDING_ATTEMPTS",
    "SCHEMA_VERSION",
    "ActionRecord",
    "Cancelled",
    "FileRecord",
    "HashArrays",
    "MatchRecord",
    "RatedHash",
    "Store",
    "Undecided",
    "VideoFrames",
    "from_db",
    "to_db",
]

State = Literal["ok", "error", "missing", "quarantined", "deleted"]
# exact: same sha256; near: perceptual hashes within a threshold (maybe turned); crop: one
# frame is a cut of the other (local features, geometric fit); video: two clips share their
# frames; contains: a clip holds a shorter one.
MatchKind = Literal["exact", "near", "crop", "video", "contains"]

MIGRATIONS: tuple[str, ...] = (
    # 0 → 1: the first schema.
    """
    CREATE TABLE files (
        id INTEGER PRIMARY KEY,
        root TEXT NOT NULL,
        relpath TEXT NOT NULL,
        dev INTEGER NOT NULL,
        inode INTEGER NOT NULL,
        size INTEGER NOT NULL,
        mtime_ns INTEGER NOT NULL,
        sha256 TEXT,
        width INTEGER,
        height INTEGER,
        format TEXT,
        taken_at TEXT,
        state TEXT NOT NULL
            CHECK (state IN ('ok', 'error', 'missing', 'quarantined', 'deleted')),
        error_kind TEXT,
        error TEXT,
        first_seen REAL NOT NULL,
        updated REAL NOT NULL,
        UNIQUE (root, relpath)
    );
    CREATE INDEX files_sha256 ON files (sha256);
    CREATE INDEX files_inode ON files (dev, inode);
    CREATE TABLE hashes (
        file_id INTEGER NOT NULL REFERENCES files (id) ON DELETE CASCADE,
        hasher TEXT NOT NULL,
        bits BLOB NOT NULL,
        PRIMARY KEY (file_id, hasher)
    );
    CREATE INDEX hashes_hasher ON hashes (hasher);
    CREATE TABLE matches (
        a INTEGER NOT NULL REFERENCES files (id) ON DELETE CASCADE,
        b INTEGER NOT NULL REFERENCES files (id) ON DELETE CASCADE,
        hasher TEXT NOT NULL,
        distance INTEGER NOT NULL,
        kind TEXT NOT NULL CHECK (kind IN ('exact', 'near')),
        found REAL NOT NULL,
        PRIMARY KEY (a, b, hasher),
        CHECK (a < b)
    );
    CREATE INDEX matches_b ON matches (b);
    CREATE TABLE actions (
        id INTEGER PRIMARY KEY,
        file_id INTEGER REFERENCES files (id) ON DELETE SET NULL,
        kind TEXT NOT NULL CHECK (kind IN ('quarantine', 'delete', 'restore', 'purge')),
        src TEXT NOT NULL,
        dst TEXT,
        tmp TEXT,
        sha256 TEXT NOT NULL,
        keeper_id INTEGER,
        keeper_path TEXT,
        distance INTEGER,
        reason TEXT,
        of_action INTEGER REFERENCES actions (id),
        state TEXT NOT NULL CHECK (state IN ('planned', 'done', 'failed', 'rolled_back')),
        error TEXT,
        created REAL NOT NULL,
        finished REAL
    );
    CREATE INDEX actions_state ON actions (state);
    CREATE TABLE distinct_pairs (
        sha_a TEXT NOT NULL,
        sha_b TEXT NOT NULL,
        created REAL NOT NULL,
        PRIMARY KEY (sha_a, sha_b),
        CHECK (sha_a < sha_b)
    );
    CREATE TABLE tombstones (
        id INTEGER PRIMARY KEY,
        sha256 TEXT NOT NULL,
        original_path TEXT NOT NULL,
        action_id INTEGER NOT NULL REFERENCES actions (id),
        created REAL NOT NULL
    );
    CREATE INDEX tombstones_sha256 ON tombstones (sha256);
    """,
    # 1 → 2: quarantine and delete first rename the file into a private staging folder;
    # the journal names it so that recovery can finish or put it back.
    """
    ALTER TABLE actions ADD COLUMN staged TEXT;
    """,
    # 2 → 3: a near match may be a rotated or mirrored copy: which transform of the lower id
    # gives the higher (hashers.TRANSFORMS; NULL for an exact or an upright match).
    """
    ALTER TABLE matches ADD COLUMN transform TEXT;
    """,
    # 3 → 4: decisions that did not act (a dry run, a report, a failed action) are kept, so
    # that the next run decides those files again instead of taking them as settled. Every
    # present file with a match was decided before under unknown policies: the next run
    # decides them again once, oldest first, under the policies it has.
    """
    CREATE TABLE undecided (
        file_id INTEGER PRIMARY KEY REFERENCES files (id) ON DELETE CASCADE,
        sha256 TEXT NOT NULL,
        why TEXT NOT NULL CHECK (why IN ('dry run', 'report', 'failed')),
        policies TEXT NOT NULL,
        seq INTEGER NOT NULL,
        created REAL NOT NULL
    );
    CREATE INDEX undecided_seq ON undecided (seq);
    INSERT INTO undecided (file_id, sha256, why, policies, seq, created)
        SELECT f.id, f.sha256, 'report', '', f.id, f.updated FROM files f
        WHERE f.state = 'ok' AND f.sha256 IS NOT NULL AND EXISTS (
            SELECT 1 FROM matches m JOIN files o ON o.state = 'ok'
                AND o.id = CASE WHEN m.a = f.id THEN m.b ELSE m.a END
            WHERE m.a = f.id OR m.b = f.id);
    """,
    # 4 → 5: what the second opinion needs of a hash: the hasher's own quality score of the
    # image (PDQ's, 0-100), the share of its pixels in one tone, and the hashes of its 8
    # rotations and mirrors (hashers.TRANSFORMS order, concatenated), to confirm a match found
    # through one, also when it is decided again from the database (on the PDQ row).
    """
    ALTER TABLE hashes ADD COLUMN quality INTEGER;
    ALTER TABLE hashes ADD COLUMN dominant REAL;
    ALTER TABLE hashes ADD COLUMN variants BLOB;
    """,
    # 5 → 6: matches of the kinds that are not a hash distance (a crop, a video, a clip inside
    # a longer one) and what the matcher measured for them as JSON (`detail`: a crop's kept
    # area and fitted transform, a clip's shared frames). SQLite cannot change a CHECK in
    # place: the table is rebuilt, rows kept.
    """
    CREATE TABLE matches_6 (
        a INTEGER NOT NULL REFERENCES files (id) ON DELETE CASCADE,
        b INTEGER NOT NULL REFERENCES files (id) ON DELETE CASCADE,
        hasher TEXT NOT NULL,
        distance INTEGER NOT NULL,
        kind TEXT NOT NULL CHECK (kind IN ('exact', 'near', 'crop', 'video', 'contains')),
        found REAL NOT NULL,
        transform TEXT,
        detail TEXT,
        PRIMARY KEY (a, b, hasher),
        CHECK (a < b)
    );
    INSERT INTO matches_6 (a, b, hasher, distance, kind, found, transform)
        SELECT a, b, hasher, distance, kind, found, transform FROM matches;
    DROP TABLE matches;
    ALTER TABLE matches_6 RENAME TO matches;
    CREATE INDEX matches_b ON matches (b);
    """,
    # 6 → 7: clips (dedupd.video). A clip's kept frames' hashes under its video key (the frame
    # hasher and the sampling), concatenated in time order, with their times (JSON seconds)
    # and how many frames were looked at; and a file's duration in seconds (NULL for a photo).
    """
    CREATE TABLE videos (
        file_id INTEGER NOT NULL REFERENCES files (id) ON DELETE CASCADE,
        hasher TEXT NOT NULL,
        frames BLOB NOT NULL,
        times TEXT NOT NULL,
        sampled INTEGER NOT NULL,
        PRIMARY KEY (file_id, hasher)
    );
    CREATE INDEX videos_hasher ON videos (hasher);
    ALTER TABLE files ADD COLUMN duration REAL;
    """,
    # 7 → 8: Live Photos. A still's motion file (its MOV), found when the still was hashed:
    # the version `actions` checks before moving the two as one (relpath NULL: none), and
    # the files beside it that could be one by name, as seen then (`by_name`, JSON). A
    # quarantine, delete, restore or purge of such a still journals the motion half with it
    # (`motion`, JSON: its src, dst, staged and tmp names and sha256).
    """
    CREATE TABLE live_motion (
        file_id INTEGER PRIMARY KEY REFERENCES files (id) ON DELETE CASCADE,
        relpath TEXT,
        content_id TEXT,
        dev INTEGER,
        inode INTEGER,
        size INTEGER,
        mtime_ns INTEGER,
        sha256 TEXT,
        by_name TEXT NOT NULL DEFAULT '[]'
    );
    CREATE INDEX live_motion_relpath ON live_motion (relpath);
    ALTER TABLE actions ADD COLUMN motion TEXT;
    """,
    # 8 → 9: a HEIC hashed from its embedded thumbnail (a scaled copy of the image) says so;
    # a decision that would move a file on such a hash waits for a full decode.
    """
    ALTER TABLE files ADD COLUMN thumbnail INTEGER NOT NULL DEFAULT 0;
    """,
    # 9 → 10: local features for the crop stage (dedupd.features): ORB keypoints and
    # descriptors of the photo reduced to a small side, read back only for the few candidates
    # to verify, and the words the candidate index files it under (loaded at start).
    """
    CREATE TABLE IF NOT EXISTS features (
        file_id INTEGER PRIMARY KEY REFERENCES files (id) ON DELETE CASCADE,
        kind TEXT NOT NULL,
        width INTEGER NOT NULL,
        height INTEGER NOT NULL,
        points BLOB NOT NULL,
        descriptors BLOB NOT NULL,
        words BLOB NOT NULL
    );
    """,
    # 10 → 11: beside the keypoints, the small grey picture they were found on, for the crop
    # stage's photometric check (features.PATCH_SIDE). Rows without one are of an older kind
    # (features.FEATURES_KEY changed with it): their photos are hashed again once.
    "ALTER TABLE features ADD COLUMN patch BLOB NOT NULL DEFAULT x''",
    # 11 → 12: the words first in each row, before the keypoints, descriptors and patch
    # (~15 KB, in overflow pages): the crop index's start-up load reads the words alone,
    # and placed after the blobs they made it walk the blobs' pages too (twice the time from
    # a warm cache on a scratch table of 50k rows; from a cold disk, the whole table).
    """
    CREATE TABLE features_words_first (
        file_id INTEGER PRIMARY KEY REFERENCES files (id) ON DELETE CASCADE,
        kind TEXT NOT NULL,
        width INTEGER NOT NULL,
        height INTEGER NOT NULL,
        words BLOB NOT NULL,
        points BLOB NOT NULL,
        descriptors BLOB NOT NULL,
        patch BLOB NOT NULL DEFAULT x''
    );
    INSERT INTO features_words_first
        (file_id, kind, width, height, words, points, descriptors, patch)
        SELECT file_id, kind, width, height, words, points, descriptors, patch FROM features;
    DROP TABLE features;
    ALTER TABLE features_words_first RENAME TO features;
    """,
    # 12 → 13: a file is noted 'deciding' in the transaction that records its hashes, and the
    # note is replaced or cleared by its decision: a file recorded by a process that died
    # before deciding it (a kill, a crash, a power cut) is hashed and decided again by the
    # next start instead of being taken as settled. `attempts` counts the records of these
    # bytes that no decision followed; at DECIDING_ATTEMPTS the note becomes 'abandoned' (a
    # file whose decision crashes the process must not crash it at every start). The CHECK
    # changes: the table is rebuilt.
    """
    CREATE TABLE undecided_13 (
        file_id INTEGER PRIMARY KEY REFERENCES files (id) ON DELETE CASCADE,
        sha256 TEXT NOT NULL,
        why TEXT NOT NULL
            CHECK (why IN ('dry run', 'report', 'failed', 'deciding', 'abandoned')),
        policies TEXT NOT NULL,
        seq INTEGER NOT NULL,
        created REAL NOT NULL,
        attempts INTEGER NOT NULL DEFAULT 0
    );
    INSERT INTO undecided_13 (file_id, sha256, why, policies, seq, created)
        SELECT file_id, sha256, why, policies, seq, created FROM undecided;
    DROP TABLE undecided;
    ALTER TABLE undecided_13 RENAME TO undecided;
    CREATE INDEX undecided_seq ON undecided (seq);
    """,
    # 13 → 14: a photo moved into another root is noted 'moved' (`Store.move`): it is decided
    # again under that root's policy, once, as a photo arriving there. The CHECK changes: the
    # table is rebuilt.
    """
    CREATE TABLE undecided_14 (
        file_id INTEGER PRIMARY KEY REFERENCES files (id) ON DELETE CASCADE,
        sha256 TEXT NOT NULL,
        why TEXT NOT NULL
            CHECK (why IN ('dry run', 'report', 'failed', 'deciding', 'abandoned', 'moved')),
        policies TEXT NOT NULL,
        seq INTEGER NOT NULL,
        created REAL NOT NULL,
        attempts INTEGER NOT NULL DEFAULT 0
    );
    INSERT INTO undecided_14 (file_id, sha256, why, policies, seq, created, attempts)
        SELECT file_id, sha256, why, policies, seq, created, attempts FROM undecided;
    DROP TABLE undecided;
    ALTER TABLE undecided_14 RENAME TO undecided;
    CREATE INDEX undecided_seq ON undecided (seq);
    """,
    # 14 → 15: how much of a photo's frame is uniform border (a letterboxed or screenshotted
    # copy): such a copy is never kept over the photo itself (`policy.rank`). NULL for the
    # photos recorded before: unknown, which is not none (`policy._bordered`).
    """
    ALTER TABLE files ADD COLUMN framed REAL;
    """,
    # 15 → 16: the keeper's sha256 when a file was quarantined as its duplicate: a purge
    # needs the keeper to hold those bytes still (or the quarantined file's own), not those
    # of whatever its record says now (a keeper replaced since by another picture was
    # re-hashed, and a purge checked the new bytes against the new record). NULL for the
    # quarantines journaled before (`Actions._keeper_kept` says how they are checked).
    """
    ALTER TABLE actions ADD COLUMN keeper_sha256 TEXT;
    """,
)
SCHEMA_VERSION = len(MIGRATIONS)

# The actions journal's path columns: written through `to_db`, read back through `from_db`.
_ACTION_PATHS = ("src", "dst", "tmp", "staged", "keeper_path")


def _chunks(ids: Iterable[int], size: int = 500) -> Iterator[tuple[list[int], str]]:
    """`ids` in lists of up to `size` (under SQLite's limit of variables per statement), each
    with its "?, ?, …" placeholders."""
    ids = list(ids)
    for start in range(0, len(ids), size):
        chunk = ids[start : start + size]
        yield chunk, ", ".join("?" * len(chunk))


def to_db(path: str) -> str | bytes:
    """How a path is stored: as text when it is valid UTF-8, else as its raw bytes (a BLOB).

    Linux names are bytes; Python hands a name that is not UTF-8 over as a str with
    surrogate escapes (``os.fsdecode``), which SQLite cannot store as text. One path always
    maps to the same value, so equality look-ups and UNIQUE keep working; the path columns
    keep their TEXT affinity (SQLite stores a BLOB in them unchanged). Raises StoreError for
    a str that no file name can decode to (a lone surrogate outside surrogateescape's).
    """
    try:
        path.encode("utf-8")
        return path
    except UnicodeEncodeError:
        pass
    try:
        return os.fsencode(path)
    except UnicodeEncodeError as exc:
        raise StoreError(f"{path!r}: not a file name this system can encode") from exc


def from_db(value: str | bytes) -> str:
    """A stored path back as Python names it: text as is, a BLOB through ``os.fsdecode``."""
    return os.fsdecode(value) if isinstance(value, bytes) else value


def _paths_to_db(paths: Sequence[str]) -> list[str | bytes]:
    return [to_db(p) for p in paths]


def _holds(folder: str, path: str) -> bool:
    """True when `path` lies under `folder` (both absolute and normalized), not at it."""
    return path.startswith(folder.rstrip("/") + "/") and path != folder


# Why a file's decision is still to make: a dry run previewed it, its action failed, it was
# only reported (decided again when the policies change), or it was recorded and its
# decision never came (`deciding`: written with the record, replaced by the decision;
# `abandoned` after DECIDING_ATTEMPTS such records of the same bytes), or it moved into another
# root, whose policy has yet to decide it (`moved`).
Undecided = Literal["dry run", "report", "failed", "deciding", "abandoned", "moved"]
# The `policies` of a 'moved' note that `Store.adopt` wrote: the photo did not move, another
# root took its record over; it is decided again, but never acted on against a file it was
# compared with already (`Ingest.redecide`).
ADOPTED = "adopted"
# How many times a file is recorded for a decision that never comes before it is given up
# (`Store.abandon_deciding`): once is a kill or a power cut; three times in a row is a file
# whose decision kills the process (native code on the writer thread), which would
# otherwise crash the daemon at every start.
DECIDING_ATTEMPTS = 3
ActionKind = Literal["quarantine", "delete", "restore", "purge"]
ActionState = Literal["planned", "done", "failed", "rolled_back"]


@dataclass(frozen=True, slots=True)
class ActionRecord:
    """One row of the actions journal: a move or delete, planned before it happens."""

    id: int
    file_id: int | None
    kind: ActionKind
    src: str  # the file acted on: the original path (quarantine, delete) or the quarantine
    dst: str | None  # where it goes: quarantine path, or the original path for a restore
    tmp: str | None  # the temporary name of a cross-filesystem copy
    sha256: str
    keeper_id: int | None
    keeper_path: str | None
    distance: int | None
    reason: str | None
    of_action: int | None  # the quarantine a restore or purge undoes
    state: ActionState
    error: str | None
    created: float
    finished: float | None
    staged: str | None  # the name in the root's staging folder (quarantine, delete)
    # A Live Photo's motion half, acted on with the still in this one entry (JSON; see
    # `actions`), or None for a file alone.
    motion: str | None = None
    # The keeper's sha256 when the file was quarantined as its duplicate (None: no keeper,
    # or journaled by a dedupd before schema 16).
    keeper_sha256: str | None = None


def _action_from_db(row: dict[str, Any]) -> ActionRecord:
    for name in _ACTION_PATHS:
        if row.get(name) is not None:
            row[name] = from_db(row[name])
    return ActionRecord(**row)


_ACTION_TEXTS = ("reason", "error")  # messages, which may quote a path that is not UTF-8


def _text(message: str) -> str:
    """A message as storable text: a path's undecodable bytes become visible escapes."""
    return message.encode("utf-8", "backslashreplace").decode("utf-8")


def _action_to_db(values: dict[str, Any]) -> dict[str, Any]:
    out = {}
    for k, v in values.items():
        if isinstance(v, str) and k in _ACTION_PATHS:
            v = to_db(v)
        elif isinstance(v, str) and k in _ACTION_TEXTS:
            v = _text(v)
        out[k] = v
    return out


@dataclass(frozen=True, slots=True)
class FileRecord:
    id: int
    root: str
    relpath: str
    dev: int
    inode: int
    size: int
    mtime_ns: int
    sha256: str | None
    width: int | None
    height: int | None
    format: str | None
    taken_at: str | None
    state: State
    error_kind: str | None
    error: str | None
    first_seen: float
    updated: float
    duration: float | None = None  # seconds, for a clip
    # The share of its frame that is uniform border around the picture (`HashedImage.framed`);
    # None for a photo recorded before dedupd measured it (schema 15).
    framed: float | None = 0.0

    @property
    def path(self) -> Path:
        return Path(self.root) / self.relpath

    @property
    def stat(self) -> FileStat:
        return FileStat(self.dev, self.inode, self.size, self.mtime_ns)

    @property
    def pixels(self) -> int:
        return (self.width or 0) * (self.height or 0)


@dataclass(frozen=True, slots=True)
class MatchRecord:
    other: FileRecord
    distance: int
    kind: MatchKind
    transform: Transform = "identity"  # the file is `other` rotated/mirrored so
    detail: Mapping[str, Any] | None = None  # what the matcher measured (crop, video kinds)


def _stored_transform(t: Transform, file_id: int, other: int) -> str | None:
    """How a match row keeps `t` (the file is `other` under `t`): as the transform from the
    row's lower id to its higher one, NULL for identity."""
    if t == "identity":
        return None
    return t if file_id > other else INVERSE[t]


def _read_transform(value: str | None, file_id: int, other: int) -> Transform:
    """The transform that takes `other` to `file_id`, from a match row's column."""
    if value is None or value not in TRANSFORMS:
        return "identity"
    t: Transform = value
    return t if file_id > other else INVERSE[t]


class Cancelled(Exception):
    """A long read given up on request (`Store.feature_words`: its reader was closed)."""


class HashArrays(NamedTuple):
    """Hashes of many files as arrays: `ids` (N,) int64, `bits` (N, hash bytes) uint8."""

    ids: npt.NDArray[np.int64]
    bits: npt.NDArray[np.uint8]


class RatedHash(NamedTuple):
    """One stored hash with what was measured of its image (None where nothing was)."""

    bits: bytes
    quality: int | None
    dominant: float | None
    variants: tuple[bytes, ...] = ()  # of its rotations and mirrors, hashers.TRANSFORMS order


class VideoFrames(NamedTuple):
    """A clip's stored frame hashes (time order) and their times in seconds."""

    frames: tuple[bytes, ...]
    times: tuple[float, ...]
    sampled: int


_HASH_CHUNK = 4096  # rows fetched at a time by `hash_arrays`: bounds the Python objects alive

_FILE_COLUMNS = ", ".join(f"f.{name}" for name in FileRecord.__slots__)


def _why(path: Path, exc: Exception) -> str:
    """SQLite's reason, with what it usually means."""
    if path.is_dir():
        return "it is a directory"
    if "readonly" in str(exc) or "unable to open" in str(exc):
        return f"{exc} (it, its directory, or its -wal and -shm files are not writable)"
    return str(exc)


class _Table:
    """Single-row writes keyed by the table's primary key that, unlike sqlite-utils' own
    `table.insert`/`update` (which commit), run inside the caller's transaction: the store
    batches its writes (`Store.batch`) and an action's journal entry must commit on its own
    terms. Table and column names come from the store's own code, never from input."""

    def __init__(self, conn: sqlite3.Connection, name: str):
        self._conn, self._name = conn, name
        self.last_pk = 0

    def insert(self, row: dict[str, Any]) -> _Table:
        columns = ", ".join(row)
        marks = ", ".join("?" * len(row))
        cursor = self._conn.execute(
            f"INSERT INTO {self._name} ({columns}) VALUES ({marks})", list(row.values())
        )
        if cursor.lastrowid is None:
            raise StoreError(f"an insert into {self._name} returned no row id")
        self.last_pk = cursor.lastrowid
        return self

    def update(self, pk: int, values: dict[str, Any]) -> _Table:
        """Set `values` on the row whose `id` is `pk`; StoreError if there is none."""
        sets = ", ".join(f"{name} = ?" for name in values)
        cursor = self._conn.execute(
            f"UPDATE {self._name} SET {sets} WHERE id = ?", [*values.values(), pk]
        )
        if cursor.rowcount != 1:
            raise StoreError(f"no row {pk} in {self._name} to update")
        return self

    def upsert_all(self, rows: Iterable[dict[str, Any]], *, pk: Sequence[str]) -> _Table:
        """Insert each row, or update its other columns where its `pk` columns exist."""
        for row in rows:
            columns = ", ".join(row)
            marks = ", ".join("?" * len(row))
            sets = ", ".join(f"{c} = excluded.{c}" for c in row if c not in pk) or None
            action = f"DO UPDATE SET {sets}" if sets else "DO NOTHING"
            self._conn.execute(
                f"INSERT INTO {self._name} ({columns}) VALUES ({marks})"
                f" ON CONFLICT ({', '.join(pk)}) {action}",
                list(row.values()),
            )
        return self


class Store:
    """All reads and writes of the database. One writer at a time (the ingest thread)."""

    def __init__(
        self, path: str | Path, *, now: Callable[[], float] = time.time, readonly: bool = False
    ):
        # Here, not at the top: importing sqlite-utils pulls in numpy, which commands that
        # never open the database (`--help`, `dedupctl status`) need not pay for.
        import sqlite_utils

        self.path = Path(path)
        self._now = now
        self._batch: int | None = None  # writes per commit while a `batch` is open
        self._batched = 0
        try:
            if readonly:
                if not self.path.exists():
                    raise StoreError(f"{self.path}: no database yet; run `dedupd scan` first")
                conn = sqlite3.connect(
                    f"file:{self.path}?mode=ro", uri=True, check_same_thread=False
                )
            else:
                self.path.parent.mkdir(parents=True, exist_ok=True)
                conn = sqlite3.connect(self.path, check_same_thread=False)
            conn.execute("PRAGMA busy_timeout = 10000")
            conn.execute("PRAGMA foreign_keys = ON")
            self.db = sqlite_utils.Database(conn)
            if not readonly:
                self.db.enable_wal()
                conn.execute("PRAGMA synchronous = NORMAL")  # WAL + NORMAL is durable per commit
            self._migrate(readonly)
            if not readonly:
                # SQLite opens a file it may not write read-only without a word; say so now,
                # not at the first write of a running daemon.
                conn.execute("BEGIN IMMEDIATE")
                conn.execute("ROLLBACK")
        except (sqlite3.Error, OSError) as exc:
            raise StoreError(f"{self.path}: cannot open database: {_why(self.path, exc)}") from exc

    def _migrate(self, readonly: bool) -> None:
        current = self.schema_version
        if current > SCHEMA_VERSION:
            raise StoreError(
                f"{self.path}: schema version {current} is newer than this dedupd understands"
                f" ({SCHEMA_VERSION}); upgrade dedupd"
            )
        if current < SCHEMA_VERSION and readonly:
            raise StoreError(
                f"{self.path}: schema version {current} needs migrating; run `dedupd scan` once"
            )
        for version in range(current, SCHEMA_VERSION):
            with self.db.conn:
                self.db.conn.executescript(
                    "BEGIN;" + MIGRATIONS[version] + f"; PRAGMA user_version = {version + 1};"
                )

    # -- transactions ------------------------------------------------------------------------
    @contextmanager
    def batch(self, every: int = 256) -> Iterator[None]:
        """Group the writes made inside into transactions of up to `every` writes.

        A commit per photo (an fsync of the WAL each) cost a scan of many small photos more
        than its store work. Each write stays atomic on its own (a savepoint: one that fails
        is undone alone); the batch commits every `every` writes, on leaving, and whenever
        the journal writes (so an action never comes before the records it follows).
        Nested batches join the outer one.
        """
        if every < 1:
            raise ValueError("a batch needs at least one write per commit")
        if self._batch is not None:
            yield
            return
        self._batch = every
        try:
            yield
        finally:
            self._batch = None
            self.commit()

    def commit(self) -> None:
        """Commit what an open batch has written so far (nothing to do outside one)."""
        if self.db.conn.in_transaction:
            self.db.conn.commit()
        self._batched = 0

    @contextmanager
    def _write(self) -> Iterator[None]:
        """One atomic write: committed at once, or inside an open batch as a savepoint."""
        conn = self.db.conn
        if self._batch is None:
            with conn:
                yield
            return
        if not conn.in_transaction:
            # An explicit BEGIN: the outermost savepoint would otherwise be a transaction of
            # its own, committed by its RELEASE.
            conn.execute("BEGIN")
        conn.execute("SAVEPOINT dedupd_write")
        try:
            yield
        except BaseException:
            if conn.in_transaction:  # some errors (a full disk) end the transaction themselves
                conn.execute("ROLLBACK TO dedupd_write")
                conn.execute("RELEASE dedupd_write")
            raise
        conn.execute("RELEASE dedupd_write")
        self._batched += 1
        if self._batched >= self._batch:
            self.commit()

    def _table(self, name: str) -> _Table:
        return _Table(self.db.conn, name)

    def now(self) -> float:
        """The store's clock (a parameter, so that expiry is testable without sleeping)."""
        return self._now()

    @property
    def schema_version(self) -> int:
        return int(self.db.execute("PRAGMA user_version").fetchone()[0])

    def close(self) -> None:
        self.db.conn.close()

    def __enter__(self) -> Store:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- reading files ----------------------------------------------------------------------
    def _files(self, where: str, params: Sequence[Any] = ()) -> list[FileRecord]:
        sql = f"SELECT {_FILE_COLUMNS} FROM files f WHERE {where}"
        return [
            FileRecord(row[0], from_db(row[1]), from_db(row[2]), *row[3:])
            for row in self.db.execute(sql, params).fetchall()
        ]

    def file(self, file_id: int) -> FileRecord | None:
        found = self._files("f.id = ?", (file_id,))
        return found[0] if found else None

    def record(self, root: str, relpath: str) -> FileRecord | None:
        found = self._files("f.root = ? AND f.relpath = ?", (to_db(root), to_db(relpath)))
        return found[0] if found else None

    def missing_with_stat(
        self, stat: FileStat, exclude: Collection[int] = ()
    ) -> FileRecord | None:
        """A record marked missing whose (dev, inode, size, mtime) reappeared: a move. Not
        one of a file that vanished before it was read: it describes no version. Not one in
        `exclude` either (taken by another name already: hard links of one file)."""
        found = self._files(
            "f.dev = ? AND f.inode = ? AND f.size = ? AND f.mtime_ns = ? AND f.state = 'missing'"
            " AND f.error_kind IS NOT 'vanished' ORDER BY f.updated DESC",
            tuple(stat),
        )
        return next((r for r in found if r.id not in exclude), None)

    def present_with_stat(self, stat: FileStat) -> list[FileRecord]:
        """Records of present files (hashed or failed) with this (dev, inode, size, mtime),
        but for a file that vanished before it was read: it describes no version."""
        return self._files(
            "f.dev = ? AND f.inode = ? AND f.size = ? AND f.mtime_ns = ?"
            " AND f.state IN ('ok', 'error') AND f.error_kind IS NOT 'vanished'",
            tuple(stat),
        )

    def file_at(self, path: str | Path) -> FileRecord | None:
        """The record whose root/relpath is `path` (absolute), whatever its state."""
        path = Path(path)
        for parent in path.parents:
            found = self._files(
                "f.root = ? AND f.relpath = ?",
                (to_db(str(parent)), to_db(str(path.relative_to(parent)))),
            )
            if found:
                return found[0]
        return None

    def recorded_roots(self) -> list[str]:
        """Every root some record names, each once: a seek per root on (root, relpath), not a
        read of every record (text sorts before the BLOBs of non-UTF-8 paths, so `>` steps
        through both)."""
        roots: list[str] = []
        value = self.db.execute("SELECT min(root) FROM files").fetchone()[0]
        while value is not None:
            roots.append(from_db(value))
            value = self.db.execute("SELECT min(root) FROM files WHERE root > ?", (value,))
            value = value.fetchone()[0]
        return roots

    def nested_records(self, root: str) -> list[FileRecord]:
        """Records of files under `root` (present, failed or missing) kept under another root:
        one that holds `root` (a parent folder scanned as a root before) or one that `root`
        holds (a subfolder). Roots never overlap in one config, but they do across runs:
        `dedupd scan ~/Pictures`, then `dedupd scan ~/Pictures/2024`."""
        found: list[FileRecord] = []
        states = "f.state IN ('ok', 'error', 'missing')"
        for other in self.recorded_roots():
            if other == root:
                continue
            if _holds(root, other):  # a subfolder: all of it
                found += self._files(f"f.root = ? AND {states}", (to_db(other),))
            elif _holds(other, root):  # a parent: the records under `root` only
                prefix = to_db(os.path.relpath(root, other) + "/")
                ranges: list[tuple[str | bytes, str | bytes | None]]
                if isinstance(prefix, str):  # the prefix's range of text; BLOBs sort after
                    ranges = [(prefix, prefix[:-1] + "0"), (b"", None)]
                else:
                    ranges = [(prefix, prefix[:-1] + b"0")]
                for low, high in ranges:
                    where = f"f.root = ? AND f.relpath >= ? AND {states}"
                    params: list[Any] = [to_db(other), low]
                    if high is not None:
                        where, params = where + " AND f.relpath < ?", [*params, high]
                    found += self._files(where, params)
        return [r for r in found if _holds(root, str(r.path))]

    def adopt(self, root: str, records: Iterable[tuple[int, str]]) -> list[int]:
        """Records (id, relative path) of files under `root` kept under another root are
        `root`'s from now on: the same file at the same path, not hashed again. Each without
        a note is noted to be decided again under `root`'s policy against what `root` holds
        (`_note_adopted`: the photos of subfolders scanned alone meet). Where `root` has a
        record of that path already (a folder recorded twice, under two roots, by an older
        dedupd), the other one goes instead; those ids are returned, for the caller to drop
        from the index."""
        root_db = to_db(root)
        dropped: list[int] = []
        with self._write():
            for file_id, relpath in records:
                relpath_db = to_db(relpath)
                own = self.db.execute(
                    "SELECT id, state FROM files WHERE root = ? AND relpath = ?",
                    (root_db, relpath_db),
                ).fetchone()
                gone = None
                if own is not None:  # the present one stays; of two, the one `root` had
                    state = self.db.execute("SELECT state FROM files WHERE id = ?", (file_id,))
                    present = state.fetchone()[0] != "missing"
                    gone = own[0] if own[1] == "missing" and present else file_id
                    self.db.execute("DELETE FROM files WHERE id = ?", (gone,))
                    dropped.append(gone)
                if gone != file_id:
                    self._note_adopted(file_id)
                    self.db.execute(
                        "UPDATE files SET root = ?, relpath = ? WHERE id = ?",
                        (root_db, relpath_db, file_id),
                    )
                    self._motion_beside(file_id, relpath)
        return dropped

    def files_in(self, root: str) -> dict[str, FileRecord]:
        """Every record of a file present under `root` (hashed or failed), by relative path."""
        return {
            r.relpath: r
            for r in self._files("f.root = ? AND f.state IN ('ok', 'error')", (to_db(root),))
        }

    def with_sha256(self, sha256: str, *, roots: Sequence[str] | None = None) -> list[FileRecord]:
        where = "f.sha256 = ? AND f.state = 'ok'"
        params: list[Any] = [sha256]
        if roots is not None:
            where += f" AND f.root IN ({', '.join('?' * len(roots))})"
            params += _paths_to_db(roots)
        return self._files(where + " ORDER BY f.id", params)

    def recent_errors(self, limit: int) -> list[FileRecord]:
        return self._files("f.state = 'error' ORDER BY f.updated DESC LIMIT ?", (limit,))

    def unhashed(
        self,
        root: str,
        hasher: str | Sequence[str],
        video: str | None = None,
        features: str | None = None,
        ids: Sequence[int] | None = None,
    ) -> list[FileRecord]:
        """Files decoded before with another hasher: they need the current one (lazily).
        With several hashers, the files that lack any of them; with `features`, those that
        lack local features of that kind too (the crop stage turned on, or changed); a clip
        whose frames are stored under the `video` key lacks none (its frames are its
        hashes). And every file recorded whose decision never came (noted 'deciding' by
        `record_hashed`: the process died in between): hashed again, it is decided as it
        would have been. `ids`: only those of them."""
        keys = [hasher] if isinstance(hasher, str) else list(hasher)
        lacking = " OR ".join(
            "NOT EXISTS (SELECT 1 FROM hashes h WHERE h.file_id = f.id AND h.hasher = ?)"
            for _ in keys
        )
        params: list[Any] = [to_db(root), *keys]
        if features is not None:
            lacking += (
                " OR NOT EXISTS (SELECT 1 FROM features x WHERE x.file_id = f.id AND x.kind = ?)"
            )
            params.append(features)
        if video is not None:
            lacking = (
                f"({lacking}) AND NOT EXISTS"
                " (SELECT 1 FROM videos v WHERE v.file_id = f.id AND v.hasher = ?)"
            )
            params.append(video)
        lacking += (
            " OR EXISTS (SELECT 1 FROM undecided u WHERE u.file_id = f.id"
            " AND u.why = 'deciding' AND u.sha256 = f.sha256 AND u.attempts < ?)"
        )
        params.append(DECIDING_ATTEMPTS)
        where = f"f.root = ? AND f.state = 'ok' AND ({lacking})"
        if ids is not None:  # only these (`ids`: a few)
            where += f" AND f.id IN ({', '.join('?' * len(ids))})"
            params += list(ids)
        return self._files(where, params)

    def count_by_state(self, roots: Sequence[str]) -> dict[str, int]:
        marks = ", ".join("?" * len(roots))
        rows = self.db.execute(
            f"SELECT state, count(*) FROM files WHERE root IN ({marks}) GROUP BY state",
            _paths_to_db(roots),
        )
        return dict(rows.fetchall())

    def count_present_under(self, root: str, folder: str) -> int:
        """How many records of present files (hashed or failed) `root` keeps under its
        subfolder `folder` (a path relative to it): counted on the (root, relpath) index,
        never read (text sorts before the BLOBs of non-UTF-8 paths; each has its range)."""
        prefix = folder.rstrip("/") + "/"
        low = to_db(prefix)
        ranges: list[tuple[str | bytes, str | bytes]] = []
        if isinstance(low, str):
            ranges.append((low, low[:-1] + "0"))  # "0" follows "/"
        raw = os.fsencode(prefix)
        ranges.append((raw, raw[:-1] + b"0"))
        total = 0
        for lo, hi in ranges:
            (n,) = self.db.execute(
                "SELECT count(*) FROM files WHERE root = ? AND relpath >= ? AND relpath < ?"
                " AND state IN ('ok', 'error')",
                (to_db(root), lo, hi),
            ).fetchone()
            total += n
        return int(total)

    # -- hashes ------------------------------------------------------------------------------
    @staticmethod
    def _hash_rows_sql(
        select: str, hasher: str, roots: Sequence[str] | None
    ) -> tuple[str, list[Any]]:
        sql = (
            f"SELECT {select} FROM hashes h JOIN files f ON f.id = h.file_id "
            "WHERE h.hasher = ? AND f.state = 'ok'"
        )
        params: list[Any] = [hasher]
        if roots is not None:
            sql += f" AND f.root IN ({', '.join('?' * len(roots))})"
            params += _paths_to_db(roots)
        return sql, params

    def hashes(
        self, hasher: str, roots: Sequence[str] | None = None
    ) -> tuple[list[int], list[bytes]]:
        """(file ids, packed hashes) of every present file hashed with `hasher`.

        One Python object per row: for a few rows. The index loads through `hash_arrays`.
        """
        sql, params = self._hash_rows_sql("f.id, h.bits", hasher, roots)
        ids: list[int] = []
        bits: list[bytes] = []
        for file_id, blob in self.db.execute(sql, params):
            ids.append(file_id)
            bits.append(bytes(blob))
        return ids, bits

    def hash_arrays(self, hasher: str, roots: Sequence[str] | None = None) -> HashArrays:
        """What `hashes` returns, as two arrays filled chunk by chunk: (N,) int64 file ids and
        (N, hash bytes) uint8 rows, in the database's order.

        At a million hashes the lists of `hashes` (an int and a bytes object per row, then
        the index's copies) made the daemon peak at 344 MB while starting; here no row
        outlives its chunk. Raises StoreError if the rows differ in length (a corrupt row:
        the hasher key fixes the length).
        """
        import numpy as np  # here, not at the top: most commands never load an index

        # An upper bound without the join (the hasher index answers it): rows of missing
        # files or other roots only leave slack, trimmed below.
        (bound,) = self.db.execute(
            "SELECT count(*) FROM hashes WHERE hasher = ?", (hasher,)
        ).fetchone()
        sql, params = self._hash_rows_sql("f.id, h.bits", hasher, roots)
        cursor = self.db.execute(sql, params)
        ids = np.empty(bound, np.int64)
        rows = np.empty((bound, 0), np.uint8)
        filled = 0
        while chunk := cursor.fetchmany(_HASH_CHUNK):
            k = len(chunk)
            if filled == 0:
                rows = np.empty((bound, len(chunk[0][1])), np.uint8)
            width = rows.shape[1]
            if filled + k > len(ids):  # rows committed since the count: grow
                grow = max(filled + k, 2 * len(ids))
                ids = np.resize(ids, grow)
                rows = np.resize(rows, (grow, width))
            blob = b"".join([bits for _, bits in chunk])
            if len(blob) != k * width:
                bad = next(i for i, bits in chunk if len(bits) != width)
                raise StoreError(
                    f"{self.path}: the {hasher} hash of file {bad} is not {width} bytes long"
                    " like the others; the database is damaged"
                )
            ids[filled : filled + k] = [i for i, _ in chunk]
            rows[filled : filled + k] = np.frombuffer(blob, np.uint8).reshape(k, width)
            filled += k
        if filled < len(ids):
            ids, rows = ids[:filled].copy(), rows[:filled].copy()
        return HashArrays(ids, rows)

    def rated_hashes(self, ids: Iterable[int], hasher: str) -> dict[int, RatedHash]:
        """The `hasher` hashes of the files `ids`, with their quality and dominant share: for
        the handful of candidates of one match (the index holds only the first hasher's)."""
        found: dict[int, RatedHash] = {}
        for chunk, marks in _chunks(ids):
            rows = self.db.execute(
                "SELECT file_id, bits, quality, dominant, variants FROM hashes WHERE hasher = ?"
                f" AND file_id IN ({marks})",
                [hasher, *chunk],
            )
            for file_id, bits, quality, dominant, variants in rows:
                n = len(bits)
                turned = bytes(variants or b"")
                split = tuple(turned[i : i + n] for i in range(0, len(turned), n))
                found[file_id] = RatedHash(bytes(bits), quality, dominant, split)
        return found

    def hash_of(self, file_id: int, hasher: str) -> bytes | None:
        row = self.db.execute(
            "SELECT bits FROM hashes WHERE file_id = ? AND hasher = ?", (file_id, hasher)
        ).fetchone()
        return bytes(row[0]) if row else None

    # -- local features (the crop stage) ---------------------------------------------------
    def features_of(self, ids: Iterable[int], kind: str) -> dict[int, LocalFeatures]:
        """The local features of `kind` stored for each of `ids` that has them."""
        found: dict[int, LocalFeatures] = {}
        for chunk, marks in _chunks(ids):
            rows = self.db.execute(
                "SELECT file_id, kind, width, height, points, descriptors, words, patch"
                " FROM features"
                f" WHERE kind = ? AND file_id IN ({marks})",
                [kind, *chunk],
            )
            for file_id, *row in rows:
                found[file_id] = LocalFeatures(*row)
        return found

    def feature_words(
        self,
        kind: str,
        roots: Sequence[str] | None = None,
        stop: Callable[[], bool] = lambda: False,
    ) -> tuple[npt.NDArray[np.int64], npt.NDArray[np.int64], npt.NDArray[np.uint16]]:
        """(file ids, word counts, words) of every present file with features of `kind`:
        each file's words (uint16) concatenated in the order of the ids, filled chunk by
        chunk (what the crop index loads at start, without the descriptors). Raises
        Cancelled when `stop()` says so between chunks."""
        import numpy as np

        where = (
            " FROM features x JOIN files f ON f.id = x.file_id WHERE x.kind = ? AND f.state = 'ok'"
            " AND length(x.words) % 2 = 0"  # a damaged row is left out, not the whole load
        )
        params: list[Any] = [kind]
        if roots is not None:
            where += f" AND f.root IN ({', '.join('?' * len(roots))})"
            params += _paths_to_db(roots)
        # Counted first, then read into arrays of that size, in one read transaction (one
        # snapshot): the words of a million photos (~540 MB) are held once. Gathered in
        # chunks and joined, they were held twice, and the chunks' memory stayed with the
        # loading thread's malloc arena: 2.1 GB at the load's peak instead of 1.6.
        conn = self.db.conn
        began = not conn.in_transaction
        if began:
            conn.execute("BEGIN")
        try:
            rows, size = conn.execute(
                f"SELECT count(*), coalesce(sum(length(x.words)), 0){where}", params
            ).fetchone()
            ids = np.empty(rows, np.int64)
            counts = np.empty(rows, np.int64)
            words = np.empty(size // 2, np.uint16)
            row = at = 0
            cursor = conn.execute(
                f"SELECT f.id, length(x.words), x.words{where} ORDER BY x.file_id", params
            )  # the rowid: no sort, and the index takes them in id order as they come
            while chunk := cursor.fetchmany(_HASH_CHUNK):
                if stop():
                    raise Cancelled(f"{self.path}: reading the crop words was cancelled")
                n = len(chunk)
                ids[row : row + n] = [r[0] for r in chunk]
                counts[row : row + n] = [r[1] // 2 for r in chunk]
                data = b"".join(r[2] for r in chunk)
                words[at : at + len(data) // 2] = np.frombuffer(data, "<u2")
                row, at = row + n, at + len(data) // 2
        finally:
            if began:
                conn.execute("COMMIT")
        return ids, counts, words

    def drop_features(self, file_id: int) -> None:
        """Forget `file_id`'s local features (a row that cannot be read): the next reconcile
        hashes the photo again (`unhashed` with `features`), which stores them anew."""
        with self._write():
            self.db.execute("DELETE FROM features WHERE file_id = ?", (file_id,))

    # -- writing files -----------------------------------------------------------------------
    def _write_file(self, root: str, relpath: str, values: dict[str, Any]) -> int:
        """Insert or update the record at root/relpath (inside the caller's transaction).

        When the content changed (another sha256, or none), the old hashes and matches
        describe a picture that is no longer there and are dropped.
        """
        old = self._files("f.root = ? AND f.relpath = ?", (to_db(root), to_db(relpath)))
        if not old:
            row = dict(
                root=to_db(root), relpath=to_db(relpath), first_seen=values["updated"], **values
            )
            return int(self._table("files").insert(row).last_pk)
        file_id = old[0].id
        if values["sha256"] is None or old[0].sha256 != values["sha256"]:
            self.db.execute("DELETE FROM hashes WHERE file_id = ?", (file_id,))
            self.db.execute("DELETE FROM features WHERE file_id = ?", (file_id,))
            self.db.execute("DELETE FROM videos WHERE file_id = ?", (file_id,))
            self.db.execute("DELETE FROM matches WHERE a = ? OR b = ?", (file_id, file_id))
        self._table("files").update(file_id, values)
        return file_id

    @staticmethod
    def _stat_values(stat: FileStat) -> dict[str, Any]:
        return dict(dev=stat.dev, inode=stat.inode, size=stat.size, mtime_ns=stat.mtime_ns)

    def record_hashed(
        self, root: str, relpath: str, image: HashedImage, deciding: str | None = None
    ) -> int:
        """Store a freshly decoded file. Same content keeps old hashes; new content drops them.

        `deciding`: the policies' fingerprint when a decision follows; the file is noted
        undecided ('deciding') in the same transaction, until the decision replaces the note
        (`note_undecided`, `clear_undecided`). A process that dies in between leaves it, and
        the next reconcile hashes the file again (`unhashed`) so that it is decided.
        """
        values = dict(
            **self._stat_values(image.stat),
            sha256=image.sha256,
            width=image.width,
            height=image.height,
            format=image.format,
            taken_at=image.taken_at,
            duration=None,
            state="ok",
            error_kind=None,
            error=None,
            updated=self._now(),
            thumbnail=int(image.thumbnail),
            framed=image.framed,
        )
        with self._write():
            file_id = self._write_file(root, relpath, values)
            self._write_motion(file_id, relpath, image.live)
            self._table("hashes").upsert_all(
                [
                    dict(
                        file_id=file_id,
                        hasher=k,
                        bits=v,
                        quality=image.quality.get(k),
                        dominant=image.dominant if k in image.quality else None,
                        variants=b"".join(image.variants[k])
                        if k in image.quality and k in image.variants
                        else None,
                    )
                    for k, v in image.hashes.items()
                ],
                pk=("file_id", "hasher"),
            )
            if image.features is not None:
                self._table("features").upsert_all(
                    [dict(file_id=file_id, **image.features._asdict())], pk=("file_id",)
                )
            if deciding is not None:
                self._note_deciding(file_id, image.sha256, deciding)
        return file_id

    def record_video(
        self, root: str, relpath: str, clip: HashedVideo, deciding: str | None = None
    ) -> int:
        """Store a freshly decoded clip and its frame hashes under `clip.key`. Same content
        keeps what was stored of it before; new content drops it. `deciding`: as for
        `record_hashed`."""
        values = dict(
            **self._stat_values(clip.stat),
            sha256=clip.sha256,
            width=clip.width,
            height=clip.height,
            format=clip.format,
            taken_at=clip.taken_at,
            duration=clip.duration,
            framed=0.0,
            state="ok",
            error_kind=None,
            error=None,
            updated=self._now(),
        )
        with self._write():
            file_id = self._write_file(root, relpath, values)
            self.db.execute(
                "INSERT OR REPLACE INTO videos (file_id, hasher, frames, times, sampled)"
                " VALUES (?, ?, ?, ?, ?)",
                (file_id, clip.key, b"".join(clip.frames), json.dumps(clip.times), clip.sampled),
            )
            if deciding is not None:
                self._note_deciding(file_id, clip.sha256, deciding)
        return file_id

    def video_frames(self, file_id: int, key: str) -> VideoFrames | None:
        """The frame hashes stored for a clip under `key` (None: not hashed so)."""
        row = self.db.execute(
            "SELECT frames, times, sampled FROM videos WHERE file_id = ? AND hasher = ?",
            (file_id, key),
        ).fetchone()
        if row is None:
            return None
        times = tuple(float(t) for t in json.loads(row[1]))
        blob = bytes(row[0])
        n = len(blob) // len(times) if times else 0
        frames = tuple(blob[i * n : (i + 1) * n] for i in range(len(times)))
        return VideoFrames(frames, times, int(row[2]))

    def frame_arrays(
        self, key: str, frames_per_file: int, roots: Sequence[str] | None = None
    ) -> HashArrays:
        """Every present clip's frame hashes under `key` as arrays, one row per frame: ids
        are file id * `frames_per_file` + the frame's number (`index.FrameIndex`)."""
        import numpy as np

        sql = (
            "SELECT v.file_id, v.frames, v.times FROM videos v JOIN files f ON f.id = v.file_id"
            " WHERE v.hasher = ? AND f.state = 'ok'"
        )
        params: list[Any] = [key]
        if roots is not None:
            sql += f" AND f.root IN ({', '.join('?' * len(roots))})"
            params += _paths_to_db(roots)
        ids: list[npt.NDArray[np.int64]] = []
        rows: list[npt.NDArray[np.uint8]] = []
        cursor = self.db.execute(sql, params)
        while chunk := cursor.fetchmany(_HASH_CHUNK):
            for file_id, blob, times in chunk:
                n = len(json.loads(times))
                if not n:
                    continue
                data = np.frombuffer(bytes(blob), np.uint8)
                if len(data) % n:
                    raise StoreError(
                        f"{self.path}: the frames of clip {file_id} do not divide into its"
                        f" {n} frame times; the database is damaged"
                    )
                rows.append(data.reshape(n, len(data) // n))
                ids.append(file_id * frames_per_file + np.arange(n, dtype=np.int64))
        if not rows:
            return HashArrays(np.empty(0, np.int64), np.empty((0, 0), np.uint8))
        return HashArrays(np.concatenate(ids), np.concatenate(rows))

    def record_error(self, root: str, relpath: str, stat: FileStat, kind: str, message: str) -> int:
        """Remember that this version of the file cannot be hashed, and why."""
        values = dict(
            **self._stat_values(stat),
            sha256=None,
            width=None,
            height=None,
            format=None,
            taken_at=None,
            duration=None,
            framed=0.0,
            state="error",
            error_kind=kind,
            error=message,
            updated=self._now(),
            thumbnail=0,
        )
        with self._write():
            file_id = self._write_file(root, relpath, values)
            self._write_motion(file_id, relpath, None)
            return file_id

    # -- Live Photos --------------------------------------------------------------------------
    def _motion_beside(self, file_id: int, relpath: str) -> None:
        """The still `file_id` is now at `relpath` (moved, or its root changed): its motion
        file is named beside it, as `_write_motion` names it (inside the caller's
        transaction). If it did not move with the still, `actions` finds it gone from there
        and has the still hashed again, which pairs it anew."""
        row = self.db.execute(
            "SELECT relpath FROM live_motion WHERE file_id = ? AND relpath IS NOT NULL",
            (file_id,),
        ).fetchone()
        if row is not None:
            name = os.path.basename(from_db(row[0]))
            self.db.execute(
                "UPDATE live_motion SET relpath = ? WHERE file_id = ?",
                (to_db(os.path.join(os.path.dirname(relpath), name)), file_id),
            )

    def _write_motion(self, file_id: int, relpath: str, live: Beside | None) -> None:
        """Replace what is known of a still's motion file (inside the caller's transaction):
        as a worker found it, named in the still's folder (`relpath`'s)."""
        self.db.execute("DELETE FROM live_motion WHERE file_id = ?", (file_id,))
        if live is None:
            return
        seen = [[os.fsencode(n).hex(), *st] for n, st in live.by_name]  # names may be bytes
        row: dict[str, Any] = dict(file_id=file_id, by_name=json.dumps(seen))
        motion = live.motion
        if motion is not None:
            name = os.path.basename(motion.relpath)
            row |= dict(
                relpath=to_db(os.path.join(os.path.dirname(relpath), name)),
                content_id=motion.content_id,
                **self._stat_values(motion.stat),
                sha256=motion.sha256,
            )
        self._table("live_motion").insert(row)

    def motion_by_name(self, file_id: int) -> dict[str, FileStat]:
        """The files that could be the still's motion file by name, as seen when it was
        hashed (name → stat)."""
        row = self.db.execute(
            "SELECT by_name FROM live_motion WHERE file_id = ?", (file_id,)
        ).fetchone()
        if row is None:
            return {}
        return {
            os.fsdecode(bytes.fromhex(n)): FileStat(*st) for n, *st in json.loads(row[0])
        }

    def motion_of(self, file_id: int) -> Motion | None:
        """The motion file recorded with the still `file_id` when it was hashed, or None."""
        row = self.db.execute(
            "SELECT f.root, m.relpath, m.content_id, m.dev, m.inode, m.size, m.mtime_ns,"
            " m.sha256 FROM live_motion m JOIN files f ON f.id = m.file_id"
            " WHERE m.file_id = ? AND m.relpath IS NOT NULL",
            (file_id,),
        ).fetchone()
        if row is None:
            return None
        return Motion(
            root=from_db(row[0]),
            relpath=from_db(row[1]),
            content_id=row[2],
            stat=FileStat(*row[3:7]),
            sha256=row[7],
        )

    def still_of(self, root: str, relpath: str) -> FileRecord | None:
        """The present still whose motion file is root/relpath, or None: a file that must
        never move alone."""
        found = self.stills_of(root, relpath, states=("ok",))
        return found[0] if found else None

    def stills_of(
        self, root: str, relpath: str, states: Sequence[str] = ("ok", "error")
    ) -> list[FileRecord]:
        """Every still present (in one of `states`) paired with the motion file root/relpath:
        more than one when stills of one stem share it (`IMG_1.HEIC` and its JPEG export
        `IMG_1.JPG`)."""
        marks = ", ".join("?" * len(states))
        return self._files(
            f"f.root = ? AND f.state IN ({marks}) AND f.id IN"
            " (SELECT file_id FROM live_motion WHERE relpath = ?) ORDER BY f.id",
            (to_db(root), *states, to_db(relpath)),
        )

    def from_thumbnail(self, ids: Iterable[int]) -> set[int]:
        """Which of `ids` were hashed from an embedded thumbnail, not a full decode."""
        out: set[int] = set()
        for chunk, marks in _chunks(ids):
            rows = self.db.execute(
                f"SELECT id FROM files WHERE thumbnail AND id IN ({marks})",
                chunk,
            )
            out.update(int(r[0]) for r in rows)
        return out

    def mark_missing(self, ids: Iterable[int]) -> None:
        now = self._now()
        with self._write():
            self.db.conn.executemany(
                "UPDATE files SET state = 'missing', updated = ? WHERE id = ?",
                [(now, i) for i in ids],
            )

    def move(self, file_id: int, root: str, relpath: str, stat: FileStat) -> list[int]:
        """Follow a rename: same content, new path; no re-hash.

        The record of a file the rename replaced goes; its id is returned so that the caller
        can drop it from the index. A record that was marked missing (the move was seen as
        a delete first) is present again: 'ok' when it was hashed, else 'error'. A hashed
        photo that moved into another root is noted 'moved' (`undecided_due`): that root's
        policy decides it, as a photo arriving there, whatever was decided where it came
        from (unless its decision is pending already: 'deciding', 'abandoned').
        """
        root_db, relpath_db = to_db(root), to_db(relpath)
        with self._write():
            self._note_moved(file_id, root_db)
            replaced = [
                row[0]
                for row in self.db.execute(
                    "SELECT id FROM files WHERE root = ? AND relpath = ? AND id != ?",
                    (root_db, relpath_db, file_id),
                )
            ]
            self.db.execute(
                "DELETE FROM files WHERE root = ? AND relpath = ? AND id != ?",
                (root_db, relpath_db, file_id),
            )
            self.db.execute(
                "UPDATE files SET root = ?, relpath = ?, dev = ?, inode = ?, mtime_ns = ?,"
                " updated = ?, state = CASE WHEN state != 'missing' THEN state"
                " WHEN sha256 IS NULL THEN 'error' ELSE 'ok' END WHERE id = ?",
                (root_db, relpath_db, stat.dev, stat.inode, stat.mtime_ns, self._now(), file_id),
            )
            self._motion_beside(file_id, relpath)
        return replaced

    def _note_adopted(self, file_id: int) -> None:
        """Note a hashed photo taken over by another root (`adopt`) to be decided again
        (`ADOPTED` marks its note), unless a note is there already: a pending action ('dry
        run', 'failed') or a report stays what it was."""
        self.db.execute(
            "INSERT INTO undecided (file_id, sha256, why, policies, seq, created)"
            " SELECT id, sha256, 'moved', ?, (SELECT coalesce(max(seq), 0) + 1 FROM"
            " undecided), ? FROM files WHERE id = ? AND sha256 IS NOT NULL"
            " ON CONFLICT (file_id) DO NOTHING",
            (ADOPTED, self._now(), file_id),
        )

    def adopted(self, ids: Iterable[int]) -> set[int]:
        """Which of `ids` are noted to be decided again because another root took them over
        (`adopt`), not because they moved."""
        out: set[int] = set()
        for chunk, marks in _chunks(ids):
            rows = self.db.execute(
                f"SELECT file_id FROM undecided WHERE why = 'moved' AND policies = ?"
                f" AND file_id IN ({marks})",
                (ADOPTED, *chunk),
            )
            out.update(int(r[0]) for r in rows)
        return out

    def met(self, file_id: int, hashers: Sequence[str]) -> set[int]:
        """The files `file_id` has a match with under any of `hashers`: compared already."""
        marks = ", ".join("?" * len(hashers))
        rows = self.db.execute(
            "SELECT CASE WHEN a = ? THEN b ELSE a END FROM matches"
            f" WHERE (a = ? OR b = ?) AND hasher IN ({marks})",
            (file_id, file_id, file_id, *hashers),
        )
        return {int(r[0]) for r in rows}

    def _note_moved(self, file_id: int, root_db: str | bytes) -> None:
        """Note a hashed photo that now belongs to `root` (another root than its record's)
        to be decided by that root's policy (`undecided_due`), unless its decision is
        pending already ('deciding', 'abandoned'). Call before the record changes root."""
        self.db.execute(
            "INSERT INTO undecided (file_id, sha256, why, policies, seq, created)"
            " SELECT id, sha256, 'moved', '', (SELECT coalesce(max(seq), 0) + 1 FROM"
            " undecided), ? FROM files WHERE id = ? AND root != ? AND sha256 IS NOT NULL"
            " ON CONFLICT (file_id) DO UPDATE SET why = 'moved', sha256 = excluded.sha256,"
            " seq = excluded.seq, created = excluded.created"
            " WHERE why NOT IN ('deciding', 'abandoned')",
            (self._now(), file_id, root_db),
        )

    # -- matches -----------------------------------------------------------------------------
    def replace_matches(
        self,
        file_id: int,
        hasher: str,
        found: Iterable[
            tuple[int, int, MatchKind]
            | tuple[int, int, MatchKind, Transform]
            | tuple[int, int, MatchKind, Transform, Mapping[str, Any] | None]
        ],
        *,
        within: Sequence[str] | None = None,
    ) -> None:
        """Set `file_id`'s matches under `hasher` to `found`: (other id, distance, kind),
        optionally the transform that takes the other file to this one (default identity) and
        what the matcher measured (`detail`, stored as JSON; it must say itself which file of
        the pair it describes). `within`: the roots `found` was looked for in; matches with
        files elsewhere stay (a subfolder scanned alone never saw them, and a rotated match
        cannot be found again from the database: only a worker's variants find it)."""
        now = self._now()
        rows = [
            (
                min(file_id, f[0]),
                max(file_id, f[0]),
                hasher,
                f[1],
                f[2],
                now,
                _stored_transform(f[3] if len(f) > 3 else "identity", file_id, f[0]),
                json.dumps(f[4], sort_keys=True) if len(f) > 4 and f[4] is not None else None,
            )
            for f in found
            if f[0] != file_id
        ]
        with self._write():
            if within is None:
                self.db.execute(
                    "DELETE FROM matches WHERE (a = ? OR b = ?) AND hasher = ?",
                    (file_id, file_id, hasher),
                )
            else:
                marks = ", ".join("?" * len(within))
                # Correlated, a primary-key look-up per match: `IN (SELECT id FROM files
                # WHERE root IN ...)` listed every photo of the roots, 340 ms at a million.
                self.db.execute(
                    "DELETE FROM matches WHERE (a = ? OR b = ?) AND hasher = ? AND EXISTS"
                    " (SELECT 1 FROM files f WHERE f.id = (CASE WHEN matches.a = ? THEN"
                    f" matches.b ELSE matches.a END) AND f.root IN ({marks}))",
                    (file_id, file_id, hasher, file_id, *_paths_to_db(within)),
                )
            self.db.conn.executemany(
                "INSERT OR REPLACE INTO matches"
                " (a, b, hasher, distance, kind, found, transform, detail)"
                " VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                rows,
            )

    def matches_of(self, file_id: int, hasher: str) -> list[MatchRecord]:
        rows = self.db.execute(
            "SELECT CASE WHEN a = ? THEN b ELSE a END, distance, kind, transform, detail"
            " FROM matches WHERE (a = ? OR b = ?) AND hasher = ? ORDER BY distance",
            (file_id, file_id, file_id, hasher),
        ).fetchall()
        out = []
        for other_id, d, kind, t, detail in rows:
            other = self.file(other_id)
            if other is not None and other.state == "ok":
                out.append(
                    MatchRecord(
                        other,
                        d,
                        kind,
                        _read_transform(t, file_id, other_id),
                        None if detail is None else json.loads(detail),
                    )
                )
        return out

    def match_edges(
        self, hasher: str, roots: Sequence[str] | None = None
    ) -> Iterator[tuple[int, int, int, MatchKind, Transform]]:
        """(a, b, distance, kind, transform) for every match between two present files, with
        a < b and b = transform(a), except pairs the user marked distinct."""
        for a, b, d, kind, t, _ in self.match_edges_detail(hasher, roots):
            yield a, b, d, kind, t

    def match_edges_detail(
        self, hasher: str, roots: Sequence[str] | None = None
    ) -> Iterator[tuple[int, int, int, MatchKind, Transform, dict[str, Any] | None]]:
        """`match_edges` with what the matcher measured (`detail`, a crop's kept area and
        which file is the crop), None where it measured nothing."""
        sql = (
            "SELECT m.a, m.b, m.distance, m.kind, m.transform, m.detail FROM matches m"
            " JOIN files fa ON fa.id = m.a AND fa.state = 'ok'"
            " JOIN files fb ON fb.id = m.b AND fb.state = 'ok' WHERE m.hasher = ?"
            " AND NOT EXISTS (SELECT 1 FROM distinct_pairs d"
            " WHERE d.sha_a = min(fa.sha256, fb.sha256) AND d.sha_b = max(fa.sha256, fb.sha256))"
        )
        params: list[Any] = [hasher]
        if roots is not None:
            marks = ", ".join("?" * len(roots))
            sql += f" AND fa.root IN ({marks}) AND fb.root IN ({marks})"
            params += _paths_to_db(roots) * 2
        for a, b, d, kind, t, detail in self.db.execute(sql, params):
            yield (
                a,
                b,
                d,
                kind,
                _read_transform(t, b, a),
                None if detail is None else json.loads(detail),
            )

    def files(self, ids: Iterable[int]) -> dict[int, FileRecord]:
        found: dict[int, FileRecord] = {}
        for chunk, marks in _chunks(ids):
            for r in self._files(f"f.id IN ({marks})", chunk):
                found[r.id] = r
        return found

    def mark_stale(self, file_id: int) -> None:
        """Make the next reconcile hash this file again and decide anew (an action that was
        rolled back must be reconsidered although the file itself did not change)."""
        with self._write():
            self.db.execute(
                "UPDATE files SET mtime_ns = -1, updated = ? WHERE id = ?", (self._now(), file_id)
            )

    def set_state(self, file_id: int, state: State) -> None:
        """A file's new state. One quarantined or deleted had its decision made (an action
        that completed, also when a recovery finished it): its 'deciding' note goes."""
        with self._write():
            self.db.execute(
                "UPDATE files SET state = ?, updated = ? WHERE id = ?",
                (state, self._now(), file_id),
            )
            if state in ("quarantined", "deleted"):
                self.db.execute(
                    "DELETE FROM undecided WHERE file_id = ? AND why = 'deciding'", (file_id,)
                )

    # -- the actions journal ------------------------------------------------------------------
    def journal_plan(self, **row: Any) -> int:
        """Write an intended move or delete before it happens; returns the action id.

        The journal always commits at once, and with it whatever an open `batch` wrote
        before: a file's record is durable before any action on it.
        """
        self.commit()  # first: a journal write that fails must not undo the batch with it
        with self.db.conn:
            row = dict(state="planned", created=self._now(), **_action_to_db(row))
            return int(self._table("actions").insert(row).last_pk)

    def journal_update(self, action_id: int, **values: Any) -> None:
        self.commit()
        with self.db.conn:
            self._table("actions").update(action_id, _action_to_db(values))

    def journal_finish(self, action_id: int, state: str, error: str | None = None) -> None:
        self.journal_update(action_id, state=state, error=error, finished=self._now())

    def action(self, action_id: int) -> ActionRecord | None:
        rows = list(self.db.query("SELECT * FROM actions WHERE id = ?", (action_id,)))
        return _action_from_db(rows[0]) if rows else None

    def actions(self, where: str = "1", params: Sequence[Any] = ()) -> list[ActionRecord]:
        """Journal rows matching `where`, oldest first; a path in `params` goes through
        `to_db`, and the path fields of the rows come back as str."""
        rows = self.db.query(f"SELECT * FROM actions WHERE {where} ORDER BY id", params)
        return [_action_from_db(row) for row in rows]

    def quarantined(self) -> list[ActionRecord]:
        """Finished quarantines not yet restored or purged: what is in quarantine now."""
        return self.actions(
            "kind = 'quarantine' AND state = 'done' AND NOT EXISTS (SELECT 1 FROM actions r"
            " WHERE r.of_action = actions.id AND r.state = 'done')"
        )

    def add_tombstone(self, sha256: str, original_path: str, action_id: int) -> None:
        with self._write():
            self._table("tombstones").insert(
                dict(
                    sha256=sha256,
                    original_path=to_db(original_path),
                    action_id=action_id,
                    created=self._now(),
                )
            )

    def remove_tombstones(self, sha256: str, original_path: str) -> None:
        """Forget every removal of these bytes from this path (the user restored them)."""
        with self._write():
            self.db.execute(
                "DELETE FROM tombstones WHERE sha256 = ? AND original_path = ?",
                (sha256, to_db(original_path)),
            )

    def tombstone(self, sha256: str, path: str) -> ActionRecord | None:
        """The latest action that removed these bytes from this very path, if any did."""
        # asked twice for every photo ingested: a plain execute, without the savepoint that
        # sqlite-utils' query() wraps around each statement (two more statements)
        cursor = self.db.execute(
            "SELECT a.* FROM tombstones t JOIN actions a ON a.id = t.action_id"
            " WHERE t.sha256 = ? AND t.original_path = ? ORDER BY t.id DESC LIMIT 1",
            (sha256, to_db(path)),
        )
        row = cursor.fetchone()
        if row is None:
            return None
        return _action_from_db(dict(zip([d[0] for d in cursor.description], row, strict=True)))

    def mark_distinct(self, sha_a: str, sha_b: str) -> None:
        """Remember the user's word that these two are different photos."""
        a, b = sorted((sha_a, sha_b))
        if a == b:
            return
        with self._write():
            self.db.execute(
                "INSERT OR IGNORE INTO distinct_pairs (sha_a, sha_b, created) VALUES (?, ?, ?)",
                (a, b, self._now()),
            )

    def distinct_from(self, sha256: str) -> set[str]:
        rows = self.db.execute(
            "SELECT sha_b FROM distinct_pairs WHERE sha_a = ?"
            " UNION SELECT sha_a FROM distinct_pairs WHERE sha_b = ?",
            (sha256, sha256),
        )
        return {r[0] for r in rows}

    # -- what the user restored ------------------------------------------------------------
    def restored(self, sha256: str, path: str | Path) -> bool:
        """True when the user restored these very bytes to this path from quarantine: they
        said "keep this", so it is never acted on again (until its bytes change). A restore
        still in progress counts: the file may be back before its journal entry is done."""
        row = self.db.execute(
            "SELECT 1 FROM actions WHERE kind = 'restore' AND state IN ('planned', 'done')"
            " AND dst = ? AND sha256 = ? LIMIT 1",
            (to_db(str(path)), sha256),
        ).fetchone()
        return row is not None

    def restores(self) -> list[tuple[str, str, int | None]]:
        """(original path, sha256, keeper id) of every finished restore."""
        return [
            (from_db(dst), sha256, keeper_id)
            for dst, sha256, keeper_id in self.db.execute(
                "SELECT dst, sha256, keeper_id FROM actions WHERE kind = 'restore'"
                " AND state = 'done' AND dst IS NOT NULL"
            )
        ]

    def quarantined_into(self, folder: str) -> bool:
        """Whether any quarantine finished into `folder` (restored and purged ones too)."""
        prefix = os.fsencode(folder.rstrip(os.sep) + os.sep)
        row = self.db.execute(
            "SELECT 1 FROM actions WHERE kind = 'quarantine' AND state = 'done'"
            " AND substr(CAST(dst AS BLOB), 1, ?) = ? LIMIT 1",
            (len(prefix), prefix),
        ).fetchone()
        return row is not None

    def quarantined_count(self) -> int:
        """How many photos are in quarantine now (as `quarantined` lists them)."""
        (count,) = self.db.execute(
            "SELECT count(*) FROM actions WHERE kind = 'quarantine' AND state = 'done'"
            " AND NOT EXISTS (SELECT 1 FROM actions r WHERE r.of_action = actions.id"
            " AND r.state = 'done')"
        ).fetchone()
        return int(count)

    # -- decisions that did not act ----------------------------------------------------------
    def note_undecided(self, file_id: int, sha256: str, why: Undecided, policies: str) -> None:
        """Remember that `file_id`'s last decision did not act, and under which policies: the
        next run decides it again (a dry run or a failure always, a report when the policies
        changed). Later notes sort after earlier ones, so files are decided again in the order
        they were first decided."""
        with self._write():
            self._note_undecided(file_id, sha256, why, policies)

    def _note_undecided(self, file_id: int, sha256: str, why: Undecided, policies: str) -> None:
        self.db.execute(
            "INSERT OR REPLACE INTO undecided (file_id, sha256, why, policies, seq, created)"
            " VALUES (?, ?, ?, ?, (SELECT coalesce(max(seq), 0) + 1 FROM undecided), ?)",
            (file_id, sha256, why, policies, self._now()),
        )

    def _note_deciding(self, file_id: int, sha256: str, policies: str) -> None:
        """Note a decision to come; one more attempt when the last note of these bytes was
        one too (its decision never came)."""
        self.db.execute(
            "INSERT INTO undecided (file_id, sha256, why, policies, seq, created, attempts)"
            " VALUES (?, ?, 'deciding', ?, (SELECT coalesce(max(seq), 0) + 1 FROM undecided),"
            " ?, 1) ON CONFLICT (file_id) DO UPDATE SET"
            " attempts = CASE WHEN why = 'deciding' AND sha256 = excluded.sha256"
            " THEN attempts + 1 ELSE 1 END, why = 'deciding', sha256 = excluded.sha256,"
            " policies = excluded.policies, seq = excluded.seq, created = excluded.created",
            (file_id, sha256, policies, self._now()),
        )

    def deferred(self, file_id: int) -> None:
        """The decision noted for `file_id` was put off on purpose (the daemon stopping):
        that attempt is no attempt that failed."""
        with self._write():
            self.db.execute(
                "UPDATE undecided SET attempts = attempts - 1 WHERE file_id = ? AND attempts > 0",
                (file_id,),
            )

    def attempt(self, file_id: int) -> int:
        """Count one more attempt at the decision noted for `file_id` (`redecide`, before
        it decides); returns the attempts so far. The decision's own note starts over.
        Committed at once, with what a batch holds, so that a crash in the decision counts
        (WAL with synchronous=NORMAL: a commit is no fsync)."""
        with self._write():
            self.db.execute(
                "UPDATE undecided SET attempts = attempts + 1 WHERE file_id = ?", (file_id,)
            )
        self.commit()
        row = self.db.execute(
            "SELECT attempts FROM undecided WHERE file_id = ?", (file_id,)
        ).fetchone()
        return int(row[0]) if row else 0

    def abandon(self, file_id: int) -> None:
        """Give up the decision noted for `file_id` (see `abandon_deciding`)."""
        with self._write():
            self.db.execute("UPDATE undecided SET why = 'abandoned' WHERE file_id = ?", (file_id,))

    def abandon_deciding(self, root: str) -> list[tuple[FileRecord, int]]:
        """Give up the decisions under `root` that were attempted DECIDING_ATTEMPTS times and
        never came (the note becomes 'abandoned': no longer hashed again for it); returns
        those files with their attempts. Recording the file again (it changed) starts
        over."""
        found = self._files(
            "f.root = ? AND f.state = 'ok' AND EXISTS (SELECT 1 FROM undecided u"
            " WHERE u.file_id = f.id AND u.why = 'deciding' AND u.sha256 = f.sha256"
            " AND u.attempts >= ?)",
            [to_db(root), DECIDING_ATTEMPTS],
        )
        if not found:
            return []
        attempts: dict[int, int] = {}
        with self._write():
            for chunk, marks in _chunks(r.id for r in found):
                attempts |= dict(
                    self.db.execute(
                        f"SELECT file_id, attempts FROM undecided WHERE file_id IN ({marks})",
                        chunk,
                    ).fetchall()
                )
                self.db.execute(
                    f"UPDATE undecided SET why = 'abandoned' WHERE file_id IN ({marks})", chunk
                )
        return [(r, attempts[r.id]) for r in found]

    def clear_undecided(self, file_id: int) -> None:
        with self._write():
            self.db.execute("DELETE FROM undecided WHERE file_id = ?", (file_id,))

    def undecided_due(self, policies: str, roots: Sequence[str]) -> list[FileRecord]:
        """Present, unchanged files under `roots` to decide again under `policies` (the
        current policies' fingerprint): every dry run, failure and move into another root,
        and reports decided under other policies; in the order they were first decided. Not
        those whose decision never came ('deciding'): the reconcile has them hashed again
        (`unhashed`)."""
        marks = ", ".join("?" * len(roots))
        return self._files(
            "f.id IN (SELECT u.file_id FROM undecided u WHERE u.why IN ('dry run', 'failed',"
            " 'moved')"
            " OR (u.why = 'report' AND u.policies != ?))"
            " AND f.state = 'ok' AND f.root IN (" + marks + ")"
            " AND f.sha256 = (SELECT u.sha256 FROM undecided u WHERE u.file_id = f.id)"
            " ORDER BY (SELECT u.seq FROM undecided u WHERE u.file_id = f.id)",
            [policies, *_paths_to_db(roots)],
        )
