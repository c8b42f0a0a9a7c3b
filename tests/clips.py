"""Real video clips and the copies phones and chat apps make of them, encoded with PyAV.

A clip is a camera move (pan and zoom) over a real photo; its copies are transcodes of the
clip file itself (decoded and encoded again, as a chat app does): lower bitrate, resized,
greyscale, sepia, a logo, a trimmed start, a snippet cut out. Used by the tests (tiny clips)
and by bench/video.py (larger ones, 1080p for the cost).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from fractions import Fraction
from pathlib import Path
from typing import Any

import av
from PIL import Image, ImageDraw, ImageOps

Frame = Callable[[Image.Image], Image.Image]


def _view(photo: Image.Image, u: float, size: tuple[int, int]) -> Image.Image:
    """The camera's view at `u` (0-1 along its move) over `photo`, at `size`."""
    w, h = photo.size
    zoom = 1.5 + 0.4 * math.sin(2 * math.pi * u)
    cw = w / zoom
    ch = min(h, cw * size[1] / size[0])
    cx = cw / 2 + (w - cw) * u
    cy = ch / 2 + (h - ch) * (0.5 + 0.4 * math.sin(3 * math.pi * u)) / 1.0
    cy = min(max(cy, ch / 2), h - ch / 2)
    box = (cx - cw / 2, cy - ch / 2, cx + cw / 2, cy + ch / 2)
    return photo.resize(size, Image.Resampling.BILINEAR, box=box)


def _writer(
    dst: Path, size: tuple[int, int], fps: int, gop: int, crf: int, codec: str
) -> tuple[av.container.OutputContainer, av.video.stream.VideoStream]:
    dst.parent.mkdir(parents=True, exist_ok=True)
    out = av.open(str(dst), "w")
    stream = out.add_stream(codec, rate=fps)
    assert isinstance(stream, av.video.stream.VideoStream)
    stream.width, stream.height = size
    stream.pix_fmt = "yuv420p"
    if codec == "libx264":
        stream.options = {"crf": str(crf), "g": str(gop), "preset": "veryfast"}
    else:
        stream.options = {"g": str(gop)}
    return out, stream


def _encode(
    out: av.container.OutputContainer, stream: av.video.stream.VideoStream, im: Image.Image
) -> None:
    frame = av.VideoFrame.from_image(im.convert("RGB"))
    for packet in stream.encode(frame):
        out.mux(packet)


def _finish(out: av.container.OutputContainer, stream: av.video.stream.VideoStream) -> None:
    for packet in stream.encode():
        out.mux(packet)
    out.close()


def render(
    photo: Path,
    dst: Path,
    *,
    seconds: float,
    size: tuple[int, int] = (192, 108),
    fps: int = 10,
    gop: int | None = None,
    crf: int = 23,
    codec: str = "libx264",
    black_lead: float = 0.0,
) -> Path:
    """A clip of `seconds`: the camera moving over `photo` (a keyframe a second unless `gop`
    says otherwise), after `black_lead` seconds of black."""
    with Image.open(photo) as im:
        source = im.convert("RGB")
    out, stream = _writer(dst, size, fps, gop or fps, crf, codec)
    for _ in range(round(black_lead * fps)):
        _encode(out, stream, Image.new("RGB", size))
    n = round(seconds * fps)
    for i in range(n):
        _encode(out, stream, _view(source, i / max(1, n - 1), size))
    _finish(out, stream)
    return dst


def frames(src: Path) -> list[tuple[float, Image.Image]]:
    """Every frame of `src` with its time in seconds (small clips only: all in memory)."""
    out = []
    with av.open(str(src)) as c:
        stream = c.streams.video[0]
        base = stream.time_base or Fraction(1, 1)
        for frame in c.decode(stream):
            out.append((float((frame.pts or 0) * base), frame.to_image()))
    return out


