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
from pathlib import Path
from typing import Annotated, Any, NoReturn

import typer
from rich.console import Console

from entryguard import __version__, aio
from entryguard.console import EXIT_FAILED, EXIT_USAGE, new_app, one_line, print_error, run_app
from entryguard.control.db.database import Database, async_url, sqlite_url_for
from entryguard.control.settings import PortRange, Settings
from entryguard.durations import DurationError, parse_duration
from entryguard.net import CidrError, parse_cidr
from entryguard.net.listen import ListenError, parse_listen

app = new_app("EntryGuard: just-in-time, time-bounded network access.")
db_app = new_app("Database maintenance.")
token_app = new_app("Edge tokens (how an edge authenticates to the control plane).")
app.add_typer(db_app, name="db")
app.add_typer(token_app, name="edge-token")
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
    from entryguard.control.db.migrate import upgrade_async
    from entryguard.control.services.apikeys import create_edge_token
    from entryguard.errors import EntryGuardError

    url = database_url or sqlite_url_for(data_dir)
    if database_url is not None:
        check_database_url(database_url)
    if database_url is None and not (data_dir / "entryguard.db").exists():
        fail(
            f"no database in {data_dir}: run `entryguard up` or `entryguard db upgrade` first, "
            "or pass --database-url"
        )

    async def run() -> str:
        db = Database(url)
        try:
            await upgrade_async(url)
            async with db.write() as s:
                return await create_edge_token(s, name)
        finally:
            await db.dispose()

    try:
        token = asyncio.run(run())
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


def _token_db_url(data_dir: Path, database_url: str | None) -> str:
    if database_url is not None:
        check_database_url(database_url)
        return database_url
    if not (data_dir / "entryguard.db").exists():
        fail(
            f"no database in {data_dir}: run `entryguard up` or `entryguard db upgrade` first, "
            "or pass --database-url"
        )
    return sqlite_url_for(data_dir)


@token_app.command("list", short_help="List edge tokens (never the secrets).")
def edge_token_list(
    data_dir: DataDir = Path(".entryguard"),
    database_url: DbUrl = None,
    json_output: JsonOpt = False,
) -> None:
    """List edge tokens: name, prefix, created, revoked."""
    from entryguard.control.services.apikeys import list_edge_tokens

    url = _token_db_url(data_dir, database_url)

    async def run() -> list[Any]:
        db = Database(url)
        try:
            async with db.read() as s:
                return list(await list_edge_tokens(s))
        finally:
            await db.dispose()

    try:
        rows = asyncio.run(run())
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
    from entryguard.errors import EntryGuardError

    url = _token_db_url(data_dir, database_url)

    async def run() -> list[Any]:
        db = Database(url)
        try:
            async with db.write() as s:
                return list(await revoke_edge_tokens(s, name))
        finally:
            await db.dispose()

    try:
        rows = asyncio.run(run())
    except EntryGuardError as exc:
        fail(f"{exc.message}: see `entryguard edge-token list`")
    except Exception as exc:
        fail(f"could not revoke: {db_error(exc)}")
    if json_output:
        print(json.dumps({"revoked": [dataclasses.asdict(r) for r in rows]}))
        return
    for r in rows:
        out.print(f"✓ revoked edge token {r.name} ({r.prefix})", highlight=False)


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


def _tls_args(
    host: str,
    tls_cert: Path | None,
    tls_key: Path | None,
    self_signed: bool,
    data_dir: Path,
    public_host: str,
) -> tuple[str, str] | None:
    if self_signed:
        from entryguard.control.tls import ensure_self_signed

        cert, key = ensure_self_signed(data_dir, [public_host, host, "localhost", "127.0.0.1"])
        return str(cert), str(key)
    if bool(tls_cert) != bool(tls_key):
        usage("give both --tls-cert and --tls-key")
    if tls_cert and tls_key:
        return str(tls_cert), str(tls_key)
    if not is_loopback(host):
        usage(
            f"listening on {host} (not loopback) needs TLS: pass --tls-cert and --tls-key, "
            "or --tls-self-signed"
        )
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
TunnelPorts = Annotated[
    str, typer.Option("--tunnel-ports", metavar="FIRST-LAST", help="Tunnel port range.")
]
PublicHost = Annotated[
    str, typer.Option("--public-host", metavar="HOST", help="Host shown in connection strings.")
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
    tunnel_ports: str,
    public_host: str,
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
    tls = _tls_args(host, tls_cert, tls_key, tls_self_signed, data_dir, public_host)
    settings = build_settings(
        data_dir,
        database_url,
        public_host,
        tunnel_ports,
        trusted_proxy,
        tls is not None,
        agent_offline_after,
    )
    # Checked before anything starts (before, a bad --edge-listen stopped `up` only once
    # the control plane was serving); the message and the exit code (2) are the same.
    edge = listen_address(edge_listen, 8081) if edge_listen is not None else None
    _run_control(settings, host, port, tls, log_level, edge, offline_grace)


@app.command(short_help="Run the control plane and the edge in one process.")
def up(
    data_dir: DataDir = Path(".entryguard"),
    listen: Listen = "127.0.0.1:8080",
    edge_listen: EdgeListen = "127.0.0.1:8081",
    tunnel_ports: TunnelPorts = "41000-41999",
    public_host: PublicHost = "127.0.0.1",
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
    tunnel_ports: TunnelPorts = "41000-41999",
    public_host: PublicHost = "127.0.0.1",
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
            help="This edge's name in logs and /health (default: the host name).",
        ),
    ] = None,
    offline_grace: OfflineGrace = "2m",
    log_level: LogLevel = "info",
) -> None:
    """Run an edge: tunnel ports and the agents' WebSocket endpoint; holds no database credentials."""
    import ssl

    from entryguard.edge.service import Edge
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
