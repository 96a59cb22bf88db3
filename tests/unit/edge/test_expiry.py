"""Grant expiry on the edge's own clock: a fake clock, no sleeps; the timer is armed for
the next due grant instead of ticking every second."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime, timedelta
from typing import Any

from entryguard.clock import FakeClock
from entryguard.edge.service import MAX_EXPIRY_SLEEP, Edge
from entryguard.net.allowlist import ip_of

START = datetime(2030, 1, 1, tzinfo=UTC)


def iso(dt: datetime) -> str:
    return dt.isoformat().replace("+00:00", "Z")


def snapshot(grants: list[tuple[int, str, datetime | None]]) -> dict[str, Any]:
    return {
        "revision": 1,
        "tunnels": [{"id": 1, "name": "db", "port": 41000, "agent_key_id": 3}],
        "agents": [],
        "grants": [
            {
                "id": gid,
                "resource_id": 1,
                "cidr": cidr,
                "source": "session",
                "source_id": gid,
                "expires_at": iso(exp) if exp else None,
            }
            for gid, cidr, exp in grants
        ],
    }


class Conn:
    """A live client connection as the edge sees it: an IP, and a way to be cut."""

    def __init__(self, ip: str) -> None:
        self.ip = ip
        self.revoked = False

    def revoke(self) -> None:
        self.revoked = True


def edge_with(grants: list[tuple[int, str, datetime | None]]) -> tuple[Edge, FakeClock]:
    clock = FakeClock(START)
    edge = Edge("http://127.0.0.1:9", "ege_x_y", clock=clock)
    edge.state.on_tunnel_added = lambda t: None  # no sockets in this test
    edge.state.load_snapshot(snapshot(grants))
    return edge, clock


async def test_a_session_grant_expires_on_the_fake_clock_and_its_connection_is_cut() -> None:
    edge, clock = edge_with(
        [(1, "203.0.113.7/32", START + timedelta(hours=4)), (2, "198.51.100.0/24", None)]
    )
    short, static = Conn("203.0.113.7"), Conn("198.51.100.9")
    edge.conns[1] = {short, static}  # type: ignore[arg-type]
    tunnel = edge.state.tunnels[1]

    clock.advance(4 * 3600 - 1)
    edge.expire_due()
    assert not short.revoked and tunnel.allow.covers(ip_of("203.0.113.7"), clock.time())

    clock.advance(1)
    edge.expire_due()
    assert short.revoked and not static.revoked
    assert not tunnel.allow.covers(ip_of("203.0.113.7"), clock.time())
    assert [e.grant_id for e in tunnel.allow.entries()] == ["2"]
    await edge.follower.close()


async def test_the_timer_is_armed_for_the_next_expiry_not_a_one_second_tick() -> None:
    edge, _clock = edge_with([(1, "203.0.113.7/32", START + timedelta(seconds=7.5))])
    loop = asyncio.get_running_loop()
    edge.expire_due()
    assert edge._expiry_timer is not None
    assert abs(edge._expiry_timer.when() - (loop.time() + 7.5)) < 0.5

    # Far away: capped, so a stepped wall clock cannot hold a cut back for long.
    edge2, _ = edge_with([(1, "203.0.113.7/32", START + timedelta(days=2))])
    edge2.expire_due()
    assert edge2._expiry_timer is not None
    assert abs(edge2._expiry_timer.when() - (loop.time() + MAX_EXPIRY_SLEEP)) < 0.5

    # Nothing expires: no timer at all.
    edge3, _ = edge_with([(1, "203.0.113.7/32", None)])
    edge3.expire_due()
    assert edge3._expiry_timer is None
    for e in (edge, edge2, edge3):
        await e.close()
