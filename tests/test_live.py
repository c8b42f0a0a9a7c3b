"""Live Photos: a still and its MOV are paired (by Apple's content identifier, else by folder
and stem) and move as one: quarantine, restore, purge and delete take both files or neither,
and a crash at any step is recovered with both files on one side."""

from __future__ import annotations

import contextlib
import errno
import hashlib
import io
import os
import signal
import struct
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, replace
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st
from PIL import Image

import dedupd.actions
from dedupd import live
from dedupd.actions import QUARANTINE_MARKER as MARKER
from dedupd.actions import ActionError, Actions, MotionNotIdentical
from dedupd.config import DEFAULT_POLICY, Config, HashingConfig, Policy, QuarantineConfig
from dedupd.engine import scan
from dedupd.store import FileRecord, Store
from tests import photos

CID = "6E2A8B1C-3F4D-4E5A-9B8C-7D6E5F4A3B2C"
OTHER_CID = "0A1B2C3D-4E5F-4A6B-8C7D-9E0F1A2B3C4D"


# -- making Live Photos ----------------------------------------------------------------------


def _atom(kind: bytes, body: bytes) -> bytes:
    return struct.pack(">I4s", 8 + len(body), kind) + body


def write_mov(path: Path, content_id: str | None, payload: bytes = b"motion frames") -> Path:
    """A QuickTime file laid out as an iPhone writes a Live Photo's motion half: ftyp, mdat,
    then moov with the movie metadata (hdlr 'mdta', keys, ilst) holding the identifier."""
    moov = _atom(b"mvhd", bytes(100))
    if content_id is not None:
        key = live.CONTENT_ID_KEY
        keys = _atom(b"keys", bytes(4) + struct.pack(">I", 1) + struct.pack(
            ">I4s", 8 + len(key), b"mdta") + key)
        value = _atom(b"data", struct.pack(">II", 1, 0) + content_id.encode())
        ilst = _atom(b"ilst", _atom(struct.pack(">I", 1), value))
        hdlr = _atom(b"hdlr", bytes(8) + b"mdta" + bytes(13))
        moov += _atom(b"meta", hdlr + keys + ilst)
    data = _atom(b"ftyp", b"qt  " + bytes(4) + b"qt  ") + _atom(b"mdat", payload)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data + _atom(b"moov", moov))
    return path


def apple_exif(content_id: str) -> bytes:
    """EXIF whose MakerNote is Apple's, holding the content identifier (tag 0x11)."""
    value = content_id.encode() + b"\0"
    head = b"Apple iOS\x00" + b"\x00\x01" + b"MM"
    entry = struct.pack(">HHII", 0x0011, 2, len(value), len(head) + 2 + 12 + 4)
    note = head + struct.pack(">H", 1) + entry + bytes(4) + value
    exif = Image.Exif()
    exif.get_ifd(0x8769)[0x927C] = note
    return exif.tobytes()


def write_still(path: Path, src: Path, content_id: str | None, fmt: str = "JPEG") -> Path:
    with Image.open(src) as im:
        rgb = im.convert("RGB")
    path.parent.mkdir(parents=True, exist_ok=True)
    kw = {"exif": apple_exif(content_id)} if content_id else {}
    rgb.save(path, format=fmt, quality=90, **kw)
    return path


def _sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


# -- the pairing rule (pure) -----------------------------------------------------------------


def test_the_content_identifier_pairs_across_different_names() -> None:
    assert live.pair("IMG_0001.HEIC", CID, [("IMG_0001.MOV", OTHER_CID), ("clip.mov", CID)]) == (
        "clip.mov"
    )


def test_the_same_stem_pairs_case_insensitively_without_identifiers() -> None:
    assert live.pair("img_0001.heic", None, [("IMG_0001.MOV", None), ("IMG_0002.MOV", None)]) == (
        "IMG_0001.MOV"
    )


def test_different_identifiers_are_no_pair_whatever_the_names() -> None:
    assert live.pair("IMG_0001.HEIC", CID, [("IMG_0001.MOV", OTHER_CID)]) is None


def test_two_movies_that_could_both_be_the_one_are_no_answer() -> None:
    assert live.pair("IMG_1.JPG", None, [("IMG_1.MOV", None), ("img_1.mov", None)]) is None


@given(
    photo_id=st.sampled_from([None, CID, OTHER_CID]),
    movies=st.lists(
        st.tuples(
            st.sampled_from(["IMG_1.MOV", "img_1.mov", "IMG_2.MOV", "x.mov"]),
            st.sampled_from([None, CID, OTHER_CID]),
        ),
        unique_by=lambda m: m[0],
        max_size=4,
    ),
)
def test_a_pair_never_joins_two_different_identifiers(
    photo_id: str | None, movies: list[tuple[str, str | None]]
) -> None:
    name = live.pair("IMG_1.JPG", photo_id, movies)
    if name is None:
        return
    cid = dict(movies)[name]
    assert photo_id is None or cid is None or cid == photo_id
    assert cid == photo_id or name.casefold() == "img_1.mov"


# -- the metadata readers --------------------------------------------------------------------


@pytest.mark.parametrize("fmt", ["JPEG", "HEIF"])
def test_the_still_identifier_is_read_from_apple_makernote(tmp_path: Path, fmt: str) -> None:
    still = write_still(tmp_path / "x", photos.photo("coffee"), CID, fmt)
    with Image.open(still) as im:
        assert live.photo_content_id(im) == CID
    plain = write_still(tmp_path / "y", photos.photo("coffee"), None, fmt)
    with Image.open(plain) as im:
        assert live.photo_content_id(im) is None


def test_the_movie_identifier_is_read_from_quicktime_metadata(tmp_path: Path) -> None:
    with (write_mov(tmp_path / "a.mov", CID)).open("rb") as f:
        assert live.movie_content_id(f) == CID
    with (write_mov(tmp_path / "b.mov", None)).open("rb") as f:
        assert live.movie_content_id(f) is None


