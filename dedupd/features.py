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

import math
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Literal

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
    "CropFit",
    "Features",
    "LocalFeatures",
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
# What was computed, so that stored rows of another configuration are never mixed with these:
# the features' kind (and the key of the crop matches found with them).
FEATURES_KEY = f"orb:{KEYPOINTS}@{SIDE}/w{WORD_BITS}/p{PATCH_SIDE}"

# Geometric verification (calibrated by the crop section of bench/accuracy.py): Lowe's ratio
# test, then a RANSAC similarity whose inliers are within _REPROJECTION px of the fit (at
# SIDE px). Distinct photos peaked at 17 inliers in the probe and at 21 in ours (two
# quarters of one grass texture); MIN_INLIERS leaves room.
_RATIO = 0.8
# FAST corner threshold (OpenCV default 20): lower, so that smooth photos (a retina scan, a
# blurred shot) still get keypoints; ORB keeps the strongest KEYPOINTS by Harris score anyway.
_FAST = 5
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
# Levels are compared, not edges: at 64 px a resized crop keeps its tones, not its detail.
MIN_CORRELATION = 0.8
MIN_CELL_CORRELATION = 0.6
MIN_ALIKE_CELLS = 0.75  # of the footprint's textured cells
_CELLS = 3  # a 3x3 grid over the footprint's bounding box
_FLAT_CELL = 4.0  # std of grey levels below which a cell is flat: it tells nothing
MIN_KEPT = 0.05
_MAX_SCALE = 8.0  # of the fitted transform, either way: farther is no photo anyone cropped
_MAX_ANGLE = 10.0  # degrees: editors crop upright; a large turn is some other relation


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

    def __len__(self) -> int:
        return len(self.points)

    @property
    def words(self) -> Words:
        return words_of(self.descriptors)

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
    if not len(descriptors):
        return np.empty(0, np.uint16)
    bits = np.unpackbits(np.asarray(descriptors, np.uint8), axis=1)[:, _WORD_POSITIONS]
    words: Words = np.unique(
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
    orb = cv2.ORB.create(nfeatures=KEYPOINTS, fastThreshold=_FAST)
    keypoints, descriptors = orb.detectAndCompute(pixels, None)
    if descriptors is None or not keypoints:
        return none
    points = np.array([k.pt for k in keypoints], np.float32).reshape(-1, 2)
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
    """Matched points (a's, b's) that pass Lowe's ratio test, each of b's used once."""
    import cv2

    if len(a) < 2 or len(b) < 2:
        return np.empty((0, 2), np.float32), np.empty((0, 2), np.float32)
    matcher = cv2.BFMatcher(cv2.NORM_HAMMING)
    best: dict[int, tuple[float, int]] = {}
    for pair in matcher.knnMatch(a.descriptors, b.descriptors, k=2):
        if len(pair) < 2:
            continue
        m, n = pair
        if m.distance < _RATIO * n.distance:
            kept = best.get(m.trainIdx)
            if kept is None or m.distance < kept[0]:
                best[m.trainIdx] = (m.distance, m.queryIdx)
    qi = np.array([q for _, q in best.values()], np.int64)
    ti = np.array(list(best), np.int64)
    return a.points[qi], b.points[ti]


def _inside(corners: npt.NDArray[np.float64], width: int, height: int) -> bool:
    tol_x, tol_y = _INSIDE * width, _INSIDE * height
    x, y = corners[:, 0], corners[:, 1]
    return bool(
        (x >= -tol_x).all()
        and (x <= width + tol_x).all()
        and (y >= -tol_y).all()
        and (y <= height + tol_y).all()
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
            cell = np.zeros(inside.shape, bool)
            cell[
                top + i * height // _CELLS : top + (i + 1) * height // _CELLS,
                left + j * width // _CELLS : left + (j + 1) * width // _CELLS,
            ] = True
            cell &= inside
            if cell.sum() < 6 or target[cell].std() < _FLAT_CELL:
                continue
            textured += 1
            alike += _correlation(warped[cell], target[cell]) >= MIN_CELL_CORRELATION
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
