"""Control-plane guarantees asserted on real databases (SQLite and the real PostgreSQL).

- every access change writes its audit event and one change-log row per grant it adds or
  removes, in one transaction (a failure part-way leaves nothing behind);
- expiry is exactly-once with several replicas on one PostgreSQL;
- login tokens expire; API keys are stored hashed and a wrong secret is refused;
- heartbeats carry hostname, OS, version and modes to `GET /admin/agents`;
- size bounds on users, resources, rules and guest grants are enforced and change nothing.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import platform
import socket
import time
from collections import Counter
from collections.abc import AsyncIterator, Awaitable, Callable
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import func, select, update

from entryguard import __version__
from entryguard.agent.config import (
    AgentConfig,
    AgentSection,
    ScriptsSection,
    ServerSection,
    TunnelSection,
)
from entryguard.agent.control_client import ControlClient
from entryguard.clock import SYSTEM
from entryguard.control.bootstrap import migrate_and_bootstrap
from entryguard.control.db.database import Database, sqlite_url_for
from entryguard.control.db.models import (
    AgentCommand,
    ApiKey,
    AuditEvent,
    Base,
    Change,
    Grant,
    GuestAccess,
    LoginToken,
    RoleUser,
    Session,
    User,
)
from entryguard.control.services import access_rules, apikeys, resources, roles, sessions
from entryguard.control.services.expiry import expire_once
from entryguard.control.services.journal import verify_chain
from entryguard.control.settings import Settings
from tests.conftest import pg_create_database, pg_drop_database
from tests.integration.conftest import ADMIN, ADMIN_PW, Api, serve_api

# --------------------------------------------------------------------------- helpers


async def table_counts(db: Database) -> dict[str, int]:
    """Row counts of every table: "changes nothing" means this is unchanged."""
    async with db.read() as s:
        return {
            t.name: (await s.execute(select(func.count()).select_from(t))).scalar_one()
            for t in Base.metadata.sorted_tables
        }


async def journal_since(db: Database, audit_id: int, revision: int) -> tuple[list[str], list[str]]:
    """The audit actions and change-log ops written after (audit_id, revision)."""
    async with db.read() as s:
        actions = list(
            (
                await s.execute(
                    select(AuditEvent.action)
                    .where(AuditEvent.id > audit_id)
                    .order_by(AuditEvent.id)
                )
            ).scalars()
        )
        ops = list(
            (
                await s.execute(
                    select(Change.op).where(Change.revision > revision).order_by(Change.revision)
                )
            ).scalars()
        )
    return actions, ops


async def journal_head(db: Database) -> tuple[int, int]:
    async with db.read() as s:
        a = (await s.execute(select(func.max(AuditEvent.id)))).scalar() or 0
        c = (await s.execute(select(func.max(Change.revision)))).scalar() or 0
    return int(a), int(c)


async def grants_of(db: Database) -> list[tuple[str, int, str]]:
    async with db.read() as s:
        rows = (
            await s.execute(select(Grant.source, Grant.resource_id, Grant.cidr).order_by(Grant.id))
        ).all()
    return [(a, b, c) for a, b, c in rows]


def tunnel(name: str, host: str = "10.0.1.50") -> dict[str, Any]:
    return {
        "name": name,
        "type": "tunnel",
        "agent": "prod-agent",
        "target_host": host,
        "target_port": 5432,
    }


# ------------------------------------------------ 7. one audit event, one row per grant


async def test_each_access_change_writes_its_audit_event_and_one_change_row_per_grant(
    api: Api,
) -> None:
    await api.agent_key("prod-agent")
    db_res = (await api.ok("POST", "/admin/resources", json=tunnel("db")))["resource"]
    cache = (await api.ok("POST", "/admin/resources", json=tunnel("cache", "10.0.1.51")))[
        "resource"
    ]
    await api.ok("POST", "/admin/roles", json={"name": "dev"})
    await api.ok("POST", "/admin/roles/dev/resources", json={"resource": "db"})
    dev = await api.make_user("dev@example.com")
    ops_user = await api.make_user("ops@example.com")
    for email in ("dev@example.com", "ops@example.com"):
        await api.ok("POST", "/admin/roles/dev/users", json={"email": email})
    await api.ok("POST", "/sessions", dev, json={"duration": "1h"}, source="127.0.0.2")
    await api.ok("POST", "/sessions", ops_user, json={"duration": "1h"}, source="127.0.0.3")
    assert len(await grants_of(api.db)) == 2

    async def change(
        call: Callable[[], Awaitable[Any]],
        actions: list[str],
        ops: list[str],
        grants_delta: int,
    ) -> Any:
        head = await journal_head(api.db)
        before = len(await grants_of(api.db))
        out = await call()
        assert await journal_since(api.db, *head) == (actions, ops)
        assert len(await grants_of(api.db)) - before == grants_delta
        return out

    # A static rule: one event, one grant, one change row each way.
    rule = await change(
        lambda: api.ok("POST", "/admin/rules", json={"resource": "db", "cidr": "10.20.0.0/16"}),
        ["rule.add"],
        ["grant.add"],
        +1,
    )
    await change(
        lambda: api.ok("DELETE", f"/admin/rules/{rule['rule']['id']}"),
        ["rule.remove"],
        ["grant.remove"],
        -1,
    )
    # A guest grant, and its revocation.
    guest = await change(
        lambda: api.ok(
            "POST",
            "/admin/guests",
            json={"resource": "db", "cidr": "198.51.100.7/32", "duration": "1h"},
        ),
        ["guest.grant"],
        ["grant.add"],
        +1,
    )
    await change(
        lambda: api.ok("DELETE", f"/admin/guests/{guest['guest']['id']}"),
        ["guest.revoke"],
        ["grant.remove"],
        -1,
    )
    # Revoking it again changes no access: no event, no row.
    await change(lambda: api.ok("DELETE", f"/admin/guests/{guest['guest']['id']}"), [], [], 0)
    # A role edit is one event; it adds or removes one grant per live session of the
    # role's users (two here), each with its change row.
    await change(
        lambda: api.ok("POST", "/admin/roles/dev/resources", json={"resource": "cache"}),
        ["role.add_resource"],
        ["grant.add", "grant.add"],
        +2,
    )
    assert sorted(c for _, rid, c in await grants_of(api.db) if rid == cache["id"]) == [
        "127.0.0.2/32",
        "127.0.0.3/32",
    ]
    await change(
        lambda: api.ok("DELETE", "/admin/roles/dev/resources/cache"),
        ["role.remove_resource"],
        ["grant.remove", "grant.remove"],
        -2,
    )
    assert {rid for _, rid, _ in await grants_of(api.db)} == {db_res["id"]}
    # Deleting a resource: one event; a row per grant it held (both sessions' and a rule's)
    # and one for the tunnel itself.
    await api.ok("POST", "/admin/roles/dev/resources", json={"resource": "cache"})
    await api.ok("POST", "/admin/rules", json={"resource": "cache", "cidr": "10.30.0.0/16"})
    await change(
        lambda: api.ok("DELETE", "/admin/resources/cache"),
        ["resource.delete"],
        ["grant.remove", "grant.remove", "grant.remove", "tunnel.remove"],
        -3,
    )
    # Disabling a user ends their session: the session's end is audited as its own event
    # (session.stop, reason user_disabled) beside user.disable; one row for its one grant.
    await change(
        lambda: api.ok("POST", "/admin/users/dev@example.com/disable"),
        ["session.stop", "user.disable"],
        ["grant.remove"],
        -1,
    )
    async with api.db.read() as s:
        ev = (
            await s.execute(
                select(AuditEvent)
                .where(AuditEvent.action == "session.stop")
                .order_by(AuditEvent.id.desc())
                .limit(1)
            )
        ).scalar_one()
    assert json.loads(ev.details)["reason"] == "user_disabled"
    assert await grants_of(api.db) == [("session", db_res["id"], "127.0.0.3/32")]
    # Disabling again changes nothing.
    await change(lambda: api.ok("POST", "/admin/users/dev@example.com/disable"), [], [], 0)
    assert (await api.ok("GET", "/admin/audit/verify"))["ok"] is True


async def test_an_access_change_that_fails_part_way_leaves_nothing_behind(
    api: Api, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Grant, change-log row and audit event are one transaction: when the audit write
    fails after the grant and its change row were flushed, all of it is rolled back."""
    await api.agent_key("prod-agent")
    await api.ok("POST", "/admin/resources", json=tunnel("db"))
    await api.ok("POST", "/admin/resources", json=tunnel("cache", "10.0.1.51"))
    await api.ok("POST", "/admin/roles", json={"name": "dev"})
    await api.ok("POST", "/admin/roles/dev/resources", json={"resource": "db"})
    await api.ok("POST", "/admin/roles/dev/users", json={"email": ADMIN})
    await api.ok("POST", "/sessions", json={"duration": "1h"})
    await api.ok("POST", "/admin/rules", json={"resource": "cache", "cidr": "10.30.0.0/16"})

    async def broken_audit(*_: Any, **__: Any) -> None:
        raise RuntimeError("audit store unavailable")

    for module, method, path, body in [
        (access_rules, "POST", "/admin/rules", {"resource": "db", "cidr": "10.20.0.0/16"}),
        (roles, "POST", "/admin/roles/dev/resources", {"resource": "cache"}),
        (roles, "DELETE", "/admin/roles/dev/resources/db", None),
        (resources, "DELETE", "/admin/resources/cache", None),
    ]:
        before = await table_counts(api.db)
        grants = await grants_of(api.db)
        with monkeypatch.context() as m:
            m.setattr(module, "audit", broken_audit)
            r = await api.call(method, path, json=body)
        assert r.status_code == 500, (path, r.status_code, r.text)
        assert await table_counts(api.db) == before, path
        assert await grants_of(api.db) == grants, path
    # With the audit store back, the same calls go through.
    await api.ok("POST", "/admin/roles/dev/resources", json={"resource": "cache"})
    assert len(await grants_of(api.db)) == 3
    assert (await api.ok("GET", "/admin/audit/verify"))["ok"] is True


