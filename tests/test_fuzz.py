"""Fuzzed photos: every damaged file is one recorded, typed error, and nothing else suffers.

Invariant 5 of DESIGN.md. Real photos in every format dedupd reads are damaged in the ways
uploads and attackers damage them (bit flips, cut-offs, spliced headers, inflated sizes,
repeated chunks), seeded so that a failure can be replayed. The scan must record every file:
hashed when it still decodes, else an error of a known kind, never `internal` (an exception
nobody expected) and never a lost batch.
"""

from __future__ import annotations

import io
import os
import random
import struct
from dataclasses import replace
from pathlib import Path

import pytest
from PIL import Image

from dedupd.config import Config, HashingConfig
from dedupd.engine import scan
from dedupd.filestat import FileStat
from dedupd.hashers import Hasher
from dedupd.pool import Failure, Result, hash_file
from dedupd.store import Store
from tests import photos

KNOWN_KINDS = {
    "empty",
    "not_an_image",
    "truncated",
    "corrupt",
    "too_many_pixels",
    "changed",
    "crashed",
    "timeout",
}
SIZES = (b"\xff\xff\xff\xff", b"\x7f\xff\xff\xff", b"\x00\x00\xff\xff")
FORMATS = {"jpg": "JPEG", "png": "PNG", "webp": "WEBP", "gif": "GIF", "tif": "TIFF", "bmp": "BMP"}


def _originals() -> list[tuple[str, bytes]]:
    out = []
    for i, name in enumerate(photos.PHOTOS):
        image = Image.open(photos.photo(name)).convert("RGB")
        image.thumbnail((160, 160))
        for ext, fmt in FORMATS.items():
            buf = io.BytesIO()
            image.save(buf, fmt)
            out.append((ext, buf.getvalue()))
        if i == 0:
            import pillow_heif

            pillow_heif.register_heif_opener()
            buf = io.BytesIO()
            image.save(buf, "HEIF")
            out.append(("heic", buf.getvalue()))
    return out


def _mutate(data: bytes, rng: random.Random) -> bytes:
    b = bytearray(data)
    how = rng.randrange(7)
    if how == 0:  # bit flips
        for _ in range(rng.randint(1, 16)):
            i = rng.randrange(len(b))
            b[i] ^= 1 << rng.randrange(8)
    elif how == 1:  # cut off
        b = b[: rng.randrange(len(b))]
    elif how == 2:  # bytes overwritten in the header, where sizes and offsets live
        for _ in range(rng.randint(1, 8)):
            b[rng.randrange(min(len(b), 64))] = rng.randrange(256)
    elif how == 3:  # a chunk repeated
        i, n = rng.randrange(len(b)), rng.randint(1, 512)
        b[i:i] = b[i : i + n] * rng.randint(1, 8)
    elif how == 4:  # a chunk removed
        i = rng.randrange(len(b))
        del b[i : i + rng.randint(1, 256)]
    elif how == 5:  # big-endian size fields inflated (widths, lengths)
        for _ in range(rng.randint(1, 4)):
            i = rng.randrange(max(1, min(len(b), 256) - 4))
            b[i : i + 4] = rng.choice(SIZES)
    else:  # random bytes after a real magic number
        b = b[:8] + bytearray(rng.randbytes(rng.randint(0, 4096)))
    return bytes(b)


@pytest.mark.slow
def test_two_thousand_fuzzed_photos_are_each_one_typed_record(tmp_path: Path) -> None:
    rng = random.Random(20261130)
    root = tmp_path / "fuzz"
    root.mkdir()
    originals = _originals()
    for n in range(2000):
        ext, data = rng.choice(originals)
        (root / f"f{n:04}.{ext}").write_bytes(_mutate(data, rng))
    config = replace(
        Config(), database=tmp_path / "d.db", hashing=HashingConfig(workers=2)
    ).with_roots([root])
    with Store(config.database) as store:
        report = scan(config, store)
        states = store.count_by_state([str(root.resolve())])
        kinds = {f.kind for _, f in report.failed}
    assert sum(states.values()) == 2000, states
    assert report.hashed + len(report.failed) == 2000
    assert kinds <= KNOWN_KINDS, kinds - KNOWN_KINDS
    assert states.get("ok", 0) > 100 and len(report.failed) > 100  # both paths exercised


