"""The daemon says what it does: a log line per file, the backlog's progress every few seconds
(on a fake clock) and when it drains, status counts that add up while a backlog runs, and the
scan's progress bar with counts and a rate."""

from __future__ import annotations

import contextlib
import hashlib
import io
import json
import os
import random
import re
import subprocess
import time
from collections.abc import Iterator, MutableMapping
from pathlib import Path
from typing import Any

import pytest
import structlog
import structlog.testing
from click.testing import CliRunner
from PIL import Image

from dedupd import render, safefs
from dedupd.actions import ActionError, Actions
from dedupd.cli import _scan_with_progress, dedupctl
from dedupd.config import load_config
from dedupd.pipeline import Backlog
from dedupd.store import Store
from tests import photos, workers
from tests.test_daemon import Env, _idle, running, wait_for


@pytest.fixture
def env(tmp_path: Path) -> Env:
    e = Env(tmp_path)
    e.write_config()
    return e


class Clock:
    def __init__(self) -> None:
        self.t = 1000.0

    def __call__(self) -> float:
        return self.t


@pytest.fixture
def logs(monkeypatch: pytest.MonkeyPatch) -> Iterator[list[MutableMapping[str, Any]]]:
    """Every event at every level (a CLI test before may have left a filtering level, and
    dedupctl run in the test would configure its own)."""
    monkeypatch.setattr("dedupd.cli._configure_logging", lambda level: None)
    structlog.reset_defaults()
    with structlog.testing.capture_logs() as captured:
        yield captured
    structlog.reset_defaults()


def test_backlog_progress_is_logged_every_interval_and_once_when_it_drains(
    logs: list[MutableMapping[str, Any]],
) -> None:
    clock = Clock()
    backlog = Backlog(clock, interval=5.0)
    backlog.added(3000)
    start = clock.t
    for i in range(1, 3001):  # 100 files a second, 8 in the pool while any are left
        clock.t = start + i / 100
        backlog.finished()
        hashing = min(8, 3000 - i)
        queued = 3000 - i - hashing
        status = backlog.status(queued, hashing)
        assert (
            status is not None
            and status["queued"] + status["hashing"] + status["done"] == (status["total"])
        )
        backlog.tick(queued, hashing)
    backlog.tick(0, 0)  # nothing more once drained
    assert [e["event"] for e in logs] == [
        "backlog_started",
        *["backlog_progress"] * 5,  # at 5, 10, 15, 20 and 25 s
        "backlog_done",
    ]
    assert logs[0]["files"] == 3000
    first = logs[1]
    assert (first["done"], first["total"], first["queued"], first["hashing"]) == (
        500,
        3000,
        2492,
        8,
    )
    assert (first["elapsed_s"], first["rate"], first["eta_s"]) == (5.0, 100.0, 25)
    assert {k: logs[-1][k] for k in ("files", "elapsed_s", "rate")} == {
        "files": 3000,
        "elapsed_s": 30.0,
        "rate": 100.0,
    }
    assert backlog.status(0, 0) is None


def test_a_backlog_that_grows_while_it_runs_keeps_its_clock_and_logs_one_end(
    logs: list[MutableMapping[str, Any]],
) -> None:
    clock = Clock()
    backlog = Backlog(clock, interval=5.0)
    backlog.added(2)
    clock.t += 1
    backlog.finished()
    backlog.added(3)  # a rescan found more before the first ones were done
    backlog.dropped(1)  # one was dropped by a reload
    clock.t += 1
    backlog.finished(3)
    backlog.tick(0, 0)
    assert [e["event"] for e in logs] == ["backlog_started", "backlog_done"]
    assert (logs[-1]["files"], logs[-1]["elapsed_s"], logs[-1]["rate"]) == (4, 2.0, 2.0)


