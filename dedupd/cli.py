"""`dedupd` and `dedupctl`: parse options, call the library, print. No logic of their own.

Exit codes: 0 ok · 1 nothing found / not found (like grep); for `dedupctl status`: a root is
unavailable (missing, not mounted, or through another user's link) · 2 usage or configuration
error (for `dedupd run` also: the database cannot be opened, or another dedupd holds it) · 3 the
daemon is not running or does not answer, what answers is not dedupd's, or it runs as a user
dedupctl does not trust (dedupctl) · 4 busy: another process holds the
database (`dedupd scan`, dedupctl working offline), or the daemon answered that it is busy or
stopping (dedupctl). `dedupd run` exits 1 when it stopped because its database was lost.
130: `dedupd scan` was interrupted (Ctrl-C), as a shell reports a command killed by SIGINT.
"""

from __future__ import annotations

import codecs
import io
import logging
import os
import signal
import sys
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import replace
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

import click
import structlog

from dedupd import __version__, render
from dedupd.actions import Actions
from dedupd.config import (
    DEFAULT_POLICY,
    Config,
    database_candidates,
    default_database_path,
    default_socket_path,
    load_config,
    parse_duration,
    socket_candidates,
    socket_of,
)
from dedupd.engine import ScanReport, scan
from dedupd.errors import (
    ConfigError,
    DaemonBusy,
    DaemonUnavailable,
    DedupdError,
    NotFoundError,
)
from dedupd.hashers import Hasher
from dedupd.lock import DatabaseBusy, DatabaseLock
from dedupd.scanner import root_key
from dedupd.service import RemoteService, Service, connect
from dedupd.store import Store

if TYPE_CHECKING:
    pass

__all__ = ["dedupctl", "dedupd", "find_config"]

EXIT_NOT_FOUND = 1
EXIT_USAGE = 2
EXIT_NO_DAEMON = 3
EXIT_BUSY = 4
EXIT_INTERRUPTED = 130  # 128 + SIGINT, what a shell reports; never 1, "nothing found"

