"""File operations on descriptors, never through a symbolic link.

A path a user can change is only a hint: every folder on it is opened one component at a
time from `/` with ``O_NOFOLLOW``, and the operations that follow work on the descriptors
(``openat``, ``renameat``, ``linkat``, ``unlinkat``). A folder swapped for a symlink while
dedupd works makes the walk fail with `UnsafePath`; it never leads dedupd elsewhere.

Each root has a private staging folder (`STAGING_DIR`, mode 0700, owned by dedupd's user) on
its own filesystem. `actions` renames a file there first, which takes it out of the user's
namespace atomically, then verifies what it holds by descriptor before finishing or putting
it back.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import hashlib
import os
import signal
import stat
from collections.abc import Iterable, Iterator
from pathlib import Path, PurePath

from dedupd.errors import DedupdError

__all__ = [
    "QUARANTINE_MARKER",
    "STAGING_DIR",
    "UnsafePath",
    "directory",
    "exists_at",
    "free_name_at",
    "fsync_dir",
    "layered_filesystem",
    "lexists",
    "open_dir",
    "open_dir_at",
    "open_file_at",
    "open_for_writing",
    "rename_noreplace",
    "sha256_fd",
    "staging_dir",
    "stat_at",
    "trusted_path",
    "untrusted_link",
]

STAGING_DIR = ".dedupd-staging"
# An empty file dedupd keeps in its quarantine folder: a quarantine folder that is missing or
# empty without it, after dedupd has quarantined into it, is a disk not mounted; and a folder
# that holds it is a quarantine (this configuration's or an earlier one's), never walked.
QUARANTINE_MARKER = ".dedupd-quarantine"

_DIR_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC
_PASS_FLAGS = os.O_PATH | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC  # a folder passed


class UnsafePath(DedupdError):
    """A folder on a path is a symbolic link, not a folder, or not dedupd's own."""


def _components(path: str | PurePath) -> list[str]:
    p = PurePath(path)
    if not p.is_absolute():
        raise UnsafePath(f"{path}: not an absolute path")
    parts = list(p.parts[1:])
    if any(part in ("..", ".") for part in parts):
        raise UnsafePath(f"{path}: contains '..' or '.'")
    return parts


def _trusted_link(st: os.stat_result) -> bool:
    """A symbolic link root or dedupd's own user made (an admin's /srv -> /mnt/data), not one
    planted by a user who may write the folder it is in."""
    return st.st_uid in (0, os.geteuid())


_MAX_LINKS = 40


def trusted_path(path: str | PurePath) -> Path:
    """`path` made absolute with its symbolic links resolved, as `os.path.realpath` does, but
    following only links that root or dedupd's user own (`_trusted_link`): at the first other
    one, that link and the rest of the path are kept as they are, so that every later walk
    (`open_dir`) refuses the path instead of following the link elsewhere. For the folders a
    config names (the roots as the store names them, the quarantine), resolved once when
    dedupd starts."""
    return _resolve(path)[0]


def untrusted_link(path: str | PurePath) -> tuple[Path, int] | None:
    """The first symbolic link on `path` that `trusted_path` does not follow, with the uid
    that owns it; None when there is none. Looked at now: a link may be planted any time."""
    return _resolve(path)[1]


def _resolve(path: str | PurePath) -> tuple[Path, tuple[Path, int] | None]:
    pending = list(PurePath(os.path.join(os.getcwd(), path)).parts[1:])
    resolved = PurePath("/")
    links = 0
    while pending:
        part = pending.pop(0)
        if part in ("", "."):
            continue
        if part == "..":
            resolved = resolved.parent
            continue
        here = resolved / part
        try:
            st = os.lstat(here)
        except OSError:  # not there (yet): the rest is taken as written
            resolved = here
            continue
        if not stat.S_ISLNK(st.st_mode):
            resolved = here
            continue
        if not _trusted_link(st):
            return Path(here, *pending), (Path(here), st.st_uid)
        links += 1
        if links > _MAX_LINKS:
            raise UnsafePath(f"{path}: too many levels of symbolic links")
        target = PurePath(os.readlink(here))
        if target.is_absolute():
            resolved, pending = PurePath("/"), [*target.parts[1:], *pending]
        else:
            pending = [*target.parts, *pending]
    return Path(resolved), None


