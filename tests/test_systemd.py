"""The shipped systemd units say what the daemon relies on (notify, watchdog, hardening),
and `dedupd install-service` writes units that `systemd-analyze verify` accepts and that
run this install's dedupd."""

from __future__ import annotations

import os
import shlex
import shutil
import stat
import subprocess
import sys
from pathlib import Path

import pytest
from click.testing import CliRunner

from dedupd import units
from dedupd.cli import dedupd

UNITS = Path(__file__).parent.parent / "systemd"
ANALYZE = shutil.which("systemd-analyze")
needs_analyze = pytest.mark.skipif(ANALYZE is None, reason="needs systemd-analyze")


def _values(text: str) -> dict[str, list[str]]:
    values: dict[str, list[str]] = {}
    for line in text.splitlines():
        if "=" in line and not line.startswith(("#", "[")):
            key, _, value = line.partition("=")
            values.setdefault(key.strip(), []).append(value.strip())
    return values


def _service(name: str) -> dict[str, list[str]]:
    return _values((UNITS / name).read_text())


@pytest.mark.parametrize("name", ["dedupd.service", "dedupd-user.service"])
def test_units_use_the_notify_protocol_the_daemon_speaks(name: str) -> None:
    s = _service(name)
    assert s["Type"] == ["notify"]
    assert s["WatchdogSec"] and s["ExecReload"] == ["/bin/kill -HUP $MAINPID"]
    assert any("dedupd run" in cmd for cmd in s["ExecStart"])
    assert s["RuntimeDirectory"] == ["dedupd"]


@pytest.mark.parametrize("name", ["dedupd.service", "dedupd-user.service"])
def test_a_worker_ended_by_the_oom_killer_does_not_stop_the_service(name: str) -> None:
    """systemd's default OOMPolicy (stop) ends the whole service when the kernel's OOM
    killer ends any of its processes: a hashing worker's death (the first the killer
    picks, tests/test_pool.py) took the daemon down, where the pool would replace it."""
    assert _service(name)["OOMPolicy"] == ["continue"]


def test_the_source_trees_units_are_the_installed_templates() -> None:
    """systemd/ in the source tree and the package's templates are one set of files."""
    for scope, name in (("system", "dedupd.service"), ("user", "dedupd-user.service")):
        assert (UNITS / name).read_text() == units.template(scope)  # type: ignore[arg-type]


def test_system_unit_keeps_state_in_var_lib_and_user_unit_where_dedupctl_looks() -> None:
    """The system unit's database is in StateDirectory (/var/lib/dedupd). The user unit sets
    no StateDirectory: systemd 252 (Debian 12) would put it in ~/.config, 254 and later in
    ~/.local/state, so the daemon uses $XDG_STATE_HOME/dedupd itself, as dedupctl does."""
    assert _service("dedupd.service")["StateDirectory"] == ["dedupd"]
    assert "StateDirectory" not in _service("dedupd-user.service")


def test_system_units_socket_is_usable_by_the_services_group() -> None:
    """A member of the group dedupd reaches /run/dedupd/dedupd.sock: the folder lets the
    group in (the socket itself is made 0660 by the daemon, tests/test_control.py), and
    nothing lets others in."""
    s = _service("dedupd.service")
    assert s["Group"] == ["dedupd"]
    folder = int(s["RuntimeDirectoryMode"][0], 8)
    assert folder & stat.S_IXGRP and not folder & stat.S_IRWXO
    assert int(s["UMask"][0], 8) & stat.S_IRWXO == stat.S_IRWXO


def test_system_unit_is_hardened() -> None:
    s = _service("dedupd.service")
    for key, value in {
        "User": "dedupd",
        "ProtectSystem": "strict",
        "NoNewPrivileges": "yes",
        "PrivateTmp": "yes",
        "PrivateNetwork": "yes",
        "RestrictAddressFamilies": "AF_UNIX",
    }.items():
        assert s[key] == [value], key
    assert "@system-service" in s["SystemCallFilter"]
    assert s["ReadWritePaths"], "the roots and quarantine must be writable"


