"""`dedupd` and `dedupctl`: parse options, call the library, print. No logic of their own.

Exit codes: 0 ok · 1 nothing found / not found (like grep) · 2 usage or configuration error.
"""

from __future__ import annotations

import json
import logging
import os
import signal
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import replace
from pathlib import Path
from typing import Any, TypeVar

import click
import structlog

from dedupd import __version__
from dedupd.actions import ActionError, Actions
from dedupd.config import Config, load_config
from dedupd.daemon import Daemon
from dedupd.engine import Group, Ingest, ScanReport, duplicate_groups, scan
from dedupd.errors import DedupdError, NotFoundError
from dedupd.hashers import Hasher
from dedupd.imaging import hash_image
from dedupd.store import FileRecord, Store

__all__ = ["dedupctl", "dedupd", "find_config"]

EXIT_NOT_FOUND = 1
EXIT_USAGE = 2

F = TypeVar("F", bound=Callable[..., Any])


def find_config(explicit: str | None, env: dict[str, str] | None = None) -> Path | None:
    """The config file to use: --config, $DEDUPD_CONFIG, the user's, the system's, or none."""
    env = dict(os.environ) if env is None else env
    if explicit:
        return Path(explicit)
    if env.get("DEDUPD_CONFIG"):
        return Path(env["DEDUPD_CONFIG"])
    user = (
        Path(env.get("XDG_CONFIG_HOME") or Path("~/.config").expanduser())
        / "dedupd"
        / "dedupd.yaml"
    )
    for candidate in (user, Path("/etc/dedupd/dedupd.yaml")):
        if candidate.is_file():
            return candidate
    return None


def _configure_logging(level: str) -> None:
    """Once, in the entry point: console lines on a TTY, JSON lines otherwise (journald)."""
    renderer: Any = (
        structlog.dev.ConsoleRenderer()
        if sys.stderr.isatty()
        else structlog.processors.JSONRenderer()
    )
    structlog.configure(
        processors=[
            structlog.contextvars.merge_contextvars,
            structlog.processors.add_log_level,
            structlog.processors.TimeStamper(fmt="iso", utc=True),
            renderer,
        ],
        wrapper_class=structlog.make_filtering_bound_logger(
            logging.getLevelNamesMapping()[level.upper()]
        ),
        logger_factory=structlog.PrintLoggerFactory(sys.stderr),
        cache_logger_on_first_use=False,
    )


def _load(ctx: click.Context) -> Config:
    obj = ctx.ensure_object(dict)
    if "config" not in obj:
        path = find_config(obj.get("config_path"))
        config = load_config(path)
        if obj.get("database"):
            config = replace(config, database=Path(obj["database"]).expanduser().resolve())
        obj["config"] = config
    return obj["config"]  # type: ignore[no-any-return]


@contextmanager
def _errors() -> Iterator[None]:
    """Turn library errors into one-line messages and exit codes."""
    try:
        yield
    except NotFoundError as exc:
        click.echo(f"error: {exc}", err=True)
        sys.exit(EXIT_NOT_FOUND)
    except DedupdError as exc:
        click.echo(f"error: {exc}", err=True)
        sys.exit(EXIT_USAGE)


LOG_LEVELS = ("debug", "info", "warning", "error")


def _log_level_option(default: str) -> Callable[[F], F]:
    return click.option(
        "--log-level",
        type=click.Choice(LOG_LEVELS),
        default=default,
        show_default=True,
        help="Log events on stderr at this level: JSON lines when stderr is not a terminal "
        "(journald), readable lines on one.",
    )


def _common_options(f: F) -> F:
    f = click.option(
        "--database",
        type=click.Path(dir_okay=False),
        help="SQLite database (default: from the config, else the state directory).",
    )(f)
    f = click.option(
        "--config",
        "config_path",
        type=click.Path(dir_okay=False),
        help="YAML config (default: $DEDUPD_CONFIG, ~/.config/dedupd/dedupd.yaml, "
        "/etc/dedupd/dedupd.yaml).",
    )(f)
    return f


# -- formatting -------------------------------------------------------------------------------


def _size(n: int) -> str:
    value = float(n)
    for unit in ("B", "KB", "MB", "GB"):
        if value < 1000 or unit == "GB":
            return f"{value:.0f} {unit}" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1000
    raise AssertionError("unreachable")


def _resolution(r: FileRecord) -> str:
    return f"{r.width}x{r.height}" if r.width else "-"


