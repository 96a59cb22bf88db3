"""The dashboard's HTTP contract: cookies, CSRF, refusals, errors (SQLite and PostgreSQL).

The browser tests (tests/browser) click through the pages; these pin down what a
browser does not show: cookie flags, forged and missing tokens, redirects, headers.
"""

from __future__ import annotations

import contextlib
import itertools
import pkgutil
import re
from collections.abc import AsyncIterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from html.parser import HTMLParser
from importlib import import_module
from pathlib import Path
from typing import Any

import httpx
import pytest
import pytest_asyncio
from fastapi import APIRouter
from fastapi.routing import APIRoute
from sqlalchemy import func, select, text, update

import entryguard.control.web
from entryguard.control.db.database import sqlite_url_for
from entryguard.control.db.models import AgentStatus, AuditEvent, Base, LoginToken, Role
from tests.integration.conftest import ADMIN, ADMIN_PW, Api, serve_api
from tests.integration.test_api_access import setup_tunnel

HTML = {"accept": "text/html,application/xhtml+xml"}


def csrf_of(html: str) -> str:
    m = re.search(r'name="csrf" value="([^"]+)"', html)
    assert m, "no CSRF field in the page"
    return m.group(1)


@contextlib.asynccontextmanager
async def signed_in(
    api: Api, email: str = ADMIN, password: str = ADMIN_PW, source: str = "127.0.0.1"
) -> AsyncIterator[httpx.AsyncClient]:
    """A browser-like client with a dashboard session, connecting from ``source``."""
    transport = httpx.AsyncHTTPTransport(local_address=source)
    async with httpx.AsyncClient(
        base_url=api.url, headers=HTML, timeout=30, transport=transport
    ) as c:
        form = await c.get("/signin")
        r = await c.post(
            "/signin",
            data={"csrf": csrf_of(form.text), "email": email, "password": password, "next": "/"},
        )
        assert r.status_code == 303 and r.headers["location"] == "/", r.text
        yield c


async def audit_count(api: Api) -> int:
    async with api.db.read() as s:
        return int((await s.execute(select(func.count()).select_from(AuditEvent))).scalar_one())


async def test_session_cookie_flags_and_sign_out(api: Api) -> None:
    async with httpx.AsyncClient(base_url=api.url, headers=HTML) as c:
        form = await c.get("/signin")
        assert "default-src 'self'" in form.headers["content-security-policy"]
        assert form.headers["x-frame-options"] == "DENY"
        r = await c.post(
            "/signin",
            data={"csrf": csrf_of(form.text), "email": ADMIN, "password": ADMIN_PW},
        )
        cookie = next(h for h in r.headers.get_list("set-cookie") if h.startswith("eg_session="))
        assert "HttpOnly" in cookie and "SameSite=lax" in cookie and "Path=/" in cookie
        assert "Secure" not in cookie  # plain http on loopback
        assert c.cookies["eg_session"].startswith("egs_")
        home = await c.get("/")
        assert home.status_code == 200 and ADMIN in home.text
        r = await c.post("/signout", data={"csrf": csrf_of(home.text)})
        assert r.status_code == 303 and r.headers["location"] == "/signin"
    async with api.db.read() as s:
        tokens = (await s.execute(select(LoginToken).order_by(LoginToken.id))).scalars().all()
    assert tokens[-1].revoked_at is not None  # the dashboard's login token, revoked


async def test_secure_cookie_when_configured(tmp_path: Path) -> None:
    async with (
        serve_api(sqlite_url_for(tmp_path), tmp_path, secure_cookies=True) as api,
        httpx.AsyncClient(base_url=api.url, headers=HTML) as c,
    ):
        form = await c.get("/signin")
        assert "Secure" in form.headers["set-cookie"]
        token = csrf_of(form.text)  # httpx keeps Secure cookies from plain http: send it
        r = await c.post(
            "/signin",
            data={"csrf": token, "email": ADMIN, "password": ADMIN_PW},
            headers={"cookie": f"eg_signin_csrf={token}"},
        )
        cookie = next(h for h in r.headers.get_list("set-cookie") if h.startswith("eg_session="))
        assert "Secure" in cookie


