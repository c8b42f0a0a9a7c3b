"""imaging: one read gives sha256 and hashes; draft decode is invisible; bad files are typed."""

from __future__ import annotations

import hashlib
import io
import os
import random
from importlib import resources
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from PIL import EpsImagePlugin, Image

from dedupd import imaging
from dedupd.config import DEFAULT_EXTENSIONS
from dedupd.hashers import HASHERS, Hasher
from dedupd.imaging import (
    ALLOWED_FORMATS,
    ChangedWhileReading,
    CorruptImage,
    EmptyFile,
    FileStat,
    NotAnImage,
    TooManyPixels,
    TruncatedImage,
    Unreadable,
    Vanished,
    border_box,
    file_sha256,
    hash_image,
    open_image,
    thumbnail,
)
from dedupd.index import distance
from tests import photos

PHASH = Hasher("phash", 16)
MAX_PIXELS = 180_000_000


def _hash(path: Path, hasher: Hasher = PHASH, **kw: object) -> bytes:
    return hash_image(str(path), [hasher], max_pixels=MAX_PIXELS, **kw).hashes[hasher.key]  # type: ignore[arg-type]


@pytest.fixture(scope="module")
def camera_jpegs(tmp_path_factory: pytest.TempPathFactory) -> list[Path]:
    """The test photos as 12 MP camera JPEGs (4000x3000), made by upscaling the real ones."""
    folder = tmp_path_factory.mktemp("12mp")
    return [photos.upscaled(photos.photo(n), folder / f"{n}.jpg") for n in photos.PHOTOS]


@pytest.fixture(scope="module")
def mid_size_jpegs(tmp_path_factory: pytest.TempPathFactory) -> list[Path]:
    folder = tmp_path_factory.mktemp("3mp")
    return [
        photos.upscaled(photos.photo(n), folder / f"{n}.jpg", (2000, 1500)) for n in photos.PHOTOS
    ]


# pHash 16x16 (the default) after a draft decode and box reduction to four times its 64 px
# sample, against a full decode: measured at most 2 of 256 bits on the test photos at native,
# 3 MP and 12 MP size. The bound leaves room for other libjpeg builds; the default match
# threshold is 64 bits (25 for a turned match).
PHASH_DRAFT_BITS = 8


@pytest.mark.parametrize("name", photos.PHOTOS)
def test_draft_decode_keeps_phash_close_on_test_photos(name: str) -> None:
    """Draft decoding and reduction are an optimization: pHash moves by a few bits at most."""
    path = photos.photo(name)
    assert distance(_hash(path, draft=True), _hash(path, draft=False)) <= PHASH_DRAFT_BITS


def test_draft_decode_at_12mp_uses_one_eighth_scale_and_keeps_phash(
    camera_jpegs: list[Path],
) -> None:
    """At camera size the 1/8 DCT decode applies and pHash stays within a few bits of 256."""
    for path in camera_jpegs:
        with Image.open(path) as im:
            im.draft("RGB", (PHASH.draft_side, PHASH.draft_side))
            assert max(im.size) == 500, "the 1/8 scale decode should apply at 12 MP"
        d = distance(_hash(path, draft=True), _hash(path, draft=False))
        assert d <= PHASH_DRAFT_BITS, (path.name, d)


def test_large_images_of_any_format_are_reduced_before_hashing(tmp_path: Path) -> None:
    """A PNG (no draft mode) is box-reduced to what the hashers need, as a JPEG is drafted:
    a 2000x1500 PNG reaches pHash at a fifth of its side (the largest whole factor keeping
    256 px) and PDQ at an eleventh (128 px), and hashes as its full decode does, within the
    stated bound."""
    from dedupd.imaging import _small

    png = tmp_path / "big.png"
    big = photos.upscaled(photos.photo("chelsea"), tmp_path / "3mp.jpg", (2000, 1500))
    with Image.open(big) as im:
        im.save(png)
    with Image.open(png) as im:
        assert _small(im, "L", PHASH.reduce_side).size == (400, 300)
        assert _small(im, "RGB", Hasher("pdq").reduce_side).size == (182, 137)
    d = distance(_hash(png, draft=True), _hash(png, draft=False))
    assert d <= PHASH_DRAFT_BITS, d


# The stated bound for every hasher: on the test photos at native size and at 2000x1500 the
# largest difference measured between draft and full decode was 0.035 (wHash 16x16, 9 of 256
# bits); colorhash at 8 bits per bin, which bins every pixel's colour, moved by 0.071.
# PDQ is fed the image box-reduced to about the draft size (imaging._pdq_step), so a full
# decode mostly gives the same bits; the 1000 px `hubble` drafts to 1/2 and reduces to 1/3
# of its side: 14 of 256 bits (0.055). Its threshold is calibrated through hash_image.
# PDQ is given the image reduced to 128-255 px (what halves its cost on small photos), a
# smaller picture than a full decode: 28 of 256 bits (0.11) at most, its threshold is 69.
DRAFT_TOLERANCE = {"colorhash": 0.08, "pdq": 0.12}


@pytest.mark.parametrize(
    ("algorithm", "hash_size"),
    [
        # colorhash's ~9 s each (a full decode per photo and size): in the slow suite
        pytest.param(a, s, marks=[pytest.mark.slow] if a == "colorhash" else [])
        for a in HASHERS
        for s in {"colorhash": (3, 8), "pdq": (16,)}.get(a, (8, 16))
    ],
)
def test_draft_decode_stays_within_stated_distance_for_every_hasher(
    algorithm: str, hash_size: int, mid_size_jpegs: list[Path]
) -> None:
    hasher = Hasher(algorithm, hash_size)  # type: ignore[arg-type]
    limit = DRAFT_TOLERANCE.get(algorithm, 0.04)
    for path in [*map(photos.photo, photos.PHOTOS), *mid_size_jpegs]:
        d = distance(_hash(path, hasher, draft=True), _hash(path, hasher, draft=False))
        assert d / hasher.bits <= limit, (path, d)


