"""Live Photos: a still (HEIC or JPEG) and its motion file (a short MOV) are one photo.

Apple writes the same content identifier into both halves: the still's Apple MakerNote
(tag 0x11, ``ContentIdentifier``) and the movie's QuickTime metadata key
``com.apple.quicktime.content.identifier``. Two files with one identifier are a pair, whatever
their names (an export or a sync client may rename one). Without identifiers (a copy that
lost its metadata, another phone) a still and a movie in the same folder with the same stem,
case-insensitively (``IMG_1234.HEIC`` + ``IMG_1234.MOV``), are a pair; two identifiers that
differ say they are not, whatever the names.

`pair` is the rule, pure. The readers run where files are decoded (the hasher workers): the
still's identifier through Pillow's EXIF and TIFF-directory parsers, the movie's through a
small bounded walk of QuickTime atoms (``moov`` → ``meta`` → ``keys`` + ``ilst``), which reads
a few kilobytes and never decodes video. `find_motion` finds a still's motion file on disk.

The pair moves as one in `actions` (one journaled intent for both files); a decision that
would move the motion file alone (a duplicate clip whose still is not a duplicate) is only
reported (`engine`).
"""

from __future__ import annotations

import hashlib
import io
import os
import stat
import struct
import time
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, BinaryIO, NamedTuple

from dedupd import safefs
from dedupd.errors import DedupdError
from dedupd.filestat import FileStat

if TYPE_CHECKING:
    from PIL import Image

__all__ = [
    "MAX_MOTION_BYTES",
    "MOTION_SUFFIXES",
    "Beside",
    "Motion",
    "find_motion",
    "motion_names_beside",
    "movie_content_id",
    "pair",
    "photo_content_id",
]

MOTION_SUFFIXES = (".mov",)  # what an iPhone writes as a Live Photo's motion half
CONTENT_ID_KEY = b"com.apple.quicktime.content.identifier"

_EXIF_IFD = 0x8769
_MAKER_NOTE = 0x927C
_APPLE = b"Apple iOS\x00"
_APPLE_CONTENT_ID = 0x0011
_MAX_ATOMS = 4096  # atoms walked in one file before giving up: a hostile file cannot loop us
_MAX_META = 1 << 20  # bytes of a `meta` atom read at most; Apple's are a few hundred
_MAX_ID = 256  # an identifier is a UUID (36 characters); anything far longer is not one
# A motion file is some 3 s of video: a few MB (an iPhone's 4K HDR ones under 20 MB). A larger
# movie by the still's name is a video of its own (another phone's IMG_1234.MOV), never paired:
# the still's worker reads its motion file whole for its sha256, and a large one made the
# still itself `timeout`, for good, on a slow disk or with a sparse file.
MAX_MOTION_BYTES = 256 << 20


@dataclass(frozen=True, slots=True)
class Motion:
    """A still's motion file, as read when the still was hashed: same root, its own
    relpath, and the version (stat, sha256) that `actions` checks before moving it."""

    root: str
    relpath: str
    content_id: str | None  # the identifier both halves share; None when paired by name
    stat: FileStat
    sha256: str

    @property
    def path(self) -> Path:
        return Path(self.root) / self.relpath


@dataclass(frozen=True, slots=True)
class Beside:
    """What a worker saw beside a still when it hashed it: its motion file, if any, and
    every file that could be one by name (same stem, a motion suffix), with its stat. A file
    by that name that `actions` finds later and that is not among these arrived (or changed)
    since: the still is not moved until it is paired again."""

    motion: Motion | None
    by_name: tuple[tuple[str, FileStat], ...] = ()


def _stem(name: str) -> str:
    return os.path.splitext(name)[0].casefold()


