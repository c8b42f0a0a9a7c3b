"""YAML configuration → typed, frozen objects.

`load_config(path)` reads and validates; it sets up nothing and never exits. Every
error names the file, the key path (``policies.camera.threshold``) and what is allowed.
Unknown keys are errors, and an empty file is a valid configuration.

The file is read through `SIGHUP` by a running daemon, so a hostile or broken one must fail
fast and small: its size, nesting depth and alias expansion are bounded before anything is
built, and error messages show at most a clipped excerpt of any value.
"""

from __future__ import annotations

import math
import os
import re
import reprlib
import select
import stat
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Literal, TypeVar, get_args

import yaml

from dedupd import safefs
from dedupd.errors import ConfigError
from dedupd.hashers import HASHERS, Algorithm, validate_hash_size

__all__ = [
    "DEFAULT_POLICY",
    "MAX_ALIASES",
    "MAX_CONFIG_BYTES",
    "MAX_DEPTH",
    "MAX_NODES",
    "MAX_VIDEO_FPS",
    "REFERENCE_POLICY",
    "SYSTEM_RUNTIME_DIR",
    "SYSTEM_STATE_DIR",
    "USER_RUNTIME_DIR",
    "Action",
    "Config",
    "HashingConfig",
    "IndexConfig",
    "Keep",
    "KeepRule",
    "Policy",
    "PreferFolders",
    "QuarantineConfig",
    "Root",
    "WatchConfig",
    "check_layout",
    "database_candidates",
    "default_database_path",
    "default_socket_path",
    "load_config",
    "parse_duration",
    "socket_candidates",
]

Action = Literal["report", "quarantine", "delete"]
KeepRule = Literal["highest_resolution", "largest_file", "original_name", "oldest", "newest"]
IndexBackend = Literal["hamming", "ckdtree"]

DEFAULT_POLICY = "default"
REFERENCE_POLICY = "reference"  # built in, and `reference: true` by default when redefined
DEFAULT_EXTENSIONS = (
    "jpg",
    "jpeg",
    "png",
    "webp",
    "gif",
    "bmp",
    "tif",
    "tiff",
    "heic",
    "heif",
    "avif",
    # clips (dedupd.video); an animated gif or webp is one too
    "mp4",
    "mov",
    "m4v",
    "3gp",
    "webm",
    "mkv",
    "avi",
)
DEFAULT_IGNORE = (".*", "*.tmp", "*.part", "*.crdownload", "*.filepart", "~*")

# Bounds on what a config file may ask of the YAML loader, which a running daemon calls on
# its one main thread at SIGHUP. A real config is a few KB and a few hundred values, nested 5
# deep, with a handful of aliases (settings shared by several policies); even 1,000 roots
# are about 5,000 values. Nine levels of nine aliases ("billion laughs") are 81 aliases in
# half a KB that expand to 10^9 values, so the expansion is what is counted, not the aliases.
# PyYAML's pure-Python loader takes about 0.25 s per 10,000 values, so MAX_NODES also bounds
# the time a hostile file costs; large scalars are cheap and bounded by MAX_CONFIG_BYTES.
MAX_CONFIG_BYTES = 1 << 20
MAX_ALIASES = 1_000
MAX_NODES = 10_000  # values with every alias expanded: what a walk over the result would see
MAX_DEPTH = 64  # PyYAML composes recursively: a deeper file would hit the recursion limit


def _cpu_count() -> int:
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1


@dataclass(frozen=True, slots=True)
class HashingConfig:
    algorithm: Algorithm = "phash"
    hash_size: int = 16
    workers: int = field(default_factory=_cpu_count)
    max_pixels: int = 180_000_000
    timeout: float = 120.0  # seconds one file may take in a worker before it is killed
    video_fps: float = 1.0  # frames of a clip sampled per second (dedupd.video)
    # The crop stage: local features computed for every photo, crop pairs found. Off, a photo
    # costs about half the CPU (no ORB, no verification) and no crop is ever found.
    crops: bool = True


@dataclass(frozen=True, slots=True)
class IndexConfig:
    backend: IndexBackend = "hamming"
    rebuild_every: int = 5000
    leaf_size: int = 16  # ckdtree only
    p: float = 1.0  # ckdtree only: Minkowski p (1 = Manhattan, which is Hamming on bits)


