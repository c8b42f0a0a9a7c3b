"""Calibration of the pixel check a near match passes before it moves a file
(`dedupd.likeness`): copies it must let move, different pictures it must never move.

Every pair is written to temporary files and judged through the real path: the newcomer's
path and a `Counterpart` (path, `FileStat`, the rotation or mirror that takes the counterpart
to the newcomer) go to ``dedupd.likeness.compare_files(..., max_pixels=10**9)``, its
`Likeness` to ``refusal(likeness, moving_is_newcomer=...)``. A pair *moves* when the refusal
is None. Recorded per pair: family, kind, `worst` (the largest share, in percent, of one
cell's pixels that differ after alignment and tone mapping: by more than `likeness.STRONG`
grey levels where the pictures have texture, down to `likeness.FAINT` where they are flat),
`cover`, `sides`, `error`, `colours` (how the colours differ as a whole, "" if they do not),
the refusal and the rule that gave it (error, cover, pixels, colours, sharpness), and the
milliseconds `compare_files` took.

Data, generated at run time (nothing is downloaded):

- Photos: the real photos of bench/accuracy.py (`sources()`: scikit-image, scikit-learn and
  matplotlib ship them), each upscaled (Lanczos) to a long side of --long-side px (1600) and
  saved as a quality-92 JPEG, the *original*.
- Chat screenshots (`chat`): a messenger page at phone sizes (720x1560 with 16 and 24 px text,
  1080x2340 with 24 and 36 px, Pillow's ``ImageFont.load_default(size=...)``), light and dark:
  status bar (`tests.photos.draw_status_bar`), a header with avatar and name, rounded bubbles
  left and right over a wallpaper made of a package photo under a Gaussian blur, an input
  bar. A *layout* seed fixes the bubbles' rectangles and the wallpaper; a *text* seed fills
  the bubbles with different words (lines ragged inside the same rectangles).
- Letters (`letterhead`): A4 at 150 dpi (1240x1754), one letterhead (logo, firm, address,
  rules, footer), a body of paragraphs, on "scanned" paper: ink blurred a little, then normal
  noise (σ 5) and a faint shading over a warm paper tone, each page its own scan (its own
  noise), JPEG q85.
- Documents (`document`): `tests.photos.document` (black text on white, JPEG q90).
- Text screenshots (`text_screenshot`): `tests.photos.text_screenshot`, light and dark, at its
  default 540x1170 (22 px) and at 1080x2340 (40 px).
- Faint scenes (`faint_night`, `faint_dim`, `faint_fog`): each photo's pixels made into a
  night shot (x0.25: levels 0-64), a dim room in flat light (16 + x0.4: 16-118) and fog (the
  photo at 30% contrast over a light grey: 123-200), saved as a quality-92 JPEG, the scene's
  original. Its *changed* twin has a faint local change added to every channel (grey, soft
  edges) before the same JPEG: a standing figure 9% of the frame's height (lit at night, a
  dark silhouette in the dim room and in fog) or a lit window 7% x 5% of the frame, 12 to
  25 grey levels at its peak (drawn per pair, seeded by photo, scene and kind).
- Pencil notes (`faint_note`): a letter (as `letterhead`) with one line written in pencil
  above the salutation, 22 or 15 grey levels under the paper, on the same scan or a new one.

Positives (the check must let the copy move; the copy is the newcomer and moves):

- photos: every kind of bench/accuracy.py's `VARIANTS` except the edits (family
  ``watermark``, a negative below) and the HEICs with a thumbnail (the check always decodes
  the full image: the same pixels as ``heic``): re-encodes q95/85/70/50, resizes 50%/25%,
  EXIF orientation, PNG/WebP/HEIC (made with x265's ultrafast preset: its default takes
  ~15 s a photo here), centred crops removing 2/5/10%, brightness and contrast ±10/20%, phone
  screenshots (the photo in a black or white 9:19.5 canvas, with and without a status bar),
  and rotations 90/180/270 and a mirror; and the saturation ±20% (`ImageEnhance.Color`), as
  the brightness and contrast are changed. The
  counterpart is the original with the transform that takes it to the variant
  (``rotate_90`` → ``rot90``, ``rotate_180`` → ``rot180``, ``rotate_270`` → ``rot270``,
  ``hflip`` → ``mirror``, EXIF orientation → ``identity``: its upright view is the same).
- chat, letterhead, document, text_screenshot: one picture of each configuration re-encoded
  as JPEG q85 and q70, and resized to 50% and 25% (Lanczos, JPEG q80).
- faint scenes: each scene's original re-encoded (q95/85/70/50), resized (50%/25%) and saved
  as PNG, WebP and HEIC, made as the photos' variants are: a check that refuses a night or
  foggy photo's every copy shows here as copies lost.

Negatives (must never move; the newcomer moves unless said otherwise):

- chat: two texts in one layout (``distinct``); the same text but the last bubble (a new
  message arrived, ``last_bubble``); the same text but one word, replaced by another of the
  same length (``one_word``); the same text but one digit of a time or an amount
  (``one_digit``); per configuration.
- letterhead: two letters on one letterhead (different bodies, different scans); document:
  `tests.photos.document` with two seeds; text_screenshot: two seeds, light and dark.
- photos: ``colour``, versions in other colours: of a photo in colour its greyscale, sepia and
  70% desaturated versions, of a grey one (scikit-image's camera, moon...) a sepia and a warm
  tint (red x1.12, blue x0.85); the copy with the colours changed is the newcomer.
- photos: ``burst`` (two crops of 85% of the width offset by 15%: identical pixels where they
  overlap, so only the cover rule can refuse them), ``stereo`` (motorcycle_left vs
  motorcycle_right), ``watermark`` (an edited copy: reported, never moved, by design).
- faint scenes: the scene's original kept, its changed twin the newcomer (a figure added in
  the dark, a window lit: a different picture, under STRONG grey levels); faint_note: the
  letter kept, the one with the pencil note the newcomer.
- ``crop_larger_moves``: the uncropped original would move and its crop is kept (newcomer =
  crop_2 or crop_10, the counterpart moves; and newcomer = the original, which moves, vs
  counterpart crop_5): the kept file does not show all of the moving one, so MIN_COVER must
  refuse it.
- every negative pair again with the counterpart re-saved smaller (50%, JPEG q80; text
  families also 25%), as copies arrive from chat apps; that smaller file is the one that
  would move (a keep-the-largest policy's choice; for crop_larger_moves the uncropped one
  still moves), family suffix ``@50%``/``@25%``.

Reported (JSON and a markdown table): per family the pairs moved and refused (by rule), the
largest `worst` among positives and the smallest among negatives, the smallest cover of the
moving file; the chat and the faint negatives per kind of difference; the margin between
positives and the negatives only the pixels can refuse; every negative that moved (a *false
move*: a different picture sent to quarantine, the number that matters most) and every
positive refused, with why; a sweep of MAX_CELL_SHARE and MIN_COVER (the real `refusal` with
the module's thresholds set in turn); compare time p50/p95/max. One process (the machine is
shared).

Run from the repository root (the full run, 1,842 pairs, takes about 25 minutes on 2 shared
cores, ``--quick`` about 3 minutes: 4 photos, the faint scenes of 2, 2 chat configurations;
it needs the ``bench`` extra's scikit-image for most photos):

    .venv/bin/python bench/likeness.py [--quick] [--long-side 1600] [--out-dir bench/results]

Writes likeness.json and likeness.md to --out-dir (default bench/results; ``--quick`` writes
likeness-quick.json/.md, by default to the system temp directory) and prints the JSON.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import random
import statistics
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # for `dedupd` from a checkout

import accuracy
from machine import machine_info
from PIL import Image, ImageDraw, ImageEnhance, ImageFilter, ImageFont, ImageOps

from dedupd import likeness
from dedupd.filestat import Counterpart, FileStat, Likeness
from tests import photos as test_photos

ROOT = Path(__file__).resolve().parent.parent
MAX_PIXELS = accuracy.MAX_PIXELS
EDITS = ("watermark",)  # variant families that are edits: negatives here
SKIPPED_KINDS = {
    "heic_thumbnail": "the same pixels as heic: the check always decodes the full image",
    accuracy.HEIC_FULL: "the same file as heic_thumbnail",
}
POSITIVE_KINDS = [
    k
    for k, (family, _, _) in accuracy.VARIANTS.items()
    if family not in EDITS and k not in SKIPPED_KINDS
]
# the transform that takes the original (the counterpart) to the variant
TRANSFORM = {
    "rotate_90": "rot90",
    "rotate_180": "rot180",
    "rotate_270": "rot270",
    "hflip": "mirror",
}
QUICK_PHOTOS = ("astronaut", "chelsea", *accuracy.STEREO)
WALLPAPER = ("coffee", "chelsea", "china")  # the first found is the chat wallpaper
# (size, font size, dark)
CHATS = [
    (size, font, dark)
    for size, fonts in (((720, 1560), (16, 24)), ((1080, 2340), (24, 36)))
    for font in fonts
    for dark in (False, True)
]
QUICK_CHATS = [((720, 1560), 16, False), ((1080, 2340), 36, True)]
# (size, font size, dark, seeds)
TEXT_SCREENSHOTS = [
    ((540, 1170), 22, False, (1, 2)),
    ((540, 1170), 22, True, (3, 4)),
    ((1080, 2340), 40, False, (5, 6)),
    ((1080, 2340), 40, True, (7, 8)),
]
LETTER_PAIRS = [(11, 12), (13, 14)]  # body seeds (each page also its own scan noise)
DOCUMENT_PAIRS = [(5, 6), (7, 8)]
TEXT_FAMILIES = ("chat", "letterhead", "faint_note", "document", "text_screenshot")
# Negative families that only the cover rule can refuse (the pixels they share are the same).
COVER_NEGATIVES = ("burst", "crop_larger_moves")


# --- Judging ----------------------------------------------------------------------------------


def _finite(x: float) -> float | None:
    return round(x, 3) if math.isfinite(x) else None


def _rule(lk: Likeness, why: str | None, moving_is_newcomer: bool) -> str | None:
    """Which of refusal's rules refused (in its order)."""
    if why is None:
        return None
    if lk.error is not None:
        return "error"
    if lk.cover[0 if moving_is_newcomer else 1] < likeness.MIN_COVER:
        return "cover"
    if lk.worst > likeness.MAX_CELL_SHARE:
        return "pixels"
    if lk.colours:
        return "colours"
    return "sharpness"