async def test_sign_in_refusals(api: Api) -> None:
    async with httpx.AsyncClient(base_url=api.url, headers=HTML) as c:
        form = await c.get("/signin")
        token = csrf_of(form.text)
        r = await c.post("/signin", data={"csrf": token, "email": ADMIN, "password": "wrong-pass"})
        assert r.status_code == 401 and "Wrong email or password" in r.text
        assert "wrong-pass" not in r.text
        r = await c.post("/signin", data={"csrf": "forged", "email": ADMIN, "password": ADMIN_PW})
        assert r.status_code == 403 and "eg_session" not in c.cookies
        r = await c.post("/signin", data={"csrf": token, "email": "", "password": ""})
        assert r.status_code == 400 and 'data-error-for="email"' in r.text
        # Only local paths after sign-in: no open redirect.
        r = await c.post(
            "/signin",
            data={
                "csrf": token,
                "email": ADMIN,
                "password": ADMIN_PW,
                "next": "//evil.example/x",
            },
        )
        assert r.status_code == 303 and r.headers["location"] == "/"
    async with api.db.read() as s:
        failed = (
            await s.execute(select(AuditEvent).where(AuditEvent.action == "auth.login_failed"))
        ).scalars()
        assert len(list(failed)) == 1


async def test_forms_need_the_session_csrf_token(api: Api) -> None:
    async with signed_in(api) as c:
        before = await audit_count(api)
        for data in ({"name": "ops", "max_duration": "8h"}, {"csrf": "x" * 64, "name": "ops"}):
            r = await c.post("/admin/roles", data=data)
            assert r.status_code == 403 and "nothing was changed" in r.text
        # Another session's token is not this session's token.
        async with signed_in(api) as other:
            foreign = csrf_of((await other.get("/admin/roles")).text)
        r = await c.post("/admin/roles", data={"csrf": foreign, "name": "ops"})
        assert r.status_code == 403
        async with api.db.read() as s:
            assert (await s.execute(select(func.count()).select_from(Role))).scalar_one() == 0
        assert await audit_count(api) == before + 1  # the other session's sign-in only


async def test_non_admins_are_refused_by_the_server(api: Api) -> None:
    await api.ok(
        "POST", "/admin/users", json={"email": "dev@example.com", "password": "dev-pw-123"}
    )
    async with signed_in(api, "dev@example.com", "dev-pw-123") as c:
        home = await c.get("/")
        assert home.status_code == 200 and "/admin/" not in home.text
        token = csrf_of(home.text)
        for path in ("/admin/resources", "/admin/users", "/admin/audit", "/admin/roles/x"):
            r = await c.get(path)
            assert r.status_code == 403 and "Admins only" in r.text, path
        r = await c.post("/admin/users", data={"csrf": token, "email": "evil@example.com"})
        assert r.status_code == 403
        r = await c.get("/admin/audit/export", params={"format": "csv"})
        assert r.status_code == 403 and "text/html" in r.headers["content-type"]
    users = (await api.ok("GET", "/admin/users"))["items"]
    assert [u["email"] for u in users] == [ADMIN, "dev@example.com"]


async def test_signed_out_pages_redirect_to_sign_in(api: Api) -> None:
    async with httpx.AsyncClient(base_url=api.url, headers=HTML) as c:
        r = await c.get("/admin/audit", params={"actor": "a b"})
        assert r.status_code == 303
        assert r.headers["location"] == "/signin?next=%2Fadmin%2Faudit%3Factor%3Da%2Bb"
        r = await c.post("/session/start", data={"duration": "4"})
        assert r.status_code == 303 and r.headers["location"].startswith("/signin")


