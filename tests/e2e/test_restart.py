"""A restart of `entryguard up` keeps tunnel ports, sessions and their grants, on SQLite in
the data dir and on PostgreSQL (`--database-url postgresql://…`)."""

from __future__ import annotations

import asyncio
import socket
import sqlite3
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import asyncpg
import httpx
import pytest

from tests.conftest import BIN, make_control_plane, pg_create_database, pg_drop_database


@pytest.fixture(params=["sqlite", pytest.param("pg", marks=pytest.mark.pg)])
def pg_url(request: pytest.FixtureRequest) -> Iterator[str | None]:
    """None: SQLite in the data dir; else a scratch PostgreSQL database."""
    if request.param == "sqlite":
        yield None
        return
    url = pg_create_database()
    try:
        yield url
    finally:
        pg_drop_database(url)


def db_rows(url: str | None, data_dir: Path, query: str) -> list[dict[str, Any]]:
    if url is None:
        conn = sqlite3.connect(data_dir / "entryguard.db")
        conn.row_factory = sqlite3.Row
        try:
            return [dict(r) for r in conn.execute(query)]
        finally:
            conn.close()

    async def run() -> list[dict[str, Any]]:
        conn = await asyncpg.connect(url)
        try:
            return [dict(r) for r in await conn.fetch(query)]
        finally:
            await conn.close()

    return asyncio.run(run())


def edge_health(edge_url: str) -> dict[str, Any]:
    r = httpx.get(edge_url.replace("ws://", "http://") + "/health", timeout=2)
    return dict(r.json())


def wait_for(cond: Any, timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            if cond():
                return True
        except (httpx.HTTPError, OSError, ValueError):
            pass
        time.sleep(0.1)
    return False


def listening(port: int) -> bool:
    with socket.socket() as s:
        s.settimeout(1)
        return s.connect_ex(("127.0.0.1", port)) == 0


def test_restart_keeps_ports_sessions_and_grants(tmp_path: Path, pg_url: str | None) -> None:
    cp = make_control_plane(tmp_path, pg_url)
    cp.start()
    try:
        tok = cp.login_token()
        h = {"Authorization": f"Bearer {tok}"}
        api = f"{cp.url}/api/v1"
        httpx.post(
            f"{api}/admin/apikeys", json={"name": "a", "scopes": ["agent:connect"]}, headers=h
        ).raise_for_status()
        ports = []
        for name, host in (("db", "10.0.0.1"), ("cache", "10.0.0.3")):
            r = httpx.post(
                f"{api}/admin/resources",
                headers=h,
                json={
                    "name": name,
                    "type": "tunnel",
                    "agent": "a",
                    "target_host": host,
                    "target_port": 5432,
                },
            )
            r.raise_for_status()
            ports.append(r.json()["resource"]["port"])
        assert len(set(ports)) == 2
        httpx.post(f"{api}/admin/roles", headers=h, json={"name": "r"}).raise_for_status()
        for res in ("db", "cache"):
            httpx.post(
                f"{api}/admin/roles/r/resources", headers=h, json={"resource": res}
            ).raise_for_status()
        httpx.post(
            f"{api}/admin/roles/r/users", headers=h, json={"email": cp.admin_email}
        ).raise_for_status()
        r = httpx.post(f"{api}/sessions", headers=h, json={"duration": "1h"})
        r.raise_for_status()
        sess = r.json()["session"]
        # It runs on the database asked for: the rows are there (and with PostgreSQL, no
        # SQLite file was made).
        assert (cp.data_dir / "entryguard.db").exists() == (pg_url is None)
        in_pg = db_rows(pg_url, cp.data_dir, "SELECT name, port FROM resources ORDER BY id")
        assert [(x["name"], x["port"]) for x in in_pg] == [("db", ports[0]), ("cache", ports[1])]
        grants_query = "SELECT id, resource_id, cidr, source, source_id FROM grants ORDER BY id"
        grants_before = db_rows(pg_url, cp.data_dir, grants_query)
        assert len(grants_before) == 2

        cp.restart()

        # The same login token still works (tokens live in the database, not in memory).
        after = {
            x["name"]: x["port"]
            for x in httpx.get(f"{api}/admin/resources", headers=h).json()["items"]
        }
        assert after == {"db": ports[0], "cache": ports[1]}
        cur = httpx.get(f"{api}/sessions/current", headers=h).json()
        assert cur["session"]["id"] == sess["id"] and cur["session"]["active"]
        assert cur["session"]["expires_at"] == sess["expires_at"]
        assert sorted(x["name"] for x in cur["resources"]) == ["cache", "db"]
        assert db_rows(pg_url, cp.data_dir, grants_query) == grants_before
        active = httpx.get(f"{api}/admin/sessions", headers=h, params={"active": "true"}).json()
        assert [x["id"] for x in active["items"]] == [sess["id"]]

        # The restarted edge serves both tunnels on their old ports again, with the grants.
        assert wait_for(lambda: edge_health(cp.edge_url)["tunnels"] == 2, 10), cp.log()[-2000:]
        assert wait_for(lambda: all(listening(p) for p in ports), 10), ports
        out = subprocess.run(
            [str(BIN / "entryguard"), "edge-token", "create"]
            + (["--database-url", pg_url] if pg_url else ["--data-dir", str(cp.data_dir)]),
            capture_output=True,
            text=True,
            timeout=30,
        )
        assert out.returncode == 0, out.stderr
        edge_tok = out.stdout.strip().splitlines()[-1]
        snap = httpx.get(
            f"{api}/edge/snapshot", headers={"Authorization": f"Bearer {edge_tok}"}
        ).json()
        assert sorted(t["port"] for t in snap["tunnels"]) == sorted(ports)
        assert sorted((g["source"], g["source_id"], g["cidr"]) for g in snap["grants"]) == [
            ("session", sess["id"], f"{sess['ip']}/32"),
            ("session", sess["id"], f"{sess['ip']}/32"),
        ]

        # A new tunnel after the restart does not take an old one's port.
        r = httpx.post(
            f"{api}/admin/resources",
            headers=h,
            json={
                "name": "api",
                "type": "tunnel",
                "agent": "a",
                "target_host": "10.0.0.2",
                "target_port": 80,
            },
        )
        r.raise_for_status()
        assert r.json()["resource"]["port"] not in ports
        r = httpx.get(f"{api}/admin/audit/verify", headers=h)
        assert r.json()["ok"] is True
    finally:
        cp.stop()
