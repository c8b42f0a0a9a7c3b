"""The crop stage's cost: the candidate index at scale, verification, and what ORB adds to
hashing.

- **Candidate index** (`dedupd.index.CropIndex`) loaded with N synthetic photos (default
  10k, 100k, 1M), each filed under 270 words drawn uniformly from the 2**16 of
  `dedupd.features` (what a real photo has: ~270 distinct words of 300 keypoints; real words
  are skewed, which the idf weighting is for; uniform words give every posting list the
  same length, N * 270 / 65536). Synthetic words may repeat within a photo (0.6 of 270 on
  average), which only adds postings. Measured: RAM per photo (`memory_bytes() / N`), the
  load (the start-up build) and a background rebuild, each in seconds and in the most memory
  it allocated (`tracemalloc`, which traces numpy's arrays), and per newcomer the time of
  `candidates(words, k=8, min_shared=4)` for `--queries` newcomers that are "crops" (a third
  of an indexed photo's words, plus 180 random ones) and whether that photo came first.
- **A growing delta**: what a scan does, from an empty index, every photo a query and then
  an addition, until the delta holds 5,000 photos (the default `index.rebuild_every`, when
  the first rebuild folds it in); words skewed as real ones are (half from a hot set of
  3,000, as photos of one place share them). Per-query time, median and p95, and at the end.
- **Verification** (`dedupd.features.verify`) on the real photos of tests/data/photos: per
  pair of a crop and its original, and of two distinct photos.
- **Hashing cost**: `dedupd.imaging.hash_image` with the default hashers (pHash 16x16 and
  PDQ, as the daemon's workers call it) with and without ``features=True``, on the five test
  photos upscaled to 12 MP camera JPEGs and at 1600 px; the difference is what the crop stage
  adds per photo to a scan.

Run from the repository root (about 3 minutes on 2 cores with the 1M step, which needs ~2.6 GB
of RAM: its input, the index, and a rebuild's second snapshot; ``--sizes 10000,100000`` skips
it):

    .venv/bin/python bench/crops.py [--sizes 10000,100000,1000000] [--queries 200]
                                    [--out bench/results/crops.json]

Prints JSON to stdout and writes it to --out; progress goes to stderr.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
import tracemalloc
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # for `dedupd` from a checkout

from machine import machine_info
from PIL import Image

from dedupd import features
from dedupd.engine import CROP_CANDIDATES, CROP_MIN_SHARED
from dedupd.hashers import Hasher, second_opinion
from dedupd.imaging import hash_image
from dedupd.index import CropIndex
from tests import photos

WORDS = 270


def _say(*args: object) -> None:
    print(*args, file=sys.stderr, flush=True)


def scale(n: int, queries: int, seed: int = 0) -> dict[str, Any]:
    rng = np.random.default_rng(seed)
    counts = np.full(n, WORDS, np.int64)
    words = rng.integers(0, features.VOCABULARY, n * WORDS, dtype=np.uint16)
    ids = np.arange(1, n + 1, dtype=np.int64)
    index = CropIndex()
    tracemalloc.start()  # numpy's arrays are traced: what the build allocates beyond its input
    started = time.perf_counter()
    index.load(ids, counts, words)
    load = time.perf_counter() - started
    load_peak = tracemalloc.get_traced_memory()[1]
    memory = index.memory_bytes()
    targets = rng.choice(n, queries, replace=False)
    times, first = [], 0
    for t in targets:
        own = words[t * WORDS : (t + 1) * WORDS]
        query = np.concatenate(
            [own[: WORDS // 3], rng.integers(0, features.VOCABULARY, 180, dtype=np.uint16)]
        )
        started = time.perf_counter()
        found = index.candidates(query, CROP_CANDIDATES, min_shared=CROP_MIN_SHARED)
        times.append(time.perf_counter() - started)
        first += bool(found) and found[0].id == t + 1
    for i in range(1000):  # a delta of recent arrivals, then a rebuild folds it in
        index.add(n + 1 + i, rng.integers(0, features.VOCABULARY, WORDS, dtype=np.uint16))
    live = tracemalloc.get_traced_memory()[0]
    tracemalloc.reset_peak()
    started = time.perf_counter()
    index.rebuild()
    rebuild = time.perf_counter() - started
    rebuild_peak = tracemalloc.get_traced_memory()[1] - live
    tracemalloc.stop()
    del words
    times_ms = sorted(1000 * x for x in times)
    return {
        "photos": n,
        "words_per_photo": WORDS,
        "ram_bytes_per_photo": round(memory / n, 1),
        "ram_mb": round(memory / 2**20, 1),
        "load_s": round(load, 2),
        # allocated at most while loading (the index included), and while rebuilding beyond
        # what was alive before (the new snapshot included; the old one stays until the swap)
        "load_peak_mb": round(load_peak / 2**20, 1),
        "rebuild_peak_mb": round(rebuild_peak / 2**20, 1),
        "rebuild_s": round(rebuild, 2),
        "query_ms_median": round(statistics.median(times_ms), 3),
        "query_ms_p95": round(times_ms[int(0.95 * (len(times_ms) - 1))], 3),
        "query_ms_max": round(times_ms[-1], 3),
        "queries": queries,
        "crop_source_ranked_first": first / queries,
    }


def growing(n: int = 5000, seed: int = 0) -> dict[str, Any]:
    rng = np.random.default_rng(seed)
    index = CropIndex()
    times = []
    for i in range(n):
        half = WORDS // 2
        query = np.concatenate(
            [rng.integers(0, 3000, half), rng.integers(0, features.VOCABULARY, WORDS - half)]
        ).astype(np.uint16)
        started = time.perf_counter()
        index.candidates(query, CROP_CANDIDATES, min_shared=CROP_MIN_SHARED)
        times.append(time.perf_counter() - started)
        index.add(i + 1, query)
    times_ms = sorted(1000 * x for x in times)
    return {
        "photos": n,
        "query_ms_median": round(statistics.median(times_ms), 3),
        "query_ms_p95": round(times_ms[int(0.95 * (len(times_ms) - 1))], 3),
        "query_ms_last_100_median": round(statistics.median(1000 * x for x in times[-100:]), 3),
        "total_s": round(sum(times), 2),
    }


def _jpeg(im: Image.Image, dst: Path, quality: int = 90) -> Path:
    im.save(dst, format="JPEG", quality=quality)
    return dst


def verification(tmp: Path, rounds: int = 3) -> dict[str, Any]:
    hashers = [Hasher("phash", 16), second_opinion(Hasher("phash", 16))]
    found: dict[str, features.Features] = {}
    for name in photos.PHOTOS:
        src = photos.upscaled(photos.photo(name), tmp / f"{name}.jpg")
        with Image.open(src) as im:
            w, h = im.size
            cut = im.convert("RGB").crop((w // 5, h // 6, w - w // 10, h - h // 5))
        crop = _jpeg(cut, tmp / f"{name}-crop.jpg")
        for key, path in ((name, src), (f"{name}-crop", crop)):
            stored = hash_image(str(path), hashers, max_pixels=10**9).features
            assert stored is not None
            found[key] = features.Features.from_local(stored)
    pairs = [(f"{n}-crop", n) for n in photos.PHOTOS]
    distinct = [(a, b) for a in photos.PHOTOS for b in photos.PHOTOS if a < b]
    out: dict[str, Any] = {}
    for label, chosen in (("crop_pair", pairs), ("distinct_pair", distinct)):
        times = []
        for _ in range(rounds):
            for a, b in chosen:
                started = time.perf_counter()
                features.verify(found[a], found[b])
                times.append(time.perf_counter() - started)
        out[f"{label}_ms_median"] = round(1000 * statistics.median(times), 3)
    out["verified_crops"] = sum(features.verify(found[a], found[b]) is not None for a, b in pairs)
    out["of_crops"] = len(pairs)
    return out


def hashing_cost(tmp: Path, rounds: int = 3) -> dict[str, Any]:
    hashers = [Hasher("phash", 16), second_opinion(Hasher("phash", 16))]
    out: dict[str, Any] = {}
    for label, size in (("12mp", (4000, 3000)), ("1600px", (1600, 1200))):
        files = [
            photos.upscaled(photos.photo(n), tmp / f"{n}-{label}.jpg", size=size)
            for n in photos.PHOTOS
        ]
        times: dict[bool, list[float]] = {False: [], True: []}
        for r in range(rounds):
            for i, f in enumerate(files):
                order = (False, True) if (r + i) % 2 else (True, False)
                for with_features in order:
                    started = time.perf_counter()
                    hash_image(str(f), hashers, max_pixels=10**9, features=with_features)
                    times[with_features].append(time.perf_counter() - started)
        plain, full = (1000 * statistics.median(times[k]) for k in (False, True))
        # the image the keypoints were found on (JPEG draft decoding sets its size)
        stored = hash_image(str(files[0]), hashers, max_pixels=10**9).features
        assert stored is not None
        out[label] = {
            "ms_without_features": round(plain, 2),
            "ms_with_features": round(full, 2),
            "ms_added": round(full - plain, 2),
            "features_image": [stored.width, stored.height],
        }
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--sizes", default="10000,100000,1000000")
    parser.add_argument("--queries", type=int, default=200)
    parser.add_argument("--out", type=Path, default=Path("bench/results/crops.json"))
    args = parser.parse_args()
    result: dict[str, Any] = {"machine": machine_info(), "features": features.FEATURES_KEY}
    with tempfile.TemporaryDirectory(prefix="dedupd-crops-") as name:
        _say("hashing cost")
        result["hashing"] = hashing_cost(Path(name))
        _say("verification")
        result["verification"] = verification(Path(name))
    _say("a growing delta")
    result["growing_delta"] = growing()
    _say(json.dumps(result["growing_delta"]))
    result["candidates"] = []
    for n in (int(s) for s in args.sizes.split(",")):
        _say(f"candidate index at {n}")
        result["candidates"].append(scale(n, args.queries))
        _say(json.dumps(result["candidates"][-1]))
    text = json.dumps(result, indent=2)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(text + "\n")
    print(text)


if __name__ == "__main__":
    main()
