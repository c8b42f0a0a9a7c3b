"""actions: journaled quarantine, verified delete, restore, purge, and recovery after kill -9.

Invariants 1 and 2 of DESIGN.md: a photo leaves its folder only into quarantine or by a
verified exact-duplicate delete, and a crash at any step leaves each photo exactly once.
"""

from __future__ import annotations

import errno
import hashlib
import os
import shutil
import signal
import subprocess
import sys
import textwrap
import time
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path

import pytest

import dedupd.actions
from dedupd import safefs
from dedupd.actions import ActionError, Actions
from dedupd.config import Config, HashingConfig
from dedupd.engine import scan
from dedupd.filestat import FileStat
from dedupd.store import FileRecord, Store
from tests import photos, writers


@pytest.fixture
def setup(tmp_path: Path) -> Iterator[tuple[Store, Path, Path]]:
    """A scanned root holding keeper.jpg and dup.jpg (exact copy) and near.jpg (re-encode)."""
    root = tmp_path / "photos"
    photos.copy(photos.photo("coffee"), root / "keeper.jpg")
    photos.copy(photos.photo("coffee"), root / "dup.jpg")
    photos.reencode(photos.photo("coffee"), root / "sub" / "near.jpg")
    config = replace(Config(), database=tmp_path / "d.db", hashing=HashingConfig(workers=1))
    store = Store(config.database)
    scan(config.with_roots([root]), store)
    yield store, root.resolve(), tmp_path / "quarantine"
    store.close()


def _rec(store: Store, path: Path) -> FileRecord:
    record = store.file_at(path)
    assert record is not None, path
    return record


def _sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _copies(sha: str, *folders: Path) -> list[Path]:
    return [p for f in folders for p in f.rglob("*") if p.is_file() and _sha(p) == sha]


def test_quarantine_moves_the_file_and_journals_what_a_restore_needs(setup) -> None:  # type: ignore[no-untyped-def]
    store, root, q = setup
    near, keeper = _rec(store, root / "sub" / "near.jpg"), _rec(store, root / "keeper.jpg")
    action_id = Actions(store, q).quarantine(near, keeper, 4, "keep: highest_resolution")
    dst = q / str(root).lstrip("/") / "sub" / "near.jpg"
    assert not (root / "sub" / "near.jpg").exists()
    assert _sha(dst) == near.sha256
    entry = store.action(action_id)
    assert entry is not None
    assert (
        entry.state,
        entry.src,
        entry.dst,
        entry.keeper_path,
        entry.distance,
        entry.reason,
    ) == (
        "done",
        str(root / "sub" / "near.jpg"),
        str(dst),
        str(root / "keeper.jpg"),
        4,
        "keep: highest_resolution",
    )
    assert _rec(store, root / "sub" / "near.jpg").state == "quarantined"
    assert store.tombstone(near.sha256 or "", str(near.path)) is not None


def test_quarantine_never_overwrites_a_file_already_in_quarantine(setup) -> None:  # type: ignore[no-untyped-def]
    store, root, q = setup
    taken = q / str(root).lstrip("/") / "dup.jpg"
    taken.parent.mkdir(parents=True)
    taken.write_bytes(b"someone else's file")
    Actions(store, q).quarantine(_rec(store, root / "dup.jpg"), None, 0, "test")
    assert taken.read_bytes() == b"someone else's file"
    assert _sha(taken.with_name("dup (1).jpg")) == _sha(root / "keeper.jpg")


def test_a_file_changed_since_hashing_is_not_moved(setup) -> None:  # type: ignore[no-untyped-def]
    store, root, q = setup
    record = _rec(store, root / "dup.jpg")
    os.utime(root / "dup.jpg", ns=(record.mtime_ns + 10**9, record.mtime_ns + 10**9))
    with pytest.raises(ActionError, match="changed since it was hashed"):
        Actions(store, q).quarantine(record, None, 0, "test")
    assert (root / "dup.jpg").exists()
    assert store.actions() == []


def test_quarantine_without_a_configured_folder_is_refused(setup) -> None:  # type: ignore[no-untyped-def]
    store, root, _ = setup
    with pytest.raises(ActionError, match=r"quarantine\.path is not configured"):
        Actions(store, None).quarantine(_rec(store, root / "dup.jpg"), None, 0, "test")
    assert (root / "dup.jpg").exists()


