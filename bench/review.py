"""What looking costs: a thumbnail from a 12 MP JPEG (cold, and from the cache), the size of
an inline thumbnail in `show --html`, and the t-SNE map of a library (`show --tsne`) at its
default sample of 2,000 points, from a store of --photos random 256-bit hashes.

    .venv/bin/python bench/review.py [--rounds 5] [--photos 10000]
                                     [--out bench/results/review.json]

Prints JSON and writes it to --out. Needs the `viz` extra for the map.
"""

from __future__ import annotations

import argparse
import json
import random
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # for `tests.photos`

from fixtures import insert_hashed
from machine import machine_info
from PIL import Image

from dedupd import report
from dedupd.filestat import FileStat
from dedupd.hashers import Hasher
from dedupd.store import Store
from dedupd.thumbs import Thumbnails
from tests import photos

ROOT = Path(__file__).resolve().parent.parent
DEFAULT_OUT = ROOT / "bench" / "results" / "review.json"


def _ms(samples: list[float]) -> float:
    return round(statistics.median(samples) * 1000, 2)


def thumbnails(tmp: Path, rounds: int) -> dict[str, object]:
    src = tmp / "12mp.jpg"
    with Image.open(photos.photo("coffee")) as im:
        im.convert("RGB").resize((4000, 3000), Image.Resampling.LANCZOS).save(src, quality=90)
    record = {"path": str(src), "format": "JPEG", "size": src.stat().st_size}
    from dedupd.imaging import file_sha256

    record["sha256"] = file_sha256(str(src))
    cold, warm = [], []
    for n in range(rounds):
        thumbs = Thumbnails(tmp / f"cache{n}", max_pixels=180_000_000)
        t0 = time.perf_counter()
        data = thumbs.jpeg(str(src), record)
        cold.append(time.perf_counter() - t0)
        t0 = time.perf_counter()
        thumbs.jpeg(str(src), record)
        warm.append(time.perf_counter() - t0)
    return {
        "source": "4000x3000 JPEG",
        "cold_ms_p50": _ms(cold),
        "cached_ms_p50": _ms(warm),
        "thumbnail_bytes": len(data),
        "inline_base64_bytes": len(thumbs.data_uri(str(src), record)),
    }


def tsne(tmp: Path, count: int, rounds: int) -> dict[str, object]:
    hasher = Hasher("phash", 16)
    db = tmp / f"tsne-{count}.db"
    with Store(db) as store:
        files = [
            (f"IMG_{i:06}.jpg", FileStat(1, i + 1, 1000, i), f"{i:064x}") for i in range(count)
        ]
        insert_hashed(store, str(tmp / "gone"), files, hasher.key, random.Random(1))
    times = []
    for n in range(rounds):
        with Store(db, readonly=True) as store:
            t0 = time.perf_counter()
            made = report.tsne_map(
                store,
                hasher.key,
                [],
                tmp / f"map{n}.png",
                Thumbnails(tmp / "tsne-cache", max_pixels=1),
            )
            times.append(time.perf_counter() - t0)
    return {
        "indexed": count,
        "drawn": made.drawn,
        "seconds_p50": round(statistics.median(times), 2),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--photos", type=int, default=10_000)
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as d:
        tmp = Path(d)
        result = {
            "machine": machine_info(),
            "thumbnail": thumbnails(tmp, args.rounds),
            "tsne": [tsne(tmp, n, max(1, args.rounds // 2)) for n in (500, args.photos)],
        }
    text = json.dumps(result, indent=2)
    print(text)
    args.out.write_text(text + "\n")


if __name__ == "__main__":
    main()
