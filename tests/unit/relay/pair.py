"""An edge link and an agent link back to back in memory (h11's ``ConnectionPair``).

Everything between the two sockets is the real code: the links' own WebSocket
(``wslink``: the library's Sans-I/O handshake and control frames, our framing),
``MuxLink`` and the mux on both ends. Only the transports are fakes:
``FakeSocket`` stands for a client's or target's TCP socket and records what the relay
does to it; the WebSocket between the links is a byte list that ``pump`` delivers.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from typing import Any

from entryguard.mux import MuxConnection, StreamOpened
from entryguard.relay.link import MuxLink
from entryguard.relay.stream import SocketStream
from entryguard.relay.wslink import ClientLink, ServerLink, WsLink
from entryguard.relay.wsoptions import LinkOptions

CLIENT = ("203.0.113.7", 50000)


class FakeSocket:
    """A TCP transport that records writes, EOF, pause/resume, abort and close."""

    def __init__(self, peer: tuple[str, int] = CLIENT, sock: Any = None) -> None:
        self.extra: dict[str, Any] = {"peername": peer, "socket": sock}
        self.writes: list[bytes] = []
        self.eof_written = False
        self.reading = True
        self.pauses = 0
        self.resumes = 0
        self.aborted = False
        self.closed = False
        self.high_water: int | None = None
        self.protocol: asyncio.BaseProtocol | None = None

    @property
    def data(self) -> bytes:
        return b"".join(self.writes)

    def write(self, data: bytes | memoryview) -> None:
        assert not self.eof_written, "write after write_eof"
        self.writes.append(bytes(data))

    def can_write_eof(self) -> bool:
        return True

    def write_eof(self) -> None:
        self.eof_written = True

    def pause_reading(self) -> None:
        self.reading = False
        self.pauses += 1

    def resume_reading(self) -> None:
        self.reading = True
        self.resumes += 1

    def set_write_buffer_limits(self, high: int | None = None, low: int | None = None) -> None:
        self.high_water = high

    def get_extra_info(self, name: str, default: Any = None) -> Any:
        return self.extra.get(name, default)

    def set_protocol(self, protocol: asyncio.BaseProtocol) -> None:
        self.protocol = protocol

    def get_protocol(self) -> asyncio.BaseProtocol | None:
        return self.protocol

    def is_closing(self) -> bool:
        return self.closed or self.aborted

    def abort(self) -> None:
        self.aborted = True

    def close(self) -> None:
        self.closed = True


class Wire:
    """One direction of the WebSocket between the links: bytes wait here for ``pump``."""

    def __init__(self) -> None:
        self.out: list[bytes] = []

    def write(self, data: bytes | memoryview) -> None:
        self.out.append(bytes(data))

    def writelines(self, chunks: Any) -> None:
        self.out.append(b"".join(chunks))

    def is_closing(self) -> bool:
        return False

    def can_write_eof(self) -> bool:
        return True

    def write_eof(self) -> None:
        pass

    def get_extra_info(self, name: str, default: Any = None) -> Any:
        return default

    def set_write_buffer_limits(self, high: int | None = None, low: int | None = None) -> None:
        pass

    def get_write_buffer_size(self) -> int:
        return 0

    def pause_reading(self) -> None:
        pass

    def resume_reading(self) -> None:
        pass

    def abort(self) -> None:
        pass

    def close(self) -> None:
        pass


class LinkPair:
    """``edge`` and ``agent`` links over one in-memory WebSocket; ``pump`` delivers."""

    def __init__(
        self, *, window: int = 64 * 1024, max_streams: int = 16384, open_timeout: float = 15.0
    ) -> None:
        options = LinkOptions(ping_interval=None, ping_timeout=None, close_timeout=1)
        self.agent_ws: WsLink = ClientLink("ws://edge.test/agent/connect", options, ())
        self.edge_ws: WsLink = ServerLink(options)
        self.to_edge, self.to_agent = Wire(), Wire()
        self.agent_ws.connection_made(self.to_edge)  # type: ignore[arg-type]
        self.edge_ws.connection_made(self.to_agent)  # type: ignore[arg-type]
        self.pump()  # the opening handshake, through the links' own code
        assert self.agent_ws.is_open and self.edge_ws.is_open
        self.opened: list[StreamOpened] = []
        self.edge = MuxLink(
            self.edge_ws,
            MuxConnection(
                "edge", initial_window=window, max_streams=max_streams, open_timeout=open_timeout
            ),
            "agent",
        )
        self.agent = MuxLink(
            self.agent_ws,
            MuxConnection("agent", initial_window=window),
            "edge",
            on_open=lambda _sid, ev: self.opened.append(ev),
        )
        self._runs: list[asyncio.Task[None]] = []

    async def start(self) -> None:
        self._runs = [asyncio.create_task(link.run()) for link in (self.edge, self.agent)]
        await asyncio.sleep(0)  # each run() attaches to its WebSocket, then waits

    async def stop(self) -> None:
        for t in self._runs:
            t.cancel()
        for t in self._runs:
            with contextlib.suppress(asyncio.CancelledError):
                await t

    def pump(self) -> None:
        """Deliver both ways until neither link has anything more to send."""
        for _ in range(10_000):
            to_agent, self.to_agent.out = self.to_agent.out, []
            to_edge, self.to_edge.out = self.to_edge.out, []
            if not to_agent and not to_edge:
                return
            for m in to_agent:
                self.agent_ws.data_received(m)
            for m in to_edge:
                self.edge_ws.data_received(m)
        raise AssertionError("the links did not settle")


@contextlib.asynccontextmanager
async def link_pair(**kw: Any) -> AsyncIterator[LinkPair]:
    pair = LinkPair(**kw)
    await pair.start()
    try:
        yield pair
    finally:
        await pair.stop()


class Tracked(SocketStream):
    """A ``SocketStream`` that remembers the RESET it got and counts ``on_closed``."""

    reset_by_peer: tuple[int, str] | None = None
    closed_calls = 0

    def on_reset(self, code: int, text: str) -> None:
        self.reset_by_peer = (code, text)
        super().on_reset(code, text)

    def on_closed(self) -> None:
        self.closed_calls += 1
