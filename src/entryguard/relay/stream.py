"""A TCP socket bridged to one mux stream, with flow control both ways.

Socket → stream: bytes go out as DATA up to the peer's window; the rest waits here
and the socket's reading is paused until a WINDOW update arrives.
Stream → socket: bytes are written to the transport; credit goes back to the peer
as soon as the transport has taken them, or, while the transport's buffer is over
its high-water mark, when it drains. So per stream at most one window plus one
socket buffer is ever held in memory, and a stalled reader stalls only its stream.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from typing import cast

from entryguard.mux import MuxError, ResetCode
from entryguard.relay.link import MuxLink
from entryguard.relay.sockets import abort_with_rst

log = logging.getLogger("entryguard.relay")

WRITE_HIGH_WATER = 256 * 1024


class SocketStream(asyncio.Protocol):
    """Both halves of the relay; the edge and the agent subclass it for set-up."""

    def __init__(self, link: MuxLink, stream_id: int | None = None) -> None:
        self.link = link
        self.stream_id = stream_id
        self.transport: asyncio.Transport | None = None
        self._pending: list[memoryview] = []  # socket bytes waiting for window
        self._early: list[bytes | memoryview] = []  # stream bytes that arrived before the socket
        self._unacked = 0  # bytes written to the socket, credit not yet returned
        self._write_paused = False
        self._local_eof = False  # the socket sent FIN; forwarded once _pending is empty
        self._fin_sent = False
        self._peer_fin = False
        self.closed = False
        self.bytes_up = 0
        self.bytes_down = 0

    # --- asyncio.Protocol --------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # uvloop's transports implement the interface without subclassing it.
        # TCP_NODELAY is already on: asyncio (3.6+) and uvloop set it on every TCP
        # transport, and setting it again costs three syscalls per connection on uvloop.
        self.transport = cast(asyncio.Transport, transport)
        self.transport.set_write_buffer_limits(high=WRITE_HIGH_WATER)

    def attach(self) -> None:
        """Flush what arrived before the socket existed (early data, an early FIN)."""
        early, self._early = self._early, []
        for chunk in early:
            self.on_data(chunk)
        if self._peer_fin:
            self._peer_fin = False
            self.on_fin()

    def data_received(self, data: bytes) -> None:
        if self.closed or self.stream_id is None:
            return
        self.bytes_up += len(data)
        if self._pending:
            self._pending.append(memoryview(data))
            return
        self._send(memoryview(data))

    def eof_received(self) -> bool:
        self._local_eof = True
        self._maybe_fin()
        return True  # keep the other direction open: half-close

    def connection_lost(self, exc: Exception | None) -> None:
        if self.closed:
            return
        self.closed = True
        if self.stream_id is None:
            return
        if self._fin_sent and self._peer_fin_done:
            self.link.forget(self.stream_id)
            return
        # The socket went away before an orderly close both ways: abort the stream.
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
        if self._unacked and self.stream_id is not None and not self.closed:
            n, self._unacked = self._unacked, 0
            self._credit(n)

    # --- stream events (StreamHandler) ---------------------------------------------

    _peer_fin_done = False

    def on_accepted(self) -> None:
        pass

    def on_data(self, data: bytes | memoryview) -> None:
        t = self.transport
        if t is None:
            self._early.append(data)
            return
        if self.closed:
            return
        self.bytes_down += len(data)
        t.write(data)
        if self._write_paused:
            self._unacked += len(data)
        else:
            self._credit(len(data))

    def on_window(self) -> None:
        if self.closed or self.stream_id is None:
            return
        pending, self._pending = self._pending, []
        for i, chunk in enumerate(pending):
            if not self._send(chunk):
                self._pending.extend(pending[i + 1 :])
                return
        if self.transport is not None:
            with contextlib.suppress(RuntimeError):
                self.transport.resume_reading()
        self._maybe_fin()

    def on_fin(self) -> None:
        t = self.transport
        if t is None:
            self._peer_fin = True
            return
        self._peer_fin_done = True
        if t.can_write_eof():
            with contextlib.suppress(OSError, RuntimeError):
                t.write_eof()
        if self._fin_sent:
            self._finish()

    def on_reset(self, code: int, text: str) -> None:
        if self.closed:
            return
        self.closed = True
        if self.transport is not None:
            abort_with_rst(self.transport)
        self.on_closed()

    # --- helpers ---------------------------------------------------------------------

    def on_closed(self) -> None:
        """Hook for owners to drop their bookkeeping."""

    def abort(self, code: ResetCode, text: str) -> None:
        """Cut both sides now: the socket sees a TCP reset, the peer a RESET."""
        if self.closed:
            return
        self.closed = True
        if self.stream_id is not None:
            self.link.reset(self.stream_id, code, text)
        if self.transport is not None:
            abort_with_rst(self.transport)
        self.on_closed()

    def _send(self, chunk: memoryview) -> bool:
        """Queue as much as the window allows; False (and reading paused) if not all."""
        assert self.stream_id is not None
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
        assert self.stream_id is not None
        try:
            self.link.mux.consumed(self.stream_id, n)
        except MuxError:
            return
        self.link.kick()

    def _maybe_fin(self) -> None:
        if (
            self._local_eof
            and not self._pending
            and not self._fin_sent
            and self.stream_id is not None
        ):
            self._fin_sent = True
            with contextlib.suppress(MuxError):
                self.link.mux.send_fin(self.stream_id)
            self.link.kick()
            if self._peer_fin_done:
                self._finish()

    def _finish(self) -> None:
        """Both directions are closed: release the socket and the stream."""
        if self.closed:
            return
        self.closed = True
        if self.stream_id is not None:
            self.link.forget(self.stream_id)
        if self.transport is not None:
            self.transport.close()
        self.on_closed()
