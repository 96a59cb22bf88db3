"""Frames: ``type:u8 | flags:u8 | stream:u32 (big endian) | payload``, one per binary message.

=========  ==========  =====================================================  =========
type       direction   payload                                                stream
=========  ==========  =====================================================  =========
OPEN 1     edge→agent  tunnel id u64, then the client address "ip:port"        new id
                       (UTF-8, printable, at most 255 bytes)
OPENED 2   agent→edge  empty                                                  ≠ 0
DATA 3     both        bytes, at most the peer's remaining window and 256 KiB  ≠ 0
WINDOW 4   both        u32 credit, 1 … 2^31-1                                 ≠ 0
FIN 5      both        empty                                                  ≠ 0
RESET 6    both        u16 code (:class:`ResetCode`), UTF-8 text ≤ 1024 bytes  ≠ 0
CONTROL 7  both        a JSON object (UTF-8) with a string "type", ≤ 64 KiB    0
=========  ==========  =====================================================  =========

Flags are reserved: senders write 0 and version 1 receivers reject anything else.

:func:`parse_frame` checks the structure: header, type, flags, stream 0 rules and each
type's payload length. The typed decoders (:func:`parse_open`, :func:`parse_window`,
:func:`parse_reset`, :func:`parse_control`) check the contents. Faults that spoil the
whole message stream raise :class:`ConnectionProtocolError`; faults confined to one
stream's frame raise :class:`StreamProtocolError`.
"""

from __future__ import annotations

import json
import struct
from dataclasses import dataclass
from typing import Any

from entryguard.mux.codes import FrameType, ResetCode
from entryguard.mux.errors import (
    ConnectionProtocolError,
    LocalProtocolError,
    StreamProtocolError,
)

__all__ = [
    "HEADER",
    "HEADER_SIZE",
    "MAX_ADDR",
    "MAX_CONTROL",
    "MAX_DATA",
    "MAX_RESET_TEXT",
    "MAX_STREAM_ID",
    "MAX_WINDOW",
    "Frame",
    "FrameType",
    "ResetCode",
    "encode",
    "encode_control",
    "encode_frame",
    "encode_open",
    "encode_reset",
    "encode_window",
    "parse_control",
    "parse_frame",
    "parse_open",
    "parse_reset",
    "parse_window",
]

HEADER = struct.Struct(">BBI")
HEADER_SIZE = HEADER.size  # 6
_U64 = struct.Struct(">Q")
_U32 = struct.Struct(">I")
_U16 = struct.Struct(">H")

MAX_DATA = 256 * 1024  # the largest DATA payload, and so the largest message
MAX_CONTROL = 64 * 1024
MAX_ADDR = 255
MAX_RESET_TEXT = 1024
MAX_WINDOW = 2**31 - 1  # as HTTP/2: a window never exceeds this
MAX_STREAM_ID = 2**32 - 1
MAX_TUNNEL_ID = 2**64 - 1

# Smallest and largest payload per type; out of range is a stream fault (the header is
# sound, so only that stream is in doubt), except CONTROL, which is connection-wide.
_LENGTHS: dict[int, tuple[int, int]] = {
    FrameType.OPEN: (8, 8 + MAX_ADDR),
    FrameType.OPENED: (0, 0),
    FrameType.DATA: (0, MAX_DATA),
    FrameType.WINDOW: (4, 4),
    FrameType.FIN: (0, 0),
    FrameType.RESET: (2, 2 + MAX_RESET_TEXT),
    FrameType.CONTROL: (2, MAX_CONTROL),
}
_TYPES = {int(t): t for t in FrameType}


@dataclass(frozen=True, slots=True)
class Frame:
    type: FrameType
    stream_id: int
    payload: bytes | memoryview = b""
    flags: int = 0


# --- encoding ---------------------------------------------------------------------------


def encode_frame(frame: Frame) -> bytes:
    """The message for ``frame``; checks what the header can hold, not the payload's meaning."""
    if not 0 <= frame.stream_id <= MAX_STREAM_ID:
        raise LocalProtocolError(f"stream id {frame.stream_id} does not fit in u32")
    if not 0 <= frame.flags <= 0xFF:
        raise LocalProtocolError(f"flags {frame.flags} do not fit in u8")
    if len(frame.payload) > MAX_DATA:
        raise LocalProtocolError(f"payload of {len(frame.payload)} bytes exceeds {MAX_DATA}")
    return HEADER.pack(frame.type, frame.flags, frame.stream_id) + frame.payload


def encode(type_: FrameType, stream_id: int, payload: bytes | memoryview = b"") -> bytes:
    """Shortcut for frames built by this package (no checks: the callers did them)."""
    return HEADER.pack(type_, 0, stream_id) + payload


def encode_open(stream_id: int, tunnel_id: int, client_addr: str) -> bytes:
    if not 0 <= tunnel_id <= MAX_TUNNEL_ID:
        raise LocalProtocolError(f"tunnel id {tunnel_id} does not fit in u64")
    addr = client_addr.encode()
    if len(addr) > MAX_ADDR or not client_addr.isprintable():
        raise LocalProtocolError(f"client address {client_addr!r} is not a short printable text")
    return HEADER.pack(FrameType.OPEN, 0, stream_id) + _U64.pack(tunnel_id) + addr


def encode_window(stream_id: int, credit: int) -> bytes:
    return HEADER.pack(FrameType.WINDOW, 0, stream_id) + _U32.pack(credit)


