"""The script command queue over real HTTP, on SQLite and on the real PostgreSQL:
FIFO claims, at most once under concurrent claimers, long-poll wake-ups, results,
truncation, retry rules and scopes."""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

import httpx
from sqlalchemy import select

from entryguard.control.db.models import AuditEvent
from entryguard.control.services.commands import OUTPUT_LIMIT
from tests.integration.conftest import Api

NEXT = "/agent/commands/next"


@dataclass
class Queue:
    """One admin client and one agent client, reused (a new client per call costs ~30 ms)."""

    api: Api
    admin: httpx.AsyncClient
    agent: httpx.AsyncClient

    async def ok(self, method: str, path: str, **kw: Any) -> Any:
        c = self.agent if path.startswith("/agent/") else self.admin
        r = await c.request(method, path, **kw)
        assert r.status_code < 300, f"{method} {path}: {r.status_code} {r.text}"
        return r.json() if r.content else None

    async def rule(self, cidr: str, resource: str = "fw", desc: str = "") -> int:
        body = {"resource": resource, "cidr": cidr, "description": desc}
        return int((await self.ok("POST", "/admin/rules", json=body))["rule"]["id"])

    async def claim(self, wait: float = 0) -> dict[str, Any] | None:
        cmd: dict[str, Any] | None = (await self.ok("GET", NEXT, params={"wait": wait}))["command"]
        return cmd

    async def report(self, cid: int, exit_code: int | None = 0, **kw: Any) -> Any:
        body = {"exit_code": exit_code, "duration_ms": kw.pop("duration_ms", 12), **kw}
        return await self.ok("POST", f"/agent/commands/{cid}/result", json=body)

    async def items(self, **params: Any) -> list[dict[str, Any]]:
        return list((await self.ok("GET", "/admin/commands", params=params))["items"])


async def script_resource(api: Api, name: str = "fw", agent: str = "fw-agent") -> str:
    key = await api.agent_key(agent)
    await api.ok(
        "POST",
        "/admin/resources",
        json={"name": name, "type": "script", "agent": agent, "script_dir": f"/srv/{name}"},
    )
    return key


@contextlib.asynccontextmanager
async def queue(api: Api, name: str = "fw", agent: str = "fw-agent") -> AsyncIterator[Queue]:
    key = await script_resource(api, name, agent)
    async with api.admin() as admin, api.client(key) as agent_client:
        yield Queue(api, admin, agent_client)