@given(data=st.binary(max_size=400))
def test_a_malformed_movie_gives_no_identifier_and_never_raises(data: bytes) -> None:
    assert live.movie_content_id(io.BytesIO(b"\x00\x00\x00\x10moov" + data)) is None
    assert live.movie_content_id(io.BytesIO(data)) is None


def test_a_truncated_movie_gives_no_identifier(tmp_path: Path) -> None:
    whole = write_mov(tmp_path / "a.mov", CID).read_bytes()
    for cut in range(0, len(whole), 7):
        assert live.movie_content_id(io.BytesIO(whole[:cut])) is None


# -- a library with Live Photos --------------------------------------------------------------


@dataclass
class Lib:
    store: Store
    root: Path
    quarantine: Path
    config: Config

    def rec(self, path: Path) -> FileRecord:
        record = self.store.file_at(path)
        assert record is not None, path
        return record


class _Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def listings(monkeypatch: pytest.MonkeyPatch) -> Iterator[tuple[list[str], _Clock]]:
    """The folders `live` lists (os.scandir calls), and its clock, set by hand."""
    listed: list[str] = []
    scandir, clock = os.scandir, _Clock()

    def counting(path: str):  # type: ignore[no-untyped-def]
        listed.append(path)
        return scandir(path)

    monkeypatch.setattr(os, "scandir", counting)
    monkeypatch.setattr(time, "monotonic", clock)
    monkeypatch.setattr(live, "_folders", {})
    yield listed, clock


def test_a_folder_filling_with_uploads_is_listed_again_at_most_once_a_second(
    tmp_path: Path, listings: tuple[list[str], _Clock]
) -> None:
    """A camera folder's first sync: thousands of photos arriving in one folder, its mtime
    changing with each. Listing it again for every photo was quadratic (~55 ms a photo at
    20,000 files). Within RELIST_AFTER it is listed once; after, once more."""
    listed, clock = listings
    folder = tmp_path / "Camera"
    folder.mkdir()
    for i in range(30):
        (folder / f"IMG_{i:04}.JPG").write_bytes(b"x")  # an upload arrives: the mtime changes
        assert live.find_motion(str(folder / f"IMG_{i:04}.JPG"), None) is None
        clock.now += 0.01
    assert listed == [str(folder)]
    clock.now += live.RELIST_AFTER
    (folder / "IMG_0100.JPG").write_bytes(b"x")
    live.find_motion(str(folder / "IMG_0100.JPG"), None)
    assert listed == [str(folder)] * 2


@pytest.mark.parametrize("suffix", [".MOV", ".mov"])
def test_a_motion_file_named_as_its_photo_is_found_at_once_in_a_folder_listed_just_before(
    tmp_path: Path, listings: tuple[list[str], _Clock], suffix: str
) -> None:
    """The folder was listed a moment ago (another upload's photo); the photo's own MOV came
    since: it is found by name, and paired, without waiting for the next listing."""
    listed, clock = listings
    folder = tmp_path / "Camera"
    write_still(folder / "IMG_0001.JPG", photos.photo("coffee"), "A-1")
    assert live.find_motion(str(folder / "IMG_0001.JPG"), "A-1") is None
    write_mov(folder / f"IMG_0002{suffix}", "B-2")
    write_still(folder / "IMG_0002.JPG", photos.photo("rocket"), "B-2")
    clock.now += 0.01
    beside = live.find_motion(str(folder / "IMG_0002.JPG"), "B-2")
    assert beside is not None and beside.motion is not None
    assert beside.motion.relpath == f"IMG_0002{suffix}" and beside.motion.content_id == "B-2"
    assert len(listed) == 2


@pytest.mark.parametrize("still", ["IMG_0009.HEIC", "img_0009.jpg"])
def test_a_movie_decided_before_the_photo_beside_it_is_hashed_is_never_moved_alone(
    tmp_path: Path, still: str
) -> None:
    """The red team's e24: a Live Photo's MOV settled before its still was hashed, matched a
    copy of itself and was quarantined alone; restoring the photo left its MOV in quarantine.
    A movie of a motion file's size beside a photo of its name is only reported until the
    two are paired (then they move together, or not at all)."""
    from dedupd.engine import Ingest
    from dedupd.policy import Decision
    from dedupd.scanner import root_key
    from tests import clips

    root = (tmp_path / "photos").resolve()
    clips.render(photos.photo("rocket"), root / "phone" / "IMG_0009.MOV", seconds=3)
    photos.copy(root / "phone" / "IMG_0009.MOV", root / "backup" / "IMG_0009.MOV")
    config = replace(_config(tmp_path, root), quarantine=QuarantineConfig(tmp_path / "q"))
    store = Store(config.database)
    scan(config, store)
    target = store.file_at(root / "phone" / "IMG_0009.MOV")
    keeper = store.file_at(root / "backup" / "IMG_0009.MOV")
    assert target is not None and keeper is not None and target.sha256 is not None
    write_still(root / "phone" / still, photos.photo("coffee"), "C-9")  # arriving: unhashed
    ingest = Ingest(store, config, [root_key(root)], Actions(store, tmp_path / "q"))
    try:
        decision = Decision("quarantine", "keep: test", target, keeper, 0, "exact")
        outcome = ingest.apply(decision, str(target.path))
    finally:
        ingest.close()
        store.close()
    assert outcome.result.startswith("reported: it may be the motion file of Live Photo")
    assert still in outcome.result
    assert (root / "phone" / "IMG_0009.MOV").exists() and not (tmp_path / "q").exists()


def _config(tmp_path: Path, root: Path, **policy: object) -> Config:
    config = replace(Config(), database=tmp_path / "d.db", hashing=HashingConfig(workers=1))
    if policy:
        config = replace(config, policies={DEFAULT_POLICY: Policy(**policy)})  # type: ignore[arg-type]
    return config.with_roots([root])


