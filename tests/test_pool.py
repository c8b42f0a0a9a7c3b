"""The standing hasher pool: files are decoded in worker processes only; a hung decode is
killed after the timeout, a dead worker costs one file; the pool goes on either way."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
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


def test_workers_are_the_first_processes_the_oom_killer_ends(
    tmp_path: Path, make_pool
) -> None:  # type: ignore[no-untyped-def]
    """A decode that outgrows memory must cost a worker (one file recorded `crashed`), not
    the daemon, whose indexes outweigh a worker at rest: each worker sets its own
    oom_score_adj to the most, and leaves the process that owns the pool as it was."""
    own = Path("/proc/self/oom_score_adj").read_text()
    pool = make_pool(workers=2)
    pool.submit(_entry(tmp_path, "a.png"))
    _drain(pool, 1)  # both workers are up
    assert [Path(f"/proc/{pid}/oom_score_adj").read_text() for pid in pool.pids()] == [
        "1000\n",
        "1000\n",
    ]
    assert Path("/proc/self/oom_score_adj").read_text() == own


def _memory_cgroup(name: str, limit: int) -> Path | None:
    """A new memory cgroup `name` under this process's own, limited to `limit` bytes (swap
    kept out where the kernel allows), or None where none can be made here."""
    own = dict(
        (controllers, where)
        for _, controllers, where in (
            line.split(":", 2) for line in Path("/proc/self/cgroup").read_text().splitlines()
        )
    )
    v1 = next((w for c, w in own.items() if "memory" in c.split(",")), None)
    if v1 is not None:
        group = Path("/sys/fs/cgroup/memory", v1.lstrip("/"), name)
        files = {"memory.limit_in_bytes": str(limit), "memory.swappiness": "0"}
    elif "" in own and Path("/sys/fs/cgroup/cgroup.controllers").exists():  # cgroup v2
        group = Path("/sys/fs/cgroup", own[""].lstrip("/"), name)
        files = {"memory.max": str(limit), "memory.swap.max": "0"}
    else:
        return None
    try:
        group.mkdir(exist_ok=True)
        for file, value in files.items():
            with contextlib.suppress(FileNotFoundError):  # no swap accounting: no file
                (group / file).write_text(value)
    except OSError:
        with contextlib.suppress(OSError):
            group.rmdir()
        return None
    return group


@pytest.mark.slow  # ~4-8 s: run with the long suites (make test-slow)
def test_the_oom_killer_ends_the_worker_not_the_process_that_owns_the_pool(
    tmp_path: Path,
) -> None:
    """For real: in a memory cgroup of 400 MB, the pool's owner holds 300 MB (a daemon's
    indexes) and its worker's decoder grows until the limit. The kernel picked the larger
    process, the owner (measured before the fix: exit -9, nothing recorded); now it ends the
    worker, and the file is recorded as `crashed`."""
    group = _memory_cgroup(f"dedupd-test-{os.getpid()}", 400 << 20)
    if group is None:
        pytest.skip("no memory cgroup can be made here (needs root and a memory controller)")
    try:
        child = subprocess.run(
            [sys.executable, "-m", "tests.oom_child", str(tmp_path)],
            cwd=Path(__file__).parent.parent,
            preexec_fn=lambda: (group / "cgroup.procs").write_text(str(os.getpid())),
            capture_output=True,
            text=True,
            timeout=120,
        )
    finally:
        deadline = time.monotonic() + 10  # the fork server may outlive its parent a moment
        while group.exists() and time.monotonic() < deadline:
            with contextlib.suppress(OSError):
                group.rmdir()
            time.sleep(0.1)
    assert child.returncode == 0, (child.returncode, child.stderr[-2000:])
    answer = json.loads(child.stdout.splitlines()[-1])
    assert answer["kind"] == "crashed" and "SIGKILL" in answer["message"]


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


@pytest.mark.slow  # ~4-8 s: run with the long suites (make test-slow)
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
