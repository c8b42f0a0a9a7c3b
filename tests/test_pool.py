"""The standing hasher pool: files are decoded in worker processes only; a hung decode is
killed after the timeout, a dead worker costs one file; the pool goes on either way."""

from __future__ import annotations

import os
import signal
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from PIL import Image

from dedupd.hashers import Hasher
from dedupd.imaging import FileStat, HashedImage
from dedupd.pool import Failure, HasherPool, PoolClosed, Result, Waker, Work, hash_file
from dedupd.scanner import Entry
from tests import workers

HASHER = Hasher("phash", 8)


def _entry(root: Path, name: str, seed: int = 0) -> Entry:
    path = root / name
    Image.new("RGB", (32, 24), (seed * 40 % 256, 90, 200 - seed % 200)).save(path, "PNG")
    return Entry(str(root), name, FileStat.of(os.stat(path)))


@pytest.fixture
def make_pool() -> Iterator[type[HasherPool]]:
    pools: list[HasherPool] = []

    def make(
        *, workers: int = 2, timeout: float = 60.0, work: Work = hash_file, hold: float = 60.0
    ) -> HasherPool:
        pool = HasherPool(
            [HASHER], workers=workers, max_pixels=10**8, timeout=timeout, work=work, hold=hold
        )
        pools.append(pool)
        return pool

    yield make  # type: ignore[misc]
    for pool in pools:
        pool.close()


def _drain(pool: HasherPool, want: int, limit: float = 60.0) -> list[tuple[Entry, Result]]:
    """Results until `want` have come back (fails after `limit` seconds of waiting)."""
    got: list[tuple[Entry, Result]] = []
    deadline = time.monotonic() + limit
    while len(got) < want:
        assert time.monotonic() < deadline, f"only {len(got)} of {want} results came back"
        got += pool.results(timeout=1.0)
    return got


def _by_name(results: list[tuple[Entry, Result]]) -> dict[str, Result]:
    return {entry.relpath: result for entry, result in results}


def test_every_submitted_file_comes_back_once_hashed_as_in_process(
    tmp_path: Path, make_pool
) -> None:  # type: ignore[no-untyped-def]
    """The pool's answer for a file is the one hash_file gives, and none is lost or doubled."""
    pool = make_pool(workers=2)
    entries = [_entry(tmp_path, f"{i:02}.png", i) for i in range(40)]
    for e in entries:
        pool.submit(e)
    got = _drain(pool, 40)
    assert sorted(e.relpath for e, _ in got) == sorted(e.relpath for e in entries)
    for entry, result in got:
        assert result == hash_file(entry.path, entry.stat, (HASHER,), 10**8)
    assert pool.in_flight == 0


def test_nothing_is_decoded_in_the_calling_process(tmp_path: Path, make_pool) -> None:  # type: ignore[no-untyped-def]
    """Even a single file goes to a worker: a decoder crash can never take the daemon down."""
    pool = make_pool(workers=1, work=workers.scripted)
    pool.submit(_entry(tmp_path, "pid.png"))
    ((_, result),) = _drain(pool, 1)
    assert isinstance(result, Failure) and result.kind == "pid"
    assert int(result.message) != os.getpid()
    assert int(result.message) in pool.pids()


def test_a_hung_decode_is_killed_recorded_as_timeout_and_the_pool_goes_on(
    tmp_path: Path, make_pool
) -> None:  # type: ignore[no-untyped-def]
    pool = make_pool(workers=2, timeout=1.0, work=workers.scripted)
    pool.submit(_entry(tmp_path, "hang.png"))
    others = [_entry(tmp_path, f"ok{i}.png", i) for i in range(6)]
    for e in others:
        pool.submit(e)
    results = _by_name(_drain(pool, 7))
    hung = results.pop("hang.png")
    assert isinstance(hung, Failure) and hung.kind == "timeout"
    assert "hashing.timeout" in hung.message
    assert all(isinstance(r, HashedImage) for r in results.values()), results
    # The worker was replaced: the pool still has two and still hashes.
    assert len(pool.pids()) == 2
    pool.submit(_entry(tmp_path, "after.png", 9))
    ((entry, result),) = _drain(pool, 1)
    assert entry.relpath == "after.png" and isinstance(result, HashedImage)