@dataclass(frozen=True, slots=True)
class WatchConfig:
    settle_seconds: float = 3.0
    rescan_interval: float = 3600.0
    extensions: tuple[str, ...] = DEFAULT_EXTENSIONS
    ignore: tuple[str, ...] = DEFAULT_IGNORE


@dataclass(frozen=True, slots=True)
class Root:
    path: Path
    policy: str = DEFAULT_POLICY


@dataclass(frozen=True, slots=True)
class PreferFolders:
    """Keep rule `{prefer_folders: [A, B]}`: a file under A beats one under B, which beats one
    elsewhere. Written as a rule, not a policy key, so its place in `keep` says what it
    outranks."""

    folders: tuple[Path, ...]

    def __str__(self) -> str:
        return f"prefer_folders({', '.join(map(str, self.folders))})"


Keep = KeepRule | PreferFolders


@dataclass(frozen=True, slots=True)
class Policy:
    threshold: float | None = None  # None: the hasher's calibrated default
    exact: Action = "report"
    near: Action = "report"
    # Exact copies tie on pixels and bytes, so for them `original_name` comes first; it
    # precedes `oldest` because a copy's mtime is often just when it arrived.
    keep: tuple[Keep, ...] = ("highest_resolution", "largest_file", "original_name", "oldest")
    dry_run: bool = False
    reference: bool = False  # files here are always keepers and are never acted on
    burst_seconds: float = 2.0  # near matches shot this close together are only reported
    act_on_existing: bool = False  # near: may act on an older file when the newcomer is better
    # near: a rotated or mirrored copy matches too (the newcomer's 8 variants are looked up)
    isometric: bool = True
    # crop: one photo is a cut of the other (report or quarantine the crop; the larger frame
    # is kept). Reported by default: a crop is often made on purpose.
    crop: Action = "report"


@dataclass(frozen=True, slots=True)
class QuarantineConfig:
    path: Path | None = None
    retain: float = 30 * 86400.0


@dataclass(frozen=True, slots=True)
class Config:
    source: Path | None = None
    database: Path = field(default_factory=lambda: default_database_path())
    socket: Path = field(default_factory=lambda: default_socket_path())
    dry_run: bool = False
    hashing: HashingConfig = HashingConfig()
    index: IndexConfig = IndexConfig()
    watch: WatchConfig = WatchConfig()
    roots: tuple[Root, ...] = ()
    policies: Mapping[str, Policy] = field(
        default_factory=lambda: {DEFAULT_POLICY: Policy(), REFERENCE_POLICY: Policy(reference=True)}
    )
    quarantine: QuarantineConfig = QuarantineConfig()
    # Groups of uids that write one person's photos (`owners`): a delete's or a purge's
    # keeper may belong to another account of the file's own group.
    owners: tuple[frozenset[int], ...] = ()

    def root_policies(self) -> dict[str, Policy]:
        """Each root's policy, keyed by the root's resolved path as the store names it."""
        return {str(safefs.trusted_path(r.path)): self.policies[r.policy] for r in self.roots}

    def policies_of(self, root: str) -> list[Policy]:
        """The policies of the roots the store may name `root`: as configured, or resolved
        now. Two when a root's folder was swapped for a link to another root since it was
        read (red team 11: the reference root's photos then took the other's policy)."""
        return [
            self.policies[r.policy]
            for r in self.roots
            if root in (str(r.path), str(safefs.trusted_path(r.path)))
        ]

    def with_roots(self, paths: Sequence[Path]) -> Config:
        """The same config watching `paths` (command-line DIRs) under the default policy."""
        roots = tuple(Root(safefs.trusted_path(Path(p).expanduser())) for p in paths)
        config = replace(self, roots=roots)
        check_layout(config, names=[str(p) for p in paths])
        return config


_PATH_CLIP = 200  # more room than other values get: a real path is rarely this long


def _inside(path: Path, folder: Path) -> bool:
    return path == folder or folder in path.parents


