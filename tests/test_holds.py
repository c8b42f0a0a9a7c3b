"""A decision held for its pixel comparison, and the newcomers that wait for it (`Ingest._wait`):
what a stop, a rescan or a folder taken over does meanwhile. Found by a review of the waits
(session 14); each test failed before its fix."""

from __future__ import annotations

import os
import shutil
from dataclasses import replace
from pathlib import Path

from PIL import Image

from dedupd import safefs
from dedupd.actions import Actions
from dedupd.config import DEFAULT_POLICY, Config, HashingConfig, Policy, QuarantineConfig, Root
from dedupd.engine import Ingest, ScanReport, ingest_all, reconcile_roots, scan
from dedupd.filestat import FileStat, HashedImage
from dedupd.imaging import hash_image
from dedupd.pipeline import Counts, Pipeline
from dedupd.pool import Result, _compared, hash_file
from dedupd.scanner import Entry, root_key
from dedupd.store import Store
from tests import photos
from tests.test_heic import HASHERS
from tests.test_likeness import _aged, chat, held_pair
from tests.workers import StandInPool

ACTING = Policy(exact="quarantine", near="quarantine")


def _config(tmp: Path, roots: list[tuple[Path, Policy]], workers: int = 1) -> Config:
    return replace(
        Config(),
        database=tmp / "d.db",
        hashing=HashingConfig(workers=workers),
        quarantine=QuarantineConfig(path=tmp / "q"),
        policies={DEFAULT_POLICY: ACTING} | {f"p{i}": p for i, (_, p) in enumerate(roots)},
        roots=tuple(Root(safefs.trusted_path(r), f"p{i}") for i, (r, _) in enumerate(roots)),
    )


def _state(store: Store, path: Path) -> str | None:
    record = store.file_at(path)
    return None if record is None else record.state


def _hashed(entry: Entry) -> Result:
    """What a worker returns for `entry` (its comparison included), in this process."""
    if entry.full_decode:
        result = hash_file(entry.path, entry.stat, HASHERS, 10**9, thumbnails=False)
    else:
        result = hash_image(entry.path, HASHERS, max_pixels=10**9)
    if entry.compare and isinstance(result, HashedImage):
        result = _compared(result, entry.path, entry.compare, 10**9)
    return result


def test_a_copy_waiting_when_the_scan_stopped_is_decided_after_its_original_next_time(
    tmp_path: Path,
) -> None:
    """A scan stops (SIGTERM, a reload) while N is held and M, its copy, waits for it. Both
    keep their 'deciding' notes; the next run hashes both again, in their order. M used to
    be decided with N out of sight there ("no duplicate", its note cleared, never again):
    awaited files had no order among themselves."""
    a, b = tmp_path / "A", tmp_path / "B"
    a.mkdir()
    b.mkdir()
    _, n = held_pair(a)  # N: near K, pixels differ: held, then reported
    m = b / "chat2.jpg"  # N saved again; B's radius (5 bits) reaches N only
    with Image.open(n) as im:
        im.convert("RGB").save(m, quality=90)
    config = _config(tmp_path, [(a, ACTING), (b, replace(ACTING, threshold=0.02))])
    with Store(config.database) as store:
        report = ScanReport(roots=[])
        done = reconcile_roots(config, store, [root_key(r.path) for r in config.roots], report)
        ingest = Ingest(store, config, report.roots, Actions(store, tmp_path / "q"))
        ingest.await_decisions(done.awaiting)
        try:
            with store.batch():  # stopped as soon as M waits
                ingest_all(ingest, done.work, report, stop=lambda: bool(ingest._waiting))
            assert ingest._waiting, "M never waited: the setup no longer holds N"
        finally:
            ingest.close()
        again = scan(config, store, actions=Actions(store, tmp_path / "q"))
        by_name = {Path(o.path).name: o for o in again.outcomes}
        assert by_name["chat2.png"].decision.action == "report"
        assert (by_name["chat2.jpg"].decision.action, by_name["chat2.jpg"].result) == (
            "quarantine",
            "done",
        )
        assert _state(store, m) == "quarantined" and _state(store, n) == "ok"


