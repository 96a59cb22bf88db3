"""Frame layout: ``type:u8 | flags:u8 | stream:u32 | payload``, one frame per WebSocket message."""

from __future__ import annotations

import json
import struct
from dataclasses import dataclass
from enum import IntEnum
from typing import Any

from entryguard.mux.errors import FramingError, StreamProtocolError

HEADER = struct.Struct(">BBI")
HEADER_SIZE = HEADER.size  # 6
U32 = struct.Struct(">I")
U16 = struct.Struct(">H")

MAX_DATA = 256 * 1024  # the largest DATA payload a peer may send
MAX_CONTROL = 64 * 1024
MAX_ADDR = 256
MAX_RESET_TEXT = 1024
MAX_WINDOW = 2**31 - 1


class FrameType(IntEnum):
    OPEN = 1
    OPENED = 2
    DATA = 3
    WINDOW = 4
    FIN = 5
    RESET = 6
    CONTROL = 7


class ResetCode(IntEnum):
    REFUSED = 1
    UNREACHABLE = 2
    NOT_ALLOWED = 3
    REVOKED = 4
    PROTOCOL = 5
    TIMEOUT = 6
    INTERNAL = 7


_TYPES = {int(t) for t in FrameType}


@dataclass(frozen=True, slots=True)
class Frame:
    type: FrameType
    stream_id: int
    payload: bytes | memoryview = b""
    flags: int = 0


def encode(type_: FrameType, stream_id: int, payload: bytes | memoryview = b"") -> bytes:
    return HEADER.pack(type_, 0, stream_id) + payload


def encode_open(stream_id: int, tunnel_id: int, client_addr: str) -> bytes:
    addr = client_addr.encode()[:MAX_ADDR]
    return HEADER.pack(FrameType.OPEN, 0, stream_id) + U32.pack(tunnel_id) + addr


def encode_window(stream_id: int, credit: int) -> bytes:
    return HEADER.pack(FrameType.WINDOW, 0, stream_id) + U32.pack(credit)


def encode_reset(stream_id: int, code: ResetCode, text: str) -> bytes:
    raw = text.encode()[:MAX_RESET_TEXT]
    return HEADER.pack(FrameType.RESET, 0, stream_id) + U16.pack(code) + raw


def encode_control(obj: dict[str, Any]) -> bytes:
    body = json.dumps(obj, separators=(",", ":")).encode()
    if len(body) > MAX_CONTROL:
        raise ValueError("control message too large")
    return HEADER.pack(FrameType.CONTROL, 0, 0) + body


def parse_frame(message: bytes | memoryview) -> Frame:
    """Split one message into a frame; framing faults raise :class:`FramingError`."""
    n = len(message)
    if n < HEADER_SIZE:
        raise FramingError(f"truncated frame: {n} bytes, a header needs {HEADER_SIZE}")
    t, flags, sid = HEADER.unpack_from(message)
    if t not in _TYPES:
        raise FramingError(f"unknown frame type {t}")
    size = n - HEADER_SIZE
    limit = MAX_DATA if t == FrameType.DATA else MAX_CONTROL
    if size > limit:
        raise FramingError(f"{FrameType(t).name} frame payload of {size} bytes exceeds {limit}")
    if t == FrameType.CONTROL and sid != 0:
        raise FramingError(f"CONTROL frame on stream {sid}: control frames use stream 0")
    if t != FrameType.CONTROL and sid == 0:
        raise FramingError(f"{FrameType(t).name} frame on stream 0")
    return Frame(FrameType(t), sid, memoryview(message)[HEADER_SIZE:], flags)


def parse_open(frame: Frame) -> tuple[int, str]:
    p = frame.payload
    if len(p) < 4 or len(p) > 4 + MAX_ADDR:
        raise StreamProtocolError(frame.stream_id, f"OPEN payload of {len(p)} bytes is malformed")
    (tunnel_id,) = U32.unpack_from(p)
    try:
        addr = bytes(p[4:]).decode()
    except UnicodeDecodeError:
        raise StreamProtocolError(frame.stream_id, "OPEN client address is not UTF-8") from None
    return tunnel_id, addr


def parse_window(frame: Frame) -> int:
    if len(frame.payload) != 4:
        raise StreamProtocolError(
            frame.stream_id, f"WINDOW payload of {len(frame.payload)} bytes, expected 4"
        )
    (credit,) = U32.unpack_from(frame.payload)
    if credit == 0 or credit > MAX_WINDOW:
        raise StreamProtocolError(frame.stream_id, f"WINDOW credit {credit} out of range")
    return int(credit)


def parse_reset(frame: Frame) -> tuple[int, str]:
    p = frame.payload
    if len(p) < 2 or len(p) > 2 + MAX_RESET_TEXT:
        raise StreamProtocolError(frame.stream_id, "RESET payload is malformed")
    (code,) = U16.unpack_from(p)
    return int(code), bytes(p[2:]).decode(errors="replace")


def parse_control(frame: Frame) -> dict[str, Any]:
    try:
        obj = json.loads(bytes(frame.payload))
    except (ValueError, UnicodeDecodeError):
        raise FramingError("CONTROL payload is not JSON") from None
    if not isinstance(obj, dict) or not isinstance(obj.get("type"), str):
        raise FramingError("CONTROL payload must be a JSON object with a string 'type'")
    return obj


def expect_empty(frame: Frame) -> None:
    if len(frame.payload):
        raise StreamProtocolError(frame.stream_id, f"{frame.type.name} frame must have no payload")
