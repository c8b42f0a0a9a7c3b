"""Whether two clips show the same footage and play the same sound: the check a clip match
passes before it moves a clip, as `likeness` is for photos.

Frame hashes sampled once a second find a clip's copies; they cannot tell a copy from an edit
of it. Burned-in subtitles, a logo, a face blurred, a colour grade, a voice-over or music laid
on it: each leaves the frames' 16x16 hashes within the threshold, and the edit, moved to the
quarantine and purged a month later, would be lost (found by a red-team run: a clip with a
sound track added moved as a copy of the silent one). So before a clip match moves a clip, a
hasher worker (never the daemon: `pool`) looks at both clips, every second of each:

- **the picture**: at each moment (one a second, `MOMENTS` at most, spread over the clip; and
  each sampled frame whose hash found no match in the other, up to `UNMATCHED`: the seconds
  a clip match lets differ), the frame shown then, upright, letterbox bars trimmed, at most
  `SIDE` px, against the other clip's frames around the time their hashes align it with
  (`WINDOW` seconds either way; the one most like it, at 64 px), compared pixel by pixel as
  photos are (`likeness.compare`: every `likeness.CELL` px cell, colour included; at most
  `MAX_CELL_SHARE` percent of a cell may differ);
- **the sound**: around the middle of each second, on each sound track, its level in `BANDS`
  frequency bands every `SOUND_BLOCK` seconds over `SOUND_SPAN` seconds either way against
  the other's track of the same number at the aligned time (give or take `SOUND_LAG` and
  one gain): a second with sound the other lacks (no such track, silence, other sound) is
  not shown; a silent one has nothing to lose;
- **the tracks**: a clip with more video or subtitle tracks than the other (a second camera,
  subtitles) is not shown at all: only its first video track is compared.

Every moment counted once (a caption or a sentence of 3 s between two of 24 even moments of
a long clip moved, and so did a second sound track, a second camera, subtitles: red team 8).
The result is a `Likeness` whose `cover` is, for each clip, the share of what was looked at
that the other shows, and `unshown` the first it does not; `refusal` moves a clip only when
the clip kept shows all of it. Both directions are measured in one go (the decision may turn
either way by the time the result is back), `BATCH` moments at a time so that memory stays
bounded: each clip is decoded about twice (its sound once more), seeking to the frames
wanted when they lie far apart. That is about a clip's length in CPU time for a 1080p clip:
a clip whose comparison outlasts `hashing.timeout` is not compared, and stays.
"""

from __future__ import annotations

import functools
import math
import os
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, BinaryIO, NamedTuple

from dedupd.errors import ImageError
from dedupd.filestat import FileStat, HashedVideo, Likeness

if TYPE_CHECKING:
    import numpy as np
    import numpy.typing as npt
    from PIL import Image

    from dedupd.hashers import Hasher

__all__ = [
    "MAX_CELL_SHARE",
    "MOMENTS",
    "SIDE",
    "UNMATCHED",
    "compare_clips",
    "refusal",
]