def test_a_rescan_while_a_photo_is_held_never_lets_its_copy_go_before_its_decision(
    tmp_path: Path,
) -> None:
    """N is held for its comparison with K, and M (N's exact copy, in a folder whose policy
    deletes exact copies) waits for it. A rescan queues both again (their 'deciding' notes):
    N is decided again and held again, and the first comparison's result then comes back
    late and is dropped. That drop used to end N's hold and let M go: M deleted with N as
    its keeper, then N quarantined as K's copy, leaving N's bytes only in the quarantine,
    for the purge. Only the entry a hold waits for ends it now; decided in order, N goes
    (K's copy) and M, whose folder matches nothing but N, stays."""
    a, b = tmp_path / "A", tmp_path / "B"
    a.mkdir()
    b.mkdir()
    k = _aged(photos.copy(photos.photo("coffee"), a / "coffee.jpg"), 3600)
    n = _aged(photos.reencode(photos.photo("coffee"), a / "coffee-wa.jpg", quality=50), 1800)
    m = b / "coffee-wa.jpg"
    shutil.copy2(n, m)
    strict = Policy(threshold=0.005, exact="delete", near="quarantine")
    config = _config(tmp_path, [(a, ACTING), (b, strict)], workers=2)
    roots = [str(a), str(b)]

    def entry(path: Path) -> Entry:
        return Entry(str(path.parent), path.name, FileStat.of(os.stat(path)))

    with Store(config.database) as store:
        ingest = Ingest(store, config, roots, Actions(store, tmp_path / "q"))
        ingest.load_crops_now()
        pipeline = Pipeline(Counts(), lambda: 0.0)
        pipeline.configure(config, roots, store, ingest)
        pipeline._redecide = False  # the start-up reconcile ran long ago
        pool = StandInPool()

        def hash_one(e: Entry) -> None:
            pipeline.ingest_results([(e, _hashed(e))])

        try:
            for path in (k, n):  # K, then N: held for its comparison with K
                pipeline.settled.append(entry(path))
                pipeline.feed(pool)  # type: ignore[arg-type]
                hash_one(pool.take(path.parent))
            pipeline.feed(pool)  # type: ignore[arg-type]
            first = pool.take(a, compare=True)
            pipeline.settled.append(entry(m))  # M: waits for N
            pipeline.feed(pool)  # type: ignore[arg-type]
            hash_one(pool.take(b))
            pipeline.reconcile(roots, tick=lambda: None)  # a rescan: N and M queued again
            pipeline.feed(pool)  # type: ignore[arg-type]
            n_again, m_again = pool.take(a), pool.take(b)
            hash_one(n_again)  # N decided again: held again
            pipeline.feed(pool)  # type: ignore[arg-type]
            second = pool.take(a, compare=True)
            hash_one(first)  # late: dropped, and N is still held
            hash_one(m_again)  # M waits for N again
            hash_one(second)  # N decided: K's copy; M is released
            while pool.sent or ingest.confirm:
                pipeline.feed(pool)  # type: ignore[arg-type]
                hash_one(pool.sent.pop(0))
        finally:
            ingest.close()
        assert (_state(store, k), _state(store, n), _state(store, m)) == (
            "ok",
            "quarantined",
            "ok",
        )
    assert m.exists() and k.exists()


def test_a_photo_waiting_in_a_folder_taken_over_keeps_what_it_met(tmp_path: Path) -> None:
    """Two subfolders scanned alone (policy: report), then their parent configured as one
    root that quarantines: the photos decided before are decided again, and a photo is not
    acted on against one it was compared with already (`_respect_met`). One that waited for
    a held photo during that used to lose what it had met, and was quarantined as the copy
    of a photo it had been decided against before."""
    top = tmp_path / "photos"
    s1, s2 = top / "sub1", top / "sub2"
    s1.mkdir(parents=True)
    s2.mkdir()
    x = chat(s2 / "chat1.png", 1)
    with Image.open(x) as im:
        im.convert("RGB").save(s2 / "chat1.jpg", quality=90)  # X2: came first, the worse copy
        im.save(x, compress_level=0)  # X: the better copy, came later
    x2 = _aged(s2 / "chat1.jpg", 4000)
    _aged(x, 3600)
    r1 = chat(s1 / "chat2.png", 2)
    with Image.open(r1) as im:
        im.convert("RGB").save(s1 / "chat2.jpg", quality=90)
    r2 = _aged(s1 / "chat2.jpg", 1800)  # R2: came first, the worse copy
    _aged(r1, 1700)
    with Store(tmp_path / "d.db") as store:
        for folder in (s2, s1):
            alone = _config(tmp_path, [(folder, Policy())])  # Policy(): report only
            scan(alone, store, actions=Actions(store, tmp_path / "q"))
        parent = _config(tmp_path, [(top, ACTING)])
        report = scan(parent, store, actions=Actions(store, tmp_path / "q"))
        assert any(o.result.startswith("reported") for o in report.outcomes), report.outcomes
        assert (_state(store, x2), _state(store, r2)) == ("ok", "ok")
