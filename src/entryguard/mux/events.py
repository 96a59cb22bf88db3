"""What :meth:`MuxConnection.receive_message` and :meth:`handle_timer` report."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any


@dataclass(slots=True)
class StreamOpened:
    """Agent side: the edge opened a stream for ``tunnel_id`` on behalf of ``client_addr``."""

    stream_id: int
    tunnel_id: int
    client_addr: str


@dataclass(slots=True)
class StreamAccepted:
    """Edge side: the agent dialed the target (OPENED)."""

    stream_id: int


@dataclass(slots=True)
class DataReceived:
    """Bytes for the stream; hand them on, then call ``consumed()`` to return credit."""

    stream_id: int
    data: bytes | memoryview


@dataclass(slots=True)
class WindowUpdated:
    """The peer returned credit: queued socket bytes may be sent."""

    stream_id: int


@dataclass(slots=True)
class StreamEnded:
    """The peer half-closed (FIN): it sends no more bytes."""

    stream_id: int


@dataclass(slots=True)
class StreamReset:
    """The stream is gone: reset by the peer (``remote``) or by us after a fault/timeout."""

    stream_id: int
    code: int
    text: str
    remote: bool = True


@dataclass(slots=True)
class ControlReceived:
    data: dict[str, Any]


@dataclass(slots=True)
class ProtocolError:
    """A fault the peer made, for the log; ``stream_id`` is None for connection faults."""

    stream_id: int | None
    message: str


@dataclass(slots=True)
class ConnectionTerminated:
    """A framing fault: the connection must be closed (a CONTROL error was queued)."""

    reason: str


Event = (
    StreamOpened
    | StreamAccepted
    | DataReceived
    | WindowUpdated
    | StreamEnded
    | StreamReset
    | ControlReceived
    | ProtocolError
    | ConnectionTerminated
)
