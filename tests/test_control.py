"""The control socket and dedupctl against a running daemon: every command, table and JSON,
the fallback without a daemon, and bad requests answered cleanly."""

from __future__ import annotations

import contextlib
import json
import os
import re
import socket
import tempfile
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest
from click.testing import CliRunner, Result

from dedupd import control
from dedupd.cli import dedupctl, dedupd
from dedupd.config import default_socket_path
from dedupd.control import ControlClient
from dedupd.daemon import Daemon
from dedupd.store import Store
from tests import photos
from tests.test_daemon import Env, _idle, running, wait_for


@pytest.fixture
def env(tmp_path: Path) -> Env:
    e = Env(tmp_path)
    e.write_config()
    photos.copy(photos.photo("coffee"), e.root / "IMG_1.jpg")
    photos.copy(photos.photo("rocket"), e.root / "IMG_2.jpg")
    return e


@pytest.fixture
def daemon(env: Env) -> Iterator[Daemon]:
    with running(env) as d:
        wait_for(lambda: d.stats.hashed == 2 and _idle(d))
        yield d


def ctl(env: Env, *args: str, input: str | None = None) -> Result:
    return CliRunner().invoke(dedupctl, ["--config", str(env.config), *args], input=input)


def raw(sock_path: Path, request: bytes) -> tuple[int, dict[str, object]]:
    """Send raw bytes to the socket; return (status, JSON body) of the answer."""
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
        s.settimeout(15)
        s.connect(str(sock_path))
        try:
            s.sendall(request)
            s.shutdown(socket.SHUT_WR)
        except BrokenPipeError:
            pass  # the server answered and hung up before reading everything (413)
        data = b""
        while chunk := s.recv(65536):
            data += chunk
    head, _, body = data.partition(b"\r\n\r\n")
    return int(head.split()[1]), json.loads(body)


def test_socket_is_group_accessible_only(env: Env, daemon: Daemon) -> None:
    mode = os.stat(daemon.config.socket).st_mode & 0o777
    assert mode == 0o660


def test_status_table_and_json(env: Env, daemon: Daemon) -> None:
    table = ctl(env, "status")
    assert table.exit_code == 0, table.output
    lines = table.stdout.splitlines()
    assert lines[0].startswith(f"dedupd running (pid {os.getpid()}, up ")
    assert lines[1].startswith("indexed   2 (hamming, ")
    assert f"root      {env.root}  watching  policy camera" in lines
    s = json.loads(ctl(env, "status", "--json").stdout)
    assert (s["indexed"], s["stats"]["hashed"], s["index"]["backend"]) == (2, 2, "hamming")
    assert [r["state"] for r in s["roots"]] == ["watching", "watching"]


def test_search_asks_the_daemon_table_and_json(env: Env, daemon: Daemon) -> None:
    query = photos.reencode(photos.photo("coffee"), env.tmp / "query.jpg")
    table = ctl(env, "search", str(query), "-k", "1")
    assert table.exit_code == 0 and table.stderr == ""  # no fallback note: the daemon answered
    assert table.stdout.splitlines()[1].endswith(f"{env.root}/IMG_1.jpg")
    answer = json.loads(ctl(env, "search", str(query), "--json", "--threshold", "0.1").stdout)
    assert [Path(r["path"]).name for r in answer["results"]] == ["IMG_1.jpg"]
    assert answer["results"][0]["exact"] is False and answer["query"]["path"] == str(query)


def test_search_over_the_socket_finds_a_mirrored_copy_and_names_it(
    env: Env, daemon: Daemon
) -> None:
    """dedupctl sends the query image's 8 variants to the daemon, which answers with the
    transform that takes each result to the query; malformed variants are refused."""
    query = photos.hflip(photos.photo("coffee"), env.tmp / "mirrored.jpg")
    answer = json.loads(ctl(env, "search", str(query), "--json", "--threshold", "0.1").stdout)
    assert [(Path(r["path"]).name, r["transform"]) for r in answer["results"]] == [
        ("IMG_1.jpg", "mirror")
    ]
    sock = daemon.config.socket
    good = "00" * 32
    status, body = raw(
        sock, f"GET /v1/search?hash={good}&variants={good},{good} HTTP/1.0\r\n\r\n".encode()
    )
    assert status == 400 and "variants" in str(body["detail"])


def test_show_groups_and_file(env: Env, daemon: Daemon) -> None:
    photos.copy(photos.photo("rocket"), env.archive / "rocket.jpg")  # reference: only reported
    wait_for(lambda: env.state(env.archive / "rocket.jpg") == "ok")
    table = ctl(env, "show")
    assert table.stdout.splitlines()[0] == "1 duplicate groups"
    groups = json.loads(ctl(env, "show", "--json").stdout)["groups"]
    assert len(groups) == 1 and groups[0]["duplicates"][0]["kind"] == "exact"
    one = ctl(env, "show", str(env.root / "IMG_2.jpg"))
    assert one.stdout.splitlines()[1] == "  state     ok"
    info = json.loads(ctl(env, "show", "--json", str(env.root / "IMG_2.jpg")).stdout)
    assert [Path(m["path"]).name for m in info["matches"]] == ["rocket.jpg"]
    missing = ctl(env, "show", str(env.root / "nope.jpg"))
    assert missing.exit_code == 1 and "not in the database" in missing.stderr


