"""scan end to end on real temp trees: groups found, nothing decoded twice, renames followed."""

from __future__ import annotations

import io
import json
import os
import shutil
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest
import structlog
from click.testing import CliRunner
from PIL import Image

from dedupd import safefs
from dedupd.actions import Actions
from dedupd.cli import dedupd
from dedupd.config import DEFAULT_POLICY, Config, HashingConfig, IndexConfig, load_config
from dedupd.engine import ScanReport, scan
from dedupd.hashers import Hasher
from dedupd.imaging import hash_image
from dedupd.pool import HasherPool
from dedupd.scanner import PATH_MAX, Entry, NameFilter, walk
from dedupd.store import FileRecord, Store
from tests import photos


def _config(tmp_path: Path, *roots: Path, **hashing: Any) -> Config:
    config = replace(Config(), database=tmp_path / "state" / "dedupd.db")
    config = replace(config, hashing=replace(HashingConfig(workers=1), **hashing))
    return config.with_roots(roots)


def _scan(config: Config) -> ScanReport:
    with Store(config.database) as store:
        return scan(config, store)


def _groups(report: ScanReport) -> list[tuple[str, list[tuple[str, str]]]]:
    root = report.roots[0]
    return [
        (
            os.path.relpath(g.keeper.path, root),
            [(os.path.relpath(m.record.path, root), m.kind) for m in g.duplicates],
        )
        for g in report.groups
    ]