def test_status_text_shows_the_backlog_progress_and_what_is_queued() -> None:
    answer = {
        "pid": 42,
        "uptime_s": 10.0,
        "hasher": "phash:16",
        "roots": [],
        "indexed": 749,
        "backlog": {
            "total": 3000,
            "done": 512,
            "queued": 2480,
            "hashing": 8,
            "elapsed_s": 40.0,
            "rate": 12.8,
            "eta_s": 195,
        },
        "queue": {"backlog": 2480, "settling": 1, "hashing": 8},
        "index": {"backend": "hamming", "pending": 3, "last_rebuild": None},
        "stats": {"hashed": 512, "errors": 0, "acted": 3, "reported": 0, "rescans": 1},
        "recent_errors": [],
    }
    assert render.status(answer).splitlines()[1:] == [
        "indexed   749 (hamming, 3 pending, last rebuild -)",
        "backlog   512/3000 (17%), 12.8 files/s, 3m 15s left; 2480 queued, 8 hashing",
        "queue     2480 to hash, 8 hashing, 1 settling",
        "done      512 hashed, 3 acted on, 0 errors since start",
    ]
    answer["backlog"] = None
    assert not any(line.startswith("backlog") for line in render.status(answer).splitlines())


def _noise(folder: Path, names: list[str]) -> None:
    """Distinct small PNGs, written an hour ago: files a start finds, not uploads under way
    (a reconcile leaves a file written within the settle time to the settler)."""
    rng = random.Random(7)
    folder.mkdir(parents=True, exist_ok=True)
    an_hour_ago = time.time() - 3600
    for name in names:
        Image.frombytes("L", (24, 24), rng.randbytes(576)).save(folder / name)
        os.utime(folder / name, (an_hour_ago, an_hour_ago))


def _status(env: Env) -> dict[str, Any]:
    result = CliRunner().invoke(dedupctl, ["--config", str(env.config), "status", "--json"])
    assert result.exit_code == 0, result.output
    answer: dict[str, Any] = json.loads(result.stdout)
    return answer


def test_status_counts_add_up_while_a_backlog_runs_and_its_end_is_logged(
    env: Env, logs: list[MutableMapping[str, Any]]
) -> None:
    """12 files found at start, 8 held in the pool (2 workers × 4): queued + hashing + done is
    the backlog's total at every look, and the text shows the progress line."""
    names = [f"wait{i:02}.png" for i in range(12)]
    _noise(env.root, names)
    with running(env, work=workers.scripted, progress_interval=0.05) as daemon:
        wait_for(
            lambda: (_status(env)["backlog"] or {}).get("hashing") == 8,
            what="the pool to hold 8 files of the backlog",
        )
        wait_for(
            lambda: any(e["event"] == "backlog_progress" for e in list(logs)),
            what="a progress line while the backlog is held",
        )
        held = _status(env)
        assert {k: held["backlog"][k] for k in ("total", "done", "queued", "hashing")} == {
            "total": 12,
            "done": 0,
            "queued": 4,
            "hashing": 8,
        }
        assert held["queue"]["backlog"] == 4 and held["indexed"] == 0
        text = CliRunner().invoke(dedupctl, ["--config", str(env.config), "status"]).stdout
        assert re.search(
            r"^backlog   0/12 \(0%\), 0\.0 files/s, \? left; 4 queued, 8 hashing$", text, re.M
        ), text
        (env.tmp / "release").touch()
        seen = []
        while (s := _status(env))["backlog"] is not None:
            b = s["backlog"]
            assert b["queued"] + b["hashing"] + b["done"] == b["total"] == 12, b
            seen.append(b["done"])
        wait_for(lambda: _idle(daemon))
        assert daemon.stats.hashed == 12 and _status(env)["indexed"] == 12
    assert seen == sorted(seen)
    events = [e for e in logs if e["event"].startswith("backlog_")]
    assert events[0]["event"] == "backlog_started" and events[-1]["event"] == "backlog_done"
    progress = events[1:-1]
    assert progress and all(e["event"] == "backlog_progress" for e in progress)
    assert all(e["queued"] + e["hashing"] + e["done"] == e["total"] == 12 for e in progress)
    assert events[0]["files"] == 12
    assert events[-1]["files"] == 12 and events[-1]["elapsed_s"] >= 0 and "rate" in events[-1]
    unique = [e for e in logs if e["event"] == "file_unique"]
    assert sorted(Path(e["path"]).name for e in unique) == names
    assert all(e["log_level"] == "debug" for e in unique)


