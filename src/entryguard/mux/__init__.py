"""The tunnel protocol between edge and agent, sans I/O (see docs/protocol.md).

Bytes in, events and bytes out, time passed in; no asyncio, socket or WebSocket code
here. ``frames`` is the wire format, ``connection`` the state machine, ``errors`` says
whose fault a failure was, ``events`` what ``receive_message`` reports.
"""

from entryguard.mux.codes import PROTOCOL_VERSION, FrameType, ResetCode, hello
from entryguard.mux.connection import (
    CHUNK,
    DEFAULT_LINK_MEMORY,
    DEFAULT_MAX_STREAMS,
    DEFAULT_WINDOW,
    INITIAL_WINDOW,
    WINDOW_FLOOR,
    MuxConnection,
)
from entryguard.mux.errors import (
    ConnectionProtocolError,
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
from entryguard.mux.frames import Frame, encode_frame, parse_frame
from entryguard.mux.stream import StreamState

__all__ = [
    "CHUNK",
    "DEFAULT_LINK_MEMORY",
    "DEFAULT_MAX_STREAMS",
    "DEFAULT_WINDOW",
    "INITIAL_WINDOW",
    "PROTOCOL_VERSION",
    "WINDOW_FLOOR",
    "ConnectionProtocolError",
    "ConnectionTerminated",
    "ControlReceived",
    "DataReceived",
    "Event",
    "Frame",
    "FrameType",
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
    "StreamState",
    "WindowUpdated",
    "encode_frame",
    "hello",
    "parse_frame",
]
