"""index.CropIndex: the crop stage's candidates by shared visual words; snapshot + delta,
tombstones and background rebuilds answer as one index would."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from dedupd.index import CropIndex

VOCABULARY = 64  # small, so that random photos share words


def _photos(n: int, seed: int = 0, words: int = 270) -> dict[int, np.ndarray]:
    rng = np.random.default_rng(seed)
    return {
        i: np.unique(rng.integers(0, 1 << 16, words)).astype(np.uint16) for i in range(1, n + 1)
    }


def _load(index: CropIndex, photos: dict[int, np.ndarray]) -> None:
    ids = list(photos)
    index.load(ids, [len(photos[i]) for i in ids], np.concatenate([photos[i] for i in ids]))


def test_a_photo_sharing_part_of_its_words_is_the_best_candidate() -> None:
    photos = _photos(2000)
    index = CropIndex()
    _load(index, photos)
    rng = np.random.default_rng(9)
    query = np.concatenate([photos[5][:60], rng.integers(0, 1 << 16, 200)])  # a crop: 60 shared
    best = index.candidates(query, 3)
    assert best[0].id == 5 and best[0].shared >= 60
    assert best[1].score < best[0].score / 4


def test_shared_counts_the_words_in_common_exactly() -> None:
    photos = _photos(300, words=40)
    index = CropIndex()
    _load(index, dict(list(photos.items())[:200]))
    for i in list(photos)[200:]:
        index.add(i, photos[i])
    query = photos[7]
    for c in index.candidates(query, 50):
        assert c.shared == len(np.intersect1d(query, photos[c.id]))


def test_removed_and_excluded_photos_are_never_proposed() -> None:
    photos = _photos(100)
    index = CropIndex()
    _load(index, photos)
    index.add(500, photos[3])  # the same words under another id, in the delta
    assert {c.id for c in index.candidates(photos[3], 2)} == {3, 500}
    index.remove([3])
    assert [c.id for c in index.candidates(photos[3], 1)] == [500]
    assert 500 not in {c.id for c in index.candidates(photos[3], 5, exclude={500})}
    index.remove([500])
    assert {3, 500}.isdisjoint(c.id for c in index.candidates(photos[3], 5))
    assert len(index) == 99


def test_a_photo_filed_again_in_the_delta_is_found_by_its_new_words_only() -> None:
    """The delta keeps a re-filed photo's old entry in its words' postings until a rebuild:
    it must count for nothing (not proposed by the old words, not counted twice)."""
    photos = _photos(3)
    index = CropIndex()
    index.add(1, photos[1])
    index.add(1, photos[2])  # the same photo, hashed again with other words
    assert [c.id for c in index.candidates(photos[1], 5, min_shared=50)] == []
    [again] = index.candidates(photos[2], 5)
    assert (again.id, again.shared) == (1, len(photos[2]))
    index.remove([1])
    index.add(1, photos[1])  # removed, then back with its first words
    assert [(c.id, c.shared) for c in index.candidates(photos[1], 5)] == [(1, len(photos[1]))]


def test_min_shared_leaves_out_photos_sharing_fewer_words() -> None:
    photos = _photos(50)
    index = CropIndex()
    _load(index, photos)
    assert all(c.shared >= 30 for c in index.candidates(photos[1][:40], 50, min_shared=30))
    assert [c.id for c in index.candidates(photos[1][:40], 50, min_shared=30)] == [1]


def test_a_background_rebuild_keeps_changes_made_while_it_ran() -> None:
    photos = _photos(300)
    index = CropIndex()
    _load(index, dict(list(photos.items())[:100]))
    for i in range(101, 201):
        index.add(i, photos[i])
    assert index.start_rebuild()
    index.add(250, photos[250])  # during the build
    index.remove([150, 5])
    index.add(120, photos[260])  # replaced during the build
    index.finish_rebuild(wait=True)
    assert index.pending == 2 + 3  # 250 and the new 120 in the delta; 150, 5, the old 120 dead
    assert [c.id for c in index.candidates(photos[250], 1)] == [250]
    assert {150, 5}.isdisjoint(c.id for c in index.candidates(photos[150], 3))
    assert index.candidates(photos[5], 1)[0].id != 5
    assert [c.id for c in index.candidates(photos[260], 1)] == [120]
    assert index.candidates(photos[120], 1)[0].id != 120  # its old words are gone
    assert len(index) == 100 + 100 - 2 + 1


def test_memory_per_photo_is_within_the_budget() -> None:
    """The issue's budget: at most 2 KB per photo in RAM (10k photos of ~270 words)."""
    photos = _photos(10_000)
    index = CropIndex()
    _load(index, photos)
    assert index.memory_bytes() / len(index) <= 2048


def test_bad_input_is_refused() -> None:
    index = CropIndex(vocabulary=16)
    with pytest.raises(ValueError, match="vocabulary"):
        index.add(1, [3, 16])
    with pytest.raises(ValueError, match="do not agree"):
        index.load([1, 2], [2, 2], [1, 2, 3])
    with pytest.raises(ValueError, match="twice"):
        index.load([1, 1], [1, 1], [1, 2])


ops = st.lists(
    st.tuples(
        st.sampled_from(["add", "remove", "rebuild", "start", "finish"]),
        st.integers(1, 30),
        st.lists(st.integers(0, VOCABULARY - 1), min_size=1, max_size=12),
    ),
    max_size=40,
)


