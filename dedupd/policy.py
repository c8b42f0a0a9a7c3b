"""Pure decisions: which file of a duplicate group is the keeper.

No filesystem, no clock: everything needed is in the records passed in.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

from dedupd.config import KeepRule
from dedupd.store import FileRecord

__all__ = ["KEEP_RULES", "rank"]


def _capture_time(r: FileRecord) -> str:
    # EXIF capture time when the camera wrote one; otherwise the file's mtime, zero-padded so
    # both sort as text in time order.
    return r.taken_at or f"~{r.mtime_ns:020d}"


KEEP_RULES: dict[KeepRule, Callable[[FileRecord], object]] = {
    # Each key sorts the preferred file first.
    "highest_resolution": lambda r: -r.pixels,
    "largest_file": lambda r: -r.size,
    "oldest": _capture_time,
    "newest": lambda r: tuple(-ord(c) for c in _capture_time(r)),
}


def rank(files: Sequence[FileRecord], rules: Sequence[KeepRule]) -> list[FileRecord]:
    """`files` best first by the ordered keep `rules`; the path breaks any remaining tie."""
    return sorted(files, key=lambda r: (*(KEEP_RULES[rule](r) for rule in rules), str(r.path)))
