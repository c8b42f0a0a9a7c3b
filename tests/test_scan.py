"""scan end to end on real temp trees: groups found, nothing decoded twice, renames followed."""

from __future__ import annotations

import os
import shutil
from dataclasses import replace
from pathlib import Path

import pytest

from dedupd.config import Config, HashingConfig, IndexConfig, load_config
from dedupd.engine import ScanReport, scan
from dedupd.pool import HasherPool
from dedupd.scanner import Entry, NameFilter, walk
from dedupd.store import Store
from tests import photos


def _config(tmp_path: Path, *roots: Path, **hashing: object) -> Config:
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
    assert sorted(rows.values()) == [9, 9]
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