def _file_json(r: FileRecord) -> dict[str, Any]:
    return {
        "id": r.id,
        "path": str(r.path),
        "root": r.root,
        "size": r.size,
        "width": r.width,
        "height": r.height,
        "format": r.format,
        "sha256": r.sha256,
        "taken_at": r.taken_at,
        "state": r.state,
        "error_kind": r.error_kind,
        "error": r.error,
    }


def _groups_json(groups: list[Group], bits: int) -> list[dict[str, Any]]:
    return [
        {
            "keeper": _file_json(g.keeper),
            "duplicates": [
                {
                    **_file_json(m.record),
                    "kind": m.kind,
                    "distance": m.distance,
                    "normalized": round(m.distance / bits, 4),
                }
                for m in g.duplicates
            ],
        }
        for g in groups
    ]


def _print_groups(groups: list[Group], bits: int) -> None:
    for g in groups:
        click.echo(f"\n{g.keeper.path}  {_resolution(g.keeper)}  {_size(g.keeper.size)}  keeper")
        for m in g.duplicates:
            how = (
                "exact"
                if m.kind == "exact"
                else f"near {m.distance}/{bits} ({m.distance / bits:.3f})"
            )
            click.echo(
                f"  {'=' if m.kind == 'exact' else '~'} {m.record.path}  "
                f"{_resolution(m.record)}  {_size(m.record.size)}  {how}"
            )


def _print_report(report: ScanReport, bits: int) -> None:
    dups = sum(len(g.duplicates) for g in report.groups)
    click.echo(
        f"scanned {len(report.roots)} root(s) in {report.seconds:.1f}s: {report.files} files, "
        f"{report.hashed} hashed, {report.unchanged} unchanged, {report.renamed} renamed, "
        f"{report.missing} missing, {len(report.failed)} errors, "
        f"{len(report.groups)} duplicate groups ({dups} duplicates)"
    )
    for root, why in report.unavailable:
        click.echo(f"unavailable: {root}: {why}")
    for path, failure in report.failed:
        click.echo(f"error: {path}: {failure.kind}: {failure.message}")
    for o in report.outcomes:
        if o.decision.acts:
            click.echo(
                f"{o.decision.action}: {o.decision.target.path if o.decision.target else o.path}"
                f" ({o.result}; keeper {o.decision.keeper.path if o.decision.keeper else '-'};"
                f" {o.decision.rule})"
            )
    _print_groups(report.groups, bits)


# -- dedupd -----------------------------------------------------------------------------------


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="dedupd")
def dedupd() -> None:
    """dedupd: find duplicate photos the moment they arrive."""


@dedupd.command("scan")
@click.argument("dirs", nargs=-1, type=click.Path(exists=True, file_okay=False, path_type=Path))
@_common_options
@click.option(
    "--dry-run", is_flag=True, help="Decide and print what would happen, but touch no file."
)
@click.option("--workers", type=click.IntRange(min=1), help="Hashing processes (default: config).")
@click.option("--json", "as_json", is_flag=True, help="Print the report as JSON.")
@_log_level_option("error")
@click.pass_context
def scan_command(
    ctx: click.Context,
    dirs: tuple[Path, ...],
    config_path: str | None,
    database: str | None,
    dry_run: bool,
    workers: int | None,
    as_json: bool,
    log_level: str,
) -> None:
    """Hash new and changed photos under the roots (or DIRS) and report duplicate groups.

    DIRS replace the configured roots and work without any config file. Files whose
    (device, inode, size, mtime) did not change since the last scan are not decoded again.
    """
    _configure_logging(log_level)
    ctx.ensure_object(dict).update(config_path=config_path, database=database)
    with _errors():
        config = _load(ctx)
        if dirs:
            config = config.with_roots(dirs)
        if not config.roots:
            raise click.UsageError("no roots: pass DIRS or configure `roots:` in the config file")
        config = replace(
            config,
            dry_run=config.dry_run or dry_run,
            hashing=replace(config.hashing, workers=workers or config.hashing.workers),
        )
        bits = Hasher(config.hashing.algorithm, config.hashing.hash_size).bits
        with Store(config.database) as store:
            actions = Actions(store, config.quarantine.path)
            if as_json or not sys.stderr.isatty():
                report = scan(config, store, actions=actions)
            else:
                report = _scan_with_progress(config, store, actions)
        if as_json:
            click.echo(
                json.dumps(
                    {
                        "roots": report.roots,
                        "files": report.files,
                        "hashed": report.hashed,
                        "unchanged": report.unchanged,
                        "renamed": report.renamed,
                        "missing": report.missing,
                        "seconds": round(report.seconds, 3),
                        "errors": [
                            {"path": p, "kind": f.kind, "message": f.message}
                            for p, f in report.failed
                        ],
                        "unavailable": [
                            {"root": r, "reason": why} for r, why in report.unavailable
                        ],
                        "actions": [
                            {
                                "path": o.path,
                                "action": o.decision.action,
                                "result": o.result,
                                "rule": o.decision.rule,
                                "target": str(o.decision.target.path)
                                if o.decision.target
                                else None,
                                "keeper": str(o.decision.keeper.path)
                                if o.decision.keeper
                                else None,
                            }
                            for o in report.outcomes
                            if o.decision.acts
                        ],
                        "groups": _groups_json(report.groups, bits),
                    },
                    indent=2,
                )
            )
        else:
            _print_report(report, bits)


