"""Back-pressure both ways through a real edge and agent (issue 12): a stream whose
receiver stops reading has its sender's socket paused (the client's at the edge, the
target's at the agent), the other streams on the same link keep flowing, and once the
receivers read again every byte arrives, byte-identical."""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import os
from pathlib import Path

from entryguard.agent.config import parse_config
from entryguard.agent.control_client import ControlClient
from entryguard.agent.tunnel import TunnelClient
from entryguard.control.services.apikeys import create_edge_token
from entryguard.edge.service import Edge
from tests.conftest import free_port
from tests.integration.test_agent_link import api_sqlite

# More than the window (1 MiB) plus every socket buffer on the way (loopback buffers
# grow to a few MiB each), so the stall reaches the sender's socket.
SIZE = 48 * 1024 * 1024


async def _wait_for(check: object, what: str, timeout: float = 10.0) -> None:
    assert callable(check)
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
    async with api_sqlite(tmp_path) as api:
        async with api.db.write() as s:
            token = await create_edge_token(s, "t")
        key = await api.agent_key("prod-agent")
        res = await api.ok(
            "POST",
            "/admin/resources",
            json={
                "name": "t",
                "type": "tunnel",
                "agent": "prod-agent",
                "target_host": "127.0.0.1",
                "target_port": target_server.sockets[0].getsockname()[1],
            },
        )
        tid, tport = res["resource"]["id"], res["resource"]["port"]
        await api.ok("POST", "/admin/rules", json={"resource": "t", "cidr": "127.0.0.2/32"})
        edge = Edge(api.url, token, poll_wait=2)
        await edge.start("127.0.0.1", free_port())
        cfg = parse_config(
            {
                "server": {"url": api.url, "api_key": key},
                "agent": {"name": "prod-agent"},
                "tunnel": {"enabled": True, "edge_url": f"ws://127.0.0.1:{edge.port}"},
            },
            tmp_path / "agent.yml",
        )
        control = ControlClient(cfg)
        client = TunnelClient(cfg, control)
        task = asyncio.create_task(client.run())
        try:
            assert await edge.wait_synced(10)
            await asyncio.wait_for(client.connected.wait(), 10)
            await _wait_for(lambda: edge.links and tid in edge.listeners, "the agent's link")

            async def dial() -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
                return await asyncio.open_connection(
                    "127.0.0.1", tport, local_addr=("127.0.0.2", 0)
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
                    for c in edge.conns.get(tid, ())
                )

            def target_paused_at_agent() -> bool:
                return any(
                    s.transport is not None and not s.transport.is_reading() for s in client.streams
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
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
            await control.close()
            await edge.close()
            target_server.close()