def test_quarantine_list_restore_and_purge_through_the_daemon(env: Env, daemon: Daemon) -> None:
    photos.reencode(photos.photo("coffee"), env.root / "chat" / "wa.jpg")
    wait_for(lambda: env.state(env.root / "chat" / "wa.jpg") == "quarantined")
    listed = json.loads(ctl(env, "quarantine", "list", "--json").stdout)["quarantined"]
    assert [e["src"] for e in listed] == [str(env.root / "chat" / "wa.jpg")]
    # a filter that matches none: not "empty" while a photo is in quarantine
    assert ctl(env, "quarantine", "list", "--root", str(env.archive)).stdout == (
        "nothing in quarantine matches\n"
    )
    table = ctl(env, "quarantine", "list", "--since", "1h").stdout.splitlines()
    assert table[0].endswith(str(env.root / "chat" / "wa.jpg"))

    # restore refuses to overwrite, then works, and the pair is remembered as distinct
    (env.root / "chat" / "wa.jpg").write_bytes(b"a new photo took the name")
    refused = ctl(env, "quarantine", "restore", str(listed[0]["id"]))
    assert refused.exit_code == 1 and "refusing to overwrite" in refused.stderr
    (env.root / "chat" / "wa.jpg").unlink()
    done = ctl(env, "quarantine", "restore", "--json", str(env.root / "chat" / "wa.jpg"))
    assert done.exit_code == 0
    assert json.loads(done.stdout) == {
        "results": [
            {
                "item": str(env.root / "chat" / "wa.jpg"),
                "restored": str(env.root / "chat" / "wa.jpg"),
            }
        ]
    }
    with Store(env.db) as store:
        record = store.file_at(env.root / "IMG_1.jpg")
        assert record is not None and record.sha256
        assert store.distinct_from(record.sha256)

    # purge: nothing old enough, then only with confirmation
    photos.reencode(photos.photo("rocket"), env.root / "chat" / "r.jpg")
    wait_for(lambda: env.state(env.root / "chat" / "r.jpg") == "quarantined")
    assert ctl(env, "quarantine", "purge").stdout == (
        "nothing to purge; 1 photo is younger than 30 days; --older-than 0 to purge them\n"
    )
    unconfirmed = ctl(env, "quarantine", "purge", "--older-than", "0s")
    assert unconfirmed.exit_code == 2 and "pass --yes to confirm" in unconfirmed.output
    assert list(env.quarantine.rglob("r.jpg"))
    purged = ctl(env, "quarantine", "purge", "--older-than", "0s", "--yes")
    assert purged.stdout == "purged 1 photos\n" and not list(env.quarantine.rglob("r.jpg"))
    photos.reencode(photos.photo("rocket"), env.root / "chat" / "r2.jpg")
    wait_for(lambda: env.state(env.root / "chat" / "r2.jpg") == "quarantined")
    as_json = ctl(env, "quarantine", "purge", "--older-than", "0s", "--yes", "--json")
    assert len(json.loads(as_json.stdout)["purged"]) == 1


def test_distinct_rescan_and_reload(env: Env, daemon: Daemon) -> None:
    marked = ctl(env, "distinct", str(env.root / "IMG_1.jpg"), str(env.root / "IMG_2.jpg"))
    assert marked.exit_code == 0 and marked.stdout.startswith("marked distinct: ")
    again = json.loads(
        ctl(
            env, "distinct", "--json", str(env.root / "IMG_2.jpg"), str(env.root / "IMG_1.jpg")
        ).stdout
    )
    assert again == {"distinct": [str(env.root / "IMG_2.jpg"), str(env.root / "IMG_1.jpg")]}
    unknown = ctl(env, "distinct", str(env.root / "IMG_1.jpg"), str(env.root / "none.jpg"))
    assert unknown.exit_code == 1 and "not a hashed photo" in unknown.stderr

    assert ctl(env, "rescan").stdout == f"rescan queued: {env.root}\nrescan queued: {env.archive}\n"
    one = ctl(env, "rescan", str(env.root))
    assert one.stdout == f"rescan queued: {env.root}\n"
    assert json.loads(ctl(env, "rescan", "--json").stdout) == {
        "queued": [str(env.root), str(env.archive)]
    }
    other = ctl(env, "rescan", str(env.tmp))
    assert other.exit_code == 1 and "not a configured root" in other.stderr

    assert ctl(env, "reload").stdout == "reloaded: 2 roots\n"
    assert json.loads(ctl(env, "reload", "--json").stdout) == {
        "reloaded": True,
        "roots": [str(env.root), str(env.archive)],
    }
    env.config.write_text(env.config.read_text() + "nonsense: 1\n")
    rejected = ctl(env, "--socket", str(daemon.config.socket), "reload")
    assert rejected.exit_code == 2 and "nonsense" in rejected.stderr


def test_without_a_daemon_reads_fall_back_and_the_rest_exit_3(env: Env) -> None:
    with running(env) as d:  # index the photos once, then stop
        wait_for(lambda: d.stats.hashed == 2)
    show = ctl(env, "show", "--json")
    assert (
        show.exit_code == 0
        and show.stderr == "dedupd is not running; using the database directly\n"
    )
    assert json.loads(show.stdout) == {"groups": [], "in_quarantine": 0}
    for args in (["status"], ["rescan"], ["reload"]):
        result = ctl(env, *args)
        assert result.exit_code == 3, args
        assert "dedupd is not running" in result.stderr and "dedupd run" in result.stderr