# -- crafted hostile files, as a worker hashes them ----------------------------------------------


def _hash_file(path: Path, max_pixels: int = 180_000_000) -> Result:
    """What a hasher worker records for `path`."""
    return hash_file(str(path), FileStat.of(os.stat(path)), (Hasher("phash", 16),), max_pixels)


def _avif(damage: str) -> bytes:
    buf = io.BytesIO()
    Image.radial_gradient("L").convert("RGB").resize((64, 48)).save(buf, "AVIF")
    data = bytearray(buf.getvalue())
    if damage == "primary item missing":  # libavif refuses it when the file is opened
        i = data.find(b"pitm")
        struct.pack_into(">H", data, i + 8, 99)
    else:  # "picture data zeroed": libavif parses the file, the AV1 decode fails on load()
        i = data.find(b"mdat")
        size = struct.unpack(">I", data[i - 4 : i])[0]
        data[i + 4 : i - 4 + size] = bytes(size - 8)
    return bytes(data)


@pytest.mark.parametrize("damage", ["primary item missing", "picture data zeroed"])
def test_a_corrupt_avif_is_recorded_corrupt_not_internal(damage: str, tmp_path: Path) -> None:
    """Pillow's AVIF plugin raises RuntimeError for what libavif refuses, at open or at load."""
    path = tmp_path / "photo.avif"
    path.write_bytes(_avif(damage))
    result = _hash_file(path)
    assert isinstance(result, Failure) and result.kind == "corrupt", result


def _gif_with_second_frame(width: int, height: int) -> bytes:
    """A 4x4 animated GIF whose second (4x4) frame is placed at (`width` - 4, `height` - 4):
    Pillow grows the canvas to `width` x `height` when it seeks to that frame, long after the
    size checked at open."""
    frames = [Image.new("RGB", (4, 4), (255, 0, 0)), Image.new("RGB", (4, 4), (0, 0, 255))]
    buf = io.BytesIO()
    frames[0].save(buf, "GIF", save_all=True, append_images=frames[1:], duration=100)
    data = bytearray(buf.getvalue())
    descriptors = [
        i
        for i in range(len(data) - 10)
        if data[i] == 0x2C and data[i + 5 : i + 9] == struct.pack("<HH", 4, 4)
    ]
    struct.pack_into("<HH", data, descriptors[1] + 1, width - 4, height - 4)
    return bytes(data)


@pytest.mark.parametrize(
    ("size", "max_pixels"),
    [((65535, 65535), 180_000_000), ((400, 400), 10_000)],
    ids=["beyond-pillow-limit", "beyond-max-pixels"],
)
def test_an_animation_frame_larger_than_the_picture_is_too_many_pixels(
    size: tuple[int, int], max_pixels: int, tmp_path: Path
) -> None:
    """A later frame that grows the canvas is checked against max_pixels like the first one:
    never an `internal` error, and never decoded past the limit."""
    path = tmp_path / "anim.gif"
    path.write_bytes(_gif_with_second_frame(*size))
    result = _hash_file(path, max_pixels)
    assert isinstance(result, Failure) and result.kind == "too_many_pixels", result


@pytest.mark.parametrize("fmt", ["HEIF", "AVIF"])
@pytest.mark.parametrize("kept", [0.3, 0.6, 0.95])
def test_a_heic_or_avif_cut_short_is_a_damaged_photo_not_another_format(
    fmt: str, kept: float, tmp_path: Path
) -> None:
    """An upload cut short: a HEIC or AVIF whose decoder refuses it at open was recorded
    `not_an_image`, "not a photo format dedupd reads (… HEIF, AVIF …)": a file of a format
    it reads. It is `corrupt` (or `truncated`), and says so."""
    import pillow_heif

    pillow_heif.register_heif_opener()
    buf = io.BytesIO()
    Image.open(photos.photo("coffee")).convert("RGB").save(buf, fmt, quality=80)
    path = tmp_path / f"photo.{fmt.lower()}"
    path.write_bytes(buf.getvalue()[: int(len(buf.getvalue()) * kept)])
    result = _hash_file(path)
    assert isinstance(result, Failure) and result.kind in ("corrupt", "truncated"), result
    assert "not a photo format" not in result.message
