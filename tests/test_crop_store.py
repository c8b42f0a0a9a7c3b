"""store: the crop stage's features table (schema 10, its patch 11): written with a hashed
photo, dropped when its content changes, read back for candidates and, as words only, for the
index."""

from __future__ import annotations

import sqlite3
import threading
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from dedupd.engine import Ingest
from dedupd.filestat import FileStat, HashedImage, LocalFeatures
from dedupd.store import SCHEMA_VERSION, Store

STAT = FileStat(1, 2, 3, 4)
KIND = "orb:test"


def _features(seed: int, n: int = 5) -> LocalFeatures:
    rng = np.random.default_rng(seed)
    words = np.unique(rng.integers(0, 1 << 16, n)).astype("<u2")
    return LocalFeatures(
        KIND,
        512,
        384,
        rng.random((n, 2)).astype(np.float32).tobytes(),
        rng.integers(0, 256, (n, 32), dtype=np.uint8).tobytes(),
        words.tobytes(),
    )


def _image(sha: str, features: LocalFeatures | None) -> HashedImage:
    return HashedImage(
        STAT, sha, 40, 30, "JPEG", None, {"phash:16": b"\x01" * 32}, features=features
    )


def test_features_are_stored_with_the_photo_and_read_back(tmp_path: Path) -> None:
    with Store(tmp_path / "d.db") as store:
        a = store.record_hashed("/r", "a.jpg", _image("a" * 64, _features(1)))
        b = store.record_hashed("/r", "b.jpg", _image("b" * 64, _features(2, 7)))
        c = store.record_hashed("/r", "c.jpg", _image("c" * 64, None))
        found = store.features_of([a, b, c], KIND)
        assert found == {a: _features(1), b: _features(2, 7)}
        assert store.features_of([a], "orb:other") == {}
        ids, counts, words = store.feature_words(KIND, ["/r"])
        assert list(ids) == [a, b]
        expected = [np.frombuffer(_features(s, n).words, "<u2") for s, n in ((1, 5), (2, 7))]
        assert list(counts) == [len(w) for w in expected]
        assert np.array_equal(words, np.concatenate(expected))
        assert store.feature_words(KIND, ["/elsewhere"])[0].size == 0


def test_the_index_load_leaves_out_a_damaged_row_and_the_dropped_one(tmp_path: Path) -> None:
    """`feature_words` (the crop index's start-up load) reads every row in id order; a row
    whose words are not whole 16-bit words (damaged) is left out, not the whole load, and a
    row `drop_features` removed is gone from both reads."""
    with Store(tmp_path / "d.db") as store:
        ids = [
            store.record_hashed("/r", f"{n}.jpg", _image(str(n) * 64, _features(n)))
            for n in range(1, 5)
        ]
        store.db.execute(
            "UPDATE features SET words = substr(words, 1, 3) WHERE file_id = ?", (ids[1],)
        )
        store.db.conn.commit()
        store.drop_features(ids[2])
        loaded, counts, words = store.feature_words(KIND, ["/r"])
        assert list(loaded) == [ids[0], ids[3]]
        expected = [np.frombuffer(_features(n).words, "<u2") for n in (1, 4)]
        assert list(counts) == [len(w) for w in expected]
        assert np.array_equal(words, np.concatenate(expected))
        assert list(store.features_of(ids, KIND)) == [ids[0], ids[1], ids[3]]


def test_new_content_drops_the_old_features(tmp_path: Path) -> None:
    """Features describe the picture that was hashed: another sha256 at the path drops them
    (when the new version has none of its own)."""
    with Store(tmp_path / "d.db") as store:
        a = store.record_hashed("/r", "a.jpg", _image("a" * 64, _features(1)))
        store.record_hashed("/r", "a.jpg", _image("a" * 64, None))  # same bytes: kept
        assert a in store.features_of([a], KIND)
        store.record_hashed("/r", "a.jpg", _image("d" * 64, None))
        assert store.features_of([a], KIND) == {}


def test_a_schema_9_database_gains_the_features_table_and_keeps_its_rows(tmp_path: Path) -> None:
    db = tmp_path / "d.db"
    with Store(db) as store:
        a = store.record_hashed("/r", "a.jpg", _image("a" * 64, None))
    conn = sqlite3.connect(db)
    conn.executescript(
        "DROP TABLE features; ALTER TABLE files DROP COLUMN framed;"
        " ALTER TABLE actions DROP COLUMN keeper_sha256; PRAGMA user_version = 9;"
    )
    conn.close()
    with Store(db) as store:
        assert store.schema_version == SCHEMA_VERSION
        assert store.file(a) is not None
        b = store.record_hashed("/r", "b.jpg", _image("b" * 64, _features(3)))
        assert b in store.features_of([b], KIND)


