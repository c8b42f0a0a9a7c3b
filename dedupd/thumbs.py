"""Small pictures of indexed photos, for the review page and the HTML report.

Made on demand from the original (or its quarantined copy) through `imaging.thumbnail`, the
same guarded read the hashers use (no symlink, only the allowed formats, within max_pixels),
and cached by the photo's sha256 under $XDG_CACHE_HOME/dedupd/thumbs: never beside a photo.
A file that is no picture dedupd reads (a video, an error record) gets a placeholder naming
what it is; it is never decoded.
"""

from __future__ import annotations

import base64
import html
import io
import os
import tempfile
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from dedupd import imaging
from dedupd.errors import ImageError

__all__ = [
    "MAX_SOURCE_BYTES",
    "PICTURE_FORMATS",
    "THUMB_SIDE",
    "Thumbnails",
    "cache_dir",
    "is_picture",
    "placeholder",
]

THUMB_SIDE = 320  # pixels across: two side by side fill a laptop's half screen
MAX_SOURCE_BYTES = 256 * 1024 * 1024  # a larger file is no photo to read for a thumbnail
# What Pillow calls the formats dedupd decodes (a multi-picture JPEG opens as MPO).
PICTURE_FORMATS = frozenset((*imaging.ALLOWED_FORMATS, "MPO"))


def cache_dir(env: Mapping[str, str] | None = None) -> Path:
    """$XDG_CACHE_HOME/dedupd/thumbs, else ~/.cache/dedupd/thumbs."""
    env = os.environ if env is None else env
    base = Path(env.get("XDG_CACHE_HOME") or Path("~/.cache").expanduser())
    return base / "dedupd" / "thumbs"


def is_picture(record: Mapping[str, Any]) -> bool:
    """Whether a file record (as `queries.file_json` gives it) is a photo to draw: a hashed
    file in one of the decoded formats. A video or an error record is not."""
    return record.get("sha256") is not None and record.get("format") in PICTURE_FORMATS


def placeholder(label: str) -> bytes:
    """An SVG tile that says what stands in place of a picture ("video", "unreadable")."""
    text = html.escape(label[:40])
    return (
        '<svg xmlns="http://www.w3.org/2000/svg" width="320" height="240" viewBox="0 0 320 240">'
        '<rect width="320" height="240" fill="#ddd"/>'
        '<text x="160" y="125" font-family="sans-serif" font-size="18" fill="#555"'
        f' text-anchor="middle">{text}</text></svg>'
    ).encode()


class _NotAPicture(ImageError):
    kind = "not_a_picture"


class Thumbnails:
    """JPEG thumbnails, cached in `cache` by sha256. Thread-safe: a cache entry is written
    under a temporary name and renamed into place. A cache inside one of `roots` (the photo
    folders) is not used at all: thumbnails are then made anew each time, never written
    where dedupd would index them."""

    def __init__(
        self,
        cache: Path,
        *,
        max_pixels: int,
        side: int = THUMB_SIDE,
        roots: Sequence[Path] = (),
    ):
        self.max_pixels, self.side = max_pixels, side
        where = Path(os.path.abspath(cache))
        inside = any(where.is_relative_to(os.path.abspath(r)) for r in roots)
        self.cache: Path | None = None if inside else where

    def _cached(self, sha256: str) -> Path | None:
        if self.cache is None:
            return None
        return self.cache / sha256[:2] / f"{sha256}-{self.side}.jpg"

    def jpeg(self, path: str, record: Mapping[str, Any]) -> bytes:
        """The thumbnail of the photo `record` describes, read from `path` (its place now:
        its folder or the quarantine). Raises an ImageError when there is none to make."""
        if not is_picture(record):
            raise _NotAPicture(path, f"{record.get('format') or 'unknown format'}: no picture")
        if (record.get("size") or 0) > MAX_SOURCE_BYTES:
            raise _NotAPicture(path, "too large for a thumbnail")
        sha256 = str(record["sha256"])
        cached = self._cached(sha256)
        if cached is not None:
            try:
                return cached.read_bytes()
            except OSError:
                pass
        # The size recorded is checked above; the file may have grown since (replaced).
        image, read = imaging.thumbnail(
            path, self.side, max_pixels=self.max_pixels, max_bytes=MAX_SOURCE_BYTES
        )
        out = io.BytesIO()
        image.save(out, format="JPEG", quality=82)
        data = out.getvalue()
        if cached is not None and read == sha256:  # a changed file's picture is not kept
            self._keep(cached, data)
        return data

    def _keep(self, cached: Path, data: bytes) -> None:
        try:
            cached.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
            fd, tmp = tempfile.mkstemp(dir=cached.parent, suffix=".tmp")
            with os.fdopen(fd, "wb") as f:
                f.write(data)
            os.replace(tmp, cached)
        except OSError:
            pass  # a cache that cannot be written only costs the next request a decode

    def picture(self, path: str | None, record: Mapping[str, Any] | None) -> tuple[bytes, str]:
        """(bytes, media type): the thumbnail, or a placeholder saying why there is none."""
        if path is None or record is None:
            return placeholder("not in the database"), "image/svg+xml"
        if not is_picture(record):
            label = "video" if _is_video(path) else (record.get("format") or "no picture")
            return placeholder(str(label)), "image/svg+xml"
        try:
            return self.jpeg(path, record), "image/jpeg"
        except ImageError as exc:
            return placeholder(exc.kind.replace("_", " ")), "image/svg+xml"

    def data_uri(self, path: str | None, record: Mapping[str, Any] | None) -> str:
        data, media = self.picture(path, record)
        return f"data:{media};base64,{base64.b64encode(data).decode('ascii')}"


_VIDEO_SUFFIXES = frozenset((".mov", ".mp4", ".m4v", ".3gp", ".avi", ".mkv", ".webm", ".mts"))


def _is_video(path: str) -> bool:
    return os.path.splitext(path)[1].lower() in _VIDEO_SUFFIXES
