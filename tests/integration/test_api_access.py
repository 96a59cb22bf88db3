"""Control-plane behaviour over real HTTP, on SQLite and on the real PostgreSQL."""

from __future__ import annotations

import asyncio
import json
import time

import pytest
from sqlalchemy import func, select, text

from entryguard.control.db.models import AgentCommand, AuditEvent, Change, Grant
from tests.integration.conftest import Api


async def counts(api: Api) -> tuple[int, int, int]:
    async with api.db.read() as s:
        a = (await s.execute(select(func.count()).select_from(AuditEvent))).scalar_one()
        c = (await s.execute(select(func.count()).select_from(Change))).scalar_one()
        g = (await s.execute(select(func.count()).select_from(Grant))).scalar_one()
    return a, c, g


async def setup_tunnel(api: Api, name: str = "production-db", role: str = "developers") -> dict:
    await api.agent_key("prod-agent") if not (await api.ok("GET", "/admin/apikeys"))[
        "items"
    ] else None
    r = await api.ok(
        "POST",
        "/admin/resources",
        json={
            "name": name,
            "type": "tunnel",
            "agent": "prod-agent",
            "target_host": "10.0.1.50",
            "target_port": 5432,
        },
    )
    if not any(x["name"] == role for x in (await api.ok("GET", "/admin/roles"))["items"]):
        await api.ok("POST", "/admin/roles", json={"name": role, "max_duration": "8h"})
    await api.ok("POST", f"/admin/roles/{role}/resources", json={"resource": name})
    return r["resource"]


async def test_session_lifecycle_grants_audit_and_changes(api: Api) -> None:
    res = await setup_tunnel(api)
    assert res["port"] == api.settings.tunnel_ports.first
    assert res["connection"] == f"127.0.0.1:{res['port']}"
    tok = await api.make_user("dev@example.com")
    await api.ok("POST", "/admin/roles/developers/users", json={"email": "dev@example.com"})
    a0, c0, g0 = await counts(api)
    out = await api.ok("POST", "/sessions", tok, json={"duration": "2h"}, source="127.0.0.2")
    assert out["session"]["ip"] == "127.0.0.2"
    assert [r["connection"] for r in out["resources"]] == [res["connection"]]
    assert out["capped"] is False
    a1, c1, g1 = await counts(api)
    assert (a1 - a0, c1 - c0, g1 - g0) == (1, 1, 1)  # one audit event, one change row, one grant
    async with api.db.read() as s:
        g = (await s.execute(select(Grant))).scalar_one()
    assert g.cidr == "127.0.0.2/32" and g.source == "session"
    cur = await api.ok("GET", "/sessions/current", tok)
    assert cur["session"]["active"] is True
    await api.ok("DELETE", "/sessions/current", tok)
    a2, c2, g2 = await counts(api)
    assert (a2 - a1, c2 - c1, g2) == (1, 1, 0)
    r = await api.call("DELETE", "/sessions/current", tok)
    assert r.status_code == 404 and r.json()["error"]["code"] == "no_active_session"


async def test_duration_capped_at_role_maximum(api: Api) -> None:
    await api.agent_key("prod-agent")
    await api.ok("POST", "/admin/roles", json={"name": "short", "max_duration": "1h"})
    tok = await api.make_user("dev@example.com")
    await api.ok("POST", "/admin/roles/short/users", json={"email": "dev@example.com"})
    out = await api.ok("POST", "/sessions", tok, json={"duration": "24h"})
    assert out["capped"] is True and out["max_duration_seconds"] == 3600
    assert out["requested_seconds"] == 86400


async def test_bad_durations_refused_and_change_nothing(api: Api) -> None:
    tok = await api.make_user("dev@example.com")
    before = await counts(api)
    for bad in ["-1", "0", "abc", "1e309", "nan", "", "1h1h", "99999999"]:
        r = await api.call("POST", "/sessions", tok, json={"duration": bad})
        assert r.status_code == 400, (bad, r.text)
        assert r.json()["error"]["code"] == "invalid_duration"
        assert r.json()["error"]["message"]
    assert await counts(api) == before
    for good, secs in [("4", 14400), ("90s", 90), ("30m", 1800), ("2h", 7200), ("1h30m", 5400)]:
        out = await api.ok("POST", "/sessions", tok, json={"duration": good})
        assert out["requested_seconds"] == secs


