"""Walk roots and diff them against the store by (dev, inode, size, mtime_ns).

Nothing here decodes an image or writes the database: `reconcile` returns a `Plan` that
says which files are new, changed, renamed, gone, or need only a lazy re-hash.
"""

from __future__ import annotations

import errno
import fnmatch
import os
import re
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Literal

from dedupd import safefs
from dedupd.config import WatchConfig
from dedupd.errors import NotFoundError
from dedupd.filestat import Counterpart, FileStat
from dedupd.store import FileRecord, Store

__all__ = [
    "PATH_MAX",
    "Entry",
    "NameFilter",
    "Plan",
    "identities",
    "path_too_long",
    "reconcile",
    "same_version",
    "walk",
    "why_unavailable",
]


def _path_max() -> int:
    try:
        return os.pathconf("/", "PC_PATH_MAX")
    except (OSError, ValueError):
        return 4096  # Linux's limit


PATH_MAX = _path_max()  # bytes, with the terminating NUL: longer paths cannot be opened


def path_too_long(path: str) -> bool:
    """True when the system refuses `path` by name (ENAMETOOLONG): the file is there, but
    only a walk that descends by directory descriptor reaches it."""
    # A character is at most 4 bytes: most paths are decided without encoding them.
    return len(path) * 4 >= PATH_MAX and len(os.fsencode(path)) >= PATH_MAX


Rehash = Literal["fill", "decide", "rewritten"]

VANISHED = "vanished"  # the error kind of a file gone from its path before it was read


@dataclass(frozen=True, slots=True)
class Entry:
    """A candidate file found on disk."""

    root: str
    relpath: str
    stat: FileStat
    # Hash it from a full decode, never an embedded thumbnail: the confirmation a decision
    # resting on a thumbnail's hash waits for (`Ingest.confirm`).
    full_decode: bool = False
    # Hash it although its record is this very version (`reconcile`'s rehash), so "unchanged"
    # is no reason to skip it: "fill" when the record lacks only what the configuration adds
    # (a second hash, crop features): stored and indexed, never decided again, since the
    # photo was decided when it arrived; "decide" when it lacks the index's own hash (the
    # index never held it) or its decision never came (a 'deciding' note); "rewritten" when
    # it was written to and closed with its size and mtime as recorded (an in-place edit that
    # keeps both): hashed and decided as a new version.
    rehash: Rehash | None = None
    # Files whose pixels the worker compares with this one's once hashed (`dedupd.likeness`):
    # a near match waits for that before it moves either (`Ingest._compared`).
    compare: tuple[Counterpart, ...] = ()
    # Hashed again once the decision it waited for was made (`Ingest._wait`): its file was
    # counted when it was first hashed.
    waited: bool = False

    @property
    def again(self) -> bool:
        """A held decision's own file hashed again (its comparison, or after a wait): no file
        newly hashed in a report's or the daemon's counts."""
        return bool(self.compare) or self.waited

    @property
    def path(self) -> str:
        return os.path.join(self.root, self.relpath)


class NameFilter:
    """Which names are photos to hash: a wanted extension and no ignore glob matching."""

    def __init__(self, watch: WatchConfig):
        self.extensions = frozenset(e.lower() for e in watch.extensions)
        globs = "|".join(fnmatch.translate(g) for g in watch.ignore)
        self._ignored = re.compile(globs) if globs else None

    def ignored(self, name: str) -> bool:
        return bool(self._ignored and self._ignored.match(name))

    def wanted(self, name: str) -> bool:
        ext = name.rpartition(".")[2].lower() if "." in name else ""
        return ext in self.extensions and not self.ignored(name)


def why_unavailable(root: str) -> str | None:
    """Why `root` cannot be walked now, or None when it can: it is no folder (a disk not
    mounted), or its path passes through a symbolic link that neither root nor dedupd's user
    owns. Such a link is never followed, wherever it leads: a user who may write the folder
    above a root could otherwise swap the root for a link to another user's photos, and
    dedupd (as root) would record and act on those. Looked at before every walk and watch,
    since a link can be planted while dedupd runs."""
    try:
        link = safefs.untrusted_link(root)
    except (safefs.UnsafePath, OSError) as exc:  # a loop of links, one changing meanwhile
        return f"{root}: {exc}"
    if link is not None:
        where, uid = link
        return (
            f"{where}: a symbolic link owned by uid {uid} (not root or dedupd's user); dedupd "
            "does not follow it: name the folder it leads to in the config if it is meant"
        )
    if not os.path.isdir(root):
        return f"{root}: root is not a directory or is not mounted"
    return None


