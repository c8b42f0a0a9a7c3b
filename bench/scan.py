"""Whole-tree scans as a user runs them, and the start-up reconcile of a large unchanged tree.

1. **Scan** (`dedupd scan DIR --database DB --json`, the real command in a subprocess, its
   default of one hashing process per CPU): a tree of --photos JPEGs (default 2,000) made from
   the five test photos in tests/data/photos/ and spread over 20 year/month folders. Each
   original is a 1600x1200 (or 1200x1600) mosaic of 2 to 6 random crops of random test photos,
   randomly mirrored, at a random JPEG quality of 80-95, so the originals are distinct
   pictures; 5% of the files are byte copies of an original in another folder (exact
   duplicates) and 5% are near duplicates (`tests.photos.reencode` at quality 60, or
   `tests.photos.resize` to half size), each of a different original, so the tree should hold
   that many two-file duplicate groups. Per round: a fresh database, the first scan (every
   file hashed), then at once the second scan of the unchanged tree (nothing decoded); the
   JSON gives each round, the medians, and the first/second ratio paired per round. A scan
   of an empty folder with a fresh database gives the command's fixed cost (interpreter
   start-up and imports). Files are in the page cache (just written): a cold disk is not
   measured.

2. **Reconcile** of --files unchanged files (default 100,000) already in the store: 1 KiB
   random files named .jpg in 100 folders, recorded directly in a database in the store's own
   layout (as bench/ingest.py does: real (dev, inode, size, mtime_ns) from os.stat, the sha256
   of their bytes, a random 256-bit pHash) so that reconcile sees each one unchanged and never
   decodes one (they are not images). Timed, interleaved round by round with the order
   alternating: `dedupd.engine.reconcile_roots(config, store, [root], ScanReport(roots=[]))`
   in this process (store opened beforehand), `dedupd.scanner.walk` alone (the stat floor),
   and the CLI `dedupd scan ROOT --database DB --json` (which also loads the index of 100,000
   hashes and computes the duplicate groups). The issue's target: an unchanged rescan of
   100,000 files in under 15 s.

The CLI runs with DEDUPD_CONFIG pointing at an empty file (all defaults), so no user or system
config is picked up. Timings are never asserted: a benchmark, not a test. Temporary files
are removed at the end.

Run from the repository root (about 3 minutes on 2 cores):

    .venv/bin/python bench/scan.py [--photos 2000] [--rounds 3] [--files 100000]
                                   [--reconcile-rounds 3] [--out bench/results/scan.json]

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
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ProcessPoolExecutor
from dataclasses import replace
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # for `tests.photos`

from fixtures import insert_hashed
from machine import machine_info
from PIL import Image

from dedupd.config import Config
from dedupd.engine import ScanReport, excluded_dirs, reconcile_roots
from dedupd.hashers import Hasher
from dedupd.imaging import FileStat
from dedupd.scanner import NameFilter, root_key, walk
from dedupd.store import Store
from tests import photos

ROOT = Path(__file__).resolve().parent.parent
DEDUPD = ROOT / ".venv" / "bin" / "dedupd"
DEFAULT_OUT = ROOT / "bench" / "results" / "scan.json"
SEED = 20_261_123
LONG_SIDE, SHORT_SIDE = 1600, 1200
FOLDERS = [f"{y}/{m:02}" for y in (2024, 2025) for m in range(1, 11)]  # 20 folders
EXACT_SHARE = NEAR_SHARE = 0.05
TARGET_S = 15.0  # the target for an unchanged rescan of 100,000 files
FILE_BYTES = 1024
FILES_PER_FOLDER = 1000


def _log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


# -- the photo tree ------------------------------------------------------------------------
_SOURCES: list[Image.Image] = []


def _sources() -> list[Image.Image]:
    if not _SOURCES:
        _SOURCES.extend(Image.open(photos.photo(n)).convert("RGB") for n in photos.PHOTOS)
    return _SOURCES


def _mosaic(seed: int, dst: Path) -> Path:
    """A distinct 1600x1200 picture: a grid of random crops of random test photos."""
    rng = random.Random(seed)
    w, h = (LONG_SIDE, SHORT_SIDE) if rng.random() < 0.8 else (SHORT_SIDE, LONG_SIDE)
    cols, rows = rng.choice([(2, 1), (1, 2), (2, 2), (3, 2), (2, 3)])
    canvas = Image.new("RGB", (w, h))
    xs = [round(i * w / cols) for i in range(cols + 1)]
    ys = [round(j * h / rows) for j in range(rows + 1)]
    for i in range(cols):
        for j in range(rows):
            src = rng.choice(_sources())
            cw, ch = (
                round(src.width * rng.uniform(0.4, 1.0)),
                round(src.height * rng.uniform(0.4, 1.0)),
            )
            x0, y0 = rng.randint(0, src.width - cw), rng.randint(0, src.height - ch)
            tile = src.crop((x0, y0, x0 + cw, y0 + ch))
            if rng.random() < 0.5:
                tile = tile.transpose(Image.Transpose.FLIP_LEFT_RIGHT)
            box = (xs[i + 1] - xs[i], ys[j + 1] - ys[j])
            canvas.paste(tile.resize(box, Image.Resampling.BILINEAR), (xs[i], ys[j]))
    dst.parent.mkdir(parents=True, exist_ok=True)
    canvas.save(dst, format="JPEG", quality=rng.randint(80, 95))
    return dst


def _near(args: tuple[str, Path, Path]) -> Path:
    kind, src, dst = args
    return photos.reencode(src, dst, quality=60) if kind == "reencode" else photos.resize(src, dst)


def make_tree(root: Path, n: int) -> dict[str, Any]:
    """`n` JPEGs under `root`: distinct originals plus planted exact and near duplicates."""
    rng = random.Random(SEED)
    n_exact, n_near = round(n * EXACT_SHARE), round(n * NEAR_SHARE)
    n_orig = n - n_exact - n_near
    originals = [root / rng.choice(FOLDERS) / f"IMG_{i:05}.jpg" for i in range(n_orig)]
    dup_of = rng.sample(originals, n_exact + n_near)  # each duplicated once
    exact = [(src, root / rng.choice(FOLDERS) / f"{src.stem}-copy.jpg") for src in dup_of[:n_exact]]
    near = [
        (kind, src, root / rng.choice(FOLDERS) / f"{src.stem}-{kind}.jpg")
        for kind, src in zip(["reencode", "resize"] * n_near, dup_of[n_exact:], strict=False)
    ]
    with ProcessPoolExecutor(max_workers=os.cpu_count() or 2) as pool:
        list(pool.map(_mosaic, (SEED + i for i in range(n_orig)), originals, chunksize=32))
        list(pool.map(_near, near, chunksize=16))
    for src, dst in exact:
        photos.copy(src, dst)
    files = list(root.rglob("*.jpg"))
    return {
        "files": len(files),
        "originals": n_orig,
        "exact_copies": n_exact,
        "near_duplicates": n_near,
        "near_kinds": {"reencode q60": (n_near + 1) // 2, "resize 0.5": n_near // 2},
        "planted_groups": n_exact + n_near,
        "folders": len(FOLDERS),
        "bytes": sum(p.stat().st_size for p in files),
    }


# -- the command ---------------------------------------------------------------------------
def run_cli(root: Path, database: Path, env: dict[str, str]) -> dict[str, Any]:
    """`dedupd scan ROOT --database DB --json` as a user runs it: wall time and its report."""
    cmd = [str(DEDUPD), "scan", str(root), "--database", str(database), "--json"]
    t0 = time.perf_counter()
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env, check=False)
    wall = time.perf_counter() - t0
    if proc.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd)} exited {proc.returncode}: {proc.stderr[-2000:]}")
    report = json.loads(proc.stdout)
    groups = report["groups"]
    # A planted group is an original and its one copy: IMG_n.jpg and IMG_n-<kind>.jpg.
    stems = [
        sorted(Path(f["path"]).stem.split("-")[0] for f in [g["keeper"], *g["duplicates"]])
        for g in groups
    ]
    unplanted = [
        {
            "keeper": g["keeper"]["path"],
            "duplicates": [(d["path"], d["kind"], d["distance"]) for d in g["duplicates"]],
        }
        for g, st in zip(groups, stems, strict=True)
        if len(st) != 2 or st[0] != st[1]
    ]
    return {
        "wall_s": wall,
        "reported_seconds": report["seconds"],
        "files": report["files"],
        "hashed": report["hashed"],
        "unchanged": report["unchanged"],
        "errors": len(report["errors"]),
        "groups": len(groups),
        "group_sizes": sorted({1 + len(g["duplicates"]) for g in groups}),
        "exact_members": sum(d["kind"] == "exact" for g in groups for d in g["duplicates"]),
        "near_members": sum(d["kind"] == "near" for g in groups for d in g["duplicates"]),
        "unplanted_groups": unplanted[:5],
        "unplanted_count": len(unplanted),
    }


def bench_scan(work: Path, n: int, rounds: int, env: dict[str, str]) -> dict[str, Any]:
    root = work / "photos"
    t0 = time.perf_counter()
    tree = make_tree(root, n)
    tree["make_s"] = time.perf_counter() - t0
    _log(f"scan: made {tree['files']} JPEGs in {tree['make_s']:.0f} s")
    empty = work / "empty"
    empty.mkdir()
    fixed = []
    for r in range(rounds):
        fixed.append(run_cli(empty, work / f"empty-{r}.sqlite", env)["wall_s"])
    runs: list[dict[str, Any]] = []
    for r in range(rounds):
        db = work / f"scan-{r}.sqlite"
        first = run_cli(root, db, env)
        second = run_cli(root, db, env)
        runs.append({"first": first, "second": second})
        _log(
            f"scan round {r + 1}/{rounds}: first {first['wall_s']:.1f} s ({first['hashed']} "
            f"hashed), second {second['wall_s']:.2f} s ({second['hashed']} hashed), "
            f"{first['groups']} groups ({first['unplanted_count']} not planted)"
        )
        db.unlink()
    firsts = [x["first"]["wall_s"] for x in runs]
    seconds = [x["second"]["wall_s"] for x in runs]
    return {
        "tree": tree,
        "command": "dedupd scan DIR --database DB --json (fresh DB for each round)",
        "workers": os.cpu_count(),
        "empty_folder_scan_s": {"median": statistics.median(fixed), "rounds": fixed},
        "rounds": runs,
        "first_s": statistics.median(firsts),
        "second_s": statistics.median(seconds),
        "first_files_per_s": tree["files"] / statistics.median(firsts),
        "second_files_per_s": tree["files"] / statistics.median(seconds),
        "first_over_second": statistics.median(f / s for f, s in zip(firsts, seconds, strict=True)),
        "meaning": "first/second: wall seconds of the first scan over the unchanged rescan, "
        "paired per round (median)",
    }


# -- 100k unchanged files ------------------------------------------------------------------
def make_flat_tree(root: Path, n: int, seed: int) -> list[tuple[str, os.stat_result, str]]:
    """`n` 1 KiB files of random bytes named .jpg; their relpath, stat and sha256."""
    rng = random.Random(seed)
    out = []
    for i in range(n):
        folder = root / f"d{i // FILES_PER_FOLDER:03}"
        if i % FILES_PER_FOLDER == 0:
            folder.mkdir(parents=True)
        path = folder / f"IMG_{i:06}.jpg"
        data = rng.randbytes(FILE_BYTES)
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
        try:
            os.write(fd, data)
        finally:
            os.close(fd)
        out.append((str(path.relative_to(root)), path.stat(), hashlib.sha256(data).hexdigest()))
    return out


def populate(store: Store, root: str, files: list[tuple[str, os.stat_result, str]]) -> None:
    """Records as a scan would leave them, in bulk, in the store's layout."""
    key = Hasher(Config().hashing.algorithm, Config().hashing.hash_size).key
    recs = [(rel, FileStat.of(st), sha) for rel, st, sha in files]
    insert_hashed(store, root, recs, key, random.Random(SEED))


