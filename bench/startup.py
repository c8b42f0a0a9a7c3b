"""Start-up at scale: loading the index of N recorded photos, and the daemon's start to READY.

A database holds --size records (default 1,000,000), state ok, each with a random 256-bit
pHash under the default hasher key, all recorded under one root folder that is empty on
disk (so the reconcile finds nothing to walk and keeps the records, as for an unmounted
disk: what is measured is loading, not walking). Each sample runs in a fresh interpreter,
so that its peak RSS (`ru_maxrss`) is its own:

- **index**: `Ingest(store, config, [root])` in a fresh `python -c` (imports done first,
  store opened first); its wall time, and the process's peak RSS (VmHWM) before and after.
- **daemon**: `python -m dedupd run --config CFG` with `NOTIFY_SOCKET` set to a datagram
  socket bound here; wall time from spawning it to its `READY=1`, then SIGTERM, and the
  peak RSS (VmHWM) of the process at that moment.

Each sample is run with every source tree given (--tree, repeatable; default this tree
only), interleaved round by round with the order alternating, so that the old code
(`--tree /path/to/an/old/checkout`) and the new are compared on the same machine at the
same time. A tree is put first on PYTHONPATH of the subprocess; its git commit is recorded.

With `--features`, each photo also has a features row of 270 random visual words (and no
keypoints: the start-up load reads the words only), as every photo hashed with the crop
stage on (the default) has: the daemon then reads them into its crop index in the
background after READY, and each daemon sample also waits for `status` to say the crop
index is loaded (`crops_loaded_s`, from the spawn) and takes the peak RSS then.

    .venv/bin/python bench/startup.py [--size 1000000] [--rounds 3] [--tree DIR ...]
                                      [--features] [--out bench/results/startup.json]

Prints JSON and writes it to --out. Goals from issue #8: at 1M, start ≤ 2 s, peak ≤ 150 MB.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from fixtures import insert_hashed
from machine import machine_info

from dedupd.config import Config
from dedupd.filestat import FileStat
from dedupd.hashers import Hasher
from dedupd.scanner import root_key
from dedupd.store import Store

ROOT = Path(__file__).resolve().parent.parent
DEFAULT_OUT = ROOT / "bench" / "results" / "startup.json"
GOAL_S, GOAL_MB = 2.0, 150.0

_INDEX_SNIPPET = """
import json, sys, time
from dataclasses import replace
from pathlib import Path
from dedupd.config import Config
from dedupd.engine import Ingest
from dedupd.store import Store
database, root = sys.argv[1], sys.argv[2]
config = replace(Config(), database=Path(database)).with_roots([root])
def hwm():
    with open("/proc/self/status") as f:
        return next(int(l.split()[1]) for l in f if l.startswith("VmHWM:")) / 1024
store = Store(database)
before = hwm()
t0 = time.perf_counter()
ingest = Ingest(store, config, [root])
seconds = time.perf_counter() - t0
print(json.dumps({"seconds": seconds, "indexed": len(ingest.index),
                  "rss_before_mb": before, "peak_rss_mb": hwm()}))
