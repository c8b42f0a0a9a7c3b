"""YAML configuration → typed, frozen objects.

`load_config(path)` reads and validates; it sets up nothing and never exits. Every
error names the file, the key path (``policies.camera.threshold``) and what is allowed.
Unknown keys are errors, and an empty file is a valid configuration.
"""

from __future__ import annotations

import math
import os
import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Literal, TypeVar, get_args

import yaml

from dedupd.errors import ConfigError
from dedupd.hashers import HASHERS, Algorithm, validate_hash_size

__all__ = [
    "DEFAULT_POLICY",
    "REFERENCE_POLICY",
    "Action",
    "Config",
    "HashingConfig",
    "IndexConfig",
    "KeepRule",
    "Policy",
    "QuarantineConfig",
    "Root",
    "WatchConfig",
    "check_layout",
    "default_database_path",
    "default_socket_path",
    "load_config",
    "parse_duration",
]

Action = Literal["report", "quarantine", "delete"]
KeepRule = Literal["highest_resolution", "largest_file", "oldest", "newest"]
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
)
DEFAULT_IGNORE = (".*", "*.tmp", "*.part", "*.crdownload", "*.filepart", "~*")


def _cpu_count() -> int:
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1


@dataclass(frozen=True, slots=True)
class HashingConfig:
    algorithm: Algorithm = "phash"
    hash_size: int = 16
    workers: int = field(default_factory=_cpu_count)
    max_pixels: int = 180_000_000
    timeout: float = 120.0  # seconds one file may take in a worker before it is killed


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
class Policy:
    threshold: float | None = None  # None: the hasher's calibrated default
    exact: Action = "report"
    near: Action = "report"
    keep: tuple[KeepRule, ...] = ("highest_resolution", "largest_file", "oldest")
    dry_run: bool = False
    reference: bool = False  # files here are always keepers and are never acted on
    burst_seconds: float = 2.0  # near matches shot this close together are only reported
    act_on_existing: bool = False  # may act on an older file when the newcomer is better


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

    def root_policies(self) -> dict[str, Policy]:
        """Each root's policy, keyed by the root's resolved path as the store names it."""
        return {str(r.path.resolve()): self.policies[r.policy] for r in self.roots}

    def with_roots(self, paths: Sequence[Path]) -> Config:
        """The same config watching `paths` (command-line DIRs) under the default policy."""
        roots = tuple(Root(Path(p).expanduser().resolve()) for p in paths)
        config = replace(self, roots=roots)
        check_layout(config, names=[str(p) for p in paths])
        return config


def _inside(path: Path, folder: Path) -> bool:
    return path == folder or folder in path.parents


def check_layout(config: Config, *, names: Sequence[str] | None = None) -> None:
    """Roots must not overlap (a file would have two records and two policies), and no root
    may lie in the quarantine folder (it is never watched)."""
    source = str(config.source) if config.source else None
    real = [Path(os.path.realpath(r.path)) for r in config.roots]
    label = names or [f"roots[{i}].path" for i in range(len(real))]
    for j, b in enumerate(real):
        for i, a in enumerate(real[:j]):
            if _inside(a, b) or _inside(b, a):
                raise ConfigError(
                    f"{b} overlaps {label[i]} ({a}); roots must not contain each other",
                    source=source,
                    key=label[j],
                )
    if config.quarantine.path is None:
        return
    quarantine = Path(os.path.realpath(config.quarantine.path))
    for i, root in enumerate(real):
        if _inside(root, quarantine):
            raise ConfigError(
                f"{label[i]} ({root}) is inside the quarantine folder {quarantine}, which is "
                "never watched; move one of them",
                source=source,
                key="quarantine.path",
            )


def default_database_path(env: Mapping[str, str] | None = None) -> Path:
    env = os.environ if env is None else env
    if env.get("STATE_DIRECTORY"):  # systemd StateDirectory=; may list several, first wins
        return Path(env["STATE_DIRECTORY"].split(":")[0]) / "dedupd.db"
    state = env.get("XDG_STATE_HOME", "")
    if not os.path.isabs(state):  # the XDG spec: relative paths are invalid, ignore them
        state = str(Path("~/.local/state").expanduser())
    return Path(state) / "dedupd" / "dedupd.db"


