"""dedupd.config: defaults, the spec's example, and errors that name file, key and fix."""

from __future__ import annotations

import dataclasses
import os
from pathlib import Path

import pytest

from dedupd.config import (
    DEFAULT_POLICY,
    MAX_ALIASES,
    MAX_NODES,
    HashingConfig,
    IndexConfig,
    Policy,
    QuarantineConfig,
    Root,
    WatchConfig,
    database_candidates,
    default_database_path,
    default_socket_path,
    load_config,
    parse_duration,
    socket_candidates,
)
from dedupd.errors import ConfigError, DedupdError
from dedupd.hashers import HASHERS

SPEC_EXAMPLE = """\
database: ~/.local/state/dedupd/dedupd.db
socket: null
dry_run: false
hashing: {algorithm: phash, hash_size: 16, workers: auto, max_pixels: 180000000}
index: {backend: hamming, rebuild_every: 5000}
watch:
  settle_seconds: 3
  rescan_interval: 1h
  extensions: [jpg, jpeg, png, webp, gif, bmp, tif, tiff, heic, heif, avif]
  ignore: [".*", "*.tmp", "*.part", "*.crdownload", "*.filepart", "~*"]
roots:
  - {path: /srv/photos/uploads, policy: camera}
  - {path: /srv/photos/archive, policy: reference}
policies:
  camera: {threshold: 0.1, exact: delete, near: quarantine, keep: [highest_resolution, largest_file, oldest]}
  reference: {near: report, exact: report}
quarantine: {path: /srv/photos/.dedupd-quarantine, retain: 30d}
"""  # noqa: E501 (verbatim from the spec)

DAY = 86400.0


def _cpus() -> int:
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1


def _write(tmp_path: Path, text: str, name: str = "dedupd.yaml") -> Path:
    path = tmp_path / name
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text, encoding="utf-8")
    return path


# -- defaults and the spec example -----------------------------------------------------------


def test_no_config_file_gives_the_documented_defaults() -> None:
    """load_config(None) is the built-in configuration: phash/16, a 2-minute decode timeout,
    hamming index, 3 s settle, hourly rescan, 30-day quarantine retention and a report-only
    "default" policy."""
    config = load_config(None)
    assert config.source is None
    assert (config.hashing.algorithm, config.hashing.hash_size) == ("phash", 16)
    assert config.hashing.workers == _cpus()
    assert config.hashing.timeout == 120.0
    assert config.index.backend == "hamming"
    assert config.watch.settle_seconds == 3.0
    assert config.watch.rescan_interval == 3600.0
    assert config.quarantine.retain == 30 * DAY
    assert config.quarantine.path is None
    assert config.roots == ()
    assert config.dry_run is False
    default = config.policies[DEFAULT_POLICY]
    assert (default.exact, default.near) == ("report", "report")
    assert config.database == default_database_path()
    assert config.socket == default_socket_path()


@pytest.mark.parametrize("text", ["", "# nothing configured yet\n", "---\n"])
def test_an_empty_config_file_is_valid_and_gives_defaults(tmp_path: Path, text: str) -> None:
    """An empty (or comment-only) file is a valid configuration equal to the defaults, apart
    from remembering which file it came from."""
    path = _write(tmp_path, text)
    config = load_config(path)
    assert config.source == path
    assert dataclasses.replace(config, source=None) == load_config(None)


def test_the_spec_example_loads_with_every_value_parsed(tmp_path: Path) -> None:
    """The full example from the spec is accepted and each value arrives typed: ~ expanded,
    null socket → default, 'auto' workers → CPU count, '1h'/'30d' → seconds, roots bound to
    their policies, and the implicit "default" policy still present."""
    path = _write(tmp_path, SPEC_EXAMPLE)
    config = load_config(path)
    assert config.source == path
    assert config.database == Path.home() / ".local/state/dedupd/dedupd.db"
    assert config.socket == default_socket_path()
    assert config.dry_run is False
    assert config.hashing == HashingConfig("phash", 16, workers=_cpus(), max_pixels=180_000_000)
    assert config.index == IndexConfig(backend="hamming", rebuild_every=5000)
    assert config.watch == WatchConfig(
        settle_seconds=3.0,
        rescan_interval=3600.0,
        extensions=(
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
        ),
        ignore=(".*", "*.tmp", "*.part", "*.crdownload", "*.filepart", "~*"),
    )
    assert config.roots == (
        Root(Path("/srv/photos/uploads"), "camera"),
        Root(Path("/srv/photos/archive"), "reference"),
    )
    assert dict(config.policies) == {
        DEFAULT_POLICY: Policy(),
        "camera": Policy(
            threshold=0.1,
            exact="delete",
            near="quarantine",
            keep=("highest_resolution", "largest_file", "oldest"),
        ),
        "reference": Policy(exact="report", near="report", reference=True),  # by its name
    }
    assert config.quarantine == QuarantineConfig(Path("/srv/photos/.dedupd-quarantine"), 30 * DAY)


