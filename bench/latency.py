"""Daemon latency: from an upload's last write to its decision, and commands during a burst.

Starts the real `dedupd run` (a subprocess, JSON logs on stderr) on a temp folder that
already holds five 12 MP JPEGs (the test photos, upscaled), with `settle_seconds` 1.0 and a
report-only policy, and waits until it is idle. Then:

1. **Uploads, one at a time**: N near-duplicate re-encodes of those photos (12 MP, each with
   a unique trailer so no two share a sha256), alternately written under a temp name and
   renamed into place (Syncthing, rsync, browsers) and written in place (scp, Samba). The
   time of the last write (the rename, or the close) is taken on the wall clock; the time of
   the decision is the `timestamp` of the daemon's `decision` log event for that path. The
   figure reported is decision − last write − settle_seconds, in ms: what the daemon adds
   to the settle time the user asked for (hashing, store, match, decide, and any lateness
   in noticing that the file had settled).
2. **A burst**: 240 such uploads arriving at once (temp name + rename, as fast as the disk
   takes them). Until every one has its decision, `status` is asked over the control socket
   in a loop (one request at a time, the client's round trip timed), and a `rescan` POST
   (which runs on the daemon's own thread) every 0.5 s.

Goals from issue #8: decision ≤ 60 ms past settle (p50), status ≤ 0.5 s (p95), rescan ≤ 2 s
(worst).

    .venv/bin/python bench/latency.py [--uploads 30] [--burst 240] [--settle 1.0] [--out PATH]

Prints JSON and writes it to --out (default bench/results/latency.json).
"""

from __future__ import annotations

import argparse
import io
import json
import os
import queue
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from datetime import datetime
from pathlib import Path
from typing import Any

from machine import machine_info
from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from dedupd.control import ControlClient
from tests import photos

REPO = Path(__file__).resolve().parent.parent


def _percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


def _summary(values: list[float]) -> dict[str, float]:
    return {
        "n": len(values),
        "p50": round(statistics.median(values), 1),
        "p95": round(_percentile(values, 0.95), 1),
        "max": round(max(values), 1),
        "min": round(min(values), 1),
    }


class Daemon:
    """`dedupd run` in a subprocess; its JSON log events, stamped by the daemon, by path."""

    def __init__(self, config: Path):
        env = {**os.environ, "PYTHONPATH": str(REPO)}
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "dedupd", "run", "--config", str(config)],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            text=True,
            env=env,
        )
        self.events: queue.Queue[dict[str, Any]] = queue.Queue()
        self.other: list[str] = []
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        assert self.proc.stderr is not None
        for line in self.proc.stderr:
            try:
                event = json.loads(line)
            except json.JSONDecodeError:
                self.other.append(line)
                continue
            self.events.put(event)

    def decisions(self, paths: set[str], timeout: float) -> dict[str, float]:
        """Wall-clock time of the `decision` event of each of `paths` (waits for all)."""
        found: dict[str, float] = {}
        deadline = time.monotonic() + timeout
        while len(found) < len(paths):
            left = deadline - time.monotonic()
            if left <= 0:
                raise SystemExit(f"only {len(found)} of {len(paths)} decisions within {timeout}s")
            try:
                event = self.events.get(timeout=left)
            except queue.Empty:
                continue
            if event.get("event") == "decision" and event.get("path") in paths:
                found[event["path"]] = datetime.fromisoformat(event["timestamp"]).timestamp()
            elif event.get("level") in ("error", "warning"):
                print(f"daemon: {event}", file=sys.stderr)
        return found

    def stop(self) -> None:
        self.proc.send_signal(signal.SIGTERM)
        try:
            self.proc.wait(timeout=30)
        finally:
            self.proc.kill()
            self._reader.join(timeout=5)


def _unique(data: bytes, tag: int) -> bytes:
    """The same JPEG with bytes after its end marker (decoders ignore them): a new sha256."""
    return data + b"dedupd-bench-" + str(tag).encode()


def _write_renamed(dest: Path, data: bytes) -> float:
    tmp = dest.with_name(f".{dest.name}.tmp")
    with open(tmp, "wb") as f:
        f.write(data)
    os.rename(tmp, dest)
    return time.time()


def _write_in_place(dest: Path, data: bytes) -> float:
    with open(dest, "wb") as f:
        step = len(data) // 4 + 1
        for i in range(0, len(data), step):  # in a few writes, as a network copy does
            f.write(data[i : i + step])
            f.flush()
    return time.time()


