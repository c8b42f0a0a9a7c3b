"""The shipped systemd units say what the daemon relies on (notify, watchdog, hardening)."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest

UNITS = Path(__file__).parent.parent / "systemd"


def _service(name: str) -> dict[str, list[str]]:
    values: dict[str, list[str]] = {}
    for line in (UNITS / name).read_text().splitlines():
        if "=" in line and not line.startswith(("#", "[")):
            key, _, value = line.partition("=")
            values.setdefault(key.strip(), []).append(value.strip())
    return values


@pytest.mark.parametrize("name", ["dedupd.service", "dedupd-user.service"])
def test_units_use_the_notify_protocol_the_daemon_speaks(name: str) -> None:
    s = _service(name)
    assert s["Type"] == ["notify"]
    assert s["WatchdogSec"] and s["ExecReload"] == ["/bin/kill -HUP $MAINPID"]
    assert any("dedupd run" in cmd for cmd in s["ExecStart"])
    assert s["StateDirectory"] == ["dedupd"] and s["RuntimeDirectory"] == ["dedupd"]


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


@pytest.mark.skipif(shutil.which("systemd-analyze") is None, reason="needs systemd-analyze")
def test_system_unit_passes_systemd_analyze_verify() -> None:
    result = subprocess.run(
        ["systemd-analyze", "verify", str(UNITS / "dedupd.service")], capture_output=True, text=True
    )
    problems = [
        line for line in result.stderr.splitlines() if line and "is not executable" not in line
    ]  # dedupd is not installed here
    assert problems == []
