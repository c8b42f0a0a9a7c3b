"""Attacks on the actions: races through the checkpoint seam, symlink swaps, unreadable
keepers, a full quarantine disk, and a seeded kill -9 campaign.

Invariant 1 of DESIGN.md: a file leaves its folder only into quarantine or by a verified
exact-duplicate delete, and nothing outside the roots and the quarantine is ever touched,
whatever a local user does to the names while dedupd acts. Each race is driven at every step
of the operation (the `checkpoint` seam), on one filesystem and across two.
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import json
import os
import random
import shutil
import signal
import sys
from collections.abc import Callable, Iterator
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, BinaryIO

import pytest

import dedupd.actions
from dedupd import safefs
from dedupd.actions import ActionError, Actions
from dedupd.config import DEFAULT_POLICY, Config, HashingConfig, Policy
from dedupd.engine import scan
from dedupd.filestat import FileStat
from dedupd.store import FileRecord, Store
from tests import photos

SHM = Path("/dev/shm")


def _other_filesystem(tmp_path: Path) -> Path | None:
    """A folder on another filesystem than tmp_path (tmpfs), or None where there is none."""
    if SHM.is_dir() and os.access(SHM, os.W_OK) and os.stat(SHM).st_dev != tmp_path.stat().st_dev:
        return SHM
    return None


@dataclass
class Lib:
    store: Store
    root: Path
    quarantine: Path
    outside: Path  # a folder outside the roots and the quarantine that must never change

    def rec(self, path: Path) -> FileRecord:
        record = self.store.file_at(path)
        assert record is not None, path
        return record


def _sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _copies(sha: str, *folders: Path) -> list[Path]:
    return [
        p
        for f in folders
        for p in f.rglob("*")
        if p.is_file() and not p.is_symlink() and _sha(p) == sha
    ]


def _snapshot(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in folder.rglob("*") if p.is_file()}


@pytest.fixture(params=["same-fs", "cross-fs"])
def lib(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Lib]:
    """keeper.jpg, sub/dup.jpg (its exact copy) and sub/near.jpg (a re-encode), scanned;
    the quarantine on the same filesystem, or on another one (tmpfs) when there is one."""
    if request.param == "cross-fs":
        other = _other_filesystem(tmp_path)
        if other is None:
            pytest.skip("no second filesystem (tmpfs at /dev/shm) on this machine")
        quarantine = Path(
            os.path.realpath(other / f"dedupd-test-{os.getpid()}-{tmp_path.name}")
        )
    else:
        quarantine = tmp_path / "quarantine"
    root = tmp_path / "photos"
    photos.copy(photos.photo("coffee"), root / "keeper.jpg")
    photos.copy(photos.photo("coffee"), root / "sub" / "dup.jpg")
    photos.reencode(photos.photo("coffee"), root / "sub" / "near.jpg")
    outside = tmp_path / "root-only"
    photos.copy(photos.photo("coffee"), outside / "dup.jpg")  # same name, same bytes
    photos.copy(photos.photo("rocket"), outside / "near.jpg")
    config = replace(Config(), database=tmp_path / "d.db", hashing=HashingConfig(workers=1))
    store = Store(config.database)
    scan(config.with_roots([root]), store)
    yield Lib(store, root.resolve(), quarantine, outside)
    store.close()
    if request.param == "cross-fs":
        import shutil

        shutil.rmtree(quarantine, ignore_errors=True)


def _at(step: str, attack: Callable[[], None]) -> Callable[[str], None]:
    fired: list[str] = []

    def checkpoint(reached: str) -> None:
        if reached == step and not fired:
            fired.append(step)
            attack()

    return checkpoint


QUARANTINE_STEPS = ["planned", "staged", "verified", "linked"]
DELETE_STEPS = ["planned", "staged", "verified"]


def _new_photo_renamed_onto(path: Path, tmp_path: Path) -> bytes:
    """Upload a different photo and rename it over `path` (what a sync client does)."""
    upload = tmp_path / "upload.tmp"
    photos.copy(photos.photo("rocket"), upload)
    data = upload.read_bytes()
    os.replace(upload, path)
    return data


@pytest.mark.parametrize("step", DELETE_STEPS)
def test_a_photo_renamed_onto_the_name_during_a_delete_is_never_deleted(
    lib: Lib, tmp_path: Path, step: str
) -> None:
    """Issue 9, item 1: the unlink must hit the verified duplicate, not what the name
    points to by then. The new photo survives, in the folder, whatever the step."""
    dup, keeper = lib.rec(lib.root / "sub" / "dup.jpg"), lib.rec(lib.root / "keeper.jpg")
    new: list[bytes] = []
    attack = _at(step, lambda: new.append(_new_photo_renamed_onto(dup.path, tmp_path)))
    actions = Actions(lib.store, lib.quarantine, checkpoint=attack)
    with contextlib.suppress(ActionError):
        actions.delete(dup, keeper, "exact duplicate")
    (data,) = new
    survivors = [p for p in lib.root.rglob("*.jpg") if p.read_bytes() == data]
    assert len(survivors) == 1, "the new photo exists exactly once, in the folder"
    assert (lib.root / "keeper.jpg").exists()
    assert lib.store.actions("state = 'planned'") == []
    assert not (lib.root / safefs.STAGING_DIR).exists()


@pytest.mark.parametrize("step", QUARANTINE_STEPS)
def test_a_photo_renamed_onto_the_name_during_a_quarantine_stays_in_the_folder(
    lib: Lib, tmp_path: Path, step: str
) -> None:
    """Issue 9, item 1: a new photo renamed over a duplicate while it is being quarantined
    is never moved into quarantine (where a restore would refuse it) and never lost."""
    near, keeper = lib.rec(lib.root / "sub" / "near.jpg"), lib.rec(lib.root / "keeper.jpg")
    new: list[bytes] = []
    attack = _at(step, lambda: new.append(_new_photo_renamed_onto(near.path, tmp_path)))
    actions = Actions(lib.store, lib.quarantine, checkpoint=attack)
    with contextlib.suppress(ActionError):
        actions.quarantine(near, keeper, 4, "near duplicate")
    (data,) = new
    survivors = [p for p in lib.root.rglob("*.jpg") if p.read_bytes() == data]
    assert len(survivors) == 1, "the new photo exists exactly once, in the folder"
    in_quarantine = _in_quarantine(lib)
    assert all(p.read_bytes() != data for p in in_quarantine)
    # The re-encode exists exactly once: in the folder or in quarantine (unless the rename
    # itself replaced it before dedupd took it out of the folder: the user's doing).
    copies = len(_copies(near.sha256 or "", lib.root, lib.quarantine))
    assert copies == (0 if step == "planned" else 1)


def _swap_for_symlink(folder: Path, target: Path) -> None:
    """What an unprivileged owner of the watched folder can do: move a subfolder away and
    put a symlink to somewhere else in its place."""
    os.rename(folder, folder.with_name(folder.name + "-moved"))
    os.symlink(target, folder)


@pytest.mark.parametrize("step", DELETE_STEPS)
def test_a_folder_swapped_for_a_symlink_during_a_delete_touches_nothing_outside(
    lib: Lib, step: str
) -> None:
    """Issue 9, item 2: with sub/ swapped for a link to a root-only folder holding a file of
    the same name and bytes, that file is never deleted."""
    before = _snapshot(lib.outside)
    dup, keeper = lib.rec(lib.root / "sub" / "dup.jpg"), lib.rec(lib.root / "keeper.jpg")
    attack = _at(step, lambda: _swap_for_symlink(lib.root / "sub", lib.outside))
    with contextlib.suppress(ActionError):
        Actions(lib.store, lib.quarantine, checkpoint=attack).delete(dup, keeper, "exact")
    assert _snapshot(lib.outside) == before
    assert (lib.root / "keeper.jpg").exists()


@pytest.mark.parametrize("step", QUARANTINE_STEPS)
def test_a_folder_swapped_for_a_symlink_during_a_quarantine_touches_nothing_outside(
    lib: Lib, step: str
) -> None:
    before = _snapshot(lib.outside)
    dup, keeper = lib.rec(lib.root / "sub" / "dup.jpg"), lib.rec(lib.root / "keeper.jpg")
    attack = _at(step, lambda: _swap_for_symlink(lib.root / "sub", lib.outside))
    with contextlib.suppress(ActionError):
        Actions(lib.store, lib.quarantine, checkpoint=attack).quarantine(dup, keeper, 0, "x")
    assert _snapshot(lib.outside) == before
    assert len(_copies(dup.sha256 or "", lib.root, lib.quarantine)) == 2  # keeper + dup


def test_a_symlink_in_place_of_a_folder_before_the_action_is_refused(lib: Lib) -> None:
    before = _snapshot(lib.outside)
    dup, keeper = lib.rec(lib.root / "sub" / "dup.jpg"), lib.rec(lib.root / "keeper.jpg")
    _swap_for_symlink(lib.root / "sub", lib.outside)
    with pytest.raises(ActionError, match="symbolic link"):
        Actions(lib.store, lib.quarantine).delete(dup, keeper, "exact")
    assert _snapshot(lib.outside) == before
    assert lib.store.actions() == []


def test_restore_through_a_symlinked_parent_plants_nothing_outside(lib: Lib) -> None:
    """Issue 9, item 2: restoring into sub/ after sub/ became a link to a root-only folder
    is refused; the photo stays in quarantine, restorable once the folder is real again."""
    actions = Actions(lib.store, lib.quarantine)
    dup, keeper = lib.rec(lib.root / "sub" / "dup.jpg"), lib.rec(lib.root / "keeper.jpg")
    action_id = actions.quarantine(dup, keeper, 0, "exact")
    empty = lib.outside.parent / "root-only-empty"
    empty.mkdir()
    _swap_for_symlink(lib.root / "sub", empty)
    with pytest.raises(ActionError, match="symbolic link"):
        actions.restore(action_id)
    assert list(empty.iterdir()) == []
    assert len(_copies(dup.sha256 or "", lib.quarantine)) == 1
    (lib.root / "sub").unlink()
    assert actions.restore(action_id) == lib.root / "sub" / "dup.jpg"
    assert _sha(lib.root / "sub" / "dup.jpg") == dup.sha256


def test_an_edit_saved_over_the_name_right_after_the_quarantine_link_is_kept(
    lib: Lib,
) -> None:
    """Issue 9, item 3: an editor saving at the original name right after the link writes a
    new file there; the quarantined copy keeps the original bytes and stays restorable."""
    near, keeper = lib.rec(lib.root / "sub" / "near.jpg"), lib.rec(lib.root / "keeper.jpg")

    def save_edit() -> None:
        with open(near.path, "wb") as f:  # truncate-and-write, as editors save
            f.write(b"the user's edit")

    actions = Actions(lib.store, lib.quarantine, checkpoint=_at("linked", save_edit))
    action_id = actions.quarantine(near, keeper, 4, "near")
    assert near.path.read_bytes() == b"the user's edit"
    (quarantined,) = _copies(near.sha256 or "", lib.quarantine)
    entry = lib.store.action(action_id)
    assert entry is not None and Path(entry.dst or "") == quarantined


def test_an_unreadable_keeper_fails_one_action_cleanly(
    lib: Lib, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Issue 9, item 4: a keeper the service cannot read makes that delete fail, journaled
    as failed (not left planned), with the duplicate back in place."""
    dup, keeper = lib.rec(lib.root / "sub" / "dup.jpg"), lib.rec(lib.root / "keeper.jpg")
    real_open = safefs.open_file_at

    def denied(dir_fd: int, name: str) -> int:
        if name == "keeper.jpg":
            raise PermissionError(errno.EACCES, "Permission denied", name)
        return real_open(dir_fd, name)

    monkeypatch.setattr(safefs, "open_file_at", denied)
    with pytest.raises(ActionError, match="nothing deleted"):
        Actions(lib.store, lib.quarantine).delete(dup, keeper, "exact")
    (entry,) = lib.store.actions()
    assert entry.state == "failed" and "cannot be read: Permission denied" in (entry.error or "")
    assert _sha(lib.root / "sub" / "dup.jpg") == dup.sha256
    assert not (lib.root / safefs.STAGING_DIR).exists()