async def test_login_redirects_to_the_sign_in_page(api: Api) -> None:
    async with httpx.AsyncClient(base_url=api.url, headers=HTML) as c:
        r = await c.get("/login")
        assert r.status_code == 303 and r.headers["location"] == "/signin"
        r = await c.get("/login", params={"next": "/admin/audit?actor=a b"})
        assert r.status_code == 303
        assert r.headers["location"] == "/signin?next=%2Fadmin%2Faudit%3Factor%3Da%20b"
        r = await c.get("/login", params={"next": "//evil.example/"})
        assert r.headers["location"] == "/signin?next=%2F"  # no open redirect
        # Followed, it is the sign-in form, and signing in lands on ``next``.
        form = await c.get("/login", params={"next": "/admin/roles"}, follow_redirects=True)
        assert form.status_code == 200 and 'name="next" value="/admin/roles"' in form.text
        r = await c.post(
            "/signin",
            data={
                "csrf": csrf_of(form.text),
                "email": ADMIN,
                "password": ADMIN_PW,
                "next": "/admin/roles",
            },
        )
        assert r.status_code == 303 and r.headers["location"] == "/admin/roles"
    async with httpx.AsyncClient(base_url=api.url) as c:  # a script gets the redirect too
        assert (await c.get("/login")).status_code == 303


async def test_the_api_accepts_the_cookie_and_wants_csrf_for_writes(api: Api) -> None:
    async with signed_in(api) as c:
        token = csrf_of((await c.get("/")).text)
        r = await c.get("/api/v1/auth/whoami")
        assert r.status_code == 200 and r.json()["credential"] == "cookie"
        r = await c.post("/api/v1/admin/roles", json={"name": "ops"})
        assert r.status_code == 401  # a cross-site write cannot ride on the cookie
        r = await c.post(
            "/api/v1/admin/roles", json={"name": "ops"}, headers={"x-csrf-token": token}
        )
        assert r.status_code == 201, r.text
    # An API key is never accepted from a cookie.
    key = await api.agent_key("prod-agent")
    async with httpx.AsyncClient(base_url=api.url, cookies={"eg_session": key}) as c:
        assert (await c.get("/api/v1/auth/whoami")).status_code == 401


async def test_errors_are_pages_for_browsers_and_json_for_the_api(api: Api) -> None:
    async with signed_in(api) as c:
        r = await c.get("/no/such/page")
        assert r.status_code == 404 and "text/html" in r.headers["content-type"]
        assert "Sign out" in r.text  # the signed-in layout
        r = await c.get("/admin/roles/nope")
        assert r.status_code == 404 and "no role" in r.text
        r = await c.get("/api/v1/no/such/route")
        assert r.status_code == 404 and r.json()["error"]["code"] == "not_found"
        r = await c.get("/static/app.css")
        assert r.status_code == 200 and r.headers["content-type"].startswith("text/css")
    async with httpx.AsyncClient(base_url=api.url) as c:  # a script, not a browser
        r = await c.get("/no/such/page")
        assert r.status_code == 404 and r.json()["error"]["code"] == "not_found"


async def test_audit_filters_and_exports(api: Api) -> None:
    await api.ok("POST", "/admin/roles", json={"name": "ops"})
    async with signed_in(api) as c:
        r = await c.get("/admin/audit", params={"action": "role.", "actor": ADMIN})
        assert r.status_code == 200 and 'data-action="role.create"' in r.text
        assert 'data-action="auth.login"' not in r.text
        r = await c.get("/admin/audit", params={"from": "yesterday"})
        assert r.status_code == 400 and 'data-error-for="from"' in r.text
        r = await c.get(
            "/admin/audit", params={"from": "2030-01-02T00:00", "to": "2030-01-01T00:00"}
        )
        assert r.status_code == 400 and 'data-error-for="to"' in r.text
        r = await c.get(
            "/admin/audit", params={"from": "2000-01-01T00:00", "to": "2001-01-01T00:00"}
        )
        assert r.status_code == 200 and "No matching events" in r.text
        r = await c.get("/admin/audit/export", params={"format": "jsonl", "action": "role."})
        assert r.headers["content-type"] == "application/x-ndjson"
        assert "attachment" in r.headers["content-disposition"]
        assert [line.count('"action": "role.create"') for line in r.text.splitlines()] == [1]
        r = await c.get("/admin/audit/export", params={"format": "xml"})
        assert r.status_code == 400


