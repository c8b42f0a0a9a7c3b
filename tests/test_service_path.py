"""The service path: a daemon started as the shipped units start it is found by `dedupctl`
from a plain shell with no flags, and without a daemon dedupctl works on the database the
daemon would use, never on a new one.

The daemon runs as a real process with the environment its unit gives it (derived from the
unit `dedupd install-service` writes: its ExecStart, RuntimeDirectory=, StateDirectory=),
and dedupctl as a real process with only HOME, XDG_RUNTIME_DIR and PATH, as a login shell
has them.
"""

from __future__ import annotations

import grp
import json
import os
import shlex
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner

from dedupd import config as config_module
from dedupd import control, units
from dedupd.cli import dedupctl
from dedupd.store import Store
from tests import photos

REPO = Path(__file__).parent.parent


def _unit(text: str) -> dict[str, str]:
    values: dict[str, str] = {}
    for line in text.splitlines():
        if "=" in line and not line.startswith(("#", "[")):
            key, _, value = line.partition("=")
            values[key.strip()] = value.strip()
    return values


def _unit_env(unit: dict[str, str], run: Path, state: Path) -> dict[str, str]:
    """What systemd adds to a service's environment for RuntimeDirectory= and
    StateDirectory=, below `run` (/run, or $XDG_RUNTIME_DIR for a user unit) and `state`
    (/var/lib); it creates the folders before the start."""
    env: dict[str, str] = {}
    if "RuntimeDirectory" in unit:
        (run / unit["RuntimeDirectory"]).mkdir(parents=True, exist_ok=True)
        env["RUNTIME_DIRECTORY"] = str(run / unit["RuntimeDirectory"])
    if "StateDirectory" in unit:
        (state / unit["StateDirectory"]).mkdir(parents=True, exist_ok=True)
        env["STATE_DIRECTORY"] = str(state / unit["StateDirectory"])
    return env


def _shell_env(home: Path, runtime: Path) -> dict[str, str]:
    """A plain login shell's environment (plus PYTHONPATH: this checkout's code)."""
    return {
        "HOME": str(home),
        "XDG_RUNTIME_DIR": str(runtime),
        "PATH": f"{Path(sys.executable).parent}:/usr/bin:/bin",
        "PYTHONPATH": str(REPO),
    }