def pair(
    photo: str, photo_id: str | None, movies: Iterable[tuple[str, str | None]]
) -> str | None:
    """The name of `photo`'s motion file among `movies` ((name, content identifier) in the
    same folder), or None.

    The content identifier decides first: the movie that carries the photo's. Failing that,
    the one movie of the same stem (case-insensitive), unless both carry identifiers and
    they differ. Two movies that could both be the one (``IMG_1.MOV`` and ``IMG_1.mov``) are
    no answer: None, and `motion_names_beside` lets `actions` refuse to move the photo.
    """
    movies = list(movies)
    if photo_id is not None:
        same_id = sorted(name for name, cid in movies if cid == photo_id)
        if len(same_id) == 1:
            return same_id[0]
        if same_id:  # several copies of the motion file: the one by name, if any
            by_name = [n for n in same_id if _stem(n) == _stem(photo)]
            return by_name[0] if len(by_name) == 1 else None
    by_stem = [
        (name, cid)
        for name, cid in movies
        if _stem(name) == _stem(photo) and name != photo
    ]
    if len(by_stem) != 1:
        return None
    name, cid = by_stem[0]
    if photo_id is not None and cid is not None and cid != photo_id:
        return None  # two different Live Photos that happen to share a name
    return name


def motion_names_beside(photo: str, names: Iterable[str]) -> list[str]:
    """The names among `names` that could be `photo`'s motion file by name alone (same stem,
    a motion suffix). What `actions` checks in the folder just before a move."""
    return sorted(
        n
        for n in names
        if n != photo
        and _stem(n) == _stem(photo)
        and os.path.splitext(n)[1].casefold() in MOTION_SUFFIXES
    )


# -- the still's identifier ------------------------------------------------------------------


def photo_content_id(image: Image.Image) -> str | None:
    """The Apple content identifier in a still's MakerNote, or None (no EXIF, not an Apple
    MakerNote, no such tag, or anything malformed: a missing identifier is normal)."""
    from PIL import TiffImagePlugin

    try:
        note = image.getexif().get_ifd(_EXIF_IFD).get(_MAKER_NOTE)
    except (ValueError, TypeError, OSError, SyntaxError, KeyError, struct.error):
        return None
    if not isinstance(note, bytes) or not note.startswith(_APPLE) or len(note) < 16:
        return None
    # "Apple iOS\0", a 2-byte version, the byte order ("MM"), then a TIFF directory whose
    # offsets count from the start of the MakerNote.
    order = note[12:14]
    if order not in (b"MM", b"II"):
        return None
    header = (b"MM\x00\x2a" if order == b"MM" else b"II\x2a\x00") + b"\x00\x00\x00\x08"
    fp = io.BytesIO(note)
    fp.seek(14)
    try:
        ifd = TiffImagePlugin.ImageFileDirectory_v2(header)
        ifd.load(fp)
        value = ifd.get(_APPLE_CONTENT_ID)
    except (ValueError, TypeError, OSError, SyntaxError, KeyError, struct.error, EOFError):
        return None
    return _identifier(value)


def _identifier(value: object) -> str | None:
    if isinstance(value, bytes):
        value = value.decode("utf-8", "replace")
    if not isinstance(value, str):
        return None
    value = value.strip("\x00 ")
    return value if 0 < len(value) <= _MAX_ID else None


# -- the movie's identifier ------------------------------------------------------------------


def _atoms(
    f: BinaryIO, start: int, end: int, budget: list[int]
) -> Iterable[tuple[bytes, int, int]]:
    """(type, payload start, payload end) of the atoms between `start` and `end`."""
    pos = start
    while pos + 8 <= end:
        budget[0] -= 1
        if budget[0] < 0:
            return
        f.seek(pos)
        head = f.read(16)
        if len(head) < 8:
            return
        size, kind = struct.unpack(">I4s", head[:8])
        payload = pos + 8
        if size == 1:  # a 64-bit size follows
            if len(head) < 16:
                return
            size = struct.unpack(">Q", head[8:16])[0]
            payload = pos + 16
        elif size == 0:  # to the end of the enclosing box
            size = end - pos
        if size < payload - pos or pos + size > end:
            return  # malformed: stop rather than guess
        yield kind, payload, pos + size
        pos += size