async def test_bad_cidrs_refused_and_change_nothing(api: Api) -> None:
    await setup_tunnel(api)
    before = await counts(api)
    for bad in [
        "10.0.0.5/8",
        "010.0.0.1",
        "10.0.0.0/33",
        "not-an-ip",
        "10.0.0.0/8;rm -rf /",
        "",
        "0.0.0.0/0",
        " 10.0.0.0/8",
        "10.0.0.0/8\n",
        "::/0",
    ]:
        r = await api.call("POST", "/admin/rules", json={"resource": "production-db", "cidr": bad})
        assert r.status_code == 400, (bad, r.text)
        assert r.json()["error"]["code"] == "invalid_cidr"
        r = await api.call(
            "POST",
            "/admin/guests",
            json={"resource": "production-db", "cidr": bad, "duration": "1h"},
        )
        assert r.status_code == 400, (bad, r.text)
    assert await counts(api) == before
    assert (await api.ok("GET", "/admin/rules"))["items"] == []
    rule = await api.ok(
        "POST",
        "/admin/rules",
        json={"resource": "production-db", "cidr": "0.0.0.0/0", "allow_any": True},
    )
    assert rule["rule"]["cidr"] == "0.0.0.0/0"


async def test_names_validated(api: Api) -> None:
    await api.agent_key("prod-agent")
    for bad in ["", " x", "x" * 65, "a\x00b", "a/b"]:
        r = await api.call("POST", "/admin/roles", json={"name": bad})
        assert r.status_code in (400, 422), (bad, r.text)
        assert "error" in r.json()
    r = await api.call("POST", "/admin/roles", json={"name": "Entwickler-Zürich-数据库"})
    assert r.status_code == 201


async def test_scopes_enforced(api: Api) -> None:
    agent = await api.agent_key("prod-agent")
    sess_key = (
        await api.ok("POST", "/admin/apikeys", json={"name": "ci", "scopes": ["sessions"]})
    )["key"]
    r = await api.call("GET", "/me/resources", agent)
    assert r.status_code == 403 and r.json()["error"]["code"] == "missing_scope"
    r = await api.call("GET", "/admin/users", sess_key)
    assert r.status_code == 403
    r = await api.call("GET", "/agent/tunnels", sess_key)
    assert r.status_code == 403
    assert (await api.call("GET", "/agent/tunnels", agent)).status_code == 200
    assert (await api.call("GET", "/me/resources", sess_key)).status_code == 200
    r = await api.call("GET", "/admin/users", "eg_AAAAAAAA_notakey")
    assert r.status_code == 401
    r = await api.call("GET", "/admin/users", "garbage")
    assert r.status_code == 401 and r.json()["error"]["message"]
    # A revoked key stops working at once.
    await api.ok("DELETE", "/admin/apikeys/ci")
    assert (await api.call("GET", "/me/resources", sess_key)).status_code == 401


async def test_non_admin_refused_admin_routes(api: Api) -> None:
    tok = await api.make_user("dev@example.com")
    for method, path in [
        ("GET", "/admin/users"),
        ("POST", "/admin/roles"),
        ("GET", "/admin/audit"),
        ("GET", "/admin/agents"),
        ("DELETE", "/admin/sessions/1"),
    ]:
        r = await api.call(method, path, tok, json={"name": "x"} if method == "POST" else None)
        assert r.status_code == 403, (path, r.text)
        assert r.json()["error"]["code"] == "admin_required"


async def test_spoofed_forwarded_for_ignored_from_untrusted_peer(api: Api) -> None:
    tok = await api.make_user("dev@example.com")
    out = await api.ok(
        "POST",
        "/sessions",
        tok,
        json={"duration": "1h"},
        source="127.0.0.3",
        headers={"X-Forwarded-For": "203.0.113.7"},
    )
    assert out["session"]["ip"] == "127.0.0.3"
    # From the trusted proxy (127.0.0.9), the rightmost untrusted hop is the client.
    out = await api.ok(
        "POST",
        "/sessions",
        tok,
        json={"duration": "1h"},
        source="127.0.0.9",
        headers={"X-Forwarded-For": "198.51.100.1, 203.0.113.8"},
    )
    assert out["session"]["ip"] == "203.0.113.8"


