"""dedupctl's side of the socket trusts only what it should: an answer that is not dedupd's
(not JSON, cut short, a field missing or of another type) is one clean error, never a
traceback and never a reason to work on the database instead; and a socket whose listening
process runs as another user (not root, not this user, not the service user) is not asked
at all. Fake servers on real Unix sockets in temporary folders."""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import pwd
import re
import signal
import socket
import socketserver
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner, Result

from dedupd import control
from dedupd.cli import dedupctl
from dedupd.control import ControlClient, Peer, peer_of
from dedupd.errors import DaemonAnswerInvalid, DaemonUntrusted
from dedupd.store import Store
from tests import photos
from tests.test_decisions import Lib


def _http(body: bytes, status: int = 200, length: int | None = None) -> bytes:
    """An HTTP answer of `body`; `length`: the Content-Length it claims instead."""
    n = len(body) if length is None else length
    head = b"HTTP/1.0 %d Whatever\r\nContent-Type: application/json\r\nContent-Length: %d\r\n"
    return head % (status, n) + b"\r\n" + body


def _js(answer: object, status: int = 200) -> bytes:
    return _http(json.dumps(answer).encode(), status)


class _Handler(socketserver.StreamRequestHandler):
    server: _Fake

    def handle(self) -> None:
        # The whole request, body too: a socket closed on unread bytes resets, and the
        # client would see a broken pipe instead of the answer.
        line = self.rfile.readline().decode()
        if not line:
            return  # hung up on before anything was sent
        length = 0
        while (header := self.rfile.readline()) not in (b"\r\n", b""):
            if m := re.match(rb"(?i)content-length:\s*(\d+)", header):
                length = int(m[1])
        self.rfile.read(length)
        method, target = line.split()[:2]
        self.server.seen.append(f"{method} {target}")
        path = target.partition("?")[0]
        self.wfile.write(self.server.answers.get(path) or _http(b"{}", 404))


class _Fake(socketserver.ThreadingMixIn, socketserver.UnixStreamServer):
    """Answers each request with the bytes given for its path; records what it was asked."""

    daemon_threads = True
    block_on_close = True

    def __init__(self, path: Path, answers: dict[str, bytes]):
        self.answers, self.seen = answers, []  # type: ignore[var-annotated]
        super().__init__(str(path), _Handler)


@contextlib.contextmanager
def fake_daemon(answers: dict[str, bytes]) -> Iterator[tuple[Path, _Fake]]:
    path = Path(tempfile.mkdtemp(dir="/tmp")) / "d.sock"  # short: a socket path is <108 bytes
    server = _Fake(path, answers)
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05})
    thread.start()
    try:
        yield path, server
    finally:
        server.shutdown()
        server.server_close()
        thread.join(10)
        path.unlink()
        path.parent.rmdir()


@pytest.fixture(scope="module")
def library(tmp_path_factory: pytest.TempPathFactory) -> Lib:
    """A scanned library whose copy of coffee.jpg is in quarantine: what an offline restore
    or purge would change. Shared: no test may change it (each checks that none did)."""
    lib = Lib(tmp_path_factory.mktemp("lib"))
    lib.write_config("{exact: quarantine, near: report}")
    photos.copy(photos.photo("coffee"), lib.root / "coffee.jpg")
    time.sleep(0.01)  # the copy is the newer file: it is the one quarantined
    photos.copy(photos.photo("coffee"), lib.root / "coffee (1).jpg")
    photos.copy(photos.photo("rocket"), lib.root / "rocket.jpg")
    lib.scan()
    assert lib.state("coffee (1).jpg") == "quarantined"
    return lib


def _action(lib: Lib) -> int:
    with Store(lib.db, readonly=True) as store:
        (entry,) = store.quarantined()
    return entry.id


def _everything(lib: Lib) -> dict[str, str]:
    """Every file of the library, its quarantine and its state folder (the database and its
    lock), by content: what working offline would change."""
    folders = (lib.root, lib.archive, lib.quarantine, lib.db.parent)
    return {
        str(p): hashlib.sha256(p.read_bytes()).hexdigest()
        for folder in folders
        for p in sorted(folder.rglob("*"))
        if p.is_file()
    }


def _status(lib: Lib, **changed: Any) -> dict[str, Any]:
    """A status answer that fits, of a daemon serving `lib`'s database (which dedupctl checks
    before it asks a daemon anything else)."""
    st = os.stat(lib.db)
    return {
        "pid": 4242,
        "uptime_s": 12.5,
        "hasher": "phash_16",
        "database": str(lib.db),
        "database_id": [st.st_dev, st.st_ino],
        "indexed": 2,
        "index": {"backend": "hamming", "pending": 0, "last_rebuild": None},
        "queue": {"backlog": 0, "hashing": 0, "settling": 0},
        "stats": {"hashed": 2, "acted": 1, "errors": 0},
        "roots": [{"path": str(lib.root), "state": "watched", "policy": "camera"}],
        "recent_errors": [],
        **changed,
    }


