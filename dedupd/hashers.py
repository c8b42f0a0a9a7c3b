"""Registry of perceptual hashers: name → hash function, bit length, default threshold.

A `Hasher` turns a decoded PIL image into packed hash bytes. Its `key` names the algorithm,
size and ImageHash version, so the store keeps hashes from different settings apart and a
config change re-hashes lazily without losing the old ones.

Thresholds are normalized Hamming distances: differing bits / hash bits, 0–1.

PDQ (Meta's photo hash, through the `pdqhash` package) also rates the image it hashed: its
quality, 0–100, is low for flat images whose hash says little. `SECOND_OPINION` is the hasher
whose agreement a near match needs before a file moves, and `LOW_DETAIL_QUALITY` /
`LOW_DETAIL_DOMINANT` say which images are too plain to be moved on a perceptual match at all
(see `policy.SecondOpinion`).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from functools import cache
from importlib.metadata import version
from typing import TYPE_CHECKING, Any, Literal, NamedTuple, Protocol, get_args

if TYPE_CHECKING:
    from PIL import Image

__all__ = [
    "DECODE_FACTOR",
    "HASHERS",
    "INVERSE",
    "LOW_DETAIL_DOMINANT",
    "LOW_DETAIL_QUALITY",
    "MIN_SAMPLE_SIDE",
    "REDUCE_FACTOR",
    "SECOND_OPINION",
    "TRANSFORMS",
    "Algorithm",
    "Hasher",
    "Measured",
    "Transform",
    "dominant_share",
    "second_opinion",
    "transform_image",
    "validate_hash_size",
]

Algorithm = Literal[
    "average_hash", "phash", "phash_simple", "dhash", "dhash_vertical", "whash", "colorhash", "pdq"
]

# The decoded image is made smaller before hashing, in two steps. JPEGs are decoded in draft
# mode (1/2, 1/4 or 1/8 scale in the DCT domain) to at least DECODE_FACTOR times what the
# hashers sample, the same for every hasher, so that which hashers a config names (PDQ is
# always one) changes no hash. Then, for each hasher, the image (of any format: a PNG or HEIC
# has no draft mode) is box-reduced by a whole factor as long as its short side keeps
# `reduce_factor` times what the hasher samples (never counting less than MIN_SAMPLE_SIDE, so
# the tiny hashers, such as 8x8 dHash sampling 9 px, are not given a few dozen pixels).
# REDUCE_FACTOR is 4, as the draft: reducing pHash to twice its sample halved the hashing time
# of a 500 px photo but moved turned (rotated, mirrored) matches by a few more bits, and
# rotations fell from 100% to 93% at their calibrated threshold (bench/accuracy.py). PDQ, the
# second opinion, keeps 2: its dihedral pass cost 3.4 ms on a 500 px photo, most of the
# hashing. Measured on the test photos at native, 3 MP and 12 MP size (tests/test_imaging.py):
# pHash 16x16 within 2 of 256 bits of a full decode, every hasher within 0.04 (colorhash
# 0.08, PDQ 0.12).
DECODE_FACTOR = 4
REDUCE_FACTOR = 4
MIN_SAMPLE_SIDE = 64
# What the hashers are given changed (the reduction above): stored hashes made before are redone
# once, on the next scan, because the key differs.
_INPUT_VERSION = 2

_IMAGEHASH_VERSION = ".".join(version("ImageHash").split(".")[:2])
# What is hashed besides the algorithm's own steps; part of every key, so that a change here
# re-hashes stored photos once on the next scan. "trim1": uniform borders are cut off first
# (imaging.trim_borders).
_PREPARE = "trim1"

# The 8 rotations and mirrors of the plane (the dihedral group D4). `mirror_rotN` is the
# mirror image (left-right) of the picture rotated by N degrees counterclockwise.
Transform = Literal[
    "identity",
    "rot90",
    "rot180",
    "rot270",
    "mirror",
    "mirror_rot90",
    "mirror_rot180",
    "mirror_rot270",
]
TRANSFORMS: tuple[Transform, ...] = get_args(Transform)  # in this order everywhere
# T(INVERSE[T](x)) == x: only the quarter turns are not their own inverse.
INVERSE: Mapping[Transform, Transform] = {
    **{t: t for t in TRANSFORMS},
    "rot90": "rot270",
    "rot270": "rot90",
}
# Each transform of a pixel array as (transpose first, then reverse the rows, reverse the
# columns); on arrays indexed [row, column] this is what the PIL name does to the image.
_AXES: Mapping[Transform, tuple[bool, bool, bool]] = {
    "identity": (False, False, False),
    "rot90": (True, True, False),  # Image.Transpose.ROTATE_90
    "rot180": (False, True, True),
    "rot270": (True, False, True),
    "mirror": (False, False, True),  # FLIP_LEFT_RIGHT
    "mirror_rot90": (True, True, True),  # TRANSVERSE
    "mirror_rot180": (False, True, False),  # FLIP_TOP_BOTTOM
    "mirror_rot270": (True, False, False),  # TRANSPOSE
}


def transform_image(image: Image.Image, transform: Transform) -> Image.Image:
    """`image` rotated and/or mirrored as `transform` names (a copy; exact, no resampling)."""
    from PIL import Image

    methods: Mapping[Transform, Image.Transpose] = {
        "rot90": Image.Transpose.ROTATE_90,
        "rot180": Image.Transpose.ROTATE_180,
        "rot270": Image.Transpose.ROTATE_270,
        "mirror": Image.Transpose.FLIP_LEFT_RIGHT,
        "mirror_rot90": Image.Transpose.TRANSVERSE,
        "mirror_rot180": Image.Transpose.FLIP_TOP_BOTTOM,
        "mirror_rot270": Image.Transpose.TRANSPOSE,
    }
    return image.copy() if transform == "identity" else image.transpose(methods[transform])

_PDQHASH_VERSION = ".".join(version("pdqhash").split(".")[:2])


class _Value(Protocol):
    """What a hash function returns: ImageHash's ImageHash, or `_Bits`."""

    @property
    def hash(self) -> Any: ...  # a boolean array of the hash's bits


