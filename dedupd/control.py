"""The control socket: HTTP/JSON on a Unix socket, served by the daemon, used by dedupctl.

Handlers are thin: they check the request and call the daemon's `service.DaemonService`
(reads on a read-only connection of their own and the in-memory index; changes handed to
the daemon's thread and waited for). Requests are bounded in size and time; a malformed
request gets a 4xx answer, never a crash.

    curl --unix-socket /run/dedupd/dedupd.sock http://dedupd/v1/status
"""

from __future__ import annotations

import contextlib
import http
import http.client
import http.server
import io
import json
import os
import socket
import socketserver
import stat
import struct
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any
from urllib.parse import parse_qs, urlencode, urlsplit

import structlog

from dedupd import shapes
from dedupd.config import parse_duration
from dedupd.errors import (  # the daemon's errors live there, so the CLI need not import this
    Busy,
    ConfigError,
    DaemonAnswerInvalid,
    DaemonBusy,
    DaemonNotRunning,
    DaemonPermissionDenied,
    DaemonStopping,
    DaemonUnavailable,
    DaemonUntrusted,
    DedupdError,
    NotFoundError,
    Refused,
    StoreError,
)
from dedupd.hashers import TRANSFORMS
from dedupd.service import COMMAND_TIMEOUT

if TYPE_CHECKING:
    from dedupd.service import DaemonService

__all__ = [
    "API",
    "SERVICE_USER",
    "ControlClient",
    "ControlServer",
    "DaemonAnswerInvalid",
    "DaemonBusy",
    "DaemonNotRunning",
    "DaemonPermissionDenied",
    "DaemonUnavailable",
    "DaemonUntrusted",
    "Peer",
    "RequestError",
    "peer_of",
]

log = structlog.get_logger("dedupd.control")

API = "/v1"
MAX_BODY = 64 * 1024
MAX_DISCARD = 4 * 1024 * 1024  # an oversized body is read and dropped up to this much
MAX_HEAD = 16 * 1024  # request line and headers
REQUEST_TIMEOUT = 2.0  # seconds from connect until the whole request is in
ANSWER_TIMEOUT = 10.0  # seconds the client has to take the whole answer
MAX_WAITING = 64  # connections waiting on their client; one more cuts off the oldest
MAX_CLIENTS = 16  # requests run at once; more are answered 503 busy
MAX_RESULTS = 1000  # search results per request


class RequestError(DedupdError):
    """The daemon answered with an error."""

    def __init__(self, status: int, error: str, detail: str | None = None):
        self.status, self.error, self.detail = status, error, detail
        super().__init__(f"{error}: {detail}" if detail else error)


# The daemon's own refusals that the client raises again as themselves (by class name, as
# the server answers a DedupdError), so that a command reads and exits the same whether the
# daemon or the database answered it.
_RELAYED: dict[str, type[DedupdError]] = {e.__name__: e for e in (Refused, StoreError)}


class _BadRequest(Exception):
    def __init__(self, status: int, error: str, detail: str = "", allow: str | None = None):
        self.status, self.error, self.detail = status, error, detail
        self.allow = allow  # a 405's Allow: the methods the endpoint takes


# -- server -------------------------------------------------------------------------------------