def test_relative_paths_resolve_against_the_config_files_directory(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Relative database, socket, root and quarantine paths are relative to the directory
    holding the config file, not to the daemon's working directory."""
    path = _write(
        tmp_path,
        "database: state/dedupd.db\n"
        "socket: ../run/dedupd.sock\n"
        "roots: [{path: photos}]\n"
        "quarantine: {path: .quarantine, retain: 1w}\n",
        name="etc/dedupd.yaml",
    )
    elsewhere = tmp_path / "cwd"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)
    config = load_config(path)
    base = tmp_path.resolve() / "etc"
    assert config.database == base / "state/dedupd.db"
    assert config.socket == tmp_path.resolve() / "run/dedupd.sock"
    assert config.roots == (Root(base / "photos", DEFAULT_POLICY),)
    assert config.quarantine == QuarantineConfig(base / ".quarantine", 7 * DAY)


def test_boundary_values_are_accepted(tmp_path: Path) -> None:
    """Validation is not stricter than documented: thresholds 0 and 1, an explicit worker
    count, a decode timeout with a unit, whash with a power-of-two size, the ckdtree backend
    with p=2 and real booleans."""
    path = _write(
        tmp_path,
        "dry_run: true\n"
        "hashing: {algorithm: whash, hash_size: 8, workers: 3, timeout: 2m}\n"
        "index: {backend: ckdtree, p: 2, leaf_size: 4}\n"
        "watch: {extensions: [.JPG, png]}\n"
        "policies:\n"
        "  a: {threshold: 0, keep: [newest]}\n"
        "  b: {threshold: 1, dry_run: true}\n",
    )
    config = load_config(path)
    assert config.dry_run is True
    assert config.hashing == HashingConfig("whash", 8, workers=3, timeout=120.0)
    assert config.index == IndexConfig(backend="ckdtree", p=2.0, leaf_size=4)
    assert config.watch.extensions == ("jpg", "png")
    assert config.policies["a"] == Policy(threshold=0.0, keep=("newest",))
    assert config.policies["b"] == Policy(threshold=1.0, dry_run=True)


# -- errors ----------------------------------------------------------------------------------

ALGORITHMS = list(HASHERS)

