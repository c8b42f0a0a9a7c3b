"""Frames of a clip, hashed: what the hasher workers make of a video or an animated GIF/WebP.

As perception's `FramewiseHasher` does it: frames are sampled at `video_fps` (1 per second by
default), black and flat frames (fades, a lens cap) are skipped, and so is a frame whose hash
is nearly that of the last frame kept (a still scene); each kept frame has its letterbox bars
trimmed (opposite flat bands of one thickness, measured as `imaging.trim_borders` measures
them) and is hashed with the configured image hasher. Only the
frames' hashes are kept while decoding, never the frames, so memory does not grow with the
clip's length.

Decoding costs little when the clip has a keyframe at least every two sample periods (phone
cameras write one a second): only keyframes are decoded (FFmpeg's `skip_frame=NONKEY`).
Otherwise every reference frame is decoded without the deblocking filter (`skip_frame=NONREF`,
`skip_loop_filter`), which no 16x16 hash can tell, and one frame per sample period is kept.

Videos are read through PyAV (its wheels bundle FFmpeg), animated GIF and WebP through Pillow;
a still GIF or WebP is an image (`hash_animation` returns None for it). Every way a clip can
be bad raises an `ImageError` whose `kind` is recorded in the store, as for images.

Only the hasher workers decode: this module imports PyAV, Pillow and numpy in its functions,
so that the daemon can name `video_key` and `VIDEO_EXTENSIONS` without loading them.
"""

from __future__ import annotations

import hashlib
import itertools
import math
import os
from collections.abc import Iterator, Sequence
from typing import TYPE_CHECKING, Any, BinaryIO

from dedupd.errors import ImageError
from dedupd.filestat import FileStat, HashedVideo
from dedupd.hashers import Hasher

if TYPE_CHECKING:
    from PIL import Image

__all__ = [
    "ANIMATED_EXTENSIONS",
    "DEFAULT_FPS",
    "MAX_FRAMES",
    "MAX_SEARCH_FRAMES",
    "VIDEO_EXTENSIONS",
    "CorruptVideo",
    "HashedVideo",
    "NoVideoStream",
    "TruncatedVideo",
    "hash_animation",
    "hash_video",
    "is_video_name",
    "search_frames",
    "video_key",
]

# Container formats read as videos (their names' extensions), and the image formats that are a
# video when they hold more than one frame.
VIDEO_EXTENSIONS = frozenset(("mp4", "mov", "m4v", "3gp", "webm", "mkv", "avi"))
ANIMATED_EXTENSIONS = frozenset(("gif", "webp"))
DEFAULT_FPS = 1.0
# Frames kept per clip at most: a frame's index id is file id * MAX_FRAMES + its number
# (`index.FrameIndex`). 65,536 distinct frames is 18 hours at one a second.
MAX_FRAMES = 1 << 16
# A frame whose luminance spreads less than this (8-bit levels, standard deviation) is flat:
# black, a fade, a lens cap. Its hash says nothing.
FLAT_STD = 6.0
# Letterbox bars come in pairs: opposite bands whose thickness differs by at most this share
# of the side (and 2 px) are bars; any other flat band is part of the picture.
_BAR_SLACK = 0.02
# A frame within this fraction of the hash's bits of the last frame kept repeats it.
REPEAT = 0.08
# Keyframes alone are enough when none is further than this many sample periods from the
# next (or from the clip's ends).
KEYFRAME_GAP = 2.0
# A clip whose packets end before this share of the duration its header gives (less a second)
# was cut short: a copy still being written, or a broken transfer.
_TRUNCATED = 0.9
_READ_CHUNK = 1 << 20
_VERSION = 1  # of the sampling below: part of `video_key`, so a change re-hashes once


class CorruptVideo(ImageError):
    kind = "corrupt"


class TruncatedVideo(ImageError):
    kind = "truncated"


class NoVideoStream(ImageError):
    kind = "no_video_stream"


class _TooManyPixels(ImageError):
    kind = "too_many_pixels"


