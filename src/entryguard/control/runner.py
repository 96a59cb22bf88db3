"""Serving the control plane; for `entryguard up`, something started beside it (the
local edge, wired in by :mod:`entryguard.runtime.up`: this module never imports the edge)."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import signal
import socket
from collections.abc import Awaitable, Callable, Generator
from pathlib import Path
from typing import Any, TypeAlias

import uvicorn

from entryguard import aio
from entryguard.clock import SystemClock
from entryguard.control.app import create_app
from entryguard.control.banner import print_banner
from entryguard.control.bootstrap import migrate_and_bootstrap
from entryguard.control.db.database import Database
from entryguard.control.services.apikeys import create_edge_token
from entryguard.control.services.edge_sync import check_edge_token
from entryguard.control.settings import Settings
from entryguard.net.listen import bind_socket, shown_host

StartBeside: TypeAlias = Callable[[Database, str], Awaitable[tuple[asyncio.Task[None], str]]]
"""Given the database and the API's URL once it serves: start what runs beside the
control plane in this process, and return its task (cancelled at shutdown) and URL."""

log = logging.getLogger("entryguard")


async def local_edge_token(db: Database, data_dir: Path) -> str:
    """`entryguard up` runs its edge against its own API with a token kept in the data dir."""
    path = data_dir / "edge-token"
    if path.exists():
        token = path.read_text().strip()
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
    """Runs ``before_shutdown`` (answer the edges' open long-polls, stop the local edge)
    once it stops accepting: otherwise the long-polls outlive the graceful shutdown and
    are cancelled with a traceback.

    Signals are ours, not uvicorn's: ``run_control_plane`` routes SIGTERM and SIGINT to
    ``request_stop`` through the event loop. uvicorn (0.29+) would otherwise replace
    those handlers for the duration of ``serve()`` and re-raise the signal once it
    returns, so a clean stop by systemd would still end with status -15.
    """

    def __init__(
        self, config: uvicorn.Config, before_shutdown: Callable[[], Awaitable[None]]
    ) -> None:
        super().__init__(config)
        self._before_shutdown = before_shutdown

    @contextlib.contextmanager
    def capture_signals(self) -> Generator[None, None, None]:
        yield

    def request_stop(self, sig: int) -> None:
        """What uvicorn's own handler does: the first signal stops gracefully, a second
        Ctrl-C stops without waiting for open requests."""
        if self.should_exit and sig == signal.SIGINT:
            self.force_exit = True
        self.should_exit = True

    async def shutdown(self, sockets: list[socket.socket] | None = None) -> None:
        for server in self.servers:
            server.close()
        await self._before_shutdown()
        await super().shutdown(sockets)


async def run_control_plane(
    settings: Settings,
    host: str,
    port: int,
    *,
    tls: tuple[str, str] | None,
    log_level: str,
    beside: StartBeside | None = None,
) -> None:
    """Serve until SIGTERM or SIGINT. With ``beside`` (``entryguard up``), start it once
    the API serves and print the banner when it is up."""
    # Bind first: a taken port must fail before a first start creates (and would
    # never show) the admin's generated password.
    sock = bind_socket(host, port, "--listen")
    # SIGTERM/SIGINT from here on stop gracefully (see _Server); one that arrives before
    # the server exists is remembered.
    server: _Server | None = None
    early_signals: list[int] = []

    def on_signal(sig: int) -> None:
        if server is None:
            early_signals.append(sig)
        else:
            server.request_stop(sig)

    aio.on_stop_signals(on_signal)
    db = Database(  # the process's one clock
        settings.database_url, clock=SystemClock(), timeouts=settings.db_timeouts
    )
    try:
        first = await migrate_and_bootstrap(db, settings.database_url)
    except BaseException:
        await db.dispose()
        raise
    if early_signals:
        sock.close()
        await db.dispose()
        return
    app = create_app(settings, db)
    scheme = "https" if tls else "http"
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
        # Long-polls are answered at shutdown (close_polls); this bounds anything else.
        timeout_graceful_shutdown=2,
    )
    # The local edge, and the task starting it: cancelled when the server shuts down.
    tasks: list[asyncio.Task[Any]] = []

    async def stop_edge_and_polls() -> None:
        # Edges' and agents' long-polls answer now rather than at their timeout.
        app.state.notifier.close_polls()
        app.state.hub.close_streams()
        for t in tasks:
            t.cancel()
        if tasks:
            await asyncio.wait(tasks, timeout=3)

    server = _Server(config, stop_edge_and_polls)
    serve = asyncio.create_task(server.serve(sockets=[sock]), name="control-plane")
    try:
        while not server.started:
            if serve.done():
                await serve  # raises the bind error
                raise SystemExit(1)
            await asyncio.sleep(0.02)
        api_url = f"{scheme}://{shown_host(host)}:{sock.getsockname()[1]}"
        # The edge starts while the API serves (it follows it), so a stop signal during
        # its start-up (waiting for the first sync) must not wait for it: race the two.
        starting = asyncio.create_task(
            _start_beside(beside, db, api_url, tasks) if beside is not None else _none(),
            name="edge-start",
        )
        tasks.append(starting)
        await asyncio.wait([serve, starting], return_when=asyncio.FIRST_COMPLETED)
        if starting.done() and not starting.cancelled() and not server.should_exit:
            edge_url = starting.result()  # raises the edge's bind error
            # `server` too: a first start must show the generated admin password.
            print_banner(first, api_url, edge_url, settings)
        await serve
    finally:
        if not serve.done():  # the edge failed to start
            server.should_exit = True
            with contextlib.suppress(Exception):
                await serve
        for t in tasks:
            t.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await t
        await db.dispose()


async def _none() -> str | None:
    return None


async def _start_beside(
    beside: StartBeside, db: Database, api_url: str, tasks: list[asyncio.Task[Any]]
) -> str:
    task, url = await beside(db, api_url)
    tasks.append(task)
    return url