# (yaml text, exact key path or None when the error has no key, fragments the message must hold)
BAD_CONFIGS = {
    "unknown-top-level-key": ("colour: red\n", "colour", ["unknown key", "hashing", "policies"]),
    "unknown-nested-key": (
        "hashing: {colour: red}\n",
        "hashing.colour",
        ["unknown key", "algorithm", "hash_size", "workers"],
    ),
    "threshold-above-one": (
        "policies: {camera: {threshold: 1.5}}\n",
        "policies.camera.threshold",
        ["between 0 and 1", "1.5"],
    ),
    "threshold-not-a-number": (
        "policies: {camera: {threshold: high}}\n",
        "policies.camera.threshold",
        ["between 0 and 1", "'high'"],
    ),
    "near-delete": (
        "policies: {camera: {near: delete}}\n",
        "policies.camera.near",
        ["delete", "only for exact duplicates"],
    ),
    "unknown-algorithm": (
        "hashing: {algorithm: md5}\n",
        "hashing.algorithm",
        ["'md5'", *ALGORITHMS],
    ),
    "whash-size-not-power-of-two": (
        "hashing: {algorithm: whash, hash_size: 12}\n",
        "hashing.hash_size",
        ["power of two", "12"],
    ),
    "zero-workers": ("hashing: {workers: 0}\n", "hashing.workers", ["'auto'", ">= 1"]),
    "zero-timeout": ("hashing: {timeout: 0}\n", "hashing.timeout", ["duration > 0", "0"]),
    "timeout-not-a-duration": (
        "hashing: {timeout: forever}\n",
        "hashing.timeout",
        ["duration > 0", "'forever'"],
    ),
    "unknown-backend": (
        "index: {backend: faiss}\n",
        "index.backend",
        ["'faiss'", "hamming", "ckdtree"],
    ),
    "bad-duration": (
        "watch: {rescan_interval: soon}\n",
        "watch.rescan_interval",
        ["duration", "'soon'"],
    ),
    "no-pause-between-rescans": (
        "watch: {rescan_interval: 0}\n",
        "watch.rescan_interval",
        [">= 1s", "0"],
    ),
    "no-extensions": (
        "watch: {extensions: []}\n",
        "watch.extensions",
        ["non-empty list", "[]"],
    ),
    "an-empty-extension": (
        "watch: {extensions: [jpg, '.']}\n",
        "watch.extensions",
        ["non-empty list"],
    ),
    "root-names-undefined-policy": (
        "policies: {camera: {}}\nroots: [{path: /a, policy: camera}, {path: /b, policy: cmaera}]\n",
        "roots[1].policy",
        ["names no policy", "camera", DEFAULT_POLICY],
    ),
    "root-without-path": ("roots: [{policy: default}]\n", "roots[0].path", ["required"]),
    "roots-not-a-list": ("roots: /srv/photos\n", "roots", ["must be a list", "'/srv/photos'"]),
    "top-level-list": ("- hashing\n- index\n", None, ["must be a mapping", "list"]),
    "section-not-a-mapping": ("hashing: phash\n", "hashing", ["must be a mapping"]),
    "invalid-yaml": (
        "hashing: {algorithm: phash\n  hash_size: 3\n",
        None,
        ["invalid YAML", "line 2"],
    ),
    "unknown-keep-rule": (
        "policies: {camera: {keep: [biggest]}}\n",
        "policies.camera.keep",
        ["'biggest'", "highest_resolution", "largest_file", "oldest", "newest"],
    ),
    "empty-keep-list": (
        "policies: {camera: {keep: []}}\n",
        "policies.camera.keep",
        ["non-empty", "highest_resolution"],
    ),
    "string-for-bool": ('dry_run: "yes"\n', "dry_run", ["true or false", "'yes'"]),
    "string-for-policy-bool": (
        'policies: {camera: {dry_run: "no"}}\n',
        "policies.camera.dry_run",
        ["true or false", "'no'"],
    ),
    "string-for-isometric": (
        "policies: {camera: {isometric: sometimes}}\n",
        "policies.camera.isometric",
        ["true or false", "'sometimes'"],
    ),
    "owners-not-a-list": ("owners: alice\n", "owners", ["a list of groups", "'alice'"]),
    "owners-group-of-one": ("owners: [[root]]\n", "owners[0]", ["two or more", "['root']"]),
    "owners-unknown-user": (
        "owners: [[root, no-such-user-here]]\n",
        "owners[0]",
        ["no user named 'no-such-user-here'"],
    ),
    "owners-negative-uid": ("owners: [[0, -1]]\n", "owners[0]", ["0 or more", "-1"]),
    "owners-not-an-account": ("owners: [[0, true]]\n", "owners[0]", ["user names or uids"]),
    "owners-account-in-two-groups": (
        "owners: [[0, 1000], [2000, root]]\n",
        "owners[1]",
        ["uid 0 is in owners[0] too", "merge"],
    ),
}


def test_owners_groups_user_names_and_uids_by_uid(tmp_path: Path) -> None:
    """`owners` names accounts by user name or uid; each group is kept as the set of uids
    (names looked up on this machine: root is uid 0), and no group is the default."""
    config = load_config(_write(tmp_path, "owners: [[root, 1234], [4321, 4322, 4323]]\n"))
    assert config.owners == (frozenset({0, 1234}), frozenset({4321, 4322, 4323}))
    assert load_config(_write(tmp_path, "dry_run: false\n")).owners == ()