# ---------------------------------------------------------- 3. login tokens expire


async def test_a_login_token_past_its_expiry_is_refused(api: Api) -> None:
    tok = await api.make_user("dev@example.com")
    assert (await api.call("GET", "/auth/whoami", tok)).status_code == 200
    assert (await api.call("GET", "/me/resources", tok)).status_code == 200
    prefix = "_".join(tok.split("_", 2)[:2])
    async with api.db.write() as s:
        n = (
            await s.execute(
                update(LoginToken)
                .where(LoginToken.prefix == prefix)
                .values(expires_at=SYSTEM.now() - timedelta(seconds=1))
            )
        ).rowcount
    assert n == 1
    for path in ("/auth/whoami", "/me/resources", "/sessions/current"):
        r = await api.call("GET", path, tok)
        assert r.status_code == 401, (path, r.text)
        assert r.headers["content-type"].startswith("application/json")
        assert r.json()["error"]["code"] == "unauthorized"
        # plain: the hint to run `eg login` is the CLI's (cli/hints.py)
        assert r.json()["error"]["message"] == "not logged in or the login expired"
    r = await api.call("POST", "/sessions", tok, json={"duration": "1h"})
    assert r.status_code == 401
    async with api.db.read() as s:
        assert (await s.execute(select(func.count()).select_from(Session))).scalar_one() == 0
    # The admin's own token, untouched, still works: only the expired one is refused.
    assert (await api.call("GET", "/auth/whoami")).status_code == 200


