"""dedupd scan, dedupctl search and show through click's CliRunner, with exact output."""

from __future__ import annotations

import io
import json
import os
import random
import re
import struct
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest
import structlog
from click.testing import CliRunner
from PIL import Image

from dedupd.cli import _configure_logging, dedupctl, dedupd, find_config
from dedupd.store import Store
from tests import photos


@pytest.fixture
def runner() -> CliRunner:
    return CliRunner()


@pytest.fixture
def scanned(runner: CliRunner, library: Path, tmp_path: Path) -> Path:
    """The `library` fixture scanned into a database; returns the database path."""
    db = tmp_path / "dedupd.db"
    result = runner.invoke(dedupd, ["scan", str(library), "--database", str(db), "--workers", "1"])
    assert result.exit_code == 0, result.output
    return db


def test_scan_prints_summary_errors_and_groups(
    runner: CliRunner, library: Path, tmp_path: Path
) -> None:
    db = tmp_path / "dedupd.db"
    result = runner.invoke(dedupd, ["scan", str(library), "--database", str(db), "--workers", "1"])
    assert result.exit_code == 0
    lines = result.output.splitlines()
    assert re.fullmatch(
        r"scanned 1 root\(s\) in \d+\.\ds: 10 files, 9 hashed, 0 unchanged, 0 renamed, "
        r"0 missing, 1 errors, 4 duplicate groups \(4 duplicates\)",
        lines[0],
    )
    assert lines[1].startswith(f"error: {library}/broken.jpg: truncated: image file is truncated")
    assert lines[2:] == [
        "",
        f"{library}/astronaut.jpg  512x512  68.1 KB  keeper",
        f"  = {library}/astronaut (1).jpg  512x512  68.1 KB  exact",
        "",
        f"{library}/coffee.jpg  600x400  72.3 KB  keeper",
        f"  ~ {library}/chat/coffee-wa.jpg  600x400  32.1 KB  near 4/256 (0.016)",
        "",
        f"{library}/edit/chelsea-rotated.jpg  451x300  35.2 KB  keeper",
        f"  ~ {library}/chelsea.jpg  451x300  35.0 KB  near 2/256 (0.008)",
        "",
        f"{library}/rocket.jpg  640x427  52.0 KB  keeper",
        f"  ~ {library}/chat/rocket-small.jpg  320x214  14.0 KB  near 0/256 (0.000)",
    ]


def test_scan_json_report(runner: CliRunner, library: Path, tmp_path: Path) -> None:
    db = tmp_path / "dedupd.db"
    args = ["scan", str(library), "--database", str(db), "--workers", "1", "--json"]
    first = json.loads(runner.invoke(dedupd, args).output)
    assert (first["files"], first["hashed"], first["unchanged"]) == (10, 9, 0)
    assert [e["kind"] for e in first["errors"]] == ["truncated"]
    assert [len(g["duplicates"]) for g in first["groups"]] == [1, 1, 1, 1]
    exact = first["groups"][0]["duplicates"][0]
    assert (exact["kind"], exact["distance"], exact["normalized"]) == ("exact", 0, 0.0)
    second = json.loads(runner.invoke(dedupd, args).output)
    assert (second["hashed"], second["unchanged"], second["errors"]) == (0, 10, [])


def test_scan_without_roots_is_a_usage_error(runner: CliRunner, tmp_path: Path) -> None:
    result = runner.invoke(dedupd, ["scan", "--database", str(tmp_path / "d.db")])
    assert result.exit_code == 2
    assert "no roots: pass DIRS or configure `roots:`" in result.output


def test_config_error_exits_2_naming_the_key(runner: CliRunner, tmp_path: Path) -> None:
    cfg = tmp_path / "dedupd.yaml"
    cfg.write_text("policies:\n  camera: {threshold: 2}\n")
    result = runner.invoke(dedupd, ["scan", "--config", str(cfg), str(tmp_path)])
    assert result.exit_code == 2
    assert result.output == (
        f"error: {cfg}: policies.camera.threshold: must be a number between 0 and 1, got 2 (int)\n"
    )


def test_scan_uses_the_roots_of_the_config(
    runner: CliRunner, library: Path, tmp_path: Path
) -> None:
    cfg = tmp_path / "dedupd.yaml"
    cfg.write_text(f"database: state/d.db\nhashing: {{workers: 1}}\nroots: [{{path: {library}}}]\n")
    result = runner.invoke(dedupd, ["scan", "--config", str(cfg), "--json"])
    assert result.exit_code == 0, result.output
    assert json.loads(result.output)["roots"] == [str(library)]
    assert (tmp_path / "state" / "d.db").exists()