def video_key(hasher: Hasher, fps: float) -> str:
    """The store's key of the frame hashes of a clip: the image hasher's key (its algorithm,
    size and preparation), the sampling rate and this module's version."""
    return f"video{_VERSION}:{fps:g}fps:{hasher.key}"


# Frames a search may send the daemon (each is 64 hex characters of a request line that may
# be 16 KB long): a longer clip is searched by this many of its frames, evenly spread.
MAX_SEARCH_FRAMES = 160


def search_frames(frames: Sequence[bytes]) -> list[bytes]:
    """At most MAX_SEARCH_FRAMES of a clip's `frames`, evenly spread over it."""
    if len(frames) <= MAX_SEARCH_FRAMES:
        return list(frames)
    step = len(frames) / MAX_SEARCH_FRAMES
    return [frames[int(i * step)] for i in range(MAX_SEARCH_FRAMES)]


def is_video_name(path: str) -> bool:
    """A name read as a video whatever its content (a GIF or WebP is one only if animated)."""
    return path.rpartition(".")[2].lower() in VIDEO_EXTENSIONS


# -- frames → hashes ---------------------------------------------------------------------------


class _Frames:
    """The hashes of the frames kept so far (bounded by MAX_FRAMES), as frames come in."""

    def __init__(self, hasher: Hasher, fps: float):
        self.hasher, self.period = hasher, 1.0 / fps
        self.repeat = int(REPEAT * hasher.bits)
        self.hashes: list[bytes] = []
        self.times: list[float] = []
        self.sampled = 0
        self.next_at = 0.0
        self.rotation = 0.0  # the display matrix's turn of the first frame sampled

    def due(self, at: float) -> bool:
        """Whether a frame shown at `at` seconds is the next to sample."""
        return at >= self.next_at - 1e-6 and len(self.hashes) < MAX_FRAMES

    def add(self, image: Image.Image, at: float) -> None:
        """Sample `image` (an RGB frame, short side about the hasher's draft side)."""
        import numpy as np

        self.sampled += 1
        # the next sample time on the grid, however late this frame came
        self.next_at = (math.floor(at / self.period + 1e-6) + 1) * self.period
        gray = image.convert("L")
        if float(np.asarray(gray, dtype=np.float32).std()) < FLAT_STD:
            return
        trimmed = _without_bars(image)
        bits = self.hasher(trimmed.convert(self.hasher.mode))
        if self.hashes and _distance(bits, self.hashes[-1]) <= self.repeat:
            return
        self.hashes.append(bits)
        self.times.append(round(at, 3))


def _without_bars(image: Image.Image) -> Image.Image:
    """`image` without letterbox (or pillarbox) bars: the flat bands `imaging.trim_borders`
    finds, kept only in pairs of about equal thickness on opposite sides, as a player or an
    editor pads a frame. A single flat band is the picture's own (a sky, a dark corner): cut
    in one copy and not in another (whose logo or noise breaks it up), it would make the two
    hash apart."""
    from dedupd.imaging import border_box  # the measure trim_borders uses

    box = border_box(image)
    if box is None:
        return image
    width, height = image.size
    left, top, right, bottom = box[0], box[1], width - box[2], height - box[3]
    if not (top and bottom and abs(top - bottom) <= _BAR_SLACK * height + 2):
        top = bottom = 0
    if not (left and right and abs(left - right) <= _BAR_SLACK * width + 2):
        left = right = 0
    if not (top or left):
        return image
    return image.crop((left, top, width - right, height - bottom))


def _distance(a: bytes, b: bytes) -> int:
    return (int.from_bytes(a, "big") ^ int.from_bytes(b, "big")).bit_count()


def _small_size(width: int, height: int, side: int) -> tuple[int, int]:
    """(width, height) scaled so the short side is `side` (never enlarged), even numbers."""
    scale = min(1.0, side / max(1, min(width, height)))
    return max(2, round(width * scale / 2) * 2), max(2, round(height * scale / 2) * 2)


# -- reading -----------------------------------------------------------------------------------