# Moments compared per clip, at most: one a second up to 10 minutes (an edit of 3 s between
# two moments of a long clip moved when they were 24: a caption, a sticker; red team 8).
MOMENTS = 600
UNMATCHED = 48  # moments more, at most: where the clip's frame hashes found no match
BATCH = 48  # moments whose frames are held at once (each ~0.7 MB at SIDE px, and its pick)
# Percent of a cell's pixels that may differ (photos: `likeness.MAX_CELL_SHARE`, 1%). A video
# codec at a chat app's bitrate smears a moving picture more than a JPEG re-save: on
# bench/video.py's clips a re-encode at crf 36 (a keyframe every 250 frames) differed in up
# to 3.5% of a cell, and every edit in 16% (a greyscale copy) to 60% (subtitles) and more.
MAX_CELL_SHARE = 8.0
SIDE = 640  # long side, in px, of the frames compared (the smaller clip's own if less)
# Seconds either side of the time a moment's hashes align it with, where the other clip's
# frame most like it is looked for: the hashes are sampled a second apart, and a re-encode may
# shift its frames by one.
WINDOW = 0.6
_PICK = 64  # px: the side both frames are reduced to, to pick the one most like a moment
_PICK_SIDE = 160  # px: the long side a frame is decoded to for that
_HALF = 0.5  # s either side of a moment: the frames of its second, looked at by `_between`
_BETWEEN = 0.2  # s either side of where such a frame aligns: the other's frames it may be
_UNLIKE = 0.3  # mean difference of standardised levels at _PICK px: like no frame of the other
_SEEK_AHEAD = 2.0  # s: a wanted frame further ahead than this is sought, not decoded to
# Sound: loudness (RMS, dB of full scale) of the mono mix at _SOUND_RATE, every SOUND_BLOCK s.
SOUND_BLOCK = 0.05
SOUND_SPAN = 0.5  # s either side of a moment
SOUND_LAG = 0.1  # s: a copy's sound may be shifted this much against its frames
SILENT = -50.0  # dBFS: quieter throughout a moment's span, it has no sound to lose
_FLOOR = -60.0  # dBFS: quieter is all one (a codec's noise floor)
# Two spans of sound (a second around a moment, every block of each channel's bands) part
# when more than SOUND_CELLS of their band levels differ by more than SOUND_PART dB, once one
# gain is taken out and every level is raised to _BAND_RANGE dB under the loudest of the two
# (a codec drops what is quiet). Calibrated on sound made for it (tests/clips.py's tones,
# the red team's chords, music, noise, voice and birdsong), kept at AAC 128 kbit/s against
# its copy at 32: the copies had 2 such levels at most in any second (of 800); other music,
# the same an octave up, a voice 10 to 14 dB under music or at the level of steady noise, a
# tone laid on one band, chirps at 5-7 kHz, 20 and more. A percentile of the differences
# (the 97th, 10 dB) missed the chirps: they take a few levels at a time.
SOUND_PART = 15.0
SOUND_CELLS = 8
_BAND_RANGE = 30.0
# Hz: what is above half of it is not compared (8 kHz let a birdsong at 5-7 kHz laid on a
# clip pass: red team 10)
_SOUND_RATE = 16000
BANDS = 20  # frequency bands whose levels are compared, per channel
_LOW_HZ = 100.0
_FFT = 1024


def refusal(likeness: Likeness, *, moving_is_newcomer: bool) -> str | None:
    """Why a clip match must not move a clip after the two were compared, or None when it may.
    `moving_is_newcomer`: which of the two would move."""
    if likeness.error is not None:
        return f"clips not compared ({likeness.error}): a clip match moves nothing unchecked"
    moving, kept = (0, 1) if moving_is_newcomer else (1, 0)
    if likeness.cover[moving] < 1.0:
        return (
            f"the clip kept does not show all of the one that would move"
            f" ({likeness.unshown[moving]}): a different or edited clip"
        )
    if likeness.sides[kept] * 2 < likeness.sides[moving]:
        return (
            f"the clip kept ({likeness.sides[kept]} px) is less than half as sharp as the one"
            f" that would move ({likeness.sides[moving]} px): its detail cannot be checked"
        )
    return None


def compare_clips(
    path: str,
    clip: HashedVideo,
    other_path: str,
    other: HashedVideo,
    hasher: Hasher,
    max_pixels: int,
) -> Likeness:
    """Compare clip `path` (hashed as `clip`) with `other_path` (hashed as `other`), each the
    version its stat names. Never raises for a file: what went wrong is the likeness's
    `error`."""
    try:
        with _Reader(path, clip.stat) as mine, _Reader(other_path, other.stat) as theirs:
            return _compare(mine, clip, theirs, other, hasher.radius(hasher.default_threshold))
    except ImageError as exc:
        return Likeness(math.inf, error=f"{exc.kind}: {exc.detail}")
    except MemoryError:
        return Likeness(math.inf, error="out of memory")
    except Exception as exc:  # a decoder bug: this pair stays where it is
        return Likeness(math.inf, error=f"internal: {type(exc).__name__}: {exc}")


@dataclass
class _Side:
    """One clip's part of a comparison: its moments, where each lies in the other clip (the
    candidate times), its frames at its moments, and the other's frames picked for them."""

    clip: HashedVideo
    matched: list[tuple[float, float]]  # (time here, time there) of its frames found there
    moments: list[float]
    aligned: list[list[float]]  # per moment: times in the other clip it may be at
    frames: list[Image.Image | None]
    smalls: list[npt.NDArray[np.float32] | None]  # the same, to pick by (`_Shown.small`)
    picked: list[tuple[float, Image.Image] | None]  # (how unlike, frame) of the other's
    sound: list[_Loudness | None] = field(default_factory=list)  # per audio track
    streams: _Streams | None = None


