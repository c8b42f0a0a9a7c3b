"""What a whole `dedupd scan` costs per 12 MP JPEG on one core, against a bare draft decode.

The issue's bound: the whole scan (walk, the hasher worker's read + sha256 + draft decode +
pHash, the pipe back, store writes, index, matching, decisions) within 1.3x of the bare
draft decode of the same files. Both run on one core (`taskset` to CPU 0 when available;
`--workers 1`), interleaved, median of the rounds:

- ``decode``: `Image.open` + `draft` + `load` of every file, in one fresh process (the
  lower bound `bench/hashing.py` also reports), timed inside it (no start-up);
- ``scan``: `dedupd scan DIR --workers 1 --json` with a fresh database, minus the time of
  the same command on a folder holding one of the files (Python start-up, imports, the
  pool's start and its worker's first decode), divided by the files beyond that one.

Each is measured in wall time and in CPU time (every process of the scan, its hasher worker
included: `machine.run_timed`). On a quiet machine they agree; on a shared one CPU time is the
steadier of the two.

Inputs, two kinds, measured in the same rounds, each against its own bare decode:

- ``smooth``: the five test photos upscaled to 4000x3000 at quality 92 (`bench/hashing.py`'s
  `make_inputs`): ~1 MB each, a third of a phone's 12 MP JPEG, because an upscaled picture
  has no fine detail. The draft decode's floor is entropy decoding, which grows with the
  bytes, while the rest of the scan (hashing the 1/8 draft, deciding) does not: these files
  give the scan its worst ratio.
- ``phone``: the same pictures with sensor-like grain (Gaussian, sigma `GRAIN` grey levels,
  a fixed seed) before the quality-92 encode: ~3 MB each, what a phone's 12 MP JPEG weighs
  (2.5-5 MB), decoding about as slowly. The issue's bound is "per real 12 MP phone JPEG".

Each picture is copied `--copies` times with a byte changed in a JPEG comment so that no two
files are byte-identical (no exact-duplicate shortcut), but the pictures repeat. The config
is empty (every default).

`--crops-off` runs the first tree again with `hashing: {crops: false}` (no local features: the
crop stage's share of the cost). `--tree DIR` (repeatable) runs the scans from other source
trees too (an older checkout beside this one), in the same rounds, the trees' order
alternating: each tree gets its own figures, and `over_first` is its per-file scan cost
over the first tree's, paired per round (median). Ratios per round are medians too: on a
shared machine compare those, not absolute times.

    .venv/bin/python bench/scan_cost.py [--copies 8] [--rounds 3] [--tree DIR ...]
                                        [--crops-off] [--out PATH]
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
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

from hashing import HASHER, QUALITY, SIZE, make_inputs
from machine import CROPS_OFF, machine_info, player_config, player_tree, run_timed

ROOT = Path(__file__).resolve().parent.parent

DECODE = """
import sys, time
from PIL import Image
paths = sys.argv[1:]
t, c = time.perf_counter(), time.process_time()
for p in paths:
    with Image.open(p) as img:
        img.draft("RGB", ({side}, {side}))
        img.load()