def _open_checked(
    path: str, expect: FileStat | None, max_pixels: int | None = None
) -> tuple[BinaryIO, FileStat, str]:
    """The file opened safely (never through a symlink), its stat and the sha256 of its bytes,
    read in chunks; positioned at its start again. With `max_pixels` (an animated GIF or
    WebP, which Pillow's WebP reader takes into memory whole), a file larger than an image
    within it is refused unread (`imaging.too_large`)."""
    from dedupd.imaging import (
        ChangedWhileReading,
        EmptyFile,
        Unreadable,
        Vanished,
        open_regular,  # the one safe open
        too_large,
    )

    f = open_regular(path)
    try:
        stat = FileStat.of(os.fstat(f.fileno()))
        if expect is not None and stat != expect:
            raise ChangedWhileReading(
                path, "the file changed after it was queued; it will be retried"
            )
        if stat.size == 0:
            raise EmptyFile(path, "zero bytes")
        refused = too_large(path, stat.size, max_pixels) if max_pixels is not None else None
        if refused is not None:
            raise refused
        digest = hashlib.sha256()
        try:
            while chunk := f.read(_READ_CHUNK):
                digest.update(chunk)
            f.seek(0)
        except FileNotFoundError as exc:
            raise Vanished(path, "the file disappeared while it was read") from exc
        except OSError as exc:
            raise Unreadable(path, exc.strerror or str(exc)) from exc
        return f, stat, digest.hexdigest()
    except BaseException:
        f.close()
        raise


def _unchanged(path: str, f: BinaryIO, stat: FileStat) -> None:
    from dedupd.imaging import ChangedWhileReading

    if FileStat.of(os.fstat(f.fileno())) != stat:
        raise ChangedWhileReading(path, "the file changed while it was read; it will be retried")


def hash_video(
    path: str,
    hasher: Hasher,
    *,
    fps: float = DEFAULT_FPS,
    max_pixels: int,
    expect: FileStat | None = None,
) -> HashedVideo:
    """Read `path` (a video container) once for its sha256, decode it as the module docstring
    says, and return its kept frames' hashes.

    Raises CorruptVideo, TruncatedVideo, NoVideoStream, or imaging's errors for a file that
    cannot be read (vanished, empty, changed while read, too many pixels).
    """
    import av

    f, stat, sha256 = _open_checked(path, expect)
    with f:
        with _open(av, f, path) as container:
            stream = container.streams.video[0]
            width, height = stream.codec_context.width, stream.codec_context.height
            if width * height > max_pixels:
                raise _TooManyPixels(
                    path, f"{width}x{height} frames exceed max_pixels {max_pixels}"
                )
            duration = _duration(container, stream)
            format_name = (container.format.name or "video").split(",")[0]
            taken_at = _creation_time(container.metadata)
            frames, keyframes, end = _decode(av, path, container, hasher, fps, "NONKEY")
        if not _dense(keyframes, duration, fps):
            # Decoder settings hold from the codec's opening: a second, full pass opens anew.
            f.seek(0)
            with _open(av, f, path) as container:
                frames, _, end = _decode(av, path, container, hasher, fps, "NONREF")
        if duration and end < _TRUNCATED * duration - 1.0:
            raise TruncatedVideo(
                path, f"the stream ends at {end:.1f} s of the {duration:.1f} s it announces"
            )
        if not frames.sampled:
            raise CorruptVideo(path, "no frame could be decoded")
        _unchanged(path, f, stat)
    if round(frames.rotation / 90) % 2:
        width, height = height, width  # as shown: a portrait clip stored sideways
    return HashedVideo(
        stat=stat,
        sha256=sha256,
        width=width,
        height=height,
        format=format_name,
        taken_at=taken_at,
        duration=round(duration or end, 3),
        key=video_key(hasher, fps),
        frames=tuple(frames.hashes),
        times=tuple(frames.times),
        sampled=frames.sampled,
    )


def _why(exc: Exception) -> str:
    return str(exc).rstrip(".")