def test_isometric_is_on_by_default_and_can_be_turned_off(tmp_path: Path) -> None:
    """Rotated and mirrored copies match unless a policy says `isometric: false`."""
    config = load_config(
        _write(tmp_path, "policies: {camera: {isometric: false}, phone: {}}\n")
    )
    assert config.policies["camera"].isometric is False
    assert config.policies["phone"].isometric is True
    assert config.policies[DEFAULT_POLICY].isometric is True


@pytest.mark.parametrize(
    ("text", "key", "fragments"), list(BAD_CONFIGS.values()), ids=list(BAD_CONFIGS)
)
def test_bad_config_names_file_key_and_what_is_allowed(
    tmp_path: Path, text: str, key: str | None, fragments: list[str]
) -> None:
    """Every rejected setting raises ConfigError (a DedupdError, so the CLI can report it)
    whose message names the file, the exact key path and what would be accepted."""
    path = _write(tmp_path, text)
    with pytest.raises(ConfigError) as caught:
        load_config(path)
    error = caught.value
    message = str(error)
    assert isinstance(error, DedupdError)
    assert error.source == str(path)
    assert str(path) in message
    if key is None:
        assert not error.key
    else:
        assert error.key == key
        assert f": {key}: " in message
    for fragment in fragments:
        assert fragment in message


@pytest.mark.parametrize("make", ["missing", "directory"])
def test_unreadable_config_file_is_a_config_error_naming_it(tmp_path: Path, make: str) -> None:
    """A missing file or a directory given as the config raises ConfigError naming the path
    (never a bare OSError that would escape the CLI's error handling)."""
    path = tmp_path / "dedupd.yaml"
    if make == "directory":
        path.mkdir()
    with pytest.raises(ConfigError, match="cannot read") as caught:
        load_config(path)
    assert str(path) in str(caught.value)


def test_config_file_that_is_not_utf8_is_a_config_error(tmp_path: Path) -> None:
    """A Latin-1 file (é in a comment) raises ConfigError naming the file and UTF-8, not a
    UnicodeDecodeError that escapes the CLI's DedupdError handling."""
    path = tmp_path / "dedupd.yaml"
    path.write_bytes(b"# caf\xe9 photos\ndry_run: false\n")
    with pytest.raises(ConfigError) as caught:
        load_config(path)
    assert str(path) in str(caught.value)
    assert "utf-8" in str(caught.value).lower()


# -- hostile files ---------------------------------------------------------------------------


def yaml_bomb(levels: int = 9, width: int = 9) -> str:
    """ "Billion laughs": each level lists `width` aliases of the one before, so the value of
    `dry_run` expands to width**levels strings (10^9 for the classic 9x9) in half a KB. It sits
    under a known key whose check echoes the value, where it used to be expanded by repr()."""
    chain = ["&l0 [lol]"]
    for i in range(1, levels + 1):
        chain.append(f"&l{i} [" + ", ".join([f"*l{i - 1}"] * width) + "]")
    return "dry_run: [" + ", ".join(chain) + "]\n"


@pytest.mark.parametrize(
    "levels", [5, 9], ids=["5-levels-59k-values", "classic-9-levels-a-billion-values"]
)
def test_a_billion_laughs_config_is_refused_with_a_short_message(
    tmp_path: Path, levels: int
) -> None:
    """Nested aliases are counted as what they expand to and refused while the file is read,
    before any value is built or shown: a short ConfigError naming the file and the reason,
    not gigabytes of message (the 5-level case fails fast on code without the bound)."""
    path = _write(tmp_path, yaml_bomb(levels))
    with pytest.raises(ConfigError) as caught:
        load_config(path)
    message = str(caught.value)
    assert len(message) < 500, message[:500]
    assert message.startswith(f"{path}: line 1, column ")
    assert f"more than {MAX_NODES} values once aliases are expanded (a YAML bomb?)" in message