class _Waiting:
    """Connections the server is waiting on, to send their request or to take our answer,
    each with a deadline.

    Waiting costs a thread and a socket but no worker slot, so slow or silent clients cannot
    starve a quick `status`: the serve loop cuts off whoever is overdue, and a connection
    beyond MAX_WAITING cuts off the one that has waited longest (a real client sends its
    request at once, so the oldest waiter is the likeliest to be stalling on purpose).
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._due: dict[socket.socket, float] = {}  # in the order they started waiting
        self._cut: set[socket.socket] = set()

    def start(self, sock: socket.socket, seconds: float) -> None:
        """Wait for `sock` at most `seconds` from now; make room for it first."""
        with self._lock:
            self._due.pop(sock, None)
            while len(self._due) >= MAX_WAITING:
                self._cut_off(next(iter(self._due)))
            self._due[sock] = time.monotonic() + seconds

    def stop(self, sock: socket.socket) -> bool:
        """No longer waiting on `sock`; False when it was cut off (it then gets no answer)."""
        with self._lock:
            self._due.pop(sock, None)
            return sock not in self._cut

    def forget(self, sock: socket.socket) -> None:
        with self._lock:
            self._due.pop(sock, None)
            self._cut.discard(sock)

    def reap(self) -> None:
        """Cut off every connection past its deadline."""
        now = time.monotonic()
        with self._lock:
            for sock in [s for s, due in self._due.items() if due <= now]:
                self._cut_off(sock)

    def cut_all(self) -> None:
        with self._lock:
            for sock in list(self._due):
                self._cut_off(sock)

    def _cut_off(self, sock: socket.socket) -> None:
        # shutdown, not close: the handler thread still owns the descriptor; its blocked
        # recv or send returns at once and it closes the socket itself.
        del self._due[sock]
        self._cut.add(sock)
        with contextlib.suppress(OSError):
            sock.shutdown(socket.SHUT_RDWR)


def _chmod_socket(path: Path, mode: int) -> None:
    """chmod the socket just bound at `path`, through a descriptor of what is there now
    (O_PATH, no link followed): chmod(path) follows a link, so in a folder others may
    write, one swapped in after the bind had root chmod whatever it named. ConfigError
    when no socket is there any more."""
    fd = os.open(path, os.O_PATH | os.O_NOFOLLOW | os.O_CLOEXEC)
    try:
        if not stat.S_ISSOCK(os.fstat(fd).st_mode):
            raise ConfigError(f"{path}: replaced by something else while it was set up")
        os.chmod(f"/proc/self/fd/{fd}", mode)  # fchmod refuses an O_PATH descriptor
    finally:
        os.close(fd)


class ControlServer(socketserver.ThreadingMixIn, socketserver.UnixStreamServer):
    """One thread per connection; started and stopped by the daemon.

    A connection waits (for its request, later for the client to take the answer) under a
    short deadline without holding a worker slot; only running a route holds one of the
    MAX_CLIENTS slots, and a request that finds them all busy gets 503 at once.
    """

    daemon_threads = True
    request_queue_size = 128  # a burst of connects waits in the backlog, not refused

    def __init__(self, path: Path, service: DaemonService):
        self.path, self.service = path, service
        self.slots = threading.BoundedSemaphore(MAX_CLIENTS)
        self.waiting = _Waiting()
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            _remove_stale_socket(path)
            super().__init__(str(path), _Handler)
        except OSError as exc:  # too long for a Unix socket, a folder this user may not write
            raise ConfigError(
                f"{path}: cannot listen on this socket: {exc.strerror or exc}; set `socket:`"
                " to a path this user may create, at most 107 bytes long",
                key="socket",
            ) from exc
        _chmod_socket(path, 0o660)
        st = os.lstat(path)
        self._bound = (st.st_dev, st.st_ino)  # the socket file this server made
        self._thread = threading.Thread(
            target=self.serve_forever, kwargs={"poll_interval": 0.2}, name="dedupd-control"
        )

    def process_request(self, request: Any, client_address: Any) -> None:
        # The clock starts at accept, so a client cannot stall before its handler runs.
        self.waiting.start(request, REQUEST_TIMEOUT)
        try:
            super().process_request(request, client_address)
        except BaseException:
            self.waiting.forget(request)
            raise

    def shutdown_request(self, request: Any) -> None:
        self.waiting.forget(request)
        super().shutdown_request(request)

    def handle_error(self, request: Any, client_address: Any) -> None:
        log.exception("control_connection_failed")  # to the daemon's log, not to stderr

    def service_actions(self) -> None:
        # Called by serve_forever at least every poll_interval: deadlines need no timer
        # thread per connection.
        super().service_actions()
        self.waiting.reap()

    def start(self) -> None:
        self._thread.start()
        log.info("control_socket", path=str(self.path))

    def stop(self) -> None:
        """Close the socket and remove its file; also when start() was never reached (the
        daemon failed to open its database)."""
        if self._thread.is_alive():  # shutdown() would wait forever for a loop never started
            self.shutdown()
        self.waiting.cut_all()  # nobody reaps any more: free the threads of waiting clients
        self.server_close()
        if self._thread.ident is not None:  # join() raises for a thread never started
            self._thread.join(timeout=10)
        # Only while it is the file this server made: a daemon that lost its database lock
        # to another one (its state folder removed) must not take away that one's socket,
        # which another daemon made anew at the same path (red team 11).
        with contextlib.suppress(FileNotFoundError):
            st = os.lstat(self.path)
            if (st.st_dev, st.st_ino) == self._bound:
                os.unlink(self.path)


def _remove_stale_socket(path: Path) -> None:
    """A socket file left by a killed daemon is removed; a live one means a second daemon."""
    try:
        mode = os.lstat(path).st_mode
    except FileNotFoundError:
        return
    if not stat.S_ISSOCK(mode):
        raise ConfigError(
            f"{path} exists and is not a socket; refusing to replace it", key="socket"
        )
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as probe:
        try:
            probe.connect(str(path))
        except (ConnectionRefusedError, FileNotFoundError):
            os.unlink(path)
            return
    raise ConfigError(f"{path}: another dedupd is already serving this socket", key="socket")


class _HeadTooLarge(Exception):
    pass


class _BoundedHead:
    """The request stream, whose lines (the request line and headers) may add up to at most
    MAX_HEAD bytes: http.server alone allows 100 headers of 64 KiB each, per connection."""

    def __init__(self, raw: io.BufferedIOBase):
        self._raw, self._left = raw, MAX_HEAD

    def readline(self, size: int = -1) -> bytes:
        want = self._left + 1 if size < 0 else min(size, self._left + 1)
        line = self._raw.readline(want)
        if len(line) > self._left:
            raise _HeadTooLarge
        self._left -= len(line)
        return line

    def read(self, size: int = -1) -> bytes:  # the body: bounded by _Handler._body
        return self._raw.read(size)

    def close(self) -> None:
        self._raw.close()


class _Handler(http.server.BaseHTTPRequestHandler):
    server: ControlServer
    timeout = REQUEST_TIMEOUT  # each read; the server's deadline bounds the whole request
    protocol_version = "HTTP/1.0"
    default_request_version = "HTTP/1.0"  # never 0.9: every answer has a status line

    def setup(self) -> None:
        super().setup()
        self.requestline, self.request_version = "", self.default_request_version  # until read
        self.rfile = _BoundedHead(self.rfile)  # type: ignore[assignment]

    def log_message(self, format: str, *args: Any) -> None:
        log.debug("control_request", message=format % args)

    def address_string(self) -> str:
        return "unix"

    def handle(self) -> None:
        try:
            super().handle()
        except _HeadTooLarge:
            self.close_connection = True
            self.send_error(431, "request head too large", f"at most {MAX_HEAD} bytes")

    def send_error(self, code: int, message: str | None = None, explain: str | None = None) -> None:
        # http.server's own refusals (a garbled request line, bad headers) in our JSON shape.
        self._answer(
            code, {"error": message or http.HTTPStatus(code).phrase, "detail": explain or ""}
        )

    def do_GET(self) -> None:
        self._dispatch("GET")

    def do_POST(self) -> None:
        self._dispatch("POST")

    # Other methods: 405 for a known endpoint, 404 for another (http.server said 501).
    def do_PUT(self) -> None:
        self._dispatch("PUT")

    def do_DELETE(self) -> None:
        self._dispatch("DELETE")

    def do_PATCH(self) -> None:
        self._dispatch("PATCH")

    def _dispatch(self, method: str) -> None:
        url = urlsplit(self.path)
        allow = None
        try:
            route = ROUTES.get((method, url.path))
            if route is None:
                allowed = ", ".join(m for m, path in ROUTES if path == url.path)
                raise _BadRequest(
                    405 if allowed else 404,
                    "method not allowed" if allowed else "unknown endpoint",
                    url.path,
                    allow=allowed or None,
                )
            # A file name need not be UTF-8: its escaped bytes come back as os.fsdecode's str.
            query = parse_qs(url.query, encoding="utf-8", errors="surrogateescape")
            params = {k: v[-1] for k, v in query.items()}
            body = self._body() if method == "POST" else {}
            if not self.server.waiting.stop(self.connection):
                return  # cut off before its request was in: it gets no answer
            status, answer = 200, self._run(route, params, body)
        except _BadRequest as exc:
            status, answer = exc.status, {"error": exc.error, "detail": exc.detail}
            allow = exc.allow
        except NotFoundError as exc:
            status, answer = 404, {"error": "not found", "detail": str(exc)}
        except DaemonStopping as exc:
            status, answer = 503, {"error": "stopping", "detail": str(exc)}
        except Busy as exc:
            status, answer = 503, {"error": "busy", "detail": str(exc)}
        except DedupdError as exc:
            status, answer = 400, {"error": type(exc).__name__, "detail": str(exc)}
        except Exception as exc:  # a bug: answer 500, log it, keep serving
            log.exception("control_request_failed", path=url.path)
            status, answer = 500, {"error": "internal error", "detail": repr(exc)}
        self._answer(status, answer, allow=allow)

    def _run(self, route: Route, params: dict[str, str], body: dict[str, Any]) -> dict[str, Any]:
        """Run `route` in one of the MAX_CLIENTS slots; only this part holds one."""
        if not self.server.slots.acquire(blocking=False):  # answer now rather than queue
            raise _BadRequest(503, "busy", f"{MAX_CLIENTS} requests are running; try again")
        try:
            return route(self.server.service, params, body)
        finally:
            self.server.slots.release()

    def _answer(self, status: int, answer: dict[str, Any], *, allow: str | None = None) -> None:
        waiting, conn = self.server.waiting, self.connection
        if not waiting.stop(conn):
            return  # cut off: nobody to answer
        data = json.dumps(answer).encode()
        # The client has ANSWER_TIMEOUT to take the whole answer; one that does not read
        # is cut off by the server's deadline, the socket timeout is a backstop.
        waiting.start(conn, ANSWER_TIMEOUT)
        try:
            conn.settimeout(ANSWER_TIMEOUT)
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            if allow is not None:
                self.send_header("Allow", allow)
            self.end_headers()
            self.wfile.write(data)
        except OSError:
            pass  # the client went away, or was cut off
        finally:
            waiting.stop(conn)

    def _discard(self, size: int) -> None:
        with contextlib.suppress(OSError):
            while size > 0 and (chunk := self.rfile.read(min(size, 65536))):
                size -= len(chunk)

    def _body(self) -> dict[str, Any]:
        length = self.headers.get("Content-Length")
        if length is None:
            raise _BadRequest(411, "length required", "POST needs a Content-Length")
        try:
            size = int(length)
        except ValueError as exc:
            raise _BadRequest(400, "bad request", "Content-Length is not a number") from exc
        if size < 0:
            raise _BadRequest(400, "bad request", "Content-Length is negative")
        if size > MAX_BODY:
            self._discard(min(size, MAX_DISCARD))  # so the client reads our answer, not a reset
            raise _BadRequest(413, "body too large", f"at most {MAX_BODY} bytes")
        raw = self.rfile.read(size) if size else b"{}"
        try:
            body = json.loads(raw or b"{}")
        except ValueError as exc:  # not UTF-8, not JSON, an integer of 5,000 digits
            raise _BadRequest(400, "bad request", f"body is not JSON: {exc}") from exc
        except RecursionError as exc:  # `[[[[…` a few thousand deep: no request of ours
            raise _BadRequest(400, "bad request", "body is nested too deeply") from exc
        if not isinstance(body, dict):
            raise _BadRequest(400, "bad request", "body must be a JSON object")
        return body


# -- routes: parse and check the request, then ask the service -------------------------------

Route = Callable[["DaemonService", dict[str, str], dict[str, Any]], dict[str, Any]]


def _int(params: dict[str, str], name: str, default: int) -> int:
    try:
        value = int(params.get(name, default))
    except ValueError as exc:
        raise _BadRequest(400, "bad request", f"{name} must be an integer") from exc
    if value < 1:
        raise _BadRequest(400, "bad request", f"{name} must be >= 1")
    return value


def _threshold(params: dict[str, str]) -> float | None:
    if "threshold" not in params:
        return None
    try:
        value = float(params["threshold"])
    except ValueError as exc:
        raise _BadRequest(400, "bad request", "threshold must be a number") from exc
    if not 0 <= value <= 1:
        raise _BadRequest(400, "bad request", "threshold must be between 0 and 1")
    return value


def _status(svc: DaemonService, params: dict[str, str], body: dict[str, Any]) -> dict[str, Any]:
    return svc.status()


def _search(svc: DaemonService, params: dict[str, str], body: dict[str, Any]) -> dict[str, Any]:
    # POST carries the same fields in its body: a query image's local features (for the crop
    # stage) do not fit in a request head.
    params = {**params, **{k: str(v) for k, v in body.items() if v is not None}}
    if "path" in params:
        # The daemon never opens a file for a client: it may read folders the client cannot,
        # and decoding is the client's cost to bear (dedupctl hashes with max_pixels).
        raise _BadRequest(
            400,
            "bad request",
            "path= is not accepted: hash the image yourself and send hash= (and sha256=); "
            "`dedupctl search IMAGE` does this",
        )
    if "hash" not in params:
        raise _BadRequest(400, "bad request", "give hash= (hex) and optionally sha256=")
    try:
        bits = bytes.fromhex(params["hash"])
    except ValueError as exc:
        raise _BadRequest(400, "bad request", "hash must be hex") from exc
    nbits = svc.hash_bits
    if len(bits) * 8 < nbits or len(bits) * 8 >= nbits + 8:
        raise _BadRequest(400, "bad request", f"hash must have {nbits} bits")
    variants: list[bytes] = []
    if params.get("variants"):
        try:
            variants = [bytes.fromhex(v) for v in params["variants"].split(",")]
        except ValueError as exc:
            raise _BadRequest(400, "bad request", "variants must be comma-separated hex") from exc
        if len(variants) != len(TRANSFORMS) or any(len(v) != len(bits) for v in variants):
            raise _BadRequest(
                400, "bad request", f"variants must be {len(TRANSFORMS)} hashes like hash="
            )
    features = None
    if params.get("features"):
        from dedupd.features import Features
        from dedupd.service import decode_features

        try:
            features = decode_features(params["features"])
            Features.from_local(features)  # the kind and shape the crop stage reads
        except ValueError as exc:
            raise _BadRequest(400, "bad request", f"features: {exc}") from exc
    frames: list[bytes] = []
    if params.get("frames"):
        try:
            frames = [bytes.fromhex(v) for v in params["frames"].split(",")]
        except ValueError as exc:
            raise _BadRequest(400, "bad request", "frames must be comma-separated hex") from exc
        if any(len(f) != len(bits) for f in frames):
            raise _BadRequest(400, "bad request", "frames must be hashes like hash=")
    k, threshold = min(_int(params, "k", 10), MAX_RESULTS), _threshold(params)
    return svc.search(
        bits,
        sha256=params.get("sha256"),
        k=k,
        threshold=threshold,
        variants=variants,
        features=features,
        frames=frames,
    )


def _groups(svc: DaemonService, params: dict[str, str], body: dict[str, Any]) -> dict[str, Any]:
    return svc.groups()


def _file(svc: DaemonService, params: dict[str, str], body: dict[str, Any]) -> dict[str, Any]:
    if "path" not in params:
        raise _BadRequest(400, "bad request", "give path=")
    return svc.file_info(params["path"])


def _quarantine(
    svc: DaemonService, params: dict[str, str], body: dict[str, Any]
) -> dict[str, Any]:
    since = None
    if "since" in params:
        try:
            since = parse_duration(params["since"])
        except ValueError as exc:
            raise _BadRequest(400, "bad request", "since must be a duration like 7d") from exc
    return svc.quarantine_list(root=params.get("root"), since=since)


def _strings(body: dict[str, Any], name: str) -> list[str]:
    value = body.get(name)
    if not isinstance(value, list) or not value or not all(isinstance(v, str) for v in value):
        raise _BadRequest(400, "bad request", f"{name} must be a non-empty list of strings")
    return value


def _quarantine_add(
    svc: DaemonService, params: dict[str, str], body: dict[str, Any]
) -> dict[str, Any]:
    path, keeper = body.get("path"), body.get("keeper")
    if not isinstance(path, str) or not isinstance(keeper, str):
        raise _BadRequest(400, "bad request", "path and keeper must be paths")
    return svc.quarantine(path, keeper)


def _restore(svc: DaemonService, params: dict[str, str], body: dict[str, Any]) -> dict[str, Any]:
    return svc.restore(_strings(body, "items"))


def _purge(svc: DaemonService, params: dict[str, str], body: dict[str, Any]) -> dict[str, Any]:
    older = body.get("older_than", svc.quarantine_retain)
    try:
        seconds = parse_duration(older)
    except ValueError as exc:
        raise _BadRequest(400, "bad request", "older_than must be a duration") from exc
    ids = body.get("ids")
    if ids is not None and (
        not isinstance(ids, list)
        or not all(isinstance(i, int) and not isinstance(i, bool) for i in ids)
    ):
        raise _BadRequest(400, "bad request", "ids must be a list of action ids")
    return svc.purge(seconds, ids)


def _distinct(svc: DaemonService, params: dict[str, str], body: dict[str, Any]) -> dict[str, Any]:
    paths = _strings(body, "paths")
    if len(paths) != 2:
        raise _BadRequest(400, "bad request", "paths must name exactly two files")
    return svc.distinct(*paths)


def _rescan(svc: DaemonService, params: dict[str, str], body: dict[str, Any]) -> dict[str, Any]:
    root = body.get("root")
    if root is not None and not isinstance(root, str):
        raise _BadRequest(400, "bad request", "root must be a path")
    return svc.rescan(root)


def _reload(svc: DaemonService, params: dict[str, str], body: dict[str, Any]) -> dict[str, Any]:
    return svc.reload()


ROUTES: dict[tuple[str, str], Route] = {
    ("GET", f"{API}/status"): _status,
    ("GET", f"{API}/search"): _search,
    ("POST", f"{API}/search"): _search,
    ("GET", f"{API}/groups"): _groups,
    ("GET", f"{API}/files"): _file,
    ("GET", f"{API}/quarantine"): _quarantine,
    ("POST", f"{API}/quarantine/add"): _quarantine_add,
    ("POST", f"{API}/quarantine/restore"): _restore,
    ("POST", f"{API}/quarantine/purge"): _purge,
    ("POST", f"{API}/distinct"): _distinct,
    ("POST", f"{API}/rescan"): _rescan,
    ("POST", f"{API}/reload"): _reload,
}


# -- client -------------------------------------------------------------------------------------


# The user the system unit runs the daemon as (units/dedupd.service: User=dedupd), whose
# group dedupctl's users join to reach /run/dedupd/dedupd.sock.
SERVICE_USER = "dedupd"


@dataclass(frozen=True)
class Peer:
    """The process listening at the other end of a connection, as the kernel knows it."""

    pid: int
    uid: int


def peer_of(sock: socket.socket) -> Peer:
    """Who listens at the other end of the connected Unix socket `sock`: SO_PEERCRED, the
    credentials the kernel took when that process called listen(). Unlike the owner of the
    socket's file, which says who made a name, this is the process that answers."""
    ucred = sock.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, struct.calcsize("iII"))
    pid, uid, _gid = struct.unpack("iII", ucred)
    return Peer(pid, uid)