@pytest.mark.parametrize(
    "poison",
    ["fe80::1%eth0", "[2001:db8::1]", "203.0.113.9:4444", "not-an-ip", "010.0.0.1", "1.2.3.4/8"],
)
async def test_a_forwarded_value_that_is_not_a_plain_ip_is_ignored(api: Api, poison: str) -> None:
    """From a trusted proxy, a zone id, brackets, a port or garbage never becomes a
    grant: the socket peer is used, and the edge's stream stays parseable."""
    await setup_tunnel(api)
    tok = await api.make_user("dev@example.com")
    await api.ok("POST", "/admin/roles/developers/users", json={"email": "dev@example.com"})
    out = await api.ok(
        "POST",
        "/sessions",
        tok,
        json={"duration": "1h"},
        source="127.0.0.9",
        headers={"X-Forwarded-For": f"198.51.100.1, {poison}"},
    )
    assert out["session"]["ip"] == "127.0.0.9"
    async with api.db.read() as s:
        cidrs = [g.cidr for g in (await s.execute(select(Grant))).scalars()]
    assert cidrs == ["127.0.0.9/32"]


async def test_concurrent_session_starts_leave_one_active(api: Api) -> None:
    await setup_tunnel(api)
    tok = await api.make_user("dev@example.com")
    await api.ok("POST", "/admin/roles/developers/users", json={"email": "dev@example.com"})
    async with api.client(tok) as c:
        rs = await asyncio.gather(
            *[c.post("/sessions", json={"duration": "1h"}) for _ in range(20)]
        )
    assert all(r.status_code == 201 for r in rs), [r.text for r in rs if r.status_code != 201]
    active = (await api.ok("GET", "/admin/sessions", params={"active": "true"}))["items"]
    assert len(active) == 1
    async with api.db.read() as s:
        grants = (await s.execute(select(Grant))).scalars().all()
    assert len(grants) == 1 and grants[0].source_id == active[0]["id"]


async def test_port_range_exhausted_is_a_clear_error(api: Api) -> None:
    await api.agent_key("prod-agent")
    n = api.settings.tunnel_ports.last - api.settings.tunnel_ports.first + 1
    ports = set()
    for i in range(n):
        r = await api.ok(
            "POST",
            "/admin/resources",
            json={
                "name": f"t{i}",
                "type": "tunnel",
                "agent": "prod-agent",
                "target_host": "10.0.0.1",
                "target_port": 80 + i,
            },
        )
        ports.add(r["resource"]["port"])
    assert len(ports) == n
    before = await counts(api)
    r = await api.call(
        "POST",
        "/admin/resources",
        json={
            "name": "one-too-many",
            "type": "tunnel",
            "agent": "prod-agent",
            "target_host": "10.0.0.1",
            "target_port": 1,
        },
    )
    assert r.status_code == 409
    err = r.json()["error"]
    assert err["code"] == "port_range_exhausted" and "exhausted" in err["message"]
    assert await counts(api) == before


async def test_session_expiry_removes_grants_with_audit_and_changes(api: Api) -> None:
    await setup_tunnel(api)
    tok = await api.make_user("dev@example.com")
    await api.ok("POST", "/admin/roles/developers/users", json={"email": "dev@example.com"})
    out = await api.ok("POST", "/sessions", tok, json={"duration": "2s"})
    async with api.db.read() as s:
        rev0 = (await s.execute(select(func.max(Change.revision)))).scalar_one()
    from datetime import datetime

    expires = datetime.fromisoformat(
        out["session"]["expires_at"].replace("Z", "+00:00")
    ).timestamp()
    deadline = expires + 1.0
    gone_at = None
    while time.time() < deadline + 1:
        async with api.db.read() as s:
            n = (await s.execute(select(func.count()).select_from(Grant))).scalar_one()
        if n == 0:
            gone_at = time.time()
            break
        await asyncio.sleep(0.05)
    assert gone_at is not None and gone_at <= deadline, (
        f"grants still there {gone_at and gone_at - expires}s after expiry"
    )
    async with api.db.read() as s:
        ev = (
            await s.execute(select(AuditEvent).where(AuditEvent.action == "session.expire"))
        ).scalar_one()
        ch = (await s.execute(select(Change).where(Change.revision > rev0))).scalars().all()
    assert json.loads(ev.details)["reason"] == "expired"
    assert [c.op for c in ch] == ["grant.remove"]
    assert json.loads(ch[0].data)["reason"] == "expired"


async def test_audit_tampering_detected_naming_the_row(api: Api) -> None:
    await setup_tunnel(api)
    ok = await api.ok("GET", "/admin/audit/verify")
    assert ok["ok"] is True and ok["checked"] >= 3
    events = (await api.ok("GET", "/admin/audit"))["items"]
    victim = events[1]["id"]
    async with api.db.sessions() as s, s.begin():
        await s.execute(
            text("UPDATE audit_events SET actor = 'mallory' WHERE id = :i"), {"i": victim}
        )
    bad = await api.ok("GET", "/admin/audit/verify")
    assert bad["ok"] is False and bad["bad_id"] == victim
    assert str(victim) in bad["message"]


