"""No stalls at link open (issue 12): a stand-in edge answers a real agent's handshake
and, in the same write, sends 10,000 OPENs. Every one is answered (OPENED or RESET),
in every one of 20 runs. With the library's message queue in the path, a burst like
this paused the transport and the link went silent after 75-275 answers."""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
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
from tests.conftest import require_tool

OPENS = 10_000
RUNS = 20
SERVED = 1  # the one tunnel the agent serves; every 50th OPEN names it, the rest do not
UNKNOWN = 77


class StandInEdge(asyncio.Protocol):
    """Speaks the mux over the library's own Sans-I/O server (the oracle, not our link
    code): hello and the burst go out with the 101, then it records the answers."""

    def __init__(self, burst: list[bytes], done: asyncio.Future[dict[int, FrameType]]) -> None:
        self.ws = ServerProtocol(max_size=2**21)
        self.burst = burst
        self.done = done
        self.answers: dict[int, FrameType] = {}
        self.transport: asyncio.Transport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def data_received(self, data: bytes) -> None:
        assert self.transport is not None
        self.ws.receive_data(data)
        for event in self.ws.events_received():
            if isinstance(event, Request):
                self.ws.send_response(self.ws.accept(event))
                self.ws.send_binary(F.encode_control(hello(1024 * 1024, edge="stand-in")))
                for message in self.burst:
                    self.ws.send_binary(message)
            elif isinstance(event, Frame) and event.opcode is Opcode.BINARY:
                frame = F.parse_frame(event.data)
                if frame.type in (FrameType.OPENED, FrameType.RESET):
                    assert frame.stream_id not in self.answers, "answered twice"
                    self.answers[frame.stream_id] = frame.type
                    if len(self.answers) == len(self.burst) and not self.done.done():
                        self.done.set_result(dict(self.answers))
        # One write: the 101, the hello and the whole burst arrive together.
        out = self.ws.data_to_send()
        self.transport.write(b"".join(out))
        if b"" in out:  # the library's EOF: the closing handshake is done
            self.transport.close()

    def connection_lost(self, exc: Exception | None) -> None:
        if not self.done.done():
            self.done.set_exception(ConnectionError(f"link lost after {len(self.answers)}"))


class FakeControl:
    def __init__(self, target_port: int) -> None:
        self.target_port = target_port

    async def tunnels(self) -> list[TunnelTarget]:
        return [TunnelTarget(SERVED, "db", "127.0.0.1", self.target_port)]


@pytest.mark.parametrize("loop", ["asyncio", "uvloop"])
def test_ten_thousand_opens_at_link_open_are_all_answered_in_twenty_runs(
    tmp_path: Path, caplog: pytest.LogCaptureFixture, loop: str
) -> None:
    """On asyncio's loop and on uvloop (what the agent runs on)."""
    caplog.set_level(logging.ERROR, logger="entryguard.agent")  # 9,800 refusals a run
    if loop == "uvloop":
        require_tool("uvloop", module=True)
        import uvloop

        uvloop.run(_bursts(tmp_path))
    else:
        asyncio.run(_bursts(tmp_path))


async def _bursts(tmp_path: Path) -> None:
    held: list[asyncio.StreamWriter] = []

    async def accept(_r: asyncio.StreamReader, w: asyncio.StreamWriter) -> None:
        held.append(w)

    target = await asyncio.start_server(accept, "127.0.0.1", 0, backlog=1024)  # no SYN dropped
    tport = target.sockets[0].getsockname()[1]
    burst = [
        F.encode_open(sid, SERVED if sid % 50 == 0 else UNKNOWN, f"203.0.113.9:{sid}")
        for sid in range(1, OPENS + 1)
    ]
    loop = asyncio.get_running_loop()
    try:
        for run in range(RUNS):
            done: asyncio.Future[dict[int, FrameType]] = loop.create_future()
            edge = await loop.create_server(
                functools.partial(StandInEdge, burst, done), "127.0.0.1", 0
            )
            cfg = parse_config(
                {
                    "server": {"url": "http://127.0.0.1:9", "api_key": "eg_test_burst"},
                    "agent": {"name": "burst"},
                    "tunnel": {
                        "enabled": True,
                        "edge_url": f"ws://127.0.0.1:{edge.sockets[0].getsockname()[1]}",
                    },
                },
                tmp_path / "agent.yml",
            )
            client = TunnelClient(cfg, FakeControl(tport))  # type: ignore[arg-type]
            task = asyncio.create_task(client.run())
            try:
                answers = await asyncio.wait_for(done, 20)
            finally:
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await task
                edge.close()
                for w in held:
                    w.close()
                held.clear()
            assert len(answers) == OPENS, f"run {run}: {len(answers)} answered"
            opened = [sid for sid, kind in answers.items() if kind is FrameType.OPENED]
            assert sorted(opened) == list(range(50, OPENS + 1, 50)), f"run {run}"
    finally:
        target.close()