def _compare(
    mine: _Reader, clip: HashedVideo, theirs: _Reader, other: HashedVideo, radius: int
) -> Likeness:
    a = _side(clip, other, radius)
    b = _side(other, clip, radius)
    a.streams, b.streams = mine.streams(), theirs.streams()
    a.sound, b.sound = mine.loudness(), theirs.loudness()
    cover, unshown, worst = [], [], 0.0
    for side, of, own, others in ((a, b, mine, theirs), (b, a, theirs, mine)):
        missing: list[tuple[float, str]] = []  # (when, why) of what `of` does not show
        more = _more_streams(side)
        if more is not None:
            missing.append((0.0, more))
        # BATCH moments at a time: this clip's frames at them, then the other's around where
        # they align, compared, and let go (600 frames of 640 px held at once: 800 MB)
        for start in range(0, len(side.moments), BATCH):
            batch = range(start, min(start + BATCH, len(side.moments)))
            here = _at(own, side, batch)
            there = _pick(others, side, batch)
            unlike = _between(side, here, there)
            if unlike is not None:
                missing.append(unlike)
            del here, there
            for i in batch:
                why, measured = _moment(side, of, i)
                worst = max(worst, measured)
                if why is not None:
                    missing.append((side.moments[i], why))
                side.frames[i] = side.smalls[i] = side.picked[i] = None
        # over its sound too, where it runs longer than its picture (review: 50 s of sound
        # after 10 s of picture were never compared)
        # (less SOUND_SPAN: an encoder pads the sound's end with a few ms of its own)
        heard = [track.end - SOUND_SPAN for track in side.sound if track is not None]
        seconds = _seconds(max([side.clip.duration, *heard]))
        for t in seconds:
            why = _heard(side, of, t)
            if why is not None:
                missing.append((t, why))
        looked = len(side.moments) + len(seconds) + 1
        cover.append(0.0 if more else 1.0 - len(missing) / looked)
        first = min(missing, default=None)
        unshown.append("" if first is None else f"at {first[0]:.1f} s: {first[1]}")
    sides = (_long_side(clip), _long_side(other))
    return Likeness(worst, (cover[0], cover[1]), SIDE, sides, unshown=(unshown[0], unshown[1]))


def _seconds(duration: float) -> list[float]:
    """Where a clip's sound is compared: the middle of each of its seconds."""
    return [i + 0.5 for i in range(max(1, math.ceil(duration)))]


def _more_streams(side: _Side) -> str | None:
    """Why `of`'s clip cannot be known to hold all of `side`'s by its tracks: only the first
    video track is compared, and the sound tracks (each with the one of its number: `_heard`),
    so a second video track (another camera), a subtitle track, an attachment (a letter in
    an MKV) or a data track (GPS) is what nothing compares, and such a clip never moves by a
    clip match (red team 10: a second camera and an attachment went, the other clip having
    as many tracks of its own). A phone's own file, with its data tracks, is only reported."""
    if side.streams is None:
        return None
    for kind, count, allowed in (
        ("video", side.streams.video, 1),
        ("subtitle", side.streams.subtitles, 0),
        ("attachment or data", side.streams.other, 0),
    ):
        if count > allowed:
            return f"it has {count} {kind} tracks, which are not compared"
    return None


def _long_side(clip: HashedVideo) -> int:
    return max(clip.width, clip.height)


def _side(clip: HashedVideo, other: HashedVideo, radius: int) -> _Side:
    """`clip`'s part: its moments are the even ones (`_moments`) and the times of its sampled
    frames whose hash is in no frame of `other` (UNMATCHED at most, evenly chosen): the 5% of
    frames a clip match lets differ may be seconds of film the other lacks, and fall between
    two even moments of a long clip."""
    matched = _matched(clip, other, radius)
    found = {here for here, _ in matched}
    unmatched = [t for t in clip.times if t not in found]
    if len(unmatched) > UNMATCHED:
        step = len(unmatched) / UNMATCHED
        unmatched = [unmatched[int(i * step)] for i in range(UNMATCHED)]
    moments = sorted({*_moments(clip.duration), *unmatched})
    return _Side(
        clip,
        matched,
        moments,
        [_align(matched, t) for t in moments],
        [None] * len(moments),
        [None] * len(moments),
        [None] * len(moments),
    )