async def test_a_short_lived_login_token_expires_on_its_own(tmp_path: Path) -> None:
    ttl = 2
    async with serve_api(sqlite_url_for(tmp_path), tmp_path, login_ttl_seconds=ttl) as api:
        t0 = time.monotonic()
        async with api.client() as c:
            r = await c.post("/auth/login", json={"email": ADMIN, "password": ADMIN_PW})
        assert r.status_code == 200
        tok = r.json()["token"]
        assert (await api.call("GET", "/auth/whoami", tok)).status_code == 200
        deadline = t0 + ttl + 3
        while True:
            r = await api.call("GET", "/auth/whoami", tok)
            if r.status_code != 200 or time.monotonic() > deadline:
                break
            await asyncio.sleep(0.1)
        elapsed = time.monotonic() - t0
        assert r.status_code == 401, r.text
        assert r.json()["error"]["code"] == "unauthorized"
        assert ttl - 0.2 <= elapsed <= ttl + 3, elapsed


# ------------------------------------------------------ 4. API keys stored hashed


async def test_api_keys_are_stored_hashed_and_a_wrong_secret_is_refused(api: Api) -> None:
    out = await api.ok("POST", "/admin/apikeys", json={"name": "ci", "scopes": ["sessions"]})
    raw = out["key"]
    kind, public, body = raw.split("_", 2)
    assert kind == "eg" and len(public) == 8 and len(body) >= 40
    async with api.db.read() as s:
        row = (await s.execute(select(ApiKey).where(ApiKey.name == "ci"))).scalar_one()
        values = [str(getattr(row, c.key)) for c in ApiKey.__table__.columns]
        assert row.prefix == f"eg_{public}"
        assert row.key_hash == hashlib.sha256(raw.encode()).hexdigest()
        assert not any(raw in v or body in v for v in values), values
        # Nowhere else either: not in the audit log, the change log or any other table.
        for t in Base.metadata.sorted_tables:
            for r in (await s.execute(select(t))).all():
                text = " ".join(str(v) for v in r)
                assert body not in text, t.name
    assert (await api.call("GET", "/me/resources", raw)).status_code == 200
    wrong_last = raw[:-1] + ("A" if raw[-1] != "A" else "B")
    for bad in (wrong_last, f"eg_{public}_{'x' * len(body)}", f"eg_{public}_{body}x"):
        r = await api.call("GET", "/me/resources", bad)
        assert r.status_code == 401, bad
        assert r.json()["error"]["code"] == "invalid_api_key"
    # The right secret under another prefix is refused too (lookup is by prefix).
    other = "eg_" + ("Z" * 8 if public != "Z" * 8 else "Y" * 8) + "_" + body
    assert (await api.call("GET", "/me/resources", other)).status_code == 401
    assert (await api.call("GET", "/me/resources", raw)).status_code == 200


