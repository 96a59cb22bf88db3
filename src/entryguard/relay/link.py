"""One agent WebSocket carrying many streams: the asyncio side of the mux.

The receive path never waits on a stream: incoming DATA is handed to the stream's
socket with a non-blocking ``transport.write`` and credit is returned only once the
socket has taken it (see ``SocketStream``), so a stalled client or target holds back
its own stream through flow control and nothing else.

The WebSocket is ours (``wslink``): each binary message is delivered synchronously
from the socket's ``data_received``, with no queue and no task switch, and ``kick()``
writes queued frames at once while the transport takes them; when it pushes back
(``pause_writing``), writing stops until ``resume_writing`` kicks again. The mux's
outgoing queue puts control frames ahead of bulk DATA either way.

Reading the link pauses for one reason: more than ``CONTROL_BACKLOG`` bytes of control
frames are queued while writing is paused. The peer makes those by sending (a RESET
for each OPEN refused, one per fault), so a peer that sends and never reads could grow
them without bound; reading again once they are written. Queued DATA never pauses
reading: it is bounded by the peer's credit, and the peer's WINDOW frames are what
would free it (two ends each waiting for the other to read would deadlock).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable
from typing import Any, Protocol

from entryguard.clock import SYSTEM, Clock
from entryguard.mux import (
    ConnectionTerminated,
    ControlReceived,
    DataReceived,
    MuxConnection,
    MuxError,
    ProtocolError,
    ResetCode,
    StreamAccepted,
    StreamEnded,
    StreamOpened,
    StreamReset,
    WindowUpdated,
)
from entryguard.relay.limits import CONTROL_BACKLOG
from entryguard.relay.wslink import WsLink

log = logging.getLogger("entryguard.relay")

READ_SIZE = 256 * 1024  # the most a stream reads from its socket at once (as asyncio's)


class StreamHandler(Protocol):
    def on_accepted(self) -> None: ...
    def on_data(self, data: bytes | memoryview) -> None: ...
    def on_window(self) -> None: ...
    def on_fin(self) -> None: ...
    def on_reset(self, code: int, text: str) -> None: ...


class MuxLink:
    def __init__(
        self,
        ws: WsLink,
        mux: MuxConnection,
        name: str,
        on_open: Callable[[int, Any], None] | None = None,
        on_control: Callable[[dict[str, Any]], None] | None = None,
        clock: Clock = SYSTEM,
    ) -> None:
        self.clock = clock
        # The mux's OPEN timeouts, armed with call_at for the next one due (no tick).
        self._timer_handle: asyncio.TimerHandle | None = None
        self.ws = ws
        self.mux = mux
        self.name = name
        self.streams: dict[int, StreamHandler] = {}
        self._on_open = on_open
        self._on_control = on_control
        self._flushing = False
        # The messages of one socket read are being delivered: what they queue (credit,
        # OPENED, RESET) goes out in one write when the read is done, not one each.
        self._reading = False
        self.control_backlog = CONTROL_BACKLOG
        # Where the link's streams read their sockets (SocketStream.get_buffer): one
        # buffer for all, as each read is copied out before the next one.
        self.read_buffer = memoryview(bytearray(READ_SIZE))
        self.reading_held = False  # see the module docstring
        self.closed = asyncio.Event()
        self.bytes_in = 0
        self.bytes_out = 0
        self.protocol_errors = 0

    # --- used by streams ------------------------------------------------------

    def open_stream(self, tunnel_id: int, client: str) -> int:
        """Open a stream towards the agent (edge side); arms its OPEN timeout."""
        stream_id = self.mux.open_stream(tunnel_id, client, self.clock.monotonic())
        if self._timer_handle is None:
            # Every OPEN times out the same time after it is sent, so a new deadline is
            # never earlier than one already armed: arm only when none is.
            self._arm_timer()
        return stream_id

    def kick(self) -> None:
        """Something was queued on the mux: write it now if the transport takes it.
        While the transport pushes back nothing is written; ``resume_writing`` kicks."""
        ws = self.ws
        if self._flushing or self._reading or ws.writing_paused or not ws.is_open:
            return
        self._flushing = True
        try:
            mux = self.mux
            while not ws.writing_paused:
                out = mux.messages_to_send()
                if not out:
                    return
                self.bytes_out += sum(map(len, out))
                ws.write_messages(out)
        except Exception as exc:  # the transport is going away; run() will notice
            log.debug("%s: write failed: %s", self.name, exc)
            if ws.transport is not None:
                ws.transport.abort()
        finally:
            self._flushing = False
            if self.reading_held and self.mux.control_backlog <= self.control_backlog // 2:
                self.reading_held = False
                ws.hold_reading(False)
                log.info("%s: the peer reads again: reading the link again", self.name)

    def register(self, stream_id: int, handler: StreamHandler) -> None:
        self.streams[stream_id] = handler

    def forget(self, stream_id: int) -> None:
        self.streams.pop(stream_id, None)

    def reset(self, stream_id: int, code: ResetCode, text: str) -> None:
        self.streams.pop(stream_id, None)
        with contextlib.suppress(MuxError):
            self.mux.send_reset(stream_id, code, text)
        self.kick()

    # --- the loops -------------------------------------------------------------

    def attach(self) -> None:
        """Take the WebSocket's messages from here on (``run`` does it first)."""
        self.ws.attach(self._on_message, self.kick, self._read_done)
        self.kick()  # what was queued before the link was attached (a hello)

    async def run(self) -> None:
        try:
            self.attach()
            await self.ws.wait_closed()
        finally:
            if self._timer_handle is not None:
                self._timer_handle.cancel()
                self._timer_handle = None
            self.closed.set()
            handlers = list(self.streams.values())
            self.streams.clear()
            for h in handlers:
                h.on_reset(int(ResetCode.UNREACHABLE), "agent link closed")

    def _on_message(self, message: bytes | memoryview) -> None:
        if self.mux.closed:
            return
        self._reading = True
        self._dispatch(self.mux.receive_message(message, self.clock.monotonic()))
        if self.mux.closed:
            # Flush the CONTROL error frame, then close cleanly.
            self._read_done()
            self.ws.start_close(1002, "protocol error")

    def _read_done(self) -> None:
        self._reading = False
        self.kick()
        if not self.ws.writing_paused or self.reading_held:
            return  # the kick wrote every control frame, or reading is already held
        backlog = self.mux.control_backlog
        if backlog > self.control_backlog:
            self.reading_held = True
            self.ws.hold_reading(True)
            log.warning(
                "%s: %d bytes of control frames wait for the peer to read: reading the "
                "link paused until they are written (a peer that never reads is closed "
                "by the keepalive)",
                self.name,
                backlog,
            )

    def _dispatch(self, events: list[Any]) -> None:
        streams = self.streams
        for ev in events:
            if isinstance(ev, DataReceived):
                h = streams.get(ev.stream_id)
                self.bytes_in += len(ev.data)
                if h is not None:
                    h.on_data(ev.data)
                else:
                    # Stream already gone locally: give the credit back so the
                    # peer's accounting stays right until our RESET lands.
                    with contextlib.suppress(MuxError):
                        self.mux.consumed(ev.stream_id, len(ev.data))
            elif isinstance(ev, WindowUpdated):
                h = streams.get(ev.stream_id)
                if h is not None:
                    h.on_window()
            elif isinstance(ev, StreamOpened):
                if self._on_open is not None:
                    self._on_open(ev.stream_id, ev)
                else:
                    self.reset(
                        ev.stream_id, ResetCode.PROTOCOL, "this side does not accept streams"
                    )
            elif isinstance(ev, StreamAccepted):
                h = streams.get(ev.stream_id)
                if h is not None:
                    h.on_accepted()
            elif isinstance(ev, StreamEnded):
                h = streams.get(ev.stream_id)
                if h is not None:
                    h.on_fin()
            elif isinstance(ev, StreamReset):
                h = streams.pop(ev.stream_id, None)
                if h is not None:
                    h.on_reset(int(ev.code), ev.text)
            elif isinstance(ev, ControlReceived):
                if self._on_control is not None:
                    self._on_control(ev.data)
            elif isinstance(ev, ProtocolError):
                if ev.code == ResetCode.REFUSED:  # a limit of ours, not the peer's fault
                    log.warning("%s: refused %s", self.name, ev.message)
                else:
                    self.protocol_errors += 1
                    log.warning("%s: protocol error: %s", self.name, ev.message)
            elif isinstance(ev, ConnectionTerminated):
                log.error("%s: closing the link: %s", self.name, ev.reason)

    def _arm_timer(self) -> None:
        due = self.mux.get_timer()
        if due is None or self.mux.closed:
            self._timer_handle = None
            return
        loop = asyncio.get_running_loop()
        delay = max(0.0, due - self.clock.monotonic())
        self._timer_handle = loop.call_at(loop.time() + delay, self._on_timer)

    def _on_timer(self) -> None:
        self._timer_handle = None
        if self.mux.closed:
            return
        self._dispatch(self.mux.handle_timer(self.clock.monotonic()))
        self.kick()
        self._arm_timer()
