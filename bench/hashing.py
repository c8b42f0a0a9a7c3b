"""Hashing throughput on 12 MP camera JPEGs, per core (one process, no pool).

Inputs: the five real photos in tests/data/photos/, upscaled to 4000x3000 JPEGs at quality 92
with `tests.photos.upscaled`, written to a temporary directory.

Methods, all timed in the same run and interleaved (for each file, every method back to back,
in an order that rotates from file to file and round to round):

- ``dedupd``: `dedupd.imaging.hash_image` with one 16x16 pHash, JPEG draft decode (the default).
- ``dedupd_full``: the same with ``draft=False`` (full 12 MP decode).
- ``imagehash_naive``: ``PIL.Image.open`` + ``imagehash.phash(img, hash_size=16)`` (full decode;
  what the project dedupd descends from did).
- ``lower_bound``: open + ``img.draft("RGB", (side, side))`` + ``img.load()`` and nothing else,
  with the same draft side dedupd asks for: the decode cost dedupd cannot get under.

For each method and round: images/s = files / summed wall time (also from CPU time); the JSON
gives the median over rounds. Ratios are taken per round (paired) and the median is reported.
It also records whether the draft and full decodes gave the same pHash bits for every photo.
No timing is asserted: this is a benchmark, not a test.

Run from the repository root:

    .venv/bin/python bench/hashing.py [--repeat 3] [--out bench/results/hashing.json]

The JSON is printed to stdout and written to --out; progress goes to stderr.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # for `tests.photos`

import imagehash
import numpy as np
from machine import machine_info
from PIL import Image

from dedupd.hashers import Hasher
from dedupd.imaging import hash_image
from dedupd.index import distance
from tests import photos

ROOT = Path(__file__).resolve().parent.parent
MAX_PIXELS = 180_000_000
SIZE = (4000, 3000)
QUALITY = 92
HASHER = Hasher("phash", 16)
DEFAULT_OUT = ROOT / "bench" / "results" / "hashing.json"
METHODS = ("dedupd", "dedupd_full", "imagehash_naive", "lower_bound")
RATIOS = {  # name: (numerator, denominator), both in images/s
    "dedupd_vs_naive": ("dedupd", "imagehash_naive"),
    "dedupd_vs_full": ("dedupd", "dedupd_full"),
    "lower_bound_vs_dedupd": ("lower_bound", "dedupd"),
}


def _dedupd(path: str) -> bytes:
    return hash_image(path, [HASHER], max_pixels=MAX_PIXELS).hashes[HASHER.key]


def _dedupd_full(path: str) -> bytes:
    return hash_image(path, [HASHER], max_pixels=MAX_PIXELS, draft=False).hashes[HASHER.key]


def _imagehash_naive(path: str) -> imagehash.ImageHash:
    with Image.open(path) as img:
        return imagehash.phash(img, hash_size=HASHER.hash_size)


def _lower_bound(path: str) -> None:
    with Image.open(path) as img:
        img.draft("RGB", (HASHER.draft_side, HASHER.draft_side))
        img.load()


FUNCS: dict[str, Callable[[str], object]] = {
    "dedupd": _dedupd,
    "dedupd_full": _dedupd_full,
    "imagehash_naive": _imagehash_naive,
    "lower_bound": _lower_bound,
}


def make_inputs(target: Path) -> list[Path]:
    return [
        photos.upscaled(photos.photo(name), target / f"{name}.jpg", size=SIZE, quality=QUALITY)
        for name in photos.PHOTOS
    ]


def _pack(value: imagehash.ImageHash) -> bytes:
    """Packed bits of an ImageHash, in the layout `Hasher` produces."""
    return np.packbits(np.asarray(value.hash, dtype=bool).ravel()).tobytes()


def compare(a: dict[str, bytes], b: dict[str, bytes]) -> dict[str, object]:
    dist = {name: distance(a[name], b[name]) for name in a}
    return {
        "identical": sum(d == 0 for d in dist.values()),
        "total": len(dist),
        "max_hamming": max(dist.values()),
        "per_photo": dist,
    }


def run(repeat: int) -> dict[str, object]:
    info = machine_info()
    started = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="dedupd-bench-") as tmp:
        files = make_inputs(Path(tmp))
        names = [f.stem for f in files]
        paths = [str(f) for f in files]
        print(f"made {len(files)} {SIZE[0]}x{SIZE[1]} JPEGs in {tmp}", file=sys.stderr)

        # Warm-up pass (page cache, lazy imports, allocator); it also gives the hash bits.
        bits: dict[str, dict[str, bytes]] = {m: {} for m in METHODS if m != "lower_bound"}
        for name, path in zip(names, paths, strict=True):
            bits["dedupd"][name] = _dedupd(path)
            bits["dedupd_full"][name] = _dedupd_full(path)
            bits["imagehash_naive"][name] = _pack(_imagehash_naive(path))
            _lower_bound(path)

        # wall[m][r][i], cpu[m][r][i]: seconds for method m, round r, file i.
        wall = {m: [[0.0] * len(paths) for _ in range(repeat)] for m in METHODS}
        cpu = {m: [[0.0] * len(paths) for _ in range(repeat)] for m in METHODS}
        for r in range(repeat):
            for i, path in enumerate(paths):
                shift = (r * len(paths) + i) % len(METHODS)
                for m in METHODS[shift:] + METHODS[:shift]:
                    func = FUNCS[m]
                    c0, t0 = time.process_time(), time.perf_counter()
                    func(path)
                    t1, c1 = time.perf_counter(), time.process_time()
                    wall[m][r][i] = t1 - t0
                    cpu[m][r][i] = c1 - c0
            summary = ", ".join(f"{m} {len(paths) / sum(wall[m][r]):.2f}" for m in METHODS)
            print(f"round {r + 1}/{repeat} images/s: {summary}", file=sys.stderr)
        sizes = {f.stem: f.stat().st_size for f in files}

    ips = {m: [len(paths) / sum(wall[m][r]) for r in range(repeat)] for m in METHODS}
    ips_cpu = {m: [len(paths) / sum(cpu[m][r]) for r in range(repeat)] for m in METHODS}
    methods = {
        m: {
            "images_per_s": statistics.median(ips[m]),
            "images_per_s_cpu": statistics.median(ips_cpu[m]),
            "images_per_s_rounds": ips[m],
            "ms_per_image_median_by_photo": {
                name: 1000 * statistics.median(wall[m][r][i] for r in range(repeat))
                for i, name in enumerate(names)
            },
        }
        for m in METHODS
    }
    ratios = {
        key: {
            "median": statistics.median(ips[a][r] / ips[b][r] for r in range(repeat)),
            "rounds": [ips[a][r] / ips[b][r] for r in range(repeat)],
            "meaning": f"images/s of {a} / images/s of {b}, paired per round",
        }
        for key, (a, b) in RATIOS.items()
    }
    info["loadavg_end"] = list(os.getloadavg())
    return {
        "benchmark": "hashing",
        "machine": info,
        "config": {
            "photos": names,
            "size": list(SIZE),
            "jpeg_quality": QUALITY,
            "file_bytes": sizes,
            "hasher": HASHER.key,
            "draft_side": HASHER.draft_side,
            "max_pixels": MAX_PIXELS,
            "repeat": repeat,
            "timer": "time.perf_counter (wall) and time.process_time (cpu), per call",
            "order": "per file, all methods back to back; order rotates per file and round",
        },
        "methods": methods,
        "ratios": ratios,
        "phash_draft_vs_full": compare(bits["dedupd"], bits["dedupd_full"]),
        "phash_full_vs_naive": compare(bits["dedupd_full"], bits["imagehash_naive"]),
        "wall_s": time.perf_counter() - started,
    }


def write(result: dict[str, object], out: Path) -> None:
    text = json.dumps(result, indent=2)
    print(text)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(out.name + ".tmp")
    tmp.write_text(text + "\n")
    tmp.replace(out)
    print(f"wrote {out}", file=sys.stderr)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--repeat", type=int, default=3, help="rounds over the 5 files")
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT, help="JSON output path")
    args = parser.parse_args()
    if args.repeat < 1:
        parser.error("--repeat must be >= 1")
    write(run(args.repeat), args.out)


if __name__ == "__main__":
    main()
