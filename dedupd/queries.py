"""The answers dedupd gives, as JSON-ready dicts, read from the store (and the index).

Every function here only reads; `service` calls them for the daemon and for dedupctl alike,
and `render` prints what they return. Changes (restore, purge, distinct) live in `service`.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from contextlib import AbstractContextManager, nullcontext
from pathlib import Path
from typing import TYPE_CHECKING, Any

import structlog

from dedupd.actions import motion_paths
from dedupd.config import Config
from dedupd.engine import Group, Ingest, duplicate_groups
from dedupd.errors import NotFoundError
from dedupd.hashers import INVERSE, TRANSFORMS, Hasher
from dedupd.store import ActionRecord, FileRecord, Store, from_db

if TYPE_CHECKING:
    from dedupd.filestat import LocalFeatures
    from dedupd.index import CropIndex, HammingIndex

__all__ = [
    "all_roots",
    "file_info",
    "file_json",
    "groups",
    "groups_json",
    "quarantine_list",
    "search",
]

log = structlog.get_logger("dedupd.queries")


def file_json(r: FileRecord) -> dict[str, Any]:
    return {
        "id": r.id,
        "path": str(r.path),
        "root": r.root,
        "size": r.size,
        "width": r.width,
        "height": r.height,
        "format": r.format,
        "sha256": r.sha256,
        "taken_at": r.taken_at,
        "duration": r.duration,
        "state": r.state,
        "error_kind": r.error_kind,
        "error": r.error,
    }


def _match_json(r: FileRecord, distance: int, bits: int, **extra: Any) -> dict[str, Any]:
    return {**file_json(r), "distance": distance, "normalized": round(distance / bits, 4), **extra}


def groups_json(found: Sequence[Group], bits: int) -> dict[str, Any]:
    return {
        "groups": [
            {
                "keeper": file_json(g.keeper),
                "duplicates": [
                    _match_json(
                        m.record,
                        m.distance,
                        bits,
                        kind=m.kind,
                        transform=m.transform,
                        **({"detail": m.detail} if m.detail is not None else {}),
                        **({"via": str(m.via.path)} if m.via is not None else {}),
                    )
                    for m in g.duplicates
                ],
            }
            for g in found
        ]
    }


def all_roots(store: Store) -> list[str]:
    return [from_db(row[0]) for row in store.db.execute("SELECT DISTINCT root FROM files")]


def groups(store: Store, config: Config) -> dict[str, Any]:
    """The duplicate groups, and how many photos are in quarantine: groups no longer list
    what was quarantined, and an empty answer must not read as "nothing was ever found"."""
    hasher = Hasher(config.hashing.algorithm, config.hashing.hash_size)
    answer = groups_json(duplicate_groups(store, config, all_roots(store)), hasher.bits)
    answer["in_quarantine"] = store.quarantined_count()
    return answer


def file_info(
    store: Store, hasher: Hasher, path: str | Path, video_key: str | None = None
) -> dict[str, Any]:
    """One file's record and its matches (a clip's under `video_key`, with what the frame
    votes measured as `detail`). Raises NotFoundError."""
    path = Path(path).expanduser().absolute()
    record = store.file_at(path)
    if record is None:
        raise NotFoundError(f"{path}: not in the database (is it under a watched root?)")
    from dedupd.features import FEATURES_KEY

    found = store.matches_of(record.id, hasher.key)
    if video_key is not None:
        found += store.matches_of(record.id, video_key)
    matched = {m.other.id for m in found}
    # Crop pairs (the crop stage's own rows), unless also an exact or near match: near wins.
    found += [m for m in store.matches_of(record.id, FEATURES_KEY) if m.other.id not in matched]
    still = store.still_of(record.root, record.relpath)
    return {
        "file": {
            **file_json(record),
            **_live(store, record),
            "still": str(still.path) if still is not None else None,
        },
        "matches": [
            _match_json(
                m.other,
                m.distance,
                hasher.bits,
                kind=m.kind,
                transform=m.transform,
                **({"detail": dict(m.detail)} if m.detail is not None else {}),
            )
            for m in found
        ],
    }


def search(
    store: Store,
    index: HammingIndex,
    hasher: Hasher,
    bits: bytes,
    *,
    k: int,
    threshold: float | None,
    query: dict[str, Any],
    policy_threshold: Callable[[str], float],
    widest: int,
    lock: AbstractContextManager[Any] | None = None,
    variants: Sequence[bytes] = (),
    features: LocalFeatures | None = None,
    crops: CropIndex | None = None,
    clips: Ingest | None = None,
    frames: Sequence[bytes] = (),
) -> dict[str, Any]:
    """Up to k indexed files nearest to `bits`: those within `threshold`, or without one,
    those within the threshold of the policy of their own root (the files that would count
    as duplicates of it there). Each result says whether it is within its policy's
    threshold (`duplicate`) and what that threshold is.

    With `variants` (the query image's 8 rotations and mirrors, hashers.TRANSFORMS order),
    by the nearest of them; each result's `transform` takes it to the query image.
    `policy_threshold(root)` is a root's normalized threshold, `widest` the largest radius in
    bits of any policy; `lock` guards the index lookup alone (the daemon's ingest lock), not
    the record reads.

    With the query image's local `features` and the `crops` index, the answer also lists
    (`crops`) the indexed photos that are a crop of it or of which it is a crop, as the crop
    stage finds them (candidates by shared words, verified geometrically).

    With `clips` (the owner of the frame index), a clip with a frame within `threshold` (by
    default the hasher's default threshold, as frames match in ingest) of the image is listed
    too, as kind "frame" with the times of those frames (`at`, seconds). With `frames` (the
    hashes of a query clip's frames), only clips are searched: those that match it as ingest
    would match it ("video", or "contains" with `detail` saying which holds the other).
    """
    if frames:
        results = _clips_like(store, clips, frames, query) if clips is not None else []
        results = results[:k]
        return {"query": query, "hasher": hasher.key, "threshold": threshold, "results": results}
    queries = list(variants) or [bits]
    with lock or nullcontext():
        radius = widest if threshold is None else hasher.radius(threshold)
        found = index.radius_any(queries, radius)
    records = store.files(m.id for m in found)
    sha = query.get("sha256")
    results = []
    for m in found:
        record = records.get(m.id)
        if record is None:
            continue
        limit = policy_threshold(record.root)
        if m.variant != 0:  # a turned match counts within the tighter turned threshold
            limit = min(limit, hasher.turned_threshold)
        within = hasher.radius(limit)
        if threshold is None and m.distance > within:
            continue
        results.append(
            _match_json(
                record,
                m.distance,
                hasher.bits,
                exact=record.sha256 == sha,
                duplicate=m.distance <= within,
                threshold=limit,
                transform=INVERSE[TRANSFORMS[m.variant]],
                **_live(store, record),
            )
        )
        if len(results) == k:
            break
    if clips is not None and len(clips.frames):
        radius = clips.frame_radius if threshold is None else hasher.radius(threshold)
        like = _frames_like(store, clips, bits, radius, hasher.bits)
        if like:
            results = sorted(results + like, key=lambda r: r["distance"])[:k]  # stable
    answer = {"query": query, "hasher": hasher.key, "threshold": threshold, "results": results}
    if features is not None and crops is not None:
        near = {r["id"] for r in results}
        answer["crops"] = [
            c for c in crop_search(store, crops, features, hasher.bits, lock) if c["id"] not in near
        ]
    return answer


def crop_search(
    store: Store,
    crops: CropIndex,
    features: LocalFeatures,
    bits: int,
    lock: AbstractContextManager[Any] | None = None,
) -> list[dict[str, Any]]:
    """The indexed photos in a crop relation with an image of these local `features` (not
    itself indexed): what `Ingest._crops` finds for a newcomer, without recording anything.
    A candidate whose stored features cannot be read (damaged) is skipped and logged; the
    daemon drops such a row when a newcomer meets it. Raises ValueError for query features
    of another kind."""
    from dedupd.engine import CROP_CANDIDATES, CROP_MIN_SHARED
    from dedupd.features import Features, verify

    mine = Features.from_local(features)
    with lock or nullcontext():
        proposed = crops.candidates(mine.words, CROP_CANDIDATES, min_shared=CROP_MIN_SHARED)
    records = store.files(c.id for c in proposed)
    theirs = store.features_of(list(records), features.kind)
    out = []
    for c in proposed:
        record = records.get(c.id)
        if record is None or record.state != "ok" or c.id not in theirs:
            continue
        try:
            other = Features.from_local(theirs[c.id])
        except ValueError as exc:
            log.warning("crop_features_unreadable", file_id=c.id, reason=str(exc))
            continue
        fit = verify(mine, other)
        if fit is not None:
            # the query image has no id: 0 names it
            crop, original = (0, c.id) if fit.cropped == "first" else (c.id, 0)
            detail = fit.detail(crop, original)
            out.append(
                _match_json(record, round(100 * (1 - fit.kept)), bits, kind="crop", detail=detail)
            )
    return out


def _frames_like(
    store: Store, clips: Ingest, bits: bytes, radius: int, nbits: int
) -> list[dict[str, Any]]:
    """The clips with a frame within `radius` bits of a still image's hash."""
    with clips.lock:
        votes = clips.frames.votes([bits], radius)
    records = store.files(votes)
    out = []
    for clip_id, v in votes.items():
        record = records.get(clip_id)
        stored = store.video_frames(clip_id, clips.video_key)
        if record is None or stored is None:
            continue
        at = sorted(stored.times[j] for j in v.theirs if j < len(stored.times))
        out.append(_match_json(record, v.distance, nbits, kind="frame", duplicate=True, at=at))
    return out


def _clips_like(
    store: Store, clips: Ingest, frames: Sequence[bytes], query: dict[str, Any]
) -> list[dict[str, Any]]:
    """The clips that match a query clip of `frames`, the same clip first, nearest first."""
    found = clips.clip_matches(frames)
    records = store.files(found)
    out = []
    for clip_id, (d, kind, measured) in found.items():
        record = records.get(clip_id)
        if record is None:
            continue
        detail = {k: v for k, v in measured.items() if k != "inside"}
        if "inside" in measured:  # "other": the query holds this clip
            detail["file"] = "query"
            detail["container"] = "query" if measured["inside"] == "other" else clip_id
        out.append(
            _match_json(
                record,
                d,
                clips.hasher.bits,
                kind=kind,
                exact=record.sha256 == query.get("sha256"),
                duplicate=True,
                detail=detail,
            )
        )
    out.sort(key=lambda r: (r["kind"] != "video", r["distance"], r["path"]))
    return out


def quarantine_list(
    store: Store, *, root: str | None = None, since: float | None = None
) -> dict[str, Any]:
    """What is in quarantine now, optionally only from under `root` or since a time. Each
    entry also has the records of the quarantined photo (`file`) and of its keeper
    (`keeper`), or None: their size, pixels, format and capture date, for the review page."""
    fields = (
        "id", "src", "dst", "keeper_path", "distance", "reason", "finished", "file_id",
        "keeper_id",
    )
    entries = []
    for e in store.quarantined():
        if root is not None and not e.src.startswith(root.rstrip(os.sep) + os.sep):
            continue
        if since is not None and (e.finished or 0) < since:
            continue
        records = store.files(i for i in (e.file_id, e.keeper_id) if i is not None)
        file, keeper = (records.get(i) if i is not None else None for i in (e.file_id, e.keeper_id))
        motion = motion_paths(e)
        entries.append(
            {
                **{k: getattr(e, k) for k in fields},
                "kind": _kind(store, e),
                "file": None if file is None else file_json(file),
                "keeper": None if keeper is None else file_json(keeper),
                # a Live Photo's motion file, quarantined with it: from, to
                "motion": motion[0] if motion else None,
                "motion_dst": motion[1] if motion else None,
            }
        )
    return {"quarantined": entries}


def _live(store: Store, record: FileRecord) -> dict[str, Any]:
    """A Live Photo still's motion file, shown with it: the two are one item."""
    motion = store.motion_of(record.id)
    return {"motion": str(motion.path) if motion is not None else None}


def _kind(store: Store, e: ActionRecord) -> str | None:
    """"exact" when the keeper held the quarantined bytes when the file was quarantined (as
    journaled; for an older entry, when it holds them now), else "near" (its distance is
    between perceptual hashes: 0 for a resized copy, which is not the same file); None
    without a keeper."""
    if e.keeper_sha256 is not None and e.keeper_sha256 == e.sha256:
        return "exact"
    keeper = store.file(e.keeper_id) if e.keeper_id is not None else None
    if keeper is None:
        return None if e.keeper_path is None else "near"
    if e.keeper_sha256 is None and keeper.sha256 == e.sha256:
        return "exact"
    from dedupd.features import FEATURES_KEY

    if e.file_id is not None and any(
        m.other.id == keeper.id and m.kind == "crop"
        for m in store.matches_of(e.file_id, FEATURES_KEY)
    ):
        return "crop"  # its distance is the percent of the keeper's frame cut away
    return "near"
