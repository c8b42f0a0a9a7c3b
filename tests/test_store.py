"""store: versioned schema, incremental records, history kept across hasher changes."""

from __future__ import annotations

import os
import sqlite3
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest

from dedupd import store as store_module
from dedupd.errors import StoreError
from dedupd.imaging import FileStat, HashedImage
from dedupd.store import DECIDING_ATTEMPTS, SCHEMA_VERSION, RatedHash, Store, from_db, to_db

STAT = FileStat(1, 100, 2048, 1_700_000_000_000_000_000)


def _image(
    sha: str = "a" * 64, hashes: dict[str, bytes] | None = None, stat: FileStat = STAT
) -> HashedImage:
    return HashedImage(stat, sha, 40, 30, "JPEG", None, hashes or {"phash:16": b"\x01" * 32})


def test_new_database_is_migrated_to_the_current_schema_in_wal_mode(tmp_path: Path) -> None:
    with Store(tmp_path / "sub" / "d.db") as store:
        assert store.schema_version == SCHEMA_VERSION
        assert store.db.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
        assert {"files", "hashes", "matches", "actions", "distinct_pairs", "tombstones"} <= set(
            store.db.table_names()
        )
    with Store(tmp_path / "sub" / "d.db") as store:  # reopening migrates nothing twice
        assert store.schema_version == SCHEMA_VERSION


def test_a_database_from_a_newer_dedupd_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "d.db"
    Store(path).close()
    conn = sqlite3.connect(path)
    conn.execute(f"PRAGMA user_version = {SCHEMA_VERSION + 1}")
    conn.close()
    with pytest.raises(StoreError, match="newer than this dedupd understands"):
        Store(path)


def test_readonly_open_of_a_missing_database_says_to_scan_first(tmp_path: Path) -> None:
    with pytest.raises(StoreError, match="run `dedupd scan` first"):
        Store(tmp_path / "none.db", readonly=True)
    assert not (tmp_path / "none.db").exists()


def test_readonly_store_cannot_write(tmp_path: Path) -> None:
    Store(tmp_path / "d.db").close()
    with Store(tmp_path / "d.db", readonly=True) as store, pytest.raises(sqlite3.OperationalError):
        store.record_hashed("/r", "a.jpg", _image())


def test_same_content_rehashed_keeps_history_of_other_hashers(tmp_path: Path) -> None:
    """Changing the hasher adds a hash beside the old one instead of replacing it."""
    with Store(tmp_path / "d.db") as store:
        fid = store.record_hashed("/r", "a.jpg", _image(hashes={"phash:16": b"\x01" * 32}))
        assert store.record_hashed("/r", "a.jpg", _image(hashes={"dhash:8": b"\x02" * 8})) == fid
        assert store.hash_of(fid, "phash:16") == b"\x01" * 32
        assert store.hash_of(fid, "dhash:8") == b"\x02" * 8


def test_new_content_at_the_same_path_drops_stale_hashes_and_matches(tmp_path: Path) -> None:
    with Store(tmp_path / "d.db") as store:
        a = store.record_hashed("/r", "a.jpg", _image("a" * 64, {"old": b"\x01"}))
        b = store.record_hashed(
            "/r", "b.jpg", _image("b" * 64, {"old": b"\x01"}, STAT._replace(inode=7))
        )
        store.replace_matches(a, "old", [(b, 0, "near")])
        assert [m.other.id for m in store.matches_of(b, "old")] == [a]
        store.record_hashed("/r", "a.jpg", _image("c" * 64, {"new": b"\x03"}))
        assert store.hash_of(a, "old") is None
        assert store.matches_of(b, "old") == []


def test_error_is_recorded_with_its_kind_and_clears_hashes(tmp_path: Path) -> None:
    with Store(tmp_path / "d.db") as store:
        fid = store.record_hashed("/r", "a.jpg", _image())
        assert store.record_error("/r", "a.jpg", STAT, "truncated", "cut off") == fid
        record = store.file(fid)
        assert record is not None
        assert (record.state, record.error_kind, record.error, record.sha256) == (
            "error",
            "truncated",
            "cut off",
            None,
        )
        assert store.hash_of(fid, "phash:16") is None
        assert store.recent_errors(10) == [record]