def _user(uid: int) -> str:
    import pwd

    try:
        return f"uid {uid} ({pwd.getpwuid(uid).pw_name})"
    except KeyError:
        return f"uid {uid}"


def _service_uid() -> int | None:
    import pwd

    try:
        return pwd.getpwnam(SERVICE_USER).pw_uid
    except KeyError:
        return None


def _check_peer(path: Path, peer: Peer) -> None:
    """Raise DaemonUntrusted unless `peer` runs as root, as this user, or as the system
    service's user: anyone else who made a socket at the path (in a folder others may
    write, or named with --socket or `socket:`) could answer whatever they like, and learn
    what dedupctl asks (the paths to restore, the hashes of a query image)."""
    me = os.geteuid()
    if peer.uid in (0, me):
        return
    service = _service_uid()  # looked up only now: a name service may be slow
    if peer.uid == service:
        return
    allowed = (
        f"root, as you (uid {me}) or as the service user {SERVICE_USER} (uid {service})"
        if service is not None
        else f"root or as you (uid {me}), and no user {SERVICE_USER} exists here"
    )
    raise DaemonUntrusted(
        f"{path}: the process listening there (pid {peer.pid}) runs as {_user(peer.uid)},"
        f" not as {allowed}; not asking it: stop it, or pass your daemon's socket with"
        " --socket"
    )


