"""Hashing throughput on 12 MP camera JPEGs and HEICs, per core (one process, no pool).

Inputs: the five real photos in tests/data/photos/, upscaled to 4000x3000 JPEGs at quality 92
with `tests.photos.upscaled`, and those JPEGs re-encoded as 12 MP HEICs with
`tests.photos.as_heic` (pillow-heif, x265 at its default preset, quality 85; encoded two at a
time in a process pool, which is set-up, not timed), written to a temporary directory.

Methods, all timed in the same run and interleaved (for each file, every method back to back,
in an order that rotates from file to file and round to round):

- ``dedupd``: `dedupd.imaging.hash_image` with one 16x16 pHash, JPEG draft decode (the default:
  uniform borders trimmed, and the 8 rotation/mirror variants hashed for isometric matching).
- ``dedupd_plain``: the same without the border trim and without the variants
  (``trim=False, variants=False``): what hashing cost before them.
- ``dedupd_trim``: the trim but not the variants (``variants=False``), to split the cost.
- ``dedupd_pdq``: the same, plus PDQ with its quality and the dominant-tone share (the
  second opinion, `dedupd.hashers.second_opinion`): what the daemon's workers do by default.
- ``dedupd_full``: the same with ``draft=False`` (full 12 MP decode).
- ``imagehash_naive``: ``PIL.Image.open`` + ``imagehash.phash(img, hash_size=16)`` (full decode;
  what the project dedupd descends from did).
- ``lower_bound``: open + ``img.draft("RGB", (side, side))`` + ``img.load()`` and nothing else,
  with the same draft side dedupd asks for: the decode cost dedupd cannot get under.
- ``czkawka``: ``czkawka.ImageSimilarity().hash_image(path)`` from the `czkawka` PyPI package
  (Python binding of czkawka_core): per lmmx/czkawka src/similarity.rs, ``image::open`` (the
  Rust image crate, full decode) + image_hasher with ``HashAlg::Gradient``, 8x8 (64 bits),
  ``FilterType::Lanczos3`` -- the binding's only settings; its hash algorithm and size cannot
  be changed from Python. One call per file on this thread, with ``RAYON_NUM_THREADS=1`` set
  before import (the folder scan would use rayon; `hash_image` does not); CPU time / wall time
  is recorded to show it stays on one core. Skipped, with the error text, if not installed.
- ``dedupd_heic``, ``dedupd_pdq_heic``, ``imagehash_naive_heic``: the dedupd methods and the
  naive one on the HEICs, and
  ``lower_bound_heic``: open + ``img.load()``. Draft (DCT-scaled) decoding exists for JPEG
  only, so dedupd decodes every HEIC pixel, like the naive way. pillow-heif's
  ``options.DECODE_THREADS`` is set to 1 (its default is 4) to keep the decode on one core.
  czkawka cannot read HEIC (its error is recorded).

For each method and round: images/s = files / summed wall time (also from CPU time, which
counts every thread of the process); the JSON gives the median over rounds. Ratios are taken
per round (paired) and the median is reported. It also records whether the draft and full
decodes (and the JPEG and HEIC of a photo) gave the same pHash bits for every photo.
No timing is asserted: this is a benchmark, not a test.

Run from the repository root:

    .venv/bin/python bench/hashing.py [--repeat 3] [--no-heic] [--out bench/results/hashing.json]

The JSON is printed to stdout and written to --out; progress goes to stderr.
"""

from __future__ import annotations

import argparse
import json
import os

os.environ.setdefault("RAYON_NUM_THREADS", "1")  # before czkawka's Rust code starts a pool

import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from concurrent.futures import ProcessPoolExecutor
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # for `tests.photos`

import imagehash
import numpy as np
import pillow_heif
from machine import machine_info
from PIL import Image

from dedupd.hashers import Hasher, second_opinion
from dedupd.imaging import hash_image
from dedupd.index import distance
from tests import photos