def transcode(
    src: Path,
    dst: Path,
    *,
    size: tuple[int, int] | None = None,
    crf: int = 30,
    gop: int | None = None,
    keep: Sequence[tuple[float, float]] | None = None,
    frame: Frame | None = None,
    during: tuple[float, float] | None = None,
    fps: int | None = None,
    codec: str = "libx264",
) -> Path:
    """`src` decoded and encoded again: at `size`, quality `crf`, only the time spans `keep`
    (seconds, [start, end)), each frame passed through `frame` (greyscale, a logo...), or
    only those shown `during` ([start, end) seconds: a caption shown for a while)."""
    decoded = frames(src)
    with av.open(str(src)) as c:
        rate = c.streams.video[0].average_rate
    fps = fps or round(float(rate or 10))
    first = decoded[0][1]
    size = size or first.size
    out, stream = _writer(dst, size, fps, gop or fps, crf, codec)
    for at, im in decoded:
        if keep is not None and not any(a <= at < b for a, b in keep):
            continue
        if frame is not None and (during is None or during[0] <= at < during[1]):
            im = frame(im)
        _encode(out, stream, im.resize(size, Image.Resampling.BILINEAR))
    _finish(out, stream)
    return dst


def with_sound(
    src: Path,
    dst: Path,
    *,
    beats: float | None = 1.5,
    pitch: float = 440.0,
    crf: int = 30,
    size: tuple[int, int] | None = None,
    burst: tuple[float, float] | None = None,
    tracks: int = 1,
) -> Path:
    """`src` encoded again (at `size`) with a sound track (AAC, mono) as long as it: a tone of
    `pitch` Hz that sounds and stops `beats` times a second (a voice-over's rhythm, or a
    tune's), or silence when `beats` is None (a track with nothing on it); with `burst`
    (start, end in seconds), a loud 880 Hz tone laid over it then (a sentence spoken); with
    `tracks` 2, a second track of a steady 330 Hz tone (a commentary)."""
    import numpy as np

    decoded = frames(src)
    with av.open(str(src)) as c:
        fps = round(float(c.streams.video[0].average_rate or 10))
    size = size or decoded[0][1].size
    out, stream = _writer(dst, size, fps, fps, crf, "libx264")
    sounds = [out.add_stream("aac", rate=44100) for _ in range(tracks)]
    for _, im in decoded:
        _encode(out, stream, im.resize(size, Image.Resampling.BILINEAR))
    rate, chunk = 44100, 1024
    total = round(len(decoded) / fps * rate)
    for number, sound in enumerate(sounds):
        pieces: list[av.AudioFrame] = []
        for start in range(0, total, chunk):
            t = (np.arange(chunk) + start) / rate
            wave: np.ndarray
            if number:
                wave = 0.2 * np.sin(2 * math.pi * 330 * t)
            else:
                on = np.sin(2 * math.pi * t * beats) > 0 if beats else np.zeros(chunk, bool)
                wave = 0.3 * on * np.sin(2 * math.pi * pitch * t)
                if burst is not None:
                    wave = wave + 0.6 * ((t >= burst[0]) & (t < burst[1])) * np.sin(
                        2 * math.pi * 880 * t
                    )
            piece = av.AudioFrame.from_ndarray(
                wave.astype(np.float32).reshape(1, -1), format="fltp", layout="mono"
            )
            piece.sample_rate = rate
            pieces.append(piece)
        _sound(out, sound, pieces)
    _finish(out, stream)
    return dst


def _sound(out: av.container.OutputContainer, track: Any, pieces: list[av.AudioFrame]) -> None:
    """Encode `pieces` (audio frames, in order) into `track` and flush it."""
    for piece in pieces:
        piece.pts = None
        for packet in track.encode(piece):
            out.mux(packet)
    for packet in track.encode():
        out.mux(packet)


def chat_copy(src: Path, dst: Path, *, bitrate: int = 32_000, crf: int = 34) -> Path:
    """`src`, its picture and its first sound track, decoded and encoded again as a chat app
    sends a clip: a lower quality, the sound as AAC at `bitrate` bit/s."""
    decoded = frames(src)
    with av.open(str(src)) as c:
        fps = round(float(c.streams.video[0].average_rate or 10))
        sound = [f for f in c.decode(audio=0)]
        rate = c.streams.audio[0].rate
    out, stream = _writer(dst, decoded[0][1].size, fps, fps, crf, "libx264")
    track = out.add_stream("aac", rate=rate)
    track.bit_rate = bitrate
    for _, im in decoded:
        _encode(out, stream, im)
    _sound(out, track, sound)
    _finish(out, stream)
    return dst


