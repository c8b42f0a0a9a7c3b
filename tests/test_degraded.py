"""When something is wrong, the daemon and dedupctl say so and keep doing what they safely can:
a config typo does not block reading from a running daemon, a rejected reload is logged by the
daemon, a root that never existed stops `dedupd run` at start (exit 2), and a known root that
is missing is "unavailable", which `dedupctl status` reports with exit 1."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from collections.abc import Iterator, MutableMapping
from pathlib import Path
from typing import Any

import pytest
import structlog
import structlog.testing
from click.testing import CliRunner, Result

from dedupd.cli import dedupctl
from dedupd.daemon import Daemon, Notifier
from dedupd.errors import ConfigError
from tests import photos
from tests.test_daemon import Env, _idle, running, wait_for
from tests.test_scan import _users_link

TYPO = "polcies: {}\n"  # an unknown top-level key: the config does not load


@pytest.fixture
def env(tmp_path: Path) -> Env:
    e = Env(tmp_path)
    e.write_config()
    photos.copy(photos.photo("coffee"), e.root / "IMG_1.jpg")
    photos.copy(photos.photo("rocket"), e.archive / "rocket.jpg")
    return e


@pytest.fixture
def logs(monkeypatch: pytest.MonkeyPatch) -> Iterator[list[MutableMapping[str, Any]]]:
    """The daemon's events (dedupctl, run in the test's process, would configure its own)."""
    monkeypatch.setattr("dedupd.cli._configure_logging", lambda level: None)
    structlog.reset_defaults()
    with structlog.testing.capture_logs() as captured:
        yield captured
    structlog.reset_defaults()


def ctl(env: Env, *args: str) -> Result:
    return CliRunner().invoke(dedupctl, ["--config", str(env.config), *args])


def _typo(env: Env) -> None:
    env.config.write_text(env.config.read_text() + TYPO)


def test_read_only_commands_ask_the_daemon_despite_a_config_typo_and_warn(env: Env) -> None:
    with running(env) as daemon:
        wait_for(lambda: daemon.stats.hashed == 2 and _idle(daemon))
        _typo(env)
        for args in (["status"], ["quarantine", "list"], ["rescan", str(env.root)]):
            result = ctl(env, *args)
            assert result.exit_code == 0, (args, result.output)
            assert result.stderr.startswith(f"warning: {env.config}: polcies: "), result.stderr
            # the user's own socket first, then the system service's
            assert f"; asking the daemon on {daemon.config.socket} or " in result.stderr
        assert ctl(env, "status").stdout.startswith("dedupd running (pid ")
        assert ctl(env, "quarantine", "list").stdout == "quarantine is empty\n"
        answer = json.loads(ctl(env, "status", "--json").stdout)
        assert answer["indexed"] == 2


def test_a_config_typo_still_finds_the_daemon_on_the_socket_the_config_names(
    env: Env,
) -> None:
    """The config names its own `socket:`; a typo elsewhere keeps it from loading, and
    dedupctl asked only the default sockets (no daemon there: exit 3). The socket it names
    is read from the file all the same, and asked first."""
    sock = env.tmp / "run" / "own.sock"
    env.write_config(extra=f"socket: {sock}\n")
    with running(env) as daemon:
        wait_for(lambda: daemon.stats.hashed == 2 and _idle(daemon))
        assert daemon.config.socket == sock
        _typo(env)
        result = ctl(env, "status", "--json")
        assert result.exit_code == 0, result.output
        assert f"; asking the daemon on {sock} or " in result.stderr
        assert json.loads(result.stdout)["indexed"] == 2


def test_commands_that_change_photos_or_records_refuse_a_broken_config(env: Env) -> None:
    """Which daemon they would steer is not known: exit 2 with the config's error, and the
    daemon is not asked."""
    photos.reencode(photos.photo("coffee"), env.root / "wa.jpg")
    with running(env) as daemon:
        wait_for(lambda: env.state(env.root / "wa.jpg") == "quarantined")
        _typo(env)
        for args in (
            ["quarantine", "restore", str(env.root / "wa.jpg")],
            ["distinct", str(env.root / "IMG_1.jpg"), str(env.archive / "rocket.jpg")],
            ["quarantine", "purge", "--older-than", "0s", "--yes"],
        ):
            result = ctl(env, *args)
            assert result.exit_code == 2, (args, result.output)
            assert result.stderr.startswith(f"error: {env.config}: polcies: "), result.stderr
        assert env.state(env.root / "wa.jpg") == "quarantined"
        assert daemon.stats.acted == 1


def test_without_a_daemon_a_broken_config_is_the_error(env: Env) -> None:
    _typo(env)
    result = ctl(env, "quarantine", "list")
    assert result.exit_code == 2
    assert result.stderr.splitlines()[-1].startswith(f"error: {env.config}: polcies: ")


def test_a_rejected_reload_is_logged_by_the_daemon_and_its_error_shown(
    env: Env, logs: list[MutableMapping[str, Any]]
) -> None:
    with running(env) as daemon:
        _typo(env)
        result = ctl(env, "reload")
        assert result.exit_code == 2
        last = result.stderr.splitlines()[-1]  # the daemon's answer, after dedupctl's warning
        assert last.startswith("error: ") and f"{env.config}: polcies: unknown key" in last
        rejected = [e for e in logs if e["event"] == "reload_rejected"]
        assert len(rejected) == 1 and rejected[0]["log_level"] == "warning"
        assert "polcies" in rejected[0]["error"]
        assert daemon.roots == [str(env.root), str(env.archive)]  # the running config stays


def _with_root(env: Env, path: Path) -> None:
    env.config.write_text(
        env.config.read_text().replace("roots:\n", f"roots:\n  - {{path: {path}}}\n")
    )


def test_a_root_that_never_existed_is_a_config_error_at_start_exit_2(env: Env) -> None:
    typo = env.tmp / "uplaods"
    proc = subprocess.run(
        [sys.executable, "-m", "dedupd", "run", str(typo), "--database", str(env.db)],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert proc.returncode == 2, proc.stderr
    assert proc.stderr == (
        f"error: {typo}: no such file or directory, and no photo was ever recorded there; "
        "fix the path or create the folder\n"
    )
    assert not (env.tmp / "xdg-run" / "dedupd.sock").exists()

    _with_root(env, typo)  # the same from the config: its key is named
    with pytest.raises(ConfigError) as caught:
        Daemon(env.config, notifier=Notifier({})).run()
    assert str(caught.value).startswith(f"{env.config}: roots[0].path: {typo}: no such file")
    assert not typo.exists()


def test_a_reload_that_adds_a_root_that_never_existed_is_rejected(env: Env) -> None:
    with running(env) as daemon:
        _with_root(env, env.tmp / "uplaods")
        result = ctl(env, "reload")
        assert result.exit_code == 2 and "uplaods: no such file or directory" in result.stderr
        assert daemon.roots == [str(env.root), str(env.archive)]


def test_a_known_root_that_is_missing_is_unavailable_and_status_exits_1(env: Env) -> None:
    with running(env) as daemon:  # the archive's photo is recorded
        wait_for(lambda: daemon.stats.hashed == 2 and _idle(daemon))
    away = env.tmp / "unmounted"
    os.rename(env.archive, away)  # the disk is not mounted at the next start
    with running(env, retry_interval=0.2) as daemon:
        result = ctl(env, "status")
        assert result.exit_code == 1, result.output
        assert f"root      {env.archive}  unavailable  policy reference" in result.stdout
        assert result.stderr == (
            f"warning: root unavailable: {env.archive}: root is not a directory or is not "
            "mounted\n"
        )
        as_json = ctl(env, "status", "--json")
        assert as_json.exit_code == 1
        assert json.loads(as_json.stdout)["roots"][1]["state"] == "unavailable"
        os.rename(away, env.archive)  # mounted again
        wait_for(lambda: ctl(env, "status").exit_code == 0, what="the root to be back")
        assert env.state(env.archive / "rocket.jpg") == "ok"


def test_a_root_that_is_another_users_link_is_refused_and_the_other_roots_served(
    env: Env, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The archive swapped for a link of another user's (to Bob's photos) while dedupd was
    down: it is unavailable, as a missing root, and `dedupctl status` says why (exit 1);
    nothing under the link is recorded, and uploads to the other root are still hashed."""
    bob = env.tmp / "bob"
    photos.copy(photos.photo("hubble"), bob / "hubble.jpg")
    shutil.rmtree(env.archive)
    why = _users_link(env.archive, bob, monkeypatch)
    with running(env, retry_interval=0.2) as daemon:
        wait_for(lambda: daemon.stats.hashed == 1 and _idle(daemon))  # IMG_1.jpg
        result = ctl(env, "status")
        assert result.exit_code == 1, result.output
        assert f"root      {env.archive}  unavailable  policy reference" in result.stdout
        assert result.stderr == f"warning: root unavailable: {why}\n"
        answer = json.loads(ctl(env, "status", "--json").stdout)
        assert answer["roots"][1] == {
            "path": str(env.archive),
            "state": "unavailable",
            "policy": "reference",
            "reason": why,
        }
        photos.copy(photos.photo("rocket"), env.root / "IMG_2.jpg")
        wait_for(lambda: env.state(env.root / "IMG_2.jpg") == "ok", what="the upload")
        assert daemon.watcher.states[str(env.archive)] == "unavailable"
    assert env.record(env.archive / "hubble.jpg") is None and env.record(bob / "hubble.jpg") is None


def test_a_root_swapped_for_another_users_link_while_running_keeps_its_records(
    env: Env, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A link planted while the daemon runs is looked at when the root is walked again: the
    root turns unavailable, its records are kept, and the folder the link leads to is not
    walked."""
    bob = env.tmp / "bob"
    photos.copy(photos.photo("hubble"), bob / "hubble.jpg")
    with running(env, retry_interval=0.2) as daemon:
        wait_for(lambda: daemon.stats.hashed == 2 and _idle(daemon))
        os.rename(env.archive, env.tmp / "archive.old")
        why = _users_link(env.archive, bob, monkeypatch)
        assert ctl(env, "rescan").exit_code == 0
        wait_for(lambda: ctl(env, "status").stderr == f"warning: root unavailable: {why}\n")
        photos.copy(photos.photo("chelsea"), env.root / "IMG_2.jpg")
        wait_for(lambda: env.state(env.root / "IMG_2.jpg") == "ok", what="the upload")
        # counted just after the record is written, on the daemon's thread
        wait_for(lambda: daemon.stats.hashed == 3, what="the count")
    assert env.state(env.archive / "rocket.jpg") == "ok"
    assert env.record(env.archive / "hubble.jpg") is None and env.record(bob / "hubble.jpg") is None