ROOT = Path(__file__).resolve().parent.parent
MAX_PIXELS = 180_000_000
SIZE = (4000, 3000)
QUALITY = 92
HASHER = Hasher("phash", 16)
SECOND = second_opinion(HASHER)
DEFAULT_OUT = ROOT / "bench" / "results" / "hashing.json"
HEIC_DECODE_THREADS = 1
JPEG_METHODS = (
    "dedupd",
    "dedupd_pdq",
    "dedupd_plain",
    "dedupd_trim",
    "dedupd_full",
    "imagehash_naive",
    "lower_bound",
)
CZKAWKA_METHODS = ("czkawka",)
HEIC_METHODS = ("dedupd_heic", "dedupd_pdq_heic", "imagehash_naive_heic", "lower_bound_heic")
RATIOS = {  # name: (numerator, denominator), both in images/s; dropped if a side did not run
    "dedupd_vs_naive": ("dedupd", "imagehash_naive"),
    # < 1: what the trim and the variants cost (goal: >= 1 / 1.1, i.e. <= 10% more per image)
    "dedupd_vs_plain": ("dedupd", "dedupd_plain"),
    "trim_vs_plain": ("dedupd_trim", "dedupd_plain"),
    "dedupd_vs_dedupd_pdq": ("dedupd", "dedupd_pdq"),  # PDQ's added cost: 1.05 = 5% more
    "dedupd_heic_vs_dedupd_pdq_heic": ("dedupd_heic", "dedupd_pdq_heic"),
    "dedupd_vs_full": ("dedupd", "dedupd_full"),
    "lower_bound_vs_dedupd": ("lower_bound", "dedupd"),
    "dedupd_vs_czkawka": ("dedupd", "czkawka"),
    "dedupd_full_vs_czkawka": ("dedupd_full", "czkawka"),
    "naive_vs_czkawka": ("imagehash_naive", "czkawka"),
    "dedupd_heic_vs_naive_heic": ("dedupd_heic", "imagehash_naive_heic"),
    "lower_bound_heic_vs_dedupd_heic": ("lower_bound_heic", "dedupd_heic"),
    "dedupd_jpeg_vs_heic": ("dedupd", "dedupd_heic"),
}
CZKAWKA_HASH = (
    "image_hasher HashAlg::Gradient, hash_size 8x8 (64 bits), FilterType::Lanczos3, on a full "
    "decode by the Rust image crate (lmmx/czkawka src/similarity.rs); not configurable from Python"
)


def _dedupd(path: str) -> bytes:
    return hash_image(path, [HASHER], max_pixels=MAX_PIXELS).hashes[HASHER.key]


def _dedupd_plain(path: str) -> bytes:
    found = hash_image(path, [HASHER], max_pixels=MAX_PIXELS, trim=False, variants=False)
    return found.hashes[HASHER.key]


def _dedupd_trim(path: str) -> bytes:
    return hash_image(path, [HASHER], max_pixels=MAX_PIXELS, variants=False).hashes[HASHER.key]
def _dedupd_pdq(path: str) -> bytes:
    return hash_image(path, [HASHER, SECOND], max_pixels=MAX_PIXELS).hashes[SECOND.key]


def _dedupd_full(path: str) -> bytes:
    return hash_image(path, [HASHER], max_pixels=MAX_PIXELS, draft=False).hashes[HASHER.key]


def _imagehash_naive(path: str) -> imagehash.ImageHash:
    with Image.open(path) as img:
        return imagehash.phash(img, hash_size=HASHER.hash_size)


def _lower_bound(path: str) -> None:
    with Image.open(path) as img:
        img.draft("RGB", (HASHER.draft_side, HASHER.draft_side))
        img.load()


def _decode_only(path: str) -> None:
    with Image.open(path) as img:
        img.load()


def load_czkawka() -> tuple[Callable[[str], object] | None, dict[str, object]]:
    """czkawka's per-file hash function, or None and why it cannot be used."""
    try:
        import czkawka  # type: ignore[import-not-found]  # optional: `pip install czkawka`
    except ImportError as exc:
        return None, {"skipped": f"cannot import czkawka: {type(exc).__name__}: {exc}"}
    finder = czkawka.ImageSimilarity()
    if not hasattr(finder, "hash_image"):
        return None, {
            "skipped": f"czkawka {version('czkawka')} has no ImageSimilarity.hash_image; "
            "only folder scans (find_similar), which cannot be timed per file"
        }
    info = {
        "version": version("czkawka"),
        "call": "czkawka.ImageSimilarity().hash_image(path), one file per call",
        "hash": CZKAWKA_HASH,
        "RAYON_NUM_THREADS": os.environ.get("RAYON_NUM_THREADS"),
    }
    return finder.hash_image, info


