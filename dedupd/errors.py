"""The one exception family library code raises; only the CLI turns these into messages."""

from __future__ import annotations

__all__ = [
    "ConfigError",
    "DaemonStopping",
    "DaemonUnavailable",
    "DedupdError",
    "ImageError",
    "NotFoundError",
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


class ImageError(DedupdError):
    """A file could not be turned into hashes. `kind` is the stable code recorded in the store."""

    kind = "error"

    def __init__(self, path: str, detail: str):
        self.path = path
        self.detail = detail
        super().__init__(f"{path}: {detail}")


class DaemonStopping(DedupdError):
    """A request reached the daemon while it was shutting down."""


class DaemonUnavailable(DedupdError):
    """No daemon answers on the socket."""
