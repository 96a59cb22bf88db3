"""The agent link's limits (issue 12): the stream cap is enforced at both ends (the
stream past it is reset with a log line saying why, the others go on), and a peer that
sends OPENs while never reading cannot grow the other end's queue of answers without
bound: reading pauses while the answers wait, and every OPEN is answered once the
peer reads again."""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import socket
import time
from pathlib import Path

import pytest
from websockets.frames import Frame, Opcode
from websockets.http11 import Request
from websockets.server import ServerProtocol

from entryguard.agent.config import parse_config
from entryguard.agent.control_client import TunnelTarget
from entryguard.agent.tunnel import TunnelClient
from entryguard.mux import FrameType, hello
from entryguard.mux import frames as F
from entryguard.relay.limits import CONTROL_BACKLOG
from entryguard.relay.wsoptions import link_options
from tests.integration.test_agent_link import Stack, edge_and_agent

CAP = 8


async def _echo(r: asyncio.StreamReader, w: asyncio.StreamWriter) -> None:
    while data := await r.read(1 << 16):
        w.write(data)
        await w.drain()
    w.close()


async def _client(st: Stack) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    return await asyncio.open_connection("127.0.0.1", st.port, local_addr=("127.0.0.2", 0))


async def _echoes(r: asyncio.StreamReader, w: asyncio.StreamWriter, text: bytes) -> bool:
    w.write(text)
    return await asyncio.wait_for(r.readexactly(len(text)), 5) == text


async def _refused(r: asyncio.StreamReader, w: asyncio.StreamWriter) -> bool:
    """Reset with no byte (or closed): the stream was not opened."""
    w.write(b"hello?")
    try:
        return await asyncio.wait_for(r.read(100), 5) == b""
    except ConnectionResetError:
        return True


@pytest.mark.parametrize("side", ["edge", "agent"])
async def test_the_stream_past_the_cap_is_reset_and_the_others_go_on(
    tmp_path: Path, caplog: pytest.LogCaptureFixture, side: str
) -> None:
    caplog.set_level(logging.INFO)
    target = await asyncio.start_server(_echo, "127.0.0.1", 0)
    try:
        async with edge_and_agent(tmp_path, target.sockets[0].getsockname()[1]) as st:
            assert st.agent.link is not None
            # The limit each end was built with (LinkLimits: --max-streams at the edge,
            # tunnel.max_streams at the agent), lowered here for a quick test.
            (edge_link,) = st.edge.links.values()
            assert edge_link.mux.max_streams == st.agent.link.mux.max_streams == 16384
            (edge_link if side == "edge" else st.agent.link).mux.max_streams = CAP
            clients = [await _client(st) for _ in range(CAP)]
            for i, (r, w) in enumerate(clients):
                assert await _echoes(r, w, b"stream %d\n" % i)
            caplog.clear()
            extra = await _client(st)
            assert await _refused(*extra)
            expected = (
                "reset 127.0.0.2 on t: too many streams (8)"
                if side == "edge"
                # Stream ids count from 1: the one past the cap is CAP + 1.
                else f"edge: refused stream {CAP + 1}: too many streams (8): OPEN refused"
            )
            assert expected in caplog.messages, caplog.messages
            # The others are untouched, and once one closes a new stream opens.
            for i, (r, w) in enumerate(clients):
                assert await _echoes(r, w, b"still %d\n" % i)
            _, w0 = clients.pop()
            w0.close()
            await w0.wait_closed()
            for _ in range(100):
                if len(st.agent.streams) < CAP and edge_link.mux.stream_count < CAP:
                    break
                await asyncio.sleep(0.02)
            again = await _client(st)
            assert await _echoes(*again, b"a new one\n")
            for _, w in (*clients, extra, again):
                w.close()
    finally:
        target.close()


UNKNOWN = 77  # a tunnel the agent does not serve: each OPEN is answered with a RESET