def judge(
    polarity: str,
    family: str,
    kind: str,
    item: str,
    newcomer: Path,
    counterpart: Path,
    transform: str = "identity",
    moving_is_newcomer: bool = True,
) -> dict[str, Any]:
    """Compare the pair as a hasher worker does and judge it as the engine does."""
    other = Counterpart(str(counterpart), FileStat.of(counterpart.stat()), transform)
    started = time.perf_counter()
    lk = likeness.compare_files(str(newcomer), other, MAX_PIXELS)
    ms = (time.perf_counter() - started) * 1000
    why = likeness.refusal(lk, moving_is_newcomer=moving_is_newcomer)
    return {
        "polarity": polarity,
        "family": family,
        "kind": kind,
        "item": item,
        "moving": "newcomer" if moving_is_newcomer else "counterpart",
        "transform": transform,
        "worst": _finite(lk.worst),
        "cover": [round(c, 4) for c in lk.cover],
        "side": lk.side,
        "sides": list(lk.sides),
        "error": lk.error,
        "colours": lk.colours,
        "refusal": why,
        "refused_by": _rule(lk, why, moving_is_newcomer),
        "passed": why is None,
        "ms": round(ms, 1),
        "_likeness": lk,  # for the sweep; dropped from the JSON
    }


def smaller(src: Path, dst: Path, factor: float, quality: int = 80) -> Path:
    """`src` resized by `factor` per side (Lanczos), saved as a JPEG: a copy a chat app sent."""
    with Image.open(src) as im:
        rgb = im.convert("RGB")
    size = (max(1, round(rgb.width * factor)), max(1, round(rgb.height * factor)))
    rgb.resize(size, Image.Resampling.LANCZOS).save(dst, format="JPEG", quality=quality)
    return dst


def reencoded(src: Path, dst: Path, quality: int) -> Path:
    with Image.open(src) as im:
        im.convert("RGB").save(dst, format="JPEG", quality=quality)
    return dst


def negative(
    out: list[dict[str, Any]],
    family: str,
    kind: str,
    item: str,
    newcomer: Path,
    counterpart: Path,
    factors: tuple[float, ...] = (0.5,),
    moving_is_newcomer: bool = True,
    small_moves: bool = True,
) -> None:
    """A negative pair as it is, then with the counterpart re-saved smaller for each factor:
    that smaller copy would move (`small_moves`), else the same side as in the pair."""
    out.append(
        judge("negative", family, kind, item, newcomer, counterpart, "identity", moving_is_newcomer)
    )
    for factor in factors:
        small = smaller(
            counterpart, counterpart.with_name(f"{counterpart.stem}-{factor}.jpg"), factor
        )
        out.append(
            judge(
                "negative",
                f"{family}@{factor:.0%}",
                kind,
                item,
                newcomer,
                small,
                "identity",
                moving_is_newcomer=moving_is_newcomer and not small_moves,
            )
        )
        small.unlink()


TEXT_COPIES: dict[str, Callable[[Path, Path], Path]] = {
    "jpeg_q85": lambda src, dst: reencoded(src, dst, 85),
    "jpeg_q70": lambda src, dst: reencoded(src, dst, 70),
    "resize_50": lambda src, dst: smaller(src, dst, 0.5),
    "resize_25": lambda src, dst: smaller(src, dst, 0.25),
}


def text_positives(out: list[dict[str, Any]], family: str, item: str, base: Path) -> None:
    """`base` re-encoded and resized: copies of it that may move."""
    for kind, make in TEXT_COPIES.items():
        copy = make(base, base.with_name(f"{base.stem}-{kind}.jpg"))
        out.append(judge("positive", family, kind, item, copy, base))
        copy.unlink()


