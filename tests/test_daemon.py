"""The daemon on real temp folders: uploads settle and are hashed once, policies act safely.

Most tests run `Daemon.run()` in a thread (the same code `dedupd run` runs); the signal and
systemd-notify tests start the real `dedupd run` process.
"""

from __future__ import annotations

import hashlib
import json
import os
import random
import re
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator, MutableMapping
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest
import structlog.testing
from PIL import Image

import dedupd.imaging
import dedupd.watcher
from dedupd import render
from dedupd.actions import Actions
from dedupd.control import ControlClient
from dedupd.daemon import Daemon, Notifier
from dedupd.errors import ConfigError, DaemonStopping
from dedupd.features import FEATURES_KEY
from dedupd.store import DECIDING_ATTEMPTS, ActionRecord, FileRecord, Store
from tests import photos, workers
from tests.test_config import yaml_bomb

SETTLE = 0.3


def wait_for(predicate: Callable[[], object], timeout: float = 20.0, what: str = "") -> None:
    """Poll `predicate` until true; fail after `timeout` seconds."""
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            pytest.fail(f"timed out waiting for {what or predicate}")
        time.sleep(0.02)


class Env:
    def __init__(self, tmp_path: Path):
        self.tmp = tmp_path
        self.root = (tmp_path / "uploads").resolve()
        self.archive = (tmp_path / "archive").resolve()
        self.quarantine = (tmp_path / "quarantine").resolve()
        self.db = tmp_path / "state" / "dedupd.db"
        self.root.mkdir()
        self.archive.mkdir()
        self.config = tmp_path / "dedupd.yaml"

    def write_config(
        self, camera: str = "{exact: delete, near: quarantine}", extra: str = ""
    ) -> Path:
        self.config.write_text(
            f"database: {self.db}\n"
            f"watch: {{settle_seconds: {SETTLE}, rescan_interval: 1h}}\n"
            f"hashing: {{workers: 2}}\n"
            f"roots:\n  - {{path: {self.root}, policy: camera}}\n"
            f"  - {{path: {self.archive}, policy: reference}}\n"
            f"policies:\n  camera: {camera}\n"
            f"quarantine: {{path: {self.quarantine}}}\n" + extra
        )
        return self.config

    def record(self, path: Path) -> FileRecord | None:
        with Store(self.db) as store:
            return store.file_at(path)

    def state(self, path: Path) -> str | None:
        record = self.record(path)
        return record.state if record else None


@pytest.fixture
def env(tmp_path: Path) -> Env:
    e = Env(tmp_path)
    e.write_config()
    return e


@contextmanager
def running(env: Env, notifier: Notifier | None = None, **kw: object) -> Iterator[Daemon]:
    notifier = Notifier({}) if notifier is None else notifier
    daemon = Daemon(env.config, notifier=notifier, **kw)  # type: ignore[arg-type]
    errors: list[BaseException] = []

    def run() -> None:
        try:
            daemon.run()
        except BaseException as exc:  # surfaced in the test, not lost in the thread
            errors.append(exc)

    thread = threading.Thread(target=run, name="dedupd-test-daemon")
    thread.start()
    try:
        assert daemon.wait_ready(30), errors
        yield daemon
    finally:
        daemon.request_stop()
        thread.join(30)
        assert not thread.is_alive(), "daemon did not stop"
    assert not errors, errors


def _reconciled(logs: list[MutableMapping[str, Any]], root: Path) -> int:
    """Reconciles that ended finding `root` unavailable."""
    return sum(e["event"] == "reconciled" and str(root) in e["unavailable"] for e in list(logs))


def _idle(daemon: Daemon) -> bool:
    """Whether the daemon has nothing left to do, asked on its own thread, between two steps
    of its loop. Read from this thread, the queues can each look empty in turn while work
    passes from one to the next: a held decision made releases the upload waiting for it
    into the confirm queue after the pool's count was read, and the pool has it before that
    queue is, so a test let go with a decision still to come (seen under load)."""
    try:
        answer = daemon.submit(
            lambda: {"idle": daemon.pipeline.idle(daemon.pool) and daemon.watcher.hints.empty()}
        ).result(timeout=5)
    except (DaemonStopping, TimeoutError):
        return False
    return bool(answer["idle"])


def test_an_upload_written_in_place_that_pauses_is_left_alone_until_its_writer_closes_it(
    env: Env,
) -> None:
    """Red team 12: a motion photo written in place (scp, Samba) paused past the settle time
    after its still's bytes, the very bytes of a photo already there: it was deleted as an
    exact duplicate, and the rest of the upload went to a file without a name."""
    env.write_config(camera="{exact: delete, near: report}")
    photos.copy(photos.photo("coffee"), env.root / "IMG_1.jpg")
    still = photos.photo("coffee").read_bytes()
    with running(env) as daemon:
        wait_for(lambda: daemon.stats.hashed == 1 and _idle(daemon), what="IMG_1")
        with open(env.root / "MVIMG_1.jpg", "wb") as upload:
            upload.write(still)
            upload.flush()
            time.sleep(6 * SETTLE)  # the link stalls
            assert (env.root / "MVIMG_1.jpg").exists()
            assert daemon.stats.hashed == 1  # not even hashed while open
            upload.write(b"\0" * 100_000)  # the embedded video
        wait_for(lambda: daemon.stats.hashed == 2 and _idle(daemon), what="the upload")
    assert (env.root / "MVIMG_1.jpg").read_bytes() == still + b"\0" * 100_000


def test_rename_into_place_is_hashed_once_and_the_temp_name_never(env: Env) -> None:
    with running(env) as daemon:
        tmp = env.root / ".syncthing.IMG_0001.jpg.tmp"
        photos.copy(photos.photo("coffee"), tmp)
        os.rename(tmp, env.root / "IMG_0001.jpg")
        wait_for(lambda: daemon.stats.hashed == 1, what="the upload to be hashed")
        assert env.state(env.root / "IMG_0001.jpg") == "ok"
        assert env.record(tmp) is None
        wait_for(lambda: _idle(daemon))
        assert daemon.stats.hashed == 1