# FFmpeg's demuxers for the containers of VIDEO_EXTENSIONS (mov: also MP4, M4V, 3GP;
# matroska: also WebM). FFmpeg picks a demuxer by the file's bytes, whatever its name: any
# other is refused before it reads the file. Its concat and playlist demuxers open the files
# a text file names (a symlink dedupd would not follow), its image ones decode any picture.
_DEMUXERS = "mov,matroska,avi"
_CONTAINERS = "QuickTime/MP4, Matroska/WebM, AVI"


def _open(av: Any, f: BinaryIO, path: str) -> Any:
    """`f` opened as a container that has a video stream."""
    from dedupd.imaging import NotAnImage

    try:
        container = av.open(
            f,
            mode="r",
            metadata_errors="ignore",
            container_options={"format_whitelist": _DEMUXERS},
        )
    except av.ArgumentError as exc:  # EINVAL: what a demuxer not on the list gets
        raise NotAnImage(path, f"not a video format dedupd reads ({_CONTAINERS})") from exc
    except av.FFmpegError as exc:
        raise CorruptVideo(path, f"cannot parse the container: {_why(exc)}") from exc
    if not container.streams.video:
        container.close()
        raise NoVideoStream(path, "the file holds no video stream")
    return container


def _duration(container: Any, stream: Any) -> float:
    if stream.duration is not None and stream.time_base is not None:
        return float(stream.duration * stream.time_base)
    if container.duration is not None:
        return float(container.duration) / 1e6
    return 0.0


def _dense(keyframes: Sequence[float], duration: float, fps: float) -> bool:
    """Whether the keyframes sample the clip finely enough (see KEYFRAME_GAP)."""
    if not keyframes:
        return False
    edges = [0.0, *keyframes, max(duration, keyframes[-1])]
    gap = max(b - a for a, b in itertools.pairwise(edges))
    return gap <= KEYFRAME_GAP / fps


def _decode(
    av: Any, path: str, container: Any, hasher: Hasher, fps: float, skip: str
) -> tuple[_Frames, list[float], float]:
    """One pass over the first video stream's packets, decoding those `skip` lets through:
    (the frames kept, the keyframes' times, where the last packet ends), all in seconds from
    the start. Raises CorruptVideo for what FFmpeg cannot read."""
    stream = container.streams.video[0]
    progress = [0.0]  # where the packets read so far end
    try:
        return _decode_stream(container, stream, hasher, fps, skip, progress)
    except av.FFmpegError as exc:
        duration = _duration(container, stream)
        if duration and progress[0] < _TRUNCATED * duration - 1.0:
            raise TruncatedVideo(
                path,
                f"the stream breaks off at {progress[0]:.1f} s of the {duration:.1f} s it"
                f" announces ({_why(exc)})",
            ) from exc
        raise CorruptVideo(path, f"cannot decode: {_why(exc)}") from exc


def _decode_stream(
    container: Any, stream: Any, hasher: Hasher, fps: float, skip: str, progress: list[float]
) -> tuple[_Frames, list[float], float]:
    frames = _Frames(hasher, fps)
    context = stream.codec_context
    context.skip_frame = skip
    context.thread_type = "NONE"  # one core per worker: the pool runs one worker per core
    if skip == "NONREF":
        context.options = {"skip_loop_filter": "all"}
    base = stream.time_base
    start = stream.start_time or 0
    keyframes: list[float] = []
    end = 0.0
    size: tuple[int, int] | None = None
    for packet in container.demux(stream):
        if packet.pts is not None and base is not None:
            at = float((packet.pts - start) * base)
            end = progress[0] = max(end, at + float((packet.duration or 0) * base))
            if packet.is_keyframe:
                keyframes.append(at)
        for frame in packet.decode():
            if frame.pts is None or base is None:
                continue
            at = max(0.0, float((frame.pts - start) * base))
            if not frames.due(at):
                continue
            if size is None:
                size = _small_size(frame.width, frame.height, hasher.draft_side)
                frames.rotation = frame.rotation
            small = frame.reformat(width=size[0], height=size[1], format="rgb24")
            frames.add(_upright(small.to_image(), frame.rotation), at)
    return frames, keyframes, end