ingest.close()
"""


def _log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def _env(tree: Path) -> dict[str, str]:
    return {**os.environ, "PYTHONPATH": str(tree)}


def _commit(tree: Path) -> str:
    proc = subprocess.run(
        ["git", "-C", str(tree), "log", "-1", "--format=%h %s"],
        capture_output=True,
        text=True,
        check=False,
    )
    return proc.stdout.strip() or "unknown"


WORDS = 270  # distinct visual words of a photo (bench/crops.py)


def make_database(database: Path, root: str, n: int, features: bool) -> float:
    t0 = time.perf_counter()
    key = Hasher(Config().hashing.algorithm, Config().hashing.hash_size).key
    rng = random.Random(20_261_130)
    files = [
        (f"{i // 1000:04}/IMG_{i:07}.jpg", FileStat(1, i + 1, 3_000_000, i), f"{i:064x}")
        for i in range(n)
    ]
    with Store(database) as store:
        insert_hashed(store, root, files, key, rng)
        if features:
            _insert_words(store, n)
        store.db.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    return time.perf_counter() - t0


def _insert_words(store: Store, n: int, chunk: int = 20_000) -> None:
    """A features row of WORDS random distinct words per photo (ids 1..n), no keypoints."""
    import numpy as np

    from dedupd.features import FEATURES_KEY

    gen = np.random.default_rng(20_261_130)
    conn = store.db.conn
    with conn:
        for start in range(0, n, chunk):
            stop = min(start + chunk, n)
            words = np.sort(gen.integers(0, 1 << 16, (stop - start, WORDS)), axis=1)
            conn.executemany(
                "INSERT INTO features (file_id, kind, width, height, points, descriptors,"
                " words) VALUES (?, ?, 512, 384, x'', x'', ?)",
                (
                    (start + i + 1, FEATURES_KEY, np.unique(w).astype("<u2").tobytes())
                    for i, w in enumerate(words)
                ),
            )


def _peak_rss_mb(pid: int) -> float:
    """The process's peak RSS so far (VmHWM). Not ru_maxrss: Linux carries that across
    exec, so a child would report this (large) benchmark process's peak as its own."""
    with open(f"/proc/{pid}/status") as f:
        return next(int(line.split()[1]) for line in f if line.startswith("VmHWM:")) / 1024


def index_sample(tree: Path, database: Path, root: str) -> dict[str, Any]:
    proc = subprocess.run(
        [sys.executable, "-c", _INDEX_SNIPPET, str(database), root],
        capture_output=True,
        text=True,
        env=_env(tree),
        cwd=tree,  # the tree, not an installed dedupd, is what `import dedupd` finds
        check=False,
    )
    if proc.returncode != 0:
        raise RuntimeError(f"index sample failed in {tree}: {proc.stderr[-2000:]}")
    result: dict[str, Any] = json.loads(proc.stdout)
    return result


def _crops_loaded(socket_path: Path, deadline: float) -> None:
    """Wait until the daemon's status says its crop index is loaded."""
    from dedupd.control import ControlClient

    client = ControlClient(socket_path, timeout=10)
    while time.perf_counter() < deadline:
        crops = client.get("status").get("crops")
        if crops is None:
            raise RuntimeError("this daemon does not report its crop index (an older tree?)")
        if not crops["loading"]:
            return
        time.sleep(0.1)
    raise RuntimeError("the crop index did not load in time")