def test_bad_requests_get_clean_errors_and_the_daemon_goes_on(env: Env, daemon: Daemon) -> None:
    sock = daemon.config.socket
    assert raw(sock, b"GET /v1/nowhere HTTP/1.0\r\n\r\n")[0] == 404
    assert raw(sock, b"POST /v1/status HTTP/1.0\r\nContent-Length: 2\r\n\r\n{}")[0] == 405
    status, body = raw(sock, b"POST /v1/distinct HTTP/1.0\r\nContent-Length: 5\r\n\r\n{nope")
    assert status == 400 and "not JSON" in str(body["detail"])
    deep = b"[" * 20_000  # json.loads raised RecursionError: a 500
    status, body = raw(
        sock, b"POST /v1/distinct HTTP/1.0\r\nContent-Length: %d\r\n\r\n" % len(deep) + deep
    )
    assert status == 400 and "nested too deeply" in str(body["detail"])
    digits = b'{"ids": [' + b"1" * 5000 + b"]}"  # over int's digit limit: a ValueError, a 500
    status, body = raw(
        sock, b"POST /v1/distinct HTTP/1.0\r\nContent-Length: %d\r\n\r\n" % len(digits) + digits
    )
    assert status == 400 and "not JSON" in str(body["detail"])
    big = b"x" * (1 << 20)
    status, body = raw(
        sock, b"POST /v1/rescan HTTP/1.0\r\nContent-Length: %d\r\n\r\n" % len(big) + big
    )
    assert status == 413
    assert raw(sock, b"POST /v1/reload HTTP/1.0\r\n\r\n")[0] == 411
    assert raw(sock, b"POST /v1/rescan HTTP/1.0\r\nContent-Length: -1\r\n\r\n{}")[0] == 400
    assert raw(sock, b"GET /v1/search?k=x&hash=00 HTTP/1.0\r\n\r\n")[0] == 400
    assert raw(sock, b"GET /v1/files?path=/no/such.jpg HTTP/1.0\r\n\r\n")[0] == 404
    status, _ = raw(sock, b"GET /v1/search?path=/no/such.jpg HTTP/1.0\r\n\r\n")
    assert status == 400  # a query image that cannot be read
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:  # garbage, then hang up
        s.connect(str(sock))
        s.sendall(b"\x00\xffgarbage\r\n\r\n")
    assert raw(sock, b"GET /v1/status HTTP/1.0\r\n\r\n")[0] == 200


def test_a_second_daemon_on_the_same_socket_refuses_before_touching_anything(
    env: Env, daemon: Daemon
) -> None:
    """Same database: the lock refuses it, naming the first one's pid. Another database but
    the same socket: the live socket refuses it. Either way nothing is recovered or
    reconciled, and the first daemon goes on answering."""
    import structlog.testing

    from dedupd.daemon import Notifier
    from dedupd.errors import ConfigError
    from dedupd.lock import DatabaseBusy

    second = Daemon(env.config, notifier=Notifier({}))
    with structlog.testing.capture_logs() as logs, pytest.raises(DatabaseBusy) as busy:
        second.run()
    assert (busy.value.pid, busy.value.role) == (os.getpid(), "daemon")
    other_db = Daemon(env.config, notifier=Notifier({}), database=env.tmp / "other.db")
    with structlog.testing.capture_logs() as logs2, pytest.raises(ConfigError, match="already"):
        other_db.run()
    assert [e["event"] for e in logs + logs2] == []  # no recovery, no reconcile
    assert ctl(env, "status").exit_code == 0  # the first one still answers


def test_restore_by_a_relative_path_means_relative_to_the_user(
    env: Env, daemon: Daemon, monkeypatch: pytest.MonkeyPatch
) -> None:
    photos.reencode(photos.photo("coffee"), env.root / "chat" / "wa.jpg")
    wait_for(lambda: env.state(env.root / "chat" / "wa.jpg") == "quarantined")
    monkeypatch.chdir(env.root)
    done = ctl(env, "quarantine", "restore", "chat/wa.jpg")
    assert (done.exit_code, done.stdout) == (0, f"restored {env.root}/chat/wa.jpg\n")


def test_a_connection_dropped_by_the_daemon_is_exit_3_not_a_traceback(tmp_path: Path) -> None:
    """A daemon that dies mid-request: dedupctl says so (exit 3)."""
    import threading

    path = Path(tempfile.mkdtemp(dir="/tmp")) / "d.sock"
    server = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    server.bind(str(path))
    server.listen(1)

    def accept_and_drop() -> None:
        conn, _ = server.accept()
        conn.recv(1024)
        conn.close()

    t = threading.Thread(target=accept_and_drop)
    t.start()
    result = CliRunner().invoke(dedupctl, ["--socket", str(path), "status"])
    t.join(5)
    server.close()
    assert result.exit_code == 3
    assert "did not answer" in result.stderr