def _wait_ready(client: ControlClient, timeout: float = 60.0) -> None:
    """Until the daemon answers and has hashed what was there at start."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            s = client.get("status")
            q = s["queue"]
            if q["backlog"] == 0 and q.get("hashing", 0) == 0 and q["settling"] == 0:
                return
        except Exception:  # not listening yet
            pass
        time.sleep(0.1)
    raise SystemExit("the daemon did not become idle")


def uploads(daemon: Daemon, root: Path, sources: list[bytes], n: int, settle: float) -> dict:
    by_mode: dict[str, list[float]] = {"rename": [], "in_place": []}
    for i in range(n):
        mode = "rename" if i % 2 == 0 else "in_place"
        dest = root / f"upload-{i:03}.jpg"
        data = _unique(sources[i % len(sources)], i)
        last_write = (_write_renamed if mode == "rename" else _write_in_place)(dest, data)
        decided = daemon.decisions({str(dest)}, timeout=30)[str(dest)]
        by_mode[mode].append((decided - last_write - settle) * 1000)
        time.sleep(0.2)  # the next upload arrives to an idle daemon
    every = by_mode["rename"] + by_mode["in_place"]
    return {
        "past_settle_ms": _summary(every),
        "past_settle_ms_by_write": {m: _summary(v) for m, v in by_mode.items()},
    }


def burst(daemon: Daemon, client: ControlClient, root: Path, sources: list[bytes], n: int) -> dict:
    staging = root.parent / "staging"
    staging.mkdir()
    datas = [_unique(sources[i % len(sources)], 1000 + i) for i in range(n)]
    status_s: list[float] = []
    rescan_s: list[float] = []
    done = threading.Event()
    errors: list[str] = []

    def ask() -> None:
        next_rescan = time.monotonic()
        while not done.is_set():
            try:
                t = time.perf_counter()
                client.get("status")
                status_s.append(time.perf_counter() - t)
                if time.monotonic() >= next_rescan:
                    t = time.perf_counter()
                    client.post("rescan", {})
                    rescan_s.append(time.perf_counter() - t)
                    next_rescan = time.monotonic() + 0.5
            except Exception as exc:
                errors.append(repr(exc))
            time.sleep(0.02)

    asker = threading.Thread(target=ask)
    paths = {str(root / f"burst-{i:03}.jpg") for i in range(n)}
    started = time.time()
    asker.start()
    try:
        for i, data in enumerate(datas):
            _write_renamed(root / f"burst-{i:03}.jpg", data)
        written = time.time()
        decided = daemon.decisions(paths, timeout=600)
    finally:
        done.set()
        asker.join()
    last = max(decided.values())
    return {
        "files": n,
        "write_s": round(written - started, 2),
        "last_decision_after_last_write_s": round(last - written, 2),
        "status_ms": _summary([s * 1000 for s in status_s]),
        "rescan_ms": _summary([s * 1000 for s in rescan_s]),
        "client_errors": errors[:5],
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--uploads", type=int, default=30)
    parser.add_argument("--burst", type=int, default=240)
    parser.add_argument("--settle", type=float, default=1.0)
    parser.add_argument("--out", default=str(Path(__file__).parent / "results" / "latency.json"))
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="dedupd-bench-") as tmp:
        work = Path(tmp)
        root = work / "uploads"
        root.mkdir()
        print("making 12 MP photos and their re-encodes", file=sys.stderr)
        sources: list[bytes] = []
        for name in photos.PHOTOS:
            original = photos.upscaled(photos.photo(name), root / f"{name}.jpg")
            with Image.open(original) as im:
                for quality in (85, 75):  # what a chat app or an editor sends back
                    buf = io.BytesIO()
                    im.save(buf, format="JPEG", quality=quality)
                    sources.append(buf.getvalue())
        config = work / "dedupd.yaml"
        config.write_text(
            f"database: {work / 'state' / 'dedupd.db'}\n"
            f"socket: {work / 'dedupd.sock'}\n"
            f"watch: {{settle_seconds: {args.settle}, rescan_interval: 1h}}\n"
            f"roots:\n  - {{path: {root}, policy: camera}}\n"
            "policies:\n  camera: {exact: report, near: report}\n"
        )
        daemon = Daemon(config)
        client = ControlClient(work / "dedupd.sock", timeout=30)
        try:
            _wait_ready(client)
            time.sleep(1.0)  # idle
            print(f"{args.uploads} uploads, one at a time", file=sys.stderr)
            one_by_one = uploads(daemon, root, sources, args.uploads, args.settle)
            print(f"a burst of {args.burst}", file=sys.stderr)
            many = burst(daemon, client, root, sources, args.burst)
            workers = client.get("status")
        finally:
            daemon.stop()
        shutil.rmtree(root, ignore_errors=True)
    out = {
        "benchmark": "latency",
        "machine": machine_info(),
        "config": {
            "settle_seconds": args.settle,
            "workers": "auto",
            "photo": "12 MP JPEG re-encodes (q85, q75) of the upscaled test photos",
            "indexed_at_start": len(photos.PHOTOS),
        },
        "uploads": one_by_one,
        "burst": many,
        "stats_at_end": workers["stats"],
        "goals": {"decision_past_settle_p50_ms": 60, "status_p95_ms": 500, "rescan_max_ms": 2000},
    }
    text = json.dumps(out, indent=2)
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(text + "\n")
    print(text)


if __name__ == "__main__":
    main()
