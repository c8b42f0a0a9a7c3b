"""Walk roots and diff them against the store by (dev, inode, size, mtime_ns).

Nothing here decodes an image or writes the database: `reconcile` returns a `Plan` that
says which files are new, changed, renamed, gone, or need only a lazy re-hash.
"""

from __future__ import annotations

import fnmatch
import os
import re
import stat
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Literal

from dedupd import safefs
from dedupd.config import WatchConfig
from dedupd.errors import NotFoundError
from dedupd.filestat import FileStat
from dedupd.store import FileRecord, Store

__all__ = [
    "PATH_MAX",
    "Entry",
    "NameFilter",
    "Plan",
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


Rehash = Literal["fill", "decide"]

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
    # index never held it) or its decision never came (a 'deciding' note).
    rehash: Rehash | None = None

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

    Directories matching an ignore glob and the `exclude` paths (quarantine, database
    folder) are skipped. Unreadable directories are skipped, each added to `unreadable`
    with why (a folder that vanished mid-walk is not); files that vanish mid-walk too.
    Files whose path is too long to open by name (`path_too_long`) are found and yielded
    all the same, with their real identity, so that they are recorded, never silently
    skipped: they are reached through the descriptor of the last folder that can be opened.
    """
    why = why_unavailable(root)
    if why is not None:
        raise NotFoundError(why)
    excluded = {os.path.realpath(p) for p in exclude}
    stack = [root]
    while stack:
        folder = stack.pop()
        try:
            with os.scandir(folder) as it:
                entries = list(it)
        except OSError as exc:
            if folder == root:  # an unreadable root is unavailable, not empty
                raise NotFoundError(f"{root}: cannot read the root: {exc.strerror}") from exc
            if unreadable is not None and not isinstance(exc, FileNotFoundError):
                unreadable.append((folder, exc.strerror or str(exc)))
            continue  # an unreadable or vanished sub-folder: skipped
        deep = []
        for entry in entries:
            if path_too_long(entry.path):
                deep.append(entry.name)
                continue
            try:
                if entry.is_dir(follow_symlinks=False):
                    if (
                        not names.ignored(entry.name)
                        and os.path.realpath(entry.path) not in excluded
                    ):
                        stack.append(entry.path)
                elif entry.is_file(follow_symlinks=False) and names.wanted(entry.name):
                    st = entry.stat(follow_symlinks=False)
                    yield Entry(root, os.path.relpath(entry.path, root), FileStat.of(st))
            except OSError:
                continue
        if deep:
            yield from _walk_deep(root, folder, deep, names, excluded)


def _walk_deep(
    root: str, folder: str, names_in_folder: list[str], names: NameFilter, excluded: set[str]
) -> Iterator[Entry]:
    """The wanted files at and under `folder`'s entries `names_in_folder`, whose paths are
    too long to use: stat'ed and listed relative to directory descriptors (os.fwalk)."""
    try:
        folder_fd = os.open(folder, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    except OSError:
        return  # vanished or unreadable meanwhile: skipped, as any unreadable folder
    try:
        for name in names_in_folder:
            try:
                st = os.stat(name, dir_fd=folder_fd, follow_symlinks=False)
                if stat.S_ISREG(st.st_mode) and names.wanted(name):
                    relpath = os.path.relpath(os.path.join(folder, name), root)
                    yield Entry(root, relpath, FileStat.of(st))
                elif stat.S_ISDIR(st.st_mode) and not names.ignored(name):
                    yield from _fwalk_files(root, folder, name, folder_fd, names, excluded)
            except OSError:
                continue  # vanished or unreadable: skipped, as in `walk`
    finally:
        os.close(folder_fd)


def _fwalk_files(
    root: str, folder: str, name: str, folder_fd: int, names: NameFilter, excluded: set[str]
) -> Iterator[Entry]:
    # The walk below never follows a symlink, and roots are resolved: a joined path is real.
    for dirpath, dirnames, filenames, dir_fd in os.fwalk(name, dir_fd=folder_fd):
        here = os.path.join(folder, dirpath)
        dirnames[:] = [
            d for d in dirnames if not names.ignored(d) and os.path.join(here, d) not in excluded
        ]
        for filename in filenames:
            if not names.wanted(filename):
                continue
            try:
                st = os.stat(filename, dir_fd=dir_fd, follow_symlinks=False)
            except OSError:
                continue
            if stat.S_ISREG(st.st_mode):
                relpath = os.path.relpath(os.path.join(here, filename), root)
                yield Entry(root, relpath, FileStat.of(st))


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
