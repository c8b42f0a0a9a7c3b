"""Local features of a small image, and the geometric check that one frame is a crop of another.

A crop shares no perceptual hash with its original (the frame changed), but it shares local
features: corners and blobs that look alike in both and sit where one similarity transform
(scale, rotation, shift) puts them. `extract` computes ORB keypoints (OpenCV) on the image
reduced to a `SIDE`-px long side, in the hasher worker (never in the daemon); `verify` matches
two photos' descriptors and fits a similarity with RANSAC (``cv2.estimateAffinePartial2D``);
the pair is a crop when enough matches agree with the fit and one frame, mapped through it,
lies inside the other.

`words` are what the candidate index (`index.CropIndex`) files a photo under: each
descriptor's bits at `WORD_BITS` fixed positions, a locality-sensitive hash (bit sampling): two
descriptors of the same corner differ in a few of their 256 bits, so they often share a word,
while two unrelated ones share it with probability 2**-WORD_BITS. No vocabulary to train or
ship: the same bits in every process and every version that keeps `FEATURES_KEY`.
"""

from __future__ import annotations

import functools
import math
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Literal, NamedTuple

import numpy as np
import numpy.typing as npt

from dedupd.filestat import LocalFeatures

if TYPE_CHECKING:
    from PIL import Image

__all__ = [
    "FEATURES_KEY",
    "KEYPOINTS",
    "MIN_INLIERS",
    "PATCH_SIDE",
    "SIDE",
    "VOCABULARY",
    "WORD_BITS",
    "Agreement",
    "CropFit",
    "Features",
    "LocalFeatures",
    "agreeing_words",
    "agreement",
    "extract",
    "patch_size",
    "verify",
    "words_of",
]

