"""Video deduplication: recall per kind of copy, false pairs, and the cost per second of clip.

Clips are made here, from the real photos scikit-image ships: a camera move (pan and zoom) of
`--seconds` over each photo (640x360, 15 fps, a keyframe a second, as phones write), the
"original" being a cut from its middle. Each original gets the copies people and apps make,
all transcoded from the original file itself (decoded, changed, encoded again):

- ``reencode``: a chat app's re-encode at a much lower quality with x264's default keyframe
  interval (one every 250 frames: the decoder cannot rely on keyframes alone)
- ``resize``: 320x180
- ``trimmed``: the first 2 s cut off
- ``greyscale``, ``sepia``: colour filters
- ``logo``: a small opaque badge in a corner
- ``longer``: a longer cut of the same camera move, holding the original (`contains`)
- ``snippet``: the original with 2 s taken out of its middle
- ``subtitles``: a line of burned-in subtitles in the lower third
- ``voiceover``: the original with a sound track of its own (a tone that comes and goes)

and the distinct clips: every other photo's clips, and ``segment``: another stretch of the
same camera move over the same photo, right after the original's (the hardest distinct pair).

Everything goes through a real `dedupd scan` with the default settings (2 workers); a pair
is found when the store holds a match between its two files (of any kind: video, contains,
exact), and a false pair is any match between files that show different stretches of film.
Moves: a second scan, a dry run with `near: quarantine`, counts per kind the pairs whose copy
(or original) would move with the other kept, once their frames and sound were compared
(`dedupd.cliplikeness`); `wrong_moves` lists the moves that would lose something (an edit,
a sound track, seconds the kept clip lacks; only the plain copies of MAY_MOVE may go, and a
voice-over's silent original).

Cost: `video.hash_video` on one core (CPU time of the calling process: the decode runs in it,
one thread) over 1080p 30 fps H.264 clips of `--cost-seconds` (a camera move over a smooth
photo, and over a fine texture, also at a phone's bitrate), with a keyframe a second (a
phone's file) and with one every 250 frames (a re-encode), the median of `--rounds`.

    .venv/bin/python bench/video.py [--photos 8] [--seconds 24] [--out PATH]

(~4 min on 2 cores, most of it encoding the clips; writes bench/results/video.json)
"""

from __future__ import annotations

import argparse
import itertools
import json
import logging
import os
import statistics
import sys
import tempfile
import time
from dataclasses import replace
from importlib import resources
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # for `tests.clips`

import structlog
from machine import machine_info

from dedupd.actions import Actions
from dedupd.config import DEFAULT_POLICY, Config, HashingConfig
from dedupd.engine import scan
from dedupd.hashers import Hasher
from dedupd.store import Store
from dedupd.video import hash_video, video_key
from tests import clips

PHOTOS = (
    "astronaut.png",
    "chelsea.png",
    "coffee.png",
    "rocket.jpg",
    "motorcycle_left.png",
    "hubble_deep_field.jpg",
    "camera.png",
    "brick.png",
    "retina.jpg",
    "coins.png",
)
SIZE = (640, 360)
FPS = 15
KINDS = (
    "reencode",
    "resize",
    "trimmed",
    "greyscale",
    "sepia",
    "logo",
    "longer",
    "snippet",
    "subtitles",
    "voiceover",
)
# The kinds whose copy may move when the original is kept (the rest are edits, or hold more)
MAY_MOVE = ("reencode", "resize", "trimmed", "snippet")


def _photo(name: str) -> Path:
    return Path(str(resources.files("skimage").joinpath(f"data/{name}")))


def make_clips(folder: Path, photos: int, seconds: float) -> dict[str, tuple[str, str]]:
    """Write the clips; returns file name → (group, role): files of one group show the same
    stretch of film (or one holds the other)."""
    out: dict[str, tuple[str, str]] = {}
    master_dir = folder.parent / "masters"
    third = seconds / 3
    for name in PHOTOS[:photos]:
        stem = Path(name).stem
        master = clips.render(
            _photo(name), master_dir / f"{stem}.mp4", seconds=seconds, size=SIZE, fps=FPS
        )
        a, b = third, 2 * third  # the original: the middle third
        orig = clips.transcode(master, folder / f"{stem}.mp4", keep=[(a, b)], crf=20)
        out[orig.name] = (stem, "original")
        variants: dict[str, tuple[Path, dict[str, Any]]] = {
            "reencode": (orig, {"crf": 36, "gop": 250}),
            "resize": (orig, {"size": (320, 180), "crf": 28}),
            "trimmed": (orig, {"keep": [(2, third)]}),
            "greyscale": (orig, {"frame": clips.greyscale}),
            "sepia": (orig, {"frame": clips.sepia}),
            "logo": (orig, {"frame": clips.logo}),
            "longer": (master, {"keep": [(a - third / 2, b)]}),
            "snippet": (orig, {"keep": [(0, third / 2 - 1), (third / 2 + 1, third)]}),
        }
        variants["subtitles"] = (orig, {"frame": clips.subtitles})
        for kind, (src, how) in variants.items():
            ext = ".mov" if kind in ("reencode", "resize") else ".mp4"
            made = clips.transcode(src, folder / f"{stem}-{kind}{ext}", **how)
            out[made.name] = (stem, kind)
        voiced = clips.with_sound(orig, folder / f"{stem}-voiceover.mp4", crf=28)
        out[voiced.name] = (stem, "voiceover")
        segment = clips.transcode(master, folder / f"{stem}-segment.mp4", keep=[(b, seconds)])
        out[segment.name] = (f"{stem}-segment", "segment")
    return out