def _dedupctl(*args: str, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    script = Path(sys.executable).parent / "dedupctl"
    command = (
        [str(script)]
        if script.is_file()
        else [sys.executable, "-c", "from dedupd.cli import dedupctl; dedupctl()"]
    )
    return subprocess.run(
        [*command, *args], env=env, capture_output=True, text=True, timeout=120
    )


def _library(root: Path) -> None:
    photos.copy(photos.photo("coffee"), root / "coffee.jpg")
    photos.copy(photos.photo("coffee"), root / "coffee (1).jpg")
    photos.copy(photos.photo("rocket"), root / "rocket.jpg")


def _wait_ready(sock: socket.socket, proc: subprocess.Popen[str]) -> None:
    seen: list[str] = []
    while "READY=1" not in seen:
        try:
            seen += sock.recv(4096).decode().split("\n")
        except TimeoutError:
            proc.kill()
            raise AssertionError(f"no READY=1: {proc.communicate()}") from None


@contextmanager
def _daemon(command: list[str], env: dict[str, str], tmp: Path) -> Iterator[None]:
    """The daemon as systemd runs a Type=notify unit: until READY=1, then SIGTERM."""
    notify = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    notify.bind(str(tmp / "notify"))
    notify.settimeout(60)
    proc = subprocess.Popen(
        command,
        env={**env, "NOTIFY_SOCKET": str(tmp / "notify")},
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        _wait_ready(notify, proc)
        yield
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=30) == 0, proc.communicate()
    finally:
        if proc.poll() is None:
            proc.kill()
        proc.communicate()
        notify.close()


def _groups_soon(env: dict[str, str], count: int) -> dict[str, Any]:
    """`dedupctl show --json` once the daemon has hashed the library (polls: the start-up
    backlog is hashed after READY=1)."""
    deadline = time.monotonic() + 60
    while True:
        shown = _dedupctl("show", "--json", env=env)
        assert shown.returncode == 0, shown
        answer: dict[str, Any] = json.loads(shown.stdout)
        if len(answer["groups"]) >= count or time.monotonic() > deadline:
            return answer
        time.sleep(0.2)


def _databases(top: Path) -> list[Path]:
    return sorted(top.rglob("*.db"))


@pytest.mark.slow
def test_user_unit_daemon_is_reached_by_dedupctl_from_a_plain_shell(tmp_path: Path) -> None:
    """Started as `dedupd install-service --user`'s unit starts it (its ExecStart, its
    RuntimeDirectory under XDG_RUNTIME_DIR, the config in ~/.config/dedupd), the daemon
    answers `dedupctl status` and `dedupctl show` run with no flags; status names the
    database, which is the one dedupctl then uses offline once the daemon stops."""
    home, runtime = tmp_path / "home", tmp_path / "run"
    runtime.mkdir(mode=0o700)
    photos_dir = tmp_path / "photos"
    _library(photos_dir)
    config = home / ".config" / "dedupd" / "dedupd.yaml"
    config.parent.mkdir(parents=True)
    config.write_text(
        f"hashing: {{workers: 1}}\nroots:\n  - {{path: {photos_dir}}}\n"
    )
    unit_text = units.render_unit("user", units.dedupd_command())
    unit = _unit(unit_text)
    shell = _shell_env(home, runtime)
    service_env = {**shell, **_unit_env(unit, runtime, home / ".config")}
    command = [arg.replace("%h", str(home)) for arg in shlex.split(unit["ExecStart"])]

    with _daemon(command, service_env, tmp_path):
        status = _dedupctl("status", env=shell)
        assert status.returncode == 0, status
        assert status.stdout.startswith("dedupd running")
        answer = json.loads(_dedupctl("status", "--json", env=shell).stdout)
        database = home / ".local" / "state" / "dedupd" / "dedupd.db"
        assert answer["database"] == str(database)
        assert answer["config"] == str(config)
        groups = _groups_soon(shell, 1)
        names = [
            sorted(Path(f["path"]).name for f in [g["keeper"], *g["duplicates"]])
            for g in groups["groups"]
        ]
        assert names == [["coffee (1).jpg", "coffee.jpg"]]
        shown = _dedupctl("show", env=shell)
        assert "using the database directly" not in shown.stderr
        assert (runtime / "dedupd" / "dedupd.sock").is_socket()

    # No daemon: the same database, read directly (and said so), and still only one.
    offline = _dedupctl("show", "--json", env=shell)
    assert offline.returncode == 0, offline
    assert "using the database directly" in offline.stderr
    assert json.loads(offline.stdout) == groups
    assert _databases(tmp_path) == [database]


@pytest.mark.slow  # ~4-8 s: run with the long suites (make test-slow)
def test_user_unit_daemon_is_reached_from_cron_which_sets_no_xdg_runtime_dir(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """cron (no pam_systemd) gives a job HOME and PATH but no $XDG_RUNTIME_DIR, while the
    user unit's socket is in the user's runtime directory, /run/user/UID: the monthly
    `dedupctl quarantine purge --yes` the README suggests must reach the daemon there, not
    miss it, fall back to the database and find it locked by that daemon (exit 4)."""
    user_run = tmp_path / "run-user"  # /run/user, as systemd-logind makes it
    monkeypatch.setattr(config_module, "USER_RUNTIME_DIR", user_run)
    home, runtime = tmp_path / "home", user_run / str(os.getuid())
    runtime.mkdir(parents=True, mode=0o700)
    photos_dir = tmp_path / "photos"
    _library(photos_dir)
    config = home / ".config" / "dedupd" / "dedupd.yaml"
    config.parent.mkdir(parents=True)
    config.write_text(f"hashing: {{workers: 1}}\nroots:\n  - {{path: {photos_dir}}}\n")
    unit = _unit(units.render_unit("user", units.dedupd_command()))
    service_env = {**_shell_env(home, runtime), **_unit_env(unit, runtime, home / ".config")}
    command = [arg.replace("%h", str(home)) for arg in shlex.split(unit["ExecStart"])]
    cron = {"HOME": str(home), "XDG_RUNTIME_DIR": None, "XDG_CONFIG_HOME": None,
            "XDG_STATE_HOME": None}
    runner = CliRunner()

    with _daemon(command, service_env, tmp_path):
        status = runner.invoke(dedupctl, ["status", "--json"], env=cron)
        assert status.exit_code == 0, status.output
        database = home / ".local" / "state" / "dedupd" / "dedupd.db"
        assert json.loads(status.stdout)["database"] == str(database)
        purge = runner.invoke(dedupctl, ["quarantine", "purge", "--yes"], env=cron)
        assert (purge.exit_code, purge.stdout) == (0, "nothing to purge\n"), purge.output
        assert "using the database directly" not in purge.stderr


def test_system_unit_daemon_is_reached_by_a_group_member_with_no_flags(
    tmp_path: Path,
) -> None:
    """Started as the system unit starts it (RUNTIME_DIRECTORY /run/dedupd, STATE_DIRECTORY
    /var/lib/dedupd, here under tmp_path as conftest places them), the daemon is found by
    a dedupctl whose own socket place has nothing, or only a stale socket of a killed
    daemon; offline, dedupctl reads the system database, never a new one of its own."""
    home, runtime = tmp_path / "home", tmp_path / "run"
    runtime.mkdir(mode=0o700)
    photos_dir = tmp_path / "photos"
    _library(photos_dir)
    system_config = tmp_path / "etc" / "dedupd.yaml"
    system_config.parent.mkdir()
    system_config.write_text(f"hashing: {{workers: 1}}\nroots:\n  - {{path: {photos_dir}}}\n")
    unit_text = units.render_unit("system", units.dedupd_command(), config=system_config)
    unit = _unit(unit_text)
    run_base = config_module.SYSTEM_RUNTIME_DIR.parent  # conftest: under tmp_path
    state_base = config_module.SYSTEM_STATE_DIR.parent
    service_env = {
        "PATH": "/usr/bin:/bin",
        "PYTHONPATH": str(REPO),
        **_unit_env(unit, run_base, state_base),
    }
    # A stale socket where this user's own daemon would listen: a killed `dedupd run`.
    (runtime / "dedupd").mkdir()
    stale = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    stale.bind(str(runtime / "dedupd" / "dedupd.sock"))
    stale.close()
    shell = {"HOME": str(home), "XDG_RUNTIME_DIR": str(runtime)}
    runner = CliRunner()

    with _daemon(shlex.split(unit["ExecStart"]), service_env, tmp_path):
        status = runner.invoke(dedupctl, ["status", "--json"], env=shell)
        assert status.exit_code == 0, status.output
        database = config_module.SYSTEM_STATE_DIR / "dedupd.db"
        assert json.loads(status.stdout)["database"] == str(database)
        assert (config_module.SYSTEM_RUNTIME_DIR / "dedupd.sock").is_socket()

    offline = runner.invoke(dedupctl, ["show"], env=shell)
    assert offline.exit_code == 0, offline.output
    assert "using the database directly" in offline.stderr
    assert _databases(tmp_path) == [database]


def test_offline_changes_never_create_a_database(runner: CliRunner, tmp_path: Path) -> None:
    """No daemon and no database anywhere: an offline change refuses (exit 2) rather than
    creating a database the daemon would never see; reads say there is none."""
    a, b = tmp_path / "a.jpg", tmp_path / "b.jpg"
    for path in (a, b):
        photos.copy(photos.photo("coffee"), path)
    result = runner.invoke(dedupctl, ["distinct", str(a), str(b)])
    assert result.exit_code == 2, result.output
    assert "no database yet" in result.stderr
    result = runner.invoke(dedupctl, ["quarantine", "purge", "--yes"])
    assert result.exit_code == 2, result.output
    assert _databases(tmp_path) == []


def test_offline_dedupctl_reads_the_system_database_when_the_user_has_none(
    runner: CliRunner, tmp_path: Path
) -> None:
    """Without a daemon, dedupctl works on the first database that exists where a daemon
    would keep it: the user's own, else the system service's."""
    library = tmp_path / "photos"
    _library(library)
    system_db = config_module.SYSTEM_STATE_DIR / "dedupd.db"
    from dedupd.cli import dedupd

    scanned = runner.invoke(dedupd, ["scan", "--database", str(system_db), str(library)])
    assert scanned.exit_code == 0, scanned.output
    shown = runner.invoke(dedupctl, ["show", "--json"])
    assert shown.exit_code == 0, shown.output
    assert len(json.loads(shown.stdout)["groups"]) == 1
    # The user's own database, once there, comes first.
    Store(config_module.default_database_path()).close()
    shown = runner.invoke(dedupctl, ["show", "--json"])
    assert json.loads(shown.stdout)["groups"] == []


@pytest.fixture
def runner() -> CliRunner:
    return CliRunner()


def test_sockets_of_both_units_are_where_dedupctl_looks(tmp_path: Path) -> None:
    """The socket each unit's daemon binds (its RUNTIME_DIRECTORY) is among the places
    dedupctl searches from a shell, the user's first."""
    runtime = tmp_path / "run"
    user = _unit_env(_unit(units.template("user")), runtime, tmp_path / "x")
    system = _unit_env(_unit(units.template("system")), Path("/run"), Path("/var/lib"))
    shell = {"HOME": "/home/u", "XDG_RUNTIME_DIR": str(runtime)}
    looked = config_module.socket_candidates(shell, system=Path("/run/dedupd"))
    assert looked == (
        config_module.default_socket_path(user),
        config_module.default_socket_path(system),
    )
    assert config_module.database_candidates(shell, system=Path("/var/lib/dedupd")) == (
        config_module.default_database_path(user),
        config_module.default_database_path(system),
    )
    assert os.fspath(looked[1]) == "/run/dedupd/dedupd.sock"


def test_a_user_outside_the_services_group_is_told_which_group_to_join(
    runner: CliRunner, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Connecting is refused (EACCES: the system unit's /run/dedupd is 0750, group dedupd,
    and this user is not in the group): exit 3 and the usermod command naming the group of
    the socket's folder, not "not running" and no fallback to a database."""
    run = tmp_path / "run"
    run.mkdir(mode=0o750)

    def refused(self: object) -> None:
        raise PermissionError(13, "Permission denied")

    monkeypatch.setattr(control._UnixConnection, "connect", refused)
    result = runner.invoke(dedupctl, ["--socket", str(run / "dedupd.sock"), "show"])
    assert result.exit_code == 3, result.output
    group = grp.getgrgid(run.stat().st_gid).gr_name
    assert f'join its group: sudo usermod -aG {group} "$USER"' in result.stderr
    assert "using the database directly" not in result.stderr