# ------------------------------------------------- 5. heartbeats reach /admin/agents


def agent_row(items: list[dict[str, Any]], key_name: str) -> dict[str, Any]:
    return next(a for a in items if a["key_name"] == key_name)


async def test_heartbeats_carry_hostname_os_version_and_modes(api: Api) -> None:
    key = await api.agent_key("fw-1")
    await api.ok(
        "POST",
        "/admin/resources",
        json={"name": "fw", "type": "script", "agent": "fw-1", "script_dir": "/etc/eg/fw"},
    )
    row = agent_row((await api.ok("GET", "/admin/agents"))["items"], "fw-1")
    assert row["connected"] is False and row["hostname"] is None and row["os"] is None
    # A key without agent:connect cannot heartbeat, and nothing is recorded.
    ci = (await api.ok("POST", "/admin/apikeys", json={"name": "ci", "scopes": ["sessions"]}))[
        "key"
    ]
    beat = {"name": "fw-host", "hostname": "evil", "os": "x", "version": "9", "modes": ["scripts"]}
    r = await api.call("POST", "/agent/heartbeat", ci, json=beat)
    assert r.status_code == 403 and r.json()["error"]["code"] == "missing_scope"
    assert agent_row((await api.ok("GET", "/admin/agents"))["items"], "fw-1")["hostname"] is None

    # The agent's own client, as `eg-agent run` sends it.
    cfg = AgentConfig(
        server=ServerSection(url=api.url, api_key=key),
        agent=AgentSection(name="fw-host-1"),
        tunnel=TunnelSection(enabled=True, edge_url="ws://127.0.0.1:9"),
        scripts=ScriptsSection(enabled=True),
    )
    client = ControlClient(cfg)
    try:
        await client.heartbeat(tunnel_connected=True)
    finally:
        await client.close()
    items = (await api.ok("GET", "/admin/agents"))["items"]
    row = agent_row(items, "fw-1")
    assert row["name"] == "fw-host-1"
    assert row["connected"] is True and row["tunnel_connected"] is True
    assert row["hostname"] == socket.gethostname()
    assert row["os"] == f"{platform.system()} {platform.machine()}"
    assert row["version"] == __version__
    assert row["modes"] == ["tunnel", "scripts"]
    assert row["resources"] == ["fw"] and row["last_heartbeat"]

    # What the route is sent is what admins see.
    beat = {
        "name": "win-fw",
        "hostname": "fw-7.corp.example",
        "os": "Windows AMD64",
        "version": "0.9.1",
        "modes": ["scripts"],
        "tunnel_connected": False,
    }
    await api.ok("POST", "/agent/heartbeat", key, json=beat)
    row = agent_row((await api.ok("GET", "/admin/agents"))["items"], "fw-1")
    assert {k: row[k] for k in ("name", "hostname", "os", "version", "modes")} == {
        "name": "win-fw",
        "hostname": "fw-7.corp.example",
        "os": "Windows AMD64",
        "version": "0.9.1",
        "modes": ["scripts"],
    }
    assert row["connected"] is True and row["tunnel_connected"] is False
    # Coming online is audited once, not on every beat.
    online = (await api.ok("GET", "/admin/audit", params={"action": "agent.online"}))["items"]
    assert len(online) == 1
    # An oversized hostname is refused and changes nothing.
    r = await api.call("POST", "/agent/heartbeat", key, json={**beat, "hostname": "h" * 256})
    assert r.status_code == 422 and "error" in r.json()
    row = agent_row((await api.ok("GET", "/admin/agents"))["items"], "fw-1")
    assert row["hostname"] == "fw-7.corp.example"