def movie_content_id(f: BinaryIO) -> str | None:
    """The value of ``com.apple.quicktime.content.identifier`` in a QuickTime file's movie
    metadata (``moov/meta``), or None. Reads only atom headers and the `meta` atom; a
    malformed file gives None, never an exception."""
    try:
        end = f.seek(0, os.SEEK_END)
        budget = [_MAX_ATOMS]
        for kind, start, stop in _atoms(f, 0, end, budget):
            if kind != b"moov":
                continue
            for sub, s_start, s_stop in _atoms(f, start, stop, budget):
                if sub == b"meta" and s_stop - s_start <= _MAX_META:
                    found = _meta_content_id(f, s_start, s_stop, budget)
                    if found is not None:
                        return found
            return None
    except (OSError, struct.error, ValueError):
        return None
    return None


def _meta_content_id(f: BinaryIO, start: int, stop: int, budget: list[int]) -> str | None:
    f.seek(start)
    data = f.read(stop - start)
    # QuickTime's `meta` has no version/flags field; ISO's has 4 bytes of it. Tell them apart
    # by where the first child's type (`hdlr`) sits.
    offset = 4 if data[4:8] != b"hdlr" and data[8:12] == b"hdlr" else 0
    inner = io.BytesIO(data)
    keys: list[bytes] = []
    items: dict[int, bytes] = {}
    for kind, k_start, k_stop in _atoms(inner, offset, len(data), budget):
        body = data[k_start:k_stop]
        if kind == b"keys" and len(body) >= 8:
            count = struct.unpack(">I", body[4:8])[0]
            pos = 8
            for _ in range(min(count, _MAX_ATOMS)):
                if pos + 8 > len(body):
                    break
                size = struct.unpack(">I", body[pos : pos + 4])[0]
                if size < 8 or pos + size > len(body):
                    break
                keys.append(body[pos + 8 : pos + size])  # after size and namespace
                pos += size
        elif kind == b"ilst":
            for item, i_start, i_stop in _atoms(inner, k_start, k_stop, budget):
                index = struct.unpack(">I", item)[0]
                for sub, d_start, d_stop in _atoms(inner, i_start, i_stop, budget):
                    # data: type indicator (4 bytes), locale (4 bytes), then the value
                    if sub == b"data" and d_stop - d_start >= 8:
                        items[index] = data[d_start + 8 : d_stop]
                        break
    for index, key in enumerate(keys, start=1):
        if key == CONTENT_ID_KEY and index in items:
            return _identifier(items[index])
    return None


# -- finding a still's motion file -----------------------------------------------------------

Movies = dict[str, tuple[FileStat, str | None]]  # movie name → (stat, content identifier)


class _Listed(NamedTuple):
    mtime_ns: int  # the folder's, when listed
    at: float  # time.monotonic() of the listing
    movies: Movies


# Per worker process: each folder's last listing, so that pairing by identifier reads each
# movie of a folder once, not once per photo.
_folders: dict[str, _Listed] = {}
_MAX_FOLDERS = 64
# A folder that changes (uploads arriving) is listed again at most this often, in seconds:
# listing a camera folder of 20,000 photos took ~55 ms here, once per photo of a burst into
# it (quadratic: minutes for a phone's first sync). Meanwhile a movie named as the photo is
# looked for by name (`_named_movie_arrived`). One of the same stem in another case that
# arrived since is caught before any move: `actions` looks for files by name again and
# refuses to move a photo beside one the worker did not see (`Beside`). One of another name
# that carries the photo's identifier, arrived in that second, is not paired: the photo may
# move without it, and the movie stays where it is.
RELIST_AFTER = 1.0


def open_regular(path: str) -> BinaryIO | None:
    """A movie opened for reading, never through a symlink (on any folder of its path) and
    never blocking on a FIFO; None when it cannot be (an unreadable movie is no pair)."""
    parent, name = os.path.split(os.path.abspath(path))
    try:
        with safefs.directory(parent) as dir_fd:
            fd = os.open(
                name, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC, dir_fd=dir_fd
            )
    except (OSError, DedupdError):
        return None
    if not stat.S_ISREG(os.fstat(fd).st_mode):
        os.close(fd)
        return None
    return os.fdopen(fd, "rb")