def test_a_schema_11_database_keeps_its_features_with_the_words_first_in_each_row(
    tmp_path: Path,
) -> None:
    """Migration 11 → 12 rebuilds the features table with the words before the keypoints,
    descriptors and patch (what the crop index's start-up load reads first), every row kept
    as it was."""
    db = tmp_path / "d.db"
    with Store(db) as store:
        a = store.record_hashed("/r", "a.jpg", _image("a" * 64, _features(1)))
        b = store.record_hashed("/r", "b.jpg", _image("b" * 64, _features(2, 9)))
    conn = sqlite3.connect(db)
    conn.executescript(
        "DROP TABLE features; ALTER TABLE files DROP COLUMN framed;"
        " ALTER TABLE actions DROP COLUMN keeper_sha256;"
        "CREATE TABLE features (file_id INTEGER PRIMARY KEY REFERENCES files (id)"
        " ON DELETE CASCADE, kind TEXT NOT NULL, width INTEGER NOT NULL,"
        " height INTEGER NOT NULL, points BLOB NOT NULL, descriptors BLOB NOT NULL,"
        " words BLOB NOT NULL, patch BLOB NOT NULL DEFAULT x'');"
        "PRAGMA user_version = 11;"
    )
    for i, f in ((a, _features(1)), (b, _features(2, 9))):
        conn.execute(
            "INSERT INTO features VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
            (i, f.kind, f.width, f.height, f.points, f.descriptors, f.words, f.patch),
        )
    conn.commit()
    conn.close()
    with Store(db) as store:
        assert store.schema_version == SCHEMA_VERSION
        columns = [row[1] for row in store.db.execute("PRAGMA table_info(features)")]
        assert columns.index("words") < columns.index("points")
        assert store.features_of([a, b], KIND) == {a: _features(1), b: _features(2, 9)}
        ids, _, words = store.feature_words(KIND, ["/r"])
        expected = [np.frombuffer(_features(s, n).words, "<u2") for s, n in ((1, 5), (2, 9))]
        assert list(ids) == [a, b] and np.array_equal(words, np.concatenate(expected))


def test_closing_an_ingest_cancels_its_crop_index_load_at_the_next_chunk(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """An Ingest closed (a stop, a reload) while its crop index is still loading does not
    wait for the load, and the load stops reading at its next chunk instead of building a
    second index (1 GB at a million photos) beside the next Ingest's."""
    from dataclasses import replace

    from dedupd import store as store_module
    from dedupd.config import Config

    db = tmp_path / "d.db"
    with Store(db) as store:
        for n in range(1, 9):
            store.record_hashed("/r", f"{n}.jpg", _image(str(n) * 64, _features(n)))
    monkeypatch.setattr(store_module, "_HASH_CHUNK", 2)
    reading, closed, chunks = threading.Event(), threading.Event(), []
    real = Store.feature_words

    def feature_words(self: Store, kind: str, roots: Any, stop: Any) -> Any:
        def stopping() -> bool:  # from the second chunk on, waits for the close
            chunks.append(1)
            reading.set()
            if len(chunks) > 1:
                assert closed.wait(10)
            return bool(stop())

        return real(self, KIND, roots, stopping)  # the test's rows' kind

    monkeypatch.setattr(Store, "feature_words", feature_words)
    config = replace(Config(), database=db).with_roots([Path("/r")])
    with Store(db) as store:
        ingest = Ingest(store, config, ["/r"])
        job = ingest.crops._rebuilding
        assert job is not None and job.thread is not None
        assert reading.wait(10)
        ingest.close()
        closed.set()
        job.thread.join(10)
        assert not job.thread.is_alive()
        assert len(chunks) == 2  # 8 rows in chunks of 2: stopped at the second
        with pytest.raises(store_module.Cancelled):
            real(store, KIND, ["/r"], lambda: True)


def test_a_member_matched_only_through_another_is_listed_with_that_match(tmp_path: Path) -> None:
    """A crop of a near copy, not matched with the keeper itself: its group lists it as a
    crop of that copy (and says so), not as a near copy of the keeper at whatever distance
    their hashes are ("near 134/256")."""
    from dataclasses import replace

    from dedupd.config import Config
    from dedupd.engine import duplicate_groups
    from dedupd.features import FEATURES_KEY
    from dedupd.hashers import Hasher
    from dedupd.queries import groups_json
    from dedupd.render import group_dicts

    config = replace(Config(), database=tmp_path / "d.db").with_roots([tmp_path])
    root = str(tmp_path)
    key = Hasher(config.hashing.algorithm, config.hashing.hash_size).key
    with Store(config.database) as store:
        keeper, near, crop = (
            store.record_hashed(root, name, _image(str(i) * 64, None))
            for i, name in enumerate(["keeper.jpg", "near.jpg", "crop.jpg"], start=1)
        )
        store.replace_matches(near, key, [(keeper, 6, "near")])
        detail = {"crop": crop, "kept": 0.6, "inliers": 80}
        store.replace_matches(crop, FEATURES_KEY, [(near, 40, "crop", "identity", detail)])
        ((group),) = duplicate_groups(store, config, [root])
    assert group.keeper.relpath == "keeper.jpg"
    listed = {
        m.record.relpath: (m.kind, m.distance, m.via and m.via.relpath) for m in group.duplicates
    }
    assert listed == {"near.jpg": ("near", 6, None), "crop.jpg": ("crop", 40, "near.jpg")}
    text = group_dicts(groups_json([group], 256)["groups"], 256)
    assert f"# {tmp_path / 'crop.jpg'}" in text
    assert f"crop: keeps 60% of {tmp_path / 'near.jpg'}, 80 matching points" in text
