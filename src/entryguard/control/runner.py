"""Serving the control plane (and, for `entryguard up`, the edge beside it)."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import socket
from collections.abc import Awaitable, Callable
from pathlib import Path

import uvicorn
from rich.console import Console

from entryguard.control.app import create_app
from entryguard.control.bootstrap import FirstAdmin, migrate_and_bootstrap
from entryguard.control.db.database import Database
from entryguard.control.services.apikeys import create_edge_token
from entryguard.control.settings import Settings

log = logging.getLogger("entryguard")


async def local_edge_token(db: Database, data_dir: Path) -> str:
    """`entryguard up` runs its edge against its own API with a token kept in the data dir."""
    path = data_dir / "edge-token"
    if path.exists():
        token = path.read_text().strip()
        from entryguard.control.services.edge_sync import check_edge_token

        try:
            async with db.read() as s:
                await check_edge_token(s, token)
            return token
        except Exception:
            log.warning("stored edge token is no longer valid; creating a new one")
    async with db.write() as s:
        token = await create_edge_token(s, "local")
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write(token + "\n")
    return token


class _Server(uvicorn.Server):
    """Runs ``before_shutdown`` (stop the local edge, answer the edges' open long-polls)
    once it stops accepting: otherwise the long-polls outlive the graceful shutdown and
    are cancelled with a traceback."""

    def __init__(
        self, config: uvicorn.Config, before_shutdown: Callable[[], Awaitable[None]]
    ) -> None:
        super().__init__(config)
        self._before_shutdown = before_shutdown

    async def shutdown(self, sockets: list[socket.socket] | None = None) -> None:
        for server in self.servers:
            server.close()
        await self._before_shutdown()
        await super().shutdown(sockets)


class ListenError(OSError):
    """A listening address could not be bound; the message says what to do."""


def bind_socket(host: str, port: int, flag: str) -> socket.socket:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((host, port))
        sock.listen(1024)
    except OSError as exc:
        sock.close()
        reason = exc.strerror or str(exc)
        raise ListenError(
            f"cannot listen on {host}:{port}: {reason.lower()} "
            f"(is another EntryGuard running? choose another address with {flag})"
        ) from exc
    sock.setblocking(False)
    return sock


def print_banner(
    first: FirstAdmin | None, api_url: str, edge_url: str | None, settings: Settings
) -> None:
    c = Console(highlight=False, soft_wrap=True)
    c.print(f"[bold green]✓ EntryGuard is running[/bold green]  (data in {settings.data_dir})")
    c.print(f"  API + dashboard  {api_url}   (REST under {api_url}/api/v1)")
    if edge_url:
        c.print(f"  Edge             {edge_url}   (tunnel ports {settings.tunnel_ports})")
    if first is not None:
        c.print()
        c.print("[bold]First start: an admin was created[/bold]")
        c.print(f"  email     {first.email}")
        if first.password:
            c.print(f"  password  {first.password}   [yellow](shown once: store it now)[/yellow]")
        else:
            c.print("  password  from EG_ADMIN_PASSWORD")
    c.print()
    c.print("Next steps:")
    c.print(f"  eg login --server {api_url} --email {first.email if first else 'admin@localhost'}")
    c.print("  eg admin apikey create prod-agent --scope agent:connect")
    c.print(
        "  eg admin resource create production-db --type tunnel --agent prod-agent --target 10.0.1.50:5432"
    )
    c.print(
        "  eg admin role create developers && eg admin role add-resource developers production-db"
    )
    c.print(f"  eg admin role add-user developers {first.email if first else 'admin@localhost'}")
    c.print(
        f"  eg-agent init --server-url {api_url} --tunnel --edge-url "
        + (edge_url or "ws://127.0.0.1:8081")
        + "   # on the private network"
    )
    c.print("  eg session start --duration 4")
    c.print()


async def run_control_plane(
    settings: Settings,
    host: str,
    port: int,
    *,
    tls: tuple[str, str] | None,
    log_level: str,
    with_edge: bool,
    edge_listen: str,
    banner: bool,
) -> None:
    # Bind first: a taken port must fail before a first start creates (and would
    # never show) the admin's generated password.
    sock = bind_socket(host, port, "--listen")
    db = Database(settings.database_url)
    first = await migrate_and_bootstrap(db, settings.database_url)
    app = create_app(settings, db)
    scheme = "https" if tls else "http"
    shown_host = f"[{host}]" if ":" in host else host
    config = uvicorn.Config(
        app,
        host=host,
        port=port,
        log_level="warning" if log_level == "info" else log_level,
        loop="asyncio",
        lifespan="on",
        access_log=log_level == "debug",
        ssl_certfile=tls[0] if tls else None,
        ssl_keyfile=tls[1] if tls else None,
        proxy_headers=False,  # X-Forwarded-For is handled by our trusted-proxy logic
        server_header=False,
        # Edges' long-polls would hold a graceful shutdown for up to 25 s.
        timeout_graceful_shutdown=2,
    )
    tasks: list[asyncio.Task[None]] = []

    async def stop_edge_and_polls() -> None:
        for t in tasks:
            t.cancel()
        if tasks:
            await asyncio.wait(tasks, timeout=5)
        app.state.notifier.close_polls()

    server = _Server(config, stop_edge_and_polls)
    serve = asyncio.create_task(server.serve(sockets=[sock]), name="control-plane")
    while not server.started:
        if serve.done():
            await serve  # raises the bind error
            raise SystemExit(1)
        await asyncio.sleep(0.02)
    api_url = f"{scheme}://{shown_host}:{sock.getsockname()[1]}"
    edge_url = None
    if with_edge:
        token = await local_edge_token(db, settings.data_dir)
        try:
            from entryguard.edge.service import start_local_edge
        except ImportError:
            log.warning("the edge is not available in this build; running the control plane only")
        else:
            edge_task, edge_url = await start_local_edge(
                control_url=api_url,
                edge_token=token,
                listen=edge_listen,
                settings=settings,
                tls=tls,
            )
            tasks.append(edge_task)
    if banner:
        print_banner(first, api_url, edge_url, settings)
    try:
        await serve
    finally:
        for t in tasks:
            t.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await t
        await db.dispose()
