"""Admission on a tunnel port: decided in connection_made, before a byte either way.

The edge, its allowlist and the links are real; the client's TCP transport is a fake
(``FakeSocket``) holding a real, unconnected socket so the SO_LINGER reset is checked.
"""

from __future__ import annotations

import ipaddress
import logging
import socket
import struct
from collections.abc import AsyncIterator, Iterator

import pytest

from entryguard.edge.listeners import Admission, ClientStream
from entryguard.edge.service import Edge
from entryguard.edge.state import Tunnel
from entryguard.mux import ResetCode
from entryguard.net.allowlist import AllowList, Entry
from tests.unit.relay.pair import CLIENT, FakeSocket, LinkPair, Tracked, link_pair

AGENT_KEY = 3


@pytest.fixture
async def edge() -> AsyncIterator[Edge]:
    edge = Edge("http://127.0.0.1:9/", "eg_edge_unused")  # never started: nothing dialled
    yield edge
    await edge.follower.close()


@pytest.fixture
def tunnel() -> Tunnel:
    grant = Entry("g1", ipaddress.ip_network("203.0.113.0/24"), expires_at=None)
    return Tunnel(id=1, name="db", port=41000, agent_key_id=AGENT_KEY, allow=AllowList([grant]))


@pytest.fixture
def sock() -> Iterator[socket.socket]:
    with socket.socket() as s:
        yield s


def reset_with_rst(t: FakeSocket) -> bool:
    sock: socket.socket = t.extra["socket"]
    linger = struct.unpack("ii", sock.getsockopt(socket.SOL_SOCKET, socket.SO_LINGER, 8))
    return t.aborted and linger == (1, 0)


def assert_refused(t: FakeSocket, pair: LinkPair | None) -> None:
    assert reset_with_rst(t)
    assert t.writes == [] and not t.eof_written and t.high_water is None
    assert t.protocol is None  # no relay object was ever built
    if pair is not None:
        pair.pump()
        assert pair.opened == [] and pair.edge.mux.stream_count == 0


async def test_an_ip_no_grant_covers_is_reset_without_a_byte(
    edge: Edge, tunnel: Tunnel, sock: socket.socket, caplog: pytest.LogCaptureFixture
) -> None:
    async with link_pair() as pair:
        edge.links[AGENT_KEY] = pair.edge
        t = FakeSocket(("198.51.100.9", 40000), sock)
        with caplog.at_level(logging.INFO, "entryguard.edge"):
            Admission(edge, tunnel).connection_made(t)  # type: ignore[arg-type]
        assert_refused(t, pair)
        assert edge.metrics.rejections_total == 1 and edge.metrics.connections_total == 0
        assert edge.conns == {}
        assert caplog.messages == [
            "rejected 198.51.100.9 on db (port 41000): no grant covers this IP"
        ]


async def test_an_expired_grant_admits_no_one(edge: Edge, sock: socket.socket) -> None:
    grant = Entry("g1", ipaddress.ip_network("203.0.113.0/24"), expires_at=1.0)
    tunnel = Tunnel(1, "db", 41000, AGENT_KEY, AllowList([grant]))
    async with link_pair() as pair:
        edge.links[AGENT_KEY] = pair.edge
        t = FakeSocket(CLIENT, sock)
        Admission(edge, tunnel).connection_made(t)  # type: ignore[arg-type]
        assert_refused(t, pair)
        assert edge.metrics.rejections_total == 1


async def test_a_covered_ip_is_reset_while_its_agent_is_away(
    edge: Edge, tunnel: Tunnel, sock: socket.socket, caplog: pytest.LogCaptureFixture
) -> None:
    t = FakeSocket(CLIENT, sock)
    with caplog.at_level(logging.INFO, "entryguard.edge"):
        Admission(edge, tunnel).connection_made(t)  # type: ignore[arg-type]
    assert_refused(t, None)
    assert edge.metrics.rejections_total == 1
    assert caplog.messages == ["reset 203.0.113.7 on db: its agent is not connected"]


async def test_a_stream_the_mux_will_not_open_is_reset(
    edge: Edge, tunnel: Tunnel, sock: socket.socket, caplog: pytest.LogCaptureFixture
) -> None:
    async with link_pair(max_streams=0) as pair:
        edge.links[AGENT_KEY] = pair.edge
        t = FakeSocket(CLIENT, sock)
        with caplog.at_level(logging.INFO, "entryguard.edge"):
            Admission(edge, tunnel).connection_made(t)  # type: ignore[arg-type]
        assert_refused(t, pair)
        assert edge.metrics.rejections_total == 1
        assert caplog.messages == ["reset 203.0.113.7 on db: too many streams (0)"]


async def test_an_unparsable_peer_address_is_reset_and_not_counted(
    edge: Edge, tunnel: Tunnel, sock: socket.socket
) -> None:
    t = FakeSocket(("not-an-ip", 0), sock)
    Admission(edge, tunnel).connection_made(t)  # type: ignore[arg-type]
    assert_refused(t, None)
    assert edge.metrics.rejections_total == 0


async def test_an_admitted_connection_gets_a_stream_on_its_agents_link(
    edge: Edge, tunnel: Tunnel, sock: socket.socket
) -> None:
    async with link_pair() as pair:
        edge.links[AGENT_KEY] = pair.edge
        t = FakeSocket(("::ffff:203.0.113.7", 50000), sock)  # v4-mapped: normalised
        Admission(edge, tunnel).connection_made(t)  # type: ignore[arg-type]
        stream = t.protocol
        assert isinstance(stream, ClientStream)
        assert not t.aborted and t.high_water is not None
        assert (stream.ip, stream.port) == ("203.0.113.7", 50000)
        assert edge.conns == {tunnel.id: {stream}}
        assert edge.metrics.connections_total == 1 and edge.metrics.rejections_total == 0
        assert pair.edge.streams == {stream.stream_id: stream}
        # The OPEN went out in connection_made, before any client byte.
        assert pair.to_agent.out != []
        stream.data_received(b"hello")  # what the transport now calls
        pair.pump()
        [opened] = pair.opened
        assert (opened.stream_id, opened.tunnel_id) == (stream.stream_id, tunnel.id)
        assert opened.client_addr == "203.0.113.7:50000"
        assert pair.agent.mux.stream_count == 1


async def test_revoking_an_admitted_connection_resets_both_sides(
    edge: Edge, tunnel: Tunnel, sock: socket.socket, caplog: pytest.LogCaptureFixture
) -> None:
    async with link_pair() as pair:
        edge.links[AGENT_KEY] = pair.edge
        t = FakeSocket(CLIENT, sock)
        Admission(edge, tunnel).connection_made(t)  # type: ignore[arg-type]
        stream = t.protocol
        assert isinstance(stream, ClientStream)
        stream.data_received(b"x" * 10)
        pair.pump()
        [opened] = pair.opened
        at_agent = Tracked(pair.agent, opened.stream_id)
        pair.agent.register(opened.stream_id, at_agent)
        with caplog.at_level(logging.INFO, "entryguard.edge"):
            stream.revoke()
        assert reset_with_rst(t)
        assert edge.conns == {tunnel.id: set()}
        assert edge.metrics.revocations_total == 1
        assert edge.metrics.bytes_to_agent_total == 10
        assert caplog.messages == ["revoked 203.0.113.7 on db: access ended"]
        pair.pump()
        assert at_agent.reset_by_peer == (ResetCode.REVOKED, "access revoked")