def _ctl(lib: Lib, sock: Path, *args: str) -> Result:
    return CliRunner().invoke(dedupctl, ["--config", str(lib.config), "--socket", str(sock), *args])


def _entry(lib: Lib, **changed: Any) -> dict[str, Any]:
    """The quarantine list's entry for the quarantined copy."""
    return {
        "id": _action(lib),
        "src": str(lib.root / "coffee (1).jpg"),
        "dst": str(lib.quarantine / "coffee (1).jpg"),
        "keeper_path": str(lib.root / "coffee.jpg"),
        "distance": 0,
        "reason": "exact",
        "finished": 1_000_000.0,
        **changed,
    }


def _without(answer: dict[str, Any], key: str) -> dict[str, Any]:
    return {k: v for k, v in answer.items() if k != key}


# What each command asks and the answer it gets; the message names what was wrong.
Case = tuple[Callable[[Lib], list[str]], str, Callable[[Lib], bytes], str]
CASES: dict[str, Case] = {
    # The red team's fake server's answer to status.
    "status: keys missing": (
        lambda lib: ["status"],
        "GET /v1/status",
        lambda lib: _js({"database": str(lib.db), "pid": 1, "roots": []}),
        "uptime_s: missing",
    ),
    "status: a field of another type": (
        lambda lib: ["status"],
        "GET /v1/status",
        lambda lib: _js(_status(lib, roots=[{"path": "/srv", "state": 3, "policy": "camera"}])),
        "roots[0].state: expected a string, got an integer",
    ),
    "status: a time no clock can show": (
        lambda lib: ["status"],
        "GET /v1/status",
        lambda lib: _js(
            _status(lib, index={"backend": "hamming", "pending": 0, "last_rebuild": 1e300})
        ),
        "index.last_rebuild: expected a time (seconds since 1970, before the year 10000) or"
        " null, got a number",
    ),
    "status: not JSON": (
        lambda lib: ["status"],
        "GET /v1/status",
        lambda lib: _http(b"<html>it works</html>"),
        "it is not JSON (Expecting value: line 1 column 1 (char 0))",
    ),
    "status: JSON but a list": (
        lambda lib: ["status"],
        "GET /v1/status",
        lambda lib: _js([1, 2]),
        "the answer: expected an object, got a list of 2",
    ),
    "status: JSON nested too deeply": (
        lambda lib: ["status"],
        "GET /v1/status",
        lambda lib: _http(b"[" * 100_000),
        "it is JSON nested too deeply",
    ),
    "status: cut short": (
        lambda lib: ["status"],
        "GET /v1/status",
        lambda lib: _http(json.dumps(_status(lib)).encode()[:40], length=4000),
        "it was cut short (its body ended after 40 bytes)",
    ),
    "status: a status dedupd never sends": (
        lambda lib: ["status"],
        "GET /v1/status",
        lambda lib: _js(_status(lib), status=302),
        "its status is 302, which dedupd never sends",
    ),
    "quarantine list: an entry without its time": (
        lambda lib: ["quarantine", "list"],
        "GET /v1/quarantine",
        lambda lib: _js({"quarantined": [_without(_entry(lib), "finished")]}),
        "quarantined[0].finished: missing",
    ),
    "quarantine restore: the red team's answer": (
        lambda lib: ["quarantine", "restore", str(_action(lib))],
        "POST /v1/quarantine/restore",
        lambda lib: _js({"restored": [{"path": "/etc/shadow", "from": "/tmp/x"}], "purged": []}),
        "results: missing",
    ),
    "quarantine restore: a result of another type": (
        lambda lib: ["quarantine", "restore", str(_action(lib))],
        "POST /v1/quarantine/restore",
        lambda lib: _js({"results": [{"item": "1", "restored": 5}]}),
        "results[0].restored: expected a string, got an integer",
    ),
    "quarantine restore: an error answer that is not dedupd's": (
        lambda lib: ["quarantine", "restore", str(_action(lib))],
        "POST /v1/quarantine/restore",
        lambda lib: _js({"error": ["not", "found"]}, status=404),
        "error: expected a string, got a list of 2",
    ),
    "quarantine purge: purged is no list": (
        lambda lib: ["quarantine", "purge", "--older-than", "0s", "--yes"],
        "POST /v1/quarantine/purge",
        lambda lib: _js({"purged": "everything"}),
        "purged: expected a list, got a string",
    ),
    "show: a group without its keeper": (
        lambda lib: ["show"],
        "GET /v1/groups",
        lambda lib: _js({"groups": [{"duplicates": []}]}),
        "groups[0].keeper: missing",
    ),
    "search: a result without its record": (
        lambda lib: ["search", str(lib.root / "rocket.jpg")],
        "POST /v1/search",
        lambda lib: _js({"hasher": "phash_16", "results": [{"path": "/srv/x.jpg"}]}),
        "results[0].id: missing",
    ),
    "distinct: one path": (
        lambda lib: ["distinct", str(lib.root / "rocket.jpg"), str(lib.root / "coffee.jpg")],
        "POST /v1/distinct",
        lambda lib: _js({"distinct": [str(lib.root / "rocket.jpg")]}),
        "distinct: expected a list of 2, got a list of 1",
    ),
    "rescan: a root that is no path": (
        lambda lib: ["rescan"],
        "POST /v1/rescan",
        lambda lib: _js({"queued": [1]}),
        "queued[0]: expected a string, got an integer",
    ),
    "reload: no roots": (
        lambda lib: ["reload"],
        "POST /v1/reload",
        lambda lib: _js({"roots": None}),
        "roots: expected a list, got null",
    ),
}