def open_dir(
    path: str | PurePath, *, create: bool = False, mode: int = 0o777, owned_as_parent: bool = False
) -> int:
    """A descriptor of the folder `path`, opened one component at a time from `/`, none of
    them followed through a symlink. With `create`, missing folders are made (with `mode`,
    less the umask); with `owned_as_parent` too, each is given to the owner of the folder it
    is made in, when dedupd runs as root (a restore into a user's folder they removed: made
    as root's, the user could no longer move or delete their own photo). Raises UnsafePath,
    FileNotFoundError or another OSError."""
    parts = _components(path)
    # The folders on the way only as O_PATH descriptors: passing through one needs search
    # (x) permission, as a path does, not read permission (a home folder at 0711 above a
    # root). Only the folder itself is opened for reading.
    fd = os.open("/", _PASS_FLAGS if parts else _DIR_FLAGS)
    try:
        walked = "/"
        for n, part in enumerate(parts):
            walked = os.path.join(walked, part)
            flags = _DIR_FLAGS if n == len(parts) - 1 else _PASS_FLAGS
            try:
                next_fd = os.open(part, flags, dir_fd=fd)
            except FileNotFoundError:
                if not create:
                    raise
                try:
                    os.mkdir(part, mode, dir_fd=fd)
                except FileExistsError:
                    pass
                else:
                    if owned_as_parent and os.geteuid() == 0:
                        _give_to_parents_owner(fd, part)
                next_fd = os.open(part, flags, dir_fd=fd)
            except OSError as exc:
                if exc.errno in (errno.ELOOP, errno.ENOTDIR):
                    raise UnsafePath(
                        f"{walked} is a symbolic link or not a folder; links are not followed"
                    ) from exc
                raise
            os.close(fd)
            fd = next_fd
        return fd
    except BaseException:
        os.close(fd)
        raise


def _give_to_parents_owner(dir_fd: int, name: str) -> None:
    """Give the folder `name` just made in `dir_fd` to that folder's owner, by descriptor:
    whatever the parent's owner may have put in its place meanwhile (a link, a folder of
    theirs) is not given away. Best effort: a filesystem that refuses root a chown (NFS
    with root_squash) leaves it root's, and the restore goes on."""
    try:
        made = os.open(name, _DIR_FLAGS, dir_fd=dir_fd)
    except OSError:
        return  # replaced already: the open after this says what is there
    try:
        if os.fstat(made).st_uid == os.geteuid():  # still the one made here
            above = os.fstat(dir_fd)
            os.fchown(made, above.st_uid, above.st_gid)
    except OSError:
        pass
    finally:
        os.close(made)


def open_dir_at(dir_fd: int, name: str) -> int:
    """A descriptor of the folder `name` in the folder `dir_fd`, never through a symbolic
    link: OSError (ELOOP, ENOTDIR) when `name` is one, or no folder."""
    return os.open(name, _DIR_FLAGS, dir_fd=dir_fd)


@contextlib.contextmanager
def directory(path: str | PurePath, *, create: bool = False, mode: int = 0o777) -> Iterator[int]:
    """`open_dir` as a context manager that closes the descriptor."""
    fd = open_dir(path, create=create, mode=mode)
    try:
        yield fd
    finally:
        os.close(fd)


def stat_at(dir_fd: int, name: str) -> os.stat_result | None:
    """lstat of `name` in the folder, or None when there is nothing by that name."""
    try:
        return os.stat(name, dir_fd=dir_fd, follow_symlinks=False)
    except FileNotFoundError:
        return None


def exists_at(dir_fd: int, name: str) -> bool:
    return stat_at(dir_fd, name) is not None


def lexists(path: str | PurePath) -> bool:
    """Whether something is at `path`, looked up without following any symlink on the way.
    A path through a symlinked folder raises UnsafePath."""
    p = PurePath(path)
    try:
        with directory(p.parent) as fd:
            return exists_at(fd, p.name)
    except FileNotFoundError:
        return False


def open_file_at(dir_fd: int, name: str) -> int:
    """A read-only descriptor of the regular file `name` in the folder (never a symlink, a
    FIFO or a device). Raises FileNotFoundError, UnsafePath or OSError."""
    try:
        fd = os.open(
            name, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC, dir_fd=dir_fd
        )
    except OSError as exc:
        if exc.errno == errno.ELOOP:
            raise UnsafePath(f"{name} is a symbolic link; links are not followed") from exc
        raise
    if not stat.S_ISREG(os.fstat(fd).st_mode):
        os.close(fd)
        raise UnsafePath(f"{name} is not a regular file")
    return fd


