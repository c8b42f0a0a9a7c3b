"""The review page: a small web server on the loopback, run by `dedupctl review`.

It shows the quarantine (each photo beside its keeper) and the reported groups, and its
buttons ask the same `service.Service` every dedupctl command asks: the daemon over its
socket, or the database when none runs. The page never moves a file itself.

Who may use it: only this machine (bound to 127.0.0.1) and only whoever has the URL printed
at start, which carries a per-run token (as Jupyter's does). The first visit with the token
sets an HttpOnly, SameSite=Strict cookie; every request, page, API or image, needs the token
or the cookie (else 401). Requests whose Host is not this server's own name are refused
(403: a DNS-rebinding page would send its own), and so are changes (POST) whose Origin or
Sec-Fetch-Site is not this very page (403: another site open in the same browser would send
the cookie, never the page's origin) or whose body is not JSON (415). Images are served by
the id of a record the service listed (a file id, or a quarantine's action id), never by a
path from the request, through `thumbs` (imaging's guarded read, its allowlist and pixel
limit).
"""

from __future__ import annotations

import hmac
import http.server
import json
import re
import secrets
import socketserver
import threading
from collections.abc import Callable
from http import HTTPStatus
from http.cookies import SimpleCookie
from importlib import resources
from typing import Any
from urllib.parse import parse_qs, urlsplit

import structlog

from dedupd.errors import DaemonBusy, DaemonUnavailable, DedupdError, NotFoundError
from dedupd.service import Service
from dedupd.thumbs import Thumbnails

__all__ = ["HOST", "ReviewServer"]

log = structlog.get_logger("dedupd.review")

HOST = "127.0.0.1"
MAX_BODY = 64 * 1024
MAX_IDS = 500  # items in one request: a selection of a whole page
# The page's own files, by the URL path that serves each: nothing else is ever read.
_STATIC = {
    "/": ("index.html", "text/html; charset=utf-8"),
    "/app.js": ("app.js", "text/javascript; charset=utf-8"),
    "/app.css": ("app.css", "text/css; charset=utf-8"),
}
_IMAGE = re.compile(r"/img/(file|action)/([0-9]{1,18})")
_SECURITY_HEADERS = {
    "Content-Security-Policy": "default-src 'self'; img-src 'self' data:; "
    "frame-ancestors 'none'; base-uri 'none'; form-action 'none'",
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",  # the token in the first URL goes nowhere
    "Cache-Control": "no-store",
}


class _Refusal(Exception):
    def __init__(self, status: int, message: str):
        self.status, self.message = status, message