def test_every_file_handled_leaves_one_line_at_its_level(
    env: Env, logs: list[MutableMapping[str, Any]]
) -> None:
    """unique and unchanged at debug, a duplicate's action at info, a failure at warning
    with the error's kind."""
    with running(env) as daemon:
        photos.copy(photos.photo("coffee"), env.root / "a.jpg")
        wait_for(lambda: env.state(env.root / "a.jpg") == "ok")
        photos.copy(photos.photo("coffee"), env.root / "b.jpg")  # exact: deleted
        photos.truncated(photos.photo("rocket"), env.root / "c.jpg")
        wait_for(lambda: env.state(env.root / "b.jpg") == "deleted")
        wait_for(lambda: env.state(env.root / "c.jpg") == "error")
        wait_for(lambda: daemon.stats.hashed == 2 and _idle(daemon))
        open(env.root / "a.jpg", "ab").close()  # an event, but the file did not change
        wait_for(
            lambda: any(
                e["event"] == "file_unchanged" and e["path"].endswith("a.jpg") for e in list(logs)
            )
        )
    by_path: dict[str, list[tuple[str, str]]] = {}
    for e in logs:
        if "path" in e and e["event"] in (
            "file_unique",
            "file_unchanged",
            "decision",
            "file_skipped",
        ):
            by_path.setdefault(Path(e["path"]).name, []).append((e["event"], e["log_level"]))
    # A copy may raise more than one event: the later ones find the file unchanged.
    assert by_path["a.jpg"][0] == ("file_unique", "debug")
    assert set(by_path["a.jpg"][1:]) == {("file_unchanged", "debug")}
    assert by_path["b.jpg"] == [("decision", "info")]
    # A second event can be looked at while the first is still in the worker, so an
    # `unchanged` line may come first; the failure is logged once, as a warning.
    assert by_path["c.jpg"].count(("file_skipped", "warning")) == 1
    assert set(by_path["c.jpg"]) <= {("file_skipped", "warning"), ("file_unchanged", "debug")}
    skipped = next(e for e in logs if e["event"] == "file_skipped")
    assert skipped["error"] == "truncated"