def _moments(duration: float) -> list[float]:
    """The times looked at in a clip of `duration` seconds: one a second, MOMENTS at most,
    each in the middle of its share of the clip."""
    n = max(1, min(MOMENTS, math.ceil(duration)))
    return [round((i + 0.5) * duration / n, 3) for i in range(n)]


def _matched(clip: HashedVideo, other: HashedVideo, radius: int) -> list[tuple[float, float]]:
    """(time in `clip`, time in `other`) of each kept frame of `clip` whose hash is within
    `radius` bits of one of `other`'s (the nearest), in time order."""
    import numpy as np

    if not clip.frames or not other.frames:
        return []
    mine = np.frombuffer(b"".join(clip.frames), np.uint8).reshape(len(clip.frames), -1)
    theirs = np.frombuffer(b"".join(other.frames), np.uint8).reshape(len(other.frames), -1)
    out = []
    for at, bits in zip(clip.times, mine, strict=True):
        distances = np.bitwise_count(np.bitwise_xor(theirs, bits)).sum(axis=1)
        nearest = int(distances.argmin())
        if int(distances[nearest]) <= radius:
            out.append((at, other.times[nearest]))
    return out


def _align(matched: Sequence[tuple[float, float]], t: float) -> list[float]:
    """Where moment `t` of a clip may be in the other (`matched`: its kept frames found there):
    through its matched frames just before and just after `t`, shifted by as much as `t` is
    from them (two, so that a moment beside a cut finds the side it is on). Empty when none
    of its frames is in the other clip."""
    before = [m for m in matched if m[0] <= t]
    after = [m for m in matched if m[0] > t]
    near = ([before[-1]] if before else []) + ([after[0]] if after else [])
    return sorted({round(there + (t - here), 3) for here, there in near})


def _at(reader: _Reader, side: _Side, batch: range) -> list[tuple[float, int, Any]]:
    """The frame shown at each of `side`'s moments in `batch` (the first at or after it,
    within WINDOW); and every frame of the moments' seconds (within _HALF of each), as
    (time, moment, `_Shown.small`), to be looked at coarsely (`_between`)."""
    spans = [(side.moments[i] - _HALF, side.moments[i] + WINDOW) for i in batch]
    seen = []
    for at, shown in reader.frames(spans):
        for i in batch:
            t = side.moments[i]
            if side.frames[i] is None and t - 1e-6 <= at <= t + WINDOW:
                side.frames[i] = shown.image()
                side.smalls[i] = shown.small()
            if t - _HALF <= at < t + _HALF:
                seen.append((at, i, shown.small()))
    return seen


def _pick(reader: _Reader, side: _Side, batch: range) -> list[tuple[float, Any]]:
    """One pass over `reader`'s clip (the other one): for each of `side`'s moments in
    `batch`, the frame around its aligned times most like the moment's frame; and every
    frame of the other clip around those times, as (time, `_Shown.small`), in time order."""
    import numpy as np

    reach = max(WINDOW, _HALF + _BETWEEN)
    spans = [(t - reach, t + reach) for i in batch for t in side.aligned[i]]
    theirs = []
    for at, shown in reader.frames(spans):
        theirs.append((at, shown.small()))
        for i in batch:
            target = side.smalls[i]
            if target is None or not any(abs(at - t) <= WINDOW for t in side.aligned[i]):
                continue
            unlike = float(np.abs(shown.small() - target).mean())
            best = side.picked[i]
            if best is None or unlike < best[0]:
                side.picked[i] = (unlike, shown.image())
    return theirs


