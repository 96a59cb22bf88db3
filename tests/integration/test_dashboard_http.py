"""The dashboard's HTTP contract: cookies, CSRF, refusals, errors (SQLite and PostgreSQL).

The browser tests (tests/browser) click through the pages; these pin down what a
browser does not show: cookie flags, forged and missing tokens, redirects, headers.
"""

from __future__ import annotations

import contextlib
import re
from collections.abc import AsyncIterator
from pathlib import Path

import httpx
from sqlalchemy import func, select

from entryguard.control.db.database import sqlite_url_for
from entryguard.control.db.models import AuditEvent, LoginToken, Role
from tests.integration.conftest import ADMIN, ADMIN_PW, Api, serve_api

HTML = {"accept": "text/html,application/xhtml+xml"}


def csrf_of(html: str) -> str:
    m = re.search(r'name="csrf" value="([^"]+)"', html)
    assert m, "no CSRF field in the page"
    return m.group(1)


@contextlib.asynccontextmanager
async def signed_in(
    api: Api, email: str = ADMIN, password: str = ADMIN_PW
) -> AsyncIterator[httpx.AsyncClient]:
    """A browser-like client with a dashboard session."""
    async with httpx.AsyncClient(base_url=api.url, headers=HTML, timeout=30) as c:
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