@dedupd.command("run")
@click.argument("dirs", nargs=-1, type=click.Path(file_okay=False, path_type=Path))
@_common_options
@_log_level_option("info")
def run_command(
    dirs: tuple[Path, ...], config_path: str | None, database: str | None, log_level: str
) -> None:
    """Run the daemon in the foreground: watch the roots (or DIRS) until SIGTERM.

    Every new or changed photo is hashed once it has stopped changing, matched, and handled
    by its root's policy. SIGHUP reloads the config; an invalid one is rejected and the
    running config kept. Speaks the systemd notify protocol when $NOTIFY_SOCKET is set.
    """
    _configure_logging(log_level)
    daemon = Daemon(
        find_config(config_path),
        dirs,
        database=Path(database).expanduser().resolve() if database else None,
    )
    for signum in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
        signal.signal(signum, daemon.note_signal)
    with _errors():
        sys.exit(daemon.run())


def _scan_with_progress(config: Config, store: Store, actions: Actions) -> ScanReport:
    bar: Any = None

    def start(total: int) -> None:
        nonlocal bar
        bar = click.progressbar(length=total, label="hashing", file=sys.stderr)
        bar.__enter__()

    try:
        return scan(
            config, store, on_total=start, progress=lambda n: bar.update(n), actions=actions
        )
    finally:
        if bar is not None:
            bar.__exit__(None, None, None)


# -- dedupctl ---------------------------------------------------------------------------------


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="dedupctl")
@_common_options
@click.pass_context
def dedupctl(ctx: click.Context, config_path: str | None, database: str | None) -> None:
    """dedupctl: query what dedupd has found."""
    _configure_logging("warning")
    ctx.ensure_object(dict).update(config_path=config_path, database=database)


@dedupctl.command()
@click.argument("image", type=click.Path(exists=True, dir_okay=False))
@click.option(
    "-k",
    "k",
    type=click.IntRange(min=1),
    default=10,
    show_default=True,
    help="How many nearest images to list.",
)
@click.option(
    "--threshold",
    type=click.FloatRange(0, 1),
    help="Only images within this normalized distance (0-1).",
)
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
@click.pass_context
def search(ctx: click.Context, image: str, k: int, threshold: float | None, as_json: bool) -> None:
    """Nearest indexed photos to IMAGE, with distances. Exit 1 if none."""
    with _errors():
        config = _load(ctx)
        with Store(config.database, readonly=True) as store:
            ingest = Ingest(store, config, roots=_all_roots(store))
            hasher = ingest.hasher
            hashed = hash_image(image, [hasher], max_pixels=config.hashing.max_pixels)
            bits = hashed.hashes[hasher.key]
            if threshold is None:
                found = ingest.index.knn(bits, k)
            else:
                found = ingest.index.radius(bits, hasher.radius(threshold))[:k]
            records = store.files(m.id for m in found)
        rows = [(records[m.id], m.distance) for m in found]
        if as_json:
            click.echo(
                json.dumps(
                    {
                        "query": {"path": str(Path(image).resolve()), "sha256": hashed.sha256},
                        "hasher": hasher.key,
                        "results": [
                            {
                                **_file_json(r),
                                "distance": d,
                                "normalized": round(d / hasher.bits, 4),
                                "exact": r.sha256 == hashed.sha256,
                            }
                            for r, d in rows
                        ],
                    },
                    indent=2,
                )
            )
        elif rows:
            click.echo(f"{'distance':<8}  {'bits':>7}  {'pixels':>11}  {'size':>9}  path")
            for r, d in rows:
                click.echo(
                    f"{d / hasher.bits:<8.3f}  {d:>3}/{hasher.bits}  {_resolution(r):>11}  "
                    f"{_size(r.size):>9}  {r.path}"
                )
        if not rows:
            if not as_json:
                click.echo("no similar photos indexed", err=True)
            sys.exit(EXIT_NOT_FOUND)