# What to do about a database another process holds, by who holds it.
_BUSY_ADVICE = {
    "daemon": "the daemon does this work: `dedupctl rescan` asks it to scan, and the other "
    "dedupctl commands go through its socket",
    "scan": "wait for that scan to finish",
    "dedupctl": "wait for that dedupctl command to finish",
}

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
    output: list[Any] = (
        [structlog.dev.ConsoleRenderer()]
        if sys.stderr.isatty()
        else [structlog.processors.format_exc_info, structlog.processors.JSONRenderer()]
    )
    structlog.configure(
        processors=[
            structlog.contextvars.merge_contextvars,
            structlog.processors.add_log_level,
            structlog.processors.TimeStamper(fmt="iso", utc=True),
            *output,
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
def _errors(busy_exit: int = EXIT_BUSY) -> Iterator[None]:
    """Turn library errors into one-line messages and exit codes."""
    try:
        yield
    except NotFoundError as exc:
        click.echo(f"error: {render.shown(exc)}", err=True)
        sys.exit(EXIT_NOT_FOUND)
    except DatabaseBusy as exc:
        advice = _BUSY_ADVICE.get(exc.role or "", "try again in a moment")
        click.echo(f"error: {render.shown(exc)}; {advice}", err=True)
        sys.exit(busy_exit)
    except DaemonBusy as exc:
        click.echo(f"error: {render.shown(exc)}", err=True)
        sys.exit(EXIT_BUSY)
    except DaemonUnavailable as exc:
        click.echo(f"error: {render.shown(exc)}", err=True)
        sys.exit(EXIT_NO_DAEMON)
    except DedupdError as exc:
        click.echo(f"error: {render.shown(exc)}", err=True)
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
    Refuses (exit 4) while the daemon or another scan writes the same database: with a
    daemon running, `dedupctl rescan` asks it to scan instead.
    """
    _configure_logging(log_level)
    ctx.ensure_object(dict).update(config_path=config_path, database=database)
    try:
        _scan(ctx, dirs, dry_run, workers, as_json)
    except KeyboardInterrupt:
        # What was hashed is kept and a half-done action is finished or rolled back by the
        # next run's recovery, as after any crash.
        click.echo("interrupted; what was hashed is kept, run it again to go on", err=True)
        sys.exit(EXIT_INTERRUPTED)


def _scan(
    ctx: click.Context, dirs: tuple[Path, ...], dry_run: bool, workers: int | None, as_json: bool
) -> None:
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
        # Even a dry run writes hashes: refuse while the daemon (or another scan) writes.
        with DatabaseLock(config.database, "scan"), Store(config.database) as store:
            actions = Actions(store, config.quarantine.path, owners=config.owners)
            # What a killed daemon or scan left half done is finished or rolled back first.
            for r in actions.recover():
                click.echo(
                    f"recovered: action {r.action_id} ({r.kind}): {r.outcome}: "
                    f"{render.shown(r.detail)}",
                    err=True,
                )
            if as_json or not sys.stderr.isatty():
                report = scan(config, store, actions=actions)
            else:
                report = _scan_with_progress(config, store, actions)
        if as_json:
            click.echo(render.to_json(render.scan_json(report, bits)))
        else:
            click.echo(render.scan_report(report, bits))


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
    Exits 2 if the database cannot be opened, another dedupd holds it, or a root is no folder
    and never held a photo (a typo; a known root that is missing is watched for instead), and
    1 if it stops because its database was deleted or replaced and could not be written back.
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
    with _errors(busy_exit=EXIT_USAGE):
        sys.exit(daemon.run())


@dedupd.command("install-service")
@click.option(
    "--user",
    "scope",
    flag_value="user",
    default=True,
    help="A unit for `systemctl --user`, in ~/.config/systemd/user (the default).",
)
@click.option(
    "--system",
    "scope",
    flag_value="system",
    help="A system unit, in /etc/systemd/system, run as the user dedupd.",
)
@click.option(
    "--config",
    "config_path",
    type=click.Path(dir_okay=False, path_type=Path),
    help="The config the service reads (--system: default /etc/dedupd/dedupd.yaml; --user: "
    "default none, so `dedupd run` finds ~/.config/dedupd/dedupd.yaml).",
)
@click.option(
    "--read-write",
    "read_write",
    multiple=True,
    type=click.Path(file_okay=False, path_type=Path),
    help="A folder the system service may write: ReadWritePaths= (repeatable; default: the "
    "config's roots and quarantine folder).",
)
@click.option("--print", "print_only", is_flag=True, help="Print the unit; write nothing.")
@click.option("--force", is_flag=True, help="Replace an existing unit that differs.")
def install_service_command(
    scope: str,
    config_path: Path | None,
    read_write: tuple[Path, ...],
    print_only: bool,
    force: bool,
) -> None:
    """Write a systemd unit that runs this install of dedupd, and print the next steps.

    ExecStart= is the absolute path of the `dedupd` running this command (a venv, pipx or
    /opt install), so install it first and run this with that install's `dedupd`. The unit
    is the shipped one otherwise. An existing different unit is kept unless --force.
    """
    from dedupd import units

    kind: units.Scope = "system" if scope == "system" else "user"
    if read_write and kind == "user":
        raise click.UsageError("--read-write is for --system: a user unit may write all you may")
    with _errors():
        config = config_path.expanduser().absolute() if config_path else None
        shown = config or (units.SYSTEM_CONFIG if kind == "system" else find_config(None))
        exists = shown is not None and shown.is_file()
        paths = [p.expanduser().absolute() for p in read_write]
        quarantine = None
        if kind == "system" and not paths and exists and shown is not None:
            loaded = load_config(shown)
            quarantine = loaded.quarantine.path
            paths = units.writable([r.path for r in loaded.roots], quarantine)
        command = units.dedupd_command()
        text = units.render_unit(kind, command, config=config, read_write=paths)
        homes = units.in_homes(command) if kind == "system" else []
        if homes:
            click.echo(
                f"warning: {render.shown(' and '.join(homes))} in a home folder, which the "
                "system service (user dedupd, ProtectHome=read-only) may not be able to read;"
                " install into /opt/dedupd instead, with a Python outside the home folders "
                "(sudo /usr/bin/python3 -m venv /opt/dedupd)",
                err=True,
            )
        steps = units.next_steps(
            kind,
            config=config,
            config_exists=exists,
            read_write=paths,
            earlier_database=units.earlier_user_database() if kind == "user" else None,
            quarantine=quarantine if quarantine in paths else None,
        )
        if print_only:
            click.echo(text, nl=False)
            click.echo("\n".join(["next, once it is installed:", *steps]), err=True)
            return
        written = units.write_unit(units.unit_path(kind), text, force=force, scope=kind)
    click.echo(f"{'wrote' if written.changed else 'unchanged'}: {written.path}")
    click.echo("\n".join(["next:", *(f"  {s}" for s in steps)]))


def _scan_with_progress(
    config: Config,
    store: Store,
    actions: Actions,
    clock: Callable[[], float] = time.monotonic,
) -> ScanReport:
    """`scan` with a progress bar on stderr: files done/total, percent, ETA and rate."""
    bar: Any = None
    started, done = clock(), 0

    def start(total: int) -> None:
        nonlocal bar, started
        started = clock()
        bar = click.progressbar(
            length=total,
            label="hashing",
            file=sys.stderr,
            show_pos=True,
            show_percent=True,
            item_show_func=lambda rate: None if rate is None else f"{rate:.1f} files/s",
        )
        bar.__enter__()

    def step(n: int) -> None:
        nonlocal done
        done += n
        elapsed = clock() - started
        bar.update(n, done / elapsed if elapsed > 0 else None)

    try:
        return scan(config, store, on_total=start, progress=step, actions=actions)
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
    help="The daemon's control socket (default: `socket:` from the config, else the first "
    "of $XDG_RUNTIME_DIR/dedupd/dedupd.sock and /run/dedupd/dedupd.sock where a daemon "
    "answers).",
)
@click.pass_context
def dedupctl(
    ctx: click.Context, config_path: str | None, database: str | None, socket_path: str | None
) -> None:
    """dedupctl: query and steer dedupd.

    Talks to the running daemon over its socket. Only when no daemon is running, search,
    show and quarantine list read the database directly (and say so), and restore, purge,
    distinct and the review page's buttons change the database and files directly (refused
    while another process holds the database); status, rescan and reload need the daemon. A
    daemon that is busy or stopping is never worked around. With a config that does not
    load, status, quarantine list, rescan and reload still ask the daemon (and warn); the
    other commands need it.
    Exit codes: 0 ok, 1 nothing found (status: a root is unavailable), 2 usage or config
    error, 3 daemon not running or not answering, or not trusted (it runs as another user
    than root, you or dedupd, or its answer is not dedupd's), 4 busy (the daemon is busy or
    stopping, or another process holds the database).
    """
    _lossless_output()
    _configure_logging("warning")
    ctx.ensure_object(dict).update(
        config_path=config_path, database=database, socket_path=socket_path
    )


def _daemon_sockets(ctx: click.Context, *, without_config: bool = False) -> list[Path]:
    """Where to look for the daemon: --socket, else `socket:` from the config, else where
    the units and a `dedupd run` in a shell put it (this user's, then the system's).

    With `without_config`, a config that does not load is a warning on stderr and the
    default places are tried."""
    obj = ctx.ensure_object(dict)
    if obj.get("socket_path"):
        return [Path(obj["socket_path"]).expanduser()]
    try:
        configured = _load(ctx).socket
    except ConfigError as exc:
        if not without_config:
            raise
        candidates = list(socket_candidates())
        named = socket_of(exc.source) if exc.source else None  # the rest has the typo
        if named is not None and named not in candidates:
            candidates.insert(0, named)
        where = " or ".join(map(str, candidates))
        click.echo(f"warning: {render.shown(exc)}; asking the daemon on {where}", err=True)
        return candidates
    if configured != default_socket_path():
        return [configured]
    return list(socket_candidates())


def _offline_config(ctx: click.Context) -> Config:
    """The config for working without a daemon. Its database is the one --database or
    `database:` names, else the first that exists where a daemon would have put it (this
    user's, then the system service's): never one guessed into being."""
    obj = ctx.ensure_object(dict)
    config = _load(ctx)
    if obj.get("database") or config.database != default_database_path():
        return config
    found = [p for p in database_candidates() if os.path.exists(p)]
    return replace(config, database=found[0]) if found else config


def _service(ctx: click.Context, *, daemon_without_config: bool = False) -> Service:
    """The daemon's service when it runs, else the database's (which says so on stderr).

    With `daemon_without_config` (commands that read from the daemon, or ask it to rescan or
    reload: it runs on its own config), a config that does not load is a warning on stderr
    and the daemon is asked on --socket or the default sockets; only the database, when no
    daemon answers, needs the config (the config error, exit 2). Commands that change photos
    or records always need it: a broken config cannot say which daemon they would steer.

    A database named by --database or `database:` is the one worked on: a daemon that
    serves another (a socket path shared by two configs, or the default one) is passed over
    with a warning, and never lists, restores or purges its own quarantine in its place.
    """
    database = _named_database(ctx)

    def other(remote: RemoteService, theirs: str) -> None:
        click.echo(
            f"warning: the daemon on {remote.client.path} serves {render.shown(theirs)}, not"
            f" {render.shown(database)};"
            " not asking it",
            err=True,
        )

    return connect(
        _daemon_sockets(ctx, without_config=daemon_without_config),
        lambda: _offline_config(ctx),
        lambda: click.echo("dedupd is not running; using the database directly", err=True),
        database=database,
        on_other=other,
    )


def _named_database(ctx: click.Context) -> Path | None:
    """The database --database or the config's `database:` names; None when neither does
    (then any daemon found where dedupctl looks is the one to ask) or the config does not
    load."""
    obj = ctx.ensure_object(dict)
    if obj.get("database"):
        return Path(obj["database"]).expanduser()
    try:
        database = _load(ctx).database
    except ConfigError:
        return None
    return None if database == default_database_path() else database


def _photo_path(path: Path) -> str:
    """A photo named on the command line as the store names it: absolute, its folder
    resolved (`..`, a symlink to a root: roots are recorded resolved); the name itself is
    kept, a symlink there is not a photo dedupd follows."""
    path = path.expanduser().absolute()
    return str(path.parent.resolve() / path.name)


def _hash_bits(ctx: click.Context) -> int:
    from dedupd.hashers import Hasher

    hashing = _load(ctx).hashing
    return Hasher(hashing.algorithm, hashing.hash_size).bits


@dedupctl.command()
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
@click.pass_context
def status(ctx: click.Context, as_json: bool) -> None:
    """The running daemon: uptime, roots and their watch state, index, queue, the backlog's
    progress, recent errors. Exit 1 while a root is unavailable (missing, not mounted, or
    reached through another user's symbolic link), 3 if the daemon is not running."""
    with _errors():
        answer = _service(ctx, daemon_without_config=True).status()
    click.echo(render.to_json(answer) if as_json else render.status(answer))
    unavailable = [r for r in answer["roots"] if r["state"] == "unavailable"]
    for root in unavailable:
        why = root.get("reason")  # an older daemon gives none until its reconcile ran
        said = f": {why}" if why else f" (missing or not mounted): {root['path']}"
        click.echo(f"warning: root unavailable{render.shown(said)}", err=True)
    if unavailable:
        sys.exit(EXIT_NOT_FOUND)


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
    help="Only images within this normalized distance (0-1); default: those within the "
    "threshold of their own root's policy (what counts as a duplicate there).",
)
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
@click.pass_context
def search(ctx: click.Context, image: str, k: int, threshold: float | None, as_json: bool) -> None:
    """Indexed photos that duplicate IMAGE, nearest first, with distances, and those that are
    a crop of IMAGE or of which IMAGE is a crop. Exit 1 if none.

    IMAGE is hashed here, with the configured hasher, and looked up in the daemon's index;
    its rotations and mirrors too unless the default policy says `isometric: false`. Clips
    with a frame like IMAGE are listed too. IMAGE may be a clip (a video, an animated GIF
    or WebP): then the clips that match it are listed.
    Without --threshold, a photo is listed when it is within the threshold of its own root's
    policy; with it, photos beyond that are marked "not a duplicate".
    """
    from dedupd import video
    from dedupd.hashers import Hasher
    from dedupd.imaging import hash_image  # Pillow, for the one command that decodes here

    with _errors():
        config = _load(ctx)
        h = config.hashing
        hasher = Hasher(h.algorithm, h.hash_size)
        clip: video.HashedVideo | None = None
        if video.is_video_name(image):
            clip = video.hash_video(image, hasher, fps=h.video_fps, max_pixels=h.max_pixels)
        elif image.rpartition(".")[2].lower() in video.ANIMATED_EXTENSIONS:
            clip = video.hash_animation(image, hasher, fps=h.video_fps, max_pixels=h.max_pixels)
        if clip is not None:
            if not clip.frames:
                raise video.NoVideoStream(image, "no frame of this clip has any detail to match")
            frames = video.search_frames(clip.frames)
            answer = _service(ctx).search(
                frames[0], sha256=clip.sha256, k=k, threshold=threshold, frames=frames
            )
            sha256 = clip.sha256
        else:
            hashed = hash_image(image, [hasher], max_pixels=h.max_pixels)
            bits = hashed.hashes[hasher.key]
            isometric = config.policies[DEFAULT_POLICY].isometric
            variants = hashed.variants.get(hasher.key, []) if isometric else []
            answer = _service(ctx).search(
                bits,
                sha256=hashed.sha256,
                k=k,
                threshold=threshold,
                variants=variants,
                features=hashed.features,
            )
            sha256 = hashed.sha256
        answer["query"] = {"path": str(Path(image).resolve()), "sha256": sha256}
        if answer["hasher"] != hasher.key:
            raise ConfigError(
                f"this config hashes with {hasher.key} but the daemon with {answer['hasher']};"
                " pass the daemon's config with --config"
            )
    found = answer["results"] or answer.get("crops")  # an older daemon lists no crops
    if as_json:
        click.echo(render.to_json(answer))
    elif found:
        click.echo(render.search(answer, hasher.bits))
    if not found:
        if not as_json:
            click.echo("no similar photos indexed", err=True)
        sys.exit(EXIT_NOT_FOUND)


@dedupctl.command()
@click.argument("file", required=False, type=click.Path(path_type=Path))
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
@click.option(
    "--html",
    "html_out",
    type=click.Path(dir_okay=False, path_type=Path),
    help="Write the groups as one self-contained HTML page (thumbnails inline) to this file.",
)
@click.option(
    "--tsne",
    "tsne_out",
    type=click.Path(dir_okay=False, path_type=Path),
    help="Draw the t-SNE map of the indexed photos, duplicate groups linked, as a PNG to "
    "this file (needs `pip install 'dedupd[viz]'`).",
)
@click.option(
    "--sample",
    type=click.IntRange(min=2),
    default=2000,
    show_default=True,
    help="With --tsne: draw at most this many photos (group members first).",
)
@click.pass_context
def show(
    ctx: click.Context,
    file: Path | None,
    as_json: bool,
    html_out: Path | None,
    tsne_out: Path | None,
    sample: int,
) -> None:
    """Duplicate groups and how many photos are in quarantine; or, with FILE, that file's
    record and its matches (exit 1 if the file is not in the database).

    A photo of a reference root is always its group's keeper; pairs marked distinct and
    photos restored from quarantine are not listed as duplicates. --html writes the groups
    as a page to share or archive; --tsne draws the map of all indexed photos (read from the
    database, which this user must be able to read)."""
    if file is not None and (html_out or tsne_out):
        raise click.UsageError("--html and --tsne show the groups: give no FILE")
    with _errors():
        bits = _hash_bits(ctx)
        service = _service(ctx)
        if file is not None:
            answer = service.file_info(_photo_path(file))
            click.echo(render.to_json(answer) if as_json else render.file_info(answer, bits))
            return
        answer = service.groups()
        if html_out is not None or tsne_out is not None:
            _pictures(ctx, answer, html_out, tsne_out, sample)
            return
    click.echo(render.to_json(answer) if as_json else render.groups(answer, bits))


def _pictures(
    ctx: click.Context,
    answer: dict[str, Any],
    html_out: Path | None,
    tsne_out: Path | None,
    sample: int,
) -> None:
    from dedupd import report
    from dedupd.thumbs import Thumbnails, cache_dir

    config = _load(ctx)
    thumbs = Thumbnails(
        cache_dir(), max_pixels=config.hashing.max_pixels, roots=[r.path for r in config.roots]
    )
    if html_out is not None:
        # A name that is not UTF-8 is written as its bytes, as text output prints it.
        html_out.write_text(
            report.html_report(answer, thumbs), encoding="utf-8", errors="surrogateescape"
        )
        click.echo(render.report_written(str(html_out), answer))
    if tsne_out is not None:
        bars: dict[str, Any] = {}

        def progress(step: str, done: int, total: int) -> None:
            """A bar per step on a terminal, none when piped."""
            if not sys.stderr.isatty():
                return
            if step not in bars:
                bars[step] = click.progressbar(length=total, label=step, file=sys.stderr)
                bars[step].__enter__()
            bars[step].update(done - bars[step].pos)

        hashing = config.hashing
        key = Hasher(hashing.algorithm, hashing.hash_size).key
        try:
            with Store(_offline_config(ctx).database, readonly=True) as store:
                made = report.tsne_map(
                    store, key, answer["groups"], tsne_out, thumbs, sample=sample,
                    progress=progress,
                )
        finally:
            for bar in bars.values():
                bar.__exit__(None, None, None)
        click.echo(
            render.map_written(str(tsne_out), made.drawn, made.total, made.pictures, made.links)
        )


@dedupctl.command()
@click.option(
    "--port",
    type=click.IntRange(0, 65535),
    default=0,
    show_default=True,
    help="Port on 127.0.0.1 to serve the page on (0: a free one).",
)
@click.option("--no-open", is_flag=True, help="Print the URL only; do not open a browser.")
@click.pass_context
def review(ctx: click.Context, port: int, no_open: bool) -> None:
    """Review the quarantine and the groups in a web page, by their pictures.

    Serves a page on 127.0.0.1 only, prints its URL (with a token that every request needs)
    and opens it in a browser. The page shows each quarantined photo beside its keeper, to
    restore or purge, and the reported groups, to quarantine a copy or mark it distinct: each
    button asks the daemon (or the database when none runs), as dedupctl's commands do.
    Thumbnails are cached in $XDG_CACHE_HOME/dedupd/thumbs. Runs until Ctrl-C or SIGTERM."""
    import webbrowser

    from dedupd.review import ReviewServer
    from dedupd.thumbs import Thumbnails, cache_dir

    with _errors():
        service = _service(ctx)
        # Asked once now: no daemon and no database is an error here, not on the page.
        service.quarantine_list()
        config = _load(ctx)
        thumbs = Thumbnails(
            cache_dir(), max_pixels=config.hashing.max_pixels, roots=[r.path for r in config.roots]
        )
        try:
            server = ReviewServer(service, thumbs, port=port)
        except OSError as exc:
            raise click.UsageError(f"cannot serve on 127.0.0.1:{port}: {exc.strerror}") from exc
    stop: list[int] = []
    wake = threading.Event()

    def note(signum: int, frame: Any) -> None:  # only records it; the loop below acts
        stop.append(signum)
        wake.set()

    previous = {s: signal.signal(s, note) for s in (signal.SIGINT, signal.SIGTERM)}
    server.start()
    try:
        click.echo(render.review_started(server.url))
        sys.stdout.flush()
        if not no_open:
            webbrowser.open(server.url)
        while not wake.wait(1.0):
            pass
    finally:
        server.stop()
        for s, handler in previous.items():
            signal.signal(s, handler)


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
        root_path = root_key(root) if root else None
        service = _service(ctx, daemon_without_config=True)
        answer = service.quarantine_list(root=root_path, since=since)
    filtered = root is not None or since is not None
    click.echo(render.to_json(answer) if as_json else render.quarantine(answer, filtered=filtered))


T = TypeVar("T")


def _in_batches(
    items: list[T],
    send: Callable[[Sequence[T]], dict[str, Any]],
    key: str,
    label: str,
    size: int = 20,
    *,
    done_before_error: Callable[[list[Any]], None] = lambda collected: None,
) -> list[Any]:
    """Send `items` in batches, with a progress bar on a terminal (none when piped).

    A batch that fails (the daemon stopped, or went busy) raises, after `done_before_error`
    was given what the batches before it did: those photos were restored or purged, and
    the user must be told which, not only the error."""
    batches = [items[i : i + size] for i in range(0, len(items), size)]
    collected: list[Any] = []
    try:
        if len(batches) > 1 and sys.stderr.isatty():
            with click.progressbar(length=len(items), label=label, file=sys.stderr) as bar:
                for batch in batches:
                    collected += send(batch)[key]
                    bar.update(len(batch))
        else:
            for batch in batches:
                collected += send(batch)[key]
    except BaseException:
        if collected:
            done_before_error(collected)
        raise
    return collected


def _restore_item(item: str) -> str:
    """What `quarantine restore` sends for `item`: an action id (digits) or an absolute path.
    Raises click.UsageError for digits that name a path in the current folder too (either
    could be meant: restoring the other photo is no small mistake), and for `id:` followed
    by anything but digits."""
    if item.startswith("id:"):
        number = item.removeprefix("id:")
        if not (number.isascii() and number.isdigit()):
            raise click.UsageError(
                f"{render.shown(item)}: an id is a number, as `dedupctl quarantine list` shows it"
            )
        return str(int(number))
    if item.isascii() and item.isdigit():
        if os.path.lexists(item):
            raise click.UsageError(
                f"{item} is a quarantine id and a path here: write id:{item} for the id, "
                f"./{item} for the path; nothing was restored"
            )
        return item
    # Absolute here: the daemon's working directory is not the user's.
    return str(Path(item).expanduser().absolute())


@quarantine.command("restore")
@click.argument("items", nargs=-1, required=True)
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
@click.pass_context
def quarantine_restore(ctx: click.Context, items: tuple[str, ...], as_json: bool) -> None:
    """Put quarantined photos back where they were, by ID or path (original or in quarantine).

    An ID is the number `quarantine list` shows, or `id:N`. Digits that also name a file or
    folder in the current folder are refused (exit 2, nothing restored): write `id:N` for the
    ID, `./N` for the path. Never overwrites: a file now at the original path makes the
    restore fail. The photo and its keeper are remembered as distinct, so it is not
    quarantined again. Exit 1 if any item could not be restored.
    """
    items = tuple(_restore_item(i) for i in items)  # all checked before any is restored

    def report(results: list[dict[str, Any]]) -> None:
        if as_json:
            click.echo(render.to_json({"results": results}))
            return
        for r in results:
            click.echo(render.restored(r), err="restored" not in r)

    with _errors():
        service = _service(ctx)
        results = _in_batches(
            list(items), service.restore, "results", "restoring", done_before_error=report
        )
    report(results)
    sys.exit(EXIT_NOT_FOUND if any("restored" not in r for r in results) else 0)


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
    """Delete quarantined photos for good, after confirmation (or --yes). Journaled.

    Says how many it kept for being younger than the age."""
    with _errors():
        config = _load(ctx)
        seconds = config.quarantine.retain if older_than is None else older_than
        service = _service(ctx)
        listed = service.quarantine_list()["quarantined"]
        due = [e for e in listed if e["finished"] <= time.time() - seconds]
        younger = len(listed) - len(due)
        if not due:
            if as_json:
                answer = {"purged": [], "older_than": seconds, "younger": younger}
                click.echo(render.to_json(answer))
            else:
                click.echo(render.purged(0, younger, seconds))
            return
        if not yes:
            if not sys.stdin.isatty():
                raise click.UsageError(f"{len(due)} photos would be deleted; pass --yes to confirm")
            click.confirm(f"Delete {len(due)} quarantined photos for good?", abort=True)
        # Exactly the entries that were confirmed, nothing that aged since.
        purged = _in_batches(
            [e["id"] for e in due],
            lambda ids: service.purge(seconds, ids),
            "purged",
            "purging",
            done_before_error=lambda ids: click.echo(
                render.to_json({"purged": ids, "older_than": seconds, "younger": younger})
                if as_json
                else f"{render.purged(len(ids))}: {', '.join(map(str, ids))}"
            ),
        )
    # A confirmed photo not purged (its file changed in quarantine, or the quarantine folder
    # is not mounted) is an error to name, never "nothing to purge" and exit 0.
    kept = [e["id"] for e in due if e["id"] not in set(purged)]
    if as_json:
        click.echo(
            render.to_json({"purged": purged, "older_than": seconds, "younger": younger})
        )
    elif purged or not kept:
        click.echo(render.purged(len(purged), younger, seconds))
    if kept:
        click.echo(
            f"error: not purged: {', '.join(map(str, kept))}; the daemon's log (or the lines "
            "above) says why; `dedupctl quarantine list` shows them, `dedupctl quarantine "
            "restore ID` puts one back",
            err=True,
        )
        sys.exit(EXIT_NOT_FOUND)


@dedupctl.command()
@click.argument("a", type=click.Path(path_type=Path))
@click.argument("b", type=click.Path(path_type=Path))
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
@click.pass_context
def distinct(ctx: click.Context, a: Path, b: Path, as_json: bool) -> None:
    """Mark photos A and B as different: they never match each other again.

    Refused (exit 2) for two byte-identical files: they are the same photo."""
    first, second = (_photo_path(p) for p in (a, b))
    with _errors():
        answer = _service(ctx).distinct(first, second)
    if as_json:
        click.echo(render.to_json(answer))
    else:
        a_, b_ = (render.shown(p) for p in answer["distinct"])
        click.echo(f"marked distinct: {a_} and {b_}")


@dedupctl.command()
@click.argument("root", required=False, type=click.Path(path_type=Path))
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
@click.pass_context
def rescan(ctx: click.Context, root: Path | None, as_json: bool) -> None:
    """Ask the daemon to reconcile ROOT (or every root) now: what changed unseen is found."""
    with _errors():
        target = root_key(root) if root else None
        answer = _service(ctx, daemon_without_config=True).rescan(target)
    if as_json:
        click.echo(render.to_json(answer))
        return
    for queued in answer["queued"]:
        click.echo(f"rescan queued: {render.shown(queued)}")


@dedupctl.command()
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
@click.pass_context
def reload(ctx: click.Context, as_json: bool) -> None:
    """Ask the daemon to reload its config (as SIGHUP does); exit 2 if it is rejected (the
    daemon logs why, and keeps its running config)."""
    with _errors():
        answer = _service(ctx, daemon_without_config=True).reload()
    if as_json:
        click.echo(render.to_json(answer))
    else:
        click.echo(f"reloaded: {len(answer['roots'])} roots")