class _Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_the_scan_progress_bar_shows_counts_and_a_rate(
    library: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    terminal = _Terminal()
    monkeypatch.setattr("sys.stderr", terminal)
    monkeypatch.setenv("COLUMNS", "120")
    clock = Clock()

    def ticking() -> float:
        clock.t += 0.5  # each look at the clock is half a second later
        return clock.t

    config = load_config(None).with_roots([library])
    with Store(tmp_path / "dedupd.db") as store:
        report = _scan_with_progress(config, store, Actions(store, None), clock=ticking)
    assert report.hashed == 9
    shown = re.sub(r"\x1b\[\?25[lh]", "", terminal.getvalue())  # cursor hidden, shown
    frames = [f.strip() for f in shown.split("\r") if f.strip()]
    assert re.fullmatch(r"hashing\s+\[#+\]\s+10/10\s+100%\s+\d+\.\d files/s", frames[-1]), frames


def test_the_daemon_is_not_idle_while_a_hashed_photo_is_still_being_ingested(
    env: Env, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Once the pool has answered, the photo is still on its way into the store and the index:
    `idle` (what status, tests and the backlog's end rely on) must not say done before."""
    import threading

    from dedupd.engine import Ingest

    entered, gate = threading.Event(), threading.Event()
    real = Ingest.ingest

    def held(self: Ingest, entry: Any, result: Any) -> Any:
        entered.set()
        gate.wait(30)
        return real(self, entry, result)

    monkeypatch.setattr(Ingest, "ingest", held)
    with running(env) as daemon:
        photos.copy(photos.photo("coffee"), env.root / "a.jpg")
        assert entered.wait(30), "the photo never reached the ingest"
        try:
            assert daemon.pool.in_flight == 0  # the worker has answered
            assert not _idle(daemon)
        finally:
            gate.set()
        wait_for(lambda: _idle(daemon))
        assert len(daemon.ingest.index) == 1


def test_a_stop_while_a_moved_photos_decision_waits_is_a_stop_not_a_failed_file(
    tmp_path: Path,
) -> None:
    """A photo moved into another root is decided as it is found (`Pipeline._revive`); if the
    daemon stops while that decision waits (the crop index still loading), the stop goes
    through to the loop (`decision_deferred`), not logged as a failed settled file and
    counted as an error; the move is recorded and its 'moved' note kept for the next start."""
    from dedupd.engine import Ingest, Interrupted, scan
    from dedupd.pipeline import Counts, Pipeline
    from dedupd.scanner import root_key

    env = Env(tmp_path)
    env.write_config("{exact: quarantine, near: quarantine}")
    photos.copy(photos.photo("hubble"), env.archive / "a.jpg")
    config = load_config(env.config)
    roots = [root_key(r.path) for r in config.roots]
    with Store(env.db) as store:
        scan(config, store)
        before = store.file_at(env.archive / "a.jpg")
        assert before is not None
        ingest = Ingest(store, config, roots)
        clock = Clock()
        pipeline = Pipeline(Counts(), clock)
        pipeline.configure(config, roots, store, ingest)

        def stopping(*args: object, **kwargs: object) -> list[object]:
            raise Interrupted("stopping while the crop stage waits for the crop index")

        ingest.redecide = stopping  # type: ignore[assignment,method-assign]
        os.rename(env.archive / "a.jpg", env.root / "a.jpg")
        pipeline.settler.add(str(env.root / "a.jpg"))
        clock.t += 60
        with pytest.raises(Interrupted):
            pipeline.take_settled()
        assert pipeline.counts.errors == 0
        after = store.file_at(env.root / "a.jpg")
        assert after is not None and after.id == before.id
        assert [r.id for r in store.undecided_due("any", roots)] == [before.id]
        ingest.close()


@pytest.fixture
def bound(tmp_path: Path) -> Iterator[tuple[Path, Path]]:
    """(data, root): folder `data` bind-mounted on `root`; needs root."""
    data, root = (tmp_path / "data").resolve(), (tmp_path / "root").resolve()
    data.mkdir()
    root.mkdir()
    mounted = subprocess.run(
        ["mount", "--bind", str(data), str(root)], capture_output=True, text=True, check=False
    )
    if mounted.returncode != 0:
        pytest.skip(f"cannot bind-mount here: {mounted.stderr.strip() or 'refused'}")
    try:
        yield data, root
    finally:
        subprocess.run(["umount", "-l", str(root)], check=False)


def test_the_quarantine_reached_inside_a_root_by_a_bind_mount_is_never_taken_for_uploads(
    tmp_path: Path, bound: tuple[Path, Path]
) -> None:
    """The red team's b2 (a Docker run with `-v /srv/photos:/photos` and
    `-v /srv/photos/Duplicates:/quarantine` has its shape): the root is a bind mount of
    `data`, the quarantine `data/q`, so root/q is the quarantine by another name. The
    watcher took each photo quarantined there for an upload and quarantined it again, 13
    folders deep. A settled file under a folder that is the quarantine by device and inode
    is none of the root's, and no action moves or deletes a file in it."""
    from dedupd.engine import Ingest
    from dedupd.imaging import hash_image
    from dedupd.pipeline import Counts, Pipeline
    from dedupd.scanner import root_key
    from tests.test_heic import HASHERS

    data, root = bound
    quarantine = data / "q"
    config_file = tmp_path / "dedupd.yaml"
    config_file.write_text(
        f"database: {tmp_path / 'state' / 'dedupd.db'}\nhashing: {{workers: 1}}\n"
        f"roots:\n  - {{path: {root}, policy: cam}}\n"
        "policies:\n  cam: {exact: quarantine, near: quarantine}\n"
        f"quarantine: {{path: {quarantine}}}\n"
    )
    config = load_config(config_file)
    photos.copy(photos.photo("coffee"), root / "IMG_0001.jpg")
    aliased = photos.copy(photos.photo("coffee"), quarantine / "root" / "IMG_0001.jpg")
    seen = root / "q" / "root" / "IMG_0001.jpg"  # the quarantined copy, through the root
    assert seen.stat().st_ino == aliased.stat().st_ino
    roots = [root_key(r.path) for r in config.roots]
    with Store(config.database) as store:
        ingest = Ingest(store, config, roots)
        try:
            clock = Clock()
            pipeline = Pipeline(Counts(), clock)
            pipeline.configure(config, roots, store, ingest)
            pipeline.settler.add(str(seen))
            clock.t += 60
            pipeline.take_settled()
            assert not pipeline.settled  # not an upload of the root
        finally:
            ingest.close()
        # nor does an action touch it, were it recorded (by an older dedupd, say)
        hashed = hash_image(str(seen), HASHERS, max_pixels=10**9)
        record_id = store.record_hashed(roots[0], "q/root/IMG_0001.jpg", hashed)
        keeper_id = store.record_hashed(
            roots[0],
            "IMG_0001.jpg",
            hash_image(str(root / "IMG_0001.jpg"), HASHERS, max_pixels=10**9),
        )
        record, keeper = store.file(record_id), store.file(keeper_id)
        assert record is not None and keeper is not None
        with pytest.raises(ActionError, match=r"in the quarantine folder .* another name"):
            Actions(store, quarantine).quarantine(record, keeper, 0, "exact")
        with pytest.raises(ActionError, match=r"in the quarantine folder .* another name"):
            Actions(store, quarantine).delete(record, keeper, "exact")
    assert aliased.exists() and list(quarantine.rglob("*.jpg")) == [aliased]


@contextlib.contextmanager
def _one_photo(tmp_path: Path) -> Iterator[tuple[Path, Store, Any, Any, Clock]]:
    """A root holding one recorded photo (coffee.jpg as IMG_0001.jpg), and a pipeline over
    it: (the photo, the store, the ingest, the pipeline, its clock)."""
    from dedupd.engine import Ingest, scan
    from dedupd.pipeline import Counts, Pipeline
    from dedupd.scanner import root_key

    env = Env(tmp_path)
    env.write_config("{exact: quarantine, near: quarantine}")
    photo = photos.copy(photos.photo("coffee"), env.root / "IMG_0001.jpg")
    config = load_config(env.config)
    roots = [root_key(r.path) for r in config.roots]
    with Store(env.db) as store:
        scan(config, store)
        ingest = Ingest(store, config, roots)
        try:
            clock = Clock()
            pipeline = Pipeline(Counts(), clock)
            pipeline.configure(config, roots, store, ingest)
            yield photo, store, ingest, pipeline, clock
        finally:
            ingest.close()


def test_a_photo_rewritten_in_place_with_its_size_and_mtime_is_hashed_again(
    tmp_path: Path,
) -> None:
    """The red team's c1: 16 bytes of a recorded photo changed in place and its mtime put
    back (an in-place metadata edit, `exiftool -P`): its stat is the one recorded, so it was
    "unchanged" and its record kept the old sha256, and a copy of the old version arriving
    later was quarantined as an exact duplicate of it. A file closed after a write whose
    inode changed since its record was written (ctime) is hashed again whatever its size and
    mtime; one only touched (created, modified events), or opened to write and closed
    untouched, is not."""
    from dedupd.imaging import hash_image
    from dedupd.watcher import Hint
    from tests.test_heic import HASHERS

    with _one_photo(tmp_path) as (photo, store, ingest, pipeline, clock):
        before = store.file_at(photo)
        assert before is not None and before.sha256 is not None
        open(photo, "ab").close()  # closed after opening to write, and not written to
        pipeline.handle(Hint("written", str(photo)))
        clock.t += 60
        pipeline.take_settled()
        assert not pipeline.settled  # its inode did not change (ctime): unchanged
        st = os.stat(photo)
        with open(photo, "r+b") as f:
            f.seek(st.st_size // 2)
            f.write(bytes(16))
        os.utime(photo, ns=(st.st_atime_ns, st.st_mtime_ns))
        pipeline.handle(Hint("touch", str(photo)))
        clock.t += 60
        pipeline.take_settled()
        assert not pipeline.settled  # only touched: unchanged, never decoded again
        pipeline.handle(Hint("written", str(photo)))
        clock.t += 60
        pipeline.take_settled()
        (entry,) = pipeline.settled
        assert entry.rehash == "rewritten" and not pipeline._handled(entry)
        ingest.ingest(entry, hash_image(str(photo), HASHERS, max_pixels=10**9))
        after = store.file_at(photo)
        assert after is not None and after.id == before.id
        assert after.sha256 != before.sha256
        assert after.sha256 == hashlib.sha256(photo.read_bytes()).hexdigest()


def test_a_rewrite_renamed_before_it_settled_is_hashed_again_and_same_bytes_decide_nothing(
    tmp_path: Path,
) -> None:
    """Review: the "written" mark stayed on the old name when an in-place edit was renamed
    before it settled (`mv` after `exiftool -P`): the record followed the rename unhashed.
    And a photo written back with the same bytes was decided again, as a newcomer among the
    copies that came after it: only its record is refreshed."""
    from dedupd.imaging import hash_image
    from dedupd.watcher import Hint
    from tests.test_heic import HASHERS

    with _one_photo(tmp_path) as (photo, store, ingest, pipeline, _):
        st = os.stat(photo)
        with open(photo, "r+b") as f:  # the same bytes written back
            f.write(photo.read_bytes()[:16])
        os.utime(photo, ns=(st.st_atime_ns, st.st_mtime_ns))
        pipeline.handle(Hint("written", str(photo)))
        renamed = photo.with_name("IMG_0001-edited.jpg")
        os.rename(photo, renamed)
        pipeline.handle(Hint("moved", str(photo), str(renamed)))
        (entry,) = pipeline.settled
        assert (entry.relpath, entry.rehash) == (renamed.name, "rewritten")
        result = hash_image(str(renamed), HASHERS, max_pixels=10**9)
        assert ingest.ingest(entry, result) is None
        assert store.undecided_due(ingest.policy_key, ingest.roots) == []  # nothing to decide


def test_an_upload_seen_in_an_earlier_quarantine_inside_a_root_is_passed_over(
    tmp_path: Path,
) -> None:
    """A folder holding the quarantine's marker (one an earlier configuration named) is
    passed over by the watch's hints as by walks (red team 12)."""
    from dedupd.pipeline import _under_excluded

    root = tmp_path / "photos"
    (root / "Quarantine" / "photos" / "chat").mkdir(parents=True)
    (root / "Quarantine" / safefs.QUARANTINE_MARKER).touch()
    (root / "chat").mkdir()
    inside = root / "Quarantine" / "photos" / "chat" / "wa.jpg"
    assert _under_excluded(str(root), str(inside), frozenset())
    assert not _under_excluded(str(root), str(root / "chat" / "wa.jpg"), frozenset())