class _UnixConnection(http.client.HTTPConnection):
    def __init__(self, path: Path, timeout: float, peer: Callable[[socket.socket], Peer]):
        super().__init__("dedupd", timeout=timeout)
        self.unix_path, self._peer = path, peer

    def connect(self) -> None:
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        sock.settimeout(self.timeout)
        try:
            sock.connect(str(self.unix_path))
            _check_peer(self.unix_path, self._peer(sock))  # before a byte is sent
        except BaseException:
            sock.close()
            raise
        self.sock = sock


def _join_advice(path: Path) -> str:
    """How to get access to the socket at `path`: join the group of the socket, or of its
    folder when even that cannot be looked into (the system unit's /run/dedupd is 0750)."""
    import grp

    for candidate in (path, path.parent):
        try:
            group = grp.getgrgid(os.stat(candidate).st_gid).gr_name
        except (OSError, KeyError):
            continue
        return f'join its group: sudo usermod -aG {group} "$USER", then log in again'
    return "join the group that owns the socket"


class ControlClient:
    """dedupctl's side: one request per call. Raises a DaemonUnavailable (which one says
    whether a daemon is there at all), NotFoundError or RequestError.

    Everything the socket answers is checked here, before any of dedupctl uses it: who
    listens (root, this user or the service user; else DaemonUntrusted, and nothing is
    sent), and that the answer is JSON of its endpoint's shape (`shapes.ANSWERS`; else
    DaemonAnswerInvalid). `peer` says who listens on a connected socket (default
    `peer_of`; tests pretend to be someone else with it)."""

    def __init__(
        self,
        path: Path,
        timeout: float = COMMAND_TIMEOUT + 5,
        *,
        peer: Callable[[socket.socket], Peer] | None = None,
    ):
        self.path, self.timeout = path, timeout
        self._peer = peer

    def get(self, endpoint: str, **params: Any) -> dict[str, Any]:
        query = urlencode(
            {k: v for k, v in params.items() if v is not None},
            encoding="utf-8",
            errors="surrogateescape",  # a path that is not UTF-8 is sent as its own bytes
        )
        return self._request("GET", endpoint, query, None)

    def post(self, endpoint: str, body: dict[str, Any] | None = None) -> dict[str, Any]:
        return self._request("POST", endpoint, "", body or {})

    def _request(
        self, method: str, endpoint: str, query: str, body: dict[str, Any] | None
    ) -> dict[str, Any]:
        shape = shapes.ANSWERS[endpoint]  # KeyError: a request dedupd has no endpoint for
        url = f"{API}/{endpoint}"
        conn = _UnixConnection(self.path, self.timeout, self._peer or peer_of)
        try:
            data = json.dumps(body).encode() if body is not None else None
            headers = {"Content-Type": "application/json"} if data is not None else {}
            conn.request(method, url + (f"?{query}" if query else ""), body=data, headers=headers)
            response = conn.getresponse()
            raw = response.read()
        except (FileNotFoundError, ConnectionRefusedError) as exc:
            raise DaemonNotRunning(
                f"dedupd is not running (nothing answers on {self.path}); start it with "
                "`dedupd run` or `systemctl start dedupd`"
            ) from exc
        except BlockingIOError as exc:
            # EAGAIN from connect(): a daemon listens but its queue of connections waiting to
            # be accepted is full (it does not accept yet, during its start-up reconcile).
            raise DaemonBusy("busy", f"{self.path} accepts no more connections now") from exc
        except PermissionError as exc:
            raise DaemonPermissionDenied(
                f"{self.path}: permission denied; {_join_advice(self.path)}"
            ) from exc
        except (ConnectionError, TimeoutError) as exc:  # also a hang-up before any answer
            raise DaemonUnavailable(f"dedupd did not answer on {self.path}: {exc!r}") from exc
        except http.client.IncompleteRead as exc:
            raise self._invalid(
                method, url, f"it was cut short (its body ended after {len(exc.partial)} bytes)"
            ) from exc
        except http.client.HTTPException as exc:  # a status line or header that is not HTTP
            raise self._invalid(method, url, f"it is not HTTP ({type(exc).__name__})") from exc
        except OSError as exc:  # a path no socket can have: too long, through a file
            raise DaemonUnavailable(
                f"cannot connect to {self.path}: {exc.strerror or exc}; pass the daemon's "
                "socket with --socket"
            ) from exc
        finally:
            conn.close()
        answer = self._checked(method, url, response.status, raw, shape)
        if response.status == 503:
            state = answer["error"] if answer["error"] in ("busy", "stopping") else "busy"
            raise DaemonBusy(state, answer.get("detail"))
        if response.status >= 400:
            if response.status == 404 and answer["error"] == "not found":
                raise NotFoundError(answer.get("detail") or "not found")
            known = _RELAYED.get(answer["error"])
            if response.status == 400 and known is not None and answer.get("detail"):
                raise known(answer["detail"])  # as the local backend says it, word for word
            raise RequestError(response.status, answer["error"], answer.get("detail"))
        return answer

    def _checked(
        self, method: str, url: str, status: int, raw: bytes, shape: shapes.Shape
    ) -> dict[str, Any]:
        """The answer `raw` as JSON, when it has `shape` (for 200; the error shape for a
        4xx or 5xx). Raises DaemonAnswerInvalid."""
        if status != 200 and not 400 <= status < 600:
            raise self._invalid(method, url, f"its status is {status}, which dedupd never sends")
        try:
            answer = json.loads(raw or b"{}")
        except ValueError as exc:  # not UTF-8, not JSON, cut short, a 5,000-digit integer
            raise self._invalid(method, url, f"it is not JSON ({exc})") from exc
        except RecursionError as exc:
            raise self._invalid(method, url, "it is JSON nested too deeply") from exc
        wrong = shapes.problem(shape if status == 200 else shapes.ERROR, answer)
        if wrong is not None:
            raise self._invalid(method, url, wrong)
        return answer  # type: ignore[no-any-return]

    def _invalid(self, method: str, url: str, what: str) -> DaemonAnswerInvalid:
        return DaemonAnswerInvalid(
            f"the answer on {self.path} to {method} {url} is not dedupd's: {what}; not using"
            " it (is another program, or a dedupd of another version, listening there?)"
        )
