"""Set-up shared by the benchmarks: a store filled in bulk as scans would leave it."""

from __future__ import annotations

import random
import time
from collections.abc import Sequence

from dedupd.imaging import FileStat
from dedupd.store import Store


def insert_hashed(
    store: Store,
    root: str,
    files: Sequence[tuple[str, FileStat, str]],
    hasher_key: str,
    rng: random.Random,
) -> None:
    """Records for (relpath, stat, sha256) under `root`, state ok, 4000x3000 JPEG, each with a
    random 256-bit hash under `hasher_key`, written in two bulk inserts."""
    now = time.time()
    conn = store.db.conn
    with conn:
        conn.executemany(
            "INSERT INTO files (id, root, relpath, dev, inode, size, mtime_ns, sha256, width,"
            " height, format, state, first_seen, updated) VALUES"
            " (?, ?, ?, ?, ?, ?, ?, ?, 4000, 3000, 'JPEG', 'ok', ?, ?)",
            (
                (i + 1, root, rel, st.dev, st.inode, st.size, st.mtime_ns, sha, now, now)
                for i, (rel, st, sha) in enumerate(files)
            ),
        )
        conn.executemany(
            "INSERT INTO hashes (file_id, hasher, bits) VALUES (?, ?, ?)",
            ((i + 1, hasher_key, rng.randbytes(32)) for i in range(len(files))),
        )
