"""hashers: every ImageHash algorithm is selectable, sized, keyed and tells photos apart."""

from __future__ import annotations

from pathlib import Path

import pytest
from PIL import Image

from dedupd.hashers import (
    HASHERS,
    INVERSE,
    LOW_DETAIL_DOMINANT,
    TRANSFORMS,
    Algorithm,
    Hasher,
    dominant_share,
    second_opinion,
    transform_image,
    validate_hash_size,
)
from dedupd.index import distance
from tests import photos

SIZES: dict[str, tuple[int, ...]] = {
    a: (3 if a == "colorhash" else 8, 8 if a == "colorhash" else 16) for a in HASHERS
}
SIZES["pdq"] = (16,)  # PDQ has one size


def _image(path: Path, hasher: Hasher) -> Image.Image:
    with Image.open(path) as im:
        return im.convert(hasher.mode)


@pytest.mark.parametrize(("algorithm", "size"), [(a, s) for a in HASHERS for s in SIZES[a]])
def test_every_hasher_gives_packed_bits_of_its_length(algorithm: str, size: int) -> None:
    hasher = Hasher(algorithm, size)  # type: ignore[arg-type]
    bits = hasher(_image(photos.photo("coffee"), hasher))
    assert len(bits) * 8 >= hasher.bits > len(bits) * 8 - 8
    assert bits == hasher(_image(photos.photo("coffee"), hasher)), "hashing is deterministic"


@pytest.mark.parametrize("algorithm", list(HASHERS))
def test_a_recompressed_copy_is_nearer_than_any_other_photo(
    algorithm: Algorithm, tmp_path: Path
) -> None:
    """The point of a perceptual hash: a chat-app re-encode is close, other photos are far."""
    hasher = Hasher(algorithm, SIZES[algorithm][-1])  # type: ignore[arg-type]
    for name in photos.PHOTOS:
        original = hasher(_image(photos.photo(name), hasher))
        copy = hasher(
            _image(photos.reencode(photos.photo(name), tmp_path / f"{name}.jpg", 50), hasher)
        )
        others = [
            distance(original, hasher(_image(photos.photo(o), hasher)))
            for o in photos.PHOTOS
            if o != name
        ]
        assert distance(original, copy) < min(others), (name, distance(original, copy), others)


@pytest.mark.parametrize("algorithm", ["phash", "dhash", "average_hash", "whash", "phash_simple"])
def test_default_threshold_separates_the_test_photos(algorithm: str, tmp_path: Path) -> None:
    """At the default threshold a resized copy matches and no two different photos do."""
    hasher = Hasher(algorithm, 16)  # type: ignore[arg-type]
    radius = hasher.radius(hasher.default_threshold)
    hashes = {n: hasher(_image(photos.photo(n), hasher)) for n in photos.PHOTOS}
    for name, h in hashes.items():
        small = photos.resize(photos.photo(name), tmp_path / f"{name}.jpg", 0.5)
        assert distance(h, hasher(_image(small, hasher))) <= radius, name
        for other, g in hashes.items():
            if other != name:
                assert distance(h, g) > radius, (name, other)


def test_key_names_algorithm_size_and_imagehash_version() -> None:
    """Hashes from different settings never mix: the key differs when any of them does."""
    key = Hasher("phash", 16).key
    assert key.startswith("phash:16:imagehash-")
    assert Hasher("phash", 8).key != key
    assert Hasher("dhash", 16).key != key


def test_bit_lengths() -> None:
    assert Hasher("phash", 8).bits == 64
    assert Hasher("phash", 16).bits == 256
    assert Hasher("colorhash", 3).bits == 42


def test_radius_turns_a_normalized_threshold_into_bits() -> None:
    assert Hasher("phash", 16).radius(0.1) == 25
    assert Hasher("phash", 8).radius(0.1) == 6
    assert Hasher("phash", 8).radius(0.125) == 8  # exact fractions are not lost to rounding


