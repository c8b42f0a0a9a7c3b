"""The service's implementations agree: what the daemon answers over its socket is what the
database answers without it, for every read (STYLE: two implementations of one interface
get a test that they agree)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from dedupd.config import load_config
from dedupd.control import ControlClient, DaemonNotRunning
from dedupd.daemon import Daemon
from dedupd.hashers import Hasher
from dedupd.imaging import hash_image
from dedupd.service import LocalService, RemoteService, connect
from dedupd.store import Store
from tests import photos
from tests.test_control import _quarantined_offline, daemon, env  # noqa: F401 - fixtures
from tests.test_daemon import Env, _idle, running, wait_for


def test_daemon_and_database_give_the_same_answers(env: Env, daemon: Daemon) -> None:  # noqa: F811
    photos.copy(photos.photo("rocket"), env.archive / "rocket.jpg")  # a reported group
    photos.reencode(photos.photo("coffee"), env.root / "chat" / "wa.jpg")  # a quarantine
    wait_for(lambda: env.state(env.root / "chat" / "wa.jpg") == "quarantined")
    wait_for(lambda: env.state(env.archive / "rocket.jpg") == "ok")
    config = load_config(env.config)
    remote = RemoteService(ControlClient(config.socket))
    local = LocalService(config)
    hasher = Hasher(config.hashing.algorithm, config.hashing.hash_size)
    query = photos.reencode(photos.photo("coffee"), env.tmp / "query.jpg")
    hashed = hash_image(str(query), [hasher], max_pixels=config.hashing.max_pixels)
    bits = hashed.hashes[hasher.key]

    assert remote.groups() == local.groups()
    assert remote.groups()["groups"], "the comparison covers a real group"
    for path in (env.root / "IMG_2.jpg", env.root / "chat" / "wa.jpg"):
        assert remote.file_info(str(path)) == local.file_info(str(path))
    assert remote.quarantine_list() == local.quarantine_list()
    assert len(remote.quarantine_list()["quarantined"]) == 1
    assert remote.quarantine_list(since=3600) == local.quarantine_list(since=3600)
    for threshold in (None, 0.1):
        asked = dict(sha256=hashed.sha256, k=5, threshold=threshold)
        assert remote.search(bits, **asked) == local.search(bits, **asked)  # type: ignore[arg-type]


def test_without_a_daemon_reads_fall_back_and_daemon_commands_say_so(
    env: Env,  # noqa: F811
) -> None:
    """No daemon: status and rescan are errors (no note about the database); reads answer
    from the database, with one note on stderr however many calls follow."""
    config = load_config(env.config)
    Store(config.database).close()  # an empty database
    notes: list[str] = []
    service = connect([config.socket], lambda: config, lambda: notes.append("local"))
    with pytest.raises(DaemonNotRunning, match="dedupd run"):
        service.status()
    with pytest.raises(DaemonNotRunning):
        service.rescan(None)
    assert notes == []
    assert service.groups() == {"groups": [], "in_quarantine": 0}
    assert service.quarantine_list() == {"quarantined": []}
    assert notes == ["local"]


@pytest.mark.slow  # ~4-8 s: run with the long suites (make test-slow)
def test_a_long_running_dedupctl_asks_a_daemon_started_after_it_fell_back(
    env: Env,  # noqa: F811
) -> None:
    """`dedupctl review` started while no daemon ran works on the database; a daemon started
    later holds the database, so the page's buttons must go to that daemon, not keep trying
    the database (refused, exit 4 or 503, until the page is restarted)."""
    action = _quarantined_offline(env)
    config = load_config(env.config)
    service = connect([config.socket], lambda: config, lambda: None)
    assert [e["id"] for e in service.quarantine_list()["quarantined"]] == [action]  # offline
    with running(env) as d:
        wait_for(lambda: _idle(d))
        answer = service.restore([str(action)])
    wa = env.root / "chat" / "wa.jpg"
    assert answer == {"results": [{"item": str(action), "restored": str(wa)}]}
    assert wa.is_file()


def test_a_daemon_serves_the_named_database_only_when_it_is_the_same_file(tmp_path: Path) -> None:
    from dedupd.service import _same_database

    db, other = tmp_path / "a.db", tmp_path / "b.db"
    db.write_bytes(b"")
    other.write_bytes(b"")
    link = tmp_path / "link.db"
    link.symlink_to(db)
    st = os.stat(db)
    assert _same_database({"database_id": [st.st_dev, st.st_ino]}, link)
    assert not _same_database({"database_id": [st.st_dev, st.st_ino]}, other)
    # a daemon from before `database_id`: its path, resolved
    assert _same_database({"database": str(link)}, db)
    assert not _same_database({"database": str(other)}, db)
    assert not _same_database({"database": str(db)}, tmp_path / "none.db")  # not there
    assert not _same_database({}, db)


def test_a_long_running_dedupctl_passes_over_a_daemon_that_took_its_socket_for_another_database(
    env: Env,  # noqa: F811
    tmp_path: Path,
) -> None:
    """`dedupctl review` for a config naming its own database asked its daemon on the default
    socket; that daemon stops and another config's daemon starts on the same socket. The
    page's buttons must not list, restore or purge that daemon's quarantine in its place
    (action ids are per database): each question checks again whose daemon answers."""
    (tmp_path / "mine").mkdir()
    mine = Env(tmp_path / "mine")
    mine.write_config()
    others: list[str] = []
    service = connect(
        [load_config(mine.config).socket],
        lambda: load_config(mine.config),
        lambda: None,
        database=mine.db,
        on_other=lambda remote, theirs: others.append(theirs),
    )
    with running(mine) as d:
        wait_for(lambda: _idle(d))
        assert service.quarantine_list() == {"quarantined": []}  # its own daemon's answer
    assert others == []
    wa = env.root / "chat" / "wa.jpg"
    photos.reencode(photos.photo("coffee"), wa)
    with running(env) as d:  # the other config's daemon, on the same (default) socket
        wait_for(lambda: env.state(wa) == "quarantined" and _idle(d))
        listed = service.quarantine_list()
        with Store(env.db) as store:
            ids = [str(a.id) for a in store.actions("kind = 'quarantine'")]
        restored = service.restore(ids)  # the other daemon's action ids: none of this one's
    assert listed == {"quarantined": []}  # its own database's, not the other daemon's
    assert restored == {"results": [{"item": i, "error": "not in quarantine"} for i in ids]}
    assert ids and others and set(others) == {str(env.db)}
    assert env.state(wa) == "quarantined" and not wa.exists()