async def test_a_generated_password_is_shown_once_and_works(api: Api) -> None:
    async with signed_in(api) as c:
        token = csrf_of((await c.get("/admin/users")).text)
        r = await c.post("/admin/users", data={"csrf": token, "email": "new@example.com"})
        assert r.status_code == 201 and "shown <strong>only once</strong>" in r.text
        m = re.search(r'data-testid="new-password".*?data-copy-text>([^<]+)</code>', r.text, re.S)
        assert m is not None
        assert "shown <strong>only once" not in (await c.get("/admin/users")).text
    async with signed_in(api, "new@example.com", m.group(1)) as c:
        assert "new@example.com" in (await c.get("/")).text


# ---- what pages show, read from their tables -----------------------------------------


class _Rows(HTMLParser):
    """Every ``<tr>`` with ``<td>`` cells: its attributes and each cell's text."""

    def __init__(self) -> None:
        super().__init__()
        self.rows: list[tuple[dict[str, str | None], list[str]]] = []
        self._attrs: dict[str, str | None] = {}
        self._cells: list[str] = []
        self._cell: list[str] | None = None

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        if tag == "tr":
            self._attrs, self._cells = dict(attrs), []
        elif tag == "td":
            self._cell = []
        elif self._cell is not None and tag != "wbr":  # <wbr>: a line may break, no space
            self._cell.append(" ")  # <div class="sub"> inside a cell is a new word

    def handle_endtag(self, tag: str) -> None:
        if tag == "td" and self._cell is not None:
            self._cells.append(" ".join("".join(self._cell).split()))
            self._cell = None
        elif tag == "tr" and self._cells:
            self.rows.append((self._attrs, self._cells))

    def handle_data(self, data: str) -> None:
        if self._cell is not None:
            self._cell.append(data)


def table_rows(html: str) -> list[tuple[dict[str, str | None], list[str]]]:
    parser = _Rows()
    parser.feed(html)
    return parser.rows


def rows_by(html: str, attr: str) -> dict[str, list[str]]:
    """The cells of each row carrying ``attr`` (``data-agent``, ``data-session``…), by its value."""
    return {str(a[attr]): cells for a, cells in table_rows(html) if attr in a}


def shown_time(cell: str) -> datetime:
    """A time as the dashboard prints it: ``2026-11-22 21:04:05 UTC``."""
    return datetime.strptime(cell, "%Y-%m-%d %H:%M:%S UTC").replace(tzinfo=UTC)


def api_time(value: str) -> datetime:
    return datetime.fromisoformat(value.replace("Z", "+00:00")).replace(microsecond=0)


async def test_agents_page_shows_connected_heartbeat_version_and_targets(api: Api) -> None:
    key = await api.agent_key("prod-agent")
    await api.agent_key("spare-agent")
    await setup_tunnel(api)  # production-db → 10.0.1.50:5432 through prod-agent
    info = {
        "name": "gateway-1",
        "version": "1.2.3",
        "hostname": "db-gateway",
        "os": "linux",
        "modes": ["tunnel", "script"],
        "tunnel_connected": True,
    }
    # Only an agent:connect key reports in; the admin's login token is refused.
    assert (await api.call("POST", "/agent/heartbeat", json=info)).status_code == 403
    sent = datetime.now(UTC)
    assert await api.ok("POST", "/agent/heartbeat", key, json=info) == {"ok": True}
    async with signed_in(api) as c:
        r = await c.get("/admin/agents")
        assert r.status_code == 200
        rows = rows_by(r.text, "data-agent")
        assert set(rows) == {"prod-agent", "spare-agent"}
        name, status, heartbeat, version, host, targets, resources = rows["prod-agent"]
        assert name == "gateway-1 key prod-agent"
        assert status == "Connected tunnel, script · tunnel up"
        assert abs(shown_time(heartbeat) - sent) < timedelta(seconds=5)
        [agent] = [a for a in (await api.ok("GET", "/admin/agents"))["items"] if a["version"]]
        assert shown_time(heartbeat) == api_time(agent["last_heartbeat"])
        assert (version, host, targets, resources) == (
            "1.2.3",
            "db-gateway linux",
            "10.0.1.50:5432",
            "production-db",
        )
        assert rows["spare-agent"][1:4] == ["Never seen", "—", "—"]

        # Three missed heartbeats later the same agent is offline; its last one stays shown.
        async with api.db.sessions() as s, s.begin():
            await s.execute(
                update(AgentStatus).values(last_heartbeat=datetime.now(UTC) - timedelta(hours=1))
            )
        offline = rows_by((await c.get("/admin/agents")).text, "data-agent")["prod-agent"]
        assert offline[1] == "Offline"
        assert shown_time(offline[2]) < sent - timedelta(minutes=59)