@pytest.fixture
def decodes(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """Records every path the engine hands to the hasher pool to be decoded (the decoding
    itself happens in worker processes, out of a monkeypatch's reach)."""
    seen: list[str] = []
    real = HasherPool.submit

    def spy(self: HasherPool, entry: Entry) -> None:
        seen.append(entry.path)
        real(self, entry)

    monkeypatch.setattr(HasherPool, "submit", spy)
    return seen


# Keepers by the default rules: highest resolution, then largest file, then oldest. The copy
# of astronaut is younger; the EXIF-rotated chelsea is a few bytes larger than the original.
EXPECTED_GROUPS = [
    ("astronaut.jpg", [("astronaut (1).jpg", "exact")]),
    ("coffee.jpg", [("chat/coffee-wa.jpg", "near")]),
    ("edit/chelsea-rotated.jpg", [("chelsea.jpg", "near")]),
    ("rocket.jpg", [("chat/rocket-small.jpg", "near")]),
]


def test_scan_finds_exact_and_near_duplicate_groups(library: Path, tmp_path: Path) -> None:
    report = _scan(_config(tmp_path, library))
    assert (report.files, report.hashed, len(report.failed)) == (10, 9, 1)
    assert _groups(report) == EXPECTED_GROUPS
    ((path, failure),) = report.failed
    assert path.endswith("broken.jpg") and failure.kind == "truncated"


def test_unchanged_files_are_never_decoded_again(
    library: Path, tmp_path: Path, decodes: list[str]
) -> None:
    """Invariant 4: same (dev, inode, size, mtime_ns) → no decode, not even a failed file."""
    config = _config(tmp_path, library)
    _scan(config)
    assert len(decodes) == 10
    decodes.clear()
    second = _scan(config)
    assert decodes == []
    assert (second.unchanged, second.hashed, second.failed) == (10, 0, [])
    assert _groups(second) == EXPECTED_GROUPS


def test_rename_is_followed_without_rehashing(
    library: Path, tmp_path: Path, decodes: list[str]
) -> None:
    config = _config(tmp_path, library)
    _scan(config)
    with Store(config.database) as store:
        before = store.file_at(library / "coffee.jpg")
    (library / "2026").mkdir()
    os.rename(library / "coffee.jpg", library / "2026" / "coffee.jpg")
    decodes.clear()
    report = _scan(config)
    assert decodes == []
    assert (report.renamed, report.missing, report.hashed) == (1, 0, 0)
    with Store(config.database) as store:
        after = store.file_at(library / "2026" / "coffee.jpg")
        assert store.file_at(library / "coffee.jpg") is None
    assert before is not None and after is not None and after.id == before.id
    assert ("2026/coffee.jpg", [("chat/coffee-wa.jpg", "near")]) in _groups(report)


def test_hard_links_renamed_together_are_each_followed(
    library: Path, tmp_path: Path, decodes: list[str]
) -> None:
    """Two names of one file (a hard link: the same dev, inode, size, mtime) both renamed
    while nothing watched: each new name follows one record, none is decoded, and no record
    is left describing a name that is gone."""
    config = _config(tmp_path, library)
    os.link(library / "coffee.jpg", library / "coffee-link.jpg")
    _scan(config)
    with Store(config.database) as store:
        before = [store.file_at(library / n) for n in ("coffee.jpg", "coffee-link.jpg")]
    ids = {r.id for r in before if r is not None}
    assert len(ids) == 2
    (library / "2026").mkdir()
    os.rename(library / "coffee.jpg", library / "2026" / "a.jpg")
    os.rename(library / "coffee-link.jpg", library / "2026" / "b.jpg")
    decodes.clear()
    report = _scan(config)
    assert decodes == []
    assert (report.renamed, report.missing, report.hashed) == (2, 0, 0)
    with Store(config.database) as store:
        now = {store.file_at(library / "2026" / n) for n in ("a.jpg", "b.jpg")}
        assert {r.id for r in now if r is not None} == ids
        for gone in ("coffee.jpg", "coffee-link.jpg"):
            assert store.file_at(library / gone) is None


def _hard_links_moved_away(config: Config, library: Path, tmp_path: Path) -> Path:
    """coffee.jpg and a hard link to it, scanned, then both moved out of the library and
    marked missing by a scan; returns the folder they are in now."""
    os.link(library / "coffee.jpg", library / "coffee-link.jpg")
    _scan(config)
    away = tmp_path / "away"
    away.mkdir()
    for name in ("coffee.jpg", "coffee-link.jpg"):
        os.rename(library / name, away / name)
    assert _scan(config).missing == 2
    return away


def test_hard_links_marked_missing_and_back_under_new_names_each_take_a_record(
    library: Path, tmp_path: Path, decodes: list[str]
) -> None:
    """Two names of one file moved out of the library (both marked missing by a scan), then
    back under two new names: each revives one of the two records, none is decoded."""
    config = _config(tmp_path, library)
    away = _hard_links_moved_away(config, library, tmp_path)
    for name, new in (("coffee.jpg", "x.jpg"), ("coffee-link.jpg", "y.jpg")):
        os.rename(away / name, library / new)
    decodes.clear()
    report = _scan(config)
    assert decodes == []
    assert (report.renamed, report.hashed) == (2, 0)
    with Store(config.database) as store:
        now = [store.file_at(library / n) for n in ("x.jpg", "y.jpg")]
    assert None not in now and len({r.id for r in now if r is not None}) == 2


def test_hard_links_marked_missing_and_back_in_two_roots_each_take_a_record(
    library: Path, tmp_path: Path, decodes: list[str]
) -> None:
    """The same, but the two names come back into two roots walked by one scan: each root's
    name revives its own record (both took the same one: it went to the last root, and the
    other name was left unrecorded while its record stayed missing)."""
    other = tmp_path / "other"
    other.mkdir()
    config = _config(tmp_path, library, other)
    away = _hard_links_moved_away(config, library, tmp_path)
    os.rename(away / "coffee.jpg", library / "x.jpg")
    os.rename(away / "coffee-link.jpg", other / "y.jpg")
    decodes.clear()
    report = _scan(config)
    assert decodes == []
    assert (report.renamed, report.hashed) == (2, 0)
    with Store(config.database) as store:
        now = [store.file_at(library / "x.jpg"), store.file_at(other / "y.jpg")]
    assert None not in now and len({r.id for r in now if r is not None}) == 2


def test_changed_and_deleted_files(library: Path, tmp_path: Path, decodes: list[str]) -> None:
    """A replaced file is re-hashed and re-matched; a deleted one leaves its groups."""
    config = _config(tmp_path, library)
    _scan(config)
    (library / "astronaut (1).jpg").unlink()
    shutil.copyfile(photos.photo("hubble"), library / "chat" / "rocket-small.jpg")  # new content
    decodes.clear()
    report = _scan(config)
    assert decodes == [str(library / "chat" / "rocket-small.jpg")]
    assert (report.missing, report.hashed) == (1, 1)
    assert _groups(report) == [
        ("coffee.jpg", [("chat/coffee-wa.jpg", "near")]),
        ("edit/chelsea-rotated.jpg", [("chelsea.jpg", "near")]),
        ("hubble.jpg", [("chat/rocket-small.jpg", "exact")]),
    ]


def test_a_fixed_upload_is_retried_once_it_changes(library: Path, tmp_path: Path) -> None:
    config = _config(tmp_path, library)
    _scan(config)
    shutil.copyfile(photos.photo("chelsea"), library / "broken.jpg")  # the upload completes
    report = _scan(config)
    assert (report.hashed, report.failed) == (1, [])
    assert dict(_groups(report))["edit/chelsea-rotated.jpg"] == [
        ("broken.jpg", "near"),
        ("chelsea.jpg", "near"),
    ]


def test_changing_the_hasher_rehashes_lazily_and_keeps_old_hashes(
    library: Path, tmp_path: Path
) -> None:
    config = _config(tmp_path, library)
    _scan(config)
    other = _config(tmp_path, library, algorithm="dhash", hash_size=8)
    report = _scan(other)
    assert report.hashed == 9  # every decodable file once more, for the new hasher
    with Store(config.database) as store:
        rows = dict(
            store.db.execute("SELECT hasher, count(*) FROM hashes GROUP BY hasher").fetchall()
        )
    assert sorted(rows.values()) == [9, 9, 9]  # phash, dhash, and PDQ (the second opinion)
    assert _scan(other).hashed == 0
    assert _scan(config).hashed == 0, "going back finds the old hashes still there"


def test_a_missing_root_is_unavailable_and_its_records_are_kept(
    library: Path, tmp_path: Path
) -> None:
    """An unmounted disk is not a mass deletion."""
    config = _config(tmp_path, library)
    _scan(config)
    library.rename(tmp_path / "unmounted")
    report = _scan(config)
    assert report.unavailable and report.unavailable[0][0] == str(library)
    assert report.missing == 0
    with Store(config.database) as store:
        assert len(store.files_in(str(library))) == 10


def test_temp_names_and_other_extensions_are_never_hashed(tmp_path: Path) -> None:
    root = tmp_path / "photos"
    src = photos.photo("coffee")
    for name in [
        "IMG_1.jpg",
        ".syncthing.IMG_2.jpg.tmp",
        "IMG_3.jpg.part",
        ".IMG_4.jpg.~1a2b",
        "IMG_5.JPG.crdownload",
        "~IMG_6.jpg",
        ".hidden.jpg",
        "notes.txt",
        "IMG_7.HEIC.filepart",
    ]:
        photos.copy(src, root / name)
    photos.copy(src, root / ".stfolder" / "IMG_8.jpg")
    photos.copy(src, root / "IMG_9.JPEG")
    names = NameFilter(Config().watch)
    found = sorted(e.relpath for e in walk(str(root), names))
    assert found == ["IMG_1.jpg", "IMG_9.JPEG"]


def test_database_and_quarantine_folders_inside_a_root_are_not_walked(tmp_path: Path) -> None:
    root = tmp_path / "photos"
    photos.copy(photos.photo("coffee"), root / "a.jpg")
    photos.copy(photos.photo("coffee"), root / "quarantine" / "a.jpg")
    cfg_file = tmp_path / "dedupd.yaml"
    cfg_file.write_text(
        "database: photos/state/dedupd.db\n"
        "quarantine: {path: photos/quarantine}\n"
        "hashing: {workers: 1}\n"
        "roots: [{path: photos}]\n"
    )
    config = load_config(cfg_file)
    photos.copy(photos.photo("coffee"), root / "state" / "a.jpg")
    report = _scan(config)
    assert (report.files, report.groups) == (1, [])


def test_a_quarantine_an_earlier_configuration_kept_inside_a_root_is_not_walked(
    tmp_path: Path,
) -> None:
    """Red team 12: with quarantine.path moved out of a root by a reload, the old folder's
    photos were walked as the library's, quarantined again into the new one, and the first
    entry could no longer be restored. A folder holding the quarantine's marker is never
    walked, whatever the configuration names."""
    root = tmp_path / "photos"
    photos.copy(photos.photo("rocket"), root / "R.jpg")
    photos.reencode(photos.photo("rocket"), root / "R-wa.jpg")
    cfg_file = tmp_path / "dedupd.yaml"

    def configure(quarantine: str) -> Config:
        cfg_file.write_text(
            f"database: {tmp_path / 'dedupd.db'}\n"
            f"quarantine: {{path: {quarantine}}}\n"
            "hashing: {workers: 1}\n"
            f"roots: [{{path: {root}, policy: camera}}]\n"
            "policies: {camera: {exact: quarantine, near: quarantine}}\n"
        )
        return load_config(cfg_file)

    config = configure(str(root / "Quarantine"))
    with Store(config.database) as store:
        scan(config, store, actions=Actions(store, config.quarantine.path))
    assert not (root / "R-wa.jpg").exists()
    config = configure(str(tmp_path / "elsewhere"))
    with Store(config.database) as store:
        report = scan(config, store, actions=Actions(store, config.quarantine.path))
        assert report.files == 1 and report.outcomes == [], report
        [entry] = store.quarantined()
        assert not (tmp_path / "elsewhere").exists()
        restored = Actions(store, config.quarantine.path).restore(entry.id)
    assert restored == root / "R-wa.jpg" and restored.is_file()


def test_process_pool_gives_the_same_result_as_in_process(library: Path, tmp_path: Path) -> None:
    serial = _scan(_config(tmp_path / "one", library))
    pooled = _scan(_config(tmp_path / "two", library, workers=2))
    assert _groups(pooled) == _groups(serial) == EXPECTED_GROUPS
    assert [(p, f.kind) for p, f in pooled.failed] == [(p, f.kind) for p, f in serial.failed]


def test_ckdtree_backend_finds_the_same_groups(library: Path, tmp_path: Path) -> None:
    config = replace(_config(tmp_path, library), index=IndexConfig(backend="ckdtree"))
    assert _groups(_scan(config)) == EXPECTED_GROUPS


def test_a_database_kept_directly_in_a_root_does_not_hide_the_root(tmp_path: Path) -> None:
    """The database folder is excluded only when it is a folder of its own inside a root."""
    root = tmp_path / "photos"
    photos.copy(photos.photo("coffee"), root / "a.jpg")
    config = replace(_config(tmp_path, root), database=root / "dedupd.db")
    assert _scan(config).hashed == 1


def test_an_empty_mount_point_is_unavailable_and_nothing_is_decoded_again(
    library: Path, tmp_path: Path, decodes: list[str]
) -> None:
    """An unmounted disk leaves an empty folder: not a mass deletion, and on remount every
    photo is still known, so nothing is decoded again."""
    config = _config(tmp_path, library)
    _scan(config)
    library.rename(tmp_path / "disk")
    library.mkdir()  # the bare mount point
    report = _scan(config)
    assert report.missing == 0 and report.unavailable[0][0] == str(library)
    assert "empty, but 10 photos are recorded there" in report.unavailable[0][1]
    library.rmdir()
    (tmp_path / "disk").rename(library)
    decodes.clear()
    again = _scan(config)
    assert (again.unchanged, again.hashed, decodes) == (10, 0, [])


def test_a_photo_moved_out_and_back_is_not_decoded_again(
    library: Path, tmp_path: Path, decodes: list[str]
) -> None:
    config = _config(tmp_path, library)
    _scan(config)
    os.rename(library / "hubble.jpg", tmp_path / "hubble.jpg")
    assert _scan(config).missing == 1
    (library / "back").mkdir()
    os.rename(tmp_path / "hubble.jpg", library / "back" / "hubble.jpg")
    decodes.clear()
    report = _scan(config)
    assert (report.renamed, report.hashed, decodes) == (1, 0, [])
    with Store(config.database) as store:
        record = store.file_at(library / "back" / "hubble.jpg")
    assert record is not None and record.state == "ok"


def test_a_file_that_vanished_before_it_was_read_is_hashed_where_it_turns_up(
    tmp_path: Path,
) -> None:
    """A 'vanished' error (the file was renamed after it was queued, before its worker read
    it) is no version of it: found at another name, or back at its own, the file is hashed,
    not followed as a rename of a record that never held its hashes."""
    from dedupd.filestat import FileStat

    root = tmp_path / "lib"
    photos.copy(photos.photo("coffee"), root / "a.jpg")
    photos.copy(photos.photo("rocket"), root / "b.jpg")
    config = _config(tmp_path, root)
    with Store(config.database) as store:
        for name in ("a.jpg", "b.jpg"):
            stat = FileStat.of(os.stat(root / name))
            store.record_error(str(root.resolve()), name, stat, "vanished", "gone")
        store.commit()
    os.rename(root / "a.jpg", root / "renamed.jpg")  # b.jpg is back at its own name
    report = _scan(config)
    assert report.hashed == 2
    with Store(config.database) as store:
        states = {n: store.file_at(root.resolve() / n) for n in ("renamed.jpg", "b.jpg")}
        assert {n: r.state if r else None for n, r in states.items()} == {
            "renamed.jpg": "ok",
            "b.jpg": "ok",
        }
        assert store.file_at(root.resolve() / "a.jpg").state == "missing"  # type: ignore[union-attr]


def test_a_file_whose_ingest_raises_is_one_recorded_error_and_the_scan_goes_on(
    library: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Issue #9: an unexpected exception while storing one file used to abort the whole
    batch (the daemon lost 512 files a pass); now that file is recorded as an internal
    error and every other file is still hashed and matched."""
    real = Store.record_hashed

    def flaky(self: Store, root: str, relpath: str, image: object, *rest: Any) -> int:
        if relpath == "coffee.jpg":
            raise RuntimeError("a bug that only this file triggers")
        return real(self, root, relpath, image, *rest)  # type: ignore[arg-type]

    monkeypatch.setattr(Store, "record_hashed", flaky)
    config = _config(tmp_path, library)
    report = _scan(config)
    assert (report.files, report.hashed) == (10, 8)
    assert sorted((os.path.basename(p), f.kind) for p, f in report.failed) == [
        ("broken.jpg", "truncated"),
        ("coffee.jpg", "internal"),
    ]
    assert dict(report.failed)[str(library / "coffee.jpg")].message == (
        "RuntimeError: a bug that only this file triggers"
    )
    with Store(config.database) as store:
        assert store.count_by_state([str(library)]) == {"ok": 8, "error": 2}
        record = store.file_at(library / "coffee.jpg")
    assert record is not None and (record.state, record.error_kind) == ("error", "internal")
    assert ("rocket.jpg", [("chat/rocket-small.jpg", "near")]) in _groups(report)


def make_deep_files(root: Path, data: bytes) -> list[str]:
    """Write `data` to two files whose absolute paths exceed PATH_MAX: one in a folder that
    can still be opened by name, one in a folder that cannot. Returns their relative paths.

    os.makedirs cannot build such a tree (it goes by name); one component at a time,
    relative to the parent's descriptor, can. shutil.rmtree removes it the same way.
    """
    root.mkdir(parents=True, exist_ok=True)
    made: list[str] = []
    parts: list[str] = []
    fd = os.open(root, os.O_RDONLY | os.O_DIRECTORY)
    try:
        while len(made) < 2:
            here = len(os.fsencode(os.path.join(root, *parts)))
            if not made and here + 1 + 255 >= PATH_MAX:  # a long name tips this folder over
                made.append(_write_at(fd, "x" * (PATH_MAX - here) + ".jpg", data, parts))
            elif here >= PATH_MAX:  # this folder itself is out of reach by name
                made.append(_write_at(fd, "deep.jpg", data, parts))
            name = f"{len(parts):02}" + "d" * 198
            os.mkdir(name, dir_fd=fd)
            child = os.open(name, os.O_RDONLY | os.O_DIRECTORY, dir_fd=fd)
            os.close(fd)
            fd, parts = child, [*parts, name]
    finally:
        os.close(fd)
    assert all(len(os.fsencode(os.path.join(root, p))) >= PATH_MAX for p in made)
    return made


def _write_at(dir_fd: int, name: str, data: bytes, parts: list[str]) -> str:
    fd = os.open(name, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644, dir_fd=dir_fd)
    with os.fdopen(fd, "wb") as f:
        f.write(data)
    return os.path.join(*parts, name)


@pytest.fixture
def deep_root(tmp_path: Path) -> Iterator[tuple[Path, list[str]]]:
    root = tmp_path / "deep"
    deep = make_deep_files(root, photos.photo("coffee").read_bytes())
    photos.copy(photos.photo("rocket"), root / "shallow.jpg")
    yield root, deep
    shutil.rmtree(root)  # descriptor-based in Python 3.11: deep trees go too


def test_paths_over_path_max_are_recorded_as_errors_not_skipped(
    deep_root: tuple[Path, list[str]], tmp_path: Path
) -> None:
    """Issue #9: files whose path is too long to open used to vanish from the scan without a
    word. They are found (by descriptor), recorded with kind path_too_long and their real
    identity, listed in the report, and, unchanged, not tried again."""
    root, deep = deep_root
    names = NameFilter(Config().watch)
    assert sorted(e.relpath for e in walk(str(root), names)) == sorted([*deep, "shallow.jpg"])
    config = _config(tmp_path, root)
    report = _scan(config)
    assert (report.files, report.hashed) == (3, 1)
    assert sorted((p, f.kind) for p, f in report.failed) == sorted(
        (os.path.join(root, p), "path_too_long") for p in deep
    )
    assert f"more than the system's limit of {PATH_MAX - 1}" in report.failed[0][1].message
    with Store(config.database) as store:
        for relpath in deep:
            record = store.record(str(root), relpath)
            assert record is not None and (record.state, record.error_kind) == (
                "error",
                "path_too_long",
            )
            assert record.size == photos.photo("coffee").stat().st_size
    again = _scan(config)
    assert (again.unchanged, again.hashed, again.failed, again.missing) == (3, 0, [], 0)


def test_exact_copies_that_arrived_before_their_originals_are_all_deleted(tmp_path: Path) -> None:
    """Issue 9, item 12: in a burst where every `IMG_n (1).jpg` lands before its `IMG_n.jpg`,
    each copy is deleted once its original arrives (none is left "reported" because the
    original counted as the better newcomer), and every original stays."""
    from PIL import Image

    from dedupd.actions import Actions
    from dedupd.config import DEFAULT_POLICY, Policy

    root = tmp_path / "burst"
    root.mkdir()
    for n in range(30):
        original = root / f"IMG_{n}.jpg"
        Image.new("RGB", (64, 48), (n * 8, 255 - n * 8, (n * 37) % 256)).save(original)
        copy = root / f"IMG_{n} (1).jpg"
        shutil.copyfile(original, copy)
        os.utime(copy, (1e9 + n, 1e9 + n))  # the copy arrived first ...
        os.utime(original, (2e9 + n, 2e9 + n))  # ... its original later
    config = replace(
        Config(),
        database=tmp_path / "d.db",
        hashing=HashingConfig(workers=1),
        policies={DEFAULT_POLICY: Policy(exact="delete")},
    ).with_roots([root])
    with Store(config.database) as store:
        report = scan(config, store, actions=Actions(store, None))
    assert sorted(p.name for p in root.iterdir()) == sorted(f"IMG_{n}.jpg" for n in range(30))
    assert [o.result for o in report.outcomes].count("done") == 30


def test_a_scan_commits_a_newcomers_record_before_it_is_quarantined(
    library: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A scan writes its records in batched transactions, but a file is only moved once its
    record and its keeper's are committed: another connection sees both at that moment."""
    config = replace(
        _config(tmp_path, library), quarantine=replace(Config().quarantine, path=tmp_path / "q")
    )
    policy = replace(config.policies[DEFAULT_POLICY], exact="quarantine", near="quarantine")
    config = replace(config, policies={**config.policies, DEFAULT_POLICY: policy})
    seen: list[tuple[bool, bool]] = []
    real = Actions.quarantine

    def spy(self: Actions, target: FileRecord, keeper: FileRecord | None, *a: object) -> object:
        with Store(config.database, readonly=True) as other:
            seen.append(
                (
                    other.file(target.id) is not None,
                    keeper is not None and other.file(keeper.id) is not None,
                )
            )
        return real(self, target, keeper, *a)  # type: ignore[arg-type]

    monkeypatch.setattr(Actions, "quarantine", spy)
    with Store(config.database) as store:
        report = scan(config, store, actions=Actions(store, config.quarantine.path))
    assert [o.result for o in report.outcomes if o.decision.acts] == ["done"] * len(seen)
    assert seen and all(target and keeper for target, keeper in seen)


def _turned_library(tmp_path: Path) -> Path:
    """Three photos and their truly turned copies (pixels changed, no EXIF): a mirrored
    selfie, an editor's quarter turn, an upside-down scan; and hubble alone."""
    root = tmp_path / "turned"
    for name in ("chelsea", "coffee", "rocket", "hubble"):
        photos.copy(photos.photo(name), root / f"{name}.jpg")
    photos.hflip(photos.photo("chelsea"), root / "edit" / "chelsea-mirror.jpg")
    photos.transposed(photos.photo("coffee"), root / "edit" / "coffee-turned.jpg", ROTATE_90)
    photos.transposed(photos.photo("rocket"), root / "edit" / "rocket-upside.jpg", ROTATE_180)
    return root


ROTATE_90, ROTATE_180 = Image.Transpose.ROTATE_90, Image.Transpose.ROTATE_180


def test_rotated_and_mirrored_copies_are_found_and_say_how(tmp_path: Path) -> None:
    """With the default policy (isometric), a copy rotated by 90/180 degrees or mirrored is a
    near duplicate; the decision, its log line, the groups and `show` name the transform
    that takes the keeper to the copy."""
    root = _turned_library(tmp_path)
    config = _config(tmp_path, root)
    with structlog.testing.capture_logs() as logs:
        report = _scan(config)
    groups = [
        (
            os.path.relpath(g.keeper.path, root),
            [(os.path.relpath(m.record.path, root), m.kind, m.transform) for m in g.duplicates],
        )
        for g in report.groups
    ]
    # Keepers by the keep rules (the larger file of equal resolution); the duplicate is the
    # keeper turned as named: a quarter turn one way is the other way seen from the copy.
    assert groups == [
        ("coffee.jpg", [("edit/coffee-turned.jpg", "near", "rot90")]),
        ("edit/chelsea-mirror.jpg", [("chelsea.jpg", "near", "mirror")]),
        ("rocket.jpg", [("edit/rocket-upside.jpg", "near", "rot180")]),
    ]
    # The newcomer (the later file) is the original under the transform the decision names.
    outcomes = {os.path.basename(o.path): o.decision.transform for o in report.outcomes}
    assert outcomes == {
        "chelsea-mirror.jpg": "mirror",
        "coffee-turned.jpg": "rot90",
        "rocket-upside.jpg": "rot180",
    }
    logged = {os.path.basename(e["path"]): e["transform"] for e in logs if e["event"] == "decision"}
    assert logged == outcomes
    with Store(config.database) as store:
        hasher_key = report_key(config)
        copy = store.file_at(root / "edit" / "coffee-turned.jpg")
        original = store.file_at(root / "coffee.jpg")
        assert copy is not None and original is not None
        ((m,),) = [store.matches_of(copy.id, hasher_key)]
        assert (m.other.id, m.transform) == (original.id, "rot90")
        ((m,),) = [store.matches_of(original.id, hasher_key)]
        assert (m.other.id, m.transform) == (copy.id, "rot270"), "seen from the other side"


def report_key(config: Config) -> str:
    from dedupd.hashers import Hasher

    return Hasher(config.hashing.algorithm, config.hashing.hash_size).key


def test_isometric_false_matches_upright_copies_only(tmp_path: Path) -> None:
    """A policy with `isometric: false` finds none of the turned copies (the behaviour of
    dedupd before rotations were matched), but still the upright ones."""
    root = _turned_library(tmp_path)
    photos.reencode(photos.photo("hubble"), root / "chat" / "hubble-wa.jpg")
    config = _config(tmp_path, root)
    upright = replace(config.policies[DEFAULT_POLICY], isometric=False)
    config = replace(config, policies={**config.policies, DEFAULT_POLICY: upright})
    report = _scan(config)
    assert _groups(report) == [("hubble.jpg", [("chat/hubble-wa.jpg", "near")])]


def test_turned_matches_are_held_to_the_turned_threshold(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A match through a rotation or mirror must be within the hasher's turned threshold
    (8 lookups, 8 chances for two distinct photos to collide), not the upright one: with the
    turned threshold below every distance, the turned copies are no longer found as turned,
    the upright one still is."""
    from dedupd.hashers import Hasher

    root = _turned_library(tmp_path)
    photos.reencode(photos.photo("hubble"), root / "chat" / "hubble-wa.jpg")
    config = _config(tmp_path, root)
    assert len(_groups(_scan(config))) == 4, "the 3 turned copies, and the upright one"
    # below every distance (a half turn of a symmetric picture can hash 0 bits from it)
    monkeypatch.setattr(Hasher, "turned_threshold", property(lambda self: -1.0))
    config = _config(tmp_path / "again", root)
    report = _scan(config)
    # Only upright matches are left (an upside-down copy may still be within the upright
    # threshold of its photo: pHash of a half turn is not always far from the photo's).
    found = {Path(m.record.path).name: m.transform for g in report.groups for m in g.duplicates}
    assert set(found.values()) == {"identity"}
    assert found["hubble-wa.jpg"] == "identity"
    assert "chelsea-mirror.jpg" not in found and "coffee-turned.jpg" not in found


def test_a_new_hasher_key_rehashes_stored_photos_once(library: Path, tmp_path: Path) -> None:
    """Hashes stored before the border trim (their key lacks ':trim1') are redone on the
    next scan, once: the key names what is hashed."""
    config = _config(tmp_path, library)
    _scan(config)
    key = report_key(config)
    old = key.removesuffix(":trim1")
    assert old != key
    with Store(config.database) as store:
        store.db.execute("UPDATE hashes SET hasher = ? WHERE hasher = ?", (old, key))
        store.commit()
    assert _scan(config).hashed == 9
    assert _scan(config).hashed == 0


def test_a_record_is_taken_for_a_move_only_where_its_filesystem_is_there_and_its_name_gone(
    tmp_path: Path,
) -> None:
    """`moved_from`: a record whose name is gone from a mounted filesystem is a move; one
    whose folder is on another device now (its disk not mounted: a file elsewhere with the
    same device number, inode, size and mtime is another filesystem's, a clone's) is not,
    nor is one whose name still holds the very file (a hard link)."""
    from dedupd.engine import moved_from
    from dedupd.filestat import FileStat, HashedImage

    photo = photos.copy(photos.photo("coffee"), tmp_path / "now" / "a.jpg")
    stat = FileStat.of(os.lstat(photo))

    def image() -> HashedImage:
        return HashedImage(stat, "a" * 64, 40, 30, "JPEG", None, {"phash:16": b"\x01" * 32})

    with Store(tmp_path / "d.db") as store:
        # Its disk "not mounted": the nearest folder that exists (/proc) is another device.
        unmounted = store.record_hashed("/proc/dedupd-no-such-disk", "a.jpg", image())
        assert os.stat("/proc").st_dev != stat.dev
        assert moved_from(store, stat) is None
        # A hard link: the name still holds the file.
        os.link(photo, tmp_path / "link.jpg")
        linked = store.record_hashed(str(tmp_path), "link.jpg", image())
        assert moved_from(store, stat) is None
        # Its name gone from a filesystem that is there: moved.
        (tmp_path / "link.jpg").unlink()
        found = moved_from(store, stat)
        assert found is not None and found.id == linked != unmounted


def _records_per_path(config: Config) -> dict[str, int]:
    with Store(config.database) as store:
        rows = store.db.execute("SELECT root, relpath FROM files WHERE state != 'missing'")
        counted: dict[str, int] = {}
        for root, relpath in rows:
            path = os.path.join(root, relpath)
            counted[path] = counted.get(path, 0) + 1
        return counted


def test_a_subfolder_scanned_after_its_parent_is_neither_decoded_nor_recorded_again(
    library: Path, tmp_path: Path, decodes: list[str]
) -> None:
    """`dedupd scan ~/Pictures`, then `dedupd scan ~/Pictures/chat`: the subfolder's photos
    are the parent's records, not new ones (before: decoded again, recorded twice)."""
    whole, chat = _config(tmp_path, library), _config(tmp_path, library / "chat")
    _scan(whole)
    decodes.clear()
    sub = _scan(chat)
    assert (sub.files, sub.unchanged, sub.hashed, decodes) == (2, 2, 0, [])
    again = _scan(whole)
    assert (again.unchanged, again.hashed, decodes) == (10, 0, [])
    assert set(_records_per_path(whole).values()) == {1}
    assert _groups(again) == EXPECTED_GROUPS


def test_a_parent_scanned_after_its_subfolder_decodes_only_the_rest(
    library: Path, tmp_path: Path, decodes: list[str]
) -> None:
    _scan(_config(tmp_path, library / "chat"))
    assert len(decodes) == 2
    decodes.clear()
    report = _scan(_config(tmp_path, library))
    assert sorted(os.path.relpath(p, library) for p in decodes) == sorted(
        ["astronaut.jpg", "astronaut (1).jpg", "coffee.jpg", "rocket.jpg", "chelsea.jpg",
         "hubble.jpg", "broken.jpg", "edit/chelsea-rotated.jpg"]
    )
    assert (report.unchanged, report.hashed) == (2, 7)
    assert set(_records_per_path(_config(tmp_path, library)).values()) == {1}
    assert _groups(report) == EXPECTED_GROUPS


def test_deletes_and_renames_in_a_subfolder_scanned_on_its_own_are_followed(
    library: Path, tmp_path: Path, decodes: list[str]
) -> None:
    whole, chat = _config(tmp_path, library), _config(tmp_path, library / "chat")
    _scan(whole)
    with Store(whole.database) as store:
        before = store.file_at(library / "chat" / "coffee-wa.jpg")
    (library / "chat" / "rocket-small.jpg").unlink()
    os.rename(library / "chat" / "coffee-wa.jpg", library / "chat" / "coffee.jpg")
    decodes.clear()
    sub = _scan(chat)
    assert (sub.renamed, sub.missing, sub.hashed, decodes) == (1, 1, 0, [])
    with Store(whole.database) as store:
        after = store.file_at(library / "chat" / "coffee.jpg")
    assert before is not None and after is not None and after.id == before.id
    report = _scan(whole)
    assert (report.hashed, report.missing, decodes) == (0, 0, [])
    assert ("coffee.jpg", [("chat/coffee.jpg", "near")]) in _groups(report)


def test_a_folder_recorded_twice_by_an_older_dedupd_keeps_one_record_per_photo(
    library: Path, tmp_path: Path, decodes: list[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """Databases where a subfolder scan recorded its photos a second time (before records
    were adopted) lose the second record at the next scan, nothing decoded."""
    import dedupd.engine

    whole, chat = _config(tmp_path, library), _config(tmp_path, library / "chat")
    _scan(whole)
    with monkeypatch.context() as older:
        older.setattr(dedupd.engine, "_adopt_nested", lambda *args: [])
        _scan(chat)
    assert _records_per_path(whole)[str(library / "chat" / "coffee-wa.jpg")] == 2
    with Store(whole.database) as store:
        first = store.record(str(library), "chat/coffee-wa.jpg")
    decodes.clear()
    report = _scan(whole)
    assert (report.hashed, report.missing, decodes) == (0, 0, [])
    assert set(_records_per_path(whole).values()) == {1}
    with Store(whole.database) as store:
        kept = store.file_at(library / "chat" / "coffee-wa.jpg")
    assert first is not None and kept is not None and kept.id == first.id
    assert _groups(report) == EXPECTED_GROUPS


def test_records_under_a_folder_the_root_does_not_walk_are_not_adopted(
    tmp_path: Path, decodes: list[str]
) -> None:
    """A subfolder scanned as a root, then its parent with that subfolder ignored: its
    records stay as they were, not marked missing (the parent's walk never sees them)."""
    root = tmp_path / "photos"
    photos.copy(photos.photo("coffee"), root / "a.jpg")
    photos.copy(photos.photo("rocket"), root / ".thumbs" / "b.jpg")  # a hidden folder
    _scan(_config(tmp_path, root / ".thumbs"))
    report = _scan(_config(tmp_path, root))  # ".*" is ignored by default
    assert (report.files, report.missing) == (1, 0)
    with Store(tmp_path / "state" / "dedupd.db") as store:
        kept = store.file_at(root / ".thumbs" / "b.jpg")
    assert kept is not None and kept.state == "ok" and kept.root == str(root / ".thumbs")


@pytest.mark.parametrize("later", ["chat/a.jpg", "a.jpg"], ids=["taken-over-too", "stays"])
def test_a_photo_taken_over_is_not_acted_on_against_one_it_was_compared_with(
    tmp_path: Path, later: str
) -> None:
    """A worse copy that arrived first, then a better one (reported: acting on the older
    file needs act_on_existing). After a scan of the worse one's folder alone and one of the
    parent again, nothing moves: the two were compared when the better one came. Whether the
    better one is taken over with it (then both are decided again, in their arrival order;
    their names sort the other way) or stays under the parent."""
    from dedupd.config import Policy

    root = tmp_path / "photos"
    photos.reencode(photos.photo("coffee"), root / "chat" / "b.jpg")  # the worse, first
    quarantine = tmp_path / "quarantine"
    config = replace(
        _config(tmp_path, root), policies={DEFAULT_POLICY: Policy(near="quarantine")}
    )
    sub = replace(config, roots=()).with_roots([root / "chat"])

    def run(config: Config) -> ScanReport:
        with Store(config.database) as store:
            return scan(config, store, actions=Actions(store, quarantine))

    run(config)
    photos.copy(photos.photo("coffee"), root / later)  # the better, later
    assert [o.decision.action for o in run(config).outcomes] == ["report"]
    run(sub)
    again = run(config)
    assert [o.decision.action for o in again.outcomes if o.decision.acts] == []
    assert (root / later).exists() and (root / "chat" / "b.jpg").exists()
    kept = [(g.keeper.path.name, [d.record.path.name for d in g.duplicates]) for g in again.groups]
    assert kept == [("a.jpg", ["b.jpg"])]


def test_photos_of_two_subfolders_scanned_alone_meet_when_their_parent_is_scanned(
    tmp_path: Path,
) -> None:
    """Two folders scanned each on its own, then their parent, whose policy quarantines: the
    copies in one of the other's photos never met, and are decided as arrivals are."""
    from dedupd.config import Policy

    root = tmp_path / "photos"
    photos.copy(photos.photo("rocket"), root / "phone" / "rocket.jpg")
    photos.reencode(photos.photo("rocket"), root / "chat" / "rocket-wa.jpg")
    config = replace(
        _config(tmp_path, root), policies={DEFAULT_POLICY: Policy(near="quarantine")}
    )
    for folder in ("phone", "chat"):
        _scan(replace(config, roots=()).with_roots([root / folder]))
    with Store(config.database) as store:
        report = scan(config, store, actions=Actions(store, tmp_path / "quarantine"))
    assert [(o.decision.action, Path(o.path).name) for o in report.outcomes] == [
        ("quarantine", "rocket-wa.jpg")
    ]
    assert not (root / "chat" / "rocket-wa.jpg").exists()


def test_a_subfolder_scanned_before_whose_disk_is_not_mounted_keeps_its_records(
    tmp_path: Path,
) -> None:
    """A disk scanned as a root, then its parent folder while the disk is not mounted (its
    mount point empty): the disk's records are not taken over and marked missing, as for
    an unmounted root they stay as they are."""
    root = tmp_path / "photos"
    photos.copy(photos.photo("coffee"), root / "a.jpg")
    photos.copy(photos.photo("rocket"), root / "disk" / "b.jpg")
    _scan(_config(tmp_path, root / "disk"))
    os.rename(root / "disk" / "b.jpg", tmp_path / "b.jpg")  # unmounted: the folder is empty
    report = _scan(_config(tmp_path, root))
    assert (report.files, report.missing) == (1, 0)
    with Store(tmp_path / "state" / "dedupd.db") as store:
        kept = store.file_at(root / "disk" / "b.jpg")
    assert kept is not None and kept.state == "ok" and kept.root == str(root / "disk")


def test_a_subfolder_of_a_folder_scanned_before_empty_now_is_unavailable(
    tmp_path: Path,
) -> None:
    """A folder scanned, then a subfolder of it on its own while the subfolder is empty (a
    disk not mounted there): unavailable, as a root with photos recorded in it, not a
    takeover of its records that marks them all missing."""
    root = tmp_path / "photos"
    photos.copy(photos.photo("coffee"), root / "a.jpg")
    photos.copy(photos.photo("rocket"), root / "disk" / "b.jpg")
    _scan(_config(tmp_path, root))
    os.rename(root / "disk" / "b.jpg", tmp_path / "b.jpg")
    report = _scan(_config(tmp_path, root / "disk"))
    assert report.missing == 0 and [r for r, _ in report.unavailable] == [str(root / "disk")]
    with Store(tmp_path / "state" / "dedupd.db") as store:
        kept = store.file_at(root / "disk" / "b.jpg")
    assert kept is not None and kept.state == "ok" and kept.root == str(root)


def test_a_mirrored_copys_match_outlives_a_scan_of_its_folder_alone(tmp_path: Path) -> None:
    """A scan of a subfolder decides its photos against what it holds: it must not forget
    their matches with photos outside it. A mirrored match cannot be found again from the
    database (only a worker's rotations and mirrors find it): forgotten, it was gone for
    good, and the parent's next scan no longer grouped the two."""
    root = tmp_path / "photos"
    photos.copy(photos.photo("coffee"), root / "coffee.jpg")
    photos.hflip(photos.photo("coffee"), root / "edit" / "coffee-mirror.jpg")
    whole = _config(tmp_path, root)
    first = _scan(whole)
    def groups(report: ScanReport) -> list[tuple[str, list[tuple[str, str]]]]:
        return [
            (g.keeper.path.name, [(m.record.path.name, m.transform) for m in g.duplicates])
            for g in report.groups
        ]

    assert groups(first) == [("coffee.jpg", [("coffee-mirror.jpg", "mirror")])]
    _scan(replace(whole, roots=()).with_roots([root / "edit"]))
    assert groups(_scan(whole)) == groups(first)


def _animated_webp() -> bytes:
    frames = [Image.new("RGB", (64, 48), colour) for colour in ("red", "blue", "green")]
    buf = io.BytesIO()
    frames[0].save(buf, "WEBP", save_all=True, append_images=frames[1:], duration=500)
    return buf.getvalue()


@pytest.mark.parametrize("name", ["IMG_0001.jpg", "IMG_0002.png", "anim.webp"])
def test_a_file_too_large_to_be_a_photo_is_refused_unread(name: str, tmp_path: Path) -> None:
    """A sparse file or a disk image named like a photo (`truncate -s 20G IMG_0001.jpg`: no
    disk space, no time) was read whole into a worker's memory before any header was looked
    at (an animated WebP's by Pillow itself): 3 GB took 3 GB and half a minute per worker,
    one larger than the machine's memory the OOM killer. A file larger than any image within
    `hashing.max_pixels` can be is now recorded `too_large` without being read, and the
    photos beside it are hashed."""
    root = tmp_path / "photos"
    root.mkdir()
    photos.copy(photos.photo("coffee"), root / "coffee.jpg")
    head = _animated_webp() if name.endswith(".webp") else b""
    with (root / name).open("wb") as f:
        f.write(head)
        f.truncate(200 << 20)  # sparse: more than 1 MP * 8 bytes + 64 MiB of metadata
    report = _scan(_config(tmp_path, root, max_pixels=1_000_000))
    assert [(os.path.basename(p), f.kind) for p, f in report.failed] == [(name, "too_large")]
    assert "209715200 bytes, more than an image within max_pixels 1000000" in str(
        report.failed[0][1].message
    )
    assert report.hashed == 1
    with Store(_config(tmp_path, root).database) as store:
        record = store.record(str(root), name)
    assert record is not None and record.state == "error"


def test_a_large_max_pixels_costs_no_buffer_of_that_size() -> None:
    """The read is bounded by the file's own size (plus a byte, to see it grow), never by
    the limit: a read of `max_pixels` x 8 bytes would ask for that much memory at once (a
    MemoryError for every photo under a generous limit)."""
    hasher = Hasher("phash", 16)
    result = hash_image(str(photos.photo("coffee")), [hasher], max_pixels=10**13)
    assert (result.width, result.height) == (600, 400)


@pytest.mark.parametrize("act_on_existing", [False, True])
def test_a_letterboxed_copy_is_never_kept_over_the_photo(
    tmp_path: Path, act_on_existing: bool
) -> None:
    """A letterboxed copy of a photo (as a chat app or an editor's square export makes it)
    arrives first, then the camera's original. The copy has more pixels (its bars) and more
    bytes: by the keep rules alone it was kept and the original quarantined. Its borders make
    it the copy: the original stays, and the copy moves when the policy may act on an older
    file."""
    from dedupd.config import Policy
    from dedupd.policy import FRAMED

    root = tmp_path / "photos"
    root.mkdir()
    with Image.open(photos.photo("rocket")) as im:  # 640x427, in a 640x640 square
        square = Image.new("RGB", (im.width, im.width), "black")
        square.paste(im.convert("RGB"), (0, (im.width - im.height) // 2))
        square.save(root / "rocket-square.jpg", quality=95)
    policy = Policy(near="quarantine", act_on_existing=act_on_existing)
    config = replace(_config(tmp_path, root), policies={DEFAULT_POLICY: policy})
    with Store(config.database) as store:
        scan(config, store, actions=Actions(store, tmp_path / "quarantine"))
        photos.copy(photos.photo("rocket"), root / "IMG_0002.jpg")
        report = scan(config, store, actions=Actions(store, tmp_path / "quarantine"))
        square_record = store.file_at(root / "rocket-square.jpg")
    assert square_record is not None and (square_record.framed or 0.0) >= FRAMED
    assert (root / "IMG_0002.jpg").exists()
    ((outcome),) = report.outcomes
    keeper, target = outcome.decision.keeper, outcome.decision.target
    assert keeper is not None and keeper.path.name == "IMG_0002.jpg"
    assert target is not None and target.path.name == "rocket-square.jpg"
    assert (root / "rocket-square.jpg").exists() != act_on_existing


def _unreadable(monkeypatch: pytest.MonkeyPatch, folder: Path) -> None:
    """`folder` as a folder this process may not open (tests run as root, which may). The
    walk opens each folder relative to its parent's descriptor, as a user without the
    permission is refused (EACCES at the open, before any listing)."""
    real = os.open

    def open_(path: Any, flags: int, mode: int = 0o777, *, dir_fd: int | None = None) -> int:
        where = os.fspath(path)
        if dir_fd is not None:
            where = os.path.join(os.readlink(f"/proc/self/fd/{dir_fd}"), where)
        if where == str(folder) and flags & os.O_DIRECTORY:
            raise PermissionError(13, "Permission denied", str(folder))
        return real(path, flags, mode, dir_fd=dir_fd)

    monkeypatch.setattr(os, "open", open_)


def test_a_folder_that_cannot_be_read_is_reported_and_its_photos_kept(
    library: Path, tmp_path: Path, decodes: list[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """A folder in a root whose permissions changed: its photos were marked missing, in
    silence (none of them in any group any more, and back as "renamed" once it could be read
    again). Now it is named in the report and its records stay as they were."""
    from dedupd.render import scan_json, scan_report

    config = _config(tmp_path, library)
    _scan(config)
    with monkeypatch.context() as patch:
        _unreadable(patch, library / "chat")
        report = _scan(config)
    assert report.unreadable == [(str(library / "chat"), "Permission denied")]
    assert (report.missing, report.hashed) == (0, 0)
    assert _groups(report) == EXPECTED_GROUPS  # the chat copies are still in their groups
    text = scan_report(report, 256)
    assert f"unreadable: {library / 'chat'}: Permission denied (not looked at" in text
    assert scan_json(report, 256)["unreadable"] == [
        {"folder": str(library / "chat"), "reason": "Permission denied"}
    ]
    decodes.clear()
    again = _scan(config)
    assert (again.unreadable, again.renamed, again.missing, decodes) == ([], 0, 0, [])


def test_a_mount_point_holding_only_a_folder_it_cannot_read_is_unavailable_not_emptied(
    library: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Another disk mounted where the library's was (a new one, formatted: only a
    lost+found, which a user's dedupd may not read): none of the photos recorded outside
    that folder is there, so the root looks unmounted, as an empty one does. Its one
    unreadable folder made it 'not empty' and every record was marked missing."""
    config = _config(tmp_path, library)
    _scan(config)
    library.rename(tmp_path / "disk")
    library.mkdir()
    (library / "lost+found").mkdir()
    with monkeypatch.context() as patch:
        _unreadable(patch, library / "lost+found")
        report = _scan(config)
    assert report.missing == 0 and [r for r, _ in report.unavailable] == [str(library)]
    assert "empty, but 10 photos are recorded there" in report.unavailable[0][1]
    with Store(config.database) as store:
        assert len(store.files_in(str(library))) == 10


@pytest.mark.parametrize("first", ["screenshot", "small copy recorded before schema 15"])
def test_a_photo_whose_sky_is_blown_out_is_kept_over_its_copy_that_came_first(
    tmp_path: Path, first: str
) -> None:
    """A camera photo whose sky is clipped to white along the top has a flat edge the trim
    takes as border (12% of its frame). Its phone screenshot came first, or its half-size
    copy did, recorded before dedupd measured borders: the photo arrives and is kept, never
    quarantined (the screenshot has more border still; the old record's is unknown)."""
    import numpy as np

    from dedupd.config import Policy

    root = tmp_path / "photos"
    root.mkdir()
    with Image.open(photos.photo("rocket")) as im:
        pixels = np.asarray(im.convert("RGB")).copy()
    pixels[: pixels.shape[0] // 8] = 255
    original = tmp_path / "camera" / "IMG_0002.jpg"
    photos._save(Image.fromarray(pixels), original, format="JPEG", quality=95)
    if first == "screenshot":
        photos.screenshot(original, root / "Screenshot_1.png", status_bar=True)
    else:
        photos.resize(original, root / "small.jpg")
    policy = Policy(near="quarantine")
    config = replace(_config(tmp_path, root), policies={DEFAULT_POLICY: policy})
    with Store(config.database) as store:
        scan(config, store, actions=Actions(store, tmp_path / "quarantine"))
        if first != "screenshot":
            store.db.execute("UPDATE files SET framed = NULL")  # as migration 15 leaves it
        photos.copy(original, root / "IMG_0002.jpg")
        report = scan(config, store, actions=Actions(store, tmp_path / "quarantine"))
    ((outcome),) = report.outcomes
    keeper = outcome.decision.keeper
    assert keeper is not None and keeper.path.name == "IMG_0002.jpg"
    assert (root / "IMG_0002.jpg").exists()


def test_a_photo_back_at_its_own_path_is_unchanged_not_renamed(
    library: Path, tmp_path: Path, decodes: list[str]
) -> None:
    """Moved away (marked missing) and back to the same name, as a restore from quarantine
    puts it: the next scan counted it "renamed"."""
    config = _config(tmp_path, library)
    _scan(config)
    os.rename(library / "hubble.jpg", tmp_path / "hubble.jpg")
    assert _scan(config).missing == 1
    os.rename(tmp_path / "hubble.jpg", library / "hubble.jpg")
    decodes.clear()
    report = _scan(config)
    assert (report.renamed, report.unchanged, report.hashed, decodes) == (0, 10, 0, [])


# -- a root reached through a symbolic link ----------------------------------------------------


def _users_link(link: Path, target: Path, monkeypatch: pytest.MonkeyPatch) -> str:
    """Make `link` → `target` a link of another user (one who may write the folder the root
    is in, as Alice may write /home/alice); returns what dedupd says of it."""
    link.symlink_to(target)
    if os.geteuid() == 0:
        os.lchown(link, 12345, 12345)
    else:  # only root can give a link away: take this one for another user's
        trusted, mine = safefs._trusted_link, os.lstat(link).st_ino
        monkeypatch.setattr(safefs, "_trusted_link", lambda st: st.st_ino != mine and trusted(st))
    return (
        f"{link}: a symbolic link owned by uid {os.lstat(link).st_uid} (not root or dedupd's "
        "user); dedupd does not follow it: name the folder it leads to in the config if it is "
        "meant"
    )


def _tree(folder: Path) -> list[tuple[str, bytes | None]]:
    return sorted(
        (str(p.relative_to(folder)), p.read_bytes() if p.is_file() else None)
        for p in folder.rglob("*")
    )


def _records(database: Path) -> int:
    with Store(database) as store:
        return int(store.db.execute("SELECT count(*) FROM files").fetchone()[0])


@pytest.mark.parametrize("as_json", [False, True], ids=["text", "json"])
def test_a_root_that_is_another_users_link_is_not_walked_and_the_scan_says_why(
    library: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, as_json: bool
) -> None:
    """Alice, who may write /home/alice, swaps her configured Photos folder for a link to
    Bob's photos while dedupd is down. Roots were resolved through every link, so dedupd (as
    root) hashed, recorded and quarantined Bob's photos. Now the root is unavailable, as an
    unmounted one, naming the link and its owner: nothing there is hashed, recorded or moved."""
    alice = tmp_path / "alice" / "Photos"
    alice.parent.mkdir()
    why = _users_link(alice, library, monkeypatch)
    config = tmp_path / "dedupd.yaml"
    config.write_text(
        f"database: {tmp_path / 'state' / 'dedupd.db'}\n"
        f"roots: [{{path: {alice}, policy: camera}}]\n"
        "policies:\n  camera: {exact: quarantine, near: quarantine}\n"
        f"quarantine: {{path: {tmp_path / 'quarantine'}}}\n"
    )
    before = _tree(library)
    result = CliRunner().invoke(
        dedupd, ["scan", "--config", str(config), "--workers", "1", *(["--json"] * as_json)]
    )
    assert result.exit_code == 0, result.output
    if as_json:
        answer = json.loads(result.stdout)
        assert answer["unavailable"] == [{"root": str(alice), "reason": why}]
        assert (answer["roots"], answer["files"], answer["hashed"]) == ([], 0, 0)
        assert answer["actions"] == []
    else:
        assert result.stdout.startswith("scanned 0 root(s) in ")
        # the reason names the root: it is not said twice ("unavailable: ROOT: ROOT: ...")
        assert f"\nunavailable: {why}\n" in result.stdout + "\n"
    assert _tree(library) == before
    assert not (tmp_path / "quarantine").exists()
    assert _records(tmp_path / "state" / "dedupd.db") == 0


@pytest.mark.parametrize("owner", ["root", "another user"])
def test_a_root_reached_through_a_link_is_walked_only_if_root_or_dedupd_made_the_link(
    library: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, owner: str
) -> None:
    """An admin's link (/srv -> /mnt/data) is followed as before: the root is named by the
    folder it leads to. A link another user owns is not: nothing under it is recorded."""
    link = tmp_path / "srv"
    if owner == "root":
        link.symlink_to(library)  # made by the test's user: root, or dedupd's own
    else:
        _users_link(link, library, monkeypatch)
    report = _scan(_config(tmp_path, link))
    if owner == "root":
        assert (report.roots, report.files, report.unavailable) == ([str(library)], 10, [])
        with Store(tmp_path / "state" / "dedupd.db") as store:
            assert len(store.files_in(str(library))) == 10
    else:
        assert (report.roots, report.files) == ([], 0)
        assert [root for root, _ in report.unavailable] == [str(link)]
        assert _records(tmp_path / "state" / "dedupd.db") == 0


def test_a_root_swapped_for_another_users_link_between_scans_keeps_its_records(
    library: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, decodes: list[str]
) -> None:
    """A link planted after the config was read (as while the daemon runs) is looked at
    when the root is walked: the root is unavailable, its records stay as they were (not
    marked missing), and the folder the link leads to is not walked or decoded."""
    alice = tmp_path / "alice" / "Photos"
    shutil.copytree(library / "chat", alice)
    config = _config(tmp_path, alice)
    assert _scan(config).hashed == 2
    alice.rename(alice.parent / "Photos.old")
    why = _users_link(alice, library, monkeypatch)
    decodes.clear()
    report = _scan(config)
    assert report.unavailable == [(str(alice), why)]
    assert (report.files, report.missing, report.hashed, decodes) == (0, 0, 0, [])
    with Store(config.database) as store:
        kept = store.files_in(str(alice))
        assert sorted(kept) == ["coffee-wa.jpg", "rocket-small.jpg"]
        assert {r.state for r in kept.values()} == {"ok"}
        assert store.files_in(str(library)) == {}
    assert _records(config.database) == 2


def test_a_folder_swapped_for_another_users_link_mid_walk_is_not_entered(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The walk listed folders by path: a sub-folder swapped for a link to Bob's photos
    between the listing of its parent and its own was listed through the link, and the
    names and sizes of Bob's files entered the scan as the root's. Each folder is now opened
    from its parent's descriptor without following a link: the swapped one is not entered,
    and it is no "unreadable" folder either (it is gone from where it was)."""
    root, bob = tmp_path / "alice", tmp_path / "bob"
    photos.copy(photos.photo("coffee"), root / "IMG_1.jpg")
    photos.copy(photos.photo("rocket"), root / "album" / "IMG_2.jpg")
    photos.copy(photos.photo("hubble"), bob / "private.jpg")
    unreadable: list[tuple[str, str]] = []
    found = walk(str(root), NameFilter(Config().watch), (), unreadable)
    first = next(found)  # the root is listed: "album" is a folder to visit
    assert first.relpath == "IMG_1.jpg"
    (root / "album").rename(tmp_path / "album.old")
    _users_link(root / "album", bob, monkeypatch)
    assert list(found) == [] and unreadable == []


def _chain(top: Path, depth: int) -> Path:
    """`depth` nested folders named 1, 2, … under `top`, made from the parent's descriptor
    (a path that deep is over PATH_MAX); returns the deepest by its (long) path."""
    top.mkdir(parents=True, exist_ok=True)
    fd = os.open(top, os.O_RDONLY | os.O_DIRECTORY)
    try:
        for level in range(1, depth + 1):
            os.mkdir(str(level), dir_fd=fd)
            if level % 50 == 0:  # a photo every 50 levels
                out = os.open("p.jpg", os.O_WRONLY | os.O_CREAT, 0o644, dir_fd=fd)
                os.write(out, b"\xff\xd8 not decoded here")
                os.close(out)
            child = os.open(str(level), os.O_RDONLY | os.O_DIRECTORY, dir_fd=fd)
            os.close(fd)
            fd = child
    finally:
        os.close(fd)
    return top.joinpath(*(str(n) for n in range(1, depth + 1)))


def test_a_walk_holds_a_bounded_number_of_descriptors_however_deep_the_tree(
    tmp_path: Path,
) -> None:
    """The walk held one descriptor a level: a tree deeper than the process may open files
    (1,024 by default; anyone who may write in a root can make such a tree) had its deepest
    folders reported unreadable ("Too many open files"), and everything else the daemon
    opened meanwhile failed too. It holds at most HELD_LEVELS now, and finds every photo,
    the ones beside the deepest levels' sibling folders too (walked after climbing back)."""
    from dedupd.scanner import HELD_LEVELS

    root = tmp_path / "root"
    _chain(root / "a" / "x", 400)
    _chain(root / "a" / "y", 100)  # either way, "a" is shed by the time the walk is back
    baseline = len(os.listdir("/proc/self/fd"))
    unreadable: list[tuple[str, str]] = []
    most = 0
    found = []
    for entry in walk(str(root), NameFilter(Config().watch), (), unreadable):
        most = max(most, len(os.listdir("/proc/self/fd")) - baseline)
        found.append(entry.relpath)
    assert unreadable == []
    assert len(found) == 400 // 50 + 100 // 50
    assert most <= HELD_LEVELS + 2  # the root's, the deepest levels', one being opened
    assert len(os.listdir("/proc/self/fd")) == baseline


def test_a_fork_deeper_than_the_held_levels_is_walked_whole(tmp_path: Path) -> None:
    """Two sub-folders under a folder 80 levels deep: the walk climbed back out of the
    first and down into the second, over levels it had shed already, and closed a shed
    descriptor again (EBADF): every reconcile and scan failed, and the daemon did not start
    (found by review)."""
    from dedupd.scanner import HELD_LEVELS

    root = tmp_path / "root"
    fork = _chain(root / "a", 80)
    for branch in ("x", "y"):
        _chain(fork / branch, 50)
    baseline = len(os.listdir("/proc/self/fd"))
    unreadable: list[tuple[str, str]] = []
    most, found = 0, []
    for entry in walk(str(root), NameFilter(Config().watch), (), unreadable):
        most = max(most, len(os.listdir("/proc/self/fd")) - baseline)
        found.append(entry.relpath)
    assert unreadable == []
    assert len(found) == 3  # at 50 levels down, and one at the bottom of each branch
    assert most <= HELD_LEVELS + 2
    assert len(os.listdir("/proc/self/fd")) == baseline


def test_a_shed_folder_that_cannot_be_opened_again_is_unreadable_not_gone(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A shed level that cannot be opened again when the walk climbs back (its permissions
    changed meanwhile, no descriptor left) was dropped silently: the photos under it were
    marked missing. It is reported unreadable, so that their records are kept."""
    import errno

    from dedupd import scanner

    monkeypatch.setattr(scanner, "HELD_LEVELS", 2)
    root = tmp_path / "root"
    for chain in ("x", "y"):
        _chain(root / "a" / chain, 100)
    unreadable: list[tuple[str, str]] = []
    found = walk(str(root), NameFilter(Config().watch), (), unreadable)
    first = next(found)  # deep in one chain: "a" is shed, the other chain still to visit
    assert first.relpath.count("/") > 5
    real = safefs.open_dir_at

    def refused(dir_fd: int, name: str) -> int:
        if name == "a":
            raise PermissionError(errno.EACCES, "Permission denied")
        return real(dir_fd, name)

    monkeypatch.setattr(safefs, "open_dir_at", refused)
    list(found)
    assert unreadable == [(str(root / "a"), "Permission denied")]


def test_a_folder_swapped_while_its_descriptor_was_shed_is_not_entered_again(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A shallow level's descriptor is shed while the walk is deep; climbing back, it is
    opened again by name. A folder moved away and replaced by another meanwhile is not
    walked in its place: nothing of the replacement is listed under the old one's name."""
    from dedupd import scanner

    monkeypatch.setattr(scanner, "HELD_LEVELS", 2)
    root = tmp_path / "root"
    for chain in ("x", "y"):
        _chain(root / "a" / chain, 100)
    found = walk(str(root), NameFilter(Config().watch))
    first = next(found)  # deep in one chain: "a" is shed, the other chain still to visit
    assert first.relpath.startswith(("a/x/", "a/y/")) and first.relpath.count("/") > 5
    (root / "a").rename(tmp_path / "moved")
    for chain in ("x", "y"):
        photos.copy(photos.photo("coffee"), root / "a" / chain / "planted.jpg")
    rest = [e.relpath for e in found]
    assert not any(p.endswith("planted.jpg") for p in rest), rest


def test_a_root_swapped_for_a_link_after_it_was_looked_at_is_not_walked(
    library: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Between `why_unavailable`'s look at the root and the walk's first listing, the root
    can be swapped for a link: the walk opens the root itself without following links, so
    it refuses such a root instead of listing where the link leads."""
    from dedupd import scanner
    from dedupd.errors import NotFoundError

    alice = tmp_path / "alice" / "Photos"
    alice.parent.mkdir()
    _users_link(alice, library, monkeypatch)
    monkeypatch.setattr(scanner, "why_unavailable", lambda root: None)  # looked at before
    with pytest.raises(NotFoundError, match="cannot read the root"):
        next(walk(str(alice), NameFilter(Config().watch)))


def test_a_quarantine_swapped_for_another_users_link_hides_no_folder_of_a_root(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The folders walks skip (the quarantine, the database's) were resolved through every
    link: a user who swapped a quarantine inside a root for a link to one of the root's
    folders hid that folder from every walk (its duplicates never found). Now such a link
    is not followed, and the folder it leads to is walked; the real quarantine, where it
    is, is still skipped."""
    from dedupd.engine import excluded_dirs

    root = tmp_path / "photos"
    photos.copy(photos.photo("coffee"), root / "album" / "IMG_1.jpg")
    photos.copy(photos.photo("coffee"), root / "quarantine" / "IMG_0.jpg")
    config_file = tmp_path / "dedupd.yaml"
    config_file.write_text(
        f"quarantine: {{path: {root / 'quarantine'}}}\nroots: [{{path: {root}}}]\n"
    )
    config = load_config(config_file)
    names = NameFilter(config.watch)
    assert [e.relpath for e in walk(str(root), names, excluded_dirs(config))] == [
        "album/IMG_1.jpg"
    ]
    (root / "quarantine").rename(tmp_path / "quarantine.old")
    _users_link(root / "quarantine", root / "album", monkeypatch)
    assert [e.relpath for e in walk(str(root), names, excluded_dirs(config))] == [
        "album/IMG_1.jpg"
    ]


def test_the_scan_report_names_an_unavailable_root_once() -> None:
    from dedupd.render import scan_report

    report = ScanReport([])
    report.unavailable = [
        ("/srv/photos", "/srv/photos: root is not a directory or is not mounted"),
        ("/home/alice/Photos", "/home/alice: a symbolic link owned by uid 1000"),
    ]
    assert scan_report(report, 64).splitlines()[1:] == [
        "unavailable: /srv/photos: root is not a directory or is not mounted",
        "unavailable: /home/alice/Photos: /home/alice: a symbolic link owned by uid 1000",
    ]


def test_records_under_a_folder_the_walk_skips_neither_keep_a_root_unavailable_nor_indexed(
    tmp_path: Path,
) -> None:
    """A root holding only `Duplicates/IMG_0001.jpg` (recorded), then `quarantine.path` set to
    that folder: the walk skips it, so the root looks empty. Those records are no photos of
    the root: the root is not "empty, but 1 photos are recorded there" (unavailable, its
    records kept and indexed, the red team's f3: the quarantined file became the keeper of
    an upload's delete); its record is marked missing, as any the walk does not find."""
    from dedupd.config import QuarantineConfig

    root = (tmp_path / "uploads").resolve()
    photos.copy(photos.photo("coffee"), root / "Duplicates" / "IMG_0001.jpg")
    config = _config(tmp_path, root)
    assert _scan(config).hashed == 1
    moved = replace(config, quarantine=QuarantineConfig(path=root / "Duplicates"))
    report = _scan(moved)
    assert (report.roots, report.unavailable, report.missing) == ([str(root)], [], 1)
    with Store(config.database) as store:
        record = store.file_at(root / "Duplicates" / "IMG_0001.jpg")
        assert record is not None and record.state == "missing"
    assert (root / "Duplicates" / "IMG_0001.jpg").exists()
    # An unmounted disk is still told by the photos recorded where the walk looks.
    photos.copy(photos.photo("rocket"), root / "IMG_0002.jpg")
    assert _scan(moved).hashed == 1
    (root / "IMG_0002.jpg").rename(tmp_path / "IMG_0002.jpg")
    (again,) = _scan(moved).unavailable
    assert "empty, but 1 photos are recorded there" in again[1]


@pytest.mark.skipif(os.geteuid() != 0, reason="needs root to walk as another user")
def test_a_root_below_a_folder_that_may_only_be_passed_through_is_walked(tmp_path: Path) -> None:
    """/home/alice at 0711 above the root /home/alice/Photos: dedupd's user may pass through
    it, not list it. Opening each folder on the way for reading (the walk by descriptor)
    made such a root unavailable; the folders passed are opened O_PATH."""
    import tempfile

    base = Path(tempfile.mkdtemp(dir="/tmp"))  # pytest's own folders are 0700
    home = base / "alice"
    photos.copy(photos.photo("coffee"), home / "Photos" / "IMG_0001.jpg")
    base.chmod(0o755)
    home.chmod(0o711)
    read, write = os.pipe()
    pid = os.fork()
    if pid == 0:  # the walk as another user, told back through the pipe
        try:
            os.setgroups([])
            os.setgid(12345)
            os.setuid(12345)
            found = [e.relpath for e in walk(str(home / "Photos"), NameFilter(Config().watch))]
            os.write(write, json.dumps(found).encode())
        except BaseException as exc:
            os.write(write, json.dumps(repr(exc)).encode())
        finally:
            os._exit(0)
    os.close(write)
    os.waitpid(pid, 0)
    try:
        with os.fdopen(read) as answer:
            assert json.load(answer) == ["IMG_0001.jpg"]
    finally:
        shutil.rmtree(base)


def test_a_reference_root_named_through_a_link_keeps_its_policy(tmp_path: Path) -> None:
    """Review: with root policies keyed by the roots' paths as written, a reference root
    named through a link (`~/Archive -> /mnt/disk/archive`) took the default policy, and a
    photo arriving there was quarantined. Roots are keyed as the store names them."""
    camera, disk = tmp_path / "camera", tmp_path / "disk" / "archive"
    disk.mkdir(parents=True)
    photos.copy(photos.photo("coffee"), camera / "IMG_1.jpg")
    (tmp_path / "archive").symlink_to(disk)
    cfg_file = tmp_path / "dedupd.yaml"
    cfg_file.write_text(
        f"database: {tmp_path / 'dedupd.db'}\n"
        f"roots:\n  - {{path: {camera}, policy: cam}}\n"
        f"  - {{path: {tmp_path / 'archive'}, policy: reference}}\n"
        "policies:\n  cam: {exact: report, near: report}\n"
        "  default: {exact: quarantine, near: report}\n"
        f"quarantine: {{path: {tmp_path / 'quarantine'}}}\n"
        "hashing: {workers: 1}\n"
    )
    result = CliRunner().invoke(dedupd, ["scan", "--config", str(cfg_file)])
    assert result.exit_code == 0, result.output
    photos.copy(photos.photo("coffee"), disk / "IMG_1 (1).jpg")  # arrives after it
    result = CliRunner().invoke(dedupd, ["scan", "--config", str(cfg_file)])
    assert result.exit_code == 0, result.output
    assert sorted(os.listdir(disk)) == ["IMG_1 (1).jpg"]
    assert load_config(cfg_file).policies_of(str(disk))[0].reference
