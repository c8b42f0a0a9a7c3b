"""Real test photos and the variants camera uploads produce, generated with Pillow.

Used by the tests, the demo (`make run`) and the benchmarks, so that all three exercise the
same kinds of duplicate.
"""

from __future__ import annotations

import io
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pillow_heif
from PIL import Image

pillow_heif.register_heif_opener()

DATA = Path(__file__).parent / "data" / "photos"
PHOTOS = ("astronaut", "chelsea", "coffee", "rocket", "hubble")
ORIENTATION = 0x0112


def photo(name: str) -> Path:
    return DATA / f"{name}.jpg"


def _open(src: Path) -> Image.Image:
    with Image.open(src) as im:
        return im.convert("RGB")


def _save(im: Image.Image, dst: Path, **kw: Any) -> Path:
    dst.parent.mkdir(parents=True, exist_ok=True)
    im.save(dst, **kw)
    return dst


def copy(src: Path, dst: Path) -> Path:
    """Byte-identical copy: an exact duplicate."""
    dst.parent.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(src, dst)
    return dst


def reencode(src: Path, dst: Path, quality: int = 60) -> Path:
    """What a chat app does: the same picture, recompressed."""
    return _save(_open(src), dst, format="JPEG", quality=quality)


def resize(src: Path, dst: Path, factor: float = 0.5) -> Path:
    im = _open(src)
    size = (max(1, round(im.width * factor)), max(1, round(im.height * factor)))
    return _save(im.resize(size, Image.Resampling.LANCZOS), dst, format="JPEG", quality=90)


def hflip(src: Path, dst: Path) -> Path:
    return _save(
        _open(src).transpose(Image.Transpose.FLIP_LEFT_RIGHT), dst, format="JPEG", quality=90
    )


def transposed(src: Path, dst: Path, method: Image.Transpose) -> Path:
    """The pixels really turned or mirrored (no EXIF tag to undo it), as an editor saves."""
    return _save(_open(src).transpose(method), dst, format="JPEG", quality=90)


