"""What :meth:`MuxConnection.receive_message` and :meth:`~MuxConnection.handle_timer` report.

Per stream the events come in wire order: ``StreamOpened`` (agent) or ``StreamAccepted``
(edge) first, then ``DataReceived`` in byte order, ``StreamEnded`` after the last byte,
and nothing after ``StreamReset``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from entryguard.mux.codes import ResetCode


@dataclass(slots=True)
class StreamOpened:
    """Agent side: the edge opened a stream for ``tunnel_id`` on behalf of ``client_addr``.

    Early DATA may follow at once (``DataReceived``): buffer it until the target is
    dialed, then answer with ``send_opened`` (or ``send_reset`` to refuse).
    """

    stream_id: int
    tunnel_id: int
    client_addr: str


@dataclass(slots=True)
class StreamAccepted:
    """Edge side: the agent dialed the target (OPENED)."""

    stream_id: int


@dataclass(slots=True)
class DataReceived:
    """Bytes for the stream, a view into the received message (no copy).

    Hand them on, then call ``consumed(stream_id, len(data))`` to return the credit.
    """

    stream_id: int
    data: bytes | memoryview


@dataclass(slots=True)
class WindowUpdated:
    """The peer returned credit: bytes that ``send_data`` did not take may be sent now."""

    stream_id: int


@dataclass(slots=True)
class StreamEnded:
    """The peer half-closed (FIN): it sends no more bytes; this side may still send."""

    stream_id: int


@dataclass(slots=True)
class StreamReset:
    """The stream is gone: reset by the peer (``remote``) or here after a fault or timeout.

    ``code`` is a :class:`ResetCode`, or a bare int for a code this version does not know.
    """

    stream_id: int
    code: int
    text: str
    remote: bool = True


@dataclass(slots=True)
class ControlReceived:
    """A CONTROL message (a JSON object with a string ``type``)."""

    data: dict[str, Any]


@dataclass(slots=True)
class ProtocolError:
    """A fault the peer made (or a limit it hit), for the log.

    ``stream_id`` names the stream it cost (reset, with ``code``, and reported by a
    ``StreamReset`` when the stream was live); None means the connection is closing and
    a ``ConnectionTerminated`` follows.
    """

    stream_id: int | None
    message: str
    code: int = ResetCode.PROTOCOL


@dataclass(slots=True)
class ConnectionTerminated:
    """The connection is closed: flush ``messages_to_send()`` (a CONTROL error for the
    peer's log), then close the WebSocket. Every stream is gone."""

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
