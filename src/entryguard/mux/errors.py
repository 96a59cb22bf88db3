"""Errors say whose fault it was (h11's split) and what to send on the wire."""

from __future__ import annotations


class MuxError(Exception):
    """Root of every mux error."""


class LocalProtocolError(MuxError):
    """This side misused the API (e.g. DATA after its own FIN): a bug here, not the peer's."""


class RemoteProtocolError(MuxError):
    """The peer broke the protocol."""


class StreamProtocolError(RemoteProtocolError):
    """A fault confined to one stream: that stream is reset (code PROTOCOL), the rest go on."""

    def __init__(self, stream_id: int, message: str) -> None:
        super().__init__(f"stream {stream_id}: {message}")
        self.stream_id = stream_id


class FramingError(RemoteProtocolError):
    """The message cannot be trusted as a frame: the whole connection is closed cleanly."""
