"""`dedupd` and `dedupctl`: parse options, call the library, print. No logic of their own.

Exit codes: 0 ok · 1 nothing found / not found (like grep) · 2 usage or configuration error.
"""

from __future__ import annotations

import codecs
import io
import json
import logging
import os
import signal
import sys
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import replace
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

import click
import structlog

from dedupd import __version__, queries
from dedupd.actions import Actions
from dedupd.config import Config, load_config, parse_duration
from dedupd.engine import Ingest, ScanReport, scan
from dedupd.errors import ConfigError, DaemonUnavailable, DedupdError, NotFoundError
from dedupd.hashers import Hasher
from dedupd.store import Store

if TYPE_CHECKING:
    from dedupd.control import ControlClient

__all__ = ["dedupctl", "dedupd", "find_config"]

EXIT_NOT_FOUND = 1
EXIT_USAGE = 2
EXIT_NO_DAEMON = 3

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


def _lossless_output() -> None:
    """Print file names as the bytes they are, even those that are not valid UTF-8.

    Python hands such a name over with surrogate escapes (os.fsdecode), and a strict stream
    raises UnicodeEncodeError on it; surrogateescape writes the original bytes back. Only
    when the stream uses the file system's encoding: only then are those bytes the name.
    """
    fs_encoding = codecs.lookup(sys.getfilesystemencoding()).name
    for stream in (sys.stdout, sys.stderr):
        if (
            isinstance(stream, io.TextIOWrapper)
            and codecs.lookup(stream.encoding).name == fs_encoding
        ):
            stream.reconfigure(errors="surrogateescape")