def check_layout(config: Config, *, names: Sequence[str] | None = None) -> None:
    """Roots must not overlap (a file would have two records and two policies), and no root
    may lie in the quarantine folder (it is never watched)."""
    source = str(config.source) if config.source else None
    real = [safefs.trusted_path(r.path) for r in config.roots]
    label = names or [f"roots[{i}].path" for i in range(len(real))]
    for j, b in enumerate(real):
        for i, a in enumerate(real[:j]):
            if _inside(a, b) or _inside(b, a):
                raise ConfigError(
                    f"{_clip(str(b), _PATH_CLIP)} overlaps {_clip(label[i], _PATH_CLIP)} "
                    f"({_clip(str(a), _PATH_CLIP)}); roots must not contain each other",
                    source=source,
                    key=label[j],
                )
    if config.quarantine.path is None:
        return
    quarantine = safefs.trusted_path(config.quarantine.path)
    for i, root in enumerate(real):
        if _inside(root, quarantine):
            raise ConfigError(
                f"{_clip(label[i], _PATH_CLIP)} ({_clip(str(root), _PATH_CLIP)}) is inside the "
                f"quarantine folder {_clip(str(quarantine), _PATH_CLIP)}, which is never "
                "watched; move one of them",
                source=source,
                key="quarantine.path",
            )


# Where the system unit (systemd/dedupd.service) keeps its state and its socket:
# StateDirectory=dedupd and RuntimeDirectory=dedupd of a system service.
SYSTEM_STATE_DIR = Path("/var/lib/dedupd")
SYSTEM_RUNTIME_DIR = Path("/run/dedupd")
# Where systemd-logind makes each user's runtime directory, /run/user/UID: the user unit's
# $XDG_RUNTIME_DIR, also where no session set the variable (cron, `su`).
USER_RUNTIME_DIR = Path("/run/user")


def default_database_path(env: Mapping[str, str] | None = None) -> Path:
    """Where the daemon keeps its database when neither --database nor `database:` says:
    the unit's $STATE_DIRECTORY (the system unit: /var/lib/dedupd), else
    $XDG_STATE_HOME/dedupd (~/.local/state/dedupd), for the user unit and a shell alike."""
    env = os.environ if env is None else env
    if env.get("STATE_DIRECTORY"):  # systemd StateDirectory=; may list several, first wins
        return Path(env["STATE_DIRECTORY"].split(":")[0]) / "dedupd.db"
    state = env.get("XDG_STATE_HOME", "")
    if not os.path.isabs(state):  # the XDG spec: relative paths are invalid, ignore them
        state = str(Path("~/.local/state").expanduser())
    return Path(state) / "dedupd" / "dedupd.db"


def default_socket_path(env: Mapping[str, str] | None = None) -> Path:
    """Where the daemon listens when neither --socket nor `socket:` says: the unit's
    $RUNTIME_DIRECTORY (the system unit: /run/dedupd; the user unit:
    $XDG_RUNTIME_DIR/dedupd), else $XDG_RUNTIME_DIR/dedupd, the same folder the user unit
    gets, so a daemon started in a shell is found where the unit's would be; else beside
    the default database."""
    env = os.environ if env is None else env
    if env.get("RUNTIME_DIRECTORY"):
        return Path(env["RUNTIME_DIRECTORY"].split(":")[0]) / "dedupd.sock"
    if os.path.isabs(env.get("XDG_RUNTIME_DIR", "")):
        return Path(env["XDG_RUNTIME_DIR"]) / "dedupd" / "dedupd.sock"
    return default_database_path(env).parent / "dedupd.sock"


def socket_candidates(
    env: Mapping[str, str] | None = None, *, system: Path | None = None
) -> tuple[Path, ...]:
    """Where dedupctl looks for a daemon when neither --socket nor `socket:` says, in order:
    this user's own (the user unit's, or a `dedupd run` in a shell), then the system unit's
    (usable by members of the service's group). Without $XDG_RUNTIME_DIR (a cron job), the
    user unit's place in /run/user/UID comes second."""
    env = os.environ if env is None else env
    own, shared = default_socket_path(env), (system or SYSTEM_RUNTIME_DIR) / "dedupd.sock"
    places = [own]
    if not env.get("RUNTIME_DIRECTORY") and not os.path.isabs(env.get("XDG_RUNTIME_DIR", "")):
        places.append(USER_RUNTIME_DIR / str(os.getuid()) / "dedupd" / "dedupd.sock")
    return tuple(dict.fromkeys([*places, shared]))


def database_candidates(
    env: Mapping[str, str] | None = None, *, system: Path | None = None
) -> tuple[Path, ...]:
    """Where dedupctl looks for a database to work on without a daemon, when neither
    --database nor `database:` says: the same places, in the same order, as
    `socket_candidates` looks for a daemon."""
    own, shared = default_database_path(env), (system or SYSTEM_STATE_DIR) / "dedupd.db"
    return (own,) if own == shared else (own, shared)


_DURATION = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(s|m|h|d|w)?\s*$")
_UNITS = {None: 1, "s": 1, "m": 60, "h": 3600, "d": 86400, "w": 7 * 86400}