def _all_roots(store: Store) -> list[str]:
    return [row[0] for row in store.db.execute("SELECT DISTINCT root FROM files")]


@dedupctl.command()
@click.argument("file", required=False, type=click.Path(path_type=Path))
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
@click.pass_context
def show(ctx: click.Context, file: Path | None, as_json: bool) -> None:
    """Duplicate groups; or, with FILE, that file's record and its matches."""
    with _errors():
        config = _load(ctx)
        hasher = Hasher(config.hashing.algorithm, config.hashing.hash_size)
        with Store(config.database, readonly=True) as store:
            if file is not None:
                _show_file(store, hasher, file.expanduser().resolve(strict=False), as_json)
                return
            groups = duplicate_groups(store, config, _all_roots(store))
        if as_json:
            click.echo(json.dumps({"groups": _groups_json(groups, hasher.bits)}, indent=2))
        elif not groups:
            click.echo("no duplicates found")
        else:
            click.echo(f"{len(groups)} duplicate groups")
            _print_groups(groups, hasher.bits)


def _show_file(store: Store, hasher: Hasher, path: Path, as_json: bool) -> None:
    record = store.file_at(path)
    if record is None:
        raise NotFoundError(f"{path}: not in the database (is it under a scanned root?)")
    matches = store.matches_of(record.id, hasher.key)
    if as_json:
        click.echo(
            json.dumps(
                {
                    "file": _file_json(record),
                    "matches": [
                        {
                            **_file_json(m.other),
                            "kind": m.kind,
                            "distance": m.distance,
                            "normalized": round(m.distance / hasher.bits, 4),
                        }
                        for m in matches
                    ],
                },
                indent=2,
            )
        )
        return
    click.echo(f"{record.path}\n  state     {record.state}")
    if record.state == "error":
        click.echo(f"  error     {record.error_kind}: {record.error}")
    click.echo(
        f"  size      {_size(record.size)}\n  pixels    {_resolution(record)}\n"
        f"  format    {record.format or '-'}\n  taken     {record.taken_at or '-'}\n"
        f"  sha256    {record.sha256 or '-'}"
    )
    if not matches:
        click.echo("  no matches")
    for m in matches:
        how = "exact" if m.kind == "exact" else f"near {m.distance}/{hasher.bits}"
        click.echo(f"  {'=' if m.kind == 'exact' else '~'} {m.other.path}  {how}")


@dedupctl.group()
def quarantine() -> None:
    """Review quarantined photos and put them back."""


@quarantine.command("list")
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
@click.pass_context
def quarantine_list(ctx: click.Context, as_json: bool) -> None:
    """Photos in quarantine now: id, when, original path, keeper, distance, reason."""
    with _errors():
        config = _load(ctx)
        with Store(config.database, readonly=True) as store:
            entries = store.quarantined()
    fields = ("id", "src", "dst", "keeper_path", "distance", "reason", "finished")
    if as_json:
        click.echo(
            json.dumps({"quarantined": [{k: e[k] for k in fields} for e in entries]}, indent=2)
        )
        return
    if not entries:
        click.echo("quarantine is empty")
    for e in entries:
        when = time.strftime("%Y-%m-%d %H:%M", time.localtime(e["finished"]))
        click.echo(
            f"{e['id']:>5}  {when}  {e['src']}\n       keeper {e['keeper_path'] or '-'}"
            f"  distance {e['distance']}  ({e['reason']})"
        )


@quarantine.command("restore")
@click.argument("items", nargs=-1, required=True)
@click.pass_context
def quarantine_restore(ctx: click.Context, items: tuple[str, ...]) -> None:
    """Put quarantined photos back where they were, by ID or path (original or in quarantine).

    Never overwrites: a file now at the original path makes the restore fail. The photo and
    its keeper are remembered as distinct, so it is not quarantined again. Exit 1 if any
    item could not be restored.
    """
    failed = False
    with _errors():
        config = _load(ctx)
        with Store(config.database) as store:
            entries = store.quarantined()
            actions = Actions(store, config.quarantine.path)
            for item in items:
                path = os.path.abspath(item)
                match = [e for e in entries if str(e["id"]) == item or path in (e["src"], e["dst"])]
                if not match:
                    click.echo(f"error: {item}: not in quarantine", err=True)
                    failed = True
                    continue
                try:
                    restored = actions.restore(match[-1]["id"])
                    click.echo(f"restored {restored}")
                except ActionError as exc:
                    click.echo(f"error: {exc}", err=True)
                    failed = True
    sys.exit(EXIT_NOT_FOUND if failed else 0)