def _configure_logging(level: str) -> None:
    """Once, in the entry point: console lines on a TTY, JSON lines otherwise (journald)."""
    # log.exception() only sets exc_info. The console renderer formats it itself (and warns
    # if it arrives already formatted); JSON needs it turned into an "exception" string
    # first, or the line says `"exc_info": true` and nothing about the error.
    render: list[Any] = (
        [structlog.dev.ConsoleRenderer()]
        if sys.stderr.isatty()
        else [structlog.processors.format_exc_info, structlog.processors.JSONRenderer()]
    )
    structlog.configure(
        processors=[
            structlog.contextvars.merge_contextvars,
            structlog.processors.add_log_level,
            structlog.processors.TimeStamper(fmt="iso", utc=True),
            *render,
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
    except DaemonUnavailable as exc:
        click.echo(f"error: {exc}", err=True)
        sys.exit(EXIT_NO_DAEMON)
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


class _Duration(click.ParamType):  # type: ignore[type-arg]  # generic only in newer click
    name = "duration"

    def convert(
        self, value: Any, param: click.Parameter | None, ctx: click.Context | None
    ) -> float:
        try:
            seconds: float = parse_duration(value)
        except ValueError:
            self.fail(f"{value!r} is not a duration such as 90s, 12h, 7d or 2w", param, ctx)
        return seconds


DURATION = _Duration()


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
    _print_group_dicts(queries.groups_json(report.groups, bits)["groups"], bits)


# -- dedupd -----------------------------------------------------------------------------------


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="dedupd")
def dedupd() -> None:
    """dedupd: find duplicate photos the moment they arrive."""
    _lossless_output()


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
                        "groups": queries.groups_json(report.groups, bits)["groups"],
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
    # Here, not at the top: only this command runs the daemon (watchdog, the control server).
    from dedupd.daemon import Daemon

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
@click.option(
    "--socket",
    "socket_path",
    type=click.Path(dir_okay=False),
    help="The daemon's control socket (default: from the config, else $RUNTIME_DIRECTORY or "
    "$XDG_RUNTIME_DIR/dedupd.sock).",
)
@click.pass_context
def dedupctl(
    ctx: click.Context, config_path: str | None, database: str | None, socket_path: str | None
) -> None:
    """dedupctl: query and steer dedupd.

    Talks to the running daemon over its socket. Without a daemon, search, show and
    quarantine list read the database directly (and say so); restore, purge and distinct
    change the database and files directly; status, rescan and reload need the daemon.
    Exit codes: 0 ok, 1 nothing found, 2 usage or config error, 3 daemon unavailable.
    """
    _lossless_output()
    _configure_logging("warning")
    ctx.ensure_object(dict).update(
        config_path=config_path, database=database, socket_path=socket_path
    )


def _client(ctx: click.Context) -> ControlClient:
    # Here, not at the top: the HTTP machinery only for the commands that ask the daemon.
    from dedupd.control import ControlClient

    obj = ctx.ensure_object(dict)
    path = obj.get("socket_path")
    return ControlClient(Path(path) if path else _load(ctx).socket)


def _ask(
    ctx: click.Context,
    ask: Callable[[ControlClient], dict[str, Any]],
    offline: Callable[[Config], dict[str, Any]] | None,
) -> dict[str, Any]:
    """The daemon's answer; without a daemon, `offline` computes it (and we say so)."""
    try:
        return ask(_client(ctx))
    except DaemonUnavailable:
        if offline is None:
            raise
        click.echo("dedupd is not running; using the database directly", err=True)
        return offline(_load(ctx))


def _echo_json(answer: dict[str, Any]) -> None:
    click.echo(json.dumps(answer, indent=2))


def _rel_time(ts: float) -> str:
    return time.strftime("%Y-%m-%d %H:%M", time.localtime(ts))


@dedupctl.command()
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
@click.pass_context
def status(ctx: click.Context, as_json: bool) -> None:
    """The running daemon: uptime, roots and their watch state, index, queue, recent errors."""
    with _errors():
        s = _ask(ctx, lambda c: c.get("status"), None)
    if as_json:
        _echo_json(s)
        return
    index = s["index"]
    rebuilt = _rel_time(index["last_rebuild"]) if index["last_rebuild"] else "-"
    click.echo(
        f"dedupd running (pid {s['pid']}, up {s['uptime_s']:.0f}s), hasher {s['hasher']}\n"
        f"indexed   {s['indexed']} ({index['backend']}, {index['pending']} pending, "
        f"last rebuild {rebuilt})\n"
        f"queue     {s['queue']['backlog']} to hash, {s['queue']['settling']} settling\n"
        f"done      {s['stats']['hashed']} hashed, {s['stats']['acted']} acted on, "
        f"{s['stats']['errors']} errors"
    )
    for r in s["roots"]:
        click.echo(f"root      {r['path']}  {r['state']}  policy {r['policy']}")
    for e in s["recent_errors"]:
        click.echo(f"error     {e['path']}: {e['kind']}: {e['error']}")


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
    """Nearest indexed photos to IMAGE, with distances. Exit 1 if none.

    IMAGE is hashed here, with the configured hasher, and looked up in the daemon's index.
    """
    from dedupd.imaging import hash_image  # Pillow, for the one command that decodes here

    with _errors():
        config = _load(ctx)
        hasher = Hasher(config.hashing.algorithm, config.hashing.hash_size)
        hashed = hash_image(image, [hasher], max_pixels=config.hashing.max_pixels)
        bits = hashed.hashes[hasher.key]
        query = {"path": str(Path(image).resolve()), "sha256": hashed.sha256}

        def offline(config: Config) -> dict[str, Any]:
            with Store(config.database, readonly=True) as store:
                ingest = Ingest(store, config, roots=queries.all_roots(store))
                return {
                    **queries.search(
                        store, ingest.index, hasher, bits, k=k, threshold=threshold, query=query
                    ),
                    "query": query,
                }

        answer = _ask(
            ctx,
            lambda c: {
                **c.get("search", hash=bits.hex(), sha256=hashed.sha256, k=k, threshold=threshold),
                "query": query,
            },
            offline,
        )
        if answer["hasher"] != hasher.key:
            raise ConfigError(
                f"this config hashes with {hasher.key} but the daemon with {answer['hasher']};"
                " pass the daemon's config with --config"
            )
    rows = answer["results"]
    if as_json:
        _echo_json(answer)
    elif rows:
        nbits = hasher.bits
        click.echo(f"{'distance':<8}  {'bits':>7}  {'pixels':>11}  {'size':>9}  path")
        for r in rows:
            pixels = f"{r['width']}x{r['height']}" if r["width"] else "-"
            click.echo(
                f"{r['normalized']:<8.3f}  {r['distance']:>3}/{nbits}  {pixels:>11}  "
                f"{_size(r['size']):>9}  {r['path']}"
            )
    if not rows:
        if not as_json:
            click.echo("no similar photos indexed", err=True)
        sys.exit(EXIT_NOT_FOUND)


@dedupctl.command()
@click.argument("file", required=False, type=click.Path(path_type=Path))
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
@click.pass_context
def show(ctx: click.Context, file: Path | None, as_json: bool) -> None:
    """Duplicate groups; or, with FILE, that file's record and its matches (exit 1 if the
    file is not in the database)."""
    with _errors():
        config = _load(ctx)
        hasher = Hasher(config.hashing.algorithm, config.hashing.hash_size)
        if file is not None:
            path = str(file.expanduser().absolute())

            def offline_file(config: Config) -> dict[str, Any]:
                with Store(config.database, readonly=True) as store:
                    return queries.file_info(store, hasher, path)

            _print_file(
                _ask(ctx, lambda c: c.get("files", path=path), offline_file), hasher, as_json
            )
            return

        def offline_groups(config: Config) -> dict[str, Any]:
            with Store(config.database, readonly=True) as store:
                return queries.groups(store, config)

        answer = _ask(ctx, lambda c: c.get("groups"), offline_groups)
    if as_json:
        _echo_json(answer)
    elif not answer["groups"]:
        click.echo("no duplicates found")
    else:
        click.echo(f"{len(answer['groups'])} duplicate groups")
        _print_group_dicts(answer["groups"], hasher.bits)


def _print_group_dicts(groups: list[dict[str, Any]], bits: int) -> None:
    for g in groups:
        k = g["keeper"]
        click.echo(f"\n{k['path']}  {_pixels(k)}  {_size(k['size'])}  keeper")
        for m in g["duplicates"]:
            exact = m["kind"] == "exact"
            how = "exact" if exact else f"near {m['distance']}/{bits} ({m['distance'] / bits:.3f})"
            click.echo(
                f"  {'=' if exact else '~'} {m['path']}  {_pixels(m)}  {_size(m['size'])}  {how}"
            )


def _pixels(r: dict[str, Any]) -> str:
    return f"{r['width']}x{r['height']}" if r["width"] else "-"


def _print_file(answer: dict[str, Any], hasher: Hasher, as_json: bool) -> None:
    if as_json:
        _echo_json(answer)
        return
    f = answer["file"]
    click.echo(f"{f['path']}\n  state     {f['state']}")
    if f["state"] == "error":
        click.echo(f"  error     {f['error_kind']}: {f['error']}")
    click.echo(
        f"  size      {_size(f['size'])}\n  pixels    {_pixels(f)}\n"
        f"  format    {f['format'] or '-'}\n  taken     {f['taken_at'] or '-'}\n"
        f"  sha256    {f['sha256'] or '-'}"
    )
    if not answer["matches"]:
        click.echo("  no matches")
    for m in answer["matches"]:
        exact = m["kind"] == "exact"
        how = "exact" if exact else f"near {m['distance']}/{hasher.bits}"
        click.echo(f"  {'=' if exact else '~'} {m['path']}  {how}")


@dedupctl.group()
def quarantine() -> None:
    """Review quarantined photos, put them back, or purge old ones."""


@quarantine.command("list")
@click.option("--root", help="Only photos quarantined from under this root.")
@click.option(
    "--since", type=DURATION, help="Only photos quarantined within this long, e.g. 7d or 12h."
)
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
@click.pass_context
def quarantine_list(
    ctx: click.Context, root: str | None, since: float | None, as_json: bool
) -> None:
    """Photos in quarantine now: id, when, original path, keeper, distance, reason."""
    with _errors():
        root_path = str(Path(root).expanduser().resolve()) if root else None

        def offline(config: Config) -> dict[str, Any]:
            with Store(config.database, readonly=True) as store:
                cutoff = time.time() - since if since is not None else None
                return queries.quarantine_list(store, root=root_path, since=cutoff)

        answer = _ask(ctx, lambda c: c.get("quarantine", root=root_path, since=since), offline)
    entries = answer["quarantined"]
    if as_json:
        _echo_json(answer)
        return
    if not entries:
        click.echo("quarantine is empty")
    for e in entries:
        click.echo(
            f"{e['id']:>5}  {_rel_time(e['finished'])}  {e['src']}\n"
            f"       keeper {e['keeper_path'] or '-'}  distance {e['distance']}  ({e['reason']})"
        )


T = TypeVar("T")


def _in_batches(
    items: list[T],
    send: Callable[[Sequence[T]], dict[str, Any]],
    key: str,
    label: str,
    size: int = 20,
) -> list[Any]:
    """Send `items` in batches, with a progress bar on a terminal (none when piped)."""
    batches = [items[i : i + size] for i in range(0, len(items), size)]
    collected: list[Any] = []
    if len(batches) > 1 and sys.stderr.isatty():
        with click.progressbar(length=len(items), label=label, file=sys.stderr) as bar:
            for batch in batches:
                collected += send(batch)[key]
                bar.update(len(batch))
    else:
        for batch in batches:
            collected += send(batch)[key]
    return collected


def _offline_change(
    config: Config, change: Callable[[Store, Actions], dict[str, Any]]
) -> dict[str, Any]:
    with Store(config.database) as store:
        return change(store, Actions(store, config.quarantine.path))


@quarantine.command("restore")
@click.argument("items", nargs=-1, required=True)
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
@click.pass_context
def quarantine_restore(ctx: click.Context, items: tuple[str, ...], as_json: bool) -> None:
    """Put quarantined photos back where they were, by ID or path (original or in quarantine).

    Never overwrites: a file now at the original path makes the restore fail. The photo and
    its keeper are remembered as distinct, so it is not quarantined again. Exit 1 if any
    item could not be restored.
    """
    # Paths are made absolute here: the daemon's working directory is not the user's.
    items = tuple(i if i.isdigit() else str(Path(i).expanduser().absolute()) for i in items)

    def restore_batch(batch: Sequence[str]) -> dict[str, Any]:
        return _ask(
            ctx,
            lambda c: c.post("quarantine/restore", {"items": list(batch)}),
            lambda config: _offline_change(
                config, lambda store, actions: queries.restore(store, actions, batch)
            ),
        )

    with _errors():
        results = _in_batches(list(items), restore_batch, "results", "restoring")
    answer = {"results": results}
    if as_json:
        _echo_json(answer)
    failed = False
    for r in answer["results"]:
        if "restored" in r:
            if not as_json:
                click.echo(f"restored {r['restored']}")
        else:
            failed = True
            if not as_json:
                click.echo(f"error: {r['item']}: {r['error']}", err=True)
    sys.exit(EXIT_NOT_FOUND if failed else 0)


@quarantine.command("purge")
@click.option(
    "--older-than",
    type=DURATION,
    help="Purge photos quarantined longer ago than this (default: quarantine.retain).",
)
@click.option("--yes", is_flag=True, help="Do not ask for confirmation.")
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
@click.pass_context
def quarantine_purge(
    ctx: click.Context, older_than: float | None, yes: bool, as_json: bool
) -> None:
    """Delete quarantined photos for good, after confirmation (or --yes). Journaled."""
    with _errors():
        config = _load(ctx)
        seconds = config.quarantine.retain if older_than is None else older_than

        def offline_list(config: Config) -> dict[str, Any]:
            with Store(config.database, readonly=True) as store:
                return queries.quarantine_list(store)

        listed = _ask(ctx, lambda c: c.get("quarantine"), offline_list)["quarantined"]
        due = [e for e in listed if e["finished"] <= time.time() - seconds]
        if not due:
            click.echo("nothing to purge")
            return
        if not yes:
            if not sys.stdin.isatty():
                raise click.UsageError(f"{len(due)} photos would be deleted; pass --yes to confirm")
            click.confirm(f"Delete {len(due)} quarantined photos for good?", abort=True)

        def purge_batch(ids: Sequence[int]) -> dict[str, Any]:
            return _ask(
                ctx,
                lambda c: c.post("quarantine/purge", {"older_than": seconds, "ids": list(ids)}),
                lambda config: _offline_change(
                    config, lambda store, actions: queries.purge(actions, seconds, ids)
                ),
            )

        # Exactly the entries that were confirmed, nothing that aged since.
        purged = _in_batches([e["id"] for e in due], purge_batch, "purged", "purging")
    if as_json:
        _echo_json({"purged": purged, "older_than": seconds})
    else:
        click.echo(f"purged {len(purged)} photos")


@dedupctl.command()
@click.argument("a", type=click.Path(path_type=Path))
@click.argument("b", type=click.Path(path_type=Path))
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
@click.pass_context
def distinct(ctx: click.Context, a: Path, b: Path, as_json: bool) -> None:
    """Mark photos A and B as different: they never match each other again."""
    paths = [str(p.expanduser().absolute()) for p in (a, b)]
    with _errors():
        answer = _ask(
            ctx,
            lambda c: c.post("distinct", {"paths": paths}),
            lambda config: _offline_change(
                config, lambda store, actions: queries.distinct(store, *paths)
            ),
        )
    if as_json:
        _echo_json(answer)
    else:
        click.echo(f"marked distinct: {answer['distinct'][0]} and {answer['distinct'][1]}")


@dedupctl.command()
@click.argument("root", required=False, type=click.Path(path_type=Path))
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
@click.pass_context
def rescan(ctx: click.Context, root: Path | None, as_json: bool) -> None:
    """Ask the daemon to reconcile ROOT (or every root) now: what changed unseen is found."""
    with _errors():
        target = str(root.expanduser().resolve()) if root else None
        answer = _ask(ctx, lambda c: c.post("rescan", {"root": target}), None)
    if as_json:
        _echo_json(answer)
        return
    for queued in answer["queued"]:
        click.echo(f"rescan queued: {queued}")


@dedupctl.command()
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
@click.pass_context
def reload(ctx: click.Context, as_json: bool) -> None:
    """Ask the daemon to reload its config (as SIGHUP does); exit 2 if it is rejected."""
    with _errors():
        answer = _ask(ctx, lambda c: c.post("reload"), None)
    if as_json:
        _echo_json(answer)
    else:
        click.echo(f"reloaded: {len(answer['roots'])} roots")
