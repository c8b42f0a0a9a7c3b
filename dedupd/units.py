"""systemd units for this install of dedupd: `dedupd install-service`.

The shipped units (`dedupd/units/`, also in `systemd/` of the source tree) are templates:
`render_unit` sets their `ExecStart=` to the `dedupd` this process runs from (a venv, pipx
or /opt install has no `dedupd` on the default path) and, for the system unit,
`ReadWritePaths=` to the roots and quarantine of its config. `write_unit` installs the
result without ever replacing a different unit unless told to.
"""

from __future__ import annotations

import errno
import os
import re
import shlex
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Literal

from dedupd import __version__
from dedupd.errors import ConfigError, DedupdError

__all__ = [
    "SYSTEM_CONFIG",
    "Scope",
    "UnitError",
    "Written",
    "dedupd_command",
    "earlier_user_database",
    "in_a_home",
    "next_steps",
    "render_unit",
    "template",
    "unit_path",
    "write_unit",
]

Scope = Literal["user", "system"]

SYSTEM_CONFIG = Path("/etc/dedupd/dedupd.yaml")  # what the system unit's daemon reads
_TEMPLATES: dict[Scope, str] = {"user": "dedupd-user.service", "system": "dedupd.service"}


class UnitError(DedupdError):
    """The unit cannot be written (exists and differs, no permission)."""


def template(scope: Scope) -> str:
    """The shipped unit for `scope`, as text."""
    return (resources.files("dedupd") / "units" / _TEMPLATES[scope]).read_text()


def dedupd_command(
    argv0: str | None = None, executable: str | None = None
) -> list[str]:
    """The absolute command that runs this install's `dedupd`: the script this process was
    started as (a venv's or pipx's `bin/dedupd`), else the `dedupd` beside this Python (a
    venv's bin folder), else this Python with `-m dedupd`. Symlinks are kept, not resolved:
    pipx's ~/.local/bin/dedupd and a venv's bin/python stay valid across upgrades."""
    argv0 = sys.argv[0] if argv0 is None else argv0
    executable = sys.executable if executable is None else executable
    if Path(argv0).name == "dedupd" and os.access(argv0, os.X_OK) and os.path.isfile(argv0):
        return [os.path.abspath(argv0)]
    beside = Path(os.path.abspath(executable)).parent / "dedupd"
    if os.access(beside, os.X_OK) and beside.is_file():
        return [str(beside)]
    return [os.path.abspath(executable), "-m", "dedupd"]


def in_a_home(path: Path) -> bool:
    """Whether `path` lies in a home folder (/home, /root), where a system service running
    as its own user usually cannot read."""
    return any(Path(os.path.abspath(path)).is_relative_to(top) for top in ("/home", "/root"))


def in_homes(command: Sequence[str], executable: str | None = None) -> list[str]:
    """What the service runs that lies in a home folder: the command, the Python it runs
    on, and where that Python's symlinks lead (a venv's bin/python into ~/.pyenv)."""
    executable = sys.executable if executable is None else executable
    paths = [command[0], executable, os.path.realpath(executable)]
    return list(dict.fromkeys(p for p in paths if in_a_home(Path(p))))


_PLAIN = re.compile(r"^[A-Za-z0-9_@%+=:,./-]+$")


def _quote(arg: str, *, command: bool = True) -> str:
    """`arg` as one word of an ExecStart= line (`command`) or a path list: specifiers (%)
    and, in a command, variables ($) taken literally, and quoted when it holds a space or
    a quote (systemd.service(5), "Command lines"). A control character (a newline in a
    folder's name) cannot be written on a unit's line: it would end the line, and what
    follows would be read as a directive of its own."""
    if any(ord(c) < 0x20 or ord(c) == 0x7F for c in arg):
        raise ConfigError(
            f"{arg!r} holds a control character (a newline?): a systemd unit cannot name it;"
            " rename the folder (or install under another path)"
        )
    arg = arg.replace("%", "%%")
    if command:
        arg = arg.replace("$", "$$")
    if _PLAIN.match(arg):
        return arg
    return '"' + arg.replace("\\", "\\\\").replace('"', '\\"') + '"'