def daemon_sample(tree: Path, config: Path, work: Path, crops: bool) -> dict[str, Any]:
    path = str(work / "notify.sock")
    if os.path.exists(path):
        os.unlink(path)
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind(path)
    sock.settimeout(120)
    try:
        t0 = time.perf_counter()
        proc = subprocess.Popen(
            [sys.executable, "-m", "dedupd", "run", "--config", str(config)],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            env={**_env(tree), "NOTIFY_SOCKET": path},
            cwd=tree,
        )
        try:
            seen: list[str] = []
            while "READY=1" not in seen:
                seen += sock.recv(4096).decode().split("\n")
            ready = time.perf_counter() - t0
            peak = _peak_rss_mb(proc.pid)
            sample: dict[str, Any] = {"ready_s": ready, "peak_rss_mb": peak}
            if crops:
                _crops_loaded(work / "dedupd.sock", t0 + 600)
                sample["crops_loaded_s"] = time.perf_counter() - t0
                sample["crops_peak_rss_mb"] = _peak_rss_mb(proc.pid)
            proc.send_signal(signal.SIGTERM)
            proc.wait()
        finally:
            if proc.returncode is None:
                proc.kill()
                proc.wait()
        stderr = proc.stderr.read().decode() if proc.stderr else ""
        if proc.returncode != 0:
            raise RuntimeError(f"dedupd run exited {proc.returncode}: {stderr[-2000:]}")
        return sample
    finally:
        sock.close()
        os.unlink(path)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--size", type=int, default=1_000_000, help="recorded photos")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--tree", type=Path, action="append", help="source tree (repeatable)")
    parser.add_argument(
        "--features", action="store_true", help="crop words per photo too (the default config)"
    )
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT)
    args = parser.parse_args()
    trees = [t.resolve() for t in (args.tree or [ROOT])]
    info = machine_info()
    with tempfile.TemporaryDirectory(prefix="dedupd-bench-startup-") as tmp:
        work = Path(tmp)
        photos = work / "photos"  # empty on disk: looks unmounted, its records are kept
        photos.mkdir()
        root = root_key(photos)
        database = work / "dedupd.db"
        made = make_database(database, root, args.size, args.features)
        _log(f"recorded {args.size} photos in {made:.0f} s")
        config = work / "dedupd.yaml"
        config.write_text(
            f"database: {database}\nsocket: {work / 'dedupd.sock'}\n"
            f"roots:\n  - {{path: {photos}}}\n"
        )
        samples: dict[str, dict[str, list[dict[str, Any]]]] = {
            str(t): {"index": [], "daemon": []} for t in trees
        }
        for r in range(args.rounds):
            order = trees if r % 2 == 0 else list(reversed(trees))
            for tree in order:
                s = samples[str(tree)]
                s["index"].append(index_sample(tree, database, root))
                s["daemon"].append(daemon_sample(tree, config, work, args.features))
                _log(
                    f"round {r + 1}/{args.rounds} {tree}: index {s['index'][-1]['seconds']:.2f} s"
                    f" {s['index'][-1]['peak_rss_mb']:.0f} MB; daemon READY"
                    f" {s['daemon'][-1]['ready_s']:.2f} s {s['daemon'][-1]['peak_rss_mb']:.0f} MB"
                )
    results = []
    for tree in trees:
        s = samples[str(tree)]
        ready = statistics.median(x["ready_s"] for x in s["daemon"])
        peak = statistics.median(x["peak_rss_mb"] for x in s["daemon"])
        results.append(
            {
                "tree": str(tree),
                "commit": _commit(tree),
                "index_s": statistics.median(x["seconds"] for x in s["index"]),
                "index_peak_rss_mb": statistics.median(x["peak_rss_mb"] for x in s["index"]),
                "index_rss_before_mb": statistics.median(x["rss_before_mb"] for x in s["index"]),
                "daemon_ready_s": ready,
                "daemon_peak_rss_mb": peak,
                "within_goal": ready <= GOAL_S and peak <= GOAL_MB,
                **(
                    {
                        "crops_loaded_s": statistics.median(
                            x["crops_loaded_s"] for x in s["daemon"]
                        ),
                        "crops_peak_rss_mb": statistics.median(
                            x["crops_peak_rss_mb"] for x in s["daemon"]
                        ),
                    }
                    if args.features
                    else {}
                ),
                "rounds": s,
            }
        )
    info["loadavg_end"] = list(os.getloadavg())
    doc = {
        "benchmark": "startup",
        "machine": info,
        "size": args.size,
        "features": args.features,
        "goal": {"ready_s": GOAL_S, "peak_rss_mb": GOAL_MB},
        "method": "fresh subprocess per sample; medians of rounds, trees interleaved",
        "results": results,
    }
    text = json.dumps(doc, indent=2)
    print(text)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(text + "\n")
    for r in results:
        _log(
            f"{r['commit']}: index {r['index_s']:.2f} s peak {r['index_peak_rss_mb']:.0f} MB; "
            f"daemon READY {r['daemon_ready_s']:.2f} s peak {r['daemon_peak_rss_mb']:.0f} MB"
        )


if __name__ == "__main__":
    main()