def _between(
    side: _Side, seen: list[tuple[float, int, Any]], theirs: list[tuple[float, Any]]
) -> tuple[float, str] | None:
    """The first frame of `seen` (this clip's frames between its moments) that none of the
    other clip's frames within _BETWEEN s of where it aligns looks like (at _PICK px: a
    mean difference of standardised levels over _UNLIKE), and why; None when each has one.
    A title card flashed for 0.3 s between two moments moved (red team 9); a small edit
    that short still passes at this size."""
    import bisect

    import numpy as np

    times = [at for at, _ in theirs]
    for u, i, small in seen:
        best = math.inf
        for there in side.aligned[i]:
            want = there + (u - side.moments[i])
            lo = bisect.bisect_left(times, want - _BETWEEN)
            hi = bisect.bisect_right(times, want + _BETWEEN)
            for _, other in theirs[lo:hi]:
                best = min(best, float(np.abs(small - other).mean()))
        if best > _UNLIKE:
            return u, "its frame there is like none of the other clip's"
    return None


def _standard(frame: Image.Image) -> npt.NDArray[np.float32]:
    """`frame` at _PICK x _PICK grey, levels standardised: what picks the frame most like a
    moment's among a window's (a colour grade or a brightness change still picks the right
    one)."""
    import numpy as np
    from PIL import Image

    grey = np.asarray(frame.convert("L").resize((_PICK, _PICK), Image.Resampling.BOX), np.float32)
    standard: npt.NDArray[np.float32] = (grey - grey.mean()) / max(float(grey.std()), 1.0)
    return standard


class _Shown:
    """A frame as it is shown (upright, letterbox bars trimmed), made from the decoded frame
    only as far as it is looked at: at `_PICK_SIDE` px to pick the one most like a moment's
    (most frames of a window are only that), at SIDE px to compare."""

    def __init__(self, make: Callable[[int], Image.Image]):
        self._make = make
        self._image: Image.Image | None = None
        self._small: npt.NDArray[np.float32] | None = None

    def image(self) -> Image.Image:
        if self._image is None:
            self._image = self._make(SIDE)
        return self._image

    def small(self) -> npt.NDArray[np.float32]:
        """Always made at _PICK_SIDE px (bars trimmed at that size), whatever is made already:
        frames are picked by what they look like made alike."""
        if self._small is None:
            self._small = _standard(self._make(_PICK_SIDE))
        return self._small


def _moment(side: _Side, of: _Side, i: int) -> tuple[str | None, float]:
    """Whether moment `i` of `side`'s clip is shown by `of`'s: None, or why not; and the
    largest share of a cell whose pixels differ (0 when none were compared)."""
    from dedupd import likeness

    if not side.aligned[i]:
        return "no frame near it is in the other clip", 0.0
    if all(a < -WINDOW or a > of.clip.duration + WINDOW for a in side.aligned[i]):
        return "it lies beyond the other clip's ends", 0.0
    frame, picked = side.frames[i], side.picked[i]
    if frame is None:
        return "its frame could not be decoded", 0.0
    if picked is None:
        return "no frame of the other clip could be decoded there", 0.0
    found = likeness.compare(_pixels(frame), _pixels(picked[1]), frame_onto_frame=True)
    if found.error is not None:
        return f"the frames do not line up ({found.error})", 0.0
    if found.worst > MAX_CELL_SHARE:
        return (
            f"the frames differ ({found.worst:.1f}% of a {likeness.CELL} px cell)",
            found.worst,
        )
    if found.colours:
        return f"the frames' colours differ ({found.colours})", found.worst
    if found.cover[0] < likeness.MIN_COVER:
        return f"the other frame shows only {found.cover[0]:.0%} of it", found.worst
    return None, found.worst


def _pixels(frame: Image.Image) -> npt.NDArray[np.float32]:
    import numpy as np

    return np.asarray(frame.convert("YCbCr"), np.float32)