def test_cross_filesystem_quarantine_copies_verifies_then_unlinks(setup, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    store, root, q = setup

    def no_hard_links(*args: object, **kwargs: object) -> None:
        raise OSError(errno.EXDEV, "Invalid cross-device link")

    monkeypatch.setattr(dedupd.actions, "_link", no_hard_links)
    record = _rec(store, root / "dup.jpg")
    action_id = Actions(store, q).quarantine(record, None, 0, "test")
    entry = store.action(action_id)
    assert entry is not None and entry.state == "done"
    # The copy had no name until it was linked (O_TMPFILE), or a temporary one, now gone.
    assert entry.tmp is None or not Path(entry.tmp).exists()
    assert not list(q.rglob(".dedupd-*.tmp"))
    assert not (root / "dup.jpg").exists()
    assert _sha(Path(entry.dst)) == record.sha256
    assert os.stat(entry.dst).st_mtime_ns == record.mtime_ns  # copystat kept the times


def _links_refused(monkeypatch: pytest.MonkeyPatch) -> None:
    """Every hard link refused with EPERM, as on exFAT, or under `fs.protected_hardlinks`
    for a photo another user owns (the system unit's case)."""

    def refused(*args: object, **kwargs: object) -> None:
        raise OSError(errno.EPERM, "Operation not permitted")

    monkeypatch.setattr(dedupd.actions, "_link", refused)
    monkeypatch.setattr(os, "link", refused)


def test_where_links_are_refused_a_quarantine_renames_the_file_itself(  # type: ignore[no-untyped-def]
    setup, monkeypatch
) -> None:
    """Red team 11: on exFAT (no hard links) the quarantine could neither link the staged
    file into the quarantine nor back into its folder; the photo stayed in the staging
    folder, known to nothing. It is renamed into the quarantine instead, and back out."""
    store, root, q = setup
    _links_refused(monkeypatch)
    record = _rec(store, root / "dup.jpg")
    action_id = Actions(store, q).quarantine(record, None, 0, "test")
    entry = store.action(action_id)
    assert entry is not None and entry.state == "done" and entry.dst is not None
    assert os.stat(entry.dst).st_ino == record.inode  # the file itself, not a copy
    assert not (root / "dup.jpg").exists() and not (root / ".dedupd-staging").exists()
    restored = Actions(store, q).restore(action_id)  # and renamed back (red team 11: refused)
    assert restored == root / "dup.jpg" and os.stat(restored).st_ino == record.inode
    assert not Path(entry.dst).exists()


def test_where_links_are_refused_a_file_that_cannot_be_quarantined_goes_back(  # type: ignore[no-untyped-def]
    setup, monkeypatch
) -> None:
    """Red team 11: with the system unit, a photo of another user (no hard link allowed)
    whose quarantine on another, full disk failed could not be linked back either, and
    stayed in `.dedupd-staging` for good (3 of 3 runs). It is renamed back."""
    store, root, q = setup
    _links_refused(monkeypatch)

    def full(fd: int, data: object) -> int:
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(dedupd.actions, "_write", full)
    # the quarantine on another disk: no rename there either, a copy (which fills it)
    monkeypatch.setattr(dedupd.actions, "_renamed_in", lambda p, qdir: False, raising=False)
    record = _rec(store, root / "sub" / "near.jpg")
    with pytest.raises(ActionError, match="No space left"):
        Actions(store, q).quarantine(record, None, 3, "test")
    monkeypatch.undo()
    assert os.stat(root / "sub" / "near.jpg").st_ino == record.inode
    assert not (root / ".dedupd-staging").exists()
    assert [a.state for a in store.actions()] == ["failed"]


def test_a_file_put_back_where_links_are_refused_never_replaces_one_there(  # type: ignore[no-untyped-def]
    tmp_path: Path, monkeypatch
) -> None:
    """The rename that stands in for a link never replaces a file that took the name
    meanwhile: the staged file goes back under the next free name."""
    from dedupd.actions import _link_free

    _links_refused(monkeypatch)
    (tmp_path / "staging").mkdir()
    (tmp_path / "staging" / "token.jpg").write_bytes(b"staged photo")
    (tmp_path / "IMG_1.jpg").write_bytes(b"a new upload took the name")
    with safefs.directory(tmp_path / "staging") as sdir, safefs.directory(tmp_path) as folder:
        assert _link_free(sdir, "token.jpg", folder, "IMG_1.jpg") == ("IMG_1 (1).jpg", True)
    assert (tmp_path / "IMG_1.jpg").read_bytes() == b"a new upload took the name"
    assert (tmp_path / "IMG_1 (1).jpg").read_bytes() == b"staged photo"
    assert not (tmp_path / "staging" / "token.jpg").exists()


def test_exact_duplicate_is_deleted_only_after_its_keeper_is_verified(setup) -> None:  # type: ignore[no-untyped-def]
    store, root, q = setup
    dup, keeper = _rec(store, root / "dup.jpg"), _rec(store, root / "keeper.jpg")
    Actions(store, q).delete(dup, keeper, "exact duplicate")
    assert not (root / "dup.jpg").exists()
    assert (root / "keeper.jpg").exists()
    assert _rec(store, root / "dup.jpg").state == "deleted"


@pytest.mark.parametrize("action", ["delete", "quarantine"])
def test_a_file_another_program_has_open_for_writing_is_put_back(setup, action: str) -> None:  # type: ignore[no-untyped-def]
    """Red team 12: an upload written in place (scp, Samba) paused for longer than the settle
    time, and was then byte for byte a photo of the library: deleted as its exact duplicate,
    the rest of the upload was written into a file without a name."""
    store, root, q = setup
    dup, keeper = _rec(store, root / "dup.jpg"), _rec(store, root / "keeper.jpg")
    with writers.held_open_for_writing(root / "dup.jpg"):
        with pytest.raises(ActionError, match="open for writing in another program"):
            if action == "delete":
                Actions(store, q).delete(dup, keeper, "exact duplicate")
            else:
                Actions(store, q).quarantine(dup, keeper, 0, "exact duplicate")
        assert os.stat(root / "dup.jpg").st_ino == dup.inode  # put back: the writer's file
    assert _rec(store, root / "dup.jpg").state == "ok"
    assert [a.state for a in store.actions()] in ([], ["failed"])
    assert not q.exists() or not [p for p in q.rglob("*") if p.suffix == ".jpg"]
    Actions(store, q).delete(dup, keeper, "exact duplicate")  # closed: it may go now
    assert not (root / "dup.jpg").exists()


def test_near_duplicate_is_never_deleted(setup) -> None:  # type: ignore[no-untyped-def]
    store, root, q = setup
    near, keeper = _rec(store, root / "sub" / "near.jpg"), _rec(store, root / "keeper.jpg")
    with pytest.raises(ActionError, match="only exact duplicates"):
        Actions(store, q).delete(near, keeper, "test")
    assert (root / "sub" / "near.jpg").exists()


@pytest.mark.parametrize("keeper_problem", ["gone", "changed", "hard_link"])
def test_delete_is_refused_when_the_keeper_is_not_a_separate_identical_file(  # type: ignore[no-untyped-def]
    setup, keeper_problem: str
) -> None:
    store, root, q = setup
    dup, keeper = _rec(store, root / "dup.jpg"), _rec(store, root / "keeper.jpg")
    if keeper_problem == "gone":
        (root / "keeper.jpg").unlink()
    elif keeper_problem == "changed":
        (root / "keeper.jpg").write_bytes(b"edited since")
    else:
        (root / "keeper.jpg").unlink()
        os.link(root / "dup.jpg", root / "keeper.jpg")
    with pytest.raises(ActionError, match="nothing deleted"):
        Actions(store, q).delete(dup, keeper, "test")
    assert (root / "dup.jpg").exists()
    (entry,) = store.actions()
    assert entry.state == "failed" and "nothing deleted" in entry.error


def test_restore_puts_the_file_back_and_remembers_the_pair_as_distinct(setup) -> None:  # type: ignore[no-untyped-def]
    store, root, q = setup
    near, keeper = _rec(store, root / "sub" / "near.jpg"), _rec(store, root / "keeper.jpg")
    actions = Actions(store, q)
    action_id = actions.quarantine(near, keeper, 4, "test")
    assert actions.restore(action_id) == root / "sub" / "near.jpg"
    assert _sha(root / "sub" / "near.jpg") == near.sha256
    assert keeper.sha256 in store.distinct_from(near.sha256 or "")
    assert store.tombstone(near.sha256 or "", str(near.path)) is None
    with pytest.raises(ActionError, match="already restored"):
        actions.restore(action_id)


def test_restore_refuses_to_overwrite(setup) -> None:  # type: ignore[no-untyped-def]
    store, root, q = setup
    actions = Actions(store, q)
    action_id = actions.quarantine(_rec(store, root / "dup.jpg"), None, 0, "test")
    (root / "dup.jpg").write_bytes(b"a new photo took its name")
    with pytest.raises(ActionError, match="refusing to overwrite"):
        actions.restore(action_id)
    assert (root / "dup.jpg").read_bytes() == b"a new photo took its name"
    assert len(_copies(_sha(root / "keeper.jpg"), q)) == 1


def test_purge_deletes_only_quarantined_files_older_than_retention(setup) -> None:  # type: ignore[no-untyped-def]
    _, root, q = setup
    clock = [1000.0]
    store = Store(setup[0].path, now=lambda: clock[0])
    actions = Actions(store, q)
    old = actions.quarantine(_rec(store, root / "dup.jpg"), None, 0, "test")
    clock[0] = 5000.0
    actions.quarantine(_rec(store, root / "sub" / "near.jpg"), None, 4, "test")
    assert actions.purge(older_than=3000) == [old]
    remaining = [p.name for p in q.rglob("*.jpg")]
    assert remaining == ["near.jpg"]
    purge = store.actions("kind = 'purge'")
    assert [(p.state, p.of_action) for p in purge] == [("done", old)]


def test_a_delete_whose_keeper_is_on_another_filesystem_is_refused_by_descriptor(
    tmp_path: Path, elsewhere: Path
) -> None:
    """Another inode on another filesystem proves no other file: overlayfs, a mergerfs pool,
    an NFS loopback mount show a file of one filesystem under their own st_dev. A delete
    whose keeper is elsewhere is refused before anything is journaled or moved (here a real
    copy on tmpfs stands for such a view), and both files stay."""
    root = tmp_path / "photos"
    photos.copy(photos.photo("coffee"), root / "IMG_0001.jpg")
    photos.copy(photos.photo("coffee"), elsewhere / "IMG_0001.jpg")
    config = replace(Config(), database=tmp_path / "d.db", hashing=HashingConfig(workers=1))
    with Store(config.database) as store:
        scan(config.with_roots([root, elsewhere]), store)
        dup = _rec(store, root.resolve() / "IMG_0001.jpg")
        keeper = _rec(store, elsewhere / "IMG_0001.jpg")
        with pytest.raises(ActionError, match="another filesystem") as refused:
            Actions(store, tmp_path / "q").delete(dup, keeper, "exact duplicate")
        assert type(refused.value).__name__ == "KeeperElsewhere"  # engine quarantines then
        assert store.actions() == []
        assert _rec(store, dup.path).state == "ok"
    assert _sha(root / "IMG_0001.jpg") == _sha(elsewhere / "IMG_0001.jpg") == dup.sha256


def test_a_file_in_the_quarantine_folder_is_never_a_keeper(tmp_path: Path) -> None:
    """A photo recorded in a folder that later became `quarantine.path` (inside the root) is
    unknown to `quarantine list`: a user emptying that folder by hand would lose the only
    copy. Neither a delete nor a quarantine takes it as the keeper; nothing is journaled."""
    root = (tmp_path / "photos").resolve()
    photos.copy(photos.photo("coffee"), root / "Duplicates" / "IMG_0001.jpg")
    photos.copy(photos.photo("coffee"), root / "IMG_0001.jpg")
    config = replace(Config(), database=tmp_path / "d.db", hashing=HashingConfig(workers=1))
    with Store(config.database) as store:
        scan(config.with_roots([root]), store)
        upload = _rec(store, root / "IMG_0001.jpg")
        kept = _rec(store, root / "Duplicates" / "IMG_0001.jpg")
        actions = Actions(store, root / "Duplicates")
        with pytest.raises(ActionError, match="no keeper's place"):
            actions.delete(upload, kept, "exact duplicate")
        with pytest.raises(ActionError, match="no keeper's place"):
            actions.quarantine(upload, kept, 0, "exact duplicate")
        assert store.actions() == []
    assert _sha(root / "IMG_0001.jpg") == _sha(root / "Duplicates" / "IMG_0001.jpg")


@pytest.mark.parametrize("keeper_now", ["kept", "deleted", "edited", "unrecorded"])
def test_purge_deletes_a_quarantined_photo_only_while_its_keeper_is_there(  # type: ignore[no-untyped-def]
    setup, keeper_now: str
) -> None:
    """The quarantined copy may be the only one left: its keeper deleted since, or a view of
    this very file (an overlay or union mount) that went with it into quarantine. Purge then
    keeps it, journals why, and purges the others."""
    _, root, q = setup
    clock = [1000.0]
    store = Store(setup[0].path, now=lambda: clock[0])
    actions = Actions(store, q)
    near = _rec(store, root / "sub" / "near.jpg")
    quarantined = actions.quarantine(near, _rec(store, root / "keeper.jpg"), 4, "test")
    alone = actions.quarantine(_rec(store, root / "dup.jpg"), None, 0, "by hand")
    if keeper_now == "deleted":
        (root / "keeper.jpg").unlink()
    elif keeper_now == "edited":
        (root / "keeper.jpg").write_bytes(b"other bytes")
    elif keeper_now == "unrecorded":
        store.set_state(_rec(store, root / "keeper.jpg").id, "missing")
    clock[0] = 5000.0
    purged = actions.purge(older_than=3000)
    if keeper_now == "kept":
        assert purged == [quarantined, alone]
        return
    assert purged == [alone]  # quarantined by hand, with no keeper: purged as asked
    assert _copies(near.sha256 or "", q) != []
    (failed,) = store.actions("kind = 'purge' AND state = 'failed'")
    assert failed.of_action == quarantined
    assert "may be the only copy, so it is kept" in (failed.error or "")


@pytest.mark.parametrize("how", ["replaced", "edited in place"])
def test_a_keeper_changed_since_the_decision_is_no_keeper_for_a_quarantine(  # type: ignore[no-untyped-def]
    setup, how: str
) -> None:
    """The red team's stale keeper: the decision rests on the keeper's record, and the file
    at the keeper's name is another picture now (a sync client renamed another photo onto
    it, an editor saved a crop over it, while the daemon was down or before the change
    settled). Nothing moves: the copy may be the last of its picture."""
    store, root, q = setup
    dup, keeper = _rec(store, root / "dup.jpg"), _rec(store, root / "keeper.jpg")
    if how == "replaced":
        photos.copy(photos.photo("rocket"), root / "incoming.jpg")
        (root / "incoming.jpg").rename(root / "keeper.jpg")
    else:
        with (root / "keeper.jpg").open("r+b") as f:
            f.seek(0, os.SEEK_END)
            f.write(b"\0")  # its size, and mtime, change
    with pytest.raises(ActionError, match="changed since it was matched"):
        Actions(store, q).quarantine(dup, keeper, 0, "test")
    assert (root / "dup.jpg").exists() and _copies(dup.sha256 or "", q) == []
    assert store.actions() == []


@pytest.mark.parametrize("match", ["exact", "near"])
def test_purge_keeps_a_photo_whose_keeper_holds_another_picture_now_though_rehashed(  # type: ignore[no-untyped-def]
    setup, match: str
) -> None:
    """The red team's purge loss: quarantined against a keeper that was then replaced by
    another picture, and hashed again (its record names the new bytes). The purge checked
    the keeper against its record, found them equal, and deleted the last copy of the
    picture. The keeper must hold the bytes it held when the photo was quarantined (or the
    quarantined photo's own)."""
    store, root, q = setup
    actions = Actions(store, q)
    copy = _rec(store, root / ("dup.jpg" if match == "exact" else "sub/near.jpg"))
    quarantined = actions.quarantine(copy, _rec(store, root / "keeper.jpg"), 0, "test")
    assert store.action(quarantined).keeper_sha256 == _sha(root / "keeper.jpg")  # type: ignore[union-attr]
    photos.copy(photos.photo("rocket"), root / "incoming.jpg")
    (root / "incoming.jpg").rename(root / "keeper.jpg")
    store.record_hashed(str(root), "keeper.jpg", _rehash(root / "keeper.jpg"))
    assert _rec(store, root / "keeper.jpg").sha256 == _sha(root / "keeper.jpg")
    assert actions.purge(older_than=0) == []
    assert len(_copies(copy.sha256 or "", q)) == 1
    (failed,) = store.actions("kind = 'purge'")
    assert failed.state == "failed" and "no longer holds the bytes it held" in (failed.error or "")
    # A keeper that holds the quarantined photo's own bytes is a copy of it: purged.
    (in_quarantine,) = _copies(copy.sha256 or "", q)
    (root / "x").write_bytes(in_quarantine.read_bytes())
    (root / "x").rename(root / "keeper.jpg")
    assert actions.purge(older_than=0) == [quarantined]
    assert _copies(copy.sha256 or "", q) == []


@pytest.mark.parametrize("keeper_since", ["unchanged", "rehashed"])
def test_a_quarantine_journaled_before_the_keepers_bytes_were_is_purged_only_on_an_unchanged_record(  # type: ignore[no-untyped-def]
    setup, keeper_since: str
) -> None:
    """An entry of a dedupd before schema 16 has no keeper bytes: the keeper's record is
    trusted only while it is the one the quarantine was decided on (not updated since)."""
    _, root, q = setup
    clock = [time.time() + 10]  # after the scan that recorded the keeper
    store = Store(setup[0].path, now=lambda: clock[0])
    actions = Actions(store, q)
    near = _rec(store, root / "sub" / "near.jpg")
    quarantined = actions.quarantine(near, _rec(store, root / "keeper.jpg"), 4, "test")
    store.journal_update(quarantined, keeper_sha256=None)  # as an older dedupd journaled it
    clock[0] += 1000
    if keeper_since == "rehashed":  # the same bytes, hashed again: it may have been anything
        store.record_hashed(str(root), "keeper.jpg", _rehash(root / "keeper.jpg"))
    purged = actions.purge(older_than=0)
    assert purged == ([quarantined] if keeper_since == "unchanged" else [])
    assert bool(_copies(near.sha256 or "", q)) == (keeper_since == "rehashed")


@pytest.mark.parametrize("operation", ["purge", "delete"])
def test_a_keeper_replaced_while_its_bytes_are_read_saves_the_copy(  # type: ignore[no-untyped-def]
    setup, operation: str
) -> None:
    """The red team's e7: the keeper verified through its descriptor (a 12 MB file takes
    long enough to read), and meanwhile a sync client renamed another photo onto its name.
    The copy was deleted against a keeper that no longer had a name: the picture was gone.
    Its name is looked at again, just before the copy goes."""
    store, root, q = setup
    keeper, dup = _rec(store, root / "keeper.jpg"), _rec(store, root / "dup.jpg")

    def swap(step: str) -> None:
        if step == "verified" and not (root / "incoming.jpg").exists():
            photos.copy(photos.photo("rocket"), root / "incoming.jpg")
            (root / "incoming.jpg").rename(root / "keeper.jpg")

    if operation == "purge":
        quarantined = Actions(store, q).quarantine(dup, keeper, 0, "test")
        assert Actions(store, q, checkpoint=swap).purge(older_than=0) == []
        (failed,) = store.actions("kind = 'purge'")
        assert "was replaced while it was verified" in (failed.error or "")
        assert len(_copies(dup.sha256 or "", q)) == 1
        assert store.action(quarantined).state == "done"  # type: ignore[union-attr]
    else:
        with pytest.raises(ActionError, match="was replaced while it was verified"):
            Actions(store, q, checkpoint=swap).delete(dup, keeper, "test")
        assert (root / "dup.jpg").exists() and _sha(root / "dup.jpg") == dup.sha256


# -- kill -9 at every step ------------------------------------------------------------------

CHILD = textwrap.dedent(
    """
    import errno, os, signal, sys
    from pathlib import Path
    import dedupd.actions
    from dedupd.actions import Actions
    from dedupd.store import Store

    db, op, step, xdev, qdir, target, keeper, action_id = sys.argv[1:]

    def checkpoint(reached):
        if reached == step:
            os.kill(os.getpid(), signal.SIGKILL)

    if xdev == "1":
        def no_hard_links(*args, **kwargs):
            raise OSError(errno.EXDEV, "Invalid cross-device link")
        dedupd.actions._link = no_hard_links
    elif xdev == "2":  # no hard links at all (exFAT; another user's file, protected_hardlinks)
        def refused(*args, **kwargs):
            raise OSError(errno.EPERM, "Operation not permitted")
        dedupd.actions._link = os.link = refused
    store = Store(db)
    actions = Actions(store, Path(qdir), checkpoint=checkpoint)
    if op == "quarantine":
        actions.quarantine(store.file_at(target), store.file_at(keeper), 0, "crash test")
    elif op == "delete":
        actions.delete(store.file_at(target), store.file_at(keeper), "crash test")
    else:
        actions.restore(int(action_id))
    sys.exit(3)
    """
)


def kill_9_during(
    db: Path,
    op: str,
    step: str,
    quarantine: Path,
    target: Path,
    keeper: Path,
    *,
    xdev: bool = False,
    action_id: int = 0,
    no_links: bool = False,
) -> None:
    """Run one action in a child process that SIGKILLs itself right after `step`
    (`no_links`: where every hard link is refused)."""
    child = subprocess.run(
        [
            sys.executable,
            "-c",
            CHILD,
            str(db),
            op,
            step,
            "2" if no_links else "1" if xdev else "0",
            str(quarantine),
            str(target),
            str(keeper),
            str(action_id),
        ],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert child.returncode == -signal.SIGKILL, child.stderr


STEPS = [
    ("quarantine", False, "planned"),
    ("quarantine", False, "staged"),
    ("quarantine", False, "verified"),
    ("quarantine", False, "linked"),
    ("quarantine", False, "unlinked"),
    ("quarantine", False, "recorded"),
    ("quarantine", True, "planned"),
    ("quarantine", True, "staged"),
    ("quarantine", True, "copied"),
    ("quarantine", True, "linked"),
    ("quarantine", True, "unlinked"),
    ("delete", False, "planned"),
    ("delete", False, "staged"),
    ("delete", False, "verified"),
    ("delete", False, "unlinked"),
    ("delete", False, "recorded"),
    ("restore", False, "planned"),
    ("restore", False, "linked"),
    ("restore", False, "unlinked"),
    ("restore", True, "copied"),
    ("restore", True, "linked"),
]


@pytest.mark.parametrize(("op", "xdev", "step"), STEPS)
def test_kill_9_at_any_step_is_recovered_with_every_photo_exactly_once(  # type: ignore[no-untyped-def]
    setup, op: str, xdev: bool, step: str
) -> None:
    store, root, q = setup
    dup, keeper = root / "dup.jpg", root / "keeper.jpg"
    sha = _sha(keeper)
    action_id = 0
    if op == "restore":
        action_id = Actions(store, q).quarantine(_rec(store, dup), _rec(store, keeper), 0, "t")
        (root / "keeper.jpg").rename(root / "elsewhere.jpg")  # so only the dup carries `sha` here
        keeper = root / "elsewhere.jpg"
    kill_9_during(store.path, op, step, q, dup, root / "keeper.jpg", xdev=xdev, action_id=action_id)

    recovered = Actions(store, q).recover()
    assert len(recovered) == 1 and recovered[0].outcome in ("done", "rolled_back")
    assert store.actions("state = 'planned'") == []
    assert not list(q.rglob(".dedupd-*.tmp")), "temporary copies are cleaned up"
    if op == "delete":
        assert keeper.exists() and _sha(keeper) == sha
        assert dup.exists() == (recovered[0].outcome == "rolled_back")
    else:
        # The duplicate exists exactly once: in place, or in quarantine; never both or none.
        others = [keeper]
        in_place = dup.exists()
        in_quarantine = [p for p in _copies(sha, q)]
        assert in_place + len(in_quarantine) == 1, (in_place, in_quarantine)
        assert all(o.exists() for o in others)
    expected_state = {
        ("quarantine", "done"): "quarantined",
        ("delete", "done"): "deleted",
        ("restore", "done"): "missing",
    }.get((op, recovered[0].outcome))
    if expected_state:
        assert _rec(store, dup).state == expected_state
    if op != "restore" and recovered[0].outcome == "done":  # a copy synced back is known
        assert store.tombstone(sha, str(dup)) is not None


@pytest.mark.parametrize(
    ("op", "step"),
    [
        ("quarantine", "staged"),
        ("quarantine", "verified"),
        ("quarantine", "linked"),
        ("quarantine", "unlinked"),
        ("delete", "staged"),
        ("delete", "verified"),
        ("restore", "linked"),
        ("restore", "unlinked"),
    ],
)
def test_kill_9_where_links_are_refused_is_recovered_with_every_photo_exactly_once(  # type: ignore[no-untyped-def]
    setup, monkeypatch, op: str, step: str
) -> None:
    """Where no hard link can be made (exFAT; another user's photo under
    `fs.protected_hardlinks`), files are renamed instead, and a kill at any step is
    recovered by renames too: nothing is left in the staging folder (red team 11)."""
    store, root, q = setup
    dup, keeper = root / "dup.jpg", root / "keeper.jpg"
    sha = _sha(keeper)
    action_id = 0
    if op == "restore":
        action_id = Actions(store, q).quarantine(_rec(store, dup), _rec(store, keeper), 0, "t")
        keeper.rename(root / "elsewhere.jpg")  # so only the dup carries `sha` here
        keeper = root / "elsewhere.jpg"
    kill_9_during(store.path, op, step, q, dup, root / "keeper.jpg", action_id=action_id,
                  no_links=True)
    _links_refused(monkeypatch)
    recovered = Actions(store, q).recover()
    assert len(recovered) == 1 and recovered[0].outcome in ("done", "rolled_back"), recovered
    assert not (root / ".dedupd-staging").exists()
    if op == "delete":
        assert keeper.exists() and dup.exists() == (recovered[0].outcome == "rolled_back")
    else:
        assert dup.exists() + len(_copies(sha, q)) == 1
        assert keeper.exists()


def test_an_edit_saved_at_the_original_name_while_down_is_never_touched(setup) -> None:  # type: ignore[no-untyped-def]
    """Killed after the photo was linked into quarantine; then the user saves an edit at the
    original name. The photo was staged out of the folder first, so the name holds only the
    user's new file: recovery finishes the quarantine and leaves the edit alone."""
    store, root, q = setup
    dup = root / "dup.jpg"
    kill_9_during(store.path, "quarantine", "linked", q, dup, root / "keeper.jpg")
    edited = root / "edited.tmp"
    edited.write_bytes(b"the user's edit")
    os.replace(edited, dup)  # a new inode with other bytes at the original name
    (result,) = Actions(store, q).recover()
    assert result.outcome == "done"
    assert dup.read_bytes() == b"the user's edit"
    assert len(_copies(_sha(root / "keeper.jpg"), q)) == 1
    assert not (root / ".dedupd-staging").exists(), "no trace is left in the user's folder"


@pytest.mark.parametrize("keeper_kind", ["symlink", "hard_link", "gone"])
def test_quarantine_needs_a_keeper_that_is_another_real_file(setup, keeper_kind: str) -> None:  # type: ignore[no-untyped-def]
    store, root, q = setup
    dup, keeper = _rec(store, root / "dup.jpg"), _rec(store, root / "keeper.jpg")
    (root / "keeper.jpg").unlink()
    if keeper_kind == "symlink":
        os.symlink(root / "dup.jpg", root / "keeper.jpg")
    elif keeper_kind == "hard_link":
        os.link(root / "dup.jpg", root / "keeper.jpg")
    with pytest.raises(ActionError, match="nothing done"):
        Actions(store, q).quarantine(dup, keeper, 0, "test")
    assert (root / "dup.jpg").exists()
    assert store.actions() == []


def test_purge_keeps_and_restore_returns_bytes_that_changed_in_quarantine(setup) -> None:  # type: ignore[no-untyped-def]
    """An edit that reached the quarantined file (an editor that had it open) is the user's
    newest version: purge never deletes it, and restore puts it back (issue 9, item 3)."""
    store, root, q = setup
    actions = Actions(store, q)
    action_id = actions.quarantine(_rec(store, root / "dup.jpg"), None, 0, "test")
    dst = Path(store.action(action_id).dst)  # type: ignore[index]
    dst.write_bytes(b"not the quarantined photo any more")
    assert actions.purge(older_than=0) == []
    assert dst.read_bytes() == b"not the quarantined photo any more"
    (purge,) = store.actions("kind = 'purge'")
    assert purge.state == "failed" and f"quarantine restore {action_id}" in purge.error
    assert actions.restore(action_id) == root / "dup.jpg"
    assert (root / "dup.jpg").read_bytes() == b"not the quarantined photo any more"
    assert not dst.exists()
    (restore,) = store.actions("kind = 'restore'")
    assert restore.state == "done" and "changed in quarantine" in restore.reason


def test_restore_forgets_every_earlier_removal_of_that_photo_from_that_path(setup) -> None:  # type: ignore[no-untyped-def]
    """Quarantined, synced back, quarantined again, restored: no tombstone may remain, or
    the next scan would quarantine the restored photo once more."""
    store, root, q = setup
    actions = Actions(store, q)
    keeper = _rec(store, root / "keeper.jpg")
    actions.quarantine(_rec(store, root / "dup.jpg"), keeper, 0, "first")
    photos.copy(photos.photo("coffee"), root / "dup.jpg")  # the phone uploads it again
    second = store.record_hashed(str(root), "dup.jpg", _rehash(root / "dup.jpg"))
    record = store.file(second)
    assert record is not None
    action_id = actions.quarantine(record, keeper, 0, "tombstone")
    actions.restore(action_id)
    assert store.tombstone(record.sha256 or "", str(root / "dup.jpg")) is None


def _rehash(path: Path):  # type: ignore[no-untyped-def]
    from dedupd.imaging import hash_image

    return hash_image(str(path), [], max_pixels=10**9)


def test_a_purge_of_a_folder_removed_from_quarantine_by_hand_clears_its_entries(setup) -> None:  # type: ignore[no-untyped-def]
    """The user removed a folder from quarantine themselves: its files are gone, and a purge
    says so (the entries leave the list). Before, every purge kept them ("not reachable")
    forever. Without the folder's marker (its disk perhaps not mounted) nothing is
    concluded: the entries stay."""
    from dedupd.actions import QUARANTINE_MARKER

    store, root, q = setup
    actions = Actions(store, q)
    near = _rec(store, root / "sub" / "near.jpg")
    action_id = actions.quarantine(near, None, 4, "test")
    (q / QUARANTINE_MARKER).rename(q / "aside")
    shutil.rmtree(q / str(root).lstrip("/") / "sub")
    assert actions.purge(0) == []  # not known to be mounted: kept listed
    assert [e.id for e in store.quarantined()] == [action_id]
    (q / "aside").rename(q / QUARANTINE_MARKER)
    assert actions.purge(0) == [action_id]
    assert store.quarantined() == []


def test_purge_with_only_deletes_just_the_confirmed_entries(setup) -> None:  # type: ignore[no-untyped-def]
    store, root, q = setup
    actions = Actions(store, q)
    first = actions.quarantine(_rec(store, root / "dup.jpg"), None, 0, "test")
    second = actions.quarantine(_rec(store, root / "sub" / "near.jpg"), None, 4, "test")
    assert actions.purge(older_than=0, only={second}) == [second]
    assert [e.id for e in store.quarantined()] == [first]


def test_a_delete_killed_after_its_record_is_done_though_a_copy_came_back(  # type: ignore[no-untyped-def]
    setup,
) -> None:
    """Killed at `recorded` (the photo deleted, its record and tombstone written, the
    journal still planned); while dedupd is down a sync client brings the same bytes back
    to the name. That file is another one: the delete is concluded done, not "rolled back"
    (which the returned copy made it look like), and the record keeps saying deleted. The
    copy is decided as a newcomer by the next scan (its tombstone). (Review finding.)"""
    store, root, q = setup
    dup, keeper = root / "dup.jpg", root / "keeper.jpg"
    kill_9_during(store.path, "delete", "recorded", q, dup, keeper)
    shutil.copyfile(keeper, dup)  # synced back while down
    (result,) = Actions(store, q).recover()
    assert result.outcome == "done"
    assert _rec(store, dup).state == "deleted"
    assert store.tombstone(_sha(keeper), str(dup)) is not None


def test_a_restore_never_makes_a_root_that_is_not_there(setup) -> None:  # type: ignore[no-untyped-def]
    """The root's disk is not mounted (its folder is missing): a restore is refused and the
    photo stays in quarantine, rather than the root's folders being made anew on whatever
    disk holds the mount point, where the photo would hide under the mounted disk (and the
    next reconcile would take the made-up root for the real one). Once the root is back,
    the restore goes ahead; a removed folder inside the root is made again."""
    store, root, q = setup
    actions = Actions(store, q)
    near = _rec(store, root / "sub" / "near.jpg")
    action_id = actions.quarantine(near, None, 4, "test")
    entry = store.action(action_id)
    assert entry is not None and entry.dst is not None
    unmounted = root.with_name("photos-unmounted")
    os.rename(root, unmounted)
    with pytest.raises(ActionError, match="not reachable"):
        actions.restore(action_id)
    assert not root.exists()
    assert _sha(Path(entry.dst)) == near.sha256
    os.rename(unmounted, root)
    shutil.rmtree(root / "sub")
    assert actions.restore(action_id) == root / "sub" / "near.jpg"
    assert _sha(root / "sub" / "near.jpg") == near.sha256


@pytest.mark.skipif(os.geteuid() != 0, reason="another user's folder: needs root")
def test_a_folder_a_restore_makes_again_belongs_to_the_owner_of_the_folder_above(
    setup,  # type: ignore[no-untyped-def]
) -> None:
    """The red team's restore_owner: Alice removed the folder a quarantined photo came from;
    the restore made it again as root's (0755), and she could no longer move or delete her
    own photo. Folders a restore makes are given to the owner of the folder above."""
    store, root, q = setup
    actions = Actions(store, q)
    near = _rec(store, root / "sub" / "near.jpg")
    action_id = actions.quarantine(near, None, 4, "test")
    shutil.rmtree(root / "sub")
    os.chown(root, 23456, 23457)  # Alice's
    assert actions.restore(action_id) == root / "sub" / "near.jpg"
    made = os.stat(root / "sub")
    assert (made.st_uid, made.st_gid) == (23456, 23457)


@pytest.mark.skipif(os.geteuid() != 0, reason="another user's folder: needs root")
def test_a_restore_goes_on_where_the_filesystem_refuses_root_a_chown(
    setup,  # type: ignore[no-untyped-def]
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """NFS with root_squash refuses root a chown: the folder stays root's, and the photo is
    restored all the same (found by review: the restore failed, leaving the folder made)."""
    import errno

    store, root, q = setup
    actions = Actions(store, q)
    near = _rec(store, root / "sub" / "near.jpg")
    action_id = actions.quarantine(near, None, 4, "test")
    shutil.rmtree(root / "sub")
    os.chown(root, 23456, 23457)

    def refused(*args: object, **kw: object) -> None:
        raise PermissionError(errno.EPERM, "Operation not permitted")

    monkeypatch.setattr(os, "fchown", refused)
    monkeypatch.setattr(os, "chown", refused)
    assert actions.restore(action_id) == root / "sub" / "near.jpg"
    assert _sha(root / "sub" / "near.jpg") == near.sha256


def test_a_restore_whose_quarantine_name_cannot_be_dropped_is_done(
    setup, monkeypatch: pytest.MonkeyPatch  # type: ignore[no-untyped-def]
) -> None:
    """The photo is back at its name, but its quarantine name cannot be removed (EIO from a
    failing quarantine disk): the restore is done, the spare copy left and logged. Before, it
    was journaled failed with the photo back: still listed in quarantine, and every later
    restore refused ("exists")."""
    store, root, q = setup
    actions = Actions(store, q)
    near = _rec(store, root / "sub" / "near.jpg")
    action_id = actions.quarantine(near, None, 4, "test")
    real_unlink = os.unlink

    def failing_disk(path: object, *args: object, dir_fd: int | None = None) -> None:
        if dir_fd is not None and path == "near.jpg" and (root / "sub" / "near.jpg").exists():
            raise OSError(errno.EIO, "Input/output error")
        real_unlink(path, *args, dir_fd=dir_fd)  # type: ignore[arg-type]

    monkeypatch.setattr(os, "unlink", failing_disk)
    assert actions.restore(action_id) == root / "sub" / "near.jpg"
    monkeypatch.undo()
    assert _sha(root / "sub" / "near.jpg") == near.sha256
    assert [a.id for a in store.quarantined()] == []
    (restore,) = store.actions("kind = 'restore'")
    assert restore.state == "done"


def test_a_long_name_taken_in_quarantine_gets_a_shortened_free_name(setup) -> None:  # type: ignore[no-untyped-def]
    """255 bytes is the longest name: when quarantine already holds one of that name,
    `name (1).jpg` would not fit, so the stem is cut (the quarantine was refused, every
    time, with "File name too long")."""
    store, root, q = setup
    long = "L" * 251 + ".jpg"
    os.rename(root / "dup.jpg", root / long)
    scan(replace(Config(), database=store.path, hashing=HashingConfig(workers=1)).with_roots(
        [root]), store)
    record = _rec(store, root / long)
    taken = q / str(root).lstrip("/") / long
    taken.parent.mkdir(parents=True)
    taken.write_bytes(b"someone else's file")
    action_id = Actions(store, q).quarantine(record, None, 0, "test")
    entry = store.action(action_id)
    assert entry is not None and entry.dst is not None
    placed = Path(entry.dst)
    assert placed.name.endswith(" (1).jpg") and len(os.fsencode(placed.name)) <= 255
    assert _sha(placed) == record.sha256
    assert taken.read_bytes() == b"someone else's file"


@pytest.mark.parametrize("unmounted", ["missing", "empty"])
def test_a_quarantine_folder_whose_disk_is_not_mounted_is_refused(setup, unmounted: str) -> None:  # type: ignore[no-untyped-def]
    """The quarantine folder on a USB disk or a NAS share not mounted now: missing (the mount
    point's parent is there) or an empty mount point. dedupd has quarantined into it before,
    so it refuses and moves nothing: a photo put there would land on the mount point's disk
    and hide under the disk once mounted (restore then finds nothing). Before, the folder
    was made anew. The first quarantine ever makes the folder and its marker; a user who
    emptied it on purpose creates the marker to go on."""
    from dedupd.actions import QUARANTINE_MARKER

    store, root, q = setup
    keeper = _rec(store, root / "keeper.jpg")
    assert not q.exists()
    Actions(store, q).quarantine(_rec(store, root / "dup.jpg"), keeper, 0, "t")  # first use
    assert (q / QUARANTINE_MARKER).is_file()
    q.rename(q.with_name("the-disk"))  # unmounted: what was on it is elsewhere now
    if unmounted == "empty":
        q.mkdir()
    near = _rec(store, root / "sub" / "near.jpg")
    with pytest.raises(ActionError, match="is its disk mounted"):
        Actions(store, q).quarantine(near, keeper, 4, "t")
    assert (root / "sub" / "near.jpg").exists()
    assert q.exists() == (unmounted == "empty")
    assert not q.exists() or not list(q.iterdir())  # nothing made there
    assert _rec(store, root / "sub" / "near.jpg").state == "ok"
    q.mkdir(exist_ok=True)
    (q / QUARANTINE_MARKER).touch()  # "I emptied it myself"
    Actions(store, q).quarantine(near, keeper, 4, "t")
    assert not (root / "sub" / "near.jpg").exists()
    assert _rec(store, root / "sub" / "near.jpg").state == "quarantined"


def test_a_quarantine_folder_of_files_from_before_its_marker_is_marked(setup) -> None:  # type: ignore[no-untyped-def]
    """A quarantine folder that holds files but no marker (made by an older dedupd) is the
    mounted one: it is marked and used."""
    from dedupd.actions import QUARANTINE_MARKER

    store, root, q = setup
    keeper = _rec(store, root / "keeper.jpg")
    Actions(store, q).quarantine(_rec(store, root / "dup.jpg"), keeper, 0, "t")
    (q / QUARANTINE_MARKER).unlink()
    Actions(store, q).quarantine(_rec(store, root / "sub" / "near.jpg"), keeper, 4, "t")
    assert (q / QUARANTINE_MARKER).is_file()
    assert _rec(store, root / "sub" / "near.jpg").state == "quarantined"


def test_a_file_in_an_earlier_quarantine_is_never_a_keeper(setup) -> None:  # type: ignore[no-untyped-def]
    """A folder holding the quarantine's marker is an earlier configuration's quarantine: a
    record made there before walks skipped it stays `ok` until a walk finds it gone, and
    must not be the keeper a delete rests on (review)."""
    from dedupd.actions import QUARANTINE_MARKER

    store, root, q = setup
    (root / "old-quarantine").mkdir()
    (root / "old-quarantine" / QUARANTINE_MARKER).touch()
    keeper = _rec(store, root / "keeper.jpg")
    (root / "keeper.jpg").rename(root / "old-quarantine" / "keeper.jpg")  # recorded there
    moved = root / "old-quarantine" / "keeper.jpg"
    store.move(keeper.id, str(root), "old-quarantine/keeper.jpg", FileStat.of(os.stat(moved)))
    dup, keeper = _rec(store, root / "dup.jpg"), _rec(store, moved)
    with pytest.raises(ActionError, match="no keeper's place"):
        Actions(store, q).delete(dup, keeper, "exact duplicate")
    assert (root / "dup.jpg").exists()
