"""A scanned library with photos in quarantine and a reported group, and `dedupctl review`
run as a user runs it: a process of its own, whose URL is read from its output."""

from __future__ import annotations

import http.client
import os
import re
import select
import signal
import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlsplit

from click.testing import CliRunner

from dedupd.cli import dedupd
from tests import photos

REPO = Path(__file__).parent.parent
DEDUPCTL = "from dedupd.cli import dedupctl; dedupctl()"


@dataclass
class Library:
    tmp: Path
    photos: Path  # policy camera: duplicates are quarantined
    shared: Path  # policy look: duplicates are only reported
    quarantine: Path
    db: Path
    config: Path

    def files(self) -> set[Path]:
        """Every file under the photo folders and the quarantine."""
        return {
            p
            for top in (self.photos, self.shared, self.quarantine)
            for p in top.rglob("*")
            if p.is_file()
        }


def make_library(tmp: Path) -> Library:
    """Scanned: coffee-wa.jpg (near) and astronaut (1).jpg (exact) quarantined beside their
    keepers in photos/; shared/chelsea-rotated.jpg and shared/chelsea.jpg a reported group."""
    lib = Library(
        tmp,
        tmp / "photos",
        tmp / "shared",
        tmp / "quarantine",
        tmp / "dedupd.db",
        tmp / "dedupd.yaml",
    )
    for name in ("coffee", "astronaut", "hubble"):
        photos.copy(photos.photo(name), lib.photos / f"{name}.jpg")
    photos.reencode(photos.photo("coffee"), lib.photos / "chat" / "coffee-wa.jpg")
    photos.copy(photos.photo("astronaut"), lib.photos / "astronaut (1).jpg")
    photos.copy(photos.photo("chelsea"), lib.shared / "chelsea.jpg")
    photos.exif_rotated(photos.photo("chelsea"), lib.shared / "chelsea-rotated.jpg")
    lib.config.write_text(
        f"database: {lib.db}\n"
        f"socket: {tmp / 'no-daemon.sock'}\n"
        "roots:\n"
        f"  - {{path: {lib.photos}, policy: camera}}\n"
        f"  - {{path: {lib.shared}, policy: look}}\n"
        "policies:\n"
        "  camera: {exact: quarantine, near: quarantine}\n"
        "  look: {exact: report, near: report}\n"
        f"quarantine: {{path: {lib.quarantine}}}\n"
    )
    result = CliRunner().invoke(dedupd, ["scan", "--config", str(lib.config), "--workers", "1"])
    assert result.exit_code == 0, result.output
    return lib


@dataclass
class Review:
    process: subprocess.Popen[str]
    url: str  # as printed, with the token
    port: int
    token: str

    @property
    def base(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def request(
        self,
        method: str,
        path: str,
        body: bytes | None = None,
        headers: dict[str, str] | None = None,
    ) -> tuple[int, dict[str, str], bytes]:
        conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=60)
        try:
            conn.request(method, path, body=body, headers=headers or {})
            response = conn.getresponse()
            return response.status, dict(response.getheaders()), response.read()
        finally:
            conn.close()

    def cookie(self) -> str:
        return f"dedupd_review_{self.port}={self.token}"


def start_review(config: Path, *args: str) -> Review:
    """Start `dedupctl --config CONFIG review --port 0 --no-open` and read its URL line."""
    process = subprocess.Popen(
        [
            sys.executable,
            "-c",
            DEDUPCTL,
            "--config",
            str(config),
            "review",
            "--port",
            "0",
            "--no-open",
            *args,
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env={**os.environ, "PYTHONPATH": str(REPO)},
    )
    assert process.stdout is not None
    ready, _, _ = select.select([process.stdout], [], [], 60)
    line = process.stdout.readline() if ready else ""
    found = re.fullmatch(
        r"review page: (http://127\.0\.0\.1:(\d+)/\?token=(\S+))  \(Ctrl-C to stop\)\n", line
    )
    if found is None:
        process.kill()
        _, err = process.communicate(timeout=30)
        raise AssertionError(f"no URL line: {line!r}; stderr: {err}")
    url = found.group(1)
    assert urlsplit(url).hostname == "127.0.0.1"
    return Review(process, url, int(found.group(2)), found.group(3))


def stop_review(review: Review, signum: int = signal.SIGTERM) -> tuple[int, str]:
    """Send `signum`; return the exit code and what it wrote on stderr."""
    if review.process.poll() is None:
        review.process.send_signal(signum)
    try:
        _, err = review.process.communicate(timeout=30)
    except subprocess.TimeoutExpired:
        review.process.kill()
        raise
    return review.process.returncode, err


@contextmanager
def reviewing(config: Path, *args: str) -> Iterator[Review]:
    review = start_review(config, *args)
    try:
        yield review
    finally:
        stop_review(review)