def test_one_read_gives_sha256_size_and_format() -> None:
    path = photos.photo("coffee")
    result = hash_image(str(path), [PHASH], max_pixels=MAX_PIXELS)
    assert result.sha256 == hashlib.sha256(path.read_bytes()).hexdigest()
    assert result.sha256 == file_sha256(str(path))
    assert (result.width, result.height, result.format) == (600, 400, "JPEG")
    assert result.stat == FileStat.of(os.stat(path))


def test_exif_orientation_is_applied_before_hashing(tmp_path: Path) -> None:
    """A phone photo stored sideways with EXIF orientation 6 hashes like the upright one."""
    original = photos.photo("chelsea")
    rotated = photos.exif_rotated(original, tmp_path / "rotated.jpg")
    result = hash_image(str(rotated), [PHASH], max_pixels=MAX_PIXELS)
    assert (result.width, result.height) == (451, 300)  # stored as 300x451
    assert distance(result.hashes[PHASH.key], _hash(original)) <= 0.03 * PHASH.bits
    # Without the orientation the stored pixels are a different picture to pHash.
    with Image.open(rotated) as im:
        sideways = PHASH(im.convert("L"))
    assert distance(sideways, _hash(original)) > 0.3 * PHASH.bits


@pytest.mark.parametrize(
    ("name", "dtype", "scale", "offset"),
    [
        ("gray16.png", "uint16", 257, 0),  # a 16-bit PNG: mode "I;16"
        ("gray16.tif", "uint16", 257, 0),
        ("float.tif", "float32", 1 / 255, 0),  # levels 0.0-1.0: mode "F"
        ("int32.tif", "int32", 100, -5000),  # levels of its own range: mode "I"
    ],
)
def test_a_greyscale_photo_of_more_than_8_bits_hashes_like_its_8_bit_copy(
    tmp_path: Path, name: str, dtype: str, scale: float, offset: int
) -> None:
    """A film scan or an editor's export as a 16-bit greyscale PNG or TIFF is the picture of
    its 8-bit copy to every hash and to the crop stage. Pillow's own conversion clipped its
    levels at 255 (a white frame): a hash of nothing like it, and no keypoints."""
    import numpy as np

    with Image.open(photos.photo("coffee")) as im:
        gray = np.asarray(im.convert("L"))
    original, wide = tmp_path / "gray.png", tmp_path / name
    Image.fromarray(gray).save(original)
    Image.fromarray((gray.astype(np.float64) * scale + offset).astype(dtype)).save(wide)
    with Image.open(wide) as saved:
        assert saved.mode != "L"
    for hasher in (PHASH, Hasher("pdq", 16)):
        assert distance(_hash(wide, hasher), _hash(original, hasher)) <= 0.02 * hasher.bits
    result = hash_image(str(wide), [PHASH], max_pixels=MAX_PIXELS)
    assert result.features is not None and len(result.features.points) > 100 * 8


@pytest.mark.parametrize("bad", [float("nan"), float("inf"), float("-inf")])
def test_a_float_tiff_with_no_data_pixels_hashes_as_its_picture(tmp_path: Path, bad: float) -> None:
    """A float TIFF's "no data" pixels (NaN) or an HDR merge's infinities made every level
    NaN when scaled to 8 bits: the photo was hashed as a black frame and recorded `ok`.
    A few such pixels now take the picture's extreme levels and the rest is the photo."""
    import numpy as np

    with Image.open(photos.photo("coffee")) as im:
        gray = np.asarray(im.convert("L"))
    original, wide = tmp_path / "gray.png", tmp_path / "hdr.tif"
    Image.fromarray(gray).save(original)
    levels = gray.astype(np.float32) / 255.0
    levels[:3, :3] = bad
    Image.fromarray(levels, "F").save(wide)
    d = distance(_hash(wide), _hash(original))
    assert d <= 0.02 * PHASH.bits, d


@pytest.mark.parametrize("mode", ["I", "F"])
def test_a_32_bit_tiff_is_scaled_to_8_bits_without_a_float64_copy(
    tmp_path: Path, mode: str
) -> None:
    """A 32-bit integer or float TIFF was scaled to 8 bits in float64 with a temporary array
    a step, 24 bytes a pixel beside Pillow's own: a 1 MB deflated TIFF of 169 MP (within
    the default max_pixels) took 3.9 GB in a worker, 2.5 times a 16-bit RGBA PNG of that
    size. Measured here at 4 MP by tracemalloc, which sees numpy's arrays (not Pillow's)."""
    import tracemalloc

    import numpy as np

    levels = np.random.default_rng(7).random((2000, 2000)) * 100_000
    path = tmp_path / "scan.tif"
    Image.fromarray(levels.astype(np.int32 if mode == "I" else np.float32), mode).save(path)
    hash_image(str(path), [PHASH], max_pixels=MAX_PIXELS, features=False)  # imports, caches
    tracemalloc.start()
    try:
        hash_image(str(path), [PHASH], max_pixels=MAX_PIXELS, features=False)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    per_pixel = peak / (2000 * 2000)
    assert per_pixel < 16, f"{per_pixel:.1f} bytes a pixel"


def test_a_multi_picture_jpeg_is_draft_decoded_as_its_plain_jpeg(tmp_path: Path) -> None:
    """A multi-picture JPEG (Pillow's "MPO": an Android Ultra HDR photo with its gain map, a
    Samsung or 3-D camera's) is hashed from the same draft decode as the plain JPEG of its
    first picture: the same bits, at a 1/8-scale decode's cost. Before, it was decoded at
    full size (about twice the time at 12 MP) and hashed a few bits away."""
    with Image.open(photos.upscaled(photos.photo("coffee"), tmp_path / "big.jpg")) as big:
        picture = big.convert("RGB")
    plain, multi = tmp_path / "plain.jpg", tmp_path / "multi.jpg"
    picture.save(plain, quality=90)
    picture.save(
        multi, format="MPO", save_all=True, quality=90, append_images=[picture.resize((1000, 750))]
    )  # the gain map
    with Image.open(multi) as im:
        assert (im.format, getattr(im, "n_frames", 1)) == ("MPO", 2)
    data = multi.read_bytes()
    decoded = open_image(data, str(multi), draft_side=256, max_pixels=MAX_PIXELS)
    assert decoded.image.size == (500, 375)  # 1/8 scale
    assert (decoded.format, decoded.width, decoded.height) == ("MPO", 4000, 3000)
    hashers = [PHASH, Hasher("pdq", 16)]
    a = hash_image(str(plain), hashers, max_pixels=MAX_PIXELS)
    b = hash_image(str(multi), hashers, max_pixels=MAX_PIXELS)
    assert a.hashes == b.hashes