@pytest.mark.slow
def test_slow_in_place_write_is_hashed_once_after_it_settles(env: Env) -> None:
    """scp/Samba/rsync --inplace: the file grows in chunks; only the finished file counts."""
    data = photos.photo("hubble").read_bytes()
    target = env.root / "IMG_0002.jpg"
    with running(env) as daemon, open(target, "wb") as f:
        for i in range(6):
            f.write(data[i * len(data) // 6 : (i + 1) * len(data) // 6])
            f.flush()
            time.sleep(SETTLE / 2)  # slower than a burst, faster than the settle time
            assert daemon.stats.hashed == 0, "hashed while still being written"
            assert env.record(target) is None, "decoded while still being written (truncated)"
        f.close()
        wait_for(lambda: daemon.stats.hashed == 1, what="the finished file to be hashed")
        record = env.record(target)
        assert record is not None and record.size == len(data) and record.state == "ok"
        time.sleep(3 * SETTLE)  # absence check: no second hash of the same file
        assert daemon.stats.hashed == 1


@pytest.mark.parametrize("command", ["rescan", "reload"])
@pytest.mark.slow
def test_a_reconcile_during_a_slow_in_place_write_leaves_the_file_to_settle(
    env: Env, command: str
) -> None:
    """A reconcile while a file is still being written (`dedupctl rescan`, the hourly rescan,
    an overflow's; a reload, which starts a new settler, and its reconcile) leaves that file
    to settle, as its events would: it was hashed at once, half written ('truncated'), and
    a quarantine of it would move the file from under its writer."""
    env.config.write_text(
        env.config.read_text().replace(f"settle_seconds: {SETTLE}", "settle_seconds: 3")
    )
    data = photos.photo("hubble").read_bytes()
    target = env.root / "IMG_0002.jpg"
    with running(env) as daemon, open(target, "wb") as f:
        client = ControlClient(daemon.config.socket, timeout=10)
        f.write(data[: len(data) // 2])
        f.flush()
        wait_for(lambda: len(daemon.pipeline.settler) == 1, what="the write seen")
        rescans = daemon.stats.rescans
        client.post(command, {})
        wait_for(lambda: daemon.stats.rescans > rescans, what="the reconcile")
        wait_for(lambda: daemon.pipeline.queued() == 0 and daemon.pool.in_flight == 0)
        f.write(data[len(data) // 2 :])
        f.close()
        wait_for(lambda: daemon.stats.hashed == 1, what="the finished file to be hashed")
        wait_for(lambda: _idle(daemon))
        assert daemon.stats.errors == 0, "hashed while still being written"
        record = env.record(target)
        assert record is not None and record.size == len(data) and record.state == "ok"


@pytest.mark.slow
def test_five_hundred_files_at_once_are_each_hashed_once(env: Env) -> None:
    rng = random.Random(1)
    staging = env.tmp / "staging"
    staging.mkdir()
    for i in range(500):
        Image.frombytes("L", (24, 24), rng.randbytes(576)).save(staging / f"n{i:03}.png")
    with running(env) as daemon:
        shutil.copytree(staging, env.root / "batch")  # a folder of 500 files appears at once
        wait_for(lambda: daemon.stats.hashed >= 500, timeout=60, what="500 files")
        wait_for(lambda: _idle(daemon))
        assert daemon.stats.hashed == 500
        with Store(env.db) as store:
            assert store.count_by_state([str(env.root)]) == {"ok": 500}


def test_temp_and_ignored_names_are_never_hashed(env: Env) -> None:
    src = photos.photo("rocket")
    names = [
        ".syncthing.a.jpg.tmp",
        "b.jpg.part",
        ".c.jpg.~x1",
        "d.jpg.crdownload",
        "~e.jpg",
        "._f.jpg",
        ".DS_Store",
        "g.txt",
    ]
    with running(env) as daemon:
        for name in names:
            photos.copy(src, env.root / name)
        photos.copy(src, env.root / "real.jpg")
        wait_for(lambda: daemon.stats.hashed == 1)
        wait_for(lambda: _idle(daemon))
        assert daemon.stats.hashed == 1
        assert all(env.record(env.root / n) is None for n in names)


def test_exact_duplicate_is_deleted_while_its_keeper_exists(env: Env) -> None:
    photos.copy(photos.photo("coffee"), env.root / "IMG_1.jpg")
    with running(env) as daemon:
        photos.copy(photos.photo("coffee"), env.root / "IMG_1 (1).jpg")
        wait_for(lambda: env.state(env.root / "IMG_1 (1).jpg") == "deleted")
        assert not (env.root / "IMG_1 (1).jpg").exists()
        assert (env.root / "IMG_1.jpg").exists()
        # Without its keeper, the same bytes arriving again are kept.
        (env.root / "IMG_1.jpg").unlink()
        wait_for(lambda: env.state(env.root / "IMG_1.jpg") == "missing")
        photos.copy(photos.photo("coffee"), env.root / "IMG_2.jpg")
        wait_for(lambda: env.state(env.root / "IMG_2.jpg") == "ok")
        wait_for(lambda: _idle(daemon))
        assert (env.root / "IMG_2.jpg").exists()


def test_near_duplicate_is_quarantined_with_a_restorable_record(env: Env) -> None:
    photos.copy(photos.photo("coffee"), env.root / "IMG_1.jpg")
    with running(env):
        photos.reencode(photos.photo("coffee"), env.root / "chat" / "IMG-WA0001.jpg")
        wait_for(lambda: env.state(env.root / "chat" / "IMG-WA0001.jpg") == "quarantined")
    moved = env.quarantine / str(env.root).lstrip("/") / "chat" / "IMG-WA0001.jpg"
    assert moved.exists() and not (env.root / "chat" / "IMG-WA0001.jpg").exists()
    with Store(env.db) as store:
        (entry,) = store.actions("kind = 'quarantine'")
        assert entry.keeper_path == str(env.root / "IMG_1.jpg")
        assert entry.distance is not None and entry.distance > 0
        Actions(store, env.quarantine).restore(entry.id)
    assert (env.root / "chat" / "IMG-WA0001.jpg").exists()
    # Restored means distinct: the next daemon run leaves it alone.
    with running(env) as daemon:
        wait_for(lambda: env.state(env.root / "chat" / "IMG-WA0001.jpg") == "ok")
        wait_for(lambda: _idle(daemon))
    assert (env.root / "chat" / "IMG-WA0001.jpg").exists()


@pytest.mark.slow
def test_a_copy_arriving_while_its_original_is_held_is_decided_after_it(env: Env) -> None:
    """Two sync apps upload one screenshot at once: N into the camera folder, its exact copy
    M into a folder whose policy matches only the closest copies (2 bits). N near-matches an
    older, different screenshot K, so its decision is held for the pixel comparison; M, whose
    only match is N, arrives meanwhile. M used to be decided at once with N out of sight: "no
    duplicate", and left beside N for good. M now waits for N's decision, then goes as N's
    exact copy; N, a different picture from K, stays. Which of the two settles first is the
    daemon's to find (both are written at once; on this machine M often is): then N is the
    copy that goes. Either way one of the two goes, never both, never neither (the engine's
    order is pinned by tests/test_likeness.py's scans)."""
    from tests.test_likeness import _aged, chat

    other = (env.tmp / "whatsapp").resolve()  # after "uploads": N is hashed first
    other.mkdir()
    env.write_config(camera="{exact: quarantine, near: quarantine}")
    roots = f"  - {{path: {env.archive}, policy: reference}}\n"
    strict = "  strict: {exact: quarantine, near: quarantine, threshold: 0.01}\n"
    config = env.config.read_text()
    config = config.replace(roots, roots + f"  - {{path: '{other}', policy: strict}}\n")
    env.config.write_text(config.replace("quarantine: {path", strict + "quarantine: {path"))
    k = chat(env.root / "chat1.png", 1)
    with Image.open(k) as im:
        im.save(k, compress_level=0)  # the larger file: the one a near match keeps
    _aged(k, 3600)
    original = chat(env.tmp / "chat2.png", 2)
    n, m = env.root / "chat2.png", other / "chat2.png"
    with running(env) as daemon:
        wait_for(lambda: env.state(k) == "ok")
        shutil.copy2(original, n)
        shutil.copy2(original, m)
        states = lambda: {env.state(n), env.state(m)}  # noqa: E731
        wait_for(lambda: states() == {"ok", "quarantined"}, what="one of the copies quarantined")
        wait_for(lambda: _idle(daemon))
    kept, moved = (n, m) if env.state(n) == "ok" else (m, n)
    assert kept.exists() and not moved.exists() and k.exists() and env.state(k) == "ok"
    with Store(env.db) as store:
        (entry,) = store.actions("kind = 'quarantine'")
        assert entry.keeper_path == str(kept) and entry.distance == 0


@pytest.mark.slow
def test_a_quarantined_file_synced_back_is_recognized_by_its_tombstone(env: Env) -> None:
    photos.copy(photos.photo("coffee"), env.root / "IMG_1.jpg")
    with running(env):
        photos.reencode(photos.photo("coffee"), env.root / "IMG_2.jpg")
        wait_for(lambda: env.state(env.root / "IMG_2.jpg") == "quarantined")
        photos.reencode(photos.photo("coffee"), env.root / "IMG_2.jpg")  # the phone re-syncs it
        wait_for(lambda: len(_quarantines(env)) == 2, what="the second quarantine")
        assert not (env.root / "IMG_2.jpg").exists()
    first, second = _quarantines(env)
    assert re.fullmatch(
        rf"tombstone: quarantined before \(action {first.id}\); pdq agrees \(\d+ bits\);"
        r" pixels agree \([\d.]+% of a cell at most\)",
        second.reason or "",
    ), second.reason
    assert Path(second.dst or "").name == "IMG_2 (1).jpg"


def _quarantines(env: Env) -> list[ActionRecord]:
    with Store(env.db) as store:
        return [a for a in store.actions("kind = 'quarantine'") if a.state == "done"]


def test_burst_shots_are_reported_not_acted_on(env: Env) -> None:
    def shot(path: Path, second: int, quality: int) -> None:
        exif = Image.Exif()
        exif.get_ifd(0x8769)[0x9003] = f"2026:11:23 10:00:{second:02}"
        path.parent.mkdir(parents=True, exist_ok=True)
        with Image.open(photos.photo("chelsea")) as im:
            im.save(path, quality=quality, exif=exif)

    shot(env.root / "burst_1.jpg", 0, 95)
    with running(env) as daemon:
        shot(env.root / "burst_2.jpg", 1, 80)
        wait_for(lambda: env.state(env.root / "burst_2.jpg") == "ok")
        wait_for(lambda: _idle(daemon))
    assert (env.root / "burst_2.jpg").exists()


def test_reference_roots_keep_their_files_and_are_never_acted_on(env: Env) -> None:
    photos.resize(photos.photo("rocket"), env.archive / "rocket-small.jpg", 0.5)
    with running(env):
        # A better copy arrives in the camera root: the reference file still wins.
        photos.copy(photos.photo("rocket"), env.root / "rocket.jpg")
        wait_for(lambda: env.state(env.root / "rocket.jpg") == "quarantined")
        # A duplicate landing in the reference root is only reported.
        photos.copy(photos.photo("rocket"), env.archive / "rocket-again.jpg")
        wait_for(lambda: env.state(env.archive / "rocket-again.jpg") == "ok")
    assert (env.archive / "rocket-small.jpg").exists()
    assert (env.archive / "rocket-again.jpg").exists()


def test_dry_run_touches_nothing(env: Env) -> None:
    env.write_config(extra="dry_run: true\n")
    photos.copy(photos.photo("coffee"), env.root / "IMG_1.jpg")
    with running(env) as daemon:
        photos.copy(photos.photo("coffee"), env.root / "IMG_1 (1).jpg")
        photos.reencode(photos.photo("coffee"), env.root / "IMG_WA.jpg")
        wait_for(lambda: daemon.stats.hashed == 3)
        wait_for(lambda: _idle(daemon))
    assert sorted(p.name for p in env.root.iterdir()) == [
        "IMG_1 (1).jpg",
        "IMG_1.jpg",
        "IMG_WA.jpg",
    ]
    assert not env.quarantine.exists()
    with Store(env.db) as store:
        assert store.actions() == []


def test_moves_are_followed_and_deletes_marked(env: Env) -> None:
    photos.copy(photos.photo("hubble"), env.root / "a.jpg")
    with running(env) as daemon:
        wait_for(lambda: daemon.stats.hashed == 1)
        before = env.record(env.root / "a.jpg")
        (env.root / "2026").mkdir()
        os.rename(env.root / "a.jpg", env.root / "2026" / "a.jpg")
        wait_for(lambda: env.record(env.root / "2026" / "a.jpg") is not None)
        after = env.record(env.root / "2026" / "a.jpg")
        assert before is not None and after is not None and after.id == before.id
        (env.root / "2026" / "a.jpg").unlink()
        wait_for(lambda: env.state(env.root / "2026" / "a.jpg") == "missing")
        assert daemon.stats.hashed == 1


@pytest.mark.parametrize("while_running", [True, False], ids=["watched", "at-start"])
def test_a_copy_moved_into_another_root_is_followed_and_decided_by_its_policy(
    env: Env, while_running: bool
) -> None:
    """A copy moved from the reference archive into the uploads is the same file (followed,
    never decoded again) and arrives under the uploads' policy: quarantined as a duplicate of
    the archive's photo, whether the move is seen as it happens or found by the next start."""
    env.write_config("{exact: quarantine, near: quarantine}")
    photos.copy(photos.photo("hubble"), env.archive / "a.jpg")
    photos.copy(photos.photo("hubble"), env.archive / "a copy.jpg")
    with running(env) as daemon:
        wait_for(lambda: daemon.stats.hashed == 2 and _idle(daemon), what="both hashed")
        assert env.state(env.archive / "a copy.jpg") == "ok"  # a reference root: untouched
        before = env.record(env.archive / "a copy.jpg")
        if while_running:
            os.rename(env.archive / "a copy.jpg", env.root / "a copy.jpg")
            wait_for(lambda: env.state(env.root / "a copy.jpg") == "quarantined", what="moved")
            # the counters move just after the record is written (on the daemon's thread)
            wait_for(lambda: daemon.stats.acted == 1 and _idle(daemon), what="counted")
            assert daemon.stats.hashed == 2
    if not while_running:
        os.rename(env.archive / "a copy.jpg", env.root / "a copy.jpg")
        with running(env) as daemon:
            wait_for(lambda: env.state(env.root / "a copy.jpg") == "quarantined", what="moved")
            wait_for(lambda: daemon.stats.acted == 1 and _idle(daemon), what="counted")
            assert daemon.stats.hashed == 0
    after = env.record(env.root / "a copy.jpg")
    assert before is not None and after is not None and after.id == before.id
    assert env.state(env.archive / "a.jpg") == "ok" and (env.archive / "a.jpg").exists()
    assert env.record(env.archive / "a copy.jpg") is None


def test_a_folder_moved_into_another_root_is_followed_file_by_file(env: Env) -> None:
    """A whole folder moved from the archive into the uploads (one rename of a folder): each
    photo in it is followed (never decoded again) and decided by the uploads' policy."""
    env.write_config("{exact: quarantine, near: quarantine}")
    photos.copy(photos.photo("hubble"), env.archive / "hubble.jpg")
    trip = env.archive / "trip"
    photos.copy(photos.photo("hubble"), trip / "hubble copy.jpg")
    photos.copy(photos.photo("rocket"), trip / "rocket.jpg")
    with running(env) as daemon:
        wait_for(lambda: daemon.stats.hashed == 3 and _idle(daemon), what="all hashed")
        ids = {n: env.record(trip / n) for n in ("hubble copy.jpg", "rocket.jpg")}
        os.rename(trip, env.root / "trip")
        moved = env.root / "trip"
        wait_for(lambda: env.state(moved / "hubble copy.jpg") == "quarantined", what="decided")
        wait_for(lambda: env.state(moved / "rocket.jpg") == "ok" and _idle(daemon), what="moved")
        assert daemon.stats.hashed == 3
        for name, before in ids.items():
            after = env.record(moved / name)
            assert before is not None and after is not None and after.id == before.id
            assert env.record(trip / name) is None
    assert (env.archive / "hubble.jpg").exists() and (moved / "rocket.jpg").exists()


def test_an_upload_renamed_while_in_the_pool_is_hashed_at_its_new_name(env: Env) -> None:
    """A new upload renamed (a photo app sorting it into a folder) after it was queued and
    before its worker opened it: the worker finds nothing at the old name ('vanished'). The
    file at the new name is a photo never hashed, not the version that vanished: it is
    hashed and decided (before, the rename was followed, and its record said 'vanished'
    error, never to be hashed again while unchanged)."""
    with running(env, work=workers.scripted) as daemon:
        photos.copy(photos.photo("coffee"), env.root / "wait-a.jpg")
        wait_for(lambda: daemon.pool.in_flight == 1, what="the upload in a worker")
        (env.root / "2026").mkdir()
        os.rename(env.root / "wait-a.jpg", env.root / "2026" / "wait-a.jpg")
        (env.root / "release").touch()  # the worker opens the old name now
        wait_for(lambda: env.state(env.root / "wait-a.jpg") is not None, what="the old name")
        wait_for(lambda: env.state(env.root / "2026" / "wait-a.jpg") is not None)
        wait_for(lambda: _idle(daemon))
        record = env.record(env.root / "2026" / "wait-a.jpg")
        assert record is not None and record.state == "ok", record
        assert len(daemon.ingest.index) == 1


def test_a_rename_is_followed_only_for_the_same_file_not_a_lookalike(env: Env) -> None:
    """One identity rule (dev, inode, size, mtime), as the scanner's: a file renamed and at
    once replaced by another file of the same size and times is hashed, not taken for the
    moved photo (whose hash would then describe bytes that are no longer there)."""
    photos.copy(photos.photo("hubble"), env.root / "a.jpg")
    with running(env) as daemon:
        wait_for(lambda: daemon.stats.hashed == 1)
        data = bytearray((env.root / "a.jpg").read_bytes())
        data[len(data) // 2] ^= 0xFF  # other bytes, same size
        lookalike = env.tmp / "lookalike.tmp"
        lookalike.write_bytes(bytes(data))
        st = os.stat(env.root / "a.jpg")
        os.utime(lookalike, ns=(st.st_atime_ns, st.st_mtime_ns))
        os.rename(env.root / "a.jpg", env.root / "b.jpg")
        os.rename(lookalike, env.root / "b.jpg")  # before the daemon looks at the first move
        wanted = hashlib.sha256(bytes(data)).hexdigest()
        wait_for(
            lambda: (r := env.record(env.root / "b.jpg")) is not None and r.sha256 == wanted,
            what="the lookalike hashed as itself",
        )


@pytest.mark.slow
def test_lost_events_are_caught_by_the_rescan(env: Env, monkeypatch: pytest.MonkeyPatch) -> None:
    """An inotify overflow drops events; the periodic reconcile still finds the file."""
    env.write_config().write_text(
        env.config.read_text().replace("rescan_interval: 1h", "rescan_interval: 1")
    )
    monkeypatch.setattr(dedupd.watcher._Handler, "dispatch", lambda self, event: None)
    with running(env):
        photos.copy(photos.photo("coffee"), env.root / "IMG_1.jpg")
        wait_for(lambda: env.state(env.root / "IMG_1.jpg") == "ok", timeout=15)


def test_a_root_that_disappears_is_unavailable_not_deleted_and_comes_back(env: Env) -> None:
    """An unplugged disk is not a mass deletion; plugged back in, it is watched again."""
    photos.copy(photos.photo("coffee"), env.root / "IMG_1.jpg")
    with running(env, retry_interval=0.3) as daemon:
        wait_for(lambda: daemon.stats.hashed == 1)
        env.root.rename(env.tmp / "unplugged")
        wait_for(lambda: daemon.watcher.states.get(str(env.root)) == "unavailable")
        assert env.state(env.root / "IMG_1.jpg") == "ok"
        (env.tmp / "unplugged").rename(env.root)
        wait_for(lambda: daemon.watcher.states.get(str(env.root)) == "watching")
        photos.copy(photos.photo("rocket"), env.root / "IMG_2.jpg")
        wait_for(lambda: env.state(env.root / "IMG_2.jpg") == "ok", timeout=10)
    assert env.state(env.root / "IMG_1.jpg") == "ok"


def test_a_disk_mounted_again_during_a_backlog_is_watched_at_once(env: Env) -> None:
    """A root whose folder is replaced by another that holds photos (its disk unmounted and
    mounted again) was marked unavailable, judged by that folder, and looked at again only
    by the reconcile, which waits for the backlog to drain (hours for a large library):
    uploads there meanwhile went unseen. It is watched at once now; an empty folder there
    (the bare mount point) still waits for the reconcile's judgement."""
    rng = random.Random(4)
    for i in range(12):  # more than the pool holds (2 workers): a backlog stays queued
        tiny = env.archive / f"wait-{i:02}.png"
        Image.frombytes("L", (24, 24), rng.randbytes(576)).save(tiny)
        os.utime(tiny, (1_000_000_000, 1_000_000_000))  # settled long ago: a backlog file
    photos.copy(photos.photo("coffee"), env.root / "IMG_1.jpg")
    with (
        structlog.testing.capture_logs() as logs,
        running(env, work=workers.scripted, retry_interval=0.2) as daemon,
    ):
        wait_for(lambda: daemon.pool.in_flight > 0 and daemon.pipeline.backlog, what="backlog")
        env.root.rename(env.tmp / "disk")  # unmounted...
        shutil.copytree(env.tmp / "disk", env.tmp / "disk-again")
        (env.tmp / "disk-again").rename(env.root)  # ...and mounted again: another folder
        wait_for(lambda: any(e["event"] == "root_lost" for e in list(logs)), what="lost")
        st = os.stat(env.root)
        # the folder now there, watched (its state alone may still be the lost one's for a
        # moment after root_lost is logged)
        wait_for(
            lambda: daemon.watcher.states[str(env.root)] == "watching"
            and daemon.watcher._identity.get(str(env.root)) == (st.st_dev, st.st_ino),
            what="watched",
        )
        assert daemon.pipeline.backlog, "the root's reconcile ran: nothing tested"
        (env.archive / "release").touch()


def test_status_says_why_a_root_is_unavailable_while_its_reconcile_waits(
    env: Env, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A root swapped for another user's link while a backlog is hashed: its watch is lost
    at once, but the reconcile that said why waits for the backlog to drain (hours, for a
    large library). Meanwhile status gave no reason, and `dedupctl status` said the root was
    "missing or not mounted". The reason is recorded when the root is found unavailable."""
    from click.testing import CliRunner

    from dedupd.cli import dedupctl
    from tests.test_scan import _users_link

    rng = random.Random(3)
    for i in range(12):  # more than the pool holds (2 workers): a backlog stays queued
        tiny = env.archive / f"wait-{i:02}.png"
        Image.frombytes("L", (24, 24), rng.randbytes(576)).save(tiny)
        os.utime(tiny, (1_000_000_000, 1_000_000_000))  # settled long ago: a backlog file
    bob = env.tmp / "bob"
    bob.mkdir()
    with running(env, work=workers.scripted) as daemon:
        wait_for(lambda: daemon.pool.in_flight > 0 and daemon.pipeline.backlog, what="backlog")
        env.root.rename(env.tmp / "uploads.old")
        why = _users_link(env.root, bob, monkeypatch)
        wait_for(lambda: daemon.watcher.states[str(env.root)] == "unavailable", what="lost")
        answer = ControlClient(daemon.config.socket, timeout=10).get("status")
        table = CliRunner().invoke(dedupctl, ["--config", str(env.config), "status"])
        assert daemon.pipeline.backlog, "the root's reconcile ran: nothing tested"
        (env.archive / "release").touch()
    (root,) = [r for r in answer["roots"] if r["path"] == str(env.root)]
    assert (root["state"], root["reason"]) == ("unavailable", why)
    assert table.exit_code == 1
    assert f"warning: root unavailable: {why}\n" in table.stderr


@pytest.mark.slow
def test_a_root_swapped_for_a_link_is_not_watched_until_it_is_a_folder_again(
    env: Env, monkeypatch: pytest.MonkeyPatch
) -> None:
    """inotify watches the folder, not its name: a root swapped for another user's link kept
    its watch on the folder moved aside, whose changes were reported under the root's name.
    Each photo written there (named as one the link leads to: phones name photos alike)
    queued a reconcile that logged `root_unavailable` again, and hashed nothing; one deleted
    there was marked missing at the root. A root found unavailable is no longer watched, its
    records kept as they are; a folder again, it is watched and its photos hashed."""
    from tests.test_scan import _users_link

    def unavailable_logged() -> int:
        return sum(e["event"] == "root_unavailable" for e in list(logs))

    old, bob = env.tmp / "uploads.old", env.tmp / "bob"
    names = ["IMG_0002.jpg", "IMG_0003.jpg", "IMG_0004.jpg"]
    for name in names:
        photos.copy(photos.photo("hubble"), bob / name)
    photos.copy(photos.photo("coffee"), env.root / "IMG_0001.jpg")
    with structlog.testing.capture_logs() as logs, running(env, retry_interval=0.3) as daemon:
        wait_for(lambda: env.state(env.root / "IMG_0001.jpg") == "ok", what="hashed")
        env.root.rename(old)
        _users_link(env.root, bob, monkeypatch)
        # The reconcile logs the root unavailable as it walks, then counts itself
        wait_for(lambda: _reconciled(logs, env.root) == 1, what="the lost root's reconcile")
        wait_for(lambda: _idle(daemon))
        rescans = daemon.stats.rescans
        assert unavailable_logged() == 1
        for name, photo in zip(names, ["astronaut", "chelsea", "rocket"], strict=True):
            photos.copy(photos.photo(photo), old / name)
            time.sleep(4 * SETTLE)  # absence check: no reconcile follows the write
        (old / "IMG_0001.jpg").unlink()
        time.sleep(4 * SETTLE)  # absence check: its record is not marked missing
        assert (unavailable_logged(), daemon.stats.rescans) == (1, rescans)
        assert daemon.watcher.states[str(env.root)] == "unavailable"
        assert env.state(env.root / "IMG_0001.jpg") == "ok"

        env.root.unlink()
        old.rename(env.root)  # the folder is back
        wait_for(lambda: daemon.watcher.states[str(env.root)] == "watching", what="watched")
        wait_for(lambda: all(env.state(env.root / n) == "ok" for n in names), what="found")
        assert env.state(env.root / "IMG_0001.jpg") == "missing"
        photos.copy(photos.photo("coffee"), env.root / "IMG_0005.jpg")
        wait_for(lambda: env.state(env.root / "IMG_0005.jpg") == "ok", what="seen by the watch")
    assert unavailable_logged() == 1
    assert all(env.record(bob / name) is None for name in names)


@pytest.mark.slow
def test_an_empty_mount_point_is_looked_at_again_only_once_it_changes(env: Env) -> None:
    """An unplugged disk leaves its empty mount point, where photos are recorded: the root
    is unavailable. Every retry (10 s) found a folder there, logged the root available,
    watched and walked it, and found it unavailable again: two log lines every 10 s for as
    long as the disk stayed out. Now the same empty folder is not looked at again; the disk
    mounted on it (another folder there) is, at once."""

    def logged(event: str) -> int:
        return sum(e["event"] == event for e in list(logs))

    photos.copy(photos.photo("coffee"), env.root / "IMG_1.jpg")
    with structlog.testing.capture_logs() as logs, running(env, retry_interval=0.1) as daemon:
        wait_for(lambda: env.state(env.root / "IMG_1.jpg") == "ok", what="hashed")
        env.root.rename(env.tmp / "disk")  # unplugged: the bare mount point is left
        env.root.mkdir()
        # The reconcile logs the root unavailable as it walks; the reason is set after it
        wait_for(
            lambda: "empty, but 1 photos" in daemon.watcher.reasons.get(str(env.root), ""),
            what="the empty root's reconcile",
        )
        assert logged("root_unavailable") == 1
        time.sleep(20 * 0.1)  # absence check: twenty retries find the same empty folder
        assert (logged("root_available"), logged("root_unavailable")) == (0, 1)
        env.root.rmdir()
        (env.tmp / "disk").rename(env.root)  # plugged in again
        wait_for(lambda: daemon.watcher.states[str(env.root)] == "watching", what="watched")
        photos.copy(photos.photo("rocket"), env.root / "IMG_2.jpg")
        wait_for(lambda: env.state(env.root / "IMG_2.jpg") == "ok", what="seen by the watch")
    assert env.state(env.root / "IMG_1.jpg") == "ok"
    assert logged("root_available") == 1


def test_the_quarantine_and_database_folders_are_never_watched(tmp_path: Path) -> None:
    env = Env(tmp_path)
    env.quarantine = env.root / ".." / "uploads" / "q"
    env.db = env.root / "state" / "dedupd.db"
    env.write_config()
    with running(env) as daemon:
        photos.copy(photos.photo("coffee"), env.root / "q" / "x.jpg")
        photos.copy(photos.photo("coffee"), env.root / "state" / "y.jpg")
        photos.copy(photos.photo("rocket"), env.root / "z.jpg")
        wait_for(lambda: daemon.stats.hashed == 1)
        wait_for(lambda: _idle(daemon))
        assert daemon.stats.hashed == 1


def test_a_photo_recorded_in_a_folder_that_became_the_quarantine_is_never_a_keeper(
    env: Env,
) -> None:
    """The red team's f3: the root holds only `Duplicates/IMG_0001.jpg` (recorded), then
    `quarantine.path` is set to that folder. The root looked "empty, but 1 photos are
    recorded there" (unavailable, the record kept and indexed), and an upload of the same
    photo was deleted with that file as its keeper: the only copy left was in the quarantine
    folder, which `quarantine list` said was empty. Now the root is watched, the record is
    marked missing, and the upload stays."""
    photos.copy(photos.photo("coffee"), env.root / "Duplicates" / "IMG_0001.jpg")
    with running(env) as daemon:
        wait_for(lambda: env.state(env.root / "Duplicates" / "IMG_0001.jpg") == "ok")
    env.quarantine = env.root / "Duplicates"
    env.write_config()
    with running(env, retry_interval=0.1) as daemon:
        assert daemon.watcher.states[str(env.root)] == "watching", daemon.watcher.reasons
        assert env.state(env.root / "Duplicates" / "IMG_0001.jpg") == "missing"
        photos.copy(photos.photo("coffee"), env.root / "IMG_0001.jpg")
        wait_for(lambda: env.state(env.root / "IMG_0001.jpg") == "ok", what="hashed")
        wait_for(lambda: _idle(daemon))
    assert (env.root / "IMG_0001.jpg").exists()
    assert (env.root / "Duplicates" / "IMG_0001.jpg").exists()
    with Store(env.db) as store:
        assert store.actions() == []


# -- the hasher pool ----------------------------------------------------------------------


def test_a_single_upload_is_decoded_in_a_worker_never_in_the_daemon(
    env: Env, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Small batches used to be decoded in the daemon itself, where a decoder crash or hang
    takes the daemon with it. Here decoding in this process fails loudly; the upload must
    still be hashed (by a worker, which this patch does not reach)."""
    real = dedupd.imaging.hash_image
    calls: list[str] = []

    def in_daemon(path: str, *args: object, **kw: object) -> object:
        calls.append(path)
        raise RuntimeError("decoded inside the daemon process")

    for name, module in list(sys.modules.items()):
        if name.startswith("dedupd") and getattr(module, "hash_image", None) is real:
            monkeypatch.setattr(module, "hash_image", in_daemon)
    with running(env) as daemon:
        photos.copy(photos.photo("coffee"), env.root / "IMG_1.jpg")
        # counted once the whole ingest is done (the record is written before the crop stage)
        wait_for(lambda: daemon.stats.hashed == 1, what="the upload hashed")
        assert env.state(env.root / "IMG_1.jpg") == "ok"
        assert calls == []


def test_commands_and_uploads_are_served_while_a_decode_hangs(env: Env) -> None:
    """A hung decoder costs one worker, not the daemon: a `rescan` POST (run on the daemon's
    own thread) is answered and the next upload is decided while the hang goes on."""
    with running(env, work=workers.scripted) as daemon:
        photos.copy(photos.photo("coffee"), env.root / "hang.jpg")
        wait_for(lambda: daemon.pool.in_flight == 1, what="the hung file in a worker")
        client = ControlClient(daemon.config.socket, timeout=10)
        assert client.post("rescan", {}) == {"queued": [str(env.root), str(env.archive)]}
        photos.copy(photos.photo("rocket"), env.root / "IMG_2.jpg")
        wait_for(lambda: env.state(env.root / "IMG_2.jpg") == "ok", what="the next upload")
        assert client.get("status")["queue"]["hashing"] == 1  # the hang goes on meanwhile
        assert env.record(env.root / "hang.jpg") is None


@pytest.mark.slow
def test_a_hung_decode_times_out_and_a_crash_is_recorded_and_the_daemon_goes_on(
    env: Env,
) -> None:
    # 3 s: a fresh worker's first decode took over 1 s on a loaded machine, and the next
    # upload timed out in its turn (a full suite beside other work)
    env.config.write_text(
        env.config.read_text().replace("hashing: {workers: 2}", "hashing: {workers: 2, timeout: 3}")
    )
    with running(env, work=workers.scripted) as daemon:
        photos.copy(photos.photo("coffee"), env.root / "hang.jpg")
        photos.copy(photos.photo("hubble"), env.root / "crash.jpg")
        wait_for(lambda: env.state(env.root / "hang.jpg") == "error", what="the timeout")
        wait_for(lambda: env.state(env.root / "crash.jpg") == "error", what="the crash")
        hung, crashed = env.record(env.root / "hang.jpg"), env.record(env.root / "crash.jpg")
        assert hung is not None and hung.error_kind == "timeout"
        assert crashed is not None and crashed.error_kind == "crashed"
        photos.copy(photos.photo("rocket"), env.root / "IMG_3.jpg")
        wait_for(lambda: env.state(env.root / "IMG_3.jpg") == "ok", what="the next upload")
        wait_for(lambda: _idle(daemon))
        # The counters move just after the record is written (on the daemon's thread).
        wait_for(lambda: (daemon.stats.errors, daemon.stats.hashed) == (2, 1), what="counts")


def test_of_two_copies_arriving_together_the_later_is_deleted_whichever_hashed_first(
    env: Env,
) -> None:
    """Results are ingested in the order files settled, so "the newcomer" a policy acts on is
    the later copy, even when its worker finishes first (the first copy is slow to decode)."""
    with running(env, work=workers.scripted) as daemon:
        photos.copy(photos.photo("hubble"), env.root / "slow-IMG_1.jpg")
        photos.copy(photos.photo("hubble"), env.root / "IMG_1 (1).jpg")
        wait_for(lambda: env.state(env.root / "IMG_1 (1).jpg") == "deleted", what="the copy")
        wait_for(lambda: _idle(daemon))
    assert sorted(p.name for p in env.root.iterdir()) == ["slow-IMG_1.jpg"]


def test_uploads_queued_by_a_rescan_and_by_the_settler_are_hashed_once(env: Env) -> None:
    """A rescan during a burst queues the files still settling; each is hashed once all
    the same (twice would record a quarantined file as vanished at the path it left)."""
    rng = random.Random(2)
    staging = env.tmp / "staging"
    staging.mkdir()
    for i in range(40):
        Image.frombytes("L", (24, 24), rng.randbytes(576)).save(staging / f"n{i:02}.png")
    with running(env) as daemon:
        client = ControlClient(daemon.config.socket, timeout=10)
        for i in range(40):
            shutil.copy(staging / f"n{i:02}.png", env.root / f"n{i:02}.png")
            if i % 10 == 9:
                client.post("rescan", {})
        wait_for(lambda: daemon.stats.hashed >= 40, what="40 files")
        wait_for(lambda: _idle(daemon) and not daemon.pipeline.rescan_due)
        assert daemon.stats.hashed == 40


# -- the real process: signals and systemd notify ----------------------------------------


def _dedupd(*args: str, env: dict[str, str] | None = None) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, "-m", "dedupd", *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env={**os.environ, **(env or {})},
    )


@pytest.fixture
def notify_socket(tmp_path: Path) -> Iterator[tuple[socket.socket, str]]:
    path = str(tmp_path / "notify.sock")
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind(path)
    sock.settimeout(20)
    yield sock, path
    sock.close()


def _messages_until(sock: socket.socket, wanted: str) -> list[str]:
    seen: list[str] = []
    while wanted not in seen:
        seen += sock.recv(4096).decode().split("\n")
    return seen


def test_sigterm_stops_with_exit_0_and_notify_messages_arrive(env: Env, notify_socket) -> None:  # type: ignore[no-untyped-def]
    sock, path = notify_socket
    proc = _dedupd(
        "run", "--config", str(env.config), env={"NOTIFY_SOCKET": path, "WATCHDOG_USEC": "400000"}
    )
    try:
        seen = _messages_until(sock, "READY=1")
        assert any(m.startswith("STATUS=") for m in seen) or "STATUS=" in sock.recv(4096).decode()
        assert "WATCHDOG=1" in _messages_until(sock, "WATCHDOG=1")
        proc.send_signal(signal.SIGTERM)
        assert "STOPPING=1" in _messages_until(sock, "STOPPING=1")
        assert proc.wait(timeout=10) == 0
    finally:
        proc.kill()
        proc.communicate()


@pytest.mark.slow
def test_sighup_with_a_bad_config_keeps_the_old_one(env: Env, notify_socket) -> None:  # type: ignore[no-untyped-def]
    sock, path = notify_socket
    proc = _dedupd("run", "--config", str(env.config), env={"NOTIFY_SOCKET": path})
    try:
        _messages_until(sock, "READY=1")
        good = env.config.read_text()
        env.config.write_text(good + "bogus_key: 1\n")
        proc.send_signal(signal.SIGHUP)
        seen = _messages_until(sock, "RELOADING=1")
        seen += _messages_until(sock, "READY=1")
        assert any(m.startswith("STATUS=reload rejected") and "bogus_key" in m for m in seen)
        # Still running on the old config: an exact duplicate is still deleted.
        photos.copy(photos.photo("coffee"), env.root / "a.jpg")
        photos.copy(photos.photo("coffee"), env.root / "b.jpg")
        wait_for(lambda: len(list(env.root.iterdir())) == 1, what="the duplicate deleted")
        # A good config is taken: the new root is watched.
        env.config.write_text(good.replace("policy: reference}", "policy: camera}"))
        proc.send_signal(signal.SIGHUP)
        _messages_until(sock, "RELOADING=1")
        _messages_until(sock, "READY=1")
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=10) == 0
    finally:
        proc.kill()
        _, stderr = proc.communicate()
    assert '"event": "reload_rejected"' in stderr and "bogus_key" in stderr
    assert '"event": "reloaded"' in stderr


def test_an_unexpected_error_in_the_loop_is_logged_and_the_daemon_goes_on(
    env: Env, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A locked database (or any surprise) while handling one upload is not fatal."""
    import sqlite3

    real = Store.record
    calls = {"n": 0}

    def flaky(self: Store, root: str, relpath: str) -> FileRecord | None:
        calls["n"] += 1
        if calls["n"] == 1:
            raise sqlite3.OperationalError("database is locked")
        return real(self, root, relpath)

    monkeypatch.setattr(Store, "record", flaky)
    with running(env) as daemon:
        photos.copy(photos.photo("coffee"), env.root / "first.jpg")
        wait_for(lambda: daemon.stats.errors == 1, what="the failure to be counted")
        photos.copy(photos.photo("rocket"), env.root / "second.jpg")
        wait_for(lambda: env.state(env.root / "second.jpg") == "ok", what="the next upload")
        wait_for(lambda: env.state(env.root / "first.jpg") == "ok", what="the retried upload")


def test_a_restart_after_kill_9_mid_quarantine_recovers_the_journal(env: Env) -> None:
    """The daemon's start finishes a move that a killed process left half done."""
    from tests.test_actions import kill_9_during

    photos.copy(photos.photo("coffee"), env.root / "IMG_1.jpg")
    photos.reencode(photos.photo("coffee"), env.root / "IMG_2.jpg")
    env.write_config(camera="{near: report}")
    with running(env) as daemon:  # report-only first, so that both files are indexed
        wait_for(lambda: daemon.stats.hashed == 2)
    kill_9_during(
        env.db,
        "quarantine",
        "linked",
        env.quarantine,
        env.root / "IMG_2.jpg",
        env.root / "IMG_1.jpg",
    )
    # Killed between the link into quarantine and the unlink of the staged name: the photo
    # is out of the folder, in quarantine and in the staging folder.
    assert not (env.root / "IMG_2.jpg").exists()
    assert len(list((env.root / ".dedupd-staging").iterdir())) == 1
    with running(env):
        pass
    assert not (env.root / ".dedupd-staging").exists()
    assert len(list(env.quarantine.rglob("IMG_2.jpg"))) == 1
    with Store(env.db) as store:
        assert store.actions("state = 'planned'") == []
        assert env.state(env.root / "IMG_2.jpg") == "quarantined"


# `dedupd run` whose crop index's start-up load waits for a file named `release` beside the
# database: what a large library on a cold disk does for a minute or more. The first upload's
# crop stage waits for it after the upload is recorded and before it is decided.
_HELD_CROP_LOAD = """
import os, sys, time
from dedupd import engine
from dedupd.cli import dedupd

real, release = engine._feature_words, sys.argv[1]

def held(*args):
    while not os.path.exists(release):
        time.sleep(0.01)
    return real(*args)

engine._feature_words = held
dedupd(["run", "--config", sys.argv[2]], prog_name="dedupd")
"""


@pytest.mark.slow
def test_an_upload_recorded_by_a_daemon_killed_before_its_decision_is_decided_at_the_next_start(
    env: Env,
) -> None:
    """A daemon commits an upload's record, then matches and decides it. Killed in between
    (here: SIGKILL to its process group, as systemd does after TimeoutStopSec, while the crop
    stage waits for the crop index), the file was left recorded and unchanged: no later start
    decided it, so the duplicate stayed for good. The record is now noted 'deciding' in the
    same transaction; the next start hashes it again and decides it."""
    env.write_config(camera="{exact: quarantine, near: quarantine}")
    photos.copy(photos.photo("coffee"), env.root / "IMG_1.jpg")
    with running(env) as first:
        wait_for(lambda: first.stats.hashed == 1 and _idle(first), what="the original hashed")
    log = env.tmp / "killed.log"
    with log.open("w") as err:
        proc = subprocess.Popen(
            [sys.executable, "-c", _HELD_CROP_LOAD, str(env.tmp / "release"), str(env.config)],
            stderr=err,
            start_new_session=True,
        )
    try:
        wait_for(lambda: '"started"' in log.read_text() or proc.poll() is not None)
        assert proc.poll() is None, log.read_text()
        photos.copy(photos.photo("coffee"), env.root / "IMG_2.jpg")  # an exact copy
        wait_for(lambda: "crop_stage_waits" in log.read_text(), what="the crop stage waiting")
        assert env.state(env.root / "IMG_2.jpg") == "ok"  # recorded, not yet decided
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(timeout=10)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(timeout=10)
    assert (env.root / "IMG_2.jpg").exists() and _quarantines(env) == []
    with running(env) as daemon:
        wait_for(lambda: daemon.stats.hashed == 1 and _idle(daemon), what="the copy decided")
    assert not (env.root / "IMG_2.jpg").exists()
    assert env.state(env.root / "IMG_2.jpg") == "quarantined"
    assert [Path(q.src).name for q in _quarantines(env)] == ["IMG_2.jpg"]
    assert (env.root / "IMG_1.jpg").exists()


def _note_deciding(env: Env, names: list[str]) -> None:
    """Leave `names` as a run killed between their records and their decisions leaves
    them: noted 'deciding' (in this order), their decisions not made."""
    with Store(env.db) as store:
        store.db.execute("DELETE FROM undecided")
        for name in names:
            record = store.file_at(env.root / name)
            assert record is not None and record.sha256 is not None
            store.note_undecided(record.id, record.sha256, "deciding", "the killed run's")


def _deciding(env: Env) -> list[tuple[str, str]]:
    with Store(env.db) as store:
        rows = store.db.execute(
            "SELECT f.relpath, f.state FROM undecided u JOIN files f ON f.id = u.file_id"
            " WHERE u.why = 'deciding'"
        )
        return [(str(a), str(b)) for a, b in rows]


def test_a_quarantine_finished_by_the_recovery_is_the_decision_that_never_came(
    env: Env,
) -> None:
    """Killed after the link into quarantine: the start's recovery finishes the move, and
    that is the upload's decision; its 'deciding' note goes with it (it would otherwise
    wait for a file that is no longer there)."""
    from tests.test_actions import kill_9_during

    photos.copy(photos.photo("coffee"), env.root / "IMG_1.jpg")
    photos.reencode(photos.photo("coffee"), env.root / "IMG_2.jpg")
    env.write_config(camera="{near: report}")
    with running(env) as daemon:
        wait_for(lambda: daemon.stats.hashed == 2 and _idle(daemon), what="both hashed")
    env.write_config(camera="{exact: quarantine, near: quarantine}")
    _note_deciding(env, ["IMG_2.jpg"])
    upload, original = env.root / "IMG_2.jpg", env.root / "IMG_1.jpg"
    kill_9_during(env.db, "quarantine", "linked", env.quarantine, upload, original)
    with running(env) as daemon:
        wait_for(lambda: _idle(daemon), what="the start")
    assert env.state(env.root / "IMG_2.jpg") == "quarantined"
    assert _deciding(env) == []


@pytest.mark.slow
def test_uploads_left_undecided_are_decided_again_in_their_order_each_before_the_later(
    env: Env,
) -> None:
    """A near copy IMG_2 of IMG_1, then an exact copy IMG_3 of the near copy, both recorded
    and neither decided by a killed run. Decided again at the next start, IMG_2 must not
    meet IMG_3, which had not arrived when IMG_2 did: matched to it (an exact match wins),
    IMG_3 was quarantined and IMG_2 left beside its original. As an uninterrupted run
    decides: IMG_2 quarantined for IMG_1, then IMG_3 too."""
    made = env.tmp / "made"
    original = photos.upscaled(photos.photo("coffee"), made / "o.jpg", size=(1600, 1200))
    near = photos.reencode(original, made / "n.jpg")
    env.write_config(camera="{exact: report, near: report}")

    def upload(daemon: Daemon, src: Path, name: str, n: int) -> None:
        photos.copy(src, env.tmp / "up.jpg")
        os.utime(env.tmp / "up.jpg", (1e9 + 3600 * n,) * 2)  # an hour after the one before
        os.replace(env.tmp / "up.jpg", env.root / name)
        wait_for(lambda: daemon.stats.hashed == n and _idle(daemon), what=name)

    with running(env) as daemon:
        upload(daemon, original, "IMG_1.jpg", 1)
        upload(daemon, near, "IMG_2.jpg", 2)
        upload(daemon, near, "IMG_3.jpg", 3)
    _note_deciding(env, ["IMG_2.jpg", "IMG_3.jpg"])
    env.write_config(camera="{exact: quarantine, near: quarantine}")
    with running(env) as daemon:
        wait_for(lambda: daemon.stats.hashed == 2 and _idle(daemon), what="both decided")
    assert sorted(p.name for p in env.root.iterdir() if p.is_file()) == ["IMG_1.jpg"]
    assert sorted(Path(q.src).name for q in _quarantines(env)) == ["IMG_2.jpg", "IMG_3.jpg"]
    assert _deciding(env) == []


@pytest.mark.slow
def test_an_upload_awaiting_its_decision_that_is_renamed_meanwhile_is_a_candidate_again(
    env: Env,
) -> None:
    """An upload a killed run left undecided is no candidate for the newcomers decided
    before its own decision (`_awaiting`). Renamed by the user before that re-hash, it is
    not hashed at its old name: it must become a candidate again, or no later duplicate of
    it would be found for the rest of the run."""
    photos.copy(photos.photo("chelsea"), env.root / "wait-A.jpg")  # held in the pool below
    with running(env) as first:
        wait_for(lambda: first.stats.hashed == 1 and _idle(first), what="A hashed")
    _note_deciding(env, ["wait-A.jpg"])
    with running(env, work=workers.scripted) as daemon:
        wait_for(lambda: daemon.pool.in_flight == 1, what="A's re-hash held in the pool")
        os.rename(env.root / "wait-A.jpg", env.root / "IMG_A.jpg")
        wait_for(lambda: env.state(env.root / "IMG_A.jpg") == "ok", what="the rename followed")
        photos.copy(photos.photo("chelsea"), env.tmp / "up.jpg")
        os.replace(env.tmp / "up.jpg", env.root / "IMG_B.jpg")  # an exact copy of A: deleted
        wait_for(lambda: not (env.root / "IMG_B.jpg").exists(), what="the copy deleted")
    assert (env.root / "IMG_A.jpg").exists()


# `dedupd run` whose decision of one file kills the process, as a crash in native code on the
# writer thread (OpenCV, numpy) on that file's data would.
_POISONED_DECISION = """
import os, signal, sys
from dedupd import engine
from dedupd.cli import dedupd

real = engine.Ingest._match_and_decide

def poisoned(self, file_id, path, *args):
    if os.path.basename(path) == "poison.jpg":
        os.kill(os.getpid(), signal.SIGKILL)
    return real(self, file_id, path, *args)

if __name__ == "__main__":
    engine.Ingest._match_and_decide = poisoned
    dedupd(["run", "--config", sys.argv[1]], prog_name="dedupd")
"""


@pytest.mark.parametrize("note", ["deciding", "dry run"])
@pytest.mark.slow
def test_a_file_whose_decision_kills_the_daemon_is_given_up_after_three_starts(
    env: Env, note: str
) -> None:
    """A file recorded for a decision that never comes is hashed and decided again by the
    next start, and one a dry run previewed is decided again by it; one whose decision
    kills the process would so kill it at every start (a crash loop under systemd's
    Restart=). After DECIDING_ATTEMPTS starts the decision is given up, logged
    (`decision_abandoned`), and the daemon runs on: the file stays in place, the next
    upload is decided."""
    env.write_config(camera="{exact: quarantine, near: quarantine}")
    photos.copy(photos.photo("coffee"), env.root / "IMG_1.jpg")
    with running(env) as first:
        wait_for(lambda: first.stats.hashed == 1 and _idle(first), what="the original hashed")
    photos.copy(photos.photo("coffee"), env.root / "poison.jpg")  # a duplicate to decide
    if note == "dry run":  # previewed, then decided again by every start
        config = env.config.read_text()
        env.config.write_text(config + "dry_run: true\n")
        with running(env) as preview:
            wait_for(lambda: preview.stats.hashed == 1 and _idle(preview), what="preview")
        env.config.write_text(config)
    script = env.tmp / "poisoned.py"
    script.write_text(_POISONED_DECISION)

    def start(n: int) -> bool:
        """Start the poisoned daemon; True if its decision killed it, else (the decision
        given up) upload a duplicate, see it decided, stop it with SIGTERM: False."""
        log = env.tmp / f"start-{n}.log"
        with log.open("w") as err:
            proc = subprocess.Popen(
                [sys.executable, str(script), str(env.config)],
                stderr=err,
                start_new_session=True,
            )
        try:
            wait_for(
                lambda: proc.poll() is not None or "decision_abandoned" in log.read_text(),
                timeout=60,
                what=f"start {n}: killed by the poisoned decision, or the decision given up",
            )
            if proc.poll() is not None:
                assert proc.returncode == -signal.SIGKILL, log.read_text()
                return True
            wait_for(lambda: '"started"' in log.read_text(), what="the daemon running on")
            photos.copy(photos.photo("chelsea"), env.root / "IMG_2.jpg")
            photos.copy(photos.photo("chelsea"), env.root / "IMG_3.jpg")
            wait_for(lambda: env.state(env.root / "IMG_3.jpg") == "quarantined", timeout=30)
            proc.send_signal(signal.SIGTERM)
            assert proc.wait(timeout=30) == 0, log.read_text()
            return False
        finally:
            os.killpg(proc.pid, signal.SIGKILL)  # its workers too, however it ended
            proc.wait(timeout=10)

    deaths = sum(start(n) for n in range(DECIDING_ATTEMPTS + 1))
    assert deaths == DECIDING_ATTEMPTS
    abandoned = [
        json.loads(line)
        for line in (env.tmp / f"start-{DECIDING_ATTEMPTS}.log").read_text().splitlines()
        if '"decision_abandoned"' in line
    ]
    assert [(Path(e["path"]).name, e["attempts"]) for e in abandoned] == [
        ("poison.jpg", DECIDING_ATTEMPTS)
    ]
    assert (env.root / "poison.jpg").exists() and env.state(env.root / "poison.jpg") == "ok"
    assert (env.root / "IMG_1.jpg").exists() and (env.root / "IMG_2.jpg").exists()


@pytest.mark.slow
def test_the_staging_folder_coming_and_going_never_rescans_the_root(env: Env) -> None:
    """Each quarantine or delete stages the file in the root's `.dedupd-staging` folder,
    removed once empty. Its removal is no folder of photos going away: before, each one
    queued a reconcile of the whole root (a walk of every photo in it, for every duplicate
    moved)."""
    with running(env) as daemon:
        photos.copy(photos.photo("coffee"), env.root / "IMG_1.jpg")
        wait_for(lambda: daemon.stats.hashed == 1 and _idle(daemon), what="the original")
        rescans = daemon.stats.rescans

        def gone(path: Path) -> Callable[[], bool]:
            return lambda: not path.exists()

        for copy in (env.root / f"IMG_{n}.jpg" for n in range(2, 5)):
            photos.copy(photos.photo("coffee"), copy)  # an exact copy: deleted
            wait_for(gone(copy), what=f"{copy.name} deleted")
        staging = env.root / ".dedupd-staging"
        wait_for(lambda: not staging.exists() and _idle(daemon), what="staging removed")
        daemon.submit(daemon.status).result(timeout=10)  # a turn of the loop: hints drained
        wait_for(lambda: _idle(daemon) and not daemon.pipeline.rescan_due, what="idle")
        assert daemon.stats.rescans == rescans


def test_a_symlink_in_a_root_is_never_a_keeper(env: Env) -> None:
    """Only the files really in the root count: a link to a photo elsewhere is ignored, so the
    real upload of that photo is kept."""
    outside = env.tmp / "usb-stick" / "x.jpg"
    photos.copy(photos.photo("coffee"), outside)
    with running(env) as daemon:
        os.symlink(outside, env.root / "album-link.jpg")
        photos.copy(photos.photo("rocket"), env.root / "marker.jpg")
        wait_for(lambda: daemon.stats.hashed == 1)  # the marker, not the link
        photos.copy(photos.photo("coffee"), env.root / "IMG_0001.jpg")
        wait_for(lambda: env.state(env.root / "IMG_0001.jpg") == "ok")
        wait_for(lambda: _idle(daemon))
    assert (env.root / "IMG_0001.jpg").exists()
    assert env.record(env.root / "album-link.jpg") is None


def test_a_rename_over_another_photo_drops_the_replaced_one_from_the_index(env: Env) -> None:
    """The overwritten photo's record goes; a later look-alike of it must not trip on it."""
    env.write_config(camera="{near: report}")
    photos.copy(photos.photo("coffee"), env.root / "a.jpg")
    photos.copy(photos.photo("hubble"), env.root / "b.jpg")
    with running(env) as daemon:
        wait_for(lambda: daemon.stats.hashed == 2)
        os.replace(env.root / "b.jpg", env.root / "a.jpg")
        wait_for(lambda: env.record(env.root / "b.jpg") is None, what="the rename followed")
        photos.reencode(photos.photo("coffee"), env.root / "coffee-again.jpg")
        wait_for(lambda: env.state(env.root / "coffee-again.jpg") == "ok")
        wait_for(lambda: _idle(daemon))
        assert daemon.stats.errors == 0
        assert len(daemon.ingest.index) == 2


@pytest.mark.slow
def test_a_watch_limit_falls_back_to_rescans_and_shows_in_status(
    env: Env, monkeypatch: pytest.MonkeyPatch
) -> None:
    """inotify out of watches (ENOSPC): logged with the sysctl fix, the root is rescanned
    instead, and STATUS= says so."""
    import errno

    from watchdog.observers.api import BaseObserver

    def no_watches(self: BaseObserver, *args: object, **kw: object) -> None:
        raise OSError(errno.ENOSPC, "inotify watch limit reached")

    monkeypatch.setattr(BaseObserver, "schedule", no_watches)
    with structlog.testing.capture_logs() as logs, running(env, polling_interval=0.5) as daemon:
        assert daemon.watcher.states[str(env.root)] == "polling"
        assert f"polling: {env.root}" in daemon._status()
        photos.copy(photos.photo("coffee"), env.root / "IMG_1.jpg")
        wait_for(lambda: env.state(env.root / "IMG_1.jpg") == "ok", timeout=15)
        before = daemon.stats.rescans
        time.sleep(2.0)  # four polling intervals: what is checked is the rate of rescans
        assert 2 <= daemon.stats.rescans - before <= 6
    limited = [e for e in logs if e["event"] == "watch_limit_reached"]
    assert sorted(e["root"] for e in limited) == sorted([str(env.root), str(env.archive)])
    assert all("fs.inotify.max_user_watches" in e["fix"] for e in limited)  # once per root


def test_a_polling_root_says_why_and_is_watched_again_once_the_limit_is_raised(
    env: Env, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A root out of inotify watches said only "polling", and stayed so until a restart:
    raising the limit as the log said (`sysctl`) changed nothing. Now status says why, and
    the full rescan watches it again."""
    import errno

    from watchdog.observers.api import BaseObserver

    real = BaseObserver.schedule
    limited = True

    def schedule(self: BaseObserver, *args: Any, **kw: Any) -> Any:
        if limited:
            raise OSError(errno.ENOSPC, "No space left on device")
        return real(self, *args, **kw)

    monkeypatch.setattr(BaseObserver, "schedule", schedule)
    env.config.write_text(
        env.config.read_text().replace("rescan_interval: 1h", "rescan_interval: 1")
    )
    with structlog.testing.capture_logs() as logs, running(env) as daemon:
        answer = daemon.status()
        (root,) = [r for r in answer["roots"] if r["path"] == str(env.root)]
        assert root == {
            "path": str(env.root),
            "state": "polling",
            "policy": "camera",
            "reason": "the inotify watch limit is reached (No space left on device)",
        }
        assert (
            f"root      {env.root}  polling  policy camera\n"
            "          the inotify watch limit is reached (No space left on device); "
            "rescanned periodically\n"
        ) in render.status(answer)
        limited = False  # `sysctl fs.inotify.max_user_watches=…`
        wait_for(lambda: _root_state(daemon, env.root) == "watching", what="watched again")
        wait_for(lambda: _root_state(daemon, env.archive) == "watching", what="both roots")
        assert daemon.status()["roots"][0]["reason"] is None
        assert sorted(e["root"] for e in logs if e["event"] == "root_watched") == sorted(
            [str(env.root), str(env.archive)]
        )


@pytest.mark.slow
def test_a_polling_root_is_not_watched_again_while_the_full_rescan_waits_for_a_backlog(
    env: Env, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The full rescan waits for the backlog; the retry of a polling root's watch waited for
    nothing: once a rescan was due, every turn of the loop rebuilt that root's whole watch
    and logged `watch_limit_reached` again (hundreds of times in seconds; found by review).
    It is retried when the full rescan starts, once."""
    import errno

    from watchdog.observers.api import BaseObserver

    real = BaseObserver.schedule
    tried: list[str] = []

    def schedule(self: BaseObserver, handler: Any, path: str, **kw: Any) -> Any:
        if path == str(env.root):
            tried.append(path)
            raise OSError(errno.ENOSPC, "No space left on device")
        return real(self, handler, path, **kw)

    monkeypatch.setattr(BaseObserver, "schedule", schedule)
    env.config.write_text(
        env.config.read_text().replace("rescan_interval: 1h", "rescan_interval: 1")
    )
    rng = random.Random(5)
    for i in range(12):  # more than the pool holds (2 workers): a backlog stays queued
        tiny = env.archive / f"wait-{i:02}.png"
        Image.frombytes("L", (24, 24), rng.randbytes(576)).save(tiny)
        os.utime(tiny, (1_000_000_000, 1_000_000_000))  # settled long ago: a backlog file
    with running(env, work=workers.scripted) as daemon:
        wait_for(lambda: daemon.pool.in_flight > 0 and daemon.pipeline.backlog, what="backlog")
        before = len(tried)
        time.sleep(3.0)  # absence check: three rescan intervals while the backlog waits
        assert daemon.pipeline.backlog, "the backlog ended: nothing tested"
        assert len(tried) == before
        (env.archive / "release").touch()
        wait_for(lambda: len(tried) > before, what="the full rescan's retry")


@pytest.mark.skipif(not dedupd.watcher._INOTIFY, reason="inotify only (Linux)")
def test_folders_the_watch_limit_leaves_unwatched_make_their_root_polling(
    env: Env, monkeypatch: pytest.MonkeyPatch
) -> None:
    """inotify out of watches for sub-folders only (a root with more folders than
    fs.inotify.max_user_watches; or folders made once the limit is reached): watchdog adds
    the root's own watch and drops the others' ENOSPC silently. The root was said to be
    "watching", nothing was logged, and a photo in an unwatched folder waited for the next
    full rescan (an hour). Now the root is "polling", logged with the fix, and rescanned."""
    import errno

    from watchdog.observers.inotify_c import InotifyFD

    real = InotifyFD.add_callback

    def limited(self: InotifyFD, path: bytes, *args: object, **kw: object) -> object:
        if os.path.basename(path).startswith(b"deep"):
            raise OSError(errno.ENOSPC, "inotify watch limit reached")
        return real(self, path, *args, **kw)  # type: ignore[arg-type]

    monkeypatch.setattr(InotifyFD, "add_callback", limited)
    (env.root / "deep").mkdir()
    with structlog.testing.capture_logs() as logs, running(env, polling_interval=0.5) as daemon:
        assert daemon.watcher.states[str(env.root)] == "polling"
        photos.copy(photos.photo("coffee"), env.root / "deep" / "IMG_1.jpg")
        wait_for(lambda: env.state(env.root / "deep" / "IMG_1.jpg") == "ok", timeout=15)
        assert daemon.watcher.states[str(env.archive)] == "watching"
        (env.archive / "deeper").mkdir()  # a folder made once the limit is reached
        photos.copy(photos.photo("rocket"), env.archive / "deeper" / "IMG_2.jpg")
        wait_for(lambda: env.state(env.archive / "deeper" / "IMG_2.jpg") == "ok", timeout=15)
        assert daemon.watcher.states[str(env.archive)] == "polling"
    limited_roots = [e["root"] for e in logs if e["event"] == "watch_limit_reached"]
    assert limited_roots == [str(env.root), str(env.archive)]


# Deeper than the recursion limit (watchdog walks a tree recursively), and shallow enough
# that the photo at the bottom is still within PATH_MAX: one-letter folder names
DEEP = sys.getrecursionlimit() + 200


def _deep_tree(parent: Path) -> tuple[Path, str]:
    """A folder `parent`/a holding `DEEP` nested folders, hubble.jpg in the last; returns the
    folder and the photo's path relative to it. Made one level at a time relative to the
    parent's descriptor, as make_deep_files does: nothing here walks it by recursion."""
    parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(parent, os.O_RDONLY | os.O_DIRECTORY)
    try:
        for _ in range(DEEP):
            os.mkdir("a", dir_fd=fd)
            child = os.open("a", os.O_RDONLY | os.O_DIRECTORY, dir_fd=fd)
            os.close(fd)
            fd = child
        out = os.open("hubble.jpg", os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644, dir_fd=fd)
        with open(out, "wb") as f:
            f.write(photos.photo("hubble").read_bytes())
    finally:
        os.close(fd)
    return parent / "a", os.path.join(*["a"] * (DEEP - 1), "hubble.jpg")


def _remove_deep_tree(top: Path) -> None:
    # shutil.rmtree recurses too (a RecursionError, and pytest's own clean-up after it); rm
    # does not
    subprocess.run(["rm", "-rf", "--", str(top)], check=True)


def _root_state(daemon: Daemon, root: Path) -> str:
    """The root's state as `dedupctl status` shows it."""
    return str(next(r["state"] for r in daemon.status()["roots"] if r["path"] == str(root)))


@pytest.mark.skipif(not dedupd.watcher._INOTIFY, reason="inotify only (Linux)")
@pytest.mark.slow
def test_a_tree_too_deep_to_watch_moved_into_a_root_leaves_it_polling_and_every_root_served(
    env: Env,
) -> None:
    """Red team: anyone who may write in a root can `mv` a folder tree ~1000 levels deep
    into it. watchdog watches what was moved in with a recursive walk, whose RecursionError
    ended the thread reading inotify for every root: status went on saying "watching", and
    no upload in any root was seen until the hourly rescan. Now that root is "polling",
    logged with why, the other keeps its watch, and uploads in both are decided, the deep
    photo too (by the rescans)."""
    top, photo = _deep_tree(env.tmp / "outside")
    moved = env.root / "deep"
    try:
        with (
            structlog.testing.capture_logs() as logs,
            running(env, polling_interval=0.5) as daemon,
        ):
            wait_for(lambda: _idle(daemon))
            os.rename(top, moved)  # one rename into the watched tree
            wait_for(lambda: _root_state(daemon, env.root) == "polling", timeout=10)
            photos.copy(photos.photo("rocket"), env.archive / "IMG_2.jpg")
            photos.copy(photos.photo("coffee"), env.root / "IMG_1.jpg")
            # by the archive's watch: it is never rescanned within the hour
            wait_for(lambda: env.state(env.archive / "IMG_2.jpg") == "ok", timeout=10)
            wait_for(lambda: env.state(env.root / "IMG_1.jpg") == "ok", timeout=10)
            wait_for(lambda: env.state(moved / photo) == "ok", timeout=10)
            assert _root_state(daemon, env.archive) == "watching"
            assert _root_state(daemon, env.root) == "polling"
            assert daemon.watcher.alive()
    finally:
        _remove_deep_tree(moved if moved.exists() else top)
    incomplete = [e for e in logs if e["event"] == "watch_incomplete"]
    assert [e["root"] for e in incomplete] == [str(env.root)]  # once
    assert incomplete[0]["error"].startswith("RecursionError: ")


@pytest.mark.skipif(not dedupd.watcher._INOTIFY, reason="inotify only (Linux)")
@pytest.mark.slow
def test_a_root_holding_a_tree_too_deep_to_watch_starts_polling_and_serves(env: Env) -> None:
    """Red team: with such a tree in a root, `dedupd run` died at every start with
    RecursionError (exit 1; under systemd, a restart loop: never served again). Now it
    starts, says the root is "polling", and decides uploads in every root."""
    top, photo = _deep_tree(env.root)
    try:
        with (
            structlog.testing.capture_logs() as logs,
            running(env, polling_interval=0.5) as daemon,
        ):
            assert _root_state(daemon, env.root) == "polling"
            assert _root_state(daemon, env.archive) == "watching"
            wait_for(lambda: env.state(top / photo) == "ok", timeout=10)
            photos.copy(photos.photo("rocket"), env.archive / "IMG_2.jpg")
            photos.copy(photos.photo("coffee"), env.root / "IMG_1.jpg")
            wait_for(lambda: env.state(env.archive / "IMG_2.jpg") == "ok", timeout=10)
            wait_for(lambda: env.state(env.root / "IMG_1.jpg") == "ok", timeout=10)
            assert f"polling: {env.root}" in daemon._status()
    finally:
        _remove_deep_tree(top)
    incomplete = [e for e in logs if e["event"] == "watch_incomplete"]
    assert [e["root"] for e in incomplete] == [str(env.root)]
    assert incomplete[0]["error"].startswith("RecursionError: ")


def test_a_watch_that_fails_otherwise_leaves_its_root_polling_and_the_daemon_serving(
    env: Env, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Any error of watchdog's while a root's watch is added (not only the watch limit's)
    stopped `dedupd run` at start. Now that root is "polling", logged `watch_failed` with the
    error, and the other keeps its watch."""
    from watchdog.observers.api import BaseObserver, ObservedWatch

    real = BaseObserver.schedule

    def failing(self: BaseObserver, handler: Any, path: str, **kw: Any) -> ObservedWatch:
        if path == str(env.root):
            raise RuntimeError("watchdog broke")
        return real(self, handler, path, **kw)

    monkeypatch.setattr(BaseObserver, "schedule", failing)
    with structlog.testing.capture_logs() as logs, running(env, polling_interval=0.5) as daemon:
        assert [r["state"] for r in daemon.status()["roots"]] == ["polling", "watching"]
        photos.copy(photos.photo("coffee"), env.root / "IMG_1.jpg")
        wait_for(lambda: env.state(env.root / "IMG_1.jpg") == "ok", timeout=10)
    failed = [e for e in logs if e["event"] == "watch_failed"]
    assert [(e["root"], e["error"]) for e in failed] == [
        (str(env.root), "RuntimeError: watchdog broke")
    ]


@pytest.mark.skipif(not dedupd.watcher._INOTIFY, reason="inotify only (Linux)")
def test_a_watch_thread_that_ends_is_noticed_and_every_root_watched_again(env: Env) -> None:
    """A thread of watchdog's that ends all the same (here the one reading inotify for every
    root, stopped) left every root said "watching" and nothing seen until the hourly
    rescan. Now it is logged and a new observer watches the roots again: an upload is
    decided within seconds."""
    with structlog.testing.capture_logs() as logs, running(env) as daemon:
        wait_for(lambda: _idle(daemon))
        daemon.watcher._observer._inotify_fd.stop()  # type: ignore[union-attr]
        wait_for(lambda: any(e["event"] == "watch_thread_died" for e in list(logs)))
        photos.copy(photos.photo("coffee"), env.root / "IMG_1.jpg")
        wait_for(lambda: env.state(env.root / "IMG_1.jpg") == "ok", timeout=10)
        assert daemon.watcher.alive()
        assert [r["state"] for r in daemon.status()["roots"]] == ["watching", "watching"]
    died = [e for e in logs if e["event"] == "watch_thread_died"]
    assert [e["roots"] for e in died] == [[str(env.root), str(env.archive)]]


def test_a_name_that_is_not_utf8_costs_no_other_file(env: Env) -> None:
    """Issue #9: one such name made the daemon drop the rest of its 512-file reconcile batch
    on every pass, and retry the name itself forever when it arrived live. Now every file is
    recorded, the non-UTF-8 ones hashed like the others: at startup and on arrival."""
    rng = random.Random(2)

    def tiny(folder: Path, i: int) -> None:
        Image.frombytes("L", (24, 24), rng.randbytes(576)).save(folder / f"n{i:03}.png")

    def non_utf8(folder: Path, name: bytes, photo: str) -> Path:
        path = Path(os.fsdecode(os.path.join(os.fsencode(folder), name)))
        return photos.copy(photos.photo(photo), path)

    for i in range(120):  # found by the startup reconcile, ingested oldest first
        tiny(env.root, i)
        if i == 10:
            first = non_utf8(env.root, b"caf\xe9.jpg", "hubble")
    staging = env.tmp / "staging"
    staging.mkdir()
    for i in range(30):
        tiny(staging, i)
    second = non_utf8(staging, b"\xff\xfe.jpg", "rocket")
    with running(env, retry_interval=60) as daemon:
        wait_for(lambda: daemon.stats.hashed >= 121, timeout=60, what="the startup backlog")
        os.rename(staging, env.root / "batch")  # a folder of 31 files appears at once
        wait_for(lambda: daemon.stats.hashed >= 152 and _idle(daemon), timeout=60, what="all")
        assert (daemon.stats.hashed, daemon.stats.errors) == (152, 0)
    with Store(env.db) as store:
        assert store.count_by_state([str(env.root)]) == {"ok": 152}
    assert env.state(first) == "ok"
    assert env.state(env.root / "batch" / second.name) == "ok"


def test_paths_over_path_max_show_in_the_status_as_errors(env: Env) -> None:
    """A file the daemon cannot open by name (path over PATH_MAX) is an error in
    `dedupctl status`, not a silent gap."""
    from tests.test_scan import make_deep_files

    deep = make_deep_files(env.root / "deep", photos.photo("coffee").read_bytes())
    try:
        with running(env) as daemon:
            wait_for(lambda: daemon.stats.errors == 2 and _idle(daemon), what="two errors")
            errors = daemon.status()["recent_errors"]
    finally:
        shutil.rmtree(env.root / "deep")
    assert sorted((e["path"], e["kind"]) for e in errors) == sorted(
        (str(env.root / "deep" / p), "path_too_long") for p in deep
    )


@pytest.mark.slow
def test_a_reload_from_a_fifo_put_in_place_of_the_config_is_rejected(env: Env) -> None:
    """The config replaced by a FIFO nobody writes, then SIGHUP: the reload blocked opening
    it, and with it the main loop (no upload decided) and SIGTERM (found by a red-team
    run). It is rejected within seconds, the running config stays, and uploads go on."""
    with running(env) as daemon:
        config = daemon.config
        env.config.unlink()
        os.mkfifo(env.config)
        with pytest.raises(ConfigError, match="not a regular file"):
            daemon.submit(daemon.reload_now).result(timeout=30)
        assert daemon.config is config
        photos.copy(photos.photo("coffee"), env.root / "IMG_1.jpg")
        wait_for(lambda: env.state(env.root / "IMG_1.jpg") == "ok", what="the upload")


def test_a_reload_with_a_yaml_bomb_is_rejected_and_the_daemon_still_answers(env: Env) -> None:
    """SIGHUP (and `dedupctl reload`) with a billion-laughs config: the reload is refused with
    a short message while the file is read, the running config stays, and the main loop goes
    on answering (it used to block for seconds expanding the bomb into gigabytes)."""
    with structlog.testing.capture_logs() as logs, running(env) as daemon:
        config = daemon.config
        env.config.write_text(yaml_bomb())
        daemon.request_reload()  # what SIGHUP does
        wait_for(
            lambda: any(e["event"] == "reload_rejected" for e in list(logs)),
            what="the reload to be rejected",
        )
        with pytest.raises(ConfigError, match="YAML bomb") as caught:
            daemon.submit(daemon.reload_now).result(timeout=30)
        assert len(str(caught.value)) < 500
        status = daemon.submit(daemon.status).result(timeout=30)
        assert daemon.config is config
        assert {r["path"]: r["policy"] for r in status["roots"]} == {
            str(env.root): "camera",
            str(env.archive): "reference",
        }
    rejected = [e for e in logs if e["event"] == "reload_rejected"]
    assert len(rejected) == 2
    assert all(len(e["error"]) < 500 and "YAML bomb" in e["error"] for e in rejected)


# -- one writer per database, and a database that fails ----------------------------------


def _rows(db: Path) -> int:
    with Store(db) as store:
        return int(store.db.execute("SELECT count(*) FROM files").fetchone()[0])


def _tree(folder: Path) -> list[str]:
    return sorted(str(p.relative_to(folder)) for p in folder.rglob("*"))


def test_scan_refuses_while_the_daemon_runs_and_writes_nothing(env: Env, notify_socket) -> None:  # type: ignore[no-untyped-def]
    """`dedupd scan` on a daemon's database (even --dry-run) exits 4, names the daemon's pid
    and `dedupctl rescan`, and neither hashes nor moves anything."""
    sock, path = notify_socket
    other = env.tmp / "other"
    photos.copy(photos.photo("coffee"), other / "a.jpg")
    photos.copy(photos.photo("coffee"), other / "a (1).jpg")  # an exact duplicate
    proc = _dedupd("run", "--config", str(env.config), env={"NOTIFY_SOCKET": path})
    try:
        _messages_until(sock, "READY=1")
        before, files = _rows(env.db), _tree(other)
        scan_command = [sys.executable, "-m", "dedupd", "scan", "--config", str(env.config)]
        for dry in ([], ["--dry-run"]):
            scan = subprocess.run(
                [*scan_command, *dry, str(other)],
                capture_output=True,
                text=True,
                timeout=60,
            )
            assert scan.returncode == 4, scan.stderr
            (line,) = scan.stderr.splitlines()
            assert line.startswith(f"error: {env.db} is in use by the dedupd daemon ")
            assert f"(pid {proc.pid})" in line and "`dedupctl rescan`" in line
        assert (_rows(env.db), _tree(other)) == (before, files)
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.communicate(timeout=20)


_SCAN = [sys.executable, "-m", "dedupd", "scan"]


@pytest.mark.slow
def test_a_hard_link_to_the_daemons_database_gives_no_second_writer(
    env: Env, notify_socket
) -> None:  # type: ignore[no-untyped-def]
    """`ln dedupd.db snapshot.db` names the daemon's database by another name, with a lock
    file of its own: `dedupd scan --database snapshot.db` ran beside the daemon (exit 0),
    wrote the file through a WAL of its own, and the daemon's database was corrupt after
    (found by a red-team run). Now the scan and a second daemon by that name are refused
    and nothing is written."""
    sock, path = notify_socket
    other = env.tmp / "other"
    photos.copy(photos.photo("coffee"), other / "a.jpg")
    photos.copy(photos.photo("coffee"), other / "a (1).jpg")  # an exact duplicate
    proc = _dedupd("run", "--config", str(env.config), env={"NOTIFY_SOCKET": path})
    try:
        _messages_until(sock, "READY=1")
        snapshot = env.tmp / "snapshot.db"
        os.link(env.db, snapshot)
        before, files = _rows(env.db), _tree(other)
        scan = subprocess.run(
            [*_SCAN, "--config", str(env.config), "--database", str(snapshot), str(other)],
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert scan.returncode == 4, scan.stderr
        assert f"{snapshot} is in use by another process (pid {proc.pid})" in scan.stderr
        second_config = env.tmp / "second.yaml"
        second_config.write_text(
            env.config.read_text().replace(f"database: {env.db}\n", f"database: {snapshot}\n")
            + f"socket: {env.tmp / 'second.sock'}\n"
        )
        second = _dedupd("run", "--config", str(second_config))
        try:
            assert second.wait(timeout=30) == 2
        finally:
            second.kill()
            _, stderr = second.communicate()
        assert f"{snapshot} is in use by another process (pid {proc.pid})" in stderr
        assert (_rows(env.db), _tree(other)) == (before, files)
        assert not Path(f"{snapshot}-wal").exists()
    finally:
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=20) == 0
        proc.communicate()
    with Store(env.db) as store:
        assert store.db.execute("PRAGMA integrity_check").fetchone()[0] == "ok"


@pytest.mark.slow  # ~4-8 s: run with the long suites (make test-slow)
def test_a_second_daemon_on_the_same_database_refuses_and_the_first_goes_on(
    env: Env, notify_socket
) -> None:  # type: ignore[no-untyped-def]
    """Another socket, the same database: exit 2 naming the first pid, before it binds its
    socket or recovers the journal; the first one keeps answering."""
    from click.testing import CliRunner

    from dedupd.cli import dedupctl

    sock, path = notify_socket
    second_config = env.tmp / "second.yaml"
    second_socket = env.tmp / "second.sock"
    second_config.write_text(env.config.read_text() + f"socket: {second_socket}\n")
    first = _dedupd("run", "--config", str(env.config), env={"NOTIFY_SOCKET": path})
    try:
        _messages_until(sock, "READY=1")
        second = _dedupd("run", "--config", str(second_config))
        try:
            assert second.wait(timeout=30) == 2
        finally:
            second.kill()
            _, stderr = second.communicate()
        assert stderr.splitlines() == [
            f"error: {env.db} is in use by the dedupd daemon (pid {first.pid}); the daemon does"
            " this work: `dedupctl rescan` asks it to scan, and the other dedupctl commands go"
            " through its socket"
        ]
        assert not second_socket.exists()
        status = CliRunner().invoke(dedupctl, ["--config", str(env.config), "status", "--json"])
        assert status.exit_code == 0 and f'"pid": {first.pid}' in status.stdout
    finally:
        first.send_signal(signal.SIGTERM)
        assert first.wait(timeout=20) == 0
        first.communicate()


def _readonly_dir(folder: Path) -> Callable[[], None]:
    """Make `folder` unwritable even for root (chattr +i); returns the undo."""
    if os.geteuid() != 0:
        folder.chmod(0o555)
        return lambda: folder.chmod(0o755)
    if subprocess.run(["chattr", "+i", str(folder)], capture_output=True).returncode != 0:
        pytest.skip("as root, a read-only folder needs chattr +i, unsupported here")

    def undo() -> None:
        subprocess.run(["chattr", "-i", str(folder)], check=True)

    return undo


def _corrupt(env: Env) -> Callable[[], None]:
    env.db.parent.mkdir(parents=True)
    env.db.write_bytes(random.Random(8).randbytes(8192))
    return lambda: None


def _directory(env: Env) -> Callable[[], None]:
    env.db.mkdir(parents=True)
    return lambda: None


def _wal_blocked(env: Env) -> Callable[[], None]:
    """A WAL database whose -wal file cannot be created (a directory took its name)."""
    Store(env.db).close()
    Path(f"{env.db}-wal").mkdir()
    return lambda: None


def _readonly_folder(env: Env) -> Callable[[], None]:
    """A good database (and its lock file) in a folder where its -wal cannot be created."""
    Store(env.db).close()
    env.db.with_name(env.db.name + ".lock").touch()
    return _readonly_dir(env.db.parent)


def _readonly_folder_without_lock(env: Env) -> Callable[[], None]:
    env.db.parent.mkdir(parents=True)
    return _readonly_dir(env.db.parent)


@pytest.mark.parametrize(
    "breakage",
    [_corrupt, _directory, _wal_blocked, _readonly_folder, _readonly_folder_without_lock],
)
def test_a_database_that_cannot_be_used_is_one_error_line_exit_2_and_no_socket(
    env: Env, breakage: Callable[[Env], Callable[[], None]]
) -> None:
    """README: exit 2 with a message. Not a traceback, not a thread error, not exit 1, and no
    socket file left behind to confuse dedupctl."""
    undo = breakage(env)
    try:
        proc = subprocess.run(
            [sys.executable, "-m", "dedupd", "run", "--config", str(env.config)],
            capture_output=True,
            text=True,
            timeout=60,
        )
    finally:
        undo()
    assert proc.returncode == 2, proc.stderr
    (line,) = proc.stderr.splitlines()
    assert line.startswith("error: ") and str(env.db) in line
    assert not (env.tmp / "xdg-run" / "dedupd.sock").exists()


@pytest.mark.parametrize("remove", ["dedupd.db", "dedupd.db*"])
@pytest.mark.slow
def test_a_database_deleted_under_the_daemon_is_written_back_and_kept_in_use(
    env: Env, remove: str
) -> None:
    """`rm dedupd.db` (or `rm dedupd.db*`, lock file included) while running: the daemon
    writes its open database back within seconds, quarantined files stay visible to
    dedupctl (over the socket and reading the file), and new work lands in the file."""
    from click.testing import CliRunner

    from dedupd.cli import dedupctl
    from dedupd.lock import DatabaseBusy, DatabaseLock

    def quarantined(*args: str) -> list[str]:
        result = CliRunner().invoke(
            dedupctl, ["--config", str(env.config), *args, "quarantine", "list", "--json"]
        )
        assert result.exit_code == 0, result.output
        return [e["src"] for e in json.loads(result.stdout)["quarantined"]]

    photos.copy(photos.photo("coffee"), env.root / "IMG_1.jpg")
    wa = env.root / "IMG-WA0001.jpg"
    with (
        structlog.testing.capture_logs() as logs,
        running(env, database_check_interval=0.2) as daemon,
    ):
        photos.reencode(photos.photo("coffee"), wa)
        wait_for(lambda: env.state(wa) == "quarantined")
        wait_for(lambda: _idle(daemon))
        old = os.stat(env.db).st_ino
        for doomed in env.db.parent.glob(remove):
            doomed.unlink()
        wait_for(lambda: any(e["event"] == "database_restored" for e in logs))
        assert env.db.exists() and os.stat(env.db).st_ino != old
        assert quarantined() == [str(wa)]  # through the socket
        assert quarantined("--socket", str(env.tmp / "none.sock")) == [str(wa)]  # the file
        photos.copy(photos.photo("rocket"), env.root / "IMG_2.jpg")
        wait_for(lambda: env.state(env.root / "IMG_2.jpg") == "ok", what="new work in the file")
        with pytest.raises(DatabaseBusy):  # and it still holds the (new) lock file
            DatabaseLock(env.db, "scan").acquire()
    restored = [e for e in logs if e["event"] == "database_restored"]
    assert len(restored) == 1 and restored[0]["log_level"] == "error"


def test_a_database_replaced_under_the_daemon_stops_it_with_exit_1(env: Env) -> None:
    """A different file at the path is someone else's: never overwritten; the daemon stops
    (non-zero, so systemd restarts it on the new file)."""
    daemon = Daemon(env.config, notifier=Notifier({}), database_check_interval=0.2)
    codes: list[int] = []
    thread = threading.Thread(target=lambda: codes.append(daemon.run()))
    with structlog.testing.capture_logs() as logs:
        thread.start()
        try:
            assert daemon.wait_ready(30)
            stranger = env.db.with_name("stranger.db")
            Store(stranger).close()
            os.replace(stranger, env.db)
            replaced_ino = os.stat(env.db).st_ino
            thread.join(30)
        finally:
            daemon.request_stop()
            thread.join(30)
    assert codes == [1]
    assert os.stat(env.db).st_ino == replaced_ino
    assert [e["event"] for e in logs if e["log_level"] == "error"] == ["database_replaced"]


# -- inotify queue overflow ---------------------------------------------------------------


def _overflow(watcher: dedupd.watcher.Watcher) -> None:
    """What the kernel sends when its event queue overflowed, through watchdog's own code."""
    from watchdog.observers.inotify_c import InotifyConstants, InotifyEvent

    inotify = watcher._observer._inotify_fd  # type: ignore[union-attr]
    inotify.handle_event(InotifyEvent(-1, InotifyConstants.IN_Q_OVERFLOW, 0, b""))  # type: ignore[arg-type]


@pytest.mark.skipif(sys.platform != "linux", reason="inotify only (Linux)")
def test_an_inotify_overflow_becomes_an_overflow_hint_for_every_root(tmp_path: Path) -> None:
    """watchdog re-adds its watches after an overflow but tells no handler; ours does."""
    roots = [str(tmp_path / "a"), str(tmp_path / "b")]
    for root in roots:
        os.mkdir(root)
    watcher = dedupd.watcher.Watcher()
    watcher.start(roots)
    try:
        _overflow(watcher)
        hints = {watcher.hints.get(timeout=10) for _ in roots}
    finally:
        watcher.stop()
    assert {(h.kind, h.path) for h in hints} == {("overflow", root) for root in roots}


@pytest.mark.skipif(sys.platform != "linux", reason="inotify only (Linux)")
def test_files_whose_events_an_overflow_lost_are_hashed_at_once(
    env: Env, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Events dropped, then an overflow: a reconcile finds the files now, not after
    rescan_interval (1 h here)."""
    real = dedupd.watcher._Handler._hint
    monkeypatch.setattr(  # every event is lost but the overflow itself
        dedupd.watcher._Handler,
        "_hint",
        lambda self, event: real(self, event) if event.event_type == "overflow" else None,
    )
    with structlog.testing.capture_logs() as logs, running(env) as daemon:
        photos.copy(photos.photo("coffee"), env.root / "IMG_1.jpg")
        _overflow(daemon.watcher)
        wait_for(lambda: env.state(env.root / "IMG_1.jpg") == "ok", what="the lost file")
    warnings = [e for e in logs if e["event"] == "watch_overflow"]  # one per root
    assert sorted(r for e in warnings for r in e["roots"]) == [str(env.archive), str(env.root)]
    assert {e["log_level"] for e in warnings} == {"warning"}


MAX_QUEUED = Path("/proc/sys/fs/inotify/max_queued_events")


@pytest.mark.skipif(sys.platform != "linux", reason="inotify only (Linux)")
@pytest.mark.skipif(
    not os.access(MAX_QUEUED, os.W_OK), reason=f"needs a writable {MAX_QUEUED} (root)"
)
def test_a_real_kernel_queue_overflow_is_caught_up_at_once(env: Env) -> None:
    """The kernel's queue is shrunk to 16 events while the daemon starts (each inotify
    instance keeps the limit it was created with) and watchdog's reader is held off while
    40 uploads land: the kernel drops their events and queues IN_Q_OVERFLOW. All 40 are
    hashed anyway, with rescan_interval at 1 h."""
    rng = random.Random(9)
    staging = env.tmp / "staging"
    staging.mkdir()
    for i in range(40):
        Image.frombytes("L", (24, 24), rng.randbytes(576)).save(staging / f"n{i:02}.png")
    limit = MAX_QUEUED.read_text()
    try:
        MAX_QUEUED.write_text("16\n")
        with running(env) as daemon:
            MAX_QUEUED.write_text(limit)
            reader = daemon.watcher._observer._inotify_fd  # type: ignore[union-attr]
            with reader._lock:  # watchdog's reader takes it before each read
                for png in staging.iterdir():
                    shutil.copy(png, env.root / png.name)
            wait_for(lambda: daemon.stats.hashed == 40, timeout=60, what="all 40 uploads")
    finally:
        MAX_QUEUED.write_text(limit)


def test_a_reload_that_turns_crops_on_gives_the_workers_the_new_setting(env: Env) -> None:
    """The hasher pool is kept across a reload only when every hashing setting is the same:
    workers started with the crop stage off must not keep hashing photos without features
    once a reload turns it on (those photos would be hashed again at every reconcile)."""
    env.write_config(camera="{exact: report, near: report}")
    env.config.write_text(
        env.config.read_text().replace("{workers: 2}", "{workers: 2, crops: false}")
    )
    with running(env) as daemon:
        photos.copy(photos.photo("coffee"), env.root / "IMG_1.jpg")
        wait_for(lambda: daemon.stats.hashed == 1, what="the first upload hashed")
        first_pool = daemon.pool
        env.write_config(camera="{exact: report, near: report}")  # crops on: the default
        daemon.submit(daemon.reload_now).result(timeout=30)
        assert daemon.pool is not first_pool
        photos.copy(photos.photo("chelsea"), env.root / "IMG_2.jpg")
        # three: the reload hashes IMG_1 again for the crop features it lacks
        wait_for(
            lambda: daemon.stats.hashed == 3 and _idle(daemon), what="the second upload hashed"
        )
        daemon.submit(daemon.reload_now).result(timeout=30)  # the same settings: kept
        kept = daemon.pool
        daemon.submit(daemon.reload_now).result(timeout=30)
        assert daemon.pool is kept
    with Store(env.db) as store:
        second = store.file_at(env.root / "IMG_2.jpg")
        assert second is not None
        assert store.features_of([second.id], FEATURES_KEY)


@pytest.mark.slow
def test_a_stop_while_the_crop_stage_waits_for_the_crop_index_is_acted_on_at_once(
    env: Env, monkeypatch: pytest.MonkeyPatch
) -> None:
    """SIGTERM (`systemctl stop`, a restart) while the first upload's crop stage waits for
    the crop index's load stops the daemon within a second or so, not when the load ends
    (systemd would SIGKILL it at TimeoutStopSec first). The upload keeps its 'deciding'
    note: the next start decides it."""
    from dedupd import engine

    env.write_config(camera="{exact: quarantine, near: quarantine}")
    photos.copy(photos.photo("coffee"), env.root / "IMG_1.jpg")
    with running(env) as first:
        wait_for(lambda: first.stats.hashed == 1 and _idle(first), what="the original hashed")
    release = threading.Event()
    real = engine._feature_words

    def held(*args: Any) -> Any:
        release.wait(60)
        return real(*args)

    monkeypatch.setattr(engine, "_feature_words", held)
    try:
        with structlog.testing.capture_logs() as logs, running(env) as daemon:
            photos.copy(photos.photo("coffee"), env.root / "IMG_2.jpg")
            wait_for(lambda: any(e["event"] == "crop_stage_waits" for e in logs), what="wait")
            daemon.note_signal(signal.SIGTERM)
            stopped = lambda: any(e["event"] == "stopped" for e in logs)  # noqa: E731
            wait_for(stopped, timeout=10, what="the stop, the load still held")
            assert not release.is_set()
    finally:
        release.set()
    assert [e["event"] for e in logs if e["event"] == "decision_deferred"] == [
        "decision_deferred"
    ]
    assert not any(e["event"] == "ingest_failed" for e in logs)  # not the file's failure
    assert env.state(env.root / "IMG_2.jpg") == "ok" and _quarantines(env) == []
    with Store(env.db) as store:  # put off on purpose: no attempt counted against it
        assert store.db.execute("SELECT why, attempts FROM undecided").fetchall() == [
            ("deciding", 0)
        ]
    monkeypatch.setattr(engine, "_feature_words", real)
    with running(env) as daemon:
        wait_for(lambda: daemon.stats.hashed == 1 and _idle(daemon), what="the copy decided")
    assert env.state(env.root / "IMG_2.jpg") == "quarantined"


@pytest.mark.slow
def test_a_stop_while_a_reloads_decisions_wait_for_the_crop_index_stops_cleanly(
    env: Env, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A reload that turns `report` into `quarantine` decides the reported pair again, and
    that decision waits for the new crop index's load. A stop meanwhile puts it off to the
    next start: not a failed reload (which would configure the old config again, walking
    every root, before stopping), and the decision is made by the next start."""
    from dedupd import engine

    env.write_config(camera="{exact: report, near: report}")
    photos.copy(photos.photo("coffee"), env.root / "IMG_1.jpg")
    armed, release = threading.Event(), threading.Event()
    real = engine._feature_words

    def held(*args: Any) -> Any:
        if armed.is_set():
            release.wait(60)
        return real(*args)

    monkeypatch.setattr(engine, "_feature_words", held)
    try:
        with structlog.testing.capture_logs() as logs, running(env) as daemon:
            wait_for(lambda: daemon.stats.hashed == 1 and _idle(daemon), what="IMG_1")
            photos.copy(photos.photo("coffee"), env.root / "IMG_2.jpg")
            wait_for(lambda: daemon.stats.hashed == 2 and _idle(daemon), what="the report")
            env.write_config(camera="{exact: quarantine, near: quarantine}")
            armed.set()
            daemon.request_reload()
            wait_for(lambda: any(e["event"] == "crop_stage_waits" for e in logs), what="wait")
            daemon.request_stop()
            stopped = lambda: any(e["event"] == "stopped" for e in logs)  # noqa: E731
            wait_for(stopped, timeout=10, what="the stop, the load still held")
    finally:
        release.set()
    events = [e["event"] for e in logs]
    assert "decision_deferred" in events
    assert "reload_failed" not in events and "restore_after_reload_failed" not in events
    assert _quarantines(env) == []
    monkeypatch.setattr(engine, "_feature_words", real)
    with running(env) as daemon:
        wait_for(lambda: len(_quarantines(env)) == 1 and _idle(daemon), what="the decision")
    assert [Path(q.src).name for q in _quarantines(env)] == ["IMG_2.jpg"]


def test_a_stop_during_the_crop_index_load_does_not_wait_for_the_load(
    env: Env, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The crop index's start-up load only reads (a connection of its own) and takes a
    minute or more on a large library from a cold disk: a daemon stopped meanwhile, with no
    upload at all, ends without waiting for it."""
    from dedupd import engine

    photos.copy(photos.photo("coffee"), env.root / "IMG_1.jpg")
    with running(env) as first:
        wait_for(lambda: first.stats.hashed == 1 and _idle(first), what="the original hashed")
    release, reading = threading.Event(), threading.Event()
    real = engine._feature_words

    def held(*args: Any) -> Any:
        reading.set()
        release.wait(60)
        return real(*args)

    monkeypatch.setattr(engine, "_feature_words", held)
    try:
        with structlog.testing.capture_logs() as logs, running(env) as daemon:
            assert reading.wait(10)
            assert daemon.ingest.crops_loading
            daemon.request_stop()
            stopped = lambda: any(e["event"] == "stopped" for e in logs)  # noqa: E731
            wait_for(stopped, timeout=10, what="the stop, the load still held")
            assert not release.is_set()
    finally:
        release.set()


def test_photos_stored_without_features_are_hashed_again_once_when_crops_turn_on(
    env: Env,
) -> None:
    """The reconcile queues a photo whose record is this very version but lacks what the
    configuration asks for (here its crop features: stored while crops were off). The daemon
    must hash it, not take "unchanged" as done: before, it skipped them at every reconcile,
    so a crop of a photo stored earlier was never found. Once hashed, a rescan leaves it."""
    env.write_config(camera="{exact: report, near: report}")
    env.config.write_text(
        env.config.read_text().replace("{workers: 2}", "{workers: 2, crops: false}")
    )
    photos.upscaled(photos.photo("coffee"), env.root / "coffee.jpg", size=(1600, 1200))
    with running(env) as first:
        wait_for(lambda: first.stats.hashed == 1 and _idle(first), what="the original hashed")
    env.write_config(camera="{exact: report, near: report}")  # crops on: the default
    with running(env) as daemon:
        wait_for(lambda: daemon.stats.hashed == 1 and _idle(daemon), what="the re-hash")
        with Image.open(env.root / "coffee.jpg") as im:
            im.crop((320, 240, 1280, 1080)).save(env.tmp / "cut.jpg", quality=90)
        os.replace(env.tmp / "cut.jpg", env.root / "coffee-crop.jpg")
        wait_for(lambda: daemon.stats.hashed == 2 and _idle(daemon), what="the crop hashed")
        daemon.submit(lambda: daemon.request_rescan(None)).result(timeout=30)
        wait_for(lambda: _idle(daemon) and not daemon.pipeline.rescan_due, what="the rescan")
        assert daemon.stats.hashed == 2  # nothing lacks anything now
    with Store(env.db) as store:
        crop = store.file_at(env.root / "coffee-crop.jpg")
        assert crop is not None
        assert [m.kind for m in store.matches_of(crop.id, FEATURES_KEY)] == ["crop"]


@pytest.mark.parametrize("by", ["daemon", "scan"])
def test_photos_hashed_again_for_what_the_config_adds_are_not_decided_again(
    env: Env, by: str
) -> None:
    """A photo decided when it arrived and hashed again only because the configuration now
    asks for more (crop features) is stored and indexed, never decided again: decided
    oldest first, it would be taken for a newcomer among the photos that arrived after it.
    Here the smaller IMG_1 came first and the better IMG_2 later: the policy reported the
    pair (it does not act on an existing photo for a newcomer). Both lack features once
    crops are on; before, their re-hash decided IMG_1 anew, as a newcomer to IMG_2, and
    quarantined it."""
    from click.testing import CliRunner

    from dedupd.cli import dedupd

    env.write_config(camera="{exact: quarantine, near: quarantine}")
    env.config.write_text(
        env.config.read_text().replace("{workers: 2}", "{workers: 2, crops: false}")
    )
    first, better = env.root / "IMG_1.jpg", env.root / "IMG_2.jpg"
    photos.resize(photos.photo("coffee"), first, 0.5)
    with running(env) as daemon:
        wait_for(lambda: daemon.stats.hashed == 1 and _idle(daemon), what="IMG_1 hashed")
        photos.copy(photos.photo("coffee"), better)
        wait_for(lambda: daemon.stats.hashed == 2 and _idle(daemon), what="IMG_2 decided")
    assert first.exists() and better.exists() and _quarantines(env) == []  # reported
    env.write_config(camera="{exact: quarantine, near: quarantine}")  # crops on
    if by == "daemon":
        with running(env) as daemon:
            wait_for(lambda: daemon.stats.hashed == 2 and _idle(daemon), what="both again")
    else:
        result = CliRunner().invoke(dedupd, ["scan", "--config", str(env.config)])
        assert result.exit_code == 0, result.output
    assert first.exists() and better.exists() and _quarantines(env) == []
    with Store(env.db) as store:
        ids = [r.id for r in (store.file_at(first), store.file_at(better)) if r is not None]
        assert sorted(store.features_of(ids, FEATURES_KEY)) == sorted(ids) and len(ids) == 2


@pytest.mark.slow
def test_a_crop_uploaded_after_a_restart_is_found_against_photos_stored_before(
    env: Env,
) -> None:
    """The daemon reads the stored photos' crop words after it is READY, in the background:
    a crop uploaded to a restarted daemon is linked to an original hashed by the previous
    run, whether it arrives before or after that load has finished."""
    env.write_config(camera="{exact: report, near: report}")
    for name in ("coffee", "rocket"):
        photos.upscaled(photos.photo(name), env.root / f"{name}.jpg", size=(1600, 1200))
    with running(env) as first:
        wait_for(lambda: first.stats.hashed == 2 and _idle(first), what="both hashed")
    for n, (name, box) in enumerate(
        (("coffee", (320, 240, 1280, 1080)), ("rocket", (0, 0, 1200, 1000)))
    ):
        with running(env) as daemon:
            if n == 1:
                wait_for(lambda: not daemon.ingest.crops_loading, what="the crop index loaded")
            with Image.open(env.root / f"{name}.jpg") as im:
                im.crop(box).save(env.tmp / "cut.jpg", quality=90)
            os.replace(env.tmp / "cut.jpg", env.root / f"{name}-crop.jpg")
            wait_for(lambda: daemon.stats.hashed == 1 and _idle(daemon), what="the crop hashed")
        with Store(env.db) as store:
            crop = store.file_at(env.root / f"{name}-crop.jpg")
            assert crop is not None
            matches = store.matches_of(crop.id, FEATURES_KEY)
            assert [m.kind for m in matches] == ["crop"], name


@pytest.mark.slow
def test_the_watchdog_is_fed_while_the_crop_stage_waits_for_the_crop_index(
    env: Env, notify_socket, monkeypatch: pytest.MonkeyPatch  # type: ignore[no-untyped-def]
) -> None:
    """The first crop stage after a start waits for the crop index's load, which takes a
    minute or more for a large library on a cold disk; meanwhile the loop still sends
    WATCHDOG=1 (systemd's WatchdogSec=60s would otherwise kill the daemon, and its restart
    would start the load over), and the upload is decided once the load is in."""
    from dedupd import engine

    sock, path = notify_socket
    env.write_config(camera="{exact: report, near: report}")
    photos.upscaled(photos.photo("coffee"), env.root / "coffee.jpg", size=(1600, 1200))
    with running(env) as first:
        wait_for(lambda: first.stats.hashed == 1 and _idle(first), what="the original hashed")
    release = threading.Event()
    real = engine._feature_words

    def slow(*args: Any) -> Any:
        assert release.wait(30)
        return real(*args)

    monkeypatch.setattr(engine, "_feature_words", slow)
    notifier = Notifier({"NOTIFY_SOCKET": path, "WATCHDOG_USEC": "400000"})  # ping every 0.2 s
    with structlog.testing.capture_logs() as logs, running(env, notifier=notifier) as daemon:
        with Image.open(env.root / "coffee.jpg") as im:
            im.crop((320, 240, 1280, 1080)).save(env.tmp / "cut.jpg", quality=90)
        os.replace(env.tmp / "cut.jpg", env.root / "coffee-crop.jpg")
        wait_for(lambda: any(e["event"] == "crop_stage_waits" for e in logs), what="the wait")
        while True:  # what was sent before the wait
            sock.settimeout(0.05)
            try:
                sock.recv(4096)
            except TimeoutError:
                break
        sock.settimeout(5)
        pings, started = 0, time.monotonic()
        while time.monotonic() - started < 3.0:
            pings += sock.recv(4096).decode().split("\n").count("WATCHDOG=1")
        assert pings >= 2, pings  # one a second while waiting; none while the loop blocked
        assert daemon.stats.hashed == 0  # still waiting: the load has not been released
        release.set()
        wait_for(lambda: daemon.stats.hashed == 1 and _idle(daemon), what="the crop decided")
    with Store(env.db) as store:
        crop = store.file_at(env.root / "coffee-crop.jpg")
        assert crop is not None
        assert [m.kind for m in store.matches_of(crop.id, FEATURES_KEY)] == ["crop"]


def test_a_failed_quarantine_shows_in_the_status_not_as_a_report(env: Env) -> None:
    """The policy says quarantine and nothing can move (the quarantine folder is not a
    folder: as a read-only one under a service's sandbox): `dedupctl status` says so, with
    the photo and why, instead of counting it reported with "0 errors"."""
    from click.testing import CliRunner

    from dedupd.cli import dedupctl
    from dedupd.render import status as status_text

    env.quarantine.write_text("not a folder")
    photos.copy(photos.photo("coffee"), env.root / "coffee.jpg")
    photos.reencode(photos.photo("coffee"), env.root / "coffee-wa.jpg")
    with running(env) as daemon:
        wait_for(lambda: daemon.stats.hashed == 2 and _idle(daemon))
        wait_for(lambda: daemon.stats.failed == 1, what="the failed quarantine counted")
        answer = daemon.status()
        table = CliRunner().invoke(dedupctl, ["--config", str(env.config), "status"])
    assert (answer["stats"]["failed"], answer["stats"]["reported"]) == (1, 0)
    ((failure),) = answer["recent_failures"]
    assert (failure["path"], failure["action"]) == (str(env.root / "coffee-wa.jpg"), "quarantine")
    assert failure["result"].startswith("failed")
    assert "1 actions failed" in table.stdout
    assert f"failed    quarantine {env.root / 'coffee-wa.jpg'}: failed" in status_text(answer)
    assert env.state(env.root / "coffee-wa.jpg") == "ok"


def test_a_folder_that_cannot_be_read_shows_in_the_status(
    env: Env, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A folder of a root the daemon may not list (a sync tool's permissions): `dedupctl
    status` names it, and its photo's record stays as it was, not marked missing."""
    from dedupd.render import status as status_text
    from tests.test_scan import _unreadable

    photos.copy(photos.photo("coffee"), env.root / "private" / "a.jpg")
    with running(env) as daemon:
        wait_for(lambda: daemon.stats.hashed == 1 and _idle(daemon))
    _unreadable(monkeypatch, env.root / "private")
    with running(env) as daemon:
        wait_for(lambda: daemon.status()["unreadable"] != [], what="the folder in the status")
        answer = daemon.status()
    assert answer["unreadable"] == [
        {"folder": str(env.root / "private"), "reason": "Permission denied"}
    ]
    assert f"unreadable {env.root / 'private'}: Permission denied" in status_text(answer)
    assert env.state(env.root / "private" / "a.jpg") == "ok"


def test_a_failed_action_on_an_existing_file_names_that_file_not_the_newcomer(
    env: Env,
) -> None:
    """With act_on_existing, the camera's original arrives after its chat copy: the copy is
    the one the policy would quarantine. When that fails, the status names the copy, never
    the original that stays (read as 'the original could not be quarantined')."""
    env.write_config("{exact: delete, near: quarantine, act_on_existing: true}")
    env.quarantine.write_text("not a folder")
    photos.reencode(photos.photo("coffee"), env.root / "coffee-wa.jpg")
    with running(env) as daemon:
        wait_for(lambda: daemon.stats.hashed == 1 and _idle(daemon))
        photos.copy(photos.photo("coffee"), env.root / "coffee.jpg")
        wait_for(lambda: daemon.stats.failed == 1, what="the failed quarantine counted")
        answer = daemon.status()
    ((failure),) = answer["recent_failures"]
    assert (failure["path"], failure["action"]) == (str(env.root / "coffee-wa.jpg"), "quarantine")
