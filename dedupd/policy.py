"""Pure decisions: which file of a duplicate pair is kept, and what happens to the other.

No filesystem, no clock: everything needed is in the records passed in. `actions` carries
out what `decide` returns.
"""

from __future__ import annotations

from collections.abc import Callable, Collection, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Literal

from dedupd.config import Action, KeepRule, Policy
from dedupd.store import FileRecord, MatchKind

__all__ = ["KEEP_RULES", "Candidate", "Decision", "decide", "rank"]


def _capture_time(r: FileRecord) -> float:
    """Seconds since the epoch: the EXIF capture time when the camera wrote one (camera-local,
    read as this machine's local time), otherwise the file's mtime."""
    if r.taken_at:
        try:
            return datetime.fromisoformat(r.taken_at).timestamp()
        except ValueError:
            pass
    return r.mtime_ns / 1e9


KEEP_RULES: dict[KeepRule, Callable[[FileRecord], object]] = {
    # Each key sorts the preferred file first.
    "highest_resolution": lambda r: -r.pixels,
    "largest_file": lambda r: -r.size,
    "oldest": _capture_time,
    "newest": lambda r: -_capture_time(r),
}


def rank(files: Sequence[FileRecord], rules: Sequence[KeepRule]) -> list[FileRecord]:
    """`files` best first by the ordered keep `rules`; the path breaks any remaining tie."""
    return sorted(files, key=lambda r: (*(KEEP_RULES[rule](r) for rule in rules), str(r.path)))


@dataclass(frozen=True, slots=True)
class Candidate:
    """An indexed file that matches the newcomer."""

    record: FileRecord
    distance: int
    kind: MatchKind


@dataclass(frozen=True, slots=True)
class Decision:
    """What to do about one newcomer, and why (`rule` is logged and recorded)."""

    action: Action | Literal["none"]
    rule: str
    target: FileRecord | None = None  # the file acted on (the newcomer unless opted in)
    keeper: FileRecord | None = None
    distance: int | None = None
    kind: MatchKind | None = None
    dry_run: bool = False

    @property
    def acts(self) -> bool:
        """True when files would be moved or deleted (even if only in a dry run)."""
        return self.action in ("quarantine", "delete")


def _seconds_apart(a: FileRecord, b: FileRecord) -> float | None:
    if not (a.taken_at and b.taken_at):
        return None
    try:
        return abs(
            (
                datetime.fromisoformat(a.taken_at) - datetime.fromisoformat(b.taken_at)
            ).total_seconds()
        )
    except ValueError:
        return None


def decide(
    newcomer: FileRecord,
    candidates: Sequence[Candidate],
    *,
    policies: Mapping[str, Policy],
    default: Policy,
    distinct: Collection[str] = (),
    tombstone: Mapping[str, Any] | None = None,
    dry_run: bool = False,
) -> Decision:
    """Decide what happens to `newcomer` given its matches.

    `policies` maps a root (as the store names it) to its policy; `distinct` holds the
    sha256 of files the user said differ from the newcomer; `tombstone` is the journal entry
    of an earlier quarantine or delete of the same bytes, if any.
    """
    policy = policies.get(newcomer.root, default)
    dry_run = dry_run or policy.dry_run
    if policy.reference:
        if candidates:
            return Decision("report", "reference roots are never acted on", dry_run=dry_run)
        return Decision("none", "no duplicate")
    live = [c for c in candidates if c.record.sha256 not in distinct]
    if tombstone is not None and tombstone["kind"] in ("quarantine", "delete"):
        # The same bytes were removed from this path before and a sync client brought them
        # back: repeat that, without consulting the keep rules again, but only while its
        # keeper is still here (and not marked distinct) and the policy still acts.
        match = next((c for c in live if c.record.id == tombstone["keeper_id"]), None)
        acts = match is not None and (policy.exact if match.kind == "exact" else policy.near) in (
            "quarantine",
            "delete",
        )
        if match is not None and acts:
            keeper = match.record
            action: Action = tombstone["kind"]
            if action == "delete" and (match.kind != "exact" or keeper.sha256 != newcomer.sha256):
                action = "quarantine"  # a delete needs its exact keeper; quarantine instead
            return Decision(
                action,
                f"tombstone: {tombstone['kind']}d before (action {tombstone['id']})",
                newcomer,
                keeper,
                match.distance,
                match.kind,
                dry_run,
            )
    if not live:
        return Decision("none", "marked distinct" if candidates else "no duplicate")
    best = min(live, key=lambda c: (c.kind != "exact", c.distance, str(c.record.path)))
    other = best.record
    if best.kind == "near":
        apart = _seconds_apart(newcomer, other)
        if apart is not None and apart <= policy.burst_seconds:
            return Decision(
                "report",
                f"burst: shot {apart:g}s apart",
                newcomer,
                other,
                best.distance,
                best.kind,
                dry_run,
            )
    other_policy = policies.get(other.root, default)
    if other_policy.reference:
        keeper, target = other, newcomer
        rule = "the match is in a reference root"
    else:
        keeper = rank([newcomer, other], policy.keep)[0]
        target = other if keeper is newcomer else newcomer
        rule = f"keep: {', '.join(policy.keep)}"
    if target is not newcomer and not policy.act_on_existing:
        return Decision(
            "report",
            "the newcomer is the better copy; acting on an existing file needs act_on_existing",
            target,
            keeper,
            best.distance,
            best.kind,
            dry_run,
        )
    if target is not newcomer and policies.get(target.root, default).reference:
        return Decision(
            "report",
            "reference roots are never acted on",
            target,
            keeper,
            best.distance,
            best.kind,
            dry_run,
        )
    action = policy.exact if best.kind == "exact" else policy.near
    if action == "delete" and (best.kind != "exact" or target.sha256 != keeper.sha256):
        action = "quarantine"  # config forbids this; never let a near match delete
    return Decision(action, rule, target, keeper, best.distance, best.kind, dry_run)