class _Bits(NamedTuple):
    hash: Any  # a boolean array
    quality: int | None = None


@dataclass(frozen=True, slots=True)
class _Spec:
    compute: Callable[[Image.Image, int], _Value]
    sample_side: Callable[[int], int]  # side of the square the hasher resizes to
    bits: Callable[[int], int]
    # Default thresholds: the largest at which bench/accuracy.py saw no false match among
    # 11,538 distinct pairs at hash_size 16 (bench/results/accuracy.md), never raised beyond
    # the conservative starting values: a file mover must prefer a missed duplicate.
    threshold: float
    mode: Literal["L", "RGB"]
    reduce_factor: int = REDUCE_FACTOR
    # The hash of each of TRANSFORMS applied to the image, from one resize; None: hash each
    # transposed copy of the (small, decoded) image instead.
    variants: Callable[[Image.Image, int], Sequence[_Value]] | None = None
    version: str = f"imagehash-{_IMAGEHASH_VERSION}"
    # (hash_size, threshold) recalibrated with the second opinion in place, which guards
    # every move: midway between the smallest threshold at which bench/accuracy.py finds 98%
    # of every variant kind but crops, rotations and screenshots, and the largest at which
    # it matches no pair of distinct photos (bench/results/accuracy.md, "Second opinion").
    calibrated: tuple[tuple[int, float], ...] = ()
    # (hash_size, threshold) for a match through a rotation or mirror: the 8 lookups give
    # every pair of distinct photos 8 chances to collide, so it is calibrated apart (with
    # isometric matching on, bench/accuracy.py's first false pair of pHash 16 was a mirror
    # match at 0.11: a photo's left third against its right third). Default: `threshold`.
    turned: tuple[tuple[int, float], ...] = ()