def test_anchors_aliases_and_merge_keys_for_shared_settings_still_load(tmp_path: Path) -> None:
    """The everyday use of aliases (one policy reused, one keep list shared, a merge key
    overriding one setting) is far under the bounds and loads as written."""
    path = _write(
        tmp_path,
        "quarantine: {path: q}\n"
        "policies:\n"
        "  camera: &strict {exact: delete, near: quarantine, keep: &keep [oldest, largest_file]}\n"
        "  phone: *strict\n"
        "  scans: {<<: *strict, near: report}\n"
        "  archive: {keep: *keep}\n",
    )
    policies = load_config(path).policies
    strict = Policy(exact="delete", near="quarantine", keep=("oldest", "largest_file"))
    assert policies["camera"] == policies["phone"] == strict
    assert policies["scans"] == dataclasses.replace(strict, near="report")
    assert policies["archive"].keep == ("oldest", "largest_file")


HUGE_VALUES = {
    # name: (document, what the message says)
    "10-MB-string": ('dry_run: "' + "x" * 10_000_000 + '"\n', "refused: larger than 1 MiB"),
    "100k-item-list": (
        "dry_run: [" + ", ".join(["x"] * 100_000) + "]\n",
        f"refused: more than {MAX_NODES} values",
    ),
    "900-KB-string-as-duration": (
        "watch: {settle_seconds: " + "9" * 900_000 + "x}\n",
        "watch.settle_seconds: must be a duration, got '99999",
    ),
    "9k-item-list-as-algorithm": (
        "hashing: {algorithm: [" + ", ".join(["x"] * 9_000) + "]}\n",
        "hashing.algorithm: must be one of",
    ),
    "900-KB-policy-name": (
        "policies:\n  ? " + "p" * 900_000 + "\n  : {bogus: 1}\n",
        "unknown key; allowed here:",
    ),
    "900-KB-unknown-key": ("? " + "k" * 900_000 + "\n: 1\n", "unknown key; allowed here:"),
}


@pytest.mark.parametrize(("text", "fragment"), list(HUGE_VALUES.values()), ids=list(HUGE_VALUES))
def test_a_huge_value_gives_a_short_message(tmp_path: Path, text: str, fragment: str) -> None:
    """Whatever a file holds, the error shows a clipped excerpt of it: a log line or a
    systemd STATUS= stays small, and the work to build the message stays bounded."""
    path = _write(tmp_path, text)
    with pytest.raises(ConfigError) as caught:
        load_config(path)
    message = str(caught.value)
    assert len(message) < 500, message[:500]
    assert message.startswith(f"{path}: ")
    assert fragment in message


HOSTILE_SHAPES = {
    "nested-1000-deep": ("roots: " + "[" * 1000 + "]" * 1000 + "\n", "nested more than"),
    "recursive-alias": ("dry_run: &loop [*loop]\n", "alias *loop refers to a value that"),
    "1001-aliases": (
        "dry_run: [&one x, " + ", ".join(["*one"] * (MAX_ALIASES + 1)) + "]\n",
        f"more than {MAX_ALIASES} aliases",
    ),
    "impossible-date": ("quarantine: {retain: 2024-13-45}\n", "invalid YAML value: month"),
    "5000-digit-integer": ("hashing: {hash_size: " + "9" * 5000 + "}\n", "invalid YAML value"),
}


@pytest.mark.parametrize(
    ("text", "fragment"), list(HOSTILE_SHAPES.values()), ids=list(HOSTILE_SHAPES)
)
def test_files_that_break_the_yaml_loader_are_config_errors(
    tmp_path: Path, text: str, fragment: str
) -> None:
    """Deep nesting (a RecursionError in PyYAML), a self-containing alias, too many aliases,
    and values PyYAML fails on untyped (ValueError) all become a short ConfigError, which
    the CLI reports and a reload survives."""
    path = _write(tmp_path, text)
    with pytest.raises(ConfigError) as caught:
        load_config(path)
    message = str(caught.value)
    assert len(message) < 500, message[:500]
    assert message.startswith(f"{path}: ")
    assert fragment in message


# -- durations and default paths -------------------------------------------------------------


