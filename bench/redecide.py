"""What deciding again costs: the duplicates a scan (or the daemon at start and reload)
decides again after a dry run or a policy change (`Ingest.redecide`).

--files files (default 20,000) of 1 KiB random bytes named .jpg, recorded directly in a
database in the store's own layout (bench/fixtures.py: real (dev, inode, size, mtime_ns),
random 256-bit pHashes); every second file is recorded with the sha256 of the one before it,
so half the files are exact duplicates, and each of those is noted as decided under other
policies (`Store.note_undecided`, why "report"), as after a policy change. The default
policy (report) decides each again without moving a file (no `Actions`). Timed per round,
each on a fresh copy of the database: building the `Ingest` (index load), then `redecide()`
(the stat check of each file, taking them out of the index, and per file: exact and radius
look-ups, its matches written, `decide`, the note written), in this process. Files are in
the page cache. Timings are never asserted.

Run from the repository root (about 1 minute on 2 cores):

    .venv/bin/python bench/redecide.py [--files 20000] [--rounds 3]
                                       [--out bench/results/redecide.json]

The JSON is printed to stdout and written to --out; progress goes to stderr.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import random
import shutil
import statistics
import sys
import tempfile
import time
from dataclasses import replace
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import structlog
from fixtures import insert_hashed
from machine import machine_info

from dedupd.config import Config
from dedupd.engine import Ingest
from dedupd.hashers import Hasher
from dedupd.imaging import FileStat
from dedupd.scanner import root_key
from dedupd.store import Store

ROOT = Path(__file__).resolve().parent.parent
DEFAULT_OUT = ROOT / "bench" / "results" / "redecide.json"
SEED = 20_261_130


def _library(tmp: Path, n: int) -> tuple[Config, Path]:
    rng = random.Random(SEED)
    root = tmp / "photos"
    files = []
    sha = ""
    for i in range(n):
        path = root / f"{i // 1000:03}" / f"IMG_{i:06}.jpg"
        path.parent.mkdir(parents=True, exist_ok=True)
        data = rng.randbytes(1024)
        path.write_bytes(data)
        if i % 2 == 0:
            sha = hashlib.sha256(data).hexdigest()
        files.append((os.path.relpath(path, root), FileStat.of(os.stat(path)), sha))
    config = replace(Config(), database=tmp / "base.db").with_roots([root])
    hasher = Hasher(config.hashing.algorithm, config.hashing.hash_size)
    with Store(config.database) as store:
        insert_hashed(store, root_key(root), files, hasher.key, rng)
        with store.batch():
            for i in range(2, n + 1, 2):
                store.note_undecided(i, files[i - 1][2], "report", "other policies")
    return config, root


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--files", type=int, default=20_000)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT)
    args = parser.parse_args()
    # The `decision` events at info are part of the cost, but not of stdout's JSON.
    devnull = open(os.devnull, "w")  # noqa: SIM115 (open for the whole run)
    structlog.configure(logger_factory=structlog.PrintLoggerFactory(devnull))
    tmp = Path(tempfile.mkdtemp(prefix="dedupd-bench-redecide-"))
    rounds = []
    try:
        print(f"writing {args.files} files", file=sys.stderr)
        base, root = _library(tmp, args.files)
        for r in range(args.rounds):
            db = tmp / f"round{r}.db"
            shutil.copyfile(base.database, db)
            config = replace(base, database=db)
            with Store(db) as store:
                t0 = time.perf_counter()
                ingest = Ingest(store, config, [root_key(root)])
                t1 = time.perf_counter()
                outcomes = ingest.redecide()
                t2 = time.perf_counter()
                ingest.close()
            decided = len(outcomes)
            rounds.append(
                {
                    "index_load_s": round(t1 - t0, 3),
                    "redecide_s": round(t2 - t1, 3),
                    "decided": decided,
                    "ms_per_file": round(1000 * (t2 - t1) / max(decided, 1), 3),
                }
            )
            print(f"round {r}: {rounds[-1]}", file=sys.stderr)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    result = {
        "machine": machine_info(),
        "files": args.files,
        "due": args.files // 2,
        "rounds": rounds,
        "median_redecide_s": statistics.median(r["redecide_s"] for r in rounds),
        "median_ms_per_file": statistics.median(r["ms_per_file"] for r in rounds),
    }
    text = json.dumps(result, indent=2)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(text + "\n")
    print(text)


if __name__ == "__main__":
    main()