def test_heic_is_decoded_through_pillow_heif(tmp_path: Path) -> None:
    heic = photos.as_heic(photos.photo("hubble"), tmp_path / "hubble.heic")
    result = hash_image(str(heic), [PHASH], max_pixels=MAX_PIXELS)
    assert result.format == "HEIF"
    assert (result.width, result.height) == (1000, 872)
    assert distance(result.hashes[PHASH.key], _hash(photos.photo("hubble"))) <= 0.03 * PHASH.bits


def test_exif_capture_time_is_read(tmp_path: Path) -> None:
    exif = Image.Exif()
    exif.get_ifd(0x8769)[0x9003] = "2026:11:23 08:15:42"
    path = tmp_path / "dated.jpg"
    with Image.open(photos.photo("rocket")) as im:
        im.save(path, exif=exif)
    assert hash_image(str(path), [PHASH], max_pixels=MAX_PIXELS).taken_at == "2026-11-23T08:15:42"
    assert hash_image(str(photos.photo("rocket")), [PHASH], max_pixels=MAX_PIXELS).taken_at is None


def _empty(p: Path) -> None:
    p.write_bytes(b"")


def _text(p: Path) -> None:
    p.write_text("this is a text file with a photo's name")


def _truncated(p: Path) -> None:
    photos.truncated(photos.photo("coffee"), p)


def _corrupt(p: Path) -> None:
    data = bytearray(photos.photo("coffee").read_bytes())
    data[2000:6000] = random.Random(0).randbytes(4000)  # garbage in the entropy-coded data
    p.write_bytes(data)


def _bomb(p: Path) -> None:
    Image.new("1", (20000, 20000)).save(p.with_suffix(".png"))  # 400 Mpx, 50 KB on disk
    p.with_suffix(".png").rename(p)


def _directory(p: Path) -> None:
    p.mkdir()