@pytest.mark.parametrize("case", CASES)
def test_an_answer_that_is_not_dedupds_is_one_clean_error_and_nothing_is_done_here(
    library: Lib, case: str
) -> None:
    """Every command, given an answer it could not use (not JSON, cut short, a field missing
    or of another type, for its own request or the status before it): exit 3 with one line
    naming the socket, the request and what was wrong. No traceback, and no work on the
    database instead: the library, its quarantine and its database are as they were."""
    argv, request, answer, what = CASES[case]
    lib = library
    endpoint = request.split()[1]
    answers = {
        "/v1/status": _js(_status(lib)),
        "/v1/quarantine": _js({"quarantined": [_entry(lib)]}),
        endpoint: answer(lib),
    }
    args = argv(lib)
    before = _everything(lib)
    with fake_daemon(answers) as (sock, fake):
        result = _ctl(lib, sock, *args)
    assert result.exit_code == 3, result.output
    assert isinstance(result.exception, SystemExit)  # not a KeyError caught by the runner
    assert result.stderr == (
        f"error: the answer on {sock} to {request} is not dedupd's: {what}; not using it (is"
        " another program, or a dedupd of another version, listening there?)\n"
    )
    assert "Traceback" not in result.output
    assert fake.seen[-1].split("?")[0] == request
    assert _everything(lib) == before
    assert lib.state("coffee (1).jpg") == "quarantined"


def test_an_answer_that_fits_is_used(library: Lib) -> None:
    """The fake's answers of the right shape are taken: the errors above are about shape."""
    lib = library
    answers = {
        "/v1/status": _js(_status(lib)),
        "/v1/quarantine/restore": _js({"results": [{"item": "7", "restored": "/srv/a.jpg"}]}),
    }
    with fake_daemon(answers) as (sock, fake):
        status = _ctl(lib, sock, "status")
        restored = _ctl(lib, sock, "quarantine", "restore", "7")
    assert (status.exit_code, status.stdout.splitlines()[0]) == (
        0,
        "dedupd running (pid 4242, up 12s), hasher phash_16",
    )
    assert (restored.exit_code, restored.stdout) == (0, "restored /srv/a.jpg\n")
    # Each command first checks that the daemon serves this database (by its status).
    assert fake.seen == ["GET /v1/status"] * 3 + ["POST /v1/quarantine/restore"]


def test_the_client_raises_one_typed_error_for_any_misfit(library: Lib) -> None:
    """What the CLI catches: DaemonAnswerInvalid, a DaemonUnavailable, for every endpoint's
    answer, read by the ControlClient itself (which bench/ and the tests use too)."""
    with (
        fake_daemon({"/v1/groups": _js({"groups": "none"})}) as (sock, _),
        pytest.raises(DaemonAnswerInvalid, match=r"GET /v1/groups is not dedupd's: groups:"),
    ):
        ControlClient(sock, timeout=5).get("groups")


# -- who listens ------------------------------------------------------------------------------


def test_the_peer_is_the_process_that_listens() -> None:
    """SO_PEERCRED names the process that called listen(), here this one."""
    with fake_daemon({}) as (sock, _), socket.socket(socket.AF_UNIX) as s:
        s.connect(str(sock))
        assert peer_of(s) == Peer(os.getpid(), os.geteuid())


def _pretend(monkeypatch: pytest.MonkeyPatch, uid: int, service: str = "no-such-dedupd") -> None:
    """The daemon on every socket runs as `uid`; the service user is named `service`."""
    monkeypatch.setattr(control, "peer_of", lambda sock: Peer(4242, uid))
    monkeypatch.setattr(control, "SERVICE_USER", service)