def bench_reconcile(work: Path, n: int, rounds: int, env: dict[str, str]) -> dict[str, Any]:
    root = work / "flat"
    database = work / "flat.sqlite"
    t0 = time.perf_counter()
    files = make_flat_tree(root, n, SEED)
    made_s = time.perf_counter() - t0
    config = replace(Config(), database=database).with_roots([root])
    rootkey = root_key(root)
    t0 = time.perf_counter()
    with Store(database) as store:
        populate(store, rootkey, files)
    populate_s = time.perf_counter() - t0
    _log(f"reconcile: made {n} files in {made_s:.0f} s, recorded them in {populate_s:.1f} s")
    del files

    def in_process() -> dict[str, Any]:
        t0 = time.perf_counter()
        with Store(database) as store:
            t1 = time.perf_counter()
            report = ScanReport(roots=[])
            done = reconcile_roots(config, store, [rootkey], report)
            t2 = time.perf_counter()
        return {
            "wall_s": t2 - t1,
            "store_open_s": t1 - t0,
            "files": report.files,
            "unchanged": report.unchanged,
            "to_hash": len(done.work),
            "missing": report.missing,
        }

    def walk_only() -> dict[str, Any]:
        names = NameFilter(config.watch)
        t0 = time.perf_counter()
        count = sum(1 for _ in walk(rootkey, names, excluded_dirs(config)))
        return {"wall_s": time.perf_counter() - t0, "files": count}

    def cli() -> dict[str, Any]:
        return run_cli(root, database, env)

    kinds = {"reconcile_roots": in_process, "walk_only": walk_only, "cli_scan": cli}
    samples: dict[str, list[dict[str, Any]]] = {k: [] for k in kinds}
    for r in range(rounds):
        order = list(kinds) if r % 2 == 0 else list(reversed(kinds))
        for k in order:
            samples[k].append(kinds[k]())
        _log(
            f"reconcile round {r + 1}/{rounds}: "
            + ", ".join(f"{k} {samples[k][-1]['wall_s']:.2f} s" for k in kinds)
        )
    out: dict[str, Any] = {
        "files": n,
        "file_bytes": FILE_BYTES,
        "folders": (n + FILES_PER_FOLDER - 1) // FILES_PER_FOLDER,
        "make_s": made_s,
        "populate_s": populate_s,
        "target_s": TARGET_S,
    }
    for k, runs in samples.items():
        wall = statistics.median(x["wall_s"] for x in runs)
        out[k] = {"median_s": wall, "files_per_s": n / wall, "rounds": runs}
    out["cli_scan"]["within_target"] = out["cli_scan"]["median_s"] < TARGET_S
    out["reconcile_roots"]["within_target"] = out["reconcile_roots"]["median_s"] < TARGET_S
    out["reconcile_over_walk"] = statistics.median(
        a["wall_s"] / b["wall_s"]
        for a, b in zip(samples["reconcile_roots"], samples["walk_only"], strict=True)
    )
    out["cli_over_reconcile"] = statistics.median(
        a["wall_s"] / b["wall_s"]
        for a, b in zip(samples["cli_scan"], samples["reconcile_roots"], strict=True)
    )
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--photos", type=int, default=2000, help="JPEGs in the scanned tree")
    parser.add_argument("--rounds", type=int, default=3, help="first+second scan pairs")
    parser.add_argument("--files", type=int, default=100_000, help="files for the reconcile")
    parser.add_argument("--reconcile-rounds", type=int, default=3, help="rounds of each")
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT, help="JSON output path")
    args = parser.parse_args()
    if min(args.photos, args.rounds, args.files, args.reconcile_rounds) < 1:
        parser.error("counts must be >= 1")
    if not DEDUPD.exists():
        parser.error(f"{DEDUPD} not found: install the project into .venv first")

    info = machine_info()
    started = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="dedupd-bench-scan-") as tmp:
        work = Path(tmp)
        empty_config = work / "empty.yaml"
        empty_config.write_text("")
        env = {**os.environ, "DEDUPD_CONFIG": str(empty_config)}
        scan = bench_scan(work, args.photos, args.rounds, env)
        shutil.rmtree(work / "photos")
        reconcile = bench_reconcile(work, args.files, args.reconcile_rounds, env)
        _log("removing the temporary files")
    info["loadavg_end"] = list(os.getloadavg())
    doc = {
        "benchmark": "scan",
        "machine": info,
        "config": {
            "dedupd": str(DEDUPD),
            "config_file": "empty (DEDUPD_CONFIG): all defaults, hashing.workers = CPUs",
            "hasher": Hasher(Config().hashing.algorithm, Config().hashing.hash_size).key,
            "seed": SEED,
            "timer": "time.perf_counter around each subprocess.run / call",
            "page_cache": "warm: the files were just written",
        },
        "scan": scan,
        "reconcile": reconcile,
        "wall_s": time.perf_counter() - started,
    }
    text = json.dumps(doc, indent=2)
    print(text)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    tmp_out = args.out.with_name(args.out.name + ".tmp")
    tmp_out.write_text(text + "\n")
    tmp_out.replace(args.out)
    s, r = scan, reconcile
    _log(
        f"scan of {s['tree']['files']}: first {s['first_s']:.1f} s, second {s['second_s']:.2f} s "
        f"({s['first_over_second']:.0f}x); {r['files']} unchanged: reconcile_roots "
        f"{r['reconcile_roots']['median_s']:.2f} s, walk {r['walk_only']['median_s']:.2f} s, "
        f"CLI scan {r['cli_scan']['median_s']:.2f} s (target {TARGET_S:.0f} s)"
    )
    _log(f"wrote {args.out} in {doc['wall_s']:.0f} s")


if __name__ == "__main__":
    main()