# --- Photos -----------------------------------------------------------------------------------


def _heic_fast(im: Image.Image, dst: Path) -> Path:
    """accuracy.py's HEIC q85, encoded with x265's ultrafast preset (its default takes ~15 s
    a photo here): the same kind of copy, with coarser artefacts if anything."""
    im.save(dst, format="HEIF", quality=85, enc_params={"preset": "ultrafast"})
    return dst


MAKERS: dict[str, Callable[[Image.Image, Path], Path]] = {"heic": _heic_fast}


def _saturated(factor: float) -> Callable[[Image.Image, Path], Path]:
    return lambda im, dst: accuracy._jpeg(ImageEnhance.Color(im).enhance(factor), dst)


def _sepia(im: Image.Image, dst: Path) -> Path:
    return accuracy._jpeg(ImageOps.colorize(ImageOps.grayscale(im), "#2b1a0c", "#f0dcb4"), dst)


def _tinted(im: Image.Image, dst: Path) -> Path:
    """A warm filter: red x1.12, blue x0.85."""
    rgb = np.asarray(im, np.float32) * np.array([1.12, 1.0, 0.85], np.float32)
    return accuracy._jpeg(Image.fromarray(np.clip(rgb, 0, 255).astype(np.uint8)), dst)


def _coloured(im: Image.Image) -> bool:
    """Whether a photo has colours to lose (chroma RMS about grey of 4 levels or more: the
    grey photos of scikit-image have none)."""
    chroma = np.asarray(im.convert("YCbCr"), np.float32)[..., 1:] - 128
    return float(np.sqrt((chroma * chroma).sum(2).mean())) >= 4.0


# Positives beyond accuracy.py's tone edits: the saturation changed as brightness is (±20%).
SATURATION: dict[str, Callable[[Image.Image, Path], Path]] = {
    "saturation_+20": _saturated(1.2),
    "saturation_-20": _saturated(0.8),
}
# Negatives: versions of a photo in other colours (an edit, never moved: `likeness._colours`).
# Of a photo in colour: black and white, sepia, 70% of its colour taken away.
COLOUR_EDITS: dict[str, Callable[[Image.Image, Path], Path]] = {
    "greyscale": lambda im, dst: accuracy._jpeg(ImageOps.grayscale(im), dst),
    "sepia": _sepia,
    "saturation_-70": _saturated(0.3),
}
# Of a grey photo (its black-and-white version is the same picture): toned sepia or warm.
TONINGS: dict[str, Callable[[Image.Image, Path], Path]] = {"sepia": _sepia, "tinted": _tinted}


def _suffix(kind: str) -> str:
    if kind.startswith("heic"):
        return ".heic"
    if kind.startswith("screenshot") or kind == "png":
        return ".png"
    return ".webp" if kind == "webp" else ".jpg"


def photo_pairs(
    source: accuracy.Source,
    long_side: int,
    tmp: Path,
    stereo: dict[str, Path],
    faint: bool = True,
) -> list[dict[str, Any]]:
    """The positives and negatives of one photo (and of its night, dim and foggy scenes when
    `faint`); its original is kept in `stereo` when it is one of the stereo pair."""
    out: list[dict[str, Any]] = []
    name = source.name
    with Image.open(source.path()) as raw:
        upscaled = accuracy._upscale(raw.convert("RGB"), long_side)
    original = accuracy._jpeg(upscaled, tmp / f"{name}.jpg", accuracy.ORIGINAL_QUALITY)
    with Image.open(original) as decoded:
        base = decoded.convert("RGB")

    def variant(kind: str) -> Path:
        make = MAKERS.get(kind, accuracy.VARIANTS[kind][2])
        return make(base, tmp / f"{name}-{kind}{_suffix(kind)}")

    for kind in POSITIVE_KINDS:
        path = variant(kind)
        family = accuracy.VARIANTS[kind][0]
        out.append(
            judge("positive", family, kind, name, path, original, TRANSFORM.get(kind, "identity"))
        )
        path.unlink()

    for kind, make in SATURATION.items():
        path = make(base, tmp / f"{name}-{kind}.jpg")
        out.append(judge("positive", "tone", kind, name, path, original))
        path.unlink()

    marked = variant("watermark")
    negative(out, "watermark", "watermark", name, marked, original)
    marked.unlink()

    edits = COLOUR_EDITS if _coloured(base) else TONINGS
    for kind, make in edits.items():
        edited = make(base, tmp / f"{name}-{kind}.jpg")
        negative(out, "colour", kind, name, edited, original)
        edited.unlink()

    w, h = base.size
    span = round(0.85 * w)
    burst_a = accuracy._jpeg(
        base.crop((0, 0, span, h)), tmp / f"{name}-burst_a.jpg", accuracy.ORIGINAL_QUALITY
    )
    burst_b = accuracy._jpeg(
        base.crop((w - span, 0, w, h)), tmp / f"{name}-burst_b.jpg", accuracy.ORIGINAL_QUALITY
    )
    negative(out, "burst", "burst", name, burst_b, burst_a)
    burst_a.unlink()
    burst_b.unlink()

    # The crop kept, the uncropped original would move: as the counterpart (crop_2, the
    # closest to MIN_COVER, and crop_10), and as the newcomer (crop_5).
    for kind in ("crop_2", "crop_10"):
        crop = variant(kind)
        negative(
            out, "crop_larger_moves", f"{kind} kept", name, crop, original, moving_is_newcomer=False
        )
        crop.unlink()
    crop = variant("crop_5")
    negative(
        out,
        "crop_larger_moves",
        "crop_5 kept (original newcomer)",
        name,
        original,
        crop,
        small_moves=False,
    )
    crop.unlink()

    if faint:
        out += faint_pairs(name, base, tmp)

    if name in accuracy.STEREO:
        stereo[name] = original
    else:
        original.unlink()
    return out


# --- Faint changes: night, dim and foggy photos ----------------------------------------------

# Scenes made from an original's pixels (0-255 per channel): a night shot (0-64), a dim room
# in flat light (16-118), fog (the photo at 30% contrast over a light grey, 123-200).
SCENES: dict[str, Callable[[np.ndarray], np.ndarray]] = {
    "night": lambda x: x * 0.25,
    "dim": lambda x: 16 + x * 0.4,
    "fog": lambda x: 0.7 * 176 + 0.3 * x,
}
# (kind, the change's sign per scene): a figure standing in the scene (lit at night, a dark
# silhouette in the dim room and in fog) and a region brightened (a window lit, a lamp on)
FAINT_CHANGES = {
    "figure": {"night": 1, "dim": -1, "fog": -1},
    "glow": {"night": 1, "dim": 1, "fog": 1},
}
FAINT_LEVELS = (12, 25)  # the change's grey levels, at its peak (drawn per pair)
FAINT_COPIES = ("jpeg_q95", "jpeg_q85", "jpeg_q70", "jpeg_q50", "resize_50", "resize_25")
FAINT_COPIES += ("png", "webp", "heic")


