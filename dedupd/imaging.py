"""Open an image safely and fast, and hash it once.

One read of the file gives both the sha256 of its bytes and the decoded image. JPEGs are
decoded in draft mode (a 1/2, 1/4 or 1/8 scale DCT decode) to a size the hashers cannot tell
from a full decode; EXIF orientation is applied before hashing; HEIC/HEIF come through
pillow-heif, AVIF through Pillow. Only the photo formats in `ALLOWED_FORMATS` are ever
parsed: Pillow would otherwise pick a plugin by the file's first bytes, whatever its name, and
its EPS plugin runs Ghostscript. Every way a file can be bad raises a typed `ImageError` whose
`kind` is recorded in the store.
"""

from __future__ import annotations

import errno
import functools
import hashlib
import io
import math
import os
import stat
import struct
import warnings
from collections.abc import Sequence
from datetime import datetime
from typing import TYPE_CHECKING, BinaryIO, NamedTuple

import cv2
import pillow_heif
from PIL import Image, ImageOps, JpegImagePlugin, UnidentifiedImageError

from dedupd import safefs
from dedupd.errors import ImageError
from dedupd.filestat import FileStat, HashedImage, LocalFeatures
from dedupd.hashers import Hasher, Measured, dominant_share
from dedupd.live import Beside, find_motion, photo_content_id

if TYPE_CHECKING:
    import numpy as np
    import numpy.typing as npt
    from PIL.ImageCms import ImageCmsTransform

__all__ = [
    "ALLOWED_FORMATS",
    "MAX_SIDE",
    "ChangedWhileReading",
    "CorruptImage",
    "Decoded",
    "EmptyFile",
    "FileStat",
    "HashedImage",
    "NotAnImage",
    "TooLarge",
    "TooManyPixels",
    "TruncatedImage",
    "Unreadable",
    "Vanished",
    "border_box",
    "file_sha256",
    "hash_image",
    "open_image",
    "open_regular",
    "thumbnail",
    "too_large",
    "trim_borders",
]

pillow_heif.register_heif_opener()
# The feature step's OpenCV, loaded with this module: the hasher pool's forkserver preloads
# it once, instead of every new worker paying for it (~0.1-1 s) on its first file, within
# that file's timeout. One thread: each worker is one core's worth of work.
cv2.setNumThreads(1)

# The formats dedupd decodes, as Pillow names them: those of the default `watch.extensions`
# (jpg/jpeg, png, heic/heif, avif, webp, gif, tif/tiff, bmp). Any other file is refused before
# a plugin parses it: an EPS named IMG_1234.jpg would run Ghostscript (a PostScript
# interpreter, with no timeout) and the rarer plugins are attack surface no photo needs.
# "JPEG" also opens multi-picture JPEGs, which Pillow then reports as "MPO".
ALLOWED_FORMATS = ("JPEG", "PNG", "HEIF", "AVIF", "WEBP", "GIF", "TIFF", "BMP")

Image.init()  # every plugin registered, so a format this Pillow lacks can be left out below
# Image.open raises KeyError on a format no plugin registered (Pillow built without AVIF).
_DECODABLE = tuple(f for f in ALLOWED_FORMATS if f in Image.OPEN)


class EmptyFile(ImageError):
    kind = "empty"


class NotAnImage(ImageError):
    kind = "not_an_image"


class TruncatedImage(ImageError):
    kind = "truncated"


class CorruptImage(ImageError):
    kind = "corrupt"


class TooManyPixels(ImageError):
    kind = "too_many_pixels"


class TooLarge(ImageError):
    kind = "too_large"


class Unreadable(ImageError):
    kind = "unreadable"


class Vanished(ImageError):
    kind = "vanished"


class ChangedWhileReading(ImageError):
    kind = "changed"


_EXIF_IFD = 0x8769
_DATETIME_ORIGINAL = 0x9003
_DATETIME = 0x0132


def open_regular(path: str) -> BinaryIO:
    """Open a regular file for reading, never through a symlink (on any folder of its path,
    not only the last name) and never blocking on a FIFO.

    A symlink in a root could make a file outside it a keeper (or a target), or let a user
    who owns a watched folder learn the hash of a file only dedupd may read: dedupd only
    ever reads the files that are really there.
    """
    parent, name = os.path.split(os.path.abspath(path))
    try:
        with safefs.directory(parent) as dir_fd:
            fd = os.open(
                name, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC, dir_fd=dir_fd
            )
    except FileNotFoundError as exc:
        raise Vanished(path, "the file disappeared before it could be read") from exc
    except safefs.UnsafePath as exc:
        raise Unreadable(path, str(exc)) from exc
    except OSError as exc:
        if exc.errno == errno.ELOOP:
            raise Unreadable(path, "is a symbolic link; links are not followed") from exc
        if exc.errno == errno.EISDIR:
            raise Unreadable(path, "is a directory") from exc
        raise Unreadable(path, exc.strerror or str(exc)) from exc
    if not stat.S_ISREG(os.fstat(fd).st_mode):
        os.close(fd)
        raise Unreadable(path, "is not a regular file")
    return os.fdopen(fd, "rb")