def open_for_writing(fd: int, paths: Iterable[str] = ()) -> bool | None:
    """Whether another process holds the file of `fd` (opened read-only) open for writing:
    an upload written in place (scp, Samba, `rsync --inplace`) that paused for longer than
    the settle time, its last bytes still to come. A red-team run had such a file, then
    byte for byte a photo of the library, deleted as its exact duplicate, and the rest of the
    upload was written into a file without a name.

    Told by a read lease (``fcntl(F_SETLEASE, F_RDLCK)``), which the kernel refuses while
    anyone has the file open for writing, and given up at once. A writer opening the file in
    that instant breaks the lease with a signal: SIGURG (F_SETSIG), which is ignored, not
    the default SIGIO, which would end the daemon. Leases need the file's owner or CAP_LEASE
    (the system unit grants it): without, None (it cannot be told). On a filesystem without
    leases, the descriptors of the processes /proc shows are looked at, by the names in
    `paths`; None when some cannot be."""
    fcntl.fcntl(fd, fcntl.F_SETSIG, signal.SIGURG)
    try:
        fcntl.fcntl(fd, fcntl.F_SETLEASE, fcntl.F_RDLCK)
    except OSError as exc:
        if exc.errno == errno.EAGAIN:
            return True
        if exc.errno in (errno.EACCES, errno.EPERM):
            return None  # another user's file, no CAP_LEASE: their processes are hidden too
        if exc.errno not in (errno.EINVAL, errno.ENOSYS):
            raise
        return _writers_in_proc(set(paths))
    try:
        return False
    finally:
        fcntl.fcntl(fd, fcntl.F_SETLEASE, fcntl.F_UNLCK)


def _writers_in_proc(paths: set[str]) -> bool | None:
    """Whether a process has one of `paths` open for writing (its descriptor's link names the
    file as it is named now); None when /proc cannot be read, or the descriptors of some
    process (another user's) cannot, and none of those seen writes."""
    if not paths:
        return None
    try:
        pids = [p for p in os.listdir("/proc") if p.isdigit()]
    except OSError:
        return None
    hidden = False
    for pid in pids:
        try:
            fds = os.listdir(f"/proc/{pid}/fd")
        except PermissionError:  # another user's process: it may be the writer
            hidden = True
            continue
        except OSError:  # gone
            continue
        for n in fds:
            try:
                if os.readlink(f"/proc/{pid}/fd/{n}") not in paths:
                    continue
                with open(f"/proc/{pid}/fdinfo/{n}", encoding="ascii") as info:
                    flags = next(
                        int(line.split()[1], 8) for line in info if line.startswith("flags:")
                    )
            except (OSError, StopIteration, ValueError, IndexError):
                continue
            if flags & os.O_ACCMODE in (os.O_WRONLY, os.O_RDWR):
                return True
    return None if hidden else False


_RENAME_NOREPLACE = 1  # linux/fs.h


def rename_noreplace(src_dir: int, src_name: str, dst_dir: int, dst_name: str) -> None:
    """Rename `src_name` to `dst_name` (both relative to their folders' descriptors), never
    over a file already there: FileExistsError then (``renameat2`` with RENAME_NOREPLACE).
    Where hard links are refused (a filesystem without them, as exFAT; or
    ``fs.protected_hardlinks`` and a file another user owns, as with the system unit), this
    is how a file goes back to its folder, or into the quarantine.

    Where the filesystem does not take the flag (exfat-fuse: EINVAL), `dst_name` is first
    made as an empty file of dedupd's own (O_EXCL: never one already there), which the
    rename then replaces; only a file put over that placeholder in the instant between the
    two could be replaced."""
    import ctypes

    libc = ctypes.CDLL(None, use_errno=True)
    renameat2 = getattr(libc, "renameat2", None)
    if renameat2 is not None:
        renameat2.argtypes = [
            ctypes.c_int,
            ctypes.c_char_p,
            ctypes.c_int,
            ctypes.c_char_p,
            ctypes.c_uint,
        ]
        done = renameat2(
            src_dir, os.fsencode(src_name), dst_dir, os.fsencode(dst_name), _RENAME_NOREPLACE
        )
        if done == 0:
            return
        code = ctypes.get_errno()
        if code not in (errno.EINVAL, errno.ENOSYS, errno.ENOTSUP):
            raise OSError(code, os.strerror(code), dst_name)
    placeholder = os.open(
        dst_name, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600,
        dir_fd=dst_dir,
    )
    mine = os.fstat(placeholder)
    os.close(placeholder)
    try:
        os.rename(src_name, dst_name, src_dir_fd=src_dir, dst_dir_fd=dst_dir)
    except BaseException:
        with contextlib.suppress(OSError):
            here = os.stat(dst_name, dir_fd=dst_dir, follow_symlinks=False)
            if (here.st_dev, here.st_ino) == (mine.st_dev, mine.st_ino):
                os.unlink(dst_name, dir_fd=dst_dir)
        raise