def _version(name: str) -> str | None:
    try:
        return version(name)
    except PackageNotFoundError:
        return None


FUNCS: dict[str, Callable[[str], object]] = {
    "dedupd": _dedupd,
    "dedupd_plain": _dedupd_plain,
    "dedupd_trim": _dedupd_trim,
    "dedupd_full": _dedupd_full,
    "imagehash_naive": _imagehash_naive,
    "lower_bound": _lower_bound,
    "dedupd_pdq": _dedupd_pdq,
    "dedupd_heic": _dedupd,  # the default call; its draft decoding applies to JPEG only
    "dedupd_pdq_heic": _dedupd_pdq,
    "imagehash_naive_heic": _imagehash_naive,
    "lower_bound_heic": _decode_only,
}


def _upscaled(name: str, target: Path) -> Path:
    return photos.upscaled(photos.photo(name), target / f"{name}.jpg", size=SIZE, quality=QUALITY)


def _heic(jpeg: Path) -> Path:
    return photos.as_heic(jpeg, jpeg.with_suffix(".heic"))


def make_inputs(target: Path, heic: bool) -> tuple[list[Path], list[Path]]:
    """The 12 MP JPEGs and (if `heic`) HEICs of the same pictures, two processes at a time."""
    with ProcessPoolExecutor(max_workers=2) as pool:
        jpegs = list(pool.map(_upscaled, photos.PHOTOS, [target] * len(photos.PHOTOS)))
        heics = list(pool.map(_heic, jpegs)) if heic else []
    return jpegs, heics


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