def test_a_socket_path_too_long_to_bind_is_a_config_error_not_a_traceback(
    tmp_path: Path,
) -> None:
    """`socket:` longer than a Unix socket's 107 bytes: the daemon refuses to start naming
    the key (exit 2 through the CLI), and dedupctl asking there says it cannot connect
    (exit 3); neither dies with a traceback."""
    from dedupd.errors import ConfigError

    path = tmp_path / ("a" * 120) / "dedupd.sock"
    with pytest.raises(ConfigError, match=f"socket: {re.escape(str(path))}: cannot listen"):
        control.ControlServer(path, None)  # type: ignore[arg-type]
    result = CliRunner().invoke(dedupctl, ["--socket", str(path), "status"])
    assert result.exit_code == 3, result.output
    assert result.stderr.startswith(f"error: cannot connect to {path}: ")


def test_a_client_trickling_its_request_is_cut_off_at_the_deadline(
    env: Env, daemon: Daemon, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The deadline covers the whole request, not each read: one byte every 0.2 s does not
    keep a server thread forever."""
    import time

    import dedupd.control

    monkeypatch.setattr(dedupd.control, "REQUEST_TIMEOUT", 1.0)
    started = time.monotonic()
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
        s.settimeout(3)
        s.connect(str(daemon.config.socket))
        with pytest.raises(OSError):  # reset or broken pipe once the server gives up
            for byte in b"GET /v1/status HTTP/1.0\r\nX-Slow: " + b"a" * 200:
                s.sendall(bytes([byte]))
                time.sleep(0.2)
                if time.monotonic() - started > 10:
                    break
            s.recv(1)
            if not s.recv(1):
                raise ConnectionResetError("closed")
    assert time.monotonic() - started < 5
    assert ctl(env, "status").exit_code == 0


def test_many_items_are_sent_in_batches_and_every_one_answered(env: Env, daemon: Daemon) -> None:
    items = [str(i) for i in range(1000, 1045)]  # three batches of at most 20
    result = ctl(env, "quarantine", "restore", "--json", *items)
    assert result.exit_code == 1
    answers = json.loads(result.stdout)["results"]
    assert [a["item"] for a in answers] == items
    assert {a["error"] for a in answers} == {"not in quarantine"}


def test_a_daemon_stopping_between_batches_still_reports_the_photos_already_restored(
    env: Env, daemon: Daemon, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A restore of many photos goes in batches; a daemon that stops after the first (a
    `systemctl restart`) made dedupctl print only "did not answer" (exit 3), although the
    first batch's photos were back in their folders: which ones was never said. Now what
    was done is printed, then the error."""
    from dedupd.errors import DaemonUnavailable
    from dedupd.service import RemoteService

    photos.reencode(photos.photo("coffee"), env.root / "chat" / "wa.jpg")
    wait_for(lambda: env.state(env.root / "chat" / "wa.jpg") == "quarantined")
    (entry,) = json.loads(ctl(env, "quarantine", "list", "--json").stdout)["quarantined"]
    asked = RemoteService.restore

    def stops_after_one_batch(self: RemoteService, items: list[str]) -> dict[str, object]:
        if str(entry["id"]) not in items:
            raise DaemonUnavailable(f"dedupd did not answer on {self.client.path}")
        return asked(self, items)

    monkeypatch.setattr(RemoteService, "restore", stops_after_one_batch)
    items = [str(entry["id"]), *(str(i) for i in range(1000, 1020))]  # two batches
    result = ctl(env, "quarantine", "restore", *items)
    assert result.exit_code == 3
    assert result.stdout == f"restored {env.root / 'chat' / 'wa.jpg'}\n"
    assert "error: dedupd did not answer" in result.stderr
    as_json = ctl(env, "quarantine", "restore", "--json", *items)
    assert as_json.exit_code == 3
    assert [r["item"] for r in json.loads(as_json.stdout)["results"]][:1] == [str(entry["id"])]


def test_search_refuses_when_dedupctl_and_the_daemon_hash_differently(
    env: Env, daemon: Daemon
) -> None:
    other = env.tmp / "other.yaml"
    other.write_text(
        f"hashing: {{algorithm: dhash, hash_size: 16}}\nsocket: {daemon.config.socket}\n"
    )
    result = CliRunner().invoke(
        dedupctl, ["--config", str(other), "search", str(photos.photo("coffee"))]
    )
    assert result.exit_code == 2
    assert "the daemon with phash:16" in result.stderr


def test_a_name_that_is_not_utf8_goes_through_the_socket_byte_for_byte(
    env: Env, daemon: Daemon
) -> None:
    """Issue #9: a path that is not UTF-8 travels as escaped bytes in the query string
    (GET /v1/files?path=…) and as a \\udcXX escape in JSON bodies and answers; dedupctl
    prints it as the bytes on disk. Quarantined, listed, shown and restored by that path."""
    name = os.path.join(os.fsencode(env.root), b"wa-caf\xe9.jpg")
    path = os.fsdecode(name)
    os.rename(photos.reencode(photos.photo("coffee"), env.tmp / "wa.jpg"), name)
    wait_for(lambda: env.state(Path(path)) == "quarantined", what="the quarantine")

    shown = ctl(env, "show", path)
    assert (shown.exit_code, shown.stderr) == (0, "")  # the daemon answered
    assert shown.stdout_bytes.splitlines()[:2] == [name, b"  state     quarantined"]
    assert json.loads(ctl(env, "show", "--json", path).stdout)["file"]["path"] == path

    listed = ctl(env, "quarantine", "list")
    assert listed.stdout_bytes.splitlines()[0].endswith(b"  " + name)
    (entry,) = json.loads(ctl(env, "quarantine", "list", "--json").stdout)["quarantined"]
    assert os.fsencode(entry["src"]) == name

    restored = ctl(env, "quarantine", "restore", path)
    assert restored.exit_code == 0, restored.output
    assert restored.stdout_bytes == b"restored " + name + b"\n"
    assert os.path.exists(name)


# -- hostile local clients (issue #9 item 11) ---------------------------------------------------
# Anyone in the socket's group may connect. None of them may learn about files it cannot read,
# make the daemon decode for it, or keep `status` from answering by being slow.


def _exchange(s: socket.socket, request: bytes) -> tuple[int, dict[str, object]]:
    """Send `request` on a connected socket and read the answer; the server may hang up
    before reading all of it (a refused head), which resets the rest of the conversation."""
    with contextlib.suppress(BrokenPipeError, ConnectionResetError):
        s.sendall(request)
    data = b""
    with contextlib.suppress(ConnectionResetError):
        while chunk := s.recv(65536):
            data += chunk
    head, _, body = data.partition(b"\r\n\r\n")
    return int(head.split()[1]), json.loads(body)


def _client(sock_path: Path, timeout: float = 5.0) -> socket.socket:
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        s.connect(str(sock_path))  # blocking: a full listen backlog waits, not EAGAIN
    except BaseException:
        s.close()
        raise
    s.settimeout(timeout)
    return s


def _status_answers(sock_path: Path) -> bool:
    """`status` answers within a client timeout of 1.5 s: a behavioural bound, not a benchmark
    (the daemon answers it in milliseconds unless something holds it up)."""
    return "indexed" in ControlClient(sock_path, timeout=1.5).get("status")


def _cut_off(s: socket.socket) -> bool:
    """True when the server hangs up on `s` (EOF or reset) before its 5 s client timeout,
    having sent no answer."""
    try:
        return s.recv(65536) == b""
    except ConnectionResetError:
        return True


def test_search_by_path_is_refused_so_the_daemon_reads_no_file_for_a_client(
    env: Env, daemon: Daemon
) -> None:
    """`path=` would let any socket client learn the sha256 and nearest match of a photo in a
    folder it cannot read, and make the daemon decode whatever it names: it is a 400 that
    says to send hash=, whatever the path (readable photo, missing file)."""
    sock = daemon.config.socket
    for path in (env.root / "IMG_1.jpg", Path("/no/such.jpg")):
        status, body = raw(sock, b"GET /v1/search?path=%s HTTP/1.0\r\n\r\n" % bytes(path))
        assert status == 400
        assert "hash=" in str(body["detail"]) and "sha256" not in body
    assert raw(sock, b"GET /v1/search HTTP/1.0\r\n\r\n")[0] == 400
    assert _status_answers(sock)


@pytest.mark.slow
def test_clients_that_stall_sending_their_request_do_not_starve_status(
    env: Env, daemon: Daemon
) -> None:
    """More clients than worker slots (16) each send half a request and stall: `status`
    still answers at once, since waiting for a request holds no slot, and every stalled
    client is cut off at the request deadline without an answer."""
    sock = daemon.config.socket
    stalled = [_client(sock) for _ in range(control.MAX_CLIENTS + 8)]
    try:
        for s in stalled:
            with contextlib.suppress(OSError):  # a server that refuses them fails below
                s.sendall(b"GET /v1/status HTTP/1.0\r\nX-Slow: a")
        assert _status_answers(sock)
        assert all(_cut_off(s) for s in stalled)
    finally:
        for s in stalled:
            s.close()
    assert _status_answers(sock)


def test_a_flood_of_silent_connections_does_not_starve_status(env: Env, daemon: Daemon) -> None:
    """Connections that send nothing, more than the server waits on at once: each newcomer
    beyond MAX_WAITING cuts off the longest-waiting one, so the oldest silent ones are hung
    up on and `status` (sent at once, as real clients do) still answers."""
    sock = daemon.config.socket
    extra = 8
    silent = [_client(sock) for _ in range(control.MAX_WAITING + extra)]
    try:
        assert all(_cut_off(s) for s in silent[:extra])  # made room for the last ones
        assert _status_answers(sock)
    finally:
        for s in silent:
            s.close()
    assert _status_answers(sock)


def test_clients_that_never_read_their_answer_do_not_starve_status(
    env: Env, daemon: Daemon, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Clients that ask for a big answer (over the socket buffer) and never read it: writing
    holds no worker slot, so `status` answers meanwhile, and each stalled writer is cut off
    at the answer deadline instead of holding a thread forever."""
    answer: dict[str, object] = {"filler": "x" * (1 << 20)}
    served = threading.Semaphore(0)

    def big(svc: object, params: dict[str, str], body: dict[str, object]) -> dict[str, object]:
        served.release()
        return answer

    monkeypatch.setitem(control.ROUTES, ("GET", f"{control.API}/groups"), big)
    monkeypatch.setattr(control, "ANSWER_TIMEOUT", 1.0)
    sock = daemon.config.socket
    readers = [_client(sock) for _ in range(control.MAX_CLIENTS + 4)]
    try:
        for s in readers:
            s.sendall(b"GET /v1/groups HTTP/1.0\r\n\r\n")
        for _ in range(control.MAX_CLIENTS):  # at least this many are stuck writing
            assert served.acquire(timeout=10)
        assert _status_answers(sock)

        def serving() -> bool:  # the server's threads for these clients, until cut off
            return any("process_request_thread" in t.name for t in threading.enumerate())

        wait_for(lambda: not serving(), what="the stalled writers to be cut off")
        for s in readers:
            received = b""
            with contextlib.suppress(ConnectionResetError):
                while chunk := s.recv(1 << 16):
                    received += chunk
            assert 0 < len(received) < len(json.dumps(answer))  # cut off mid-answer
    finally:
        for s in readers:
            s.close()
    assert _status_answers(sock)


def test_garbage_and_oversized_heads_get_json_errors_and_the_daemon_goes_on(
    env: Env, daemon: Daemon
) -> None:
    """A garbled request line gets a JSON 400 with a status line; a request head over
    MAX_HEAD (many headers, or one huge line) is refused with 431 before it is all read, so
    64 waiting clients cannot make the daemon hold 6 MB of headers each."""
    sock = daemon.config.socket
    with _client(sock) as s:
        status, body = _exchange(s, b"\x00\xffgarbage\r\n\r\n")
    assert status == 400 and "error" in body
    many = b"".join(b"X-Pad-%d: %s\r\n" % (i, b"a" * 1000) for i in range(40))
    with _client(sock) as s:
        status, body = _exchange(s, b"GET /v1/status HTTP/1.0\r\n" + many + b"\r\n")
    assert status == 431 and body["error"] == "request head too large"
    with _client(sock) as s:
        status, _ = _exchange(s, b"GET /v1/status HTTP/1.0\r\nX-Huge: " + b"a" * (1 << 20))
    assert status == 431
    with _client(sock) as s:
        status, _ = _exchange(s, b"GET /v1/" + b"a" * (1 << 20) + b" HTTP/1.0\r\n\r\n")
    assert status == 431
    assert _status_answers(sock)


def _quarantined_offline(env: Env) -> int:
    """Quarantine a near duplicate with a daemon, stop it; the quarantine entry's id."""
    with running(env) as d:
        photos.reencode(photos.photo("coffee"), env.root / "chat" / "wa.jpg")
        wait_for(lambda: env.state(env.root / "chat" / "wa.jpg") == "quarantined")
        wait_for(lambda: _idle(d))
    with Store(env.db) as store:
        (entry,) = store.actions("kind = 'quarantine'")
    return entry.id


@pytest.mark.parametrize("state", ["busy", "stopping"])
def test_a_busy_or_stopping_daemon_is_never_worked_around(env: Env, state: str) -> None:
    """A 503 comes from a live daemon that owns the database: dedupctl exits 4 with its own
    message and does not restore the file itself."""
    import threading

    action = _quarantined_offline(env)
    path = Path(tempfile.mkdtemp(dir="/tmp")) / "d.sock"
    server = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    server.bind(str(path))
    server.listen(1)
    body = json.dumps({"error": state, "detail": "a test"}).encode()

    def answer_503() -> None:
        conn, _ = server.accept()
        with conn:
            # Read the whole request (http.client sends the head and the body apart): a
            # socket closed on unread bytes resets, and the client sees a broken pipe.
            request = b""
            while b"\r\n\r\n" not in request:
                request += conn.recv(65536)
            head, _, got = request.partition(b"\r\n\r\n")
            length = re.search(rb"(?im)^content-length:\s*(\d+)", head)
            while length and len(got) < int(length[1]):
                got += conn.recv(65536)
            conn.sendall(
                b"HTTP/1.0 503 Service Unavailable\r\nContent-Type: application/json\r\n"
                b"Content-Length: %d\r\n\r\n%s" % (len(body), body)
            )

    t = threading.Thread(target=answer_503)
    t.start()
    try:
        result = ctl(env, "--socket", str(path), "quarantine", "restore", str(action))
    finally:
        t.join(10)
        server.close()
    assert result.exit_code == 4, result.output
    assert result.stderr.startswith(f"error: dedupd is {state} (a test); try again")
    assert "using the database directly" not in result.stderr
    assert not (env.root / "chat" / "wa.jpg").exists()
    assert env.state(env.root / "chat" / "wa.jpg") == "quarantined"


def test_a_daemon_whose_connection_queue_is_full_is_busy_not_a_traceback(env: Env) -> None:
    """A daemon that does not accept yet (its start-up reconcile runs with the socket bound)
    and has a full queue of waiting connections: connect() fails with EAGAIN. That is a live
    daemon owning the database: exit 4 "busy", never a traceback, never worked around."""
    action = _quarantined_offline(env)
    path = Path(tempfile.mkdtemp(dir="/tmp")) / "d.sock"
    with contextlib.ExitStack() as stack:
        server = stack.enter_context(socket.socket(socket.AF_UNIX, socket.SOCK_STREAM))
        server.bind(str(path))
        server.listen(0)  # never accepts; one waiting connection fills the queue
        waiting = stack.enter_context(socket.socket(socket.AF_UNIX, socket.SOCK_STREAM))
        waiting.connect(str(path))
        result = ctl(env, "--socket", str(path), "quarantine", "restore", str(action))
    assert result.exit_code == 4, result.output
    assert result.stderr.startswith("error: dedupd is busy (")
    assert "using the database directly" not in result.stderr
    assert env.state(env.root / "chat" / "wa.jpg") == "quarantined"


def test_offline_changes_refuse_while_another_process_holds_the_database(env: Env) -> None:
    """No daemon, but a scan running: restore, purge and distinct exit 4 naming the scan's
    pid and change nothing; the read-only fallbacks still read."""
    from tests.locking import held_elsewhere

    action = _quarantined_offline(env)
    moved = list(env.quarantine.rglob("wa.jpg"))
    with held_elsewhere(env.db, "scan") as scan:
        for args in (
            ["quarantine", "restore", str(action)],
            ["quarantine", "purge", "--older-than", "0s", "--yes"],
            ["distinct", str(env.root / "IMG_1.jpg"), str(env.root / "IMG_2.jpg")],
        ):
            result = ctl(env, *args)
            assert result.exit_code == 4, (args, result.output)
            assert result.stderr.splitlines()[-1] == (
                f"error: {env.db} is in use by dedupd scan (pid {scan.pid}); "
                "wait for that scan to finish"
            )
        listed = ctl(env, "quarantine", "list", "--json")
        assert listed.exit_code == 0
        assert [e["id"] for e in json.loads(listed.stdout)["quarantined"]] == [action]
    assert list(env.quarantine.rglob("wa.jpg")) == moved
    with Store(env.db) as store:
        assert [a.kind for a in store.actions()] == ["quarantine"]
        assert not store.db.execute("SELECT count(*) FROM distinct_pairs").fetchone()[0]


def test_an_offline_change_finding_the_daemon_holding_the_database_says_where_it_looked(
    env: Env,
) -> None:
    """The daemon holds the database but does not answer where dedupctl looked (it is still
    starting or already stopping, or listens on a socket of its own config): exit 4, and the
    message names the socket asked and --socket, not "go through its socket"."""
    from tests.locking import held_elsewhere

    action = _quarantined_offline(env)
    elsewhere = env.tmp / "elsewhere.sock"
    with held_elsewhere(env.db, "daemon") as daemon:
        result = ctl(env, "--socket", str(elsewhere), "quarantine", "restore", str(action))
    assert result.exit_code == 4, result.output
    error = result.stderr.splitlines()[-1]
    assert f"{env.db} is in use by the dedupd daemon (pid {daemon.pid})" in error
    assert f"nothing answers on {elsewhere}" in error and "--socket" in error
    assert env.state(env.root / "chat" / "wa.jpg") == "quarantined"


def test_a_purge_that_kept_a_confirmed_photo_says_so_and_exits_1(env: Env) -> None:
    """A quarantined file edited since (it no longer holds the quarantined bytes) is kept by
    a purge: dedupctl must not print "nothing to purge" and exit 0 for the photo the user
    confirmed, but name it, say what to do, and exit 1, as a failed restore does."""
    action = _quarantined_offline(env)
    (moved,) = env.quarantine.rglob("wa.jpg")
    moved.write_bytes(moved.read_bytes() + b"edited")
    result = ctl(env, "quarantine", "purge", "--older-than", "0s", "--yes")
    assert result.exit_code == 1, result.output
    assert "nothing to purge" not in result.stdout
    assert result.stderr.splitlines()[-1].startswith(f"error: not purged: {action};")
    assert moved.is_file()


def test_status_says_when_the_crop_index_is_loaded_with_no_upload_needed(env: Env) -> None:
    """A daemon started on photos hashed before reads their crop words in the background and
    swaps them in by itself, between uploads: `status` says `loading` until then, and then how
    many photos the crop index holds, with no upload to trigger it; the load is logged once."""
    import structlog

    with running(env) as first:  # hashes both photos, with their features
        wait_for(lambda: first.stats.hashed == 2 and _idle(first))
    with structlog.testing.capture_logs() as logs, running(env) as d:
        wait_for(lambda: not d.status()["crops"]["loading"])
        s = json.loads(ctl(env, "status", "--json").stdout)
        assert s["crops"] == {
            "enabled": True,
            "loading": False,
            "size": 2,
            "pending": 0,
            "rebuilding": False,
        }
        assert "crops     2 photos (0 pending)" in ctl(env, "status").stdout.splitlines()
        assert d.stats.hashed == 0  # nothing new arrived: the loop swapped the index in
    assert [e["photos"] for e in logs if e["event"] == "crop_index_loaded"] == [2]


def test_dedupctl_never_steers_a_daemon_that_serves_another_database(
    env: Env, daemon: Daemon, tmp_path: Path
) -> None:
    """Two configs whose sockets are the same path (neither names one: the default): the
    second names its own database. dedupctl with it must not list, restore or purge the
    running daemon's quarantine in its place: it works on its own database, and says why."""
    photos.reencode(photos.photo("coffee"), env.root / "chat" / "wa.jpg")
    wait_for(lambda: env.state(env.root / "chat" / "wa.jpg") == "quarantined")
    other = tmp_path / "other"
    (other / "photos").mkdir(parents=True)
    photos.copy(photos.photo("rocket"), other / "photos" / "r.jpg")
    photos.copy(photos.photo("rocket"), other / "photos" / "r copy.jpg")
    config = other / "dedupd.yaml"
    config.write_text(
        f"database: {other / 'other.db'}\n"
        f"roots:\n  - {{path: {other / 'photos'}, policy: camera}}\n"
        "policies:\n  camera: {exact: quarantine}\n"
        f"quarantine: {{path: {other / 'quarantine'}}}\n"
    )
    assert daemon.config.socket == default_socket_path()  # both use the default
    scanned = CliRunner().invoke(dedupd, ["scan", "--config", str(config)])
    assert scanned.exit_code == 0, scanned.output

    def theirs(*args: str) -> Result:
        return CliRunner().invoke(dedupctl, ["--config", str(config), *args])

    listed = theirs("quarantine", "list", "--json")
    assert listed.exit_code == 0, listed.output
    assert "serves" in listed.stderr and str(env.db) in listed.stderr
    assert [e["src"] for e in json.loads(listed.stdout)["quarantined"]] == [
        str(other / "photos" / "r copy.jpg")
    ]
    mine = json.loads(ctl(env, "quarantine", "list", "--json").stdout)["quarantined"]
    assert [e["src"] for e in mine] == [str(env.root / "chat" / "wa.jpg")]
    # The same action id in both databases: the restore is of the other config's photo.
    assert mine[0]["id"] == json.loads(listed.stdout)["quarantined"][0]["id"]
    restored = theirs("quarantine", "restore", str(mine[0]["id"]))
    assert restored.exit_code == 0, restored.output
    assert (other / "photos" / "r copy.jpg").exists()
    assert not (env.root / "chat" / "wa.jpg").exists()
    assert env.state(env.root / "chat" / "wa.jpg") == "quarantined"
    status = theirs("status")
    assert status.exit_code == 3 and "serves" in status.stderr  # its own daemon is not running
    assert f"no dedupd serving {other / 'other.db'} is running" in status.stderr
    assert "nothing answers" not in status.stderr
    assert ctl(env, "status").exit_code == 0


def test_a_rescan_of_a_path_holding_a_nul_byte_is_not_a_root_not_a_server_error(
    env: Env, daemon: Daemon
) -> None:
    body = json.dumps({"root": f"{env.root}\u0000"}).encode()
    with _client(daemon.config.socket) as s:
        status, answer = _exchange(
            s,
            b"POST /v1/rescan HTTP/1.0\r\nContent-Type: application/json\r\n"
            b"Content-Length: %d\r\n\r\n%s" % (len(body), body),
        )
    assert status == 404 and "not a configured root" in json.dumps(answer)
    assert _status_answers(daemon.config.socket)


@pytest.mark.parametrize("method", ["PUT", "DELETE", "PATCH"])
def test_other_methods_get_405_on_an_endpoint_and_404_elsewhere(
    daemon: Daemon, method: str
) -> None:
    """As the README lists: 405 for a method an endpoint does not take (http.server answered
    501 "Unsupported method" for any method but GET and POST)."""
    sock = daemon.config.socket
    status, body = raw(sock, f"{method} /v1/status HTTP/1.0\r\n\r\n".encode())
    assert (status, body["error"]) == (405, "method not allowed")
    status, _ = raw(sock, f"{method} /v1/nothing HTTP/1.0\r\n\r\n".encode())
    assert status == 404
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:  # 405 says what is allowed
        s.settimeout(15)
        s.connect(str(sock))
        s.sendall(f"{method} /v1/search HTTP/1.0\r\n\r\n".encode())
        head = s.recv(65536).split(b"\r\n\r\n")[0].decode()
    assert "\r\nAllow: GET, POST" in head


def test_the_socket_is_chmodded_through_a_descriptor_never_through_a_link(tmp_path: Path) -> None:
    """chmod(path) after the bind followed a link: in a folder others may write, a link
    swapped in after the bind had root chmod whatever it named (red team). The mode is set
    on what is at the path, no link followed; anything but a socket there is refused."""
    import socket
    import stat

    from dedupd.control import _chmod_socket
    from dedupd.errors import ConfigError

    path = tmp_path / "dedupd.sock"
    with socket.socket(socket.AF_UNIX) as sock:
        sock.bind(str(path))
        _chmod_socket(path, 0o660)
        assert stat.S_IMODE(os.stat(path, follow_symlinks=False).st_mode) == 0o660
        path.rename(tmp_path / "moved.sock")
    victim = tmp_path / "victim"
    victim.write_text("secret")
    victim.chmod(0o600)
    path.symlink_to(victim)
    with pytest.raises(ConfigError, match="replaced"):
        _chmod_socket(path, 0o660)
    assert stat.S_IMODE(victim.stat().st_mode) == 0o600


def test_a_server_stopping_leaves_another_servers_socket_at_its_path(tmp_path: Path) -> None:
    """Red team 11: a daemon that lost its database lock (its state folder removed, another
    daemon started on a new one) removed, as it stopped, the socket the other had made at
    the same path; the other ran on, unreachable. A server removes only its own file."""
    from dedupd.control import ControlServer

    path = tmp_path / "dedupd.sock"
    first = ControlServer(path, None)  # type: ignore[arg-type]  # no request reaches it
    path.unlink()  # the state folder removed (the socket file with it)
    second = ControlServer(path, None)  # type: ignore[arg-type]
    try:
        first.stop()
        assert path.is_socket()
    finally:
        second.stop()
    assert not path.exists()