def parse_duration(value: object) -> float:
    """'90s', '15m', '1h', '30d', '2w' or a number of seconds → seconds. Raises ValueError."""
    if isinstance(value, bool):
        raise ValueError(value)
    if isinstance(value, int | float):
        if not math.isfinite(value) or value < 0:
            raise ValueError(value)
        return float(value)
    if not isinstance(value, str):  # str() of a list or mapping could be any size
        raise ValueError(value)
    match = _DURATION.match(value)
    if not match:
        raise ValueError(value)
    return float(match.group(1)) * _UNITS[match.group(2)]


# -- validation ---------------------------------------------------------------------------

T = TypeVar("T")


class _Reader:
    """Validates one YAML mapping; remembers the key path so errors can name it."""

    def __init__(self, data: object, path: str, source: str | None, base: Path):
        self.source, self.path, self.base = source, path, base
        if data is None:
            data = {}
        if not isinstance(data, dict):
            self.fail(f"must be a mapping, got {_describe(data)}")
        self.data: dict[str, Any] = data  # type: ignore[assignment]

    def key(self, name: str) -> str:
        name = _clip(name)  # a key is user text too: a policy name may be megabytes long
        return f"{self.path}.{name}" if self.path else name

    def fail(self, message: str, name: str | None = None) -> None:
        raise ConfigError(message, source=self.source, key=self.key(name) if name else self.path)

    def only(self, allowed: Sequence[str]) -> None:
        for name in self.data:
            if name not in allowed:
                self.fail(f"unknown key; allowed here: {', '.join(allowed)}", str(name))

    def child(self, name: str) -> _Reader:
        return _Reader(self.data.get(name), self.key(name), self.source, self.base)

    def get(self, name: str, default: T, convert: Callable[[Any], T], allowed: str) -> T:
        if name not in self.data or self.data[name] is None:
            return default
        try:
            return convert(self.data[name])
        except (TypeError, ValueError):
            self.fail(f"must be {allowed}, got {_describe(self.data[name])}", name)
        raise AssertionError("unreachable")  # fail() always raises

    def choice(self, name: str, default: T, choices: Sequence[T]) -> T:
        def convert(value: Any) -> T:
            if value not in choices:
                raise ValueError(value)
            return value  # type: ignore[no-any-return]

        return self.get(name, default, convert, "one of " + ", ".join(map(str, choices)))

    def path_value(self, name: str, default: Path | None) -> Path | None:
        return self.get(name, default, self._path, "a path")

    def paths(self, value: Any) -> tuple[Path, ...]:
        """A non-empty list of folders, resolved as the store names roots (`trusted_path`)."""
        if not isinstance(value, list) or not value:
            raise ValueError(value)
        return tuple(safefs.trusted_path(self._path(v)) for v in value)

    def _path(self, value: Any) -> Path:
        if not isinstance(value, str) or not value:
            raise ValueError(value)
        path = Path(os.path.expandvars(value)).expanduser()
        # Relative to the config's folder, its links resolved; one that someone other than
        # root or dedupd's user made is not followed (a quarantine folder swapped for a link).
        return path if path.is_absolute() else safefs.trusted_path(self.base / path)


# repr() of a value from a config file does bounded work whatever the value: a few items of a
# collection, a few levels deep, the start of a string.
_REPR = reprlib.Repr()
_REPR.maxlevel, _REPR.maxstring, _REPR.maxother, _REPR.maxlong = 3, 60, 60, 40
_REPR.maxlist = _REPR.maxdict = _REPR.maxtuple = _REPR.maxset = 4

_CLIP = 60


def _clip(text: str, limit: int = _CLIP) -> str:
    """`text` cut to `limit` characters with an ellipsis: how any value a user wrote appears
    in a message, so a megabyte-long string cannot become a megabyte-long log line."""
    return text if len(text) <= limit else text[: limit - 1] + "…"


def _describe(value: object) -> str:
    return f"{_clip(_REPR.repr(value))} ({type(value).__name__})"


def _bool(value: Any) -> bool:
    if not isinstance(value, bool):
        raise ValueError(value)
    return value


def _int_at_least(low: int) -> Callable[[Any], int]:
    def convert(value: Any) -> int:
        if isinstance(value, bool) or not isinstance(value, int) or value < low:
            raise ValueError(value)
        return value

    return convert


