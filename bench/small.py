"""Many small photos: `dedupd scan` against perception's `tools.deduplicate`, side by side.

The tree: --photos JPEGs (default 3,000) of about 500 px, as chat apps and thumbnails leave
them. Each original is a 500x375 (or 375x500) mosaic of 2 to 6 random crops of the five
test photos in tests/data/photos/, randomly mirrored and colour-shifted, at JPEG quality
75-92, so the originals are distinct pictures; 5% more are byte copies of an original in
another folder and 5% are near duplicates (re-encoded at quality 60, or resized to 80%).

Per round, interleaved, the order alternating, each a fresh subprocess (so each pays its
own interpreter start and imports, as a user running it does):

- **dedupd**: `python -m dedupd scan DIR --database FRESH.db --json --workers N`, from the
  source tree given by --tree (repeatable, e.g. an old checkout beside this one; default
  this one), with an empty config (all defaults: pHash 16x16, 256 bits).
- **perception**: a script run by --perception-python (a virtualenv with `perception`
  installed; it is kept out of dedupd's own environment because it pulls in `rich`, which
  structlog then uses for tracebacks) that imports perception, lists the tree and calls
  `perception.tools.deduplicate(files=..., hashers=[(PHash(hash_size=16), 0.2)])`; it uses
  a pool of 5 threads (OpenCV decodes without holding the GIL).

Two settings: `one_core` pins both to CPU 0 (`sched_setaffinity`) with `--workers 1`
(dedupd's one hasher worker then shares that CPU with the process that writes the store);
`all_cores` leaves both on every usable CPU with `--workers` = that count. Reported: wall
seconds, files per second and the ratio dedupd/perception (wall, paired per round, median;
above 1 means dedupd is slower), the same in CPU seconds of every process each started
(`machine.run_timed`: steadier than wall time on a shared machine), each tree against the
first, plus the duplicate groups / pairs each found.

With `--crops-off` the first tree runs a second time with `hashing: {crops: false}` (no local
features, no crop stage): the work perception does, pHash alone, plus dedupd's rotations and
mirrors and the PDQ second opinion. `crop_links` counts crop matches, all false here (the
originals are distinct collages of the same five photos).

    .venv/bin/python bench/small.py --perception-python /path/to/venv/bin/python
        [--photos 3000] [--rounds 3] [--tree DIR ...] [--crops-off]
        [--out bench/results/small.json]
"""

from __future__ import annotations

import argparse
import json
import os
import random
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # for `tests.photos`

from machine import CROPS_OFF, machine_info, player_config, player_tree, run_timed
from PIL import Image, ImageEnhance

from tests import photos

ROOT = Path(__file__).resolve().parent.parent
DEFAULT_OUT = ROOT / "bench" / "results" / "small.json"
SEED = 20_261_130
FOLDERS = [f"{y}/{m:02}" for y in (2024, 2025) for m in range(1, 11)]
EXACT_SHARE = NEAR_SHARE = 0.05

_PERCEPTION = """
import json, sys, time
from pathlib import Path
t0 = time.perf_counter()
from perception import hashers, tools
t1 = time.perf_counter()
files = sorted(str(p) for p in Path(sys.argv[1]).rglob("*.jpg"))
pairs = tools.deduplicate(files=files, hashers=[(hashers.PHash(hash_size=16), 0.2)])
t2 = time.perf_counter()
print(json.dumps({"import_s": t1 - t0, "deduplicate_s": t2 - t1, "files": len(files),
                  "pairs": len(pairs)}))
"""


def _log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


_SOURCES: list[Image.Image] = []


def _sources() -> list[Image.Image]:
    if not _SOURCES:
        _SOURCES.extend(Image.open(photos.photo(n)).convert("RGB") for n in photos.PHOTOS)
    return _SOURCES


def _original(seed: int, dst: Path) -> Path:
    """A distinct ~500 px picture: a grid of random crops, mirrored and colour-shifted."""
    rng = random.Random(seed)
    w, h = (500, 375) if rng.random() < 0.8 else (375, 500)
    cols, rows = rng.choice([(2, 1), (1, 2), (2, 2), (3, 2), (2, 3)])
    canvas = Image.new("RGB", (w, h))
    xs = [round(i * w / cols) for i in range(cols + 1)]
    ys = [round(j * h / rows) for j in range(rows + 1)]
    for i in range(cols):
        for j in range(rows):
            src = rng.choice(_sources())
            cw = round(src.width * rng.uniform(0.3, 1.0))
            ch = round(src.height * rng.uniform(0.3, 1.0))
            x0, y0 = rng.randint(0, src.width - cw), rng.randint(0, src.height - ch)
            tile = src.crop((x0, y0, x0 + cw, y0 + ch))
            if rng.random() < 0.5:
                tile = tile.transpose(Image.Transpose.FLIP_LEFT_RIGHT)
            tile = ImageEnhance.Color(tile).enhance(rng.uniform(0.5, 1.5))
            tile = ImageEnhance.Brightness(tile).enhance(rng.uniform(0.8, 1.2))
            box = (xs[i + 1] - xs[i], ys[j + 1] - ys[j])
            canvas.paste(tile.resize(box, Image.Resampling.BILINEAR), (xs[i], ys[j]))
    dst.parent.mkdir(parents=True, exist_ok=True)
    canvas.save(dst, format="JPEG", quality=rng.randint(75, 92))
    return dst