def accuracy(folder: Path, files: dict[str, tuple[str, str]], db: Path) -> dict[str, object]:
    config = replace(Config(), database=db, hashing=HashingConfig(workers=2))
    config = config.with_roots([folder])
    started = time.perf_counter()
    with Store(db) as store:
        report = scan(config, store)
        key = video_key(Hasher("phash", 16), config.hashing.video_fps)
        names = {r.id: r.relpath for r in store.files(range(1, 10 * len(files))).values()}
        edges = {
            frozenset((names[a], names[b])): kind for a, b, _, kind, _ in store.match_edges(key)
        }
    seconds = time.perf_counter() - started
    per_kind: dict[str, dict[str, object]] = {}
    for kind in KINDS:
        pairs = [
            (orig, name)
            for name, (group, role) in files.items()
            if role == kind
            for orig, (g, r) in files.items()
            if r == "original" and g == group
        ]
        found = [edges.get(frozenset(p)) for p in pairs]
        per_kind[kind] = {
            "pairs": len(pairs),
            "found": sum(f is not None for f in found),
            "as": dict(sorted((k, found.count(k)) for k in set(found) if k is not None)),
            "missed": [p[1] for p, f in zip(pairs, found, strict=True) if f is None],
        }
    moves, move_seconds = _moves(folder, files, db.with_name("moves.db"))
    for kind in KINDS:
        per_kind[kind]["moved"] = moves.get(kind, {})
    false = sorted(sorted(pair) for pair in edges if len({files[n][0] for n in pair}) > 1)
    total = sum(int(str(v["pairs"])) for v in per_kind.values())
    hit = sum(int(str(v["found"])) for v in per_kind.values())
    distinct = sum(1 for a, b in itertools.combinations(files, 2) if files[a][0] != files[b][0])
    return {
        "files": len(files),
        "failed": [(p, f.kind, f.message) for p, f in report.failed],
        "scan_seconds": round(seconds, 1),
        "recall": round(hit / total, 4),
        "duplicate_pairs": total,
        "found": hit,
        "per_kind": per_kind,
        "distinct_pairs": distinct,
        "false_pairs": false,
        "moves_scan_seconds": round(move_seconds, 1),
        "wrong_moves": sorted(
            f"{kind}: {who} of {group}"
            for kind, m in moves.items()
            if kind in KINDS
            for who, groups in m.items()
            if _wrong(kind, who)
            for group in groups
        ),
        "moves_between_copies": moves.get("between copies", {}),
        # the copies that may move and did not, with their last decision
        "copies_that_stayed": moves.get("stayed", {}),
    }


def _wrong(kind: str, moved: str) -> bool:
    """Whether moving `moved` ("original" or "copy") of a pair of `kind` loses something:
    a copy that may move moves when the original stays; a voice-over's silent original may
    move (the copy holds its frames, and sound besides); nothing else may."""
    if kind in MAY_MOVE:
        return moved != "copy"
    return not (kind == "voiceover" and moved == "original")


