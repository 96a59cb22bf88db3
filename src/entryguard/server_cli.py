"""`entryguard`: run the control plane (`server`), everything on one machine (`up`), the
edge alone (`edge`), migrations (`db upgrade`) and edge tokens (`edge-token create`)."""

from __future__ import annotations

import asyncio
import dataclasses
import ipaddress
import json
import logging
import os
import socket
import sys
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Annotated, NoReturn, TypeVar

import typer
from rich.console import Console
from sqlalchemy.ext.asyncio import AsyncSession

from entryguard import __version__, aio
from entryguard.console import EXIT_FAILED, EXIT_USAGE, new_app, one_line, print_error, run_app
from entryguard.control.db.database import Database, async_url, sqlite_url_for
from entryguard.control.settings import DbTimeouts, PortRange, Settings
from entryguard.durations import DurationError, parse_duration
from entryguard.errors import EntryGuardError
from entryguard.net import CidrError, parse_cidr
from entryguard.net.listen import ListenError, parse_listen

app = new_app("EntryGuard: just-in-time, time-bounded network access.")
db_app = new_app("Database maintenance.")
token_app = new_app("Edge tokens (how an edge authenticates to the control plane).")
settings_app = new_app(
    "Cluster-wide settings (tunnel ports, public host), stored in the database and shared "
    "by every replica; each replica reads them when it starts.",
    short_help="Cluster-wide settings, shared by every replica.",
)
app.add_typer(db_app, name="db")
app.add_typer(token_app, name="edge-token")
app.add_typer(settings_app, name="settings")
out = Console(soft_wrap=True)

DataDir = Annotated[
    Path,
    typer.Option(
        "--data-dir", envvar="EG_DATA_DIR", show_envvar=True, metavar="DIR", help="Data directory."
    ),
]
DbUrl = Annotated[
    str | None,
    typer.Option(
        "--database-url",
        envvar="EG_DATABASE_URL",
        show_envvar=True,
        metavar="URL",
        help="postgresql://… or sqlite:///…; default: SQLite in the data dir.",
    ),
]
OfflineAfter = Annotated[
    str,
    typer.Option(
        "--agent-offline-after",
        envvar="EG_AGENT_OFFLINE_AFTER",
        show_envvar=True,
        metavar="DURATION",
        help="An agent silent this long is marked offline (three missed 15 s heartbeats).",
    ),
]
OfflineGrace = Annotated[
    str,
    typer.Option(
        "--offline-grace",
        envvar="EG_OFFLINE_GRACE",
        show_envvar=True,
        metavar="DURATION",
        help="Without the control plane this long, refuse session and guest grants and "
        "reset their connections (static rules stay); 0 keeps everything (fail-static).",
    ),
]


def offline_grace_seconds(text: str) -> float:
    """``--offline-grace``: a duration (a bare number is seconds), or 0 for fail-static."""
    if text.strip().lower() in ("0", "0s", "0m", "0h"):
        return 0.0
    try:
        return float(parse_duration(text, bare_unit="s"))
    except DurationError as exc:
        usage(f"--offline-grace: {exc} (or 0 to keep serving without the control plane)")


def control_urls(given: list[str]) -> list[str]:
    """``--control-url`` (repeatable), else ``EG_CONTROL_URLS`` (comma-separated), else
    ``EG_CONTROL_URL``; each must be http(s)."""
    urls = list(given)
    if not urls:
        env = os.environ.get("EG_CONTROL_URLS") or os.environ.get("EG_CONTROL_URL") or ""
        urls = [u.strip() for u in env.split(",") if u.strip()]
    if not urls:
        usage("give the control plane: --control-url URL (repeatable) or EG_CONTROL_URLS")
    for u in urls:
        if not u.startswith(("http://", "https://")):
            usage(f"--control-url {u!r} must start with http:// or https://")
    return urls


JsonOpt = Annotated[bool, typer.Option("--json", help="Print JSON for scripts instead of text.")]


def fail(message: str, code: int = EXIT_FAILED) -> NoReturn:
    """One line on stderr, then exit: 1 when something failed, 2 (``usage``) for bad flags."""
    print_error(message)
    raise typer.Exit(code)


def usage(message: str) -> NoReturn:
    fail(message, EXIT_USAGE)