def test_an_unreadable_keeper_does_not_hold_up_the_other_files_of_a_scan(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Issue 9, item 4: the rest of the batch is acted on in the same pass."""
    root = tmp_path / "photos"
    for name in ("coffee", "rocket", "hubble"):
        photos.copy(photos.photo(name), root / f"{name}.jpg")
    config = replace(
        Config(),
        database=tmp_path / "d.db",
        hashing=HashingConfig(workers=1),
        policies={DEFAULT_POLICY: Policy(exact="delete")},
    ).with_roots([root])
    with Store(config.database) as store:
        scan(config, store, actions=Actions(store, None))
        for name in ("coffee", "rocket", "hubble"):
            photos.copy(photos.photo(name), root / f"{name}-copy.jpg")
        real_open = safefs.open_file_at

        def denied(dir_fd: int, name: str) -> int:
            if name == "rocket.jpg":
                raise PermissionError(errno.EACCES, "Permission denied", name)
            return real_open(dir_fd, name)

        monkeypatch.setattr(safefs, "open_file_at", denied)
        report = scan(config, store, actions=Actions(store, None))
        assert sorted(p.name for p in root.iterdir()) == [
            "coffee.jpg",
            "hubble.jpg",
            "rocket-copy.jpg",
            "rocket.jpg",
        ]
        results = {Path(o.path).name: o.result for o in report.outcomes}
        assert results["rocket-copy.jpg"].startswith("failed")
        assert store.actions("state = 'planned'") == []


def test_a_full_quarantine_disk_leaves_no_partial_copy(
    lib: Lib, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Issue 9, item 10: ENOSPC while copying across filesystems removes the partial copy
    and puts the photo back."""
    written: list[int] = []

    def no_hard_links(*args: object, **kwargs: object) -> None:
        raise OSError(errno.EXDEV, "Invalid cross-device link")

    def disk_fills_up(fd: int, data: memoryview) -> int:
        if written:
            raise OSError(errno.ENOSPC, "No space left on device")
        written.append(len(data))
        return os.write(fd, data[: len(data) // 2])

    monkeypatch.setattr(dedupd.actions, "_link", no_hard_links)
    monkeypatch.setattr(dedupd.actions, "_write", disk_fills_up)
    near, keeper = lib.rec(lib.root / "sub" / "near.jpg"), lib.rec(lib.root / "keeper.jpg")
    with pytest.raises(ActionError, match="No space left"):
        Actions(lib.store, lib.quarantine).quarantine(near, keeper, 4, "near")
    assert written, "the copy was attempted"
    assert not _in_quarantine(lib)
    assert _sha(lib.root / "sub" / "near.jpg") == near.sha256
    (entry,) = lib.store.actions()
    assert entry.state == "failed"


def test_a_staging_folder_made_by_someone_else_is_refused(lib: Lib) -> None:
    """A user who pre-creates .dedupd-staging as a link (or a folder of theirs) gets an
    error, not a rename into their place."""
    os.symlink(lib.outside, lib.root / safefs.STAGING_DIR)
    before = _snapshot(lib.outside)
    dup, keeper = lib.rec(lib.root / "sub" / "dup.jpg"), lib.rec(lib.root / "keeper.jpg")
    with pytest.raises(ActionError, match="not a folder"):
        Actions(lib.store, lib.quarantine).delete(dup, keeper, "exact")
    assert _snapshot(lib.outside) == before
    assert (lib.root / "sub" / "dup.jpg").exists()


@pytest.mark.parametrize("relative", [False, True], ids=["absolute", "relative"])
def test_a_quarantine_folder_swapped_for_a_users_link_before_a_start_is_not_followed(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, relative: bool
) -> None:
    """A user who may write the folder above the quarantine swaps it for a link of theirs
    (to /etc, say) while dedupd is down. `dedupd scan` (root, like the service) must not
    follow it: it resolved the configured path once with realpath, so made folders, a marker
    file and the quarantined copies wherever the link pointed. Now the link is refused and
    the duplicate stays in its folder."""
    from click.testing import CliRunner

    from dedupd.cli import dedupd

    root, outside = tmp_path / "photos", tmp_path / "etc"
    photos.copy(photos.photo("coffee"), root / "coffee.jpg")
    os.utime(root / "coffee.jpg", (1_000_000_000, 1_000_000_000))  # the older: the keeper
    photos.copy(photos.photo("coffee"), root / "sub" / "coffee (1).jpg")
    outside.mkdir()
    (outside / "passwd").write_text("root:x:0:0\n")
    link = tmp_path / "q"
    link.symlink_to(outside)
    if os.geteuid() == 0:
        os.lchown(link, 65534, 65534)  # nobody's link
    else:  # a link of another user cannot be made: take this one for one
        trusted = safefs._trusted_link
        mine = os.lstat(link).st_ino
        monkeypatch.setattr(
            safefs, "_trusted_link", lambda st: st.st_ino != mine and trusted(st)
        )
    config = tmp_path / "dedupd.yaml"
    config.write_text(
        f"database: {tmp_path / 'dedupd.db'}\n"
        f"roots: [{{path: {root}, policy: camera}}]\n"
        "policies:\n  camera: {exact: quarantine}\n"
        f"quarantine: {{path: {'q' if relative else link}}}\n"
    )
    before = _snapshot(outside)
    result = CliRunner().invoke(dedupd, ["scan", "--config", str(config), "--workers", "1"])
    assert result.exit_code == 0, result.output
    assert f"{link} is a symbolic link or not a folder; links are not followed" in result.output
    assert _snapshot(outside) == before
    assert sorted(p.name for p in outside.iterdir()) == ["passwd"]
    assert (root / "sub" / "coffee (1).jpg").exists()


# -- a rolled-back delete is decided again --------------------------------------------------


def _fork_and_kill_at(run: Callable[[Callable[[str], None]], None], kill_at: int) -> bool:
    """Run `run(checkpoint)` in a forked child that SIGKILLs itself at the `kill_at`-th
    checkpoint. Returns True if it was killed, False if it finished first."""
    pid = os.fork()
    if pid == 0:  # the child: never returns into pytest
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
        assert os.WTERMSIG(status) == signal.SIGKILL
        return True
    code = os.WEXITSTATUS(status)
    assert code in (0, 4), f"child exited {code}"
    return False


def test_a_delete_rolled_back_by_recovery_is_decided_again(tmp_path: Path) -> None:
    """Issue 9, item 12: the file is unchanged after a rollback, so without a mark it
    would never be reconsidered."""
    root = tmp_path / "photos"
    photos.copy(photos.photo("coffee"), root / "a.jpg")
    photos.copy(photos.photo("coffee"), root / "b.jpg")
    os.utime(root / "b.jpg", (2e9, 2e9))  # the newer copy: the one to delete
    config = replace(
        Config(), database=tmp_path / "d.db", hashing=HashingConfig(workers=1)
    ).with_roots([root])
    with Store(config.database) as store:
        scan(config, store)  # report only: both recorded, nothing done
        a, b = store.file_at(root / "a.jpg"), store.file_at(root / "b.jpg")
    assert a is not None and b is not None

    def run(checkpoint: Callable[[str], None]) -> None:
        with Store(config.database) as store:
            Actions(store, None, checkpoint=checkpoint).delete(b, a, "exact duplicate")

    assert _fork_and_kill_at(run, 2)  # killed right after the file was staged
    deleting = replace(config, policies={DEFAULT_POLICY: Policy(exact="delete")})
    with Store(config.database) as store:
        (recovered,) = Actions(store, None).recover()
        assert recovered.outcome == "rolled_back"
        assert sorted(p.name for p in root.iterdir()) == ["a.jpg", "b.jpg"]
        scan(deleting, store, actions=Actions(store, None))
    assert sorted(p.name for p in root.iterdir()) == ["a.jpg"]


# -- the seeded kill -9 campaign -------------------------------------------------------------


def _campaign(tmp_path: Path, quarantine: Path, seed: int, kills_wanted: int) -> dict[str, int]:
    """Quarantine, delete, restore and purge at random, each in a child killed at a random
    checkpoint; after each kill, recovery must leave every photo: none lost, none doubled,
    no staged or temporary file left behind."""
    rng = random.Random(seed)
    root = tmp_path / "photos"
    sources = [photos.photo(name) for name in photos.PHOTOS]
    for i in range(12):
        src = sources[i % len(sources)]
        photos.copy(src, root / f"k{i}.jpg")
        photos.copy(src, root / f"sub{i % 3}" / f"d{i}.jpg")
    config = replace(Config(), database=tmp_path / "d.db", hashing=HashingConfig(workers=1))
    config = config.with_roots([root])
    with Store(config.database) as store:
        scan(config, store)
    everything = {_sha(p) for p in root.rglob("*.jpg")}
    stats = {"kills": 0, "finished": 0}
    per_op = dict.fromkeys(("quarantine", "delete", "restore", "purge"), 0)
    steps = {"quarantine": 5, "delete": 4, "restore": 3, "purge": 3}  # +1 for a copy
    while stats["kills"] < kills_wanted:
        with Store(config.database) as store:
            in_quarantine = {q.src for q in store.quarantined()}
        for i in range(12):  # the phone uploads deleted duplicates again
            dup = root / f"sub{i % 3}" / f"d{i}.jpg"
            if not dup.exists() and str(dup) not in in_quarantine and rng.random() < 0.5:
                photos.copy(root / f"k{i}.jpg", dup)
        with Store(config.database) as store:
            scan(config, store)
            present = [
                r
                for r in store._files("f.state = 'ok'")
                if r.path.exists() and r.relpath.startswith("sub")
            ]
            quarantined = store.quarantined()
            op = rng.choice(["quarantine", "delete", "restore", "purge"])
            if op in ("restore", "purge") and not quarantined:
                op = "quarantine"
            if op in ("quarantine", "delete") and not present:
                op = "restore" if quarantined else "skip"
            if op == "skip":
                continue
            xdev = rng.random() < 0.3
            if op in ("quarantine", "delete"):
                target = rng.choice(present)
                keeper_path = root / f"k{target.relpath.split('/d')[1]}"
                keeper = store.file_at(keeper_path)
                action_id = 0
            else:
                target, keeper = None, None
                action_id = rng.choice(quarantined).id
        before = {s: len(_copies(s, root, quarantine)) for s in everything}

        def run(
            checkpoint: Callable[[str], None],
            op: str = op,
            xdev: bool = xdev,
            target: FileRecord | None = target,
            keeper: FileRecord | None = keeper,
            action_id: int = action_id,
        ) -> None:
            if xdev:

                def no_hard_links(*args: object, **kwargs: object) -> None:
                    raise OSError(errno.EXDEV, "Invalid cross-device link")

                dedupd.actions._link = no_hard_links
            with Store(config.database) as s:
                actions = Actions(s, quarantine, checkpoint=checkpoint)
                try:
                    if op == "quarantine":
                        assert target is not None
                        actions.quarantine(s.file(target.id), keeper, 0, "campaign")  # type: ignore[arg-type]
                    elif op == "delete":
                        assert target is not None and keeper is not None
                        actions.delete(s.file(target.id), keeper, "campaign")  # type: ignore[arg-type]
                    elif op == "restore":
                        actions.restore(action_id)
                    else:
                        actions.purge(0, only={action_id})
                except ActionError:
                    os._exit(4)

        killed = _fork_and_kill_at(run, rng.randint(1, steps[op] + xdev))
        stats["kills" if killed else "finished"] += 1
        per_op[op] += killed
        with Store(config.database) as store:
            Actions(store, quarantine).recover()
            assert store.actions("state = 'planned'") == []
            scan(config, store)  # re-find restored and rolled-back files
        assert not list(root.rglob(f"{safefs.STAGING_DIR}/*")), "a staged file was left"
        assert not list(quarantine.rglob(".dedupd-*.tmp")), "a partial copy was left"
        assert not list(root.rglob(".dedupd-*.tmp")), "a partial copy was left"
        after = {s: len(_copies(s, root, quarantine)) for s in everything}
        for s in everything:
            lost = before[s] - after[s]
            # Only a verified delete or a purge may remove one copy, never the last.
            allowed = 1 if op in ("delete", "purge") else 0
            assert 0 <= lost <= allowed, (op, killed, s, before[s], after[s])
            assert after[s] >= 1, f"photo {s} lost by {op}"
    return {**stats, **{f"kills_{k}": v for k, v in per_op.items()}}


@pytest.mark.slow
@pytest.mark.parametrize("where", ["same-fs", "cross-fs"])
def test_kill_9_campaign_loses_nothing(tmp_path: Path, where: str) -> None:
    """600 kill points per layout (1,200 in all; $DEDUPD_CAMPAIGN_KILLS changes it), seeded:
    quarantine, delete, restore and purge, each killed at a random step and recovered. The
    same-filesystem layout also takes the copy path a third of the time (link() made to
    fail with EXDEV); the other puts the quarantine on tmpfs."""
    if where == "cross-fs":
        other = _other_filesystem(tmp_path)
        if other is None:
            pytest.skip("no second filesystem (tmpfs at /dev/shm) on this machine")
        quarantine = other / f"dedupd-campaign-{os.getpid()}"
    else:
        quarantine = tmp_path / "quarantine"
    kills = int(os.environ.get("DEDUPD_CAMPAIGN_KILLS", "600"))
    try:
        stats = _campaign(tmp_path, quarantine, seed=20261130, kills_wanted=kills)
    finally:
        if where == "cross-fs":
            import shutil

            shutil.rmtree(quarantine, ignore_errors=True)
    print(json.dumps({"campaign": where, **stats}))
    per_op_names = ("quarantine", "delete", "restore", "purge")
    assert all(stats[f"kills_{op}"] >= kills // 20 for op in per_op_names)


# -- put back, whatever happened meanwhile (found by review) ------------------------------------


def test_a_name_taken_while_putting_back_gets_the_next_free_name(
    lib: Lib, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A delete fails (its keeper changed) and, just as dedupd puts the duplicate back, a
    sync client renames a new photo onto the name: the new photo keeps the name, the
    duplicate comes back beside it, and nothing stays in the staging folder."""
    dup, keeper = lib.rec(lib.root / "sub" / "dup.jpg"), lib.rec(lib.root / "keeper.jpg")
    real_link = os.link
    raced: list[bytes] = []

    def link(src: str, dst: str, **kw: Any) -> None:
        if dst == "dup.jpg" and not raced:  # the put-back's first try
            raced.append(_new_photo_renamed_onto(lib.root / "sub" / "dup.jpg", tmp_path))
        real_link(src, dst, **kw)

    def keeper_changes() -> None:
        (lib.root / "keeper.jpg").write_bytes(b"edited since")

    monkeypatch.setattr(os, "link", link)
    with pytest.raises(ActionError, match="nothing deleted"):
        Actions(lib.store, lib.quarantine, checkpoint=_at("staged", keeper_changes)).delete(
            dup, keeper, "exact"
        )
    assert (lib.root / "sub" / "dup.jpg").read_bytes() == raced[0]
    assert _sha(lib.root / "sub" / "dup (1).jpg") == dup.sha256
    assert not (lib.root / safefs.STAGING_DIR).exists()
    (entry,) = lib.store.actions()
    assert entry.state == "failed"


def test_a_folder_removed_while_staged_puts_the_photo_back_at_the_root(lib: Lib) -> None:
    """The staged duplicate was its folder's only file; a sync client removed the empty
    folder. The photo comes back at the root, never stays in dedupd's private folder."""
    dup, keeper = lib.rec(lib.root / "sub" / "dup.jpg"), lib.rec(lib.root / "keeper.jpg")

    def folder_goes() -> None:
        (lib.root / "sub" / "near.jpg").unlink()
        (lib.root / "sub").rmdir()
        (lib.root / "keeper.jpg").write_bytes(b"edited since")  # so the delete fails

    with pytest.raises(ActionError):
        Actions(lib.store, lib.quarantine, checkpoint=_at("staged", folder_goes)).delete(
            dup, keeper, "exact"
        )
    assert _sha(lib.root / "dup.jpg") == dup.sha256
    assert not (lib.root / safefs.STAGING_DIR).exists()


def test_a_photo_that_cannot_be_put_back_stays_planned_for_recovery(
    lib: Lib, monkeypatch: pytest.MonkeyPatch
) -> None:
    """If even the put-back fails, the entry is not marked failed (recovery only looks at
    planned ones): it stays planned, and the next recovery puts the photo back."""
    dup, keeper = lib.rec(lib.root / "sub" / "dup.jpg"), lib.rec(lib.root / "keeper.jpg")
    real_link = os.link

    def no_links(*args: object, **kw: object) -> None:
        raise OSError(errno.EIO, "Input/output error")

    def break_things() -> None:
        (lib.root / "keeper.jpg").write_bytes(b"edited since")
        monkeypatch.setattr(os, "link", no_links)

    with pytest.raises(dedupd.actions.Stranded, match="next recovery"):
        Actions(lib.store, lib.quarantine, checkpoint=_at("staged", break_things)).delete(
            dup, keeper, "exact"
        )
    (entry,) = lib.store.actions()
    assert entry.state == "planned"
    monkeypatch.setattr(os, "link", real_link)
    (recovered,) = Actions(lib.store, lib.quarantine).recover()
    assert recovered.outcome == "rolled_back"
    assert _sha(lib.root / "sub" / "dup.jpg") == dup.sha256
    assert not (lib.root / safefs.STAGING_DIR).exists()


def test_a_long_name_taken_while_staged_comes_back_under_a_shortened_free_name(
    lib: Lib, tmp_path: Path
) -> None:
    """255 bytes is the longest name: `name (1).jpg` would not fit, so the stem is cut."""
    long = "L" * 251 + ".jpg"
    os.rename(lib.root / "sub" / "dup.jpg", lib.root / "sub" / long)
    lib.store.move(
        lib.rec(lib.root / "sub" / "dup.jpg").id,
        str(lib.root),
        f"sub/{long}",
        FileStat.of(os.stat(lib.root / "sub" / long)),
    )
    dup, keeper = lib.rec(lib.root / "sub" / long), lib.rec(lib.root / "keeper.jpg")
    taken: list[bytes] = []

    def take_the_name() -> None:
        taken.append(_new_photo_renamed_onto(lib.root / "sub" / long, tmp_path))
        (lib.root / "keeper.jpg").write_bytes(b"edited since")

    with pytest.raises(ActionError):
        Actions(lib.store, lib.quarantine, checkpoint=_at("staged", take_the_name)).delete(
            dup, keeper, "exact"
        )
    assert (lib.root / "sub" / long).read_bytes() == taken[0]
    back = [p for p in (lib.root / "sub").iterdir() if p.name.endswith(" (1).jpg")]
    assert len(back) == 1 and len(os.fsencode(back[0].name)) <= 255
    assert _sha(back[0]) == dup.sha256


def test_recovery_waits_for_a_root_that_is_not_mounted_yet(lib: Lib) -> None:
    """Killed after staging; at the next start the root's disk is not mounted yet. Nothing
    is concluded (no permanent "failed"): the entry waits, and once the disk is back the
    photo is put back."""
    dup, keeper = lib.rec(lib.root / "sub" / "dup.jpg"), lib.rec(lib.root / "keeper.jpg")

    def run(checkpoint: Callable[[str], None]) -> None:
        with Store(lib.store.path) as store:
            Actions(store, lib.quarantine, checkpoint=checkpoint).delete(dup, keeper, "x")

    assert _fork_and_kill_at(run, 2)  # killed right after staging
    unmounted = lib.root.with_name("photos-unmounted")
    os.rename(lib.root, unmounted)
    (pending,) = Actions(lib.store, lib.quarantine).recover()
    assert pending.outcome == "pending" and "not reachable" in pending.detail
    assert [a.state for a in lib.store.actions()] == ["planned"]
    os.rename(unmounted, lib.root)
    (recovered,) = Actions(lib.store, lib.quarantine).recover()
    assert recovered.outcome == "rolled_back"
    assert _sha(lib.root / "sub" / "dup.jpg") == dup.sha256


@pytest.mark.parametrize("placeholder", ["", "NOT_MOUNTED", "keeper.jpg"])
@pytest.mark.parametrize("operation", ["delete", "quarantine"])
def test_recovery_waits_for_a_root_whose_mount_point_is_there_but_empty(
    lib: Lib, operation: str, placeholder: str
) -> None:
    """The red team's k2: killed after staging, then started with the root's disk not
    mounted, its mount point an empty folder (which opens fine). Concluded then, the entry
    said "deleted before the crash" (or "failed: nowhere"), and once the disk was back the
    photo sat in the staging folder under a random name, known to nothing. An empty root
    whose other photos are recorded is not mounted: the entry waits, then the photo goes
    back. Red teams 8 and 9: a file in the mount point (a `NOT_MOUNTED` placeholder, or a
    recorded photo's name fetched again by a sync client) made it look mounted: none of the
    photos recorded there is, the same file as recorded, and that is what counts."""
    dup, keeper = lib.rec(lib.root / "sub" / "dup.jpg"), lib.rec(lib.root / "keeper.jpg")

    def run(checkpoint: Callable[[str], None]) -> None:
        with Store(lib.store.path) as store:
            actions = Actions(store, lib.quarantine, checkpoint=checkpoint)
            if operation == "delete":
                actions.delete(dup, keeper, "x")
            else:
                actions.quarantine(dup, keeper, 0, "exact")

    assert _fork_and_kill_at(run, 2)  # killed right after staging
    disk = lib.root.with_name("photos-disk")
    os.rename(lib.root, disk)
    lib.root.mkdir()  # the mount point
    if placeholder:  # a note, or a photo's name fetched again by a sync client (red team 9)
        shutil.copyfile(disk / "keeper.jpg", lib.root / placeholder)
    (pending,) = Actions(lib.store, lib.quarantine).recover()
    assert pending.outcome == "pending", pending
    assert "none of the 2 photos recorded there" in pending.detail, pending
    assert [a.state for a in lib.store.actions()] == ["planned"]
    shutil.rmtree(lib.root)
    os.rename(disk, lib.root)  # mounted
    (recovered,) = Actions(lib.store, lib.quarantine).recover()
    assert recovered.outcome == "rolled_back", recovered
    assert _sha(lib.root / "sub" / "dup.jpg") == dup.sha256


def test_an_edit_written_while_copying_across_filesystems_is_put_back(lib: Lib) -> None:
    """An editor that had the photo open writes to it while dedupd copies it to another
    filesystem: the copy no longer holds the user's newest bytes, so it is dropped and the
    edited photo goes back."""
    if not str(lib.quarantine).startswith(str(SHM)):
        pytest.skip("the same-filesystem layout links the file: an edit reaches quarantine")
    near, keeper = lib.rec(lib.root / "sub" / "near.jpg"), lib.rec(lib.root / "keeper.jpg")
    with (  # open for writing before dedupd acts: never acted on
        open(near.path, "r+b"),
        pytest.raises(ActionError, match="open for writing in another program"),
    ):
        Actions(lib.store, lib.quarantine).quarantine(near, keeper, 4, "near")
    editors: list[BinaryIO] = []

    def open_editor() -> None:  # opened once the staged file was checked
        [staged] = (lib.root / ".dedupd-staging").iterdir()
        editors.append(open(staged, "r+b"))  # noqa: SIM115

    def save() -> None:
        editors[0].seek(0, os.SEEK_END)
        editors[0].write(b"the user's edit")
        editors[0].flush()

    def at(step: str) -> None:
        {"verified": open_editor, "copied": save}.get(step, lambda: None)()

    try:
        with pytest.raises(ActionError, match="changed while it was copied"):
            Actions(lib.store, lib.quarantine, checkpoint=at).quarantine(near, keeper, 4, "near")
    finally:
        for editor in editors:
            editor.close()
    assert (lib.root / "sub" / "near.jpg").read_bytes().endswith(b"the user's edit")
    assert not _in_quarantine(lib)


def test_a_root_swapped_for_a_symlink_after_the_action_does_not_escape(lib: Lib) -> None:
    """The staging folder's cleanup meets a root that became a symlink: the action is done
    and journaled, and no error other than ActionError ever leaves `quarantine`."""
    dup, keeper = lib.rec(lib.root / "sub" / "dup.jpg"), lib.rec(lib.root / "keeper.jpg")
    moved = lib.root.with_name("photos-real")

    def swap_root() -> None:
        os.rename(lib.root, moved)
        os.symlink(moved, lib.root)

    Actions(lib.store, lib.quarantine, checkpoint=_at("unlinked", swap_root)).quarantine(
        dup, keeper, 0, "exact"
    )
    (entry,) = lib.store.actions()
    assert entry.state == "done"


def test_a_quarantine_folder_that_cannot_be_synced_leaves_no_photo_in_the_staging_folder(
    lib: Lib, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The photo is linked (or copied) into quarantine, then the quarantine folder's fsync
    fails (EIO from a failing disk; EINVAL where a filesystem cannot sync a folder). The
    action fails, so the photo goes back to its folder: it was left in the root's hidden
    staging folder with its journal entry `failed`, which no recovery looks at."""
    near, keeper = lib.rec(lib.root / "sub" / "near.jpg"), lib.rec(lib.root / "keeper.jpg")
    qsub = lib.quarantine / str(lib.root).lstrip("/") / "sub"
    qsub.mkdir(parents=True)
    real_fsync_dir = safefs.fsync_dir

    def quarantine_cannot_sync(fd: int) -> None:
        if os.path.samestat(os.fstat(fd), os.stat(qsub)):
            raise OSError(errno.EIO, "Input/output error")
        real_fsync_dir(fd)

    monkeypatch.setattr(safefs, "fsync_dir", quarantine_cannot_sync)
    with pytest.raises(ActionError, match="Input/output error"):
        Actions(lib.store, lib.quarantine).quarantine(near, keeper, 4, "near")
    assert _sha(lib.root / "sub" / "near.jpg") == near.sha256
    assert not (lib.root / safefs.STAGING_DIR).exists()
    assert not _in_quarantine(lib)
    (entry,) = lib.store.actions()
    assert entry.state == "failed"


def test_a_quarantine_gone_read_only_mid_action_still_puts_the_photo_back(
    lib: Lib, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The quarantine disk fails mid-action (remounted read-only): its folder cannot be
    synced, and the name made there cannot be removed. That leftover copy is no reason to
    keep the photo in the root's staging folder: the photo goes back all the same."""
    near, keeper = lib.rec(lib.root / "sub" / "near.jpg"), lib.rec(lib.root / "keeper.jpg")
    qsub = lib.quarantine / str(lib.root).lstrip("/") / "sub"
    qsub.mkdir(parents=True)
    real_fsync_dir, real_unlink = safefs.fsync_dir, os.unlink

    def read_only(fd: int | None) -> bool:
        return fd is not None and os.path.samestat(os.fstat(fd), os.stat(qsub))

    def no_sync(fd: int) -> None:
        if read_only(fd):
            raise OSError(errno.EIO, "Input/output error")
        real_fsync_dir(fd)

    def no_unlink(path: str, *, dir_fd: int | None = None) -> None:
        if read_only(dir_fd):
            raise OSError(errno.EROFS, "Read-only file system")
        real_unlink(path, dir_fd=dir_fd)

    monkeypatch.setattr(safefs, "fsync_dir", no_sync)
    monkeypatch.setattr(os, "unlink", no_unlink)
    with pytest.raises(ActionError):
        Actions(lib.store, lib.quarantine).quarantine(near, keeper, 4, "near")
    monkeypatch.undo()
    assert _sha(lib.root / "sub" / "near.jpg") == near.sha256
    assert not (lib.root / safefs.STAGING_DIR).exists()
    assert lib.store.actions("state = 'planned'") == []


def _staging_unlink_fails_once_set(lib: Lib, monkeypatch: pytest.MonkeyPatch) -> list[bool]:
    """Make unlinking in the root's staging folder fail (EIO, the root's disk) once the
    returned list is not empty."""
    real_unlink = os.unlink
    failing: list[bool] = []

    def no_unlink(path: str, *, dir_fd: int | None = None) -> None:
        if failing and dir_fd is not None:
            staging = lib.root / safefs.STAGING_DIR
            if os.path.samestat(os.fstat(dir_fd), os.stat(staging)):
                raise OSError(errno.EIO, "Input/output error")
        real_unlink(path, dir_fd=dir_fd)

    monkeypatch.setattr(os, "unlink", no_unlink)
    return failing


def test_a_staged_name_that_cannot_be_dropped_leaves_the_quarantine_to_recovery(
    lib: Lib, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The photo is in quarantine, and dropping its staged name fails (the root's disk
    returns EIO). The action is not journaled `failed` (no recovery would look at it, the
    photo recorded present and a second name of it kept in the staging folder): it stays
    planned, and the next recovery finishes it."""
    near, keeper = lib.rec(lib.root / "sub" / "near.jpg"), lib.rec(lib.root / "keeper.jpg")
    failing = _staging_unlink_fails_once_set(lib, monkeypatch)
    checkpoint = _at("linked", lambda: failing.append(True))
    with pytest.raises(ActionError, match="Input/output error"):
        Actions(lib.store, lib.quarantine, checkpoint=checkpoint).quarantine(
            near, keeper, 4, "near"
        )
    monkeypatch.undo()
    assert [a.state for a in lib.store.actions()] == ["planned"]
    (recovered,) = Actions(lib.store, lib.quarantine).recover()
    assert recovered.outcome == "done"
    assert not (lib.root / safefs.STAGING_DIR).exists()
    assert not (lib.root / "sub" / "near.jpg").exists()
    assert len(_copies(near.sha256 or "", lib.quarantine)) == 1
    assert lib.rec(lib.root / "sub" / "near.jpg").state == "quarantined"


def test_a_delete_whose_staged_name_cannot_be_dropped_is_left_to_recovery(
    lib: Lib, monkeypatch: pytest.MonkeyPatch
) -> None:
    """As for a quarantine: the delete's unlink fails (EIO) after its keeper was verified;
    the entry stays planned and the next recovery resolves it (here: the photo is put back,
    as the staged file is still there)."""
    dup, keeper = lib.rec(lib.root / "sub" / "dup.jpg"), lib.rec(lib.root / "keeper.jpg")
    failing = _staging_unlink_fails_once_set(lib, monkeypatch)
    checkpoint = _at("verified", lambda: failing.append(True))
    with pytest.raises(ActionError, match="Input/output error"):
        Actions(lib.store, lib.quarantine, checkpoint=checkpoint).delete(dup, keeper, "exact")
    monkeypatch.undo()
    assert [a.state for a in lib.store.actions()] == ["planned"]
    (recovered,) = Actions(lib.store, lib.quarantine).recover()
    assert recovered.outcome == "rolled_back"
    assert _sha(lib.root / "sub" / "dup.jpg") == dup.sha256
    assert not (lib.root / safefs.STAGING_DIR).exists()


def _in_quarantine(lib: Lib) -> list[Path]:
    """The files in quarantine (not dedupd's marker)."""
    from dedupd.actions import QUARANTINE_MARKER

    return [p for p in lib.quarantine.rglob("*") if p.is_file() and p.name != QUARANTINE_MARKER]
