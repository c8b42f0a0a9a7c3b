"""What matching a clip's frames costs: `FrameIndex.votes`, which the daemon's writer thread
runs once per new clip (nothing else is decided meanwhile).

One clip of --sizes frames (256-bit hashes, as pHash 16 makes them) is indexed (then the
index rebuilt, as after a start-up load) and a clip of as many frames is matched against it
at the default frame radius, 64 bits. Three kinds of pairs:

- `alike`: both clips alternate two pictures 56 bits apart (the red team's vidstall.sh, made
  from hashes here): every frame is within the radius of every frame of the other clip, so
  each query hits all of the indexed clip's frames;
- `slow`: a slow camera move: each frame is the last one with 24 bits changed (a frame
  within 20 bits of the last one kept is dropped as a repeat), so a frame is within the
  radius of its neighbours a second or two away; the asking clip is a copy of it with 4 bits
  of each frame changed (a re-encode);
- `distinct`: independent random frames and such a copy of them: one hit per frame, the
  cost of the radius queries alone.

Each measurement is a fresh subprocess (`--child`) with a source tree first on PYTHONPATH
(--tree, repeatable; default this tree), trees interleaved with the order alternating round
by round. Per run: wall and CPU seconds of `votes` alone (the index built before), and the
votes themselves (frames matched on each side, median distance, the `kind` they make), which
must be the same in every tree. Once a tree takes more than --budget seconds at a size, its
larger sizes of that kind are skipped (the per-hit loop before 2026-12 took ~5 min at
10,000). Timings are never asserted.

    .venv/bin/python bench/votes.py [--sizes 1000,2000,6000,10000] [--kinds alike,slow,distinct]
                                    [--rounds 1] [--budget 120] [--tree DIR ...]
                                    [--out bench/results/votes.json]

Prints JSON and writes it to --out.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
DEFAULT_OUT = ROOT / "bench" / "results" / "votes.json"
KINDS = ("alike", "slow", "distinct")
BITS = 256
RADIUS = 64  # pHash 16's default threshold, 0.25 of 256 bits
PER_FILE = 1 << 16  # video.MAX_FRAMES
SEED = 20_261_201


def _flip(frame: Any, rng: Any, bits: int) -> Any:
    """`frame` (bytes as uint8) with `bits` distinct bits changed."""
    import numpy as np

    out = np.unpackbits(frame)
    out[rng.choice(len(out), bits, replace=False)] ^= 1
    return np.packbits(out)


def _clips(kind: str, n: int) -> tuple[list[bytes], list[bytes]]:
    """(the indexed clip, the asking clip) of `kind`, `n` frames each."""
    import numpy as np

    rng = np.random.default_rng(SEED)
    nbytes = BITS // 8
    if kind == "alike":
        a = rng.integers(0, 256, nbytes, dtype=np.uint8)
        b = a.copy()
        b[:7] ^= 0xFF  # 56 bits apart
        clip = [(a if k % 2 == 0 else b).tobytes() for k in range(n)]
        return clip, list(clip)
    if kind == "slow":
        frame = rng.integers(0, 256, nbytes, dtype=np.uint8)
        walk = []
        for _ in range(n):
            walk.append(frame)
            frame = _flip(frame, rng, 24)
    else:
        walk = [rng.integers(0, 256, nbytes, dtype=np.uint8) for _ in range(n)]
    return [f.tobytes() for f in walk], [_flip(f, rng, 4).tobytes() for f in walk]


def _child(kind: str, n: int) -> None:
    """Time `votes` for one pair in the tree on PYTHONPATH; print JSON."""
    import dedupd
    from dedupd.index import FrameIndex, make_index

    indexed, asking = _clips(kind, n)
    frames = FrameIndex(make_index("hamming", BITS), PER_FILE)
    frames.add(1, indexed)
    frames.index.rebuild()
    wall, cpu = time.perf_counter(), time.process_time()
    votes = frames.votes(asking, RADIUS)
    wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
    found = {
        str(clip): {
            "mine": len(v.mine),
            "theirs": len(v.theirs),
            "distance": v.distance,
            "kind": v.kind(n, frames.frames(clip)),
        }
        for clip, v in votes.items()
    }
    doc = {"dedupd": dedupd.__file__, "wall_s": wall, "cpu_s": cpu, "votes": found}
    print(json.dumps(doc))


def _run(tree: Path, kind: str, n: int) -> dict[str, Any]:
    proc = subprocess.run(
        [sys.executable, str(Path(__file__).resolve()), "--child", kind, str(n)],
        capture_output=True,
        text=True,
        cwd=tree,
        env={**os.environ, "PYTHONPATH": str(tree)},
        check=False,
    )
    if proc.returncode != 0:
        raise RuntimeError(f"{kind} {n} in {tree} exited {proc.returncode}: {proc.stderr[-2000:]}")
    doc: dict[str, Any] = json.loads(proc.stdout)
    if not doc["dedupd"].startswith(str(tree)):
        raise RuntimeError(f"{tree}: dedupd was imported from {doc['dedupd']}")
    return doc


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--child", nargs=2, metavar=("KIND", "N"), help=argparse.SUPPRESS)
    parser.add_argument("--sizes", default="1000,2000,6000,10000")
    parser.add_argument("--kinds", default=",".join(KINDS))
    parser.add_argument("--rounds", type=int, default=1)
    parser.add_argument("--budget", type=float, default=120.0)
    parser.add_argument("--tree", type=Path, action="append")
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT)
    args = parser.parse_args()
    if args.child:
        _child(args.child[0], int(args.child[1]))
        return
    sys.path.insert(0, str(ROOT / "bench"))
    from machine import machine_info

    trees = [t.resolve() for t in (args.tree or [ROOT])]
    sizes = [int(s) for s in args.sizes.split(",")]
    kinds = args.kinds.split(",")
    info = machine_info()
    over: set[tuple[str, str]] = set()  # (tree, kind) past the budget
    results = []
    for kind in kinds:
        for n in sizes:
            runs: dict[str, list[dict[str, Any]]] = {str(t): [] for t in trees}
            for r in range(args.rounds):
                for tree in trees if r % 2 == 0 else list(reversed(trees)):
                    if (str(tree), kind) not in over:
                        runs[str(tree)].append(_run(tree, kind, n))
            answers = {json.dumps(v[0]["votes"], sort_keys=True) for v in runs.values() if v}
            for tree in trees:
                done = runs[str(tree)]
                row: dict[str, Any] = {"kind": kind, "frames": n, "tree": str(tree)}
                if not done:
                    row["skipped"] = f"over the {args.budget:g} s budget at a smaller size"
                else:
                    row["wall_s"] = statistics.median(d["wall_s"] for d in done)
                    row["cpu_s"] = statistics.median(d["cpu_s"] for d in done)
                    row["votes"] = done[0]["votes"]
                    row["same_votes_in_every_tree"] = len(answers) == 1
                    if row["wall_s"] > args.budget:
                        over.add((str(tree), kind))
                results.append(row)
                print(json.dumps(row), file=sys.stderr)
    info["loadavg_end"] = list(os.getloadavg())
    commits = {
        str(t): subprocess.run(
            ["git", "-C", str(t), "log", "-1", "--format=%h %s"],
            capture_output=True,
            text=True,
            check=False,
        ).stdout.strip()
        for t in trees
    }
    doc = {
        "benchmark": "votes",
        "machine": info,
        "radius": RADIUS,
        "bits": BITS,
        "method": "fresh subprocess per run; median of rounds, trees interleaved",
        "commits": commits,
        "results": results,
    }
    text = json.dumps(doc, indent=2)
    print(text)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(text + "\n")


if __name__ == "__main__":
    main()