# ------------------------------------------------------------------ 6. bounded sizes

BIG = 2 * 1024 * 1024  # a 2 MiB field: an oversized JSON body


async def test_oversized_input_is_refused_with_a_json_error_and_changes_nothing(
    api: Api,
) -> None:
    await api.agent_key("prod-agent")
    await api.ok("POST", "/admin/resources", json=tunnel("db"))
    await api.ok("POST", "/admin/roles", json={"name": "dev"})
    before = await table_counts(api.db)
    rule_ok = {"resource": "db", "cidr": "10.20.0.0/16"}
    guest_ok = {"resource": "db", "cidr": "10.21.0.0/16", "duration": "1h"}
    cases: list[tuple[str, dict[str, Any] | bytes, set[int]]] = [
        # users
        ("/admin/users", {"email": "u" * 65 + "@example.com"}, {400}),
        ("/admin/users", {"email": "u@" + "d" * 253}, {422}),
        ("/admin/users", {"email": "u@example.com", "password": "p" * 1025}, {400, 422}),
        ("/admin/users", {"email": "u@example.com", "password": "p" * BIG}, {413, 422}),
        ("/admin/users", {"email": "u@example.com", "pad": "x" * BIG}, {413, 422}),
        # resources
        ("/admin/resources", tunnel("r" * 65), {400}),
        ("/admin/resources", tunnel("r" * 257), {422}),
        ("/admin/resources", tunnel("big", "h" * 254), {400}),
        (
            "/admin/resources",
            {"name": "s", "type": "script", "agent": "prod-agent", "script_dir": "/" + "d" * 1024},
            {400},
        ),
        ("/admin/resources", tunnel("big", "h" * BIG), {413, 422}),
        ("/admin/resources", {**tunnel("big"), "pad": ["x" * 1000] * 2000}, {413, 422}),
        # static rules
        ("/admin/rules", {**rule_ok, "resource": "r" * 65}, {400, 404}),
        ("/admin/rules", {**rule_ok, "description": "d" * 257}, {400}),
        ("/admin/rules", {**rule_ok, "description": "d" * 301}, {422}),
        ("/admin/rules", {**rule_ok, "description": "d" * BIG}, {413, 422}),
        # guest grants
        ("/admin/guests", {**guest_ok, "resource": "r" * 65}, {400, 404}),
        ("/admin/guests", {**guest_ok, "note": "n" * 257}, {400}),
        ("/admin/guests", {**guest_ok, "note": "n" * 301}, {422}),
        ("/admin/guests", {**guest_ok, "duration": "1" * 33}, {422}),
        ("/admin/guests", {**guest_ok, "note": "n" * BIG}, {413, 422}),
        # roles, API keys, role links
        ("/admin/roles", {"name": "r" * 65}, {400}),
        ("/admin/roles/dev/resources", {"resource": "r" * BIG}, {413, 422}),
        ("/admin/apikeys", {"name": "k" * 65, "scopes": ["sessions"]}, {400}),
        ("/admin/apikeys", {"name": "k", "scopes": ["sessions"] * 9}, {422}),
        # not JSON, or nested past any reasonable depth
        ("/admin/rules", b"{" * 10 + b"not json", {400, 422}),
        ("/admin/rules", b'{"resource": ' + b"[" * 100_000 + b"]" * 100_000 + b"}", {400, 422}),
    ]
    for path, body, expected in cases:
        if isinstance(body, bytes):
            r = await api.call(
                "POST", path, content=body, headers={"content-type": "application/json"}
            )
        else:
            r = await api.call("POST", path, json=body)
        what = f"{path} {str(body)[:80]}"
        assert r.status_code in expected, (what, r.status_code, r.text[:300])
        assert r.headers["content-type"].startswith("application/json"), what
        err = r.json()["error"]
        assert err["code"] and err["message"], what
        assert len(r.content) < 2000, what  # the error does not echo the body back
    assert await table_counts(api.db) == before
    # The bounds are exact: 64-character names and 256-character texts are accepted.
    await api.ok("POST", "/admin/users", json={"email": "u" * 64 + "@example.com"})
    await api.ok("POST", "/admin/resources", json=tunnel("r" * 64))
    await api.ok("POST", "/admin/rules", json={**rule_ok, "description": "d" * 256})
    await api.ok("POST", "/admin/guests", json={**guest_ok, "note": "n" * 256})
    await api.ok("POST", "/admin/roles", json={"name": "r" * 64})


