"""Python cost of relaying one small message, without sockets.

    .venv/bin/python bench/relay_micro.py [--messages 10000] [--rounds 5] [--size 64]

The real classes (the link's own WebSocket ``WsLink``, MuxLink, the mux, SocketStream) on both ends of one stream, with in-memory transports: what the edge and
the agent spend in Python for each of the four traversals of a round trip. System
calls, wake-ups and cold caches are not in it: compare it with itself across commits,
not with the loopback figures of tunnel_bench.py. Prints the median of the rounds.
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import sys
import time
from pathlib import Path
from typing import Any

if __package__ in (None, ""):
    sys.path[0] = str(Path(__file__).resolve().parents[1])

from entryguard.mux import MuxConnection
from entryguard.relay.link import MuxLink
from entryguard.relay.stream import SocketStream
from entryguard.relay.wslink import ClientLink, ServerLink
from entryguard.relay.wsoptions import LinkOptions


class MemoryTransport:
    """Takes writes into a list; enough of the transport interface for the relay."""

    def __init__(self) -> None:
        self.out: list[bytes] = []

    def write(self, data: Any) -> None:
        self.out.append(bytes(data))

    def writelines(self, chunks: Any) -> None:
        self.out.append(b"".join(chunks))

    def is_closing(self) -> bool:
        return False

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

    def can_write_eof(self) -> bool:
        return True

    def write_eof(self) -> None:
        pass

    def abort(self) -> None:
        pass

    def close(self) -> None:
        pass


async def measure(n: int, size: int) -> dict[str, float]:
    options = LinkOptions(ping_interval=None, ping_timeout=None)
    agent_ws = ClientLink("ws://edge/agent/connect", options, ())
    edge_ws = ServerLink(options)
    to_edge, to_agent = MemoryTransport(), MemoryTransport()
    agent_ws.connection_made(to_edge)  # type: ignore[arg-type]
    edge_ws.connection_made(to_agent)  # type: ignore[arg-type]

    def deliver(src: MemoryTransport, dst: Any) -> None:
        msgs, src.out[:] = list(src.out), []
        for m in msgs:
            dst.data_received(m)

    deliver(to_edge, edge_ws)  # the opening handshake
    deliver(to_agent, agent_ws)
    alink = MuxLink(agent_ws, MuxConnection("agent"), "edge")
    elink = MuxLink(edge_ws, MuxConnection("edge"), "agent")
    alink.attach()
    elink.attach()
    opens: list[int] = []
    alink._on_open = lambda sid, _ev: opens.append(sid)

    sid = elink.mux.open_stream(1, "127.0.0.2:1", 0.0)
    elink.kick()
    deliver(to_agent, agent_ws)
    at_agent = SocketStream(alink, opens[0])
    alink.register(opens[0], at_agent)
    target = MemoryTransport()
    at_agent.connection_made(target)  # type: ignore[arg-type]
    alink.mux.send_opened(opens[0])
    alink.kick()
    deliver(to_edge, edge_ws)
    at_edge = SocketStream(elink, sid)
    elink.register(sid, at_edge)
    client = MemoryTransport()
    at_edge.connection_made(client)  # type: ignore[arg-type]
    payload = b"x" * size
    for _ in range(1000):  # warm up, credit flowing both ways
        at_edge.data_received(payload)
        deliver(to_agent, agent_ws)
        at_agent.data_received(payload)
        deliver(to_edge, edge_ws)
    target.out.clear()
    client.out.clear()
    # n messages stay within one window, so no credit is needed during a phase.
    t0 = time.perf_counter()
    for _ in range(n):
        at_edge.data_received(payload)
        to_agent.out.clear()
    t1 = time.perf_counter()
    at_edge.data_received(payload)
    frame_to_agent = to_agent.out.pop()
    t2 = time.perf_counter()
    for _ in range(n):
        agent_ws.data_received(frame_to_agent)
        target.out.clear()
    t3 = time.perf_counter()
    for _ in range(n):
        at_agent.data_received(payload)
        to_edge.out.clear()
    t4 = time.perf_counter()
    at_agent.data_received(payload)
    frame_to_edge = to_edge.out.pop()
    t5 = time.perf_counter()
    for _ in range(n):
        edge_ws.data_received(frame_to_edge)
        client.out.clear()
    t6 = time.perf_counter()

    def us(a: float, b: float) -> float:
        return (b - a) / n * 1e6

    parts = {
        "edge: client socket -> link": us(t0, t1),
        "agent: link -> target socket": us(t2, t3),
        "agent: target socket -> link": us(t3, t4),
        "edge: link -> client socket": us(t5, t6),
    }
    parts["round trip"] = sum(parts.values())
    return parts


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--messages", type=int, default=10_000, help="per phase (window-bound)")
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--size", type=int, default=64)
    args = ap.parse_args()
    if args.messages * args.size > 1024 * 1024:
        ap.error("--messages × --size must fit in one 1 MiB stream window")
    try:
        import uvloop

        run: Any = uvloop.run
    except ImportError:
        run = asyncio.run
    rounds = [run(measure(args.messages, args.size)) for _ in range(args.rounds)]
    print(f"{args.size}-byte messages, median of {args.rounds} rounds of {args.messages:,}")
    for key in rounds[0]:
        print(f"  {key:<30} {statistics.median(r[key] for r in rounds):6.2f} µs")


if __name__ == "__main__":
    main()
