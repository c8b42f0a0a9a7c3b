"""`python -m dedupd …` is `dedupd …`."""

from dedupd.cli import dedupd

dedupd(prog_name="dedupd")
