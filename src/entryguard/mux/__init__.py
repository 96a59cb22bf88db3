"""The tunnel protocol between edge and agent, sans I/O (see docs/protocol.md)."""

from entryguard.mux.connection import DEFAULT_WINDOW, MuxConnection
from entryguard.mux.errors import (
    FramingError,
    LocalProtocolError,
    MuxError,
    RemoteProtocolError,
    StreamProtocolError,
)
from entryguard.mux.events import (
    ConnectionTerminated,
    ControlReceived,
    DataReceived,
    Event,
    ProtocolError,
    StreamAccepted,
    StreamEnded,
    StreamOpened,
    StreamReset,
    WindowUpdated,
)
from entryguard.mux.frames import FrameType, ResetCode

__all__ = [
    "DEFAULT_WINDOW",
    "ConnectionTerminated",
    "ControlReceived",
    "DataReceived",
    "Event",
    "FrameType",
    "FramingError",
    "LocalProtocolError",
    "MuxConnection",
    "MuxError",
    "ProtocolError",
    "RemoteProtocolError",
    "ResetCode",
    "StreamAccepted",
    "StreamEnded",
    "StreamOpened",
    "StreamProtocolError",
    "StreamReset",
    "WindowUpdated",
]