def _movies_in(folder: str, photo: str) -> Movies:
    """The movies of `folder` with their identifiers: listed again only when the folder
    changed (its mtime), at most once every RELIST_AFTER seconds unless a movie named as
    `photo` arrived, and a movie read again only when it changed."""
    try:
        folder_mtime = os.stat(folder, follow_symlinks=False).st_mtime_ns
    except OSError:
        return {}
    cached = _folders.get(folder)
    if cached is not None and (
        cached.mtime_ns == folder_mtime
        or (
            time.monotonic() - cached.at < RELIST_AFTER
            and not _named_movie_arrived(folder, photo, cached.movies)
        )
    ):
        return cached.movies
    listed_at = time.monotonic()
    try:
        names = [
            e.name
            for e in os.scandir(folder)
            if os.path.splitext(e.name)[1].casefold() in MOTION_SUFFIXES
            and e.is_file(follow_symlinks=False)
        ]
    except OSError:
        return {}
    known = cached.movies if cached is not None else {}
    movies: Movies = {}
    for name in names:
        try:
            st = FileStat.of(os.stat(os.path.join(folder, name), follow_symlinks=False))
        except OSError:
            continue
        if name in known and known[name][0] == st:
            movies[name] = known[name]
            continue
        f = open_regular(os.path.join(folder, name))
        if f is None:
            continue
        with f:
            movies[name] = (st, movie_content_id(f))
    if len(_folders) >= _MAX_FOLDERS:
        _folders.clear()
    _folders[folder] = _Listed(folder_mtime, listed_at, movies)
    return movies


def _named_movie_arrived(folder: str, photo: str, movies: Movies) -> bool:
    """Whether a movie named as `photo` (its stem with a motion suffix, in lower or upper
    case: `IMG_1.HEIC` → `IMG_1.MOV`, `IMG_1.mov`) is in `folder` now but not as `movies`
    has it."""
    stem = os.path.splitext(photo)[0]
    for suffix in MOTION_SUFFIXES:
        for name in {stem + suffix, stem + suffix.upper()}:
            try:
                st = os.stat(os.path.join(folder, name), follow_symlinks=False)
            except OSError:
                continue
            if name not in movies or movies[name][0] != FileStat.of(st):
                return True
    return False


def _sha256_and_stat(path: str) -> tuple[str, FileStat] | None:
    f = open_regular(path)
    if f is None:
        return None
    digest = hashlib.sha256()
    with f:
        before = FileStat.of(os.fstat(f.fileno()))
        while chunk := f.read(1 << 20):
            digest.update(chunk)
        after = FileStat.of(os.fstat(f.fileno()))
    return (digest.hexdigest(), before) if before == after else None


def find_motion(path: str, photo_id: str | None) -> Beside | None:
    """The motion file of the still at `path` (content identifier `photo_id`, if it has
    one), read and hashed now, and the files beside it that could be one by name; None when
    there is no movie beside it at all. No motion file when the movie changed while read
    (the still is paired again when it is hashed again). As the worker finds it, the
    Motion's `root` is the still's folder and its `relpath` the movie's name there; the
    store records it under the still's root."""
    folder, photo = os.path.split(path)
    movies = _movies_in(folder, photo)
    if not movies:
        return None
    by_name = tuple(
        (n, movies[n][0]) for n in motion_names_beside(photo, movies) if n in movies
    )
    candidates = ((n, c) for n, (st, c) in movies.items() if st.size <= MAX_MOTION_BYTES)
    name = pair(photo, photo_id, candidates)
    if name is None:
        return Beside(None, by_name)
    read = _sha256_and_stat(os.path.join(folder, name))
    if read is None or read[1] != movies[name][0]:
        _folders.pop(folder, None)  # changed since listed: list it again next time
        return Beside(None, ())  # nothing seen: any file by name stops a move
    sha256, version = read
    cid = movies[name][1]
    motion = Motion(
        root=folder,
        relpath=name,
        content_id=cid if cid is not None and cid == photo_id else None,
        stat=version,
        sha256=sha256,
    )
    return Beside(motion, by_name)
