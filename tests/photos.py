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