async def test_fifo_claims_results_ownership_scopes_truncation(api: Api) -> None:
    async with queue(api) as q:
        rules = [await q.rule(f"10.0.{i}.0/24", desc=f"rule {i}") for i in range(3)]
        await q.ok("DELETE", f"/admin/rules/{rules[0]}")
        seen = []
        while (cmd := await q.claim()) is not None:
            assert set(cmd) == {"id", "resource", "script_dir", "action", "cidr", "description"}
            seen.append((cmd["action"], cmd["cidr"]))
            await q.report(cmd["id"], output=f"ran {cmd['action']}\n")
        assert seen == [
            ("apply", "10.0.0.0/24"),
            ("apply", "10.0.1.0/24"),
            ("apply", "10.0.2.0/24"),
            ("revoke", "10.0.0.0/24"),
        ]
        items = await q.items()
        assert [c["id"] for c in items] == sorted((c["id"] for c in items), reverse=True)
        first = items[-1]
        assert first["status"] == "done" and first["exit_code"] == 0
        assert first["agent"] == "fw-agent" and first["resource"] == "fw"
        assert first["script_dir"] == "/srv/fw" and first["attempts"] == 1
        assert first["output"] == "ran apply\n" and first["duration_ms"] == 12
        assert first["claimed_at"] and first["finished_at"]
        assert "rule" in first["description"]
        assert await q.items(failed="true") == []
        async with api.db.read() as s:
            actions = [e.action for e in (await s.execute(select(AuditEvent))).scalars()]
        assert actions.count("command.done") == 4

        # Reporting twice (a lost response, retried) changes nothing.
        await q.rule("10.3.0.0/16")
        cmd = await q.claim()
        assert cmd is not None
        first_report = await q.report(cmd["id"], 0, output="one")
        again = await q.report(cmd["id"], 5, output="two")
        assert first_report["command"]["output"] == again["command"]["output"] == "one"
        assert again["command"]["status"] == "done"

        # Nobody reports a command that was never claimed.
        await q.rule("10.4.0.0/16")
        pending = await q.items(status="pending")
        r = await q.agent.post(
            f"/agent/commands/{pending[0]['id']}/result", json={"exit_code": 0, "duration_ms": 1}
        )
        assert r.status_code == 409 and r.json()["error"]["code"] == "command_not_claimed"

        # Another agent neither sees nor reports this agent's commands.
        other_key = await script_resource(api, "fw-b", "agent-b")
        async with api.client(other_key) as other:
            r = await other.get(NEXT, params={"wait": 0})
            assert r.status_code == 200 and r.json()["command"] is None
            r = await other.post(
                f"/agent/commands/{cmd['id']}/result", json={"exit_code": 0, "duration_ms": 1}
            )
            assert r.status_code == 404 and r.json()["error"]["code"] == "command_not_found"

        # Scopes: only agent keys claim and report, only admins list and retry.
        r = await q.admin.get(NEXT, params={"wait": 0})  # an admin login is not an agent
        assert r.status_code == 403
        for method, path in (("GET", "/admin/commands"), ("POST", "/admin/commands/1/retry")):
            r = await q.agent.request(method, path)
            assert r.status_code == 403 and r.json()["error"]["code"] == "admin_required"
        user = await api.make_user("dev@example.com")
        assert (await api.call("GET", "/admin/commands", user)).status_code == 403
        assert (await api.call("GET", NEXT, user)).status_code == 403
        assert (await api.call("GET", NEXT, "eg_bogus_key", params={"wait": 0})).status_code == 401
        r = await q.admin.get("/admin/commands", params={"status": "weird"})
        assert r.status_code == 400 and r.json()["error"]["code"] == "invalid_status"
        r = await q.admin.get("/admin/commands/999")
        assert r.status_code == 404

        # Output is kept up to 64 KiB.
        await q.rule("10.4.0.0/16")
        cmd = await q.claim()
        assert cmd is not None
        big = "é" * 50_000 + "tail"  # 100 kB of UTF-8
        out = await q.report(cmd["id"], 1, output=big)
        stored = out["command"]["output"]
        assert len(stored.encode()) <= OUTPUT_LIMIT
        assert stored.startswith("éé") and stored.endswith("[output truncated to 64 KiB]")
        assert out["command"]["status"] == "failed"
        # An error from the agent (refused, timed out) heads the output.
        await q.rule("10.5.0.0/16")
        cmd = await q.claim()
        assert cmd is not None
        out = await q.report(cmd["id"], None, output="partial", error="timed out after 2 s")
        assert out["command"]["output"] == "[eg-agent] timed out after 2 s\npartial"
        assert out["command"]["exit_code"] is None and out["command"]["status"] == "failed"
        r = await q.agent.post(f"/agent/commands/{cmd['id']}/result", json={"duration_ms": -1})
        assert r.status_code == 422


async def test_concurrent_claimers_and_long_poll(api: Api) -> None:
    async with queue(api) as q:
        for i in range(30):
            await q.rule(f"10.1.{i}.0/24")
        claimed: list[int] = []

        async def claimer() -> None:
            async with api.client(q.agent.headers["authorization"].split()[1]) as c:
                while True:
                    r = await c.get(NEXT, params={"wait": 0})
                    assert r.status_code == 200, r.text
                    if r.json()["command"] is None:
                        return
                    claimed.append(r.json()["command"]["id"])

        await asyncio.gather(*(claimer() for _ in range(8)))
        assert len(claimed) == 30 and len(set(claimed)) == 30
        items = await q.items()
        assert {c["status"] for c in items} == {"running"}
        assert {c["attempts"] for c in items} == {1}

        t0 = time.monotonic()
        assert await q.claim(wait=0.5) is None
        assert 0.4 < time.monotonic() - t0 < 3
        poll = asyncio.create_task(q.claim(wait=20))
        await asyncio.sleep(0.3)
        assert not poll.done()
        t0 = time.monotonic()
        await q.rule("192.0.2.0/24")
        cmd = await asyncio.wait_for(poll, 5)
        assert cmd is not None and cmd["cidr"] == "192.0.2.0/24"
        assert time.monotonic() - t0 < 1.5


