"""Ingest latency: from a file having settled to its decision, with N hashes already indexed.

This is the daemon's per-upload path (`hash_file`, which the daemon runs in a pool worker and
this calls in-process to time the hash alone → `Ingest.ingest`: store write, exact + radius
match, policy decision), timed on real photos (the test photos, as 12 MP JPEGs) landing in a
store that already holds N files with random 256-bit pHashes. Half the uploads are byte
copies of an earlier upload, so exact-duplicate decisions are part of the mix. The policy
only reports: no file is moved.

Also reported: the time to load the index from the database at start-up for each N.

    .venv/bin/python bench/ingest.py [--sizes 0,100000] [--uploads 40] [--out PATH]

Prints JSON and writes it to --out (default bench/results/ingest.json).
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import random
import shutil
import statistics
import sys
import tempfile
import time
from dataclasses import replace
from pathlib import Path

import structlog
from fixtures import insert_hashed
from machine import machine_info

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from dedupd.config import Config, HashingConfig
from dedupd.engine import Ingest
from dedupd.imaging import FileStat
from dedupd.pool import hash_file
from dedupd.scanner import Entry
from dedupd.store import Store
from tests import photos


def _populate(store: Store, root: str, n: int, hasher_key: str, seed: int) -> None:
    """N indexed files with random sha256 and hashes (no files on disk are needed)."""
    rng = random.Random(seed)
    files = [
        (f"old/{i:07}.jpg", FileStat(1, i + 1, 3_000_000, i), f"{rng.getrandbits(256):064x}")
        for i in range(n)
    ]
    insert_hashed(store, root, files, hasher_key, rng)


def _percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


def run(size: int, uploads: int, sources: list[Path], work: Path) -> dict[str, object]:
    root = work / f"root-{size}"
    root.mkdir()
    config = replace(
        Config(), database=work / f"db-{size}.sqlite", hashing=HashingConfig(workers=1)
    ).with_roots([root])
    rootkey = str(root.resolve())
    with Store(config.database) as store:
        started = time.perf_counter()
        ingest0 = Ingest(store, config, [rootkey])
        _populate(store, rootkey, size, ingest0.hasher.key, seed=size)
        populate_s = time.perf_counter() - started
        started = time.perf_counter()
        ingest = Ingest(store, config, [rootkey])
        load_s = time.perf_counter() - started
        hash_ms, ingest_ms, total_ms, decisions = [], [], [], 0
        for i in range(uploads):
            src = sources[(i // 2) % len(sources)]  # every photo arrives twice: original, copy
            dst = root / f"new/IMG_{i:04}.jpg"
            dst.parent.mkdir(exist_ok=True)
            shutil.copyfile(src, dst)
            t0 = time.perf_counter()
            entry = Entry(rootkey, os.path.relpath(dst, rootkey), FileStat.of(os.stat(dst)))
            result = hash_file(entry.path, entry.stat, (ingest.hasher,), 10**9)
            t1 = time.perf_counter()
            outcome = ingest.ingest(entry, result)
            t2 = time.perf_counter()
            decisions += outcome is not None
            hash_ms.append((t1 - t0) * 1000)
            ingest_ms.append((t2 - t1) * 1000)
            total_ms.append((t2 - t0) * 1000)
    summary = {
        name: {"p50": statistics.median(v), "p99": _percentile(v, 0.99), "max": max(v)}
        for name, v in (
            ("settled_to_decision_ms", total_ms),
            ("hash_ms", hash_ms),
            ("ingest_ms", ingest_ms),
        )
    }
    return {
        "indexed": size,
        "uploads": uploads,
        "decisions": decisions,
        "populate_s": populate_s,
        "index_load_s": load_s,
        **summary,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--sizes", default="0,100000")
    parser.add_argument("--uploads", type=int, default=40)
    parser.add_argument("--out", default=str(Path(__file__).parent / "results" / "ingest.json"))
    args = parser.parse_args()
    structlog.configure(  # one event per decision would swamp the JSON on stdout
        wrapper_class=structlog.make_filtering_bound_logger(logging.WARNING),
        logger_factory=structlog.PrintLoggerFactory(sys.stderr),
    )
    with tempfile.TemporaryDirectory(prefix="dedupd-bench-") as tmp:
        work = Path(tmp)
        sources = [photos.upscaled(photos.photo(n), work / f"{n}.jpg") for n in photos.PHOTOS]
        results = []
        for size in (int(s) for s in args.sizes.split(",")):
            print(f"{size} indexed: {args.uploads} uploads", file=sys.stderr)
            results.append(run(size, args.uploads, sources, work))
    out = {
        "benchmark": "ingest",
        "machine": machine_info(),
        "method": "12 MP JPEG copied in, then stat + hash (one core) + ingest, per upload",
        "results": results,
    }
    text = json.dumps(out, indent=2)
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(text + "\n")
    print(text)
    for r in results:
        t = r["settled_to_decision_ms"]
        print(
            f"{r['indexed']:>8} indexed: settled→decision p50 {t['p50']:.1f} ms, p99 "  # type: ignore[index]
            f"{t['p99']:.1f} ms; ingest p50 {r['ingest_ms']['p50']:.2f} ms; index load "  # type: ignore[index]
            f"{r['index_load_s']:.2f} s",
            file=sys.stderr,
        )


if __name__ == "__main__":
    main()