def _moves(
    folder: Path, files: dict[str, tuple[str, str]], db: Path
) -> tuple[dict[str, dict[str, list[str]]], float]:
    """A dry run with `near: quarantine`: per kind, the photos whose pair moved the copy
    ("copy") or the original ("original") with the other kept, once the frames and sound
    were compared (`cliplikeness`); and the scan's seconds."""
    config = replace(
        Config(),
        database=db,
        hashing=HashingConfig(workers=2),
        dry_run=True,
        quarantine=replace(Config().quarantine, path=folder.parent / "quarantine"),
    )
    policy = replace(config.policies[DEFAULT_POLICY], exact="quarantine", near="quarantine")
    config = replace(config, policies={**config.policies, DEFAULT_POLICY: policy})
    config = config.with_roots([folder])
    started = time.perf_counter()
    with Store(db) as store:
        report = scan(config, store, actions=Actions(store, config.quarantine.path))
    seconds = time.perf_counter() - started
    out: dict[str, dict[str, list[str]]] = {}
    last: dict[str, str] = {}  # a copy that may move: what its last decision said
    for o in report.outcomes:
        d = o.decision
        name = os.path.relpath(o.path, folder)
        if files.get(name, ("", ""))[1] in MAY_MOVE:
            against = d.keeper.relpath if d.keeper is not None else "-"
            last[name] = f"{d.action} ({o.result}), kept {against}: {d.rule}"[:300]
        if d.kind != "video" or d.action != "quarantine" or d.target is None or d.keeper is None:
            continue
        (group, role), (kept_group, kept_role) = files[d.target.relpath], files[d.keeper.relpath]
        if group != kept_group:
            continue  # two stretches of film: counted as false pairs
        if "original" not in (role, kept_role):
            between = out.setdefault("between copies", {})
            between.setdefault(f"{role} moved, {kept_role} kept", []).append(group)
            continue
        kind = kept_role if role == "original" else role
        who = "original" if role == "original" else "copy"
        out.setdefault(kind, {}).setdefault(who, []).append(group)
    stayed = out.setdefault("stayed", {})
    for name, why in sorted(last.items()):
        group, role = files[name]
        if group not in out.get(role, {}).get("copy", []):  # not moved with the original kept
            stayed.setdefault(role, []).append(f"{group}: {why}")
    return out, seconds


def cost(folder: Path, seconds: float, rounds: int) -> dict[str, object]:
    """CPU seconds of `hash_video` per second of 1080p H.264 clip, on one core: over a smooth
    photo (astronaut) and a fine texture (grass, which costs the decoder the most)."""
    hasher = Hasher("phash", 16)
    out: dict[str, object] = {}
    for (source, label, crf), gop in itertools.product(
        (
            ("astronaut.png", "smooth", 23),
            ("grass.png", "texture", 23),
            ("grass.png", "texture_phone_bitrate", 8),  # ~17-20 Mbit/s, as phones record
        ),
        (30, 250),
    ):
        label = f"{label}_keyframe_every_{'1s' if gop == 30 else '250_frames'}"
        path = clips.render(
            _photo(source),
            folder / f"1080p-{label}.mp4",
            seconds=seconds,
            size=(1920, 1080),
            fps=30,
            gop=gop,
            crf=crf,
        )
        hash_video(str(path), hasher, max_pixels=10**9)  # warm: imports, first open
        times = []
        for _ in range(rounds):
            t = time.process_time()
            clip = hash_video(str(path), hasher, max_pixels=10**9)
            times.append(time.process_time() - t)
        per_second = statistics.median(times) / clip.duration
        out[label] = {
            "clip_seconds": clip.duration,
            "frames_kept": len(clip.frames),
            "frames_sampled": clip.sampled,
            "cpu_seconds": round(statistics.median(times), 3),
            "cost_per_clip_second": round(per_second, 4),
            "megabits_per_second": round(path.stat().st_size * 8 / 1e6 / clip.duration, 2),
        }
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--photos", type=int, default=8)
    parser.add_argument("--seconds", type=float, default=24.0)
    parser.add_argument("--cost-seconds", type=float, default=10.0)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument(
        "--out", type=Path, default=Path(__file__).resolve().parent / "results" / "video.json"
    )
    args = parser.parse_args()
    structlog.configure(  # one event per decision would swamp the JSON on stdout
        wrapper_class=structlog.make_filtering_bound_logger(logging.WARNING),
    )
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp) / "clips"
        started = time.perf_counter()
        files = make_clips(folder, args.photos, args.seconds)
        made = time.perf_counter() - started
        result = {
            "machine": machine_info(),
            "settings": {
                "photos": args.photos,
                "seconds": args.seconds,
                "size": SIZE,
                "fps": FPS,
                "video_fps": HashingConfig().video_fps,
            },
            "make_seconds": round(made, 1),
            "accuracy": accuracy(folder, files, Path(tmp) / "dedupd.db"),
            "cost_1080p_h264_one_core": cost(Path(tmp), args.cost_seconds, args.rounds),
        }
    text = json.dumps(result, indent=2)
    print(text)
    if args.out:
        args.out.write_text(text + "\n")


if __name__ == "__main__":
    main()
