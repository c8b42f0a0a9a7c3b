"""Accuracy of every perceptual hasher on real photos: duplicates found vs. distinct photos merged.

Data: real photographs that ship inside installed packages, never downloaded at run time
(``pip install scikit-image scikit-learn matplotlib``):

- scikit-image: the image files in ``skimage/data/`` that are photographs (see ``SKIMAGE``;
  drawings, synthetic images and the hologram phase image are skipped, see ``SKIPPED``). The
  package's fetchers, which download, are never called: files are read from the wheel.
- scikit-learn: ``sklearn/datasets/images/`` china.jpg and flower.jpg (what
  ``load_sample_images()`` reads).
- matplotlib: ``mpl-data/sample_data/grace_hopper.jpg``.

Each photo is an *original*: upscaled (Lanczos) so its long side is --long-side px (default
1600) and saved as a quality-92 JPEG, like a camera file. From the decoded original, Pillow
(+ pillow-heif) makes the variants a photo folder collects (``VARIANTS``): JPEG re-encodes at
quality 95/85/70/50; resizes to 50% and 25%; pixels stored turned with an EXIF orientation tag
so the upright view is the same; PNG, WebP and HEIC; centred crops removing 2/5/10% of each
dimension; brightness and contrast ±10% and ±20%; a text watermark covering ~5% of the area
in a corner; a phone screenshot (the photo fitted into a 9:19.5 black or white canvas, bare or
with a status-bar strip of icons along the top, `tests.photos.draw_status_bar`); and true
rotations by 90°/180°/270° and a horizontal flip (pixels changed, no EXIF to undo it).

Positives: (original, variant) for every variant. Every pair is scored twice: *isometric*
(dedupd's default, policy ``isometric: true``): the newcomer's 8 rotations and mirrors
(``hash_image(...).variants``) are compared with the stored hash and the nearest counts, for
positives and negatives alike; and *upright* (``isometric: false``): the plain hashes. Isometric
results are the main tables and fold rotate/flip into "overall"; upright results leave the
family ``rotate_flip`` out of "overall" (no hasher is rotation-invariant on its own) and are in
the JSON under ``hashers_upright``, with a comparison table in the markdown.

Negatives: every pair of distinct originals; every original vs every variant of every other
original; and hard negatives, one pair each: the motorcycle_left/right stereo pair (the same
scene shot twice), the left third vs the right third of each photo (each upscaled to the long
side), and burst-like neighbours (two crops of 85% of the width, offset by 15%). Each stereo
original vs the other's variants (``stereo_variants``) is reported but left out of the FPR:
those ~2x27 pairs all repeat the one stereo pair, and counting them would let that single
scene set every operating point. The cross-variant negatives are many but correlated too
(variants of one photo hash alike), so the FPR resolution is coarser than 1/N suggests; the
counts are reported.

Flat negatives (tests/photos.py ``flat_images``): two text screenshots of one layout in light
and in dark mode, two documents, two solid colours, two gradients, two near-uniform frames;
each pair of them (``flat``) and each vs every original (``flat_vs_photo``) is a negative,
reported but not counted in a hasher's FPR: hashes alone cannot tell them apart (solid colours
and gradients share one pHash), dedupd's guard must. A JPEG q85 re-encode of each is a true
duplicate (``flat_reencode``), judged only in the second-opinion section.

Second opinion: dedupd's guarded decision on every pair, at the defaults and around them. A
near match (pHash 16x16 within its threshold) *moves* a file only if PDQ agrees within its
own threshold and neither image is low-detail (``dedupd.hashers.LOW_DETAIL_QUALITY``,
``LOW_DETAIL_DOMINANT``); else it is only *reported*. Reported per kind (matched / moved /
only reported), with every negative pair matched and its fate, and the bounds the defaults are
chosen from: the smallest threshold at which each hasher alone finds 98% of every kind but
crops, rotations/mirrors and screenshots, and the largest at which it matches no counted
negative.

Hashing goes through dedupd's own path: each image is written to a temporary file and hashed by
``dedupd.imaging.hash_image(path, hashers, max_pixels=10**9)`` (JPEG draft decoding, EXIF
orientation applied), one call per file for all hashers that reduce the image alike (the same
``draft_side``), so each sees what it sees when a config names it alone: every algorithm in
``dedupd.hashers.HASHERS`` at --sizes (default 8,16), colorhash at --color-sizes (default 3,8;
its size is bits per colour bin). Distances are ``dedupd.index.distance`` in bits; a pair
matches at normalized threshold t when distance <= ``Hasher.radius(t)``, exactly as dedupd
decides.

Metrics per hasher and size, for t = 0.00..0.40 in steps of 0.01: recall per variant kind
and per family, overall recall (without rotate_flip), false positives per negative kind, FPR
over all negatives, precision (which depends on this data set's positive:negative mix). The
*operating point* is the largest t with FPR < 0.1%; it is the recommended default threshold,
reported with the recall it gives per kind, the photos each kind missed, and the negative
pairs it merges. Because recall is flat over a wide range while false positives rise steeply,
two more thresholds are given: the smallest with the same overall recall as the operating
point, and the largest with no false positive at all. Also reported: each hasher at dedupd's
provisional default threshold, and the "seed-style" setting of the project dedupd descends
from: pHash 8x8 at 10 bits (10/64).

Crops: a section of its own (``bench/crop_accuracy.py``, whose docstring has the details):
crops keeping 20-95% of the frame (centred, off-centre, square and 4:5, re-encoded and
resized, a screenshot showing the photo in an app's interface) found by the crop stage, recall
per bucket of kept area, false links among the originals and their quarters, and burst shots
that must not become crops. ``--no-crops`` skips it, ``--crops-only`` runs it alone (written
to accuracy-crops.json/.md). The hash sections above call ``hash_image(..., features=False)``:
the crop stage's features are not theirs to pay for.

Run from the repository root (the default run takes about 2 minutes on 2 cores, and the crop
section 2 more):

    .venv/bin/pip install scikit-image scikit-learn matplotlib
    .venv/bin/python bench/accuracy.py [--sizes 8,16] [--color-sizes 3,8] [--long-side 1600]
                                       [--out-dir bench/results] [--jobs 1] [--quick]
                                       [--no-crops | --crops-only]

Writes accuracy.json and accuracy.md to --out-dir (default bench/results; ``--quick``, a smoke
run on 6 photos and 10 variant kinds, writes accuracy-quick.json/.md, by default to the system
temp directory so it never replaces the real results) and prints the markdown to stdout
(``--stdout json`` prints the JSON instead); progress goes to stderr.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from importlib import resources
from importlib.metadata import PackageNotFoundError, version
from itertools import combinations
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # for `dedupd` from a checkout

import crop_accuracy
import pillow_heif
from machine import machine_info
from PIL import Image, ImageDraw, ImageEnhance, ImageFont

from dedupd.hashers import HASHERS, LOW_DETAIL_DOMINANT, LOW_DETAIL_QUALITY, Hasher
from dedupd.imaging import hash_image
from dedupd.index import distance
from tests import photos as test_photos

pillow_heif.register_heif_opener()

ROOT = Path(__file__).resolve().parent.parent
MAX_PIXELS = 10**9
ORIGINAL_QUALITY = 92  # the "camera" JPEG every variant is made from
VARIANT_QUALITY = 90  # JPEG quality of variants that are not about compression
THRESHOLDS = [round(i / 100, 2) for i in range(41)]  # normalized, 0.00..0.40
MAX_FPR = 0.001  # operating point: largest threshold with FPR strictly below this
SEED_HASHER = ("phash", 8)
SEED_RADIUS = 10  # bits of 64: the threshold the ancestor project documented
ORIENTATION = 0x0112
STEREO = ("motorcycle_left", "motorcycle_right")
# Negatives reported but left out of FPR and precision. The flat ones (text screenshots,
# documents, solid colours, gradients, near-uniform frames: tests/photos.py flat_images) are
# judged in the "second opinion" section: hashes alone cannot tell them apart, the guard must.
NOT_COUNTED = ("stereo_variants", "flat", "flat_vs_photo")
FLAT = "flat"  # the pseudo-photo whose files are the flat images

# --- Data -------------------------------------------------------------------------------------

# skimage/data files that are photographs (or a scan/micrograph a camera roll could hold).
SKIMAGE = {
    "astronaut": "astronaut.png",
    "camera": "camera.png",
    "chelsea": "chelsea.png",
    "coffee": "coffee.png",
    "rocket": "rocket.jpg",
    "hubble_deep_field": "hubble_deep_field.jpg",
    "motorcycle_left": "motorcycle_left.png",
    "motorcycle_right": "motorcycle_right.png",
    "brick": "brick.png",
    "grass": "grass.png",
    "gravel": "gravel.png",
    "retina": "retina.jpg",
    "moon": "moon.png",
    "ihc": "ihc.png",
    "coins": "coins.png",
    "page": "page.png",
    "text": "text.png",
    "clock_motion": "clock_motion.png",
}
SKIPPED = {
    "skimage/data/horse.png": "binary silhouette drawing",
    "skimage/data/logo.png": "logo drawing",
    "skimage/data/color.png": "synthetic colour wheel",
    "skimage/data/chessboard_GRAY.png": "synthetic",
    "skimage/data/chessboard_RGB.png": "synthetic",
    "skimage/data/phantom.png": "synthetic Shepp-Logan phantom",
    "skimage/data/cell.png": "phase image from a digital hologram, not a photograph",
    "skimage/data/microaneurysms.png": "102x102 px detail, too small to be a photo",
    "skimage/data/*.npy|*.npz|*.tif|*.gif": "not single photographs",
    "matplotlib sample_data/Minduka_Present_Blue_Pack.png": "128x128 icon drawing",
    "matplotlib sample_data/logo2.png": "logo drawing",
}
QUICK_PHOTOS = ("astronaut", "chelsea", "coffee", *STEREO, "china")


@dataclass(frozen=True, slots=True)
class Source:
    name: str
    package: str  # import name
    relpath: str  # path inside the package

    def path(self) -> Path:
        if self.package == "matplotlib":
            import matplotlib

            return Path(matplotlib.get_data_path()) / self.relpath
        return Path(str(resources.files(self.package).joinpath(self.relpath)))


def sources() -> list[Source]:
    found = [Source(n, "skimage", f"data/{f}") for n, f in SKIMAGE.items()]
    found += [Source(n, "sklearn.datasets", f"images/{n}.jpg") for n in ("china", "flower")]
    found.append(Source("grace_hopper", "matplotlib", "sample_data/grace_hopper.jpg"))
    return found


def _dist_version(package: str) -> str | None:
    dist = {"skimage": "scikit-image", "sklearn.datasets": "scikit-learn"}.get(package, package)
    try:
        return version(dist)
    except PackageNotFoundError:
        return None


# --- Variants ---------------------------------------------------------------------------------


def _jpeg(im: Image.Image, dst: Path, quality: int = VARIANT_QUALITY, **kw: Any) -> Path:
    im.save(dst, format="JPEG", quality=quality, **kw)
    return dst


def _png(im: Image.Image, dst: Path) -> Path:
    im.save(dst, format="PNG", compress_level=1)  # lossless at any level; 1 is fast
    return dst


def _reencode(quality: int) -> Callable[[Image.Image, Path], Path]:
    return lambda im, dst: _jpeg(im, dst, quality)


def _resize(factor: float) -> Callable[[Image.Image, Path], Path]:
    def make(im: Image.Image, dst: Path) -> Path:
        size = (max(1, round(im.width * factor)), max(1, round(im.height * factor)))
        return _jpeg(im.resize(size, Image.Resampling.LANCZOS), dst)

    return make


def _exif_orientation(im: Image.Image, dst: Path) -> Path:
    """Pixels stored turned 90° counter-clockwise with EXIF orientation 6 (as phones write
    them): upright, the same picture (tests/photos.py exif_rotated)."""
    exif = Image.Exif()
    exif[ORIENTATION] = 6
    return _jpeg(im.transpose(Image.Transpose.ROTATE_90), dst, exif=exif)


def _webp(im: Image.Image, dst: Path) -> Path:
    im.save(dst, format="WEBP", quality=80)
    return dst


def _heic(im: Image.Image, dst: Path) -> Path:
    im.save(dst, format="HEIF", quality=85)
    return dst


def _heic_thumbnail(im: Image.Image, dst: Path) -> Path:
    """HEIC with an embedded thumbnail whose long side is 320 px (an iPhone's 320x240)."""
    im.save(dst, format="HEIF", quality=85, thumbnails=[320])
    return dst


# The kind hashed from a full decode of the same HEIC-with-thumbnail file (what confirms a
# move in dedupd): `heic_thumbnail_check` compares its decisions with the thumbnail's.
HEIC_FULL = "heic_thumbnail_full"


def _crop(fraction: float) -> Callable[[Image.Image, Path], Path]:
    """Centred crop removing `fraction` of the width and of the height (half per border)."""

    def make(im: Image.Image, dst: Path) -> Path:
        dx, dy = round(im.width * fraction / 2), round(im.height * fraction / 2)
        return _jpeg(im.crop((dx, dy, im.width - dx, im.height - dy)), dst)

    return make


def _enhance(
    enhancer: type[ImageEnhance.Brightness] | type[ImageEnhance.Contrast], factor: float
) -> Callable[[Image.Image, Path], Path]:
    return lambda im, dst: _jpeg(enhancer(im).enhance(factor), dst)


WATERMARK_TEXT = "© J. Doe 2026"
WATERMARK_AREA = 0.05


def _watermark(im: Image.Image, dst: Path) -> Path:
    """White text with a dark outline in the bottom-right corner; its box covers ~5% of the
    image."""
    out = im.copy()
    draw = ImageDraw.Draw(out)
    size = 40
    for _ in range(3):  # text area grows with size²: converge on the target area
        font = ImageFont.load_default(size=size)
        stroke = max(1, size // 16)
        left, top, right, bottom = draw.textbbox((0, 0), WATERMARK_TEXT, font, stroke_width=stroke)
        area = (right - left) * (bottom - top)
        size = max(8, round(size * math.sqrt(WATERMARK_AREA * im.width * im.height / area)))
    font = ImageFont.load_default(size=size)
    stroke = max(1, size // 16)
    left, top, right, bottom = draw.textbbox((0, 0), WATERMARK_TEXT, font, stroke_width=stroke)
    margin = round(0.02 * min(im.size))
    xy = (im.width - margin - right, im.height - margin - bottom)
    draw.text(xy, WATERMARK_TEXT, fill="white", font=font, stroke_width=stroke, stroke_fill="black")
    return _jpeg(out, dst)


def _screenshot(colour: str, status_bar: bool = False) -> Callable[[Image.Image, Path], Path]:
    """The photo as seen on a phone: fitted into a 9:19.5 portrait canvas (with a status bar
    of clock, signal and battery icons over the top 3.5%), saved as PNG."""

    def make(im: Image.Image, dst: Path) -> Path:
        height = max(im.size)
        width = round(height * 9 / 19.5)
        scale = min(width / im.width, height / im.height)
        fitted = im.resize(
            (round(im.width * scale), round(im.height * scale)), Image.Resampling.LANCZOS
        )
        canvas = Image.new("RGB", (width, height), colour)
        canvas.paste(fitted, ((width - fitted.width) // 2, (height - fitted.height) // 2))
        if status_bar:
            test_photos.draw_status_bar(canvas, colour)
        return _png(canvas, dst)

    return make


def _transpose(method: Image.Transpose) -> Callable[[Image.Image, Path], Path]:
    return lambda im, dst: _jpeg(im.transpose(method), dst)


# kind: (family, description, make). Families group kinds in the summary.
VARIANTS: dict[str, tuple[str, str, Callable[[Image.Image, Path], Path]]] = {
    **{
        f"jpeg_q{q}": ("reencode", f"JPEG re-encode at quality {q}", _reencode(q))
        for q in (95, 85, 70, 50)
    },
    "resize_50": ("resize", "50% per side, Lanczos, JPEG q90", _resize(0.5)),
    "resize_25": ("resize", "25% per side, Lanczos, JPEG q90", _resize(0.25)),
    "exif_orientation": (
        "exif",
        "pixels turned 90° CCW + EXIF orientation 6 (same upright view), JPEG q90",
        _exif_orientation,
    ),
    "png": ("format", "PNG", _png),
    "webp": ("format", "WebP quality 80", _webp),
    "heic": ("format", "HEIC quality 85 (pillow-heif)", _heic),
    "heic_thumbnail": (
        "format",
        "HEIC quality 85 with a 320 px thumbnail, hashed from the thumbnail when it is a "
        "scaled copy at least 240 px on its short side (dedupd's fast path)",
        _heic_thumbnail,
    ),
    HEIC_FULL: (
        "format",
        "the same HEIC with a thumbnail, hashed from a full decode (thumbnails=False)",
        _heic_thumbnail,
    ),
    **{
        f"crop_{p}": (
            "crop",
            f"centred crop removing {p}% of width and height ({p / 2:g}% per border), JPEG q90",
            _crop(p / 100),
        )
        for p in (2, 5, 10)
    },
    **{
        f"{name}_{sign}{p}": (
            "tone",
            f"{name} x{1 + int(sign + '1') * p / 100:g} (PIL.ImageEnhance), JPEG q90",
            _enhance(enhancer, 1 + int(sign + "1") * p / 100),
        )
        for name, enhancer in (
            ("brightness", ImageEnhance.Brightness),
            ("contrast", ImageEnhance.Contrast),
        )
        for p in (10, 20)
        for sign in ("+", "-")
    },
    "watermark": (
        "watermark",
        f"text {WATERMARK_TEXT!r} bottom-right, box ~5% of the area, JPEG q90",
        _watermark,
    ),
    "screenshot_black": (
        "screenshot",
        "fitted into a black 9:19.5 portrait canvas (phone screenshot), PNG",
        _screenshot("black"),
    ),
    "screenshot_white": (
        "screenshot",
        "fitted into a white 9:19.5 portrait canvas (phone screenshot), PNG",
        _screenshot("white"),
    ),
    "screenshot_black_statusbar": (
        "screenshot",
        "black 9:19.5 canvas with a status bar (time, signal, battery) on top, PNG",
        _screenshot("black", status_bar=True),
    ),
    "screenshot_white_statusbar": (
        "screenshot",
        "white 9:19.5 canvas with a status bar (time, signal, battery) on top, PNG",
        _screenshot("white", status_bar=True),
    ),
    "rotate_90": (
        "rotate_flip",
        "pixels rotated 90° CCW, no EXIF: a truly rotated copy, JPEG q90",
        _transpose(Image.Transpose.ROTATE_90),
    ),
    "rotate_180": (
        "rotate_flip",
        "pixels rotated 180°, no EXIF, JPEG q90",
        _transpose(Image.Transpose.ROTATE_180),
    ),
    "rotate_270": (
        "rotate_flip",
        "pixels rotated 270° CCW (90° clockwise), no EXIF, JPEG q90",
        _transpose(Image.Transpose.ROTATE_270),
    ),
    "hflip": (
        "rotate_flip",
        "mirrored left-right, JPEG q90",
        _transpose(Image.Transpose.FLIP_LEFT_RIGHT),
    ),
}
UNMATCHABLE_FAMILY = "rotate_flip"  # matchable only with isometric matching
ISO = "@variants"  # suffix of a hasher label holding the file's 8 variant hashes
QUICK_VARIANTS = (
    "jpeg_q70",
    "resize_50",
    "exif_orientation",
    "heic",
    "heic_thumbnail",
    HEIC_FULL,
    "crop_5",
    "brightness_+10",
    "watermark",
    "screenshot_black",
    "screenshot_white_statusbar",
    "rotate_90",
    "hflip",
)
HARD_NEGATIVES = {
    "far_crops": "left third vs right third of one photo, each upscaled to the long side",
    "burst": "two crops of 85% of the width, offset by 15% (burst-like neighbours)",
    "stereo": "motorcycle_left vs motorcycle_right (stereo pair: the same scene shot twice)",
    "stereo_variants": (
        "each stereo original vs the other's variants: reported, not counted in FPR/precision"
    ),
    "flat": (
        "each pair of flat images (text screenshots, documents, solid colours, gradients, "
        "near-uniform frames): reported, not counted; judged in the second-opinion section"
    ),
    "flat_vs_photo": "each flat image vs each original: reported, not counted",
}


def _upscale(im: Image.Image, long_side: int) -> Image.Image:
    scale = long_side / max(im.size)
    size = (max(1, round(im.width * scale)), max(1, round(im.height * scale)))
    return im.resize(size, Image.Resampling.LANCZOS)


# --- Hashing (one worker task per original) ---------------------------------------------------


def make_hashers(sizes: Sequence[int], color_sizes: Sequence[int]) -> list[Hasher]:
    return [
        Hasher(alg, size)
        for alg in HASHERS
        for size in {"colorhash": color_sizes, "pdq": [16]}.get(alg, sizes)
    ]


def label(h: Hasher) -> str:
    return f"{h.algorithm}:{h.hash_size}"


def process(
    source: Source, kinds: Sequence[str], long_side: int, hasher_specs: Sequence[tuple[str, int]]
) -> dict[str, Any]:
    """Make the original, its variants and its hard-negative crops; hash every file once."""
    hashers = [Hasher(alg, size) for alg, size in hasher_specs]  # type: ignore[arg-type]
    started = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="dedupd-accuracy-") as tmp_name:
        tmp = Path(tmp_name)
        with Image.open(source.path()) as raw:
            raw_size, raw_mode = raw.size, raw.mode
            upscaled = _upscale(raw.convert("RGB"), long_side)
        original = _jpeg(upscaled, tmp / "original.jpg", ORIGINAL_QUALITY)
        with Image.open(original) as decoded:
            base = decoded.convert("RGB")

        hashes: dict[str, dict[str, str]] = {}
        dims: dict[str, list[int]] = {}
        nbytes: dict[str, int] = {}
        detail: dict[str, dict[str, Any]] = {}

        def record(name: str, path: Path) -> None:
            thumbnails = name != HEIC_FULL
            hashes[name], detail[name], dims[name] = hash_file(path, hashers, thumbnails)
            nbytes[name] = path.stat().st_size
            path.unlink()

        record("original", original)
        for kind in kinds:
            make = VARIANTS[kind][2]
            suffix = {"png": ".png", "webp": ".webp"}.get(kind, ".jpg")
            if kind.startswith("heic"):
                suffix = ".heic"
            if kind.startswith("screenshot"):
                suffix = ".png"
            record(kind, make(base, tmp / f"{kind}{suffix}"))

        w, h = base.size
        third = w // 3
        left = _upscale(base.crop((0, 0, third, h)), long_side)
        right = _upscale(base.crop((w - third, 0, w, h)), long_side)
        record("far_left", _jpeg(left, tmp / "far_left.jpg", ORIGINAL_QUALITY))
        record("far_right", _jpeg(right, tmp / "far_right.jpg", ORIGINAL_QUALITY))
        span = round(0.85 * w)
        burst_a = base.crop((0, 0, span, h))
        burst_b = base.crop((w - span, 0, w, h))
        record("burst_a", _jpeg(burst_a, tmp / "burst_a.jpg", ORIGINAL_QUALITY))
        record("burst_b", _jpeg(burst_b, tmp / "burst_b.jpg", ORIGINAL_QUALITY))
    return {
        "name": source.name,
        "raw_size": list(raw_size),
        "raw_mode": raw_mode,
        "size": list(base.size),
        "hashes": hashes,
        "detail": detail,
        "dims": dims,
        "bytes": nbytes,
        "seconds": time.perf_counter() - started,
    }


def hash_file(
    path: Path, hashers: Sequence[Hasher], thumbnails: bool = True
) -> tuple[dict[str, str], dict[str, Any], list[int]]:
    """Every hasher's hash of `path` and of its 8 rotations and mirrors (hex), PDQ's quality
    and the dominant-tone share, and the upright size. One `hash_image` call per draft side,
    so each hasher sees the decode it gets when a config names it alone (one call for all
    would give every hasher the largest side any of them needs)."""
    groups: dict[int, list[Hasher]] = {}
    for h in hashers:
        groups.setdefault(h.draft_side, []).append(h)
    hashes: dict[str, str] = {}
    detail: dict[str, Any] = {"quality": None, "dominant": None}
    size: list[int] = []
    thumbnail = False
    for group in groups.values():
        result = hash_image(
            str(path), group, max_pixels=MAX_PIXELS, thumbnails=thumbnails, features=False
        )
        thumbnail = thumbnail or result.thumbnail
        for h in group:
            hashes[label(h)] = result.hashes[h.key].hex()
            # the 8 rotations and mirrors, for isometric scoring
            hashes[label(h) + ISO] = ",".join(v.hex() for v in result.variants[h.key])
        if PDQ.key in result.quality:
            detail = {"quality": result.quality[PDQ.key], "dominant": result.dominant}
        size = [result.width, result.height]
    detail["thumbnail"] = thumbnail
    return hashes, detail, size


def process_flat(hasher_specs: Sequence[tuple[str, int]]) -> dict[str, Any]:
    """Hash the flat images (tests/photos.py flat_images: two text screenshots of one layout
    in light and in dark mode, two documents, two solid colours, two gradients, two
    near-uniform frames) and a JPEG q85 re-encode of each (a true duplicate, which the guard
    reports instead of moving: the price of never moving a flat image)."""
    hashers = [Hasher(alg, size) for alg, size in hasher_specs]  # type: ignore[arg-type]
    started = time.perf_counter()
    hashes: dict[str, dict[str, str]] = {}
    detail: dict[str, dict[str, Any]] = {}
    with tempfile.TemporaryDirectory(prefix="dedupd-accuracy-flat-") as tmp_name:
        tmp = Path(tmp_name)
        for name, path in test_photos.flat_images(tmp).items():
            copy = test_photos.reencode(path, tmp / f"{name}_q85.jpg", 85)
            for item, file in ((name, path), (f"{name}{FLAT_COPY}", copy)):
                hashes[item], detail[item], _ = hash_file(file, hashers)
    return {"hashes": hashes, "detail": detail, "seconds": time.perf_counter() - started}


FLAT_COPY = "~q85"  # suffix of a flat image's re-encoded copy
PDQ = Hasher("pdq")


# --- Pairs and metrics ------------------------------------------------------------------------


@dataclass(slots=True)
class Pairs:
    """Positive and negative pairs as (item a, item b, kind); an item is (photo, file)."""

    positives: list[tuple[tuple[str, str], tuple[str, str], str]]
    negatives: list[tuple[tuple[str, str], tuple[str, str], str]]


def build_pairs(names: Sequence[str], kinds: Sequence[str], flat: Sequence[str] = ()) -> Pairs:
    """`flat`: the flat images (not their copies); each pair of them, and each vs every
    original, is a negative (kinds "flat" and "flat_vs_photo", not counted in FPR)."""
    positives = [((n, "original"), (n, k), k) for n in names for k in kinds]
    negatives: list[tuple[tuple[str, str], tuple[str, str], str]] = []
    stereo = set(STEREO)
    for a, b in combinations(names, 2):
        kind = "stereo" if {a, b} == stereo else "distinct_originals"
        negatives.append(((a, "original"), (b, "original"), kind))
    for a in names:
        for b in names:
            if a == b:
                continue
            kind = "stereo_variants" if {a, b} == stereo else "cross_variants"
            negatives += [((a, "original"), (b, k), kind) for k in kinds]
    for n in names:
        negatives.append(((n, "far_left"), (n, "far_right"), "far_crops"))
        negatives.append(((n, "burst_a"), (n, "burst_b"), "burst"))
    negatives += [((FLAT, a), (FLAT, b), "flat") for a, b in combinations(flat, 2)]
    negatives += [((FLAT, f), (n, "original"), "flat_vs_photo") for f in flat for n in names]
    return Pairs(positives, negatives)


@dataclass(slots=True)
class Scored:
    """Distances (bits) of every pair for one hasher, with what each pair is."""

    bits: int
    pos_d: np.ndarray
    pos_kind: np.ndarray
    pos_photo: np.ndarray
    neg_d: np.ndarray
    neg_kind: np.ndarray
    neg_pair: np.ndarray  # "photo/file ~ photo/file"
    kinds: list[str]
    families: dict[str, list[str]]
    isometric: bool = True

    @property
    def matchable(self) -> np.ndarray:
        if self.isometric:
            return np.ones(len(self.pos_kind), bool)
        return ~np.isin(self.pos_kind, self.families.get(UNMATCHABLE_FAMILY, []))

    @property
    def counted(self) -> np.ndarray:
        return ~np.isin(self.neg_kind, NOT_COUNTED)


def score(
    hasher: Hasher,
    hashes: dict[str, dict[str, dict[str, str]]],
    pairs: Pairs,
    kinds: Sequence[str],
    families: dict[str, list[str]],
    isometric: bool = True,
) -> Scored:
    lab = label(hasher)
    turned_radius = hasher.radius(hasher.turned_threshold)

    def one(a: tuple[str, str], b: tuple[str, str]) -> int:
        """Bits between the stored hash of `a` and the newcomer `b`: upright, or with
        `isometric` through its nearest rotation or mirror when that is within the hasher's
        turned radius, exactly as dedupd's engine matches (so a pair matches at threshold t
        when this is within t's radius)."""
        stored = bytes.fromhex(hashes[a[0]][a[1]][lab])
        if not isometric:
            return distance(stored, bytes.fromhex(hashes[b[0]][b[1]][lab]))
        upright, *turned = (
            distance(stored, bytes.fromhex(v)) for v in hashes[b[0]][b[1]][lab + ISO].split(",")
        )
        nearest_turn = min(turned)
        return min(upright, nearest_turn) if nearest_turn <= turned_radius else upright

    def dist(pair_list: list[tuple[tuple[str, str], tuple[str, str], str]]) -> np.ndarray:
        return np.array([one(a, b) for a, b, _ in pair_list], dtype=np.int64)

    return Scored(
        bits=hasher.bits,
        pos_d=dist(pairs.positives),
        pos_kind=np.array([k for _, _, k in pairs.positives]),
        pos_photo=np.array([a[0] for a, _, _ in pairs.positives]),
        neg_d=dist(pairs.negatives),
        neg_kind=np.array([k for _, _, k in pairs.negatives]),
        neg_pair=np.array([f"{a[0]}/{a[1]} ~ {b[0]}/{b[1]}" for a, b, _ in pairs.negatives]),
        kinds=list(kinds),
        families=families,
        isometric=isometric,
    )


def _rate(num: int, den: int) -> float | None:
    return num / den if den else None


MAX_LISTED = 25  # false-positive pairs listed per point


def summarize_at(s: Scored, radius: int, threshold: float) -> dict[str, Any]:
    """Every number at one radius (bits): recalls, false positives, FPR, precision, and
    which photos were missed or wrongly merged."""
    pos_hit = s.pos_d <= radius
    neg_hit = s.neg_d <= radius
    counted, matchable = s.counted, s.matchable
    by_kind = {k: float(pos_hit[s.pos_kind == k].mean()) for k in s.kinds}
    by_family = {f: float(pos_hit[np.isin(s.pos_kind, ks)].mean()) for f, ks in s.families.items()}
    tp = int(pos_hit[matchable].sum())
    fp = int(neg_hit[counted].sum())
    unmatchable = [] if s.isometric else s.families.get(UNMATCHABLE_FAMILY, [])
    weakest = sorted(
        (k for k in s.kinds if k not in unmatchable and by_kind[k] < 1),
        key=lambda k: by_kind[k],
    )[:3]
    fp_pairs = s.neg_pair[neg_hit & counted].tolist()
    return {
        "threshold": threshold,
        "radius_bits": radius,
        "bits": s.bits,
        "recall_overall": tp / int(matchable.sum()),
        "recall_by_family": by_family,
        "recall_by_kind": by_kind,
        "weakest_kinds": {k: by_kind[k] for k in weakest},
        "false_positives": fp,
        "negatives": int(counted.sum()),
        "fpr": fp / int(counted.sum()),
        "false_positives_by_negative_kind": {
            k: f"{int(neg_hit[s.neg_kind == k].sum())} of {int((s.neg_kind == k).sum())}"
            for k in dict.fromkeys(s.neg_kind.tolist())
        },
        "precision": _rate(tp, tp + fp),
        "missed_by_kind": {
            k: s.pos_photo[(s.pos_kind == k) & ~pos_hit].tolist()
            for k in s.kinds
            if k not in unmatchable and by_kind[k] < 1
        },
        "rotate_flip_matched": {
            k: s.pos_photo[(s.pos_kind == k) & pos_hit].tolist()
            for k in unmatchable
            if by_kind[k] > 0
        },
        "false_positive_pairs": fp_pairs[:MAX_LISTED],
        "false_positive_pairs_not_listed": max(0, len(fp_pairs) - MAX_LISTED),
    }


def analyse(s: Scored, hasher: Hasher) -> dict[str, Any]:
    bits = s.bits
    radii = [hasher.radius(t) for t in THRESHOLDS]
    curve: dict[str, Any] = {
        "radius_bits": radii,
        "recall_overall": [],
        "fpr": [],
        "false_positives": [],
        "precision": [],
        "recall_by_family": {f: [] for f in s.families},
        "recall_by_kind": {k: [] for k in s.kinds},
        "false_positives_by_negative_kind": {k: [] for k in dict.fromkeys(s.neg_kind.tolist())},
    }
    counted, matchable = s.counted, s.matchable
    for r in radii:
        pos_hit, neg_hit = s.pos_d <= r, s.neg_d <= r
        tp, fp = int(pos_hit[matchable].sum()), int(neg_hit[counted].sum())
        curve["recall_overall"].append(round(tp / int(matchable.sum()), 4))
        curve["fpr"].append(round(fp / int(counted.sum()), 6))
        curve["false_positives"].append(fp)
        curve["precision"].append(None if tp + fp == 0 else round(tp / (tp + fp), 4))
        for f, ks in s.families.items():
            curve["recall_by_family"][f].append(
                round(float(pos_hit[np.isin(s.pos_kind, ks)].mean()), 4)
            )
        for k in s.kinds:
            curve["recall_by_kind"][k].append(round(float(pos_hit[s.pos_kind == k].mean()), 4))
        for k, counts in curve["false_positives_by_negative_kind"].items():
            counts.append(int(neg_hit[s.neg_kind == k].sum()))

    ok = [i for i, fp in enumerate(curve["false_positives"]) if fp / int(counted.sum()) < MAX_FPR]
    # FPR only grows with t, so the largest index under the limit is the operating point.
    op_index = max(ok) if ok else None
    operating = None
    if op_index is not None:
        operating = summarize_at(s, radii[op_index], THRESHOLDS[op_index])
        recall = curve["recall_overall"][op_index]
        first = min(i for i in range(op_index + 1) if curve["recall_overall"][i] == recall)
        operating["same_overall_recall_from"] = THRESHOLDS[first]
        operating["at_grid_end"] = op_index == len(THRESHOLDS) - 1
    default = summarize_at(s, hasher.radius(hasher.default_threshold), hasher.default_threshold)
    zero = [i for i, fp in enumerate(curve["false_positives"]) if fp == 0]
    zero_fp = None
    if zero:
        zero_fp = {
            "threshold": THRESHOLDS[max(zero)],
            "radius_bits": radii[max(zero)],
            "recall_overall": curve["recall_overall"][max(zero)],
            "false_positives_at_next_step": (
                curve["false_positives"][max(zero) + 1] if max(zero) + 1 < len(radii) else None
            ),
        }

    def quantiles(d: np.ndarray) -> dict[str, float]:
        q = np.quantile(d / bits, [0.5, 0.9, 1.0]) if len(d) else [math.nan] * 3
        return {
            "median": round(float(q[0]), 4),
            "p90": round(float(q[1]), 4),
            "max": round(float(q[2]), 4),
        }

    if op_index is None:
        note = f"no threshold reaches FPR < 0.1%: at 0.00 it is {curve['fpr'][0]:.4%}"
    elif op_index == len(THRESHOLDS) - 1:
        note = f"FPR < 0.1% up to the grid's end: the limit is {THRESHOLDS[-1]:.2f} or higher"
    else:
        note = "largest threshold on the 0.01 grid with FPR < 0.1% on these negatives"
    return {
        "key": hasher.key,
        "bits": bits,
        "operating_point": operating,
        "recommended_threshold": THRESHOLDS[op_index] if op_index is not None else None,
        "recommendation_note": note,
        "largest_threshold_without_false_positives": zero_fp,
        "at_dedupd_default_threshold": default,
        "positive_distance_by_kind": {k: quantiles(s.pos_d[s.pos_kind == k]) for k in s.kinds},
        "closest_negative_by_kind": {
            k: round(float(s.neg_d[s.neg_kind == k].min() / bits), 4)
            for k in dict.fromkeys(s.neg_kind.tolist())
        },
        "curve": curve,
    }


def seed_style(s: Scored) -> dict[str, Any]:
    result = summarize_at(s, SEED_RADIUS, round(SEED_RADIUS / s.bits, 4))
    result["description"] = (
        f"pHash 8x8 at {SEED_RADIUS} bits ({SEED_RADIUS}/64 = {SEED_RADIUS / 64:.4f}), "
        "the ancestor project's documented threshold; same files and hashing path"
    )
    return result


# --- Report -----------------------------------------------------------------------------------


def _pct(x: float | None) -> str:
    return "–" if x is None else f"{100 * x:.0f}%"


def _weakest(point: dict[str, Any]) -> str:
    items = point["weakest_kinds"].items()
    return ", ".join(f"{k} {_pct(v)}" for k, v in items) or "all kinds 100%"


def markdown(result: dict[str, Any]) -> str:
    ds = result["dataset"]
    fams = list(ds["families"])
    matchable_fams = [f for f in fams if f != UNMATCHABLE_FAMILY]
    neg_total = ds["negatives_total"]
    lines = [
        "# Accuracy on real photos",
        "",
        f"Generated by `bench/accuracy.py` ({result['machine']['timestamp']}, "
        f"{result['wall_s']:.0f} s{', --quick' if result['config']['quick'] else ''}). "
        f"{len(ds['originals'])} originals (long side {result['config']['long_side']} px), "
        f"{ds['positives_total']} positive pairs ({len(ds['variant_kinds'])} variant kinds), "
        f"{neg_total} negative pairs: "
        + ", ".join(f"{k} {v}" for k, v in ds["negatives"].items() if k not in NOT_COUNTED)
        + " (plus "
        + ", ".join(f"{k} {v}" for k, v in ds["negatives"].items() if k in NOT_COUNTED)
        + " reported in the JSON, not counted)"
        + f". FPR < 0.1% allows at most {ds['max_false_positives_at_operating_point']} false "
        f"pairs of {neg_total}; the cross-variant negatives are correlated (variants of one "
        "photo hash alike), so the resolution is coarser than that suggests.",
        "",
        "Matching is isometric (dedupd's default): a newcomer's 8 rotations and mirrors are "
        "compared and the nearest counts, for positive and negative pairs alike; the upright "
        "comparison (`isometric: false`) is in the last sections. "
        "Threshold: the largest normalized threshold (step 0.01) with FPR < 0.1%, the "
        "recommended default. Recall columns are per variant family at that threshold; "
        "*overall* includes rotate/flip. *Hard neg.* = hard-negative pairs merged "
        "(far crops · burst · stereo). *Same recall from*: the smallest threshold that already "
        "gives the same overall recall. *0-FP threshold*: the largest threshold at which no "
        "counted negative pair matches, with its overall recall (0 of N still only bounds the "
        "FPR at about 3/N, 95%). *none*: no threshold, not even 0, has FPR < 0.1%; "
        "*≥*: FPR stays under 0.1% to the end of the grid (0.40).",
        "",
        "| hasher | bits | threshold | same recall from | 0-FP threshold (recall) | "
        "FP of negatives | overall | "
        + " | ".join(matchable_fams)
        + " | rotate/flip | hard neg. | weakest kinds |",
        "|---|---:|---:|---:|---:|---:|---:|" + "---:|" * len(matchable_fams) + "---:|---|---|",
    ]

    def row(
        name: str, bits: int, point: dict[str, Any] | None, thr: str, plateau: str, zero: str
    ) -> str:
        if point is None:
            return (
                f"| {name} | {bits} | none | – | {zero} | – | – |"
                + " – |" * len(matchable_fams)
                + " – | – | – |"
            )
        fp_by = point["false_positives_by_negative_kind"]
        hard = " · ".join(
            fp_by.get(k, "–").replace(" of ", "/") for k in ("far_crops", "burst", "stereo")
        )
        weakest = _weakest(point)
        return (
            f"| {name} | {bits} | {thr} | {plateau} | {zero} | {point['false_positives']} | "
            f"{_pct(point['recall_overall'])} | "
            + " | ".join(_pct(point["recall_by_family"][f]) for f in matchable_fams)
            + f" | {_pct(point['recall_by_family'].get(UNMATCHABLE_FAMILY))} | {hard} | {weakest} |"
        )

    for name, h in result["hashers"].items():
        op = h["operating_point"]
        thr = plateau = "none"
        if op is not None:
            ge = "≥ " if op["at_grid_end"] else ""
            thr = f"{ge}{op['threshold']:.2f} ({op['radius_bits']} b)"
            plateau = f"{op['same_overall_recall_from']:.2f}"
        z = h["largest_threshold_without_false_positives"]
        zero = "none" if z is None else f"{z['threshold']:.2f} ({_pct(z['recall_overall'])})"
        lines.append(row(name, h["bits"], op, thr, plateau, zero))
    seed = result["seed_style"]
    lines.append(
        row(
            "**seed-style** phash:8",
            64,
            seed,
            f"{SEED_RADIUS / 64:.3f} ({SEED_RADIUS} b)",
            "–",
            "–",
        )
    )
    lines += [
        "",
        f"Seed-style (pHash 8x8, ≤ {SEED_RADIUS} bits): recall {_pct(seed['recall_overall'])} "
        f"(excl. rotate/flip), FPR {seed['fpr']:.3%} ({seed['false_positives']} of "
        f"{seed['negatives']}), precision {_pct(seed['precision'])} on this data set's mix.",
        "",
        "## dedupd's default thresholds",
        "",
        "| hasher | default | FP of negatives | FPR | overall recall | weakest kinds |",
        "|---|---:|---:|---:|---:|---|",
    ]
    for name, h in result["hashers"].items():
        d = h["at_dedupd_default_threshold"]
        weakest = _weakest(d)
        lines.append(
            f"| {name} | {d['threshold']:.2f} ({d['radius_bits']} b) | {d['false_positives']} | "
            f"{d['fpr']:.3%} | {_pct(d['recall_overall'])} | {weakest} |"
        )
    names = list(result["hashers"])
    lines += [
        "",
        "## Recall per variant kind at each hasher's threshold (FPR < 0.1%)",
        "",
        "| kind | " + " | ".join(names) + " | seed |",
        "|---|" + "---:|" * (len(names) + 1),
    ]
    for kind in ds["variant_kinds"]:
        cells = []
        for n in names:
            op = result["hashers"][n]["operating_point"]
            cells.append("–" if op is None else _pct(op["recall_by_kind"][kind]))
        cells.append(_pct(seed["recall_by_kind"][kind]))
        lines.append(f"| {kind} | " + " | ".join(cells) + " |")
    lines += [
        "",
        "## Rotations, mirrors and screenshots: isometric (default) vs upright",
        "",
        "At each hasher's dedupd default threshold. *FP*: false pairs among the counted "
        "negatives (comparing 8 variants gives every distinct pair 8 chances to collide).",
        "",
        "| hasher | default | rotate/flip isometric | rotate/flip upright | screenshot isometric "
        "| screenshot upright | overall isometric (incl. rotate/flip) | overall upright (excl.) "
        "| FP isometric | FP upright |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for name, h in result["hashers"].items():
        iso = h["at_dedupd_default_threshold"]
        up = result["hashers_upright"][name]["at_dedupd_default_threshold"]
        fam_i, fam_u = iso["recall_by_family"], up["recall_by_family"]
        lines.append(
            f"| {name} | {iso['threshold']:.2f} | {_pct(fam_i.get(UNMATCHABLE_FAMILY))} | "
            f"{_pct(fam_u.get(UNMATCHABLE_FAMILY))} | {_pct(fam_i.get('screenshot'))} | "
            f"{_pct(fam_u.get('screenshot'))} | {_pct(iso['recall_overall'])} | "
            f"{_pct(up['recall_overall'])} | {iso['false_positives']} | {up['false_positives']} |"
        )
    shots = [k for k in ds["variant_kinds"] if ds["variant_kinds"][k]["family"] in (
        "screenshot", UNMATCHABLE_FAMILY)]  # fmt: skip
    lines += [
        "",
        "Per kind at the default threshold, isometric / upright:",
        "",
        "| kind | " + " | ".join(names) + " |",
        "|---|" + "---:|" * len(names),
    ]
    for kind in shots:
        cells = [
            f"{_pct(result['hashers'][n]['at_dedupd_default_threshold']['recall_by_kind'][kind])}"
            f" / {_pct(result['hashers_upright'][n]['at_dedupd_default_threshold']['recall_by_kind'][kind])}"  # noqa: E501
            for n in names
        ]
        lines.append(f"| {kind} | " + " | ".join(cells) + " |")
    lines += second_opinion_markdown(result["second_opinion"])
    if result.get("crops"):
        lines += ["", *crop_accuracy.markdown(result["crops"])]
    check = result.get("heic_thumbnail")
    if check:
        lines += [
            "",
            "## HEIC hashed from its embedded thumbnail",
            "",
            f"dedupd's decision (matched / moved) at the defaults on {check['pairs']} pairs "
            "(every original vs every photo's HEIC with a 320 px thumbnail), with the HEIC "
            "hashed from its thumbnail and from a full decode: "
            f"{check['identical_decisions']} of {check['pairs']} identical on the hashes alone; "
            f"{check['identical_final_decisions']} of {check['pairs']} identical once dedupd "
            "confirms each match found on a thumbnail with a full decode. The thumbnail was "
            f"used for {check['thumbnail_used_for']} of {check['photos']} photos (refused, so "
            "decoded in full: " + (", ".join(check["thumbnail_refused_for"]) or "none") + ").",
        ]
        for d in check["differences"]:
            lines.append(
                f"- {d['original']} vs {d['heic']}: thumbnail {d['thumbnail']}, full {d['full']}"
            )
    lines += ["", "## Notes", "", *(f"- {note}" for note in notes(result)), ""]
    return "\n".join(lines)


def _hit(point: dict[str, Any], kind: str) -> bool:
    return not point["false_positives_by_negative_kind"].get(kind, "0").startswith("0 ")


def notes(result: dict[str, Any]) -> list[str]:
    """Plain statements drawn from the numbers, for the markdown."""
    ds = result["dataset"]
    ops = {n: h["operating_point"] for n, h in result["hashers"].items()}
    found = {n: op for n, op in ops.items() if op is not None}
    out = [
        "Rotations (90°, 180°, 270°) and the mirror are true pixel changes: they match through "
        "isometric matching (the newcomer's 8 orientations compared), not through the hash; "
        "upright (`isometric: false`) a match there is a coincidence. EXIF-only rotation is "
        "undone before hashing"
        + (
            " (every EXIF variant decoded to the original's upright size)."
            if ds["exif_variants_upright_same_size"]
            else "; but some EXIF variant did NOT decode to the original's size."
        ),
    ]
    accidental: dict[str, list[str]] = {}
    for n, op in found.items():
        for kind, photos in op["rotate_flip_matched"].items():
            for photo in photos:
                accidental.setdefault(photo, []).append(f"{n} {kind}")
    if accidental:
        out.append(
            "Rotate/flip variants that matched anyway at an operating point, by photo: "
            + "; ".join(f"{p} ({len(v)}x)" for p, v in sorted(accidental.items()))
            + " (details in the JSON, `rotate_flip_matched`)."
        )
    if "stereo" in ds["negatives"]:
        merged = [n for n, op in found.items() if _hit(op, "stereo")]
        seed = "merged" if _hit(result["seed_style"], "stereo") else "not merged"
        out.append(
            f"The stereo pair (one scene shot twice) is merged by {len(merged)} of {len(found)} "
            f"hashers at their operating point; by the seed-style setting: {seed}."
        )
    gray = [o["name"] for o in ds["originals"] if o["source_mode"] in ("L", "LA", "1", "I;16")]
    for n, h in result["hashers"].items():
        if n.startswith("colorhash") and h["operating_point"] is None:
            why = (
                f" {len(gray)} of {len(ds['originals'])} originals are grayscale, which colorhash "
                "describes by their black and grey fractions alone, so they collide."
                if gray
                else ""
            )
            out.append(f"{n}: FPR {h['curve']['fpr'][0]:.1%} already at distance 0.{why}")
    out.append(
        "FPR < 0.1% is per pair: a library of 10,000 photos has 50 million pairs, so even "
        "0.01% would be 5,000 wrongly merged pairs. Where recall is flat, the 0-FP threshold "
        "(or the *same recall from* one) is the safer default."
    )
    return out


# --- Second opinion ---------------------------------------------------------------------------

FIRST = Hasher("phash", 16)  # dedupd's default first opinion
# Kinds the recalibrated defaults must find: all but crops (local features' job) and the kinds
# that need issue #10 items 1-2 (rotation/mirror variants, letterbox trim).
NOT_TARGETED_FAMILIES = ("crop", UNMATCHABLE_FAMILY, "screenshot")
RECALL_TARGET = 0.98


def heic_thumbnail_check(
    hashes: dict[str, dict[str, dict[str, str]]],
    detail: dict[str, dict[str, dict[str, Any]]],
    names: Sequence[str],
) -> dict[str, Any]:
    """dedupd's guarded decision (matched; moved: PDQ agrees, not low-detail) at the default
    thresholds on every (original, HEIC-with-thumbnail) pair, of the same photo and of every
    other, once with the file hashed from its thumbnail and once from a full decode: the
    fast path must decide exactly as the full decode."""
    r1, r2 = FIRST.radius(FIRST.default_threshold), PDQ.radius(PDQ.default_threshold)

    def decide(orig: str, photo: str, kind: str) -> tuple[bool, bool]:
        a, b = hashes[orig]["original"], hashes[photo][kind]
        d1 = distance(bytes.fromhex(a[label(FIRST)]), bytes.fromhex(b[label(FIRST)]))
        d2 = distance(bytes.fromhex(a[label(PDQ)]), bytes.fromhex(b[label(PDQ)]))
        low = _low_detail(detail[orig]["original"]) or _low_detail(detail[photo][kind])
        return d1 <= r1, d1 <= r1 and d2 <= r2 and not low

    differ = []
    final_differ = 0
    pairs = 0
    for photo in names:
        for orig in names:
            pairs += 1
            fast, full = decide(orig, photo, "heic_thumbnail"), decide(orig, photo, HEIC_FULL)
            if fast != full:
                differ.append({"original": orig, "heic": photo, "thumbnail": fast, "full": full})
            # dedupd confirms every match found on a thumbnail's hash with a full decode and
            # decides on that: only a match the thumbnail misses can end differently.
            final = full if fast[0] else (False, False)
            final_differ += final != full
    used = [n for n in names if detail[n]["heic_thumbnail"].get("thumbnail")]
    return {
        "pairs": pairs,
        "identical_decisions": pairs - len(differ),
        "differences": differ,
        "identical_final_decisions": pairs - final_differ,
        "thumbnail_used_for": len(used),
        "thumbnail_refused_for": sorted(set(names) - set(used)),
        "photos": len(names),
    }


def _low_detail(d: dict[str, Any]) -> bool:
    q, dom = d.get("quality"), d.get("dominant")
    return (q is not None and q < LOW_DETAIL_QUALITY) or (
        dom is not None and dom >= LOW_DETAIL_DOMINANT
    )


def second_opinion_report(
    hashes: dict[str, dict[str, dict[str, str]]],
    detail: dict[str, dict[str, dict[str, Any]]],
    pairs: Pairs,
    kinds: Sequence[str],
    flat_positives: Sequence[tuple[tuple[str, str], tuple[str, str], str]],
) -> dict[str, Any]:
    """dedupd's guarded decision on every pair: a near match (first hasher within its
    threshold) *moves* a file only if PDQ agrees within its own threshold and neither image
    is low-detail; otherwise it is only *reported*. At the default thresholds: per kind, the
    share matched / moved / only reported, and every negative pair matched with its fate. A
    grid over both thresholds, and each hasher's own recall/false-positive bounds, is what
    the defaults are chosen from."""
    positives = [*pairs.positives, *flat_positives]
    negatives = pairs.negatives

    def dist(h: Hasher, plist: Sequence[tuple[tuple[str, str], tuple[str, str], str]]) -> Any:
        lab = label(h)
        return np.array(
            [
                distance(
                    bytes.fromhex(hashes[a[0]][a[1]][lab]), bytes.fromhex(hashes[b[0]][b[1]][lab])
                )
                for a, b, _ in plist
            ]
        )

    def low(plist: Sequence[tuple[tuple[str, str], tuple[str, str], str]]) -> Any:
        return np.array(
            [
                _low_detail(detail[a[0]][a[1]]) or _low_detail(detail[b[0]][b[1]])
                for a, b, _ in plist
            ]
        )

    p1, p2, plow = dist(FIRST, positives), dist(PDQ, positives), low(positives)
    n1, n2, nlow = dist(FIRST, negatives), dist(PDQ, negatives), low(negatives)
    pkind = np.array([k for _, _, k in positives])
    nkind = np.array([k for _, _, k in negatives])
    npair = [f"{a[0]}/{a[1]} ~ {b[0]}/{b[1]}" for a, b, _ in negatives]
    counted = ~np.isin(nkind, NOT_COUNTED)
    targets = [k for k in kinds if VARIANTS[k][0] not in NOT_TARGETED_FAMILIES]
    all_kinds = [*kinds, *dict.fromkeys(k for _, _, k in flat_positives)]

    def at(t1: float, t2: float) -> dict[str, Any]:
        r1, r2 = FIRST.radius(t1), PDQ.radius(t2)
        pm, nm = p1 <= r1, n1 <= r1
        pmove, nmove = pm & (p2 <= r2) & ~plow, nm & (n2 <= r2) & ~nlow
        by_kind = {
            k: {
                "matched": float(pm[pkind == k].mean()),
                "moved": float(pmove[pkind == k].mean()),
                "reported_only": float((pm & ~pmove)[pkind == k].mean()),
            }
            for k in all_kinds
        }
        neg_by_kind = {
            k: {"matched": int(nm[nkind == k].sum()), "moved": int(nmove[nkind == k].sum())}
            for k in dict.fromkeys(nkind.tolist())
        }
        return {
            "first_threshold": t1,
            "first_radius_bits": r1,
            "pdq_threshold": t2,
            "pdq_radius_bits": r2,
            "by_kind": by_kind,
            "min_moved_recall_of_targets": min(by_kind[k]["moved"] for k in targets),
            "min_matched_recall_of_targets": min(by_kind[k]["matched"] for k in targets),
            "negatives_by_kind": neg_by_kind,
            "false_matches_counted": int(nm[counted].sum()),
            "false_moves_all": int(nmove.sum()),
            "negative_pairs_matched": [
                {
                    "pair": npair[i],
                    "kind": str(nkind[i]),
                    "moved": bool(nmove[i]),
                    "first_bits": int(n1[i]),
                    "pdq_bits": int(n2[i]),
                    "low_detail": bool(nlow[i]),
                }
                for i in np.flatnonzero(nm)[:60]
            ],
        }

    def bounds(h: Hasher, pd: Any, nd: Any) -> dict[str, Any]:
        """The smallest threshold at which h alone finds RECALL_TARGET of every target kind,
        and the largest at which it matches no counted negative (photos, not flats)."""
        lo = next(
            (
                t
                for t in THRESHOLDS
                if all((pd[pkind == k] <= h.radius(t)).mean() >= RECALL_TARGET for k in targets)
            ),
            None,
        )
        zero = [t for t in THRESHOLDS if not (nd[counted] <= h.radius(t)).any()]
        return {"recall_target_from": lo, "no_false_match_up_to": max(zero, default=None)}

    # Per first threshold: the false matches it alone makes, the largest PDQ threshold at
    # which nothing at all is wrongly moved, and what the guard moves at PDQ's default.
    grid = []
    for t1 in THRESHOLDS[10:36]:
        points = [at(t1, t2) for t2 in THRESHOLDS[10:36]]
        safe = [p["pdq_threshold"] for p in points if p["false_moves_all"] == 0]
        default = at(t1, PDQ.default_threshold)
        grid.append(
            {
                "first": t1,
                "false_matches_counted": points[0]["false_matches_counted"],
                "largest_pdq_without_false_move": max(safe, default=None),
                "min_moved_recall_at_pdq_default": round(default["min_moved_recall_of_targets"], 4),
                "false_moves_at_pdq_default": default["false_moves_all"],
            }
        )
    return {
        "first": FIRST.key,
        "second": PDQ.key,
        "low_detail": {
            "pdq_quality_below": LOW_DETAIL_QUALITY,
            "dominant_share_at_least": LOW_DETAIL_DOMINANT,
            "low_detail_items": sorted(
                f"{photo}/{file}"
                for photo, files in detail.items()
                for file, d in files.items()
                if _low_detail(d)
            ),
        },
        "detail": {
            photo: {file: d for file, d in files.items() if file in ("original",) or photo == FLAT}
            for photo, files in detail.items()
        },
        "target_kinds": targets,
        "recall_target": RECALL_TARGET,
        "first_alone": bounds(FIRST, p1, n1),
        "pdq_alone": bounds(PDQ, p2, n2),
        "at_defaults": at(FIRST.default_threshold, PDQ.default_threshold),
        "grid": grid,
    }


def second_opinion_markdown(so: dict[str, Any]) -> list[str]:
    d = so["at_defaults"]
    fa, pa = so["first_alone"], so["pdq_alone"]

    def t(x: float | None) -> str:
        return "none" if x is None else f"{x:.2f}"

    lines = [
        "",
        "## Second opinion: what moves, what is only reported",
        "",
        f"dedupd's decision at the defaults: a near match ({so['first']} within "
        f"{d['first_threshold']:.2f}, {d['first_radius_bits']} bits) moves a file only if PDQ "
        f"agrees (within {d['pdq_threshold']:.2f}, {d['pdq_radius_bits']} bits) and neither "
        f"image is low-detail (PDQ quality < {so['low_detail']['pdq_quality_below']}, or "
        f"≥ {so['low_detail']['dominant_share_at_least']:.0%} of the pixels in one tone); "
        "otherwise it is only reported.",
        "",
        f"Calibration (target: ≥ {so['recall_target']:.0%} of every kind but crops, "
        "rotations/mirrors and screenshots, which need issue #10 items 1-2): "
        f"{so['first']} alone reaches it from {t(fa['recall_target_from'])} and matches no "
        f"counted negative up to {t(fa['no_false_match_up_to'])}; PDQ alone from "
        f"{t(pa['recall_target_from'])}, no false match up to {t(pa['no_false_match_up_to'])}. "
        f"At the defaults: lowest moved recall of those kinds "
        f"{_pct(d['min_moved_recall_of_targets'])}, {d['false_matches_counted']} false matches "
        f"among the counted negatives, {d['false_moves_all']} false moves among all "
        "negatives (flat ones included).",
        "",
        "| kind | matched | moved | only reported |",
        "|---|---:|---:|---:|",
    ]
    for kind, v in d["by_kind"].items():
        lines.append(
            f"| {kind} | {_pct(v['matched'])} | {_pct(v['moved'])} | {_pct(v['reported_only'])} |"
        )
    lines += ["", "| negative kind | matched | moved |", "|---|---:|---:|"]
    for kind, v in d["negatives_by_kind"].items():
        lines.append(f"| {kind} | {v['matched']} | {v['moved']} |")
    if d["negative_pairs_matched"]:
        lines += ["", "Negative pairs matched at the defaults (first bits · PDQ bits · fate):", ""]
        for m in d["negative_pairs_matched"]:
            fate = (
                "MOVED" if m["moved"] else "reported" + (" (low detail)" if m["low_detail"] else "")
            )
            lines.append(
                f"- {m['pair']} ({m['kind']}): {m['first_bits']} · {m['pdq_bits']} · {fate}"
            )
    lines += [
        "",
        "Low-detail items: " + (", ".join(so["low_detail"]["low_detail_items"]) or "none") + ".",
        "",
        f"Around the defaults: per {so['first']} threshold, the counted negatives it matches "
        "alone, the largest PDQ threshold at which no negative at all (flat ones included) "
        "would be moved, and at PDQ's default the lowest moved recall of the target kinds and "
        "the false moves.",
        "",
        "| first | false matches alone | largest safe PDQ | moved recall | false moves |",
        "|---:|---:|---:|---:|---:|",
    ]
    for g in so["grid"]:
        lines.append(
            f"| {g['first']:.2f} | {g['false_matches_counted']} | "
            f"{t(g['largest_pdq_without_false_move'])} | "
            f"{_pct(g['min_moved_recall_at_pdq_default'])} | {g['false_moves_at_pdq_default']} |"
        )
    return lines


# --- Main -------------------------------------------------------------------------------------


def run(args: argparse.Namespace) -> dict[str, Any]:
    info = machine_info()
    started = time.perf_counter()
    hashers = make_hashers(args.sizes, args.color_sizes)
    kinds = list(QUICK_VARIANTS if args.quick else VARIANTS)
    srcs = [s for s in sources() if not args.quick or s.name in QUICK_PHOTOS]
    missing = [s for s in srcs if not s.path().is_file()]
    for s in missing:
        print(f"missing {s.package}/{s.relpath}: skipped", file=sys.stderr)
    srcs = [s for s in srcs if s not in missing]
    if len(srcs) < 2:
        sys.exit("fewer than 2 photos found: pip install scikit-image scikit-learn matplotlib")

    specs = [(h.algorithm, h.hash_size) for h in hashers]
    if SEED_HASHER not in specs:
        specs.append(SEED_HASHER)
    print(
        f"{len(srcs)} photos x {len(kinds)} variants (+ original, 4 hard-negative crops), "
        f"{len(specs)} hashers, long side {args.long_side}, {args.jobs} job(s)",
        file=sys.stderr,
    )
    per_photo: dict[str, dict[str, Any]] = {}
    with ProcessPoolExecutor(max_workers=args.jobs) as pool:
        flat_future = pool.submit(process_flat, specs)
        futures = [pool.submit(process, s, kinds, args.long_side, specs) for s in srcs]
        for i, fut in enumerate(futures, 1):
            done = fut.result()
            per_photo[done["name"]] = done
            print(f"[{i}/{len(srcs)}] {done['name']}: {done['seconds']:.1f} s", file=sys.stderr)
        flat = flat_future.result()
        print(f"flat images: {flat['seconds']:.1f} s", file=sys.stderr)

    names = [s.name for s in srcs]
    hashes = {n: per_photo[n]["hashes"] for n in names}
    hashes[FLAT] = flat["hashes"]
    detail = {n: per_photo[n]["detail"] for n in names}
    detail[FLAT] = flat["detail"]
    flat_names = [f for f in flat["hashes"] if not f.endswith(FLAT_COPY)]
    flat_positives = [((FLAT, f), (FLAT, f + FLAT_COPY), "flat_reencode") for f in flat_names]
    families: dict[str, list[str]] = {}
    for k in kinds:
        families.setdefault(VARIANTS[k][0], []).append(k)
    pairs = build_pairs(names, kinds, flat_names)
    neg_counts: dict[str, int] = {}
    for _, _, k in pairs.negatives:
        neg_counts[k] = neg_counts.get(k, 0) + 1
    exif_upright = all(
        per_photo[n]["dims"]["exif_orientation"] == per_photo[n]["dims"]["original"]
        for n in names
        if "exif_orientation" in kinds
    )

    results = {label(h): analyse(score(h, hashes, pairs, kinds, families), h) for h in hashers}
    upright = {
        label(h): analyse(score(h, hashes, pairs, kinds, families, isometric=False), h)
        for h in hashers
    }
    n_neg = sum(v for k, v in neg_counts.items() if k not in NOT_COUNTED)
    dataset = {
        "originals": [
            {
                "name": s.name,
                "package": s.package,
                "package_version": _dist_version(s.package),
                "file": s.relpath,
                "source_size": per_photo[s.name]["raw_size"],
                "source_mode": per_photo[s.name]["raw_mode"],
                "upscaled_size": per_photo[s.name]["size"],
                "hash_seconds_all_files": round(per_photo[s.name]["seconds"], 2),
            }
            for s in srcs
        ],
        "skipped": SKIPPED,
        "missing": [f"{s.package}/{s.relpath}" for s in missing],
        "variant_kinds": {
            k: {"family": VARIANTS[k][0], "description": VARIANTS[k][1]} for k in kinds
        },
        "families": families,
        "unmatchable_family": UNMATCHABLE_FAMILY,
        "positives": {k: len(names) for k in kinds},
        "positives_total": len(pairs.positives),
        "negatives": neg_counts,
        "negatives_total": n_neg,
        "negatives_not_counted_in_fpr": list(NOT_COUNTED),
        "hard_negatives": HARD_NEGATIVES,
        "max_false_positives_at_operating_point": math.ceil(MAX_FPR * n_neg) - 1,
        "fpr_resolution": (
            f"{n_neg} negative pairs: FPR < 0.1% means at most {math.ceil(MAX_FPR * n_neg) - 1} "
            f"false pairs; 1 pair = {1 / n_neg:.5%}. {neg_counts.get('cross_variants', 0)} of "
            "them are an original vs another photo's variant, which are correlated."
        ),
        "exif_variants_upright_same_size": exif_upright,
        "files_hashed": sum(len(per_photo[n]["hashes"]) for n in names),
    }
    info["loadavg_end"] = list(os.getloadavg())
    return {
        "benchmark": "accuracy",
        "machine": info,
        "config": {
            "quick": args.quick,
            "long_side": args.long_side,
            "sizes": args.sizes,
            "color_sizes": args.color_sizes,
            "hashers": [h.key for h in hashers],
            "thresholds": THRESHOLDS,
            "match_rule": "distance_bits <= Hasher.radius(t) = int(t * bits)",
            "isometric": "hashers: the newcomer's nearest of 8 rotations/mirrors (dedupd's "
            "default); hashers_upright and seed_style: the plain hash",
            "operating_point": "largest threshold with FPR < 0.001 over all negatives",
            "original_jpeg_quality": ORIGINAL_QUALITY,
            "variant_jpeg_quality": VARIANT_QUALITY,
            "max_pixels": MAX_PIXELS,
            "hash_call": "dedupd.imaging.hash_image(path, hashers, max_pixels=10**9), draft on",
            "jobs": args.jobs,
            "precision_note": (
                "precision counts positives without rotate_flip against all negatives; it "
                "depends on this data set's positive:negative mix, not on a real library"
            ),
        },
        "dataset": dataset,
        "hashers": results,
        "hashers_upright": upright,
        "seed_style": seed_style(
            score(Hasher(*SEED_HASHER), hashes, pairs, kinds, families, isometric=False)
        ),
        "second_opinion": second_opinion_report(hashes, detail, pairs, kinds, flat_positives),
        "crops": _crops(args, srcs),
        "heic_thumbnail": heic_thumbnail_check(hashes, detail, names)
        if "heic_thumbnail" in kinds and HEIC_FULL in kinds
        else None,
        "wall_s": round(time.perf_counter() - started, 1),
    }


def _crops(args: argparse.Namespace, srcs: Sequence[Source]) -> dict[str, Any] | None:
    """The crop section (bench/crop_accuracy.py), unless --no-crops."""
    if args.no_crops:
        return None
    return crop_accuracy.run(
        [(s.name, s.path()) for s in srcs],
        args.long_side,
        progress=lambda line: print(line, file=sys.stderr),
        same_scene=[set(STEREO)],
    )


def _ints(text: str) -> list[int]:
    return [int(x) for x in text.split(",") if x.strip()]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sizes", type=_ints, default=[8, 16], help="hash sizes (default 8,16)")
    parser.add_argument(
        "--color-sizes", type=_ints, default=[3, 8], help="colorhash bits per bin (default 3,8)"
    )
    parser.add_argument("--long-side", type=int, default=1600, help="originals' long side, px")
    parser.add_argument(
        "--out-dir",
        type=Path,
        default=None,
        help="default bench/results (--quick: the system temp directory)",
    )
    parser.add_argument("--jobs", type=int, default=1, help="worker processes (default 1)")
    parser.add_argument(
        "--quick", action="store_true", help="smoke run: 6 photos, 10 variant kinds"
    )
    parser.add_argument("--stdout", choices=("markdown", "json"), default="markdown")
    parser.add_argument(
        "--no-crops", action="store_true", help="skip the crop section (crop_accuracy.py)"
    )
    parser.add_argument(
        "--crops-only",
        action="store_true",
        help="only the crop section; writes accuracy-crops.json/.md",
    )
    args = parser.parse_args()
    if args.long_side < 64 or args.jobs < 1:
        parser.error("--long-side must be >= 64 and --jobs >= 1")
    try:
        make_hashers(args.sizes, args.color_sizes)
    except ValueError as exc:
        parser.error(str(exc))

    if args.crops_only:
        srcs = [s for s in sources() if s.path().is_file()]
        srcs = [s for s in srcs if not args.quick or s.name in QUICK_PHOTOS]
        result = {
            "benchmark": "accuracy-crops",
            "machine": machine_info(),
            "crops": _crops(args, srcs),
        }
        md = "\n".join(crop_accuracy.markdown(result["crops"]))
    else:
        result = run(args)
        md = markdown(result)
    text = json.dumps(result, indent=1, ensure_ascii=False)
    stem = "accuracy-quick" if args.quick else "accuracy"
    stem += "-crops" if args.crops_only else ""
    write_results(stem, args.out_dir, args.quick, text, md)
    print(text if args.stdout == "json" else md)


def write_results(stem: str, out_dir: Path | None, quick: bool, text: str, md: str) -> None:
    """`stem`.json and `stem`.md in `out_dir` (default: bench/results, or the system's temp
    folder for a quick run), each written whole or not at all."""
    out_dir = out_dir or (Path(tempfile.gettempdir()) if quick else ROOT / "bench" / "results")
    out_dir.mkdir(parents=True, exist_ok=True)
    for suffix, content in ((".json", text), (".md", md)):
        out = out_dir / f"{stem}{suffix}"
        tmp = out.with_name(out.name + ".tmp")
        tmp.write_text(content + "\n")
        tmp.replace(out)
        print(f"wrote {out}", file=sys.stderr)


if __name__ == "__main__":
    main()
