"""Whether two photos show the same picture, pixel by pixel: the check a near match passes
before it moves a file.

Two hashes agreeing say two pictures look alike at 16x16 or 64x64 samples; they cannot tell
two chat screenshots with the same bubbles over the same wallpaper apart (4 bits of 256 under
pHash, 6 under PDQ), nor two letters on one letterhead. Moved to the quarantine and purged a
month later, one of them would be lost. So before a near match moves a file, a hasher worker
decodes both files again (never the daemon: `pool`), at up to `SIDE` px and at the smaller
one's own size, turns the kept one as the match says, aligns the two (ORB keypoints and a
RANSAC similarity, OpenCV, as for crops; frame onto frame when too few keypoints agree), maps
one's grey tones onto the other's (a brightness, contrast or gamma change is the same picture),
and counts, in every `CELL` x `CELL` px cell, the pixels that differ by more than `STRONG` grey
levels: one cell with more than `MAX_CELL_SHARE` percent of them (a word, a digit, a line of a
letter, a watermark, a face that moved) and the pair is only reported.

Calibrated on bench/likeness.py. Every cell is compared, so an edited copy (text or a sticker
added, a watermark) is a different picture and never moved: what moves is a copy with nothing
of its own. What moves must also be wholly shown by what is kept (`MIN_COVER`): a crop may go
when its larger frame stays, never the other way round.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from dedupd.filestat import Counterpart, FileStat, Likeness

if TYPE_CHECKING:
    import numpy as np
    import numpy.typing as npt
    from PIL import Image

    Grey = npt.NDArray[np.float32]

__all__ = [
    "CELL",
    "MAX_CELL_SHARE",
    "MIN_COVER",
    "SIDE",
    "STRONG",
    "compare",
    "compare_files",
    "refusal",
]

SIDE = 2048  # long side, in px, of the larger image compared; the smaller one's own if less
CELL = 32  # px, at the compared size
# A pixel differs when the two, blurred by _BLUR px and tone-mapped, are more than STRONG grey
# levels apart; a cell differs when more than MAX_CELL_SHARE percent of its pixels do.
# Calibrated on bench/likeness.py (673 copies, 332 different pictures; see its results):
# re-encodes, resizes down to 25%, format changes, EXIF and true turns, brightness and
# contrast within 20% (highlights clipped) and phone screenshots of a photo measure 0% in
# every cell; chat screenshots that differ by one digit at full size 2.4% and more, a
# watermark 2.5% and more. A cell's mean difference (tried first) let 42 of the 332 move.
STRONG = 32.0
MAX_CELL_SHARE = 1.0
# The share of the moving file's frame the kept one must show (its borders, resampled, lose a
# pixel or two): the rest would be lost with it.
MIN_COVER = 0.98
_BLUR = 1.0  # px: what a resampler's phase or a JPEG block edge moves is not content
_KEYPOINTS = 1500
_RATIO = 0.8  # Lowe's ratio test
_MIN_INLIERS = 12  # fewer keypoints agreeing: the frames are laid onto each other instead
_REPROJECTION = 3.0
_MAX_TURN = 2.0  # degrees: the match's rotation is applied first; what is left is a resample
_MAX_SCALE = 1.25  # of the fit, either way, once both images have one area


def refusal(likeness: Likeness, *, moving_is_newcomer: bool) -> str | None:
    """Why a near match must not move a file after its pixels were compared, or None when it
    may. `moving_is_newcomer`: which of the two would move."""
    if likeness.error is not None:
        return f"pixels not compared ({likeness.error}): a near match moves nothing unchecked"
    moving, kept = (0, 1) if moving_is_newcomer else (1, 0)
    if likeness.cover[moving] < MIN_COVER:
        return (
            f"the kept photo shows only {likeness.cover[moving]:.0%} of the one that would"
            " move: the rest would be lost"
        )
    if likeness.worst > MAX_CELL_SHARE:
        return (
            f"pixels differ ({likeness.worst:.1f}% of a {CELL} px cell, more than"
            f" {MAX_CELL_SHARE:g}%): a different or edited picture"
        )
    if likeness.sides[kept] * 2 < min(likeness.sides[moving], SIDE):
        return (
            f"the photo kept ({likeness.sides[kept]} px) is less than half as sharp as the one"
            f" that would move ({likeness.sides[moving]} px): its detail cannot be checked"
        )
    return None


def compare_files(
    path: str, counterpart: Counterpart, max_pixels: int, *, expect: FileStat | None = None
) -> Likeness:
    """Decode `path` and `counterpart` (each must still be the version its stat, `expect` and
    `counterpart.stat`, names) and compare them. Never raises for a file: what went wrong is
    the likeness's `error`."""
    from dedupd.errors import ImageError

    try:
        mine, _ = _grey(path, expect, max_pixels, "identity")
        theirs, _ = _grey(counterpart.path, counterpart.stat, max_pixels, counterpart.transform)
    except ImageError as exc:
        return Likeness(float("inf"), error=f"{exc.kind}: {exc.detail}")
    except MemoryError:
        return Likeness(float("inf"), error="out of memory")
    except Exception as exc:  # a decoder bug: this pair stays where it is
        return Likeness(float("inf"), error=f"internal: {type(exc).__name__}: {exc}")
    return compare(mine, theirs)


