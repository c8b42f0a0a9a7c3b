"""`dedupctl show --html` (one self-contained page of the groups) and `show --tsne` (the
t-SNE map of the indexed photos, with the `viz` extra, and a clear error without it)."""

from __future__ import annotations

import sys
from html.parser import HTMLParser
from pathlib import Path

import pytest
from click.testing import CliRunner
from PIL import Image

from dedupd import report
from dedupd.cli import dedupctl
from dedupd.thumbs import Thumbnails
from tests import photos
from tests.reviewing import Library, make_library


@pytest.fixture
def lib(tmp_path: Path) -> Library:
    return make_library(tmp_path)


class _Links(HTMLParser):
    """Every URL a page would load or link to."""

    def __init__(self) -> None:
        super().__init__()
        self.urls: list[tuple[str, str]] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        for name, value in attrs:
            if name in ("src", "href", "srcset", "poster", "data") and value is not None:
                self.urls.append((tag, value))


def _urls(text: str) -> list[tuple[str, str]]:
    parser = _Links()
    parser.feed(text)
    return parser.urls


def test_show_html_writes_one_page_whose_pictures_are_all_inline(
    lib: Library, tmp_path: Path
) -> None:
    out = tmp_path / "report.html"
    result = CliRunner().invoke(dedupctl, ["--config", str(lib.config), "show", "--html", str(out)])
    assert result.exit_code == 0, result.output
    assert result.stdout == f"wrote {out}: 1 duplicate group, thumbnails inline\n"
    text = out.read_text()
    urls = _urls(text)
    assert [tag for tag, _ in urls] == ["img", "img"]  # the group's keeper and its copy
    assert all(url.startswith("data:image/jpeg;base64,") for _, url in urls)
    assert "<link" not in text and "<script" not in text
    assert str(lib.shared / "chelsea-rotated.jpg") in text
    assert "1 photos in quarantine" not in text and "2 photos in quarantine" in text


def test_show_html_writes_a_name_that_is_not_utf8_as_its_bytes(
    lib: Library, tmp_path: Path
) -> None:
    """A copy whose name is not UTF-8 (Latin-1 é, from a Samba share) in a reported group:
    the page is written, the name as the bytes on disk (as text output prints it); it died
    with a UnicodeEncodeError traceback and wrote nothing."""
    import os

    from dedupd.cli import dedupd

    cafe = os.path.join(os.fsencode(lib.shared), b"caf\xe9.jpg")
    photos.copy(photos.photo("chelsea"), Path(os.fsdecode(cafe)))
    scanned = CliRunner().invoke(dedupd, ["scan", "--config", str(lib.config), "--workers", "1"])
    assert scanned.exit_code == 0, scanned.output
    out = tmp_path / "report.html"
    result = CliRunner().invoke(dedupctl, ["--config", str(lib.config), "show", "--html", str(out)])
    assert result.exit_code == 0, result.output
    assert cafe in out.read_bytes()


def test_the_html_report_escapes_names_and_shows_any_kind_and_videos_by_name(
    tmp_path: Path,
) -> None:
    """A file name is text, never markup, and its bidirectional overrides are escaped; a match
    kind the report does not know (added by a newer matcher) is shown by its name; a video
    gets a placeholder, never a decode."""
    keeper = photos.copy(photos.photo("coffee"), tmp_path / "<b>keeper</b>.jpg")
    clip = photos.copy(photos.photo("coffee"), tmp_path / "clip\u202evom.mov")

    def record(i: int, path: Path, fmt: str, **extra: object) -> dict[str, object]:
        return {
            "id": i,
            "path": str(path),
            "root": str(tmp_path),
            "size": 10,
            "width": 600,
            "height": 400,
            "format": fmt,
            "sha256": f"{i:064x}",
            "taken_at": None,
            **extra,
        }

    answer = {
        "groups": [
            {
                "keeper": record(1, keeper, "JPEG"),
                "duplicates": [record(2, clip, "MOV", kind="contains", distance=None)],
            }
        ],
        "in_quarantine": 0,
    }
    text = report.html_report(answer, Thumbnails(tmp_path / "cache", max_pixels=10**8))
    assert "<b>keeper</b>" not in text and "&lt;b&gt;keeper&lt;/b&gt;.jpg" in text
    assert "contains" in text
    # A right-to-left override would show "clip.mov" as "clipvom.mov"-reversed text: escaped.
    assert "\u202e" not in text and "clip\\u202evom.mov" in text
    kinds = [url.split(";")[0] for _, url in _urls(text)]
    assert kinds == ["data:image/jpeg", "data:image/svg+xml"]


@pytest.mark.slow
def test_show_tsne_draws_a_map_of_the_indexed_photos(lib: Library, tmp_path: Path) -> None:
    pytest.importorskip("sklearn")
    out = tmp_path / "map.png"
    result = CliRunner().invoke(dedupctl, ["--config", str(lib.config), "show", "--tsne", str(out)])
    assert result.exit_code == 0, result.output
    # coffee, astronaut, hubble and the group of two in shared/; the quarantined are not.
    assert result.stdout == (
        f"wrote {out}: all 5 photos drawn, 5 as thumbnails, 1 duplicate link\n"
    )
    with Image.open(out) as im:
        assert (im.format, im.size) == ("PNG", (1600, 1200))
        colours = im.convert("RGB").getcolors(maxcolors=1 << 20)
    assert colours is not None and len(colours) > 1000, "thumbnails were drawn, not a blank"


@pytest.mark.slow  # ~4-8 s: run with the long suites (make test-slow)
def test_show_tsne_samples_a_large_library_and_says_how_many(lib: Library, tmp_path: Path) -> None:
    pytest.importorskip("sklearn")
    out = tmp_path / "map.png"
    args = ["--config", str(lib.config), "show", "--tsne", str(out), "--sample", "3"]
    result = CliRunner().invoke(dedupctl, args)
    assert result.exit_code == 0, result.output
    # The group's two photos come first: its link is drawn.
    assert result.stdout == (
        f"wrote {out}: 3 of 5 indexed photos drawn, 3 as thumbnails, 1 duplicate link\n"
    )


def test_show_tsne_without_the_viz_extra_names_it(
    lib: Library, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setitem(sys.modules, "sklearn", None)  # import sklearn raises ImportError
    monkeypatch.setitem(sys.modules, "sklearn.manifold", None)
    out = tmp_path / "map.png"
    result = CliRunner().invoke(dedupctl, ["--config", str(lib.config), "show", "--tsne", str(out)])
    assert result.exit_code == 2
    assert "pip install 'dedupd[viz]'" in result.stderr
    assert "scikit-learn" in result.stderr
    assert not out.exists()