# ----------------------------------------- 2. expiry with several replicas (PostgreSQL)


async def seed_due(
    db: Database, n_users: int, n_guests: int, *, seconds: int, tag: str
) -> dict[str, Any]:
    """A tunnel and a script resource in one role, ``n_users`` users with a live session
    each (two grants apiece) and ``n_guests`` guest grants, all expiring in ``seconds``."""
    settings = Settings(database_url=db.url)
    async with db.write() as s:
        admin = (await s.execute(select(User).where(User.email == ADMIN))).scalar_one()
        key, _ = await apikeys.create_key(s, admin, f"agent-{tag}", ["agent:connect"], None, "t")
        tun = await resources.create_resource(
            s,
            admin.org_id,
            name=f"db-{tag}",
            type_="tunnel",
            agent=key.name,
            target_host="10.0.1.50",
            target_port=5432,
            script_dir=None,
            ports=settings.tunnel_ports,
            actor="t",
        )
        fw = await resources.create_resource(
            s,
            admin.org_id,
            name=f"fw-{tag}",
            type_="script",
            agent=key.name,
            target_host=None,
            target_port=None,
            script_dir="/etc/eg/fw",
            ports=settings.tunnel_ports,
            actor="t",
        )
        role = await roles.create_role(s, admin.org_id, f"role-{tag}", 3600, "t")
        await roles.add_resource(s, role, tun, "t")
        await roles.add_resource(s, role, fw, "t")
        users = [
            User(org_id=admin.org_id, email=f"u{i}-{tag}@example.com", password_hash="!")
            for i in range(n_users)
        ]
        s.add_all(users)
        await s.flush()
        s.add_all(RoleUser(role_id=role.id, user_id=u.id) for u in users)
        await s.flush()
        session_ids = []
        for i, u in enumerate(users):
            out = await sessions.start_session(
                s, u, f"10.77.{i // 200}.{i % 200 + 1}", seconds, settings
            )
            session_ids.append(out.session.id)
        guest_ids = []
        for i in range(n_guests):
            g = await access_rules.grant_guest(
                s, fw, f"10.88.{i}.0/24", seconds, f"guest {i}", False, "t"
            )
            guest_ids.append(g.id)
        await s.flush()
        grant_ids = list((await s.execute(select(Grant.id).order_by(Grant.id))).scalars())
    assert len(grant_ids) == 2 * n_users + n_guests
    return {
        "sessions": session_ids,
        "guests": guest_ids,
        "grants": grant_ids,
        "script_resource": fw.id,
        "cidrs": sorted(
            [f"10.77.{i // 200}.{i % 200 + 1}/32" for i in range(n_users)]
            + [f"10.88.{i}.0/24" for i in range(n_guests)]
        ),
    }


