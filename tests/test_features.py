"""dedupd.features: ORB keypoints of real photos, and the geometric check that one frame is a
crop of the other (never for distinct photos, full frames or burst neighbours)."""

from __future__ import annotations

import io
from collections.abc import Callable

import cv2
import numpy as np
import pytest
from PIL import Image, ImageDraw, ImageFilter

from dedupd import features
from dedupd.engine import CROP_MIN_AGREEING
from dedupd.features import Features, extract, verify
from tests import photos


def _photo(name: str, size: tuple[int, int] = (1600, 1200)) -> Image.Image:
    with Image.open(photos.photo(name)) as im:
        rgb = im.convert("RGB")
    if rgb.height > rgb.width:
        size = (size[1], size[0])
    return rgb.resize(size, Image.Resampling.BICUBIC)


def _jpeg(im: Image.Image, quality: int = 90) -> Image.Image:
    with Image.open(io.BytesIO(photos.jpeg_bytes(im, quality))) as decoded:
        return decoded.convert("RGB")


def _cut(im: Image.Image, box: tuple[float, float, float, float]) -> Image.Image:
    w, h = im.size
    return _jpeg(
        im.crop((round(box[0] * w), round(box[1] * h), round(box[2] * w), round(box[3] * h)))
    )


@pytest.fixture(scope="module")
def originals() -> dict[str, Features]:
    return {name: extract(_jpeg(_photo(name), 92)) for name in photos.PHOTOS}


@pytest.mark.parametrize(
    "box",
    [
        (0.05, 0.05, 0.95, 0.95),  # 81% kept, centred
        (0.0, 0.2, 0.7, 1.0),  # 56%, off-centre
        (0.3, 0.25, 0.85, 0.85),  # 33%, off-centre
        (0.2, 0.0, 0.8, 1.0),  # a square social crop of a 4:3 frame
    ],
)
@pytest.mark.parametrize("name", ["astronaut", "chelsea", "coffee", "rocket"])
def test_a_crop_is_found_with_its_kept_area_and_which_file_is_the_crop(
    originals: dict[str, Features], name: str, box: tuple[float, float, float, float]
) -> None:
    crop = extract(_cut(_photo(name), box))
    kept = (box[2] - box[0]) * (box[3] - box[1])
    fit = verify(crop, originals[name])
    assert fit is not None and fit.cropped == "first"
    assert fit.kept == pytest.approx(kept, abs=0.03)
    assert fit.box == pytest.approx(box, abs=0.02)
    assert fit.inliers >= features.MIN_INLIERS
    back = verify(originals[name], crop)  # the original arriving after its crop
    assert back is not None and back.cropped == "second"
    assert back.kept == pytest.approx(kept, abs=0.03)


