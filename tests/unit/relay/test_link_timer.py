"""The link arms the mux's OPEN timeout with call_at for the next one due, instead of
waking every second: an OPEN the agent never answers is reset as a timeout on time,
and an idle link holds no timer at all."""

from __future__ import annotations

import asyncio

from entryguard.mux import ResetCode
from tests.unit.relay.pair import FakeSocket, Tracked, link_pair


async def test_an_unanswered_open_is_reset_at_its_deadline_and_an_idle_link_has_no_timer() -> None:
    async with link_pair(open_timeout=0.3) as pair:
        assert pair.edge._timer_handle is None
        loop = asyncio.get_running_loop()
        sid = pair.edge.open_stream(1, "203.0.113.7:50000")
        handle = pair.edge._timer_handle
        assert handle is not None and abs(handle.when() - (loop.time() + 0.3)) < 0.1
        at_edge = Tracked(pair.edge, sid)
        pair.edge.register(sid, at_edge)
        client = FakeSocket()
        at_edge.connection_made(client)  # type: ignore[arg-type]
        pair.edge.kick()
        pair.pump()
        assert [o.stream_id for o in pair.opened] == [sid]  # the agent got it, never answers

        t0 = loop.time()
        for _ in range(100):
            if client.aborted:
                break
            await asyncio.sleep(0.01)
        assert client.aborted, "the unanswered OPEN was never reset"
        assert 0.15 < loop.time() - t0 < 0.6
        assert at_edge.reset_by_peer is not None
        assert at_edge.reset_by_peer[0] == int(ResetCode.TIMEOUT)
        assert pair.edge._timer_handle is None, "no OPEN waits: nothing should stay armed"