async def test_retry_appends_and_refuses_what_would_undo_later_commands(api: Api) -> None:
    async with queue(api) as q:
        await q.rule("10.6.0.0/16")
        await q.rule("10.7.0.0/16")
        a = await q.claim()
        b = await q.claim()
        assert a is not None and b is not None
        await q.report(a["id"], 3, output="iptables: permission denied")
        await q.report(b["id"], 0)
        failed = await q.items(failed="true")
        assert [c["id"] for c in failed] == [a["id"]]
        assert failed[0]["output"] == "iptables: permission denied"
        r = await q.admin.post(f"/admin/commands/{b['id']}/retry")  # done: nothing to retry
        assert r.status_code == 409 and r.json()["error"]["code"] == "command_not_retryable"
        # The retry goes to the end of the queue, behind a command queued meanwhile.
        await q.rule("10.8.0.0/16")
        out = await q.ok("POST", f"/admin/commands/{a['id']}/retry")
        assert out["retry_of"] == a["id"] and out["command"]["status"] == "pending"
        assert out["command"]["action"] == "apply" and out["command"]["cidr"] == "10.6.0.0/16"
        order = []
        while (cmd := await q.claim()) is not None:
            order.append(cmd["cidr"])
            await q.report(cmd["id"], 0)
        assert order == ["10.8.0.0/16", "10.6.0.0/16"]
        old = (await q.ok("GET", f"/admin/commands/{a['id']}"))["command"]
        assert old["status"] == "retried"
        assert await q.items(failed="true") == []
        r = await q.admin.post(f"/admin/commands/{a['id']}/retry")  # retried already
        assert r.status_code == 409

        # A failed apply whose CIDR was revoked since must not run again; the revoke runs.
        rule_c = await q.rule("10.9.0.0/16")
        c = await q.claim()
        assert c is not None
        await q.report(c["id"], 1, output="boom")
        await q.ok("DELETE", f"/admin/rules/{rule_c}")
        revoke = await q.claim()
        assert revoke is not None
        assert (revoke["action"], revoke["cidr"]) == ("revoke", "10.9.0.0/16")
        r = await q.admin.post(f"/admin/commands/{c['id']}/retry")
        assert r.status_code == 409 and r.json()["error"]["code"] == "command_superseded"
        await q.report(revoke["id"], 0)
        async with api.db.read() as s:
            events = (
                (await s.execute(select(AuditEvent).where(AuditEvent.action == "command.retry")))
                .scalars()
                .all()
            )
        assert len(events) == 1 and json.loads(events[0].details)["command_id"] == a["id"]

        # A command stuck running (the agent died mid-run) is never handed out again by
        # itself; an admin sees it and may retry it.
        await q.rule("10.10.0.0/16")
        stuck = await q.claim()
        assert stuck is not None
        assert await q.claim() is None
        listed = await q.items(status="running")
        assert [x["id"] for x in listed] == [stuck["id"]] and listed[0]["claimed_at"]
        out = await q.ok("POST", f"/admin/commands/{stuck['id']}/retry")
        again = await q.claim()
        assert again is not None and again["id"] == out["command"]["id"] != stuck["id"]
        # A late report for the stuck row is recorded, and the row stays marked retried.
        late = await q.report(stuck["id"], 0, output="late")
        assert late["command"]["status"] == "retried" and late["command"]["output"] == "late"
