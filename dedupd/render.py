"""Text and JSON for every answer dedupd prints. Pure: answers in, strings out.

The answers are the JSON-ready dicts the `service` returns (the same whether they came from
the daemon's socket or from the database), so one printer serves both; `scan_report` and
`scan_json` print a `ScanReport`, which `dedupd scan` computes itself.
"""

from __future__ import annotations

import json
import os
import time
from collections import Counter
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from dedupd.engine import Group, Outcome, ScanReport

__all__ = [
    "duration",
    "file_info",
    "group_dicts",
    "groups",
    "groups_json",
    "map_written",
    "progress",
    "purged",
    "quarantine",
    "report_written",
    "restored",
    "review_started",
    "scan_json",
    "scan_report",
    "search",
    "shown",
    "size",
    "status",
    "to_json",
]


def shown(text: object) -> str:
    """`text` (a file name, or a message naming one) safe to print on a terminal: a name can
    hold any byte but "/" and NUL, and one with escape sequences, carriage returns, newlines
    or bidirectional overrides would otherwise rewrite what the table around it says (which
    file was quarantined, which one is kept). Such characters are shown as Python escapes
    (backslashes then doubled, so that the escaped form is unambiguous); anything else,
    including the raw bytes of a name that is not UTF-8, is printed as it is. JSON output
    needs none of this (`json.dumps` escapes them)."""
    text = str(text)
    if not any(_unsafe(c) for c in text):
        return text
    return "".join(_escaped(c) if _unsafe(c) or c == "\\" else c for c in text)


def _unsafe(c: str) -> bool:
    """Whether `c` must not reach a terminal as it is: control, format (bidirectional
    marks and overrides), separator other than space, or a name's raw C1 byte. A name's
    other raw bytes (surrogate escapes of 0xA0-0xFF) are printed as the bytes they are."""
    if c.isprintable():
        return False
    return not 0xDCA0 <= ord(c) <= 0xDCFF


def _escaped(c: str) -> str:
    if c == "\\":
        return "\\\\"
    if 0xDC80 <= ord(c) <= 0xDCFF:  # a raw byte of a name that is not UTF-8
        return f"\\x{ord(c) - 0xDC00:02x}"
    return repr(c)[1:-1]


def to_json(answer: dict[str, Any]) -> str:
    """Indented JSON; a path that is not UTF-8 comes out as a \\udcXX escape (lossless for
    json.loads + os.fsencode)."""
    return json.dumps(answer, indent=2)


def size(n: int) -> str:
    value = float(n)
    for unit in ("B", "KB", "MB", "GB"):
        if value < 1000 or unit == "GB":
            return f"{value:.0f} {unit}" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1000
    raise AssertionError("unreachable")


def _when(ts: float) -> str:
    return time.strftime("%Y-%m-%d %H:%M", time.localtime(ts))


def _pixels(r: dict[str, Any]) -> str:
    return f"{r['width']}x{r['height']}" if r["width"] else "-"


def groups_json(found: Sequence[Group], bits: int) -> dict[str, Any]:
    """Duplicate groups in the shape of the `groups` answer (queries owns that shape)."""
    from dedupd.queries import groups_json as shape

    return shape(found, bits)


def group_dicts(groups: list[dict[str, Any]], bits: int) -> str:
    lines = []
    for g in groups:
        k = g["keeper"]
        lines.append(f"\n{shown(k['path'])}  {_pixels(k)}  {size(k['size'])}  keeper")
        for m in g["duplicates"]:
            exact = m["kind"] == "exact"
            # Matched with another member, not with the keeper (a crop of a near copy):
            # that match is shown, and with which file.
            via = m.get("via")
            if m["kind"] == "crop":
                how = _crop(m, m["id"], shown(via) if via else "the keeper")
            else:
                near = f"near {m['distance']}/{bits} ({m['distance'] / bits:.3f})"
                how = _clip(m, bits) or ("exact" if exact else near) + _turned(m)
                how += f" of {shown(via)}" if via else ""
            mark = "=" if exact and not via else "#" if m["kind"] == "crop" else "~"
            lines.append(f"  {mark} {shown(m['path'])}  {_pixels(m)}  {size(m['size'])}  {how}")
    return "\n".join(lines)


def _acted(outcomes: Sequence[Outcome]) -> str:
    """What the scan's decisions did to files, for its summary line: the groups it lists are
    those left in place, so a scan that quarantined every duplicate it found lists none."""
    moved = [o for o in outcomes if o.decision.acts]
    done: Counter[str] = Counter(o.decision.action for o in moved if o.result == "done")
    said = [
        f"{done[a]} {past}"
        for a, past in (("quarantine", "quarantined"), ("delete", "deleted"))
        if done[a]
    ]
    if previewed := sum(o.result == "dry run" for o in moved):
        said.append(f"{previewed} to move or delete (dry run: none moved)")
    if failed := sum(o.result.startswith("failed") for o in moved):
        said.append(f"{failed} failed")
    return "; " + ", ".join(said) if said else ""


