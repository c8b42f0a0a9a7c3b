"""dedupd.index: both backends must answer exactly like a brute-force reference."""

from __future__ import annotations

import math
import random
import sys
from collections.abc import Callable, Iterable, Sequence
from functools import partial
from itertools import combinations
from typing import Any

import numpy as np
import numpy.typing as npt
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from dedupd import index as index_module
from dedupd.index import (
    Backend,
    CKDTreeIndex,
    ClipVotes,
    FrameIndex,
    HammingIndex,
    Match,
    NumpyIndex,
    distance,
    make_index,
    pack,
)

# (backend, make_index keyword arguments): every configuration that must agree.
BACKENDS: list[tuple[Backend, dict[str, Any]]] = [
    ("hamming", {}),
    ("ckdtree", {"p": 1.0}),
    ("ckdtree", {"p": 2.0}),
]
BACKEND_IDS = ["hamming", "ckdtree-p1", "ckdtree-p2"]


def _nbytes(bits: int) -> int:
    return math.ceil(bits / 8)


def _value(h: bytes, bits: int) -> int:
    """The hash as an int of its first `bits` bits (MSB first); padding bits dropped."""
    return int.from_bytes(h, "big") >> (8 * len(h) - bits)


class Reference:
    """Brute force over Python ints (popcount of XOR): the specification of an index."""

    def __init__(self, bits: int):
        self.bits = bits
        self.values: dict[int, int] = {}
        self.pending = 0

    def __len__(self) -> int:
        return len(self.values)

    def add(self, ids: Sequence[int], hashes: Sequence[bytes]) -> None:
        self.pending += len(ids) + sum(i in self.values for i in ids)  # delta rows + tombstones
        for i, h in zip(ids, hashes, strict=True):
            self.values[i] = _value(h, self.bits)

    def remove(self, ids: Iterable[int]) -> None:
        for i in set(ids):
            if self.values.pop(i, None) is not None:
                self.pending += 1

    def rebuild(self) -> None:
        self.pending = 0

    def _by_distance(self, query: bytes) -> list[tuple[int, int]]:
        q = _value(query, self.bits)
        return sorted(((q ^ v).bit_count(), i) for i, v in self.values.items())

    def radius(self, query: bytes, radius: int) -> list[tuple[int, int]]:
        return [(i, d) for d, i in self._by_distance(query) if d <= radius]

    def knn(self, query: bytes, k: int) -> list[tuple[int, int]]:
        return [(i, d) for d, i in self._by_distance(query)[: max(k, 0)]]

    def _by_nearest_query(self, queries: Sequence[bytes]) -> list[tuple[int, int, int]]:
        """(distance to the nearest query, id, first query at that distance), sorted."""
        qs = [_value(q, self.bits) for q in queries]
        out = []
        for i, v in self.values.items():
            d, w = min(((q ^ v).bit_count(), w) for w, q in enumerate(qs))
            out.append((d, i, w))
        return sorted(out)

    def radius_any(self, queries: Sequence[bytes], radius: int) -> list[tuple[int, int, int]]:
        return [(i, d, w) for d, i, w in self._by_nearest_query(queries) if d <= radius]

    def knn_any(self, queries: Sequence[bytes], k: int) -> list[tuple[int, int, int]]:
        return [(i, d, w) for d, i, w in self._by_nearest_query(queries)[: max(k, 0)]]

    def pairs(self, radius: int) -> list[tuple[int, int, int]]:
        found = [
            (a, b, (va ^ vb).bit_count())
            for (a, va), (b, vb) in combinations(sorted(self.values.items()), 2)
        ]
        return sorted((t for t in found if t[2] <= radius), key=lambda t: (t[2], t[0], t[1]))


def _hash_strategy(nbytes: int, seeds: Sequence[int]) -> st.SearchStrategy[bytes]:
    """Mostly near-duplicates of a few seeds (so radius queries find something), some random.

    Flips may land in the padding bits of the last byte, which the index must ignore.
    """
    width = 8 * nbytes
    near = st.tuples(st.sampled_from(seeds), st.lists(st.integers(0, width - 1), max_size=3)).map(
        lambda t: _flip(t[0], t[1])
    )
    anywhere = st.integers(0, (1 << width) - 1)
    return st.one_of(near, near, near, anywhere).map(lambda v: v.to_bytes(nbytes, "big"))