def _imagehash(name: str) -> Callable[[Image.Image, int], _Value]:
    """ImageHash's `name`(image, hash_size), imported when first called: the config names
    hashers in every command, but only the processes that decode need ImageHash (and the
    scipy and PyWavelets it brings)."""

    def compute(image: Image.Image, size: int) -> _Value:
        import imagehash

        value: _Value = getattr(imagehash, name)(image, size)
        return value

    return compute


def _whash(image: Image.Image, size: int) -> _Value:
    import imagehash

    # A fixed image_scale: ImageHash's default depends on the decoded size, which would make
    # the hash of a draft-decoded JPEG differ from the full decode.
    value: _Value = imagehash.whash(image, hash_size=size, image_scale=4 * size)
    return value


def _phash_variants(image: Image.Image, size: int) -> list[_Value]:
    """pHash of each of TRANSFORMS applied to `image`, from one resize and one DCT.

    ImageHash's phash: resize to 4*size square, 2-D DCT-II, keep the size x size low
    frequencies, bit = coefficient > their median. A transposed picture has the transposed
    DCT, and reversing an axis multiplies the k-th coefficient along it by (-1)**k, so each
    variant's block is the same coefficients transposed and sign-flipped; only its median is
    taken again. Equal to hashing the transformed image, up to the resampler's rounding of
    the (transformed) resize (tests/test_hashers.py).
    """
    import imagehash
    import numpy as np
    import scipy.fftpack
    from PIL import Image

    side = 4 * size
    gray = image if image.mode == "L" else image.convert("L")
    pixels = np.asarray(gray.resize((side, side), Image.Resampling.LANCZOS))
    dct = scipy.fftpack.dct(scipy.fftpack.dct(pixels, axis=0), axis=1)
    low = dct[:size, :size]
    sign = 1.0 - 2.0 * (np.arange(size) % 2)  # (-1)**k
    blocks = np.empty((len(TRANSFORMS), size, size))
    for i, transform in enumerate(TRANSFORMS):
        transpose, flip_rows, flip_cols = _AXES[transform]
        block = low.T if transpose else low
        if flip_rows:
            block = block * sign[:, None]
        if flip_cols:
            block = block * sign[None, :]
        blocks[i] = block
    # One median call for all 8 (each call costs more than the sorting it does).
    medians = np.median(blocks.reshape(len(TRANSFORMS), -1), axis=1)
    return [imagehash.ImageHash(b > m) for b, m in zip(blocks, medians, strict=True)]


def _colorhash(image: Image.Image, size: int) -> _Value:
    import imagehash

    value: _Value = imagehash.colorhash(image, binbits=size)
    return value


def _pdq(image: Image.Image, size: int) -> _Bits:
    """PDQ of an RGB image, with its quality. pdqhash takes any size and reduces it to 64x64
    with its own (Jarosz box) filter, at a cost that grows with the pixels: fed the draft
    decode (256-512 px, `draft_side`) it costs ~3 ms, fed 1600 px ~270 ms, for 8 of 256 bits
    of difference."""
    import numpy as np
    import pdqhash

    bits, quality = pdqhash.compute(np.ascontiguousarray(np.asarray(image, dtype=np.uint8)))
    return _Bits(np.asarray(bits, dtype=bool), int(quality))


# PDQ's MIN_HASHABLE_DIM: compute_dihedral gives all-zero hashes of quality 0 to an image
# narrower than this; compute_float does not check.
_PDQ_MIN_SIDE = 5


