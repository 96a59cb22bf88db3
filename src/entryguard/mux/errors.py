"""Errors say whose fault it was (h11's split), what to send, and how far the damage goes.

::

    MuxError                      every error of this package (an EntryGuardError);
                                  .reset_code, .stream_id
    ├── LocalProtocolError        this side misused the API (DATA after its own FIN, a
    │                             closed connection, a limit): raised by the send_* calls
    └── RemoteProtocolError       the peer broke the protocol
        ├── StreamProtocolError   confined to one stream: that stream is reset with .reset_code
        └── ConnectionProtocolError  the link cannot be trusted: close it cleanly

:meth:`MuxConnection.receive_message` never raises for the peer's faults: it turns a
``RemoteProtocolError`` into events (``ProtocolError`` plus ``StreamReset`` or
``ConnectionTerminated``) and queues what the peer must be told. The remote classes are
public so that ``frames.parse_frame`` and the decoders can be used on their own.
"""

from __future__ import annotations

from entryguard.errors import EntryGuardError
from entryguard.mux.codes import ResetCode


class MuxError(EntryGuardError):
    """Root of every mux error.

    ``reset_code`` is the reset code that fits the failure (for a local error: what to reset
    the client connection with); ``stream_id`` is the stream concerned, None when the
    whole connection is.
    """

    default_code = ResetCode.PROTOCOL

    def __init__(
        self, message: str, *, code: ResetCode | None = None, stream_id: int | None = None
    ) -> None:
        self.reset_code = self.default_code if code is None else code
        # The root's text code names the kind of failure (``mux_protocol``, ``mux_refused``…).
        super().__init__(message, code=f"mux_{self.reset_code.name.lower()}")
        self.stream_id = stream_id


class LocalProtocolError(MuxError):
    """This side misused the API: a bug (or a limit) here, not the peer's fault."""

    default_code = ResetCode.INTERNAL


class RemoteProtocolError(MuxError):
    """The peer broke the protocol."""

    @property
    def connection_scoped(self) -> bool:
        """True when the whole link must close, False when one stream reset is enough."""
        return self.stream_id is None


class StreamProtocolError(RemoteProtocolError):
    """A fault confined to one stream: that stream is reset, the others go on."""

    stream_id: int

    def __init__(self, stream_id: int, message: str, *, code: ResetCode | None = None) -> None:
        super().__init__(f"stream {stream_id}: {message}", code=code, stream_id=stream_id)


class ConnectionProtocolError(RemoteProtocolError):
    """A framing fault or a role violation: nothing after it can be trusted.

    The connection is closed cleanly: a CONTROL ``error`` message is queued for the
    peer's log, then the runtime closes the WebSocket.
    """

    def __init__(self, message: str) -> None:
        super().__init__(message, stream_id=None)