def _heard(side: _Side, of: _Side, t: float) -> str | None:
    """Why `of`'s clip does not play what `side`'s plays around `t` (on each sound track,
    against the other's track of the same number, at the times `t` aligns with), or None
    when it does (or when this one is silent there)."""

    at = _align(side.matched, t)
    for track, mine in enumerate(side.sound):
        number = f" {track + 1}" if track else ""
        own = None if mine is None else mine.around(t, 0)
        if own is None and (mine is None or mine.broken):
            # what could not be decoded is not known to be silent
            return f"its sound track{number} could not be decoded there"
        if own is None or float(own[:, 0].max()) < SILENT:
            continue  # no sound here to lose
        theirs = of.sound[track] if track < len(of.sound) else None
        if theirs is None:
            return f"it has sound; the other clip has no sound track{number}"
        if not at:
            return "it has sound where no frame of it is in the other clip"
        lag = round(SOUND_LAG / SOUND_BLOCK)
        best, quiet = math.inf, True
        for there in at:
            for shift in range(-lag, lag + 1):
                other = theirs.around(there, shift)
                if other is None:
                    continue
                quiet = quiet and float(other[:, 0].max()) < SILENT
                best = min(best, _apart(own, other))
        if quiet:
            return "it has sound; the other clip is silent there"
        if best > SOUND_CELLS:
            part = f"{best:.0f} of its band levels by more than {SOUND_PART:g} dB"
            return f"its sound differs ({part})"
    return None


def _apart(own: npt.NDArray[np.float64], other: npt.NDArray[np.float64]) -> float:
    """How far two spans of sound part: how many of their band levels (every block, band and
    channel) differ by more than SOUND_PART dB once one gain is taken out, each level no
    lower than _BAND_RANGE under the loudest of the two."""
    import numpy as np

    a, b = own[:, 1:], other[:, 1:]
    floor = max(float(a.max()), float(b.max())) - _BAND_RANGE
    d = np.maximum(a, floor) - np.maximum(b, floor)
    return float((np.abs(d - np.median(d)) > SOUND_PART).sum())


class _Streams(NamedTuple):
    video: int
    subtitles: int
    other: int  # attachments (a file inside an MKV), data tracks (GPS, timecode)


class _Loudness:
    """A clip's sound every SOUND_BLOCK seconds from `start`: per block, its loudness (dBFS,
    column 0) and the level of each of `BANDS` frequency bands (dB, columns 1 and on)."""

    def __init__(self, start: float, levels: npt.NDArray[np.float64], *, broken: bool = False):
        self.start, self.levels = start, levels
        self.broken = broken  # decoding stopped at a bad packet: what follows is unknown

    @property
    def end(self) -> float:
        return self.start + len(self.levels) * SOUND_BLOCK

    def around(self, t: float, shift: int) -> npt.NDArray[np.float64] | None:
        """The blocks over SOUND_SPAN either side of `t`, `shift` blocks later; None when that
        span lies wholly outside the sound (blocks outside it count as silent)."""
        import numpy as np

        half = round(SOUND_SPAN / SOUND_BLOCK)
        middle = round((t - self.start) / SOUND_BLOCK) + shift
        lo, hi = middle - half, middle + half
        if hi <= 0 or lo >= len(self.levels):
            return None
        out = np.full((hi - lo, self.levels.shape[1]), _FLOOR - 20.0)
        a, b = max(lo, 0), min(hi, len(self.levels))
        out[a - lo : b - lo] = self.levels[a:b]
        return out


def _blocks(samples: npt.NDArray[np.float32]) -> npt.NDArray[np.float64]:
    """Blocks of samples at _SOUND_RATE (channels x blocks x SOUND_BLOCK s) → per block, the
    loudest channel's loudness (dBFS) and each channel's band levels (dB, `BANDS` bands
    spaced evenly in pitch between _LOW_HZ and _SOUND_RATE/2): what `_heard` compares.
    Loudness alone let other music at the same level, or a voice over steady noise, pass for
    the same sound (red team 9)."""
    import numpy as np

    rms = np.sqrt(np.mean(np.square(samples, dtype=np.float64), axis=2))
    loud = 20 * np.log10(np.maximum(rms.max(axis=0), 1e-6))
    window = np.hanning(samples.shape[2])
    spectrum = np.abs(np.fft.rfft(samples * window, n=_FFT, axis=2)) ** 2
    edges = _band_edges()
    bands = np.add.reduceat(spectrum, edges[:-1], axis=2)[:, :, : len(edges) - 1]
    level = 10 * np.log10(np.maximum(bands / samples.shape[2], 1e-12))
    out: npt.NDArray[np.float64] = np.column_stack([loud, *level])
    return out


@functools.cache
def _band_edges() -> npt.NDArray[np.intp]:
    import numpy as np

    hz = np.geomspace(_LOW_HZ, _SOUND_RATE / 2, BANDS + 1)
    edges: npt.NDArray[np.intp] = np.unique(np.round(hz / (_SOUND_RATE / _FFT)).astype(np.intp))
    return edges