def _pdq_variants(image: Image.Image, size: int) -> list[_Bits]:
    """PDQ of each of TRANSFORMS applied to `image`, from one reduction and one DCT: the
    bits of `pdqhash.compute_dihedral` (PDQ's own dihedral hashing), derived here from the
    16x16 coefficients that `pdqhash.compute_float` returns.

    compute_dihedral turns each of its 8 hashes into a numpy vector with a 256-step Python
    loop, which cost more than PDQ itself (0.25 of 0.75 ms on a 250 px image). PDQ's
    dihedral pass (pdqhashing.cpp, dct16OriginalTo*) transposes and sign-flips those same
    coefficients, and sets bit i*16+j where coefficient [i][j] exceeds the 128th smallest
    (Torben's median, the lower one); the bit vector comes out last bit first. All of it is
    exact in float64, so the bits are compute_dihedral's (tests/test_hashers.py)."""
    import numpy as np
    import pdqhash

    if min(image.size) < _PDQ_MIN_SIDE:  # as compute_dihedral: no bits, no quality
        return [_Bits(np.zeros(256, bool), 0) for _ in TRANSFORMS]
    rgb = image if image.mode == "RGB" else image.convert("RGB")
    pixels = np.ascontiguousarray(np.asarray(rgb, dtype=np.uint8))
    flat, quality = pdqhash.compute_float(pixels)
    order, sign = _pdq_tables()
    rows = np.asarray(flat, dtype=np.float64)[::-1][order] * sign  # (8 transforms, 256)
    medians = np.partition(rows, 127, axis=1)[:, 127:128]
    bits = (rows > medians)[:, ::-1]
    return [_Bits(b, int(quality)) for b in bits]


@cache
def _pdq_tables() -> tuple[Any, Any]:
    """(index, sign), each (8, 256): row t of the coefficients of TRANSFORMS[t] of an image
    is its own coefficients (flattened) at `index`, times `sign` (from `_pdq_turn`)."""
    import numpy as np

    numbered = np.arange(1.0, 257.0).reshape(16, 16)  # 1-based, so that a sign shows
    turned = np.stack([_pdq_turn(numbered, t).ravel() for t in TRANSFORMS])
    return np.abs(turned).astype(np.intp) - 1, np.sign(turned)


def _pdq_turn(a: Any, transform: Transform) -> Any:
    """PDQ's 16x16 DCT coefficients `a` of an image → those of `transform` of the image, as
    PDQ's dct16OriginalTo* compute them (their names in the comments; x is the row)."""
    import numpy as np

    odd = np.arange(16) % 2 == 1
    i_odd, j_odd = odd[:, None], odd[None, :]
    if transform == "identity":
        return a
    if transform == "rot90":  # Rotate90: B[j][i] = A[i][j], negated where j is even
        return np.where(j_odd, a, -a).T
    if transform == "rot180":  # Rotate180: negated where i + j is odd
        return np.where(i_odd ^ j_odd, -a, a)
    if transform == "rot270":  # Rotate270: B[j][i] = A[i][j], negated where i is even
        return np.where(i_odd, a, -a).T
    if transform == "mirror":  # FlipY: negated where j is even
        return np.where(j_odd, a, -a)
    if transform == "mirror_rot90":  # FlipMinus1: B[j][i] = A[i][j], negated where i + j odd
        return np.where(i_odd ^ j_odd, -a, a).T
    if transform == "mirror_rot180":  # FlipX: negated where i is even
        return np.where(i_odd, a, -a)
    return a.T  # mirror_rot270, FlipPlus1: B[j][i] = A[i][j]