def _about(root: str, why: str) -> str:
    """`why` a root is unavailable, led by the root unless `why` already starts with it (it
    may name a folder above the root instead: the link that was not followed)."""
    return shown(why) if why.startswith(root + ": ") else f"{shown(root)}: {shown(why)}"


def scan_report(report: ScanReport, bits: int) -> str:
    dups = sum(len(g.duplicates) for g in report.groups)
    lines = [
        f"scanned {len(report.roots)} root(s) in {report.seconds:.1f}s: {report.files} files, "
        f"{report.hashed} hashed, {report.unchanged} unchanged, {report.renamed} renamed, "
        f"{report.missing} missing, {len(report.failed)} errors, "
        f"{len(report.groups)} duplicate groups ({dups} duplicates)" + _acted(report.outcomes)
    ]
    lines += [f"unavailable: {_about(root, why)}" for root, why in report.unavailable]
    lines += [
        f"unreadable: {shown(folder)}: {shown(why)} (not looked at; its photos' records kept)"
        for folder, why in report.unreadable
    ]
    lines += [f"error: {shown(path)}: {f.kind}: {shown(f.message)}" for path, f in report.failed]
    for o in report.outcomes:
        if o.decision.acts:
            lines.append(
                f"{o.decision.action}: "
                f"{shown(o.decision.target.path if o.decision.target else o.path)}"
                f" ({shown(o.result)}; keeper "
                f"{shown(o.decision.keeper.path) if o.decision.keeper else '-'};"
                f" {shown(o.decision.rule)})"
            )
    text = "\n".join(lines)
    found = group_dicts(groups_json(report.groups, bits)["groups"], bits)
    return text + ("\n" + found if found else "")


def scan_json(report: ScanReport, bits: int) -> dict[str, Any]:
    return {
        "roots": report.roots,
        "files": report.files,
        "hashed": report.hashed,
        "unchanged": report.unchanged,
        "renamed": report.renamed,
        "missing": report.missing,
        "seconds": round(report.seconds, 3),
        "errors": [{"path": p, "kind": f.kind, "message": f.message} for p, f in report.failed],
        "unavailable": [{"root": r, "reason": why} for r, why in report.unavailable],
        "unreadable": [{"folder": f, "reason": why} for f, why in report.unreadable],
        "actions": [
            {
                "path": o.path,
                "action": o.decision.action,
                "result": o.result,
                "rule": o.decision.rule,
                "target": str(o.decision.target.path) if o.decision.target else None,
                "keeper": str(o.decision.keeper.path) if o.decision.keeper else None,
            }
            for o in report.outcomes
            if o.decision.acts
        ],
        "groups": groups_json(report.groups, bits)["groups"],
    }


def duration(seconds: float) -> str:
    """A short human duration: 42s, 3m 21s, 2h 05m."""
    s = round(seconds)
    if s < 60:
        return f"{s}s"
    if s < 3600:
        return f"{s // 60}m {s % 60:02}s"
    return f"{s // 3600}h {s % 3600 // 60:02}m"


def progress(done: int, total: int, rate: float, eta_s: float | None) -> str:
    """`512/3000 (17%), 12.3 files/s, 3m 21s left`: a backlog's or a scan's progress."""
    percent = 100 * done // total if total else 100
    left = duration(eta_s) if eta_s is not None else "?"
    return f"{done}/{total} ({percent}%), {rate:.1f} files/s, {left} left"


def status(s: dict[str, Any]) -> str:
    index = s["index"]
    queue = s["queue"]
    rebuilt = _when(index["last_rebuild"]) if index["last_rebuild"] else "-"
    lines = [
        f"dedupd running (pid {s['pid']}, up {s['uptime_s']:.0f}s), hasher {s['hasher']}",
        f"indexed   {s['indexed']} ({index['backend']}, {index['pending']} pending, "
        f"last rebuild {rebuilt})",
    ]
    crops = s.get("crops")  # an older daemon does not say
    if crops is not None:
        lines.append("crops     " + _crop_index(crops))
    backlog = s.get("backlog")
    if backlog:
        lines.append(
            "backlog   "
            + progress(backlog["done"], backlog["total"], backlog["rate"], backlog["eta_s"])
            + f"; {backlog['queued']} queued, {backlog['hashing']} hashing"
        )
    lines += [
        f"queue     {queue['backlog']} to hash, {queue['hashing']} hashing, "
        f"{queue['settling']} settling",
        f"done      {s['stats']['hashed']} hashed, {s['stats']['acted']} acted on, "
        + (f"{s['stats']['failed']} actions failed, " if s["stats"].get("failed") else "")
        + f"{s['stats']['errors']} errors since start",
    ]
    for r in s["roots"]:
        lines.append(f"root      {shown(r['path'])}  {r['state']}  policy {shown(r['policy'])}")
        if r["state"] == "polling" and r.get("reason"):  # an older daemon gives none
            lines.append(f"          {shown(r['reason'])}; rescanned periodically")
    lines += [
        f"error     {shown(e['path'])}: {e['kind']}: {shown(e['error'])}"
        for e in s["recent_errors"]
    ]
    lines += [  # answers from an older daemon have none
        f"failed    {f['action']} {shown(f['path'])}: {shown(f['result'])}"
        for f in s.get("recent_failures", [])
    ]
    lines += [
        f"unreadable {shown(u['folder'])}: {shown(u['reason'])} (its photos are not looked at)"
        for u in s.get("unreadable", [])
    ]
    return "\n".join(lines)