async def test_a_user_never_sees_another_users_sessions(api: Api) -> None:
    await setup_tunnel(api)
    alice = await api.make_user("alice@example.com", "alice-password-1")
    await api.make_user("bob@example.com", "bob-password-1")
    for email in ("alice@example.com", "bob@example.com"):
        await api.ok("POST", "/admin/roles/developers/users", json={"email": email})
    # Alice: an ended session from 127.0.0.2, a live one from 127.0.0.4.
    await api.ok("POST", "/sessions", alice, json={"duration": "1h"}, source="127.0.0.2")
    await api.ok("DELETE", "/sessions/current", alice, source="127.0.0.2")
    live = (await api.ok("POST", "/sessions", alice, json={"duration": "2h"}, source="127.0.0.4"))[
        "session"
    ]
    alice_history = (await api.ok("GET", "/sessions/history", alice))["items"]
    assert [x["ip"] for x in alice_history] == ["127.0.0.4", "127.0.0.2"]
    alice_ids = {str(x["id"]) for x in alice_history}
    alice_id = next(
        u["id"]
        for u in (await api.ok("GET", "/admin/users"))["items"]
        if u["email"] == "alice@example.com"
    )
    secrets_of_alice = ("alice@example.com", "127.0.0.2", "127.0.0.4")

    async with signed_in(api, "bob@example.com", "bob-password-1", source="127.0.0.3") as bob:
        home = await bob.get("/")
        token = csrf_of(home.text)
        r = await bob.post("/session/start", data={"csrf": token, "duration": "1h"})
        assert r.status_code == 303
        home = await bob.get("/")
        assert "<code>127.0.0.3</code>" in home.text  # his own session is on the page
        pages = {"/": home.text}
        for query in ("", "?user=alice@example.com", f"?user_id={alice_id}", "?all=1"):
            r = await bob.get(f"/history{query}")
            assert r.status_code == 200
            cells = [c for _, c in table_rows(r.text)]
            assert [c[1] for c in cells] == ["127.0.0.3"], query  # his one session only
            assert not {c[0] for c in cells} & alice_ids
            pages[f"/history{query}"] = r.text
        # The REST API with the same cookie: his history and session, nobody else's.
        r = await bob.get("/api/v1/sessions/history")
        assert [x["ip"] for x in r.json()["items"]] == ["127.0.0.3"]
        r = await bob.get("/api/v1/sessions/current")
        assert r.json()["session"]["user_email"] == "bob@example.com"
        # Routes that name another user's session or account refuse him, server-side.
        refused = [
            await bob.post(f"/admin/sessions/{live['id']}/revoke", data={"csrf": token}),
            await bob.post("/admin/users/alice@example.com/disable", data={"csrf": token}),
            await bob.get("/admin/sessions"),
            await bob.get("/admin/roles/developers"),
            await bob.get("/admin/audit", params={"actor": "alice"}),
            await bob.get("/admin/audit/export", params={"format": "jsonl"}),
        ]
        headers = {"x-csrf-token": token, "accept": "application/json"}
        for method, path in (
            ("DELETE", f"/api/v1/admin/sessions/{live['id']}"),
            ("POST", "/api/v1/admin/users/alice@example.com/disable"),
            ("GET", "/api/v1/admin/sessions"),
            ("GET", "/api/v1/admin/audit"),
            ("GET", "/api/v1/admin/users"),
        ):
            refused.append(await bob.request(method, path, headers=headers))
        for r in refused:
            assert r.status_code == 403, (r.request.url, r.status_code)
            pages[str(r.request.url)] = r.text
        for where, body in pages.items():
            for secret in secrets_of_alice:
                assert secret not in body, (where, secret)
    # Alice's session and account are untouched (a disabled account's token would be refused).
    now = (await api.ok("GET", "/sessions/current", alice))["session"]
    assert (now["id"], now["ip"], now["active"]) == (live["id"], "127.0.0.4", True)