def walk(
    root: str,
    names: NameFilter,
    exclude: Sequence[str] = (),
    unreadable: list[tuple[str, str]] | None = None,
) -> Iterator[Entry]:
    """Every wanted regular file under `root` (symlinks not followed), in no fixed order.
    Raises NotFoundError, saying why, when the root is unavailable (`why_unavailable`).

    The walk goes by descriptor, never by path: the root is opened one component at a time
    (`safefs.open_dir`), and each folder under it from its parent's descriptor with
    O_NOFOLLOW. A folder swapped for a symbolic link between its listing and its own is
    never entered (a link to another user's photos would otherwise have their names and
    sizes listed), and files whose path is too long to open by name (`path_too_long`) are
    found all the same, with their real identity, so that they are recorded, never silently
    skipped.

    Folders matching an ignore glob and the `exclude` folders (quarantine, database folder,
    staging folders), known by their (device, inode) when the walk starts, are skipped, and
    so is any folder that holds the quarantine's marker file (an earlier quarantine).
    Unreadable folders are skipped, each added to `unreadable` with why (a folder that
    vanished or was swapped for a link mid-walk is not); files that vanish mid-walk too.
    """
    why = why_unavailable(root)
    if why is not None:
        raise NotFoundError(why)
    try:  # the root as `why_unavailable` saw it, or a link planted since: refused
        root_fd = safefs.open_dir(safefs.trusted_path(root))
    except (safefs.UnsafePath, OSError) as exc:
        raise NotFoundError(f"{root}: cannot read the root: {_strerror(exc)}") from exc
    try:
        yield from _walk_from(root, root_fd, names, identities(exclude), unreadable)
    finally:
        os.close(root_fd)


def _strerror(exc: OSError | safefs.UnsafePath) -> str:
    return (exc.strerror if isinstance(exc, OSError) else None) or str(exc)


def identities(folders: Sequence[str]) -> frozenset[tuple[int, int]]:
    """(st_dev, st_ino) of those of `folders` that are folders now, reached as `walk`
    reaches a root: a path through another user's link names no folder to exclude (were it
    followed, a user could hide any folder of a root from every walk)."""
    found = set()
    for folder in folders:
        try:
            with safefs.directory(safefs.trusted_path(folder)) as fd:
                st = os.fstat(fd)
        except (safefs.UnsafePath, OSError):
            continue  # not there (yet): nothing in a walk can be it
        found.add((st.st_dev, st.st_ino))
    return frozenset(found)


_GONE = (errno.ENOENT, errno.ELOOP, errno.ENOTDIR)  # vanished, or swapped for a link or file


# Descriptors a walk holds at most, however deep the tree: one a level, for the deepest
# levels only. A tree a few thousand folders deep (anyone who may write in a root can make
# one) otherwise took every descriptor the process may have (1,024 by default): its deepest
# folders were reported unreadable, and the daemon's other threads (status, the control
# socket, SQLite) failed to open anything meanwhile.
HELD_LEVELS = 64


@dataclass(slots=True)
class _Level:
    """A folder on the walk's way down: its descriptor (-1 while shed), its name in the
    folder above, its (device, inode) to know it again, and its sub-folders to visit."""

    fd: int
    name: str
    relpath: str
    identity: tuple[int, int]
    folders: list[str]


