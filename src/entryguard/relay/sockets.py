"""Socket helpers shared by the edge and the agent."""

from __future__ import annotations

import asyncio
import socket
import struct


def abort_with_rst(transport: asyncio.BaseTransport) -> None:
    """Close so the peer sees a TCP reset (SO_LINGER 0), not an orderly FIN."""
    sock = transport.get_extra_info("socket")
    if sock is not None:
        try:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        except OSError:
            pass
    transport.abort()  # type: ignore[attr-defined]


def peer_ip(transport: asyncio.BaseTransport) -> tuple[str, int]:
    peer = transport.get_extra_info("peername")
    if not peer:
        return "0.0.0.0", 0
    return str(peer[0]), int(peer[1])