@pytest.mark.parametrize(
    ("algorithm", "size", "message"),
    [
        ("whash", 12, "power of two"),
        ("colorhash", 16, "1..8"),
        ("phash", 1, "between 2 and 64"),
        ("dhash", 65, "between 2 and 64"),
    ],
)
def test_unsuitable_sizes_are_rejected(algorithm: str, size: int, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        validate_hash_size(algorithm, size)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match=message):
        Hasher(algorithm, size)  # type: ignore[arg-type]


def test_unknown_algorithm_is_an_error_not_a_default() -> None:
    with pytest.raises(ValueError, match="unknown hasher 'md5'"):
        Hasher("md5", 16)  # type: ignore[arg-type]


def test_transform_image_names_match_the_pil_transposes() -> None:
    """`rot90` is a quarter turn counterclockwise, `mirror` left-right, `mirror_rotN` the
    mirror of `rotN`; each is undone by its INVERSE."""
    im = Image.new("L", (3, 2))
    im.putdata([0, 1, 2, 3, 4, 5])
    expect = {
        "identity": [[0, 1, 2], [3, 4, 5]],
        "rot90": [[2, 5], [1, 4], [0, 3]],
        "rot180": [[5, 4, 3], [2, 1, 0]],
        "rot270": [[3, 0], [4, 1], [5, 2]],
        "mirror": [[2, 1, 0], [5, 4, 3]],
        "mirror_rot90": [[5, 2], [4, 1], [3, 0]],
        "mirror_rot180": [[3, 4, 5], [0, 1, 2]],
        "mirror_rot270": [[0, 3], [1, 4], [2, 5]],
    }
    assert tuple(expect) == TRANSFORMS
    for t in TRANSFORMS:
        out = transform_image(im, t)
        w, h = out.size
        rows = [[out.getpixel((x, y)) for x in range(w)] for y in range(h)]
        assert rows == expect[t], t
        assert transform_image(out, INVERSE[t]).tobytes() == im.tobytes(), t


@pytest.mark.parametrize("algorithm", list(HASHERS))
def test_each_variant_equals_hashing_the_transformed_image(algorithm: Algorithm) -> None:
    """A newcomer's 8 variants are what its rotated and mirrored copies hash to.

    pHash derives them from one DCT (transpose and sign flips), the others hash transposed
    copies of the small image. At the pHash resize size (64 px for 16x16) the derivation is
    exact; on a photo of any other size the resampler rounds the transformed picture's
    pixels slightly differently, which can move a coefficient that sits at the median: a few
    bits of 256, far below any threshold.
    """
    hasher = Hasher(algorithm, SIZES[algorithm][-1])
    for name in photos.PHOTOS:
        image = _image(photos.photo(name), hasher)
        small = image.resize((4 * hasher.hash_size,) * 2)
        # PDQ's own dihedral pass reduces the picture once, with a filter that is not
        # symmetric under a transpose: up to 16 of 256 bits from hashing the turned picture
        # (measured 14), well within its 69-bit threshold.
        rounding = {"phash": 3, "pdq": 16}.get(algorithm, 0)
        exact_at_sample = 0 if algorithm != "pdq" else rounding
        for picture, slack in ((small, exact_at_sample), (image, rounding)):
            variants = hasher.variants(picture)
            assert variants[0] == hasher(picture), "identity is the plain hash"
            for t, bits in zip(TRANSFORMS, variants, strict=True):
                d = distance(bits, hasher(transform_image(picture, t)))
                assert d <= slack, (name, picture.size, t, d)


# pdqhash.compute_dihedral's order (PDQ's own: original, rot90, rot180, rot270, flip-x,
# flip-y, flip-plus1, flip-minus1) as indices, in TRANSFORMS order.
_PDQ_DIHEDRAL = (0, 1, 2, 3, 5, 7, 4, 6)


