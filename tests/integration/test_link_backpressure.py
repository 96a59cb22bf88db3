"""Back-pressure both ways through a real edge and agent (issue 12): a stream whose
receiver stops reading has its sender's socket paused (the client's at the edge, the
target's at the agent), the other streams on the same link keep flowing, and once the
receivers read again every byte arrives, byte-identical."""

from __future__ import annotations

import asyncio
import hashlib
import os
from collections.abc import Callable
from pathlib import Path

from tests.integration.test_agent_link import edge_and_agent

# More than the window (1 MiB) plus every socket buffer on the way (loopback buffers
# grow to a few MiB each), so the stall reaches the sender's socket.
SIZE = 48 * 1024 * 1024


async def _wait_for(check: Callable[[], bool], what: str, timeout: float = 10.0) -> None:
    for _ in range(int(timeout / 0.02)):
        if check():
            return
        await asyncio.sleep(0.02)
    raise AssertionError(f"never saw: {what}")


async def test_a_stalled_reader_pauses_its_sender_both_ways_and_the_other_streams_flow(
    tmp_path: Path,
) -> None:
    upload, download = os.urandom(SIZE), os.urandom(SIZE)
    target_reads = asyncio.Event()  # the target starts reading the upload

    async def target(r: asyncio.StreamReader, w: asyncio.StreamWriter) -> None:
        cmd = await r.readline()
        if cmd == b"sink\n":
            await target_reads.wait()
            digest = hashlib.sha256()
            while chunk := await r.read(1 << 16):
                digest.update(chunk)
            w.write(digest.hexdigest().encode())
        elif cmd == b"source\n":
            w.write(download)
        else:
            while line := await r.readline():
                w.write(line)
                await w.drain()
        await w.drain()
        w.close()

    target_server = await asyncio.start_server(target, "127.0.0.1", 0)
    try:
        async with edge_and_agent(tmp_path, target_server.sockets[0].getsockname()[1]) as st:

            async def dial() -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
                return await asyncio.open_connection(
                    "127.0.0.1", st.port, local_addr=("127.0.0.2", 0)
                )

            # Upstream: the target does not read what the client sends.
            up_r, up_w = await dial()
            up_port = up_w.get_extra_info("sockname")[1]
            up_w.write(b"sink\n" + upload)
            up_w.write_eof()
            # Downstream: the client does not read what the target sends.
            down_r, down_w = await dial()
            down_w.write(b"source\n")

            def client_paused_at_edge() -> bool:
                return any(
                    c.port == up_port and c.transport is not None and not c.transport.is_reading()
                    for c in st.edge.conns.get(st.tunnel_id, ())
                )

            def target_paused_at_agent() -> bool:
                return any(
                    s.transport is not None and not s.transport.is_reading()
                    for s in st.agent.streams
                )

            await _wait_for(client_paused_at_edge, "the edge pause the uploading client")
            await _wait_for(target_paused_at_agent, "the agent pause the downloading target")
            # Meanwhile a third stream on the same link goes on as if nothing happened.
            echo_r, echo_w = await dial()
            echo_w.write(b"echo\n")
            for i in range(100):
                echo_w.write(b"%d\n" % i)
                assert await asyncio.wait_for(echo_r.readline(), 2) == b"%d\n" % i
            echo_w.close()
            assert client_paused_at_edge() and target_paused_at_agent(), "the stall ended"

            # The receivers read again: everything arrives, byte-identical.
            target_reads.set()
            received = await asyncio.wait_for(down_r.readexactly(SIZE), 30)
            assert received == download
            assert await asyncio.wait_for(down_r.read(), 5) == b""
            digest = await asyncio.wait_for(up_r.read(), 30)
            assert digest == hashlib.sha256(upload).hexdigest().encode()
            for w in (up_w, down_w):
                w.close()
    finally:
        target_server.close()