async def test_audit_page_shows_a_broken_chain_naming_the_row(api: Api) -> None:
    await api.ok("POST", "/admin/roles", json={"name": "ops"})
    await api.ok("POST", "/admin/roles", json={"name": "dev"})

    def chain(html: str) -> tuple[str, str]:
        m = re.search(r'data-testid="chain" data-ok="(\w+)">(.*?)</div>', html, re.S)
        assert m is not None, "no chain check on the page"
        return m.group(1), " ".join(re.sub(r"<[^>]+>", "", m.group(2)).split())

    async with signed_in(api) as c:
        ok, message = chain((await c.get("/admin/audit")).text)
        assert ok == "true" and message.startswith("Hash chain verified. audit chain intact")
        events = (await api.ok("GET", "/admin/audit"))["items"]
        victim = next(e["id"] for e in events if e["action"] == "role.create")
        after = min(e["id"] for e in events if e["id"] > victim)
        async with api.db.sessions() as s, s.begin():
            await s.execute(
                text("UPDATE audit_events SET actor = 'mallory' WHERE id = :i"), {"i": victim}
            )
        r = await c.get("/admin/audit")
        assert r.status_code == 200
        ok, message = chain(r.text)
        assert ok == "false"
        assert (
            message
            == f"Hash chain broken! audit event {victim} was altered: its hash does not match"
        )
        # Put it back, then delete it: the row after the gap is the one named.
        async with api.db.sessions() as s, s.begin():
            await s.execute(
                text("UPDATE audit_events SET actor = :a WHERE id = :i"),
                {"a": ADMIN, "i": victim},
            )
        assert chain((await c.get("/admin/audit")).text)[0] == "true"
        async with api.db.sessions() as s, s.begin():
            await s.execute(text("DELETE FROM audit_events WHERE id = :i"), {"i": victim})
        ok, message = chain((await c.get("/admin/audit")).text)
        assert ok == "false" and message.startswith(
            f"Hash chain broken! audit event {after}: chain broken before it"
        )


# ---- CSRF: every state-changing form ---------------------------------------------------


def dashboard_posts() -> list[str]:
    """Every POST route of the dashboard, found in its modules (routes_*.py, auth.py)."""
    found = set()
    for info in pkgutil.iter_modules(entryguard.control.web.__path__):
        mod = import_module(f"entryguard.control.web.{info.name}")
        router = getattr(mod, "router", None)
        if isinstance(router, APIRouter):
            for route in router.routes:
                if isinstance(route, APIRoute) and "POST" in route.methods:
                    found.add(route.path)
    return sorted(found)


@dataclass
class World:
    """Objects of one CSRF case, named apart from every other case's (one shared server)."""

    n: int
    key: str
    resource: str
    role: str
    empty_role: str
    user: str
    password: str
    session_id: int
    rule_id: int
    guest_id: int


WORLDS = itertools.count(1)


async def make_world(api: Api) -> World:
    n = next(WORLDS)
    names = (f"agent-{n}", f"fw-{n}", f"role-{n}", f"empty-{n}", f"u{n}@example.com")
    w = World(n, *names, password=f"user-{n}-password", session_id=0, rule_id=0, guest_id=0)
    await api.agent_key(w.key)
    body = {"name": w.resource, "type": "script", "agent": w.key, "script_dir": "/opt/fw"}
    await api.ok("POST", "/admin/resources", json=body)
    for role in (w.role, w.empty_role):
        await api.ok("POST", "/admin/roles", json={"name": role})
    await api.ok("POST", f"/admin/roles/{w.role}/resources", json={"resource": w.resource})
    token = await api.make_user(w.user, w.password)
    await api.ok("POST", f"/admin/roles/{w.role}/users", json={"email": w.user})
    w.session_id = (await api.ok("POST", "/sessions", token, json={"duration": "1h"}))["session"][
        "id"
    ]
    rule = {"resource": w.resource, "cidr": f"10.{n}.0.0/16", "description": "office"}
    w.rule_id = (await api.ok("POST", "/admin/rules", json=rule))["rule"]["id"]
    guest = {"resource": w.resource, "cidr": f"192.0.2.{n}", "duration": "4h"}
    w.guest_id = (await api.ok("POST", "/admin/guests", json=guest))["guest"]["id"]
    return w