def default_socket_path(env: Mapping[str, str] | None = None) -> Path:
    env = os.environ if env is None else env
    if env.get("RUNTIME_DIRECTORY"):
        return Path(env["RUNTIME_DIRECTORY"].split(":")[0]) / "dedupd.sock"
    if os.path.isabs(env.get("XDG_RUNTIME_DIR", "")):
        return Path(env["XDG_RUNTIME_DIR"]) / "dedupd.sock"
    return default_database_path(env).parent / "dedupd.sock"


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
    match = _DURATION.match(str(value))
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

    def _path(self, value: Any) -> Path:
        if not isinstance(value, str) or not value:
            raise ValueError(value)
        path = Path(os.path.expandvars(value)).expanduser()
        return path if path.is_absolute() else (self.base / path).resolve()


def _describe(value: object) -> str:
    return f"{value!r} ({type(value).__name__})"


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


def _workers(value: Any) -> int:
    return _cpu_count() if value == "auto" else _int_at_least(1)(value)


_HASHERS = tuple(HASHERS)
_ACTIONS: tuple[Action, ...] = get_args(Action)
_KEEP_RULES: tuple[KeepRule, ...] = get_args(KeepRule)
_BACKENDS: tuple[IndexBackend, ...] = get_args(IndexBackend)


def _hashing(r: _Reader) -> HashingConfig:
    r.only(("algorithm", "hash_size", "workers", "max_pixels", "timeout"))
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
        return tuple(e.lower().lstrip(".") for e in _string_list(value))

    return WatchConfig(
        settle_seconds=r.get("settle_seconds", d.settle_seconds, parse_duration, "a duration"),
        rescan_interval=r.get(
            "rescan_interval", d.rescan_interval, parse_duration, "a duration such as 1h or 90s"
        ),
        extensions=r.get("extensions", d.extensions, extensions, "a list of file extensions"),
        ignore=r.get("ignore", d.ignore, _string_list, "a list of glob patterns"),
    )


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
        )
    )
    d = Policy()

    def keep(value: Any) -> tuple[KeepRule, ...]:
        rules = _string_list(value)
        if not rules or any(rule not in _KEEP_RULES for rule in rules):
            raise ValueError(value)
        return rules  # type: ignore[return-value]

    near = r.choice("near", d.near, _ACTIONS)
    if near == "delete":
        r.fail(
            "delete is allowed only for exact duplicates; use quarantine or report for near ones",
            "near",
        )
    return Policy(
        threshold=r.get("threshold", d.threshold, _fraction, "a number between 0 and 1"),
        exact=r.choice("exact", d.exact, _ACTIONS),
        near=near,
        keep=r.get("keep", d.keep, keep, "a non-empty list of " + ", ".join(_KEEP_RULES)),
        dry_run=r.get("dry_run", d.dry_run, _bool, "true or false"),
        reference=r.get(
            "reference", r.path.endswith(f".{REFERENCE_POLICY}"), _bool, "true or false"
        ),
        burst_seconds=r.get("burst_seconds", d.burst_seconds, parse_duration, "a duration"),
        act_on_existing=r.get("act_on_existing", d.act_on_existing, _bool, "true or false"),
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
            rr.fail(f"names no policy; defined: {', '.join(sorted(policies))}", "policy")
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
        for field_name in ("exact", "near"):
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
    )
    check_layout(config)
    return config


def load_config(path: str | os.PathLike[str] | None) -> Config:
    """Read and validate `path`; None gives the built-in defaults. Raises ConfigError."""
    if path is None:
        return Config()
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise ConfigError(f"cannot read: {exc.strerror}", source=str(path)) from exc
    except UnicodeDecodeError as exc:
        raise ConfigError(
            f"not UTF-8 text ({exc.reason} at byte {exc.start})", source=str(path)
        ) from exc
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f"line {mark.line + 1}, column {mark.column + 1}: " if mark else ""
        problem = getattr(exc, "problem", None) or str(exc)
        raise ConfigError(f"{where}invalid YAML: {problem}", source=str(path)) from exc
    return _config(data, str(path), path.parent.resolve())