@pytest.mark.parametrize(
    ("make", "error", "kind"),
    [
        (_empty, EmptyFile, "empty"),
        (_text, NotAnImage, "not_an_image"),
        (_truncated, TruncatedImage, "truncated"),
        (_corrupt, CorruptImage, "corrupt"),
        (_bomb, TooManyPixels, "too_many_pixels"),
        (_directory, Unreadable, "unreadable"),
    ],
)
def test_bad_input_raises_a_typed_error(make, error, kind, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    """Every kind of bad file gets its own error with a stable code for the store."""
    path = tmp_path / "upload.jpg"
    make(path)
    with pytest.raises(error) as info:
        hash_image(str(path), [PHASH], max_pixels=MAX_PIXELS)
    assert info.value.kind == kind
    assert str(path) in str(info.value)


def test_pixel_limit_is_checked_before_decoding() -> None:
    with pytest.raises(TooManyPixels, match="exceeds max_pixels 1000"):
        hash_image(str(photos.photo("coffee")), [PHASH], max_pixels=1000)


def test_vanished_file(tmp_path: Path) -> None:
    with pytest.raises(Vanished):
        hash_image(str(tmp_path / "gone.jpg"), [PHASH], max_pixels=MAX_PIXELS)


def test_file_changed_since_it_was_queued_is_not_hashed(tmp_path: Path) -> None:
    """If the stat differs from what the scanner saw, the bytes read are of another version."""
    path = photos.copy(photos.photo("coffee"), tmp_path / "a.jpg")
    seen = FileStat.of(os.stat(path))
    os.utime(path, ns=(seen.mtime_ns + 10**9, seen.mtime_ns + 10**9))
    with pytest.raises(ChangedWhileReading):
        hash_image(str(path), [PHASH], max_pixels=MAX_PIXELS, expect=seen)


def test_symlinks_are_never_followed(tmp_path: Path) -> None:
    """A link in a root could make a file elsewhere (a USB stick) look like a keeper."""
    link = tmp_path / "link.jpg"
    os.symlink(photos.photo("coffee"), link)
    with pytest.raises(Unreadable, match="symbolic link"):
        hash_image(str(link), [PHASH], max_pixels=MAX_PIXELS)
    with pytest.raises(Unreadable, match="symbolic link"):
        file_sha256(str(link))


def test_a_fifo_with_a_photo_name_is_refused_without_blocking(tmp_path: Path) -> None:
    fifo = tmp_path / "pipe.jpg"
    os.mkfifo(fifo)
    with pytest.raises(Unreadable, match="not a regular file"):
        hash_image(str(fifo), [PHASH], max_pixels=MAX_PIXELS)


# -- the format allowlist -------------------------------------------------------------------

# A complete EPS file: Pillow's EPS plugin parses this header, and load() hands the file to
# Ghostscript to render.
MINIMAL_EPS = b"""%!PS-Adobe-3.0 EPSF-3.0
%%BoundingBox: 0 0 16 16
%%EndComments
newpath 0 0 moveto 16 16 lineto stroke
showpage
%%EOF
"""


def test_postscript_named_jpg_is_refused_and_ghostscript_never_runs(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """An EPS upload named like a photo never reaches Ghostscript (a PostScript interpreter
    with no timeout): it is refused as not_an_image, naming what it is."""
    bin_dir, marker = tmp_path / "bin", tmp_path / "gs-ran"
    bin_dir.mkdir()
    fake_gs = bin_dir / "gs"
    fake_gs.write_text(f"#!/bin/sh\necho \"$@\" >> '{marker}'\nexit 0\n")
    fake_gs.chmod(0o755)
    monkeypatch.setenv("PATH", f"{bin_dir}{os.pathsep}{os.environ.get('PATH', '')}")
    monkeypatch.setattr(EpsImagePlugin, "gs_binary", None)  # Pillow caches its search for gs
    evil = tmp_path / "IMG_evil.jpg"
    evil.write_bytes(MINIMAL_EPS)
    with pytest.raises(NotAnImage, match="format not allowed: EPS") as info:
        hash_image(str(evil), [PHASH], max_pixels=MAX_PIXELS)
    assert info.value.kind == "not_an_image"
    assert not marker.exists(), "Ghostscript was run: " + marker.read_text()


@pytest.mark.parametrize("fmt", ["PPM", "PCX", "SGI", "TGA"])
def test_formats_pillow_reads_but_dedupd_does_not_are_refused(fmt: str, tmp_path: Path) -> None:
    """Only allowlisted plugins parse uploads, whatever else this Pillow could read."""
    path = tmp_path / "upload.jpg"
    Image.new("RGB", (32, 32), (10, 120, 200)).save(path, format=fmt)
    with pytest.raises(NotAnImage, match="not a photo format dedupd reads"):
        hash_image(str(path), [PHASH], max_pixels=MAX_PIXELS)


def test_the_allowlist_covers_every_default_extension_and_this_pillow_reads_it_all() -> None:
    """A default extension whose format is not allowlisted would have every such upload
    refused; an allowlisted format this Pillow cannot open would be refused silently."""
    from dedupd.video import VIDEO_EXTENSIONS  # decoded by dedupd.video, never by Pillow

    by_extension = Image.registered_extensions()
    photo_extensions = [e for e in DEFAULT_EXTENSIONS if e not in VIDEO_EXTENSIONS]
    assert {by_extension[f".{e}"] for e in photo_extensions} == set(ALLOWED_FORMATS)
    assert set(ALLOWED_FORMATS) <= set(Image.OPEN)


@pytest.mark.parametrize("fmt", ALLOWED_FORMATS)
def test_every_allowed_format_decodes_to_the_same_picture(fmt: str, tmp_path: Path) -> None:
    """Each allowlisted format still opens, and gives the photo itself (pHash near the JPEG's)."""
    path = tmp_path / f"coffee.{fmt.lower()}"
    with Image.open(photos.photo("coffee")) as im:
        im.convert("RGB").save(path, format=fmt)
    result = hash_image(str(path), [PHASH], max_pixels=MAX_PIXELS)
    assert (result.format, result.width, result.height) == (fmt, 600, 400)
    d = distance(result.hashes[PHASH.key], _hash(photos.photo("coffee")))
    assert d <= 0.05 * PHASH.bits, d


def test_a_cielab_tiff_is_hashed_and_shown_as_the_photo_it_holds(tmp_path: Path) -> None:
    """A TIFF in CIELab (a scanner's, an editor's Lab mode) opens in Pillow's "LAB" mode,
    which Pillow converts to nothing else: it was recorded `internal` ("conversion from LAB
    to RGB not supported") and the review page could not show it. It is converted to sRGB
    and hashes as its RGB original does."""
    path = tmp_path / "scan.tif"
    with Image.open(photos.photo("coffee")) as im:
        im.convert("RGB").convert("LAB").save(path)
    result = hash_image(str(path), [PHASH], max_pixels=MAX_PIXELS)
    assert (result.format, result.width, result.height) == ("TIFF", 600, 400)
    d = distance(result.hashes[PHASH.key], _hash(photos.photo("coffee")))
    assert d <= 0.02 * PHASH.bits, d
    picture, _ = thumbnail(str(path), 100, max_pixels=MAX_PIXELS)
    assert (picture.mode, picture.size) == ("RGB", (100, 67))


def test_a_file_behind_a_symlinked_folder_is_never_read(tmp_path: Path) -> None:
    """A user who owns a watched folder and swaps a subfolder for a link to a folder only
    dedupd may read must not learn the hash of what is there: every folder on the path is
    opened without following links, not only the file's own name."""
    secret = tmp_path / "root-only"
    photos.copy(photos.photo("coffee"), secret / "IMG_1.jpg")
    root = tmp_path / "photos"
    root.mkdir()
    os.symlink(secret, root / "sub")
    with pytest.raises(Unreadable, match="symbolic link"):
        hash_image(str(root / "sub" / "IMG_1.jpg"), [Hasher("phash", 8)], max_pixels=10**8)
    with pytest.raises(Unreadable, match="symbolic link"):
        file_sha256(str(root / "sub" / "IMG_1.jpg"))


# -- border trim -------------------------------------------------------------------------------


def _content_box(path: Path) -> tuple[int, int, int, int] | None:
    """The trim box on the small image dedupd hashes (draft-decoded as for pHash 16)."""
    decoded = open_image(str(path), str(path), draft_side=PHASH.draft_side, max_pixels=MAX_PIXELS)
    return border_box(decoded.image)


@pytest.mark.parametrize("colour", ["black", "white", "#1d3557"])
@pytest.mark.parametrize("status_bar", [False, True], ids=["bars", "status_bar"])
def test_a_screenshot_of_a_photo_matches_the_photo(
    colour: str, status_bar: bool, tmp_path: Path
) -> None:
    """A photo fitted into a phone's 9:19.5 canvas (black, white or a flat colour; with a
    status-bar strip of icons on top) hashes like the photo once its bars are trimmed, also
    after a chat app re-encodes the screenshot as JPEG."""
    radius = PHASH.radius(PHASH.default_threshold)
    for name in photos.PHOTOS:
        shot = photos.screenshot(photos.photo(name), tmp_path / f"{name}.png", colour, status_bar)
        sent = photos.reencode(shot, tmp_path / f"{name}.jpg", 70)
        original = _hash(photos.photo(name))
        for copy in (shot, sent):
            assert distance(original, _hash(copy)) <= radius, (name, copy.name)
            untrimmed = distance(original, _hash(copy, trim=False))
            assert untrimmed > radius, "without the trim a screenshot is another picture"


def test_trimming_leaves_the_photo_and_nothing_else(tmp_path: Path) -> None:
    """The trimmed box is the pasted photo, to within a line of the small image: neither a
    strip of bar left on nor a strip of photo eaten."""
    for name in photos.PHOTOS:
        shot = photos.screenshot(photos.photo(name), tmp_path / f"{name}.png", "white", True)
        with Image.open(shot) as im:
            canvas = im.size
        with Image.open(photos.photo(name)) as im:
            scale = canvas[0] / im.width
            photo_h = round(im.height * scale)
        box = _content_box(shot)
        assert box is not None, name
        top = (canvas[1] - photo_h) // 2
        f = box[2] / canvas[0]  # the small image's scale
        assert (box[0], box[2]) == (0, round(canvas[0] * f)), name
        assert abs(box[1] - top * f) <= 1.5 and abs(box[3] - (top + photo_h) * f) <= 1.5, name


def _dark_sky(tmp_path: Path) -> Path:
    """A night scene: the top 60% a smooth dark-blue gradient with sensor noise and a few
    stars, over a lit skyline of windows."""
    rng = random.Random(7)
    w, h = 1600, 1200
    im = Image.new("RGB", (w, h))
    sky = int(h * 0.6)
    px = im.load()
    assert px is not None
    for y in range(h):
        for x in range(0, w, 1):
            if y < sky:
                v = 8 + 20 * y // sky + rng.randint(-3, 3)
                px[x, y] = (max(0, v // 2), max(0, v // 2), max(0, v))
            else:
                lit = (x // 40 + y // 30) % 5 == 0
                px[x, y] = (200, 170, 90) if lit else (25, 22, 20)
    for _ in range(60):
        x, y = rng.randrange(w - 3), rng.randrange(sky)
        for dx in range(3):
            px[x + dx, y] = (240, 240, 255)
    return photos._save(im, tmp_path / "night.jpg", format="JPEG", quality=85)


def _white_wall(tmp_path: Path) -> Path:
    """A white wall lit from one side (a gentle shading), a picture frame in the middle."""
    rng = random.Random(8)
    w, h = 1600, 1200
    im = Image.new("RGB", (w, h))
    px = im.load()
    assert px is not None
    for y in range(h):
        for x in range(w):
            v = 250 - 18 * x // w - 6 * y // h + rng.randint(-2, 2)
            px[x, y] = (v, v, v - 3)
    im.paste(Image.open(photos.photo("coffee")).resize((500, 330)), (550, 430))
    return photos._save(im, tmp_path / "wall.jpg", format="JPEG", quality=90)


@pytest.mark.slow
def test_real_photos_are_not_eaten_into(tmp_path: Path) -> None:
    """Dark skies, night scenes (hubble is a night sky), white walls and plain backgrounds
    are photo, not border: the trim leaves at most a line of the small image."""
    paths = [photos.photo(n) for n in photos.PHOTOS]
    paths += [_dark_sky(tmp_path), _white_wall(tmp_path)]
    paths += [photos.upscaled(photos.photo(n), tmp_path / f"{n}_12mp.jpg") for n in photos.PHOTOS]
    # The accuracy benchmark's real photos, read from the scikit-image wheel when it is
    # installed (`pip install .[bench]`): a white sky (camera), a flat grey wall
    # (clock_motion), a moonscape, a page of paper, a deep-field night sky.
    try:
        data = resources.files("skimage").joinpath("data")
    except ModuleNotFoundError:
        data = None
    for name in ("camera.png", "moon.png", "clock_motion.png", "page.png", "coins.png",
                 "hubble_deep_field.jpg", "rocket.jpg"):  # fmt: skip
        if data is not None:
            with Image.open(io.BytesIO(data.joinpath(name).read_bytes())) as img:
                big = img.convert("RGB").resize((1600, round(1600 * img.height / img.width)))
            paths.append(photos._save(big, tmp_path / f"sk_{name}.jpg", quality=92))
    for path in paths:
        decoded = open_image(str(path), str(path), draft_side=256, max_pixels=MAX_PIXELS)
        box = border_box(decoded.image)
        w, h = decoded.image.size
        whole = box is None or (box[:2] <= (1, 1) and box[2] >= w - 1 and box[3] >= h - 1)
        assert whole, (path.name, (w, h), box)


def test_flat_and_almost_flat_images_are_kept_whole() -> None:
    """An image that is all border (a solid colour) or nearly (a thin line) is not trimmed
    to a sliver: hashing it whole is what it was before."""
    solid = Image.new("RGB", (300, 200), "white")
    assert border_box(solid) is None
    lined = solid.copy()
    lined.paste((0, 0, 0), (0, 100, 300, 103))
    assert border_box(lined) is None


def test_the_trim_measures_lines_exactly_as_float_arithmetic_would() -> None:
    """The trim sums each line's levels and squares in integers: the same floats, bit for
    bit, as float64 means of the levels (what the trim measured before, and so what every
    stored hash's trim box rests on), for flat, noisy and extreme lines, short and long."""
    import numpy as np

    from dedupd.imaging import _line_stats

    rng = np.random.default_rng(8)
    for rows, cols in ((1, 1), (3, 7), (40, 500), (12, 6000)):
        for lines in (
            rng.integers(0, 256, (rows, cols), dtype=np.uint8),
            np.full((rows, cols), 255, np.uint8),
            np.clip(rng.normal(128, 1.2, (rows, cols)), 0, 255).astype(np.uint8),
        ):
            floats = lines.astype(np.float64)
            mean = floats.mean(axis=1)
            std = np.sqrt(np.maximum(np.square(floats).mean(axis=1) - mean * mean, 0.0))
            got_std, got_mean = _line_stats(lines)
            assert np.array_equal(got_std, std) and np.array_equal(got_mean[:, 0], mean)


def test_the_pdq_step_gives_hash_quality_and_dominant_share_in_the_same_read(
    tmp_path: Path,
) -> None:
    """hash_image with PDQ among the hashers: PDQ's bits equal hashing the decoded image,
    reduced to PDQ's side, directly, with its quality and the dominant-tone share; without
    PDQ there are none."""
    from dedupd.imaging import _small

    pdq = Hasher("pdq")
    path = photos.photo("coffee")
    result = hash_image(str(path), [PHASH, pdq], max_pixels=MAX_PIXELS, draft=False)
    with Image.open(path) as im:
        direct = pdq.measure(_small(im, "RGB", pdq.reduce_side))
    assert result.hashes[pdq.key] == direct.bits
    assert result.quality == {pdq.key: direct.quality} and direct.quality == 100
    assert result.dominant is not None and 0 < result.dominant < 0.3
    assert set(result.hashes) == {PHASH.key, pdq.key}
    plain = hash_image(str(path), [PHASH], max_pixels=MAX_PIXELS)
    assert plain.quality == {} and plain.dominant is None
    both = hash_image(str(path), [PHASH, pdq], max_pixels=MAX_PIXELS)
    assert plain.hashes[PHASH.key] == both.hashes[PHASH.key], "PDQ changes no other hash"


def test_an_image_with_a_side_longer_than_max_side_is_too_many_pixels(tmp_path: Path) -> None:
    """A 1 x 100,001 PNG is a few hundred bytes and far below max_pixels, but every hashing
    step works per line: refused before decoding (a 1 x 2,000,000 one kept a worker busy for
    minutes). The longest side allowed is still hashed."""
    import numpy as np

    from dedupd.imaging import MAX_SIDE, TooManyPixels

    for side in (MAX_SIDE + 1, MAX_SIDE):
        levels = (np.arange(side, dtype=np.uint32) % 251).astype(np.uint8).reshape(side, 1)
        Image.fromarray(levels).save(tmp_path / f"{side}.png")
    with pytest.raises(TooManyPixels, match="a side longer than"):
        hash_image(str(tmp_path / f"{MAX_SIDE + 1}.png"), [PHASH], max_pixels=MAX_PIXELS)
    result = hash_image(str(tmp_path / f"{MAX_SIDE}.png"), [PHASH], max_pixels=MAX_PIXELS)
    assert (result.width, result.height) == (1, MAX_SIDE)


def _border_lines_reference(std: list[float], mean: list[float], edge: int) -> int:
    """`imaging._border_lines` written out line by line, for one channel."""
    from dedupd import imaging

    n = len(std)

    def run(start: int, colour: float, max_std: float, max_mean: float) -> int:
        count = 0
        while start + count < n and std[start + count] <= max_std and (
            abs(mean[start + count] - colour) <= max_mean
        ):
            count += 1
        return count

    def band(start: int) -> tuple[int, int]:
        flat = run(start, mean[start], imaging._LINE_STD, imaging._LINE_MEAN)
        end = start + flat
        if end < n:
            end += min(edge, run(end, mean[start], imaging._EDGE_STD, imaging._EDGE_MEAN))
        return flat, end

    if std[0] <= imaging._LINE_STD:
        flat, end = band(0)
        if flat >= imaging._MIN_BAND * n:
            return end
    for start in range(1, int(imaging._STRIP * n) + 1):
        if std[start] <= imaging._LINE_STD:
            flat, end = band(start)
            if flat >= imaging._STRIP_BAND * n:
                return end
    return 0


@settings(max_examples=300, deadline=None)
@given(
    runs=st.lists(
        st.tuples(
            st.integers(1, 200),  # lines in the run
            st.sampled_from([0.0, 1.0, 1.5, 2.0, 8.0, 30.0]),  # their spread
            st.sampled_from([0.0, 0.5, 10.0, 20.0, 128.0, 255.0]),  # their mean
        ),
        min_size=1,
        max_size=12,
    ),
    edge=st.integers(0, 20),
)
def test_the_border_search_counts_lines_as_a_line_by_line_search_does(
    runs: list[tuple[int, float, float]], edge: int
) -> None:
    """The border search looks at growing windows of lines (linear on a very long side,
    where it was quadratic): the same answer as going line by line."""
    import numpy as np

    from dedupd.imaging import _border_lines

    std = [s for length, s, _ in runs for _ in range(length)]
    mean = [m for length, _, m in runs for _ in range(length)]
    found = _border_lines(np.array(std), np.array(mean)[:, None], edge)
    assert found == _border_lines_reference(std, mean, edge)


@pytest.mark.parametrize("length", [1, 63, 64, 65, 100, 191, 192, 193, 447, 448, 449, 960, 961])
@pytest.mark.parametrize("first", [0, 1, 150])  # where the flat band starts (150: past a strip)
def test_the_border_search_ends_a_band_at_its_first_other_line(length: int, first: int) -> None:
    """A flat band of `length` lines, then an other line, on a 4,000-line side, at the
    lengths where the windows of the search begin and end."""
    import numpy as np

    from dedupd.imaging import _border_lines

    std = [30.0] * 4000
    mean = [128.0] * 4000
    for i in range(first, first + length):
        std[i], mean[i] = 0.0, 10.0
    found = _border_lines(np.array(std), np.array(mean)[:, None], 0)
    assert found == _border_lines_reference(std, mean, 0)
    if first == 0 and length >= 100:  # _MIN_BAND of the side
        assert found == length


def _claiming(size: tuple[int, int], tmp_path: Path) -> Path:
    """A complete 64x48 JPEG whose frame header claims `size`: libjpeg decodes it as that
    size, the missing rest grey, and only warns."""
    import struct

    out = io.BytesIO()
    small = Image.open(photos.photo("coffee")).convert("RGB").resize((64, 48))
    small.save(out, "JPEG", quality=90)
    data = bytearray(out.getvalue())
    sof = data.find(b"\xff\xc0")
    data[sof + 5 : sof + 9] = struct.pack(">HH", size[1], size[0])
    path = tmp_path / f"claims-{size[0]}x{size[1]}.jpg"
    path.write_bytes(data)
    return path


def test_a_jpeg_whose_header_claims_far_more_picture_than_it_holds_is_truncated(
    tmp_path: Path,
) -> None:
    """A 2 KB file claiming 13000x13000: hashed before as a grey frame ("ok"), and such
    files of different photos were listed as one near-duplicate group. Its scan would need
    at least two bits for each 8x8 block; a file shorter than that cannot be whole."""
    with pytest.raises(TruncatedImage, match="cannot hold the 13000x13000 picture"):
        hash_image(str(_claiming((13000, 13000), tmp_path)), [PHASH], max_pixels=MAX_PIXELS)
    # The tightest whole files there are (one flat grey, optimized tables: exactly two bits
    # a block) are hashed, at any size, greyscale or colour.
    for mode, size in (("L", (8000, 6000)), ("RGB", (4000, 3000)), ("L", (17, 9))):
        flat = tmp_path / f"flat-{mode}-{size[0]}.jpg"
        Image.new(mode, size, 128 if mode == "L" else (128, 128, 128)).save(
            flat, "JPEG", quality=1, optimize=True
        )
        assert hash_image(str(flat), [PHASH], max_pixels=MAX_PIXELS).width == size[0]


@pytest.mark.parametrize("name", photos.PHOTOS)
def test_the_share_of_border_is_measured_on_copies_and_none_on_photos(
    name: str, tmp_path: Path
) -> None:
    """`framed`: a photo has none (the keep rules then never count it as a copy); its phone
    screenshot (canvas around it) is mostly border."""
    from dedupd.policy import FRAMED

    source = photos.photo(name)
    shot = photos.screenshot(source, tmp_path / "shot.png", status_bar=True)
    plain = hash_image(str(source), [PHASH], max_pixels=MAX_PIXELS, features=False)
    framed = hash_image(str(shot), [PHASH], max_pixels=MAX_PIXELS, features=False)
    assert plain.framed == 0.0
    assert framed.framed >= 0.5 > FRAMED


def _jpeg(path: Path, size: tuple[int, int], **save: Any) -> Path:
    """A photo of `size` saved as a JPEG: sequential (baseline), or as `save` says."""
    im = Image.open(photos.photo("chelsea")).convert("RGB").resize(size)
    im.save(path, "JPEG", quality=90, **save)
    return path


def _one_scan_per_component(src: Path, dst: Path) -> Path:
    """`src`, a sequential colour JPEG, with a first scan that holds one component of its
    three: the headers of a sequential JPEG coded a component at a time (libjpeg's
    `jpegtran -scans`), which libjpeg then holds whole to decode, as a progressive one."""
    data = bytearray(src.read_bytes())
    sos = data.find(b"\xff\xda")
    assert data[sos + 4] == 3
    data[sos + 4] = 1
    dst.write_bytes(data)
    return dst


def _never_decoded(monkeypatch: pytest.MonkeyPatch) -> None:
    """Makes any decode fail the test: a refusal must come before any pixel is decoded."""
    from PIL import ImageFile

    def load(self: ImageFile.ImageFile) -> None:
        raise AssertionError(f"{self.size} decoded before it was refused")

    monkeypatch.setattr(ImageFile.ImageFile, "load", load)


def test_a_sequential_jpeg_is_bounded_by_the_pixels_its_draft_decodes(tmp_path: Path) -> None:
    """A 200 MP phone photo (16320x12240) was recorded `too_many_pixels` and never
    deduplicated, though a sequential JPEG is decoded a row of blocks at a time at the
    draft's scale (1/8: 2040x1530). `max_pixels` counts the pixels decoded: a 3 MP JPEG is
    hashed within 1 MP, since its draft is 500x375; hashed the same, and its thumbnail made."""
    path = _jpeg(tmp_path / "seq.jpg", (2000, 1500))
    within = hash_image(str(path), [PHASH], max_pixels=1_000_000)
    assert (within.width, within.height) == (2000, 1500)
    assert within.hashes == hash_image(str(path), [PHASH], max_pixels=MAX_PIXELS).hashes
    picture, _ = thumbnail(str(path), 320, max_pixels=1_000_000)
    assert picture.size == (320, 240)
    # a draft beyond max_pixels is still refused, before it is decoded
    with pytest.raises(TooManyPixels, match=r"2000x1500 decoded at 500x375 = 187500 pixels"):
        hash_image(str(path), [PHASH], max_pixels=100_000)


@pytest.mark.slow
def test_a_200_mp_phone_jpeg_is_hashed(tmp_path: Path) -> None:
    """16320x12240 = 199,756,800 pixels, beyond Pillow's own bomb limit (178,956,970), which
    refused it at open whatever `max_pixels` said: hashed at the default limit. Saved
    progressive, it is still refused, and the error says why."""
    path, progressive = tmp_path / "200mp.jpg", tmp_path / "200mp-progressive.jpg"
    picture = Image.new("L", (16320, 12240), 128)
    picture.save(path, "JPEG", quality=1, optimize=True)
    picture.save(progressive, "JPEG", quality=1, progressive=True)
    del picture
    result = hash_image(str(path), [PHASH], max_pixels=MAX_PIXELS)
    assert (result.width, result.height, result.format) == (16320, 12240, "JPEG")
    with pytest.raises(TooManyPixels, match=r"; a progressive \(multi-scan\) JPEG is held whole"):
        hash_image(str(progressive), [PHASH], max_pixels=MAX_PIXELS)


@pytest.mark.parametrize("kind", ["progressive", "one scan per component"])
def test_a_multi_scan_jpeg_is_bounded_by_its_declared_pixels(
    kind: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A progressive JPEG (or a sequential one coded a component per scan) makes libjpeg
    hold every DCT coefficient of the picture (~3 bytes a pixel) at any draft scale: it is
    refused by its declared pixels, before decoding, as before."""
    seq = _jpeg(tmp_path / "seq.jpg", (2000, 1500))
    if kind == "progressive":
        path = _jpeg(tmp_path / "prog.jpg", (2000, 1500), progressive=True)
    else:
        path = _one_scan_per_component(seq, tmp_path / "scans.jpg")
    _never_decoded(monkeypatch)
    with pytest.raises(
        TooManyPixels,
        match=r"2000x1500 = 3000000 pixels exceeds max_pixels 1000000; a progressive",
    ):
        hash_image(str(path), [PHASH], max_pixels=1_000_000)


def test_without_a_draft_a_sequential_jpeg_is_bounded_by_its_declared_pixels(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A full decode (`draft=False`, as the benchmarks ask; no hasher, as a keeper's
    re-check; `open_image` without a draft side) holds the whole picture: refused by its
    declared pixels before decoding."""
    path = _jpeg(tmp_path / "seq.jpg", (2000, 1500))
    _never_decoded(monkeypatch)
    with pytest.raises(TooManyPixels, match=r"2000x1500 = 3000000 pixels exceeds max_pixels"):
        hash_image(str(path), [PHASH], max_pixels=1_000_000, draft=False)
    with pytest.raises(TooManyPixels, match=r"2000x1500 = 3000000 pixels exceeds max_pixels"):
        hash_image(str(path), [], max_pixels=1_000_000)
    with pytest.raises(TooManyPixels, match=r"2000x1500 = 3000000 pixels exceeds max_pixels"):
        open_image(path.read_bytes(), str(path), draft_side=None, max_pixels=1_000_000)


def test_a_jpeg_claiming_a_200_mp_picture_it_does_not_hold_is_truncated(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Counting the draft's pixels admits no lying header: a 2 KB file claiming 16320x12240
    is `truncated` (Pillow's bomb check made it `too_many_pixels` before), never decoded."""
    path = _claiming((16320, 12240), tmp_path)
    _never_decoded(monkeypatch)
    with pytest.raises(TruncatedImage, match="cannot hold the 16320x12240 picture"):
        hash_image(str(path), [PHASH], max_pixels=MAX_PIXELS)


def _disguised_progressive(size: tuple[int, int]) -> bytes:
    """A progressive JPEG claiming `size`, disguised for a reader that takes RST0 (a marker
    without a length for libjpeg and Pillow) for one with a length: such a reader jumps into
    an APP1 segment that holds a sequential frame header and a scan of every component, and
    counts the draft; libjpeg decodes the progressive frame, holding it whole. Padded with
    comments past the lying-size check."""
    w, h = size
    out = io.BytesIO()
    Image.new("L", (64, 64), 128).save(out, "JPEG", progressive=True)
    real = bytearray(out.getvalue())
    sof = real.find(b"\xff\xc2")
    real[sof + 5 : sof + 9] = h.to_bytes(2, "big") + w.to_bytes(2, "big")
    payload = bytearray(0xFFFF - 2)
    fake = b"\xff\xc0\x00\x0b\x08\x00\x10\x00\x10\x01\x01\x11\x00\xff\xda\x00\x08\x01\x01\x00"
    payload[65509 - 8 : 65509 - 8 + len(fake)] = fake  # where 0xFFE1 read as a length leads
    data = b"\xff\xd8\xff\xd0\xff\xe1\xff\xff" + payload
    pad = (w // 16) * (h // 16) // 4
    while pad > 0:
        n = min(pad, 65533)
        data += b"\xff\xfe" + (n + 2).to_bytes(2, "big") + bytes(n)
        pad -= n
    return data + bytes(real[2:])


def test_a_progressive_jpeg_disguised_behind_a_restart_marker_is_counted_whole(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Restart markers stand alone: read as libjpeg reads them, the frame is the progressive
    one, held whole (400 MP declared: 1.2 GB of coefficients at 4:2:0, 20,000 px a side). A
    reader that took the marker for a segment counted its 3 MP draft (review helper found it:
    a 4 MB file of this kind took 8 GB in a worker)."""
    data = _disguised_progressive((20000, 20000))
    _never_decoded(monkeypatch)
    with pytest.raises(TooManyPixels, match=r"a progressive \(multi-scan\) JPEG is held whole"):
        open_image(data, "x.jpg", draft_side=256, max_pixels=MAX_PIXELS)


def test_a_frame_the_decoder_reads_otherwise_is_counted_whole(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The draft counts only when Pillow, whose reading libjpeg decodes by, found the frame
    dedupd's own reading found: a file two readers part on is bounded by its declared size
    (any reading dedupd gets wrong, here one made to say "sequential" of a progressive file)."""
    path = _jpeg(tmp_path / "prog.jpg", (2000, 1500), progressive=True)
    wrong = imaging._JpegFrame(0xC0, (2000, 1500), 3, 3)
    monkeypatch.setattr(imaging, "_jpeg_frame", lambda data: wrong)
    _never_decoded(monkeypatch)
    with pytest.raises(TooManyPixels, match="do not read as one sequential JPEG's"):
        open_image(path.read_bytes(), str(path), draft_side=256, max_pixels=1_000_000)


def test_a_lying_size_is_caught_behind_many_segments(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The lying-size check needs the frame header only: 300 comments between it and the
    first scan (beyond the walk's reach for the scan) do not hide a 4000x3000 claim."""
    data = bytearray(_claiming((4000, 3000), tmp_path).read_bytes())
    sos = data.find(b"\xff\xda")
    data[sos:sos] = b"\xff\xfe\x00\x02" * 300
    _never_decoded(monkeypatch)
    with pytest.raises(TruncatedImage, match="cannot hold the 4000x3000 picture"):
        open_image(bytes(data), "x.jpg", draft_side=256, max_pixels=MAX_PIXELS)