def test_scan_bounds_a_sequential_jpeg_by_its_draft_and_a_progressive_one_whole(
    runner: CliRunner, tmp_path: Path
) -> None:
    """`hashing.max_pixels` counts what decoding holds: a sequential JPEG larger than it
    (a 200 MP phone photo under the default) is hashed from its draft; the same picture saved
    progressive, which libjpeg holds whole at any scale, is `too_many_pixels`."""
    root = tmp_path / "photos"
    root.mkdir()
    picture = Image.open(photos.photo("rocket")).convert("RGB").resize((2000, 1500))
    picture.save(root / "sequential.jpg", quality=90)
    picture.save(root / "progressive.jpg", quality=90, progressive=True)
    cfg = tmp_path / "dedupd.yaml"
    cfg.write_text(
        f"database: {tmp_path / 'd.db'}\n"
        "hashing: {workers: 1, max_pixels: 1000000}\n"
        f"roots: [{{path: {root}}}]\n"
    )
    result = runner.invoke(dedupd, ["scan", "--config", str(cfg), "--json"])
    assert result.exit_code == 0, result.output
    report = json.loads(result.output)
    assert (report["files"], report["hashed"]) == (2, 1)
    assert report["errors"] == [
        {
            "path": str(root / "progressive.jpg"),
            "kind": "too_many_pixels",
            "message": "2000x1500 = 3000000 pixels exceeds max_pixels 1000000; a progressive"
            " (multi-scan) JPEG is held whole to decode, at any scale",
        }
    ]
    with Store(tmp_path / "d.db") as store:
        record = store.record(str(root), "sequential.jpg")
    assert record is not None and record.state == "ok"
    assert (record.width, record.height) == (2000, 1500)


def test_search_lists_nearest_photos_with_distances(
    runner: CliRunner, scanned: Path, library: Path
) -> None:
    result = runner.invoke(
        dedupctl, ["--database", str(scanned), "search", str(photos.photo("coffee")), "-k", "2"]
    )
    assert result.exit_code == 0, result.output
    assert result.stderr == "dedupd is not running; using the database directly\n"
    assert result.stdout.splitlines() == [
        "distance     bits       pixels       size  path",
        f"0.000       0/256      600x400    72.3 KB  {library}/coffee.jpg",
        f"0.016       4/256      600x400    32.1 KB  {library}/chat/coffee-wa.jpg",
    ]


def test_search_json_and_threshold(runner: CliRunner, scanned: Path, library: Path) -> None:
    result = runner.invoke(
        dedupctl,
        [
            "--database",
            str(scanned),
            "search",
            str(photos.photo("astronaut")),
            "--threshold",
            "0.1",
            "--json",
        ],
    )
    assert result.exit_code == 0
    found = json.loads(result.stdout)
    assert [(Path(r["path"]).name, r["distance"], r["exact"]) for r in found["results"]] == [
        ("astronaut.jpg", 0, True),  # equal distances: the older (first indexed) first
        ("astronaut (1).jpg", 0, True),
    ]
    assert found["hasher"].startswith("phash:16:")