def csrf_case(route: str, w: World) -> tuple[str, str, dict[str, str]]:
    """Who submits the form (anon, admin or user), where, and a valid form's fields."""
    n = w.n
    cases: dict[str, tuple[str, str, dict[str, str]]] = {
        "/signin": ("anon", "/signin", {"email": ADMIN, "password": ADMIN_PW, "next": "/"}),
        "/signout": ("user", "/signout", {}),
        "/session/start": ("user", "/session/start", {"duration": "2h"}),
        "/session/stop": ("user", "/session/stop", {}),
        "/admin/resources/new": (
            "admin",
            "/admin/resources/new",
            {
                "provider": "AGENT",
                "type": "script",
                "agent": w.key,
                "name": f"new-{n}",
                "script_dir": "/opt/new",
            },
        ),
        "/admin/resources/{name}/delete": ("admin", f"/admin/resources/{w.resource}/delete", {}),
        "/admin/rules": (
            "admin",
            "/admin/rules",
            {"resource": w.resource, "cidr": "198.51.100.0/24", "description": "vpn"},
        ),
        "/admin/rules/{rule_id}/delete": ("admin", f"/admin/rules/{w.rule_id}/delete", {}),
        "/admin/guests": (
            "admin",
            "/admin/guests",
            {"resource": w.resource, "cidr": "203.0.113.9", "duration": "4h", "note": "audit"},
        ),
        "/admin/guests/{guest_id}/delete": ("admin", f"/admin/guests/{w.guest_id}/delete", {}),
        "/admin/roles": ("admin", "/admin/roles", {"name": f"new-role-{n}", "max_duration": "8h"}),
        "/admin/roles/{name}/resources": (
            "admin",
            f"/admin/roles/{w.empty_role}/resources",
            {"resource": w.resource},
        ),
        "/admin/roles/{name}/resources/remove": (
            "admin",
            f"/admin/roles/{w.role}/resources/remove",
            {"resource": w.resource},
        ),
        "/admin/roles/{name}/users": (
            "admin",
            f"/admin/roles/{w.empty_role}/users",
            {"user": w.user},
        ),
        "/admin/roles/{name}/users/remove": (
            "admin",
            f"/admin/roles/{w.role}/users/remove",
            {"user": w.user},
        ),
        "/admin/users": (
            "admin",
            "/admin/users",
            {"email": f"new-{n}@example.com", "password": "new-user-password-1"},
        ),
        "/admin/users/{email}/disable": ("admin", f"/admin/users/{w.user}/disable", {}),
        "/admin/apikeys": ("admin", "/admin/apikeys", {"name": f"key-{n}", "scope": "admin"}),
        "/admin/apikeys/{name}/revoke": ("admin", f"/admin/apikeys/{w.key}/revoke", {}),
        "/admin/sessions/{session_id}/revoke": (
            "admin",
            f"/admin/sessions/{w.session_id}/revoke",
            {},
        ),
    }
    assert route in cases, f"POST {route} has no CSRF case here: add one"
    return cases[route]


def one_off(token: str) -> str:
    """The token with its last character changed: same length, one character wrong."""
    return token[:-1] + ("1" if token[-1] == "0" else "0")


async def db_state(api: Api) -> dict[str, list[tuple[Any, ...]]]:
    """Every row of every table (but an API key's informational last_used_at)."""
    out = {}
    async with api.db.read() as s:
        for table in Base.metadata.sorted_tables:
            cols = [
                c
                for c in table.columns
                if not (table.name == "api_keys" and c.name == "last_used_at")
            ]
            rows = await s.execute(select(*cols).order_by(*table.primary_key.columns))
            out[table.name] = [tuple(r) for r in rows]
    return out


