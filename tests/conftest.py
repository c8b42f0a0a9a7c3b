"""Shared fixtures: an isolated environment, no leaked threads, real photos in tmp dirs."""

from __future__ import annotations

import os
import shutil
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import structlog

from tests import photos


@pytest.fixture(autouse=True)
def isolated_env(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """No test reads the developer's config or writes their state directory."""
    for name in ("DEDUPD_CONFIG", "STATE_DIRECTORY", "RUNTIME_DIRECTORY"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("XDG_CONFIG_HOME", str(tmp_path / "xdg-config"))
    monkeypatch.setenv("XDG_STATE_HOME", str(tmp_path / "xdg-state"))
    monkeypatch.setenv("XDG_RUNTIME_DIR", str(tmp_path / "xdg-run"))
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg-cache"))  # review thumbnails
    # Nor finds a system service's socket or database on the machine running the tests.
    monkeypatch.setattr("dedupd.config.SYSTEM_RUNTIME_DIR", tmp_path / "system-run" / "dedupd")
    monkeypatch.setattr("dedupd.config.SYSTEM_STATE_DIR", tmp_path / "system-lib" / "dedupd")
    monkeypatch.setattr("dedupd.config.USER_RUNTIME_DIR", tmp_path / "user-run")


@pytest.fixture(autouse=True)
def fresh_logging() -> Iterator[None]:
    """structlog's defaults before and after every test: a CLI run configures logging for the
    whole process (`dedupd scan --json` filters below ERROR), which hid a later test's
    warnings from `capture_logs` depending on the order the tests ran in."""
    structlog.reset_defaults()
    yield
    structlog.reset_defaults()


@pytest.fixture(autouse=True)
def no_leaked_threads() -> Iterator[None]:
    """Fail a test that leaves a thread running (watchdog's tests do the same)."""
    before = set(threading.enumerate())
    yield
    deadline = time.monotonic() + 2.0
    while True:
        leaked = [t for t in threading.enumerate() if t not in before and t.is_alive()]
        if not leaked or time.monotonic() > deadline:
            break
        leaked[0].join(timeout=0.1)
    assert not leaked, f"threads left running: {leaked}"


@pytest.fixture
def library(tmp_path: Path) -> Path:
    """A camera folder: five real photos plus the duplicates uploads create.

    Expected groups (keeper first by highest resolution, then file size):
      astronaut.jpg = astronaut (1).jpg (exact copy)
      coffee.jpg ~ chat/coffee-wa.jpg (re-encoded at quality 60)
      rocket.jpg ~ chat/rocket-small.jpg (half size)
      chelsea.jpg ~ edit/chelsea-rotated.jpg (pixels turned, EXIF orientation 6)
    hubble.jpg has no duplicate; broken.jpg is a truncated upload.
    """
    root = tmp_path / "photos"
    for name in photos.PHOTOS:
        photos.copy(photos.photo(name), root / f"{name}.jpg")
    photos.copy(photos.photo("astronaut"), root / "astronaut (1).jpg")
    photos.reencode(photos.photo("coffee"), root / "chat" / "coffee-wa.jpg")
    photos.resize(photos.photo("rocket"), root / "chat" / "rocket-small.jpg")
    photos.exif_rotated(photos.photo("chelsea"), root / "edit" / "chelsea-rotated.jpg")
    photos.truncated(photos.photo("chelsea"), root / "broken.jpg")
    return root


@pytest.fixture
def elsewhere(tmp_path: Path) -> Iterator[Path]:
    """A folder on another filesystem than tmp_path (tmpfs at /dev/shm), removed after: a
    keeper or a root there has another st_dev."""
    shm = Path("/dev/shm")
    if not shm.is_dir() or os.stat(shm).st_dev == tmp_path.stat().st_dev:
        pytest.skip("no second filesystem (tmpfs at /dev/shm) on this machine")
    folder = Path(os.path.realpath(shm / f"dedupd-keeper-{os.getpid()}-{tmp_path.name}"))
    folder.mkdir()
    try:
        yield folder
    finally:
        shutil.rmtree(folder, ignore_errors=True)
