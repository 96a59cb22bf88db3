"""SocketStream at both ends of one stream: fake sockets, the real links and mux between."""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass

from hypothesis import given, settings
from hypothesis import strategies as st

from entryguard.mux import ResetCode
from entryguard.relay.stream import WRITE_HIGH_WATER, RelayState, SocketStream
from tests.unit.relay.pair import FakeSocket, LinkPair, Tracked, link_pair

W = 4096  # small windows, so a few KiB exercise flow control


def state(stream: SocketStream) -> RelayState:
    return stream.state  # read afresh: each call may have moved it


@dataclass
class Ends:
    pair: LinkPair
    at_edge: Tracked
    client: FakeSocket
    at_agent: Tracked
    target: FakeSocket

    def dial(self) -> None:
        """What the agent does once its target answers (``TargetStream``)."""
        self.at_agent.connection_made(self.target)  # type: ignore[arg-type]
        self.pair.agent.mux.send_opened(self.at_agent.stream_id)
        self.pair.agent.kick()
        self.at_agent.attach()
        self.pair.pump()


def connect(pair: LinkPair, *, dial: bool = True) -> Ends:
    sid = pair.edge.mux.open_stream(1, "203.0.113.7:50000", time.monotonic())
    at_edge = Tracked(pair.edge, sid)
    pair.edge.register(sid, at_edge)
    client = FakeSocket()
    at_edge.connection_made(client)  # type: ignore[arg-type]
    pair.edge.kick()
    pair.pump()
    [opened] = pair.opened
    at_agent = Tracked(pair.agent, opened.stream_id)
    pair.agent.register(opened.stream_id, at_agent)
    ends = Ends(pair, at_edge, client, at_agent, FakeSocket(("10.0.0.5", 5432)))
    if dial:
        ends.dial()
    return ends


async def test_bytes_cross_both_ways_and_credit_keeps_the_sockets_reading() -> None:
    async with link_pair(window=W) as pair:
        e = connect(pair)
        assert e.client.high_water == WRITE_HIGH_WATER
        up = [bytes([i]) * 1000 for i in range(10)]  # 10 kB through a 4 KiB window
        for chunk in up:
            e.at_edge.data_received(chunk)
            pair.pump()
            e.at_agent.data_received(chunk[::-1])
            pair.pump()
        assert e.target.data == b"".join(up)
        assert e.client.data == b"".join(c[::-1] for c in up)
        assert e.client.pauses == e.target.pauses == 0
        assert (e.at_edge.bytes_up, e.at_edge.bytes_down) == (10_000, 10_000)
        assert state(e.at_edge) is state(e.at_agent) is RelayState.OPEN


async def test_a_full_window_pauses_reading_until_credit_comes_back() -> None:
    async with link_pair(window=W) as pair:
        e = connect(pair)
        e.at_edge.data_received(b"a" * 3000)
        e.at_edge.data_received(b"b" * 3000)  # 1096 bytes over the window
        assert not e.client.reading
        assert e.client.pauses == 1
        pair.pump()  # DATA, credit from the agent, the rest, its credit
        assert e.target.data == b"a" * 3000 + b"b" * 3000
        assert e.client.reading


async def test_a_stalled_socket_holds_back_credit_until_it_drains() -> None:
    async with link_pair(window=W) as pair:
        e = connect(pair)
        e.at_agent.pause_writing()  # the target's kernel buffer is full
        e.at_edge.data_received(b"x" * W)
        pair.pump()
        assert e.target.data == b"x" * W  # handed to the transport, which buffers it
        e.at_edge.data_received(b"y" * 100)
        pair.pump()
        assert not e.client.reading  # no credit came back: the client waits
        assert e.target.data == b"x" * W
        e.at_agent.resume_writing()
        pair.pump()
        assert e.target.data == b"x" * W + b"y" * 100
        assert e.client.reading


async def test_half_close_each_way_then_both_sockets_close_without_a_reset() -> None:
    async with link_pair(window=W) as pair:
        e = connect(pair)
        assert e.at_edge.eof_received() is True  # keep the way back open
        assert state(e.at_edge) is RelayState.HALF_CLOSED_LOCAL
        pair.pump()
        assert e.target.eof_written
        assert state(e.at_agent) is RelayState.HALF_CLOSED_REMOTE
        e.at_agent.data_received(b"the answer")  # the target still talks
        e.at_agent.eof_received()
        assert state(e.at_agent) is RelayState.CLOSED
        assert e.target.closed and not e.target.aborted
        pair.pump()
        assert e.client.data == b"the answer" and e.client.eof_written
        assert state(e.at_edge) is RelayState.CLOSED
        assert e.client.closed and not e.client.aborted
        assert pair.edge.streams == pair.agent.streams == {}
        # The transports then report the close: nothing more goes on the link.
        e.at_edge.connection_lost(None)
        e.at_agent.connection_lost(None)
        assert pair.to_agent.out == pair.to_edge.out == []
        assert e.at_edge.reset_by_peer is e.at_agent.reset_by_peer is None
        assert e.at_edge.closed_calls == e.at_agent.closed_calls == 1