def sha256_fd(fd: int) -> str:
    """sha256 of everything the descriptor's file holds, read from its start."""
    digest = hashlib.sha256()
    offset = 0
    while chunk := os.pread(fd, 1 << 20, offset):
        digest.update(chunk)
        offset += len(chunk)
    return digest.hexdigest()


def fsync_dir(dir_fd: int) -> None:
    os.fsync(dir_fd)


_NAME_MAX = 255


def free_name_at(dir_fd: int, name: str) -> str:
    """`name`, or `stem (1).ext`, `stem (2).ext`, … whichever is free in the folder, with
    the stem shortened where the suffix would make the name too long."""
    candidate, n = name, 0
    stem, suffix = os.path.splitext(name)
    while exists_at(dir_fd, candidate):
        n += 1
        extra = os.fsencode(f" ({n}){suffix}")
        candidate = os.fsdecode(os.fsencode(stem)[: _NAME_MAX - len(extra)] + extra)
    return candidate


def staging_dir(root: str | Path, *, create: bool = True) -> int | None:
    """A descriptor of `root`'s private staging folder, made if missing (with `create`;
    without it, None when there is none).

    It must be a real folder owned by dedupd's user and closed to everyone else: a folder of
    that name made by someone else is refused (UnsafePath), never used. One of ours that is
    open to others is closed again when creating (an action is about to use it), refused
    when only looking (recovery trusts nothing it did not leave as it is).
    """
    where = os.path.join(root, STAGING_DIR)
    with directory(root) as root_fd:
        if create:
            with contextlib.suppress(FileExistsError):
                os.mkdir(STAGING_DIR, 0o700, dir_fd=root_fd)
        try:
            fd = os.open(STAGING_DIR, _DIR_FLAGS, dir_fd=root_fd)
        except FileNotFoundError:
            if create:
                raise
            return None
        except OSError as exc:
            if exc.errno in (errno.ELOOP, errno.ENOTDIR):
                raise UnsafePath(f"{where} is not a folder; remove it") from exc
            raise
    try:
        st = os.fstat(fd)
        if st.st_uid != os.geteuid():
            raise UnsafePath(
                f"{where} belongs to another user; remove it so dedupd can make its own"
            )
        if stat.S_IMODE(st.st_mode) & 0o077:
            if not create:
                raise UnsafePath(f"{where} is open to other users; not trusted")
            os.fchmod(fd, 0o700)
    except BaseException:
        os.close(fd)
        raise
    return fd


# Filesystems whose files may be another filesystem's files seen again (their own st_dev, so
# an inode compared across the two proves nothing): overlays and unions, FUSE (mergerfs,
# sshfs, a NAS's own share mounted back), network and VM shares.
_LAYERED = ("overlay", "aufs", "unionfs", "fuse", "nfs", "cifs", "smb", "9p", "virtiofs", "ceph")


def layered_filesystem(st: os.stat_result, path: str | PurePath) -> str | None:
    """The type of the filesystem holding `st` (the stat of a file at `path`) when it is one
    that may show another filesystem's files (`_LAYERED`: "overlay", "fuse.mergerfs", "nfs4"),
    else None. Looked up in /proc/self/mountinfo by the last, longest mount point holding
    `path` and by the file's device: layered when either is; None when there is no such
    table (not Linux)."""
    try:
        with open("/proc/self/mountinfo", encoding="utf-8", errors="replace") as f:
            lines = f.read().splitlines()
    except OSError:
        return None
    device = f"{os.major(st.st_dev)}:{os.minor(st.st_dev)}"
    where = os.path.realpath(os.fspath(path))
    by_device: str | None = None
    by_path: str | None = None
    longest = -1
    for line in lines:
        mine, _, theirs = line.partition(" - ")
        fields, tail = mine.split(), theirs.split()
        if len(fields) < 5 or not tail:
            continue
        kind = tail[0]
        point = fields[4].replace("\\040", " ").replace("\\011", "\t").replace("\\134", "\\")
        if fields[2] == device:
            by_device = kind
        inside = where == point or where.startswith(point.rstrip("/") + "/")
        if inside and len(point) >= longest:  # a later mount on the same point hides the
            by_path, longest = kind, len(point)  # earlier: the table lists them in order
    # Either says layered: an overlay whose layers are on other filesystems gives a file its
    # layer's device (review), and a mount hidden under another one may hold the device.
    for found in (by_path, by_device):
        if found is not None and found.split(".")[0].rstrip("0123456789") in _LAYERED:
            return found
    return None

