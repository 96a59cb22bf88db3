"""Expiry, driven by a FakeClock: the real services on a real (migrated) SQLite database,
time moved by ``clock.advance`` instead of slept through.

Each test checks both sides of the deadline: still valid a second before it, refused (or
ended) at it.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from sqlalchemy import func, select

from entryguard.clock import FakeClock
from entryguard.control.auth.principal import authenticate
from entryguard.control.bootstrap import migrate_and_bootstrap
from entryguard.control.db.database import Database, sqlite_url_for
from entryguard.control.db.models import Grant, GuestAccess, Resource, Session, User
from entryguard.control.services import access_rules, apikeys, resources, roles, sessions, users
from entryguard.control.services.expiry import expire_once, next_due
from entryguard.control.settings import Settings
from entryguard.errors import Unauthorized

ADMIN = "admin@example.com"
PASSWORD = "correct horse battery staple"
HOUR = 3600


@pytest.fixture
async def clock() -> FakeClock:
    return FakeClock()


@pytest.fixture
async def db(
    tmp_path: Path, clock: FakeClock, monkeypatch: pytest.MonkeyPatch
) -> AsyncIterator[Database]:
    monkeypatch.setenv("EG_ADMIN_EMAIL", ADMIN)
    monkeypatch.setenv("EG_ADMIN_PASSWORD", PASSWORD)
    url = sqlite_url_for(tmp_path)
    database = Database(url, clock=clock)
    await migrate_and_bootstrap(database, url)
    yield database
    await database.dispose()


async def _admin(db: Database) -> User:
    async with db.read() as s:
        return (await s.execute(select(User).where(User.email == ADMIN))).scalar_one()


async def _tunnel_in_role(db: Database, tmp_path: Path) -> Resource:
    """A tunnel resource in a role of the admin's (8 h cap), so a session grants it."""
    settings = Settings(database_url=db.url, data_dir=tmp_path)
    admin = await _admin(db)
    async with db.write() as s:
        key, _ = await apikeys.create_key(s, admin, "agent", ["agent:connect"], None, "t")
        tun = await resources.create_resource(
            s,
            admin.org_id,
            name="db",
            type_="tunnel",
            agent=key.name,
            target_host="10.0.1.50",
            target_port=5432,
            script_dir=None,
            ports=settings.tunnel_ports,
            actor="t",
        )
        role = await roles.create_role(s, admin.org_id, "ops", 8 * HOUR, "t")
        await roles.add_resource(s, role, tun, "t")
        await roles.add_user(s, role, admin, "t")
    return tun


async def _grants(db: Database) -> int:
    async with db.read() as s:
        return (await s.execute(select(func.count()).select_from(Grant))).scalar_one()


async def test_the_expiry_job_ends_a_due_session_and_removes_its_grants(
    db: Database, clock: FakeClock, tmp_path: Path
) -> None:
    await _tunnel_in_role(db, tmp_path)
    admin = await _admin(db)
    async with db.write() as s:
        await sessions.start_session(s, admin, "203.0.113.7", HOUR, Settings(database_url=db.url))
    assert await _grants(db) == 1
    assert await next_due(db) == HOUR

    clock.advance(HOUR - 1)
    assert await expire_once(db) == 0
    assert await _grants(db) == 1

    clock.advance(1)
    assert await next_due(db) == 0
    assert await expire_once(db) == 1
    assert await _grants(db) == 0
    async with db.read() as s:
        assert await sessions.active_session(s, admin.id) is None
        ended = (await s.execute(select(Session).where(Session.user_id == admin.id))).scalar_one()
    assert (ended.end_reason, ended.ended_at) == ("expired", clock.now())
    assert await expire_once(db) == 0  # ended once


async def test_a_guest_grant_expires_on_the_clock(
    db: Database, clock: FakeClock, tmp_path: Path
) -> None:
    tun = await _tunnel_in_role(db, tmp_path)
    async with db.write() as s:
        g = await access_rules.grant_guest(s, tun, "198.51.100.0/24", 600, "vendor", False, "t")
    assert await _grants(db) == 1

    clock.advance(599)
    assert await expire_once(db) == 0
    async with db.read() as s:
        row = await s.get(GuestAccess, g.id)
        assert row is not None and row.ended_at is None

    clock.advance(1)
    assert await expire_once(db) == 1
    assert await _grants(db) == 0
    async with db.read() as s:
        row = await s.get(GuestAccess, g.id)
        assert row is not None and row.end_reason == "expired"
        assert row.ended_at == clock.now()


async def test_a_login_token_is_refused_after_its_12_hours(db: Database, clock: FakeClock) -> None:
    async with db.write() as s:
        out = await users.login(s, ADMIN, PASSWORD, "127.0.0.1", 12 * HOUR)
    assert out is not None
    secret = out[0]

    clock.advance(12 * HOUR - 1)
    async with db.read() as s:
        assert (await authenticate(s, secret)).user.email == ADMIN

    clock.advance(1)
    async with db.read() as s:
        with pytest.raises(Unauthorized) as refused:
            await authenticate(s, secret)
    assert refused.value.code == "unauthorized"


async def test_an_api_key_is_refused_once_expired(db: Database, clock: FakeClock) -> None:
    admin = await _admin(db)
    async with db.write() as s:
        _, secret = await apikeys.create_key(s, admin, "ci", ["sessions"], 2 * HOUR, "t")

    clock.advance(2 * HOUR - 1)
    async with db.read() as s:
        assert (await authenticate(s, secret)).credential == "api_key"

    clock.advance(1)
    async with db.read() as s:
        with pytest.raises(Unauthorized, match="expired") as refused:
            await authenticate(s, secret)
    assert refused.value.code == "invalid_api_key"
