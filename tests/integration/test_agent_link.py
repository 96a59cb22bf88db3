"""The agent's side of the link against a scripted fake edge, and the edge's endpoint checks."""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

import pytest
import websockets
from websockets.asyncio.server import ServerConnection

from entryguard.agent.config import parse_config
from entryguard.agent.control_client import ControlClient
from entryguard.agent.tunnel import TunnelClient
from entryguard.control.db.database import sqlite_url_for
from entryguard.control.services.apikeys import create_edge_token
from entryguard.edge.service import Edge
from entryguard.mux import FrameType, ResetCode
from entryguard.mux import frames as F
from entryguard.relay.wslink import connect
from entryguard.relay.wsoptions import link_options
from tests.conftest import free_port, require_tool
from tests.integration.conftest import Api, serve_api


@contextlib.asynccontextmanager
async def api_sqlite(tmp_path: Path) -> AsyncIterator[Api]:
    async with serve_api(sqlite_url_for(tmp_path), tmp_path) as api:
        yield api


async def fake_edge(
    script: asyncio.Queue[bytes], replies: asyncio.Queue[bytes]
) -> tuple[websockets.Server, int]:
    async def handler(ws: ServerConnection) -> None:
        async def pump() -> None:
            async for msg in ws:
                await replies.put(msg if isinstance(msg, bytes) else msg.encode())

        reader = asyncio.create_task(pump())
        while True:
            await ws.send(await script.get())
        reader.cancel()

    port = free_port()
    server = await websockets.serve(handler, "127.0.0.1", port, compression=None)
    return server, port


async def next_frame(replies: asyncio.Queue[bytes], want: FrameType) -> F.Frame:
    while True:
        f = F.parse_frame(await asyncio.wait_for(replies.get(), 5))
        if f.type == want:
            return f


async def test_agent_refuses_tunnels_it_does_not_serve_and_targets_outside_allowed(
    tmp_path: Path,
) -> None:
    async with api_sqlite(tmp_path) as api:
        key = await api.agent_key("prod-agent")
        # A tunnel to a real listening port, which must never see a connection.
        hits = 0

        async def on_conn(r: asyncio.StreamReader, w: asyncio.StreamWriter) -> None:
            nonlocal hits
            hits += 1
            w.close()

        target = await asyncio.start_server(on_conn, "127.0.0.1", 0)
        tport = target.sockets[0].getsockname()[1]
        res = await api.ok(
            "POST",
            "/admin/resources",
            json={
                "name": "db",
                "type": "tunnel",
                "agent": "prod-agent",
                "target_host": "127.0.0.1",
                "target_port": tport,
            },
        )
        script: asyncio.Queue[bytes] = asyncio.Queue()
        replies: asyncio.Queue[bytes] = asyncio.Queue()
        server, eport = await fake_edge(script, replies)
        cfg = parse_config(
            {
                "server": {"url": api.url, "api_key": key},
                "agent": {"name": "prod-agent"},
                "tunnel": {
                    "enabled": True,
                    "edge_url": f"ws://127.0.0.1:{eport}",
                    "allowed_targets": ["10.0.0.0/8"],
                },
            },
            tmp_path / "agent.yml",
        )
        control = ControlClient(cfg)
        client = TunnelClient(cfg, control)
        task = asyncio.create_task(client.run())
        try:
            await asyncio.wait_for(client.connected.wait(), 10)
            # 1. A tunnel id the agent does not serve: RESET not_allowed, no dial.
            await script.put(F.encode_open(1, 9999, "203.0.113.9:1234"))
            f = await next_frame(replies, FrameType.RESET)
            assert f.stream_id == 1 and F.parse_reset(f)[0] == ResetCode.NOT_ALLOWED
            # 2. Its own tunnel, but the target is outside tunnel.allowed_targets.
            await script.put(F.encode_open(2, res["resource"]["id"], "203.0.113.9:1235"))
            f = await next_frame(replies, FrameType.RESET)
            assert f.stream_id == 2 and F.parse_reset(f)[0] == ResetCode.NOT_ALLOWED
            assert "allowed_targets" in F.parse_reset(f)[1]
            # 3. A framing fault closes the link cleanly; the agent reconnects.
            await script.put(b"\x63garbage")
            f = await next_frame(replies, FrameType.CONTROL)
            assert F.parse_control(f)["type"] in ("error", "hello")
            await asyncio.sleep(0.2)
            assert hits == 0
        finally:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
            await control.close()
            server.close()
            target.close()


@pytest.fixture
async def edge_env(tmp_path: Path) -> AsyncIterator[tuple[Api, Edge, int]]:
    async with api_sqlite(tmp_path) as api:
        async with api.db.write() as s:
            token = await create_edge_token(s, "t")
        edge = Edge(api.url, token, poll_wait=2)
        port = free_port()
        await edge.start("127.0.0.1", port)
        assert await edge.wait_synced(10)
        try:
            yield api, edge, port
        finally:
            await edge.close()