def _path_list(paths: Sequence[Path]) -> str:
    """A ReadWritePaths= value: space-separated, each path quoted when it needs it."""
    return " ".join(_quote(str(p), command=False) for p in paths)


def render_unit(
    scope: Scope,
    command: Sequence[str],
    *,
    config: Path | None = None,
    read_write: Sequence[Path] = (),
) -> str:
    """The shipped unit for `scope`, running `command` (`dedupd_command()`) with `run`
    (and `--config`: always for the system unit, SYSTEM_CONFIG by default). The system
    unit's ReadWritePaths= becomes `read_write` when given. The template's comment block
    (how to install it by hand) gives way to a note of how this one was made."""
    if scope == "system":
        config = config or SYSTEM_CONFIG
    args = [*command, "run", *(["--config", str(config)] if config else [])]
    lines = template(scope).splitlines()
    body = lines[next(i for i, line in enumerate(lines) if line.startswith("[")) :]
    out = [
        f"# Written by `dedupd install-service --{scope}` (dedupd {__version__}) from the shipped",
        f"# {_TEMPLATES[scope]}. Local changes: `systemctl{' --user' if scope == 'user' else ''}"
        " edit dedupd` (a drop-in) survives a rewrite.",
    ]
    for line in body:
        if line.startswith("ExecStart="):
            line = "ExecStart=" + " ".join(_quote(a) for a in args)
        elif line.startswith("ReadWritePaths=") and read_write:
            line = "ReadWritePaths=" + _path_list(read_write)
        out.append(line)
    return "\n".join(out) + "\n"


def unit_path(scope: Scope, env: dict[str, str] | None = None) -> Path:
    """Where `systemctl` finds an administrator's unit: /etc/systemd/system, or for a user
    $XDG_CONFIG_HOME/systemd/user (~/.config/systemd/user)."""
    if scope == "system":
        return Path("/etc/systemd/system/dedupd.service")
    env = dict(os.environ) if env is None else env
    base = env.get("XDG_CONFIG_HOME", "")
    if not os.path.isabs(base):
        base = str(Path("~/.config").expanduser())
    return Path(base) / "systemd" / "user" / "dedupd.service"


@dataclass(frozen=True, slots=True)
class Written:
    path: Path
    changed: bool  # False: the same unit was already there


def write_unit(
    path: Path, text: str, *, force: bool = False, scope: Scope = "system"
) -> Written:
    """Install `text` at `path` (mode 0644, atomically). A different unit already there is
    replaced only with `force`."""
    try:
        current = path.read_text()
    except FileNotFoundError:
        current = None
    except OSError as exc:
        raise UnitError(f"{path}: cannot read: {exc.strerror}") from exc
    if current == text:
        return Written(path, changed=False)
    if current is not None and not force:
        raise UnitError(
            f"{path} exists and differs; pass --force to replace it (local changes belong "
            f"in a drop-in: systemctl{' --user' if scope == 'user' else ''} edit dedupd), or "
            "--print to see the new one"
        )
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        with open(tmp, "x") as f:
            f.write(text)
        os.chmod(tmp, 0o644)
        os.replace(tmp, path)
    except OSError as exc:
        tmp.unlink(missing_ok=True)
        denied = exc.errno in (errno.EACCES, errno.EPERM, errno.EROFS)
        hint = " (run it with sudo, or use --print)" if denied else ""
        raise UnitError(f"{path}: cannot write: {exc.strerror}{hint}") from exc
    return Written(path, changed=True)


def earlier_user_database(env: dict[str, str] | None = None) -> Path | None:
    """The database an earlier user unit kept in StateDirectory= on systemd 252 and older
    ($XDG_CONFIG_HOME/dedupd), when there is none yet where the daemon now keeps it."""
    env = dict(os.environ) if env is None else env
    earlier = unit_path("user", env).parent.parent.parent / "dedupd" / "dedupd.db"
    return earlier if earlier.is_file() and not _user_database(env).exists() else None