def test_system_unit_grants_cap_lease_and_nothing_else() -> None:
    """A read lease on another user's photo needs CAP_LEASE (`safefs.open_for_writing`). An
    empty assignment later in the unit resets the list (review: the first version granted
    it, then took it back ten lines down)."""
    s = _service("dedupd.service")
    assert s["CapabilityBoundingSet"] == ["CAP_LEASE"]
    assert s["AmbientCapabilities"] == ["CAP_LEASE"]


def _verify(unit: Path, *, user: bool, tmp_path: Path) -> list[str]:
    """systemd-analyze verify's complaints about `unit`. A --user verify needs no running
    user manager, only a private $XDG_RUNTIME_DIR to start its own in."""
    env = dict(os.environ)
    command = [str(ANALYZE), "verify", str(unit)]
    if user:
        runtime = tmp_path / "analyze-run"
        runtime.mkdir(mode=0o700, exist_ok=True)
        env.update(XDG_RUNTIME_DIR=str(runtime), HOME=str(tmp_path / "analyze-home"))
        command.insert(1, "--user")
    result = subprocess.run(command, capture_output=True, text=True, env=env)
    problems = [line for line in result.stderr.splitlines() if line]
    if result.returncode and not problems:
        problems = [f"exit {result.returncode}"]
    return problems


@needs_analyze
@pytest.mark.parametrize(
    ("name", "user"), [("dedupd.service", False), ("dedupd-user.service", True)]
)
def test_shipped_units_pass_systemd_analyze_verify(name: str, user: bool, tmp_path: Path) -> None:
    unit = tmp_path / "dedupd.service"
    unit.write_text((UNITS / name).read_text())
    problems = [
        line for line in _verify(unit, user=user, tmp_path=tmp_path)
        if "is not executable" not in line and not line.startswith("exit ")
    ]  # the templates' ExecStart (/opt/dedupd, ~/.local/bin) is not installed here
    assert problems == []


def _install(tmp_path: Path, *args: str) -> tuple[str, str]:
    result = CliRunner().invoke(dedupd, ["install-service", *args])
    assert result.exit_code == 0, result.output
    return result.stdout, result.stderr


@needs_analyze
def test_installed_user_unit_runs_this_install_and_passes_verify(tmp_path: Path) -> None:
    """`dedupd install-service --user` writes ~/.config/systemd/user/dedupd.service
    ($XDG_CONFIG_HOME) running the dedupd of this very install (the test venv's), which
    exists and runs; `systemd-analyze --user verify` finds nothing to say."""
    out, _ = _install(tmp_path, "--user")
    path = Path(os.environ["XDG_CONFIG_HOME"]) / "systemd" / "user" / "dedupd.service"
    assert out.splitlines()[0] == f"wrote: {path}"
    assert "systemctl --user enable --now dedupd" in out
    exec_start = shlex.split(_values(path.read_text())["ExecStart"][0])
    assert exec_start == [*units.dedupd_command(), "run"]
    assert os.path.isabs(exec_start[0])
    assert Path(exec_start[0]).parent == Path(sys.executable).parent
    version = subprocess.run(
        [*exec_start[:-1], "--version"], capture_output=True, text=True, check=True
    )
    assert version.stdout.startswith("dedupd, version")
    assert stat.S_IMODE(path.stat().st_mode) == 0o644
    assert _verify(path, user=True, tmp_path=tmp_path) == []


@needs_analyze
def test_installed_system_unit_writes_the_roots_and_passes_verify(tmp_path: Path) -> None:
    """`dedupd install-service --system --print` prints a unit running this install's
    dedupd on the given config, with ReadWritePaths= the config's roots and quarantine, and
    the next steps (the dedupd user, joining its group) on stderr; verify accepts it."""
    config = tmp_path / "etc" / "dedupd.yaml"
    config.parent.mkdir()
    uploads, quarantine = tmp_path / "my photos", tmp_path / "q"
    config.write_text(
        f"roots:\n  - {{path: '{uploads}'}}\nquarantine: {{path: {quarantine}}}\n"
    )
    out, err = _install(tmp_path, "--system", "--print", "--config", str(config))
    s = _values(out)
    command = [*units.dedupd_command(), "run", "--config", str(config)]
    assert shlex.split(s["ExecStart"][0]) == command
    assert shlex.split(s["ReadWritePaths"][0]) == [str(uploads), str(quarantine)]
    assert s["User"] == ["dedupd"] and s["RuntimeDirectoryMode"] == ["0750"]
    assert "useradd --system --user-group" in err and 'usermod -aG dedupd "$USER"' in err
    unit = tmp_path / "dedupd.service"
    unit.write_text(out)
    assert _verify(unit, user=False, tmp_path=tmp_path) == []


