"""One agent WebSocket carrying many streams: the asyncio side of the mux.

The receive path never waits on a stream: incoming DATA is handed to the stream's
socket with a non-blocking ``transport.write`` and credit is returned only once the
socket has taken it (see ``SocketStream``), so a stalled client or target holds back
its own stream through flow control and nothing else.

Two shortcuts keep per-message cost and latency down (the WebSocket library's
per-message work dominates the tunnel's speed, DESIGN.md "Data-plane speed"):
- incoming binary messages are delivered straight from the connection's
  ``data_received`` (``FastDelivery``), not through the library's message queue and
  a task switch per message;
- ``kick()`` writes queued frames at once while the socket takes them, and only
  when the transport pushes back does the writer task wait for it to drain.
The mux's outgoing queue puts control frames ahead of bulk DATA either way.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable
from typing import Any, Protocol

from websockets.asyncio.client import ClientConnection
from websockets.asyncio.connection import Connection
from websockets.asyncio.server import ServerConnection
from websockets.exceptions import ConnectionClosed
from websockets.frames import Frame, Opcode
from websockets.protocol import Side, State
from websockets.streams import StreamReader

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
from entryguard.relay.tasks import TaskSet
from entryguard.relay.wsframes import FrameSplitter, MaskKeys, binary_frames

log = logging.getLogger("entryguard.relay")

MAX_MESSAGE = 2 * 1024 * 1024  # both ends' max_size; a mux frame is at most 256 KiB + header


class StreamHandler(Protocol):
    def on_accepted(self) -> None: ...
    def on_data(self, data: bytes | memoryview) -> None: ...
    def on_window(self) -> None: ...
    def on_fin(self) -> None: ...
    def on_reset(self, code: int, text: str) -> None: ...


class FastDelivery:
    """Mixin for websockets' asyncio connections: whole binary messages go to ``on_binary``
    synchronously. Anything else (text, fragments) is a peer bug on this link: the link
    is closed with 1003 rather than left to the library's queue, which nothing reads.

    Once the link is open and the library's parser waits at a frame boundary, a
    ``FrameSplitter`` takes the socket's bytes first: binary frames skip the library's
    parser altogether, every other frame is handed to it whole (see ``wsframes``).
    """

    on_binary: Callable[[Any], None] | None = None
    _splitter: FrameSplitter | None = None
    _tasks: TaskSet | None = None  # closes it started; made on first use, as that is rare

    def data_received(self, data: bytes) -> None:
        if self._splitter is not None:
            self._splitter.feed(data)
            return
        super().data_received(data)  # type: ignore[misc]
        if self.on_binary is not None:
            self.take_over()

    def take_over(self) -> None:
        """Start splitting frames here if the library is exactly between two frames."""
        ws: Any = self
        protocol = ws.protocol
        if self._splitter is not None or self.on_binary is None:
            return
        if protocol.state is not State.OPEN or protocol.reader.buffer or protocol.reader.eof:
            return
        # Between frames, with nothing buffered, the parser waits in reader.at_eof() at
        # the top of its loop (under the client's or server's handshake parser, which
        # delegates to it); anywhere else (mid-frame) the library must go on.
        gen = protocol.parser
        for _ in range(4):
            inner = getattr(gen, "gi_yieldfrom", None)
            if inner is None:
                break
            gen = inner
        if getattr(gen, "gi_code", None) is not StreamReader.at_eof.__code__:
            return
        self._splitter = FrameSplitter(
            masked=protocol.side is Side.SERVER,
            max_size=protocol.max_message_size or MAX_MESSAGE,
            on_binary=self.on_binary,
            on_other=self._library_frames,
        )

    def _library_frames(self, data: bytes) -> None:
        super().data_received(data)  # type: ignore[misc]
        splitter = self._splitter
        ws: Any = self
        if splitter is not None and ws.protocol.state is not State.OPEN:
            splitter.passthrough = True  # closing: the rest is the library's

    def process_event(self, event: Any) -> None:
        if self.on_binary is not None and isinstance(event, Frame):
            if event.opcode is Opcode.BINARY and event.fin:
                self.on_binary(event.data)
                return
            if event.opcode in (Opcode.TEXT, Opcode.BINARY, Opcode.CONT):
                log.warning("tunnel link: text or fragmented message: closing the link")
                ws: Any = self
                if self._splitter is not None:
                    self._splitter.passthrough = True
                if self._tasks is None:
                    self._tasks = TaskSet(log)
                self._tasks.spawn(ws.close(1003, "binary single-frame messages only"))
                return
        super().process_event(event)  # type: ignore[misc]

    def connection_lost(self, exc: Exception | None) -> None:
        super().connection_lost(exc)  # type: ignore[misc]
        if self._tasks is not None:
            self._tasks.cancel()  # a close in progress has nothing left to wait for


class EdgeServerConnection(FastDelivery, ServerConnection):
    pass


class AgentClientConnection(FastDelivery, ClientConnection):
    pass


class MuxLink:
    def __init__(
        self,
        ws: Connection,
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
        self._wake = asyncio.Event()
        self._flushing = False
        self._blocked = False  # the transport pushed back: the writer task waits to drain
        self.closed = asyncio.Event()
        self.bytes_in = 0
        self.bytes_out = 0
        self.protocol_errors = 0
        self._tasks = TaskSet(log)
        # RFC 6455 §5.3: a client masks every frame it sends, a server none.
        self._mask_keys = MaskKeys() if ws.protocol.side is Side.CLIENT else None

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
        """Something was queued on the mux: write it now if the socket takes it."""
        if self._flushing or self._blocked:
            return
        ws = self.ws
        if ws.protocol.state is not State.OPEN:
            return
        self._flushing = True
        try:
            mux, protocol, transport = self.mux, ws.protocol, ws.transport
            while True:
                out = mux.messages_to_send()
                if not out:
                    return
                if protocol.writes:  # the library's own frames (a pong) go first
                    ws.send_data()
                self.bytes_out += sum(map(len, out))
                # Framed here rather than by protocol.send_binary(): the same bytes,
                # without a Frame object and a copy per message (see wsframes).
                transport.writelines(binary_frames(out, self._mask_keys))
                if getattr(ws, "paused", False):  # over the write limit: wait for drain
                    self._blocked = True
                    self._wake.set()
                    return
        except Exception as exc:  # the transport is going away; run() will notice
            log.debug("%s: write failed: %s", self.name, exc)
            ws.transport.abort()
        finally:
            self._flushing = False

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

    async def run(self) -> None:
        writer = asyncio.create_task(self._writer(), name=f"{self.name}-writer")
        try:
            if isinstance(self.ws, FastDelivery):
                self.ws.on_binary = self._on_message
                # Messages that came with the handshake's last read sit in the library's
                # queue: deliver them first, in order.
                queued = self.ws.recv_messages.frames.queue
                while queued:
                    frame = queued.popleft()
                    self.ws.process_event(frame)
                self.ws.take_over()
                await self.ws.wait_closed()
            else:
                async for message in self.ws:
                    if isinstance(message, str):
                        log.warning("%s: text message on the tunnel link ignored", self.name)
                        continue
                    self._on_message(message)
        except ConnectionClosed:
            pass
        finally:
            writer.cancel()
            if self._timer_handle is not None:
                self._timer_handle.cancel()
                self._timer_handle = None
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await writer
            await self._tasks.close()
            self.closed.set()
            handlers = list(self.streams.values())
            self.streams.clear()
            for h in handlers:
                h.on_reset(int(ResetCode.UNREACHABLE), "agent link closed")

    def _on_message(self, message: bytes) -> None:
        if self.mux.closed:
            return
        self._dispatch(self.mux.receive_message(message, self.clock.monotonic()))
        if self.mux.closed:
            # Flush the CONTROL error frame, then close cleanly.
            self.kick()
            self._tasks.spawn(self.ws.close(1002, "protocol error"), name=f"{self.name}-close")
            return
        self.kick()

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
                self.protocol_errors += 1
                log.warning("%s: protocol error: %s", self.name, ev.message)
            elif isinstance(ev, ConnectionTerminated):
                log.error("%s: closing the link: %s", self.name, ev.reason)

    async def _writer(self) -> None:
        """Only runs when the transport pushed back: wait for it to drain, then go on."""
        while True:
            await self._wake.wait()
            self._wake.clear()
            await self.ws.drain()
            self._blocked = False
            self.kick()

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