# -- reading -----------------------------------------------------------------------------------


class _Reader:
    """One clip file, opened once (safely, never through a symlink) and checked to be the
    version `stat` names; frames read from it in passes, its sound once."""

    def __init__(self, path: str, stat: FileStat):
        self.path, self.stat = path, stat
        self._file: BinaryIO | None = None

    def __enter__(self) -> _Reader:
        from dedupd.imaging import ChangedWhileReading, open_regular

        self._file = open_regular(self.path)
        if FileStat.of(os.fstat(self._file.fileno())) != self.stat:
            self._file.close()
            raise ChangedWhileReading(self.path, "the file changed since it was hashed")
        self.is_video = _is_video(self.path)
        return self

    def __exit__(self, *exc: object) -> None:
        if self._file is not None:
            self._file.close()

    def _rewound(self) -> BinaryIO:
        from dedupd.video import _unchanged

        assert self._file is not None  # entered
        _unchanged(self.path, self._file, self.stat)
        self._file.seek(0)
        return self._file

    def frames(self, spans: Sequence[tuple[float, float]]) -> Iterator[tuple[float, _Shown]]:
        """The frames shown within `spans` (seconds), in time order: upright, letterbox bars
        trimmed, at most SIDE px on the long side."""
        merged = _merged(spans)
        if not merged:
            return iter(())
        if self.is_video:
            return self._video_frames(merged)
        return self._animation_frames(merged)

    def _video_frames(
        self, spans: list[tuple[float, float]]
    ) -> Iterator[tuple[float, _Shown]]:
        import av

        from dedupd.video import _open

        with _open(av, self._rewound(), self.path) as container:
            stream = container.streams.video[0]
            stream.codec_context.thread_type = "AUTO"  # rare, and held to hashing.timeout
            base, start = stream.time_base, stream.start_time or 0
            if base is None:
                return
            # each span is sought at most once: a keyframe more than _SEEK_AHEAD before it
            # is decoded from, never sought again (that looped for good: review)
            i, last, sought = 0, -math.inf, -1
            while i < len(spans):
                if spans[i][0] > last + _SEEK_AHEAD and sought != i:
                    target = int(spans[i][0] / base) + start
                    container.seek(max(target, start), stream=stream, backward=True)
                    sought = i
                ahead = False
                for frame in container.decode(stream):
                    if frame.pts is None:
                        continue
                    at = max(0.0, float((frame.pts - start) * base))
                    last = at
                    while i < len(spans) and at > spans[i][1]:
                        i += 1
                    if i == len(spans):
                        return
                    if at >= spans[i][0]:
                        yield at, _Shown(functools.partial(_shown, frame))
                    elif spans[i][0] > at + _SEEK_AHEAD and sought != i:
                        ahead = True
                        break
                if not ahead:
                    return  # the end of the clip

    def _animation_frames(self, spans: list[tuple[float, float]]) -> Iterator[tuple[float, _Shown]]:
        from PIL import Image as PILImage
        from PIL import ImageSequence

        with PILImage.open(self._rewound(), formats=("GIF", "WEBP")) as image:
            at, i = 0.0, 0
            for frame in ImageSequence.Iterator(image):
                while i < len(spans) and at > spans[i][1]:
                    i += 1
                if i == len(spans):
                    return
                if at >= spans[i][0]:
                    rgb = frame.convert("RGB")  # now: the next frame is drawn over it
                    rgb = rgb.resize(_size(*rgb.size), PILImage.Resampling.BOX)
                    yield at, _Shown(functools.partial(_from_rgb, rgb))
                at += max(float(frame.info.get("duration") or 100), 20.0) / 1000.0

    def streams(self) -> _Streams:
        """How many video, subtitle, and attachment or data tracks the clip has."""
        if not self.is_video:
            return _Streams(1, 0, 0)
        import av

        from dedupd.video import _open

        with _open(av, self._rewound(), self.path) as container:
            s = container.streams
            return _Streams(
                len(s.video), len(s.subtitles), len(s.attachments) + len(s.data)
            )

    def loudness(self) -> list[_Loudness | None]:
        """The clip's sound, track by track (None for a track with nothing decodable)."""
        if not self.is_video:
            return []
        import av

        from dedupd.video import _open

        with _open(av, self._rewound(), self.path) as container:
            tracks = len(container.streams.audio)
        out = []
        for track in range(tracks):
            with _open(av, self._rewound(), self.path) as container:
                out.append(self._track(av, container.streams.audio[track], container))
        return out

    @staticmethod
    def _track(av: Any, stream: Any, container: Any) -> _Loudness | None:
        """One sound track's loudness, or None when nothing of it decodes."""
        import numpy as np

        base, first = stream.time_base, stream.start_time or 0
        # both channels (a voice laid on the side channel, L - R, cancels in a mono mix: red
        # team 10), a mono track as both
        resampler = av.AudioResampler(format="fltp", layout="stereo", rate=_SOUND_RATE)
        block = round(_SOUND_RATE * SOUND_BLOCK)
        levels: list[npt.NDArray[np.float64]] = []
        pending = np.zeros((2, 0), np.float32)
        start: float | None = None
        broken = False
        try:
            for frame in container.decode(stream):
                if start is None and frame.pts is not None and base is not None:
                    start = max(0.0, float((frame.pts - first) * base))
                for out in resampler.resample(frame):
                    pending = np.concatenate([pending, out.to_ndarray().reshape(2, -1)], axis=1)
                    whole = pending.shape[1] // block * block
                    if whole:
                        levels.append(_blocks(pending[:, :whole].reshape(2, -1, block)))
                        pending = pending[:, whole:]
        except av.FFmpegError:
            broken = True  # the sound up to a broken packet is what there is to compare
        if not levels:
            return None
        return _Loudness(start or 0.0, np.concatenate(levels), broken=broken)