def check_database_url(url: str) -> None:
    """A --database-url EntryGuard can use, or one line saying what is expected."""
    from sqlalchemy.engine import make_url
    from sqlalchemy.exc import ArgumentError

    try:
        backend = make_url(async_url(url)).get_backend_name()
    except ArgumentError:
        usage("invalid --database-url: expected postgresql://USER@HOST:PORT/DB or sqlite:///PATH")
    if backend not in ("postgresql", "sqlite"):
        usage(
            f"unsupported database {backend!r} in --database-url: "
            "use postgresql://USER@HOST:PORT/DB or sqlite:///PATH"
        )


def db_error(exc: BaseException) -> str:
    """The driver's own message (``database "x" does not exist``), without SQLAlchemy's
    wrapping and its "Background on this error" line."""
    orig = getattr(exc, "orig", None)
    err = orig if orig is not None else exc
    if isinstance(err, ConnectionRefusedError | socket.gaierror | TimeoutError):
        # The bare errno text ("Connect call failed ('127.0.0.1', 5432)") names no cause.
        return one_line(
            f"cannot reach the database server ({err}): is it running, "
            "and is the host and port in --database-url right?"
        )
    return one_line(str(err))


def listen_address(text: str, default_port: int) -> tuple[str, int]:
    """``--listen`` / ``--edge-listen`` as (host, port), or a usage error."""
    try:
        return parse_listen(text, default_port)
    except ValueError as exc:
        usage(str(exc))


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def build_settings(
    data_dir: Path,
    database_url: str | None,
    public_host: str,
    tunnel_ports: str,
    trusted_proxies: list[str],
    secure: bool,
    agent_offline_after: str = "45s",
) -> Settings:

    try:
        ports = PortRange.parse(tunnel_ports)
    except ValueError as exc:
        usage(str(exc))
    from entryguard.control.services.cluster_settings import check_public_host

    try:
        public_host = check_public_host(public_host)
    except EntryGuardError as exc:
        usage(f"--public-host: {exc.message}")
    try:
        offline_after = parse_duration(agent_offline_after, bare_unit="s")
    except ValueError as exc:
        usage(f"--agent-offline-after: {exc} (a bare number is seconds)")
    proxies = []
    for p in trusted_proxies:
        try:
            proxies.append(parse_cidr(p))
        except CidrError as exc:
            usage(f"--trusted-proxy: {exc}")
    return Settings(
        database_url=database_url or sqlite_url_for(data_dir),
        data_dir=data_dir,
        public_host=public_host,
        tunnel_ports=ports,
        trusted_proxies=tuple(proxies),
        secure_cookies=secure,
        agent_offline_after=float(offline_after),
    )


