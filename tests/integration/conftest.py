"""An in-process control plane served by uvicorn on a real loopback socket.

Clients bind their own source address (127.0.0.2, 127.0.0.3…), so each test user has
a distinct "public IP" as the server sees it on the socket.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
import uvicorn

from entryguard.control.app import create_app
from entryguard.control.bootstrap import migrate_and_bootstrap
from entryguard.control.db.database import Database, sqlite_url_for
from entryguard.control.settings import PortRange, Settings
from entryguard.net import parse_cidr
from tests.conftest import free_port, free_port_range, pg_create_database, pg_drop_database

ADMIN = "admin@example.com"
ADMIN_PW = "admin-password-1"


@dataclass
class Api:
    url: str
    db: Database
    settings: Settings
    admin_token: str

    def client(self, token: str | None = None, source: str = "127.0.0.1") -> httpx.AsyncClient:
        headers = {"Authorization": f"Bearer {token}"} if token else {}
        transport = httpx.AsyncHTTPTransport(local_address=source)
        return httpx.AsyncClient(
            base_url=f"{self.url}/api/v1", headers=headers, transport=transport, timeout=30
        )

    def admin(self) -> httpx.AsyncClient:
        return self.client(self.admin_token)

    async def login(self, email: str, password: str, source: str = "127.0.0.1") -> str:
        async with self.client(source=source) as c:
            r = await c.post("/auth/login", json={"email": email, "password": password})
            assert r.status_code == 200, r.text
            return str(r.json()["token"])

    async def call(
        self, method: str, path: str, token: str | None = None, **kw: Any
    ) -> httpx.Response:
        async with self.client(token or self.admin_token, kw.pop("source", "127.0.0.1")) as c:
            return await c.request(method, path, **kw)

    async def ok(self, method: str, path: str, token: str | None = None, **kw: Any) -> Any:
        r = await self.call(method, path, token, **kw)
        assert r.status_code < 300, f"{method} {path}: {r.status_code} {r.text}"
        return r.json() if r.content else None

    async def make_user(self, email: str, password: str = "user-password-1") -> str:
        await self.ok("POST", "/admin/users", json={"email": email, "password": password})
        return await self.login(email, password)

    async def agent_key(self, name: str = "agent1") -> str:
        body = await self.ok(
            "POST", "/admin/apikeys", json={"name": name, "scopes": ["agent:connect"]}
        )
        return str(body["key"])


@contextlib.asynccontextmanager
async def serve_api(database_url: str, data_dir: Path, **settings_kw: Any) -> AsyncIterator[Api]:
    import os

    os.environ["EG_ADMIN_EMAIL"] = ADMIN
    os.environ["EG_ADMIN_PASSWORD"] = ADMIN_PW
    first, last = free_port_range(10)
    settings_kw.setdefault("tunnel_ports", PortRange(first, last))
    settings = Settings(
        database_url=database_url, data_dir=data_dir, expiry_interval=0.1, **settings_kw
    )
    db = Database(database_url)
    await migrate_and_bootstrap(db, database_url)
    app = create_app(settings, db)
    port = free_port()
    server = uvicorn.Server(
        uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning", lifespan="on")
    )
    task = asyncio.create_task(server.serve())
    for _ in range(500):
        if server.started:
            break
        if task.done():
            await task
        await asyncio.sleep(0.01)
    api = Api(url=f"http://127.0.0.1:{port}", db=db, settings=settings, admin_token="")
    api.admin_token = await api.login(ADMIN, ADMIN_PW)
    try:
        yield api
    finally:
        server.should_exit = True
        await task
        await db.dispose()


@pytest.fixture(params=["sqlite", "pg"])
async def api(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[Api]:
    if request.param == "sqlite":
        url = sqlite_url_for(tmp_path)
        async with serve_api(url, tmp_path, trusted_proxies=(parse_cidr("127.0.0.9/32"),)) as a:
            yield a
    else:
        url = await asyncio.to_thread(pg_create_database)
        try:
            async with serve_api(url, tmp_path, trusted_proxies=(parse_cidr("127.0.0.9/32"),)) as a:
                yield a
        finally:
            await asyncio.to_thread(pg_drop_database, url)