HASHERS: Mapping[Algorithm, _Spec] = {
    "average_hash": _Spec(_imagehash("average_hash"), lambda s: s, lambda s: s * s, 0.07, "L"),
    # pHash 16x16: 98% of those kinds from 0.21, no false match up to 0.29: 0.25 (64 bits).
    "phash": _Spec(
        _imagehash("phash"),
        lambda s: 4 * s,
        lambda s: s * s,
        0.10,
        "L",
        variants=_phash_variants,
        calibrated=((16, 0.25),),
        turned=((16, 0.10),),
    ),
    "phash_simple": _Spec(
        _imagehash("phash_simple"), lambda s: 4 * s, lambda s: s * s, 0.10, "L", reduce_factor=4
    ),
    "dhash": _Spec(
        _imagehash("dhash"), lambda s: s + 1, lambda s: s * s, 0.12, "L", reduce_factor=4
    ),
    "dhash_vertical": _Spec(
        _imagehash("dhash_vertical"), lambda s: s + 1, lambda s: s * s, 0.12, "L", reduce_factor=4
    ),
    "whash": _Spec(_whash, lambda s: 4 * s, lambda s: s * s, 0.07, "L", reduce_factor=4),
    # colorhash: hash_size is ImageHash's binbits (bits per colour bin, 14 bins). It looks at
    # every pixel's colour; a 256 px draft keeps the bin fractions close to the full decode.
    "colorhash": _Spec(_colorhash, lambda s: 64, lambda s: 14 * s, 0.05, "RGB", reduce_factor=4),
    # PDQ: always 256 bits (hash_size 16); it samples a 64x64 reduction of the image. 98% of
    # those kinds from 0.22, no false match up to 0.32: 0.27 (69 bits). Meta's 31 bits are
    # for matching against millions alone; here PDQ only confirms what pHash found.
    "pdq": _Spec(
        _pdq,
        lambda s: 64,
        lambda s: 256,
        0.27,
        "RGB",
        reduce_factor=2,
        variants=_pdq_variants,
        version=f"pdqhash-{_PDQHASH_VERSION}",
    ),
}

# The second opinion a near match needs before a file moves: an independent hash (its own
# DCT of its own reduction) within its own threshold. PDQ, unless PDQ is the first opinion.
SECOND_OPINION: Algorithm = "pdq"
_SECOND_FOR_PDQ: Algorithm = "phash"

# Low-detail images are reported, never moved, on a perceptual match: their hashes say too
# little to tell two of them apart. Calibrated on bench/accuracy.py's photos and flat images
# (bench/results/accuracy.md, "Second opinion"), each midway between the two groups: a PDQ
# quality below this floor (flat images scored 0-8, the photos 34-100: a motion-blurred
# clock 34, the moon 74, the rest 100)...
LOW_DETAIL_QUALITY = 21
# ... or at least this share of the pixels in one tone (±2 of 256 grey levels): text
# screenshots and documents had 0.79-0.82, solid and near-uniform frames 0.97-1.0, the photos
# 0.04-0.39 but a deep-sky field (0.61).
LOW_DETAIL_DOMINANT = 0.70


def validate_hash_size(algorithm: Algorithm, hash_size: int) -> None:
    """Raise ValueError naming the allowed sizes when `hash_size` does not suit `algorithm`."""
    if algorithm == "whash" and hash_size & (hash_size - 1):
        raise ValueError(f"whash needs a power of two, got {hash_size}")
    if algorithm == "colorhash" and not 1 <= hash_size <= 8:
        raise ValueError(
            f"colorhash takes 1..8 (bits per colour bin; ImageHash's default is 3), got {hash_size}"
        )
    if algorithm == "pdq" and hash_size != 16:
        raise ValueError(f"pdq is always 16 (16x16 = 256 bits), got {hash_size}")
    if algorithm != "colorhash" and not 2 <= hash_size <= 64:
        raise ValueError(f"must be between 2 and 64, got {hash_size}")


