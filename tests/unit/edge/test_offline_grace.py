"""--offline-grace: without a confirmed change stream for longer than the grace, the
edge stops admitting session and guest grants and resets their connections; static
rules keep working; /health says fail-closed; the episode is queued for the audit."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from entryguard.clock import FakeClock
from entryguard.edge.service import Edge
from entryguard.net.allowlist import ip_of

START = datetime(2030, 1, 1, tzinfo=UTC)


def snapshot() -> dict[str, Any]:
    def grant(gid: int, cidr: str, source: str) -> dict[str, Any]:
        return {
            "id": gid,
            "resource_id": 1,
            "cidr": cidr,
            "source": source,
            "source_id": gid,
            "expires_at": None,
        }

    return {
        "revision": 1,
        "tunnels": [{"id": 1, "name": "db", "port": 41000, "agent_key_id": 3}],
        "agents": [],
        "grants": [
            grant(1, "203.0.113.7/32", "session"),
            grant(2, "203.0.113.8/32", "guest"),
            grant(3, "198.51.100.0/24", "rule"),
        ],
    }


class Conn:
    bytes_up = bytes_down = 0

    def __init__(self, ip: str) -> None:
        self.ip = ip
        self.revoked = False

    def revoke(self) -> None:
        self.revoked = True

    def abort(self, code: int, reason: str) -> None:
        self.revoked = True


async def test_fail_closed_after_the_grace_then_open_again_when_synced() -> None:
    clock = FakeClock(START)
    edge = Edge("http://127.0.0.1:9", "ege_x_y", clock=clock, offline_grace=120)
    edge.state.on_tunnel_added = lambda t: None  # no sockets here
    edge.state.load_snapshot(snapshot())
    edge.follower.last_contact = clock.time()  # synced once, then the control plane went
    session, guest, static = Conn("203.0.113.7"), Conn("203.0.113.8"), Conn("198.51.100.4")
    edge.conns[1] = {session, guest, static}  # type: ignore[arg-type]
    allow = edge.state.tunnels[1].allow

    clock.advance(119)
    edge.check_grace()
    assert not edge.fail_closed and not session.revoked
    assert edge.health()[1]["status"] != "fail-closed"

    clock.advance(2)
    edge.check_grace()
    assert edge.fail_closed
    assert session.revoked and guest.revoked and not static.revoked
    code, body = edge.health()
    assert code == 503 and body["status"] == "fail-closed"
    assert "entryguard_edge_fail_closed 1" in edge.metrics_text()
    # Admission follows the same rule: static rules only.
    assert allow.covers(ip_of("198.51.100.4"), clock.time(), static_only=edge.fail_closed)
    assert not allow.covers(ip_of("203.0.113.7"), clock.time(), static_only=edge.fail_closed)

    clock.advance(30)
    edge.follower._synced()  # the control plane answered and its state is applied
    assert not edge.fail_closed
    assert edge.follower.outbox == [
        {"type": "fail_closed", "since": START.timestamp() + 121, "until": START.timestamp() + 151}
    ]
    edge.conns.clear()
    await edge.close()


async def test_zero_grace_is_fail_static() -> None:
    clock = FakeClock(START)
    edge = Edge("http://127.0.0.1:9", "ege_x_y", clock=clock, offline_grace=0)
    edge.state.on_tunnel_added = lambda t: None
    edge.state.load_snapshot(snapshot())
    session = Conn("203.0.113.7")
    edge.conns[1] = {session}  # type: ignore[arg-type]
    clock.advance(10 * 24 * 3600)
    edge.check_grace()
    assert not edge.fail_closed and not session.revoked
    edge.conns.clear()
    await edge.close()
