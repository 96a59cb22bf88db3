"""Cluster settings (tunnel ports, public host) on real SQLite and the real PostgreSQL:
the first start stores them, later starts must agree, `set` validates, audits and keeps
every tunnel's port inside the range; and the models match the migrations."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
import typer
from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from sqlalchemy import select
from sqlalchemy.engine import Connection

from entryguard.console import run_app
from entryguard.control.db.database import Database, sqlite_url_for
from entryguard.control.db.migrate import upgrade_async
from entryguard.control.db.models import AuditEvent, Base, ClusterSetting, Organization, User
from entryguard.control.services import apikeys, resources
from entryguard.control.services.cluster_settings import (
    PUBLIC_HOST,
    TUNNEL_PORTS,
    ClusterValues,
    SettingContradicted,
    check_public_host,
    list_settings,
    reconcile,
    set_setting,
)
from entryguard.control.settings import PortRange, Settings
from entryguard.errors import Conflict, Invalid
from entryguard.server_cli import _with_cluster_settings, app
from tests.conftest import pg_create_database, pg_drop_database

BACKENDS = ["sqlite", pytest.param("pg", marks=pytest.mark.pg)]


@pytest.fixture(params=BACKENDS)
async def db(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[Database]:
    """A migrated database of its own (no admin: the tests that need one add it)."""
    pg = request.param == "pg"
    url = await asyncio.to_thread(pg_create_database) if pg else sqlite_url_for(tmp_path)
    database = Database(url)
    try:
        await upgrade_async(url)
        yield database
    finally:
        await database.dispose()
        if pg:
            await asyncio.to_thread(pg_drop_database, url)


async def start(db: Database, tunnel_ports: str | None, public_host: str | None) -> ClusterValues:
    """What a replica does at start (server_cli), with these flags (None: not given)."""
    async with db.write() as s:
        return await reconcile(s, {TUNNEL_PORTS: tunnel_ports, PUBLIC_HOST: public_host})


async def stored(db: Database) -> dict[str, str]:
    async with db.read() as s:
        return {r.key: r.value for r in (await s.execute(select(ClusterSetting))).scalars()}


def _schema_diff(conn: Connection) -> list[object]:
    ctx = MigrationContext.configure(conn, opts={"compare_type": True})
    return list(compare_metadata(ctx, Base.metadata))


async def settings_audit(db: Database) -> list[tuple[str, str, dict[str, object]]]:
    async with db.read() as s:
        rows = (
            await s.execute(
                select(AuditEvent)
                .where(AuditEvent.action == "settings.set")
                .order_by(AuditEvent.id)
            )
        ).scalars()
        return [(e.actor, e.target, json.loads(e.details)) for e in rows]


async def test_first_start_stores_and_later_starts_must_agree(db: Database) -> None:
    # The migrations build the tables the models declare, this one and all the others
    # (Alembic's autogenerate finds nothing to add, drop or retype).
    async with db.engine.connect() as conn:
        assert await conn.run_sync(_schema_diff) == []
    # First start: the flag given is stored, the other key gets its default; audited.
    first = await start(db, "42000-42999", None)
    assert first == ClusterValues(PortRange(42000, 42999), "127.0.0.1")
    assert await stored(db) == {TUNNEL_PORTS: "42000-42999", PUBLIC_HOST: "127.0.0.1"}
    assert await settings_audit(db) == [
        ("system", PUBLIC_HOST, {"new": "127.0.0.1", "from": "default"}),
        ("system", TUNNEL_PORTS, {"new": "42000-42999", "from": "flag"}),
    ]
    # No flag: the stored values (not the defaults). The same values, spelled otherwise:
    # fine. Neither writes anything.
    assert await start(db, None, None) == first
    assert await start(db, "42000 - 42999", "127.0.0.1") == first
    # A flag that contradicts a stored value refuses, naming the setting and both values,
    # and writes nothing.
    with pytest.raises(SettingContradicted) as exc:
        await start(db, "41000-41999", None)
    assert (exc.value.key, exc.value.given, exc.value.stored) == (
        TUNNEL_PORTS,
        "41000-41999",
        "42000-42999",
    )
    assert isinstance(exc.value, Conflict) and exc.value.code == "setting_contradicted"
    with pytest.raises(
        SettingContradicted,
        match=r"^public-host is vpn\.example\.com on this replica but 127\.0\.0\.1 in",
    ):
        await start(db, None, "VPN.example.com")
    assert await stored(db) == {TUNNEL_PORTS: "42000-42999", PUBLIC_HOST: "127.0.0.1"}
    assert len(await settings_audit(db)) == 2
    # A value stored by hand that is not valid is named as the stored one.
    async with db.write() as s:
        row = await s.get(ClusterSetting, PUBLIC_HOST)
        assert row is not None
        row.value = "http://x"
    with pytest.raises(Invalid, match="the stored public-host: invalid public host"):
        await start(db, None, None)


async def test_set_validates_audits_and_keeps_every_tunnel_inside(db: Database) -> None:
    async with db.read() as s:
        views = await list_settings(s)
    assert [(v.key, v.value, v.stored) for v in views] == [
        (PUBLIC_HOST, "127.0.0.1", False),
        (TUNNEL_PORTS, "41000-41999", False),
    ]
    await start(db, "30000-30009", None)
    # Two tunnels at 30000 and 30001, a script resource (no port).
    async with db.write() as s:
        org = Organization(name="default")
        s.add(org)
        await s.flush()
        admin = User(org_id=org.id, email="admin@example.com", password_hash="-", is_admin=True)
        s.add(admin)
        await s.flush()
        await apikeys.create_key(s, admin, "agent", ["agent:connect"], None, "t")
        for name, type_ in [("db", "tunnel"), ("cache", "tunnel"), ("fw", "script")]:
            await resources.create_resource(
                s,
                admin.org_id,
                name=name,
                type_=type_,
                agent="agent",
                target_host="10.0.0.5" if type_ == "tunnel" else None,
                target_port=5432 if type_ == "tunnel" else None,
                script_dir="/opt/fw" if type_ == "script" else None,
                ports=PortRange(30000, 30009),
                actor="t",
            )
    before = await settings_audit(db)

    async def set_(key: str, value: str) -> str:
        async with db.write() as s:
            return (await set_setting(s, key, value, "ops@example.com")).setting.value

    for key, value, needle in [
        ("tunnel_ports", "1-2", "unknown setting 'tunnel_ports': the settings are public-host"),
        (TUNNEL_PORTS, "9-1", "invalid port range"),
        (TUNNEL_PORTS, "30000", "expected FIRST-LAST"),
        (PUBLIC_HOST, "https://vpn.example.com", "invalid public host"),
        (PUBLIC_HOST, "vpn.example.com:443", "invalid public host"),
        (PUBLIC_HOST, "vpn example.com", "no scheme, port, path or spaces"),
    ]:
        with pytest.raises(Invalid, match=needle):
            await set_(key, value)
    # A range that leaves tunnel ports outside: refused, with how many and which.
    with pytest.raises(Conflict, match=r"^2 tunnels have ports outside 30002-30100: db \(port"):
        await set_(TUNNEL_PORTS, "30002-30100")
    with pytest.raises(Conflict, match=r"^1 tunnel has a port outside 30000-30000: cache"):
        await set_(TUNNEL_PORTS, "30000-30000")
    assert await settings_audit(db) == before
    # Accepted, canonical and audited with the old and the new value; again: a no-op.
    assert await set_(TUNNEL_PORTS, "29000 - 30999") == "29000-30999"
    assert await set_(PUBLIC_HOST, "[2001:DB8::1]") == "2001:db8::1"
    assert await set_(PUBLIC_HOST, "2001:db8:0::1") == "2001:db8::1"
    assert (await settings_audit(db))[len(before) :] == [
        ("ops@example.com", TUNNEL_PORTS, {"old": "30000-30009", "new": "29000-30999"}),
        ("ops@example.com", PUBLIC_HOST, {"old": "127.0.0.1", "new": "2001:db8::1"}),
    ]
    # The next start uses them; the old flag now contradicts.
    assert await start(db, None, None) == ClusterValues(PortRange(29000, 30999), "2001:db8::1")
    with pytest.raises(SettingContradicted):
        await start(db, "30000-30009", None)
    async with db.read() as s:
        views = await list_settings(s)
    assert [(v.key, v.value, v.stored) for v in views] == [
        (PUBLIC_HOST, "2001:db8::1", True),
        (TUNNEL_PORTS, "29000-30999", True),
    ]
    assert all(v.updated_at and v.updated_at.endswith("Z") for v in views)


@pytest.mark.pg
async def test_replicas_starting_together_store_one_value(tmp_path: Path) -> None:
    """Two replicas with different flags on an empty PostgreSQL: one stores its value,
    the other refuses (the write lock serialises them); neither overwrites the other."""
    url = await asyncio.to_thread(pg_create_database)
    a, b = Database(url), Database(url)
    try:
        await upgrade_async(url)
        results = await asyncio.gather(
            start(a, "42000-42999", None), start(b, "43000-43999", None), return_exceptions=True
        )
        won = [r for r in results if isinstance(r, ClusterValues)]
        lost = [r for r in results if isinstance(r, SettingContradicted)]
        assert len(won) == 1 and len(lost) == 1, results
        assert (await stored(a))[TUNNEL_PORTS] == str(won[0].tunnel_ports) == lost[0].stored
    finally:
        await a.dispose()
        await b.dispose()
        await asyncio.to_thread(pg_drop_database, url)


@pytest.mark.parametrize(
    ("value", "canonical"),
    [
        ("vpn.example.com", "vpn.example.com"),
        ("Edge-1.Example.COM", "edge-1.example.com"),
        ("localhost", "localhost"),
        ("203.0.113.7", "203.0.113.7"),
        ("::1", "::1"),
        ("[::1]", "::1"),
    ],
)
def test_public_host_accepts_names_and_addresses(value: str, canonical: str) -> None:
    assert check_public_host(value) == canonical


@pytest.mark.parametrize(
    "value",
    ["", " vpn", "vpn.example.com/", "http://vpn", "vpn:8080", "a..b", "-a.b", "10.0.0.256", "a b"],
)
def test_public_host_refuses_urls_ports_and_spaces(value: str) -> None:
    with pytest.raises(Invalid) as exc:
        check_public_host(value)
    assert exc.value.code == "invalid_setting"
    assert "host name or IP address" in exc.value.message


def test_a_replica_start_serves_with_the_stored_values(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """server_cli's start step: migrations, then the stored values replace the flags'
    (an empty database: they are stored); a contradicting flag is one line, exit 1."""
    url = sqlite_url_for(tmp_path)
    base = Settings(database_url=url, data_dir=tmp_path)
    got = _with_cluster_settings(base, "42000-42999", None)
    assert (got.tunnel_ports, got.public_host, got.database_url) == (
        PortRange(42000, 42999),
        "127.0.0.1",
        url,
    )
    # The flags' values ride on `base`; without the flags the stored ones win.
    got = _with_cluster_settings(base, None, None)
    assert (got.tunnel_ports, got.public_host) == (PortRange(42000, 42999), "127.0.0.1")
    with pytest.raises(typer.Exit) as exc:
        _with_cluster_settings(base, None, "vpn.example.com")
    assert exc.value.exit_code == 1
    err = capsys.readouterr().err
    assert err == (
        "error: --public-host vpn.example.com contradicts the cluster setting public-host = "
        "127.0.0.1 stored in the database; change it with `entryguard settings set "
        "public-host vpn.example.com` or drop the flag\n"
    )


def test_settings_set_refuses_bad_input_with_exit_2(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Checked before the database is opened (there is none here): one line, exit 2."""
    url = f"sqlite:///{tmp_path / 'none.db'}"
    for args, line in [
        (["tunnel-ports", "42000-41999"], "error: invalid port range '42000-41999': ports"),
        (["tunnel_ports", "1-2"], "error: unknown setting 'tunnel_ports': the settings are "),
        (["public-host", "vpn:443"], "error: invalid public host 'vpn:443': expected the "),
    ]:
        assert run_app(app, "entryguard", ["settings", "set", *args, "--database-url", url]) == 2
        out, err = capsys.readouterr()
        assert out == "" and err.startswith(line) and err.count("\n") == 1, err
    assert not (tmp_path / "none.db").exists()