def _upright(image: Image.Image, rotation: float) -> Image.Image:
    """A frame as it is shown: phones store a portrait clip's frames sideways with a display
    matrix saying how to turn them (`rotation`, degrees counterclockwise), and a chat app's
    re-encode stores them upright; both must hash alike."""
    from PIL import Image

    turn = round(rotation / 90) % 4
    methods = {
        1: Image.Transpose.ROTATE_90,
        2: Image.Transpose.ROTATE_180,
        3: Image.Transpose.ROTATE_270,
    }
    return image.transpose(methods[turn]) if turn else image


def _creation_time(metadata: dict[str, str]) -> str | None:
    """The container's creation time (phones write it, in UTC) as ISO 8601, seconds."""
    from datetime import datetime

    raw = metadata.get("creation_time") or metadata.get("com.apple.quicktime.creationdate")
    if not raw:
        return None
    try:
        return (
            datetime.fromisoformat(raw.replace("Z", "+00:00"))
            .replace(tzinfo=None, microsecond=0)
            .isoformat()
        )
    except ValueError:
        return None


# -- animated GIF and WebP -----------------------------------------------------------------------


def hash_animation(
    path: str,
    hasher: Hasher,
    *,
    fps: float = DEFAULT_FPS,
    max_pixels: int,
    expect: FileStat | None = None,
) -> HashedVideo | None:
    """An animated GIF or WebP as a clip (frames sampled at `fps` by their display times), or
    None when the file holds one frame: a still, which `imaging.hash_image` hashes."""
    from PIL import Image

    from dedupd.imaging import CorruptImage, TruncatedImage

    f, stat, sha256 = _open_checked(path, expect, max_pixels)
    with f:
        try:
            image = Image.open(f, formats=("GIF", "WEBP"))
        except Exception:
            return None  # not a GIF or WebP after all: imaging says what it is
        with image:
            if not getattr(image, "is_animated", False):
                return None
            width, height = image.size
            if width * height > max_pixels:
                raise _TooManyPixels(
                    path, f"{width}x{height} frames exceed max_pixels {max_pixels}"
                )
            frames = _Frames(hasher, fps)
            size = _small_size(width, height, hasher.draft_side)
            at = 0.0
            try:
                for frame in _each_frame(image):
                    # a GIF frame placed outside the picture grows it when seeked to
                    if frame.width * frame.height > max_pixels:
                        raise _TooManyPixels(
                            path,
                            f"a frame grows the picture to {frame.width}x{frame.height},"
                            f" more than max_pixels {max_pixels}",
                        )
                    if frames.due(at):
                        frames.add(frame.convert("RGB").resize(size, Image.Resampling.BOX), at)
                    at += max(float(frame.info.get("duration") or 100), 20.0) / 1000.0
            except OSError as exc:
                if "truncated" in str(exc):
                    raise TruncatedImage(path, str(exc)) from exc
                raise CorruptImage(path, f"cannot decode: {exc}") from exc
            except (SyntaxError, ValueError, EOFError) as exc:
                raise CorruptImage(path, f"cannot decode: {exc}") from exc
            except Image.DecompressionBombError as exc:  # a frame beyond Pillow's own limit
                raise _TooManyPixels(path, str(exc)) from exc
            format_name = image.format or "GIF"
        _unchanged(path, f, stat)
    return HashedVideo(
        stat=stat,
        sha256=sha256,
        width=width,
        height=height,
        format=format_name,
        taken_at=None,
        duration=round(at, 3),
        key=video_key(hasher, fps),
        frames=tuple(frames.hashes),
        times=tuple(frames.times),
        sampled=frames.sampled,
    )


def _each_frame(image: Image.Image) -> Iterator[Image.Image]:
    """Every frame of an animation in order, one decoded at a time."""
    from PIL import ImageSequence

    yield from ImageSequence.Iterator(image)