def encode_reset(stream_id: int, code: ResetCode | int, text: str) -> bytes:
    """A RESET; ``text`` is cut to MAX_RESET_TEXT bytes on a character boundary."""
    raw = text.encode()
    if len(raw) > MAX_RESET_TEXT:
        raw = raw[:MAX_RESET_TEXT].decode(errors="ignore").encode()
    return HEADER.pack(FrameType.RESET, 0, stream_id) + _U16.pack(code) + raw


def encode_control(obj: dict[str, Any]) -> bytes:
    if not isinstance(obj, dict) or not isinstance(obj.get("type"), str):
        raise LocalProtocolError("a CONTROL message is a JSON object with a string 'type'")
    try:
        body = json.dumps(obj, separators=(",", ":"), allow_nan=False).encode()
    except (TypeError, ValueError) as exc:
        raise LocalProtocolError(f"CONTROL message is not JSON-serialisable: {exc}") from None
    if len(body) > MAX_CONTROL:
        raise LocalProtocolError(f"CONTROL message of {len(body)} bytes exceeds {MAX_CONTROL}")
    return HEADER.pack(FrameType.CONTROL, 0, 0) + body


# --- parsing ------------------------------------------------------------------------------


def parse_frame(message: bytes | memoryview) -> Frame:
    """Split one message into a frame without copying the payload (it is a memoryview)."""
    n = len(message)
    if n < HEADER_SIZE:
        raise ConnectionProtocolError(f"truncated frame: {n} bytes, a header needs {HEADER_SIZE}")
    t, flags, sid = HEADER.unpack_from(message)
    ftype = _TYPES.get(t)
    if ftype is None:
        raise ConnectionProtocolError(f"unknown frame type {t}")
    size = n - HEADER_SIZE
    if size > MAX_DATA:
        raise ConnectionProtocolError(
            f"{ftype.name} frame of {size} bytes exceeds the {MAX_DATA}-byte limit"
        )
    if flags:
        raise ConnectionProtocolError(f"{ftype.name} frame with unknown flags 0x{flags:02x}")
    if (ftype is FrameType.CONTROL) != (sid == 0):
        where = f"on stream {sid}: control frames use stream 0" if sid else "on stream 0"
        raise ConnectionProtocolError(f"{ftype.name} frame {where}")
    low, high = _LENGTHS[ftype]
    if not low <= size <= high:
        expected = f"{low}" if low == high else f"{low}…{high}"
        problem = f"{ftype.name} payload of {size} bytes, expected {expected}"
        if ftype is FrameType.CONTROL:
            raise ConnectionProtocolError(problem)
        raise StreamProtocolError(sid, problem)
    return Frame(ftype, sid, memoryview(message)[HEADER_SIZE:], flags)


def parse_open(frame: Frame) -> tuple[int, str]:
    """``(tunnel_id, client_addr)`` of an OPEN frame."""
    p = frame.payload
    if not 8 <= len(p) <= 8 + MAX_ADDR:
        raise StreamProtocolError(frame.stream_id, f"OPEN payload of {len(p)} bytes is malformed")
    (tunnel_id,) = _U64.unpack_from(p)
    try:
        addr = bytes(p[8:]).decode()
    except UnicodeDecodeError:
        raise StreamProtocolError(frame.stream_id, "OPEN client address is not UTF-8") from None
    if not addr.isprintable():
        # It ends up in log lines and script arguments: no control characters.
        raise StreamProtocolError(frame.stream_id, "OPEN client address is not printable")
    return int(tunnel_id), addr


def parse_window(frame: Frame) -> int:
    """The credit of a WINDOW frame, 1 … 2^31-1 (zero is a fault, as in HTTP/2)."""
    if len(frame.payload) != 4:
        raise StreamProtocolError(
            frame.stream_id, f"WINDOW payload of {len(frame.payload)} bytes, expected 4"
        )
    (credit,) = _U32.unpack_from(frame.payload)
    if not 1 <= credit <= MAX_WINDOW:
        raise StreamProtocolError(frame.stream_id, f"WINDOW credit {credit} out of range")
    return int(credit)


def parse_reset(frame: Frame) -> tuple[int, str]:
    """``(code, text)`` of a RESET frame; the code is a :class:`ResetCode` when known.

    The text is the peer's and ends up in logs: invalid UTF-8 and control characters
    are replaced rather than trusted.
    """
    p = frame.payload
    if not 2 <= len(p) <= 2 + MAX_RESET_TEXT:
        raise StreamProtocolError(frame.stream_id, "RESET payload is malformed")
    (raw_code,) = _U16.unpack_from(p)
    code: int = raw_code
    try:
        code = ResetCode(raw_code)
    except ValueError:
        pass  # a code from a newer peer: keep the number
    text = bytes(p[2:]).decode(errors="replace")
    if not text.isprintable():
        text = "".join(c if c.isprintable() else "?" for c in text)
    return code, text


def _reject_constant(name: str) -> Any:
    raise ValueError(f"{name} is not JSON")


def parse_control(frame: Frame) -> dict[str, Any]:
    """The JSON object of a CONTROL frame; any fault here is connection-wide."""
    try:
        text = bytes(frame.payload).decode()
        obj = json.loads(text, parse_constant=_reject_constant)
    except (ValueError, RecursionError):  # RecursionError: "[[[[…" nested past the limit
        raise ConnectionProtocolError("CONTROL payload is not UTF-8 JSON") from None
    if not isinstance(obj, dict) or not isinstance(obj.get("type"), str):
        raise ConnectionProtocolError("CONTROL payload must be a JSON object with a string 'type'")
    return obj