def screenshot(src: Path, dst: Path, colour: str = "black", status_bar: bool = False) -> Path:
    """The photo as a phone shows it, screenshotted: fitted into a 9:19.5 portrait canvas of
    `colour`, with (`status_bar`) a strip of clock and battery icons along the top, as PNG."""
    im = _open(src)
    height = max(1000, max(im.size))
    width = round(height * 9 / 19.5)
    scale = min(width / im.width, height / im.height)
    size = (round(im.width * scale), round(im.height * scale))
    fitted = im.resize(size, Image.Resampling.LANCZOS)
    canvas = Image.new("RGB", (width, height), colour)
    canvas.paste(fitted, ((width - fitted.width) // 2, (height - fitted.height) // 2))
    if status_bar:
        draw_status_bar(canvas, colour)
    return _save(canvas, dst, format="PNG")


def draw_status_bar(canvas: Image.Image, colour: str) -> None:
    """A phone's status bar on `canvas`: the time left, signal bars and a battery right, in
    the colour that contrasts with `colour`, over the top 3.5% of the height."""
    from PIL import ImageDraw, ImageFont

    r, g, b = Image.new("RGB", (1, 1), colour).getpixel((0, 0))  # type: ignore[misc]
    ink = "black" if r + g + b > 384 else "white"
    bar = round(canvas.height * 0.035)
    draw = ImageDraw.Draw(canvas)
    font = ImageFont.load_default(size=round(bar * 0.6))
    draw.text((round(bar * 0.6), round(bar * 0.2)), "9:41", fill=ink, font=font)
    right = canvas.width - round(bar * 0.6)
    draw.rectangle((right - bar, bar * 0.3, right, bar * 0.7), outline=ink, width=2)  # battery
    draw.rectangle((right - bar, bar * 0.3, right - bar // 3, bar * 0.7), fill=ink)
    for i in range(4):  # signal bars
        x = right - 2 * bar - i * bar // 4
        draw.rectangle((x, bar * (0.7 - 0.1 * (4 - i)), x + bar // 8, bar * 0.7), fill=ink)


def exif_rotated(src: Path, dst: Path) -> Path:
    """Pixels stored turned 90° with EXIF orientation 6, as phones write them: upright, it
    is the same picture as `src`."""
    im = _open(src).transpose(Image.Transpose.ROTATE_90)  # counter-clockwise
    exif = Image.Exif()
    exif[ORIENTATION] = 6  # viewer rotates 90° clockwise to display
    return _save(im, dst, format="JPEG", quality=90, exif=exif)


def as_png(src: Path, dst: Path) -> Path:
    return _save(_open(src), dst, format="PNG")


def as_heic(src: Path, dst: Path) -> Path:
    return _save(_open(src), dst, format="HEIF", quality=85)


def upscaled(src: Path, dst: Path, size: tuple[int, int] = (4000, 3000), quality: int = 92) -> Path:
    """A 12 MP camera-sized JPEG made from a real photo (compresses like one)."""
    im = _open(src)
    if im.height > im.width:
        size = (size[1], size[0])
    return _save(im.resize(size, Image.Resampling.BICUBIC), dst, format="JPEG", quality=quality)


def truncated(src: Path, dst: Path, keep: float = 0.5) -> Path:
    """The first half of a JPEG: an upload cut off mid-way."""
    data = src.read_bytes()
    dst.parent.mkdir(parents=True, exist_ok=True)
    dst.write_bytes(data[: int(len(data) * keep)])
    return dst


def jpeg_bytes(im: Image.Image, quality: int = 90) -> bytes:
    buf = io.BytesIO()
    im.save(buf, format="JPEG", quality=quality)
    return buf.getvalue()


VARIANTS: dict[str, Callable[[Path, Path], Path]] = {
    "copy": copy,
    "reencode": reencode,
    "resize": resize,
    "exif_rotated": exif_rotated,
    "png": as_png,
    "heic": as_heic,
}


# -- Flat images: what a perceptual match alone must never move --------------------------------
# Text screenshots, documents, solid colours, gradients and near-uniform frames: their hashes
# say little, and two different ones often hash alike. Used by the tests and by
# bench/accuracy.py's flat negatives.

_WORDS = [
    "meeting",
    "tomorrow",
    "lunch",
    "invoice",
    "total",
    "amount",
    "paid",
    "order",
    "number",
    "delivery",
    "address",
    "train",
    "ticket",
    "platform",
    "seat",
    "coach",
    "boarding",
    "gate",
    "flight",
    "receipt",
    "balance",
    "account",
    "reference",
    "ok",
]


def text_screenshot(
    dst: Path,
    seed: int,
    *,
    size: tuple[int, int] = (540, 1170),
    dark: bool = False,
    font_size: int = 22,
) -> Path:
    """A phone screenshot of text: a status bar, a title, then lines of words drawn with
    Pillow's default font. Two seeds give two different texts in the same layout."""
    import random

    from PIL import ImageDraw, ImageFont

    rng = random.Random(seed)
    bg, fg = ("#121212", "#e8e8e8") if dark else ("white", "black")
    im = Image.new("RGB", size, bg)
    draw = ImageDraw.Draw(im)
    font = ImageFont.load_default(size=font_size)
    draw.rectangle((0, 0, size[0], 40), fill="#202020" if dark else "#f0f0f0")
    draw.text((16, 8), "12:34", fill=fg, font=font)
    draw.text((16, 60), "Notes", fill=fg, font=ImageFont.load_default(size=font_size + 10))
    y = 120
    while y < size[1] - 40:
        line = " ".join(rng.choice(_WORDS) for _ in range(rng.randint(2, 5)))
        draw.text((16, y), line, fill=fg, font=font)
        y += round(font_size * 1.6)
    return _save(im, dst, format="PNG")


def document(dst: Path, seed: int, size: tuple[int, int] = (1240, 1754)) -> Path:
    """A scanned page: paragraphs of small black text on white, margins, a JPEG."""
    import random

    from PIL import ImageDraw, ImageFont

    rng = random.Random(seed)
    im = Image.new("RGB", size, "white")
    draw = ImageDraw.Draw(im)
    font = ImageFont.load_default(size=24)
    y = 150
    while y < size[1] - 150:
        if rng.random() < 0.15:
            y += 40  # a paragraph break
        line = " ".join(rng.choice(_WORDS) for _ in range(rng.randint(8, 12)))
        draw.text((120, y), line, fill="black", font=font)
        y += 36
    return _save(im, dst, format="JPEG", quality=90)


def solid(dst: Path, colour: tuple[int, int, int], size: tuple[int, int] = (800, 600)) -> Path:
    return _save(Image.new("RGB", size, colour), dst, format="PNG")


def gradient(
    dst: Path,
    start: tuple[int, int, int],
    end: tuple[int, int, int],
    size: tuple[int, int] = (800, 600),
    vertical: bool = False,
) -> Path:
    """A smooth ramp from `start` to `end` (a wallpaper, a sky without clouds)."""
    import numpy as np

    steps = size[1] if vertical else size[0]
    ramp = np.linspace(np.array(start, float), np.array(end, float), steps)
    pixels = ramp[:, None, :].repeat(size[0], 1) if vertical else ramp[None].repeat(size[1], 0)
    return _save(Image.fromarray(pixels.round().astype(np.uint8)), dst, format="PNG")


def near_uniform(
    dst: Path, seed: int, level: int = 128, size: tuple[int, int] = (800, 600)
) -> Path:
    """A nearly flat frame: one grey with a little sensor noise (a lens cap, a dark pocket
    shot), saved as a JPEG."""
    import numpy as np

    noise = np.random.default_rng(seed).normal(level, 3.0, (size[1], size[0], 3))
    return _save(Image.fromarray(noise.clip(0, 255).astype(np.uint8)), dst, format="JPEG")


def flat_images(folder: Path) -> dict[str, Path]:
    """One of each kind of flat image, in pairs that are different pictures but that hash
    alike: two text screenshots of one layout, two documents, two solid colours, two
    gradients, two near-uniform frames."""
    return {
        "text_a": text_screenshot(folder / "text_a.png", 1),
        "text_b": text_screenshot(folder / "text_b.png", 2),
        "dark_text_a": text_screenshot(folder / "dark_text_a.png", 3, dark=True),
        "dark_text_b": text_screenshot(folder / "dark_text_b.png", 4, dark=True),
        "document_a": document(folder / "document_a.jpg", 5),
        "document_b": document(folder / "document_b.jpg", 6),
        "solid_red": solid(folder / "solid_red.png", (200, 30, 30)),
        "solid_blue": solid(folder / "solid_blue.png", (30, 60, 200)),
        "gradient_blue": gradient(folder / "gradient_blue.png", (20, 40, 120), (120, 180, 250)),
        "gradient_orange": gradient(folder / "gradient_orange.png", (120, 40, 10), (250, 200, 90)),
        "uniform_grey": near_uniform(folder / "uniform_grey.jpg", 7, 128),
        "uniform_dark": near_uniform(folder / "uniform_dark.jpg", 8, 30),
    }
