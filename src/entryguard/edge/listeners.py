"""One TCP listener per tunnel port; admission by grant; relay to the agent's link."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from typing import TYPE_CHECKING

from entryguard.mux import MuxError, ResetCode
from entryguard.net.allowlist import ip_of
from entryguard.relay.link import MuxLink
from entryguard.relay.sockets import abort_with_rst, peer_ip
from entryguard.relay.stream import SocketStream

if TYPE_CHECKING:
    from entryguard.edge.service import Edge
    from entryguard.edge.state import Tunnel

log = logging.getLogger("entryguard.edge")


class ClientStream(SocketStream):
    """A user's admitted TCP connection on a tunnel port, relayed over its agent's link."""

    def __init__(
        self, edge: Edge, tunnel: Tunnel, link: MuxLink, stream_id: int, ip: str, port: int
    ) -> None:
        super().__init__(link, stream_id)
        self.edge = edge
        self.tunnel = tunnel
        self.ip = ip
        self.port = port

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        super().connection_made(transport)
        self.link.register(self.stream_id, self)
        self.link.kick()  # the OPEN goes out now, ahead of the client's first bytes
        edge = self.edge
        edge.metrics.connections_total += 1
        edge.conns.setdefault(self.tunnel.id, set()).add(self)

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


class Admission(asyncio.Protocol):
    """What every connection on a tunnel port starts as.

    asyncio builds a connection's protocol before anyone knows the peer, so the
    decision is taken here, in ``connection_made``, before the transport reads a byte:
    a refused connection is reset (SO_LINGER 0) without a byte either way, an admitted
    one is handed to a ``ClientStream`` whose stream is already open on the link.
    """

    __slots__ = ("edge", "tunnel")

    def __init__(self, edge: Edge, tunnel: Tunnel) -> None:
        self.edge = edge
        self.tunnel = tunnel

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        stream = self._admit(transport)
        if stream is None:
            abort_with_rst(transport)
            return
        transport.set_protocol(stream)
        stream.connection_made(transport)

    def _admit(self, transport: asyncio.BaseTransport) -> ClientStream | None:
        """The relay for this connection, or None (logged and counted) to refuse it."""
        host, port = peer_ip(transport)
        edge, tunnel = self.edge, self.tunnel
        try:
            ip = ip_of(host)
        except ValueError:
            return None
        ip_text = str(ip)
        if not tunnel.allow.covers(ip, edge.clock.time(), static_only=edge.fail_closed):
            edge.metrics.rejections_total += 1
            log.info(
                "rejected %s on %s (port %d): no grant covers this IP",
                ip_text,
                tunnel.name,
                tunnel.port,
            )
            return None
        link = edge.links.get(tunnel.agent_key_id)
        if link is None:
            edge.metrics.rejections_total += 1
            log.info("reset %s on %s: its agent is not connected", ip_text, tunnel.name)
            return None
        try:
            stream_id = link.open_stream(tunnel.id, f"{ip_text}:{port}")
        except MuxError as exc:
            edge.metrics.rejections_total += 1
            log.warning("reset %s on %s: %s", ip_text, tunnel.name, exc)
            return None
        return ClientStream(edge, tunnel, link, stream_id, ip_text, port)


class TunnelListener:
    """A tunnel's port. A bind that fails (the port taken, say by an outgoing
    connection's ephemeral port) is retried by the edge with backoff; ``error`` says why
    it is not listening, for /health, and is logged once per change."""

    RETRY_FIRST = 0.5
    RETRY_MAX = 30.0

    def __init__(self, edge: Edge, tunnel: Tunnel) -> None:
        self.edge = edge
        self.tunnel = tunnel
        self.server: asyncio.Server | None = None
        self.error: str | None = None
        self.retry_at = 0.0  # monotonic time of the next try while unbound
        self._retry_delay = self.RETRY_FIRST

    @property
    def bound(self) -> bool:
        return self.server is not None

    async def start(self, host: str) -> bool:
        loop = asyncio.get_running_loop()
        tunnel = self.tunnel
        try:
            self.server = await loop.create_server(
                lambda: Admission(self.edge, tunnel),
                host,
                tunnel.port,
                reuse_address=True,
                backlog=1024,
            )
        except OSError as exc:
            error = exc.strerror or type(exc).__name__
            self.edge.metrics.listen_failures_total += 1
            if error != self.error:
                log.error(
                    "cannot listen on %s:%d for tunnel %s: %s; retrying with backoff",
                    host,
                    tunnel.port,
                    tunnel.name,
                    error,
                )
            self.error = error
            self.retry_at = self.edge.clock.monotonic() + self._retry_delay
            self._retry_delay = min(self._retry_delay * 2, self.RETRY_MAX)
            return False
        if self.error is not None:
            log.info("tunnel %s listens on %s:%d again", tunnel.name, host, tunnel.port)
        else:
            log.info("listening for tunnel %s on %s:%d", tunnel.name, host, tunnel.port)
        self.error = None
        self._retry_delay = self.RETRY_FIRST
        return True

    async def stop(self) -> None:
        if self.server is not None:
            self.server.close()
            with contextlib.suppress(Exception):
                await self.server.wait_closed()