# Pixel formats whose first plane is 8-bit luma: a frame's grey picture is read from it as it
# is, reduced by OpenCV, instead of being converted whole to RGB (swscale took 2.7 ms a 1080p
# frame for the 160 px picture that picks frames, most of a comparison's time).
_LUMA_FIRST = frozenset(
    ("yuv420p", "yuvj420p", "yuv422p", "yuvj422p", "yuv444p", "yuvj444p", "nv12", "nv21")
)


def _shown(frame: Any, side: int) -> Image.Image:
    """A decoded video frame at most `side` px on its long side, as it is shown: in colour,
    or grey when only picked by (`_PICK_SIDE`)."""
    from PIL import Image

    from dedupd.video import _upright, _without_bars

    width, height = _size(frame.width, frame.height, side)
    if side == _PICK_SIDE and frame.format.name in _LUMA_FIRST:
        import cv2
        import numpy as np

        plane = frame.planes[0]
        rows = np.frombuffer(plane, np.uint8).reshape(-1, plane.line_size)
        luma = np.ascontiguousarray(rows[: frame.height, : frame.width])
        grey = cv2.resize(luma, (width, height), interpolation=cv2.INTER_AREA)
        return _without_bars(_upright(Image.fromarray(grey), frame.rotation))
    small = frame.reformat(width=width, height=height, format="rgb24")
    return _without_bars(_upright(small.to_image(), frame.rotation))


def _from_rgb(image: Image.Image, side: int) -> Image.Image:
    """An animation's frame (RGB, at most SIDE px) at most `side` px, as it is shown."""
    from PIL import Image

    from dedupd.video import _without_bars

    if max(image.size) > side:
        image = image.resize(_size(*image.size, side), Image.Resampling.BOX)
    return _without_bars(image)


def _is_video(path: str) -> bool:
    from dedupd.video import VIDEO_EXTENSIONS

    return path.rpartition(".")[2].lower() in VIDEO_EXTENSIONS


def _size(width: int, height: int, side: int = SIDE) -> tuple[int, int]:
    """(width, height) scaled so the long side is at most `side`, even numbers."""
    scale = min(1.0, side / max(1, width, height))
    return max(2, round(width * scale / 2) * 2), max(2, round(height * scale / 2) * 2)


def _merged(spans: Sequence[tuple[float, float]]) -> list[tuple[float, float]]:
    out: list[tuple[float, float]] = []
    for a, b in sorted(spans):
        if out and a <= out[-1][1]:
            out[-1] = (out[-1][0], max(out[-1][1], b))
        else:
            out.append((a, b))
    return out
