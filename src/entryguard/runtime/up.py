"""``entryguard up``: the control plane, and the local edge beside it in the same process.

The edge follows the local API like any other edge (an edge token kept in the data dir,
the change log over HTTP); neither side imports the other, this module wires them.
"""

from __future__ import annotations

import asyncio
import ssl

from entryguard.control.db.database import Database
from entryguard.control.runner import local_edge_token, run_control_plane
from entryguard.control.settings import Settings
from entryguard.edge.service import Edge, LinkLimits
from entryguard.net.listen import bind_socket, shown_host


async def run_up(
    settings: Settings,
    host: str,
    port: int,
    *,
    tls: tuple[str, str] | None,
    log_level: str,
    edge_host: str,
    edge_port: int,
    offline_grace: float = 120.0,
    link_limits: LinkLimits = LinkLimits(),
) -> None:
    """Serve the control plane on ``host:port`` and, once it serves, the edge on
    ``edge_host:edge_port``; the banner is printed when both are up."""

    async def start_edge(db: Database, api_url: str) -> tuple[asyncio.Task[None], str]:
        token = await local_edge_token(db, settings.data_dir)
        return await start_local_edge(
            control_url=api_url,
            edge_token=token,
            host=edge_host,
            port=edge_port,
            settings=settings,
            tls=tls,
            offline_grace=offline_grace,
            link_limits=link_limits,
        )

    await run_control_plane(settings, host, port, tls=tls, log_level=log_level, beside=start_edge)


async def start_local_edge(
    *,
    control_url: str,
    edge_token: str,
    host: str,
    port: int,
    settings: Settings,
    tls: tuple[str, str] | None,
    offline_grace: float = 120.0,
    link_limits: LinkLimits = LinkLimits(),
) -> tuple[asyncio.Task[None], str]:
    """The edge inside `entryguard up`: its task (closes the edge when cancelled) and URL.
    A taken port raises :class:`~entryguard.net.listen.ListenError`."""
    sock = bind_socket(host, port, "--edge-listen")
    ssl_ctx = None
    verify: ssl.SSLContext | str | bool = True
    if tls is not None:
        ssl_ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        ssl_ctx.load_cert_chain(tls[0], tls[1])
        ca = settings.data_dir / "tls" / "ca.pem"
        verify = ssl.create_default_context(cafile=str(ca)) if ca.exists() else False
    edge = Edge(
        control_url,
        edge_token,
        tunnel_host=host,
        verify=verify,
        offline_grace=offline_grace,
        link_limits=link_limits,
    )
    await edge.start(host, port, ssl_context=ssl_ctx, sock=sock)
    try:
        await edge.wait_synced(10)
    except BaseException:  # cancelled: the server is stopping while the edge starts
        await edge.close()
        raise

    async def run() -> None:
        try:
            await asyncio.Future()
        finally:
            await edge.close()

    scheme = "wss" if tls else "ws"
    task = asyncio.get_running_loop().create_task(run(), name="edge")
    return task, f"{scheme}://{shown_host(host)}:{sock.getsockname()[1]}"
