"""Near-duplicate search in Hamming space.

Hashes are packed as rows of uint64 words. An index is a *snapshot* (built once, searched by
the backend) plus a *delta* of recent additions (searched by brute force), with removals as
tombstones; `rebuild()` folds the delta in and drops the tombstones. Two backends share that
life cycle and must answer every query identically (tests/test_index.py checks this):

- ``hamming``: XOR + ``np.bitwise_count`` over the packed words, in chunks. About 1 ms per
  radius query at a million 64-bit hashes, and 8 bytes per hash per 64 bits.
- ``ckdtree``: scipy's cKDTree over the unpacked bit vectors with a Minkowski metric; on
  0/1 vectors the L_p distance is hamming**(1/p). Kept because the project this descends from
  used it; it is much slower and larger.

Results are always sorted by (distance, id), so ties break the same way in every backend.

`radius_any` / `knn_any` look up several queries at once (a newcomer's 8 rotations and
mirrors) and answer each indexed hash once, with its distance to the nearest query and
which query that was (the first on a tie). The numpy backend reads the packed array once for
all of them; the index keeps one hash per photo.
"""

from __future__ import annotations

import itertools
import math
import threading
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from typing import TYPE_CHECKING, Literal, NamedTuple

import numpy as np
import numpy.typing as npt

if TYPE_CHECKING:
    from scipy.spatial import cKDTree

__all__ = [
    "BACKENDS",
    "INSIDE_SHARE",
    "MIN_SHARED",
    "SAME_SHARE",
    "Backend",
    "CKDTreeIndex",
    "ClipKind",
    "ClipVotes",
    "CropCandidate",
    "CropIndex",
    "FrameIndex",
    "HammingIndex",
    "Match",
    "NumpyIndex",
    "VariantMatch",
    "distance",
    "make_index",
    "pack",
]

Backend = Literal["hamming", "ckdtree"]
Words = npt.NDArray[np.uint64]
Ids = npt.NDArray[np.int64]

_CHUNK_ROWS = 1 << 16  # rows per XOR/popcount step: bounds temporary memory
_PAIR_CELLS = 1 << 22  # distance-matrix cells per block in all-pairs search
# Rows per step of a many-query scan: each word column is copied out contiguous once and then
# compared with every query while it is in cache (bench/index.py --variants).
_MULTI_ROWS = 1 << 15
# Up to this many (row, query) cells, a block is compared with all queries in one step.
_BROADCAST_CELLS = 1 << 16


def _tombstone(snap_ids: Ids, alive: npt.NDArray[np.bool_], ids: Ids) -> int:
    """Mark `ids` dead in a snapshot whose ids are sorted (`alive` says which rows still
    count); returns how many were alive. Ids not in the snapshot are left alone."""
    if not len(snap_ids) or not len(ids):
        return 0
    pos = np.searchsorted(snap_ids, ids).clip(0, len(snap_ids) - 1)
    hit = pos[snap_ids[pos] == ids]
    hit = hit[alive[hit]]
    alive[hit] = False
    return len(hit)


class Match(NamedTuple):
    id: int
    distance: int  # differing bits


class VariantMatch(NamedTuple):
    id: int
    distance: int  # differing bits from the nearest query
    variant: int  # that query's position in the queries asked


def words_for(bits: int) -> int:
    return max(1, math.ceil(bits / 64))


def pack(hashes: Sequence[bytes], bits: int) -> Words:
    """Packed hash bytes (as `Hasher` makes them) → an (N, words) uint64 array.

    Bits past `bits` in the last byte are cleared, so they never count as differences.
    """
    nbytes = math.ceil(bits / 8)
    width = words_for(bits) * 8
    rows = np.zeros((len(hashes), width), np.uint8)
    for i, h in enumerate(hashes):
        if len(h) != nbytes:
            raise ValueError(f"hash {i} has {len(h)} bytes, a {bits}-bit index expects {nbytes}")
        rows[i, :nbytes] = np.frombuffer(h, np.uint8)
    if bits % 8:
        rows[:, nbytes - 1] &= np.uint8((0xFF << (8 - bits % 8)) & 0xFF)
    return rows.view("<u8")


def _packed_words(packed: npt.NDArray[np.uint8], bits: int) -> Words:
    """(N, hash bytes) uint8 rows → (N, words) uint64, as `pack` makes them: a view of
    `packed` when its rows fill whole words, else a zero-padded copy; padding bits past
    `bits` are cleared (in `packed` itself when it is viewed)."""
    nbytes = math.ceil(bits / 8)
    width = words_for(bits) * 8
    if nbytes == width:
        rows = np.ascontiguousarray(packed)
    else:
        rows = np.zeros((len(packed), width), np.uint8)
        rows[:, :nbytes] = packed
    if bits % 8:
        rows[:, nbytes - 1] &= np.uint8((0xFF << (8 - bits % 8)) & 0xFF)
    words: Words = rows.view("<u8")
    return words


def distance(a: bytes, b: bytes) -> int:
    """Hamming distance between two packed hashes of equal length."""
    if len(a) != len(b):
        raise ValueError("hashes differ in length")
    return (int.from_bytes(a, "big") ^ int.from_bytes(b, "big")).bit_count()


def _unique(ids: Ids) -> Ids:
    """`np.unique(ids)`, without its cost for the single id of an ingest: its first call
    imports numpy.ma (85 ms, in every `dedupd scan` and at the daemon's first photo)."""
    return ids.copy() if len(ids) < 2 else np.unique(ids)


def _member(values: Ids, wanted: Ids) -> npt.NDArray[np.bool_]:
    """`np.isin(values, wanted)`, faster for the one or few ids of a single ingest: isin's
    set-up cost more than the rest of an index add (measured 40 of 90 us per photo)."""
    if len(wanted) > 8:
        return np.isin(values, wanted)
    found = np.zeros(len(values), bool)
    for w in wanted:
        found |= values == w
    return found


def _distances(words: Words, query: Words) -> npt.NDArray[np.uint32]:
    """Hamming distance from `query` (one packed row) to every row of `words`."""
    out = np.empty(len(words), dtype=np.uint32)
    for start in range(0, len(words), _CHUNK_ROWS):
        chunk = words[start : start + _CHUNK_ROWS]
        # Word by word: summing a (rows, words) count array over its short axis is many
        # times slower than these column adds (measured 23.5 → 10.4 ms at 1M x 256 bits).
        acc = np.bitwise_count(chunk[:, 0] ^ query[0]).astype(np.uint32)
        for w in range(1, len(query)):
            acc += np.bitwise_count(chunk[:, w] ^ query[w])
        out[start : start + len(chunk)] = acc
    return out