async def assert_expired_exactly_once(db: Database, seeded: dict[str, Any]) -> None:
    async with db.read() as s:
        ss = (await s.execute(select(Session).where(Session.id.in_(seeded["sessions"])))).scalars()
        assert {(x.end_reason, x.ended_at is not None) for x in ss} == {("expired", True)}
        gs = (
            await s.execute(select(GuestAccess).where(GuestAccess.id.in_(seeded["guests"])))
        ).scalars()
        assert {(x.end_reason, x.ended_at is not None) for x in gs} == {("expired", True)}
        assert (await s.execute(select(func.count()).select_from(Grant))).scalar_one() == 0
        events = (
            await s.execute(
                select(AuditEvent.action, AuditEvent.target, AuditEvent.details).where(
                    AuditEvent.action.in_(["session.expire", "guest.expire"])
                )
            )
        ).all()
        per_session = Counter(t for a, t, _ in events if a == "session.expire")
        assert per_session == Counter(f"session {i}" for i in seeded["sessions"])
        per_guest = Counter(json.loads(d)["guest_id"] for a, _, d in events if a == "guest.expire")
        assert per_guest == Counter(seeded["guests"])
        removed = Counter(
            json.loads(d)["id"]
            for d in (await s.execute(select(Change.data).where(Change.op == "grant.remove")))
            .scalars()
            .all()
        )
        assert removed == Counter(seeded["grants"])
        revokes = list(
            (
                await s.execute(
                    select(AgentCommand.cidr).where(
                        AgentCommand.resource_id == seeded["script_resource"],
                        AgentCommand.action == "revoke",
                    )
                )
            ).scalars()
        )
        assert sorted(revokes) == seeded["cidrs"]
        chain = await verify_chain(s)
    assert chain.ok, chain.message


