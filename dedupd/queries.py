"""The answers dedupd gives, as JSON-ready dicts, read from the store (and the index).

Every function here only reads; `service` calls them for the daemon and for dedupctl alike,
and `render` prints what they return. Changes (restore, purge, distinct) live in `service`.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from contextlib import AbstractContextManager, nullcontext
from pathlib import Path
from typing import TYPE_CHECKING, Any

from dedupd.config import Config
from dedupd.engine import Group, duplicate_groups
from dedupd.errors import NotFoundError
from dedupd.hashers import INVERSE, TRANSFORMS, Hasher
from dedupd.store import FileRecord, Store, from_db

if TYPE_CHECKING:
    from dedupd.index import HammingIndex

__all__ = [
    "all_roots",
    "file_info",
    "file_json",
    "groups",
    "groups_json",
    "quarantine_list",
    "search",
]


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
                    _match_json(m.record, m.distance, bits, kind=m.kind, transform=m.transform)
                    for m in g.duplicates
                ],
            }
            for g in found
        ]
    }


def all_roots(store: Store) -> list[str]:
    return [from_db(row[0]) for row in store.db.execute("SELECT DISTINCT root FROM files")]


def groups(store: Store, config: Config) -> dict[str, Any]:
    hasher = Hasher(config.hashing.algorithm, config.hashing.hash_size)
    return groups_json(duplicate_groups(store, config, all_roots(store)), hasher.bits)


def file_info(store: Store, hasher: Hasher, path: str | Path) -> dict[str, Any]:
    """One file's record and its matches. Raises NotFoundError."""
    path = Path(path).expanduser().absolute()
    record = store.file_at(path)
    if record is None:
        raise NotFoundError(f"{path}: not in the database (is it under a watched root?)")
    return {
        "file": file_json(record),
        "matches": [
            _match_json(m.other, m.distance, hasher.bits, kind=m.kind, transform=m.transform)
            for m in store.matches_of(record.id, hasher.key)
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
    lock: AbstractContextManager[Any] | None = None,
    variants: Sequence[bytes] = (),
) -> dict[str, Any]:
    """The indexed files nearest to `bits`: the k nearest, or up to k within `threshold`.

    With `variants` (the query image's 8 rotations and mirrors, hashers.TRANSFORMS order),
    by the nearest of them; each result's `transform` takes it to the query image.
    `lock` guards the index lookup alone (the daemon's ingest lock), not the record reads.
    """
    queries = list(variants) or [bits]
    with lock or nullcontext():
        if threshold is None:
            found = index.knn_any(queries, k)
        else:
            found = index.radius_any(queries, hasher.radius(threshold))[:k]
    records = store.files(m.id for m in found)
    sha = query.get("sha256")
    return {
        "query": query,
        "hasher": hasher.key,
        "results": [
            _match_json(
                records[m.id],
                m.distance,
                hasher.bits,
                exact=records[m.id].sha256 == sha,
                transform=INVERSE[TRANSFORMS[m.variant]],
            )
            for m in found
            if m.id in records
        ],
    }


def quarantine_list(
    store: Store, *, root: str | None = None, since: float | None = None
) -> dict[str, Any]:
    """What is in quarantine now, optionally only from under `root` or since a time."""
    fields = ("id", "src", "dst", "keeper_path", "distance", "reason", "finished")
    entries = []
    for e in store.quarantined():
        if root is not None and not e.src.startswith(root.rstrip(os.sep) + os.sep):
            continue
        if since is not None and (e.finished or 0) < since:
            continue
        entries.append({k: getattr(e, k) for k in fields})
    return {"quarantined": entries}