def test_a_crop_resized_and_reencoded_is_still_found(originals: dict[str, Features]) -> None:
    cut = _cut(_photo("chelsea"), (0.1, 0.1, 0.8, 0.9))
    small = _jpeg(cut.resize((cut.width // 3, cut.height // 3), Image.Resampling.LANCZOS), 70)
    fit = verify(extract(small), originals["chelsea"])
    assert fit is not None and fit.cropped == "first"
    assert fit.kept == pytest.approx(0.56, abs=0.03)


def test_a_screenshot_showing_the_photo_with_interface_contains_it() -> None:
    """A screenshot of an app showing the photo (toolbars with text and icons around it) is
    no crop of the photo: the photo is a crop of the screenshot."""
    photo = _photo("coffee", (1200, 900))
    shot = Image.new("RGB", (1080, 1920), "white")
    draw = ImageDraw.Draw(shot)
    for i in range(12):  # a feed's interface: rows of text and icons
        draw.text((40, 60 + 40 * i), f"comment {i}: what a nice photo", fill="black")
        draw.ellipse((980, 60 + 40 * i, 1010, 90 + 40 * i), outline="black", width=3)
    shown = photo.resize((1080, 810), Image.Resampling.LANCZOS)
    shot.paste(shown, (0, 600))
    fit = verify(extract(_jpeg(photo)), extract(_jpeg(shot)))
    assert fit is not None and fit.cropped == "first"
    assert fit.kept == pytest.approx(1080 * 810 / (1080 * 1920), abs=0.03)


def test_distinct_photos_and_their_quarters_are_never_crops(originals: dict[str, Features]) -> None:
    """No crop relation among distinct photos, nor between non-overlapping quarters of one
    photo (the same textures and colours, no shared point)."""
    quarters = {
        f"{name}/{i}": extract(_cut(_photo(name), (x, y, x + 0.5, y + 0.5)))
        for name in photos.PHOTOS
        for i, (x, y) in enumerate([(0, 0), (0.5, 0), (0, 0.5), (0.5, 0.5)])
    }
    pool = {**originals, **quarters}

    def related(a: str, b: str) -> bool:  # a quarter is a crop of its own photo
        return a.split("/")[0] == b.split("/")[0] and ("/" not in a or "/" not in b)

    found = [
        (a, b)
        for a in pool
        for b in pool
        if a < b and not related(a, b) and verify(pool[a], pool[b]) is not None
    ]
    assert found == []


@pytest.mark.parametrize("shift", [0.01, 0.05, 0.15])
def test_burst_neighbours_are_no_crop(shift: float) -> None:
    """Two frames of a burst (the camera moved a little): they overlap, neither lies inside
    the other, so they stay near matches or nothing, never crops."""
    im = _photo("astronaut")
    a = extract(_cut(im, (0.0, 0.0, 1 - shift, 1.0)))
    b = extract(_cut(im, (shift, 0.0, 1.0, 1.0)))
    assert verify(a, b) is None
    assert verify(b, a) is None


def test_the_same_frame_is_no_crop(originals: dict[str, Features]) -> None:
    """A re-encode or resize keeps the whole frame: a near match, not a crop."""
    im = _photo("rocket")
    again = extract(_jpeg(im.resize((800, 600), Image.Resampling.LANCZOS), 60))
    assert verify(again, originals["rocket"]) is None


@pytest.mark.parametrize("size", [(1, 1), (1, 500), (500, 1), (63, 800)])
def test_a_tiny_or_thin_image_has_no_keypoints(size: tuple[int, int]) -> None:
    """OpenCV's ORB asserts on images smaller than its patches: they get none, no error."""
    assert len(extract(Image.new("RGB", size, "white"))) == 0


def test_a_flat_image_has_no_keypoints_and_matches_nothing(originals: dict[str, Features]) -> None:
    flat = extract(Image.new("RGB", (800, 600), (90, 120, 200)))
    assert len(flat) == 0 and len(flat.words) == 0
    assert verify(flat, originals["chelsea"]) is None


def test_features_survive_the_store_format(originals: dict[str, Features]) -> None:
    f = originals["astronaut"]
    assert 0 < len(f) <= features.KEYPOINTS
    assert max(f.width, f.height) == features.SIDE
    back = Features.from_local(f.to_local())
    assert np.array_equal(back.points, f.points) and np.array_equal(back.descriptors, f.descriptors)
    words = np.frombuffer(f.to_local().words, "<u2")
    assert np.array_equal(words, np.unique(words)) and np.array_equal(words, f.words)
    with pytest.raises(ValueError, match="kind"):
        Features.from_local(f.to_local()._replace(kind="sift:1"))


def test_words_are_the_sampled_bits_of_each_descriptor() -> None:
    """A descriptor's word is its bits at the sampled positions: equal bits there, equal word,
    whatever the other bits say."""
    rng = np.random.default_rng(1)
    d = rng.integers(0, 256, (2, 32), dtype=np.uint8)
    bits = np.unpackbits(d, axis=1)
    sampled = np.arange(0, 256, 256 // features.WORD_BITS)
    others = np.setdiff1d(np.arange(256), sampled)
    bits[1, sampled] = bits[0, sampled]
    bits[1, others] = 1 - bits[0, others]
    same = np.packbits(bits, axis=1)
    assert len(features.words_of(same)) == 1
    bits[1, sampled[3]] ^= 1
    assert len(features.words_of(np.packbits(bits, axis=1))) == 2


def _collage(*tiles: Image.Image, size: tuple[int, int] = (1600, 800)) -> Image.Image:
    """`tiles` side by side, each resized to its share of `size`."""
    canvas = Image.new("RGB", size)
    w = size[0] // len(tiles)
    for i, tile in enumerate(tiles):
        canvas.paste(tile.resize((w, size[1]), Image.Resampling.BICUBIC), (i * w, 0))
    return _jpeg(canvas)


@pytest.mark.parametrize(
    ("shared", "first_other", "second_other"),
    [
        ("astronaut", "coffee", "chelsea"),
        ("coffee", "rocket", "hubble"),
        ("hubble", "chelsea", "rocket"),
    ],
)
def test_two_collages_sharing_one_picture_are_no_crop(
    monkeypatch: pytest.MonkeyPatch, shared: str, first_other: str, second_other: str
) -> None:
    """Keypoints of one shared tile fit a similarity and put one frame inside the other; the
    rest of the footprint shows another picture, which the patches see."""
    tile = _photo(shared).crop((200, 100, 1400, 1100))
    first = extract(_collage(_photo(first_other), tile, size=(1600, 800)))
    # the same tile, smaller, beside a narrower tile of another photo: mapped through the
    # shared tile, this frame lies inside the first's and keeps 90% of it
    beside = _collage(_photo(second_other), tile, size=(1000, 500))
    second = extract(_jpeg(beside.crop((100, 0, 1000, 500))))
    assert verify(second, first) is None and verify(first, second) is None
    # what the keypoints alone say: without the patches this was taken for a crop
    monkeypatch.setattr(features, "_alike", lambda matrix, crop, original: True)
    fit = verify(second, first)
    assert fit is not None and fit.kept == pytest.approx(0.9, abs=0.02)


def test_a_crop_of_a_collage_is_still_a_crop() -> None:
    chelsea, coffee = _photo("chelsea"), _photo("coffee")
    whole = _collage(coffee, chelsea)
    w, h = whole.size
    fit = verify(extract(_jpeg(whole.crop((w // 4, 0, w, h)))), extract(whole))
    assert fit is not None and fit.cropped == "first" and fit.kept == pytest.approx(0.75, abs=0.03)


def test_the_patch_is_the_reduced_picture_and_survives_the_store_format(
    originals: dict[str, Features],
) -> None:
    f = originals["coffee"]
    assert f.patch.shape == (48, 64) and f.patch.dtype == np.uint8
    assert features.patch_size(f.width, f.height) == (64, 48)
    assert 50 < float(f.patch.mean()) < 200 and float(f.patch.std()) > 20  # a picture, not blank
    back = Features.from_local(f.to_local())
    assert np.array_equal(back.patch, f.patch)
    with pytest.raises(ValueError, match="patch"):
        Features.from_local(f.to_local()._replace(patch=b"\0" * 10))


def _fundus(size: int = 600) -> Image.Image:
    """A retina-like image: a smooth orange disc with a few dark vessels and a bright optic
    disc, softened as a fundus camera's image is: few strong corners."""
    rng = np.random.default_rng(0)
    y, x = np.mgrid[0:size, 0:size]
    r = np.hypot(x - size / 2, y - size / 2) / (size * 0.45)
    base = np.clip(1 - r**2, 0, 1)
    rgb = np.stack([200 * base + 20, 90 * base + 10, 40 * base + 5], -1) * (r < 1)[..., None]
    im = Image.fromarray(rgb.astype(np.uint8))
    draw = ImageDraw.Draw(im)
    for _ in range(14):  # vessels: random walks from the optic disc
        px, py, angle = size * 0.6, size * 0.5, rng.uniform(0, 2 * np.pi)
        walk = []
        for _ in range(40):
            angle += rng.normal(0, 0.25)
            px, py = px + 8 * np.cos(angle), py + 8 * np.sin(angle)
            walk.append((px, py))
        draw.line(walk, fill=(120, 30, 15), width=int(rng.integers(2, 6)))
    draw.ellipse((size * 0.55, size * 0.45, size * 0.65, size * 0.55), fill=(240, 200, 120))
    return im.filter(ImageFilter.GaussianBlur(2))


def _blurred() -> Image.Image:
    return _photo("chelsea", (500, 375)).filter(ImageFilter.GaussianBlur(4))


@pytest.mark.parametrize("smooth", [_fundus, _blurred], ids=["retina-like", "blurred"])
def test_a_smooth_photo_still_gets_keypoints(smooth: Callable[[], Image.Image]) -> None:
    """ORB's default FAST threshold finds few corners on a smooth photo (the retry at a lower
    one is what gives it keypoints), and a crop of it is still found."""
    im = smooth()
    gray = np.asarray(im.convert("L"))
    strong = cv2.ORB.create(nfeatures=features.KEYPOINTS, fastThreshold=features._FAST)
    assert len(strong.detect(gray, None)) < features.KEYPOINTS // 2  # smooth indeed
    found = extract(im)
    assert len(found) >= features.KEYPOINTS // 2
    w, h = im.size
    crop = extract(im.crop((w // 5, h // 5, w - w // 10, h - h // 10)))  # keeps 49%
    fit = verify(crop, found)
    assert fit is not None and fit.cropped == "first"
    assert fit.kept == pytest.approx(0.49, abs=0.03)


def _knn_matches(a: Features, b: Features) -> tuple[np.ndarray, np.ndarray]:
    """The ratio-test matching as first written, with BFMatcher.knnMatch and a DMatch loop."""
    best: dict[int, tuple[float, int]] = {}
    for m, n in cv2.BFMatcher(cv2.NORM_HAMMING).knnMatch(a.descriptors, b.descriptors, k=2):
        if m.distance < features._RATIO * n.distance:
            kept = best.get(m.trainIdx)
            if kept is None or m.distance < kept[0]:
                best[m.trainIdx] = (m.distance, m.queryIdx)
    qi = np.array([q for _, q in best.values()], np.int64)
    return a.points[qi], b.points[np.array(list(best), np.int64)]


@pytest.mark.parametrize("name", ["astronaut", "coffee"])
def test_matching_by_batch_distance_agrees_with_the_knn_match_loop(
    originals: dict[str, Features], name: str
) -> None:
    """Same matches in the same order (RANSAC samples in that order, so fits stay the same),
    for a crop pair and for distinct photos."""
    crop = extract(_cut(_photo(name), (0.1, 0.2, 0.7, 0.9)))
    for other in (originals[name], originals["chelsea"]):
        mine, reference = features._matches(crop, other), _knn_matches(crop, other)
        assert len(mine[0]) > 0
        assert np.array_equal(mine[0], reference[0]) and np.array_equal(mine[1], reference[1])


def _moved(f: Features, scale: float, angle: float, shift: tuple[float, float]) -> Features:
    """`f`'s descriptors at its points mapped by a similarity."""
    t = np.radians(angle)
    m = scale * np.array([[np.cos(t), -np.sin(t)], [np.sin(t), np.cos(t)]])
    points = (f.points @ m.T + np.array(shift)).astype(np.float32)
    return Features(f.width, f.height, points, f.descriptors, f.patch)


def test_words_agree_when_one_upright_similarity_maps_their_keypoints(
    originals: dict[str, Features],
) -> None:
    """Shared words count when a similarity `verify` would accept puts their keypoints onto
    each other; the same words at scattered points, or turned further than an editor crops,
    do not (20 shared words: as many as a candidate that does not verify typically shares)."""
    full = originals["coffee"]
    _, first = np.unique(features._keypoint_words(full.descriptors), return_index=True)
    keep = np.sort(first)[:20]  # 20 keypoints of distinct words
    f = Features(full.width, full.height, full.points[keep], full.descriptors[keep], full.patch)
    assert features.agreeing_words(f, _moved(f, 1.7, 3.0, (-120.0, -40.0))) == 20
    assert features.agreeing_words(f, _moved(f, 0.5, -8.0, (40.0, 90.0))) == 20
    rng = np.random.default_rng(0)
    points = rng.uniform((0, 0), (f.width, f.height), (20, 2)).astype(np.float32)
    scattered = Features(f.width, f.height, points, f.descriptors, f.patch)
    assert features.agreeing_words(f, scattered) < CROP_MIN_AGREEING
    assert features.agreeing_words(f, _moved(f, 1.0, 45.0, (300.0, 0.0))) < CROP_MIN_AGREEING


def test_a_crop_has_more_agreeing_words_with_its_original_than_distinct_photos(
    originals: dict[str, Features],
) -> None:
    """The crop stage verifies a candidate only with CROP_MIN_AGREEING agreeing words: a crop
    and its original have them; distinct photos, which share words by chance, mostly not."""
    chance = []
    for name in ("astronaut", "chelsea", "coffee", "rocket"):
        crop = extract(_cut(_photo(name), (0.3, 0.25, 0.85, 0.85)))  # keeps 33%
        own = features.agreeing_words(crop, originals[name])
        others = [features.agreeing_words(crop, originals[o]) for o in photos.PHOTOS if o != name]
        assert own >= CROP_MIN_AGREEING and own > max(others)
        chance += others
    assert sum(n >= CROP_MIN_AGREEING for n in chance) <= len(chance) // 4


def test_words_agreeing_on_frames_that_only_overlap_do_not_nest(
    originals: dict[str, Features],
) -> None:
    """Two halves of a photo overlapping by a third agree on one similarity, but it puts
    neither frame inside the other: no crop, and `verify` need not be asked. A crop nests."""
    im = _photo("astronaut")
    left, right = _cut(im, (0.0, 0.0, 0.65, 1.0)), _cut(im, (0.35, 0.0, 1.0, 1.0))
    apart = features.agreement(extract(left), extract(right))
    assert apart.agreeing >= CROP_MIN_AGREEING and not apart.nests
    crop = features.agreement(extract(_cut(im, (0.3, 0.25, 0.85, 0.85))), originals["astronaut"])
    assert crop.agreeing >= CROP_MIN_AGREEING and crop.nests