def _near(args: tuple[str, Path, Path]) -> Path:
    kind, src, dst = args
    if kind == "reencode":
        return photos.reencode(src, dst, quality=60)
    with Image.open(src) as im:
        dst.parent.mkdir(parents=True, exist_ok=True)
        im.resize((im.width * 4 // 5, im.height * 4 // 5), Image.Resampling.LANCZOS).save(
            dst, format="JPEG", quality=85
        )
    return dst


def make_tree(root: Path, n: int) -> dict[str, Any]:
    rng = random.Random(SEED)
    n_exact, n_near = round(n * EXACT_SHARE), round(n * NEAR_SHARE)
    n_orig = n - n_exact - n_near
    originals = [root / rng.choice(FOLDERS) / f"IMG_{i:05}.jpg" for i in range(n_orig)]
    dup_of = rng.sample(originals, n_exact + n_near)
    exact = [(s, root / rng.choice(FOLDERS) / f"{s.stem}-copy.jpg") for s in dup_of[:n_exact]]
    near = [
        (kind, s, root / rng.choice(FOLDERS) / f"{s.stem}-{kind}.jpg")
        for kind, s in zip(["reencode", "resize"] * n_near, dup_of[n_exact:], strict=False)
    ]
    with ProcessPoolExecutor(max_workers=os.cpu_count() or 2) as pool:
        list(pool.map(_original, (SEED + i for i in range(n_orig)), originals, chunksize=64))
        list(pool.map(_near, near, chunksize=16))
    for src, dst in exact:
        photos.copy(src, dst)
    files = list(root.rglob("*.jpg"))
    sizes = [Image.open(p).size for p in files[:200]]
    return {
        "files": len(files),
        "originals": n_orig,
        "exact_copies": n_exact,
        "near_duplicates": n_near,
        "planted_groups": n_exact + n_near,
        "bytes": sum(p.stat().st_size for p in files),
        "long_side_px": sorted({max(s) for s in sizes}),
    }


def _pin(cpus: set[int] | None) -> Callable[[], None] | None:
    if cpus is None:
        return None
    return lambda: os.sched_setaffinity(0, cpus)


def run_dedupd(
    player: str, root: Path, database: Path, workers: int, cpus: set[int] | None
) -> dict[str, Any]:
    tree = player_tree(player)
    config = database.with_suffix(".yaml")
    config.write_text(player_config(player))
    env = {**os.environ, "PYTHONPATH": str(tree), "DEDUPD_CONFIG": str(config)}
    cmd = [sys.executable, "-m", "dedupd", "scan", str(root), "--database", str(database)]
    cmd += ["--json", "--workers", str(workers)]
    proc, wall, cpu = run_timed(cmd, env=env, cwd=tree, preexec_fn=_pin(cpus))
    if proc.returncode != 0:
        raise RuntimeError(f"dedupd scan exited {proc.returncode}: {proc.stderr[-2000:]}")
    report = json.loads(proc.stdout)
    database.unlink()
    return {
        "wall_s": wall,
        "cpu_s": cpu,
        "reported_seconds": report["seconds"],
        "hashed": report["hashed"],
        "errors": len(report["errors"]),
        "groups": len(report["groups"]),
        "duplicates": sum(len(g["duplicates"]) for g in report["groups"]),
        # The originals are distinct collages of the same five photos: a crop between two of
        # them is a false link (a planted near copy is a near match, which wins over crop).
        "crop_links": sum(d["kind"] == "crop" for g in report["groups"] for d in g["duplicates"]),
    }


def _commit(tree: Path) -> str:
    return subprocess.run(
        ["git", "-C", str(tree), "log", "-1", "--format=%h %s"],
        capture_output=True,
        text=True,
        check=False,
    ).stdout.strip()


def run_perception(python: str, root: Path, cpus: set[int] | None) -> dict[str, Any]:
    proc, wall, cpu = run_timed([python, "-c", _PERCEPTION, str(root)], preexec_fn=_pin(cpus))
    if proc.returncode != 0:
        raise RuntimeError(f"perception exited {proc.returncode}: {proc.stderr[-2000:]}")
    return {"wall_s": wall, "cpu_s": cpu, **json.loads(proc.stdout.strip().splitlines()[-1])}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--perception-python", required=True)
    parser.add_argument("--photos", type=int, default=3000)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--tree", type=Path, action="append", help="source tree (repeatable)")
    parser.add_argument("--settings", default="one_core,all_cores")
    parser.add_argument(
        "--crops-off", action="store_true", help="the first tree also with hashing.crops: false"
    )
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT)
    args = parser.parse_args()
    trees = [t.resolve() for t in (args.tree or [ROOT])]
    usable = sorted(os.sched_getaffinity(0))
    settings = {
        "one_core": ({usable[0]}, 1),
        "all_cores": (None, len(usable)),
    }
    chosen = args.settings.split(",")
    info = machine_info()
    out: dict[str, Any] = {}
    with tempfile.TemporaryDirectory(prefix="dedupd-bench-small-") as tmp:
        work = Path(tmp)
        root = work / "photos"
        t0 = time.perf_counter()
        made = make_tree(root, args.photos)
        made["make_s"] = time.perf_counter() - t0
        _log(f"made {made['files']} small JPEGs in {made['make_s']:.0f} s")
        for name in chosen:
            cpus, workers = settings[name]
            runs: list[dict[str, Any]] = []
            dedupds = [str(t) for t in trees]
            if args.crops_off:
                dedupds.insert(1, dedupds[0] + CROPS_OFF)  # an older tree may not know it
            players = [*dedupds, "perception"]
            for r in range(args.rounds):
                sample: dict[str, Any] = {}
                order = players if r % 2 == 0 else list(reversed(players))
                for who in order:
                    if who == "perception":
                        sample[who] = run_perception(args.perception_python, root, cpus)
                    else:
                        db = work / f"{name}-{r}.db"
                        sample[who] = run_dedupd(who, root, db, workers, cpus)
                runs.append(sample)
                _log(
                    f"{name} round {r + 1}/{args.rounds}: "
                    + ", ".join(f"{Path(w).name} {sample[w]['wall_s']:.2f} s" for w in players)
                )
            p = statistics.median(x["perception"]["wall_s"] for x in runs)
            out[name] = {
                "cpus": sorted(cpus) if cpus else usable,
                "dedupd_workers": workers,
                "perception_s": p,
                "perception_files_per_s": made["files"] / p,
                "perception_cpu_s": statistics.median(x["perception"]["cpu_s"] for x in runs),
                "dedupd": {
                    t: {
                        "commit": _commit(player_tree(t)),
                        "wall_s": statistics.median(x[t]["wall_s"] for x in runs),
                        "files_per_s": made["files"]
                        / statistics.median(x[t]["wall_s"] for x in runs),
                        "over_perception": statistics.median(
                            x[t]["wall_s"] / x["perception"]["wall_s"] for x in runs
                        ),
                        "cpu_s": statistics.median(x[t]["cpu_s"] for x in runs),
                        "cpu_over_perception": statistics.median(
                            x[t]["cpu_s"] / x["perception"]["cpu_s"] for x in runs
                        ),
                        "over_first_tree": statistics.median(
                            x[t]["wall_s"] / x[dedupds[0]]["wall_s"] for x in runs
                        ),
                        "cpu_over_first_tree": statistics.median(
                            x[t]["cpu_s"] / x[dedupds[0]]["cpu_s"] for x in runs
                        ),
                        "crop_links": statistics.median(x[t]["crop_links"] for x in runs),
                    }
                    for t in dedupds
                },
                "rounds": runs,
            }
    info["loadavg_end"] = list(os.getloadavg())
    doc = {
        "benchmark": "small",
        "machine": info,
        "perception_python": args.perception_python,
        "photos": made,
        "meaning": "over_perception: dedupd wall / perception wall, paired per round"
        " (median); above 1 means dedupd is slower; cpu_over_perception: the same in CPU"
        " seconds (every process, dedupd's hasher workers included); over_first_tree and"
        " cpu_over_first_tree: a tree against the first --tree, paired per round",
        **out,
    }
    text = json.dumps(doc, indent=2)
    print(text)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(text + "\n")
    for name in chosen:
        o = out[name]
        for d in o["dedupd"].values():
            _log(
                f"{name}: dedupd {d['commit'][:7]} {d['files_per_s']:.0f} files/s, perception "
                f"{o['perception_files_per_s']:.0f} files/s, ratio {d['over_perception']:.2f}"
                f" (CPU {d['cpu_over_perception']:.2f}); over the first tree"
                f" {d['over_first_tree']:.3f} (CPU {d['cpu_over_first_tree']:.3f})"
            )


if __name__ == "__main__":
    main()