@pytest.mark.parametrize(
    ("value", "seconds"),
    [
        ("90s", 90.0),
        ("15m", 900.0),
        ("1h", 3600.0),
        ("30d", 30 * DAY),
        ("2w", 14 * DAY),
        ("1.5h", 5400.0),
        ("45", 45.0),
        (5, 5.0),
        (2.5, 2.5),
        (0, 0.0),
    ],
)
def test_parse_duration_converts_units_to_seconds(value: object, seconds: float) -> None:
    """Durations with s/m/h/d/w suffixes, bare numeric strings and plain numbers become float
    seconds."""
    result = parse_duration(value)
    assert result == seconds
    assert type(result) is float


@pytest.mark.parametrize(
    "value", ["-1", "abc", "", "1y", "h", True, False, -3, -0.5, None, float("nan")]
)
def test_parse_duration_rejects_non_durations(value: object) -> None:
    """Negative, unit-less garbage, unknown units, booleans (YAML `yes`), None and NaN raise
    ValueError instead of becoming a nonsensical number of seconds."""
    with pytest.raises(ValueError):
        parse_duration(value)


@pytest.mark.parametrize(
    ("env", "expected"),
    [
        ({"STATE_DIRECTORY": "/var/lib/dedupd"}, "/var/lib/dedupd/dedupd.db"),
        ({"STATE_DIRECTORY": "/var/lib/a:/var/lib/b"}, "/var/lib/a/dedupd.db"),
        (
            {"STATE_DIRECTORY": "/var/lib/dedupd", "XDG_STATE_HOME": "/home/u/.state"},
            "/var/lib/dedupd/dedupd.db",
        ),
        ({"XDG_STATE_HOME": "/home/u/.state"}, "/home/u/.state/dedupd/dedupd.db"),
        ({"STATE_DIRECTORY": "", "XDG_STATE_HOME": "/s"}, "/s/dedupd/dedupd.db"),
        ({}, "~/.local/state/dedupd/dedupd.db"),
        ({"XDG_STATE_HOME": ""}, "~/.local/state/dedupd/dedupd.db"),
    ],
)
def test_default_database_path_follows_systemd_then_xdg(env: dict[str, str], expected: str) -> None:
    """The database lives in systemd's STATE_DIRECTORY (first entry) when set, else under
    XDG_STATE_HOME, else ~/.local/state; empty variables count as unset."""
    assert default_database_path(env) == Path(expected).expanduser()


@pytest.mark.parametrize(
    ("env", "expected"),
    [
        ({"RUNTIME_DIRECTORY": "/run/dedupd"}, "/run/dedupd/dedupd.sock"),
        ({"RUNTIME_DIRECTORY": "/run/a:/run/b"}, "/run/a/dedupd.sock"),
        (
            {"RUNTIME_DIRECTORY": "/run/dedupd", "XDG_RUNTIME_DIR": "/run/user/1000"},
            "/run/dedupd/dedupd.sock",
        ),
        ({"XDG_RUNTIME_DIR": "/run/user/1000"}, "/run/user/1000/dedupd/dedupd.sock"),
        ({"XDG_RUNTIME_DIR": "relative"}, "~/.local/state/dedupd/dedupd.sock"),
        ({"STATE_DIRECTORY": "/var/lib/dedupd"}, "/var/lib/dedupd/dedupd.sock"),
        ({"XDG_STATE_HOME": "/s"}, "/s/dedupd/dedupd.sock"),
        ({}, "~/.local/state/dedupd/dedupd.sock"),
    ],
)
def test_default_socket_path_follows_systemd_then_xdg_then_state_dir(
    env: dict[str, str], expected: str
) -> None:
    """The socket lives in RUNTIME_DIRECTORY, else in XDG_RUNTIME_DIR/dedupd (where the user
    unit's RuntimeDirectory=dedupd puts it, so a daemon started in a shell is found at the
    same place), else next to the default database."""
    assert default_socket_path(env) == Path(expected).expanduser()