async def test_edge_refuses_bad_agent_credentials_and_origin(
    edge_env: tuple[Api, Edge, int],
) -> None:
    api, _edge, port = edge_env
    agent_key = await api.agent_key("prod-agent")
    sessions_key = (
        await api.ok("POST", "/admin/apikeys", json={"name": "ci", "scopes": ["sessions"]})
    )["key"]
    await asyncio.sleep(0.5)  # the edge follows the change log
    url = f"ws://127.0.0.1:{port}/agent/connect"

    async def status(headers: dict[str, str]) -> int:
        """The library's client and the agent's own (``wslink.connect``) must agree."""
        try:
            async with websockets.connect(url, additional_headers=headers, open_timeout=5):
                code = 101
        except websockets.InvalidStatus as exc:
            code = exc.response.status_code
        try:
            link = await connect(url, link_options(), headers=list(headers.items()))
            await link.close()
            assert code == 101
        except websockets.InvalidStatus as exc:
            assert exc.response.status_code == code
            if code in (401, 403):
                assert json.loads(exc.response.body)["error"]["code"] in (
                    "unauthorized",
                    "forbidden",
                )
        return code

    assert await status({}) == 401
    assert await status({"Authorization": f"Bearer {sessions_key}"}) == 403
    assert await status({"Authorization": "Bearer eg_AAAAAAAA_forged"}) == 403
    assert (
        await status({"Authorization": f"Bearer {agent_key}", "Origin": "https://evil.example"})
        == 403
    )
    assert await status({"Authorization": f"Bearer {agent_key}"}) == 101
    # Revoking the key closes a live link and refuses new ones.
    async with websockets.connect(
        url, additional_headers={"Authorization": f"Bearer {agent_key}"}
    ) as ws:
        await api.ok("DELETE", "/admin/apikeys/prod-agent")
        with pytest.raises(websockets.ConnectionClosed):
            await asyncio.wait_for(ws.recv(), 5)
            await asyncio.wait_for(ws.recv(), 5)
    assert await status({"Authorization": f"Bearer {agent_key}"}) == 403


async def test_edge_health_degrades_and_keeps_state_when_control_plane_is_gone(
    tmp_path: Path,
) -> None:
    import httpx

    async with api_sqlite(tmp_path) as api:
        async with api.db.write() as s:
            token = await create_edge_token(s, "t")
        await api.agent_key("prod-agent")
        await api.ok(
            "POST",
            "/admin/resources",
            json={
                "name": "db",
                "type": "tunnel",
                "agent": "prod-agent",
                "target_host": "127.0.0.1",
                "target_port": 5432,
            },
        )
        await api.ok(
            "POST",
            "/admin/guests",
            json={"resource": "db", "cidr": "127.0.0.2/32", "duration": "2s"},
        )
        edge = Edge(api.url, token, poll_wait=1)
        port = free_port()
        await edge.start("127.0.0.1", port)
        assert await edge.wait_synced(10)
    # The control plane is gone now.
    try:
        async with httpx.AsyncClient() as c:
            for _ in range(100):
                r = await c.get(f"http://127.0.0.1:{port}/health")
                if r.status_code == 503:
                    break
                await asyncio.sleep(0.1)
            assert r.status_code == 503 and r.json()["status"] == "degraded"
            metrics = (await c.get(f"http://127.0.0.1:{port}/metrics")).text
            assert "entryguard_edge_control_plane_connected 0" in metrics
        tun = next(iter(edge.state.tunnels.values()))
        from entryguard.net import parse_ip

        assert tun.port in {t.port for t in edge.state.tunnels.values()}  # fail-static
        # The guest grant still expires on the edge's own clock.
        for _ in range(50):
            if not tun.allow.covers(parse_ip("127.0.0.2"), time.time()):
                break
            await asyncio.sleep(0.1)
        assert not tun.allow.covers(parse_ip("127.0.0.2"), time.time())
    finally:
        await edge.close()


@dataclass
class Stack:
    """An in-process edge and agent serving one tunnel (``port`` on the edge)."""

    edge: Edge
    agent: TunnelClient
    tunnel_id: int
    port: int


@contextlib.asynccontextmanager
async def edge_and_agent(tmp_path: Path, target_port: int) -> AsyncIterator[Stack]:
    """A control plane on SQLite, an edge and an agent in this process, and a tunnel
    to 127.0.0.1:``target_port`` that admits 127.0.0.2; yields once the link is up."""
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
                "target_port": target_port,
            },
        )
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
        stack = Stack(edge, client, res["resource"]["id"], res["resource"]["port"])
        try:
            assert await edge.wait_synced(10)
            await asyncio.wait_for(client.connected.wait(), 10)
            for _ in range(100):  # the edge learns of the rule and the agent's link
                if edge.links and stack.tunnel_id in edge.listeners:
                    break
                await asyncio.sleep(0.05)
            yield stack
        finally:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
            await control.close()
            await edge.close()


