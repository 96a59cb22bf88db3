"""The WebSocket settings both ends of an agent link use (the edge's server, the
agent's client): one table, so the two ends cannot drift apart."""

from __future__ import annotations

from dataclasses import dataclass

MAX_MESSAGE = 2 * 1024 * 1024  # both ends' max_size; a mux frame is at most 256 KiB + header

# Pings at most 20 s apart and a dead peer noticed within 30 s, as promised (the edge
# lets its environment shorten them: EG_EDGE_PING_INTERVAL / EG_EDGE_PING_TIMEOUT).
PING_INTERVAL = 10.0
PING_TIMEOUT = 15.0


@dataclass(frozen=True, slots=True)
class LinkOptions:
    """How one end of the link runs its WebSocket (``relay.wslink``)."""

    ping_interval: float | None = PING_INTERVAL
    """Seconds between keepalive pings; None: no pings."""
    ping_timeout: float | None = PING_TIMEOUT
    """A ping unanswered this long fails the link (1011); None: wait forever."""
    close_timeout: float = 2.0
    """A dead peer will not answer the closing handshake: abort after this long."""
    open_timeout: float = 10.0
    """The edge drops a connection whose handshake is not done by then."""
    max_size: int = MAX_MESSAGE
    """The largest message accepted; compression is never negotiated (the tunnels carry
    what they carry, and compressing costs CPU)."""
    write_limit: int = 512 * 1024
    """The transport's high-water mark: above it the link stops writing until it drains
    to a quarter of it."""


def link_options(
    *, ping_interval: float | None = PING_INTERVAL, ping_timeout: float | None = PING_TIMEOUT
) -> LinkOptions:
    """The settings both ends use, with the pings the edge may shorten."""
    return LinkOptions(ping_interval=ping_interval, ping_timeout=ping_timeout)
