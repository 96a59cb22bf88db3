"""The WebSocket settings both ends of an agent link use (the edge's server, the
agent's client): one table, so the two ends cannot drift apart."""

from __future__ import annotations

from typing import Any

from entryguard.relay.link import MAX_MESSAGE

# Pings at most 20 s apart and a dead peer noticed within 30 s, as promised (the edge
# lets its environment shorten them: EG_EDGE_PING_INTERVAL / EG_EDGE_PING_TIMEOUT).
PING_INTERVAL = 10.0
PING_TIMEOUT = 15.0


def link_options(
    *, ping_interval: float = PING_INTERVAL, ping_timeout: float = PING_TIMEOUT
) -> dict[str, Any]:
    """Keyword arguments for ``websockets.serve`` and ``websockets.connect``."""
    return {
        "compression": None,  # the tunnels carry what they carry; compressing costs CPU
        "ping_interval": ping_interval,
        "ping_timeout": ping_timeout,
        "close_timeout": 2,  # a dead peer will not answer the closing handshake
        "max_size": MAX_MESSAGE,
        "max_queue": 64,
        "write_limit": 512 * 1024,
    }