# An image file is read whole (its sha256 and its decode come from the same bytes), so its
# size is bounded by what a picture within `max_pixels` can take: 8 bytes a pixel (16-bit RGBA,
# uncompressed) and room for metadata (EXIF, ICC, XMP, embedded previews, a HEIC's depth and
# gain maps). Without it a disk image or a sparse file named IMG_1.jpg was read into a worker's
# memory before any header was looked at: a 3 GB one took 3 GB and half a minute per worker,
# one larger than the machine's memory (and free to make: `truncate -s 20G`) the OOM killer.
_BYTES_PER_PIXEL = 8
_METADATA_BYTES = 64 << 20


def _max_bytes(max_pixels: int) -> int:
    """The largest image file (or animated GIF/WebP) read for `max_pixels`; larger ones are
    `TooLarge`, refused without reading them."""
    return max_pixels * _BYTES_PER_PIXEL + _METADATA_BYTES


def too_large(path: str, size: int, max_pixels: int) -> TooLarge | None:
    """The error for a file of `size` bytes too large to be an image within `max_pixels`."""
    limit = _max_bytes(max_pixels)
    if size <= limit:
        return None
    return TooLarge(
        path,
        f"{size} bytes, more than an image within max_pixels {max_pixels} can take"
        f" ({limit} bytes); not read",
    )


def _read(path: str, max_pixels: int, max_bytes: int | None = None) -> tuple[bytes, FileStat]:
    """The file's bytes and stat, read whole; `max_bytes` bounds it further (a thumbnail)."""
    try:
        with open_regular(path) as f:
            before = FileStat.of(os.fstat(f.fileno()))
            refused = too_large(path, before.size, max_pixels)
            if refused is None and max_bytes is not None and before.size > max_bytes:
                refused = TooLarge(path, f"{before.size} bytes, more than {max_bytes}; not read")
            if refused is not None:
                raise refused
            # a byte more than it had tells that it grew: never more, whatever it grows to
            # (and no larger buffer: read(n) allocates n bytes at once)
            data = f.read(before.size + 1)
            after = FileStat.of(os.fstat(f.fileno()))
    except FileNotFoundError as exc:
        raise Vanished(path, "the file disappeared while it was read") from exc
    except OSError as exc:
        raise Unreadable(
            path, exc.strerror or errno.errorcode.get(exc.errno or 0, str(exc))
        ) from exc
    if after != before or len(data) != before.size:
        raise ChangedWhileReading(path, "the file changed while it was read; it will be retried")
    if not data:
        raise EmptyFile(path, "zero bytes")
    return data, before


class Decoded(NamedTuple):
    image: Image.Image  # upright; smaller than the file when JPEG draft mode applied
    format: str
    width: int  # of the full image, upright
    height: int
    thumbnail: bool = False  # `image` is the file's embedded thumbnail (HEIC), not a decode


# The longest side decoded, whatever `max_pixels` allows: a 1 x 2,000,000 PNG (a few KB) is
# within it, but every hashing step works per line (the trim's statistics, the resamplers'
# first pass widens it to the hash's side), so a worker spent minutes and gigabytes on it. A
# phone's panorama is about 16,000 px long, its longest scrolling screenshots some 30,000.
MAX_SIDE = 100_000

# A HEIC's embedded thumbnail stands in for the image when it is a scaled copy of it (same
# aspect ratio, crop, rotation, mirroring and colour profile: pillow-heif's `draft` checks)
# whose short side is at least this, or the hashers' draft side if smaller. An iPhone's are
# 320x240: every hasher resizes to 128 px or less (bench/accuracy.py: heic-thumbnail).
HEIC_THUMBNAIL_SIDE = 240


