"""Target servers for the bench, in their own process (uvloop): echo and sink.

    python -m bench.targets        # prints {"echo": PORT, "sink": PORT} and serves until stdin closes

- echo: writes back what it reads; on EOF it closes.
- sink: accepts and never reads (its stream's window fills: the stalled-stream test).
"""

from __future__ import annotations

import asyncio
import json
import socket
import sys
from typing import ClassVar, cast


class Echo(asyncio.Protocol):
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.t = cast(asyncio.Transport, transport)
        sock = transport.get_extra_info("socket")
        if sock is not None:
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)

    def data_received(self, data: bytes) -> None:
        self.t.write(data)

    def eof_received(self) -> bool:
        return False  # close after the echoes are flushed


class Sink(asyncio.Protocol):
    """Accepts and never reads."""

    held: ClassVar[set[asyncio.Transport]] = set()

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.t = cast(asyncio.Transport, transport)
        Sink.held.add(self.t)
        # uvloop starts reading after connection_made returns: pause now and just after.
        self._pause()
        asyncio.get_running_loop().call_soon(self._pause)

    def _pause(self) -> None:
        if not self.t.is_closing():
            self.t.pause_reading()

    def data_received(self, data: bytes) -> None:
        self._pause()  # whatever slipped in before the pause is the last byte read

    def connection_lost(self, exc: Exception | None) -> None:
        Sink.held.discard(self.t)


async def main() -> None:
    loop = asyncio.get_running_loop()
    echo = await loop.create_server(Echo, "127.0.0.1", 0, backlog=4096, reuse_address=True)
    sink = await loop.create_server(Sink, "127.0.0.1", 0, backlog=1024, reuse_address=True)
    ports = {
        "echo": echo.sockets[0].getsockname()[1],
        "sink": sink.sockets[0].getsockname()[1],
    }
    print(json.dumps(ports), flush=True)
    # Serve until the parent closes our stdin (or kills us).
    reader = asyncio.StreamReader()
    await loop.connect_read_pipe(lambda: asyncio.StreamReaderProtocol(reader), sys.stdin)
    await reader.read()


if __name__ == "__main__":
    try:
        import uvloop

        uvloop.run(main())
    except ImportError:
        asyncio.run(main())
    except KeyboardInterrupt:
        pass
