"""What a whole `dedupd scan` costs per 12 MP HEIC, with and without an embedded thumbnail,
against a 12 MP JPEG, on one core; and what libheif's decode threads give on two.

The issue's bound: a 12 MP HEIC with an embedded thumbnail costs at most 6x a 12 MP JPEG per
file (whole scan). Measured as `bench/scan_cost.py` measures a scan: `dedupd scan DIR
--workers 1 --json` pinned to CPU 0 (`taskset`) with a fresh database, minus the same command
on a folder of one such file, divided by the files beyond that one; median of the rounds.

Inputs: the five test photos upscaled to 4000x3000 (`bench/hashing.py`'s `make_inputs`),
each saved twice (JPEG quality 90 and 92; HEIC quality 84 and 86) so that no two files are
byte-identical; the HEICs once with a 320x240 thumbnail (an iPhone's size, pillow-heif's
`thumbnails=[320]`) and once without.

Threads: the full decode (`Image.open` + `load`) of the HEICs without a thumbnail, in one
process on the first two CPUs, with pillow-heif's `DECODE_THREADS` at 1, 2 and 4 (libheif
decodes the 512x512 tiles of an iPhone's grid image in parallel; these files are one image).

    .venv/bin/python bench/heic.py [--rounds 3] [--out PATH]
"""

from __future__ import annotations

import argparse
import json
import os
import resource
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


def _scan_seconds(folder: Path, db: Path) -> tuple[float, float]:
    """(wall, CPU) seconds of one scan; CPU: user + system of the scan process and every
    process it waited for (its hasher worker, through the fork server), which a machine
    shared with other work disturbs less than the wall time."""
    if db.exists():
        db.unlink()
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
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
    wall = time.perf_counter() - t
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    return wall, cpu


def _save(job: tuple[Path, Path, str, int, bool]) -> Path:
    src, dst, fmt, quality, thumbnail = job
    with Image.open(src) as im:
        rgb = im.convert("RGB")
    kw: dict[str, object] = {"thumbnails": [320]} if thumbnail and fmt == "HEIF" else {}
    rgb.save(dst, format=fmt, quality=quality, **kw)
    return dst


def _inputs(base: Path) -> dict[str, list[Path]]:
    originals, _ = make_inputs(base / "originals", heic=False)
    kinds = {
        "jpeg": ("JPEG", ".jpg", (90, 92), False),
        "heic_thumbnail": ("HEIF", ".heic", (84, 86), True),
        "heic_full": ("HEIF", ".heic", (84, 86), False),
    }
    jobs: dict[str, list[tuple[Path, Path, str, int, bool]]] = {}
    for kind, (fmt, suffix, qualities, thumbnail) in kinds.items():
        (base / kind).mkdir()
        jobs[kind] = [
            (src, base / kind / f"{src.stem}-q{q}{suffix}", fmt, q, thumbnail)
            for src in originals
            for q in qualities
        ]
    with ProcessPoolExecutor(max_workers=2) as pool:
        return {kind: list(pool.map(_save, js)) for kind, js in jobs.items()}


def _per_file(
    inputs: dict[str, list[Path]], base: Path, rounds: int
) -> dict[str, dict[str, object]]:
    """Per kind: the scans of its folder and of a folder of one of its files, interleaved
    across kinds round by round (so a busy moment of the machine hits every kind alike), and
    the median cost per file beyond the first, wall and CPU."""
    ones = {}
    for kind, files in inputs.items():
        ones[kind] = base / f"one-{kind}"
        ones[kind].mkdir()
        shutil.copy(files[0], ones[kind] / files[0].name)
    runs: dict[str, dict[str, list[tuple[float, float]]]] = {
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
            "scan_s": [round(w, 3) for w, _ in r["scan"]],
            "one_file_scan_s": [round(w, 3) for w, _ in r["one"]],
            "ms_per_file": round(
                (statistics.median(w for w, _ in r["scan"])
                 - statistics.median(w for w, _ in r["one"])) / n * 1000, 1
            ),
            "cpu_ms_per_file": round(
                (statistics.median(c for _, c in r["scan"])
                 - statistics.median(c for _, c in r["one"])) / n * 1000, 1
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


def run(rounds: int) -> dict[str, object]:
    info = machine_info()
    info["pillow_heif"] = version("pillow-heif")
    info["libheif"] = pillow_heif.libheif_info().get("libheif")
    with tempfile.TemporaryDirectory(prefix="dedupd-heic-") as tmp:
        base = Path(tmp)
        inputs = _inputs(base)
        scans = _per_file(inputs, base, rounds)
        threads = _threads(inputs["heic_full"], rounds)
    ms = {kind: float(s["ms_per_file"]) for kind, s in scans.items()}  # type: ignore[arg-type]
    cpu = {kind: float(s["cpu_ms_per_file"]) for kind, s in scans.items()}  # type: ignore[arg-type]
    return {
        "benchmark": "heic",
        "machine": info,
        "size": "4000x3000; JPEG q90/q92, HEIC q84/q86 with a 320x240 thumbnail or none",
        "files_per_kind": len(inputs["jpeg"]),
        "pinned_to_one_core": bool(shutil.which("taskset")),
        "rounds": rounds,
        "scan": scans,
        "ratio_heic_thumbnail_to_jpeg": round(ms["heic_thumbnail"] / ms["jpeg"], 2),
        "ratio_heic_full_to_jpeg": round(ms["heic_full"] / ms["jpeg"], 2),
        "cpu_ratio_heic_thumbnail_to_jpeg": round(cpu["heic_thumbnail"] / cpu["jpeg"], 2),
        "cpu_ratio_heic_full_to_jpeg": round(cpu["heic_full"] / cpu["jpeg"], 2),
        "loadavg_end": list(os.getloadavg()),
        "full_decode_ms_per_file_on_2_cpus": threads,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--out", type=Path, default=ROOT / "bench" / "results" / "heic.json")
    args = parser.parse_args()
    result = run(args.rounds)
    text = json.dumps(result, indent=2)
    print(text)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(text + "\n")
    os.sync()


if __name__ == "__main__":
    main()
