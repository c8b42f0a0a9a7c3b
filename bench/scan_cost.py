"""What a whole `dedupd scan` costs per 12 MP JPEG on one core, against a bare draft decode.

The issue's bound: the whole scan (walk, the hasher worker's read + sha256 + draft decode +
pHash, the pipe back, store writes, index, matching, decisions) within 1.3x of the bare
draft decode of the same files. Both run on one core (`taskset` to CPU 0 when available;
`--workers 1`), interleaved, median of the rounds:

- ``decode``: `Image.open` + `draft` + `load` of every file, in one fresh process (the
  lower bound `bench/hashing.py` also reports), minus that process's start-up;
- ``scan``: `dedupd scan DIR --workers 1 --json` with a fresh database, minus the time of
  the same command on a folder holding one of the files (Python start-up, imports, the
  pool's start and its worker's first decode), divided by the files beyond that one.

Inputs: the five test photos upscaled to 4000x3000 at quality 92 (`bench/hashing.py`'s
`make_inputs`), each copied `--copies` times with a byte changed in a JPEG comment so that
no two files are byte-identical (no exact-duplicate shortcut), but the pictures repeat.

    .venv/bin/python bench/scan_cost.py [--copies 8] [--rounds 3] [--out PATH]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from hashing import HASHER, make_inputs
from machine import machine_info

ROOT = Path(__file__).resolve().parent.parent

DECODE = """
import sys, time
from PIL import Image
paths = sys.argv[1:]
t = time.perf_counter()
for p in paths:
    with Image.open(p) as img:
        img.draft("RGB", ({side}, {side}))
        img.load()
print(time.perf_counter() - t)
"""


def _pinned(cmd: list[str]) -> list[str]:
    return ["taskset", "-c", "0", *cmd] if shutil.which("taskset") else cmd


def _scan_seconds(folder: Path, db: Path) -> float:
    if db.exists():
        db.unlink()
    t = time.perf_counter()
    subprocess.run(
        _pinned(
            [sys.executable, "-m", "dedupd", "scan", str(folder), "--database", str(db),
             "--workers", "1", "--json"]
        ),
        check=True,
        capture_output=True,
        cwd=ROOT,
    )
    return time.perf_counter() - t


def _decode_seconds(files: list[Path]) -> float:
    out = subprocess.run(
        _pinned([sys.executable, "-c", DECODE.format(side=HASHER.draft_side), *map(str, files)]),
        check=True,
        capture_output=True,
        text=True,
    )
    return float(out.stdout.strip())


def run(copies: int, rounds: int) -> dict[str, object]:
    with tempfile.TemporaryDirectory() as tmp:
        base = Path(tmp)
        originals, _ = make_inputs(base / "originals", heic=False)
        photos_dir, one = base / "photos", base / "one"
        photos_dir.mkdir()
        one.mkdir()
        files = []
        for n in range(copies):
            for src in originals:
                data = bytearray(src.read_bytes())
                # A COM segment right after SOI: other bytes, the same picture.
                data[2:2] = b"\xff\xfe\x00\x06" + n.to_bytes(4, "big")
                dst = photos_dir / f"{src.stem}-{n}.jpg"
                dst.write_bytes(bytes(data))
                files.append(dst)
        shutil.copy(files[0], one / files[0].name)
        scan, decode, startup = [], [], []
        for _ in range(rounds):
            startup.append(_scan_seconds(one, base / "one.db"))
            scan.append(_scan_seconds(photos_dir, base / "d.db"))
            decode.append(_decode_seconds(files))
    n = len(files)
    per_scan = (statistics.median(scan) - statistics.median(startup)) / (n - 1)
    per_decode = statistics.median(decode) / n
    return {
        "benchmark": "scan_cost",
        "machine": machine_info(),
        "files": n,
        "size": "4000x3000 JPEG q92",
        "pinned_to_one_core": bool(shutil.which("taskset")),
        "rounds": rounds,
        "scan_s": scan,
        "one_file_scan_s": startup,
        "decode_s": decode,
        "scan_ms_per_file": round(per_scan * 1000, 2),
        "draft_decode_ms_per_file": round(per_decode * 1000, 2),
        "ratio": round(per_scan / per_decode, 3),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--copies", type=int, default=8)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--out", type=Path, default=ROOT / "bench" / "results" / "scan_cost.json")
    args = parser.parse_args()
    result = run(args.copies, args.rounds)
    text = json.dumps(result, indent=2)
    print(text)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(text + "\n")
    os.sync()


if __name__ == "__main__":
    main()