def setup_logging(level: str) -> None:
    logging.basicConfig(
        level=getattr(logging, level.upper(), logging.INFO),
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    logging.getLogger("alembic").setLevel(logging.WARNING)
    logging.getLogger("httpx").setLevel(logging.WARNING)
    logging.getLogger("websockets.server").setLevel(logging.WARNING)


@app.command()
def version(json_output: JsonOpt = False) -> None:
    """Print the version."""
    if json_output:
        print(json.dumps({"name": "entryguard", "version": __version__}))
        return
    out.print(f"entryguard {__version__}")


@db_app.command("upgrade")
def db_upgrade(
    data_dir: DataDir = Path(".entryguard"),
    database_url: DbUrl = None,
    json_output: JsonOpt = False,
) -> None:
    """Apply database migrations (safe to run repeatedly)."""
    from entryguard.control.bootstrap import prepare_data_dir
    from entryguard.control.db.migrate import upgrade

    url = database_url or sqlite_url_for(data_dir)
    if database_url is None:
        prepare_data_dir(data_dir)
    else:
        check_database_url(database_url)
    try:
        upgrade(url)
    except Exception as exc:  # surfaced as one line, e.g. connection refused
        fail(f"migration failed: {db_error(exc)}")
    if json_output:
        print(json.dumps({"ok": True, "message": "database is up to date"}))
        return
    out.print("✓ database is up to date")


T = TypeVar("T")


def _existing_db_url(data_dir: Path, database_url: str | None) -> str:
    """The database of a command that works on one (never creates a SQLite file)."""
    if database_url is not None:
        check_database_url(database_url)
        return database_url
    if not (data_dir / "entryguard.db").exists():
        fail(
            f"no database in {data_dir}: run `entryguard up` or `entryguard db upgrade` first, "
            "or pass --database-url"
        )
    return sqlite_url_for(data_dir)


def _in_database(
    url: str,
    work: Callable[[AsyncSession], Awaitable[T]],
    *,
    write: bool,
    migrate: bool = False,
    timeouts: DbTimeouts | None = None,
) -> T:
    """Run ``work`` in one session (a serialised ``Database.write`` transaction, or a
    read), after the migrations when ``migrate``; the engine is disposed of either way."""
    from entryguard.control.db.migrate import upgrade_async

    async def run() -> T:
        db = Database(url, timeouts=timeouts)
        try:
            if migrate:
                await upgrade_async(url)
            async with db.write() if write else db.read() as s:
                return await work(s)
        finally:
            await db.dispose()

    return asyncio.run(run())


@token_app.command("create", short_help="Create an edge token (printed once).")
def edge_token_create(
    name: Annotated[
        str, typer.Option("--name", metavar="NAME", help="A label for this edge.")
    ] = "edge",
    data_dir: DataDir = Path(".entryguard"),
    database_url: DbUrl = None,
    json_output: JsonOpt = False,
) -> None:
    """Create an edge token (printed once) for `entryguard edge --edge-token`."""
    from entryguard.control.services.apikeys import create_edge_token

    url = _existing_db_url(data_dir, database_url)
    try:
        token = _in_database(url, lambda s: create_edge_token(s, name), write=True, migrate=True)
    except EntryGuardError as exc:
        fail(exc.message)
    except Exception as exc:
        fail(f"could not create the edge token: {db_error(exc)}")
    if json_output:
        print(json.dumps({"name": name, "token": token}))
        return
    if sys.stdout.isatty():
        out.print("Edge token (shown once, keep it secret):")
    print(token)


@token_app.command("list", short_help="List edge tokens (never the secrets).")
def edge_token_list(
    data_dir: DataDir = Path(".entryguard"),
    database_url: DbUrl = None,
    json_output: JsonOpt = False,
) -> None:
    """List edge tokens: name, prefix, created, revoked."""
    from entryguard.control.services.apikeys import list_edge_tokens

    url = _existing_db_url(data_dir, database_url)
    try:
        rows = _in_database(url, list_edge_tokens, write=False)
    except Exception as exc:
        fail(f"could not list edge tokens: {db_error(exc)}")
    if json_output:
        print(json.dumps({"items": [dataclasses.asdict(r) for r in rows]}))
        return
    if not rows:
        out.print("no edge tokens: create one with `entryguard edge-token create --name NAME`")
        return
    out.print(f"{'NAME':<20} {'PREFIX':<14} {'CREATED':<26} REVOKED")
    for r in rows:
        out.print(
            f"{r.name:<20} {r.prefix:<14} {r.created_at or '':<26} {r.revoked_at or '-'}",
            highlight=False,
        )


@token_app.command("revoke", short_help="Revoke edge tokens by name (or prefix).")
def edge_token_revoke(
    name: Annotated[str, typer.Argument(metavar="NAME", help="Token name, or its ege_… prefix.")],
    data_dir: DataDir = Path(".entryguard"),
    database_url: DbUrl = None,
    json_output: JsonOpt = False,
) -> None:
    """Revoke every live edge token with this name: edges using one lose their change
    stream within seconds, on every replica."""
    from entryguard.control.services.apikeys import revoke_edge_tokens

    url = _existing_db_url(data_dir, database_url)
    try:
        rows = _in_database(url, lambda s: revoke_edge_tokens(s, name), write=True)
    except EntryGuardError as exc:
        fail(f"{exc.message}: see `entryguard edge-token list`")
    except Exception as exc:
        fail(f"could not revoke: {db_error(exc)}")
    if json_output:
        print(json.dumps({"revoked": [dataclasses.asdict(r) for r in rows]}))
        return
    for r in rows:
        out.print(f"✓ revoked edge token {r.name} ({r.prefix})", highlight=False)


@settings_app.command("list", short_help="List the cluster settings.")
def settings_list(
    data_dir: DataDir = Path(".entryguard"),
    database_url: DbUrl = None,
    json_output: JsonOpt = False,
) -> None:
    """List the cluster settings: tunnel-ports, public-host (a default until the first
    replica starts and stores it)."""
    from entryguard.control.services.cluster_settings import list_settings

    url = _existing_db_url(data_dir, database_url)
    try:
        rows = _in_database(url, list_settings, write=False)
    except EntryGuardError as exc:
        fail(f"{exc.message}: run `entryguard db upgrade` first")
    except Exception as exc:
        fail(f"could not list the settings: {db_error(exc)}")
    if json_output:
        print(json.dumps({"items": [dataclasses.asdict(r) for r in rows]}))
        return
    out.print(f"{'KEY':<14} {'VALUE':<24} UPDATED")
    for r in rows:
        updated = r.updated_at or "not stored yet (the default)"
        out.print(f"{r.key:<14} {r.value:<24} {updated}", highlight=False)


@settings_app.command("set", short_help="Change a cluster setting (replicas use it on restart).")
def settings_set(
    key: Annotated[str, typer.Argument(metavar="KEY", help="tunnel-ports or public-host.")],
    value: Annotated[
        str, typer.Argument(metavar="VALUE", help="e.g. 42000-42999, or vpn.example.com.")
    ],
    data_dir: DataDir = Path(".entryguard"),
    database_url: DbUrl = None,
    json_output: JsonOpt = False,
) -> None:
    """Change a cluster setting for every replica; each one uses the new value when it
    restarts. A tunnel port range must keep every existing tunnel's port."""
    from entryguard.control.services.cluster_settings import known_setting, set_setting

    try:
        known_setting(key).check(value)  # a usage error, before the database is opened
    except EntryGuardError as exc:
        usage(exc.message)
    url = _existing_db_url(data_dir, database_url)
    try:
        result = _in_database(
            url, lambda s: set_setting(s, key, value, "system"), write=True, migrate=True
        )
    except EntryGuardError as exc:
        fail(exc.message)
    except Exception as exc:
        fail(f"could not change the setting: {db_error(exc)}")
    r = result.setting
    changed = result.previous != r.value
    if json_output:
        print(
            json.dumps({**dataclasses.asdict(r), "changed": changed, "previous": result.previous})
        )
        return
    if changed:
        out.print(
            f"✓ {r.key} = {r.value} (each replica uses it from its next start)", highlight=False
        )
    else:
        out.print(f"✓ {r.key} = {r.value} (already set: nothing changed)", highlight=False)


def _run_control(
    settings: Settings,
    host: str,
    port: int,
    tls: tuple[str, str] | None,
    log_level: str,
    edge: tuple[str, int] | None,
    offline_grace: float = 120.0,
) -> None:
    """The control plane alone (``server``), or with the local edge beside it (``up``)."""
    from sqlalchemy.exc import SQLAlchemyError

    from entryguard.control.runner import run_control_plane
    from entryguard.runtime.up import run_up

    try:
        if edge is None:
            aio.run(run_control_plane(settings, host, port, tls=tls, log_level=log_level))
        else:
            aio.run(
                run_up(
                    settings,
                    host,
                    port,
                    tls=tls,
                    log_level=log_level,
                    edge_host=edge[0],
                    edge_port=edge[1],
                    offline_grace=offline_grace,
                )
            )
    except KeyboardInterrupt:
        pass
    except (SQLAlchemyError, ConnectionRefusedError, socket.gaierror) as exc:
        # asyncpg raises the socket's own error when the server is not there.
        fail(f"cannot use the database: {db_error(exc)}")
    except OSError as exc:
        fail(str(exc))


def _check_tls(host: str, tls_cert: Path | None, tls_key: Path | None, self_signed: bool) -> bool:
    """The TLS flags' usage errors, before anything touches the database; True: TLS."""
    if self_signed:
        return True
    if bool(tls_cert) != bool(tls_key):
        usage("give both --tls-cert and --tls-key")
    if tls_cert and tls_key:
        return True
    if not is_loopback(host):
        usage(
            f"listening on {host} (not loopback) needs TLS: pass --tls-cert and --tls-key, "
            "or --tls-self-signed"
        )
    return False


def _tls_args(
    host: str,
    tls_cert: Path | None,
    tls_key: Path | None,
    self_signed: bool,
    data_dir: Path,
    public_host: str,
) -> tuple[str, str] | None:
    """The certificate and key to serve with (checked by ``_check_tls``); a self-signed
    one names the cluster's public host."""
    if self_signed:
        from entryguard.control.tls import ensure_self_signed

        cert, key = ensure_self_signed(data_dir, [public_host, host, "localhost", "127.0.0.1"])
        return str(cert), str(key)
    if tls_cert and tls_key:
        return str(tls_cert), str(tls_key)
    return None


Listen = Annotated[
    str, typer.Option("--listen", metavar="HOST:PORT", help="API + dashboard address.")
]
EdgeListen = Annotated[
    str,
    typer.Option(
        "--edge-listen",
        metavar="HOST:PORT",
        help="Edge address (agent WebSocket, /health, /metrics).",
    ),
]
# Cluster-wide (stored in the database, services/cluster_settings.py): None tells "not
# given", which uses the stored value; a given value must match it.
_DEFAULTS = Settings(database_url="")
TunnelPorts = Annotated[
    str | None,
    typer.Option(
        "--tunnel-ports",
        metavar="FIRST-LAST",
        help=f"Tunnel port range, a cluster setting: the first start stores it (default "
        f"{_DEFAULTS.tunnel_ports}); later starts use it and refuse another value "
        "(see `entryguard settings`).",
    ),
]
PublicHost = Annotated[
    str | None,
    typer.Option(
        "--public-host",
        metavar="HOST",
        help=f"Host shown in connection strings, a cluster setting: the first start stores "
        f"it (default {_DEFAULTS.public_host}); later starts use it and refuse another "
        "value (see `entryguard settings`).",
    ),
]
TlsCert = Annotated[
    Path | None, typer.Option("--tls-cert", metavar="PEM", help="TLS certificate (PEM).")
]
TlsKey = Annotated[
    Path | None, typer.Option("--tls-key", metavar="PEM", help="TLS private key (PEM).")
]
TlsSelfSigned = Annotated[
    bool,
    typer.Option("--tls-self-signed", help="Generate a CA and certificate in the data dir."),
]
TrustedProxy = Annotated[
    list[str],
    typer.Option(
        "--trusted-proxy",
        metavar="CIDR",
        help="A proxy whose X-Forwarded-For is trusted (repeatable).",
    ),
]
LogLevel = Annotated[
    str, typer.Option("--log-level", metavar="LEVEL", help="debug, info or warning.")
]


def _serve(
    *,
    data_dir: Path,
    listen: str,
    tunnel_ports: str | None,
    public_host: str | None,
    database_url: str | None,
    tls_cert: Path | None,
    tls_key: Path | None,
    tls_self_signed: bool,
    trusted_proxy: list[str],
    agent_offline_after: str,
    log_level: str,
    edge_listen: str | None,
    offline_grace: float = 120.0,
) -> None:
    """`up` (with the edge) and `server` (without) share everything else."""
    from entryguard.control.bootstrap import prepare_data_dir

    setup_logging(log_level)
    if database_url is not None:
        check_database_url(database_url)
    if database_url is None or edge_listen is not None:
        prepare_data_dir(data_dir)
    host, port = listen_address(listen, 8080)
    secure = _check_tls(host, tls_cert, tls_key, tls_self_signed)
    settings = build_settings(
        data_dir,
        database_url,
        public_host or _DEFAULTS.public_host,
        tunnel_ports or str(_DEFAULTS.tunnel_ports),
        trusted_proxy,
        secure,
        agent_offline_after,
    )
    # Checked before anything starts (before, a bad --edge-listen stopped `up` only once
    # the control plane was serving); the message and the exit code (2) are the same.
    edge = listen_address(edge_listen, 8081) if edge_listen is not None else None
    # Flags are checked first (exit 2 without touching the database), then agreed with
    # the values every replica shares.
    settings = _with_cluster_settings(settings, tunnel_ports, public_host)
    tls = _tls_args(host, tls_cert, tls_key, tls_self_signed, data_dir, settings.public_host)
    _run_control(settings, host, port, tls, log_level, edge, offline_grace)


def _with_cluster_settings(
    settings: Settings, tunnel_ports: str | None, public_host: str | None
) -> Settings:
    """``settings`` with the cluster's tunnel ports and public host (the first replica to
    start stores them); a flag that contradicts a stored value stops the start, one line."""
    from sqlalchemy.exc import SQLAlchemyError

    from entryguard.control.services.cluster_settings import (
        PUBLIC_HOST,
        TUNNEL_PORTS,
        SettingContradicted,
        reconcile,
    )

    flags = {TUNNEL_PORTS: tunnel_ports, PUBLIC_HOST: public_host}
    try:
        values = _in_database(
            settings.database_url,
            lambda s: reconcile(s, flags),
            write=True,
            migrate=True,  # the table may be new
            timeouts=settings.db_timeouts,
        )
    except SettingContradicted as exc:
        fail(
            f"--{exc.key} {exc.given} contradicts the cluster setting {exc.key} = {exc.stored} "
            f"stored in the database; change it with `entryguard settings set {exc.key} "
            f"{exc.given}` or drop the flag"
        )
    except (SQLAlchemyError, OSError) as exc:  # SchemaTooNew is an SQLAlchemyError too
        fail(f"cannot use the database: {db_error(exc)}")
    except EntryGuardError as exc:
        fail(exc.message)
    return values.applied_to(settings)


@app.command(short_help="Run the control plane and the edge in one process.")
def up(
    data_dir: DataDir = Path(".entryguard"),
    listen: Listen = "127.0.0.1:8080",
    edge_listen: EdgeListen = "127.0.0.1:8081",
    tunnel_ports: TunnelPorts = None,
    public_host: PublicHost = None,
    database_url: DbUrl = None,
    tls_cert: TlsCert = None,
    tls_key: TlsKey = None,
    tls_self_signed: TlsSelfSigned = False,
    trusted_proxy: TrustedProxy = [],  # noqa: B006
    agent_offline_after: OfflineAfter = "45s",
    offline_grace: OfflineGrace = "2m",
    log_level: LogLevel = "info",
) -> None:
    """Run the control plane and the edge in one process (SQLite in the data dir by default)."""
    grace = offline_grace_seconds(offline_grace)
    _serve(
        data_dir=data_dir,
        listen=listen,
        tunnel_ports=tunnel_ports,
        public_host=public_host,
        database_url=database_url,
        tls_cert=tls_cert,
        tls_key=tls_key,
        tls_self_signed=tls_self_signed,
        trusted_proxy=trusted_proxy,
        agent_offline_after=agent_offline_after,
        log_level=log_level,
        edge_listen=edge_listen,
        offline_grace=grace,
    )


@app.command(short_help="Run the control plane only (API, dashboard, background jobs).")
def server(
    data_dir: DataDir = Path(".entryguard"),
    listen: Listen = "127.0.0.1:8080",
    tunnel_ports: TunnelPorts = None,
    public_host: PublicHost = None,
    database_url: DbUrl = None,
    tls_cert: TlsCert = None,
    tls_key: TlsKey = None,
    tls_self_signed: TlsSelfSigned = False,
    trusted_proxy: TrustedProxy = [],  # noqa: B006
    agent_offline_after: OfflineAfter = "45s",
    log_level: LogLevel = "info",
) -> None:
    """Run the control plane only (REST API, dashboard, background jobs)."""
    _serve(
        data_dir=data_dir,
        listen=listen,
        tunnel_ports=tunnel_ports,
        public_host=public_host,
        database_url=database_url,
        tls_cert=tls_cert,
        tls_key=tls_key,
        tls_self_signed=tls_self_signed,
        trusted_proxy=trusted_proxy,
        agent_offline_after=agent_offline_after,
        log_level=log_level,
        edge_listen=None,
    )


@app.command(short_help="Run an edge: tunnel ports and the agents' WebSocket endpoint.")
def edge(
    edge_token: Annotated[
        str,
        typer.Option(
            "--edge-token",
            envvar="EG_EDGE_TOKEN",
            show_envvar=True,
            metavar="TOKEN",
            help="From `entryguard edge-token create` on the control plane.",
        ),
    ],
    control_url: Annotated[
        list[str],
        typer.Option(
            "--control-url",
            metavar="URL",
            help="A control-plane replica, e.g. https://cp1.example.com; repeat for several "
            "(the edge moves to the next within seconds when one fails). "
            "Env: EG_CONTROL_URLS=URL,URL",
        ),
    ] = [],  # noqa: B006
    listen: Annotated[
        str,
        typer.Option(
            "--listen", metavar="HOST:PORT", help="Agent WebSocket, /health and /metrics address."
        ),
    ] = "127.0.0.1:8081",
    tunnel_host: Annotated[
        str | None,
        typer.Option(
            "--tunnel-host",
            metavar="ADDR",
            help="Address tunnel ports listen on (default: the --listen host).",
        ),
    ] = None,
    ca_file: Annotated[
        Path | None,
        typer.Option(
            "--ca-file",
            envvar="EG_CA_FILE",
            show_envvar=True,
            metavar="PEM",
            help="CA to trust for an https control plane.",
        ),
    ] = None,
    tls_cert: Annotated[
        Path | None,
        typer.Option("--tls-cert", metavar="PEM", help="TLS certificate (PEM) for wss://."),
    ] = None,
    tls_key: TlsKey = None,
    name: Annotated[
        str | None,
        typer.Option(
            "--name",
            envvar="EG_EDGE_NAME",
            show_envvar=True,
            metavar="NAME",
            help=(
                "This edge's name in logs, /health and `eg admin edges` (default: the host "
                "name). Edges sharing an edge token need different names."
            ),
        ),
    ] = None,
    offline_grace: OfflineGrace = "2m",
    delivery: Annotated[
        str,
        typer.Option(
            "--delivery",
            envvar="EG_EDGE_DELIVERY",
            show_envvar=True,
            metavar="stream|poll",
            help=(
                "How to follow the change log: stream (pushed over a WebSocket, the "
                "default) or poll (HTTP long-poll, for proxies that do not pass WebSockets)."
            ),
        ),
    ] = "stream",
    link_memory: Annotated[
        str,
        typer.Option(
            "--link-memory",
            envvar="EG_EDGE_LINK_MEMORY",
            show_envvar=True,
            metavar="SIZE",
            help="Memory each agent link may hold for all its streams together (e.g. "
            "64MiB); per-stream windows shrink to fit when many streams are busy.",
        ),
    ] = "64MiB",
    max_streams: Annotated[
        int,
        typer.Option(
            "--max-streams",
            envvar="EG_EDGE_MAX_STREAMS",
            show_envvar=True,
            metavar="N",
            help="Streams open at once per agent link; a connection past it is reset. Each "
            "stream is a client socket: raise the file-descriptor limit (LimitNOFILE) to match.",
        ),
    ] = 16384,
    log_level: LogLevel = "info",
) -> None:
    """Run an edge: tunnel ports and the agents' WebSocket endpoint; holds no database credentials."""
    import ssl

    from entryguard.edge.service import Edge, LinkLimits, SizeError, parse_size
    from entryguard.net.listen import bind_socket

    setup_logging(log_level)
    logging.getLogger("httpx").setLevel(logging.WARNING)
    host, port = listen_address(listen, 8081)
    if bool(tls_cert) != bool(tls_key):
        usage("give both --tls-cert and --tls-key")
    if not tls_cert and not is_loopback(host):
        usage(
            f"listening on {host} (not loopback) needs TLS for the agents' WebSocket: pass --tls-cert and --tls-key"
        )
    urls = control_urls(control_url)
    grace = offline_grace_seconds(offline_grace)
    edge_name = name or socket.gethostname()
    if delivery not in ("stream", "poll"):
        usage(f"--delivery must be stream or poll, not {delivery!r}")
    try:
        limits = LinkLimits(link_memory=parse_size(link_memory), max_streams=max_streams)
    except SizeError as exc:
        usage(f"--link-memory: {exc}")
    except ValueError as exc:
        usage(f"--link-memory/--max-streams: {exc}")

    async def run() -> None:
        stop = asyncio.Event()  # SIGTERM or Ctrl-C: close the edge, exit 0
        aio.on_stop_signals(lambda _sig: stop.set())
        ssl_ctx = None
        if tls_cert and tls_key:
            ssl_ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
            ssl_ctx.load_cert_chain(str(tls_cert), str(tls_key))
        verify: ssl.SSLContext | bool = (
            ssl.create_default_context(cafile=str(ca_file)) if ca_file else True
        )
        sock = bind_socket(host, port, "--listen")
        e = Edge(
            urls,
            edge_token,
            tunnel_host=tunnel_host or host,
            verify=verify,
            offline_grace=grace,
            name=edge_name,
            delivery="poll" if delivery == "poll" else "stream",
            link_limits=limits,
        )
        await e.start(host, port, ssl_context=ssl_ctx, sock=sock)
        out.print(
            f"✓ edge listening on {'wss' if ssl_ctx else 'ws'}://{host}:{sock.getsockname()[1]} "
            f"as {edge_name} (following {', '.join(urls)}; offline grace "
            f"{'off' if grace == 0 else f'{grace:g} s'})",
            highlight=False,
        )
        try:
            await stop.wait()
        finally:
            await e.close()

    try:
        aio.run(run())
    except KeyboardInterrupt:
        pass
    except ListenError as exc:
        fail(str(exc))


def main() -> None:
    os.environ.setdefault("PYTHONUNBUFFERED", "1")
    sys.exit(run_app(app, "entryguard", sys.argv[1:]))