async def _relay_sockets_have_nodelay(tmp_path: Path) -> tuple[int, int]:
    """One connection through an in-process edge and agent; TCP_NODELAY on both relayed
    sockets (the client's at the edge, the target's at the agent)."""
    import socket

    async def echo(r: asyncio.StreamReader, w: asyncio.StreamWriter) -> None:
        w.write(await r.read(100))
        await w.drain()

    target = await asyncio.start_server(echo, "127.0.0.1", 0)
    try:
        async with edge_and_agent(tmp_path, target.sockets[0].getsockname()[1]) as st:
            r, w = await asyncio.open_connection("127.0.0.1", st.port, local_addr=("127.0.0.2", 0))
            w.write(b"ping")
            assert await asyncio.wait_for(r.readexactly(4), 5) == b"ping"
            (at_edge,) = st.edge.conns[st.tunnel_id]
            (at_agent,) = st.agent.streams
            # Both ends of the link split frames themselves once it is open (wsframes).
            assert st.agent.link is not None
            for link in (*st.edge.links.values(), st.agent.link):
                assert link.ws.splitter is not None
            flags = []
            for stream in (at_edge, at_agent):
                assert stream.transport is not None
                sock = stream.transport.get_extra_info("socket")
                flags.append(sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY))
            w.close()
            return flags[0], flags[1]
    finally:
        target.close()


@pytest.mark.parametrize("loop", ["asyncio", "uvloop"])
def test_relayed_sockets_have_nodelay_on_both_sides(tmp_path: Path, loop: str) -> None:
    """The relay relies on the event loop to set TCP_NODELAY (both asyncio and uvloop do
    for every TCP transport); a small write must never wait for Nagle. And the link's
    fast frame path is in use on both ends."""
    if loop == "uvloop":
        require_tool("uvloop", module=True)
        import uvloop

        flags = uvloop.run(_relay_sockets_have_nodelay(tmp_path))
    else:
        flags = asyncio.run(_relay_sockets_have_nodelay(tmp_path))
    assert flags[0] and flags[1]


async def test_a_dial_that_gets_no_answer_times_out_and_an_outside_cancel_still_cancels(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A target whose accept queue is full drops the SYN: the agent's dial gives up after
    DIAL_TIMEOUT and resets the stream as unreachable."""
    import socket

    import entryguard.agent.tunnel as tunnel
    from entryguard.agent.control_client import TunnelTarget

    monkeypatch.setattr(tunnel, "DIAL_TIMEOUT", 0.5)

    class Stream(asyncio.Protocol):
        closed = False
        aborted: tuple[ResetCode, str] | None = None

        def abort(self, code: ResetCode, text: str) -> None:
            self.aborted, self.closed = (code, text), True

    with contextlib.ExitStack() as stack:
        lst = stack.enter_context(socket.socket())
        lst.bind(("127.0.0.1", 0))
        lst.listen(0)
        port = lst.getsockname()[1]
        for _ in range(3):  # fill the accept queue; nothing accepts
            s = stack.enter_context(socket.socket())
            s.setblocking(False)
            with contextlib.suppress(BlockingIOError):
                s.connect(("127.0.0.1", port))
        await asyncio.sleep(0.1)
        client = object.__new__(tunnel.TunnelClient)
        client.allowed = None
        target = TunnelTarget(1, "db", "127.0.0.1", port)
        stream = Stream()
        t0 = time.monotonic()
        await client._dial(stream, target)  # type: ignore[arg-type]
        assert 0.4 < time.monotonic() - t0 < 3
        assert stream.aborted is not None and stream.aborted[0] == ResetCode.UNREACHABLE
        assert "no answer within 0.5 s" in stream.aborted[1]
        other = Stream()
        task = asyncio.create_task(client._dial(other, target))  # type: ignore[arg-type]
        await asyncio.sleep(0.1)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        assert other.aborted is None


async def test_link_pings_pass_and_text_or_fragmented_messages_close_it(
    edge_env: tuple[Api, Edge, int],
) -> None:
    """Through the edge's own frame splitting: a ping is answered by the library, a
    CONTROL frame is understood, and a text or fragmented message closes the link with
    1003 (the link carries single-frame binary messages only)."""
    api, edge, port = edge_env
    key = await api.agent_key("prod-agent")
    await asyncio.sleep(0.5)  # the edge learns of the key
    url = f"ws://127.0.0.1:{port}/agent/connect"
    headers = {"Authorization": f"Bearer {key}"}
    hello = F.encode_control({"type": "hello", "version": 1, "window": 65536})
    for bad in ("text", [b"frag", b"mented"]):
        async with websockets.connect(url, additional_headers=headers, compression=None) as ws:
            first = F.parse_frame(await asyncio.wait_for(ws.recv(), 5))
            assert F.parse_control(first)["type"] == "hello"
            await ws.send(hello)
            for _ in range(3):  # the library's ping/pong works after the take-over
                await asyncio.wait_for(await ws.ping(), 5)
            for _ in range(50):  # the hello reached the mux: the peer's window is known
                links = list(edge.links.values())
                if links and links[0].mux.peer_window == 65536:
                    break
                await asyncio.sleep(0.02)
            assert links and links[0].mux.peer_window == 65536
            await ws.send(bad)
            with pytest.raises(websockets.ConnectionClosed) as closed:
                await asyncio.wait_for(ws.recv(), 5)
            assert closed.value.rcvd is not None and closed.value.rcvd.code == 1003