def run(repeat: int, heic: bool) -> dict[str, object]:
    info = machine_info()
    info["pillow_heif"] = _version("pillow-heif")
    info["libheif"] = pillow_heif.libheif_info()
    started = time.perf_counter()
    pillow_heif.options.DECODE_THREADS = HEIC_DECODE_THREADS
    with tempfile.TemporaryDirectory(prefix="dedupd-bench-") as tmp:
        t0 = time.perf_counter()
        files, heics = make_inputs(Path(tmp), heic)  # before czkawka loads: the pool forks
        czkawka_hash, czkawka_info = load_czkawka()
        funcs = dict(FUNCS)
        if czkawka_hash is not None:
            funcs["czkawka"] = czkawka_hash
        methods_run = (
            JPEG_METHODS
            + (CZKAWKA_METHODS if czkawka_hash is not None else ())
            + (HEIC_METHODS if heic else ())
        )
        names = [f.stem for f in files]
        paths = [str(f) for f in files]
        # The file each method reads for photo i: the JPEG, or the HEIC of the same picture.
        inputs = {m: [str(h) for h in heics] if m in HEIC_METHODS else paths for m in methods_run}
        print(
            f"made {len(files)} {SIZE[0]}x{SIZE[1]} JPEGs and {len(heics)} HEICs in {tmp} "
            f"in {time.perf_counter() - t0:.0f} s",
            file=sys.stderr,
        )

        # Warm-up pass (page cache, lazy imports, allocator); it also gives the hash bits.
        bits: dict[str, dict[str, bytes]] = {m: {} for m in ("dedupd", "dedupd_full")}
        bits["imagehash_naive"] = {}
        czkawka_hashes: dict[str, object] = {}
        for i, (name, path) in enumerate(zip(names, paths, strict=True)):
            bits["dedupd"][name] = _dedupd(path)
            _dedupd_pdq(path)
            bits["dedupd_full"][name] = _dedupd_full(path)
            _dedupd_plain(path)
            _dedupd_trim(path)
            bits["imagehash_naive"][name] = _pack(_imagehash_naive(path))
            _lower_bound(path)
            if czkawka_hash is not None:
                czkawka_hashes[name] = czkawka_hash(path)
            if heic:
                bits.setdefault("dedupd_heic", {})[name] = _dedupd(inputs["dedupd_heic"][i])
                _dedupd_pdq(inputs["dedupd_pdq_heic"][i])
                bits.setdefault("imagehash_naive_heic", {})[name] = _pack(
                    _imagehash_naive(inputs["imagehash_naive_heic"][i])
                )
                _decode_only(inputs["lower_bound_heic"][i])
        if czkawka_hash is not None:
            czkawka_info["hashes"] = czkawka_hashes
            if heic:
                try:
                    czkawka_hash(str(heics[0]))
                    czkawka_info["heic"] = "read"
                except Exception as exc:  # what the binding raises for a format it lacks
                    czkawka_info["heic"] = f"cannot read HEIC: {type(exc).__name__}: {exc}"

        # wall[m][r][i], cpu[m][r][i]: seconds for method m, round r, file i.
        wall = {m: [[0.0] * len(paths) for _ in range(repeat)] for m in methods_run}
        cpu = {m: [[0.0] * len(paths) for _ in range(repeat)] for m in methods_run}
        for r in range(repeat):
            for i in range(len(paths)):
                shift = (r * len(paths) + i) % len(methods_run)
                for m in methods_run[shift:] + methods_run[:shift]:
                    func, path = funcs[m], inputs[m][i]
                    c0, t0 = time.process_time(), time.perf_counter()
                    func(path)
                    t1, c1 = time.perf_counter(), time.process_time()
                    wall[m][r][i] = t1 - t0
                    cpu[m][r][i] = c1 - c0
            summary = ", ".join(f"{m} {len(paths) / sum(wall[m][r]):.2f}" for m in methods_run)
            print(f"round {r + 1}/{repeat} images/s: {summary}", file=sys.stderr)
        sizes = {f.stem: f.stat().st_size for f in files}
        heic_sizes = {f.stem: f.stat().st_size for f in heics}

    ips = {m: [len(paths) / sum(wall[m][r]) for r in range(repeat)] for m in methods_run}
    ips_cpu = {m: [len(paths) / sum(cpu[m][r]) for r in range(repeat)] for m in methods_run}
    methods: dict[str, dict[str, object]] = {
        m: {
            "input": "HEIC" if m in HEIC_METHODS else "JPEG",
            "images_per_s": statistics.median(ips[m]),
            "images_per_s_cpu": statistics.median(ips_cpu[m]),
            "cpu_per_wall": sum(map(sum, cpu[m])) / sum(map(sum, wall[m])),
            "images_per_s_rounds": ips[m],
            "ms_per_image_median_by_photo": {
                name: 1000 * statistics.median(wall[m][r][i] for r in range(repeat))
                for i, name in enumerate(names)
            },
        }
        for m in methods_run
    }
    if czkawka_hash is None:
        methods["czkawka"] = czkawka_info
    else:
        methods["czkawka"].update(czkawka_info)
    if not heic:
        for m in HEIC_METHODS:
            methods[m] = {"skipped": "--no-heic"}
    ratios = {
        key: {
            "median": statistics.median(ips[a][r] / ips[b][r] for r in range(repeat)),
            "rounds": [ips[a][r] / ips[b][r] for r in range(repeat)],
            "meaning": f"images/s of {a} / images/s of {b}, paired per round",
        }
        for key, (a, b) in RATIOS.items()
        if a in ips and b in ips
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
            "heic": {
                "made_with": "tests.photos.as_heic(12 MP JPEG): pillow-heif, quality 85, "
                "x265 default preset",
                "file_bytes": heic_sizes,
                "pillow_heif_decode_threads": HEIC_DECODE_THREADS,
                "draft": "not applicable: Pillow's draft (DCT-scaled) decoding is JPEG-only, "
                "so dedupd decodes every HEIC pixel",
            }
            if heic
            else None,
            "hasher": HASHER.key,
            "draft_side": HASHER.draft_side,
            "max_pixels": MAX_PIXELS,
            "repeat": repeat,
            "methods": list(methods_run),
            "timer": "time.perf_counter (wall) and time.process_time (cpu), per call",
            "order": "per file, all methods back to back; order rotates per file and round",
        },
        "methods": methods,
        "ratios": ratios,
        "phash_draft_vs_full": compare(bits["dedupd"], bits["dedupd_full"]),
        "phash_full_vs_naive": compare(bits["dedupd_full"], bits["imagehash_naive"]),
        "phash_jpeg_vs_heic": compare(bits["dedupd_full"], bits["dedupd_heic"]) if heic else None,
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
    parser.add_argument("--no-heic", action="store_true", help="skip the HEIC columns")
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT, help="JSON output path")
    args = parser.parse_args()
    if args.repeat < 1:
        parser.error("--repeat must be >= 1")
    write(run(args.repeat, heic=not args.no_heic), args.out)


if __name__ == "__main__":
    main()