def test_dedupctl_looks_for_the_users_daemon_then_the_system_service() -> None:
    """Without --socket or `socket:`, the user's own socket comes first, then the system
    unit's /run/dedupd; the same order for databases; each place once."""
    env = {"XDG_RUNTIME_DIR": "/run/user/1000", "XDG_STATE_HOME": "/home/u/.local/state"}
    assert socket_candidates(env, system=Path("/run/dedupd")) == (
        Path("/run/user/1000/dedupd/dedupd.sock"),
        Path("/run/dedupd/dedupd.sock"),
    )
    assert database_candidates(env, system=Path("/var/lib/dedupd")) == (
        Path("/home/u/.local/state/dedupd/dedupd.db"),
        Path("/var/lib/dedupd/dedupd.db"),
    )
    inside = {"RUNTIME_DIRECTORY": "/run/dedupd", "STATE_DIRECTORY": "/var/lib/dedupd"}
    assert socket_candidates(inside, system=Path("/run/dedupd")) == (
        Path("/run/dedupd/dedupd.sock"),
    )
    assert database_candidates(inside, system=Path("/var/lib/dedupd")) == (
        Path("/var/lib/dedupd/dedupd.db"),
    )


# -- immutability ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("section", "attribute"),
    [
        ("config", "dry_run"),
        ("hashing", "hash_size"),
        ("index", "backend"),
        ("watch", "settle_seconds"),
        ("root", "path"),
        ("policy", "near"),
        ("quarantine", "retain"),
    ],
)
def test_config_objects_are_frozen(tmp_path: Path, section: str, attribute: str) -> None:
    """A loaded config cannot be changed in place (threads share it), at any level."""
    config = load_config(_write(tmp_path, SPEC_EXAMPLE))
    objects: dict[str, object] = {
        "config": config,
        "hashing": config.hashing,
        "index": config.index,
        "watch": config.watch,
        "root": config.roots[0],
        "policy": config.policies["camera"],
        "quarantine": config.quarantine,
    }
    target = objects[section]
    before = getattr(target, attribute)
    with pytest.raises(dataclasses.FrozenInstanceError):
        setattr(target, attribute, None)
    assert getattr(target, attribute) == before


def test_a_quarantine_policy_without_a_quarantine_folder_is_rejected(tmp_path: Path) -> None:
    """Otherwise every quarantine decision would fail at run time, file after file."""
    cfg = tmp_path / "dedupd.yaml"
    cfg.write_text("policies:\n  camera: {near: quarantine}\n")
    with pytest.raises(ConfigError) as info:
        load_config(cfg)
    assert info.value.key == "policies.camera.near"
    assert "set quarantine.path" in str(info.value) and str(cfg) in str(info.value)
    cfg.write_text("policies:\n  camera: {near: quarantine}\nquarantine: {path: q}\n")
    assert load_config(cfg).quarantine.path == (tmp_path / "q").resolve()


@pytest.mark.parametrize(
    ("roots", "key"),
    [
        ("[{path: photos}, {path: photos/archive}]", "roots[1].path"),
        ("[{path: photos/archive}, {path: photos}]", "roots[1].path"),
        ("[{path: photos}, {path: photos}]", "roots[1].path"),
    ],
)
def test_overlapping_roots_are_rejected(tmp_path: Path, roots: str, key: str) -> None:
    """A file under two roots would get two records and two policies: one could quarantine
    a reference photo "because of" itself."""
    cfg = tmp_path / "dedupd.yaml"
    cfg.write_text(f"roots: {roots}\n")
    with pytest.raises(ConfigError, match="roots must not contain each other") as info:
        load_config(cfg)
    assert info.value.key == key


def test_a_root_inside_the_quarantine_folder_is_rejected(tmp_path: Path) -> None:
    cfg = tmp_path / "dedupd.yaml"
    cfg.write_text("roots: [{path: q/photos}]\nquarantine: {path: q}\n")
    with pytest.raises(ConfigError, match="inside the quarantine folder") as info:
        load_config(cfg)
    assert info.value.key == "quarantine.path"


def test_command_line_dirs_are_checked_for_overlap_too(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="roots must not contain each other"):
        load_config(None).with_roots([tmp_path, tmp_path / "sub"])


# -- keep rules for exact duplicates (issue #9 item 12) ---------------------------------------


def test_default_keep_rules_put_original_name_before_the_capture_time() -> None:
    """Exact copies tie on pixels and bytes, so the default lets the name decide next: a
    copy's mtime is often just when it arrived, which must not pick the keeper."""
    assert Policy().keep == ("highest_resolution", "largest_file", "original_name", "oldest")