def _walk_from(
    root: str,
    root_fd: int,
    names: NameFilter,
    excluded: frozenset[tuple[int, int]],
    unreadable: list[tuple[str, str]] | None,
) -> Iterator[Entry]:
    # Depth first: the folders from the root down to the one being listed, each with its
    # sub-folders still to visit. Only the deepest HELD_LEVELS (and the root) keep their
    # descriptors; one shed is opened again from the nearest held above it, by name and
    # checked by identity, when the walk climbs back to it (`_reopen`).
    st = os.fstat(root_fd)
    levels: list[_Level] = []
    fd, name, relpath, identity = root_fd, "", "", (st.st_dev, st.st_ino)
    try:
        while True:
            folders: list[str] = []
            try:
                with os.scandir(fd) as it:
                    entries = list(it)
            except OSError as exc:
                if fd == root_fd:  # an unreadable root is unavailable, not empty
                    raise NotFoundError(f"{root}: cannot read the root: {_strerror(exc)}") from exc
                if unreadable is not None and exc.errno not in _GONE:
                    unreadable.append((os.path.join(root, relpath), _strerror(exc)))
                entries = []
            if fd != root_fd and any(e.name == safefs.QUARANTINE_MARKER for e in entries):
                # A quarantine folder inside a root, one an earlier configuration named (its
                # path was changed since): its photos are quarantined, not the library's (red
                # team 12: each was quarantined again, its first entry left unrestorable).
                entries = []
            for entry in entries:
                try:
                    if entry.is_dir(follow_symlinks=False):
                        if not names.ignored(entry.name):
                            folders.append(entry.name)
                    elif entry.is_file(follow_symlinks=False) and names.wanted(entry.name):
                        st = entry.stat(follow_symlinks=False)
                        yield Entry(root, os.path.join(relpath, entry.name), FileStat.of(st))
                except OSError:
                    continue  # vanished meanwhile
            levels.append(_Level(fd, name, relpath, identity, folders))
            # The level falling out of the deepest HELD_LEVELS is shed (the root never is),
            # unless it was already: climbing back and down into a sibling moves the window
            # over levels shed before.
            shed = levels[-HELD_LEVELS - 1] if len(levels) > HELD_LEVELS + 1 else None
            if shed is not None and shed.fd >= 0:
                os.close(shed.fd)
                shed.fd = -1
            fd = -1
            while levels and fd < 0:  # the next folder to list: a sub-folder, or climb
                parent = levels[-1]
                if not parent.folders:
                    levels.pop()
                    if parent.fd >= 0 and parent.fd != root_fd:
                        os.close(parent.fd)
                    continue
                if parent.fd < 0 and not _reopen(root, levels, unreadable):
                    continue  # moved or replaced since: what is left of it is not walked
                name = parent.folders.pop()
                relpath = os.path.join(parent.relpath, name)
                try:
                    fd = safefs.open_dir_at(parent.fd, name)
                except OSError as exc:
                    if unreadable is not None and exc.errno not in _GONE:
                        unreadable.append((os.path.join(root, relpath), _strerror(exc)))
                    continue
                st = os.fstat(fd)
                identity = (st.st_dev, st.st_ino)
                if identity in excluded:
                    os.close(fd)
                    fd = -1
            if fd < 0:
                return
    finally:
        if fd >= 0 and fd != root_fd:
            os.close(fd)
        for level in levels:
            if level.fd >= 0 and level.fd != root_fd:
                os.close(level.fd)


def _reopen(
    root: str, levels: list[_Level], unreadable: list[tuple[str, str]] | None
) -> bool:
    """Open the deepest level again (its descriptor was shed), and those on the way that
    are among the deepest HELD_LEVELS, each from the one above by name, and checked to be
    the folder listed before. A folder on the way moved away or replaced since (by a link,
    or another folder) ends the walk of all below it: they are dropped (False). One that
    cannot be opened otherwise (its permissions changed, no descriptor left) is dropped as
    well, and added to `unreadable`, so that the records under it are kept as they are."""
    first = max(i for i, level in enumerate(levels) if level.fd >= 0) + 1
    keep = len(levels) - HELD_LEVELS  # shallower levels than this one are closed again
    for i in range(first, len(levels)):
        above, level = levels[i - 1], levels[i]
        try:
            fd = safefs.open_dir_at(above.fd, level.name)
        except OSError as exc:
            if unreadable is not None and exc.errno not in _GONE:
                unreadable.append((os.path.join(root, level.relpath), _strerror(exc)))
            fd = -1
        if fd >= 0:
            st = os.fstat(fd)
            if (st.st_dev, st.st_ino) != level.identity:
                os.close(fd)
                fd = -1
        if i - 1 >= first and i - 1 < keep:
            os.close(above.fd)
            above.fd = -1
        if fd < 0:
            for gone in levels[i:]:
                if gone.fd >= 0:
                    os.close(gone.fd)
            del levels[i:]
            return False
        level.fd = fd
    return True


