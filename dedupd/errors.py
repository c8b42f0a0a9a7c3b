"""The one exception family library code raises; only the CLI turns these into messages."""

from __future__ import annotations

__all__ = [
    "Busy",
    "ConfigError",
    "DaemonAnswerInvalid",
    "DaemonBusy",
    "DaemonNotRunning",
    "DaemonPermissionDenied",
    "DaemonStopping",
    "DaemonUnavailable",
    "DaemonUntrusted",
    "DedupdError",
    "ImageError",
    "NotFoundError",
    "Refused",
    "StoreError",
]


class DedupdError(Exception):
    """Base of every error dedupd raises on purpose."""


class ConfigError(DedupdError):
    """A configuration file or option is invalid; the message names the key and the fix."""

    def __init__(self, message: str, *, source: str | None = None, key: str | None = None):
        self.source = source
        self.key = key
        self.detail = message
        where = ": ".join(part for part in (source, key) if part)
        super().__init__(f"{where}: {message}" if where else message)


class StoreError(DedupdError):
    """The database cannot be opened or has a schema this version does not understand."""


class NotFoundError(DedupdError):
    """A file, path or record asked for does not exist."""


class Refused(DedupdError):
    """A request that would record something false; the message says what to do instead."""


class ImageError(DedupdError):
    """A file could not be turned into hashes. `kind` is the stable code recorded in the store."""

    kind = "error"

    def __init__(self, path: str, detail: str):
        self.path = path
        self.detail = detail
        super().__init__(f"{path}: {detail}")


class Busy(DedupdError):
    """The daemon did not get to a change in time (the socket answers 503 "busy")."""


class DaemonStopping(DedupdError):
    """A request reached the daemon while it was shutting down."""


class DaemonUnavailable(DedupdError):
    """The daemon could not be asked: the base of the reasons below, and itself "it did not
    answer" (connection dropped, timeout). Defined here, not in `control`, so that the CLI
    need not import the HTTP machinery to name them."""


class DaemonNotRunning(DaemonUnavailable):
    """Nothing listens on the socket (no socket file, connection refused). The only reason
    that lets dedupctl work on the database itself."""


class DaemonPermissionDenied(DaemonUnavailable):
    """The socket exists but this user may not connect to it."""


class DaemonUntrusted(DaemonUnavailable):
    """The process listening on the socket runs as a user dedupctl does not trust (not root,
    not the caller, not the service user): nothing was sent to it, and it is never a reason
    to work on the database instead."""


class DaemonAnswerInvalid(DaemonUnavailable):
    """Something answered on the socket, but not as dedupd answers (not HTTP, not JSON, cut
    short, a field missing or of another type): the answer is not used, and it is never a
    reason to work on the database instead. The message names the socket, the request and
    what was wrong."""


class DaemonBusy(DaemonUnavailable):
    """A live daemon answered 503: `state` is "busy" (it did not get to the request in time)
    or "stopping". Never a reason to work around it: it still owns the database."""

    def __init__(self, state: str, detail: str | None):
        self.state, self.detail = state, detail
        advice = "try again once it has restarted" if state == "stopping" else "try again later"
        super().__init__(f"dedupd is {state}" + (f" ({detail})" if detail else "") + f"; {advice}")
