"""One TCP listener per tunnel port; admission by grant; relay to the agent's link."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from typing import TYPE_CHECKING

from entryguard.mux import MuxError, ResetCode
from entryguard.net.allowlist import ip_of
from entryguard.relay.sockets import abort_with_rst, peer_ip
from entryguard.relay.stream import SocketStream

if TYPE_CHECKING:
    from entryguard.edge.service import Edge
    from entryguard.edge.state import Tunnel

log = logging.getLogger("entryguard.edge")


class ClientStream(SocketStream):
    """A user's TCP connection on a tunnel port."""

    def __init__(self, edge: Edge, tunnel: Tunnel) -> None:
        self.edge = edge
        self.tunnel = tunnel
        self.ip = ""
        self.port = 0
        self.admitted = False

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        host, self.port = peer_ip(transport)
        edge, tunnel = self.edge, self.tunnel
        try:
            ip = ip_of(host)
        except ValueError:
            abort_with_rst(transport)
            return
        self.ip = str(ip)
        if not tunnel.allow.covers(ip, time.time()):
            # Not admitted: a reset and not a single byte.
            edge.metrics.rejections_total += 1
            log.info(
                "rejected %s on %s (port %d): no grant covers this IP",
                self.ip,
                tunnel.name,
                tunnel.port,
            )
            abort_with_rst(transport)
            return
        link = edge.links.get(tunnel.agent_key_id)
        if link is None:
            edge.metrics.rejections_total += 1
            log.info("reset %s on %s: its agent is not connected", self.ip, tunnel.name)
            abort_with_rst(transport)
            return
        SocketStream.__init__(self, link)
        super().connection_made(transport)
        try:
            self.stream_id = link.mux.open_stream(
                tunnel.id, f"{self.ip}:{self.port}", time.monotonic()
            )
        except MuxError as exc:
            edge.metrics.rejections_total += 1
            log.warning("reset %s on %s: %s", self.ip, tunnel.name, exc)
            abort_with_rst(transport)
            return
        link.register(self.stream_id, self)
        link.kick()
        self.admitted = True
        edge.metrics.connections_total += 1
        edge.conns.setdefault(tunnel.id, set()).add(self)

    def data_received(self, data: bytes) -> None:
        if self.admitted:
            super().data_received(data)

    def eof_received(self) -> bool:
        if self.admitted:
            return super().eof_received()
        return False

    def connection_lost(self, exc: Exception | None) -> None:
        if self.admitted:
            super().connection_lost(exc)

    def on_closed(self) -> None:
        conns = self.edge.conns.get(self.tunnel.id)
        if conns is not None:
            conns.discard(self)
        self.edge.metrics.bytes_to_agent_total += self.bytes_up
        self.edge.metrics.bytes_from_agent_total += self.bytes_down
        self.bytes_up = self.bytes_down = 0

    def revoke(self) -> None:
        self.edge.metrics.revocations_total += 1
        log.info("revoked %s on %s: access ended", self.ip, self.tunnel.name)
        self.abort(ResetCode.REVOKED, "access revoked")


class TunnelListener:
    def __init__(self, edge: Edge, tunnel: Tunnel) -> None:
        self.edge = edge
        self.tunnel = tunnel
        self.server: asyncio.Server | None = None

    async def start(self, host: str) -> None:
        loop = asyncio.get_running_loop()
        tunnel = self.tunnel
        try:
            self.server = await loop.create_server(
                lambda: ClientStream(self.edge, tunnel),
                host,
                tunnel.port,
                reuse_address=True,
                backlog=1024,
            )
            log.info("listening for tunnel %s on %s:%d", tunnel.name, host, tunnel.port)
        except OSError as exc:
            log.error(
                "cannot listen on %s:%d for tunnel %s: %s", host, tunnel.port, tunnel.name, exc
            )

    async def stop(self) -> None:
        if self.server is not None:
            self.server.close()
            with contextlib.suppress(Exception):
                await self.server.wait_closed()
