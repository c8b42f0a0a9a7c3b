"""Whether two photos show the same picture, pixel by pixel: the check a near match passes
before it moves a file.

Two hashes agreeing say two pictures look alike at 16x16 or 64x64 samples; they cannot tell
two chat screenshots with the same bubbles over the same wallpaper apart (4 bits of 256 under
pHash, 6 under PDQ), nor two letters on one letterhead. Moved to the quarantine and purged a
month later, one of them would be lost. So before a near match moves a file, a hasher worker
decodes both files again (never the daemon: `pool`), at up to `SIDE` px and at the smaller
one's own size, turns the kept one as the match says, aligns the two (ORB keypoints and a
RANSAC similarity, OpenCV, as for crops; frame onto frame when too few keypoints agree), maps
one's grey tones onto the other's by a monotone curve, both ways (a brightness, contrast or
gamma change is the same picture), fits their colour planes by one gain and shift, and counts,
in every `CELL` x `CELL` px cell, the pixels that differ either way (by more than
`STRONG_CHROMA` in colour): one cell with more than `MAX_CELL_SHARE` percent of them (a word,
a digit, a line of a letter, a watermark, a stamp, a colour changed, a face that moved) and
the pair is only reported.

How far two grey pixels must differ follows what a copy's own error is there. A re-encode or
a resample errs at edges and in texture, by 30 grey levels and more, and hardly at all in a
flat sky, a foggy field or the paper of a letter; a figure standing in a night photo, a window
lit in fog or a pencil note on a letter differs by 12 to 25 levels, where the picture was
flat. So a pixel must differ by `STRONG` levels where the two pictures have texture, and by
as little as `FAINT` where both are flat (the bound is three times their local deviation); a
grey level the tone map fits worse all over the picture (a brightened colour clipped in one
channel) asks more, and one at black or white (clipped) asks `STRONG`. With `STRONG`
everywhere, 266 of the bench's 270 faint changes moved; with this, 13 (a pencil note on a
letter saved at a quarter of its size is under the check's resolution).

Calibrated on bench/likeness.py. Every cell is compared, so an edited copy (text or a sticker
added, a watermark) is a different picture and never moved: what moves is a copy with nothing
of its own. Nor are its colours its own: the two pictures' colours as a whole must agree
(`_colours`), so a black-and-white, sepia or tinted version is an edit even where every cell
is within its bound (muted colours, a grey photo toned). What moves must also be wholly
shown by what is kept (`MIN_COVER`): a crop may go when its larger frame stays, never the
other way round.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from dedupd.filestat import Counterpart, FileStat, Likeness

if TYPE_CHECKING:
    import numpy as np
    import numpy.typing as npt
    from PIL import Image

    Pixels = npt.NDArray[np.float32]  # one plane (rows x columns), or Y, Cb, Cr planes

__all__ = [
    "CELL",
    "FAINT",
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
# A pixel differs when the two, blurred by _BLUR px and tone-mapped, are more than its bound
# apart: _TEXTURE times the lesser of the two pictures' standard deviations over _TEXTURE_PX
# px around it, within FAINT and STRONG grey levels; at least _LEVEL_SPREAD times the median
# difference of the pixels at its level; STRONG at a clipped level. A cell differs when more
# than MAX_CELL_SHARE percent of its pixels do.
# Calibrated on bench/likeness.py (1,240 copies, 602 different pictures; see its results).
# STRONG alone (32 levels everywhere): every resize, format change, EXIF or true turn and phone
# screenshot of a photo, and 83 of 84 re-encodes, measure under 1% in every cell; brightness
# or contrast edits with clipped highlights up to 20% and more (12 of 168 are refused); chat
# screenshots that differ by one digit at full size 2.4% and more, a watermark 2.5% and more.
# A cell's mean difference (tried first) let 42 of the 332 move; STRONG alone let 19 (all
# half- or quarter-size copies), and 266 of the 270 faint changes.
STRONG = 32.0
STRONG_CHROMA = 20.0  # the same, for each chroma plane (Cb, Cr, 0-255)
# Where both pictures are flat, a pixel differs by more than FAINT grey levels. Measured on
# the bench (its 1,842 pairs' differences recorded once, the rule swept over them): FAINT 8
# let 6 of the 270 faint changes move and 1,209 of 1,240 copies; 10, 11 and 1,213; 12, 20 and
# 1,217. The full bench with 10: 13 faint changes move (all 6 pencil notes at 25%, 3 of 6 at
# 50%, a glow of 17 levels in a dim page and its half-size copy, a figure of 12 levels at half
# size, a glow in fog at half size), 1,209 copies (1,210 with STRONG alone; 11 more move, 12
# fewer: 5 brightness or contrast edits of +20% with a colour clipped in one channel, and 6
# night copies of camera and clock_motion whose frames are laid a few px apart, which 32
# levels hid; see bench/results/likeness.md).
FAINT = 10.0
# Times the lesser of the two pictures' local standard deviations: what a resample or
# re-encode moves at an edge grows with the edge (2 let 9 faint changes move and 1,210 copies,
# 4: 21 and 1,217)
_TEXTURE = 3.0
# px: wider than a JPEG block, so its ringing counts as texture (9 px: 9 faint changes move,
# 1,211 copies)
_TEXTURE_PX = 17
# grey levels from black or white (0 and 255): brightened, a highlight clips, and many of the
# original's levels land on one (without: 1,206 copies move)
_CLIPPED = 2
# Times the median difference of the pixels at a grey level (and the two next to it): a tone
# map's misfit at one level (a colour clipped in one channel) is all over the picture, and a
# change laid on one place is a few of that level's pixels, which leave its median be
# (without: 1,206 copies move, 3: 1,213 as 6)
_LEVEL_SPREAD = 6.0
MAX_CELL_SHARE = 1.0
# Grey levels held by fewer than this share of the pixels compared are left out of the tone
# map (`_tone_mapped`).
_RARE_LEVEL = 0.002
# Beyond the levels kept, the tone map goes on at the ratio of the two pictures' spans (from
# their _SPAN_QUANTILE to their 1 - _SPAN_QUANTILE quantile), within _TONE_SLOPE either way: a
# brightness or contrast change scales the rare levels too (shifted only, the moon's dark
# limb at -20% contrast was over FAINT in 76% of a cell, the retina's highlights at -20%
# brightness in 94%).
_TONE_SLOPE = 2.0
_SPAN_QUANTILE = 0.01
# The share of the moving file's frame the kept one must show (its borders, resampled, lose a
# pixel or two): the rest would be lost with it.
MIN_COVER = 0.98
_BLUR = 1.0  # px: what a resampler's phase or a JPEG block edge moves is not content
# px, for the chroma planes: JPEG and HEIC keep them at half resolution (4:2:0), so a colour
# edge is 2 px softer in a re-encode than in a PNG
_CHROMA_BLUR = 3.0
_CHROMA_GAIN = 2.0  # of `_chroma_fit`, either way; and of the saturation (`_colours`)
# Colours as a whole (`_colours`). Cells compare each colour after one gain and shift are
# fitted, so a black-and-white, sepia or tinted version of a picture whose colours lie within
# STRONG_CHROMA of grey passed as the picture (chelsea's muted fur, a grey photo toned sepia).
# A copy keeps its colours: on 7 of bench/likeness.py's photos, re-encodes, resizes, formats
# and brightness, contrast or saturation edits of 20% scaled the colours about grey by 0.8
# to 1.25 and left a cast of 1.3 chroma levels at most; greyscale scaled them by 0, a 70%
# desaturation by 0.3, sepia and colour filters left casts of 4.5 to 20 levels (and some
# filters on colourful photos one of 1 to 3: they pass, as a brightness edit does). The
# bench's `colour` family (greyscale, sepia, 70% desaturated) is refused in full, its
# saturation changes of ±20% all move.
_COLOURED = 4.0  # chroma levels about grey (RMS): less, and a picture has no saturation to judge
_CAST = 4.0  # chroma levels: the mean shift of colour left once the saturation is fitted
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
    if likeness.colours:
        return (
            f"colours differ as a whole ({likeness.colours}): a black-and-white, toned or"
            " filtered version, an edit"
        )
    if likeness.sides[kept] * 2 < likeness.sides[moving]:
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
        box = counterpart.box
        mine, my_side = _pixels(
            path, expect, max_pixels, "identity", box if counterpart.boxed == "newcomer" else None
        )
        theirs, their_side = _pixels(
            counterpart.path,
            counterpart.stat,
            max_pixels,
            counterpart.transform,
            box if counterpart.boxed == "counterpart" else None,
        )
    except ImageError as exc:
        return Likeness(float("inf"), error=f"{exc.kind}: {exc.detail}")
    except MemoryError:
        return Likeness(float("inf"), error="out of memory")
    except Exception as exc:  # a decoder bug: this pair stays where it is
        return Likeness(float("inf"), error=f"internal: {type(exc).__name__}: {exc}")
    return compare(mine, theirs)._replace(sides=(my_side, their_side))


def _pixels(
    path: str,
    expect: FileStat | None,
    max_pixels: int,
    transform: str,
    part: tuple[float, float, float, float] | None = None,
) -> tuple[Pixels, int]:
    """The picture in `path` as hashing sees it (upright, uniform borders trimmed), turned by
    `transform`, at most SIDE px on its long side: rows x columns x (Y, Cb, Cr), luma first;
    and its long side in px before it was reduced to SIDE."""
    import numpy as np
    from PIL import Image

    from dedupd import imaging
    from dedupd.hashers import TRANSFORMS, transform_image

    data, stat = imaging._read(path, max_pixels)  # raises if it changed while read
    if expect is not None and stat != expect:
        raise imaging.ChangedWhileReading(path, "the file changed since it was hashed")
    decoded = imaging.open_image(data, path, draft_side=SIDE, max_pixels=max_pixels)
    image: Image.Image = decoded.image
    grey = image if image.mode == "L" else image.convert("L")
    box = imaging.border_box(grey, decoded.width)
    if image.mode != "RGB":  # palette, RGBA, 16-bit, grey: as hashing converts them
        image = image.convert("RGB")
    if box is not None:
        image = image.crop(box)
    if part is not None:  # a crop's larger frame: the part it shows, a margin around it
        image = image.crop(_part_box(part, image.size))
    # the file's own long side (the decode may be drafted, or a thumbnail's scale)
    side = round(max(image.size) * decoded.width / max(1, decoded.image.width))
    if max(image.size) > SIDE:
        scale = SIDE / max(image.size)
        size = (max(1, round(image.width * scale)), max(1, round(image.height * scale)))
        image = image.resize(size, Image.Resampling.BOX)
    if transform not in TRANSFORMS:
        raise ValueError(f"unknown transform {transform!r}")
    image = transform_image(image.convert("YCbCr"), transform)
    return np.asarray(image, np.float32), side


def compare(a: Pixels, b: Pixels, *, frame_onto_frame: bool = False) -> Likeness:
    """Compare two pictures (rows x columns x (Y, Cb, Cr); `a`: the newcomer, `b`: the
    counterpart, already turned), at the smaller one's size. `frame_onto_frame`: lay one
    frame onto the other as they are (two frames of a clip), without looking for a fit."""
    import cv2
    import numpy as np

    sides = (max(a.shape[:2]), max(b.shape[:2]))
    if a.shape[0] * a.shape[1] > b.shape[0] * b.shape[1]:
        a = _resized(a, b)
    elif b.shape[0] * b.shape[1] > a.shape[0] * a.shape[1]:
        b = _resized(b, a)
    h, w = a.shape[:2]
    matrix = None if frame_onto_frame else _fit(a[..., 0], b[..., 0])
    if matrix is None:  # frame onto frame
        matrix = np.array([[w / b.shape[1], 0, 0], [0, h / b.shape[0], 0]], np.float64)
    # the frame's edge continued outward: a sub-pixel shift must not blend black into its edge
    # pixels (what lies really outside the other frame is left out by `inside`)
    warped = np.asarray(
        cv2.warpAffine(b, matrix, (w, h), flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_REPLICATE),
        np.float32,
    )
    shown = cv2.warpAffine(np.ones(b.shape[:2], np.uint8), matrix, (w, h), flags=cv2.INTER_NEAREST)
    back = cv2.warpAffine(
        np.ones(a.shape[:2], np.uint8),
        cv2.invertAffineTransform(matrix),
        (b.shape[1], b.shape[0]),
        flags=cv2.INTER_NEAREST,
    )
    cover = (float(shown.mean()), float(back.mean()))
    # eroded: no pixel blended with the black outside the warped frame
    inside = cv2.erode(shown, np.ones((5, 5), np.uint8)).astype(bool)
    if inside.sum() < 64:
        return Likeness(float("inf"), cover, max(h, w), sides, "the two frames do not overlap")

    def blur(x: Pixels) -> Pixels:
        return np.asarray(cv2.GaussianBlur(x, (0, 0), _BLUR), np.float32)

    def chroma_blur(x: Pixels) -> Pixels:
        return np.asarray(cv2.GaussianBlur(x, (0, 0), _CHROMA_BLUR), np.float32)

    # Luma: tones mapped both ways, and a pixel differs if it does either way: a block laid
    # over a flat area in a tone of its own maps away one way (its tone onto the area's),
    # never both. (A brightened copy whose highlights clipped, many tones onto one, maps
    # back within STRONG.) Colour: each chroma plane fitted to the other's by one gain and
    # one shift (a brightness or contrast change scales it, a colour profile shifts it), so
    # a hue changed at one brightness still counts.
    ya, yb = a[..., 0], warped[..., 0]
    ba, bb = blur(ya), blur(yb)
    limit = _limit(ba, bb)
    levels_a, levels_b = _levels(ya), _levels(yb)
    span_a, span_b = _span(levels_a, inside), _span(levels_b, inside)
    mapped_b = _tone_mapped(levels_b, ya, inside, span_a / max(span_b, 1.0))
    one = _differs(ba - blur(mapped_b), levels_b, limit, inside)
    mapped_a = _tone_mapped(levels_a, yb, inside, span_b / max(span_a, 1.0))
    other = _differs(blur(mapped_a) - bb, levels_a, limit, inside)
    hue = np.zeros(inside.shape, bool)
    chroma = []
    for c in (1, 2):
        ca, cb = chroma_blur(a[..., c]) - 128, chroma_blur(warped[..., c]) - 128
        hue |= np.abs(ca - _chroma_fit(cb, ca, inside)) > STRONG_CHROMA
        chroma.append((ca[inside], cb[inside]))
    colours = _colours(np.stack([x for x, _ in chroma], 1), np.stack([y for _, y in chroma], 1))
    worst, cells = 0.0, 0
    for top, bottom in _cells(h):
        for left, right in _cells(w):
            cell = (slice(top, bottom), slice(left, right))
            m = inside[cell]
            if m.mean() < 0.5:
                continue
            cells += 1
            luma = max(float(one[cell][m].mean()), float(other[cell][m].mean()))
            worst = max(worst, 100 * luma, 100 * float(hue[cell][m].mean()))
    if not cells:
        return Likeness(float("inf"), cover, max(h, w), sides, "no cell of the two overlaps")
    return Likeness(worst, cover, max(h, w), sides, colours=colours)


def _colours(a: Pixels, b: Pixels) -> str:
    """How the colours of two pictures differ as a whole (`a`, `b`: their chroma, Cb and Cr,
    centred on grey, of the pixels compared; one row a pixel), or "" when one may be a copy of
    the other: their saturation (RMS about grey) within _CHROMA_GAIN either way, unless neither
    has _COLOURED levels of it, and no cast over _CAST levels left when either one's colours
    are scaled about grey onto the other's (least squares, the gain within _CHROMA_GAIN)."""
    import math

    import numpy as np

    x, y = a.astype(np.float64), b.astype(np.float64)
    power = (float((x * x).sum(1).mean()), float((y * y).sum(1).mean()))
    rms = (math.sqrt(power[0]), math.sqrt(power[1]))
    if max(rms) >= _COLOURED:
        if min(rms) < 1e-3:
            return "colour against none"
        ratio = rms[0] / rms[1]
        if not 1 / _CHROMA_GAIN <= ratio <= _CHROMA_GAIN:
            return f"saturation x{ratio:.2f}"
    cross = float((x * y).sum(1).mean())
    cast = 0.0
    for one, other, size in ((x, y, power[1]), (y, x, power[0])):
        # within _CHROMA_GAIN, never below: a negative gain would "fit" colours turned to
        # their opposite (a rocket's blue sky toned sepia brown measured no cast at all)
        gain = cross / size if size > 1e-6 else 0.0
        if size > 1e-6:
            gain = min(max(gain, 1 / _CHROMA_GAIN), _CHROMA_GAIN)
        cast = max(cast, math.hypot(*(one - gain * other).mean(0)))
    if cast > _CAST:
        return f"a cast of {cast:.1f} chroma levels"
    return ""