def open_image(
    data: bytes | str,
    path: str,
    *,
    draft_side: int | None,
    max_pixels: int,
    thumbnail_side: int | None = None,
) -> Decoded:
    """Decode `data` (bytes, or a path to read) fully, oriented upright, drafted if allowed.

    With `thumbnail_side`, a HEIC's embedded thumbnail is decoded instead of the image when
    it is a scaled copy of it at least that large (`Decoded.thumbnail` says so): ~15x less
    work for a 12 MP photo. What it shows is only what the file claims: a decision that
    would move a file on such a hash waits for a full decode (`engine`).

    `max_pixels` bounds the pixels the decode holds, checked before any is decoded: those of
    the draft for a sequential JPEG drafted (`draft_side`), the declared ones for any other
    image (a progressive JPEG, a full decode, a path given instead of bytes).

    Raises NotAnImage, TooManyPixels, TruncatedImage or CorruptImage.
    """
    frame = _jpeg_frame(data) if isinstance(data, bytes) else None
    # A sequential JPEG that is drafted costs the pixels of its draft, not those its header
    # declares (a 200 MP phone photo decodes to 3 MP): it is bounded by those below. Pillow's
    # own bomb check at open counts the declared ones, and refuses more than 178,956,970
    # whatever max_pixels says, so its JPEG plugin is called directly.
    row_by_row = bool(draft_side) and frame is not None and frame.row_by_row
    # why a JPEG is counted whole though it is drafted, for its error
    why = (
        "; a progressive (multi-scan) JPEG is held whole to decode, at any scale"
        if draft_side and frame is not None and not frame.row_by_row
        else ""
    )
    source = io.BytesIO(data) if isinstance(data, bytes) else data
    with warnings.catch_warnings():
        # We enforce our own pixel limit below, before any pixel is decoded.
        warnings.simplefilter("ignore", Image.DecompressionBombWarning)
        try:
            if row_by_row and not isinstance(source, str):
                image = _open_jpeg(source)
            else:
                image = Image.open(source, formats=_DECODABLE)
        except UnidentifiedImageError as exc:
            name = _recognized(data)
            if name in ALLOWED_FORMATS:  # a photo format whose decoder refused the file
                raise CorruptImage(
                    path, f"a {name} file its decoder refuses (damaged or cut short): {exc}"
                ) from exc
            raise NotAnImage(path, _not_allowed(name)) from exc
        except Image.DecompressionBombError as exc:
            raise TooManyPixels(path, f"{str(exc).rstrip('.')}{why}") from exc
        # RuntimeError: what Pillow's AVIF plugin raises for most files libavif refuses
        except (OSError, SyntaxError, ValueError, RuntimeError) as exc:
            raise CorruptImage(path, f"cannot parse header: {exc}") from exc
    width, height = image.size
    if row_by_row and frame is not None and not frame.read_alike(image):
        row_by_row = False  # not the frame dedupd read: counted whole, by its declared size
        why = "; its headers do not read as one sequential JPEG's"
    image_format = image.format or "unknown"
    if draft_side and image_format in ("JPEG", "MPO"):
        # a multi-picture JPEG (an Ultra HDR photo's gain map, a Samsung or 3-D camera's
        # second picture) is drafted as any JPEG: its first picture is the photo. This sets
        # the scale libjpeg will decode at, and the image's size; it decodes nothing.
        image.draft("RGB", (draft_side, draft_side))
    # What the decode holds: a sequential JPEG's draft, any other image whole.
    held_width, held_height = image.size if row_by_row else (width, height)
    if held_width * held_height > max_pixels:
        drafted = f" decoded at {held_width}x{held_height}" if row_by_row else ""
        raise TooManyPixels(
            path,
            f"{width}x{height}{drafted} = {held_width * held_height} pixels exceeds max_pixels"
            f" {max_pixels}{why}",
        )
    if max(width, height) > MAX_SIDE:
        raise TooManyPixels(path, f"{width}x{height}: a side longer than {MAX_SIDE} px")
    least = frame.least_bytes(width, height) if frame is not None else None
    if least is not None and image_format in ("JPEG", "MPO") and len(data) < least:
        raise TruncatedImage(
            path,
            f"{len(data)} bytes cannot hold the {width}x{height} picture its header claims"
            f" (its scan needs at least {least}): the rest would be decoded as grey",
        )
    from_thumbnail = False
    try:
        if thumbnail_side and image_format == "HEIF":
            from_thumbnail = image.draft("RGB", (thumbnail_side, thumbnail_side)) is not None
        image.load()
        decoded_size = image.size
        ImageOps.exif_transpose(image, in_place=True)  # no copy when already upright
    except OSError as exc:
        if "truncated" in str(exc).lower():  # libjpeg's "truncated", libheif's "Truncated"
            raise TruncatedImage(path, str(exc)) from exc
        raise CorruptImage(path, f"cannot decode: {exc}") from exc
    except (SyntaxError, ValueError, EOFError, RuntimeError, Image.DecompressionBombError) as exc:
        raise CorruptImage(path, f"cannot decode: {exc}") from exc
    if image.size != decoded_size:
        width, height = height, width  # EXIF said the camera was turned
    return Decoded(_eight_bit(_from_lab(image)), image_format, width, height, from_thumbnail)