@needs_analyze
def test_a_path_with_spaces_and_percent_is_quoted_for_systemd(tmp_path: Path) -> None:
    """An install under a folder whose name has a space or a % still gives an ExecStart
    that systemd reads as the one path (verify would say it is not executable)."""
    exe = tmp_path / "my venv 100%" / "bin" / "dedupd"
    exe.parent.mkdir(parents=True)
    exe.write_text("#!/bin/sh\n")
    exe.chmod(0o755)
    unit = tmp_path / "dedupd.service"
    unit.write_text(units.render_unit("user", units.dedupd_command(str(exe), sys.executable)))
    assert _verify(unit, user=True, tmp_path=tmp_path) == []


def test_a_path_with_a_newline_is_refused_not_written_as_a_line_of_its_own(
    tmp_path: Path,
) -> None:
    """A root whose folder name holds a newline would end the ReadWritePaths= line, and the
    rest of the name would be read as a directive: refused (exit 2), no unit printed."""
    config = tmp_path / "dedupd.yaml"
    config.write_text("roots: [{path: /srv/photos}]\n")
    evil = "/srv/x\nExecStartPre=/bin/sh -c true"
    result = CliRunner().invoke(
        dedupd,
        ["install-service", "--system", "--print", "--config", str(config), "--read-write", evil],
    )
    assert result.exit_code == 2, result.output
    assert "control character" in result.stderr and result.stdout == ""


def test_the_command_is_the_running_dedupd_else_the_one_beside_python(tmp_path: Path) -> None:
    """ExecStart runs what the user ran: the `dedupd` script (kept as given, symlinks and
    all, made absolute), else the dedupd beside this Python, else `python -m dedupd`."""
    bin_dir = tmp_path / "venv" / "bin"
    bin_dir.mkdir(parents=True)
    python, script = bin_dir / "python", bin_dir / "dedupd"
    python.symlink_to(sys.executable)
    assert units.dedupd_command("/nowhere/pytest", str(python)) == [str(python), "-m", "dedupd"]
    script.write_text("#!/bin/sh\n")
    script.chmod(0o755)
    assert units.dedupd_command("/nowhere/pytest", str(python)) == [str(script)]
    link = tmp_path / "local-bin" / "dedupd"  # pipx: ~/.local/bin/dedupd -> the venv's
    link.parent.mkdir()
    link.symlink_to(script)
    assert units.dedupd_command(str(link), "/usr/bin/python3") == [str(link)]


def test_install_service_never_replaces_a_different_unit_without_force(tmp_path: Path) -> None:
    """Run twice: the second run says unchanged. A unit someone edited is kept (exit 2,
    with the way out) until --force."""
    _install(tmp_path, "--user")
    path = units.unit_path("user")
    out, _ = _install(tmp_path, "--user")
    assert out.splitlines()[0] == f"unchanged: {path}"
    path.write_text(path.read_text() + "# mine\n")
    result = CliRunner().invoke(dedupd, ["install-service", "--user"])
    assert result.exit_code == 2
    assert "exists and differs; pass --force" in result.stderr
    assert "systemctl --user edit dedupd" in result.stderr  # the user unit's own drop-in
    assert path.read_text().endswith("# mine\n")
    out, _ = _install(tmp_path, "--user", "--force")
    assert out.splitlines()[0] == f"wrote: {path}"
    assert not path.read_text().endswith("# mine\n")


def test_read_write_paths_are_for_the_system_unit_only(tmp_path: Path) -> None:
    """--read-write with --user is a usage error, not silently dropped; nothing is written."""
    result = CliRunner().invoke(dedupd, ["install-service", "--user", "--read-write", "/srv"])
    assert result.exit_code == 2
    assert "--read-write is for --system" in result.stderr
    assert not units.unit_path("user").exists()


