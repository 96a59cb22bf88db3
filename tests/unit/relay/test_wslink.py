"""The link's own WebSocket (``wslink``) over in-memory transports: keepalive on its own
timer, reading paused only between the handshake and attach, writing stopped while the
transport pushes back, and the handshake deadline."""

from __future__ import annotations

import asyncio
from typing import Any

from websockets.datastructures import Headers
from websockets.http11 import Response

from entryguard.mux import MuxConnection
from entryguard.relay.link import MuxLink
from entryguard.relay.wslink import ClientLink, ServerLink, WsLink
from entryguard.relay.wsoptions import LinkOptions
from tests.unit.relay.pair import Wire


class Transport(Wire):
    """A ``Wire`` that records reading pauses, aborts and closes."""

    def __init__(self) -> None:
        super().__init__()
        self.reading = True
        self.aborted = False
        self.closed = False

    def pause_reading(self) -> None:
        self.reading = False

    def resume_reading(self) -> None:
        self.reading = True

    def abort(self) -> None:
        self.aborted = True

    def close(self) -> None:
        self.closed = True


class Pair:
    def __init__(self, options: LinkOptions) -> None:
        self.agent: WsLink = ClientLink("ws://edge.test/agent/connect", options, ())
        self.edge: WsLink = ServerLink(options)
        self.to_edge, self.to_agent = Transport(), Transport()
        self.agent.connection_made(self.to_edge)  # type: ignore[arg-type]
        self.edge.connection_made(self.to_agent)  # type: ignore[arg-type]

    def pump(self, *, to_agent: bool = True, to_edge: bool = True) -> None:
        for _ in range(100):
            a, self.to_agent.out = (self.to_agent.out, []) if to_agent else ([], self.to_agent.out)
            e, self.to_edge.out = (self.to_edge.out, []) if to_edge else ([], self.to_edge.out)
            if not a and not e:
                return
            for m in a:
                self.agent.data_received(m)
            for m in e:
                self.edge.data_received(m)


def quiet(**kw: Any) -> LinkOptions:
    return LinkOptions(**{"ping_interval": None, "ping_timeout": None, **kw})


async def test_reading_pauses_from_the_handshake_until_attach_and_nothing_is_lost() -> None:
    pair = Pair(quiet())
    pair.pump()
    assert pair.agent.is_open and pair.edge.is_open
    assert not pair.to_edge.reading and not pair.to_agent.reading  # nobody takes messages yet
    pair.edge.write_messages([b"early"])
    pair.pump()  # arrives anyway (a read already under way): kept for attach
    got: list[bytes] = []
    pair.agent.attach(lambda m: got.append(bytes(m)), lambda: None)
    assert got == [b"early"] and pair.to_edge.reading


async def test_keepalive_pings_are_answered_and_a_missing_pong_fails_the_link() -> None:
    pair = Pair(quiet(ping_interval=0.05, ping_timeout=0.5))
    pair.pump()
    for link in (pair.agent, pair.edge):
        link.attach(lambda _m: None, lambda: None)
    for _ in range(5):  # pings both ways, answered by the library's pongs
        await asyncio.sleep(0.03)
        pair.pump()
    assert pair.agent.is_open and pair.edge.is_open
    assert not pair.to_edge.aborted and not pair.to_agent.aborted
    # The agent stops hearing from the edge: its next ping goes unanswered.
    await asyncio.sleep(0.1)
    pair.pump(to_agent=False)  # the agent's ping is sent, its pong never delivered
    await asyncio.sleep(0.7)
    assert pair.to_edge.aborted, "the agent kept a link whose peer stopped answering"
    assert not pair.agent.is_open
    pair.agent.connection_lost(None)
    sent = pair.agent.protocol.close_exc.sent  # the close frame it sent on its way out
    assert sent is not None and sent.code == 1011 and "keepalive" in sent.reason


async def test_writing_stops_while_the_transport_pushes_back_and_resumes_after() -> None:
    pair = Pair(quiet())
    pair.pump()
    mux = MuxConnection("edge")
    link = MuxLink(pair.edge, mux, "agent")
    task = asyncio.create_task(link.run())
    await asyncio.sleep(0)
    pair.to_agent.out.clear()
    pair.edge.pause_writing()
    mux.send_control({"type": "targets_changed"})
    link.kick()
    assert pair.to_agent.out == [], "wrote while the transport pushed back"
    pair.edge.resume_writing()
    assert len(pair.to_agent.out) == 1
    task.cancel()


async def test_a_handshake_not_done_in_time_is_dropped() -> None:
    edge = ServerLink(quiet(open_timeout=0.05))
    transport = Transport()
    edge.connection_made(transport)  # type: ignore[arg-type]
    edge.data_received(b"GET /agent/connect HTTP/1.1\r\nHost: x\r\n")  # never finished
    await asyncio.sleep(0.15)
    assert transport.aborted


async def test_a_plain_http_request_gets_the_answer_of_process_request_and_eof() -> None:
    def answer(_link: ServerLink, request: Any) -> Response:
        body = f'{{"path": "{request.path}"}}'.encode()
        return Response(200, "OK", Headers([("Content-Length", str(len(body)))]), body)

    edge = ServerLink(quiet(), process_request=answer)
    transport = Transport()
    eofs: list[bool] = []
    transport.write_eof = lambda: eofs.append(True)  # type: ignore[method-assign]
    edge.connection_made(transport)  # type: ignore[arg-type]
    edge.data_received(b"GET /health HTTP/1.1\r\nHost: x\r\n\r\n")
    reply = b"".join(transport.out)
    assert reply.startswith(b"HTTP/1.1 200 OK\r\n") and reply.endswith(b'{"path": "/health"}')
    assert eofs == [True] and not edge.is_open


async def test_a_link_that_ends_before_attach_drops_what_it_kept() -> None:
    pair = Pair(quiet())
    pair.pump()
    pair.edge.write_messages([b"early"])
    pair.pump()
    pair.agent.eof_received()  # the edge went away before the mux took the link
    got: list[bytes] = []
    pair.agent.attach(lambda m: got.append(bytes(m)), lambda: None)
    assert got == [] and not pair.agent.is_open