print(time.perf_counter() - t, time.process_time() - c)
"""


def _pinned(cmd: list[str]) -> list[str]:
    return ["taskset", "-c", "0", *cmd] if shutil.which("taskset") else cmd


def _scan_seconds(tree: Path, folder: Path, db: Path, config: Path) -> tuple[float, float]:
    """(wall, CPU) seconds of a `dedupd scan` of `folder` from `tree`, its worker included."""
    if db.exists():
        db.unlink()
    env = {**os.environ, "PYTHONPATH": str(tree), "DEDUPD_CONFIG": str(config)}
    cmd = [sys.executable, "-m", "dedupd", "scan", str(folder), "--database", str(db)]
    proc, wall, cpu = run_timed(_pinned([*cmd, "--workers", "1", "--json"]), cwd=tree, env=env)
    if proc.returncode != 0:
        raise RuntimeError(f"dedupd scan exited {proc.returncode}: {proc.stderr[-2000:]}")
    return wall, cpu


def _commit(tree: Path) -> str:
    return subprocess.run(
        ["git", "-C", str(tree), "log", "-1", "--format=%h %s"],
        capture_output=True,
        text=True,
        check=False,
    ).stdout.strip()


def _decode_seconds(files: list[Path]) -> tuple[float, float]:
    """(wall, CPU) seconds of the bare draft decode of `files`, in one process."""
    out = subprocess.run(
        _pinned([sys.executable, "-c", DECODE.format(side=HASHER.draft_side), *map(str, files)]),
        check=True,
        capture_output=True,
        text=True,
    )
    wall, cpu = map(float, out.stdout.split())
    return wall, cpu


GRAIN = 6.0  # grey levels: 1 MB smooth 12 MP files become ~3 MB (bench/results/scan_cost.json)
KINDS = ("phone", "smooth")


def _grainy(src: Path, dst: Path, seed: int) -> Path:
    """`src` with Gaussian grain of sigma GRAIN, encoded as the smooth inputs are."""
    import numpy as np
    from PIL import Image

    with Image.open(src) as im:
        pixels = np.asarray(im.convert("RGB"), np.float32)
    pixels += np.random.default_rng(seed).normal(0.0, GRAIN, pixels.shape).astype(np.float32)
    out = Image.fromarray(pixels.clip(0, 255).astype(np.uint8))
    out.save(dst, format="JPEG", quality=QUALITY)
    return dst


def _copies(originals: list[Path], folder: Path, copies: int) -> list[Path]:
    folder.mkdir()
    files = []
    for n in range(copies):
        for src in originals:
            data = bytearray(src.read_bytes())
            # A COM segment right after SOI: other bytes, the same picture.
            data[2:2] = b"\xff\xfe\x00\x06" + n.to_bytes(4, "big")
            dst = folder / f"{src.stem}-{n}.jpg"
            dst.write_bytes(bytes(data))
            files.append(dst)
    return files


def run(copies: int, rounds: int, players: list[str]) -> dict[str, object]:
    """`players`: source trees, each maybe followed by CROPS_OFF."""
    with tempfile.TemporaryDirectory() as tmp:
        base = Path(tmp)
        smooth, _ = make_inputs(base / "smooth", heic=False)
        (base / "phone").mkdir()
        with ProcessPoolExecutor(max_workers=2) as pool:
            phone = list(
                pool.map(
                    _grainy,
                    smooth,
                    [base / "phone" / s.name for s in smooth],
                    range(len(smooth)),
                )
            )
        files = {
            kind: _copies(originals, base / f"photos-{kind}", copies)
            for kind, originals in (("phone", phone), ("smooth", smooth))
        }
        one = {}
        for kind in KINDS:
            one[kind] = base / f"one-{kind}"
            one[kind].mkdir()
            shutil.copy(files[kind][0], one[kind] / files[kind][0].name)

        configs: dict[str, Path] = {}

        def config(player: str) -> Path:
            text = player_config(player)
            if text not in configs:
                configs[text] = base / f"config-{len(configs)}.yaml"
                configs[text].write_text(text)
            return configs[text]

        trees = players
        Runs = dict[str, dict[str, list[tuple[float, float]]]]
        scan: Runs = {k: {t: [] for t in trees} for k in KINDS}
        startup: Runs = {k: {t: [] for t in trees} for k in KINDS}
        decode: dict[str, list[tuple[float, float]]] = {k: [] for k in KINDS}
        for r in range(rounds):
            for kind in KINDS:
                for tree in trees if r % 2 == 0 else trees[::-1]:
                    cfg, src = config(tree), player_tree(tree)
                    startup[kind][tree].append(_scan_seconds(src, one[kind], base / "one.db", cfg))
                    scan[kind][tree].append(
                        _scan_seconds(src, base / f"photos-{kind}", base / "d.db", cfg)
                    )
                decode[kind].append(_decode_seconds(files[kind]))
        sizes = {k: statistics.mean(f.stat().st_size for f in files[k]) for k in KINDS}
    n = len(files["phone"])

    def per_file(kind: str, tree: str, r: int, clock: int) -> float:
        """A round's cost of a file beyond the first (clock 0: wall, 1: CPU)."""
        return (scan[kind][tree][r][clock] - startup[kind][tree][r][clock]) / (n - 1)

    def figures(kind: str, clock: int) -> dict[str, dict[str, object]]:
        out: dict[str, dict[str, object]] = {}
        decode_ms = [d[clock] / n * 1000 for d in decode[kind]]
        for tree in trees:
            ms = [per_file(kind, tree, r, clock) * 1000 for r in range(rounds)]
            out[str(tree)] = {
                "scan_ms_per_file": round(statistics.median(ms), 2),
                "ratio": round(
                    statistics.median(m / d for m, d in zip(ms, decode_ms, strict=True)), 3
                ),
                "over_first": round(
                    statistics.median(
                        per_file(kind, tree, r, clock) / per_file(kind, trees[0], r, clock)
                        for r in range(rounds)
                    ),
                    3,
                ),
            }
        out["decode"] = {"draft_decode_ms_per_file": round(statistics.median(decode_ms), 2)}
        return out

    first = str(trees[0])
    kinds: dict[str, object] = {}
    for kind in KINDS:
        wall, cpu = figures(kind, 0), figures(kind, 1)
        kinds[kind] = {
            "mean_bytes": round(sizes[kind]),
            # the first tree: wall time, medians of the rounds
            "scan_ms_per_file": wall[first]["scan_ms_per_file"],
            "draft_decode_ms_per_file": wall["decode"]["draft_decode_ms_per_file"],
            "ratio": wall[first]["ratio"],
            "wall": wall,
            "cpu": cpu,
            "raw": {
                "decode_s": decode[kind],
                **{
                    str(t): {"scan_s": scan[kind][t], "one_file_scan_s": startup[kind][t]}
                    for t in trees
                },
            },
        }
    return {
        "benchmark": "scan_cost",
        "machine": machine_info(),
        "files": n,
        "size": f"{SIZE[0]}x{SIZE[1]} JPEG q{QUALITY}",
        "grain_sigma": GRAIN,
        "pinned_to_one_core": bool(shutil.which("taskset")),
        "rounds": rounds,
        "trees": {str(t): _commit(player_tree(t)) for t in trees},
        "inputs": kinds,
        "meaning": "per input kind (phone: with grain, ~3 MB a file like a phone's 12 MP JPEG;"
        " smooth: the upscaled test photos, ~1 MB), per tree, wall and CPU: scan_ms_per_file"
        " = (scan - one-file scan) / (files - 1); ratio = that over the bare draft decode of"
        " the same files per file, per round, median; over_first = a tree's scan_ms_per_file"
        " over the first tree's, per round, median. CPU counts the worker; (wall, CPU) pairs"
        " in raw",
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--copies", type=int, default=8)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--tree", type=Path, action="append", help="source tree (repeatable)")
    parser.add_argument(
        "--crops-off", action="store_true", help="the first tree also with hashing.crops: false"
    )
    parser.add_argument("--out", type=Path, default=ROOT / "bench" / "results" / "scan_cost.json")
    args = parser.parse_args()
    trees = [str(t.resolve()) for t in (args.tree or [ROOT])]
    if args.crops_off:
        trees.insert(1, trees[0] + CROPS_OFF)  # an older tree may not know the key
    result = run(args.copies, args.rounds, trees)
    text = json.dumps(result, indent=2)
    print(text)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(text + "\n")
    os.sync()


if __name__ == "__main__":
    main()