def test_search_finding_nothing_exits_1_like_grep(
    runner: CliRunner, scanned: Path, tmp_path: Path
) -> None:
    # Another picture: the left half of hubble, blown up (no photo of the library, turned
    # or not, is near it).
    with Image.open(photos.photo("hubble")) as im:
        half = im.crop((0, 0, im.width // 2, im.height)).resize(im.size)
    query = tmp_path / "other.jpg"
    half.save(query, quality=90)
    result = runner.invoke(
        dedupctl, ["--database", str(scanned), "search", str(query), "--threshold", "0.05"]
    )
    assert result.exit_code == 1
    assert result.stdout == ""
    assert result.stderr.splitlines()[-1] == "no similar photos indexed"


@pytest.mark.parametrize(
    ("make", "transform"),
    [
        (photos.hflip, "mirror"),
        (lambda src, dst: photos.transposed(src, dst, Image.Transpose.ROTATE_90), "rot90"),
    ],
    ids=["mirror", "rot90"],
)
def test_search_finds_a_rotated_or_mirrored_copy_and_says_how(
    runner: CliRunner,
    scanned: Path,
    library: Path,
    tmp_path: Path,
    make: Callable[[Path, Path], Path],
    transform: str,
) -> None:
    """The query image's rotations and mirrors are looked up too (isometric is on by
    default) and each result names the transform that turns it into the query."""
    query = make(photos.photo("hubble"), tmp_path / "turned.jpg")
    result = runner.invoke(
        dedupctl, ["--database", str(scanned), "search", str(query), "--threshold", "0.1"]
    )
    assert result.exit_code == 0, result.output
    (line,) = result.stdout.splitlines()[1:]
    assert line.endswith(f"{library}/hubble.jpg  ({transform})"), line
    as_json = runner.invoke(
        dedupctl, ["--database", str(scanned), "search", str(query), "-k", "1", "--json"]
    )
    (found,) = json.loads(as_json.stdout)["results"]
    assert (Path(found["path"]).name, found["transform"]) == ("hubble.jpg", transform)


def test_search_with_a_bad_query_image_is_a_clear_error(
    runner: CliRunner, scanned: Path, tmp_path: Path
) -> None:
    bad = tmp_path / "bad.jpg"
    bad.write_text("nope")
    result = runner.invoke(dedupctl, ["--database", str(scanned), "search", str(bad)])
    assert result.exit_code == 2
    assert result.output == (
        f"error: {bad}: not a photo format dedupd reads "
        "(JPEG, PNG, HEIF, AVIF, WEBP, GIF, TIFF, BMP)\n"
    )


def test_show_lists_groups(runner: CliRunner, scanned: Path, library: Path) -> None:
    result = runner.invoke(dedupctl, ["--database", str(scanned), "show"])
    assert result.exit_code == 0
    lines = result.stdout.splitlines()
    assert lines[0] == "4 duplicate groups"
    assert f"  = {library}/astronaut (1).jpg  512x512  68.1 KB  exact" in lines
    as_json = json.loads(
        runner.invoke(dedupctl, ["--database", str(scanned), "show", "--json"]).stdout
    )
    assert [Path(g["keeper"]["path"]).name for g in as_json["groups"]] == [
        "astronaut.jpg",
        "coffee.jpg",
        "chelsea-rotated.jpg",
        "rocket.jpg",
    ]


def test_show_file_prints_record_and_matches(
    runner: CliRunner, scanned: Path, library: Path
) -> None:
    result = runner.invoke(
        dedupctl, ["--database", str(scanned), "show", str(library / "coffee.jpg")]
    )
    assert result.exit_code == 0
    lines = result.stdout.splitlines()
    assert lines[:5] == [
        f"{library}/coffee.jpg",
        "  state     ok",
        "  size      72.3 KB",
        "  pixels    600x400",
        "  format    JPEG",
    ]
    assert lines[-1] == f"  ~ {library}/chat/coffee-wa.jpg  near 4/256"
    broken = runner.invoke(
        dedupctl, ["--database", str(scanned), "show", "--json", str(library / "broken.jpg")]
    )
    record = json.loads(broken.stdout)["file"]
    assert (record["state"], record["error_kind"]) == ("error", "truncated")


def test_show_and_distinct_find_a_file_named_with_dot_dot_or_through_a_symlinked_folder(
    runner: CliRunner, scanned: Path, library: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """`../coffee.jpg` from a subfolder, or a path through a symlink to the root (as
    `~/Pictures` often is), names a recorded photo: the store names it by its resolved root."""
    (tmp_path / "link").symlink_to(library)
    monkeypatch.chdir(library / "chat")
    for spelled in ("../coffee.jpg", str(tmp_path / "link" / "coffee.jpg")):
        result = runner.invoke(dedupctl, ["--database", str(scanned), "show", spelled])
        assert result.exit_code == 0, (spelled, result.output)
        assert result.stdout.splitlines()[0] == f"{library}/coffee.jpg"
    marked = runner.invoke(
        dedupctl, ["--database", str(scanned), "distinct", "../coffee.jpg", "coffee-wa.jpg"]
    )
    assert marked.exit_code == 0, marked.output
    assert marked.stdout == (
        f"marked distinct: {library}/coffee.jpg and {library}/chat/coffee-wa.jpg\n"
    )


def test_show_unknown_file_exits_1(runner: CliRunner, scanned: Path, tmp_path: Path) -> None:
    result = runner.invoke(dedupctl, ["--database", str(scanned), "show", str(tmp_path / "x.jpg")])
    assert result.exit_code == 1
    assert "not in the database" in result.output


def test_dedupctl_without_a_database_says_to_scan_first(runner: CliRunner, tmp_path: Path) -> None:
    result = runner.invoke(dedupctl, ["--database", str(tmp_path / "none.db"), "show"])
    assert result.exit_code == 2
    assert "no database yet; run `dedupd scan` first" in result.output


def test_config_search_order(tmp_path: Path) -> None:
    user = tmp_path / "xdg" / "dedupd" / "dedupd.yaml"
    assert find_config("given.yaml", {"DEDUPD_CONFIG": "env.yaml"}) == Path("given.yaml")
    assert find_config(None, {"DEDUPD_CONFIG": "env.yaml"}) == Path("env.yaml")
    assert find_config(None, {"XDG_CONFIG_HOME": str(tmp_path / "xdg")}) is None
    user.parent.mkdir(parents=True)
    user.write_text("{}")
    assert find_config(None, {"XDG_CONFIG_HOME": str(tmp_path / "xdg")}) == user


@pytest.fixture
def acting_config(tmp_path: Path, library: Path) -> Path:
    cfg = tmp_path / "acting.yaml"
    cfg.write_text(
        f"database: {tmp_path / 'acting.db'}\nhashing: {{workers: 1}}\n"
        f"roots: [{{path: {library}, policy: camera}}]\n"
        "policies:\n  camera: {exact: delete, near: quarantine}\n"
        f"quarantine: {{path: {tmp_path / 'quarantine'}}}\n"
    )
    return cfg


def test_scan_applies_the_policy_and_prints_each_action(
    runner: CliRunner, acting_config: Path, library: Path, tmp_path: Path
) -> None:
    result = runner.invoke(dedupd, ["scan", "--config", str(acting_config)])
    assert result.exit_code == 0, result.output
    acted = [
        re.sub(
            r"pixels agree \([\d.]+% of a cell at most\)",
            "pixels agree (N% of a cell at most)",
            re.sub(r"pdq agrees \(\d+ bits\)", "pdq agrees (N bits)", line),
        )
        for line in result.output.splitlines()
        if line.startswith(("delete:", "quar"))
    ]
    q = tmp_path / "quarantine" / str(library).lstrip("/")
    assert acted == [
        f"delete: {library}/astronaut (1).jpg (done; keeper {library}/astronaut.jpg; "
        "keep: highest_resolution, largest_file, original_name, oldest)",
        f"quarantine: {library}/chat/coffee-wa.jpg (done; keeper {library}/coffee.jpg; "
        "keep: highest_resolution, largest_file, original_name, oldest; pdq agrees (N bits);"
        " pixels agree (N% of a cell at most))",
        f"quarantine: {library}/chat/rocket-small.jpg (done; keeper {library}/rocket.jpg; "
        "keep: highest_resolution, largest_file, original_name, oldest; pdq agrees (N bits);"
        " pixels agree (N% of a cell at most))",
    ]
    # chelsea-rotated arrived later and is the better copy: only reported (act_on_existing).
    assert (library / "edit" / "chelsea-rotated.jpg").exists() and (
        library / "chelsea.jpg"
    ).exists()
    assert sorted(p.name for p in q.rglob("*.jpg")) == ["coffee-wa.jpg", "rocket-small.jpg"]
    # The groups listed are those left in place (the reported chelsea pair): the summary
    # says what was done to the others.
    assert result.output.splitlines()[0].endswith(
        "1 duplicate groups (1 duplicates); 2 quarantined, 1 deleted"
    )


def test_a_dry_run_scan_says_how_many_it_would_move_and_moves_none(
    runner: CliRunner, acting_config: Path, library: Path, tmp_path: Path
) -> None:
    result = runner.invoke(dedupd, ["scan", "--config", str(acting_config), "--dry-run"])
    assert result.exit_code == 0, result.output
    assert result.output.splitlines()[0].endswith(
        "; 3 to move or delete (dry run: none moved)"
    )
    assert (library / "astronaut (1).jpg").exists() and not (tmp_path / "quarantine").exists()


def test_quarantine_list_and_restore(
    runner: CliRunner, acting_config: Path, library: Path, tmp_path: Path
) -> None:
    runner.invoke(dedupd, ["scan", "--config", str(acting_config)])
    base = ["--config", str(acting_config), "quarantine"]
    listed = json.loads(runner.invoke(dedupctl, [*base, "list", "--json"]).stdout)["quarantined"]
    assert [Path(e["src"]).name for e in listed] == ["coffee-wa.jpg", "rocket-small.jpg"]
    assert listed[0]["keeper_path"] == f"{library}/coffee.jpg"
    table = runner.invoke(dedupctl, [*base, "list"]).stdout.splitlines()
    assert table[0].endswith(f"{library}/chat/coffee-wa.jpg")
    assert table[1].startswith(f"       keeper {library}/coffee.jpg  near, distance 4")

    restored = runner.invoke(dedupctl, [*base, "restore", f"{library}/chat/coffee-wa.jpg"])
    assert (restored.exit_code, restored.stdout) == (0, f"restored {library}/chat/coffee-wa.jpg\n")
    assert (library / "chat" / "coffee-wa.jpg").exists()
    again = runner.invoke(dedupctl, [*base, "restore", f"{library}/chat/coffee-wa.jpg"])
    assert again.exit_code == 1 and "not in quarantine" in again.output
    # A rescan leaves the restored photo alone: the pair is now distinct.
    runner.invoke(dedupd, ["scan", "--config", str(acting_config)])
    assert (library / "chat" / "coffee-wa.jpg").exists()

    (library / "chat" / "rocket-small.jpg").write_bytes(b"a new file took the name")
    refused = runner.invoke(dedupctl, [*base, "restore", str(listed[1]["id"])])
    assert refused.exit_code == 1
    assert "exists; refusing to overwrite it" in refused.output
    assert (library / "chat" / "rocket-small.jpg").read_bytes() == b"a new file took the name"


def test_restore_refuses_digits_that_name_a_path_here_too_and_restores_nothing(
    runner: CliRunner,
    acting_config: Path,
    library: Path,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """`quarantine restore 2024`, meant for the folder `2024` here, restored quarantine
    entry 2024: another photo. Digits that name a path here too are refused (exit 2) and
    nothing is restored, not even the other items; `id:N` is the id, `./N` the path, and
    digits that name nothing here are the id, as before."""
    runner.invoke(dedupd, ["scan", "--config", str(acting_config)])
    base = ["--config", str(acting_config), "quarantine"]
    listed = json.loads(runner.invoke(dedupctl, [*base, "list", "--json"]).stdout)["quarantined"]
    coffee, rocket = (str(e["id"]) for e in listed)
    (tmp_path / "here" / coffee).mkdir(parents=True)
    monkeypatch.chdir(tmp_path / "here")

    refused = runner.invoke(dedupctl, [*base, "restore", rocket, coffee])
    assert refused.exit_code == 2
    assert refused.stderr.endswith(
        f"Error: {coffee} is a quarantine id and a path here: write id:{coffee} for the id, "
        f"./{coffee} for the path; nothing was restored\n"
    )
    assert refused.stdout == ""
    after = json.loads(runner.invoke(dedupctl, [*base, "list", "--json"]).stdout)
    assert after["quarantined"] == listed
    assert not (library / "chat" / "coffee-wa.jpg").exists()
    assert not (library / "chat" / "rocket-small.jpg").exists()

    as_path = runner.invoke(dedupctl, [*base, "restore", f"./{coffee}"])
    assert as_path.exit_code == 1
    assert as_path.stderr.endswith(f"error: {tmp_path / 'here' / coffee}: not in quarantine\n")
    by_id = runner.invoke(dedupctl, [*base, "restore", f"id:{coffee}"])
    assert (by_id.exit_code, by_id.stdout) == (0, f"restored {library}/chat/coffee-wa.jpg\n")
    digits = runner.invoke(dedupctl, [*base, "restore", rocket])  # no such path here: the id
    assert (digits.exit_code, digits.stdout) == (0, f"restored {library}/chat/rocket-small.jpg\n")
    not_a_number = runner.invoke(dedupctl, [*base, "restore", "id:12a"])
    assert not_a_number.exit_code == 2
    assert "id:12a: an id is a number, as `dedupctl quarantine list` shows it" in (
        not_a_number.stderr
    )


# A name that is not UTF-8 (Latin-1 é), as a Samba share or an old camera card writes it.
CAFE = b"caf\xe9.jpg"


@pytest.fixture
def many_photos(tmp_path: Path) -> Path:
    """700 tiny distinct JPEGs, 3 exact copies among them, and `caf\\xe9.jpg`: a copy of
    n000.jpg whose name is not UTF-8 (written through a bytes path)."""
    root = tmp_path / "many"
    root.mkdir()
    rng = random.Random(9)
    for i in range(700):
        Image.frombytes("L", (32, 32), rng.randbytes(1024)).save(root / f"n{i:03}.jpg")
    for i in (1, 2, 3):
        photos.copy(root / f"n{i:03}.jpg", root / f"n{i:03} (1).jpg")
    data = (root / "n000.jpg").read_bytes()
    with open(os.path.join(os.fsencode(root), CAFE), "wb") as f:
        f.write(data)
    return root


def test_scan_records_and_prints_a_name_that_is_not_utf8(
    runner: CliRunner, many_photos: Path, tmp_path: Path
) -> None:
    """Issue #9: one such name crashed `dedupd scan` (UnicodeEncodeError in sqlite3, then in
    print). Now every file is recorded, it is hashed and grouped, and its name comes out as
    the very bytes on disk, in text, and through JSON (as os.fsdecode's str)."""
    db = tmp_path / "many.db"
    args = ["scan", str(many_photos), "--database", str(db), "--workers", "1"]
    result = runner.invoke(dedupd, args)
    assert result.exit_code == 0, result.output
    assert result.stdout.startswith("scanned 1 root(s) in ")
    assert "704 files, 704 hashed, 0 unchanged, 0 renamed, 0 missing, 0 errors, " in (result.stdout)
    cafe = os.path.join(os.fsencode(many_photos), CAFE)
    lines = result.stdout_bytes.splitlines()
    keeper = lines.index(next(line for line in lines if b"/n000.jpg  32x32  " in line))
    assert lines[keeper + 1].startswith(b"  = " + cafe + b"  32x32  ")
    with Store(db) as store:
        assert store.count_by_state([str(many_photos)]) == {"ok": 704}
        record = store.file_at(os.fsdecode(cafe))
    assert record is not None and record.state == "ok"

    (many_photos / "n004.jpg").write_bytes(b"not a photo")  # an error line, and a changed file
    os.rename(cafe, os.path.join(os.fsencode(many_photos), b"\xff" + CAFE))
    report = json.loads(runner.invoke(dedupd, [*args, "--json"]).stdout)
    assert (report["files"], report["hashed"], report["renamed"]) == (704, 0, 1)
    assert [e["path"] for e in report["errors"]] == [str(many_photos / "n004.jpg")]
    (group,) = [g for g in report["groups"] if g["keeper"]["path"].endswith("/n000.jpg")]
    assert [os.fsencode(d["path"]) for d in group["duplicates"]] == [
        os.path.join(os.fsencode(many_photos), b"\xff" + CAFE)
    ]


@pytest.mark.slow
def test_dedupctl_show_prints_a_name_that_is_not_utf8_byte_for_byte(
    runner: CliRunner, many_photos: Path, tmp_path: Path
) -> None:
    """Without a daemon, `dedupctl show PATH` finds the record of a non-UTF-8 name and prints
    it as the bytes on disk; --json gives it back as os.fsdecode's str."""
    db = tmp_path / "many.db"
    scan = runner.invoke(dedupd, ["scan", str(many_photos), "--database", str(db)])
    assert scan.exit_code == 0, scan.output
    cafe = os.path.join(os.fsencode(many_photos), CAFE)
    table = runner.invoke(dedupctl, ["--database", str(db), "show", os.fsdecode(cafe)])
    assert table.exit_code == 0, table.output
    assert table.stdout_bytes.splitlines()[:2] == [cafe, b"  state     ok"]
    assert table.stdout_bytes.splitlines()[-1] == (
        b"  = " + os.path.join(os.fsencode(many_photos), b"n000.jpg") + b"  exact"
    )
    as_json = runner.invoke(dedupctl, ["--database", str(db), "show", "--json", os.fsdecode(cafe)])
    assert json.loads(as_json.stdout)["file"]["path"] == os.fsdecode(cafe)
    groups = runner.invoke(dedupctl, ["--database", str(db), "show"])
    assert any(
        line.startswith(b"  = " + cafe + b"  32x32  ") for line in groups.stdout_bytes.splitlines()
    )


# A name that rewrites a terminal: clears the screen, returns to the line's start and writes
# a line of its own, then turns the rest right-to-left ("gpj.txt" reads "txt.jpg").
HOSTILE = "evil\x1b[2J\r\nquarantine: other.jpg (done)\u202egpj.jpg"
_TERMINAL_CONTROLS = re.compile("[\x00-\x08\x0b-\x1f\x7f-\x9f\u202a-\u202e\u2066-\u2069]")


def test_a_file_name_that_holds_terminal_controls_is_printed_escaped_and_kept_in_json(
    runner: CliRunner, tmp_path: Path
) -> None:
    """A photo's name may hold escape sequences, a carriage return, a newline or a
    bidirectional override: in the text a user reads (the scan's actions, `show`,
    `quarantine list`, log lines on a terminal) each is escaped, so that the name cannot
    rewrite which file the line says was moved; JSON keeps the name as it is."""
    root = tmp_path / "photos"
    root.mkdir()
    photos.copy(photos.photo("coffee"), root / "coffee.jpg")
    photos.copy(photos.photo("coffee"), root / HOSTILE)
    config = tmp_path / "dedupd.yaml"
    config.write_text(
        f"database: {tmp_path / 'd.db'}\n"
        f"roots:\n  - {{path: {root}, policy: camera}}\n"
        "policies:\n  camera: {exact: quarantine}\n"
        f"quarantine: {{path: {tmp_path / 'q'}}}\n"
    )
    escaped = "evil\\x1b[2J\\r\\nquarantine: other.jpg (done)\\u202egpj.jpg"
    scan = runner.invoke(dedupd, ["scan", "--config", str(config)])
    assert scan.exit_code == 0, scan.output
    assert not _TERMINAL_CONTROLS.search(scan.stdout)
    assert f"quarantine: {root}/{escaped} (done; keeper {root}/coffee.jpg;" in scan.stdout
    assert not any(line.startswith("quarantine: other.jpg") for line in scan.stdout.splitlines())
    listed = runner.invoke(dedupctl, ["--config", str(config), "quarantine", "list"])
    assert listed.exit_code == 0, listed.output
    assert not _TERMINAL_CONTROLS.search(listed.stdout)
    assert listed.stdout.splitlines()[0].endswith(f"{root}/{escaped}")
    as_json = runner.invoke(dedupctl, ["--config", str(config), "quarantine", "list", "--json"])
    assert [e["src"] for e in json.loads(as_json.stdout)["quarantined"]] == [str(root / HOSTILE)]
    restored = runner.invoke(dedupctl, ["--config", str(config), "quarantine", "restore", "1"])
    assert restored.exit_code == 0, restored.output
    assert restored.stdout == f"restored {root}/{escaped}\n"
    assert (root / HOSTILE).exists()
    shown = runner.invoke(dedupctl, ["--config", str(config), "show", str(root / HOSTILE)])
    assert shown.exit_code == 0, shown.output
    assert shown.stdout.splitlines()[0] == f"{root}/{escaped}"
    assert not _TERMINAL_CONTROLS.search(shown.stdout)


def test_shown_escapes_only_what_a_terminal_would_act_on() -> None:
    from dedupd.render import shown

    assert shown("/photos/2024/IMG_0001 (1).jpg") == "/photos/2024/IMG_0001 (1).jpg"
    assert shown("/photos/été/日本 👨‍👩‍👧.jpg".replace("\u200d", "")) == (
        "/photos/été/日本 👨👩👧.jpg"
    )
    assert shown("a\\b.jpg") == "a\\b.jpg"  # nothing to escape: a backslash stays single
    assert shown("a\\b\x07.jpg") == "a\\\\b\\x07.jpg"  # escaped: then it is doubled
    assert shown("a\tb\x7f\u2066.jpg") == "a\\tb\\x7f\\u2066.jpg"
    # A name that is not UTF-8: its raw bytes stay (lossless), but a raw C1 control byte
    # (0x9b is CSI to a terminal in 8-bit mode) is escaped.
    assert shown(os.fsdecode(b"caf\xe9.jpg")) == os.fsdecode(b"caf\xe9.jpg")
    assert shown(os.fsdecode(b"x\x9b2J.jpg")) == "x\\x9b2J.jpg"


def test_console_log_lines_escape_a_file_names_terminal_controls(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """structlog's console renderer shows such a value as its repr: kept so."""
    terminal = _Terminal()
    monkeypatch.setattr(sys, "stderr", terminal)
    _configure_logging("info")
    structlog.get_logger("x").info("file_skipped", path="/p/" + HOSTILE)
    output = terminal.getvalue()
    assert "file_skipped" in output and "quarantine: other.jpg" in output
    assert "\x1b[2J" not in output and "\u202e" not in output and "\r\n" not in output


# -- logging ----------------------------------------------------------------------------------


def _log_a_failure() -> None:
    try:
        raise RuntimeError("database is locked")
    except RuntimeError:
        structlog.get_logger("x").exception("loop_step_failed", detail="retrying")


def test_json_log_lines_carry_the_exception_that_log_exception_reports(
    capsys: pytest.CaptureFixture[str],
) -> None:
    """Under systemd stderr is not a TTY and `dedupd run` logs JSON: an unexpected error in
    the loop shows its type, message and traceback there, not only `"exc_info": true`."""
    _configure_logging("info")
    _log_a_failure()
    line = json.loads(capsys.readouterr().err.strip().splitlines()[-1])
    assert (line["event"], line["level"], line["detail"]) == (
        "loop_step_failed",
        "error",
        "retrying",
    )
    assert line["exception"].startswith("Traceback (most recent call last):")
    assert line["exception"].rstrip().endswith("RuntimeError: database is locked")
    assert "exc_info" not in line


def _jpeg_with_odd_exif() -> bytes:
    """A JPEG whose EXIF has a tag claiming more data than the file holds: Pillow skips it
    with a UserWarning (many phones' and editors' files have some such tag)."""
    ifd = struct.pack("<H", 1) + struct.pack("<HHII", 0x010E, 2, 0x7FFFFFFF, 8) + bytes(4)
    app1 = b"Exif\x00\x00" + b"II*\x00" + struct.pack("<I", 8) + ifd
    buf = io.BytesIO()
    Image.radial_gradient("L").convert("RGB").save(buf, "JPEG")
    jpeg = buf.getvalue()
    return jpeg[:2] + b"\xff\xe1" + struct.pack(">H", len(app1) + 2) + app1 + jpeg[2:]


def test_the_log_on_stderr_is_json_lines_only_whatever_a_decoder_warns(tmp_path: Path) -> None:
    """Off a terminal the log is JSON lines (journald, `2>&1 | jq`), and a photo's odd EXIF
    put a bare Python warning from the worker among them ("UserWarning: Tag data larger
    than file", two lines, no file named), which stopped a JSON reader there."""
    root = tmp_path / "photos"
    root.mkdir()
    (root / "odd.jpg").write_bytes(_jpeg_with_odd_exif())
    database = str(tmp_path / "d.db")
    done = subprocess.run(
        [
            *(sys.executable, "-m", "dedupd", "scan", str(root), "--database", database),
            *("--log-level", "info", "--workers", "1"),
        ],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stderr
    lines = [line for line in done.stderr.splitlines() if line.strip()]
    assert lines
    for line in lines:
        assert line.startswith("{"), line
        json.loads(line)


class _Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_console_log_lines_show_the_exception_once(monkeypatch: pytest.MonkeyPatch) -> None:
    """On a terminal the console renderer formats the exception itself: exactly one
    traceback, and no warning about a pre-formatted one (warnings are errors here)."""
    terminal = _Terminal()
    monkeypatch.setattr(sys, "stderr", terminal)
    _configure_logging("info")
    _log_a_failure()
    output = terminal.getvalue()
    assert "loop_step_failed" in output
    assert output.count("Traceback (most recent call last)") == 1
    assert output.count("RuntimeError: database is locked") == 1


@pytest.mark.slow
def test_the_demo_finds_its_mirrored_edit_and_show_says_so(
    runner: CliRunner, tmp_path: Path
) -> None:
    """`make run`'s folder: the mirrored edit of coffee is a near duplicate (isometric is on
    by default), and `dedupctl show` names the transform."""
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "scripts"))
    try:
        import make_demo  # type: ignore[import-not-found]
    finally:
        sys.path.pop(0)
    root = tmp_path / "photos"
    make_demo.main(root)
    db = tmp_path / "demo.db"
    result = runner.invoke(dedupd, ["scan", str(root), "--database", str(db), "--workers", "1"])
    assert result.exit_code == 0, result.output
    assert "5 duplicate groups (6 duplicates)" in result.output.splitlines()[0]
    mirrored = root / "edited" / "coffee-mirrored.jpg"
    assert f"  ~ {mirrored}  600x400  71.4 KB  near 2/256 (0.008), mirror" in result.output
    shown = runner.invoke(
        dedupctl, ["--database", str(db), "show", str(root / "camera" / "coffee.jpg")]
    )
    assert f"  ~ {mirrored}  near 2/256, mirror" in shown.stdout.splitlines()