async def test_role_edits_reevaluate_live_sessions(api: Api) -> None:
    await setup_tunnel(api)
    await setup_tunnel(api, "cache")
    tok = await api.make_user("dev@example.com")
    await api.ok("POST", "/admin/roles/developers/users", json={"email": "dev@example.com"})
    await api.ok("POST", "/sessions", tok, json={"duration": "1h"}, source="127.0.0.2")
    assert (await counts(api))[2] == 2
    await api.ok("DELETE", "/admin/roles/developers/resources/cache")
    async with api.db.read() as s:
        assert len((await s.execute(select(Grant))).scalars().all()) == 1
    await api.ok("POST", "/admin/roles/developers/resources", json={"resource": "cache"})
    assert (await counts(api))[2] == 2
    await api.ok("DELETE", "/admin/roles/developers/users/dev@example.com")
    assert (await counts(api))[2] == 0
    await api.ok("POST", "/admin/roles/developers/users", json={"email": "dev@example.com"})
    assert (await counts(api))[2] == 2
    await api.ok("DELETE", "/admin/resources/cache")
    assert (await counts(api))[2] == 1
    await api.ok("POST", "/admin/users/dev@example.com/disable")
    assert (await counts(api))[2] == 0
    assert (await api.call("GET", "/sessions/current", tok)).status_code == 401


async def test_script_commands_respect_shared_cidrs(api: Api) -> None:
    await api.agent_key("fw-agent")
    await api.ok(
        "POST",
        "/admin/resources",
        json={
            "name": "fw",
            "type": "script",
            "agent": "fw-agent",
            "script_dir": "/etc/eg-agent/scripts/fw",
        },
    )
    await api.ok("POST", "/admin/roles", json={"name": "ops"})
    await api.ok("POST", "/admin/roles/ops/resources", json={"resource": "fw"})
    t1 = await api.make_user("a@example.com")
    t2 = await api.make_user("b@example.com")
    for e in ("a@example.com", "b@example.com"):
        await api.ok("POST", "/admin/roles/ops/users", json={"email": e})
    # Two users behind one NAT address.
    await api.ok("POST", "/sessions", t1, json={"duration": "1h"}, source="127.0.0.5")
    await api.ok("POST", "/sessions", t2, json={"duration": "1h"}, source="127.0.0.5")
    await api.ok("DELETE", "/sessions/current", t1)
    async with api.db.read() as s:
        cmds = [
            (c.action, c.cidr)
            for c in (await s.execute(select(AgentCommand).order_by(AgentCommand.id))).scalars()
        ]
    assert cmds == [("apply", "127.0.0.5/32")]  # b still holds the address: no revoke yet
    await api.ok("DELETE", "/sessions/current", t2)
    async with api.db.read() as s:
        cmds = [
            (c.action, c.cidr)
            for c in (await s.execute(select(AgentCommand).order_by(AgentCommand.id))).scalars()
        ]
    assert cmds == [("apply", "127.0.0.5/32"), ("revoke", "127.0.0.5/32")]


async def test_rules_and_guests(api: Api) -> None:
    await setup_tunnel(api)
    rule = (
        await api.ok(
            "POST",
            "/admin/rules",
            json={"resource": "production-db", "cidr": "10.0.0.0/8", "description": "VPN"},
        )
    )["rule"]
    guest = (
        await api.ok(
            "POST",
            "/admin/guests",
            json={
                "resource": "production-db",
                "cidr": "203.0.113.0/24",
                "duration": "2h",
                "note": "auditor",
            },
        )
    )["guest"]
    assert (await counts(api))[2] == 2
    assert [
        r["cidr"]
        for r in (await api.ok("GET", "/admin/rules", params={"resource": "production-db"}))[
            "items"
        ]
    ] == ["10.0.0.0/8"]
    assert (await api.ok("GET", "/admin/guests", params={"active": "true"}))["items"][0][
        "note"
    ] == "auditor"
    await api.ok("DELETE", f"/admin/rules/{rule['id']}")
    await api.ok("DELETE", f"/admin/guests/{guest['id']}")
    assert (await counts(api))[2] == 0
    assert (await api.call("DELETE", "/admin/rules/999")).status_code == 404
    assert (await api.ok("GET", "/admin/guests", params={"active": "true"}))["items"] == []