def _fraction(value: Any) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float) or not 0 <= value <= 1:
        raise ValueError(value)
    return float(value)


def _string_list(value: Any) -> tuple[str, ...]:
    if not isinstance(value, list) or not all(isinstance(v, str) and v for v in value):
        raise ValueError(value)
    return tuple(value)


def _positive_duration(value: Any) -> float:
    seconds = parse_duration(value)
    if seconds <= 0:
        raise ValueError(value)
    return seconds


MAX_VIDEO_FPS = 30.0  # sampling more often than this decodes every frame and adds nothing


def _frame_rate(value: Any) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise ValueError(value)
    if not 0 < value <= MAX_VIDEO_FPS:
        raise ValueError(value)
    return float(value)


def _workers(value: Any) -> int:
    return _cpu_count() if value == "auto" else _int_at_least(1)(value)


_HASHERS = tuple(HASHERS)
_ACTIONS: tuple[Action, ...] = get_args(Action)
_KEEP_RULES: tuple[KeepRule, ...] = get_args(KeepRule)
_BACKENDS: tuple[IndexBackend, ...] = get_args(IndexBackend)


def _hashing(r: _Reader) -> HashingConfig:
    r.only(("algorithm", "hash_size", "workers", "max_pixels", "timeout", "video_fps", "crops"))
    d = HashingConfig()
    algorithm = r.choice("algorithm", d.algorithm, _HASHERS)
    hash_size = r.get("hash_size", d.hash_size, _int_at_least(1), "a positive integer")
    try:
        validate_hash_size(algorithm, hash_size)
    except ValueError as exc:
        r.fail(str(exc), "hash_size")
    return HashingConfig(
        algorithm=algorithm,
        hash_size=hash_size,
        workers=r.get("workers", d.workers, _workers, "'auto' or an integer >= 1"),
        max_pixels=r.get("max_pixels", d.max_pixels, _int_at_least(1), "an integer >= 1"),
        timeout=r.get("timeout", d.timeout, _positive_duration, "a duration > 0 such as 2m"),
        video_fps=r.get(
            "video_fps",
            d.video_fps,
            _frame_rate,
            f"a number of frames per second in (0, {MAX_VIDEO_FPS:g}]",
        ),
        crops=r.get("crops", d.crops, _bool, "true or false"),
    )


def _index(r: _Reader) -> IndexConfig:
    r.only(("backend", "rebuild_every", "leaf_size", "p"))
    d = IndexConfig()

    def p_value(value: Any) -> float:
        if isinstance(value, bool) or not isinstance(value, int | float) or value < 1:
            raise ValueError(value)
        return float(value)

    return IndexConfig(
        backend=r.choice("backend", d.backend, _BACKENDS),
        rebuild_every=r.get("rebuild_every", d.rebuild_every, _int_at_least(1), "an integer >= 1"),
        leaf_size=r.get("leaf_size", d.leaf_size, _int_at_least(1), "an integer >= 1"),
        p=r.get("p", d.p, p_value, "a number >= 1 (Minkowski p)"),
    )


def _watch(r: _Reader) -> WatchConfig:
    r.only(("settle_seconds", "rescan_interval", "extensions", "ignore"))
    d = WatchConfig()

    def extensions(value: Any) -> tuple[str, ...]:
        found = tuple(e.lower().lstrip(".") for e in _string_list(value))
        if not found or not all(found):  # nothing would be a photo: roots would look unmounted
            raise ValueError(value)
        return found

    def interval(value: Any) -> float:
        seconds = parse_duration(value)
        if seconds < 1:  # 0 reconciled every root without a pause
            raise ValueError(value)
        return seconds

    return WatchConfig(
        settle_seconds=r.get("settle_seconds", d.settle_seconds, parse_duration, "a duration"),
        rescan_interval=r.get(
            "rescan_interval", d.rescan_interval, interval, "a duration >= 1s such as 1h or 90s"
        ),
        extensions=r.get(
            "extensions", d.extensions, extensions, "a non-empty list of file extensions"
        ),
        ignore=r.get("ignore", d.ignore, _string_list, "a list of glob patterns"),
    )