@pytest.fixture
def lib(tmp_path: Path) -> Iterator[Lib]:
    """keeper/IMG_0001.JPG + its MOV, and dup/IMG_0001.JPG (exact copy) + the same MOV."""
    root = tmp_path / "photos"
    write_still(root / "keeper" / "IMG_0001.JPG", photos.photo("coffee"), CID)
    write_mov(root / "keeper" / "IMG_0001.MOV", CID)
    photos.copy(root / "keeper" / "IMG_0001.JPG", root / "dup" / "IMG_0001.JPG")
    photos.copy(root / "keeper" / "IMG_0001.MOV", root / "dup" / "IMG_0001.MOV")
    config = _config(tmp_path, root)
    store = Store(config.database)
    scan(config, store)
    yield Lib(store, root.resolve(), tmp_path / "quarantine", config)
    store.close()


def test_a_scan_pairs_a_still_with_its_motion_file(lib: Lib) -> None:
    motion = lib.store.motion_of(lib.rec(lib.root / "dup" / "IMG_0001.JPG").id)
    assert motion is not None
    assert (motion.relpath, motion.content_id) == ("dup/IMG_0001.MOV", CID)
    assert motion.sha256 == _sha(lib.root / "dup" / "IMG_0001.MOV")


def test_pairing_by_content_identifier_across_different_stems(tmp_path: Path) -> None:
    root = tmp_path / "photos"
    write_still(root / "IMG_0007.JPG", photos.photo("rocket"), CID)
    write_mov(root / "IMG_0007.MOV", OTHER_CID)  # another Live Photo's, same name
    write_mov(root / "exported clip.mov", CID)
    config = _config(tmp_path, root)
    with Store(config.database) as store:
        scan(config, store)
        still = store.file_at(root.resolve() / "IMG_0007.JPG")
        assert still is not None
        motion = store.motion_of(still.id)
        assert motion is not None and motion.relpath == "exported clip.mov"
        # The other Live Photo's MOV of the same name was seen, and is not this one's: it
        # neither stops the move nor goes with it.
        Actions(store, tmp_path / "q").quarantine(still, None, 0, "t")
    assert sorted(p.name for p in root.iterdir()) == ["IMG_0007.MOV"]
    assert sorted(p.name for p in (tmp_path / "q").rglob("*.*") if p.name != MARKER) == [
        "IMG_0007.JPG",
        "exported clip.mov",
    ]


def test_pairing_by_stem_without_identifiers(tmp_path: Path) -> None:
    root = tmp_path / "photos"
    write_still(root / "img_0003.jpg", photos.photo("rocket"), None)
    write_mov(root / "IMG_0003.MOV", None)
    write_mov(root / "IMG_0004.MOV", None)
    config = _config(tmp_path, root)
    with Store(config.database) as store:
        scan(config, store)
        still = store.file_at(root.resolve() / "img_0003.jpg")
        assert still is not None
        motion = store.motion_of(still.id)
        assert motion is not None and motion.relpath == "IMG_0003.MOV"


@pytest.mark.slow
def test_a_video_too_large_to_be_a_motion_file_is_not_paired_nor_read_for_the_still(
    tmp_path: Path,
) -> None:
    """Another phone's IMG_1234.MOV (a video of its own) beside this phone's IMG_1234.JPG was
    paired by stem, and the still's worker read it whole for its sha256: a large one (a long
    video on a slow disk; a sparse file here) made the still itself `timeout`, never hashed
    while it was there. A movie larger than a motion file can be is no pair: the still is
    hashed, and moves alone (the movie was seen beside it, so it does not stop the move)."""
    root = tmp_path / "photos"
    write_still(root / "IMG_1234.JPG", photos.photo("rocket"), None)
    write_mov(root / "IMG_1234.MOV", None)
    with (root / "IMG_1234.MOV").open("r+b") as f:
        f.truncate(64 << 30)  # sparse: no disk, but minutes to read
    config = _config(tmp_path, root)
    config = replace(config, hashing=replace(config.hashing, timeout=3.0))
    with Store(config.database) as store:
        report = scan(config, store)
        assert [os.path.basename(p) for p, _ in report.failed] == ["IMG_1234.MOV"]  # its own
        still = store.file_at(root.resolve() / "IMG_1234.JPG")
        assert still is not None and still.state == "ok"
        assert store.motion_of(still.id) is None
        Actions(store, tmp_path / "q").quarantine(still, None, 0, "t")
    assert sorted(p.name for p in root.iterdir()) == ["IMG_1234.MOV"]


# -- moving together -------------------------------------------------------------------------


def _pair_in_quarantine(lib: Lib, action_id: int) -> tuple[Path, Path]:
    entry = lib.store.action(action_id)
    assert entry is not None and entry.dst is not None and entry.motion is not None
    q_still = Path(entry.dst)
    q_motion = q_still.with_name("IMG_0001.MOV")
    return q_still, q_motion


def test_quarantine_restore_and_purge_move_the_two_files_together(lib: Lib) -> None:
    still, motion = lib.root / "dup" / "IMG_0001.JPG", lib.root / "dup" / "IMG_0001.MOV"
    shas = (_sha(still), _sha(motion))
    actions = Actions(lib.store, lib.quarantine)
    action_id = actions.quarantine(
        lib.rec(still), lib.rec(lib.root / "keeper" / "IMG_0001.JPG"), 0, "t"
    )
    q_still, q_motion = _pair_in_quarantine(lib, action_id)
    assert not still.exists() and not motion.exists()
    assert (_sha(q_still), _sha(q_motion)) == shas

    actions.restore(action_id)
    assert (_sha(still), _sha(motion)) == shas
    assert not q_still.exists() and not q_motion.exists()

    scan(lib.config, lib.store)  # the restored still is found again
    again = actions.quarantine(lib.rec(still), None, 0, "t")
    q_still, q_motion = _pair_in_quarantine(lib, again)
    assert actions.purge(0, only={again}) == [again]
    assert not q_still.exists() and not q_motion.exists()
    assert not still.exists() and not motion.exists()
    assert (lib.root / "keeper" / "IMG_0001.MOV").exists()