@dataclass
class Shared:
    api: Api
    admin: httpx.AsyncClient
    """One admin session for every admin form (no case signs the admin out)."""
    foreign: str
    """The CSRF token of another admin session."""


@pytest_asyncio.fixture(loop_scope="module", scope="module")
async def shared(tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[Shared]:
    """One control plane for all CSRF cases (each makes its own objects in it)."""
    tmp = tmp_path_factory.mktemp("csrf")
    async with (
        serve_api(sqlite_url_for(tmp), tmp) as api,
        signed_in(api) as admin,
        signed_in(api) as other,
    ):
        yield Shared(api, admin, csrf_of((await other.get("/")).text))


@contextlib.asynccontextmanager
async def client_for(sh: Shared, who: str, w: World) -> AsyncIterator[httpx.AsyncClient]:
    if who == "admin":
        yield sh.admin
    elif who == "user":
        async with signed_in(sh.api, w.user, w.password) as c:
            yield c
    else:
        async with httpx.AsyncClient(base_url=sh.api.url, headers=HTML, timeout=30) as c:
            yield c


@pytest.mark.asyncio(loop_scope="module")
@pytest.mark.parametrize("route", dashboard_posts())
async def test_every_form_refuses_a_missing_or_wrong_csrf_token(shared: Shared, route: str) -> None:
    api = shared.api
    w = await make_world(api)
    who, path, fields = csrf_case(route, w)
    async with client_for(shared, who, w) as c:
        if who == "anon":  # the sign-in form: its token, and another visitor's
            good = csrf_of((await c.get("/signin")).text)
            async with httpx.AsyncClient(base_url=api.url, headers=HTML) as stranger:
                foreign = csrf_of((await stranger.get("/signin")).text)
        else:
            good, foreign = csrf_of((await c.get("/")).text), shared.foreign
        assert foreign != good
        before = await db_state(api)
        for token in (None, "", "0" * 64, good[:-1], one_off(good), foreign):
            data = fields if token is None else {**fields, "csrf": token}
            r = await c.post(path, data=data)
            assert r.status_code == 403, (token, r.status_code, r.text[:300])
            assert "expired" in r.text and "location" not in r.headers
            assert await db_state(api) == before, f"a refused POST {path} changed the database"
        # The same form with its page's token goes through: the refusal was the token's.
        r = await c.post(path, data={**fields, "csrf": good})
        assert r.status_code in (201, 303), (r.status_code, r.text[:500])
        assert await db_state(api) != before


async def test_the_api_wants_the_csrf_header_for_every_write_with_the_cookie(api: Api) -> None:
    await setup_tunnel(api)
    dev = await api.make_user("dev@example.com", "dev-password-1")
    await api.ok("POST", "/admin/roles/developers/users", json={"email": "dev@example.com"})
    sid = (await api.ok("POST", "/sessions", dev, json={"duration": "1h"}))["session"]["id"]
    writes = [
        ("DELETE", f"/api/v1/admin/sessions/{sid}", None),
        ("POST", "/api/v1/admin/users", {"email": "x@example.com", "password": "x-password-1"}),
        ("POST", "/api/v1/admin/roles", {"name": "ops"}),
        ("DELETE", "/api/v1/admin/roles/developers/users/dev@example.com", None),
        ("DELETE", "/api/v1/admin/resources/production-db", None),
        ("POST", "/api/v1/admin/apikeys", {"name": "k", "scopes": ["admin"]}),
    ]
    async with signed_in(api) as c:
        token = csrf_of((await c.get("/")).text)
        before = await db_state(api)
        for method, path, body in writes:
            for wrong in (None, "0" * 64, token[:-1], one_off(token)):
                headers = {} if wrong is None else {"x-csrf-token": wrong}
                r = await c.request(method, path, json=body, headers=headers)
                assert r.status_code == 401, (method, path, headers, r.status_code)
        assert await db_state(api) == before
        for method, path, body in writes:  # with the header, each goes through
            r = await c.request(method, path, json=body, headers={"x-csrf-token": token})
            assert r.status_code < 300, (method, path, r.status_code, r.text)
        assert await db_state(api) != before