def _flip(value: int, positions: Iterable[int]) -> int:
    for p in positions:
        value ^= 1 << p
    return value


def _indexes(bits: int, leaf_size: int) -> list[tuple[str, HammingIndex]]:
    out = []
    for label, (backend, kwargs) in zip(BACKEND_IDS, BACKENDS, strict=True):
        if backend == "ckdtree":
            kwargs = {**kwargs, "leaf_size": leaf_size}
        out.append((label, make_index(backend, bits, **kwargs)))
    return out


# -- two implementations agree ---------------------------------------------------------------


@settings(
    max_examples=200,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
@given(data=st.data())
@pytest.mark.slow
def test_backends_agree_with_brute_force_under_random_operations(data: st.DataObject) -> None:
    """hamming, ckdtree (p=1) and ckdtree (p=2) give the reference's radius (also as arrays,
    by id), knn, pairs and len after any sequence of batch adds, replacements, removals
    (known and unknown ids) and rebuilds, whether entries sit in the snapshot, the delta or
    are tombstoned — also when the chunked XOR and all-pairs loops split their work into
    many small blocks, whether a block is compared with a newcomer's variants one by one or
    all at once, and when a background rebuild is started, changes are made while it runs,
    and it is swapped in."""
    bits = data.draw(st.sampled_from([8, 64, 100, 256]), label="bits")
    nbytes = _nbytes(bits)
    seeds = data.draw(
        st.lists(st.integers(0, (1 << 8 * nbytes) - 1), min_size=1, max_size=4), label="seeds"
    )
    hashes = _hash_strategy(nbytes, seeds)
    chunk_rows = data.draw(st.sampled_from([1, 3, 1 << 16]), label="chunk_rows")
    multi_rows = data.draw(st.sampled_from([1, 5, 1 << 15]), label="multi_rows")
    # 0: every block goes through the one-query-at-a-time loop; else small blocks do not
    broadcast_cells = data.draw(st.sampled_from([0, 1 << 16]), label="broadcast_cells")
    pair_cells = data.draw(st.sampled_from([1, 10, 1 << 22]), label="pair_cells")
    leaf_size = data.draw(st.sampled_from([1, 16]), label="leaf_size")

    ref = Reference(bits)
    indexes = _indexes(bits, leaf_size)
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(index_module, "_CHUNK_ROWS", chunk_rows)
        mp.setattr(index_module, "_PAIR_CELLS", pair_cells)
        mp.setattr(index_module, "_MULTI_ROWS", multi_rows)
        mp.setattr(index_module, "_BROADCAST_CELLS", broadcast_cells)
        background = False
        for _ in range(data.draw(st.integers(1, 8), label="steps")):
            op = data.draw(
                st.sampled_from(["add", "add", "remove", "rebuild", "start", "finish"]), label="op"
            )
            if op == "add":  # ids 0..59 so that re-adding (replacing) an id is common
                ids = data.draw(st.lists(st.integers(0, 59), min_size=1, max_size=20, unique=True))
                batch = [data.draw(hashes) for _ in ids]
                ref.add(ids, batch)
                for _, ix in indexes:
                    ix.add(ids, batch)
            elif op == "remove":
                gone = data.draw(st.lists(st.integers(-3, 70), max_size=10, unique=True))
                ref.remove(gone)
                for _, ix in indexes:
                    ix.remove(gone)
            elif op == "rebuild":
                ref.rebuild()
                for _, ix in indexes:
                    ix.rebuild()
            elif op == "start":  # results must not change while a rebuild runs or is swapped
                background = True
                for _, ix in indexes:
                    ix.start_rebuild()
            else:
                for _, ix in indexes:
                    ix.finish_rebuild(wait=True)

            query = data.draw(hashes, label="query")
            radius = data.draw(st.integers(0, bits), label="radius")
            k = data.draw(st.integers(1, len(ref) + 2), label="k")
            pair_radius = data.draw(st.integers(0, bits), label="pair_radius")
            # A newcomer's rotations and mirrors: several queries, often near one another.
            queries = data.draw(st.lists(hashes, min_size=1, max_size=8), label="queries")
            for label, ix in indexes:
                assert len(ix) == len(ref), label
                if not background:  # after a background swap, pending counts its own way
                    assert ix.pending == ref.pending, label
                assert ix.radius(query, radius) == ref.radius(query, radius), label
                hit, dists = ix.radius_arrays(query, radius)
                assert list(zip(hit.tolist(), dists.tolist(), strict=True)) == sorted(
                    ref.radius(query, radius)
                ), label
                assert ix.knn(query, k) == ref.knn(query, k), label
                assert ix.pairs(pair_radius) == ref.pairs(pair_radius), label
                assert ix.radius_any(queries, radius) == ref.radius_any(queries, radius), label
                assert ix.knn_any(queries, k) == ref.knn_any(queries, k), label
                assert [(m.id, m.distance) for m in ix.radius_any([query], radius)] == list(
                    ix.radius(query, radius)
                ), label
        for _, ix in indexes:
            ix.finish_rebuild(wait=True)


@pytest.mark.slow
def test_backends_agree_on_twenty_thousand_clustered_hashes() -> None:
    """At a realistic size (20k 64-bit hashes: snapshot + delta + tombstones, many blocks in
    the all-pairs loop) the hamming and ckdtree backends return identical results, and radius
    and knn match the brute-force reference."""
    rng = random.Random(20240601)
    seeds = [rng.getrandbits(64) for _ in range(2000)]
    values = [
        _flip(rng.choice(seeds), rng.sample(range(64), rng.randint(0, 6))) for _ in range(20_000)
    ]
    hashes = [v.to_bytes(8, "big") for v in values]
    ids = list(range(20_000))
    ref = Reference(64)
    indexes = [("hamming", make_index("hamming", 64)), ("ckdtree", make_index("ckdtree", 64))]
    targets: list[Any] = [ref, *(ix for _, ix in indexes)]
    for target in targets:
        target.add(ids[:15_000], hashes[:15_000])
        if not isinstance(target, Reference):
            target.rebuild()
        target.add(ids[15_000:], hashes[15_000:])
        target.remove(ids[::20])

    queries = [_flip(rng.choice(seeds), [rng.randrange(64)]).to_bytes(8, "big") for _ in range(30)]
    for q in queries:
        want_r, want_k = ref.radius(q, 6), ref.knn(q, 10)
        for label, ix in indexes:
            assert ix.radius(q, 6) == want_r, label
            assert ix.knn(q, 10) == want_k, label
    pairs = [ix.pairs(3) for _, ix in indexes]
    assert pairs[0] == pairs[1]
    assert len(pairs[0]) > 1000  # clustered data: the comparison is not vacuous


# -- pack and distance -----------------------------------------------------------------------


def test_pack_ignores_padding_bits_past_bits_in_last_byte() -> None:
    """A 100-bit hash has 4 padding bits in its 13th byte; hashes differing only there pack
    identically and are at distance 0 in every backend, while a real bit still counts."""
    a = bytes(12) + b"\xa0"
    b = bytes(12) + b"\xaf"  # differs from a only in the low 4 (padding) bits
    c = bytes(12) + b"\xb0"  # differs from a in bit 100 (the last real one)
    assert np.array_equal(pack([a], 100), pack([b], 100))
    assert not np.array_equal(pack([a], 100), pack([c], 100))
    for backend, kwargs in BACKENDS:
        ix = make_index(backend, 100, **kwargs)
        ix.add([1], [a])
        assert ix.radius(b, 0) == [Match(1, 0)], backend
        assert ix.knn(c, 1) == [Match(1, 1)], backend


def test_pack_shape_is_one_row_of_uint64_words_per_hash() -> None:
    """pack() gives (N, ceil(bits/64)) uint64 rows, so XOR+popcount works word by word."""
    words = pack([bytes(13), b"\xff" * 13], 100)
    assert words.shape == (2, 2)
    assert words.dtype == np.uint64
    assert int(np.bitwise_count(words[1]).sum()) == 100


@pytest.mark.parametrize("length", [0, 12, 14])
def test_pack_rejects_hashes_of_the_wrong_length(length: int) -> None:
    """A 100-bit index takes exactly 13-byte hashes; anything else is a ValueError, also via
    add() and queries, rather than a silently truncated or zero-padded hash."""
    with pytest.raises(ValueError, match="13"):
        pack([bytes(13), bytes(length)], 100)
    ix = make_index("hamming", 100)
    with pytest.raises(ValueError):
        ix.add([1], [bytes(length)])
    with pytest.raises(ValueError):
        ix.radius(bytes(length), 3)
    with pytest.raises(ValueError):
        ix.knn(bytes(length), 3)


def test_distance_counts_differing_bits() -> None:
    """distance() is the popcount of the XOR of two equal-length hashes."""
    assert distance(b"\x0f\x00", b"\xff\x01") == 5
    assert distance(b"\xa5" * 8, b"\xa5" * 8) == 0
    assert distance(b"\x00" * 32, b"\xff" * 32) == 256


def test_distance_rejects_hashes_of_different_lengths() -> None:
    """Hashes of different sizes are not comparable: ValueError, not a made-up distance."""
    with pytest.raises(ValueError):
        distance(b"\x00" * 8, b"\x00" * 16)


# -- life cycle ------------------------------------------------------------------------------


@pytest.mark.parametrize(("backend", "kwargs"), BACKENDS, ids=BACKEND_IDS)
def test_remove_of_unknown_ids_is_ignored(backend: Backend, kwargs: dict[str, Any]) -> None:
    """Removing ids that were never added (below, between and above the snapshot's ids, and in
    an empty index) changes nothing: same len, pending and answers."""
    empty = make_index(backend, 64, **kwargs)
    empty.remove([1, 2, 3])
    assert (len(empty), empty.pending) == (0, 0)

    ix = make_index(backend, 64, **kwargs)
    ix.add([10, 20, 30], [bytes(8), b"\x01" + bytes(7), b"\x03" + bytes(7)])
    ix.rebuild()
    ix.add([40], [b"\x07" + bytes(7)])
    before = (len(ix), ix.pending, ix.radius(bytes(8), 64), ix.pairs(64))
    ix.remove([-1, 5, 15, 25, 35, 41, 10**12])
    assert (len(ix), ix.pending, ix.radius(bytes(8), 64), ix.pairs(64)) == before
    assert [m.id for m in before[2]] == [10, 20, 30, 40]


@pytest.mark.parametrize(("backend", "kwargs"), BACKENDS, ids=BACKEND_IDS)
def test_queries_on_an_empty_index_return_nothing(backend: Backend, kwargs: dict[str, Any]) -> None:
    """knn/radius/pairs on a never-filled index, and on one whose every entry (snapshot and
    delta) is tombstoned, return [] instead of raising or returning dead ids."""
    ix = make_index(backend, 64, **kwargs)
    assert ix.knn(bytes(8), 3) == []
    assert ix.radius(bytes(8), 64) == []
    assert ix.pairs(64) == []
    ix.add([1, 2], [bytes(8), bytes(8)])
    ix.rebuild()
    ix.add([3], [bytes(8)])
    ix.remove([1, 2, 3])
    assert len(ix) == 0
    assert ix.knn(bytes(8), 3) == []
    assert ix.radius(bytes(8), 64) == []
    assert ix.pairs(64) == []


@pytest.mark.parametrize(("backend", "kwargs"), BACKENDS, ids=BACKEND_IDS)
def test_negative_radius_or_k_below_one_returns_empty(
    backend: Backend, kwargs: dict[str, Any]
) -> None:
    """A negative radius matches nothing (not even exact duplicates) in radius() and pairs(),
    and knn with k < 1 asks for nothing; every backend answers [] alike."""
    ix = make_index(backend, 64, **kwargs)
    ix.add([1, 2], [bytes(8), bytes(8)])
    ix.rebuild()
    ix.add([3], [bytes(8)])
    assert ix.radius(bytes(8), 0) != []  # the index does hold exact matches
    assert ix.radius(bytes(8), -1) == []
    assert [len(a) for a in ix.radius_arrays(bytes(8), -1)] == [0, 0]
    assert ix.knn(bytes(8), 0) == []
    assert ix.knn(bytes(8), -2) == []
    assert ix.pairs(-1) == []


def test_make_index_builds_the_named_backend_and_rejects_unknown_names() -> None:
    """make_index maps each backend name to its class and raises ValueError (naming the known
    backends) for an unknown one instead of falling back to a default."""
    assert type(make_index("hamming", 64)) is NumpyIndex
    tree = make_index("ckdtree", 64, leaf_size=4, p=2.0)
    assert type(tree) is CKDTreeIndex
    assert (tree.leaf_size, tree.p) == (4, 2.0)
    with pytest.raises(ValueError, match="hamming"):
        make_index("faiss", 64)  # type: ignore[arg-type]


def test_hamming_memory_is_under_64_bytes_per_64_bit_hash() -> None:
    """After a rebuild the hamming backend holds 10k 64-bit hashes in < 64 bytes each
    (packed words + ids + liveness), so a million photos fit in well under 64 MB."""
    rng = random.Random(7)
    ix = make_index("hamming", 64)
    ix.add(range(10_000), [rng.getrandbits(64).to_bytes(8, "big") for _ in range(10_000)])
    ix.rebuild()
    assert len(ix) == 10_000
    assert ix.memory_bytes() / 10_000 < 64


@pytest.mark.parametrize(("backend", "kwargs"), BACKENDS, ids=BACKEND_IDS)
def test_adds_after_rebuild_are_found_before_the_next_rebuild(
    backend: Backend, kwargs: dict[str, Any]
) -> None:
    """New hashes go to the delta and are searched at once: radius, knn and pairs see them
    (paired with snapshot entries too), and a replaced snapshot hash stops matching."""
    ix = make_index(backend, 64, **kwargs)
    far = b"\xff" * 8
    ix.add([1, 2], [bytes(8), far])
    ix.rebuild()
    ix.add([3], [b"\x01" + bytes(7)])  # 1 bit from id 1
    assert ix.radius(bytes(8), 1) == [Match(1, 0), Match(3, 1)]
    assert ix.knn(b"\x01" + bytes(7), 1) == [Match(3, 0)]
    assert ix.pairs(1) == [(1, 3, 1)]
    ix.add([2], [b"\x03" + bytes(7)])  # replace the far hash of id 2 with a near one
    assert ix.radius(far, 8) == []
    assert ix.radius(bytes(8), 2) == [Match(1, 0), Match(3, 1), Match(2, 2)]
    assert ix.pairs(2) == [(1, 3, 1), (2, 3, 1), (1, 2, 2)]


def test_pending_counts_delta_and_tombstones_and_resets_on_rebuild() -> None:
    """pending = delta rows + tombstones (what the daemon compares with rebuild_every), and
    a rebuild folds both in and sets it back to 0 without losing live entries."""
    ix = make_index("hamming", 64)
    assert ix.pending == 0
    ix.add([1, 2, 3], [bytes(8), b"\x01" + bytes(7), b"\x02" + bytes(7)])
    assert ix.pending == 3
    ix.rebuild()
    assert (ix.pending, len(ix)) == (0, 3)
    ix.remove([1])
    assert ix.pending == 1
    ix.add([4, 5], [b"\x04" + bytes(7), b"\x08" + bytes(7)])
    assert ix.pending == 3
    ix.add([2], [b"\x10" + bytes(7)])  # replace: one delta row + one tombstone
    assert ix.pending == 5
    ix.remove([4])  # a tombstone in the delta
    assert ix.pending == 6
    assert len(ix) == 3
    ix.rebuild()
    assert (ix.pending, len(ix)) == (0, 3)
    assert [m.id for m in ix.radius(bytes(8), 64)] == [2, 3, 5]


@pytest.mark.parametrize(("backend", "kwargs"), BACKENDS, ids=BACKEND_IDS)
def test_removing_the_same_id_twice_in_one_call_counts_one_tombstone(
    backend: Backend, kwargs: dict[str, Any]
) -> None:
    """remove([2, 2]) kills one entry, so pending grows by 1, not 2 (an inflated pending
    would trigger rebuilds early)."""
    ix = make_index(backend, 64, **kwargs)
    ix.add([1, 2, 3], [bytes(8), b"\x01" + bytes(7), b"\x02" + bytes(7)])
    ix.rebuild()
    ix.remove([2, 2])
    assert len(ix) == 2
    assert ix.pending == 1


@pytest.mark.parametrize(("backend", "kwargs"), BACKENDS, ids=BACKEND_IDS)
def test_rejected_add_leaves_the_index_unchanged(backend: Backend, kwargs: dict[str, Any]) -> None:
    """An add() that raises (a wrong-length hash) must not have removed the hash the id had
    before: a failed replacement may not silently drop the photo from the index."""
    ix = make_index(backend, 64, **kwargs)
    ix.add([1], [bytes(8)])
    ix.rebuild()
    with pytest.raises(ValueError):
        ix.add([1], [bytes(7)])
    assert len(ix) == 1
    assert ix.radius(bytes(8), 0) == [Match(1, 0)]


@pytest.mark.parametrize(("backend", "kwargs"), BACKENDS, ids=BACKEND_IDS)
def test_a_batch_repeating_an_id_never_indexes_it_twice(
    backend: Backend, kwargs: dict[str, Any]
) -> None:
    """add() replaces by id, so a batch that names an id twice either is rejected with
    ValueError or leaves one entry for it; it must never yield two live entries (len 2, the
    same id twice in knn, a pair of an id with itself)."""
    ix = make_index(backend, 64, **kwargs)
    try:
        ix.add([5, 5], [bytes(8), b"\x01" + bytes(7)])
    except ValueError:
        assert len(ix) == 0
        return
    assert len(ix) == 1
    assert [m.id for m in ix.knn(bytes(8), 5)] == [5]
    assert ix.pairs(64) == []


@pytest.mark.parametrize(("backend", "kwargs"), BACKENDS, ids=BACKEND_IDS)
def test_background_rebuild_never_blocks_queries_or_changes(
    backend: Backend, kwargs: dict[str, Any]
) -> None:
    """While the new snapshot is built, queries answer from the old one plus the delta and
    changes are accepted; the swap keeps every change made meanwhile."""
    import threading

    ix = make_index(backend, 64, **kwargs)
    ix.add(range(100), [i.to_bytes(8, "big") for i in range(100)])
    gate = threading.Event()
    real = ix._structure
    ix._structure = lambda words: (gate.wait(10), real(words))[1]  # type: ignore[method-assign]
    assert ix.start_rebuild()
    assert not ix.start_rebuild(), "one rebuild at a time"
    ix.remove([5])
    ix.add([5, 200], [(1 << 63).to_bytes(8, "big"), (7).to_bytes(8, "big")])  # replace + new
    ix.remove([9])
    assert ix.radius((7).to_bytes(8, "big"), 0) == [Match(7, 0), Match(200, 0)]
    assert not ix.finish_rebuild(), "not done yet: nothing is swapped"
    gate.set()
    assert ix.finish_rebuild(wait=True)
    assert not ix.rebuilding
    assert len(ix) == 100  # 100 - 9 + 200; 5 replaced
    assert ix.radius((1 << 63).to_bytes(8, "big"), 0) == [Match(5, 0)]
    assert ix.radius((9).to_bytes(8, "big"), 0) == []
    assert ix.radius((7).to_bytes(8, "big"), 0) == [Match(7, 0), Match(200, 0)]


# -- loading packed arrays (the start-up path) -----------------------------------------------


def _rows(hashes: Sequence[bytes]) -> npt.NDArray[np.uint8]:
    return np.frombuffer(b"".join(hashes), np.uint8).reshape(len(hashes), -1).copy()


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(data=st.data())
def test_load_packed_answers_exactly_like_add_then_rebuild(data: st.DataObject) -> None:
    """Every backend loaded from arrays (ids in any order, padding bits set or not, whole
    words or not) answers radius, knn, pairs and len exactly like the same backend fed the
    same hashes through add() + rebuild(), and later adds and removals work on top of it."""
    bits = data.draw(st.sampled_from([8, 64, 100, 256]), label="bits")
    nbytes = _nbytes(bits)
    seeds = data.draw(st.lists(st.integers(0, (1 << 8 * nbytes) - 1), min_size=1, max_size=3))
    hashes = _hash_strategy(nbytes, seeds)
    ids = data.draw(st.lists(st.integers(0, 10_000), max_size=40, unique=True), label="ids")
    batch = [data.draw(hashes) for _ in ids]
    extra = data.draw(hashes, label="extra")
    gone = data.draw(st.lists(st.sampled_from(ids), max_size=5) if ids else st.just([]))
    for (label, loaded), (_, added) in zip(_indexes(bits, 2), _indexes(bits, 2), strict=True):
        loaded.load_packed(
            np.array(ids, np.int64), _rows(batch) if ids else np.empty((0, 0), np.uint8)
        )
        added.add(ids, batch)
        added.rebuild()
        for ix in (loaded, added):
            ix.add([20_000], [extra])
            ix.remove(gone)
        query = data.draw(hashes, label="query")
        radius = data.draw(st.integers(0, bits), label="radius")
        assert len(loaded) == len(added), label
        assert loaded.radius(query, radius) == added.radius(query, radius), label
        assert loaded.knn(query, 5) == added.knn(query, 5), label
        assert loaded.pairs(radius) == added.pairs(radius), label


def test_load_packed_replaces_what_was_indexed_before() -> None:
    """A load is the whole contents: hashes added earlier (snapshot or delta) are gone."""
    for backend, kwargs in BACKENDS:
        ix = make_index(backend, 64, **kwargs)
        ix.add([1], [bytes(8)])
        ix.rebuild()
        ix.add([2], [bytes(8)])
        ix.load_packed(np.array([3]), _rows([bytes(8)]))
        assert ix.radius(bytes(8), 0) == [Match(3, 0)], backend
        assert ix.pending == 0 and len(ix) == 1, backend


def test_load_packed_keeps_a_whole_word_array_without_copying_it() -> None:
    """256-bit hashes in id order become the snapshot as they are: the memory bound of the
    start-up load depends on it (a copy would double the index's peak)."""
    packed = _rows([bytes([i]) * 32 for i in range(5)])
    ix = make_index("hamming", 256)
    ix.load_packed(np.arange(5), packed)
    assert np.shares_memory(ix._snap_words, packed)


@pytest.mark.parametrize(
    ("ids", "packed", "message"),
    [
        ([1, 2], np.zeros((2, 12), np.uint8), "13"),
        ([1, 2], np.zeros((3, 13), np.uint8), "one row per id"),
        ([2, 1, 2], np.zeros((3, 13), np.uint8), "twice"),
    ],
)
def test_rejected_load_leaves_the_index_unchanged(
    ids: list[int], packed: npt.NDArray[np.uint8], message: str
) -> None:
    """Rows of the wrong length, a row count that differs from the ids, or a repeated id are
    a ValueError, and what was indexed stays searchable."""
    for backend, kwargs in BACKENDS:
        ix = make_index(backend, 100, **kwargs)
        ix.add([7], [bytes(13)])
        with pytest.raises(ValueError, match=message):
            ix.load_packed(np.array(ids), packed)
        assert ix.radius(bytes(13), 0) == [Match(7, 0)], backend


# -- clips: frames voting per clip (FrameIndex) ----------------------------------------------


def _votes_reference(
    frames_index: FrameIndex, frames: Sequence[bytes], radius: int
) -> dict[int, ClipVotes]:
    """`FrameIndex.votes` as it was written first, hit by hit in Python: the specification
    (it took 298 s at 10,000 frames of two alike clips, hence the numpy one)."""
    mine: dict[int, dict[int, tuple[int, int]]] = {}
    theirs: dict[int, dict[int, tuple[int, int]]] = {}
    for i, frame in enumerate(frames):
        for m in frames_index.index.radius(frame, radius):
            clip, j = divmod(m.id, frames_index.per_file)
            here, there = mine.setdefault(clip, {}), theirs.setdefault(clip, {})
            here[i] = min(here.get(i, (m.distance, j)), (m.distance, j))
            there[j] = min(there.get(j, (m.distance, i)), (m.distance, i))
    return {
        clip: ClipVotes(
            frozenset(i for _, i in theirs[clip].values()),
            frozenset(j for _, j in mine[clip].values()),
            int(np.median([d for d, _ in mine[clip].values()])),
        )
        for clip in mine
    }


@settings(
    max_examples=150,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
@given(data=st.data())
@pytest.mark.slow
def test_frame_votes_agree_with_the_per_hit_reference(data: st.DataObject) -> None:
    """`votes` gives exactly the per-hit reference's answer, clips in the same order, on every
    backend: after clips are added, re-added, removed and the index rebuilt (frames in the
    snapshot, the delta, tombstoned), with frames so alike that a frame hits several of a
    clip's frames at one distance (ties: the smaller frame number wins on both sides), and
    when its hits are reduced a frame or a few at a time."""
    bits = data.draw(st.sampled_from([8, 64, 256]), label="bits")
    nbytes = _nbytes(bits)
    seeds = data.draw(
        st.lists(st.integers(0, (1 << 8 * nbytes) - 1), min_size=1, max_size=3), label="seeds"
    )
    hashes = _hash_strategy(nbytes, seeds)
    per_file = data.draw(st.sampled_from([3, 16, 1 << 16]), label="per_file")
    block_hits = data.draw(st.sampled_from([1, 5, 1 << 16]), label="block_hits")
    leaf_size = data.draw(st.sampled_from([1, 16]), label="leaf_size")
    indexes = [(label, FrameIndex(ix, per_file)) for label, ix in _indexes(bits, leaf_size)]
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(index_module, "_BLOCK_HITS", block_hits)
        for _ in range(data.draw(st.integers(1, 6), label="steps")):
            op = data.draw(st.sampled_from(["add", "add", "add", "remove", "rebuild"]), label="op")
            if op == "add":  # clips 0..7, so that re-adding one is common
                clip = data.draw(st.integers(0, 7), label="clip")
                frames = data.draw(st.lists(hashes, max_size=8), label="frames")
                for _, fi in indexes:
                    fi.add(clip, frames)
            elif op == "remove":
                gone = data.draw(st.lists(st.integers(0, 9), max_size=3), label="gone")
                for _, fi in indexes:
                    fi.remove(gone)
            else:
                for _, fi in indexes:
                    fi.index.rebuild()
            asking = data.draw(st.lists(hashes, max_size=10), label="asking")
            radius = data.draw(st.integers(-1, bits // 2), label="radius")
            for label, fi in indexes:
                want = _votes_reference(fi, asking, radius)
                assert list(fi.votes(asking, radius).items()) == list(want.items()), label


def _python_calls(work: Callable[[], object]) -> int:
    """How many Python and builtin functions `work` calls (sys.setprofile): the work done in
    Python, whatever the machine's speed."""
    calls = 0

    def count(frame: object, event: str, arg: object) -> None:
        nonlocal calls
        calls += event in ("call", "c_call")

    sys.setprofile(count)
    try:
        work()
    finally:
        sys.setprofile(None)
    return calls


def test_frame_votes_of_alike_clips_do_python_work_per_frame_not_per_hit() -> None:
    """Two clips alternating two pictures (every frame within the radius of every frame of the
    other: 40,000 hits for 200 frames) cost no more Python calls than two clips of as many
    distinct frames (a few hundred hits): the daemon's writer thread once spent 298 s on
    10,000 such frames, a Python loop turn per hit. And each side's frames match through
    the first frame of each picture (ties go to the smaller frame number)."""
    n, radius = 200, 24
    a, b = bytes(8), bytes([0xFF] * 3 + [0] * 5)  # 24 bits apart
    alike = [a if k % 2 == 0 else b for k in range(n)]
    rng = random.Random(20261201)
    distinct = [rng.randbytes(8) for _ in range(n)]
    calls = {}
    for name, clip in (("alike", alike), ("distinct", distinct)):
        fi = FrameIndex(make_index("hamming", 64), 1 << 16)
        fi.add(7, clip)
        fi.index.rebuild()
        calls[name] = _python_calls(partial(fi.votes, clip, radius))
        if name == "alike":
            assert fi.votes(clip, radius) == {
                7: ClipVotes(frozenset({0, 1}), frozenset({0, 1}), 0)
            }
    assert calls["alike"] < 1.5 * calls["distinct"], calls