def test_a_restore_that_fails_on_the_motion_file_leaves_the_still_in_quarantine_too(
    lib: Lib, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The quarantine on another filesystem, and the disk fills up while the motion file is
    copied back: the still, already copied, is not left behind at its original name (where
    it would stop every later restore of the pair, and the motion file would wait in
    quarantine for its purge). Both stay in quarantine; once there is room, a restore
    brings both back."""
    still, motion = lib.root / "dup" / "IMG_0001.JPG", lib.root / "dup" / "IMG_0001.MOV"
    shas = (_sha(still), _sha(motion))
    movie = motion.read_bytes()
    actions = Actions(lib.store, lib.quarantine)
    action_id = actions.quarantine(
        lib.rec(still), lib.rec(lib.root / "keeper" / "IMG_0001.JPG"), 0, "t"
    )
    q_still, q_motion = _pair_in_quarantine(lib, action_id)

    def no_hard_links(*args: object, **kwargs: object) -> None:
        raise OSError(errno.EXDEV, "Invalid cross-device link")

    def disk_full_for_the_movie(fd: int, data: memoryview) -> int:
        if bytes(data) == movie:
            raise OSError(errno.ENOSPC, "No space left on device")
        return os.write(fd, data)

    with monkeypatch.context() as m:
        m.setattr(dedupd.actions, "_link", no_hard_links)
        m.setattr(dedupd.actions, "_write", disk_full_for_the_movie)
        with pytest.raises(ActionError, match="No space left"):
            actions.restore(action_id)
    assert not still.exists() and not motion.exists()
    assert (_sha(q_still), _sha(q_motion)) == shas
    assert lib.rec(still).state == "quarantined"

    actions.restore(action_id)
    assert (_sha(still), _sha(motion)) == shas
    assert not q_still.exists() and not q_motion.exists()


def test_a_restore_whose_motion_name_is_taken_meanwhile_leaves_the_still_in_quarantine(
    lib: Lib,
) -> None:
    """Same filesystem: the still is linked back, then a sync client writes a file at the
    motion file's name. The restore fails without a hard link of the still left at its name;
    the newcomer is untouched."""
    still, motion = lib.root / "dup" / "IMG_0001.JPG", lib.root / "dup" / "IMG_0001.MOV"
    shas = (_sha(still), _sha(motion))
    action_id = Actions(lib.store, lib.quarantine).quarantine(
        lib.rec(still), lib.rec(lib.root / "keeper" / "IMG_0001.JPG"), 0, "t"
    )
    q_still, q_motion = _pair_in_quarantine(lib, action_id)
    fired: list[str] = []

    def a_file_arrives(step: str) -> None:
        if step == "linked" and not fired:
            fired.append(step)
            motion.write_bytes(b"someone else's movie")

    with pytest.raises(ActionError):
        Actions(lib.store, lib.quarantine, checkpoint=a_file_arrives).restore(action_id)
    assert fired
    assert not still.exists()
    assert motion.read_bytes() == b"someone else's movie"
    assert (_sha(q_still), _sha(q_motion)) == shas
    assert os.stat(q_still).st_nlink == 1


@pytest.mark.parametrize("half", ["still", "motion"])
def test_a_pair_where_one_half_vanished_does_not_move_at_all(lib: Lib, half: str) -> None:
    still, motion = lib.root / "dup" / "IMG_0001.JPG", lib.root / "dup" / "IMG_0001.MOV"
    record = lib.rec(still)
    (still if half == "still" else motion).unlink()
    with pytest.raises(ActionError, match="vanished"):
        Actions(lib.store, lib.quarantine).quarantine(record, None, 0, "t")
    assert still.exists() == (half != "still") and motion.exists() == (half != "motion")
    assert not list(lib.quarantine.rglob("*.*")) if lib.quarantine.exists() else True
    assert lib.store.actions() == []


def test_a_changed_motion_file_keeps_both_in_place_and_the_still_is_hashed_again(
    lib: Lib,
) -> None:
    still, motion = lib.root / "dup" / "IMG_0001.JPG", lib.root / "dup" / "IMG_0001.MOV"
    record = lib.rec(still)
    write_mov(motion, CID, payload=b"edited in the Photos app")
    with pytest.raises(ActionError, match="motion file cannot be moved"):
        Actions(lib.store, lib.quarantine).quarantine(record, None, 0, "t")
    assert still.exists() and motion.exists()
    assert lib.rec(still).mtime_ns == -1  # stale: the next reconcile pairs it again


def test_a_motion_file_that_arrived_after_the_still_was_hashed_stops_the_move(
    tmp_path: Path,
) -> None:
    root = tmp_path / "photos"
    still = write_still(root / "IMG_0009.JPG", photos.photo("rocket"), None)
    config = _config(tmp_path, root)
    with Store(config.database) as store:
        scan(config, store)  # the MOV is not there yet
        write_mov(root / "IMG_0009.MOV", None)
        record = store.file_at(still.resolve())
        assert record is not None
        with pytest.raises(ActionError, match="not paired"):
            Actions(store, tmp_path / "q").quarantine(record, None, 0, "t")
        assert still.exists() and (root / "IMG_0009.MOV").exists()
        scan(config, store)  # hashed again: now paired
        record = store.file_at(still.resolve())
        assert record is not None and store.motion_of(record.id) is not None


def test_an_exact_delete_takes_the_pair_only_when_the_motion_files_are_identical(
    lib: Lib,
) -> None:
    still, motion = lib.root / "dup" / "IMG_0001.JPG", lib.root / "dup" / "IMG_0001.MOV"
    keeper = lib.rec(lib.root / "keeper" / "IMG_0001.JPG")
    Actions(lib.store, None).delete(lib.rec(still), keeper, "exact")
    assert not still.exists() and not motion.exists()
    assert (lib.root / "keeper" / "IMG_0001.MOV").exists()


def test_an_exact_still_with_another_motion_file_is_quarantined_not_deleted(
    tmp_path: Path,
) -> None:
    """Same still bytes, different motion files: not a pair of copies. An `exact: delete`
    policy deletes nothing; the newcomer's two files go to quarantine together."""
    root = tmp_path / "photos"
    write_still(root / "a" / "IMG_1.JPG", photos.photo("coffee"), None)
    write_mov(root / "a" / "IMG_1.MOV", None, payload=b"the first take")
    photos.copy(root / "a" / "IMG_1.JPG", root / "b" / "IMG_1.JPG")
    write_mov(root / "b" / "IMG_1.MOV", None, payload=b"another take")
    q = tmp_path / "q"
    config = _config(tmp_path, root, exact="delete")
    with Store(config.database) as store:
        reporting = replace(config, policies={DEFAULT_POLICY: Policy()})
        scan(reporting, store)
        a = store.file_at(root.resolve() / "a" / "IMG_1.JPG")
        b = store.file_at(root.resolve() / "b" / "IMG_1.JPG")
        assert a is not None and b is not None
        with pytest.raises(MotionNotIdentical):
            Actions(store, None).delete(b, a, "exact")
        assert (root / "b" / "IMG_1.JPG").exists() and (root / "b" / "IMG_1.MOV").exists()
        quarantining = replace(config, quarantine=replace(config.quarantine, path=q))
        scan(quarantining, store, actions=Actions(store, q))  # decides the reported pair again
    left = sorted(str(p.relative_to(root)) for p in root.rglob("IMG_1.*"))
    assert left in (["a/IMG_1.JPG", "a/IMG_1.MOV"], ["b/IMG_1.JPG", "b/IMG_1.MOV"])
    assert sorted(p.name for p in q.rglob("IMG_1.*")) == ["IMG_1.JPG", "IMG_1.MOV"]


def test_a_motion_file_two_stills_share_stays_with_the_one_that_stays(tmp_path: Path) -> None:
    """The red team's livesplit: `IMG_1.JPG` (the export a sync client writes) beside
    `IMG_1.HEIC` + `IMG_1.MOV` pairs with the same MOV by stem. Quarantined as the HEIC's
    duplicate, the JPEG took the MOV along: the HEIC was no Live Photo any more, and a purge
    deleted the only copy of the clip. The JPEG goes alone now; the MOV stays with the
    HEIC, and the purge takes only the JPEG."""
    root = tmp_path / "photos"
    write_still(root / "IMG_1.HEIC", photos.photo("coffee"), CID, fmt="HEIF")
    write_mov(root / "IMG_1.MOV", CID)
    write_still(root / "IMG_1.JPG", photos.photo("coffee"), CID)
    config = _config(tmp_path, root)
    with Store(config.database) as store:
        scan(config, store)
        heic = store.file_at(root.resolve() / "IMG_1.HEIC")
        jpeg = store.file_at(root.resolve() / "IMG_1.JPG")
        assert heic is not None and jpeg is not None
        for still in (heic, jpeg):
            motion = store.motion_of(still.id)
            assert motion is not None and motion.relpath == "IMG_1.MOV", "both claim it"
        actions = Actions(store, tmp_path / "q")
        action_id = actions.quarantine(jpeg, heic, 0, "near")
        assert sorted(p.name for p in root.iterdir()) == ["IMG_1.HEIC", "IMG_1.MOV"]
        assert actions.motion_record(action_id) is None
        assert actions.purge(0, only={action_id}) == [action_id]
    assert sorted(p.name for p in root.iterdir()) == ["IMG_1.HEIC", "IMG_1.MOV"]


def test_purge_keeps_a_quarantined_motion_file_that_has_no_copy_outside_the_quarantine(
    tmp_path: Path,
) -> None:
    """The red team's livepurge: a Live Photo quarantined as the duplicate of a plain still
    (same still bytes, no motion file of its own) was purged whole, its clip with it: the
    still's keeper was checked, the clip's copy never was. Now purge deletes the pair only
    while a file with the clip's bytes is there outside the quarantine (the keeper's motion
    file, or any file recorded with them); otherwise both are kept, and it says so."""
    root = tmp_path / "photos"
    write_still(root / "a" / "IMG_1.JPG", photos.photo("coffee"), None)
    write_mov(root / "a" / "IMG_1.MOV", None, payload=b"the only take")
    photos.copy(root / "a" / "IMG_1.JPG", root / "b" / "IMG_1.JPG")  # no motion file
    config = _config(tmp_path, root)
    q = tmp_path / "q"
    with Store(config.database) as store:
        scan(config, store)
        pair, plain = (store.file_at(root.resolve() / d / "IMG_1.JPG") for d in ("a", "b"))
        assert pair is not None and plain is not None
        actions = Actions(store, q)
        action_id = actions.quarantine(pair, plain, 0, "exact")
        assert actions.motion_record(action_id) is not None
        assert actions.purge(0) == []
        failed = store.actions("kind = 'purge'")[-1]
        assert failed.state == "failed" and "no identical copy" in str(failed.error)
        clip = list(q.rglob("IMG_1.MOV"))
        assert len(clip) == 1 and b"the only take" in clip[0].read_bytes()
        assert len(list(q.rglob("IMG_1.JPG"))) == 1

        # A copy of the clip beside the keeper, paired with it once it is hashed again (its
        # own motion file now): both purged
        write_mov(root / "b" / "IMG_1.MOV", None, payload=b"the only take")
        os.utime(root / "b" / "IMG_1.JPG", (1_700_000_000, 1_700_000_000))
        scan(config, store)
        kept = store.motion_of(plain.id)
        assert kept is not None and kept.sha256 == _sha(clip[0])
        assert actions.purge(0) == [action_id]
    assert list(q.rglob("IMG_1.*")) == []
    assert (root / "b" / "IMG_1.MOV").exists() and (root / "b" / "IMG_1.JPG").exists()


def test_a_decision_to_move_a_motion_file_alone_is_only_reported(lib: Lib) -> None:
    """When clips are records of their own (video deduplication), a duplicate MOV whose still
    is not a duplicate must not move: the engine reports it."""
    from dedupd.engine import Ingest
    from dedupd.filestat import FileStat, HashedImage
    from dedupd.policy import Decision

    motion = lib.root / "dup" / "IMG_0001.MOV"
    st_ = os.stat(motion)
    lib.store.record_hashed(
        str(lib.root),
        "dup/IMG_0001.MOV",
        HashedImage(FileStat.of(st_), _sha(motion), 1, 1, "MOV", None, {}),
    )
    clip = lib.rec(motion)
    ingest = Ingest(lib.store, lib.config, [str(lib.root)], Actions(lib.store, lib.quarantine))
    try:
        decision = Decision(
            action="quarantine", rule="test", target=clip, keeper=None, distance=0,
            kind="video",
        )
        outcome = ingest.apply(decision, str(motion))
    finally:
        ingest.close()
    assert outcome.result.startswith("reported: the motion file of Live Photo")
    assert motion.exists() and (lib.root / "dup" / "IMG_0001.JPG").exists()


# -- kill -9 at every step -------------------------------------------------------------------


def _fork_and_kill_at(run: Callable[[Callable[[str], None]], None], kill_at: int) -> bool:
    """Run `run(checkpoint)` in a forked child that SIGKILLs itself at the `kill_at`-th
    checkpoint. True if it was killed, False if it finished first."""
    pid = os.fork()
    if pid == 0:
        try:
            count = [0]

            def checkpoint(step: str) -> None:
                count[0] += 1
                if count[0] == kill_at:
                    os.kill(os.getpid(), signal.SIGKILL)

            run(checkpoint)
            os._exit(0)
        except BaseException as exc:
            print(f"child failed: {exc!r}", file=sys.stderr)
            os._exit(3)
    _, status = os.waitpid(pid, 0)
    if os.WIFSIGNALED(status):
        return True
    assert os.WEXITSTATUS(status) == 0, "the child failed"
    return False


def _where(lib: Lib, still_sha: str, motion_sha: str) -> tuple[int, int, int, int]:
    """How many copies of the dup pair's still and motion file are in dup/ and quarantine."""
    q = list(lib.quarantine.rglob("*")) if lib.quarantine.exists() else []
    dup = list((lib.root / "dup").glob("*"))
    count = lambda files, sha: sum(1 for p in files if p.is_file() and _sha(p) == sha)  # noqa: E731
    return count(dup, still_sha), count(dup, motion_sha), count(q, still_sha), count(q, motion_sha)


def _refused(*args: object, **kwargs: object) -> None:
    raise OSError(errno.EPERM, "Operation not permitted")


@pytest.mark.parametrize(
    ("op", "links"),
    # a copy across filesystems happens only when a file goes into or out of quarantine;
    # "refused": no hard links at all (exFAT; another user's photo, protected_hardlinks)
    [(op, "same") for op in ("quarantine", "restore", "purge", "delete")]
    + [("quarantine", "xdev"), ("restore", "xdev")]
    + [(op, "refused") for op in ("quarantine", "restore", "delete")],
)
@pytest.mark.slow
def test_a_crash_at_any_step_recovers_both_files_to_one_side(
    lib: Lib, op: str, links: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Killed at every checkpoint in turn (9 for a pair's quarantine, more with a copy across
    filesystems): recovery leaves the still and its motion file both in place or both in
    quarantine (or, for a purge and a delete, both gone), never one of each. Where links are
    refused, files are renamed instead: a restore renamed the still back, then a kill left
    the motion file in quarantine, its purge to come (review); a pair is never renamed back,
    and a restore that cannot copy it either fails with both files in quarantine."""
    still = lib.root / "dup" / "IMG_0001.JPG"
    shas = (_sha(still), _sha(lib.root / "dup" / "IMG_0001.MOV"))
    keeper = lib.rec(lib.root / "keeper" / "IMG_0001.JPG")
    kill_at, outcomes = 1, set[str]()
    while True:
        quarantined = 0
        if op in ("restore", "purge"):
            quarantined = Actions(lib.store, lib.quarantine).quarantine(
                lib.rec(still), None, 0, "t"
            )
        record = lib.rec(still)

        def run(
            checkpoint: Callable[[str], None],
            record: FileRecord = record,
            quarantined: int = quarantined,
        ) -> None:
            if links == "xdev":

                def no_hard_links(*args: object, **kwargs: object) -> None:
                    raise OSError(errno.EXDEV, "Invalid cross-device link")

                dedupd.actions._link = no_hard_links
            elif links == "refused":
                dedupd.actions._link = os.link = _refused
            with Store(lib.config.database) as s:
                actions = Actions(s, lib.quarantine, checkpoint=checkpoint)
                if op == "quarantine":
                    actions.quarantine(record, None, 0, "t")
                elif op == "restore":
                    # links refused: no link for the copy either, a clean failure
                    refused = links == "refused"
                    with contextlib.suppress(ActionError) if refused else contextlib.nullcontext():
                        actions.restore(quarantined)
                elif op == "purge":
                    actions.purge(0, only={quarantined})
                else:
                    actions.delete(record, keeper, "t")

        killed = _fork_and_kill_at(run, kill_at)
        with monkeypatch.context() as m:
            if links == "refused":  # recovery too
                m.setattr(dedupd.actions, "_link", _refused)
                m.setattr(os, "link", _refused)
            recovered = Actions(lib.store, lib.quarantine).recover()
        assert lib.store.actions("state = 'planned'") == []
        d_still, d_motion, q_still, q_motion = _where(lib, *shas)
        if op in ("quarantine", "restore"):
            assert (d_still, d_motion) in ((1, 1), (0, 0)), (kill_at, recovered)
            assert (q_still, q_motion) == (1 - d_still, 1 - d_motion), (kill_at, recovered)
        else:
            assert (d_still + q_still, d_motion + q_motion) in ((1, 1), (0, 0)), kill_at
        assert not list(lib.root.rglob(".dedupd-staging/*"))
        outcomes.update(r.outcome for r in recovered)
        if not killed:
            break
        # Back to the start: the pair in dup/, nothing in quarantine, a fresh record.
        if op in ("restore", "purge") and d_still == 0 and q_still == 1:
            (q,) = lib.store.quarantined()
            Actions(lib.store, lib.quarantine).restore(q.id)
        if op in ("delete", "purge") and d_still == 0 and q_still == 0:
            photos.copy(lib.root / "keeper" / "IMG_0001.JPG", still)
            photos.copy(lib.root / "keeper" / "IMG_0001.MOV", still.with_suffix(".MOV"))
        if op == "quarantine" and d_still == 0:
            (q,) = lib.store.quarantined()
            Actions(lib.store, lib.quarantine).restore(q.id)
        scan(lib.config, lib.store)
        kill_at += 1
    assert kill_at >= 5 or links == "refused", "the operation had fewer steps than a pair needs"
    assert "rolled_back" in outcomes or op == "purge"


# -- one item in what dedupctl shows -------------------------------------------------------


def test_show_search_and_quarantine_list_name_the_motion_file_with_its_still(
    tmp_path: Path,
) -> None:
    from tests.test_decisions import Lib as CliLib

    cli = CliLib(tmp_path)
    write_still(cli.root / "a" / "IMG_0001.JPG", photos.photo("coffee"), CID)
    write_mov(cli.root / "a" / "IMG_0001.MOV", CID)
    os.utime(cli.root / "a" / "IMG_0001.JPG", (1e9, 1e9))
    photos.copy(cli.root / "a" / "IMG_0001.JPG", cli.root / "b" / "IMG_0002.JPG")
    write_mov(cli.root / "b" / "IMG_0002.MOV", CID)
    cli.scan()  # b/ arrives second: quarantined, with its MOV
    moved = sorted(p.name for p in cli.quarantine.rglob("IMG_*") if p.is_file())
    assert moved == ["IMG_0002.JPG", "IMG_0002.MOV"]

    listed = cli.ctl("quarantine", "list").stdout.splitlines()
    assert listed[1] == f"       with its motion file {cli.root / 'b' / 'IMG_0002.MOV'}"
    shown = cli.ctl("show", str(cli.root / "a" / "IMG_0001.JPG")).stdout.splitlines()
    assert f"  live      with its motion file {cli.root / 'a' / 'IMG_0001.MOV'}" in shown
    found = cli.ctl("search", str(cli.root / "a" / "IMG_0001.JPG")).stdout.splitlines()
    assert found[1].endswith("IMG_0001.JPG  (Live Photo, with IMG_0001.MOV)"), found
    restored = cli.ctl("quarantine", "restore", str(cli.root / "b" / "IMG_0002.MOV"))
    assert restored.exit_code == 0, restored.output
    assert (cli.root / "b" / "IMG_0002.JPG").exists() and (cli.root / "b" / "IMG_0002.MOV").exists()


def _clip_pairs(root: Path) -> Path:
    """keeper/IMG_0009.JPG with a real clip as its MOV, and dup/ holding exact copies of both."""
    from tests import clips

    write_still(root / "keeper" / "IMG_0009.JPG", photos.photo("coffee"), None)
    clips.render(photos.photo("coffee"), root / "keeper" / "IMG_0009.MOV", seconds=3)
    for name in ("IMG_0009.JPG", "IMG_0009.MOV"):
        photos.copy(root / "keeper" / name, root / "dup" / name)
    return root


def test_a_live_photo_whose_motion_file_is_a_clip_moves_as_one_and_its_clip_record_follows(
    tmp_path: Path,
) -> None:
    """With video deduplication the MOV is a record of its own (a clip), matched exactly
    against the kept Live Photo's MOV. A scan that quarantines the duplicate still takes
    its MOV with it; the MOV's own decision never moves it alone, nothing fails, and its
    record follows the still: quarantined, out of the clip index, then back after a
    restore."""
    root = _clip_pairs(tmp_path / "photos")
    config = _config(tmp_path, root, exact="quarantine", near="report")
    config = replace(config, quarantine=QuarantineConfig(path=tmp_path / "quarantine"))
    with Store(config.database) as store:
        actions = Actions(store, tmp_path / "quarantine")
        report = scan(config, store, actions=actions)
        moved = [o for o in report.outcomes if o.result == "done"]
        assert [str(o.decision.target.path) for o in moved if o.decision.target] == [
            str(root.resolve() / "dup" / "IMG_0009.JPG")
        ]
        assert not any(o.result.startswith("failed") for o in report.outcomes)
        assert sorted(p.name for p in (root / "dup").iterdir()) == []
        assert sorted(p.name for p in (tmp_path / "quarantine").rglob("IMG_*")) == [
            "IMG_0009.JPG",
            "IMG_0009.MOV",
        ]
        clip = store.file_at(root.resolve() / "dup" / "IMG_0009.MOV")
        assert clip is not None and clip.state == "quarantined"
        assert store.file_at(root.resolve() / "keeper" / "IMG_0009.MOV").state == "ok"  # type: ignore[union-attr]

        [entry] = store.quarantined()
        actions.restore(entry.id)
        scan(config, store, actions=actions)  # the pair is back, found again
        for name in ("IMG_0009.JPG", "IMG_0009.MOV"):
            back = store.file_at(root.resolve() / "dup" / name)
            assert back is not None and back.state == "ok", name


@pytest.mark.parametrize("op", ["quarantine", "delete"])
def test_a_removal_recovery_finishes_records_the_clip_motion_file_too(
    tmp_path: Path, op: str
) -> None:
    """Killed after a Live Photo's two files left their folder but before their records
    said so: the recovery that finishes the action marks the motion file's clip record
    quarantined (or deleted) with its still, and remembers both as removed, before it marks
    the action done (itself killed right after that, nothing is left to redo). Before, only
    the still's record followed (the clip stayed recorded present, then missing), and
    after the journal's `done`."""
    root = _clip_pairs(tmp_path / "photos")
    config = _config(tmp_path, root, exact="report", near="report")
    still = root.resolve() / "dup" / "IMG_0009.JPG"
    motion = still.with_suffix(".MOV")
    motion_sha = _sha(motion)
    with Store(config.database) as store:
        scan(config, store)
        record, keeper = store.file_at(still), store.file_at(root.resolve() / "keeper" / still.name)
        assert record is not None and keeper is not None
        assert store.file_at(motion) is not None

    def run(checkpoint: Callable[[str], None]) -> None:
        with Store(config.database) as s:
            actions = Actions(s, tmp_path / "quarantine", checkpoint=checkpoint)
            if op == "quarantine":
                actions.quarantine(record, None, 0, "t")
            else:
                actions.delete(record, keeper, "t")

    def killed_before_recording(*args: object) -> None:
        os.kill(os.getpid(), signal.SIGKILL)

    real = Actions._finish_removal
    Actions._finish_removal = killed_before_recording  # type: ignore[method-assign,assignment]
    try:
        assert _fork_and_kill_at(run, kill_at=10**6)  # killed by the patched step
    finally:
        Actions._finish_removal = real  # type: ignore[method-assign]
    assert not still.exists() and not motion.exists()

    def recover(checkpoint: Callable[[str], None]) -> None:
        """The next start's recovery, killed right after it wrote the journal's `done`."""
        with Store(config.database) as s:
            real_finish = s.journal_finish

            def finish_and_die(*args: object) -> None:
                real_finish(*args)  # type: ignore[arg-type]
                os.kill(os.getpid(), signal.SIGKILL)

            s.journal_finish = finish_and_die  # type: ignore[method-assign,assignment]
            Actions(s, tmp_path / "quarantine").recover()

    assert _fork_and_kill_at(recover, kill_at=10**6)
    with Store(config.database) as store:
        assert store.actions("state = 'planned'") == []
        assert Actions(store, tmp_path / "quarantine").recover() == []
        ended = "quarantined" if op == "quarantine" else "deleted"
        for path in (still, motion):
            after = store.file_at(path)
            assert after is not None and after.state == ended, path
        assert store.tombstone(motion_sha, str(motion)) is not None


def test_a_live_photos_folder_renamed_keeps_the_pair_and_both_move_together(lib: Lib) -> None:
    """The still's record follows a folder rename; so must its motion file's place (it sits
    beside the still): a quarantine then takes both from the new folder."""
    os.rename(lib.root / "dup", lib.root / "2024")
    scan(lib.config, lib.store)
    still = lib.rec(lib.root / "2024" / "IMG_0001.JPG")
    motion = lib.store.motion_of(still.id)
    assert motion is not None and motion.path == lib.root / "2024" / "IMG_0001.MOV"
    assert lib.store.still_of(str(lib.root), "2024/IMG_0001.MOV") == still
    Actions(lib.store, lib.quarantine).quarantine(
        still, lib.rec(lib.root / "keeper" / "IMG_0001.JPG"), 0, "t"
    )
    assert list((lib.root / "2024").iterdir()) == []


def test_a_live_photos_folder_scanned_as_a_root_of_its_own_keeps_the_pair(lib: Lib) -> None:
    """A subfolder scanned alone takes over its records (`Store.adopt`): the still's motion
    file is named relative to the new root too."""
    scan(replace(lib.config, roots=()).with_roots([lib.root / "dup"]), lib.store)
    still = lib.rec(lib.root / "dup" / "IMG_0001.JPG")
    assert still.root == str(lib.root / "dup")
    motion = lib.store.motion_of(still.id)
    assert motion is not None and motion.path == lib.root / "dup" / "IMG_0001.MOV"
    assert lib.store.still_of(str(lib.root / "dup"), "IMG_0001.MOV") == still


def test_a_still_moved_without_its_motion_file_never_takes_that_file_along(lib: Lib) -> None:
    """The still alone moved to another folder: the motion file left behind is no longer
    beside it. Its quarantine is refused and the still hashed again (paired anew); the file
    in the old folder is not taken from there."""
    (lib.root / "2024").mkdir()
    os.rename(lib.root / "dup" / "IMG_0001.JPG", lib.root / "2024" / "IMG_0001.JPG")
    scan(lib.config, lib.store)
    still = lib.rec(lib.root / "2024" / "IMG_0001.JPG")
    with pytest.raises(ActionError):
        Actions(lib.store, lib.quarantine).quarantine(
            still, lib.rec(lib.root / "keeper" / "IMG_0001.JPG"), 0, "t"
        )
    assert (lib.root / "2024" / "IMG_0001.JPG").exists()
    assert (lib.root / "dup" / "IMG_0001.MOV").exists()
    stale = lib.store.file(still.id)
    assert stale is not None and stale.stat.mtime_ns == -1  # hashed again by the next scan