@dataclass(frozen=True, slots=True)
class Hasher:
    """One configured perceptual hash. Call it on a decoded image to get packed bits."""

    algorithm: Algorithm
    hash_size: int = 16

    def __post_init__(self) -> None:
        if self.algorithm not in HASHERS:
            raise ValueError(f"unknown hasher {self.algorithm!r}; known: {', '.join(HASHERS)}")
        validate_hash_size(self.algorithm, self.hash_size)

    @property
    def _spec(self) -> _Spec:
        return HASHERS[self.algorithm]

    @property
    def bits(self) -> int:
        return self._spec.bits(self.hash_size)

    @property
    def key(self) -> str:
        """Stable identity of the hash values: algorithm, size, the library's version and
        what is done to the image first (see _INPUT_VERSION and _PREPARE)."""
        version = f"{self._spec.version}:in{_INPUT_VERSION}:{_PREPARE}"
        return f"{self.algorithm}:{self.hash_size}:{version}"

    @property
    def default_threshold(self) -> float:
        return dict(self._spec.calibrated).get(self.hash_size, self._spec.threshold)

    @property
    def turned_threshold(self) -> float:
        """The largest normalized distance at which a rotated or mirrored copy matches (a
        policy's own `threshold` may only lower it)."""
        spec = self._spec
        return dict(spec.turned).get(self.hash_size, min(spec.threshold, self.default_threshold))

    @property
    def mode(self) -> Literal["L", "RGB"]:
        return self._spec.mode

    @property
    def draft_side(self) -> int:
        """Smallest side a JPEG may be draft-decoded to for this hasher (see DECODE_FACTOR)."""
        return DECODE_FACTOR * max(MIN_SAMPLE_SIDE, self._spec.sample_side(self.hash_size))

    @property
    def reduce_side(self) -> int:
        """The short side the decoded image is box-reduced to, at least, before this hasher
        resizes it itself (see REDUCE_FACTOR)."""
        spec = self._spec
        return spec.reduce_factor * max(MIN_SAMPLE_SIDE, spec.sample_side(self.hash_size))

    @property
    def rates_quality(self) -> bool:
        """True when the hash comes with a quality score (PDQ)."""
        return self.algorithm == "pdq"

    def __call__(self, image: Image.Image) -> bytes:
        return self.measure(image).bits

    def measure(self, image: Image.Image) -> Measured:
        """The packed bits, with the quality when the hasher rates it (else None)."""
        import numpy as np  # only where images are hashed (see _imagehash)

        value = self._spec.compute(image, self.hash_size)
        bits = np.packbits(np.asarray(value.hash, dtype=bool).ravel()).tobytes()
        return Measured(bits, value.quality if isinstance(value, _Bits) else None)

    def variants(self, image: Image.Image) -> list[bytes]:
        """Packed hashes of `image` under each of TRANSFORMS (identity first, equal to
        `self(image)`): what a rotated or mirrored copy of the image would hash to.

        pHash derives them from one DCT, PDQ from its own dihedral pass; other hashers hash
        each transposed copy of `image` (exact, and cheap on the small draft-decoded image,
        but one hash each).
        """
        return self.measure_variants(image)[0]

    def measure_variants(self, image: Image.Image) -> tuple[list[bytes], int | None]:
        """`variants`, with the quality of `image` when the hasher rates it (else None)."""
        import numpy as np

        derive = self._spec.variants
        if derive is None:
            measured = [self.measure(transform_image(image, t)) for t in TRANSFORMS]
            return [m.bits for m in measured], measured[0].quality
        values = derive(image, self.hash_size)
        quality = values[0].quality if isinstance(values[0], _Bits) else None
        packed = [np.packbits(np.asarray(v.hash, dtype=bool).ravel()).tobytes() for v in values]
        return packed, quality

    def radius(self, threshold: float) -> int:
        """A normalized threshold as a whole number of differing bits (rounded down)."""
        return int(threshold * self.bits + 1e-9)


class Measured(NamedTuple):
    bits: bytes
    quality: int | None  # 0-100 for PDQ, else None


def second_opinion(first: Hasher) -> Hasher:
    """The hasher whose agreement a near match under `first` needs before a file moves."""
    return Hasher(_SECOND_FOR_PDQ if first.algorithm == SECOND_OPINION else SECOND_OPINION, 16)


def dominant_share(image: Image.Image) -> float:
    """The share of the pixels within ±2 grey levels of the most common tone, measured on a
    reduction to at most ~256 px a side: about 0.8 for a text screenshot or a document, 1 for
    a solid frame, under 0.4 for the photos of bench/accuracy.py but a deep-sky field (0.61)."""
    import numpy as np

    grey = image.convert("L")
    if max(grey.size) > 256:
        grey = grey.reduce(max(1, max(grey.size) // 256))
    counts = np.array(grey.histogram(), dtype=np.int64)  # pixels per grey level
    near = np.convolve(counts, np.ones(5, dtype=np.int64), mode="same")
    return float(near.max() / max(1, counts.sum()))