def test_keep_accepts_original_name_and_preferred_folders_in_their_order(tmp_path: Path) -> None:
    """`{prefer_folders: [...]}` is a keep rule placed where it should rank; its folders are
    resolved like every config path (relative to the config file) and kept in order."""
    import dedupd.config as config

    (tmp_path / "real").mkdir()
    (tmp_path / "link").symlink_to(tmp_path / "real")
    path = _write(
        tmp_path,
        "policies:\n"
        "  camera:\n"
        "    keep: [{prefer_folders: [camera, /srv/photos/best, link]}, original_name, oldest]\n",
    )
    keep = load_config(path).policies["camera"].keep
    folders = (tmp_path.resolve() / "camera", Path("/srv/photos/best"), tmp_path.resolve() / "real")
    assert keep == (config.PreferFolders(folders), "original_name", "oldest")
    assert str(keep[0]) == f"prefer_folders({', '.join(map(str, folders))})"


BAD_KEEP = {
    "not-a-rule": (
        "keep: [original_name, 3]",
        "policies.camera.keep",
        ["3", "original_name", "prefer_folders"],
    ),
    "folders-empty": (
        "keep: [{prefer_folders: []}]",
        "policies.camera.keep[0].prefer_folders",
        ["non-empty list of folders", "[]"],
    ),
    "folders-not-a-list": (
        "keep: [oldest, {prefer_folders: /srv/best}]",
        "policies.camera.keep[1].prefer_folders",
        ["non-empty list of folders", "'/srv/best'"],
    ),
    "folder-not-a-string": (
        "keep: [{prefer_folders: [/srv/a, 7]}]",
        "policies.camera.keep[0].prefer_folders",
        ["list of folders", "7"],
    ),
    "misspelt-rule-key": (
        "keep: [oldest, {prefer_folder: [/srv/best]}]",
        "policies.camera.keep[1].prefer_folder",
        ["unknown key", "prefer_folders"],
    ),
    "empty-mapping": ("keep: [{}]", "policies.camera.keep[0].prefer_folders", ["required"]),
    "folder-twice": (
        "keep: [{prefer_folders: [/srv/a, /srv/b/../a]}]",
        "policies.camera.keep[0].prefer_folders",
        ["twice", "/srv/a"],
    ),
}


@pytest.mark.parametrize(("keep", "key", "fragments"), list(BAD_KEEP.values()), ids=list(BAD_KEEP))
def test_bad_keep_rules_are_rejected_naming_the_key(
    tmp_path: Path, keep: str, key: str, fragments: list[str]
) -> None:
    """A bad keep rule raises ConfigError naming the file, the exact key path down to the
    rule's index, and what is allowed."""
    path = _write(tmp_path, f"policies:\n  camera: {{{keep}}}\n")
    with pytest.raises(ConfigError) as caught:
        load_config(path)
    assert caught.value.key == key
    assert f"{path}: {key}: " in str(caught.value)
    for fragment in fragments:
        assert fragment in str(caught.value)


def test_a_fifo_in_place_of_the_config_is_refused_within_seconds(tmp_path: Path) -> None:
    """A FIFO nobody writes, put where the config was: reading it blocked forever (a
    reload on SIGHUP wedged the daemon, SIGTERM included). It is refused, with why."""
    fifo = tmp_path / "dedupd.yaml"
    os.mkfifo(fifo)
    with pytest.raises(ConfigError, match="not a regular file, and its text did not arrive"):
        load_config(fifo)


def test_a_config_from_a_pipe_is_read_as_it_comes(tmp_path: Path) -> None:
    """`dedupd scan --config <(…)`: a pipe whose text arrives is a config like a file, and
    one that ends with nothing in it is an error, not the empty config's defaults."""
    for text, roots in ((f"roots: [{{path: {tmp_path}}}]\n", 1), ("", None)):
        read, write = os.pipe()
        os.write(write, text.encode())
        os.close(write)
        try:
            if roots is None:
                with pytest.raises(ConfigError, match="not a regular file, and nothing to read"):
                    load_config(f"/proc/self/fd/{read}")
            else:
                assert len(load_config(f"/proc/self/fd/{read}").roots) == roots
        finally:
            os.close(read)
