"""The plain values one read of a file gives: its identity (`FileStat`) and, once decoded, its
hashes and facts (`HashedImage`; a clip's frame hashes: `HashedVideo`).

Kept apart from `imaging` so that the store, the scanner and every command that never
decodes (an unchanged rescan, `dedupctl status`) do not import Pillow to name them.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, NamedTuple

if TYPE_CHECKING:
    from dedupd.live import Beside

__all__ = ["Counterpart", "FileStat", "HashedImage", "HashedVideo", "Likeness", "LocalFeatures"]


class FileStat(NamedTuple):
    """What identifies one version of a file: unchanged stat means unchanged content."""

    dev: int
    inode: int
    size: int
    mtime_ns: int

    @classmethod
    def of(cls, st: os.stat_result) -> FileStat:
        return cls(st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns)


class LocalFeatures(NamedTuple):
    """A photo's local features as the worker sends and the store keeps them (see
    `dedupd.features`): plain bytes, so that naming them needs no numpy."""

    kind: str  # features.FEATURES_KEY: what was computed (detector, count, image side)
    width: int  # of the reduced image the points are in
    height: int
    points: bytes  # float32 (x, y) rows
    descriptors: bytes  # 32-byte ORB rows
    words: bytes  # uint16, sorted and unique: what the candidate index files the photo under
    # the reduced image itself, box-reduced to PATCH_SIDE px on its long side, 8-bit grey rows:
    # what verification compares once the keypoints agree (features.patch_size gives its shape)
    patch: bytes = b""


class Counterpart(NamedTuple):
    """The file a newcomer's pixels are compared with before a near match moves either
    (`dedupd.likeness`): the version its record names, and the rotation or mirror that takes
    it to the newcomer (`hashers.TRANSFORMS`)."""

    path: str
    stat: FileStat
    transform: str = "identity"
    # For a crop: the part of the larger frame the crop shows (left, top, right, bottom, as
    # fractions of its trimmed frame), and which of the two is that frame ("counterpart" or
    # "newcomer"): only that part of it is compared with the crop.
    box: tuple[float, float, float, float] | None = None
    boxed: str = "counterpart"


class Likeness(NamedTuple):
    """What comparing two photos' pixels found (`dedupd.likeness.compare`), or two clips'
    frames and sound (`dedupd.cliplikeness.compare_clips`); judged by their `refusal`.
    `error` says why nothing could be compared (a file gone, changed or unreadable): such a
    pair never moves."""

    # the largest share (percent) of one cell's pixels that differ, aligned and tone-matched
    worst: float
    # the share of the newcomer's frame, and of the counterpart's, that the other one shows
    # (for two clips: the share of each one's moments)
    cover: tuple[float, float] = (0.0, 0.0)
    side: int = 0  # the long side, in px, the two were compared at
    # the newcomer's and the counterpart's long side, in px, in the file (trimmed)
    sides: tuple[int, int] = (0, 0)
    error: str | None = None
    # For two clips (`dedupd.cliplikeness`): the first moment of each (newcomer's,
    # counterpart's) that the other does not show, and why; "" when it shows them all.
    unshown: tuple[str, str] = ("", "")
    # How the two pictures' colours differ as a whole (a black-and-white or toned version, a
    # colour filter: `likeness._colours`), "" when they do not
    colours: str = ""


@dataclass(frozen=True, slots=True)
class HashedImage:
    stat: FileStat
    sha256: str
    width: int  # after EXIF orientation
    height: int
    format: str
    taken_at: str | None  # EXIF DateTimeOriginal as ISO 8601, camera local time
    hashes: dict[str, bytes]  # hasher key → packed bits
    # hasher key → the packed bits of the image's 8 rotations and mirrors, in the order of
    # hashers.TRANSFORMS (the first is `hashes[key]`); empty when not asked for
    variants: dict[str, list[bytes]] = field(default_factory=dict)
    # What the second opinion needs (imaging's PDQ step): hasher key → quality 0-100 for the
    # hashers that rate it (PDQ), and the share of the pixels in the dominant tone.
    quality: dict[str, int] = field(default_factory=dict)
    dominant: float | None = None
    # The crop stage's local features (imaging's feature step); None when not computed.
    features: LocalFeatures | None = None
    # A Live Photo still's motion file (its MOV), found and hashed with it, and the files
    # that could be one by name; None for a still with no movie beside it.
    live: Beside | None = None
    # True when the hashes come from an embedded thumbnail (HEIC), not a full decode.
    thumbnail: bool = False
    # The share of the frame's area the trim cut off (uniform borders: a letterbox, a
    # screenshot's canvas); 0.0 when it cut nothing.
    framed: float = 0.0
    # What comparing its pixels with each file asked for (`Entry.compare`) found.
    likeness: tuple[tuple[Counterpart, Likeness], ...] = ()


@dataclass(frozen=True, slots=True)
class HashedVideo:
    """A clip (a video, or an animated GIF/WebP) as `video.hash_video` hashed it."""

    stat: FileStat
    sha256: str
    width: int
    height: int
    format: str  # the container's name as FFmpeg gives it ("mov", "matroska"), or GIF/WEBP
    taken_at: str | None  # the container's creation time, ISO 8601
    duration: float  # seconds
    key: str  # video.video_key: the frame hasher and the sampling
    frames: tuple[bytes, ...]  # the kept frames' hashes, in time order
    times: tuple[float, ...]  # each kept frame's time, seconds from the start
    sampled: int  # frames looked at (flat and repeated ones were not kept)
    # What comparing its frames and sound with each clip asked for (`Entry.compare`) found.
    likeness: tuple[tuple[Counterpart, Likeness], ...] = ()