@dataclass(slots=True)
class Plan:
    """What `reconcile` found; the engine carries it out."""

    new: list[Entry] = field(default_factory=list)
    changed: list[Entry] = field(default_factory=list)
    renamed: list[tuple[FileRecord, Entry]] = field(default_factory=list)
    missing: list[FileRecord] = field(default_factory=list)
    rehash: list[Entry] = field(default_factory=list)  # unchanged, but lacks the current hash
    awaiting: list[tuple[int, Entry]] = field(default_factory=list)  # rehash: decide (id)
    unchanged: int = 0

    @property
    def to_hash(self) -> list[Entry]:
        return self.new + self.changed + self.rehash


def same_version(record: FileRecord, stat: FileStat) -> bool:
    """The one identity rule: a file is the version a record describes when its (device,
    inode, size, mtime_ns) are the record's. The scanner, the daemon's watch hints and the
    reconcile all decide "unchanged" and "renamed" by it, never by size and mtime alone (a
    copy with the same size and times is another file, whose bytes were never hashed).

    A record of a file that vanished before its worker read it (error 'vanished') describes
    no version: its stat is only what was seen when it was queued, and a file with it found
    elsewhere (renamed meanwhile) or back at the path was never hashed."""
    return record.stat == stat and record.error_kind != VANISHED


def reconcile(
    store: Store,
    root: str,
    entries: Iterable[Entry],
    hasher: str | Sequence[str],
    video: str | None = None,
    features: str | None = None,
    revived: set[int] | None = None,
) -> Plan:
    """Diff what is on disk under `root` against the store's records for it.

    An unchanged (dev, inode, size, mtime_ns) is never decoded again, even if it failed
    before, unless it lacks a hash of `hasher` or, given `features`, local features of that
    kind, or its decision never came (then it is decoded again once: `Entry.rehash` says
    whether to decide it, `hasher[0]` being the index's); a record that vanished from one
    path (in this scan, or earlier: marked missing) while a file with its identity appeared
    at another is a rename, followed without re-hashing. A clip needs no image hash when its
    frames are stored under `video`. `revived`: ids of records marked missing that a name
    took already (in another root of the same pass); those this call takes are added.
    """
    plan = Plan()
    known = store.files_in(root)
    needs_hash = {r.id for r in store.unhashed(root, hasher, video, features)}
    # Of those, the ones to decide again: lacking the index's own hash, or a decision.
    main = hasher if isinstance(hasher, str) else hasher[0]
    decide = {r.id for r in store.unhashed(root, main, video)} if needs_hash else set()

    def rehash(record: FileRecord, entry: Entry) -> Entry:
        if record.id in decide:
            entry = replace(entry, rehash="decide")
            plan.awaiting.append((record.id, entry))
            return entry
        return replace(entry, rehash="fill")

    appeared: list[Entry] = []
    for entry in entries:
        record = known.pop(entry.relpath, None)
        if record is None:
            appeared.append(entry)
        elif not same_version(record, entry.stat):
            plan.changed.append(entry)
        elif record.id in needs_hash:
            plan.rehash.append(rehash(record, entry))
        else:
            plan.unchanged += 1
    # Whatever is left in `known` vanished from its path: moved, or deleted. Keyed by the
    # stat, so that a lookup is `same_version`; several records per stat when hard links of
    # one file vanished (all renamed, say): each name that appeared follows one of them.
    vanished: dict[FileStat, list[FileRecord]] = {}
    for r in known.values():
        if r.error_kind != VANISHED:
            vanished.setdefault(r.stat, []).append(r)
    gone = [r for r in known.values() if r.error_kind == VANISHED]  # no rename to follow
    if revived is None:
        revived = set()  # records marked missing that a name here took
    for entry in appeared:
        same = vanished.get(entry.stat)
        record = same.pop(0) if same else store.missing_with_stat(entry.stat, revived)
        if record is None:
            plan.new.append(entry)
        else:
            revived.add(record.id)
            plan.renamed.append((record, entry))
            if record.id in needs_hash:
                plan.rehash.append(rehash(record, entry))
    plan.missing = [r for records in vanished.values() for r in records] + gone
    return plan


def root_key(path: Path | str) -> str:
    """How a root is named in the store: its absolute path, its links resolved where root or
    dedupd's user made them (`safefs.trusted_path`); another user's link stays in it, and
    `walk` refuses it."""
    return str(safefs.trusted_path(Path(path).expanduser()))