def _keep(r: _Reader, default: tuple[Keep, ...]) -> tuple[Keep, ...]:
    """`keep`: rule names, and `{prefer_folders: [...]}` mappings, in order."""
    value = r.data.get("keep")
    if value is None:
        return default
    allowed = "a non-empty list of " + ", ".join(_KEEP_RULES) + " or {prefer_folders: [folders]}"
    if not isinstance(value, list) or not value:
        r.fail(f"must be {allowed}, got {_describe(value)}", "keep")
    rules: list[Keep] = []
    for i, item in enumerate(value):
        if isinstance(item, str) and item in _KEEP_RULES:
            rules.append(item)
        elif isinstance(item, dict):
            rr = _Reader(item, f"{r.key('keep')}[{i}]", r.source, r.base)
            rr.only(("prefer_folders",))
            none: tuple[Path, ...] = ()
            folders = rr.get("prefer_folders", none, rr.paths, "a non-empty list of folders")
            if not folders:
                rr.fail("is required: a non-empty list of folders", "prefer_folders")
            if len(set(folders)) != len(folders):
                rr.fail(f"lists a folder twice: {', '.join(map(str, folders))}", "prefer_folders")
            rules.append(PreferFolders(folders))
        else:
            r.fail(f"must be {allowed}, got {_describe(value)}", "keep")
    return tuple(rules)


def _policy(r: _Reader) -> Policy:
    r.only(
        (
            "threshold",
            "exact",
            "near",
            "keep",
            "dry_run",
            "reference",
            "burst_seconds",
            "act_on_existing",
            "isometric",
            "crop",
        )
    )
    d = Policy()

    near = r.choice("near", d.near, _ACTIONS)
    if near == "delete":
        r.fail(
            "delete is allowed only for exact duplicates; use quarantine or report for near ones",
            "near",
        )
    crop = r.choice("crop", d.crop, _ACTIONS)
    if crop == "delete":
        r.fail("delete is allowed only for exact duplicates; use quarantine or report", "crop")
    return Policy(
        threshold=r.get("threshold", d.threshold, _fraction, "a number between 0 and 1"),
        exact=r.choice("exact", d.exact, _ACTIONS),
        near=near,
        keep=_keep(r, d.keep),
        dry_run=r.get("dry_run", d.dry_run, _bool, "true or false"),
        reference=r.get(
            "reference", r.path.endswith(f".{REFERENCE_POLICY}"), _bool, "true or false"
        ),
        burst_seconds=r.get("burst_seconds", d.burst_seconds, parse_duration, "a duration"),
        act_on_existing=r.get("act_on_existing", d.act_on_existing, _bool, "true or false"),
        isometric=r.get("isometric", d.isometric, _bool, "true or false"),
        crop=crop,
    )


def _config(data: object, source: str | None, base: Path) -> Config:
    top = _Reader(data, "", source, base)
    top.only(
        (
            "database",
            "socket",
            "dry_run",
            "hashing",
            "index",
            "watch",
            "roots",
            "policies",
            "quarantine",
            "owners",
        )
    )
    policies: dict[str, Policy] = {
        DEFAULT_POLICY: Policy(),
        REFERENCE_POLICY: Policy(reference=True),
    }
    pr = top.child("policies")
    for name in pr.data:
        if not isinstance(name, str) or not name:
            pr.fail(f"policy names must be non-empty strings, got {_describe(name)}")
        policies[name] = _policy(pr.child(name))

    roots: list[Root] = []
    raw_roots = top.data.get("roots")
    raw_roots = [] if raw_roots is None else raw_roots
    if not isinstance(raw_roots, list):
        top.fail(
            f"must be a list of {{path, policy}} mappings, got {_describe(raw_roots)}", "roots"
        )
    for i, item in enumerate(raw_roots):
        rr = _Reader(item, f"roots[{i}]", source, base)
        rr.only(("path", "policy"))
        path = rr.path_value("path", None)
        if path is None:
            rr.fail("is required", "path")
        policy = rr.get("policy", DEFAULT_POLICY, str, "a policy name")
        if policy not in policies:
            names = _clip(", ".join(sorted(policies)), 4 * _CLIP)
            rr.fail(f"names no policy; defined: {names}", "policy")
        roots.append(Root(path, policy))  # type: ignore[arg-type]

    qr = top.child("quarantine")
    qr.only(("path", "retain"))
    quarantine = QuarantineConfig(
        path=qr.path_value("path", None),
        retain=qr.get(
            "retain", QuarantineConfig().retain, parse_duration, "a duration such as 30d"
        ),
    )
    for name, defined in policies.items():
        for field_name in ("exact", "near", "crop"):
            if getattr(defined, field_name) == "quarantine" and quarantine.path is None:
                pr.fail(
                    "quarantine needs a quarantine folder: set quarantine.path",
                    f"{name}.{field_name}",
                )
    defaults = Config()
    config = Config(
        source=Path(source) if source else None,
        database=top.path_value("database", defaults.database) or defaults.database,
        socket=top.path_value("socket", defaults.socket) or defaults.socket,
        dry_run=top.get("dry_run", False, _bool, "true or false"),
        hashing=_hashing(top.child("hashing")),
        index=_index(top.child("index")),
        watch=_watch(top.child("watch")),
        roots=tuple(roots),
        policies=policies,
        quarantine=quarantine,
        owners=_owners(top),
    )
    check_layout(config)
    return config


