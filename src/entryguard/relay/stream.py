"""A TCP socket bridged to one mux stream, with flow control both ways.

Socket → stream: a read takes no more than the peer's window lets us send (a
``BufferedProtocol`` reading into the link's buffer), so bytes go out as DATA at once;
with no window left the socket's reading is paused until a WINDOW update arrives. A
plain ``data_received`` would take whatever the kernel holds, up to 256 KiB a read:
with 1,000 streams at a small window that was a quarter of a GiB waiting here.
Stream → socket: bytes are written to the transport; credit goes back to the peer
as soon as the kernel has taken them, or, when the transport had to keep some, once
it has drained (its high-water mark is 0). So the bytes of a stream held in this
process are never more than its window, which the link's memory budget sizes
(docs/protocol.md), and a stalled reader stalls only its stream.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from enum import Enum
from typing import cast

from entryguard.mux import MuxError, ResetCode
from entryguard.relay.link import READ_SIZE, MuxLink
from entryguard.relay.sockets import abort_with_rst

log = logging.getLogger("entryguard.relay")

# 0: the transport pauses us as soon as it holds a byte the kernel did not take, and
# resumes once it holds none, so credit is returned for bytes that left the process
# only. With a high-water mark of H instead, each stream could keep H bytes beyond its
# window: 1,000 stalled clients × 256 KiB was a quarter of a GiB outside the budget.
WRITE_HIGH_WATER = 0


class RelayState(Enum):
    """The stream as seen from this end's socket, in RFC 9113 §5.1's terms (as the mux's
    ``StreamState``).

    A FIN counts once it has been passed on: ours when it is queued on the stream, the
    peer's when it arrives (it is written to the socket then, or, at an agent still
    dialling, by ``attach`` once the socket exists).
    """

    OPEN = "open"
    HALF_CLOSED_LOCAL = "half-closed (local)"  # the socket ended and our FIN is sent
    HALF_CLOSED_REMOTE = "half-closed (remote)"  # the peer sent FIN
    CLOSED = "closed"  # both FINs passed on, or reset: the socket and stream are released


# Module-level aliases for the per-chunk checks: on Python 3.11 ``RelayState.CLOSED`` is
# a metaclass lookup costing ten times a global read, measurable in bench/relay_micro.py.
_OPEN = RelayState.OPEN
_HALF_CLOSED_LOCAL = RelayState.HALF_CLOSED_LOCAL
_HALF_CLOSED_REMOTE = RelayState.HALF_CLOSED_REMOTE
_CLOSED = RelayState.CLOSED


class SocketStream(asyncio.BufferedProtocol):
    """Both halves of the relay; the edge and the agent subclass it for set-up."""

    def __init__(self, link: MuxLink, stream_id: int) -> None:
        self.link = link
        self.stream_id = stream_id
        self.state: RelayState = _OPEN
        self.transport: asyncio.Transport | None = None
        self._pending: list[memoryview] = []  # socket bytes waiting for window
        self._early: list[bytes | memoryview] = []  # stream bytes that arrived before the socket
        self._fin_owed = False  # the socket ended while _pending held bytes: FIN goes after them
        self._unacked = 0  # bytes written to the socket, credit not yet returned
        self._write_paused = False
        self.bytes_up = 0
        self.bytes_down = 0

    @property
    def closed(self) -> bool:
        return self.state is _CLOSED

    # --- asyncio.Protocol --------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # uvloop's transports implement the interface without subclassing it.
        # TCP_NODELAY is already on: asyncio (3.6+) and uvloop set it on every TCP
        # transport, and setting it again costs three syscalls per connection on uvloop.
        self.transport = cast(asyncio.Transport, transport)
        self.transport.set_write_buffer_limits(high=WRITE_HIGH_WATER)

    def attach(self) -> None:
        """Flush what the stream delivered before the socket existed: data, then a FIN."""
        early, self._early = self._early, []
        for chunk in early:
            self.on_data(chunk)
        if self.state is _HALF_CLOSED_REMOTE and self.transport is not None:
            _write_eof(self.transport)

    def get_buffer(self, sizehint: int) -> memoryview:
        # The link's buffer, cut to the window: buffer_updated copies the bytes out at
        # once (the mux keeps what it is given), so every stream can share it.
        link = self.link
        room = link.mux.send_room(self.stream_id)
        if room >= READ_SIZE:
            return link.read_buffer
        # No room (reading pauses once this byte is queued), or bytes still waiting.
        return link.read_buffer[: room if room and not self._pending else 1]

    def buffer_updated(self, nbytes: int) -> None:
        self.data_received(self.link.read_buffer[:nbytes].tobytes())

    def data_received(self, data: bytes) -> None:
        if self.state is _CLOSED:
            return
        self.bytes_up += len(data)
        if self._pending:
            self._pending.append(memoryview(data))
            return
        self._send(memoryview(data))

    def eof_received(self) -> bool:
        state = self.state
        if state is _OPEN or state is _HALF_CLOSED_REMOTE:
            self._fin_owed = True
            self._send_fin_when_drained()
        return True  # keep the other direction open: half-close

    def connection_lost(self, exc: Exception | None) -> None:
        # An orderly close both ways has already released everything (_finish); in any
        # other state the socket went away first, so the stream is aborted.
        if self.state is _CLOSED:
            return
        self.state = _CLOSED
        self.link.reset(
            self.stream_id,
            ResetCode.REFUSED if exc is None else ResetCode.UNREACHABLE,
            "connection closed" if exc is None else f"connection lost: {exc}",
        )
        self.on_closed()

    def pause_writing(self) -> None:
        self._write_paused = True

    def resume_writing(self) -> None:
        self._write_paused = False
        if self._unacked and self.state is not _CLOSED:
            n, self._unacked = self._unacked, 0
            self._credit(n)

    # --- stream events (StreamHandler) ---------------------------------------------

    def on_accepted(self) -> None:
        pass

    def on_data(self, data: bytes | memoryview) -> None:
        t = self.transport
        if t is None:
            self._early.append(data)
            return
        if self.state is _CLOSED:
            return
        self.bytes_down += len(data)
        t.write(data)
        if self._write_paused:
            self._unacked += len(data)
        else:
            self._credit(len(data))

    def on_window(self) -> None:
        if self.state is _CLOSED:
            return
        pending, self._pending = self._pending, []
        for i, chunk in enumerate(pending):
            if not self._send(chunk):
                self._pending.extend(pending[i + 1 :])
                return
        if self.transport is not None:
            with contextlib.suppress(RuntimeError):
                self.transport.resume_reading()
        self._send_fin_when_drained()

    def on_fin(self) -> None:
        state = self.state
        if state is _CLOSED:
            return
        if self.transport is not None:
            _write_eof(self.transport)
        if state is _HALF_CLOSED_LOCAL:
            self._finish()
        else:
            self.state = _HALF_CLOSED_REMOTE

    def on_reset(self, code: int, text: str) -> None:
        if self.state is _CLOSED:
            return
        self.state = _CLOSED
        if self.transport is not None:
            abort_with_rst(self.transport)
        self.on_closed()

    # --- helpers ---------------------------------------------------------------------

    def on_closed(self) -> None:
        """Hook for owners to drop their bookkeeping."""

    def abort(self, code: ResetCode, text: str) -> None:
        """Cut both sides now: the socket sees a TCP reset, the peer a RESET."""
        if self.state is _CLOSED:
            return
        self.state = _CLOSED
        self.link.reset(self.stream_id, code, text)
        if self.transport is not None:
            abort_with_rst(self.transport)
        self.on_closed()

    def _send(self, chunk: memoryview) -> bool:
        """Queue as much as the window allows; False (and reading paused) if not all."""
        try:
            n = self.link.mux.send_data(self.stream_id, chunk)
        except MuxError as exc:
            log.debug("stream %s: %s", self.stream_id, exc)
            self.abort(ResetCode.PROTOCOL, str(exc))
            return False
        self.link.kick()
        if n < len(chunk):
            self._pending.append(chunk[n:])
            if self.transport is not None:
                with contextlib.suppress(RuntimeError):
                    self.transport.pause_reading()
            return False
        return True

    def _credit(self, n: int) -> None:
        try:
            self.link.mux.consumed(self.stream_id, n)
        except MuxError:
            return
        self.link.kick()

    def _send_fin_when_drained(self) -> None:
        if not self._fin_owed or self._pending:
            return
        self._fin_owed = False
        with contextlib.suppress(MuxError):
            self.link.mux.send_fin(self.stream_id)
        self.link.kick()
        if self.state is _HALF_CLOSED_REMOTE:
            self._finish()
        else:
            self.state = _HALF_CLOSED_LOCAL

    def _finish(self) -> None:
        """Both directions are closed: release the socket and the stream."""
        self.state = _CLOSED
        self.link.forget(self.stream_id)
        if self.transport is not None:
            self.transport.close()
        self.on_closed()


def _write_eof(transport: asyncio.Transport) -> None:
    if transport.can_write_eof():
        with contextlib.suppress(OSError, RuntimeError):
            transport.write_eof()