def test_a_system_unit_running_dedupd_from_a_home_folder_is_warned_about() -> None:
    """The dedupd user cannot usually read a pipx or venv install in someone's home."""
    assert units.in_a_home(Path("/home/ann/.local/bin/dedupd"))
    assert units.in_a_home(Path("/root/.local/bin/dedupd"))
    assert not units.in_a_home(Path("/opt/dedupd/bin/dedupd"))
    assert not units.in_a_home(Path("/homestead/dedupd"))


def test_a_database_the_earlier_user_unit_kept_in_config_is_moved_first(tmp_path: Path) -> None:
    """On systemd 252 the earlier user unit's StateDirectory was ~/.config/dedupd: its
    database (and quarantine records) must move to where the daemon now looks, before the
    new unit starts a fresh one. Said only while there is something to move."""
    earlier = Path(os.environ["XDG_CONFIG_HOME"]) / "dedupd" / "dedupd.db"
    earlier.parent.mkdir(parents=True)
    earlier.write_bytes(b"")
    out, _ = _install(tmp_path, "--user")
    now = Path(os.environ["XDG_STATE_HOME"]) / "dedupd"
    assert f"mkdir -p {now} && mv {earlier}* {now}/" in out
    assert out.index("mv ") < out.index("enable --now")
    now.mkdir(parents=True)
    (now / "dedupd.db").write_bytes(b"")
    out, _ = _install(tmp_path, "--user")
    assert "mv " not in out


def test_a_quarantine_inside_a_root_is_not_a_mount_of_its_own(tmp_path: Path) -> None:
    """systemd makes each ReadWritePaths= entry a mount of its own, and a rename between two
    mounts fails: a quarantine inside a root is not listed again (moves stay renames)."""
    config = tmp_path / "dedupd.yaml"
    uploads = tmp_path / "photos"
    config.write_text(
        f"roots:\n  - {{path: {uploads}}}\nquarantine: {{path: {uploads / '.q'}}}\n"
    )
    out, err = _install(tmp_path, "--system", "--print", "--config", str(config))
    assert shlex.split(_values(out)["ReadWritePaths"][0]) == [str(uploads)]
    assert "install -d" not in err and "mount of its own" not in err


def test_a_quarantine_apart_from_the_roots_is_made_first_and_its_copies_explained(
    tmp_path: Path,
) -> None:
    """A missing ReadWritePaths= folder keeps the unit from starting, and the sandbox's
    read-only system keeps the service from making it: the next steps make it, owned by
    dedupd, and say that photos are copied into it (a restored one then belongs to dedupd)."""
    config = tmp_path / "dedupd.yaml"
    uploads, quarantine = tmp_path / "photos", tmp_path / "quarantine"
    config.write_text(f"roots:\n  - {{path: {uploads}}}\nquarantine: {{path: {quarantine}}}\n")
    out, err = _install(tmp_path, "--system", "--print", "--config", str(config))
    assert shlex.split(_values(out)["ReadWritePaths"][0]) == [str(uploads), str(quarantine)]
    assert f"sudo install -d -o dedupd -g dedupd -m 0750 {quarantine}" in err
    assert "mount of its own" in err
    quarantine.mkdir()
    _, again = _install(tmp_path, "--system", "--print", "--config", str(config))
    assert "install -d" not in again and "mount of its own" in again


def test_a_python_whose_links_lead_into_a_home_folder_is_named(tmp_path: Path) -> None:
    """A venv under /opt whose bin/python is a link into ~/.pyenv: the service's user
    cannot run it ("Permission denied"), and the warning only looked at the dedupd script."""
    python = tmp_path / "opt" / "bin" / "python"
    python.parent.mkdir(parents=True)
    python.symlink_to("/root/.pyenv/versions/3.11.7/bin/python3.11")
    found = units.in_homes(["/opt/dedupd/bin/dedupd"], str(python))
    assert found == ["/root/.pyenv/versions/3.11.7/bin/python3.11"]
    assert units.in_homes(["/opt/dedupd/bin/dedupd"], "/usr/bin/python3") == []