def _owners(top: _Reader) -> tuple[frozenset[int], ...]:
    """`owners`: a list of groups, each a list of two or more accounts (user names, or uids)
    that write one person's photos. Names are looked up now: a name this machine does not
    know, or an account in two groups, is an error."""
    import pwd

    raw = top.data.get("owners")
    if raw is None:
        return ()
    allowed = "a list of groups, each a list of two or more user names or uids"
    if not isinstance(raw, list):
        top.fail(f"must be {allowed}, got {_describe(raw)}", "owners")
    groups: list[frozenset[int]] = []
    seen: dict[int, int] = {}
    for i, group in enumerate(raw):
        key = f"owners[{i}]"
        if not isinstance(group, list) or len(group) < 2:
            top.fail(f"must be two or more user names or uids, got {_describe(group)}", key)
        uids: set[int] = set()
        for account in group:
            if isinstance(account, bool) or not isinstance(account, (str, int)):
                top.fail(f"must be user names or uids, got {_describe(account)}", key)
            if isinstance(account, int):
                if account < 0:
                    top.fail(f"a uid is 0 or more, got {account}", key)
                uid = account
            else:
                try:
                    uid = pwd.getpwnam(account).pw_uid
                except KeyError:
                    top.fail(f"no user named {_clip(account)!r} on this machine", key)
            if uid in seen and seen[uid] != i:
                top.fail(f"uid {uid} is in owners[{seen[uid]}] too: merge the two groups", key)
            seen[uid] = i
            uids.add(uid)
        groups.append(frozenset(uids))
    return tuple(groups)


# -- loading ------------------------------------------------------------------------------


class _Refused(yaml.MarkedYAMLError):
    """Valid YAML that dedupd will not load: it would take too much time or memory."""


class _BoundedLoader(yaml.SafeLoader):
    """SafeLoader that refuses, while composing and before constructing anything, a document
    nested deeper than MAX_DEPTH, with more than MAX_ALIASES aliases, or that would have more
    than MAX_NODES nodes with every alias expanded (each alias counts as the size of what it
    repeats, so nested aliases are counted by what they multiply to)."""

    def __init__(self, stream: str) -> None:
        super().__init__(stream)
        self._aliases = 0
        self._nodes = 0  # composed so far, aliases expanded
        self._depth = 0
        self._size: dict[int, int] = {}  # id(finished node) → its size, aliases expanded

    def _refuse(self, problem: str, mark: yaml.Mark | None) -> None:
        raise _Refused(problem=f"refused: {problem}", problem_mark=mark)

    def _count(self, nodes: int, mark: yaml.Mark | None) -> None:
        self._nodes += nodes
        if self._nodes > MAX_NODES:
            self._refuse(
                f"more than {MAX_NODES} values once aliases are expanded (a YAML bomb?); "
                "dedupd refuses such files so that loading one stays fast and small",
                mark,
            )

    def compose_node(self, parent: yaml.Node | None, index: int) -> yaml.Node | None:
        event = self.peek_event()  # type: ignore[no-untyped-call]  # untyped in types-PyYAML
        if self.check_event(yaml.AliasEvent):
            self._aliases += 1
            if self._aliases > MAX_ALIASES:
                self._refuse(f"more than {MAX_ALIASES} aliases (*name)", event.start_mark)
            target = self.anchors.get(event.anchor)
            if target is not None:  # an undefined alias is reported by PyYAML below
                size = self._size.get(id(target))
                if size is None:  # the anchor's node is still being composed
                    self._refuse(
                        f"alias *{_clip(str(event.anchor))} refers to a value that contains it",
                        event.start_mark,
                    )
                self._count(size or 0, event.start_mark)
            return super().compose_node(parent, index)
        if self._depth >= MAX_DEPTH:
            self._refuse(f"nested more than {MAX_DEPTH} levels deep", event.start_mark)
        before = self._nodes
        self._depth += 1
        node = super().compose_node(parent, index)
        self._depth -= 1
        self._count(1, event.start_mark)
        if node is not None:
            self._size[id(node)] = self._nodes - before
        return node