@pytest.fixture
async def pg_url() -> AsyncIterator[str]:
    url = await asyncio.to_thread(pg_create_database)
    try:
        yield url
    finally:
        await asyncio.to_thread(pg_drop_database, url)


@pytest.mark.pg
async def test_two_expiry_workers_on_one_postgres_expire_each_row_once(
    pg_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("EG_ADMIN_EMAIL", ADMIN)
    monkeypatch.setenv("EG_ADMIN_PASSWORD", ADMIN_PW)
    a, b = Database(pg_url), Database(pg_url)  # two replicas: two engines, no shared lock
    try:
        await migrate_and_bootstrap(a, pg_url)
        seeded = await seed_due(a, 30, 6, seconds=3600, tag="w")
        async with a.write() as s:  # all of it is due now
            past = SYSTEM.now() - timedelta(seconds=1)
            await s.execute(update(Session).values(expires_at=past))
            await s.execute(update(GuestAccess).values(expires_at=past))
            await s.execute(update(Grant).values(expires_at=past))
        results = await asyncio.wait_for(
            asyncio.gather(*(expire_once(d) for d in (a, b, b, a, b, a))), 30
        )
        assert sum(results) == 30 + 6, results
        assert await asyncio.gather(expire_once(a), expire_once(b)) == [0, 0]
        await assert_expired_exactly_once(b, seeded)
    finally:
        await a.dispose()
        await b.dispose()


@pytest.mark.pg
async def test_two_control_planes_on_one_postgres_expire_a_batch_once(
    pg_url: str, tmp_path: Path
) -> None:
    for d in ("a", "b"):
        (tmp_path / d).mkdir()
    async with (
        serve_api(pg_url, tmp_path / "a") as one,
        serve_api(pg_url, tmp_path / "b") as two,
    ):
        seeded = await seed_due(one.db, 20, 4, seconds=1, tag="r")
        deadline = time.monotonic() + 8
        while time.monotonic() < deadline:
            async with two.db.read() as s:
                live = (await s.execute(select(func.count()).select_from(Grant))).scalar_one()
            if live == 0:
                break
            await asyncio.sleep(0.1)
        assert live == 0, "the replicas did not expire the batch within 8 s"
        await asyncio.sleep(0.5)  # let a late pass of either replica run, if it would
        await assert_expired_exactly_once(two.db, seeded)
        # Either replica's API sees the same, intact audit chain.
        for api in (one, two):
            assert (await api.ok("GET", "/admin/audit/verify"))["ok"] is True


async def test_bodies_over_the_cap_are_refused_before_any_route_reads_them(api: Api) -> None:
    """413 with a JSON error, declared (Content-Length) or streamed (chunked), signed in
    or not; nothing changes, and a body just under the cap still reaches the route."""
    from entryguard.control.body_limit import MAX_BODY

    before = await table_counts(api.db)
    huge = json.dumps({"email": "big@example.com", "pad": "x" * MAX_BODY}).encode()

    def chunked() -> Any:
        async def gen() -> AsyncIterator[bytes]:
            for i in range(0, len(huge), 1024 * 1024):
                yield huge[i : i + 1024 * 1024]

        return gen()

    for token in (None, api.admin_token):
        for content in (huge, None):
            headers = {"Content-Type": "application/json"}
            async with api.client(token) as c:
                r = await c.post("/admin/users", content=content or chunked(), headers=headers)
            assert r.status_code == 413, r.text
            assert r.json()["error"]["code"] == "body_too_large"
    assert await table_counts(api.db) == before
    # Under the cap, the route decides: here its schema refuses the unknown field.
    fits = json.dumps({"email": "fits@example.com", "pad": "x" * (MAX_BODY // 2)})
    r = await api.call(
        "POST", "/admin/users", content=fits, headers={"Content-Type": "application/json"}
    )
    assert r.status_code == 422, r.text
    assert r.json()["error"] == {
        "code": "invalid_request",
        "message": "pad: Extra inputs are not permitted",
    }
