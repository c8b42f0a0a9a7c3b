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

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from importlib.metadata import version
from typing import TYPE_CHECKING, Any, Literal, NamedTuple, Protocol

if TYPE_CHECKING:
    from PIL import Image

__all__ = [
    "DRAFT_FACTOR",
    "HASHERS",
    "LOW_DETAIL_DOMINANT",
    "LOW_DETAIL_QUALITY",
    "MIN_DRAFT_SIDE",
    "SECOND_OPINION",
    "Algorithm",
    "Hasher",
    "Measured",
    "dominant_share",
    "second_opinion",
    "validate_hash_size",
]

Algorithm = Literal[
    "average_hash", "phash", "phash_simple", "dhash", "dhash_vertical", "whash", "colorhash", "pdq"
]

# JPEG draft decoding scales by 1/2, 1/4 or 1/8 in the DCT domain. We ask for at least this
# many times the pixels a hasher samples: on 12 MP photos the 1/8 decode then gives pHash
# bits identical to a full decode or within 2 of 256 (tests/test_imaging.py), 6x faster.
DRAFT_FACTOR = 4
# ... and never below this side: small images gain little from drafting, and the tiny hashers
# (8x8 dHash samples 9 px) would otherwise see a 1/8 decode of a photo a few hundred px wide.
MIN_DRAFT_SIDE = 256

_IMAGEHASH_VERSION = ".".join(version("ImageHash").split(".")[:2])
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
    version: str = f"imagehash-{_IMAGEHASH_VERSION}"
    # (hash_size, threshold) recalibrated with the second opinion in place, which guards
    # every move: midway between the smallest threshold at which bench/accuracy.py finds 98%
    # of every variant kind but crops, rotations and screenshots, and the largest at which
    # it matches no pair of distinct photos (bench/results/accuracy.md, "Second opinion").
    calibrated: tuple[tuple[int, float], ...] = ()


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


HASHERS: Mapping[Algorithm, _Spec] = {
    "average_hash": _Spec(_imagehash("average_hash"), lambda s: s, lambda s: s * s, 0.07, "L"),
    # pHash 16x16: 98% of those kinds from 0.21, no false match up to 0.29: 0.25 (64 bits).
    "phash": _Spec(
        _imagehash("phash"), lambda s: 4 * s, lambda s: s * s, 0.10, "L", calibrated=((16, 0.25),)
    ),
    "phash_simple": _Spec(_imagehash("phash_simple"), lambda s: 4 * s, lambda s: s * s, 0.10, "L"),
    "dhash": _Spec(_imagehash("dhash"), lambda s: s + 1, lambda s: s * s, 0.12, "L"),
    "dhash_vertical": _Spec(
        _imagehash("dhash_vertical"), lambda s: s + 1, lambda s: s * s, 0.12, "L"
    ),
    "whash": _Spec(_whash, lambda s: 4 * s, lambda s: s * s, 0.07, "L"),
    # colorhash: hash_size is ImageHash's binbits (bits per colour bin, 14 bins). It looks at
    # every pixel's colour; a 256 px draft keeps the bin fractions close to the full decode.
    "colorhash": _Spec(_colorhash, lambda s: 64, lambda s: 14 * s, 0.05, "RGB"),
    # PDQ: always 256 bits (hash_size 16); it samples a 64x64 reduction of the image. 98% of
    # those kinds from 0.22, no false match up to 0.32: 0.27 (69 bits). Meta's 31 bits are
    # for matching against millions alone; here PDQ only confirms what pHash found.
    "pdq": _Spec(_pdq, lambda s: 64, lambda s: 256, 0.27, "RGB", f"pdqhash-{_PDQHASH_VERSION}"),
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
        """Stable identity of the hash values: algorithm, size and the library's version."""
        return f"{self.algorithm}:{self.hash_size}:{self._spec.version}"

    @property
    def default_threshold(self) -> float:
        return dict(self._spec.calibrated).get(self.hash_size, self._spec.threshold)

    @property
    def mode(self) -> Literal["L", "RGB"]:
        return self._spec.mode

    @property
    def draft_side(self) -> int:
        """Smallest side a JPEG may be draft-decoded to without changing this hash."""
        return max(MIN_DRAFT_SIDE, DRAFT_FACTOR * self._spec.sample_side(self.hash_size))

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
    counts = np.bincount(np.asarray(grey, dtype=np.uint8).ravel(), minlength=256)
    near = np.convolve(counts, np.ones(5, dtype=np.int64), mode="same")
    return float(near.max() / max(1, counts.sum()))
