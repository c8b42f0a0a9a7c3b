"""Answers that do not mislead: show mentions the quarantine, search marks what counts as a
duplicate, quarantine list tells a resized copy from the same bytes, purge says what it kept,
every --json output is JSON, and Ctrl-C on a scan is not "nothing found"."""

from __future__ import annotations

import json
import os
import re
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner

from dedupd import cli
from dedupd.cli import dedupctl, dedupd
from tests import photos
from tests.test_decisions import Lib

OFFLINE = "dedupd is not running; using the database directly\n"


def _aged(path: Path, age: int) -> Path:
    """Make `path` look `age` seconds older than now (a scan takes the oldest first)."""
    t = os.stat(path).st_mtime - age
    os.utime(path, (t, t))
    return path


@pytest.fixture
def lib(tmp_path: Path) -> Lib:
    """rocket-small.jpg (hashes 0 bits from rocket.jpg, other bytes) and coffee (1).jpg (the
    same bytes as coffee.jpg) arrive after their originals, and are quarantined."""
    lib = Lib(tmp_path)
    _aged(photos.copy(photos.photo("rocket"), lib.root / "rocket.jpg"), 200)
    _aged(photos.resize(photos.photo("rocket"), lib.root / "rocket-small.jpg"), 100)
    _aged(photos.copy(photos.photo("coffee"), lib.root / "coffee.jpg"), 200)
    _aged(photos.copy(photos.photo("coffee"), lib.root / "coffee (1).jpg"), 100)
    photos.copy(photos.photo("hubble"), lib.root / "hubble.jpg")
    return lib


def test_quarantine_list_says_exact_for_a_copy_whose_keeper_was_replaced_since(lib: Lib) -> None:
    """What the keeper held when the copy was quarantined (journaled) says "exact", not what
    it holds now: a keeper replaced by another picture made the list say "near, distance 0"
    (the red team's hint that a purge would be unsafe)."""
    lib.scan()
    listed = json.loads(lib.ctl("quarantine", "list", "--json").stdout)["quarantined"]
    (copy,) = [e for e in listed if Path(e["src"]).name == "coffee (1).jpg"]
    keeper = Path(copy["keeper"]["path"])
    photos.copy(photos.photo("hubble"), keeper.with_name("incoming.jpg"))
    keeper.with_name("incoming.jpg").rename(keeper)
    lib.scan()  # the keeper is hashed again: its record names the other picture now
    listed = json.loads(lib.ctl("quarantine", "list", "--json").stdout)["quarantined"]
    (copy,) = [e for e in listed if Path(e["src"]).name == "coffee (1).jpg"]
    assert copy["kind"] == "exact"


def test_show_says_what_went_to_quarantine(lib: Lib) -> None:
    lib.scan()
    shown = lib.ctl("show")
    assert shown.exit_code == 0
    assert shown.stdout == (
        "no duplicates found; 2 photos in quarantine: `dedupctl quarantine list`\n"
    )
    assert json.loads(lib.ctl("show", "--json").stdout) == {"groups": [], "in_quarantine": 2}


def test_show_lists_groups_and_then_the_quarantine(lib: Lib) -> None:
    lib.write_config("{exact: quarantine, near: report}")
    lib.scan()
    lines = lib.ctl("show").stdout.splitlines()
    assert lines[0] == "1 duplicate groups"
    assert lines[-1] == "1 photo in quarantine: `dedupctl quarantine list`"


def test_quarantine_list_tells_a_resized_copy_from_the_same_bytes(lib: Lib) -> None:
    """A resized copy's perceptual distance can be 0 bits (it was with pHash on full
    decodes): the list must say "near", never let it read as the same bytes."""
    lib.scan()
    listed = json.loads(lib.ctl("quarantine", "list", "--json").stdout)["quarantined"]
    kinds = {Path(e["src"]).name: (e["kind"], e["distance"]) for e in listed}
    assert kinds["coffee (1).jpg"] == ("exact", 0)
    kind, distance = kinds["rocket-small.jpg"]
    assert kind == "near" and distance <= 8
    text = lib.ctl("quarantine", "list").stdout.splitlines()
    keeper_lines = {Path(text[i].split("  ")[-1]).name: text[i + 1] for i in range(0, len(text), 2)}
    assert "  exact (same bytes)  (" in keeper_lines["coffee (1).jpg"]
    assert f"  near, distance {distance}  (" in keeper_lines["rocket-small.jpg"]


def test_search_lists_by_default_only_what_its_policy_counts_as_a_duplicate(lib: Lib) -> None:
    lib.write_config("{exact: report, near: report}")
    lib.scan()
    query = lib.root.parent / "query.jpg"
    photos.reencode(photos.photo("rocket"), query)
    found = lib.ctl("search", str(query), "--json")
    assert found.exit_code == 0
    results = json.loads(found.stdout)["results"]
    assert sorted(Path(r["path"]).name for r in results) == ["rocket-small.jpg", "rocket.jpg"]
    assert all(r["duplicate"] and r["threshold"] == 0.25 for r in results)
    # Asked for a wider threshold, the others are listed and marked as no duplicates.
    wide = lib.ctl("search", str(query), "--threshold", "1").stdout.splitlines()
    assert len(wide) == 1 + 5
    # 0.250 upright; a turned match is held to the turned threshold, 0.100
    mark = re.compile(r"  \(not a duplicate: beyond its policy's (0\.250|0\.100)\)$")
    beyond = [mark.sub("", line) for line in wide[1:] if mark.search(line)]
    # each line ends in the path, and in the transform when the best match was turned
    paths = [next(p for p in line.split("  ") if p.startswith("/")) for line in beyond]
    assert sorted(Path(p).name for p in paths) == [
        "coffee (1).jpg",
        "coffee.jpg",
        "hubble.jpg",
    ]
    nothing = lib.root.parent / "other.jpg"
    photos.copy(photos.photo("chelsea"), nothing)
    none = lib.ctl("search", str(nothing))
    assert none.exit_code == 1 and none.stdout == ""


