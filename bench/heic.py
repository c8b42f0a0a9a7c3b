"""What a whole `dedupd scan` costs per 12 MP HEIC, with and without an embedded thumbnail,
against a 12 MP JPEG, on one core; and what libheif's decode threads give on two.

The issue's bound: a 12 MP HEIC with an embedded thumbnail costs at most 6x a 12 MP JPEG per
file (whole scan). Measured as `bench/scan_cost.py` measures a scan: `dedupd scan DIR
--workers 1 --json` pinned to CPU 0 (`taskset`) with a fresh database, minus the same command
on a folder of one such file, divided by the files beyond that one; median of the rounds.

Inputs: the five test photos upscaled to 4000x3000 (`bench/hashing.py`'s `make_inputs`,
JPEG quality 92), and each saved as a HEIC at quality 85 once with a 320x240 thumbnail (an
iPhone's size, pillow-heif's `thumbnails=[320]`) and once without; every file copied
`--copies` times with other bytes (a JPEG comment, a HEIF `free` box) so that no two are
byte-identical, but the pictures repeat.

Threads: the full decode (`Image.open` + `load`) of the HEICs without a thumbnail, in one
process on the first two CPUs, with pillow-heif's `DECODE_THREADS` at 1, 2 and 4 (libheif
decodes the 512x512 tiles of an iPhone's grid image in parallel; these files are one image).

    .venv/bin/python bench/heic.py [--rounds 3] [--copies 2] [--out PATH]
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
from concurrent.futures import ProcessPoolExecutor
from importlib.metadata import version
from pathlib import Path

import pillow_heif
from hashing import make_inputs
from machine import machine_info
from PIL import Image

ROOT = Path(__file__).resolve().parent.parent
pillow_heif.register_heif_opener()

DECODE = """
import sys, time
import pillow_heif
from PIL import Image
pillow_heif.register_heif_opener()
pillow_heif.options.DECODE_THREADS = int(sys.argv[1])
paths = sys.argv[2:]
t = time.perf_counter()
for p in paths:
    with Image.open(p) as img:
        img.load()
print(time.perf_counter() - t)
"""


def _pinned(cmd: list[str], cpus: str = "0") -> list[str]:
    return ["taskset", "-c", cpus, *cmd] if shutil.which("taskset") else cmd


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


def _heic(job: tuple[Path, Path, bool]) -> Path:
    src, dst, thumbnail = job
    with Image.open(src) as im:
        rgb = im.convert("RGB")
    rgb.save(dst, format="HEIF", quality=85, **({"thumbnails": [320]} if thumbnail else {}))
    return dst


def _copies(src: Path, folder: Path, copies: int) -> list[Path]:
    """`copies` files of `src`'s picture with other bytes each (no exact-duplicate
    shortcut): a JPEG comment segment after SOI, or a HEIF `free` box at the end."""
    data = src.read_bytes()
    out = []
    for n in range(copies):
        if src.suffix == ".jpg":
            copy = data[:2] + b"\xff\xfe\x00\x06" + n.to_bytes(4, "big") + data[2:]
        else:
            copy = data + b"\x00\x00\x00\x10free" + n.to_bytes(8, "big")
        dst = folder / f"{src.stem}-{n}{src.suffix}"
        dst.write_bytes(copy)
        out.append(dst)
    return out


def _inputs(base: Path, copies: int) -> dict[str, list[Path]]:
    jpegs, _ = make_inputs(base / "originals", heic=False)
    jobs = [(j, base / "originals" / f"{j.stem}{'-t' if t else ''}.heic", t)
            for j in jpegs for t in (True, False)]
    with ProcessPoolExecutor(max_workers=2) as pool:
        heics = list(pool.map(_heic, jobs))
    sources = {
        "jpeg": jpegs,
        "heic_thumbnail": [h for h in heics if h.stem.endswith("-t")],
        "heic_full": [h for h in heics if not h.stem.endswith("-t")],
    }
    out = {}
    for kind, files in sources.items():
        (base / kind).mkdir()
        out[kind] = [c for f in files for c in _copies(f, base / kind, copies)]
    return out


def _per_file(
    inputs: dict[str, list[Path]], base: Path, rounds: int
) -> dict[str, dict[str, object]]:
    """Per kind: the scans of its folder and of a folder of one of its files, interleaved
    across kinds round by round (so a busy moment of the machine hits every kind alike), and
    the median cost per file beyond the first."""
    ones = {}
    for kind, files in inputs.items():
        ones[kind] = base / f"one-{kind}"
        ones[kind].mkdir()
        shutil.copy(files[0], ones[kind] / files[0].name)
    runs: dict[str, dict[str, list[float]]] = {
        kind: {"scan": [], "one": []} for kind in inputs
    }
    for _ in range(rounds):
        for kind, files in inputs.items():
            runs[kind]["one"].append(_scan_seconds(ones[kind], base / "one.db"))
            runs[kind]["scan"].append(_scan_seconds(files[0].parent, base / "d.db"))
    out: dict[str, dict[str, object]] = {}
    for kind, r in runs.items():
        n = len(inputs[kind]) - 1
        out[kind] = {
            "scan_s": [round(w, 3) for w in r["scan"]],
            "one_file_scan_s": [round(w, 3) for w in r["one"]],
            "ms_per_file": round(
                (statistics.median(r["scan"]) - statistics.median(r["one"])) / n * 1000, 1
            ),
        }
    return out


def _threads(files: list[Path], rounds: int) -> dict[str, float]:
    out = {}
    for threads in (1, 2, 4):
        times = []
        for _ in range(rounds):
            run = subprocess.run(
                _pinned([sys.executable, "-c", DECODE, str(threads), *map(str, files)], "0,1"),
                check=True,
                capture_output=True,
                text=True,
            )
            times.append(float(run.stdout.strip()))
        out[f"decode_threads_{threads}"] = round(statistics.median(times) / len(files) * 1000, 1)
    return out


def run(rounds: int, copies: int) -> dict[str, object]:
    info = machine_info()
    info["pillow_heif"] = version("pillow-heif")
    info["libheif"] = pillow_heif.libheif_info().get("libheif")
    with tempfile.TemporaryDirectory(prefix="dedupd-heic-") as tmp:
        base = Path(tmp)
        inputs = _inputs(base, copies)
        scans = _per_file(inputs, base, rounds)
        threads = _threads(inputs["heic_full"], rounds)
    ms = {kind: float(s["ms_per_file"]) for kind, s in scans.items()}  # type: ignore[arg-type]
    return {
        "benchmark": "heic",
        "machine": info,
        "size": "4000x3000; JPEG q92, HEIC q85 with a 320x240 thumbnail or none",
        "copies": copies,
        "files_per_kind": len(inputs["jpeg"]),
        "pinned_to_one_core": bool(shutil.which("taskset")),
        "rounds": rounds,
        "scan": scans,
        "ratio_heic_thumbnail_to_jpeg": round(ms["heic_thumbnail"] / ms["jpeg"], 2),
        "ratio_heic_full_to_jpeg": round(ms["heic_full"] / ms["jpeg"], 2),
        "loadavg_end": list(os.getloadavg()),
        "full_decode_ms_per_file_on_2_cpus": threads,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--copies", type=int, default=2)
    parser.add_argument("--out", type=Path, default=ROOT / "bench" / "results" / "heic.json")
    args = parser.parse_args()
    result = run(args.rounds, args.copies)
    text = json.dumps(result, indent=2)
    print(text)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(text + "\n")
    os.sync()


if __name__ == "__main__":
    main()