SIDE = 512  # long side, in px, of the image the keypoints are found on
# Long side, in px, of the patch kept beside the keypoints: the picture itself, small, for the
# photometric check (`_alike`). 64 px keeps a crop of 20% of a frame ~29 px across in its
# original's patch, enough to tell its content; ~4 KB per photo in SQLite.
PATCH_SIDE = 64
KEYPOINTS = 300  # at most; a flat image has fewer
WORD_BITS = 16
VOCABULARY = 1 << WORD_BITS
# Descriptor bit positions sampled for a word: spread over the 256 bits (ORB's tests are
# ordered by decreasing variance in pairs, so every 16th bit takes a varied one of each run).
_WORD_POSITIONS = np.arange(0, 256, 256 // WORD_BITS)
# FAST corner thresholds (OpenCV's default is 20). ORB keeps the strongest KEYPOINTS corners
# (by FAST score, then Harris), so on a photo with texture enough a lower threshold only finds
# weak corners it then drops, at twice the cost: 6.4 ms CPU per 500x375 photo at 5, 3.5 ms at
# 20 (3.5 and 6.4 ms on a 12 MP JPEG's draft decode; interleaved, one CPU). A smooth photo (a
# retina scan, a blurred or motion-blurred shot) gets few corners at 20 (13 to 110 in the crop
# bench's retina and clock_motion, where crops were then lost: 70-95% kept fell from 99.4% to
# 91.9% found), so when fewer than _RETRY_BELOW are found, detection runs again at
# _FAST_SMOOTH: 90 of the crop bench's 756 files, which then finds the crops 5 alone found.
_FAST = 20
_FAST_SMOOTH = 5
_RETRY_BELOW = KEYPOINTS // 2
# What was computed, so that stored rows of another configuration are never mixed with these:
# the features' kind (and the key of the crop matches found with them).
FEATURES_KEY = f"orb:{KEYPOINTS}@{SIDE}/w{WORD_BITS}/fast{_FAST}-{_FAST_SMOOTH}/p{PATCH_SIDE}"

# Geometric verification (calibrated by the crop section of bench/accuracy.py): Lowe's ratio
# test, then a RANSAC similarity whose inliers are within _REPROJECTION px of the fit (at
# SIDE px). Distinct photos peaked at 17 inliers in the probe and at 21 in ours (two
# quarters of one grass texture); MIN_INLIERS leaves room.
_RATIO = 0.8
# Images with a shorter side (in px, once reduced) get no keypoints: ORB's 31-px patches and
# its pyramid do not fit, and no crop of a photo is that small.
_MIN_SIDE = 64
_REPROJECTION = 4.0
MIN_INLIERS = 24
MIN_INLIER_RATIO = 0.25  # of the ratio-test matches
# A crop's frame mapped into its original may stick out by this fraction of the original's
# side (keypoints near the border fit a little loosely); more and the two frames only overlap.
_INSIDE = 0.04
MAX_KEPT = 0.93  # a "crop" keeping more of the frame is a near duplicate or a burst neighbour
# The photometric check (`_alike`): the crop's patch, warped through the fit onto its
# original's patch, must look like what is there (zero-mean normalised cross-correlation),
# over the whole footprint and in most of its textured cells. Keypoints alone are fooled by
# two pictures that share one region (a collage, a photo pasted into another): the fit then
# aligns that region only, and the rest of the footprint shows something else.
# Calibrated on the crops of bench/crop_accuracy.py against the 197 false crop links the check
# did not yet stop among bench/small.py's 3,000 collages of 5 photos: 410 of the 413 crops
# the keypoints verified pass, 1 of the 197 links (two collages of the same two pictures).
# Held out, the crop bench's collage family: 0 of 21 pairs pass (12 on keypoints alone).
# Levels are compared, not edges: at 64 px a resized crop keeps its tones, not its detail.
MIN_CORRELATION = 0.8
MIN_CELL_CORRELATION = 0.6
MIN_ALIKE_CELLS = 0.75  # of the footprint's textured cells
_CELLS = 3  # a 3x3 grid over the footprint's bounding box
_FLAT_CELL = 4.0  # std of grey levels below which a cell is flat: it tells nothing
MIN_KEPT = 0.05
_MAX_SCALE = 8.0  # of the fitted transform, either way: farther is no photo anyone cropped
_MAX_ANGLE = 10.0  # degrees: editors crop upright; a large turn is some other relation
# agreeing_words: shared words tried (pairs of them: _AGREE_AT_MOST**2 / 2 similarities; a
# crop pair sharing more has agreeing ones among any 64, 128 changed nothing in the crop
# bench), and the least distance in px between two keypoints that propose a similarity (closer,
# a pixel of noise turns or scales it a lot).
_AGREE_AT_MOST = 64
_AGREE_SPAN = 8.0
# How far beyond the other frame's edges the agreeing words' similarity may put a crop's
# corners: the fit of a few words is rougher than RANSAC's over all matches, so more than
# `verify`'s _INSIDE.
_HINT_INSIDE = 0.12


Points = npt.NDArray[np.float32]
Descriptors = npt.NDArray[np.uint8]
Words = npt.NDArray[np.uint16]  # WORD_BITS <= 16
Patch = npt.NDArray[np.uint8]


def patch_size(width: int, height: int) -> tuple[int, int]:
    """(width, height) of the patch of an image of `width` x `height` (the reduced image)."""
    scale = min(1.0, PATCH_SIDE / max(width, height, 1))
    return max(1, round(width * scale)), max(1, round(height * scale))


@dataclass(frozen=True, slots=True)
class Features:
    """ORB keypoints of one image reduced to `SIDE` px: `points` (N, 2) float32 x, y in the
    reduced image of `width` x `height`; `descriptors` (N, 32) uint8; `patch`: that image
    box-reduced to `patch_size(width, height)` (rows, uint8)."""

    width: int
    height: int
    points: Points
    descriptors: Descriptors
    patch: Patch
    # (the distinct words, the first keypoint of each): what `agreement` compares, computed
    # once per photo rather than once per pair it is in
    _first_of_words: tuple[Words, npt.NDArray[np.intp]] = field(
        init=False, repr=False, compare=False
    )

    def __post_init__(self) -> None:
        words, first = np.unique(_keypoint_words(self.descriptors), return_index=True)
        object.__setattr__(self, "_first_of_words", (words, first))

    def __len__(self) -> int:
        return len(self.points)

    @property
    def words(self) -> Words:
        return self._first_of_words[0]

    def to_local(self) -> LocalFeatures:
        """As the worker sends and the store keeps them: float32 points, uint8 descriptors,
        uint16 words."""
        return LocalFeatures(
            FEATURES_KEY,
            self.width,
            self.height,
            np.ascontiguousarray(self.points, np.float32).tobytes(),
            np.ascontiguousarray(self.descriptors, np.uint8).tobytes(),
            self.words.astype("<u2").tobytes(),
            np.ascontiguousarray(self.patch, np.uint8).tobytes(),
        )

    @classmethod
    def from_local(cls, stored: LocalFeatures) -> Features:
        """Back from `to_local`. Raises ValueError for rows of another kind or shape."""
        if stored.kind != FEATURES_KEY:
            raise ValueError(f"features of kind {stored.kind!r}, expected {FEATURES_KEY!r}")
        p = np.frombuffer(stored.points, np.float32).reshape(-1, 2)
        d = np.frombuffer(stored.descriptors, np.uint8).reshape(-1, 32)
        if len(p) != len(d):
            raise ValueError(f"{len(p)} keypoints but {len(d)} descriptors")
        pw, ph = patch_size(stored.width, stored.height)
        if len(stored.patch) != pw * ph:
            raise ValueError(f"a patch of {len(stored.patch)} bytes, expected {pw}x{ph}")
        patch = np.frombuffer(stored.patch, np.uint8).reshape(ph, pw)
        return cls(stored.width, stored.height, p, d, patch)


def words_of(descriptors: Descriptors) -> Words:
    """The words a photo is filed under: each descriptor's `WORD_BITS` sampled bits, unique."""
    words: Words = np.unique(_keypoint_words(descriptors))
    return words


def _keypoint_words(descriptors: Descriptors) -> Words:
    """Each descriptor's word, in keypoint order."""
    if not len(descriptors):
        return np.empty(0, np.uint16)
    d = np.asarray(descriptors, np.uint8)
    # bit p of a descriptor as np.unpackbits numbers them: byte p // 8, from its high bit
    bits = (d[:, _WORD_POSITIONS // 8] >> (7 - _WORD_POSITIONS % 8).astype(np.uint8)) & 1
    words: Words = (
        np.ascontiguousarray(np.packbits(bits, axis=1)).view(">u2")[:, 0].astype(np.uint16)
    )
    return words


def extract(image: Image.Image) -> Features:
    """ORB keypoints of `image` (any mode, any size) reduced to `SIDE` px on its long side;
    none for an image less than `_MIN_SIDE` px on its short side."""
    import cv2
    from PIL import Image

    gray = image.convert("L")
    scale = SIDE / max(gray.size)
    if scale < 1:
        size = (max(1, round(gray.width * scale)), max(1, round(gray.height * scale)))
        gray = gray.resize(size, Image.Resampling.BILINEAR, reducing_gap=2.0)
    patch = np.asarray(gray.resize(patch_size(*gray.size), Image.Resampling.BOX), np.uint8)
    none = Features(gray.width, gray.height, np.empty((0, 2), np.float32), _no_descriptors(), patch)
    if min(gray.size) < _MIN_SIDE:  # ORB's pyramid and patches need room (OpenCV asserts)
        return none
    pixels = np.asarray(gray, np.uint8)
    keypoints, descriptors = cv2.ORB.create(
        nfeatures=KEYPOINTS, fastThreshold=_FAST
    ).detectAndCompute(pixels, None)
    if len(keypoints) < _RETRY_BELOW:  # a smooth photo: take its weaker corners too
        keypoints, descriptors = cv2.ORB.create(
            nfeatures=KEYPOINTS, fastThreshold=_FAST_SMOOTH
        ).detectAndCompute(pixels, None)
    if descriptors is None or not keypoints:
        return none
    # the keypoints' float32 x, y read in C++, not one Python tuple each (0.09 ms a photo)
    points = np.asarray(cv2.KeyPoint.convert(keypoints), np.float32).reshape(-1, 2)
    return Features(
        gray.width, gray.height, points, np.ascontiguousarray(descriptors, np.uint8), patch
    )


def _no_descriptors() -> Descriptors:
    return np.empty((0, 32), np.uint8)


Cropped = Literal["first", "second"]


@dataclass(frozen=True, slots=True)
class CropFit:
    """One frame of a verified pair lies inside the other: `cropped` says which of the two
    given to `verify` is the crop. `kept` is the fraction of the original's area the crop
    shows; the similarity maps the crop's reduced image into the original's (x' = scale *
    R(angle) x + (tx, ty), in px of the original's reduced image); `box` is the crop's
    frame in the original as fractions of its sides (left, top, right, bottom)."""

    cropped: Cropped
    kept: float
    inliers: int
    matches: int
    scale: float
    angle: float  # degrees
    tx: float
    ty: float
    box: tuple[float, float, float, float]

    @property
    def ratio(self) -> float:
        return self.inliers / self.matches if self.matches else 0.0

    def detail(self, crop_id: int, original_id: int) -> dict[str, Any]:
        """What a match row keeps (JSON): which file is the crop, the kept area and the fit."""
        return {
            "crop": crop_id,
            "original": original_id,
            "kept": round(self.kept, 4),
            "inliers": self.inliers,
            "matches": self.matches,
            "scale": round(self.scale, 4),
            "angle": round(self.angle, 2),
            "tx": round(self.tx, 2),
            "ty": round(self.ty, 2),
            "box": [round(v, 4) for v in self.box],
        }


def _matches(a: Features, b: Features) -> tuple[Points, Points]:
    """Matched points (a's, b's) that pass Lowe's ratio test, each of b's used once (by its
    closest of a's, the first of equals), in the order of the first of a's matched to each:
    the order RANSAC samples them in, kept from the DMatch loop this replaced so that fits are
    unchanged. ``cv2.batchDistance`` gives the two nearest as arrays: the same distances as
    BFMatcher.knnMatch, with no DMatch objects and 5% less CPU per `verify` (0.71 to 0.68 ms,
    interleaved over 1,025 pairs of the crop bench)."""
    import cv2

    none = np.empty((0, 2), np.float32)
    if len(a) < 2 or len(b) < 2:
        return none, none
    dist, nearest = cv2.batchDistance(
        a.descriptors, b.descriptors, -1, normType=cv2.NORM_HAMMING, K=2
    )
    passed = np.flatnonzero(dist[:, 0] < _RATIO * dist[:, 1])
    if not len(passed):
        return none, none
    train = nearest[passed, 0]
    order = np.lexsort((passed, dist[passed, 0], train))  # by b's, then distance, then a's
    ordered = train[order]
    best = order[np.flatnonzero(np.r_[True, ordered[1:] != ordered[:-1]])]  # one per b's
    _, first_seen = np.unique(train, return_index=True)  # both ascending in b's index
    best = best[np.argsort(first_seen, kind="stable")]
    return a.points[passed[best]], b.points[train[best]]


class Agreement(NamedTuple):
    """What the shared words of two photos say before any descriptor is matched: `agreeing`,
    how many sit where the best upright similarity puts them; `nests`, whether that
    similarity puts one frame inside the other (within _HINT_INSIDE of its sides), as a
    crop's must."""

    agreeing: int
    nests: bool


def agreeing_words(a: Features, b: Features) -> int:
    """`agreement(a, b).agreeing`."""
    return agreement(a, b).agreeing


def agreement(a: Features, b: Features) -> Agreement:
    """How many of the words `a` and `b` share have keypoints that one upright similarity maps
    onto each other (a's onto b's, within _REPROJECTION px, with a scale and a turn `verify`
    accepts), and whether that similarity nests the frames: the crop stage's cheap check
    before `verify` (``engine.CROP_MIN_AGREEING``).

    A crop pair's shared words are partly the same corners, which sit where the crop's fit
    puts them; an unrelated pair's are chance coincidences scattered over both frames. Every
    two of the first _AGREE_AT_MOST shared words (by value) propose a similarity; the best is
    kept. Two pictures that share a region (collages, a photo pasted into another) agree too,
    but their frames seldom nest under it. No descriptor matching: about a third of `verify`'s
    CPU time."""
    (wa, ia), (wb, ib) = a._first_of_words, b._first_of_words
    if not len(wa) or not len(wb):
        return Agreement(0, False)
    # The shared words, ascending (both are sorted and unique): intersect1d's indices at a
    # third of its cost, which sorts the two together again.
    at = np.minimum(np.searchsorted(wb, wa), len(wb) - 1)
    shared = wb[at] == wa
    xa, xb = np.flatnonzero(shared), at[shared]
    n = min(len(xa), _AGREE_AT_MOST)
    if n < 2:
        return Agreement(n, False)
    pa, pb = a.points[ia[xa[:n]]].astype(np.float64), b.points[ib[xb[:n]]].astype(np.float64)
    za, zb = pa[:, 0] + 1j * pa[:, 1], pb[:, 0] + 1j * pb[:, 1]  # points as complex numbers
    i, j = _pairs(n)
    da, db = za[j] - za[i], zb[j] - zb[i]
    spread = np.abs(da) >= _AGREE_SPAN
    i, da, db = i[spread], da[spread], db[spread]
    factor = db / da  # the similarity's scale and turn, as one complex factor
    scale, turn = np.abs(factor), np.degrees(np.abs(np.angle(factor)))
    upright = (scale >= 1 / _MAX_SCALE) & (scale <= _MAX_SCALE) & (turn <= _MAX_ANGLE)
    if not upright.any():
        return Agreement(1, False)
    factor, i = factor[upright], i[upright]
    shift = zb[i] - factor * za[i]
    mapped = factor[:, None] * za[None, :] + shift[:, None]
    counts = (np.abs(mapped - zb[None, :]) <= _REPROJECTION).sum(axis=1)
    best = int(counts.argmax())
    f, t = complex(factor[best]), complex(shift[best])
    corners_a = np.array([0, a.width, a.width + 1j * a.height, 1j * a.height])
    corners_b = np.array([0, b.width, b.width + 1j * b.height, 1j * b.height])
    # Not also the photometric check on this rough fit: tried with loose bounds, it spared a
    # third of the remaining verifications but lost a crop of the crop bench's 50-70% bucket.
    nests = _inside_z(f * corners_a + t, b.width, b.height, _HINT_INSIDE) or _inside_z(
        (corners_b - t) / f, a.width, a.height, _HINT_INSIDE
    )
    return Agreement(int(counts[best]), nests)


@functools.cache
def _pairs(n: int) -> tuple[npt.NDArray[np.intp], npt.NDArray[np.intp]]:
    """Every pair i < j of n items (n <= _AGREE_AT_MOST: a few KB each, kept)."""
    i, j = np.triu_indices(n, 1)
    return i, j


def _inside(
    corners: npt.NDArray[np.float64], width: int, height: int, tolerance: float = _INSIDE
) -> bool:
    """Whether `corners` lie inside a `width` x `height` frame, `tolerance` of a side allowed
    beyond each edge."""
    tol_x, tol_y = tolerance * width, tolerance * height
    x, y = corners[:, 0], corners[:, 1]
    return bool(
        (x >= -tol_x).all()
        and (x <= width + tol_x).all()
        and (y >= -tol_y).all()
        and (y <= height + tol_y).all()
    )


def _inside_z(z: npt.NDArray[np.complex128], width: int, height: int, tolerance: float) -> bool:
    """`_inside` of points given as complex numbers x + iy, in one reduction."""
    tol_x, tol_y = tolerance * width, tolerance * height
    x, y = z.real, z.imag
    return bool(
        ((x >= -tol_x) & (x <= width + tol_x) & (y >= -tol_y) & (y <= height + tol_y)).all()
    )


def _frame(f: Features) -> npt.NDArray[np.float64]:
    w, h = f.width, f.height
    return np.array([[0, 0], [w, 0], [w, h], [0, h]], np.float64)


def _as_crop(
    matrix: npt.NDArray[np.float64], crop: Features, original: Features
) -> tuple[float, tuple[float, float, float, float]] | None:
    """(kept area, box) when `crop`'s frame mapped by `matrix` lies inside `original`'s."""
    corners = _frame(crop) @ matrix[:, :2].T + matrix[:, 2]
    if not _inside(corners, original.width, original.height):
        return None
    w, h = original.width, original.height
    clipped = np.clip(corners, 0, [w, h])
    x, y = clipped[:, 0], clipped[:, 1]
    area = 0.5 * abs(float(np.dot(x, np.roll(y, -1)) - np.dot(y, np.roll(x, -1))))
    box = (float(x.min()) / w, float(y.min()) / h, float(x.max()) / w, float(y.max()) / h)
    return area / (w * h), box


def _alike(matrix: npt.NDArray[np.float64], crop: Features, original: Features) -> bool:
    """Whether `crop`'s patch, mapped by `matrix` (crop px -> original px, in the reduced
    images) onto `original`'s patch, looks like what lies there: correlated over the whole
    footprint, and in at least MIN_ALIKE_CELLS of its textured cells. A flat footprint (no
    textured cell) passes on the keypoints alone."""
    import cv2

    ph, pw = original.patch.shape
    to_patch = np.diag([pw / original.width, ph / original.height])
    from_patch = np.diag([crop.width / crop.patch.shape[1], crop.height / crop.patch.shape[0]])
    # crop patch px -> crop px -> original px -> original patch px
    m = np.hstack([to_patch @ matrix[:, :2] @ from_patch, (to_patch @ matrix[:, 2])[:, None]])
    source = crop.patch.astype(np.float32)
    shrink = 1.0 / max(math.hypot(m[0, 0], m[1, 0]), 1e-6)
    if shrink > 1.5:  # the crop's patch is finer than its footprint: blur before sampling
        source = np.asarray(cv2.GaussianBlur(source, (0, 0), 0.5 * shrink), np.float32)
    warped = np.asarray(cv2.warpAffine(source, m, (pw, ph), flags=cv2.INTER_LINEAR), np.float32)
    footprint = cv2.warpAffine(
        np.ones(crop.patch.shape, np.uint8), m, (pw, ph), flags=cv2.INTER_NEAREST
    )
    # eroded: no pixel blended with the black outside
    inside = np.asarray(cv2.erode(footprint, np.ones((3, 3), np.uint8)), bool)
    target = original.patch.astype(np.float32)
    rows, cols = np.nonzero(inside)
    if len(rows) < 16:
        return True  # a footprint of a few pixels: nothing to compare (kept is tiny anyway)
    if _correlation(warped[inside], target[inside]) < MIN_CORRELATION:
        return False
    top, left = rows.min(), cols.min()
    height, width = rows.max() - top + 1, cols.max() - left + 1
    textured = alike = 0
    for i in range(_CELLS):
        for j in range(_CELLS):
            in_cell = np.zeros(inside.shape, bool)
            in_cell[
                top + i * height // _CELLS : top + (i + 1) * height // _CELLS,
                left + j * width // _CELLS : left + (j + 1) * width // _CELLS,
            ] = True
            in_cell &= inside
            if in_cell.sum() < 6 or target[in_cell].std() < _FLAT_CELL:
                continue
            textured += 1
            alike += _correlation(warped[in_cell], target[in_cell]) >= MIN_CELL_CORRELATION
    return textured == 0 or alike >= MIN_ALIKE_CELLS * textured


def _correlation(x: npt.NDArray[np.float32], y: npt.NDArray[np.float32]) -> float:
    """Zero-mean normalised cross-correlation of two equal-length samples of grey levels:
    1.0 when both are flat (one flat tone matches another), 0.0 when only one is."""
    x = x - x.mean()
    y = y - y.mean()
    flat_x, flat_y = x.std() < _FLAT_CELL / 4, y.std() < _FLAT_CELL / 4
    if flat_x or flat_y:
        return 1.0 if flat_x and flat_y else 0.0
    return float((x * y).sum()) / math.sqrt(float((x * x).sum()) * float((y * y).sum()))


def verify(a: Features, b: Features) -> CropFit | None:
    """The crop relation between `a` and `b` if there is one: enough descriptor matches agree
    with one similarity transform (RANSAC), one frame mapped through it lies inside the other,
    and keeps between MIN_KEPT and MAX_KEPT of its area. None otherwise: unrelated photos, a
    near-identical pair (full frame: a near match or a burst, never a crop), or two shots
    that only overlap (burst neighbours panned)."""
    import cv2

    pa, pb = _matches(a, b)
    if len(pa) < MIN_INLIERS:
        return None
    matrix, mask = cv2.estimateAffinePartial2D(
        pa,
        pb,
        method=cv2.RANSAC,
        ransacReprojThreshold=_REPROJECTION,
        maxIters=2000,
        confidence=0.995,
        refineIters=10,
    )
    if matrix is None or mask is None:
        return None
    inliers = int(mask.sum())
    if inliers < MIN_INLIERS or inliers / len(pa) < MIN_INLIER_RATIO:
        return None
    m = np.asarray(matrix, np.float64)  # maps a's px to b's px
    scale = math.hypot(m[0, 0], m[1, 0])
    angle = math.degrees(math.atan2(m[1, 0], m[0, 0]))
    if not (1 / _MAX_SCALE <= scale <= _MAX_SCALE) or abs(angle) > _MAX_ANGLE:
        return None
    inverse = np.asarray(cv2.invertAffineTransform(m), np.float64)
    for cropped, matrix_used, crop, original in (
        ("first", m, a, b),
        ("second", inverse, b, a),
    ):
        found = _as_crop(matrix_used, crop, original)
        if found is None:
            continue
        kept, box = found
        if not MIN_KEPT <= kept <= MAX_KEPT or not _alike(matrix_used, crop, original):
            return None
        s = math.hypot(matrix_used[0, 0], matrix_used[1, 0])
        t = math.degrees(math.atan2(matrix_used[1, 0], matrix_used[0, 0]))
        side: Cropped = "first" if cropped == "first" else "second"
        return CropFit(
            side,
            kept,
            inliers,
            len(pa),
            s,
            t,
            float(matrix_used[0, 2]),
            float(matrix_used[1, 2]),
            box,
        )
    return None
