"""Pure decisions: which file of a duplicate pair is kept, and what happens to the other.

No filesystem, no clock: everything needed is in the records passed in. `actions` carries
out what `decide` returns.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Collection, Mapping, Sequence
from dataclasses import dataclass, replace
from datetime import datetime
from pathlib import PurePosixPath
from typing import Literal

from dedupd.config import Action, Keep, KeepRule, Policy, PreferFolders
from dedupd.hashers import LOW_DETAIL_DOMINANT, LOW_DETAIL_QUALITY, Transform
from dedupd.store import ActionRecord, FileRecord, MatchKind

__all__ = [
    "CROP_CONFIRM_INLIERS",
    "CROP_CONFIRM_RATIO",
    "KEEP_RULES",
    "Candidate",
    "CropEvidence",
    "Decision",
    "SecondOpinion",
    "decide",
    "describe",
    "is_copy_name",
    "prefers",
    "rank",
]


def _capture_time(r: FileRecord) -> float:
    """Seconds since the epoch: the EXIF capture time when the camera wrote one (camera-local,
    read as this machine's local time), otherwise the file's mtime."""
    if r.taken_at:
        try:
            return datetime.fromisoformat(r.taken_at).timestamp()
        except ValueError:
            pass
    return r.mtime_ns / 1e9


_Key = Callable[[FileRecord], object]  # sorts the preferred file first

# A copy's name is the original's stem plus one of these, as file managers, browsers, phones
# and sync tools make them. A suffix counts only when the stem without it is the name of
# another file compared (and numbers have 1-3 digits), so `IMG_1234` is never a copy of
# `IMG_123`, and `IMG_1234_1` is a copy only next to an `IMG_1234`: alone it is just a name.
_COPY_SUFFIX = re.compile(
    r"""(?:
        \ ?\(\d{1,3}\)                                   # " (1)", "(2)": Windows, browsers
      | (?:\ -\ |[\ _-])copy(?:\ ?\(\d{1,3}\)|\ \d{1,3})?  # " copy 2", "-copy", " - Copy (2)"
      | \ \((?:conflicted\ )?copy\b[^)]*\)               # " (copy)", Nextcloud/Dropbox
      | [_-]\d{1,3}                                      # "_1", "-2": phones, scripts
      | \.sync-conflict-\d{8}-\d{6}(?:-[A-Z0-9]{7})?      # Syncthing
    )$""",
    re.IGNORECASE | re.VERBOSE,
)


def _stem(r: FileRecord) -> str:
    return PurePosixPath(r.relpath).stem.casefold()


def is_copy_name(stem: str, others: Collection[str]) -> bool:
    """True when `stem` is one of `others` plus copy suffixes (`IMG_1 (1) (1)` of `IMG_1`).
    Compared case-insensitively; `others` must be casefolded."""
    stem = stem.casefold()
    for _ in range(4):  # a few suffixes deep is a copy of a copy; more is a name
        match = _COPY_SUFFIX.search(stem)
        if match is None or match.start() == 0:
            return False
        stem = stem[: match.start()]
        if stem in others:
            return True
    return False


def _original_name(files: Sequence[FileRecord]) -> _Key:
    stems = {_stem(r) for r in files}
    return lambda r: is_copy_name(_stem(r), stems)  # False (the original) sorts first


def _each(key: _Key) -> Callable[[Sequence[FileRecord]], _Key]:
    """A rule that needs only the file itself."""
    return lambda files: key


KEEP_RULES: dict[KeepRule, Callable[[Sequence[FileRecord]], _Key]] = {
    # Each rule, given the files compared, returns a key that sorts the preferred file first.
    "highest_resolution": _each(lambda r: -r.pixels),
    "largest_file": _each(lambda r: -r.size),
    "original_name": _original_name,
    "oldest": _each(_capture_time),
    "newest": _each(lambda r: -_capture_time(r)),
}


def _prefer_folders(rule: PreferFolders) -> _Key:
    def key(r: FileRecord) -> int:
        path = r.path
        return next(
            (i for i, f in enumerate(rule.folders) if path.is_relative_to(f)), len(rule.folders)
        )

    return key


# A copy whose frame holds this much more uniform border than another's (a letterbox, a
# phone's screenshot of the photo: `FileRecord.framed`) is made from the photo it shows, never
# the other way round: it is never kept over the one with less, whatever the keep rules say.
# Its canvas counts as resolution, and a screenshot's PNG outweighs the JPEG, so
# `highest_resolution` and `largest_file` alone kept a screenshot and quarantined the camera's
# original. Measured: the test photos' phone screenshots are 54-69% border; none of
# bench/accuracy.py's 21 photos (a retina scan on black, a text page, the moon) has any the
# trim takes. A photo's own flat edge (a sky blown out to white, a night sky crushed to black)
# is border too, as much of it on each copy give or take a few percent (resized,
# re-encoded): compared with the least framed copy, not with none, so that it neither
# makes the photo lose to its smaller copy nor lets its screenshot win.
FRAMED = 0.05


def _bordered(files: Sequence[FileRecord]) -> Callable[[FileRecord], bool]:
    """Which of `files` have `FRAMED` more border than the least framed; none while one of
    them was recorded before dedupd measured it (its border is unknown, not none)."""
    measured = [r.framed for r in files if r.framed is not None]
    if len(measured) < len(files):
        return lambda r: False
    least = min(measured, default=0.0)
    return lambda r: (r.framed or 0.0) - least >= FRAMED


def _keys(files: Sequence[FileRecord], rules: Sequence[Keep]) -> list[tuple[object, ...]]:
    """Each file's sort key under `rules` (no tie-break), a copy with more border
    (`FRAMED`) after the others first."""
    fitted = [
        _prefer_folders(rule) if isinstance(rule, PreferFolders) else KEEP_RULES[rule](files)
        for rule in rules
    ]
    bordered = _bordered(files)
    return [(bordered(r), *(key(r) for key in fitted)) for r in files]


def rank(files: Sequence[FileRecord], rules: Sequence[Keep]) -> list[FileRecord]:
    """`files` best first by the ordered keep `rules`; the path breaks any remaining tie."""
    keys = _keys(files, rules)
    order = sorted(range(len(files)), key=lambda i: (keys[i], str(files[i].path)))
    return [files[i] for i in order]


def prefers(a: FileRecord, b: FileRecord, rules: Sequence[Keep]) -> bool:
    """True when the keep `rules` alone rank `a` before `b` (a tie is False)."""
    key_a, key_b = _keys([a, b], rules)
    return key_a < key_b


def describe(rules: Sequence[Keep]) -> str:
    return ", ".join(map(str, rules))


@dataclass(frozen=True, slots=True)
class SecondOpinion:
    """What a second, independent hash says about a near pair, and how much detail the two
    images have: measured by the caller (the worker hashed both files with the second hasher
    in the same decode), judged by `decide`. None where a file has no such measure yet."""

    hasher: str  # the second hasher's name, for the reason (e.g. "pdq")
    distance: int | None  # bits apart under it; None: one of the files lacks that hash
    radius: int  # the largest distance at which it agrees (its own calibrated threshold)
    quality: int | None = None  # the lower of the two images' PDQ quality (0-100)
    dominant: float | None = None  # the larger of the two images' share in one tone
    quality_floor: int = LOW_DETAIL_QUALITY
    max_dominant: float = LOW_DETAIL_DOMINANT

    def refusal(self) -> str | None:
        """Why a perceptual match alone must not move a file, or None when it may."""
        if self.quality is not None and self.quality < self.quality_floor:
            return (
                f"low detail (PDQ quality {self.quality} < {self.quality_floor}): a perceptual"
                " match alone never moves it"
            )
        if self.dominant is not None and self.dominant >= self.max_dominant:
            return (
                f"low detail ({self.dominant:.0%} of the pixels in one tone, a document, text"
                " or flat frame): a perceptual match alone never moves it"
            )
        if self.distance is None:
            return f"no second opinion yet ({self.hasher} hash missing for one of the two)"
        if self.distance > self.radius:
            return (
                f"second opinion disagrees: {self.hasher} {self.distance} bits apart"
                f" (> {self.radius})"
            )
        return None


# What confirms a crop before it moves a file (the crop stage's second opinion): a stricter
# geometric fit than the one that finds it (features.MIN_INLIERS = 24 matches agreeing, a
# quarter of the matches). Distinct photos peaked at 21 agreeing matches in calibration (two
# quarters of one grass texture); crops keeping half the frame mostly measure 40 and more.
CROP_CONFIRM_INLIERS = 40
CROP_CONFIRM_RATIO = 0.5


@dataclass(frozen=True, slots=True)
class CropEvidence:
    """What the crop stage measured of a crop pair, and how much detail the two images have:
    measured by the caller (features.verify, and the stored PDQ quality and dominant tone),
    judged by `decide`."""

    crop_id: int  # which of the two files is the crop (the other is the larger frame)
    kept: float  # the fraction of the larger frame's area the crop shows
    inliers: int  # descriptor matches that agree with the fitted transform
    ratio: float  # inliers / matches
    # Pixels of the larger frame's file per pixel of the crop's file, along a side, over the
    # shared part: below 1, the crop holds that part sharper than its "original" does (a
    # screenshot that shows a photo, smaller), so the crop is not the worse copy.
    resolution: float
    quality: int | None = None  # the lower of the two images' PDQ quality (0-100)
    dominant: float | None = None  # the larger of the two images' share in one tone
    min_inliers: int = CROP_CONFIRM_INLIERS
    min_ratio: float = CROP_CONFIRM_RATIO
    # A plain crop saved at its pixels measures 1.0 give or take the fit's error (~2%);
    # a screenshot showing a photo at a third of its size, ~0.3.
    min_resolution: float = 0.9
    quality_floor: int = LOW_DETAIL_QUALITY
    max_dominant: float = LOW_DETAIL_DOMINANT

    def refusal(self) -> str | None:
        """Why this crop match alone must not move a file, or None when it may."""
        if self.quality is None or self.dominant is None:
            return "no detail measure for one of the two: a crop match alone never moves it"
        if self.quality < self.quality_floor:
            return (
                f"low detail (PDQ quality {self.quality} < {self.quality_floor}): a crop match"
                " alone never moves it"
            )
        if self.dominant >= self.max_dominant:
            return (
                f"low detail ({self.dominant:.0%} of the pixels in one tone): a crop match alone"
                " never moves it"
            )
        if self.inliers < self.min_inliers or self.ratio < self.min_ratio:
            return (
                f"crop fit not confirmed ({self.inliers} matches agree, {self.ratio:.0%} of"
                f" them; moving needs {self.min_inliers} and {self.min_ratio:.0%})"
            )
        if self.resolution < self.min_resolution:
            return (
                f"the crop is sharper than the larger frame ({self.resolution:.2f} px of it per"
                " px of the crop): it is no worse copy"
            )
        return None


@dataclass(frozen=True, slots=True)
class Candidate:
    """An indexed file that matches the newcomer."""

    record: FileRecord
    distance: int
    kind: MatchKind
    transform: Transform = "identity"  # the newcomer is `record` rotated/mirrored so
    # A near match moves a file only when this agrees; None: nobody asked, so it never does.
    second: SecondOpinion | None = None
    # A crop match: what was measured, which file is the crop; a crop never moves without it.
    crop: CropEvidence | None = None


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
    # How the newcomer relates to the match decided on: "identity" (upright), or the rotation
    # or mirror that takes the match to the newcomer ("rot90", "mirror", ...).
    transform: Transform | None = None

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


_STRENGTH: tuple[Action, ...] = ("report", "quarantine", "delete")


# Which kind of match a decision rests on first: an exact match, then a near match (a photo)
# or the same clip (a video), then a crop (a photo) or a clip inside another (a video).
_KIND_ORDER: dict[MatchKind, int] = {"exact": 0, "near": 1, "video": 1, "crop": 2, "contains": 2}


def _preference(c: Candidate) -> tuple[int, int, bool, str]:
    """Which match a decision rests on: exact first, then the nearest, upright on a tie, then
    crops (the one keeping most of the frame first: its distance is the percent cut away); a
    clip inside another (or holding it) only when no clip is the same."""
    return (_KIND_ORDER[c.kind], c.distance, c.transform != "identity", str(c.record.path))


def _action_of(policy: Policy, kind: MatchKind) -> Action:
    return {"exact": policy.exact, "crop": policy.crop}.get(kind, policy.near)


def decide(
    newcomer: FileRecord,
    candidates: Sequence[Candidate],
    *,
    policies: Mapping[str, Policy],
    default: Policy,
    distinct: Collection[str] = (),
    tombstone: ActionRecord | None = None,
    dry_run: bool = False,
    quarantine: bool = True,
) -> Decision:
    """Decide what happens to `newcomer` given its matches.

    `policies` maps a root (as the store names it) to its policy; `distinct` holds the
    sha256 of files the user said differ from the newcomer; `tombstone` is the journal entry
    of an earlier quarantine or delete of the same bytes, if any; `quarantine`: whether a
    quarantine folder is configured.

    A near match moves a file only when its candidate's second opinion agrees and neither
    image is low-detail; a crop only when its evidence confirms it (`CropEvidence.refusal`);
    otherwise the decision is downgraded to `report`, saying why. A delete whose keeper is
    on another filesystem is downgraded to a quarantine (`report` without a quarantine
    folder): see `_keeper_elsewhere`.
    """
    decision = _keeper_elsewhere(
        _decide(
            newcomer,
            candidates,
            policies=policies,
            default=default,
            distinct=distinct,
            tombstone=tombstone,
            dry_run=dry_run,
        ),
        quarantine,
    )
    if decision.acts and decision.kind == "contains":
        # One clip holds the other: the shorter one may be the cut someone made on purpose.
        return replace(
            decision,
            action="report",
            rule=f"a clip inside a longer one is only reported; {decision.rule}",
        )
    if not decision.acts or decision.kind not in ("near", "crop"):
        return decision
    other = decision.keeper if decision.target is newcomer else decision.target
    match = next((c for c in candidates if other is not None and c.record.id == other.id), None)
    if decision.kind == "crop":
        evidence = match.crop if match is not None else None
        refusal = "no crop evidence" if evidence is None else evidence.refusal()
        moving = decision.target
        if refusal is None and evidence is not None and moving is not None and (
            evidence.crop_id != moving.id
        ):
            # Whatever chose the target (a reference root's match, a tombstone of a pair
            # whose frame was cut down since), the larger frame never moves for a crop: it
            # holds what the crop lacks.
            refusal = "the file that would move is the larger frame, not the crop"
        if refusal is not None:
            return replace(decision, action="report", rule=f"{refusal}; {decision.rule}")
        return decision
    second = match.second if match is not None else None
    refusal = "no second opinion asked for" if second is None else second.refusal()
    if second is None or refusal is not None:
        return replace(decision, action="report", rule=f"{refusal}; {decision.rule}")
    return replace(
        decision, rule=f"{decision.rule}; {second.hasher} agrees ({second.distance} bits)"
    )


def _keeper_elsewhere(decision: Decision, quarantine: bool) -> Decision:
    """A delete needs its keeper on the target's filesystem (the same st_dev): only there
    does another inode prove another file. A filesystem may show a file of another one under
    its own device number (overlayfs over a root, a mergerfs or unionfs pool of a branch
    that is a root too, an NFS or SMB mount of a local disk, a FUSE view), and deleting the
    target would then take its "keeper" with it. Such an exact duplicate is quarantined
    instead (restorable), or only reported without a quarantine folder. `actions` checks the
    same again by descriptor just before deleting."""
    target, keeper = decision.target, decision.keeper
    if decision.action != "delete" or target is None or keeper is None:
        return decision
    if target.dev == keeper.dev:
        return decision
    done = "quarantined" if quarantine else "only reported"
    return replace(
        decision,
        action="quarantine" if quarantine else "report",
        rule=f"{decision.rule}; {done}, not deleted: its keeper is on another filesystem,"
        " which may show this very file (an overlay, union or network mount)",
    )


def _decide(
    newcomer: FileRecord,
    candidates: Sequence[Candidate],
    *,
    policies: Mapping[str, Policy],
    default: Policy,
    distinct: Collection[str],
    tombstone: ActionRecord | None,
    dry_run: bool,
) -> Decision:
    policy = policies.get(newcomer.root, default)
    dry_run = dry_run or policy.dry_run
    if policy.reference:
        if candidates:
            return Decision("report", "reference roots are never acted on", dry_run=dry_run)
        return Decision("none", "no duplicate")
    live = [c for c in candidates if c.record.sha256 not in distinct]
    if tombstone is not None and tombstone.kind in ("quarantine", "delete"):
        # The same bytes were removed from this path before and a sync client brought them
        # back: repeat that, without consulting the keep rules again, but only while its
        # keeper is still here (and not marked distinct) and the policy still acts.
        match = next((c for c in live if c.record.id == tombstone.keeper_id), None)
        acts = match is not None and _action_of(policy, match.kind) in ("quarantine", "delete")
        if match is not None and acts:
            keeper = match.record
            # What was done before, unless the policy now asks for less (a delete turned
            # into a quarantine since).
            now = _action_of(policy, match.kind)
            action: Action = min(tombstone.kind, now, key=_STRENGTH.index)
            if action == "delete" and (match.kind != "exact" or keeper.sha256 != newcomer.sha256):
                action = "quarantine"  # a delete needs its exact keeper; quarantine instead
            return Decision(
                action,
                f"tombstone: {tombstone.kind}d before (action {tombstone.id})",
                newcomer,
                keeper,
                match.distance,
                match.kind,
                dry_run,
                match.transform,
            )
    if not live:
        return Decision("none", "marked distinct" if candidates else "no duplicate")
    best = min(live, key=_preference)
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
                best.transform,
            )
    other_policy = policies.get(other.root, default)
    if other_policy.reference:
        keeper, target = other, newcomer
        rule = "the match is in a reference root"
    elif best.kind == "crop":
        # The larger frame is the original: the crop is what may go, whatever the keep rules
        # say (a crop saved later is often the newest and, upscaled, the largest file).
        crop_id = best.crop.crop_id if best.crop is not None else newcomer.id
        keeper, target = (other, newcomer) if crop_id == newcomer.id else (newcomer, other)
        rule = "keep: the larger frame (the other is a crop of it)"
    else:
        if best.kind == "exact":
            # Identical bytes: no copy is better, so arrival order must not decide. The file
            # already here stays unless the keep rules (not the path tie-break) prefer the
            # newcomer, e.g. `IMG_1.jpg` arriving after `IMG_1 (1).jpg`.
            keeper = newcomer if prefers(newcomer, other, policy.keep) else other
        else:
            keeper = rank([newcomer, other], policy.keep)[0]
        target = other if keeper is newcomer else newcomer
        rule = f"keep: {describe(policy.keep)}"
    if target is not newcomer and best.kind != "exact" and not policy.act_on_existing:
        return Decision(
            "report",
            f"the newcomer is the {'larger frame' if best.kind == 'crop' else 'better copy'};"
            " acting on an existing file needs act_on_existing",
            target,
            keeper,
            best.distance,
            best.kind,
            dry_run,
            best.transform,
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
            best.transform,
        )
    action = _action_of(policy, best.kind)
    if target is not newcomer and best.kind == "exact":
        # Identical bytes: removing the worse-named existing copy loses nothing, so it needs
        # no act_on_existing; but the policy of the root it lives in must allow it too.
        action = min(action, policies.get(target.root, default).exact, key=_STRENGTH.index)
    if action == "delete" and (best.kind != "exact" or target.sha256 != keeper.sha256):
        action = "quarantine"  # config forbids this; never let a near or crop match delete
    return Decision(action, rule, target, keeper, best.distance, best.kind, dry_run, best.transform)