async def test_errors_are_json(api: Api) -> None:
    r = await api.call("GET", "/no/such/route")
    assert r.status_code == 404 and r.json()["error"]["code"] == "not_found"
    r = await api.call(
        "POST", "/admin/roles", content=b"{not json", headers={"content-type": "application/json"}
    )
    assert r.status_code == 422 and r.json()["error"]["code"] == "invalid_request"
    r = await api.call("POST", "/admin/roles", json={"name": "x", "extra": 1})
    assert r.status_code == 422
    spec = await api.ok("GET", "/openapi.json")
    assert "/api/v1/sessions" in spec["paths"]


async def test_login_logout_and_wrong_password(api: Api) -> None:
    r = await api.call(
        "POST", "/auth/login", None, json={"email": "admin@example.com", "password": "wrong"}
    )
    assert r.status_code == 401 and r.json()["error"]["code"] == "invalid_credentials"
    tok = await api.login("admin@example.com", "admin-password-1")
    who = await api.ok("GET", "/auth/whoami", tok)
    assert who["user"]["is_admin"] and set(who["scopes"]) == {"admin", "sessions"}
    await api.ok("POST", "/auth/logout", tok)
    assert (await api.call("GET", "/auth/whoami", tok)).status_code == 401
    actions = [e["action"] for e in (await api.ok("GET", "/admin/audit"))["items"]]
    assert "auth.login_failed" in actions and "auth.logout" in actions


async def test_agents_list_shows_targets_and_resources(api: Api) -> None:
    await setup_tunnel(api)
    items = (await api.ok("GET", "/admin/agents"))["items"]
    assert items[0]["targets"] == ["10.0.1.50:5432"]
    assert items[0]["resources"] == ["production-db"]
    assert items[0]["connected"] is False and items[0]["last_heartbeat"] is None


async def test_a_session_moved_to_a_new_ip_through_a_trusted_proxy(api: Api) -> None:
    """The client's public IP changes behind the trusted proxy (127.0.0.9): the old IP's
    grants go with a revoke, the new IP's come with an apply, in one batch; the same IP
    again moves the grants (same ids, later expiry) and queues nothing."""
    await setup_tunnel(api)
    await api.agent_key("fw-agent")
    await api.ok(
        "POST",
        "/admin/resources",
        json={"name": "fw", "type": "script", "agent": "fw-agent", "script_dir": "/srv/fw"},
    )
    await api.ok("POST", "/admin/roles/developers/resources", json={"resource": "fw"})
    tok = await api.make_user("dev@example.com")
    await api.ok("POST", "/admin/roles/developers/users", json={"email": "dev@example.com"})

    async def start(ip: str, duration: str) -> dict:
        out: dict = await api.ok(
            "POST",
            "/sessions",
            tok,
            json={"duration": duration},
            source="127.0.0.9",
            headers={"X-Forwarded-For": ip},
        )
        return out

    async def state() -> tuple[list[tuple[int, str]], list[tuple[str, str]], list[int]]:
        async with api.db.read() as s:
            grants = [(g.id, g.cidr) for g in (await s.execute(select(Grant))).scalars()]
            cmds = [
                (c.action, c.cidr)
                for c in (await s.execute(select(AgentCommand).order_by(AgentCommand.id))).scalars()
            ]
            batches = [
                c.batch or c.revision
                for c in (await s.execute(select(Change).order_by(Change.revision))).scalars()
            ]
        return sorted(grants), cmds, batches

    await start("203.0.113.8", "1h")
    g1, c1, _ = await state()
    assert {c for _, c in g1} == {"203.0.113.8/32"} and c1 == [("apply", "203.0.113.8/32")]

    second = await start("203.0.113.8", "2h")  # an extension: same IP
    g2, c2, b2 = await state()
    assert g2 == g1, "an extension must keep the grants (same ids), not re-create them"
    assert c2 == c1, "an extension must queue no revoke/apply"
    assert second["session"]["ip"] == "203.0.113.8"

    await start("203.0.113.9", "2h")  # a new public IP
    g3, c3, b3 = await state()
    assert {c for _, c in g3} == {"203.0.113.9/32"}
    assert c3[len(c2) :] == [("revoke", "203.0.113.8/32"), ("apply", "203.0.113.9/32")]
    new_rows = b3[len(b2) :]
    assert len(new_rows) == 4 and len(set(new_rows)) == 1, "one transaction, one batch"