def _crop_index(crops: dict[str, Any]) -> str:
    """`270512 photos (12 pending)`, `loading…` or `off`: the crop stage's candidate index."""
    if not crops["enabled"]:
        return "off (hashing.crops: false)"
    if crops["loading"]:
        return f"loading the index of stored photos… ({crops['size']} added meanwhile)"
    return f"{crops['size']} photos ({crops['pending']} pending)"


def _turned(match: dict[str, Any]) -> str:
    """", rot90" when a match is a rotated or mirrored copy (answers from an older daemon
    say nothing about it)."""
    transform = match.get("transform") or "identity"
    return "" if transform == "identity" else f", {transform}"


def search(answer: dict[str, Any], bits: int) -> str:
    lines = [f"{'distance':<8}  {'bits':>7}  {'pixels':>11}  {'size':>9}  path"]
    for r in answer["results"]:
        beyond = (
            f"  (not a duplicate: beyond its policy's {r['threshold']:.3f})"
            if not r.get("duplicate", True)
            else ""
        )
        how = _clip(r, bits)
        lines.append(
            f"{r['normalized']:<8.3f}  {r['distance']:>3}/{bits}  {_pixels(r):>11}  "
            f"{size(r['size']):>9}  {shown(r['path'])}"
            + (f"  ({r['transform']})" if r.get("transform", "identity") != "identity" else "")
            + (f"  ({how})" if how else "")
            + beyond
            + _motion(r)
        )
    if not answer["results"]:
        lines = []
    for r in answer.get("crops", []):
        lines.append(
            f"{'crop':<8}  {'':>7}  {_pixels(r):>11}  {size(r['size']):>9}  {shown(r['path'])}"
        )
        lines.append(f"          {_crop(r, r['id'], 'the image')}")
    return "\n".join(lines)


def groups(answer: dict[str, Any], bits: int) -> str:
    held = answer.get("in_quarantine", 0)  # an older daemon does not say
    note = f"{_photos(held)} in quarantine: `dedupctl quarantine list`" if held else ""
    if not answer["groups"]:
        return "no duplicates found" + (f"; {note}" if note else "")
    found = f"{len(answer['groups'])} duplicate groups\n" + group_dicts(answer["groups"], bits)
    return found + (f"\n\n{note}" if note else "")


def _photos(n: int) -> str:
    return f"{n} photo" if n == 1 else f"{n} photos"