async def test_the_peer_finishing_first_closes_once_the_socket_ends_too() -> None:
    async with link_pair(window=W) as pair:
        e = connect(pair)
        e.at_agent.eof_received()
        pair.pump()
        assert e.client.eof_written
        assert state(e.at_edge) is RelayState.HALF_CLOSED_REMOTE
        e.at_edge.data_received(b"last words")
        e.at_edge.eof_received()
        assert state(e.at_edge) is RelayState.CLOSED and e.client.closed
        pair.pump()
        assert e.target.data == b"last words" and e.target.closed
        assert state(e.at_agent) is RelayState.CLOSED


async def test_fin_waits_behind_the_bytes_the_window_holds_back() -> None:
    async with link_pair(window=W) as pair:
        e = connect(pair)
        e.at_edge.data_received(b"z" * (W + 500))
        e.at_edge.eof_received()
        assert state(e.at_edge) is RelayState.OPEN  # FIN owed, after 500 bytes
        pair.pump()
        assert e.target.data == b"z" * (W + 500)
        assert e.target.eof_written  # FakeSocket fails a write after the EOF
        assert state(e.at_edge) is RelayState.HALF_CLOSED_LOCAL


async def test_data_and_fin_that_come_while_dialling_reach_the_socket_once_it_exists() -> None:
    async with link_pair(window=W) as pair:
        e = connect(pair, dial=False)
        e.at_edge.data_received(b"SELECT 1;")  # early data, before OPENED
        e.at_edge.eof_received()
        pair.pump()
        assert state(e.at_agent) is RelayState.HALF_CLOSED_REMOTE
        assert e.target.writes == [] and not e.target.eof_written
        e.dial()
        assert e.target.data == b"SELECT 1;" and e.target.eof_written
        e.at_agent.data_received(b"1")
        e.at_agent.eof_received()
        pair.pump()
        assert e.client.data == b"1"
        assert state(e.at_edge) is state(e.at_agent) is RelayState.CLOSED


async def test_a_socket_lost_before_an_orderly_close_resets_the_stream() -> None:
    async with link_pair(window=W) as pair:
        e = connect(pair)
        e.at_edge.eof_received()  # half-closed is not closed: still a reset
        e.at_edge.connection_lost(None)
        assert state(e.at_edge) is RelayState.CLOSED and e.at_edge.closed_calls == 1
        pair.pump()
        assert e.at_agent.reset_by_peer == (ResetCode.REFUSED, "connection closed")
        assert e.target.aborted and state(e.at_agent) is RelayState.CLOSED
        assert e.at_agent.closed_calls == 1
        assert pair.edge.streams == pair.agent.streams == {}


async def test_a_socket_lost_with_an_error_says_so_in_the_reset() -> None:
    async with link_pair(window=W) as pair:
        e = connect(pair)
        e.at_agent.connection_lost(ConnectionResetError("reset by target"))
        pair.pump()
        assert e.at_edge.reset_by_peer == (
            ResetCode.UNREACHABLE,
            "connection lost: reset by target",
        )
        assert e.client.aborted


async def test_abort_cuts_both_sides_once_and_later_bytes_are_dropped() -> None:
    async with link_pair(window=W) as pair:
        e = connect(pair)
        e.at_agent.abort(ResetCode.NOT_ALLOWED, "target outside the allowed networks")
        e.at_agent.abort(ResetCode.INTERNAL, "again")
        assert e.target.aborted and e.at_agent.closed_calls == 1
        pair.pump()
        assert e.at_edge.reset_by_peer == (
            ResetCode.NOT_ALLOWED,
            "target outside the allowed networks",
        )
        assert e.client.aborted and e.at_edge.closed_calls == 1
        e.at_edge.data_received(b"too late")
        e.at_edge.eof_received()
        e.at_edge.connection_lost(None)
        assert pair.to_agent.out == []
        assert e.at_edge.bytes_up == 0 and e.at_edge.closed_calls == 1


@settings(max_examples=40, deadline=None)
@given(
    chunks=st.lists(st.integers(1, 3 * W), min_size=1, max_size=12),
    stalls=st.lists(st.booleans(), min_size=12, max_size=12),
)
def test_any_split_and_any_stalls_deliver_every_byte_in_order(
    chunks: list[int], stalls: list[bool]
) -> None:
    async def scenario() -> None:
        async with link_pair(window=W) as pair:
            e = connect(pair)
            sent = b""
            for i, n in enumerate(chunks):
                chunk = bytes([i % 251]) * n
                sent += chunk
                if stalls[i]:
                    e.at_agent.pause_writing()
                e.at_edge.data_received(chunk)
                pair.pump()
                e.at_agent.resume_writing()
                pair.pump()
            e.at_edge.eof_received()
            pair.pump()
            assert e.target.data == sent and e.target.eof_written
            assert e.client.reading and e.at_edge.bytes_up == len(sent)

    asyncio.run(scenario())