def second_camera(src: Path, photo: Path, dst: Path) -> Path:
    """`src` encoded again with a second video track: a camera move over `photo` (another
    angle of the scene, as some cameras and editors store it)."""
    decoded = frames(src)
    size = decoded[0][1].size
    with Image.open(photo) as opened:
        other = opened.convert("RGB")
    out, stream = _writer(dst, size, 10, 10, 23, "libx264")
    angle = out.add_stream("libx264", rate=10)
    assert isinstance(angle, av.video.stream.VideoStream)
    angle.width, angle.height = size
    angle.pix_fmt = "yuv420p"
    for i, (_, im) in enumerate(decoded):
        _encode(out, stream, im)
        _encode(out, angle, _view(other, i / max(1, len(decoded) - 1), size))
    for packet in angle.encode():
        out.mux(packet)
    _finish(out, stream)
    return dst


def sideways(src: Path, dst: Path) -> Path:
    """`src` as a phone stores a clip filmed turned: every frame turned a quarter clockwise,
    and a display matrix telling players to turn it back (90 degrees counterclockwise)."""
    decoded = frames(src)
    w, h = decoded[0][1].size
    out, stream = _writer(dst, (h, w), 10, 10, 23, "libx264")
    stream.set_display_rotation(90)
    for _, im in decoded:
        _encode(out, stream, im.transpose(Image.Transpose.ROTATE_270))
    _finish(out, stream)
    return dst


def to_gif(src: Path, dst: Path, *, every: int = 2) -> Path:
    """`src` as an animated GIF (every `every`-th frame, timed as in the clip)."""
    decoded = frames(src)[::every]
    step = decoded[1][0] - decoded[0][0] if len(decoded) > 1 else 0.1
    images = [im.convert("P", palette=Image.Palette.ADAPTIVE) for _, im in decoded]
    dst.parent.mkdir(parents=True, exist_ok=True)
    images[0].save(
        dst, save_all=True, append_images=images[1:], duration=round(step * 1000), loop=0
    )
    return dst


# -- what copies do to a frame -----------------------------------------------------------------


def greyscale(im: Image.Image) -> Image.Image:
    return ImageOps.grayscale(im).convert("RGB")


def sepia(im: Image.Image) -> Image.Image:
    return ImageOps.colorize(ImageOps.grayscale(im), "#2b1b0e", "#f4e1c1")


def letterbox(im: Image.Image) -> Image.Image:
    """The frame shrunk into a 4:3 canvas between black bars, as an editor pads it."""
    w, h = im.size
    canvas = Image.new("RGB", (w, w * 3 // 4))
    canvas.paste(im, (0, (canvas.height - h) // 2))
    return canvas


def subtitles(im: Image.Image) -> Image.Image:
    """A line of burned-in subtitles: white text on a dark band in the lower third."""
    out = im.copy()
    w, h = out.size
    draw = ImageDraw.Draw(out)
    band = (w // 8, h * 3 // 4, w * 7 // 8, h * 3 // 4 + max(8, h // 10))
    draw.rectangle(band, fill="#202020")
    draw.text((band[0] + 4, band[1] + 1), "-- so that is where we went --", fill="white")
    return out


def logo(im: Image.Image) -> Image.Image:
    """A small opaque badge in a corner, as a chat app or an editor stamps it."""
    out = im.copy()
    w, h = out.size
    side = max(4, min(w, h) // 7)
    draw = ImageDraw.Draw(out)
    x0, y0 = w - side - w // 40, h - side - h // 40
    draw.rounded_rectangle((x0, y0, x0 + side, y0 + side), radius=side // 4, fill="#ff3366")
    draw.ellipse(
        (x0 + side // 4, y0 + side // 4, x0 + 3 * side // 4, y0 + 3 * side // 4), fill="white"
    )
    return out