def test_a_dead_worker_costs_its_file_only_the_files_queued_behind_it_are_hashed(
    tmp_path: Path, make_pool
) -> None:  # type: ignore[no-untyped-def]
    """A segfault or OOM kill is recorded as `crashed` for the file being decoded; files sent
    to the same worker after it are given to another worker, not lost, not marked crashed."""
    pool = make_pool(workers=1, work=workers.scripted)
    pool.submit(_entry(tmp_path, "crash.png"))
    behind = [_entry(tmp_path, f"ok{i:02}.png", i) for i in range(12)]
    for e in behind:
        pool.submit(e)
    results = _by_name(_drain(pool, 13))
    crashed = results.pop("crash.png")
    assert isinstance(crashed, Failure) and crashed.kind == "crashed"
    assert "SIGKILL" in crashed.message
    assert sorted(results) == sorted(e.relpath for e in behind)
    assert all(isinstance(r, HashedImage) for r in results.values()), results


def test_results_come_back_in_submission_order_when_one_is_slower(
    tmp_path: Path, make_pool
) -> None:  # type: ignore[no-untyped-def]
    """Of two copies arriving together, the later must be ingested second (it is "the
    newcomer" a policy acts on), whichever worker finished first."""
    pool = make_pool(workers=2, work=workers.scripted)
    entries = [_entry(tmp_path, "slow.png"), *(_entry(tmp_path, f"f{i}.png", i) for i in range(3))]
    for e in entries:
        pool.submit(e)
    got = _drain(pool, 4)
    assert [e.relpath for e, _ in got] == [e.relpath for e in entries]


def test_a_hung_file_holds_back_later_results_only_for_the_hold_time(
    tmp_path: Path, make_pool
) -> None:  # type: ignore[no-untyped-def]
    pool = make_pool(workers=2, timeout=60.0, hold=0.2, work=workers.scripted)
    pool.submit(_entry(tmp_path, "hang.png"))
    pool.submit(_entry(tmp_path, "ok.png"))
    ((entry, result),) = _drain(pool, 1)
    assert entry.relpath == "ok.png" and isinstance(result, HashedImage)
    assert pool.in_flight == 1  # the hung one, still waiting for its timeout


def test_results_returns_early_when_woken(make_pool) -> None:  # type: ignore[no-untyped-def]
    """The daemon sleeps in results(); a hint or a command must end that sleep."""
    pool = make_pool(workers=1)
    waker = Waker()
    waker.set()
    assert pool.results(timeout=600, wake=waker) == []
    waker.clear()
    assert not waker.is_set()


def test_a_closed_pool_refuses_work_and_leaves_no_process(tmp_path: Path, make_pool) -> None:  # type: ignore[no-untyped-def]
    pool = make_pool(workers=2, work=workers.scripted)
    pool.submit(_entry(tmp_path, "hang.png"))
    pids = pool.pids()
    pool.close()
    for pid in pids:
        with pytest.raises(ProcessLookupError):
            os.kill(pid, 0)
    with pytest.raises(PoolClosed):
        pool.submit(_entry(tmp_path, "late.png"))


def test_a_stop_signal_to_the_whole_group_costs_no_file(tmp_path: Path, make_pool) -> None:  # type: ignore[no-untyped-def]
    """systemd stops a service with SIGTERM to every process of its cgroup: the workers and
    the fork server too. Files being hashed then must come back hashed, never as `crashed`
    (which would be recorded, and never retried while the file stays the same)."""
    from multiprocessing import forkserver

    pool = make_pool(workers=2, work=workers.scripted)
    entries = [_entry(tmp_path, f"slow{i}.png", i) for i in range(4)]
    for e in entries:
        pool.submit(e)
    server = forkserver._forkserver._forkserver_pid  # type: ignore[attr-defined]
    for pid in [*pool.pids(), server]:
        os.kill(pid, signal.SIGTERM)
    results = _by_name(_drain(pool, 4))
    assert all(isinstance(r, HashedImage) for r in results.values()), results