def _cells(side: int) -> list[tuple[int, int]]:
    """A side cut into CELL px spans, the last one taking what is left (up to 1.5 CELL): a
    stamp or a watermark in the last few px at a frame's edge is in a cell too (it was not,
    when a remainder under CELL/2 was left out: a logo in a small clip's corner)."""
    starts = list(range(0, max(1, side - CELL // 2), CELL))
    return list(zip(starts, [*starts[1:], max(side, starts[-1] + 1)], strict=True))


def _limit(a: Pixels, b: Pixels) -> Pixels:
    """Per pixel, the grey levels by which the two (blurred) pictures must differ there:
    _TEXTURE times the lesser of their local standard deviations over _TEXTURE_PX px,
    within FAINT and STRONG."""
    import numpy as np

    texture = np.sqrt(np.minimum(_local_variance(a), _local_variance(b)))
    return np.asarray(np.clip(_TEXTURE * texture, FAINT, STRONG), np.float32)


def _local_variance(x: Pixels) -> Pixels:
    import cv2
    import numpy as np

    size = (_TEXTURE_PX, _TEXTURE_PX)
    mean = cv2.boxFilter(x, -1, size, borderType=cv2.BORDER_REFLECT)
    square = cv2.boxFilter(x * x, -1, size, borderType=cv2.BORDER_REFLECT)
    variance = np.asarray(square - mean * mean, np.float32)
    return np.maximum(variance, 0, out=variance)


def _levels(grey: Pixels) -> npt.NDArray[np.intp]:
    """`grey`'s pixels as whole grey levels, 0-255."""
    import numpy as np

    return np.clip(np.rint(grey), 0, 255).astype(np.intp)


def _differs(
    residual: Pixels,
    levels: npt.NDArray[np.intp],
    limit: Pixels,
    inside: npt.NDArray[np.bool_],
) -> npt.NDArray[np.bool_]:
    """Where `residual` (the two blurred pictures' difference; `levels`: those of the one
    tone-mapped) is more than `limit`, and more than _LEVEL_SPREAD times the median residual of
    the pixels `inside` at that level (and the two next to it): a tone map fits some levels
    worse (a colour clipped in one channel, a level many were merged into), all over the
    picture. At a level within _CLIPPED of black or white, more than STRONG."""
    import numpy as np

    size = np.abs(residual)
    quarters = size * 4
    np.rint(quarters, out=quarters)
    np.minimum(quarters, 255, out=quarters)
    # pixels outside counted in one more bin, left off: cheaper than selecting the inside
    index = levels * 256
    index += quarters.astype(np.intp)
    index[~inside] = 256 * 256
    counts = np.bincount(index.ravel(), minlength=256 * 256 + 1)[: 256 * 256].reshape(256, 256)
    pooled = counts.copy()
    pooled[1:] += counts[:-1]
    pooled[:-1] += counts[1:]
    cumulative = np.cumsum(pooled, axis=1)
    median = np.argmax(2 * cumulative >= cumulative[:, -1:], axis=1) / 4
    spread = np.where(cumulative[:, -1] > 0, median, 0.0).astype(np.float32)
    grid = np.arange(256)
    clipped = (grid <= _CLIPPED) | (grid >= 255 - _CLIPPED)
    least = np.where(clipped, STRONG, _LEVEL_SPREAD * spread).astype(np.float32)
    bound = least[levels]
    np.maximum(bound, limit, out=bound)
    np.minimum(bound, STRONG, out=bound)
    return np.asarray(size > bound)


# Of the part of a larger frame a crop shows, each side widened by this share of the part's
# own: the crop stage's fit errs by a pixel or two of its 512 px images, and all of the crop
# must lie in what it is compared with (`MIN_COVER`).
_PART_MARGIN = 0.04


def _part_box(
    part: tuple[float, float, float, float], size: tuple[int, int]
) -> tuple[int, int, int, int]:
    """`part` (fractions of a frame: left, top, right, bottom) in px of a frame of `size`,
    widened by _PART_MARGIN each way and kept within the frame."""
    left, top, right, bottom = part
    w, h = size
    mx, my = (right - left) * _PART_MARGIN, (bottom - top) * _PART_MARGIN
    box = (
        max(0, round((left - mx) * w)),
        max(0, round((top - my) * h)),
        min(w, round((right + mx) * w)),
        min(h, round((bottom + my) * h)),
    )
    if box[2] - box[0] < 1 or box[3] - box[1] < 1:
        raise ValueError(f"an empty part of the frame: {part}")
    return box


def _resized(big: Pixels, small: Pixels) -> Pixels:
    """`big` reduced to `small`'s area (to its exact size when the shapes agree within 1%)."""
    import cv2
    import numpy as np

    if abs(big.shape[1] / big.shape[0] - small.shape[1] / small.shape[0]) < 0.01:
        size = (small.shape[1], small.shape[0])
    else:
        f = (small.shape[0] * small.shape[1] / (big.shape[0] * big.shape[1])) ** 0.5
        size = (max(1, round(big.shape[1] * f)), max(1, round(big.shape[0] * f)))
    return np.asarray(cv2.resize(big, size, interpolation=cv2.INTER_AREA), np.float32)


def _fit(a: Pixels, b: Pixels) -> npt.NDArray[np.float64] | None:
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


def _chroma_fit(source: Pixels, target: Pixels, inside: npt.NDArray[np.bool_]) -> Pixels:
    """`source` (a chroma plane, centred on 0) scaled and shifted to fit `target` by least
    squares over the pixels `inside`, the gain held within _CHROMA_GAIN either way: a global
    colour change may be fitted, a local one never."""
    import numpy as np

    x, y = source[inside].astype(np.float64), target[inside].astype(np.float64)
    var = float(x.var())
    gain = float(((x - x.mean()) * (y - y.mean())).mean() / var) if var > 1e-6 else 1.0
    gain = min(max(gain, 1 / _CHROMA_GAIN), _CHROMA_GAIN)
    shift = float(y.mean() - gain * x.mean())
    return np.asarray(source * gain + shift, np.float32)


def _tone_mapped(
    levels: npt.NDArray[np.intp], target: Pixels, inside: npt.NDArray[np.bool_], slope: float
) -> Pixels:
    """A picture's grey `levels` mapped onto `target`'s: each level to the mean target level
    of the pixels `inside` at that level. A level fewer than _RARE_LEVEL of those pixels have
    is mapped between its neighbours', as one missing is (beyond them, continued from the
    nearest at `slope`, the ratio of the target's span to the picture's, held within
    _TONE_SLOPE either way):
    else a change made in tones of its own (a disc, a line of text) would map onto what the
    other picture has there, and vanish. The curve is monotone, pooled by pixel count where
    it would turn back (scipy's isotonic regression): a block in some tone laid over another
    (a stamp, a redaction) cannot map away, as a level-by-level mean lets it."""
    import numpy as np
    from scipy.optimize import isotonic_regression

    at = levels[inside]
    counts = np.bincount(at, minlength=256)
    sums = np.bincount(at, weights=target[inside], minlength=256)
    seen = np.flatnonzero(counts >= max(1, _RARE_LEVEL * len(at)))
    if not len(seen):
        seen = np.flatnonzero(counts)
    # monotone (pooled where it would turn back, by pixel count): a tone change keeps the
    # order of tones, a block painted in a tone of its own does not
    mapped = isotonic_regression(sums[seen] / counts[seen], weights=counts[seen]).x
    grid = np.arange(256)
    curve = np.interp(grid, seen, mapped)
    # beyond the levels kept (rare dark text, rare highlights), continued from the nearest
    # one at the ratio of the two pictures' spans, within _TONE_SLOPE either way
    slope = min(max(slope, 1 / _TONE_SLOPE), _TONE_SLOPE)
    curve = np.where(grid < seen[0], mapped[0] + slope * (grid - seen[0]), curve)
    curve = np.where(grid > seen[-1], mapped[-1] + slope * (grid - seen[-1]), curve)
    return np.asarray(np.clip(curve, 0, 255)[levels], np.float32)


def _span(levels: npt.NDArray[np.intp], inside: npt.NDArray[np.bool_]) -> float:
    """The grey levels a picture spans over the pixels `inside`, from its _SPAN_QUANTILE to
    its 1 - _SPAN_QUANTILE quantile."""
    import numpy as np

    cumulative = np.cumsum(np.bincount(levels[inside], minlength=256))
    lo, hi = np.searchsorted(
        cumulative, (_SPAN_QUANTILE * cumulative[-1], (1 - _SPAN_QUANTILE) * cumulative[-1])
    )
    return float(hi - lo)
