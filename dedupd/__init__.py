"""dedupd: keep photo folders free of duplicates while they fill."""

from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("dedupd")
except PackageNotFoundError:  # running from a source tree without an install
    __version__ = "0.0.0"

__all__ = ["__version__"]