def _faint_mask(size: tuple[int, int], kind: str, rng: random.Random) -> np.ndarray:
    """Where the change is (0-1, soft-edged), away from the frame's edges: a standing figure
    9% of the frame's height (head, shoulders, legs), or a lit window 7% x 5% of it."""
    w, h = size
    mask = Image.new("L", size, 0)
    draw = ImageDraw.Draw(mask)
    if kind == "figure":
        fh = round(0.09 * h)
        fw = max(6, round(fh * 0.36))
        x, y = rng.randint(w // 8, w * 7 // 8 - fw), rng.randint(h // 4, h * 7 // 8 - fh)
        head = round(fw * 0.5)
        draw.ellipse((x + fw // 2 - head // 2, y, x + fw // 2 + head // 2, y + head), fill=255)
        draw.rounded_rectangle((x, y + head, x + fw, y + round(fh * 0.6)), fw // 4, fill=255)
        leg = round(fw * 0.4)
        draw.rectangle((x + 1, y + round(fh * 0.55), x + leg, y + fh), fill=255)
        draw.rectangle((x + fw - leg, y + round(fh * 0.55), x + fw - 1, y + fh), fill=255)
        blur = 1.5
    else:
        ww, wh = round(0.07 * w), round(0.05 * h)
        x, y = rng.randint(w // 8, w * 7 // 8 - ww), rng.randint(h // 8, h * 7 // 8 - wh)
        draw.rectangle((x, y, x + ww, y + wh), fill=255)
        blur = 3.0
    soft = mask.filter(ImageFilter.GaussianBlur(blur))
    return np.asarray(soft, np.float32)[..., None] / 255


def faint_pairs(name: str, base: Image.Image, tmp: Path) -> list[dict[str, Any]]:
    """Each scene of `base` (its original: a camera JPEG) vs the same scene with a faint local
    change (a negative, and again with the original re-saved at 50%, which would move), and
    the scene's copies (positives): re-encodes, resizes, PNG, WebP, HEIC."""
    out: list[dict[str, Any]] = []
    pixels = np.asarray(base, np.float32)
    for scene, make in SCENES.items():
        family = f"faint_{scene}"
        item = f"{name} {scene}"
        dark = make(pixels)
        scene_im = Image.fromarray(dark.clip(0, 255).round().astype(np.uint8))
        original = accuracy._jpeg(scene_im, tmp / f"{name}-{scene}.jpg", accuracy.ORIGINAL_QUALITY)
        for kind, signs in FAINT_CHANGES.items():
            rng = random.Random(f"{name}:{scene}:{kind}")
            level = signs[scene] * rng.randint(*FAINT_LEVELS)
            changed = dark + level * _faint_mask(scene_im.size, kind, rng)
            path = accuracy._jpeg(
                Image.fromarray(changed.clip(0, 255).round().astype(np.uint8)),
                tmp / f"{name}-{scene}-{kind}.jpg",
                accuracy.ORIGINAL_QUALITY,
            )
            negative(out, family, f"{kind} {level:+d}", item, path, original)
            path.unlink()
        with Image.open(original) as decoded:
            camera = decoded.convert("RGB")
        for kind in FAINT_COPIES:
            make_copy = MAKERS.get(kind, accuracy.VARIANTS[kind][2])
            copy = make_copy(camera, tmp / f"{name}-{scene}-{kind}{_suffix(kind)}")
            out.append(judge("positive", family, kind, item, copy, original))
            copy.unlink()
        original.unlink()
    return out


# --- Chat screenshots -------------------------------------------------------------------------

CHAT_WORDS = [
    "ok",
    "yes",
    "sure",
    "thanks",
    "see",
    "you",
    "at",
    "the",
    "station",
    "tomorrow",
    "tonight",
    "dinner",
    "lunch",
    "is",
    "booked",
    "for",
    "two",
    "can",
    "we",
    "move",
    "it",
    "to",
    "Friday",
    "Monday",
    "running",
    "late",
    "sorry",
    "traffic",
    "again",
    "did",
    "get",
    "my",
    "message",
    "call",
    "me",
    "when",
    "free",
    "love",
    "that",
    "photo",
    "where",
    "was",
    "taken",
    "bring",
    "keys",
    "please",
    "meeting",
    "moved",
    "room",
    "coffee",
    "after",
    "work",
    "great",
    "idea",
    "haha",
    "no",
    "worries",
    "send",
    "address",
    "flight",
    "lands",
    "7:30",
    "8:15",
    "6pm",
    "9am",
    "$45",
    "$120",
    "12",
    "3",
    "tickets",
    "paid",
    "I",
    "just",
    "left",
    "home",
    "office",
    "school",
    "pick",
    "up",
    "kids",
    "train",
    "delayed",
]
DIGITS = "0123456789"


@dataclass(frozen=True, slots=True)
class Bubble:
    box: tuple[int, int, int, int]
    lines: int
    mine: bool
    stamp: str


@dataclass(frozen=True, slots=True)
class ChatLayout:
    size: tuple[int, int]
    font_size: int
    dark: bool
    bubbles: tuple[Bubble, ...]
    wallpaper: Image.Image
    contact: str


def chat_layout(
    size: tuple[int, int], font_size: int, dark: bool, seed: int, photo: Path
) -> ChatLayout:
    """The bubbles' rectangles and the wallpaper of one conversation page."""
    rng = random.Random(seed)
    w, h = size
    line = round(font_size * 1.35)
    pad = round(font_size * 0.6)
    margin = round(w * 0.03)
    top = round(h * 0.035) + round(h * 0.065) + pad
    bottom = h - round(h * 0.075) - pad
    bubbles: list[Bubble] = []
    y = top
    while True:
        lines = rng.choice((1, 1, 1, 2, 2, 3, 4))
        bh = lines * line + 2 * pad + round(font_size * 0.7)  # room for the time stamp
        if y + bh > bottom:
            break
        bw = round(w * rng.uniform(0.3, 0.76))
        mine = rng.random() < 0.5
        x = w - margin - bw if mine else margin
        stamp = f"{rng.randint(8, 22)}:{rng.randint(0, 59):02d}"
        bubbles.append(Bubble((x, y, x + bw, y + bh), lines, mine, stamp))
        y += bh + (pad // 2 if rng.random() < 0.6 else 2 * pad)
    with Image.open(photo) as im:
        pic = im.convert("RGB")
    scale = max(w / pic.width, h / pic.height)
    pic = pic.resize(
        (math.ceil(pic.width * scale), math.ceil(pic.height * scale)), Image.Resampling.BILINEAR
    )
    left, upper = (pic.width - w) // 2, (pic.height - h) // 2
    pic = pic.crop((left, upper, left + w, upper + h)).filter(ImageFilter.GaussianBlur(w / 25))
    tint = Image.new("RGB", size, "#0b141a" if dark else "#efeae2")
    wallpaper = Image.blend(pic, tint, 0.7)
    contact = rng.choice(("Alex Morgan", "Sam", "Mum", "Jordan Lee", "Chris (work)"))
    return ChatLayout(size, font_size, dark, tuple(bubbles), wallpaper, contact)


Texts = list[list[list[str]]]  # bubble → line → words


def chat_texts(layout: ChatLayout, seed: int) -> Texts:
    """Words for every line of every bubble, each bubble from its own generator (so that one
    bubble's words can change alone), each line filled to the bubble's width."""
    font = ImageFont.load_default(size=layout.font_size)
    pad = round(layout.font_size * 0.6)
    texts: Texts = []
    for i, bubble in enumerate(layout.bubbles):
        rng = random.Random(f"{seed}:{i}")
        room = bubble.box[2] - bubble.box[0] - 2 * pad
        lines: list[list[str]] = []
        for _ in range(bubble.lines):
            words = [rng.choice(CHAT_WORDS)]
            while True:
                word = rng.choice(CHAT_WORDS)
                if font.getlength(" ".join([*words, word])) > room:
                    break
                words.append(word)
            lines.append(words)
        texts.append(lines)
    return texts


def draw_chat(layout: ChatLayout, texts: Texts, dst: Path) -> Path:
    w, h = layout.size
    fs = layout.font_size
    ink = "#e9edef" if layout.dark else "#111b21"
    faint = "#8696a0" if layout.dark else "#667781"
    bar = "#1f2c34" if layout.dark else "#f0f2f5"
    im = layout.wallpaper.copy()
    draw = ImageDraw.Draw(im)
    font = ImageFont.load_default(size=fs)
    small = ImageFont.load_default(size=max(8, round(fs * 0.62)))
    head = round(h * 0.035) + round(h * 0.065)
    draw.rectangle((0, 0, w, head), fill=bar)
    test_photos.draw_status_bar(im, bar)
    status = round(h * 0.035)
    r = round(h * 0.022)
    cy = status + round(h * 0.065) // 2
    draw.ellipse((round(w * 0.1), cy - r, round(w * 0.1) + 2 * r, cy + r), fill="#6b8e9e")
    name_font = ImageFont.load_default(size=round(fs * 1.15))
    draw.text((round(w * 0.1) + 3 * r, cy), layout.contact, fill=ink, font=name_font, anchor="lm")
    foot = h - round(h * 0.075)
    draw.rectangle((0, foot, w, h), fill=bar)
    box = (round(w * 0.04), foot + round(h * 0.012), round(w * 0.82), h - round(h * 0.012))
    draw.rounded_rectangle(
        box, radius=(box[3] - box[1]) // 2, fill="#2a3942" if layout.dark else "white"
    )
    draw.text((box[0] + fs, (box[1] + box[3]) // 2), "Message", fill=faint, font=font, anchor="lm")
    draw.ellipse(
        (round(w * 0.86), box[1], round(w * 0.86) + box[3] - box[1], box[3]), fill="#00a884"
    )
    pad = round(fs * 0.6)
    line = round(fs * 1.35)
    for bubble, lines in zip(layout.bubbles, texts, strict=True):
        if layout.dark:
            fill = "#005c4b" if bubble.mine else "#202c33"
        else:
            fill = "#d9fdd3" if bubble.mine else "white"
        draw.rounded_rectangle(bubble.box, radius=round(fs * 0.5), fill=fill)
        x, y = bubble.box[0] + pad, bubble.box[1] + pad
        for words in lines:
            draw.text((x, y), " ".join(words), fill=ink, font=font)
            y += line
        draw.text(
            (bubble.box[2] - pad, bubble.box[3] - pad // 2),
            bubble.stamp,
            fill=faint,
            font=small,
            anchor="rd",
        )
    im.save(dst, format="PNG", compress_level=1)
    return dst


def _one_word(texts: Texts, rng: random.Random) -> Texts:
    """`texts` with one word (in a middle bubble) replaced by another of the same length."""
    out = [[list(ws) for ws in lines] for lines in texts]
    spots = [
        (b, i, j)
        for b in range(len(out) // 3, len(out))
        for i, ws in enumerate(out[b])
        for j, word in enumerate(ws)
        if len(word) >= 4 and any(len(o) == len(word) and o != word for o in CHAT_WORDS)
    ]
    b, i, j = rng.choice(spots)
    word = out[b][i][j]
    out[b][i][j] = rng.choice([o for o in CHAT_WORDS if len(o) == len(word) and o != word])
    return out


def _one_digit(texts: Texts, rng: random.Random) -> Texts | None:
    """`texts` with one digit of a time or an amount changed (another digit), or None if
    the page has no number."""
    out = [[list(ws) for ws in lines] for lines in texts]
    spots = [
        (b, i, j)
        for b, lines in enumerate(out)
        for i, ws in enumerate(lines)
        for j, word in enumerate(ws)
        if any(c in DIGITS for c in word)
    ]
    if not spots:
        return None
    b, i, j = rng.choice(spots)
    word = out[b][i][j]
    k = rng.choice([n for n, c in enumerate(word) if c in DIGITS])
    digit = rng.choice([d for d in DIGITS if d != word[k]])
    out[b][i][j] = word[:k] + digit + word[k + 1 :]
    return out


def chat_pairs(
    configs: list[tuple[tuple[int, int], int, bool]], wallpaper: Path, tmp: Path
) -> list[dict[str, Any]]:
    out: list[dict[str, Any]] = []
    for n, (size, font_size, dark) in enumerate(configs):
        item = f"{size[0]}x{size[1]} {font_size}px {'dark' if dark else 'light'}"
        layout = chat_layout(size, font_size, dark, 100 + n, wallpaper)
        texts_a = chat_texts(layout, 1000 + n)
        a = draw_chat(layout, texts_a, tmp / "chat_a.png")
        rng = random.Random(n)
        pages: dict[str, Texts | None] = {
            "distinct": chat_texts(layout, 2000 + n),
            "last_bubble": [*texts_a[:-1], chat_texts(layout, 3000 + n)[-1]],
            "one_word": _one_word(texts_a, rng),
            "one_digit": _one_digit(texts_a, rng),
        }
        for kind, texts_b in pages.items():
            if texts_b is None:
                continue
            b = draw_chat(layout, texts_b, tmp / "chat_b.png")
            negative(out, "chat", kind, item, b, a, factors=(0.5, 0.25))
            b.unlink()
        text_positives(out, "chat", item, a)
        a.unlink()
    return out


# --- Letters, documents, text screenshots -----------------------------------------------------

LETTER_WORDS = [
    "the",
    "agreement",
    "of",
    "and",
    "to",
    "your",
    "account",
    "we",
    "confirm",
    "that",
    "payment",
    "invoice",
    "is",
    "due",
    "within",
    "thirty",
    "days",
    "please",
    "find",
    "enclosed",
    "our",
    "terms",
    "for",
    "services",
    "rendered",
    "in",
    "period",
    "as",
    "discussed",
    "meeting",
    "on",
    "behalf",
    "client",
    "any",
    "questions",
    "regarding",
    "this",
    "matter",
    "contact",
    "office",
    "sincerely",
    "property",
    "lease",
    "renewal",
    "notice",
    "amount",
    "balance",
    "reference",
    "schedule",
    "attached",
    "signed",
    "copy",
]


PENCIL_NOTE = "paid 12/3, ref 4921 - call Anna 555 0142"
# (grey levels under the paper, the same scan or a new one): the pencil note's pairs
PENCIL_NOTES = [(22, False), (15, False), (22, True)]


def letter(
    dst: Path,
    seed: int,
    size: tuple[int, int] = (1240, 1754),
    note: int = 0,
    scan: int | None = None,
) -> Path:
    """A letter on the firm's letterhead, scanned: the letterhead is the same for every
    seed, the body and the scan's noise are the seed's (the noise `scan`'s when given: the
    same page scanned again). `note`: a line written in pencil above the salutation, that
    many grey levels darker than the paper."""
    rng = random.Random(seed)
    w, h = size
    im = Image.new("L", size, 0)  # ink coverage, drawn in white on black
    draw = ImageDraw.Draw(im)
    draw.ellipse((120, 90, 220, 190), fill=255)
    draw.rectangle((150, 120, 190, 160), fill=0)
    draw.text((250, 100), "Northfield & Hale LLP", fill=255, font=ImageFont.load_default(size=46))
    small = ImageFont.load_default(size=20)
    draw.text(
        (250, 160), "14 Quay Street · Bristol BS1 4DJ · +44 117 496 0000", fill=170, font=small
    )
    draw.rectangle((120, 225, w - 120, 229), fill=255)
    draw.rectangle((120, h - 170, w - 120, h - 168), fill=255)
    draw.text(
        (w // 2, h - 140),
        "Registered in England No. 0712345 · VAT GB 123 4567 89",
        fill=200,
        font=small,
        anchor="mt",
    )
    body = ImageFont.load_default(size=24)
    draw.text((w - 150, 290), "12 March 2026", fill=255, font=body, anchor="ra")
    draw.text((150, 370), "Dear Ms Example,", fill=255, font=body)
    y = 430
    while y < h - 330:
        if rng.random() < 0.12:
            y += 30  # a paragraph break
        words = [rng.choice(LETTER_WORDS)]
        while body.getlength(" ".join(words)) < w - 300 - 120:
            words.append(rng.choice(LETTER_WORDS))
        draw.text((150, y), " ".join(words), fill=255, font=body)
        y += 38
    draw.text((150, h - 300), "Yours sincerely,", fill=255, font=body)
    ink = np.asarray(im.filter(ImageFilter.GaussianBlur(0.7)), np.float32) / 255
    pencil = Image.new("L", size, 0)
    if note:
        ImageDraw.Draw(pencil).text(
            (160, 300), PENCIL_NOTE, fill=255, font=ImageFont.load_default(size=26)
        )
    lead = np.asarray(pencil.filter(ImageFilter.GaussianBlur(0.8)), np.float32) / 255
    noise = np.random.default_rng(seed if scan is None else scan)
    noise = noise.normal(0, 5, (h, w)).astype(np.float32)
    shade = (
        np.linspace(-4, 4, w, dtype=np.float32)[None, :]
        + np.linspace(3, -3, h, dtype=np.float32)[:, None]
    )
    grey = 236 + shade + noise
    grey = grey * (1 - ink) + 25 * ink - note * lead
    paper = np.stack([grey + 4, grey + 1, grey - 6], axis=2)  # a warm paper tone
    Image.fromarray(paper.clip(0, 255).astype(np.uint8)).save(dst, format="JPEG", quality=85)
    return dst


def text_pairs(tmp: Path, quick: bool) -> list[dict[str, Any]]:
    out: list[dict[str, Any]] = []
    factors = (0.5, 0.25)
    for s1, s2 in LETTER_PAIRS[:1] if quick else LETTER_PAIRS:
        a, b = letter(tmp / "letter_a.jpg", s1), letter(tmp / "letter_b.jpg", s2)
        negative(out, "letterhead", "two letters", f"seeds {s1}/{s2}", b, a, factors)
        for level, rescanned in PENCIL_NOTES:
            scan = s1 + 100 if rescanned else None
            noted = letter(tmp / "letter_note.jpg", s1, note=level, scan=scan)
            kind = f"pencil note -{level}, {'rescanned' if rescanned else 'same scan'}"
            negative(out, "faint_note", kind, f"seed {s1}", noted, a, factors)
            noted.unlink()
        text_positives(out, "letterhead", f"seed {s1}", a)
    for s1, s2 in DOCUMENT_PAIRS[:1] if quick else DOCUMENT_PAIRS:
        a = test_photos.document(tmp / "doc_a.jpg", s1)
        b = test_photos.document(tmp / "doc_b.jpg", s2)
        negative(out, "document", "two seeds", f"seeds {s1}/{s2}", b, a, factors)
        text_positives(out, "document", f"seed {s1}", a)
    for size, font_size, dark, (s1, s2) in TEXT_SCREENSHOTS[:2] if quick else TEXT_SCREENSHOTS:
        item = f"{size[0]}x{size[1]} {font_size}px {'dark' if dark else 'light'}"
        kw: dict[str, Any] = {"size": size, "dark": dark, "font_size": font_size}
        a = test_photos.text_screenshot(tmp / "text_a.png", s1, **kw)
        b = test_photos.text_screenshot(tmp / "text_b.png", s2, **kw)
        negative(out, "text_screenshot", "two seeds", item, b, a, factors)
        text_positives(out, "text_screenshot", item, a)
    return out


# --- Report -----------------------------------------------------------------------------------


@contextmanager
def thresholds(max_cell_share: float, min_cover: float) -> Iterator[None]:
    """The likeness module's thresholds set for a while (what the real `refusal` reads)."""
    saved = likeness.MAX_CELL_SHARE, likeness.MIN_COVER
    likeness.MAX_CELL_SHARE, likeness.MIN_COVER = max_cell_share, min_cover
    try:
        yield
    finally:
        likeness.MAX_CELL_SHARE, likeness.MIN_COVER = saved


def sweep(pairs: list[dict[str, Any]]) -> dict[str, list[dict[str, Any]]]:
    def count(d: float, c: float) -> dict[str, Any]:
        with thresholds(d, c):
            moved = [
                p
                for p in pairs
                if likeness.refusal(p["_likeness"], moving_is_newcomer=p["moving"] == "newcomer")
                is None
            ]
        pos = sum(p["polarity"] == "positive" for p in pairs)
        return {
            "max_cell_share": d,
            "min_cover": c,
            "positives_moved": sum(p["polarity"] == "positive" for p in moved),
            "positives": pos,
            "false_moves": sum(p["polarity"] == "negative" for p in moved),
            "false_move_families": sorted(
                {p["family"] for p in moved if p["polarity"] == "negative"}
            ),
        }

    return {
        "max_cell_share": [
            count(d, likeness.MIN_COVER) for d in (0.25, 0.5, 1, 1.5, 2, 3, 4, 6, 8)
        ],
        "min_cover": [
            count(likeness.MAX_CELL_SHARE, c)
            for c in (0.8, 0.9, 0.93, 0.95, 0.96, 0.97, 0.98, 0.99)
        ],
    }


def _brief(p: dict[str, Any]) -> dict[str, Any]:
    keep = ("family", "kind", "item", "worst", "cover", "sides", "moving", "refusal")
    return {k: p[k] for k in keep}


def summarize(pairs: list[dict[str, Any]]) -> dict[str, Any]:
    families: dict[tuple[str, str], list[dict[str, Any]]] = {}
    for p in pairs:
        families.setdefault((p["polarity"], p["family"]), []).append(p)
    rows = []
    for (polarity, family), ps in families.items():
        worsts = [p["worst"] for p in ps if p["worst"] is not None]
        covers = [p["cover"][0 if p["moving"] == "newcomer" else 1] for p in ps]
        by: dict[str, int] = {}
        for p in ps:
            if p["refused_by"]:
                by[p["refused_by"]] = by.get(p["refused_by"], 0) + 1
        rows.append(
            {
                "polarity": polarity,
                "family": family,
                "pairs": len(ps),
                "moved": sum(p["passed"] for p in ps),
                "refused": sum(not p["passed"] for p in ps),
                "refused_by": by,
                # positives: how close the worst copy came; negatives: the closest different one
                "worst_max": max(worsts, default=None),
                "worst_min": min(worsts, default=None),
                "cover_moving_min": min(covers),
                "cover_moving_max": max(covers),
            }
        )
    positives = [p for p in pairs if p["polarity"] == "positive"]
    negatives = [p for p in pairs if p["polarity"] == "negative"]
    pixel_negatives = [p for p in negatives if p["family"].split("@")[0] not in COVER_NEGATIVES]
    pos_worst = max((p["worst"] for p in positives if p["worst"] is not None), default=None)
    pos_moved_worst = max(
        (p["worst"] for p in positives if p["passed"] and p["worst"] is not None), default=None
    )
    neg_worst = min((p["worst"] for p in pixel_negatives if p["worst"] is not None), default=None)
    cover_pos = min(p["cover"][0 if p["moving"] == "newcomer" else 1] for p in positives)
    cover_neg = max(
        p["cover"][0 if p["moving"] == "newcomer" else 1]
        for p in negatives
        if p["family"].split("@")[0] in COVER_NEGATIVES
    )
    times = sorted(p["ms"] for p in pairs)
    return {
        "totals": {
            "positives": len(positives),
            "positives_moved": sum(p["passed"] for p in positives),
            "negatives": len(negatives),
            "false_moves": sum(p["passed"] for p in negatives),
        },
        "families": rows,
        "chat_kinds": chat_kinds(negatives),
        "faint_kinds": faint_kinds(negatives),
        "margin": {
            "positive_worst_max": pos_worst,
            "positive_worst_max_of_moved": pos_moved_worst,
            "pixel_negative_worst_min": neg_worst,
            "gap": None
            if pos_worst is None or neg_worst is None
            else round(neg_worst - pos_worst, 3),
            "note": "pixel negatives: every negative family but "
            + ", ".join(COVER_NEGATIVES)
            + " (whose shared pixels are the same: only the cover rule refuses them)",
            "positive_cover_moving_min": cover_pos,
            "cover_negative_cover_moving_max": cover_neg,
        },
        "false_moves": [_brief(p) for p in negatives if p["passed"]],
        "positives_refused": [_brief(p) for p in positives if not p["passed"]],
        "timing_ms": {
            "pairs": len(times),
            "p50": round(statistics.median(times), 1),
            "p95": round(times[min(len(times) - 1, math.ceil(0.95 * len(times)) - 1)], 1),
            "max": times[-1],
            "photos_p50": round(
                statistics.median(
                    [p["ms"] for p in pairs if p["family"].split("@")[0] not in TEXT_FAMILIES]
                ),
                1,
            ),
            "text_p50": round(
                statistics.median(
                    [p["ms"] for p in pairs if p["family"].split("@")[0] in TEXT_FAMILIES]
                ),
                1,
            ),
        },
    }


def chat_kinds(negatives: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The chat negatives per kind of difference and size of the moving copy."""
    return _kinds([p for p in negatives if p["family"].split("@")[0] == "chat"], str)


def faint_kinds(negatives: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The faint negatives per kind of change (a figure, a glow, a pencil note; the photos'
    levels pooled) and size of the moving copy."""
    return _kinds(
        [p for p in negatives if p["family"].startswith("faint_")],
        lambda kind: kind if kind.startswith("pencil") else kind.split()[0],
    )


def _kinds(negatives: list[dict[str, Any]], group: Callable[[str], str]) -> list[dict[str, Any]]:
    groups: dict[tuple[str, str], list[dict[str, Any]]] = {}
    for p in negatives:
        groups.setdefault((group(p["kind"]), p["family"]), []).append(p)
    return [
        {
            "kind": kind,
            "family": family,
            "pairs": len(ps),
            "moved": sum(p["passed"] for p in ps),
            "worst_min": min((p["worst"] for p in ps if p["worst"] is not None), default=None),
            "worst_max": max((p["worst"] for p in ps if p["worst"] is not None), default=None),
        }
        for (kind, family), ps in sorted(groups.items())
    ]


def _fmt(x: float | None) -> str:
    return "–" if x is None else f"{x:.2f}"


def markdown(result: dict[str, Any]) -> str:
    s = result["summary"]
    cfg = result["config"]
    t = s["totals"]
    m = s["margin"]
    lines = [
        "# Pixel likeness check (`dedupd.likeness`)",
        "",
        f"Generated by `bench/likeness.py` ({result['machine']['timestamp']}, "
        f"{result['wall_s']:.0f} s{', --quick' if cfg['quick'] else ''}). Thresholds: "
        f"MAX_CELL_SHARE {cfg['max_cell_share']:g}, MIN_COVER {cfg['min_cover']:g} "
        f"(cells of {cfg['cell']} px, at most {cfg['side']} px). "
        f"{t['positives']} positive pairs, {t['positives_moved']} moved; {t['negatives']} "
        f"negative pairs, **{t['false_moves']} false moves**. `@50%`/`@25%`: the counterpart "
        "re-saved smaller, and that copy would move.",
        "",
        "| | family | pairs | moved | refused (by rule) | worst max | worst min "
        "| cover of moving, min |",
        "|---|---|---:|---:|---|---:|---:|---:|",
    ]
    for r in s["families"]:
        by = ", ".join(f"{k} {v}" for k, v in sorted(r["refused_by"].items()))
        lines.append(
            f"| {'+' if r['polarity'] == 'positive' else '−'} | {r['family']} | {r['pairs']} "
            f"| {r['moved']} | {r['refused']}{f' ({by})' if by else ''} "
            f"| {_fmt(r['worst_max'])} | {_fmt(r['worst_min'])} | {r['cover_moving_min']:.3f} |"
        )
    lines += [
        "",
        f"Margin: positives' worst cell at most {_fmt(m['positive_worst_max'])} (of those "
        f"moved {_fmt(m['positive_worst_max_of_moved'])}); negatives the pixels must refuse at "
        f"least {_fmt(m['pixel_negative_worst_min'])}. Cover of the moving file: positives at "
        f"least {m['positive_cover_moving_min']:.3f}, burst and crop negatives at most "
        f"{m['cover_negative_cover_moving_max']:.3f}.",
        "",
        f"Compare time (ms, `compare_files`): p50 {s['timing_ms']['p50']}, p95 "
        f"{s['timing_ms']['p95']}, max {s['timing_ms']['max']}.",
        "",
        "Chat negatives by kind of difference (moved = false moves):",
        "",
        "| kind | family | pairs | moved | worst min | worst max |",
        "|---|---|---:|---:|---:|---:|",
        *(
            f"| {r['kind']} | {r['family']} | {r['pairs']} | {r['moved']} "
            f"| {_fmt(r['worst_min'])} | {_fmt(r['worst_max'])} |"
            for r in s["chat_kinds"]
        ),
        "",
        "Faint negatives by kind of change (moved = false moves):",
        "",
        "| kind | family | pairs | moved | worst min | worst max |",
        "|---|---|---:|---:|---:|---:|",
        *(
            f"| {r['kind']} | {r['family']} | {r['pairs']} | {r['moved']} "
            f"| {_fmt(r['worst_min'])} | {_fmt(r['worst_max'])} |"
            for r in s["faint_kinds"]
        ),
        "",
        "## False moves (negatives allowed to move)",
        "",
    ]
    lines += [
        f"- {p['family']} / {p['kind']} / {p['item']}: worst {_fmt(p['worst'])}, "
        f"cover {p['cover']}, sides {p['sides']}"
        for p in s["false_moves"]
    ] or ["None."]
    lines += ["", "## Positives refused", ""]
    lines += [
        f"- {p['family']} / {p['kind']} / {p['item']}: {p['refusal']}"
        for p in s["positives_refused"]
    ] or ["None."]
    lines += [
        "",
        "## Threshold sweep",
        "",
        "| MAX_CELL_SHARE | MIN_COVER | positives moved | false moves | families |",
        "|---:|---:|---:|---:|---|",
    ]
    for row in result["sweep"]["max_cell_share"] + result["sweep"]["min_cover"]:
        lines.append(
            f"| {row['max_cell_share']:g} | {row['min_cover']:g} | "
            f"{row['positives_moved']}/{row['positives']} | {row['false_moves']} | "
            f"{', '.join(row['false_move_families'])} |"
        )
    return "\n".join(lines)


def run(args: argparse.Namespace) -> dict[str, Any]:
    started = time.perf_counter()
    info = machine_info()
    srcs = [s for s in accuracy.sources() if s.path().is_file()]
    missing = [f"{s.package}/{s.relpath}" for s in accuracy.sources() if not s.path().is_file()]
    photos = [s for s in srcs if not args.quick or s.name in QUICK_PHOTOS]
    wallpaper = (
        next((s.path() for name in WALLPAPER for s in srcs if s.name == name), None)
        or srcs[0].path()
    )
    pairs: list[dict[str, Any]] = []

    def progress(what: str, n: int) -> None:
        print(f"{time.perf_counter() - started:6.1f}s {what}: {n} pairs", file=sys.stderr)

    with tempfile.TemporaryDirectory(prefix="dedupd-likeness-") as tmp_name:
        tmp = Path(tmp_name)
        new = chat_pairs(QUICK_CHATS if args.quick else CHATS, wallpaper, tmp)
        pairs += new
        progress("chat", len(new))
        new = text_pairs(tmp, args.quick)
        pairs += new
        progress("letters, documents, text screenshots", len(new))
        stereo: dict[str, Path] = {}
        for source in photos:
            faint = not args.quick or source.name not in accuracy.STEREO
            new = photo_pairs(source, args.long_side, tmp, stereo, faint)
            pairs += new
            progress(source.name, len(new))
        if len(stereo) == 2:
            left, right = (stereo[n] for n in accuracy.STEREO)
            negative(pairs, "stereo", "stereo", "motorcycle", right, left)

    result: dict[str, Any] = {
        "benchmark": "likeness",
        "machine": info,
        "config": {
            "quick": args.quick,
            "long_side": args.long_side,
            "max_cell_share": likeness.MAX_CELL_SHARE,
            "min_cover": likeness.MIN_COVER,
            "cell": likeness.CELL,
            "strong": likeness.STRONG,
            "faint": likeness.FAINT,
            "side": likeness.SIDE,
            "max_pixels": MAX_PIXELS,
            "call": "likeness.compare_files(newcomer, Counterpart(path, FileStat, transform), "
            "10**9); likeness.refusal(likeness, moving_is_newcomer=...)",
            "processes": 1,
        },
        "dataset": {
            "photos": [s.name for s in photos],
            "missing": missing,
            "wallpaper": str(wallpaper.name),
            "positive_photo_kinds": {
                k: {"family": accuracy.VARIANTS[k][0], "description": accuracy.VARIANTS[k][1]}
                for k in POSITIVE_KINDS
            },
            "excluded_photo_kinds": {
                **{
                    k: f"family {f}: an edit, judged as a negative"
                    for k, (f, _, _) in accuracy.VARIANTS.items()
                    if f in EDITS
                },
                **SKIPPED_KINDS,
            },
            "text_positive_kinds": list(TEXT_COPIES),
            "chat_configs": [
                f"{s[0]}x{s[1]} {f}px {'dark' if d else 'light'}"
                for s, f, d in (QUICK_CHATS if args.quick else CHATS)
            ],
            "cover_negatives": list(COVER_NEGATIVES),
            "faint_scenes": list(SCENES),
            "faint_changes": FAINT_CHANGES,
            "faint_levels": list(FAINT_LEVELS),
            "faint_copies": list(FAINT_COPIES),
            "pencil_notes": [
                f"-{level}, {'rescanned' if rescanned else 'same scan'}"
                for level, rescanned in PENCIL_NOTES
            ],
        },
        "summary": summarize(pairs),
        "sweep": sweep(pairs),
        "pairs": [{k: v for k, v in p.items() if not k.startswith("_")} for p in pairs],
    }
    info["loadavg_end"] = list(os.getloadavg())
    result["wall_s"] = round(time.perf_counter() - started, 1)
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--long-side", type=int, default=1600, help="originals' long side, px")
    parser.add_argument(
        "--out-dir",
        type=Path,
        default=None,
        help="default bench/results (--quick: the system temp directory)",
    )
    parser.add_argument(
        "--quick",
        action="store_true",
        help="smoke run: 4 photos (the faint scenes of 2), 2 chat configurations",
    )
    args = parser.parse_args()
    if args.long_side < 64:
        parser.error("--long-side must be >= 64")
    result = run(args)
    text = json.dumps(result, indent=1, ensure_ascii=False)
    md = markdown(result)
    stem = "likeness-quick" if args.quick else "likeness"
    accuracy.write_results(stem, args.out_dir, args.quick, text, md)
    print(text)


if __name__ == "__main__":
    main()