def _nobody() -> pwd.struct_passwd:
    try:
        return pwd.getpwnam("nobody")
    except KeyError:
        pytest.skip("no user nobody here")


@pytest.mark.parametrize("who", ["this user", "root", "the service user"])
def test_a_daemon_of_this_user_root_or_the_service_user_is_asked(
    library: Lib, monkeypatch: pytest.MonkeyPatch, who: str
) -> None:
    """The system unit's daemon runs as the user dedupd and members of its group use
    dedupctl: that user is trusted as root and the caller are."""
    nobody = _nobody()
    uid = {"this user": os.geteuid(), "root": 0, "the service user": nobody.pw_uid}[who]
    _pretend(monkeypatch, uid, service=nobody.pw_name)
    with fake_daemon({"/v1/status": _js(_status(library))}) as (sock, fake):
        result = _ctl(library, sock, "status")
    assert result.exit_code == 0, result.output
    assert fake.seen == ["GET /v1/status", "GET /v1/status"]


def test_a_daemon_of_another_user_is_refused_before_anything_is_sent(
    library: Lib, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A socket whose listener runs as someone else: exit 3 naming who, nothing sent (not
    even the status), nothing done offline instead."""
    lib = library
    nobody = _nobody()
    stranger = nobody.pw_uid - 1 if nobody.pw_uid != os.geteuid() + 1 else nobody.pw_uid - 2
    _pretend(monkeypatch, stranger, service=nobody.pw_name)
    action = str(_action(lib))
    before = _everything(lib)
    with fake_daemon({"/v1/status": _js(_status(lib))}) as (sock, fake):
        result = _ctl(lib, sock, "quarantine", "restore", action)
    assert result.exit_code == 3, result.output
    assert result.stderr == (
        f"error: {sock}: the process listening there (pid 4242) runs as"
        f" {control._user(stranger)}, not as root, as you (uid {os.geteuid()}) or as the service"
        f" user {nobody.pw_name} (uid {nobody.pw_uid}); not asking it: stop it, or pass your"
        " daemon's socket with --socket\n"
    )
    assert fake.seen == []
    assert _everything(lib) == before
    assert lib.state("coffee (1).jpg") == "quarantined"


def test_without_a_service_user_only_root_and_this_user_are_trusted(
    library: Lib, monkeypatch: pytest.MonkeyPatch
) -> None:
    _pretend(monkeypatch, 54321)
    with (
        fake_daemon({"/v1/status": _js(_status(library))}) as (sock, fake),
        pytest.raises(DaemonUntrusted, match=r"and no user no-such-dedupd exists here;"),
    ):
        ControlClient(sock, timeout=5).get("status")
    assert fake.seen == []


@pytest.mark.skipif(os.geteuid() != 0, reason="only root can run a server as another user")
def test_a_socket_served_by_another_user_for_real_is_refused(
    library: Lib, monkeypatch: pytest.MonkeyPatch
) -> None:
    """No pretending: a fake server run as nobody, in a folder nobody may write (as the red
    team's, in a socket folder open to others)."""
    nobody = _nobody()
    monkeypatch.setattr(control, "SERVICE_USER", "no-such-dedupd")  # nobody is no service
    folder = Path(tempfile.mkdtemp(dir="/tmp"))
    os.chown(folder, nobody.pw_uid, nobody.pw_gid)
    sock = folder / "d.sock"
    answer = _js(_status(library))
    pid = os.fork()
    if pid == 0:  # the child: becomes nobody, then serves until killed
        try:
            os.setgroups([])
            os.setgid(nobody.pw_gid)
            os.setuid(nobody.pw_uid)
            with socket.socket(socket.AF_UNIX) as s:
                s.bind(str(sock))
                s.listen(8)
                while True:
                    conn, _ = s.accept()
                    conn.recv(65536)
                    conn.sendall(answer)
                    conn.close()
        finally:
            os._exit(1)
    try:
        deadline = time.monotonic() + 10
        while not sock.exists() and time.monotonic() < deadline:
            time.sleep(0.02)
        assert sock.exists(), "the server as nobody did not start"
        result = _ctl(library, sock, "status")
    finally:
        os.kill(pid, signal.SIGKILL)
        os.waitpid(pid, 0)
        sock.unlink(missing_ok=True)
        folder.rmdir()
    assert result.exit_code == 3, result.output
    assert result.stderr.startswith(
        f"error: {sock}: the process listening there (pid {pid}) runs as uid"
        f" {nobody.pw_uid} ({nobody.pw_name}), not as root or as you (uid 0), and no user"
        " no-such-dedupd exists here; not asking it"
    )
