"""What a light command costs: interpreter start, imports, and an unchanged rescan.

For each source tree given (--tree, repeatable; default this tree only), interleaved round by
round with the order alternating, each command run as a fresh subprocess with the tree first
on PYTHONPATH (and as its working directory) and an empty config (DEDUPD_CONFIG):

- `python -m dedupd scan --help` and `dedupctl --help` (`python -c "from dedupd.cli import
  dedupctl; dedupctl()" --help`): start-up and imports only;
- `python -m dedupd scan DIR --database DB --json` on a folder of --photos JPEGs (copies and
  variants of the five test photos) already scanned once: the unchanged rescan, where
  nothing is decoded;
- `python -X importtime -c "import dedupd.cli"`: the import time the interpreter reports
  (sum of the top-level cumulative times), and which heavy packages were imported.

    .venv/bin/python bench/imports.py [--rounds 7] [--photos 200] [--tree DIR ...]
                                      [--out bench/results/imports.json]

Prints JSON and writes it to --out.
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
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # for `tests.photos`

from machine import machine_info

from tests import photos

ROOT = Path(__file__).resolve().parent.parent
DEFAULT_OUT = ROOT / "bench" / "results" / "imports.json"
HEAVY = ("scipy", "PIL", "pillow_heif", "imagehash", "numpy", "sqlite_utils", "watchdog")


def _run(cmd: list[str], tree: Path, env: dict[str, str]) -> tuple[float, str, str]:
    t0 = time.perf_counter()
    proc = subprocess.run(
        cmd,
        capture_output=True,
        text=True,
        cwd=tree,
        env={**env, "PYTHONPATH": str(tree)},
        check=False,
    )
    wall = time.perf_counter() - t0
    if proc.returncode != 0:
        raise RuntimeError(f"{cmd} in {tree} exited {proc.returncode}: {proc.stderr[-2000:]}")
    return wall, proc.stdout, proc.stderr


def _import_profile(tree: Path, env: dict[str, str]) -> dict[str, Any]:
    _, _, err = _run([sys.executable, "-X", "importtime", "-c", "import dedupd.cli"], tree, env)
    total_us, loaded = 0, set()
    for line in err.splitlines():
        if not line.startswith("import time:") or "|" not in line:
            continue
        _, cumulative, name = line.split("|")
        if not cumulative.strip().isdigit():
            continue
        if not name.startswith("  "):  # a top-level import: its cumulative time counts once
            total_us += int(cumulative)
        loaded.add(name.strip().split(".")[0])
    return {"import_ms": total_us / 1000, "heavy": sorted(h for h in HEAVY if h in loaded)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--photos", type=int, default=200)
    parser.add_argument("--tree", type=Path, action="append")
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT)
    args = parser.parse_args()
    trees = [t.resolve() for t in (args.tree or [ROOT])]
    info = machine_info()
    with tempfile.TemporaryDirectory(prefix="dedupd-bench-imports-") as tmp:
        work = Path(tmp)
        (work / "empty.yaml").write_text("")
        env = {**os.environ, "DEDUPD_CONFIG": str(work / "empty.yaml")}
        folder = work / "photos"
        makers = [photos.copy, photos.reencode, photos.resize]
        for i in range(args.photos):
            name = photos.PHOTOS[i % len(photos.PHOTOS)]
            maker = makers[(i // len(photos.PHOTOS)) % len(makers)]
            maker(photos.photo(name), folder / f"{i // 50:02}" / f"IMG_{i:04}.jpg")
        commands = {
            "scan_help": [sys.executable, "-m", "dedupd", "scan", "--help"],
            "dedupctl_help": [
                sys.executable,
                "-c",
                "from dedupd.cli import dedupctl; dedupctl(prog_name='dedupctl')",
                "--help",
            ],
        }
        samples: dict[str, dict[str, list[float]]] = {
            str(t): {k: [] for k in [*commands, "unchanged_rescan"]} for t in trees
        }
        databases = {}
        for i, tree in enumerate(trees):
            db = work / f"db-{i}.sqlite"
            scan = [sys.executable, "-m", "dedupd", "scan", str(folder), "--database", str(db)]
            _run([*scan, "--json"], tree, env)  # the first scan, which decodes
            databases[str(tree)] = [*scan, "--json"]
        for r in range(args.rounds):
            for tree in trees if r % 2 == 0 else list(reversed(trees)):
                s = samples[str(tree)]
                for name, cmd in commands.items():
                    s[name].append(_run(cmd, tree, env)[0])
                wall, out, _ = _run(databases[str(tree)], tree, env)
                report = json.loads(out)
                if report["hashed"]:
                    raise RuntimeError(f"the rescan in {tree} decoded {report['hashed']} files")
                s["unchanged_rescan"].append(wall)
        shutil.rmtree(folder)
        results = []
        for tree in trees:
            commit = subprocess.run(
                ["git", "-C", str(tree), "log", "-1", "--format=%h %s"],
                capture_output=True,
                text=True,
                check=False,
            ).stdout.strip()
            medians = {k: statistics.median(v) for k, v in samples[str(tree)].items()}
            results.append(
                {
                    "tree": str(tree),
                    "commit": commit,
                    **{f"{k}_s": v for k, v in medians.items()},
                    **_import_profile(tree, env),
                    "rounds": samples[str(tree)],
                }
            )
    info["loadavg_end"] = list(os.getloadavg())
    doc = {
        "benchmark": "imports",
        "machine": info,
        "photos": args.photos,
        "method": "fresh subprocess per command; medians of rounds, trees interleaved",
        "results": results,
    }
    text = json.dumps(doc, indent=2)
    print(text)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(text + "\n")
    for res in results:
        print(
            f"{res['commit'][:7]}: scan --help {res['scan_help_s']:.3f} s, dedupctl --help "
            f"{res['dedupctl_help_s']:.3f} s, unchanged rescan of {args.photos} "
            f"{res['unchanged_rescan_s']:.3f} s, import dedupd.cli {res['import_ms']:.0f} ms "
            f"{res['heavy']}",
            file=sys.stderr,
        )


if __name__ == "__main__":
    main()