@settings(max_examples=150, deadline=None)
@given(
    initial=st.dictionaries(
        st.integers(1, 30), st.lists(st.integers(0, VOCABULARY - 1), min_size=1, max_size=12)
    ),
    changes=ops,
    query=st.lists(st.integers(0, VOCABULARY - 1), min_size=1, max_size=12),
)
def test_property_an_index_changed_in_any_order_answers_as_one_loaded_fresh(
    initial: dict[int, list[int]], changes: list[tuple[str, int, list[int]]], query: list[int]
) -> None:
    """Invariant: after any mix of loads, additions, replacements, removals and (background)
    rebuilds, the index votes as an index loaded with the live photos votes (the same photos,
    shared counts and scores: a word's rarity counts the delta and not the dead), and once
    rebuilt it proposes exactly the same."""
    index = CropIndex(vocabulary=VOCABULARY)
    live = {i: np.unique(w) for i, w in initial.items()}
    _load_small(index, live)
    for op, i, words in changes:
        if op == "add":
            index.add(i, words)
            live[i] = np.unique(words)
        elif op == "remove":
            index.remove([i])
            live.pop(i, None)
        elif op == "rebuild":
            index.rebuild()
        elif op == "start":
            index.start_rebuild()
        else:
            index.finish_rebuild(wait=True)
    shared = {c.id: c.shared for c in index.candidates(query, 100)}
    expected = {i: len(np.intersect1d(query, w)) for i, w in live.items()}
    assert shared == {i: n for i, n in expected.items() if n}
    fresh = CropIndex(vocabulary=VOCABULARY)
    _load_small(fresh, live)
    votes = {c.id: c.score for c in index.candidates(query, 100)}
    assert votes == pytest.approx({c.id: c.score for c in fresh.candidates(query, 100)})
    index.rebuild()
    assert index.candidates(query, 5) == fresh.candidates(query, 5)
    assert len(index) == len(live)


def _load_small(index: CropIndex, photos: dict[int, np.ndarray]) -> None:
    ids = sorted(photos, reverse=True)  # out of order on purpose: load sorts them
    words = [np.asarray(photos[i], np.int64) for i in ids]
    index.load(ids, [len(w) for w in words], np.concatenate(words) if words else [])


def test_a_background_load_keeps_what_was_added_or_removed_while_it_read() -> None:
    """`start_load` (a daemon's start): the index answers from its delta meanwhile, and once
    the loaded snapshot is swapped in, a photo added or removed during the read wins over
    what the read returned."""
    import threading

    photos = _photos(50)
    go = threading.Event()

    def read() -> tuple[list[int], list[int], np.ndarray]:
        assert go.wait(10)
        ids = list(photos)
        return ids, [len(photos[i]) for i in ids], np.concatenate([photos[i] for i in ids])

    index = CropIndex()
    index.start_load(read)
    assert index.loading
    index.add(7, photos[8])  # re-filed during the load: the read's old words must not count
    index.remove([9])
    index.add(100, photos[10])
    assert [c.id for c in index.candidates(photos[10], 1)] == [100]  # the delta answers
    go.set()
    index.join_rebuild()
    assert index.finish_rebuild()
    assert not index.loading
    assert {c.id for c in index.candidates(photos[8], 2)} == {7, 8}
    assert 7 not in {c.id for c in index.candidates(photos[7], 3)}
    assert 9 not in {c.id for c in index.candidates(photos[9], 3)}
    assert len(index) == 50 - 1 + 1
    index.rebuild()
    assert len(index) == 50


@settings(max_examples=100, deadline=None)
@given(
    initial=st.dictionaries(
        st.integers(1, 30), st.lists(st.integers(0, VOCABULARY - 1), min_size=1, max_size=12)
    ),
    added=st.dictionaries(
        st.integers(1, 40), st.lists(st.integers(0, VOCABULARY - 1), min_size=1, max_size=12)
    ),
    removed=st.lists(st.integers(1, 40), max_size=10),
    chunk=st.integers(1, 9),
)
@pytest.mark.slow
def test_property_postings_placed_a_chunk_at_a_time_list_every_photo_of_each_word(
    initial: dict[int, list[int]], added: dict[int, list[int]], removed: list[int], chunk: int
) -> None:
    """The load and every rebuild place postings a chunk at a time (`_PLACE_CHUNK` of them, a
    million in use, so that the build's scratch memory stays a chunk's): whatever the chunk's
    size, and wherever a photo's words or a word's postings straddle two chunks, each word
    lists exactly the live photos filed under it."""
    from unittest import mock

    from dedupd import index as index_module

    def check(index: CropIndex, live: dict[int, np.ndarray]) -> None:
        for word in range(VOCABULARY):
            found = sorted(c.id for c in index.candidates([word], 100))
            assert found == sorted(i for i, w in live.items() if word in w), word

    with mock.patch.object(index_module, "_PLACE_CHUNK", chunk):
        index = CropIndex(vocabulary=VOCABULARY)
        live = {i: np.unique(w) for i, w in initial.items()}
        _load_small(index, live)
        check(index, live)
        for i, words in added.items():
            index.add(i, words)
            live[i] = np.unique(words)
        index.remove(removed)
        for i in removed:
            live.pop(i, None)
        index.rebuild()
        check(index, live)
        index.rebuild()  # from a snapshot alone, its tombstones dropped
        check(index, live)