def test_purge_says_what_it_kept_for_being_younger_and_answers_json(lib: Lib) -> None:
    lib.scan()
    kept = lib.ctl("quarantine", "purge", "--yes")
    assert kept.exit_code == 0
    assert kept.stdout == (
        "nothing to purge; 2 photos are younger than 30 days; --older-than 0 to purge them\n"
    )
    as_json = lib.ctl("quarantine", "purge", "--yes", "--json")
    assert json.loads(as_json.stdout) == {"purged": [], "older_than": 2592000.0, "younger": 2}


def _loads(result: Any, args: tuple[str, ...]) -> Any:
    try:
        return json.loads(result.stdout)
    except json.JSONDecodeError:
        pytest.fail(f"{args}: not JSON: {result.stdout!r} (stderr {result.stderr!r})")


def test_every_json_output_is_json_offline_empty_and_with_items(lib: Lib) -> None:
    """Every dedupctl and dedupd command with --json that works without the daemon, on an
    empty database and on one with groups, quarantined photos and results."""
    query = lib.root.parent / "query.jpg"
    photos.copy(photos.photo("rocket"), query)
    (lib.root.parent / "empty").mkdir()
    empty = Lib(lib.root.parent / "empty")
    (empty.root / "a.jpg").write_bytes(b"")  # no photo at all: one error, nothing else
    for state in (empty, lib):
        report = CliRunner().invoke(dedupd, ["scan", "--config", str(state.config), "--json"])
        _loads(report, ("scan",))
        for args in (
            ("show", "--json"),
            ("show", "--json", str(state.root / ("a.jpg" if state is empty else "rocket.jpg"))),
            ("search", "--json", str(query)),
            ("search", "--json", "--threshold", "0", str(query)),
            ("quarantine", "list", "--json"),
            ("quarantine", "purge", "--yes", "--json"),
            ("quarantine", "purge", "--yes", "--json", "--older-than", "0"),
            ("quarantine", "restore", "--json", "999"),
        ):
            result = state.ctl(*args)
            assert result.stderr.startswith(OFFLINE), (args, result.stderr)
            _loads(result, args)
    restored = lib.ctl("quarantine", "restore", "--json", str(lib.root / "nowhere.jpg"))
    assert _loads(restored, ())["results"][0]["error"] == "not in quarantine"


def test_every_json_output_is_json_from_the_daemon(tmp_path: Path) -> None:
    from tests.test_daemon import Env, _idle, running, wait_for

    env = Env(tmp_path)
    env.write_config()
    photos.copy(photos.photo("coffee"), env.root / "IMG_1.jpg")
    photos.copy(photos.photo("rocket"), env.root / "IMG_2.jpg")
    query = tmp_path / "query.jpg"
    photos.copy(photos.photo("coffee"), query)

    def ctl(*args: str) -> Any:
        result = CliRunner().invoke(dedupctl, ["--config", str(env.config), *args])
        assert result.exit_code in (0, 1), (args, result.output)
        return _loads(result, args)

    with running(env) as daemon:
        wait_for(lambda: daemon.stats.hashed == 2 and _idle(daemon))
        for state in ("empty", "with items"):
            if state == "with items":
                photos.reencode(photos.photo("coffee"), env.root / "wa.jpg")
                wait_for(lambda: env.state(env.root / "wa.jpg") == "quarantined")
            for args in (
                ("status", "--json"),
                ("show", "--json"),
                ("show", "--json", str(env.root / "IMG_1.jpg")),
                ("search", "--json", str(query)),
                ("quarantine", "list", "--json"),
                ("quarantine", "purge", "--yes", "--json"),
                ("rescan", "--json"),
                ("reload", "--json"),
            ):
                ctl(*args)
        assert ctl("quarantine", "restore", "--json", str(env.root / "wa.jpg"))["results"]
        assert ctl("distinct", "--json", str(env.root / "IMG_1.jpg"), str(env.root / "IMG_2.jpg"))
        purged = ctl("quarantine", "purge", "--yes", "--json", "--older-than", "0")
        assert purged == {"purged": [], "older_than": 0.0, "younger": 0}


def test_ctrl_c_on_a_scan_exits_130_not_1(lib: Lib, monkeypatch: pytest.MonkeyPatch) -> None:
    def interrupted(*args: object, **kwargs: object) -> None:
        raise KeyboardInterrupt

    monkeypatch.setattr(cli, "scan", interrupted)
    result = CliRunner().invoke(dedupd, ["scan", "--config", str(lib.config)])
    assert result.exit_code == 130
    assert result.stderr == "interrupted; what was hashed is kept, run it again to go on\n"