def test_pdq_variants_are_the_bits_of_pdqhash_own_dihedral_pass(tmp_path: Path) -> None:
    """PDQ's 8 variants, derived from the coefficients of `pdqhash.compute_float`, are
    exactly the hashes and quality `pdqhash.compute_dihedral` gives (what stored databases
    hold): on photos at the size PDQ is given and at others, an odd size, a flat image (its
    coefficients tie at the median) and images too narrow for PDQ (no bits, quality 0)."""
    import numpy as np
    import pdqhash

    pdq = Hasher("pdq")
    pictures = []
    for name in photos.PHOTOS:
        image = _image(photos.photo(name), pdq)
        pictures += [image, image.reduce(3), image.crop((0, 0, 97, 61))]
    with Image.open(photos.solid(tmp_path / "flat.png", (90, 90, 90))) as flat:
        pictures.append(flat.convert("RGB"))
    pictures += [Image.new("RGB", size, (200, 10, 10)) for size in ((4, 300), (300, 4), (1, 1))]
    pictures.append(Image.effect_noise((5, 5), 60).convert("RGB"))
    for picture in pictures:
        pixels = np.ascontiguousarray(np.asarray(picture, dtype=np.uint8))
        theirs, quality = pdqhash.compute_dihedral(pixels)
        mine, my_quality = pdq.measure_variants(picture)
        assert my_quality == quality, picture.size
        for t, bits, i in zip(TRANSFORMS, mine, _PDQ_DIHEDRAL, strict=True):
            expected = np.packbits(np.asarray(theirs[i], dtype=bool)).tobytes()
            assert bits == expected, (picture.size, t)


def test_phash_variants_differ_from_the_plain_hash() -> None:
    """The variants are really other hashes (a rotated photo is far from the original), so
    querying them finds what the plain hash cannot."""
    hasher = Hasher("phash", 16)
    variants = hasher.variants(_image(photos.photo("chelsea"), hasher))
    assert min(distance(variants[0], v) for v in variants[1:]) > hasher.radius(0.25)


def test_key_changes_with_what_is_hashed() -> None:
    """The border trim changed what is hashed: the key says so, so old hashes are redone."""
    assert Hasher("phash", 16).key.endswith(":trim1")


def test_pdq_rates_the_detail_of_what_it_hashed(tmp_path: Path) -> None:
    """PDQ comes with its quality (0-100): full for a photo, nothing for a solid colour or a
    smooth gradient, the images whose hashes say little; the other hashers rate nothing."""
    pdq = Hasher("pdq")
    assert pdq.bits == 256 and pdq.key.startswith("pdq:16:pdqhash-") and pdq.rates_quality
    photo = pdq.measure(_image(photos.photo("coffee"), pdq))
    assert len(photo.bits) == 32 and photo.quality == 100
    for flat in (
        photos.solid(tmp_path / "red.png", (200, 30, 30)),
        photos.gradient(tmp_path / "ramp.png", (20, 40, 120), (120, 180, 250)),
    ):
        assert pdq.measure(_image(flat, pdq)).quality == 0, flat
    assert Hasher("phash").measure(_image(photos.photo("coffee"), Hasher("phash"))).quality is None


def test_pdq_is_the_second_opinion_unless_it_is_the_first() -> None:
    assert second_opinion(Hasher("phash", 16)) == Hasher("pdq")
    assert second_opinion(Hasher("dhash", 8)) == Hasher("pdq")
    assert second_opinion(Hasher("pdq")) == Hasher("phash", 16)


def test_pdq_has_one_size() -> None:
    with pytest.raises(ValueError, match="pdq is always 16"):
        Hasher("pdq", 8)


def test_dominant_share_tells_text_and_flat_frames_from_photos(tmp_path: Path) -> None:
    """The low-detail measure: at least LOW_DETAIL_DOMINANT of the pixels in one tone for
    every text screenshot, document and flat frame, under it for the test photos (the deep
    sky of `hubble` included)."""
    flat = photos.flat_images(tmp_path)
    for name, path in flat.items():
        if not name.startswith("gradient"):  # a ramp has no one tone: PDQ's quality rates it
            with Image.open(path) as im:
                assert dominant_share(im) >= LOW_DETAIL_DOMINANT, name
    for name in photos.PHOTOS:
        with Image.open(photos.photo(name)) as im:
            assert dominant_share(im) < LOW_DETAIL_DOMINANT, name