class _Known:
    """What the service last listed, by id: where a picture can be read, and its record.
    Images are served only for these."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.files: dict[int, tuple[str, dict[str, Any]]] = {}
        self.actions: dict[int, tuple[str | None, dict[str, Any] | None]] = {}

    def learn_quarantine(self, answer: dict[str, Any]) -> None:
        with self._lock:
            for e in answer["quarantined"]:
                self.actions[e["id"]] = (e.get("dst"), e.get("file"))
                keeper = e.get("keeper")
                if keeper is not None:
                    self.files[keeper["id"]] = (keeper["path"], keeper)

    def learn_groups(self, answer: dict[str, Any]) -> None:
        with self._lock:
            for g in answer["groups"]:
                for f in (g["keeper"], *g["duplicates"]):
                    self.files[f["id"]] = (f["path"], f)

    def image(self, kind: str, ident: int) -> tuple[str | None, dict[str, Any] | None] | None:
        with self._lock:
            return (self.files if kind == "file" else self.actions).get(ident)


class ReviewServer(http.server.ThreadingHTTPServer):
    """The page's server: `start()` serves on a thread, `stop()` ends it. `url` is what to
    open (it carries the token)."""

    daemon_threads = True
    allow_reuse_address = False

    def __init__(
        self, service: Service, thumbs: Thumbnails, *, port: int = 0, token: str | None = None
    ):
        super().__init__((HOST, port), _Handler)
        self.service, self.thumbs = service, thumbs
        self.token = token or secrets.token_urlsafe(32)
        self.port = self.server_address[1]
        self.known = _Known()
        self._service_lock = threading.Lock()  # one question at a time, as dedupctl asks
        self._thread = threading.Thread(target=self.serve_forever, name="dedupd-review")

    @property
    def url(self) -> str:
        return f"http://{HOST}:{self.port}/?token={self.token}"

    @property
    def origins(self) -> tuple[str, ...]:
        return tuple(f"http://{name}:{self.port}" for name in (HOST, "localhost"))

    @property
    def cookie_name(self) -> str:
        return f"dedupd_review_{self.port}"  # cookies ignore ports: one per server

    def server_bind(self) -> None:
        # HTTPServer's own looks the host's name up (getfqdn), which may wait on DNS.
        socketserver.TCPServer.server_bind(self)
        self.server_name, self.server_port = HOST, self.server_address[1]

    def ask(self, question: Callable[[Service], dict[str, Any]]) -> dict[str, Any]:
        with self._service_lock:
            return question(self.service)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        if self._thread.is_alive():
            self.shutdown()
            self._thread.join(timeout=10)
        self.server_close()

    def handle_error(self, request: Any, client_address: Any) -> None:
        log.exception("review_request_failed")


class _Handler(http.server.BaseHTTPRequestHandler):
    server: ReviewServer
    protocol_version = "HTTP/1.1"
    timeout = 30

    def log_message(self, format: str, *args: Any) -> None:
        log.debug("review_request", message=format % args)

    def do_GET(self) -> None:
        self._dispatch("GET")

    def do_POST(self) -> None:
        self._dispatch("POST")

    # -- checks ------------------------------------------------------------------------------
    def _check_host(self) -> None:
        host = self.headers.get("Host", "")
        if host not in {o.removeprefix("http://") for o in self.server.origins}:
            raise _Refusal(403, "wrong Host: open the URL dedupctl review printed")

    def _token_given(self, query: dict[str, list[str]]) -> str | None:
        """The token of the URL, if it carries the right one (the first visit)."""
        for given in query.get("token", []):
            # A %-escape that is not UTF-8 comes as a surrogate: compared as its bytes.
            if hmac.compare_digest(
                given.encode("utf-8", "surrogateescape"), self.server.token.encode()
            ):
                return given
        return None

    def _check_token(self, query: dict[str, list[str]]) -> bool:
        """True when the URL carried the token (the answer then sets the cookie)."""
        if self._token_given(query):
            return True
        cookies = SimpleCookie()
        try:
            cookies.load(self.headers.get("Cookie", ""))
        except Exception:  # a malformed cookie header is no token
            cookies = SimpleCookie()
        morsel = cookies.get(self.server.cookie_name)
        if morsel is not None and hmac.compare_digest(
            morsel.value.encode(), self.server.token.encode()
        ):
            return False
        raise _Refusal(401, "no token: open the URL dedupctl review printed")

    def _check_same_origin(self) -> None:
        """A change must come from this page: its Origin, and (where the browser says) a
        same-origin fetch. A request that says neither is refused too."""
        origin = self.headers.get("Origin")
        site = self.headers.get("Sec-Fetch-Site")
        if origin is None and site is None:
            raise _Refusal(403, "a change needs the page's Origin")
        if origin is not None and origin not in self.server.origins:
            raise _Refusal(403, f"cross-origin request from {origin} refused")
        if site is not None and site != "same-origin":
            raise _Refusal(403, f"{site} request refused")
        if self.headers.get_content_type() != "application/json":
            raise _Refusal(415, "a change is sent as JSON")

    # -- dispatch ----------------------------------------------------------------------------
    def _dispatch(self, method: str) -> None:
        url = urlsplit(self.path)
        query = parse_qs(url.query, errors="surrogateescape")
        set_cookie = False
        try:
            self._check_host()
            set_cookie = self._check_token(query)
            if method == "POST":
                self._check_same_origin()
                route = _POSTS.get(url.path)
                if route is None:
                    raise _Refusal(404, "no such action")
                answer = route(self.server, self._body())
                self._send_json(200, answer)
                return
            if url.path in _STATIC:
                name, media = _STATIC[url.path]
                data = resources.files("dedupd").joinpath("review_static", name).read_bytes()
                self._send(200, data, media, set_cookie=set_cookie)
            elif url.path in _GETS:
                self._send_json(200, _GETS[url.path](self.server, query))
            elif m := _IMAGE.fullmatch(url.path):
                self._send(200, *self._image(m.group(1), int(m.group(2))))
            else:
                raise _Refusal(404, "not found")
        except _Refusal as exc:
            self._send_json(exc.status, {"error": exc.message})
        except NotFoundError as exc:
            self._send_json(404, {"error": str(exc)})
        except (DaemonBusy, DaemonUnavailable) as exc:
            self._send_json(503, {"error": str(exc)})
        except DedupdError as exc:
            self._send_json(409, {"error": str(exc)})
        except Exception as exc:  # a bug: answer 500, log it, keep serving
            log.exception("review_request_failed", path=url.path)
            self._send_json(500, {"error": f"internal error: {exc!r}"})

    def _body(self) -> dict[str, Any]:
        try:
            size = int(self.headers.get("Content-Length", ""))
        except ValueError as exc:
            raise _Refusal(411, "a change needs a Content-Length") from exc
        if not 0 <= size <= MAX_BODY:
            raise _Refusal(413, f"at most {MAX_BODY} bytes")
        try:
            body = json.loads(self.rfile.read(size) or b"{}")
        except ValueError as exc:  # not UTF-8, not JSON, an integer of 5,000 digits
            raise _Refusal(400, f"body is not JSON: {exc}") from exc
        except RecursionError as exc:  # `[[[[…` a few thousand deep: no request of ours
            raise _Refusal(400, "body is nested too deeply") from exc
        if not isinstance(body, dict):
            raise _Refusal(400, "body must be a JSON object")
        return body

    def _image(self, kind: str, ident: int) -> tuple[bytes, str]:
        known = self.server.known
        found = known.image(kind, ident)
        if found is None:  # listed since the page last asked: ask again, once
            known.learn_quarantine(self.server.ask(lambda s: s.quarantine_list()))
            known.learn_groups(self.server.ask(lambda s: s.groups()))
            found = known.image(kind, ident)
        if found is None:
            raise _Refusal(404, f"no {kind} {ident} in the quarantine or the groups")
        return self.server.thumbs.picture(*found)

    # -- answers -----------------------------------------------------------------------------
    def _send_json(self, status: int, answer: dict[str, Any]) -> None:
        self._send(status, json.dumps(answer).encode(), "application/json")

    def _send(self, status: int, data: bytes, media: str, *, set_cookie: bool = False) -> None:
        self.send_response(status, HTTPStatus(status).phrase)
        self.send_header("Content-Type", media)
        self.send_header("Content-Length", str(len(data)))
        for name, value in _SECURITY_HEADERS.items():
            self.send_header(name, value)
        if status >= 400:  # a refused request's body may be unread: end the connection
            self.send_header("Connection", "close")
            self.close_connection = True
        if set_cookie:
            self.send_header(
                "Set-Cookie",
                f"{self.server.cookie_name}={self.server.token}; HttpOnly; SameSite=Strict; Path=/",
            )
        self.end_headers()
        self.wfile.write(data)


# -- routes: check the request, ask the service ------------------------------------------------

GetRoute = Callable[[ReviewServer, dict[str, list[str]]], dict[str, Any]]
PostRoute = Callable[[ReviewServer, dict[str, Any]], dict[str, Any]]


def _quarantine(server: ReviewServer, query: dict[str, list[str]]) -> dict[str, Any]:
    root = query["root"][-1] if query.get("root") else None
    since: float | None = None
    if query.get("since"):
        try:
            since = float(query["since"][-1])
        except ValueError as exc:
            raise _Refusal(400, "since must be a number of seconds") from exc
    answer = server.ask(lambda s: s.quarantine_list(root=root, since=since))
    server.known.learn_quarantine(answer)
    if root is not None or since is not None:  # the roots to choose from: all of them
        everything = server.ask(lambda s: s.quarantine_list())
        server.known.learn_quarantine(everything)
    else:
        everything = answer
    roots = sorted({e["file"]["root"] for e in everything["quarantined"] if e.get("file")})
    return {**answer, "roots": roots}


def _groups(server: ReviewServer, query: dict[str, list[str]]) -> dict[str, Any]:
    answer = server.ask(lambda s: s.groups())
    server.known.learn_groups(answer)
    return answer


def _ids(body: dict[str, Any]) -> list[int]:
    ids = body.get("ids")
    if (
        not isinstance(ids, list)
        or not 0 < len(ids) <= MAX_IDS
        or not all(isinstance(i, int) and not isinstance(i, bool) for i in ids)
    ):
        raise _Refusal(400, f"ids must be a list of 1 to {MAX_IDS} quarantine ids")
    return ids


def _paths(body: dict[str, Any], *names: str) -> list[str]:
    values = [body.get(n) for n in names]
    if not all(isinstance(v, str) and v for v in values):
        raise _Refusal(400, f"{' and '.join(names)} must be paths")
    return [str(v) for v in values]


def _restore(server: ReviewServer, body: dict[str, Any]) -> dict[str, Any]:
    ids = [str(i) for i in _ids(body)]
    return server.ask(lambda s: s.restore(ids))


def _purge(server: ReviewServer, body: dict[str, Any]) -> dict[str, Any]:
    ids = _ids(body)
    return server.ask(lambda s: s.purge(0, ids))  # "purge now": whatever their age


def _quarantine_one(server: ReviewServer, body: dict[str, Any]) -> dict[str, Any]:
    path, keeper = _paths(body, "path", "keeper")
    return server.ask(lambda s: s.quarantine(path, keeper))


def _distinct(server: ReviewServer, body: dict[str, Any]) -> dict[str, Any]:
    a, b = _paths(body, "a", "b")
    return server.ask(lambda s: s.distinct(a, b))


_GETS: dict[str, GetRoute] = {"/api/quarantine": _quarantine, "/api/groups": _groups}
_POSTS: dict[str, PostRoute] = {
    "/api/restore": _restore,
    "/api/purge": _purge,
    "/api/quarantine": _quarantine_one,
    "/api/distinct": _distinct,
}
