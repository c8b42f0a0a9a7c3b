"""The shape of every answer on the control socket, and the check dedupctl makes of one.

dedupctl uses what the daemon answers as it is: the printers in `render`, the commands in
`cli` and the review page index into it. Anything that listens on the socket's path and
speaks HTTP with JSON could otherwise make a command die with a KeyError deep in a printer
(a red team's fake server did). So `control.ControlClient` checks every answer as it
arrives, against the shape its endpoint declares in `ANSWERS`, and raises
DaemonAnswerInvalid for one that does not fit: nothing else in dedupctl sees it.

A shape declares the fields dedupctl reads, with their types; fields it does not read are
not checked, so a newer daemon may add some. Written as data:

- a leaf: STR, INT, NUM, BOOL, TIME, a constant (`Const(True)`), or None (JSON null);
- `{"key": shape, "key?": shape}`: an object with those keys (`?`: may be absent, as in
  answers of an older daemon); other keys are allowed;
- `[shape]`: a list whose items all have that shape; `Row(a, b)`: a list of exactly those;
- `(a, b)`: any one of these shapes.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import TypeAlias

__all__ = [
    "ANSWERS",
    "BOOL",
    "ERROR",
    "INT",
    "NUM",
    "STR",
    "TIME",
    "Const",
    "Row",
    "Shape",
    "problem",
]


@dataclass(frozen=True)
class _Leaf:
    name: str  # what is expected, as the message says it: "a string"
    fits: Callable[[object], bool]


@dataclass(frozen=True)
class Const:
    """Exactly this JSON value (`true` is not `1`)."""

    value: object


class Row:
    """A list of exactly these items, in this order."""

    def __init__(self, *items: Shape):
        self.items = items


Shape: TypeAlias = "_Leaf | Const | Row | tuple[Shape, ...] | list[Shape] | dict[str, Shape] | None"


def _is_int(v: object) -> bool:
    # Within SQLite's integers: a 400-digit one would overflow float() in a printer.
    return isinstance(v, int) and not isinstance(v, bool) and -(2**63) <= v < 2**63


def _is_number(v: object) -> bool:
    return _is_int(v) or (isinstance(v, float) and math.isfinite(v))  # json.loads takes NaN


def _is_time(v: object) -> bool:
    # time.localtime() of a time in the year 10000 or later raises
    return _is_number(v) and 0 <= v < 253402300800  # type: ignore[operator]


STR = _Leaf("a string", lambda v: isinstance(v, str))
INT = _Leaf("an integer", _is_int)
NUM = _Leaf("a number", _is_number)
BOOL = _Leaf("true or false", lambda v: isinstance(v, bool))
TIME = _Leaf("a time (seconds since 1970, before the year 10000)", _is_time)


# -- the answers --------------------------------------------------------------------------------

# A photo's record (queries.file_json): printed by `show FILE`, a group's keeper, read by the
# review page (its id, path, root) and its thumbnails (sha256, format, size).
FILE: dict[str, Shape] = {
    "id": INT,
    "path": STR,
    "root": STR,
    "size": INT,
    "width": (INT, None),
    "height": (INT, None),
    "format": (STR, None),
    "sha256": (STR, None),
    "taken_at": (STR, None),
    "state": STR,
    "error_kind": (STR, None),
    "error": (STR, None),
    "duration?": (NUM, None),
}

# A record matched with something: how far, turned how, and what the crop or clip stage
# measured (`detail`, read with .get(): any object).
_MATCHED: dict[str, Shape] = {
    **FILE,
    "distance": INT,
    "transform?": (STR, None),
    "detail?": ({}, None),
    "at?": [NUM],
    "motion?": (STR, None),
}

# A group's duplicate, a file's match: their kind decides how they are printed.
_MEMBER: dict[str, Shape] = {**_MATCHED, "kind": STR, "via?": STR}

_RESULT: dict[str, Shape] = {**_MATCHED, "normalized": NUM, "kind?": STR}

STATUS: dict[str, Shape] = {
    "pid": INT,
    "uptime_s": NUM,
    "hasher": STR,
    "database?": (STR, None),
    "database_id?": (Row(INT, INT), None),
    "indexed": INT,
    "index": {"backend": STR, "pending": INT, "last_rebuild": (TIME, None)},
    "crops?": ({"enabled": BOOL, "loading": BOOL, "size": INT, "pending": INT}, None),
    "backlog?": (
        {
            "done": INT,
            "total": INT,
            "rate": NUM,
            "eta_s": (NUM, None),
            "queued": INT,
            "hashing": INT,
        },
        None,
    ),
    "queue": {"backlog": INT, "hashing": INT, "settling": INT},
    "stats": {"hashed": INT, "acted": INT, "errors": INT, "failed?": INT},
    "roots": [{"path": STR, "state": STR, "policy": STR, "reason?": (STR, None)}],
    "recent_errors": [{"path": STR, "kind": (STR, None), "error": (STR, None)}],
    "recent_failures?": [{"action": STR, "path": STR, "result": STR}],
    "unreadable?": [{"folder": STR, "reason": STR}],
}

SEARCH: dict[str, Shape] = {
    "hasher": STR,
    # One beyond its policy's threshold says which threshold that is.
    "results": [
        (
            {**_RESULT, "duplicate": Const(False), "threshold": NUM},
            {**_RESULT, "duplicate?": Const(True)},
        )
    ],
    "crops?": [{**_MATCHED, "kind?": STR}],
}

GROUPS: dict[str, Shape] = {
    "groups": [{"keeper": FILE, "duplicates": [_MEMBER]}],
    "in_quarantine?": INT,
}

FILE_INFO: dict[str, Shape] = {
    "file": {**FILE, "motion?": (STR, None), "still?": (STR, None)},
    "matches": [_MEMBER],
}

QUARANTINE: dict[str, Shape] = {
    "quarantined": [
        {
            "id": INT,
            "src": STR,
            "dst?": (STR, None),
            "keeper_path": (STR, None),
            "distance": (INT, None),
            "reason": (STR, None),
            "finished": TIME,  # `purge` compares it with now
            "kind?": (STR, None),
            "file?": (FILE, None),
            "keeper?": (FILE, None),
            "motion?": (STR, None),
        }
    ]
}

# The changes: what each command prints, and `purge` compares with what it asked for.
QUARANTINE_ADD: dict[str, Shape] = {"id": INT, "src": STR, "dst": (STR, None)}
RESTORE: dict[str, Shape] = {
    "results": [({"item?": STR, "restored": STR}, {"item": STR, "error": STR})]
}
PURGE: dict[str, Shape] = {"purged": [INT]}
DISTINCT: dict[str, Shape] = {"distinct": Row(STR, STR)}
RESCAN: dict[str, Shape] = {"queued": [STR]}
RELOAD: dict[str, Shape] = {"roots": [STR]}

# Each endpoint's answer (200), by its path after /v1/ (control.ROUTES, both methods).
ANSWERS: dict[str, Shape] = {
    "status": STATUS,
    "search": SEARCH,
    "groups": GROUPS,
    "files": FILE_INFO,
    "quarantine": QUARANTINE,
    "quarantine/add": QUARANTINE_ADD,
    "quarantine/restore": RESTORE,
    "quarantine/purge": PURGE,
    "distinct": DISTINCT,
    "rescan": RESCAN,
    "reload": RELOAD,
}

# Every answer that is not 200: its error and why.
ERROR: dict[str, Shape] = {"error": STR, "detail?": (STR, None)}


# -- the check ----------------------------------------------------------------------------------


@dataclass(frozen=True)
class _Misfit:
    where: str  # the field, as `roots[0].state`; "" for the answer itself
    expected: str  # "" when the field is missing
    got: str

    def __str__(self) -> str:
        field = self.where or "the answer"
        if not self.expected:
            return f"{field}: missing"
        return f"{field}: expected {self.expected}, got {self.got}"


def problem(shape: Shape, value: object) -> str | None:
    """What is wrong with `value` (an answer as json.loads made it) for `shape`, as one
    line naming the field; None when it fits. Names no value it was given, only its kind:
    the answer may come from anyone."""
    misfit = _misfit(shape, value, "")
    return None if misfit is None else str(misfit)


def _misfit(shape: Shape, value: object, where: str) -> _Misfit | None:
    if shape is None:
        return None if value is None else _Misfit(where, "null", _kind(value))
    if isinstance(shape, _Leaf):
        return None if shape.fits(value) else _Misfit(where, shape.name, _kind(value))
    if isinstance(shape, Const):
        fits = type(value) is type(shape.value) and value == shape.value
        return None if fits else _Misfit(where, _kind(shape.value), _kind(value))
    if isinstance(shape, dict):
        return _object(shape, value, where)
    if isinstance(shape, list):
        if not isinstance(value, list):
            return _Misfit(where, "a list", _kind(value))
        (item,) = shape
        return next(
            (m for i, v in enumerate(value) if (m := _misfit(item, v, f"{where}[{i}]"))), None
        )
    if isinstance(shape, Row):
        if not isinstance(value, list) or len(value) != len(shape.items):
            return _Misfit(where, f"a list of {len(shape.items)}", _kind(value))
        return next(
            (
                m
                for i, (s, v) in enumerate(zip(shape.items, value, strict=True))
                if (m := _misfit(s, v, f"{where}[{i}]"))
            ),
            None,
        )
    return _either(shape, value, where)


def _object(shape: dict[str, Shape], value: object, where: str) -> _Misfit | None:
    if not isinstance(value, dict):
        return _Misfit(where, "an object", _kind(value))
    for key, inner in shape.items():
        name = key.removesuffix("?")
        field = f"{where}.{name}" if where else name
        if name not in value:
            if key.endswith("?"):
                continue
            return _Misfit(field, "", "")
        if (misfit := _misfit(inner, value[name], field)) is not None:
            return misfit
    return None


def _either(shapes: tuple[Shape, ...], value: object, where: str) -> _Misfit | None:
    misfits = []
    for shape in shapes:
        misfit = _misfit(shape, value, where)
        if misfit is None:
            return None
        misfits.append(misfit)
    if all(m.where == where and m.expected for m in misfits):  # the value itself: say all
        return _Misfit(where, " or ".join(m.expected for m in misfits), misfits[0].got)
    # The form it came nearest to: the one whose misfit lies deepest in the value.
    return max(misfits, key=lambda m: (m.where != where, m.where.count(".") + m.where.count("[")))


def _kind(value: object) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int):
        return "an integer" if _is_int(value) else "an integer out of range"
    if isinstance(value, float):
        return "a number" if math.isfinite(value) else "a number out of range"
    if isinstance(value, str):
        return "a string"
    if isinstance(value, list):
        return f"a list of {len(value)}"
    if isinstance(value, dict):
        return "an object"
    return type(value).__name__