class FloodingEdge(asyncio.Protocol):
    """A stand-in edge on the library's own Sans-I/O server: after the handshake it
    sends OPENs and reads nothing until told to; then it counts the answers."""

    def __init__(self, ready: asyncio.Future[FloodingEdge]) -> None:
        self.ws = ServerProtocol(max_size=2**21)
        self.ready = ready
        self.transport: asyncio.Transport | None = None
        self.sent = 0
        self.answered = 0
        self.all_answered = asyncio.Event()

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def data_received(self, data: bytes) -> None:
        assert self.transport is not None
        self.ws.receive_data(data)
        for event in self.ws.events_received():
            if isinstance(event, Request):
                self.ws.send_response(self.ws.accept(event))
                self.ws.send_binary(F.encode_control(hello(64 * 1024, edge="flood")))
                if not self.ready.done():
                    self.ready.set_result(self)
            elif isinstance(event, Frame) and event.opcode is Opcode.BINARY:
                if F.parse_frame(event.data).type is FrameType.RESET:
                    self.answered += 1
                    if self.answered == self.sent:
                        self.all_answered.set()
        self.transport.write(b"".join(self.ws.data_to_send()))

    def send_opens(self, n: int) -> None:
        assert self.transport is not None
        for sid in range(self.sent + 1, self.sent + n + 1):
            self.ws.send_binary(F.encode_open(sid, UNKNOWN, f"203.0.113.9:{sid % 65536}"))
        self.sent += n
        self.transport.write(b"".join(self.ws.data_to_send()))


class FakeControl:
    async def tunnels(self) -> list[TunnelTarget]:
        return [TunnelTarget(1, "db", "127.0.0.1", 9)]


async def test_a_peer_that_sends_opens_and_never_reads_cannot_grow_the_answers_without_bound(
    tmp_path: Path, caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The keepalive would close the link of a peer that never reads (its pongs are not
    # read either): kept out of the way here, where the peer reads again in the end.
    monkeypatch.setattr(
        "entryguard.agent.tunnel.link_options",
        lambda: link_options(ping_interval=120, ping_timeout=120),
    )
    caplog.set_level(logging.ERROR, logger="entryguard.agent")  # a refusal per OPEN
    caplog.set_level(logging.INFO, logger="entryguard.relay")
    loop = asyncio.get_running_loop()
    ready: asyncio.Future[FloodingEdge] = loop.create_future()
    # A small receive buffer on the stand-in's side: the agent's writes back up sooner.
    sock = socket.socket()
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 32 * 1024)
    sock.bind(("127.0.0.1", 0))
    server = await loop.create_server(functools.partial(FloodingEdge, ready), sock=sock)
    cfg = parse_config(
        {
            "server": {"url": "http://127.0.0.1:9", "api_key": "eg_test_flood"},
            "agent": {"name": "flood"},
            "tunnel": {
                "enabled": True,
                "edge_url": f"ws://127.0.0.1:{server.sockets[0].getsockname()[1]}",
            },
        },
        tmp_path / "agent.yml",
    )
    agent = TunnelClient(cfg, FakeControl())  # type: ignore[arg-type]
    task = asyncio.create_task(agent.run())
    try:
        edge = await asyncio.wait_for(ready, 10)
        await asyncio.wait_for(agent.connected.wait(), 10)
        assert edge.transport is not None and agent.link is not None
        link = agent.link
        edge.transport.pause_reading()  # from here on the stand-in reads nothing
        started = time.monotonic()
        # Flood until the agent stops taking our bytes: they pile up on our side.
        backlog_seen = 0
        for _ in range(2000):
            if link.reading_held:
                break
            edge.send_opens(2000)
            await asyncio.sleep(0.005)
            backlog_seen = max(backlog_seen, link.mux.control_backlog)
        else:
            raise AssertionError(f"the agent kept reading ({edge.sent} OPENs sent)")
        # Reading stays paused however much more comes: the answers do not grow.
        for _ in range(20):
            edge.send_opens(2000)
            await asyncio.sleep(0.02)
            backlog_seen = max(backlog_seen, link.mux.control_backlog)
        assert link.reading_held
        assert link.ws.transport is not None
        held = link.mux.control_backlog + link.ws.transport.get_write_buffer_size()
        # One socket read's answers past the threshold, at most (256 KiB of OPENs).
        assert backlog_seen <= 2 * CONTROL_BACKLOG, backlog_seen
        assert held <= 2 * CONTROL_BACKLOG + 2 * link.ws.options.write_limit, held
        assert any("reading the link paused" in m for m in caplog.messages)
        print(
            f"\n{edge.sent} OPENs sent in {time.monotonic() - started:.1f} s; the agent's "
            "queued answers peaked at "
            f"{backlog_seen / 1024:.0f} KiB (held: {held / 1024:.0f} KiB)"
        )

        # The stand-in reads again: the link survives and every OPEN is answered.
        edge.transport.resume_reading()
        await asyncio.wait_for(edge.all_answered.wait(), 60)
        assert not link.reading_held and not link.closed.is_set()
        assert any("reads again" in m for m in caplog.messages)
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
        server.close()
