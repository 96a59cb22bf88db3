"""One agent WebSocket carrying many streams: the asyncio side of the mux.

The receive loop never waits on a stream: incoming DATA is handed to the stream's
socket with a non-blocking ``transport.write`` and credit is returned only once the
socket has taken it (see ``SocketStream``), so a stalled client or target holds back
its own stream through flow control and nothing else. One writer task drains the
mux's outgoing queue, in which control frames overtake bulk DATA.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable
from typing import Any, Protocol

from websockets.asyncio.connection import Connection
from websockets.exceptions import ConnectionClosed

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

log = logging.getLogger("entryguard.relay")


class StreamHandler(Protocol):
    def on_accepted(self) -> None: ...
    def on_data(self, data: bytes | memoryview) -> None: ...
    def on_window(self) -> None: ...
    def on_fin(self) -> None: ...
    def on_reset(self, code: int, text: str) -> None: ...


class MuxLink:
    def __init__(
        self,
        ws: Connection,
        mux: MuxConnection,
        name: str,
        on_open: Callable[[int, Any], None] | None = None,
        on_control: Callable[[dict[str, Any]], None] | None = None,
    ) -> None:
        self.ws = ws
        self.mux = mux
        self.name = name
        self.streams: dict[int, StreamHandler] = {}
        self._on_open = on_open
        self._on_control = on_control
        self._wake = asyncio.Event()
        self.closed = asyncio.Event()
        self.bytes_in = 0
        self.bytes_out = 0
        self.protocol_errors = 0

    # --- used by streams ------------------------------------------------------

    def kick(self) -> None:
        """Something was queued on the mux: let the writer send it."""
        self._wake.set()

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
        timer = asyncio.create_task(self._timer(), name=f"{self.name}-timer")
        try:
            async for message in self.ws:
                if isinstance(message, str):
                    log.warning("%s: text message on the tunnel link ignored", self.name)
                    continue
                self._dispatch(self.mux.receive_message(message, time.monotonic()))
                if self.mux.closed:
                    # Flush the CONTROL error frame, then close cleanly.
                    for msg in self.mux.messages_to_send():
                        await self.ws.send(msg)
                    await self.ws.close(1002, "protocol error")
                    break
                self.kick()
        except ConnectionClosed:
            pass
        finally:
            writer.cancel()
            timer.cancel()
            for t in (writer, timer):
                with contextlib.suppress(asyncio.CancelledError, Exception):
                    await t
            self.closed.set()
            handlers = list(self.streams.values())
            self.streams.clear()
            for h in handlers:
                h.on_reset(int(ResetCode.UNREACHABLE), "agent link closed")

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
        ws = self.ws
        while True:
            await self._wake.wait()
            self._wake.clear()
            while True:
                out = self.mux.messages_to_send()
                if not out:
                    break
                for msg in out:
                    self.bytes_out += len(msg)
                    await ws.send(msg)

    async def _timer(self) -> None:
        while True:
            deadline = self.mux.get_timer()
            now = time.monotonic()
            if deadline is None:
                await asyncio.sleep(1.0)
                continue
            if deadline > now:
                await asyncio.sleep(min(deadline - now, 1.0))
                continue
            self._dispatch(self.mux.handle_timer(time.monotonic()))
            self.kick()
