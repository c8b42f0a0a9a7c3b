"""Commands import only what they use (issue #8 item 5): behaviour, checked in fresh
interpreters through `sys.modules`, never by timing."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests import photos

REPO = Path(__file__).resolve().parent.parent

# What only decoding needs (Pillow, the HEIF plugin, ImageHash with scipy and PyWavelets),
# what only the ckdtree backend needs (scipy), and what only the daemon needs.
DECODING = ("PIL", "pillow_heif", "imagehash", "pywt", "scipy")
DAEMON = ("dedupd.daemon", "watchdog", "http.server")


def _modules_after(code: str, cwd: Path | None = None) -> dict[str, object]:
    """Run `code` in a fresh interpreter; return its JSON answer, plus the top-level and
    dedupd modules it ended up importing under "modules"."""
    script = (
        "import json, sys\n" + code + "\nprint(json.dumps({'answer': globals().get('answer'),"
        " 'modules': sorted(sys.modules)}))"
    )
    proc = subprocess.run(
        [sys.executable, "-c", script],
        capture_output=True,
        text=True,
        cwd=cwd or REPO,
        env={**os.environ, "PYTHONPATH": str(REPO)},
        check=False,
    )
    assert proc.returncode == 0, proc.stderr
    out: dict[str, object] = json.loads(proc.stdout.strip().splitlines()[-1])
    return out


def _loaded(modules: object, names: tuple[str, ...]) -> list[str]:
    assert isinstance(modules, list)
    return [n for n in names if n in modules]


def test_importing_the_cli_pulls_in_no_decoder_scipy_or_daemon() -> None:
    """`dedupd --help`, `dedupctl status` and every other command start from dedupd.cli;
    it must not import Pillow, ImageHash, scipy, numpy or the daemon's watchdog/server."""
    out = _modules_after("import dedupd.cli")
    assert _loaded(out["modules"], (*DECODING, *DAEMON, "numpy", "sqlite_utils")) == []


def test_dedupctl_help_and_scan_help_import_no_decoder() -> None:
    """Running the entry points for help (as a user does) stays as light as the import."""
    code = (
        "from dedupd.cli import dedupctl, dedupd\n"
        "for group, args in ((dedupctl, ['status', '--help']), (dedupd, ['scan', '--help'])):\n"
        "    try:\n"
        "        group(args, standalone_mode=False)\n"
        "    except SystemExit:\n"
        "        pass\n"
    )
    out = _modules_after(code)
    assert _loaded(out["modules"], (*DECODING, *DAEMON)) == []


@pytest.mark.slow
def test_an_unchanged_rescan_decodes_nothing_and_imports_no_decoder(tmp_path: Path) -> None:
    """The second `dedupd scan` of a folder whose files did not change reports the same
    groups without importing Pillow, ImageHash or scipy: nothing is decoded, so nothing
    that decodes is loaded. The first scan, which decodes, does so only in its workers."""
    root = tmp_path / "photos"
    photos.copy(photos.photo("coffee"), root / "a.jpg")
    photos.copy(photos.photo("coffee"), root / "b.jpg")
    photos.copy(photos.photo("rocket"), root / "c.jpg")
    (tmp_path / "empty.yaml").write_text("")
    code = (
        "import io, contextlib\n"
        "from dedupd.cli import dedupd\n"
        "buf = io.StringIO()\n"
        "with contextlib.redirect_stdout(buf):\n"
        f"    dedupd(['scan', {str(root)!r}, '--database', {str(tmp_path / 'd.db')!r},"
        " '--json', '--workers', '1'], standalone_mode=False)\n"
        "report = json.loads(buf.getvalue())\n"
        "answer = [report['hashed'], report['unchanged'], len(report['groups'])]\n"
    )
    first = _modules_after(code)
    assert first["answer"] == [3, 0, 1]
    # The first scan decodes, but only in its hasher workers: never in the scan's process.
    assert _loaded(first["modules"], ("PIL", "imagehash")) == []
    second = _modules_after(code)
    assert second["answer"] == [0, 3, 1]
    assert _loaded(second["modules"], (*DECODING, *DAEMON)) == []


def test_a_worker_that_imports_imaging_lazily_still_decodes_heic(tmp_path: Path) -> None:
    """The pool's work imports imaging only when it decodes; importing it registers the HEIF
    opener, so a fresh hashing process (nothing else imported Pillow) decodes a HEIC."""
    heic = photos.as_heic(photos.photo("rocket"), tmp_path / "rocket.heic")
    code = (
        "from dedupd.pool import hash_file\n"
        "from dedupd.filestat import FileStat\n"
        "from dedupd.hashers import Hasher\n"
        "import os\n"
        f"path = {str(heic)!r}\n"
        "result = hash_file(path, FileStat.of(os.stat(path)), (Hasher('phash', 16),), 10**9)\n"
        "answer = getattr(result, 'format', repr(result))\n"
    )
    assert _modules_after(code)["answer"] == "HEIF"