def test_move_follows_a_rename_and_replaces_a_stale_record_at_the_target(tmp_path: Path) -> None:
    with Store(tmp_path / "d.db") as store:
        fid = store.record_hashed("/r", "a.jpg", _image())
        stale = store.record_error("/r", "b.jpg", STAT._replace(inode=9), "empty", "zero bytes")
        store.mark_missing([stale])
        store.move(fid, "/r", "b.jpg", STAT)
        assert store.file(stale) is None
        moved = store.file_at("/r/b.jpg")
        assert moved is not None and moved.id == fid and moved.sha256 == "a" * 64
        assert store.hash_of(fid, "phash:16") == b"\x01" * 32


def test_a_move_into_another_root_is_noted_to_be_decided_there_and_a_rename_is_not(
    tmp_path: Path,
) -> None:
    """`move` notes 'moved' (due under any policies) only when the root changes, and never
    over a decision still pending for a crash ('deciding') or given up ('abandoned')."""

    def why(file_id: int) -> str | None:
        row = store.db.execute("SELECT why FROM undecided WHERE file_id = ?", (file_id,)).fetchone()
        return None if row is None else str(row[0])

    with Store(tmp_path / "d.db") as store:
        a = store.record_hashed("/r", "a.jpg", _image("a" * 64))
        store.move(a, "/r", "b.jpg", STAT)
        assert why(a) is None and store.undecided_due("p", ["/r", "/s"]) == []
        store.note_undecided(a, "a" * 64, "report", "p")
        store.move(a, "/s", "b.jpg", STAT)
        assert why(a) == "moved"
        assert [r.id for r in store.undecided_due("p", ["/s"])] == [a]
        b = store.record_hashed("/r", "c.jpg", _image("b" * 64, stat=STAT._replace(inode=4)))
        store.note_undecided(b, "b" * 64, "deciding", "p")
        store.move(b, "/s", "c.jpg", STAT._replace(inode=4))
        assert why(b) == "deciding"
        e = store.record_error("/r", "e.jpg", STAT._replace(inode=5), "empty", "zero bytes")
        store.move(e, "/s", "e.jpg", STAT._replace(inode=5))
        assert why(e) is None  # nothing hashed: nothing to decide


def test_missing_files_leave_the_hash_set_but_keep_their_record(tmp_path: Path) -> None:
    with Store(tmp_path / "d.db") as store:
        fid = store.record_hashed("/r", "a.jpg", _image())
        store.mark_missing([fid])
        assert store.hashes("phash:16") == ([], [])
        assert store.files_in("/r") == {}
        record = store.file(fid)
        assert record is not None and record.state == "missing"


def test_unhashed_lists_files_that_lack_the_current_hasher(tmp_path: Path) -> None:
    with Store(tmp_path / "d.db") as store:
        fid = store.record_hashed("/r", "a.jpg", _image(hashes={"phash:16": b"\x01" * 32}))
        assert [r.id for r in store.unhashed("/r", "dhash:8")] == [fid]
        assert store.unhashed("/r", "phash:16") == []


# A name that is not UTF-8, as Linux allows and Python hands over (os.fsdecode).
CAFE = os.fsdecode(b"caf\xe9.jpg")


def test_a_path_that_is_not_utf8_round_trips_through_every_path_column(tmp_path: Path) -> None:
    """Issue #9: sqlite3 cannot store a str with surrogate escapes; such a path is kept as
    its raw bytes and comes back as the same str from files, the journal and tombstones."""
    root = os.fsdecode(b"/ph\xf6tos")  # the root itself need not be UTF-8 either
    with Store(tmp_path / "d.db") as store:
        fid = store.record_hashed(root, CAFE, _image())
        assert store.db.execute("SELECT relpath FROM files").fetchone()[0] == b"caf\xe9.jpg"
        record = store.file_at(os.path.join(root, CAFE))
        assert record is not None and (record.id, record.root, record.relpath) == (fid, root, CAFE)
        assert str(record.path) == os.path.join(root, CAFE)
        assert list(store.files_in(root)) == [CAFE]
        assert store.record(root, CAFE) == record
        assert store.count_by_state([root]) == {"ok": 1}
        assert store.hashes("phash:16", [root])[0] == [fid]

        moved = "sub/" + CAFE
        store.move(fid, root, moved, STAT)
        assert store.record(root, CAFE) is None
        assert store.record(root, moved) is not None

        q = os.path.join("/q", CAFE)
        action = store.journal_plan(
            kind="quarantine",
            file_id=fid,
            src=os.path.join(root, moved),
            dst=q,
            sha256="a" * 64,
            keeper_path=os.path.join(root, CAFE),
        )
        store.journal_update(action, tmp=q + ".tmp", staged=os.path.join(root, ".st", CAFE))
        store.journal_finish(action, "done")
        store.add_tombstone("a" * 64, os.path.join(root, moved), action)
        expected = {
            "src": os.path.join(root, moved),
            "dst": q,
            "tmp": q + ".tmp",
            "staged": os.path.join(root, ".st", CAFE),
            "keeper_path": os.path.join(root, CAFE),
        }
        for row in (store.action(action), *store.actions(), *store.quarantined()):
            assert row is not None and {k: getattr(row, k) for k in expected} == expected
        tomb = store.tombstone("a" * 64, os.path.join(root, moved))
        assert tomb is not None and tomb.id == action and tomb.src == expected["src"]
        store.remove_tombstones("a" * 64, os.path.join(root, moved))
        assert store.tombstone("a" * 64, os.path.join(root, moved)) is None