def _open_jpeg(source: io.BytesIO) -> Image.Image:
    """`source`, a JPEG (or multi-picture JPEG), opened as `Image.open` opens it but without
    Pillow's decompression-bomb check, which counts the pixels its header declares."""
    try:
        return JpegImagePlugin.jpeg_factory(source)
    except (SyntaxError, IndexError, TypeError, struct.error) as exc:  # as Image.open
        raise UnidentifiedImageError(f"cannot identify image file: {exc}") from exc


# JPEG start-of-frame markers of sequential Huffman coding (baseline, extended): every 8x8
# block then costs at least two bits (a DC code and an end-of-block code). Progressive and
# arithmetic coding can code empty blocks in less, and are left alone.
_SEQUENTIAL_HUFFMAN = (0xC0, 0xC1)
_SOF = frozenset(range(0xC0, 0xD0)) - {0xC4, 0xC8, 0xCC}  # C4 DHT, C8 JPG, CC DAC


class _JpegFrame(NamedTuple):
    """What a JPEG's headers say before its first scan: its frame header (SOFn) and how many
    of the frame's components its first scan (SOS) holds (None: no scan found in reach)."""

    marker: int  # 0xC0-0xCF: how the picture is coded
    size: tuple[int, int]  # width, height, as the frame header declares them
    components: int
    scanned: int | None  # components in the first scan

    @property
    def sequential(self) -> bool:
        return self.marker in _SEQUENTIAL_HUFFMAN

    @property
    def row_by_row(self) -> bool:
        """Decoded a row of blocks at a time, at the draft's scale: a sequential JPEG whose
        one scan holds every component. Any other (progressive, or sequential with one scan
        per component) makes libjpeg keep the whole picture's DCT coefficients, 2 bytes each
        (~3 bytes a declared pixel at 4:2:0, 6 at 4:4:4), whatever the scale."""
        return self.sequential and self.scanned == self.components

    def read_alike(self, image: Image.Image) -> bool:
        """Whether Pillow (whose reading of the headers libjpeg decodes by) found this very
        frame: the same size and components, not progressive. A file built so that two
        readers of its markers part ways must not be counted by its draft."""
        return (
            image.size == self.size
            and len(getattr(image, "layer", ())) == self.components
            and not image.info.get("progressive")
            and not image.info.get("progression")
        )

    def least_bytes(self, width: int, height: int) -> int | None:
        """The fewest bytes a sequential Huffman JPEG of `width` x `height` can take, None
        for other codings. A file that claims a large picture but holds a few KB (libjpeg
        fills what is missing with grey and only warns, and Pillow does not pass the warning
        on) is shorter. Counted low: two bits for each 16x16 block of the picture, whatever
        the sampling."""
        if not self.sequential:
            return None
        return (width // 16) * (height // 16) // 4


# Markers that stand alone, without a length: RST0-RST7 (0xD0-0xD7) and TEM (0x01).
_STANDALONE = frozenset(range(0xD0, 0xD8)) | {0x01}


def _jpeg_frame(data: bytes) -> _JpegFrame | None:
    """The frame of the JPEG in `data`, read from its markers as libjpeg reads them, up to its
    first scan; None for a file whose markers cannot be walked to a frame header, or that has
    two (the decoder says what is wrong). A frame whose first scan is beyond reach has
    `scanned` None."""
    if data[:2] != b"\xff\xd8":
        return None
    i, frame = 2, None
    for _ in range(256):  # the first scan comes after a few segments (APPn, DQT, SOFn, DHT)
        if i + 2 > len(data) or data[i] != 0xFF:
            break
        marker = data[i + 1]
        if marker == 0xFF:  # fill byte
            i += 1
            continue
        if marker in _STANDALONE:
            i += 2
            continue
        if marker in (0x00, 0xD8, 0xD9) or i + 4 > len(data):  # no marker here, SOI, EOI
            break
        if marker in _SOF:
            if frame is not None or i + 10 > len(data):
                return None
            height, width = (int.from_bytes(data[i + k : i + k + 2], "big") for k in (5, 7))
            frame = _JpegFrame(marker, (width, height), data[i + 9], None)
        elif marker == 0xDA:  # start of scan
            if frame is None or i + 5 > len(data):
                return None
            return frame._replace(scanned=data[i + 4])
        i += 2 + int.from_bytes(data[i + 2 : i + 4], "big")
    return frame


def _eight_bit(image: Image.Image) -> Image.Image:
    """`image` with 8 bits a pixel when it has more: a 16-bit greyscale PNG or TIFF (a film
    scan, an editor's export) as "L", its levels scaled down. Pillow's own conversion to "L"
    clips at 255, which turns such a photo into a white frame with its darkest pixels: a hash
    of nothing like it. 32-bit integer and float images (rare TIFFs) are scaled from the range
    their levels say (0-255 kept as is, 0-65535 as 16-bit, 0.0-1.0 for floats, else their
    own minimum to maximum; a float's NaN and infinities count as its extremes)."""
    if not (image.mode.startswith("I;16") or image.mode in ("I", "F")):
        return image
    import numpy as np

    levels = np.asarray(image)
    if image.mode.startswith("I;16"):
        return Image.fromarray((levels.astype(np.uint16) >> 8).astype(np.uint8))  # mode "L"
    # In float32 and in place: float64 and a temporary array a step took 24 bytes a pixel
    # beside Pillow's own 4 (a 1 MB deflated 169 MP TIFF: 3.9 GB in a worker). float32's
    # 24-bit mantissa is far finer than the 8 bits kept.
    scaled = levels.astype(np.float32)
    del levels
    finite = np.isfinite(scaled) if image.mode == "F" else None
    if finite is not None and not finite.all():
        # A float TIFF's "no data" pixels (NaN) or an HDR merge's infinities made every level
        # NaN: a black frame, whatever the photo. They take the picture's darkest and
        # brightest levels instead.
        present = scaled[finite]
        lo, hi = (float(present.min()), float(present.max())) if present.size else (0.0, 0.0)
        del present
        np.nan_to_num(scaled, copy=False, nan=lo, posinf=hi, neginf=lo)
    low, high = float(scaled.min()), float(scaled.max())
    if image.mode == "F" and low >= 0.0 and high <= 1.0:
        low, high = 0.0, 1.0
    elif low >= 0.0 and high <= 255.0:
        low, high = 0.0, 255.0
    elif low >= 0.0 and high <= 65535.0:
        low, high = 0.0, 65535.0
    span = high - low or 1.0
    scaled -= low
    scaled *= 255.0 / span
    scaled += 0.5
    np.clip(scaled, 0, 255, out=scaled)
    return Image.fromarray(scaled.astype(np.uint8))  # 2-D uint8: mode "L"


def _from_lab(image: Image.Image) -> Image.Image:
    """`image` in sRGB when it is in CIELab ("LAB": a TIFF from a scanner, or saved from an
    editor's Lab mode). Pillow converts Lab to no other mode, and the trim, every hasher and
    a thumbnail need "L" or "RGB": such a photo was recorded `internal` ("conversion from LAB
    to RGB not supported")."""
    if image.mode != "LAB":
        return image
    return _lab_to_srgb().apply(image)


@functools.cache
def _lab_to_srgb() -> ImageCmsTransform:
    from PIL import ImageCms  # here: only a Lab photo needs LittleCMS

    return ImageCms.buildTransform(
        ImageCms.createProfile("LAB"), ImageCms.createProfile("sRGB"), "LAB", "RGB"
    )


def _recognized(data: bytes | str) -> str | None:
    """The format whose Pillow plugin recognizes the file's first bytes (a prefix test;
    nothing is parsed), allowed or not; None when none does."""
    try:
        if isinstance(data, bytes):
            prefix = data[:16]
        else:
            with open_regular(data) as f:
                prefix = f.read(16)
    except (OSError, ImageError):
        return None
    for name, (_, accept) in Image.OPEN.items():
        try:
            recognized = accept is not None and accept(prefix)
        except Exception:  # a plugin's own test failing on odd bytes is no reason to fail here
            continue
        if recognized and not isinstance(recognized, str):  # a str: "support not installed"
            return name
    return None


def _not_allowed(name: str | None) -> str:
    """Why a file none of the allowed formats accepts is refused, naming what it is if one of
    Pillow's other plugins recognizes it (`_recognized`)."""
    allowed = ", ".join(_DECODABLE)
    if name is not None and name not in ALLOWED_FORMATS:
        return f"format not allowed: {name} is not a photo format dedupd reads ({allowed})"
    return f"not a photo format dedupd reads ({allowed})"


# -- border trim -------------------------------------------------------------------------------
# Letterbox bars, phone-screenshot canvases and video mattes are flat: every line across them
# has (almost) the border's colour. Measured on the luminance of the small decoded image, a
# line (row or column) is part of a border when its pixels' spread (standard deviation) and its
# mean's difference from the border colour (taken from the outermost line) are both within a
# tolerance for JPEG noise. A natural photo's edge lines vary: sky has a gradient or clouds, a
# night scene has stars and noise, a wall has texture and shading (tests/test_imaging.py).
_LINE_STD = 1.5  # max spread of a border line, in 8-bit levels
_LINE_MEAN = 0.75  # max difference of a border line's mean from the border colour
# A border is one colour: bars measured 0.0 levels of spread and drift on PNG screenshots and
# on their JPEG re-encodes, while the flattest natural edges of the benchmark's photos (a white
# sky, a grey wall) drift a level every few lines. A smooth gradient can still pass for a few
# lines, so a band thinner than _MIN_BAND of the side is no border.
_MIN_BAND = 0.025
# A phone screenshot's status bar (or a navigation bar) is a thin strip of icons on the
# outside of the bar: skipped when a flat band of at least _STRIP_BAND of the side follows it
# within _STRIP of the side.
_STRIP = 0.08
_STRIP_BAND = 0.04
_MIN_KEPT = 0.15  # trim nothing when less than this fraction of a side would be left
# JPEG smears the edge between a bar and the photo over the 8-16 px block that holds it: past
# a flat band, up to this many px (of the file) of lines that are still near the border
# colour but noisy belong to the bar too.
_EDGE_PX = 16
_EDGE_STD = 10.0
_EDGE_MEAN = 12.0


def _border_lines(std: npt.NDArray[np.float64], mean: npt.NDArray[np.float64], edge: int) -> int:
    """How many lines form a flat border, from each line's spread (`std`) and mean (`mean`,
    one column per channel measured), outermost first; a thin strip outside
    the border (a status bar) and up to `edge` lines of compression noise inside it count
    as border too."""
    import numpy as np

    n = len(std)

    def run(start: int, colour: npt.NDArray[np.float64], max_std: float, max_mean: float) -> int:
        """How many lines from `start` are near `colour`: looked at in windows that double,
        so that the work is about the run's length, not the side's (the strip's search below
        starts a run at each of its lines: on a very long side, once quadratic)."""
        at, window = start, 64
        while at < n:
            stop = min(n, at + window)
            near = (std[at:stop] <= max_std) & (
                np.abs(mean[at:stop] - colour).max(axis=1) <= max_mean
            )
            off = np.flatnonzero(~near)
            if len(off):
                return at + int(off[0]) - start
            at, window = stop, 2 * window
        return n - start

    def band(start: int) -> tuple[int, int]:
        """(length of the flat run of one colour at `start`, where its noisy edge ends)."""
        colour = mean[start]
        flat = run(start, colour, _LINE_STD, _LINE_MEAN)
        end = start + flat
        if end < n:
            end += min(edge, run(end, colour, _EDGE_STD, _EDGE_MEAN))
        return flat, end

    if std[0] <= _LINE_STD:
        flat, end = band(0)
        if flat >= _MIN_BAND * n:
            return end
    for start in range(1, int(_STRIP * n) + 1):
        if std[start] <= _LINE_STD:
            flat, end = band(start)
            if flat >= _STRIP_BAND * n:
                return end
    return 0


def _line_stats(
    lines: npt.NDArray[np.uint8],
) -> tuple[npt.NDArray[np.float64], npt.NDArray[np.float64]]:
    """Per line (row) of `lines`, 8-bit levels: the standard deviation, and the mean as a
    1-vector. Summed in integers: the very floats a float64 sum gives (every partial sum of
    levels and of their squares is a whole number far below 2**53, so exact either way),
    without a float copy of the image."""
    import numpy as np

    n = lines.shape[1]
    mean = lines.sum(axis=1, dtype=np.int64) / n
    squares = np.square(lines, dtype=np.uint16).sum(axis=1, dtype=np.int64) / n
    std = np.sqrt(np.maximum(squares - mean * mean, 0.0))
    return std, mean[:, None]


def border_box(
    image: Image.Image, full_width: int | None = None
) -> tuple[int, int, int, int] | None:
    """(left, top, right, bottom) of `image` without its uniform borders, or None to keep
    all of it (no border, or so much border that nothing like a photo is left).
    `full_width` is the file's width when `image` was decoded smaller (JPEG draft)."""
    import numpy as np

    # Measured on the luminance, as pHash sees the picture, one line per row of memory (numpy
    # reduces a strided axis many times slower: 35 ms instead of 1 ms for a 500x375 draft).
    levels = np.asarray(image if image.mode == "L" else image.convert("L"))
    height, width = levels.shape
    edge = math.ceil(_EDGE_PX * width / (full_width or width))
    # Most photos have no flat line near any edge: look there first (a third of the work),
    # the rows of both edge strips at once, then their columns.
    k_rows, k_cols = int(_STRIP * height) + 1, int(_STRIP * width) + 1
    outer = (
        np.concatenate((levels[:k_rows], levels[-k_rows:])),
        np.ascontiguousarray(np.concatenate((levels[:, :k_cols], levels[:, -k_cols:]), axis=1).T),
    )
    if not any(bool((_line_stats(lines)[0] <= _LINE_STD).any()) for lines in outer):
        return None
    row_std, row_mean = _line_stats(levels)
    col_std, col_mean = _line_stats(np.ascontiguousarray(levels.T))
    top = _border_lines(row_std, row_mean, edge)
    bottom = _border_lines(row_std[::-1], row_mean[::-1], edge)
    left = _border_lines(col_std, col_mean, edge)
    right = _border_lines(col_std[::-1], col_mean[::-1], edge)
    if not (top or bottom or left or right):
        return None
    box = (left, top, width - right, height - bottom)
    if box[2] - box[0] < _MIN_KEPT * width or box[3] - box[1] < _MIN_KEPT * height:
        return None
    return box


def trim_borders(image: Image.Image, full_width: int | None = None) -> Image.Image:
    """`image` without uniform borders (black, white or any flat colour, with or without a
    status-bar strip): a screenshot of a photo hashes like the photo. Run on the small decoded
    image (`full_width`: the file's), before every hasher; `image` itself when there is
    nothing to trim."""
    box = border_box(image, full_width)
    return image if box is None else image.crop(box)


def _taken_at(image: Image.Image) -> str | None:
    try:
        exif = image.getexif()
        raw = exif.get_ifd(_EXIF_IFD).get(_DATETIME_ORIGINAL) or exif.get(_DATETIME)
        if not isinstance(raw, str):
            return None
        return datetime.strptime(raw.strip("\x00 "), "%Y:%m:%d %H:%M:%S").isoformat()
    except (ValueError, TypeError, OSError, SyntaxError):
        return None  # missing or malformed EXIF is normal, not an error


def _small(
    image: Image.Image, mode: str, side: int | None, gray: Image.Image | None = None
) -> Image.Image:
    """`image` in `mode`, box-reduced by the largest whole factor that keeps its short side at
    least `side` (no reduction when `side` is None). `gray`: `image` already converted to
    "L", if the caller has it (it is then given, not converted again).

    What JPEG draft decoding does in the DCT domain, for every format and beyond draft's 1/8:
    the hashers' own Lanczos resize then starts from twice their sample size rather than from
    the whole frame (on a 500 px photo that resize was half of the hashing time). The result
    may be `image` (or `gray`) itself: hashers only read it."""
    factor = min(image.size) // side if side else 1
    if factor < 2:
        if mode == "L" and gray is not None:
            return gray
        return image if image.mode == mode else image.convert(mode)
    if image.mode not in ("L", "RGB"):  # palette GIFs, RGBA PNGs: reduce plain bands only
        image = image.convert(mode)
    small = image.reduce(factor)
    return small if small.mode == mode else small.convert(mode)


def hash_image(
    path: str,
    hashers: Sequence[Hasher],
    *,
    max_pixels: int,
    expect: FileStat | None = None,
    draft: bool = True,
    trim: bool = True,
    variants: bool = True,
    features: bool = True,
    live_photos: bool = True,
    thumbnails: bool = True,
) -> HashedImage:
    """Read `path` once; return its sha256, size, capture time and one hash per hasher (and,
    with `variants`, the hashes of its 8 rotations and mirrors, for isometric matching).

    With `features`, the crop stage's local features of the same trimmed image are computed
    too (`_features_step`).

    Uniform borders are trimmed before hashing (`trim=False` only for benchmarks: the hasher
    keys promise trimmed hashes). With `live_photos`, a HEIC or JPEG still's Live Photo
    motion file is found and hashed too (`live.find_motion`). With `thumbnails` (and
    `draft`), a HEIC is hashed from its embedded thumbnail when that is a scaled copy of it
    (`HashedImage.thumbnail`); `thumbnails=False` is the full decode that confirms a match.

    `expect` is the stat the caller saw when it chose the file: if the file has changed since,
    ChangedWhileReading is raised so that nothing is recorded for a version never hashed.
    """
    data, stat = _read(path, max_pixels)
    if expect is not None and stat != expect:
        raise ChangedWhileReading(path, "the file changed after it was queued; it will be retried")
    sha256 = hashlib.sha256(data).hexdigest()
    side = max(h.draft_side for h in hashers) if draft and hashers else None
    thumbnail_side = min(side, HEIC_THUMBNAIL_SIDE) if side and thumbnails else None
    decoded = open_image(
        data, path, draft_side=side, max_pixels=max_pixels, thumbnail_side=thumbnail_side
    )
    trimmed, gray, framed = decoded.image, None, 0.0
    if trim:
        # The luminance the trim measures is what the "L" hashers are given (a crop of the
        # converted image is the conversion of the crop): converted once.
        gray = trimmed if trimmed.mode == "L" else trimmed.convert("L")
        box = border_box(gray, decoded.width)
        if box is not None:
            framed = 1.0 - (box[2] - box[0]) * (box[3] - box[1]) / (gray.width * gray.height)
            trimmed, gray = trimmed.crop(box), gray.crop(box)
    small: dict[tuple[str, int | None], Image.Image] = {}

    def given(h: Hasher) -> Image.Image:
        """What `h` hashes: the trimmed image in its mode, reduced to its own side."""
        key = (h.mode, h.reduce_side if draft else None)
        if key not in small:
            small[key] = _small(trimmed, *key, gray=gray)
        return small[key]

    plain = [h for h in hashers if not h.rates_quality]
    turned = {h.key: h.variants(given(h)) for h in plain} if variants else {}
    hashes = {h.key: turned[h.key][0] if turned else h(given(h)) for h in plain}
    pdq = _pdq_step(trimmed, [h for h in hashers if h.rates_quality], variants=variants)
    return HashedImage(
        stat=stat,
        sha256=sha256,
        width=decoded.width,
        height=decoded.height,
        format=decoded.format,
        taken_at=_taken_at(decoded.image),
        hashes=hashes | pdq.hashes,
        variants=turned | pdq.variants,
        quality=pdq.quality,
        dominant=pdq.dominant,
        features=_features_step(trimmed, gray) if features else None,
        live=_live(path, decoded) if live_photos else None,
        thumbnail=decoded.thumbnail,
        framed=framed,
    )


def _features_step(image: Image.Image, gray: Image.Image | None = None) -> LocalFeatures:
    """The crop stage's step, apart from the hashers: ORB keypoints of the trimmed image
    (`dedupd.features`), box-reduced first to about the side they are found at. `gray`:
    `image` already converted to "L" (the trim's), or None."""
    from dedupd import features

    return features.extract(_small(image, "L", features.SIDE, gray=gray)).to_local()


def _live(path: str, decoded: Decoded) -> Beside | None:
    if decoded.format not in ("HEIF", "JPEG", "MPO"):
        return None
    return find_motion(path, photo_content_id(decoded.image))


class _Rated(NamedTuple):
    hashes: dict[str, bytes]
    variants: dict[str, list[bytes]]
    quality: dict[str, int]
    dominant: float | None


def _pdq_step(image: Image.Image, rating: Sequence[Hasher], *, variants: bool) -> _Rated:
    """The PDQ step, apart from the other hashers: PDQ's hash and quality of the same decoded
    (drafted) image, and its dominant-tone share; what the second opinion before a move and
    the low-detail guard need (and, with `variants`, PDQ of its 8 rotations and mirrors, to
    confirm a match found through one). Nothing when no rating hasher is asked for.

    PDQ's cost grows with the pixels it is given (1.5 s for a 12 MP HEIC, which has no draft
    decode), so the image is first box-reduced by a whole factor to the side a JPEG draft
    gives (at least `reduce_side`): every format then reaches PDQ at about the same size."""
    if not rating:
        return _Rated({}, {}, {}, None)
    rgb = _small(image, "RGB", max(h.reduce_side for h in rating))
    if variants:
        turned = {h.key: h.measure_variants(rgb) for h in rating}
        measured = {key: Measured(v[0], quality) for key, (v, quality) in turned.items()}
    else:
        turned, measured = {}, {h.key: h.measure(rgb) for h in rating}
    return _Rated(
        {key: m.bits for key, m in measured.items()},
        {key: v for key, (v, _) in turned.items()},
        {key: m.quality for key, m in measured.items() if m.quality is not None},
        dominant_share(rgb),
    )


def thumbnail(
    path: str, side: int, *, max_pixels: int, max_bytes: int | None = None
) -> tuple[Image.Image, str]:
    """A picture of the photo at `path` at most `side` pixels across, upright, in RGB, and
    the sha256 of the bytes it was made from: read as `hash_image` reads (no symlink, only
    the allowed formats, within `max_pixels`, JPEGs drafted), and not at all when the file
    now holds more than `max_bytes`. Raises an ImageError."""
    data, _ = _read(path, max_pixels, max_bytes)
    decoded = open_image(data, path, draft_side=side, max_pixels=max_pixels)
    image = decoded.image.convert("RGB")
    image.thumbnail((side, side), Image.Resampling.LANCZOS)
    return image, hashlib.sha256(data).hexdigest()


def file_sha256(path: str) -> str:
    """sha256 of a file's bytes, read in chunks (used to re-verify before a delete)."""
    digest = hashlib.sha256()
    try:
        with open_regular(path) as f:
            while chunk := f.read(1 << 20):
                digest.update(chunk)
    except FileNotFoundError as exc:
        raise Vanished(path, "the file disappeared") from exc
    except OSError as exc:
        raise Unreadable(path, exc.strerror or str(exc)) from exc
    return digest.hexdigest()