PIPE_WAIT = 2.0  # seconds a config that is no regular file (a pipe) may take to arrive


def _read_limited(path: Path) -> str:
    """The file's text, refusing one larger than MAX_CONFIG_BYTES (or endless, like
    /dev/zero) before reading more than that. A config that is no regular file (`--config
    <(…)`, a FIFO) is read as it comes, for at most PIPE_WAIT seconds: a FIFO nobody writes
    put in place of the config blocked a reload (SIGHUP) for good, and with it the daemon."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC)  # a FIFO: no wait
    except OSError as exc:
        raise ConfigError(f"cannot read: {exc.strerror}", source=str(path)) from exc
    try:
        if stat.S_ISREG(os.fstat(fd).st_mode):
            os.set_blocking(fd, True)
            with os.fdopen(os.dup(fd), "rb") as f:
                raw = f.read(MAX_CONFIG_BYTES + 1)
        else:
            raw = _read_arriving(fd, MAX_CONFIG_BYTES + 1, path)
    except OSError as exc:
        raise ConfigError(f"cannot read: {exc.strerror}", source=str(path)) from exc
    finally:
        os.close(fd)
    if len(raw) > MAX_CONFIG_BYTES:
        raise ConfigError(
            f"refused: larger than {MAX_CONFIG_BYTES >> 20} MiB; a dedupd config is a few KB",
            source=str(path),
        )
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise ConfigError(
            f"not UTF-8 text ({exc.reason} at byte {exc.start})", source=str(path)
        ) from exc


def _read_arriving(fd: int, limit: int, path: Path) -> bytes:
    """Up to `limit` bytes from a pipe or device, until its end, within PIPE_WAIT seconds.
    Nothing at all is an error, not an empty config: a FIFO no one has opened for writing
    reads as ended at once."""
    chunks: list[bytes] = []
    size, deadline = 0, time.monotonic() + PIPE_WAIT
    while size < limit:
        left = deadline - time.monotonic()
        if left <= 0 or not select.select([fd], [], [], left)[0]:
            raise ConfigError(
                f"not a regular file, and its text did not arrive within {PIPE_WAIT:g} s",
                source=str(path),
            )
        try:
            chunk = os.read(fd, min(1 << 16, limit - size))
        except BlockingIOError:
            continue
        if not chunk:
            break
        chunks.append(chunk)
        size += len(chunk)
    if not chunks:
        raise ConfigError("not a regular file, and nothing to read", source=str(path))
    return b"".join(chunks)


def socket_of(path: str | os.PathLike[str]) -> Path | None:
    """The `socket:` a config file names, read from a file that does not load as a whole (a
    typo elsewhere): where dedupctl still finds its daemon. None when the file cannot be
    read as YAML or names no valid socket path."""
    try:
        base = Path(path).parent.resolve()
        data = yaml.load(_read_limited(Path(path)), Loader=_BoundedLoader)
        reader = _Reader(data, "", str(path), base)
        return reader.path_value("socket", None)
    except (ConfigError, yaml.YAMLError, ValueError, OverflowError, OSError):
        return None


def load_config(path: str | os.PathLike[str] | None) -> Config:
    """Read and validate `path`; None gives the built-in defaults. Raises ConfigError."""
    if path is None:
        return Config()
    path = Path(path)
    text = _read_limited(path)
    try:
        data = yaml.load(text, Loader=_BoundedLoader)  # a SafeLoader: plain data only
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f"line {mark.line + 1}, column {mark.column + 1}: " if mark else ""
        problem = _clip(getattr(exc, "problem", None) or str(exc), 4 * _CLIP)
        kind = "" if isinstance(exc, _Refused) else "invalid YAML: "
        raise ConfigError(f"{where}{kind}{problem}", source=str(path)) from exc
    except (ValueError, OverflowError) as exc:
        # PyYAML lets a few constructor errors through untyped: a date like 2024-13-45, an
        # integer longer than Python's 4300-digit limit.
        raise ConfigError(
            f"invalid YAML value: {_clip(str(exc), 4 * _CLIP)}", source=str(path)
        ) from exc
    return _config(data, str(path), path.parent.resolve())