def test_utf8_paths_are_stored_as_text_so_existing_databases_still_match(tmp_path: Path) -> None:
    """Only names that are not UTF-8 become BLOBs: a valid one stays TEXT, as before."""
    assert to_db("café.jpg") == "café.jpg"
    assert to_db(CAFE) == b"caf\xe9.jpg"
    assert from_db(b"caf\xe9.jpg") == CAFE and from_db("café.jpg") == "café.jpg"
    with Store(tmp_path / "d.db") as store:
        store.record_hashed("/r", "café.jpg", _image())
        assert store.db.execute("SELECT typeof(relpath) FROM files").fetchone()[0] == "text"


def test_a_str_no_file_name_decodes_to_is_a_store_error(tmp_path: Path) -> None:
    """A lone surrogate outside surrogateescape's range (only a bad request can carry one)."""
    with Store(tmp_path / "d.db") as store, pytest.raises(StoreError, match="not a file name"):
        store.file_at("/r/\ud800.jpg")


@pytest.mark.parametrize("seed", range(6))
def test_hash_arrays_returns_exactly_what_hashes_returns(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, seed: int
) -> None:
    """The streaming loader the index starts from gives the ids and bytes of `hashes`, in
    the same order, whatever the mix: files in several roots, in every state, hashed with
    other hashers too, rehashed out of id order, and chunks smaller than the result."""
    import random

    rng = random.Random(seed)
    monkeypatch.setattr(store_module, "_HASH_CHUNK", rng.choice([1, 3, 4096]))
    roots = ["/a", "/b", os.fsdecode(b"/caf\xe9")]
    with Store(tmp_path / "d.db") as store:
        ids = []
        for n in range(rng.randint(0, 60)):
            hashes = {"phash:16": rng.randbytes(32)}
            if rng.random() < 0.3:
                hashes["dhash:8"] = rng.randbytes(8)
            image = _image(sha=f"{n:064x}", hashes=hashes)
            ids.append(store.record_hashed(rng.choice(roots), f"{n}.jpg", image))
        for file_id in rng.sample(ids, len(ids) // 3):  # new content: the hash row is rewritten
            record = store.file(file_id)
            assert record is not None
            fresh = _image(sha=rng.randbytes(32).hex(), hashes={"phash:16": rng.randbytes(32)})
            store.record_hashed(record.root, record.relpath, fresh)
        for file_id in rng.sample(ids, len(ids) // 4):
            store.set_state(file_id, rng.choice(["error", "missing", "quarantined", "deleted"]))
        for hasher in ("phash:16", "dhash:8", "whash:8"):
            for chosen in (None, [], roots[:1], roots[1:], roots):
                want_ids, want_bits = store.hashes(hasher, chosen)
                got = store.hash_arrays(hasher, chosen)
                assert got.ids.dtype == np.int64 and got.bits.dtype == np.uint8
                assert got.ids.tolist() == want_ids
                assert [bytes(row) for row in got.bits] == want_bits
                assert len(got.bits) == len(got.ids)


def test_hash_arrays_refuses_a_hash_row_of_another_length(tmp_path: Path) -> None:
    """A damaged row (a hash whose length differs from the others under the same hasher) is
    a StoreError naming the file, not a garbled index."""
    with Store(tmp_path / "d.db") as store:
        store.record_hashed("/r", "a.jpg", _image(sha="a" * 64))
        bad = store.record_hashed("/r", "b.jpg", _image(sha="b" * 64))
        store.db.execute("UPDATE hashes SET bits = ? WHERE file_id = ?", (b"\x01" * 31, bad))
        with pytest.raises(StoreError, match=f"file {bad} "):
            store.hash_arrays("phash:16")


def _visible(path: Path) -> set[str]:
    """Relative paths of the records another connection sees (what is committed)."""
    with Store(path, readonly=True) as other:
        return {r.relpath for r in other._files("1")}


def test_a_batch_commits_every_n_writes_and_when_it_ends(tmp_path: Path) -> None:
    """Inside `batch(every=3)` records become durable three at a time, and the rest when the
    batch ends; the writing connection sees its own writes at once."""
    path = tmp_path / "d.db"
    with Store(path) as store:
        with store.batch(every=3):
            for name in ("a", "b"):
                store.record_hashed("/r", f"{name}.jpg", _image(sha=name * 64))
            assert _visible(path) == set()
            assert store.record("/r", "b.jpg") is not None
            store.record_hashed("/r", "c.jpg", _image(sha="c" * 64))
            assert _visible(path) == {"a.jpg", "b.jpg", "c.jpg"}
            store.record_hashed("/r", "d.jpg", _image(sha="d" * 64))
            assert "d.jpg" not in _visible(path)
        assert _visible(path) == {"a.jpg", "b.jpg", "c.jpg", "d.jpg"}


def test_a_write_that_fails_inside_a_batch_is_undone_alone(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A record whose hashes cannot be written leaves no half-written file row, and the
    batch's other records are still committed."""
    path = tmp_path / "d.db"
    with Store(path) as store, store.batch(every=100):
        store.record_hashed("/r", "a.jpg", _image(sha="a" * 64))
        with monkeypatch.context() as m:

            def fail(*args: object, **kw: object) -> None:
                raise sqlite3.OperationalError("disk I/O error")

            m.setattr(store_module._Table, "upsert_all", fail)
            with pytest.raises(sqlite3.OperationalError):
                store.record_hashed("/r", "b.jpg", _image(sha="b" * 64))
        assert store.record("/r", "b.jpg") is None
        store.record_hashed("/r", "c.jpg", _image(sha="c" * 64))
    assert _visible(path) == {"a.jpg", "c.jpg"}


def test_the_journal_commits_the_batch_before_a_planned_action(tmp_path: Path) -> None:
    """An action is journaled before it happens, and the journal write commits the records
    written before it in the batch: no file moves on the strength of an uncommitted record."""
    path = tmp_path / "d.db"
    with Store(path) as store, store.batch(every=100):
        store.record_hashed("/r", "a.jpg", _image(sha="a" * 64))
        store.journal_plan(kind="quarantine", src="/r/a.jpg", sha256="a" * 64)
        assert _visible(path) == {"a.jpg"}


def _old_database(path: Path, version: int) -> sqlite3.Connection:
    """A database at schema `version` (the first `version` migrations) holding one present
    file, id 1 at /r/a.jpg with sha256 'x'; the connection is left open for more rows."""
    conn = sqlite3.connect(path)
    for done, script in enumerate(store_module.MIGRATIONS[:version]):
        conn.executescript(script + f"; PRAGMA user_version = {done + 1};")
    conn.execute(
        "INSERT INTO files (id, root, relpath, dev, inode, size, mtime_ns, sha256, state,"
        " first_seen, updated) VALUES (1, '/r', 'a.jpg', 1, 2, 3, 4, 'x', 'ok', 0, 0)"
    )
    return conn


def test_a_version_2_database_gains_the_quality_columns_and_keeps_its_hashes(
    tmp_path: Path,
) -> None:
    """Migrations 2 → 5 (PRAGMA user_version): hashes gain `quality`, `dominant` and
    `variants`, empty for the rows already there, which stay as they were."""
    path = tmp_path / "d.db"
    conn = _old_database(path, 2)
    conn.execute("INSERT INTO hashes (file_id, hasher, bits) VALUES (1, 'phash:16', x'01')")
    conn.commit()
    conn.close()
    with Store(path) as store:
        assert store.schema_version == SCHEMA_VERSION
        assert store.hash_of(1, "phash:16") == b"\x01"
        assert store.rated_hashes([1], "phash:16") == {1: RatedHash(b"\x01", None, None)}


def test_a_photo_recorded_before_schema_15_has_no_border_share_rather_than_none(
    tmp_path: Path,
) -> None:
    """Migration 14 → 15 adds `framed` unknown (None) to the photos already recorded: a 0
    would say they have no border, and rank every photo with a flat edge that arrives later
    after them (its smaller copy, recorded before, kept and the photo quarantined)."""
    path = tmp_path / "d.db"
    _old_database(path, 14).commit()
    with Store(path) as store:
        assert store.schema_version == SCHEMA_VERSION
        old = store.file(1)
        assert old is not None and old.framed is None
        new = store.record_hashed("/r", "b.jpg", replace(_image(sha="b" * 64), framed=0.25))
        assert {i: r.framed for i, r in store.files([1, new]).items()} == {1: None, new: 0.25}


def test_quality_and_dominant_share_are_stored_with_the_rated_hash_only(tmp_path: Path) -> None:
    """A rated hash (PDQ) keeps its quality and the image's dominant share; `rated_hashes`
    returns them for the ids asked, and nothing for files without that hash."""
    image = replace(
        _image(hashes={"phash:16": b"\x01" * 32, "pdq:16": b"\x02" * 32}),
        quality={"pdq:16": 87},
        dominant=0.25,
    )
    with Store(tmp_path / "d.db") as store:
        a = store.record_hashed("/r", "a.jpg", image)
        b = store.record_hashed("/r", "b.jpg", _image(sha="b" * 64))
        assert store.rated_hashes([a, b], "pdq:16") == {a: RatedHash(b"\x02" * 32, 87, 0.25)}
        assert store.rated_hashes([a], "phash:16") == {a: RatedHash(b"\x01" * 32, None, None)}
        assert [r.id for r in store.unhashed("/r", ["phash:16", "pdq:16"])] == [b]


def test_a_version_5_database_keeps_its_matches_and_takes_the_new_kinds_with_detail(
    tmp_path: Path,
) -> None:
    """Migration 5 → 6 rebuilds `matches` (a CHECK cannot change in place): the rows there
    stay, with their transform; afterwards a crop match stores and returns its detail, and a
    kind outside the list is still refused by the database."""
    path = tmp_path / "d.db"
    conn = sqlite3.connect(path)
    for version, script in enumerate(store_module.MIGRATIONS[:5]):
        conn.executescript(script + f"; PRAGMA user_version = {version + 1};")
    for i in (1, 2, 3):
        conn.execute(
            "INSERT INTO files (id, root, relpath, dev, inode, size, mtime_ns, sha256, state,"
            f" first_seen, updated) VALUES ({i}, '/r', '{i}.jpg', 1, {i}, 3, 4, 's{i}', 'ok',"
            " 0, 0)"
        )
    conn.execute(
        "INSERT INTO matches (a, b, hasher, distance, kind, found, transform)"
        " VALUES (1, 2, 'phash:16', 7, 'near', 0, 'rot90')"
    )
    conn.commit()
    conn.close()
    with Store(path) as store:
        assert store.schema_version == SCHEMA_VERSION
        [old] = store.matches_of(2, "phash:16")
        assert (old.other.id, old.distance, old.kind, old.transform, old.detail) == (
            1,
            7,
            "near",
            "rot90",
            None,
        )
        store.replace_matches(3, "orb", [(1, 40, "crop", "identity", {"kept": 0.5, "of": 3})])
        [crop] = store.matches_of(1, "orb")
        assert (crop.other.id, crop.kind, crop.detail) == (3, "crop", {"kept": 0.5, "of": 3})
        with pytest.raises(sqlite3.IntegrityError):
            store.db.execute(
                "INSERT INTO matches (a, b, hasher, distance, kind, found)"
                " VALUES (1, 3, 'x', 0, 'similar', 0)"
            )


def test_a_file_recorded_for_a_decision_is_hashed_again_until_the_decision_is_written(
    tmp_path: Path,
) -> None:
    """`deciding` notes the file in the record's own transaction; the reconcile asks for it
    again (`unhashed`) until a decision replaces or clears the note, and `redecide` never
    takes it (it has no decision to repeat). A note for bytes the file no longer has, and a
    record written with no decision to follow, ask for nothing."""
    key = "phash:16"
    with Store(tmp_path / "d.db") as store:
        a = store.record_hashed("/r", "a.jpg", _image("a" * 64), deciding="p1")
        b = store.record_hashed("/r", "b.jpg", _image("b" * 64, stat=STAT._replace(inode=3)))
        c = store.record_hashed(
            "/r", "c.jpg", _image("c" * 64, stat=STAT._replace(inode=4)), deciding="p1"
        )
        assert {r.id for r in store.unhashed("/r", key)} == {a, c}
        assert store.undecided_due("p1", ["/r"]) == []
        assert store.undecided_due("p2", ["/r"]) == []  # not a report under other policies
        store.clear_undecided(a)  # decided: nothing to do
        store.note_undecided(c, "c" * 64, "dry run", "p1")  # decided: a preview
        assert store.unhashed("/r", key) == []
        assert [r.id for r in store.undecided_due("p1", ["/r"])] == [c]
        store.record_hashed("/r", "b.jpg", _image("b" * 64, stat=STAT._replace(inode=3)), "p1")
        assert [r.id for r in store.unhashed("/r", key)] == [b]
        store.record_hashed("/r", "b.jpg", _image("d" * 64, stat=STAT._replace(inode=3)))
        assert store.unhashed("/r", key) == []  # the note is for bytes no longer there


def test_a_schema_12_database_keeps_its_undecided_rows_and_takes_deciding_notes(
    tmp_path: Path,
) -> None:
    """Migrations 12 → 13 and 13 → 14 rebuild `undecided` for their new CHECKs, every row
    kept."""
    path = tmp_path / "d.db"
    conn = _old_database(path, 12)
    conn.execute(
        "INSERT INTO undecided (file_id, sha256, why, policies, seq, created)"
        " VALUES (1, 'x', 'dry run', 'p', 7, 0)"
    )
    with pytest.raises(sqlite3.IntegrityError):
        conn.execute(
            "INSERT OR REPLACE INTO undecided (file_id, sha256, why, policies, seq, created)"
            " VALUES (1, 'x', 'deciding', 'p', 8, 0)"
        )
    conn.commit()
    conn.close()
    with Store(path) as store:
        assert store.schema_version == SCHEMA_VERSION
        assert [r.id for r in store.undecided_due("p", ["/r"])] == [1]
        store.note_undecided(1, "x", "deciding", "p")
        assert [r.id for r in store.unhashed("/r", "phash:16")] == [1]  # and has no hash
        store.db.execute("INSERT INTO hashes (file_id, hasher, bits) VALUES (1, 'phash:16', x'01')")
        assert [r.id for r in store.unhashed("/r", "phash:16")] == [1]  # deciding, still
        assert store.undecided_due("p", ["/r"]) == []


def test_a_decision_that_never_comes_is_given_up_after_its_attempts(tmp_path: Path) -> None:
    """Each record of the same bytes whose decision never came is one more attempt; at
    DECIDING_ATTEMPTS the reconcile stops asking for the file (`unhashed`) and
    `abandon_deciding` turns the note to 'abandoned'. An attempt put off on purpose
    (`deferred`) does not count; new bytes, or a decision made, start over."""
    key, root = "phash:16", "/r"

    def attempts(file_id: int) -> tuple[str, int] | None:
        row = store.db.execute(
            "SELECT why, attempts FROM undecided WHERE file_id = ?", (file_id,)
        ).fetchone()
        return None if row is None else (row[0], row[1])

    with Store(tmp_path / "d.db") as store:
        a = store.record_hashed(root, "a.jpg", _image("a" * 64), deciding="p")
        store.record_hashed(root, "a.jpg", _image("a" * 64), deciding="p")
        assert attempts(a) == ("deciding", 2)
        store.deferred(a)
        assert attempts(a) == ("deciding", 1)
        for n in range(2, DECIDING_ATTEMPTS + 1):
            store.record_hashed(root, "a.jpg", _image("a" * 64), deciding="p")
            assert attempts(a) == ("deciding", n)
            due = [a] if n < DECIDING_ATTEMPTS else []
            assert [r.id for r in store.unhashed(root, key)] == due
        assert store.abandon_deciding("/elsewhere") == []
        ((record, tried),) = store.abandon_deciding(root)
        assert (record.id, tried) == (a, DECIDING_ATTEMPTS)
        assert attempts(a) == ("abandoned", DECIDING_ATTEMPTS)
        assert store.abandon_deciding(root) == [] and store.unhashed(root, key) == []
        assert store.undecided_due("other policies", [root]) == []
        store.record_hashed(root, "a.jpg", _image("a" * 64), deciding="p")  # it changed
        assert attempts(a) == ("deciding", 1)
        store.record_hashed(root, "a.jpg", _image("b" * 64), deciding="p")  # new bytes
        assert attempts(a) == ("deciding", 1)
        store.note_undecided(a, "b" * 64, "report", "p")  # decided: reported
        store.record_hashed(root, "a.jpg", _image("b" * 64), deciding="p")
        assert attempts(a) == ("deciding", 1)


def test_nested_records_are_those_under_the_root_kept_under_another(tmp_path: Path) -> None:
    """A parent's records under the root, a subfolder's all, a sibling's none (even one whose
    name starts with the root's: /r/sub2 is not under /r/sub), non-UTF-8 names included."""
    odd = os.fsdecode(b"caf\xe9.jpg")  # Latin-1, not UTF-8: stored as a BLOB
    with Store(tmp_path / "d.db") as store:
        ids = {
            where: store.record_hashed(root, relpath, _image(stat=STAT._replace(inode=i)))
            for i, (where, root, relpath) in enumerate(
                [
                    ("parent", "/r", "sub/a.jpg"),
                    ("parent odd", "/r", f"sub/{odd}"),
                    ("parent deep", "/r", "sub/x/b.jpg"),
                    ("parent elsewhere", "/r", "other/a.jpg"),
                    ("parent sibling", "/r", "sub2/a.jpg"),
                    ("parent sibling odd", "/r", f"sub2/{odd}"),
                    ("own", "/r/sub", "c.jpg"),
                    ("child", "/r/sub/x/y", "d.jpg"),
                    ("child odd", f"/r/sub/{odd}", "e.jpg"),
                    ("sibling root", "/r/sub2", "f.jpg"),
                    ("unrelated", "/s", "sub/a.jpg"),
                ]
            )
        }
        store.mark_missing([ids["parent deep"]])
        assert set(store.recorded_roots()) == {
            "/r", "/r/sub", "/r/sub/x/y", f"/r/sub/{odd}", "/r/sub2", "/s"
        }
        nested = {r.id for r in store.nested_records("/r/sub")}
        wanted = ["parent", "parent odd", "parent deep", "child", "child odd"]
        assert nested == {ids[w] for w in wanted}


def test_adopt_rehomes_records_and_drops_the_second_record_of_one_path(tmp_path: Path) -> None:
    with Store(tmp_path / "d.db") as store:
        a = store.record_hashed("/r", "sub/a.jpg", _image())
        b_parent = store.record_hashed("/r", "sub/b.jpg", _image(stat=STAT._replace(inode=2)))
        b_own = store.record_hashed("/r/sub", "b.jpg", _image(stat=STAT._replace(inode=2)))
        c_parent = store.record_hashed("/r", "sub/c.jpg", _image(stat=STAT._replace(inode=3)))
        c_own = store.record_hashed("/r/sub", "c.jpg", _image(stat=STAT._replace(inode=3)))
        store.mark_missing([c_own])
        dropped = store.adopt("/r/sub", [(a, "a.jpg"), (b_parent, "b.jpg"), (c_parent, "c.jpg")])
        # b: both present, the root's own stays; c: the root's own was missing, the present one
        # stays, at the root's path
        assert sorted(dropped) == sorted([b_parent, c_own])
        assert store.record("/r/sub", "a.jpg").id == a  # type: ignore[union-attr]
        assert store.record("/r/sub", "b.jpg").id == b_own  # type: ignore[union-attr]
        assert store.record("/r/sub", "c.jpg").id == c_parent  # type: ignore[union-attr]
        assert store.file(b_parent) is None and store.file(c_own) is None
        assert store.nested_records("/r/sub") == []
        # decided again under the root's policy, as a photo moved into it
        notes = dict(store.db.execute("SELECT file_id, why FROM undecided").fetchall())
        assert (notes.get(a), notes.get(c_parent)) == ("moved", "moved")