def _age(seconds: float) -> str:
    """An age as people say it: `30 days`, `12 hours`, `90 seconds`."""
    for unit, size in (("week", 604800), ("day", 86400), ("hour", 3600), ("minute", 60)):
        if seconds >= size and seconds % size == 0:
            n = int(seconds // size)
            return f"{n} {unit}" + ("s" if n != 1 else "")
    return f"{seconds:g} second" + ("s" if seconds != 1 else "")


def file_info(answer: dict[str, Any], bits: int) -> str:
    f = answer["file"]
    lines = [shown(f["path"]), f"  state     {f['state']}"]
    if f["state"] == "error":
        lines.append(f"  error     {f['error_kind']}: {shown(f['error'])}")
    lines += [
        f"  size      {size(f['size'])}",
        f"  pixels    {_pixels(f)}",
        f"  format    {f['format'] or '-'}",
        f"  taken     {f['taken_at'] or '-'}",
        *([f"  duration  {f['duration']:g} s"] if f.get("duration") is not None else []),
        f"  sha256    {f['sha256'] or '-'}",
    ]
    if f.get("motion"):  # an older daemon does not say
        lines.append(f"  live      with its motion file {shown(f['motion'])}")
    if f.get("still"):
        lines.append(f"  live      the motion file of {shown(f['still'])}; moves only with it")
    if not answer["matches"]:
        lines.append("  no matches")
    for m in answer["matches"]:
        exact = m["kind"] == "exact"
        if m["kind"] == "crop":
            how = _crop(m, m["id"], "this file")
        else:
            near = f"near {m['distance']}/{bits}{_turned(m)}"
            how = _clip(m, bits) or ("exact" if exact else near)
        mark = "=" if exact else "#" if m["kind"] == "crop" else "~"
        lines.append(f"  {mark} {shown(m['path'])}  {how}")
    return "\n".join(lines)


def _crop(m: dict[str, Any], other_id: int, this: str) -> str:
    """How a crop pair reads: which file is the crop, and how much of the frame it keeps."""
    detail = m.get("detail") or {}
    kept = detail.get("kept")
    share = f"{kept:.0%} of" if isinstance(kept, int | float) else "part of"
    fit = f", {detail['inliers']} matching points" if "inliers" in detail else ""
    if detail.get("crop") == other_id:
        return f"crop: keeps {share} {this}{fit}"
    return f"crop: {this} keeps {share} it{fit}"


def _clip(m: dict[str, Any], bits: int) -> str | None:
    """How a clip match reads ("video 12/256, 9 of 10 frames"), None for a photo's."""
    kind, detail = m.get("kind"), m.get("detail") or {}
    frames = ""
    if "matched" in detail:
        frames = f", {detail['matched']} of {detail['frames']} frames"
    if kind == "video":
        return f"video {m['distance']}/{bits}{frames}"
    if kind == "contains":
        holds = detail.get("container") == detail.get("file")
        where = "holds that clip" if holds else "inside that clip"
        return f"{where} {m['distance']}/{bits}{frames}"
    if kind == "frame":
        at = ", ".join(f"{t:g}s" for t in m.get("at", [])[:5])
        return f"a frame of this clip at {at}" if at else "a frame of this clip"
    return None


def quarantine(answer: dict[str, Any], *, filtered: bool = False) -> str:
    """The entries; `filtered`: by --root or --since, so that none is not "empty"."""
    entries = answer["quarantined"]
    if not entries:
        return "nothing in quarantine matches" if filtered else "quarantine is empty"
    return "\n".join(
        f"{e['id']:>5}  {_when(e['finished'])}  {shown(e['src'])}\n"
        + (f"       with its motion file {shown(e['motion'])}\n" if e.get("motion") else "")
        + f"       keeper {shown(e['keeper_path'] or '-')}  {_how(e)}  ({shown(e['reason'])})"
        for e in entries
    )


def _motion(r: dict[str, Any]) -> str:
    """A Live Photo's motion file, named after its still: the two are one item."""
    motion = r.get("motion")  # an older daemon does not say
    return f"  (Live Photo, with {shown(os.path.basename(motion))})" if motion else ""


def _how(e: dict[str, Any]) -> str:
    """How a quarantined photo matched its keeper: a perceptual distance of 0 (a resized
    copy) must not read as "the same bytes"."""
    kind = e.get("kind")  # an older daemon does not say
    if kind == "exact":
        return "exact (same bytes)"
    if e["distance"] is None:
        return "distance -"
    if kind == "crop":
        return f"crop of it, {e['distance']}% of its frame cut away"
    return f"{'near, ' if kind == 'near' else ''}distance {e['distance']}"


def restored(result: dict[str, Any]) -> str:
    """One item of a restore's answer: the line for stdout, or the error for stderr."""
    if "restored" in result:
        return f"restored {shown(result['restored'])}"
    return f"error: {shown(result['item'])}: {shown(result['error'])}"


def purged(count: int, younger: int = 0, older_than: float = 0.0) -> str:
    """What a purge did, and what it kept for being younger than `older_than`."""
    text = f"purged {count} photos" if count else "nothing to purge"
    if younger:
        are = "is" if younger == 1 else "are"
        text += (
            f"; {_photos(younger)} {are} younger than {_age(older_than)};"
            " --older-than 0 to purge them"
        )
    return text


def review_started(url: str) -> str:
    """The one line `dedupctl review` prints: the page's URL, with its token."""
    return f"review page: {url}  (Ctrl-C to stop)"


def report_written(path: str, answer: dict[str, Any]) -> str:
    n = len(answer["groups"])
    return f"wrote {shown(path)}: {n} duplicate group{'' if n == 1 else 's'}, thumbnails inline"


def map_written(path: str, drawn: int, total: int, pictures: int, links: int) -> str:
    sampled = f"{drawn} of {total} indexed photos" if drawn < total else f"all {total} photos"
    linked = f"{links} duplicate link" + ("" if links == 1 else "s")
    return f"wrote {shown(path)}: {sampled} drawn, {pictures} as thumbnails, {linked}"