def _grey(
    path: str, expect: FileStat | None, max_pixels: int, transform: str
) -> tuple[Grey, FileStat]:
    """The picture in `path` as hashing sees it (upright, uniform borders trimmed), turned by
    `transform`, in grey levels at most SIDE px on its long side."""
    import numpy as np
    from PIL import Image

    from dedupd import imaging
    from dedupd.hashers import TRANSFORMS, transform_image

    data, stat = imaging._read(path, max_pixels)
    if expect is not None and stat != expect:
        raise imaging.ChangedWhileReading(path, "the file changed since it was hashed")
    decoded = imaging.open_image(data, path, draft_side=SIDE, max_pixels=max_pixels)
    image: Image.Image = decoded.image
    grey = image if image.mode == "L" else image.convert("L")
    box = imaging.border_box(grey, decoded.width)
    if box is not None:
        grey = grey.crop(box)
    if max(grey.size) > SIDE:
        scale = SIDE / max(grey.size)
        size = (max(1, round(grey.width * scale)), max(1, round(grey.height * scale)))
        grey = grey.resize(size, Image.Resampling.BOX)
    if transform not in TRANSFORMS:
        raise ValueError(f"unknown transform {transform!r}")
    grey = transform_image(grey, transform)
    return np.asarray(grey, np.float32), stat


