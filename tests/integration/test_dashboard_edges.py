"""The dashboard's Edges page: an edge streaming the change log shows with its health and
lag, and as offline once its stream closes (SQLite and PostgreSQL).

The edge is a real WebSocket client speaking the stream protocol (sync/stream.py) to
the control plane served by uvicorn on loopback, as ``entryguard edge`` does.
"""

from __future__ import annotations

import asyncio
import json
import re
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any
from urllib.parse import urlencode

import httpx
import pytest
from websockets.asyncio.client import ClientConnection, connect

from entryguard.control.db.database import sqlite_url_for
from entryguard.control.services.apikeys import create_edge_token
from entryguard.control.services.edge_sync import current_revision
from tests.conftest import pg_create_database, pg_drop_database
from tests.integration.conftest import Api, serve_api
from tests.integration.test_api_access import setup_tunnel
from tests.integration.test_dashboard_http import rows_by, shown_time, signed_in

# Stream heartbeat and registry refresh: short, so the test takes a few seconds; an edge
# silent for three intervals is dropped, so not so short a loaded machine trips it.
INTERVAL = 0.5
HEADERS = ["Name", "Token", "Health", "Revision", "Lag", "Replica", "Address", "Version"]


@pytest.fixture(params=["sqlite", "pg"])
async def api(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[Api]:
    if request.param == "sqlite":
        async with serve_api(sqlite_url_for(tmp_path), tmp_path, stream_interval=INTERVAL) as a:
            yield a
    else:
        url = await asyncio.to_thread(pg_create_database)
        try:
            async with serve_api(url, tmp_path, stream_interval=INTERVAL) as a:
                yield a
        finally:
            await asyncio.to_thread(pg_drop_database, url)


async def stream(api: Api, token: str, name: str, since: int) -> ClientConnection:
    query = urlencode({"since": since, "name": name, "instance": "i-1", "version": "9.8.7"})
    url = api.url.replace("http://", "ws://") + f"/api/v1/edge/stream?{query}"
    return await connect(
        url,
        additional_headers={"Authorization": f"Bearer {token}"},
        open_timeout=5,
        ping_interval=None,
        close_timeout=1,
    )


async def receive(ws: ClientConnection) -> dict[str, Any]:
    msg = json.loads(await asyncio.wait_for(ws.recv(), 5))
    assert isinstance(msg, dict)
    return msg


async def edge_row(c: httpx.AsyncClient, name: str) -> list[str]:
    r = await c.get("/admin/edges")
    assert r.status_code == 200, r.text
    return rows_by(r.text, "data-edge")[name]


async def until_head(c: httpx.AsyncClient, head: int) -> None:
    """Wait until the page says the replica knows of revision ``head``."""
    for _ in range(50):
        if f"newest revision {head})" in (await c.get("/admin/edges")).text:
            return
        await asyncio.sleep(INTERVAL / 2)
    raise AssertionError(f"the page never showed revision {head}")


async def until_row(c: httpx.AsyncClient, name: str, want: dict[str, str]) -> list[str]:
    """The edge's row once the named cells read as wanted (the registry is refreshed once
    per stream interval), within a few seconds."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + 5
    while True:
        row = await edge_row(c, name)
        cells = dict(zip(HEADERS, row, strict=False))
        if all(cells[k] == v for k, v in want.items()) or loop.time() > deadline:
            assert {k: cells[k] for k in want} == want, row
            return row
        await asyncio.sleep(INTERVAL / 2)


class FakeEdge:
    """Answers every message of the stream with an ack, as an edge does, claiming at most
    ``applied`` (the test moves it) so it stays heard while its position is the test's."""

    def __init__(self, ws: ClientConnection) -> None:
        self.ws = ws
        self.applied = 0
        self.health = "ok"
        self.received = 0  # the newest revision the replica has sent
        self.task = asyncio.create_task(self._run())

    async def _run(self) -> None:
        while True:
            msg = json.loads(await self.ws.recv())
            assert msg["type"] in ("changes", "heartbeat"), msg
            self.received = max(self.received, msg["revision"])
            ack = {"type": "ack", "revision": min(self.received, self.applied)}
            await self.ws.send(json.dumps({**ack, "health": self.health}))


async def test_the_edges_page_shows_a_streaming_edge_then_offline(api: Api) -> None:
    async with signed_in(api) as c:
        r = await c.get("/admin/edges")
        assert r.status_code == 200
        assert 'href="/admin/edges" aria-current="page"' in r.text
        assert "No edges yet" in r.text
        assert "entryguard edge --control-url URL --edge-token ege_…" in r.text
        assert "entryguard edge-token create --name NAME" in r.text
        assert not re.search(r'(src|href|action)="(https?:)?//', r.text)  # same-origin only
        assert 'href="/admin/edges"' in (await c.get("/admin/agents")).text  # in the nav

        # An access change before the edge connects: the log has a revision to lag on.
        await setup_tunnel(api)
        async with api.db.write() as s:
            token = await create_edge_token(s, "dc1-token")
        async with api.db.read() as s:
            head = await current_revision(s)
        assert head > 0
        await until_head(c, head)  # the replica's tail has read it: what hello will say

        sent = datetime.now(UTC)
        ws = await stream(api, token, "edge-a", since=0)
        hello = await receive(ws)
        assert (hello["type"], hello["revision"]) == ("hello", head)
        assert hello["interval"] == INTERVAL
        edge = FakeEdge(ws)
        try:
            # Live, and as far behind as where it started until it acknowledges more.
            name, tok, health, rev, lag, replica, address, version, seen = await edge_row(
                c, "edge-a"
            )
            assert (name, tok, health, rev) == ("edge-a", "dc1-token", "ok", "0")
            assert lag == f"{head} behind"
            assert (address, version) == ("127.0.0.1", "9.8.7") and replica != "—"
            assert abs(shown_time(seen) - sent) < timedelta(seconds=5)

            # It applies everything and says so: lag 0 once the registry is refreshed.
            edge.applied = head
            row = await until_row(c, "edge-a", {"Revision": str(head), "Lag": "0"})
            assert row[2] == "ok"
            # The JSON API and the page agree.
            [view] = (await api.ok("GET", "/admin/edges"))["items"]
            assert (view["name"], view["token"], view["health"], view["lag"]) == (
                "edge-a",
                "dc1-token",
                "ok",
                0,
            )
            assert view["live"] and view["revision"] == head

            # The health the edge reports is the badge.
            edge.health = "degraded"
            await until_row(c, "edge-a", {"Health": "degraded", "Lag": "0"})
            assert edge.received == head and not edge.task.done()
        finally:
            edge.task.cancel()
            await asyncio.gather(edge.task, return_exceptions=True)
            await ws.close()

        # The stream closed: offline, no lag shown, its last revision kept.
        row = await until_row(c, "edge-a", {"Health": "offline", "Lag": "—"})
        assert row[3] == str(head)
        assert "No edges yet" not in (await c.get("/admin/edges")).text


async def test_non_admins_are_refused_the_edges_page(api: Api) -> None:
    await api.ok(
        "POST", "/admin/users", json={"email": "dev@example.com", "password": "dev-pw-123"}
    )
    async with signed_in(api, "dev@example.com", "dev-pw-123") as c:
        home = await c.get("/")
        assert home.status_code == 200 and "/admin/edges" not in home.text
        r = await c.get("/admin/edges")
        assert r.status_code == 403 and "Admins only" in r.text
        assert "text/html" in r.headers["content-type"]
    async with httpx.AsyncClient(base_url=api.url, headers={"accept": "text/html"}) as anon:
        r = await anon.get("/admin/edges")
        assert r.status_code == 303
        assert r.headers["location"] == "/signin?next=%2Fadmin%2Fedges"