def _within_any(
    words: Words, queries: Words, radius: int
) -> tuple[Ids, npt.NDArray[np.uint32], Ids]:
    """(rows, distance, query) of every row of `words` within `radius` of each of `queries`
    (a row may come once per query), in one pass over `words`.

    Each block of rows is copied out word column by word column once (contiguous, in cache)
    and compared with every query; a query's distance is summed word by word only over the
    rows whose partial distance is still within `radius` (a partial distance never exceeds
    the whole), so with a 256-bit hash and a 10% radius the first word alone rules out ~94%
    of the rows. A partial distance over k words is at most 64 k, so the words that cannot
    rule anything out yet (while 64 k <= radius) are summed over every row without
    gathering the rows left: at pHash 16's default radius, 64 of 256 bits, the first word
    alone rules out nothing.
    """
    found_rows, found_d, found_q = [], [], []
    width = words.shape[1]
    dense = min(width, radius // 64 + 1)
    for start in range(0, len(words), _MULTI_ROWS):
        chunk = words[start : start + _MULTI_ROWS]
        cols = [np.ascontiguousarray(chunk[:, w]) for w in range(width)]
        if len(chunk) * len(queries) <= _BROADCAST_CELLS:
            # Few rows (a scan's fresh delta): all queries and words in a few steps, as
            # numpy's per-call cost, not the XORs, is then what a query costs.
            d = np.bitwise_count(cols[0][None, :] ^ queries[:, 0, None]).astype(np.uint16)
            for w in range(1, width):
                d += np.bitwise_count(cols[w][None, :] ^ queries[:, w, None])
            q, rows = np.nonzero(d <= radius)
            found_rows.append(rows + start)
            found_d.append(d[q, rows].astype(np.uint32))
            found_q.append(q.astype(np.int64))
            continue
        for v, query in enumerate(queries):
            d = np.bitwise_count(cols[0] ^ query[0])
            if dense > 1:
                d = d.astype(np.uint16)
                for w in range(1, dense):
                    d += np.bitwise_count(cols[w] ^ query[w])
            rows = np.flatnonzero(d <= radius)
            acc = d[rows].astype(np.uint32)
            for w in range(dense, width):
                acc += np.bitwise_count(cols[w][rows] ^ query[w])
                keep = acc <= radius
                rows, acc = rows[keep], acc[keep]
            found_rows.append(rows + start)
            found_d.append(acc)
            found_q.append(np.full(len(rows), v, np.int64))
    if not found_rows:
        return np.empty(0, np.int64), np.empty(0, np.uint32), np.empty(0, np.int64)
    return (
        np.concatenate(found_rows).astype(np.int64),
        np.concatenate(found_d),
        np.concatenate(found_q),
    )


def _best_per_row(
    rows: Ids, dists: npt.NDArray[np.uint32], which: Ids
) -> tuple[Ids, npt.NDArray[np.uint32], Ids]:
    """Each row once, with its smallest distance (and the first query giving it)."""
    order = np.lexsort((which, dists, rows))
    rows, dists, which = rows[order], dists[order], which[order]
    first = np.ones(len(rows), bool)
    first[1:] = rows[1:] != rows[:-1]
    return rows[first], dists[first], which[first]


def _cross_pairs(
    a: Words, b: Words, radius: int, *, upper: bool
) -> tuple[Ids, Ids, npt.NDArray[np.uint32]]:
    """Row pairs (i in a, j in b) within `radius`; with `upper`, a is b and only i < j."""
    found_i, found_j, found_d = [], [], []
    block = max(1, _PAIR_CELLS // max(1, len(b)))
    for start in range(0, len(a), block):
        rows = a[start : start + block]
        # Word by word, as in _distances: summing over a short last axis is slow.
        d = np.bitwise_count(rows[:, None, 0] ^ b[None, :, 0]).astype(np.uint32)
        for w in range(1, a.shape[1]):
            d += np.bitwise_count(rows[:, None, w] ^ b[None, :, w])
        i, j = np.nonzero(d <= radius)
        if upper:
            keep = j > i + start
            i, j = i[keep], j[keep]
        found_i.append(i + start)
        found_j.append(j)
        found_d.append(d[i, j])
    if not found_i:
        empty = np.empty(0, np.int64)
        return empty, empty, np.empty(0, np.uint32)
    return (
        np.concatenate(found_i).astype(np.int64),
        np.concatenate(found_j).astype(np.int64),
        np.concatenate(found_d),
    )


class _Rebuild:
    """A snapshot being built off the ingest thread from copies of the live hashes."""

    def __init__(self, ids: Ids, words: Words, marker: int):
        self.ids, self.words, self.marker = ids, words, marker
        self.removed: list[Ids] = []
        self.structure: object = None
        self.error: BaseException | None = None
        self.thread: threading.Thread

    def run(self, build: Callable[[Words], object]) -> None:
        try:
            self.structure = build(self.words)
        except BaseException as exc:  # re-raised by finish_rebuild on the owning thread
            self.error = exc


def _sorted_matches(ids: Ids, dists: npt.NDArray[np.uint32]) -> list[Match]:
    order = np.lexsort((ids, dists))
    return [Match(int(i), int(d)) for i, d in zip(ids[order], dists[order], strict=True)]


class HammingIndex:
    """Snapshot + delta + tombstones; subclasses supply the snapshot search."""

    backend: Backend

    def __init__(self, bits: int):
        if bits < 1:
            raise ValueError("bits must be >= 1")
        self.bits = bits
        self.width = words_for(bits)
        self._snap_ids: Ids = np.empty(0, np.int64)  # sorted, for searchsorted lookups
        self._snap_words: Words = np.empty((0, self.width), np.uint64)
        self._snap_alive = np.empty(0, bool)
        self._snap_struct: object = None
        self._reset_delta()
        self._rebuilding: _Rebuild | None = None
        self.last_rebuild: float | None = None  # wall-clock time of the last swap

    def _reset_delta(self) -> None:
        self._delta_ids: Ids = np.empty(16, np.int64)
        self._delta_words: Words = np.empty((16, self.width), np.uint64)
        self._delta_alive = np.zeros(16, bool)
        self._delta_len = 0
        self._dead = 0

    # -- to override --------------------------------------------------------------------
    def _structure(self, words: Words) -> object:
        """Build the snapshot's search structure. Runs on the rebuild thread: it must only
        read `words`, never the index. The numpy backend needs none."""
        return None

    def _snapshot_radius(self, query: Words, radius: int) -> tuple[Ids, npt.NDArray[np.uint32]]:
        """(row numbers, distances) of snapshot rows within `radius`, tombstones included."""
        d = _distances(self._snap_words, query)
        rows = np.flatnonzero(d <= radius)
        return rows, d[rows]

    def _snapshot_nearest(self, query: Words, k: int) -> tuple[Ids, npt.NDArray[np.uint32]]:
        """Snapshot rows no farther than the k-th nearest live one (all ties included)."""
        d = _distances(self._snap_words, query)
        live = d[self._snap_alive]
        if k >= len(live):
            return np.arange(len(d)), d
        rows = np.flatnonzero(d <= np.partition(live, k - 1)[k - 1])
        return rows, d[rows]

    def _snapshot_radius_any(
        self, queries: Words, radius: int
    ) -> tuple[Ids, npt.NDArray[np.uint32], Ids]:
        """(rows, distance to the nearest query, which query) of snapshot rows within
        `radius` of any query, tombstones included; one pass over the snapshot."""
        return _best_per_row(*_within_any(self._snap_words, queries, radius))

    def _snapshot_pairs(self, radius: int) -> tuple[Ids, Ids, npt.NDArray[np.uint32]]:
        return _cross_pairs(self._snap_words, self._snap_words, radius, upper=True)

    # -- changes ------------------------------------------------------------------------
    def __len__(self) -> int:
        return int(self._snap_alive.sum()) + int(self._delta_alive[: self._delta_len].sum())

    @property
    def pending(self) -> int:
        """Delta entries and tombstones a rebuild would fold in."""
        return self._delta_len + self._dead

    def add(self, ids: Iterable[int], hashes: Sequence[bytes]) -> None:
        """Add (or replace) hashes under `ids`. O(1) amortized per hash.

        Raises ValueError, changing nothing, for malformed hashes or an id named twice.
        """
        ids = np.fromiter(ids, np.int64)
        if len(ids) != len(hashes):
            raise ValueError("ids and hashes differ in length")
        if len(ids) > 1 and len(_unique(ids)) != len(ids):
            raise ValueError("an id appears twice in one batch")
        words = pack(hashes, self.bits)
        self.remove(ids)
        self._append(ids, words)

    def load_packed(self, ids: npt.ArrayLike, packed: npt.NDArray[np.uint8]) -> None:
        """Replace everything indexed with `packed` (an (N, hash bytes) uint8 array, rows as
        `Hasher` makes them) under `ids`, as a snapshot built now.

        The start-up load: no Python object per hash, and `packed` itself becomes the
        snapshot when its rows fill whole words and come in id order (the usual case), so a
        million 256-bit hashes cost their 32 MB and not several copies. `packed` is
        consumed: padding bits are cleared in place. Raises ValueError, changing nothing,
        for rows of the wrong length or an id named twice.
        """
        ids = np.asarray(ids, np.int64)
        nbytes = math.ceil(self.bits / 8)
        if packed.ndim != 2 or len(packed) != len(ids) or packed.dtype != np.uint8:
            raise ValueError("packed must be an (N, bytes) uint8 array with one row per id")
        if not len(ids):
            packed = np.empty((0, nbytes), np.uint8)
        elif packed.shape[1] != nbytes:
            raise ValueError(
                f"hashes have {packed.shape[1]} bytes, a {self.bits}-bit index expects {nbytes}"
            )
        if len(ids) > 1 and not bool(np.all(ids[1:] > ids[:-1])):
            order = np.argsort(ids, kind="stable")
            ids, packed = ids[order], packed[order]
            if bool(np.any(ids[1:] == ids[:-1])):
                raise ValueError("an id appears twice")
        words = _packed_words(packed, self.bits)
        self.finish_rebuild(wait=True)
        structure = self._structure(words)
        self._snap_ids, self._snap_words = ids, words
        self._snap_alive = np.ones(len(ids), bool)
        self._snap_struct = structure
        self._reset_delta()
        self.last_rebuild = time.time()

    def _append(self, ids: Ids, words: Words) -> None:
        end = self._delta_len + len(ids)
        if end > len(self._delta_ids):
            capacity = max(end, 2 * len(self._delta_ids))
            self._delta_ids = np.resize(self._delta_ids, capacity)
            self._delta_alive = np.resize(self._delta_alive, capacity)
            grown = np.empty((capacity, self.width), np.uint64)
            grown[: self._delta_len] = self._delta_words[: self._delta_len]
            self._delta_words = grown
        self._delta_ids[self._delta_len : end] = ids
        self._delta_words[self._delta_len : end] = words
        self._delta_alive[self._delta_len : end] = True
        self._delta_len = end

    def remove(self, ids: Iterable[int]) -> None:
        """Tombstone `ids`; unknown ids are ignored."""
        ids = _unique(np.asarray(ids if isinstance(ids, np.ndarray) else list(ids), np.int64))
        if not len(ids):
            return
        if self._rebuilding is not None:
            self._rebuilding.removed.append(ids)  # to apply to the snapshot being built
        self._dead += self._tombstone_snapshot(ids)
        n = self._delta_len
        hit = np.flatnonzero(_member(self._delta_ids[:n], ids) & self._delta_alive[:n])
        self._delta_alive[hit] = False
        self._dead += len(hit)

    def _tombstone_snapshot(self, ids: Ids) -> int:
        return _tombstone(self._snap_ids, self._snap_alive, ids)

    def rebuild(self) -> None:
        """Fold the delta into a new snapshot and drop tombstones, now."""
        self.finish_rebuild(wait=True)
        self.start_rebuild()
        self.finish_rebuild(wait=True)

    def start_rebuild(self) -> bool:
        """Begin a rebuild on a background thread; queries and changes go on meanwhile and
        `finish_rebuild()` swaps the result in. Returns False if one is already running."""
        if self._rebuilding is not None:
            return False
        n = self._delta_len
        live_s, live_d = self._snap_alive, self._delta_alive[:n]
        ids = np.concatenate([self._snap_ids[live_s], self._delta_ids[:n][live_d]])
        words = np.concatenate([self._snap_words[live_s], self._delta_words[:n][live_d]])
        order = np.argsort(ids, kind="stable")
        job = _Rebuild(ids[order], np.ascontiguousarray(words[order]), marker=n)
        job.thread = threading.Thread(
            target=job.run, args=(self._structure,), name="dedupd-index-rebuild", daemon=True
        )
        self._rebuilding = job
        job.thread.start()
        return True

    def finish_rebuild(self, *, wait: bool = False) -> bool:
        """Swap in a finished background rebuild (waiting for it with `wait`).

        The new snapshot replaces the old; additions made during the build stay in the
        delta, and removals made during the build are applied to the new snapshot.
        Returns True if a rebuild was swapped in.
        """
        job = self._rebuilding
        if job is None or (job.thread.is_alive() and not wait):
            return False
        job.thread.join()
        self._rebuilding = None
        if job.error is not None:
            raise job.error
        n0, n = job.marker, self._delta_len
        keep = self._delta_alive[n0:n]
        tail_ids, tail_words = self._delta_ids[n0:n][keep], self._delta_words[n0:n][keep]
        self._snap_ids, self._snap_words = job.ids, job.words
        self._snap_alive = np.ones(len(job.ids), bool)
        self._snap_struct = job.structure
        self._reset_delta()
        self._append(tail_ids, tail_words)
        if job.removed:
            self._dead += self._tombstone_snapshot(np.unique(np.concatenate(job.removed)))
        self.last_rebuild = time.time()
        return True

    def join_rebuild(self) -> None:
        """Wait until a background rebuild has built its snapshot (it is not swapped in)."""
        job = self._rebuilding
        if job is not None:
            job.thread.join()

    @property
    def rebuilding(self) -> bool:
        return self._rebuilding is not None

    # -- queries ------------------------------------------------------------------------
    def _query_words(self, query: bytes) -> Words:
        row: Words = pack([query], self.bits)[0]
        return row

    def _within(self, q: Words, radius: int) -> tuple[Ids, npt.NDArray[np.uint32]]:
        """(ids, distances) of the live hashes within `radius` of `q`, in no set order."""
        rows, dist = self._snapshot_radius(q, radius)
        live = self._snap_alive[rows]
        ids = [self._snap_ids[rows[live]]]
        dists = [dist[live]]
        n = self._delta_len
        if n:
            d = _distances(self._delta_words[:n], q)
            hit = np.flatnonzero((d <= radius) & self._delta_alive[:n])
            ids.append(self._delta_ids[hit])
            dists.append(d[hit])
        return np.concatenate(ids), np.concatenate(dists)

    def radius(self, query: bytes, radius: int) -> list[Match]:
        """Every indexed hash within `radius` bits of `query`, nearest first."""
        if radius < 0:
            return []
        return _sorted_matches(*self._within(self._query_words(query), radius))

    def radius_arrays(self, query: bytes, radius: int) -> tuple[Ids, npt.NDArray[np.uint32]]:
        """`radius` as two arrays, the ids ascending and their distances: no Python object
        per hit, for a caller that reduces many hits itself (`FrameIndex.votes`)."""
        if radius < 0:
            return np.empty(0, np.int64), np.empty(0, np.uint32)
        ids, dists = self._within(self._query_words(query), radius)
        # The numpy backend's snapshot hits come in id order already: the check costs a tenth
        # of a sort that finds them sorted (measured 0.04 vs 0.35 ms at 100k ids).
        if len(ids) > 1 and not bool(np.all(ids[1:] > ids[:-1])):
            order = np.argsort(ids, kind="stable")
            ids, dists = ids[order], dists[order]
        return ids, dists

    def radius_any(self, queries: Sequence[bytes], radius: int) -> list[VariantMatch]:
        """Every indexed hash within `radius` bits of any of `queries`, once, with its
        distance to the nearest of them and which that was; nearest first."""
        if radius < 0 or not queries:
            return []
        qs = pack(queries, self.bits)
        rows, dist, which = self._snapshot_radius_any(qs, radius)
        live = self._snap_alive[rows]
        ids, dists, whiches = [self._snap_ids[rows[live]]], [dist[live]], [which[live]]
        n = self._delta_len
        if n:
            rows, d, w = _best_per_row(*_within_any(self._delta_words[:n], qs, radius))
            hit = self._delta_alive[rows]
            ids.append(self._delta_ids[rows[hit]])
            dists.append(d[hit])
            whiches.append(w[hit])
        all_ids, all_d, all_w = (np.concatenate(x) for x in (ids, dists, whiches))
        order = np.lexsort((all_ids, all_d))
        return [
            VariantMatch(int(i), int(d), int(w))
            for i, d, w in zip(all_ids[order], all_d[order], all_w[order], strict=True)
        ]

    def knn_any(self, queries: Sequence[bytes], k: int) -> list[VariantMatch]:
        """The `k` hashes nearest to any of `queries` (by the nearest query), nearest first;
        ties broken by the smaller id, then the earlier query.

        Each of the k is among the k nearest of the query that is nearest to it, so the
        union of the per-query answers holds them all; a search runs once per user command.
        """
        best: dict[int, tuple[int, int]] = {}
        for v, query in enumerate(queries):
            for m in self.knn(query, k):
                if m.id not in best or (m.distance, v) < best[m.id]:
                    best[m.id] = (m.distance, v)
        ranked = sorted(best.items(), key=lambda item: (item[1][0], item[0]))
        return [VariantMatch(i, d, v) for i, (d, v) in ranked[:k]]

    def knn(self, query: bytes, k: int) -> list[Match]:
        """The `k` nearest hashes, nearest first; ties broken by the smaller id."""
        if k < 1:
            return []
        q = self._query_words(query)
        rows, dist = self._snapshot_nearest(q, k)
        live = self._snap_alive[rows]
        ids, dists = [self._snap_ids[rows[live]]], [dist[live]]
        n = self._delta_len
        if n:
            d = _distances(self._delta_words[:n], q)
            alive = self._delta_alive[:n]
            bound = np.partition(d[alive], k - 1)[k - 1] if k < alive.sum() else self.bits
            hit = np.flatnonzero(alive & (d <= bound))
            ids.append(self._delta_ids[hit])
            dists.append(d[hit])
        return _sorted_matches(np.concatenate(ids), np.concatenate(dists))[:k]

    def pairs(self, radius: int) -> list[tuple[int, int, int]]:
        """All (id_a, id_b, distance) with id_a < id_b within `radius`, sorted."""
        if radius < 0:
            return []
        n = self._delta_len
        snap_ids, delta_ids = self._snap_ids, self._delta_ids[:n]
        delta_words = self._delta_words[:n]
        found: list[tuple[Ids, Ids, npt.NDArray[np.uint32]]] = []
        i, j, d = self._snapshot_pairs(radius)
        keep = self._snap_alive[i] & self._snap_alive[j]
        found.append((snap_ids[i[keep]], snap_ids[j[keep]], d[keep]))
        i, j, d = _cross_pairs(delta_words, self._snap_words, radius, upper=False)
        keep = self._delta_alive[i] & self._snap_alive[j]
        found.append((delta_ids[i[keep]], snap_ids[j[keep]], d[keep]))
        i, j, d = _cross_pairs(delta_words, delta_words, radius, upper=True)
        keep = self._delta_alive[i] & self._delta_alive[j]
        found.append((delta_ids[i[keep]], delta_ids[j[keep]], d[keep]))
        a = np.concatenate([f[0] for f in found])
        b = np.concatenate([f[1] for f in found])
        dist = np.concatenate([f[2] for f in found])
        lo, hi = np.minimum(a, b), np.maximum(a, b)
        order = np.lexsort((hi, lo, dist))
        return [
            (int(x), int(y), int(z))
            for x, y, z in zip(lo[order], hi[order], dist[order], strict=True)
        ]

    def memory_bytes(self) -> int:
        """Bytes held by the index arrays (not counting the Python objects around them)."""
        arrays = (
            self._snap_ids,
            self._snap_words,
            self._snap_alive,
            self._delta_ids,
            self._delta_words,
            self._delta_alive,
        )
        return sum(a.nbytes for a in arrays)


class NumpyIndex(HammingIndex):
    """Brute-force XOR + popcount over packed words: the fast default."""

    backend: Backend = "hamming"


class CKDTreeIndex(HammingIndex):
    """scipy cKDTree over unpacked bit vectors (the design dedupd descends from)."""

    backend: Backend = "ckdtree"

    def __init__(self, bits: int, *, leaf_size: int = 16, p: float = 1.0):
        if p < 1:
            raise ValueError("Minkowski p must be >= 1")
        self.leaf_size, self.p = leaf_size, p
        super().__init__(bits)

    @property
    def _tree(self) -> cKDTree | None:
        return self._snap_struct

    def _unpack(self, words: Words) -> npt.NDArray[np.uint8]:
        raw = np.ascontiguousarray(words).view(np.uint8).reshape(len(words), -1)
        return np.unpackbits(raw, axis=1)[:, : self.bits]

    def _metric_radius(self, radius: int) -> float:
        # On 0/1 vectors L_p = hamming ** (1/p); a little slack absorbs float rounding.
        return float(radius ** (1.0 / self.p)) + 1e-6

    def _structure(self, words: Words) -> cKDTree | None:
        # Here, not at the top: scipy costs a fifth of a second to import, and only this
        # backend uses it.
        from scipy.spatial import cKDTree

        return cKDTree(self._unpack(words), leafsize=self.leaf_size) if len(words) else None

    def _snapshot_radius(self, query: Words, radius: int) -> tuple[Ids, npt.NDArray[np.uint32]]:
        if self._tree is None:
            return np.empty(0, np.int64), np.empty(0, np.uint32)
        point = self._unpack(query[None, :])[0]
        rows = np.asarray(
            self._tree.query_ball_point(point, self._metric_radius(radius), p=self.p), np.int64
        )
        return rows, _distances(self._snap_words[rows], query)

    def _snapshot_radius_any(
        self, queries: Words, radius: int
    ) -> tuple[Ids, npt.NDArray[np.uint32], Ids]:
        # One tree search per query: a tree prunes by one point at a time.
        found = [self._snapshot_radius(q, radius) for q in queries]
        rows = np.concatenate([r for r, _ in found])
        dists = np.concatenate([d for _, d in found])
        which = np.concatenate([np.full(len(r), v, np.int64) for v, (r, _) in enumerate(found)])
        return _best_per_row(rows, dists, which)

    def _snapshot_nearest(self, query: Words, k: int) -> tuple[Ids, npt.NDArray[np.uint32]]:
        if self._tree is None:
            return np.empty(0, np.int64), np.empty(0, np.uint32)
        point = self._unpack(query[None, :])[0]
        # Ask for enough neighbours that k of them are alive even if every tombstone is close,
        # then widen to a radius query so that ties at the k-th distance are all included.
        want = min(len(self._snap_ids), k + int((~self._snap_alive).sum()))
        _, rows = self._tree.query(point, k=want, p=self.p)
        rows = np.atleast_1d(rows)
        rows = rows[self._snap_alive[rows]][:k]
        if not len(rows):
            return np.empty(0, np.int64), np.empty(0, np.uint32)
        return self._snapshot_radius(query, int(_distances(self._snap_words[rows], query).max()))

    def _snapshot_pairs(self, radius: int) -> tuple[Ids, Ids, npt.NDArray[np.uint32]]:
        if self._tree is None:
            empty = np.empty(0, np.int64)
            return empty, empty, np.empty(0, np.uint32)
        found = self._tree.query_pairs(self._metric_radius(radius), p=self.p, output_type="ndarray")
        i, j = found[:, 0].astype(np.int64), found[:, 1].astype(np.int64)
        d = np.bitwise_count(self._snap_words[i] ^ self._snap_words[j]).sum(axis=1, dtype=np.uint32)
        return i, j, d

    def memory_bytes(self) -> int:
        tree = 0
        if self._tree is not None:
            # cKDTree holds its data as float64 plus an index array and the nodes.
            tree = self._tree.data.nbytes + self._tree.indices.nbytes
        return super().memory_bytes() + tree


BACKENDS: dict[Backend, type[HammingIndex]] = {"hamming": NumpyIndex, "ckdtree": CKDTreeIndex}


def make_index(backend: Backend, bits: int, *, leaf_size: int = 16, p: float = 1.0) -> HammingIndex:
    """An empty index of the named backend. Raises ValueError for an unknown name."""
    if backend == "ckdtree":
        return CKDTreeIndex(bits, leaf_size=leaf_size, p=p)
    if backend == "hamming":
        return NumpyIndex(bits)
    raise ValueError(f"unknown index backend {backend!r}; known: {', '.join(BACKENDS)}")


# -- crop candidates ---------------------------------------------------------------------------


class CropCandidate(NamedTuple):
    id: int
    score: float  # the shared words, each weighted by how rare it is (idf)
    shared: int  # words shared with the query


Postings = npt.NDArray[np.uint32]
WordArray = npt.NDArray[np.uint16]


class _CropSnapshot(NamedTuple):
    """An inverted file: the snapshot rows filed under word w are
    ``postings[offsets[w]:offsets[w + 1]]``; row r is photo ``ids[r]`` (ids sorted)."""

    ids: Ids
    offsets: npt.NDArray[np.int64]
    postings: Postings


# Postings placed at a time by `_grouped`: its scratch arrays (sort order, destinations) are
# a chunk's, ~40 MB, whatever the index's size.
_PLACE_CHUNK = 1 << 20

Chunks = Callable[[], Iterator[tuple[WordArray, Postings]]]


def _grouped(chunks: Chunks, size: int) -> tuple[npt.NDArray[np.int64], Postings]:
    """(offsets, postings): every (word, row) pair that `chunks()` yields, placed in its
    word's run (a word's rows in the order they were yielded), by a counting sort that
    reads the chunks twice, once to count. Sorting all the words at once took an int64
    index per posting: at a million photos (270M postings) the load and every rebuild
    peaked at ~4.7 GB beyond the 1 GB index (bench/crops.py)."""
    counts = np.zeros(size, np.int64)
    for words, _ in chunks():
        counts += np.bincount(words, minlength=size)
    offsets = np.zeros(size + 1, np.int64)
    np.cumsum(counts, out=offsets[1:])
    del counts
    postings = np.empty(int(offsets[-1]), np.uint32)
    fill = offsets[:-1].copy()  # each word's next free slot
    for words, rows in chunks():
        order = np.argsort(words, kind="stable")  # 16-bit keys: numpy's radix sort
        ordered = words[order]
        here = np.bincount(ordered, minlength=size)
        run_start = np.cumsum(here) - here  # where each word's run starts in `ordered`
        rank = np.arange(len(ordered), dtype=np.int64) - run_start[ordered]
        postings[fill[ordered] + rank] = rows[order]
        fill += here
    return offsets, postings


def _inverted(
    ids: Ids, counts: npt.NDArray[np.int64], words: WordArray, size: int
) -> _CropSnapshot:
    """The inverted file of photos `ids` (sorted, unique) with `counts[i]` words each,
    concatenated in `words`: each word's rows ascending."""
    ends = np.cumsum(counts)

    def chunks() -> Iterator[tuple[WordArray, Postings]]:
        for start in range(0, len(words), _PLACE_CHUNK):
            stop = min(start + _PLACE_CHUNK, len(words))
            # the photos whose words lie (partly) in [start, stop), and how many of them do
            first, last = np.searchsorted(ends, [start, stop - 1], side="right")
            rows = np.arange(first, last + 1, dtype=np.uint32)
            held = counts[first : last + 1].copy()
            held[0] -= start - (ends[first] - counts[first])
            held[-1] -= ends[last] - stop
            yield words[start:stop], np.repeat(rows, held)

    offsets, postings = _grouped(chunks, size)
    return _CropSnapshot(ids, offsets, postings)


def _by_id(
    ids: npt.ArrayLike, counts: npt.ArrayLike, words: npt.ArrayLike, size: int
) -> tuple[Ids, npt.NDArray[np.int64], WordArray]:
    """`CropIndex.load`'s input checked and in id order. Raises ValueError when malformed."""
    ids = np.asarray(ids, np.int64)
    counts = np.asarray(counts, np.int64)
    words = np.asarray(words)
    if len(ids) != len(counts) or int(counts.sum()) != len(words):
        raise ValueError("ids, counts and words do not agree")
    if len(words) and (words.min() < 0 or words.max() >= size):
        raise ValueError(f"a word outside the vocabulary of {size}")
    if len(np.unique(ids)) != len(ids):
        raise ValueError("an id appears twice")
    order = np.argsort(ids, kind="stable")
    if not bool(np.all(order == np.arange(len(ids)))):
        # each photo's run of words, moved to its place in id order
        starts = np.concatenate([[0], np.cumsum(counts)[:-1]]).astype(np.int64)
        counts = counts[order]
        moved = np.concatenate([[0], np.cumsum(counts)[:-1]]).astype(np.int64)
        pick = np.repeat(starts[order] - moved, counts) + np.arange(int(counts.sum()))
        ids, words = ids[order], words[pick]
    return ids, counts, words.astype(np.uint16, copy=False)


class _CropRebuild:
    """A crop snapshot being built off the ingest thread: from the old snapshot (its arrays are
    never changed in place, only replaced), a copy of its live rows, and a copy of the
    delta. The old postings, already grouped by word, are filtered and renumbered a word
    range at a time, the delta's follow, and `_grouped` places them all by word."""

    def __init__(
        self,
        snap: _CropSnapshot,
        alive: npt.NDArray[np.bool_],
        delta: dict[int, WordArray],
        size: int,
        read: Callable[[], tuple[npt.ArrayLike, npt.ArrayLike, npt.ArrayLike]] | None = None,
    ):
        self.snap, self.alive, self.delta, self.size = snap, alive, delta, size
        self.read = read  # a load from the database instead of a rebuild
        self.removed: list[Ids] = []
        self.snapshot: _CropSnapshot | None = None
        self.error: BaseException | None = None
        self.thread: threading.Thread

    def run(self) -> None:
        try:
            self.snapshot = self._build()
        except BaseException as exc:  # re-raised by finish_rebuild on the owning thread
            self.error = exc

    def _build(self) -> _CropSnapshot:
        if self.read is not None:
            return _inverted(*_by_id(*self.read(), self.size), self.size)
        snap, alive, size = self.snap, self.alive, self.size
        d_ids = np.fromiter(self.delta, np.int64, len(self.delta))
        live_ids = snap.ids[alive]
        ids = np.sort(np.concatenate([live_ids, d_ids]))
        renumber = np.zeros(len(alive), np.uint32)  # old row -> new row (for live rows)
        renumber[alive] = np.searchsorted(ids, live_ids)
        d_rows = np.searchsorted(ids, d_ids).astype(np.uint32)
        # Word ranges of the old snapshot holding about _PLACE_CHUNK postings each (one word
        # may hold more), then the delta.
        starts = np.arange(0, len(snap.postings), _PLACE_CHUNK)
        bounds = np.unique(np.r_[np.searchsorted(snap.offsets, starts), size]).tolist()

        def chunks() -> Iterator[tuple[WordArray, Postings]]:
            for lo, hi in itertools.pairwise(bounds):
                posted = snap.postings[snap.offsets[lo] : snap.offsets[hi]]
                words = np.repeat(
                    np.arange(lo, hi, dtype=np.uint16), np.diff(snap.offsets[lo : hi + 1])
                )
                keep = alive[posted]
                yield words[keep], renumber[posted[keep]]
            if len(d_ids):
                d_words = np.concatenate(list(self.delta.values())).astype(np.uint16)
                counts = np.array([len(w) for w in self.delta.values()], np.int64)
                yield d_words, np.repeat(d_rows, counts)

        offsets, postings = _grouped(chunks, size)
        return _CropSnapshot(ids, offsets, postings)


class _DeltaPostings:
    """The crop index's delta as an inverted file: word -> the entries filed under it. Each
    addition is one entry, numbered densely and never reused; a removed or re-filed photo's
    old entry stays in its words' lists, dead (id -1), until the next rebuild replaces the
    whole structure, and `postings` skips it."""

    def __init__(self) -> None:
        self._postings: dict[int, list[int]] = {}
        # entry -> photo id, -1 once dead; the first `_entries` slots are used (grown by
        # doubling: a query reads it as an array, without converting a list each time)
        self._entry_id = np.full(64, -1, np.int64)
        self._entries = 0
        self._entry_of: dict[int, int] = {}  # photo id -> its live entry

    def add(self, file_id: int, words: WordArray) -> None:
        self.remove(file_id)
        entry = self._entries
        if entry == len(self._entry_id):
            self._entry_id = np.concatenate([self._entry_id, np.full(entry, -1, np.int64)])
        self._entry_id[entry] = file_id
        self._entries += 1
        self._entry_of[file_id] = entry
        postings = self._postings
        for word in words.tolist():  # ~270 a photo: no list made for a word already posted
            posted = postings.get(word)
            if posted is None:
                postings[word] = [entry]
            else:
                posted.append(entry)

    def remove(self, file_id: int) -> None:
        entry = self._entry_of.pop(file_id, None)
        if entry is not None:
            self._entry_id[entry] = -1

    def postings(self, q: WordArray) -> tuple[Ids, Ids, npt.NDArray[np.intp]]:
        """The live entries filed under the words `q`: (photo id, entry number, index in `q`
        of the word) per posting."""
        lists = [(posted, i) for i, w in enumerate(q.tolist()) if (posted := self._postings.get(w))]
        if not lists:
            return np.empty(0, np.int64), np.empty(0, np.int64), np.empty(0, np.intp)
        lengths = np.fromiter((len(p) for p, _ in lists), np.int64, len(lists))
        entries = np.fromiter(
            itertools.chain.from_iterable(p for p, _ in lists), np.int64, int(lengths.sum())
        )
        word = np.repeat(np.array([i for _, i in lists], np.intp), lengths)
        ids = self._entry_id[entries]
        live = ids >= 0
        return ids[live], entries[live], word[live]


class CropIndex:
    """Which indexed photos may share a crop relation with a newcomer: an inverted file of
    visual words (`features.words_of`), searched by vote, as DBoW does for ORB.

    Each photo is filed under its distinct words (~270 of 2**16); a query adds, for every
    photo filed under one of the newcomer's words, that word's idf (log of the photos over the
    photos filed under it, so that words every textured photo has count for little), and
    returns the best `k`. Never a scan of all pairs: the work is the postings of the
    newcomer's words. 4 bytes per word filed (one uint32 row number) plus 9 per photo.

    Same life cycle as `HammingIndex`: a snapshot plus a delta of recent additions, removals
    as tombstones, rebuilt on a background thread and swapped in by the owning thread
    (`finish_rebuild`). The delta is an inverted file too (word -> entries), so that a query
    touches only its words' postings: a scan adds every photo to the delta, and a delta
    searched by brute force made each query cost the whole delta (quadratic over a scan).
    """

    def __init__(self, vocabulary: int = 1 << 16):
        if not 1 <= vocabulary <= 1 << 16:
            raise ValueError("the vocabulary has 1 to 65536 words (uint16)")
        self.vocabulary = vocabulary
        self._snap = _inverted(
            np.empty(0, np.int64), np.empty(0, np.int64), np.empty(0, np.uint16), vocabulary
        )
        self._snap_alive = np.empty(0, bool)
        self._delta: dict[int, WordArray] = {}
        self._delta_postings = _DeltaPostings()
        self._dead = 0
        self._rebuilding: _CropRebuild | None = None
        self.last_rebuild: float | None = None

    def __len__(self) -> int:
        return int(self._snap_alive.sum()) + len(self._delta)

    @property
    def pending(self) -> int:
        """Delta entries and tombstones a rebuild would fold in."""
        return len(self._delta) + self._dead

    def _words(self, words: npt.ArrayLike) -> WordArray:
        w = np.unique(np.asarray(words))
        if len(w) and (w.min() < 0 or w.max() >= self.vocabulary):
            raise ValueError(f"a word outside the vocabulary of {self.vocabulary}")
        return w.astype(np.uint16)

    # -- changes --------------------------------------------------------------------------
    def load(self, ids: npt.ArrayLike, counts: npt.ArrayLike, words: npt.ArrayLike) -> None:
        """Replace everything indexed: photo `ids[i]` has `counts[i]` words, concatenated in
        `words` (each photo's words unique). Raises ValueError for malformed input."""
        snapshot = _inverted(*_by_id(ids, counts, words, self.vocabulary), self.vocabulary)
        self.finish_rebuild(wait=True)
        self._snap = snapshot
        self._snap_alive = np.ones(len(snapshot.ids), bool)
        self._delta, self._dead = {}, 0
        self._delta_postings = _DeltaPostings()
        self.last_rebuild = time.time()

    def start_load(
        self, read: Callable[[], tuple[npt.ArrayLike, npt.ArrayLike, npt.ArrayLike]]
    ) -> None:
        """Replace the snapshot with what `read()` returns (as `load` takes it), read and built
        on a background thread: a daemon at a million photos is ready before its crop index
        is. Meanwhile the index answers from what is added to it; `finish_rebuild` swaps the
        loaded snapshot in (`loading` says whether to wait for it), and what was added or
        removed meanwhile wins over what was read."""
        self.finish_rebuild(wait=True)
        job = _CropRebuild(self._snap, self._snap_alive, {}, self.vocabulary, read=read)
        job.thread = threading.Thread(target=job.run, name="dedupd-crop-load", daemon=True)
        self._rebuilding = job
        job.thread.start()

    @property
    def loading(self) -> bool:
        """True while `start_load` is reading the snapshot."""
        return self._rebuilding is not None and self._rebuilding.read is not None

    def add(self, file_id: int, words: npt.ArrayLike) -> None:
        """File (or file again) photo `file_id` under `words`."""
        w = self._words(words)
        self.remove([file_id])
        self._delta[int(file_id)] = w
        self._delta_postings.add(int(file_id), w)

    def remove(self, ids: Iterable[int]) -> None:
        """Tombstone `ids`; unknown ids are ignored."""
        ids = np.unique(np.asarray(list(ids), np.int64))
        if not len(ids):
            return
        if self._rebuilding is not None:
            self._rebuilding.removed.append(ids)
        self._dead += self._tombstone(ids)
        for i in ids.tolist():
            if self._delta.pop(i, None) is not None:
                self._delta_postings.remove(i)

    def _tombstone(self, ids: Ids) -> int:
        return _tombstone(self._snap.ids, self._snap_alive, ids)

    # -- rebuilds -------------------------------------------------------------------------
    def rebuild(self) -> None:
        """Fold the delta into a new snapshot and drop tombstones, now."""
        self.finish_rebuild(wait=True)
        self.start_rebuild()
        self.finish_rebuild(wait=True)

    def start_rebuild(self) -> bool:
        """Begin a rebuild on a background thread (see `HammingIndex.start_rebuild`)."""
        if self._rebuilding is not None:
            return False
        job = _CropRebuild(self._snap, self._snap_alive.copy(), dict(self._delta), self.vocabulary)
        job.thread = threading.Thread(target=job.run, name="dedupd-crop-rebuild", daemon=True)
        self._rebuilding = job
        job.thread.start()
        return True

    def finish_rebuild(self, *, wait: bool = False) -> bool:
        """Swap in a finished background rebuild (waiting for it with `wait`); additions made
        meanwhile stay in the delta, removals made meanwhile apply to the new snapshot."""
        job = self._rebuilding
        if job is None or (job.thread.is_alive() and not wait):
            return False
        job.thread.join()
        self._rebuilding = None
        if job.error is not None:
            raise job.error
        assert job.snapshot is not None  # set by run() when it raised nothing
        self._snap = job.snapshot
        self._snap_alive = np.ones(len(job.snapshot.ids), bool)
        # What was added since the build began (a new array object) stays in the delta.
        self._delta = {i: w for i, w in self._delta.items() if job.delta.get(i) is not w}
        self._delta_postings = _DeltaPostings()
        for i, w in self._delta.items():
            self._delta_postings.add(i, w)
        self._dead = 0
        if job.removed:
            self._dead += self._tombstone(np.unique(np.concatenate(job.removed)))
        if job.read is not None and self._delta:
            # added while the load read the database (which may have read them too): newer
            self._dead += self._tombstone(np.fromiter(self._delta, np.int64, len(self._delta)))
        self.last_rebuild = time.time()
        return True

    def join_rebuild(self, timeout: float | None = None) -> bool:
        """Wait (at most `timeout` seconds) until a background rebuild or load has built its
        snapshot (it is not swapped in); True once none is running."""
        job = self._rebuilding
        if job is not None:
            job.thread.join(timeout)
            return not job.thread.is_alive()
        return True

    @property
    def rebuilding(self) -> bool:
        return self._rebuilding is not None

    # -- queries --------------------------------------------------------------------------
    def candidates(
        self, words: npt.ArrayLike, k: int, *, min_shared: int = 1, exclude: Iterable[int] = ()
    ) -> list[CropCandidate]:
        """The `k` photos that best share `words` (by idf-weighted votes), best first; ties
        broken by the smaller id. Photos sharing fewer than `min_shared` words, and those in
        `exclude`, are left out."""
        q = self._words(words)
        if k < 1 or not len(q):
            return []
        snap = self._snap
        # The postings of every query word at once, the snapshot's live ones and the delta's:
        # a word's document frequency counts both, so that votes (and the ranking) do not
        # depend on what the last rebuild folded in.
        starts, ends = snap.offsets[q], snap.offsets[q.astype(np.int64) + 1]
        lengths = ends - starts
        total = int(lengths.sum())
        first = np.repeat(starts - np.concatenate([[0], np.cumsum(lengths)[:-1]]), lengths)
        rows = snap.postings[first + np.arange(total)]
        s_word = np.repeat(np.arange(len(q)), lengths)
        if not self._snap_alive.all():  # tombstones: their postings vote for nothing
            alive = self._snap_alive[rows]
            rows, s_word = rows[alive], s_word[alive]
        d_ids, d_entries, d_word = self._delta_postings.postings(q)
        df = np.bincount(s_word, minlength=len(q)) + np.bincount(d_word, minlength=len(q))
        idf = np.log((len(self) + 1) / (df + 1.0))
        # Votes per snapshot row and per delta entry (each one photo), then their photo ids.
        d_owner = np.zeros(int(d_entries.max()) + 1 if len(d_entries) else 0, np.int64)
        d_owner[d_entries] = d_ids
        ids_out: list[Ids] = []
        scores_out: list[npt.NDArray[np.float64]] = []
        shared_out: list[npt.NDArray[np.intp]] = []
        for owner, voter, word in ((snap.ids, rows, s_word), (d_owner, d_entries, d_word)):
            score = np.asarray(np.bincount(voter, idf[word], minlength=len(owner)), np.float64)
            shared = np.bincount(voter, minlength=len(owner))
            hit = np.flatnonzero(shared >= min_shared)
            ids_out.append(owner[hit])
            scores_out.append(score[hit])
            shared_out.append(shared[hit])
        ids, scores = np.concatenate(ids_out), np.concatenate(scores_out)
        shared = np.concatenate(shared_out)
        excluded = np.fromiter(exclude, np.int64)
        if len(excluded):
            keep = ~np.isin(ids, excluded)
            ids, scores, shared = ids[keep], scores[keep], shared[keep]
        if len(ids) > k:
            # the k best, with every id tied at the k-th score, then ordered exactly
            bound = np.partition(scores, len(scores) - k)[len(scores) - k]
            keep = scores >= bound
            ids, scores, shared = ids[keep], scores[keep], shared[keep]
        order = np.lexsort((ids, -scores))[:k]
        return [
            CropCandidate(int(i), float(s), int(c))
            for i, s, c in zip(ids[order], scores[order], shared[order], strict=True)
        ]

    def memory_bytes(self) -> int:
        """Bytes held by the arrays, and about what the delta holds (its words, and a list
        slot per word in its postings; not the dicts around them)."""
        snap = self._snap
        arrays = (snap.ids, snap.offsets, snap.postings, self._snap_alive)
        delta = sum(w.nbytes + 8 + 8 * len(w) for w in self._delta.values())
        return sum(a.nbytes for a in arrays) + delta


# -- clips -------------------------------------------------------------------------------------
# Two clips are the same video when at least SAME_SHARE of the distinct frames of each is the
# nearest match of one of the other's (in any order: a re-cut, a clip with a snippet taken
# out); one holds the other when at least INSIDE_SHARE of the shorter one's frames are in the
# longer one. Never on fewer than MIN_SHARED frames of each, unless both clips are the
# same and one has fewer frames than that (a still scene filmed).
SAME_SHARE = 0.7
INSIDE_SHARE = 0.8
MIN_SHARED = 2
_NONE = np.iinfo(np.int64).max  # an indexed frame no frame of the asking clip is near
# Hits `FrameIndex.votes` reduces at a time (more when one frame has more): a few MB.
_BLOCK_HITS = 1 << 16

ClipKind = Literal["video", "contains", "inside"]


class ClipVotes(NamedTuple):
    """What a clip's frames found of another indexed clip."""

    mine: frozenset[int]  # the asking clip's frames (numbers) that match one of the other's
    theirs: frozenset[int]  # the other clip's frames that match one of the asking clip's
    distance: int  # the median distance in bits of the asking frames to their nearest match

    def kind(self, n_mine: int, n_theirs: int) -> ClipKind | None:
        """ "video": the same clip; "contains": the asking clip holds the other; "inside": the
        other holds the asking clip; None: no match. `n_mine`, `n_theirs`: their frames."""
        if not n_mine or not n_theirs:
            return None
        share_mine, share_theirs = len(self.mine) / n_mine, len(self.theirs) / n_theirs
        if min(len(self.mine), len(self.theirs)) < min(MIN_SHARED, n_mine, n_theirs):
            return None
        if min(share_mine, share_theirs) >= SAME_SHARE:
            return "video"
        if min(len(self.mine), len(self.theirs)) < MIN_SHARED:
            return None  # one frame inside a clip: a look-alike, not a cut of it
        if share_theirs >= INSIDE_SHARE and n_theirs <= n_mine:
            return "contains"
        if share_mine >= INSIDE_SHARE and n_mine <= n_theirs:
            return "inside"
        return None


class FrameIndex:
    """The frame hashes of every indexed clip in one `HammingIndex`, voting per clip.

    A frame's id is its clip's file id * `per_file` + its number, so that a hit names its clip
    without a lookup; how many frames each clip has is kept to remove them all. Not thread-safe
    (the owner's lock guards it, as the photo index).
    """

    def __init__(self, index: HammingIndex, per_file: int):
        self.index, self.per_file = index, per_file
        self._counts: dict[int, int] = {}

    def __len__(self) -> int:
        return len(self._counts)

    def frames(self, file_id: int) -> int:
        """How many frames of `file_id` are indexed (0: none, or not indexed)."""
        return self._counts.get(file_id, 0)

    def load_packed(self, ids: npt.ArrayLike, packed: npt.NDArray[np.uint8]) -> None:
        """Replace everything indexed with `packed` frames under their frame `ids`."""
        ids = np.asarray(ids, np.int64)
        if not len(ids):
            packed = np.empty((0, math.ceil(self.index.bits / 8)), np.uint8)
        self.index.load_packed(ids, packed)
        files, counts = np.unique(ids // self.per_file, return_counts=True)
        self._counts = dict(zip(files.tolist(), counts.tolist(), strict=True))

    def add(self, file_id: int, frames: Sequence[bytes]) -> None:
        """Index (or re-index) the clip `file_id` with `frames`."""
        self.remove([file_id])
        frames = list(frames)[: self.per_file]
        if frames:
            base = file_id * self.per_file
            self.index.add(range(base, base + len(frames)), frames)
            self._counts[file_id] = len(frames)

    def remove(self, file_ids: Iterable[int]) -> None:
        """Drop the clips `file_ids` (unknown ids, photos among them, are ignored)."""
        gone = [(i, self._counts.pop(i)) for i in file_ids if i in self._counts]
        if gone:
            self.index.remove(
                np.concatenate([i * self.per_file + np.arange(n, dtype=np.int64) for i, n in gone])
            )

    def votes(self, frames: Sequence[bytes], radius: int) -> dict[int, ClipVotes]:
        """Per indexed clip with a frame within `radius` bits of one of `frames`: which frames
        match on each side, one to one: each frame counts only through its nearest match, so
        that the neighbours of a matching frame (a second apart in a slow scene, as alike as
        the match) do not count as covered too. One radius query per frame: never all pairs
        of clips. Clips come in the order a frame first found them (by frame, then distance).

        Each query's hits are reduced with numpy, never one by one in Python: two clips whose
        frames are all alike (two pictures alternating) make every frame hit every frame of
        the other, and the per-hit loop this replaces held the daemon's writer thread for 291
        s of CPU at 10,000 frames each; 5 s now, and ordinary clips of that length take 1.2-
        1.9 s, as before (bench/votes.py). What is left is the radius queries, a pass over
        the index each, and the hits they hand over: at MAX_FRAMES (65,536) frames each, 43 s
        for distinct frames and 194 s for alike ones. No cap on the hits a frame counts (its
        k nearest in each clip): the index would still hand every hit over, and the nearest
        of mine to one of theirs could be among those left out.
        """
        n = len(frames)
        if not n or not self._counts:
            return {}
        clips, first = self._slots()
        # An indexed frame's slot → d * n + i of its nearest frame i of mine (the smaller i
        # on a tie), as one array: no Python object per indexed frame either.
        nearest_mine = np.full(int(first[-1]), _NONE, np.int64)
        # per (frame of mine, clip) it hit: the frame, the clip's number, and d * per_file + j
        # of its nearest frame j there (the smaller j on a tie)
        found: list[tuple[Ids, Ids, Ids]] = []
        for i, ids, dists in self._hits(frames, radius):
            clip = ids // self.per_file
            j = ids - clip * self.per_file
            d = dists.astype(np.int64)
            # hits come by frame, then id: each (frame, clip) pair's hits are one run
            change = (clip[1:] != clip[:-1]) | (i[1:] != i[:-1])
            starts = np.flatnonzero(np.concatenate(([True], change)))
            g = np.searchsorted(clips, clip[starts])
            found.append((i[starts], g, np.minimum.reduceat(d * self.per_file + j, starts)))
            runs = np.diff(np.append(starts, len(ids)))
            np.minimum.at(nearest_mine, np.repeat(first[g], runs) + j, d * n + i)
        return self._tally(found, clips, first, nearest_mine, n)

    def _hits(
        self, frames: Sequence[bytes], radius: int
    ) -> Iterator[tuple[Ids, Ids, npt.NDArray[np.uint32]]]:
        """(frame numbers, ids, distances) of every indexed frame within `radius` of each of
        `frames`, by frame then id, in blocks of whole frames of at least _BLOCK_HITS hits:
        an ordinary clip, whose frames hit one or a few each, then pays numpy's per-call
        cost once a block and not once a frame (reduced frame by frame, votes took 0.33 s
        for 1,000 such frames where the per-hit loop took 0.18 s)."""
        block: list[tuple[int, Ids, npt.NDArray[np.uint32]]] = []
        size = 0
        for i, frame in enumerate(frames):
            ids, dists = self.index.radius_arrays(frame, radius)
            if len(ids):
                block.append((i, ids, dists))
                size += len(ids)
            if size >= _BLOCK_HITS or (block and i == len(frames) - 1):
                yield (
                    np.repeat([i for i, _, _ in block], [len(ids) for _, ids, _ in block]),
                    np.concatenate([ids for _, ids, _ in block]),
                    np.concatenate([d for _, _, d in block]),
                )
                block, size = [], 0

    def _slots(self) -> tuple[Ids, Ids]:
        """(the indexed clips ascending, the first slot of each and then the number of slots):
        every indexed frame gets a slot, its clip's first slot + its number, since a clip's
        ids are its first id + 0..count-1 (as `remove` assumes too)."""
        size = len(self._counts)
        clips = np.fromiter(self._counts.keys(), np.int64, size)
        counts = np.fromiter(self._counts.values(), np.int64, size)
        order = np.argsort(clips)
        first = np.zeros(size + 1, np.int64)
        np.cumsum(counts[order], out=first[1:])
        return clips[order], first

    def _tally(
        self,
        found: list[tuple[Ids, Ids, Ids]],
        clips: Ids,
        first: Ids,
        nearest_mine: Ids,
        n: int,
    ) -> dict[int, ClipVotes]:
        """`votes`' answer from what its queries found: per frame of mine, its nearest frame
        in each clip it hit (`found`), and per indexed frame, its nearest of mine."""
        if not found:
            return {}
        frame, group, key = (np.concatenate(x) for x in zip(*found, strict=True))
        order = np.lexsort((frame, group))
        frame, group, key = frame[order], group[order], key[order]
        dist, theirs = key // self.per_file, key % self.per_file
        bounds = np.flatnonzero(np.concatenate(([True], group[1:] != group[:-1], [True])))
        votes: list[tuple[tuple[int, int, int], int, ClipVotes]] = []
        for a, b in itertools.pairwise(bounds.tolist()):
            g = int(group[a])
            mine = nearest_mine[first[g] : first[g + 1]]
            clip = int(clips[g])
            vote = ClipVotes(
                frozenset((mine[mine != _NONE] % n).tolist()),
                frozenset(theirs[a:b].tolist()),
                int(np.median(dist[a:b])),
            )
            votes.append(((int(frame[a]), int(dist[a]), clip), clip, vote))
        votes.sort(key=lambda v: v[0])
        return {clip: vote for _, clip, vote in votes}

    @property
    def pending(self) -> int:
        return self.index.pending

    def start_rebuild(self) -> bool:
        return self.index.start_rebuild()

    def finish_rebuild(self, *, wait: bool = False) -> bool:
        return self.index.finish_rebuild(wait=wait)

    def join_rebuild(self) -> None:
        self.index.join_rebuild()
