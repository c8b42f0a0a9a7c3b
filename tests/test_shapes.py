"""The shapes of the socket's answers: the check names the field and what was wrong, and the
answers dedupd itself gives (from the database here; from the daemon in test_control, whose
every answer now passes the same check) all fit."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from dedupd import shapes
from dedupd.control import API, ROUTES
from dedupd.shapes import INT, NUM, STR, TIME, Const, Row, problem
from tests import photos
from tests.test_decisions import Lib


def test_every_endpoint_declares_the_shape_of_its_answer() -> None:
    """A route added without a shape would make dedupctl fail on its own daemon's answer."""
    endpoints = {path.removeprefix(f"{API}/") for _, path in ROUTES}
    assert set(shapes.ANSWERS) == endpoints


@pytest.mark.parametrize(
    ("shape", "value", "said"),
    [
        ({"a": STR}, {}, "a: missing"),
        ({"a": STR}, [], "the answer: expected an object, got a list of 0"),
        ({"a": {"b": [INT]}}, {"a": {"b": [1, "2"]}}, "a.b[1]: expected an integer, got a string"),
        ({"a": INT}, {"a": True}, "a: expected an integer, got true"),
        ({"a": INT}, {"a": 10**400}, "a: expected an integer, got an integer out of range"),
        ({"a": NUM}, {"a": float("nan")}, "a: expected a number, got a number out of range"),
        ({"a": (STR, None)}, {"a": 3}, "a: expected a string or null, got an integer"),
        (
            {"a": (TIME, None)},
            {"a": 1e300},
            "a: expected a time (seconds since 1970, before the year 10000) or null, got a"
            " number",
        ),
        ({"a": Row(STR, STR)}, {"a": ["x"]}, "a: expected a list of 2, got a list of 1"),
        ({"a": Row(STR, INT)}, {"a": ["x", "y"]}, "a[1]: expected an integer, got a string"),
        ({"a": Const(False)}, {"a": 0}, "a: expected false, got an integer"),
        # Of several forms, the one it came nearest to is what it is said to miss.
        (
            {"r": [({"x": INT, "y": INT}, {"z": STR})]},
            {"r": [{"x": 1, "y": "2"}]},
            "r[0].y: expected an integer, got a string",
        ),
    ],
)
def test_a_misfit_is_named_by_its_field_and_kind(shape: Any, value: Any, said: str) -> None:
    assert problem(shape, value) == said


def test_what_is_not_read_is_not_checked_and_optional_fields_may_be_absent() -> None:
    """A newer daemon may add fields, an older one lacks those read with .get()."""
    shape: dict[str, shapes.Shape] = {"a": STR, "b?": INT}
    assert problem(shape, {"a": "x", "new": [object()]}) is None
    assert problem(shape, {"a": "x"}) is None
    assert problem(shape, {"a": "x", "b": "1"}) == "b: expected an integer, got a string"


def test_no_value_from_the_answer_is_repeated_in_the_message() -> None:
    """The answer may come from anyone: only field names dedupctl knows, and kinds."""
    said = problem(shapes.STATUS, {"pid": "\x1b[2J; rm -rf ~", "hasher": "\x1b]0;owned\a"})
    assert said == "pid: expected an integer, got a string"


@pytest.fixture
def lib(tmp_path: Path) -> Lib:
    """Photos with an exact copy (quarantined), a near copy (reported) and a third one."""
    lib = Lib(tmp_path)
    lib.write_config("{exact: quarantine, near: report}")
    photos.copy(photos.photo("coffee"), lib.root / "coffee.jpg")
    photos.copy(photos.photo("coffee"), lib.root / "coffee (1).jpg")
    photos.copy(photos.photo("rocket"), lib.root / "rocket.jpg")
    photos.resize(photos.photo("rocket"), lib.root / "rocket-small.jpg")
    photos.copy(photos.photo("hubble"), lib.root / "hubble.jpg")
    lib.scan()
    return lib


def _json(lib: Lib, *args: str, exit_code: int = 0) -> dict[str, Any]:
    done = lib.ctl(*args, "--json")
    assert done.exit_code == exit_code, done.output
    return json.loads(done.stdout)  # type: ignore[no-any-return]


def test_the_answers_dedupd_gives_from_its_database_fit_their_shapes(lib: Lib) -> None:
    """The other implementation of the service (the database's) agrees with the shapes the
    daemon's answers are checked against: a shape stricter than the answers would make
    dedupctl refuse a real daemon."""
    groups = _json(lib, "show")
    assert groups["groups"] and groups["in_quarantine"] == 1  # not an empty answer that fits
    assert problem(shapes.GROUPS, groups) is None
    listed = _json(lib, "quarantine", "list")
    assert len(listed["quarantined"]) == 1
    assert problem(shapes.QUARANTINE, listed) is None
    info = _json(lib, "show", str(lib.root / "rocket.jpg"))
    assert info["matches"]
    assert problem(shapes.FILE_INFO, info) is None
    found = _json(lib, "search", str(lib.root / "rocket.jpg"), "--threshold", "1")
    assert {r["duplicate"] for r in found["results"]} == {True, False}  # both forms of result
    assert problem(shapes.SEARCH, found) is None
    distinct = _json(lib, "distinct", str(lib.root / "rocket.jpg"), str(lib.root / "hubble.jpg"))
    assert problem(shapes.DISTINCT, distinct) is None
    restored = _json(lib, "quarantine", "restore", str(listed["quarantined"][0]["id"]))
    assert "restored" in restored["results"][0]
    assert problem(shapes.RESTORE, restored) is None
    failed = _json(lib, "quarantine", "restore", str(lib.root / "hubble.jpg"), exit_code=1)
    assert failed["results"][0]["error"] == "not in quarantine"
    assert problem(shapes.RESTORE, failed) is None