def compare(a: Grey, b: Grey) -> Likeness:
    """Compare two grey images (`a`: the newcomer, `b`: the counterpart, already turned), at
    the smaller one's size."""
    import cv2
    import numpy as np

    sides = (max(a.shape), max(b.shape))
    if a.size > b.size:
        a = _resized(a, b)
    elif b.size > a.size:
        b = _resized(b, a)
    h, w = a.shape
    matrix = _fit(a, b)
    if matrix is None:  # frame onto frame
        matrix = np.array([[w / b.shape[1], 0, 0], [0, h / b.shape[0], 0]], np.float64)
    warped = np.asarray(cv2.warpAffine(b, matrix, (w, h), flags=cv2.INTER_LINEAR), np.float32)
    shown = cv2.warpAffine(np.ones(b.shape, np.uint8), matrix, (w, h), flags=cv2.INTER_NEAREST)
    back = cv2.warpAffine(
        np.ones(a.shape, np.uint8),
        cv2.invertAffineTransform(matrix),
        (b.shape[1], b.shape[0]),
        flags=cv2.INTER_NEAREST,
    )
    cover = (float(shown.mean()), float(back.mean()))
    # eroded: no pixel blended with the black outside the warped frame
    inside = cv2.erode(shown, np.ones((5, 5), np.uint8)).astype(bool)
    if inside.sum() < 64:
        return Likeness(float("inf"), cover, max(h, w), sides, "the two frames do not overlap")

    # Tones mapped both ways, the better kept per cell: a brightened copy whose highlights
    # clipped maps many of the original's tones onto one, which only one direction can undo.
    def blur(x: Grey) -> Grey:
        return np.asarray(cv2.GaussianBlur(x, (0, 0), _BLUR), np.float32)

    one = np.abs(blur(a) - blur(_tone_mapped(warped, a, inside))) > STRONG
    other = np.abs(blur(_tone_mapped(a, warped, inside)) - blur(warped)) > STRONG
    worst, cells = 0.0, 0
    for top in range(0, max(1, h - CELL // 2), CELL):
        for left in range(0, max(1, w - CELL // 2), CELL):
            cell = (slice(top, top + CELL), slice(left, left + CELL))
            m = inside[cell]
            if m.mean() < 0.5:
                continue
            cells += 1
            share = min(float(one[cell][m].mean()), float(other[cell][m].mean()))
            worst = max(worst, 100 * share)
    if not cells:
        return Likeness(float("inf"), cover, max(h, w), sides, "no cell of the two overlaps")
    return Likeness(worst, cover, max(h, w), sides)


def _resized(big: Grey, small: Grey) -> Grey:
    """`big` reduced to `small`'s area (to its exact size when the shapes agree within 1%)."""
    import cv2
    import numpy as np

    if abs(big.shape[1] / big.shape[0] - small.shape[1] / small.shape[0]) < 0.01:
        size = (small.shape[1], small.shape[0])
    else:
        f = (small.size / big.size) ** 0.5
        size = (max(1, round(big.shape[1] * f)), max(1, round(big.shape[0] * f)))
    return np.asarray(cv2.resize(big, size, interpolation=cv2.INTER_AREA), np.float32)


def _fit(a: Grey, b: Grey) -> npt.NDArray[np.float64] | None:
    """The similarity mapping `b`'s px onto `a`'s that enough keypoints agree on, if upright
    (a small crop or a resample: the match's turn was applied before), else None."""
    import math

    import cv2
    import numpy as np

    orb = cv2.ORB.create(nfeatures=_KEYPOINTS, fastThreshold=10)
    ka, da = orb.detectAndCompute(a.astype(np.uint8), None)
    kb, db = orb.detectAndCompute(b.astype(np.uint8), None)
    if da is None or db is None or len(ka) < _MIN_INLIERS or len(kb) < _MIN_INLIERS:
        return None
    dist, nearest = cv2.batchDistance(db, da, -1, normType=cv2.NORM_HAMMING, K=2)
    good = np.flatnonzero(dist[:, 0] < _RATIO * dist[:, 1])
    if len(good) < _MIN_INLIERS:
        return None
    points_a = np.asarray(cv2.KeyPoint.convert(ka), np.float32).reshape(-1, 2)
    points_b = np.asarray(cv2.KeyPoint.convert(kb), np.float32).reshape(-1, 2)
    pa, pb = points_a[nearest[good, 0]], points_b[good]
    matrix, mask = cv2.estimateAffinePartial2D(
        pb,
        pa,
        method=cv2.RANSAC,
        ransacReprojThreshold=_REPROJECTION,
        maxIters=2000,
        confidence=0.995,
        refineIters=10,
    )
    if matrix is None or mask is None or int(mask.sum()) < _MIN_INLIERS:
        return None
    scale = math.hypot(matrix[0, 0], matrix[1, 0])
    if not 1 / _MAX_SCALE <= scale <= _MAX_SCALE:
        # The two were brought to one area: a resample fits at about 1, a small crop a
        # little over. A fit of many matches onto one point (repeated glyphs) has a scale
        # near 0, and would lay a flat smear over the other picture.
        return None
    if abs(math.degrees(math.atan2(matrix[1, 0], matrix[0, 0]))) > _MAX_TURN:
        return None
    return np.asarray(matrix, np.float64)


def _tone_mapped(source: Grey, target: Grey, inside: npt.NDArray[np.bool_]) -> Grey:
    """`source`'s grey levels mapped onto `target`'s: each level to the mean target level of
    the pixels `inside` at that level (a level no pixel has: between its neighbours')."""
    import numpy as np

    levels = np.clip(np.rint(source), 0, 255).astype(np.intp)
    at = levels[inside]
    counts = np.bincount(at, minlength=256)
    sums = np.bincount(at, weights=target[inside], minlength=256)
    seen = np.flatnonzero(counts)
    curve = np.interp(np.arange(256), seen, sums[seen] / counts[seen])
    return np.asarray(curve[levels], np.float32)