def _user_database(env: dict[str, str] | None = None) -> Path:
    """Where the user unit's daemon keeps its database: no STATE_DIRECTORY is set there."""
    from dedupd.config import default_database_path

    env = dict(os.environ) if env is None else env
    return default_database_path({k: v for k, v in env.items() if k != "STATE_DIRECTORY"})


def writable(roots: Sequence[Path], quarantine: Path | None) -> list[Path]:
    """The system unit's ReadWritePaths=: the roots and the quarantine, but a quarantine
    inside a root not again. systemd makes each entry a mount of its own in the sandbox, and
    rename(2) fails between two mounts (EXDEV) even of one filesystem: a quarantine listed
    apart from the root it lies in made every quarantine a copy, and every restore a new
    file owned by dedupd."""
    paths = list(roots)
    if quarantine is not None and not any(quarantine.is_relative_to(r) for r in roots):
        paths.append(quarantine)
    return paths


def next_steps(
    scope: Scope,
    *,
    config: Path | None,
    config_exists: bool,
    read_write: Sequence[Path],
    earlier_database: Path | None = None,
    quarantine: Path | None = None,
) -> list[str]:
    """The commands to run after the unit is written, in order, with why as comments.
    `quarantine`: the config's, when the unit lists it apart from the roots."""
    if scope == "user":
        target = config or Path("~/.config/dedupd/dedupd.yaml")
        steps = [] if config_exists else [
            f"install -Dm644 config/dedupd.yaml {target}   # a config (then edit its roots)"
        ]
        if earlier_database is not None:
            now = _user_database()
            steps += [
                "systemctl --user stop dedupd   # then keep its database (and quarantine "
                "records), which the earlier unit kept in ~/.config:",
                f"mkdir -p {now.parent} && mv {earlier_database}* {now.parent}/",
            ]
        return [
            *steps,
            "systemctl --user daemon-reload",
            "systemctl --user enable --now dedupd",
            'loginctl enable-linger "$USER"   # keep it running while you are logged out',
            "dedupctl status   # finds $XDG_RUNTIME_DIR/dedupd/dedupd.sock by itself",
        ]
    target = config or SYSTEM_CONFIG
    steps = [
        "getent passwd dedupd >/dev/null || sudo useradd --system --user-group "
        "--home-dir /var/lib/dedupd --shell /usr/sbin/nologin dedupd",
        'sudo usermod -aG dedupd "$USER"   # dedupctl may then use /run/dedupd/dedupd.sock '
        "(log in again)",
    ]
    if not config_exists:
        steps.append(f"sudo install -Dm644 config/dedupd.yaml {target}   # then edit its roots")
    if quarantine is not None:
        shown = shlex.quote(str(quarantine))
        if not quarantine.exists():
            steps.append(
                f"sudo install -d -o dedupd -g dedupd -m 0750 {shown}   # systemd will not "
                "start a unit whose ReadWritePaths= folder is missing, and the service may "
                "not create it"
            )
        steps.append(
            f"# {shown} is a mount of its own in the service's sandbox: photos are copied "
            "into it and back, and a restored photo then belongs to dedupd. A quarantine "
            "inside a root, or one --read-write folder holding the roots and it, keeps "
            "moves as renames"
        )
    listed = " ".join(str(p) for p in read_write) if read_write else "<your roots>"
    steps += [
        f"# the dedupd user needs write access to {listed}: group dedupd, or "
        "sudo setfacl -R -m u:dedupd:rwX -m d:u:dedupd:rwX <folder>",
        "sudo systemctl daemon-reload",
        "sudo systemctl enable --now dedupd",
        "dedupctl status   # finds /run/dedupd/dedupd.sock by itself",
    ]
    return steps
