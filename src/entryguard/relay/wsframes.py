"""WebSocket framing for the tunnel link's data phase (RFC 6455 §5.2), no I/O.

The ``websockets`` library does the handshake, pings, pongs and the closing handshake.
Once a link is open, nearly every frame is a whole binary message, and the library's
general parser (generators, a ``Frame`` object, its own buffer with two copies per
frame) costs more than the relay's own work on a small message. ``FrameSplitter``
takes the common case, a complete, unfragmented binary frame, straight off the
socket's bytes, and hands every other frame back, byte for byte, to the library,
which therefore always sees whole frames and stays in step.
"""

from __future__ import annotations

import secrets
import struct
from collections.abc import Callable

try:
    from websockets.speedups import apply_mask
except ImportError:  # pragma: no cover - the pure-Python fallback, 20-100x slower
    from websockets.utils import apply_mask

_BINARY_FIN = 0x82
_MASK_BIT = 0x80
_RSV_BITS = 0x70
_U16 = struct.Struct("!H")
_U64 = struct.Struct("!Q")
_HEADER_MAX = 14  # 2 + 8 (length) + 4 (mask key)


class FrameSplitter:
    """Cuts the incoming byte stream into frames.

    ``masked``: frames must carry a mask key (the server's side, RFC 6455 §5.1).
    ``on_binary(payload)`` gets each whole binary message (a ``bytes`` or a read-only
    view into one: immutable either way); ``on_other(frame_bytes)`` gets every other
    frame whole, and a frame this splitter will not judge (wrong mask bit, RSV bits,
    over ``max_size``) together with everything after it — from then on all bytes go
    to ``on_other`` so that the library fails the connection with its own close code.
    """

    def __init__(
        self,
        *,
        masked: bool,
        max_size: int,
        on_binary: Callable[[bytes | memoryview], None],
        on_other: Callable[[bytes], None],
    ) -> None:
        self.masked = masked
        self.max_size = max_size
        self.on_binary = on_binary
        self.on_other = on_other
        self.passthrough = False  # a frame we do not judge was seen: the library takes over
        self._chunks: list[bytes | memoryview] = []  # an incomplete frame, as it arrived
        self._buffered = 0
        self._need = 0  # bytes the first frame in _chunks needs in all (0: unknown yet)

    def feed(self, data: bytes) -> None:
        if self.passthrough:
            self.on_other(data)
            return
        if self._chunks:
            self._chunks.append(data)
            self._buffered += len(data)
            if self._need == 0 and self._buffered >= 2:
                self._need = self._frame_size(b"".join(self._chunks)[:_HEADER_MAX])
            if self._need < 0:  # the header was judged bad: hand all over
                self._hand_over(b"".join(self._chunks))
                return
            if self._buffered < max(self._need, 2):
                return
            data = b"".join(self._chunks)  # one copy for a frame split across reads
            self._chunks.clear()
            self._buffered = self._need = 0
        self._split(data)

    def _split(self, data: bytes) -> None:
        view = memoryview(data)
        n = len(data)
        pos = 0
        while pos < n:
            size = self._frame_size(data[pos : pos + _HEADER_MAX])
            if size < 0:
                self._hand_over(data[pos:])
                return
            if size == 0 or pos + size > n:  # incomplete: keep the rest for the next read
                rest = view[pos:]  # no copy: ``data`` is immutable
                self._chunks.append(rest)
                self._buffered = len(rest)
                self._need = size
                return
            b0, b1 = data[pos], data[pos + 1]
            if b0 == _BINARY_FIN:
                length = b1 & 0x7F
                start = pos + (2 if length < 126 else 4 if length == 126 else 10)
                if b1 & _MASK_BIT:
                    key = data[start : start + 4]
                    self.on_binary(apply_mask(view[start + 4 : pos + size], key))
                else:
                    self.on_binary(view[start : pos + size])
            else:
                self.on_other(data[pos : pos + size])
                if self.passthrough:  # on_other may switch us off (closing handshake)
                    if pos + size < n:
                        self.on_other(data[pos + size :])
                    return
            pos += size

    def _frame_size(self, head: bytes) -> int:
        """Whole frame size from its first bytes; 0: not enough bytes yet; -1: not ours."""
        if len(head) < 2:
            return 0
        b0, b1 = head[0], head[1]
        if b0 & _RSV_BITS or bool(b1 & _MASK_BIT) != self.masked:
            return -1
        length = b1 & 0x7F
        header = 2
        if length == 126:
            if len(head) < 4:
                return 0
            length = _U16.unpack_from(head, 2)[0]
            header = 4
        elif length == 127:
            if len(head) < 10:
                return 0
            length = _U64.unpack_from(head, 2)[0]
            header = 10
        if length > self.max_size:
            return -1
        return header + (4 if self.masked else 0) + length

    def _hand_over(self, data: bytes) -> None:
        self.passthrough = True
        self._chunks.clear()
        self._buffered = self._need = 0
        if data:
            self.on_other(data)


class MaskKeys:
    """4-byte masking keys (RFC 6455 §5.3) from the OS's CSPRNG, drawn 4 KiB at a time
    rather than with one getrandom() syscall per frame."""

    def __init__(self) -> None:
        self._pool = b""
        self._pos = 0

    def next(self) -> bytes:
        if self._pos + 4 > len(self._pool):
            self._pool, self._pos = secrets.token_bytes(4096), 0
        key = self._pool[self._pos : self._pos + 4]
        self._pos += 4
        return key


def binary_frames(messages: list[bytes], keys: MaskKeys | None) -> list[bytes | memoryview]:
    """Buffers to write, in order, for these binary messages (masked when ``keys``)."""
    out: list[bytes | memoryview] = []
    mask_bit = _MASK_BIT if keys is not None else 0
    for msg in messages:
        n = len(msg)
        if n < 126:
            head = bytes((_BINARY_FIN, mask_bit | n))
        elif n < 65536:
            head = bytes((_BINARY_FIN, mask_bit | 126)) + _U16.pack(n)
        else:
            head = bytes((_BINARY_FIN, mask_bit | 127)) + _U64.pack(n)
        if keys is not None:
            key = keys.next()
            payload = apply_mask(msg, key)
            head += key
        else:
            payload = msg
        if n < 4096:
            out.append(head + payload)  # one small buffer beats two in writev
        else:
            out.append(head)
            out.append(payload)
    return out
