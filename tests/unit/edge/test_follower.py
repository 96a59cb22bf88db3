"""The follower against an in-memory control plane (an httpx transport that answers
like /api/v1/edge): batches applied whole, a bad row reported and resynced past (never
retried forever, never blocking what follows), an unusable snapshot leaving the state
in force."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Callable
from typing import Any

import httpx
import pytest

from entryguard.edge.follower import ControlPlaneFollower
from entryguard.edge.state import EdgeState


def grant(gid: int, cidr: str = "203.0.113.7/32") -> dict[str, Any]:
    return {
        "id": gid,
        "resource_id": 1,
        "cidr": cidr,
        "source": "rule",
        "source_id": gid,
        "expires_at": None,
    }


class FakeControlPlane:
    """Holds a change log and the grants it leads to; serves /snapshot and /changes."""

    def __init__(self) -> None:
        self.rows: list[dict[str, Any]] = []
        self.grants: dict[int, dict[str, Any]] = {1: grant(1)}
        self.snapshots = 0
        self.bad_snapshot = False
        self.polls: list[int] = []
        # Several replicas share one log: host -> "ok" | "dead" | "hung" | "unready".
        self.modes: dict[str, str] = {}
        self.seen: list[tuple[str, str]] = []

    def commit(self, *rows: tuple[str, dict[str, Any]]) -> None:
        """One transaction: consecutive revisions sharing a batch number."""
        first = self.revision() + 1
        for i, (op, data) in enumerate(rows):
            self.rows.append({"revision": first + i, "batch": first, "op": op, "data": data})
            if op == "grant.add":
                self.grants[data["id"]] = data
            elif op == "grant.remove":
                self.grants.pop(data["id"], None)

    def revision(self) -> int:
        return int(self.rows[-1]["revision"]) if self.rows else 10

    async def handle(self, request: httpx.Request) -> httpx.Response:
        await asyncio.sleep(0.005)  # a real control plane answers later, never inline
        mode = self.modes.get(request.url.host, "ok")
        self.seen.append((request.url.host, request.url.path))
        if mode == "dead":
            raise httpx.ConnectError("connection refused", request=request)
        if mode == "hung":
            await asyncio.sleep(3600)
        if mode == "unready" and request.url.path.endswith("/health"):
            return httpx.Response(503, json={"status": "not ready"})
        if request.url.path.endswith("/health"):
            return httpx.Response(200, json={"status": "ok"})
        if request.url.path.endswith("/snapshot"):
            self.snapshots += 1
            if self.bad_snapshot:
                return httpx.Response(200, content=b"{not json")
            return httpx.Response(
                200,
                json={
                    "revision": self.revision(),
                    "tunnels": [{"id": 1, "name": "db", "port": 41000, "agent_key_id": 3}],
                    "agents": [],
                    "grants": list(self.grants.values()),
                },
            )
        since = int(request.url.params["since"])
        self.polls.append(since)
        wait = float(request.url.params.get("wait", 0))
        for _ in range(int(wait / 0.01)):  # a long-poll: answer when rows come, or at `wait`
            if self.revision() > since:
                break
            await asyncio.sleep(0.01)
        rows = [r for r in self.rows if r["revision"] > since]
        return httpx.Response(
            200, json={"revision": rows[-1]["revision"] if rows else since, "changes": rows}
        )


class Followed:
    def __init__(self, follower: ControlPlaneFollower) -> None:
        self.f = follower
        self.judged: list[list[str]] = []
        follower.state.on_grant_removed = lambda t: self.judged.append(
            sorted(e.grant_id for e in t.allow.entries())
        )

    async def until(self, cond: Callable[[], bool]) -> None:
        for _ in range(300):
            if cond():
                return
            await asyncio.sleep(0.01)
        raise AssertionError(f"never held: problems={self.f.problems} rev={self.f.state.revision}")


@contextlib.asynccontextmanager
async def following(
    cp: FakeControlPlane, urls: list[str] | None = None, poll_wait: float = 0
) -> AsyncIterator[Followed]:
    f = ControlPlaneFollower(
        EdgeState(),
        urls or ["http://cp.invalid"],
        "ege_x_y",
        poll_wait=poll_wait,
        transport=httpx.MockTransport(cp.handle),
        probe_interval=0.2,
        delivery="poll",  # the long-poll path; the pushed stream is tested end to end
    )
    fd = Followed(f)
    task = asyncio.create_task(f.run())
    try:
        yield fd
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
        await f.close()


def granted(fd: Followed) -> list[str]:
    return sorted(e.grant_id for e in fd.f.state.tunnels[1].allow.entries())


async def test_each_batch_is_applied_whole() -> None:
    cp = FakeControlPlane()
    async with following(cp) as fd:
        await fd.until(lambda: fd.f.state.revision == 10 and fd.f.connected)
        fd.judged.clear()
        cp.commit(
            ("grant.remove", {"id": 1, "resource_id": 1, "reason": "x"}), ("grant.add", grant(2))
        )
        cp.commit(("grant.add", grant(3, "198.51.100.0/24")))
        await fd.until(lambda: fd.f.state.revision == 13)
        # Judged once per batch, never in between (1 gone, 2 not yet there).
        assert fd.judged == [["2"], ["2", "3"]]
        assert not fd.f.degraded and fd.f.bad_changes == 0


async def test_a_bad_row_is_reported_then_resynced_past_and_later_changes_still_apply() -> None:
    cp = FakeControlPlane()
    async with following(cp) as fd:
        await fd.until(lambda: fd.f.state.revision == 10 and fd.f.connected)
        cp.commit(("grant.frobnicate", {"id": 9}))
        cp.commit(("grant.add", grant(4, "fe80::1%eth0/128")))
        cp.polls.clear()
        await fd.until(lambda: fd.f.bad_changes >= 1 and fd.f.state.revision == 12)
        assert cp.snapshots >= 2, "no resync after the bad row"
        # The snapshot skipped the poisoned grant and says so; the rest is in force.
        assert granted(fd) == ["1"]
        assert fd.f.problems and fd.f.degraded
        # Nothing is stuck: the next change applies, and the bad row is never asked again.
        cp.grants.pop(4)  # an admin removed the poisoned row: the next snapshot is clean
        cp.commit(("grant.add", grant(5, "192.0.2.0/24")))
        await fd.until(lambda: granted(fd) == ["1", "5"])
        # At most the poll in flight at the commit: the bad rows are never asked again.
        assert cp.polls.count(10) <= 2, "the bad row was asked for again"


async def test_an_unusable_snapshot_is_reported_not_called_unreachable_and_retried() -> None:
    cp = FakeControlPlane()
    cp.bad_snapshot = True
    async with following(cp) as fd:
        await fd.until(lambda: cp.snapshots >= 3)
        assert fd.f.problems and fd.f.degraded
        assert fd.f.last_error is None, "a bad answer is not an unreachable control plane"
        assert fd.f.state.tunnels == {}
        cp.bad_snapshot = False
        await fd.until(lambda: fd.f.state.revision == 10)
        assert not fd.f.problems and not fd.f.degraded


@pytest.mark.parametrize("fault", ["dead", "hung", "unready"])
async def test_a_failed_replica_is_left_for_the_next_and_the_stream_resumes(fault: str) -> None:
    cp = FakeControlPlane()
    urls = ["http://cp1.invalid", "http://cp2.invalid"]
    loop = asyncio.get_running_loop()
    # The long-poll waits (poll_wait) like a real one: only the probe can see a hang.
    async with following(cp, urls, poll_wait=0.5) as fd:
        await fd.until(lambda: fd.f.state.revision == 10 and fd.f.base.startswith("http://cp1"))
        cp.modes["cp1.invalid"] = fault
        t0 = loop.time()
        await fd.until(lambda: fd.f.base.startswith("http://cp2") and fd.f.connected)
        assert loop.time() - t0 < 3, "failover took too long"
        assert fd.f.failovers >= 1
        cp.commit(("grant.add", grant(2, "192.0.2.0/24")))
        await fd.until(lambda: granted(fd) == ["1", "2"])
        cp.commit(("grant.remove", {"id": 1, "resource_id": 1, "reason": "x"}))
        await fd.until(lambda: granted(fd) == ["2"])
        # From its own revision: every row once, none skipped.
        assert fd.f.state.revision == 12
