"""The pushed change stream, spoken by a real WebSocket client to replicas served by
uvicorn on loopback (docs/sync.md, "Delivery").

- rows arrive as whole batches, heartbeats when idle; an edge that resumes from before
  what the replica keeps in memory is caught up from the database;
- a revision ahead of the log, a taken name, a bad message or a revoked token end that
  one stream with its code, and nobody else's;
- on PostgreSQL, an access change made on one replica returns once an edge streaming
  from the *other* replica has acknowledged it, bounded at one second, and an edge whose
  stream closed no longer counts.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any
from urllib.parse import urlencode

import pytest
from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed

from entryguard.control.db.database import sqlite_url_for
from entryguard.control.services.apikeys import create_edge_token, revoke_edge_tokens
from tests.conftest import pg_create_database, pg_drop_database
from tests.integration.conftest import Api, serve_api
from tests.integration.test_api_access import setup_tunnel

INTERVAL = 0.5


async def open_stream(
    api: Api, token: str, since: int, name: str = "e1", instance: str = "i-1"
) -> ClientConnection:
    query = urlencode({"since": since, "name": name, "instance": instance, "version": "t"})
    return await connect(
        api.url.replace("http://", "ws://") + f"/api/v1/edge/stream?{query}",
        additional_headers={"Authorization": f"Bearer {token}"},
        open_timeout=5,
        ping_interval=None,
        close_timeout=1,
    )


async def receive(ws: ClientConnection, timeout: float = 5) -> dict[str, Any]:
    msg = json.loads(await asyncio.wait_for(ws.recv(), timeout))
    assert isinstance(msg, dict)
    return msg


async def next_changes(ws: ClientConnection) -> dict[str, Any]:
    for _ in range(20):
        msg = await receive(ws)
        if msg["type"] == "changes":
            return msg
    raise AssertionError("no changes message")


async def closed_with(ws: ClientConnection) -> tuple[str, int | None]:
    """The error code the replica sent and the close code it closed with."""
    code = ""
    try:
        for _ in range(50):
            msg = await receive(ws)
            if msg["type"] == "error":
                code = msg["code"]
    except ConnectionClosed:
        pass
    await asyncio.wait_for(ws.wait_closed(), 5)
    return code, ws.close_code


async def edge_token(api: Api, name: str = "t") -> str:
    async with api.db.write() as s:
        return await create_edge_token(s, name)


async def rule(api: Api, cidr: str) -> float:
    """Add a static rule through the API; how long the call took."""
    t0 = time.monotonic()
    async with api.client(api.admin_token) as c:
        r = await c.post("/admin/rules", json={"resource": "production-db", "cidr": cidr})
    assert r.status_code == 201, r.text
    return time.monotonic() - t0


@pytest.fixture
async def sqlite_api(tmp_path: Path) -> AsyncIterator[Api]:
    async with serve_api(sqlite_url_for(tmp_path), tmp_path, stream_interval=INTERVAL) as a:
        await setup_tunnel(a)
        yield a


async def test_batches_heartbeats_and_catch_up_from_the_database(
    sqlite_api: Api, tmp_path: Path
) -> None:
    api = sqlite_api
    token = await edge_token(api)
    ws = await open_stream(api, token, since=0)  # from the start: older than the tail
    hello = await receive(ws)
    assert hello["type"] == "hello" and hello["interval"] == INTERVAL
    head = hello["revision"]
    caught_up = 0
    while caught_up < head:  # the history comes from the database, in whole batches
        msg = await next_changes(ws)
        batches = [c["batch"] for c in msg["changes"]]
        assert batches == sorted(batches)
        caught_up = msg["revision"]
        await ws.send(json.dumps({"type": "ack", "revision": caught_up, "health": "ok"}))
    assert caught_up == head
    beat = await receive(ws, 3 * INTERVAL)
    assert beat == {"type": "heartbeat", "revision": head}
    await rule(api, "198.51.100.7/32")
    msg = await next_changes(ws)
    assert [c["op"] for c in msg["changes"]] == ["grant.add"]
    assert msg["changes"][0]["data"]["cidr"] == "198.51.100.7/32"
    assert msg["revision"] == head + 1
    await ws.close()


async def test_bad_input_ends_one_stream_only(sqlite_api: Api) -> None:
    api = sqlite_api
    token = await edge_token(api)
    good = await open_stream(api, token, since=0, name="good")
    head = (await receive(good))["revision"]
    seen: asyncio.Queue[dict[str, Any]] = asyncio.Queue()

    async def behave() -> None:
        """A well-behaved edge: acknowledges everything (so it is never "silent")."""
        async for raw in good:
            msg = json.loads(raw)
            if msg["type"] == "changes":
                await seen.put(msg)
            await good.send(json.dumps({"type": "ack", "revision": msg["revision"]}))

    behaving = asyncio.create_task(behave())

    ahead = await open_stream(api, token, since=head + 100, name="ahead")
    assert await closed_with(ahead) == ("revision_gone", 4410)

    bad = await open_stream(api, token, since=head, name="bad")
    assert (await receive(bad))["type"] == "hello"
    await bad.send("{not json")
    assert await closed_with(bad) == ("invalid_stream_message", 1008)

    taken = await open_stream(api, token, since=head, name="good", instance="other")
    code, close = await closed_with(taken)
    assert (code, close) == ("edge_name_taken", 4409)

    wrong = await open_stream(api, "ege_nope_nope", since=head, name="x")
    assert await closed_with(wrong) == ("invalid_edge_token", 4401)

    # The good stream never noticed: it gets the next change.
    await rule(api, "198.51.100.8/32")
    for _ in range(20):
        msg = await asyncio.wait_for(seen.get(), 5)
        if msg["changes"][-1]["data"].get("cidr") == "198.51.100.8/32":
            break
    else:
        raise AssertionError("the good stream did not get the change")
    await good.close()
    behaving.cancel()


async def test_a_revoked_token_ends_its_stream(sqlite_api: Api) -> None:
    api = sqlite_api
    token = await edge_token(api, "gone")
    ws = await open_stream(api, token, since=0)
    assert (await receive(ws))["type"] == "hello"
    t0 = time.monotonic()
    async with api.db.write() as s:
        await revoke_edge_tokens(s, "gone")
    code = ""
    with pytest.raises(ConnectionClosed):
        for _ in range(100):
            msg = await receive(ws)
            if msg["type"] == "error":
                code = msg["code"]
            elif msg["type"] in ("changes", "heartbeat"):
                await ws.send(json.dumps({"type": "ack", "revision": msg["revision"]}))
    assert code == "invalid_edge_token" and ws.close_code == 4401
    assert time.monotonic() - t0 < 2.0


@pytest.fixture
async def two_replicas(tmp_path: Path) -> AsyncIterator[tuple[Api, Api]]:
    url = await asyncio.to_thread(pg_create_database)
    try:
        async with serve_api(url, tmp_path / "a", stream_interval=INTERVAL) as a:
            await setup_tunnel(a)
            async with serve_api(
                url, tmp_path / "b", stream_interval=INTERVAL, tunnel_ports=a.settings.tunnel_ports
            ) as b:
                yield a, b
    finally:
        await asyncio.to_thread(pg_drop_database, url)


async def test_a_change_on_one_replica_waits_for_an_edge_on_the_other(
    two_replicas: tuple[Api, Api],
) -> None:
    a, b = two_replicas
    token = await edge_token(a)
    ws = await open_stream(b, token, since=0)  # the edge streams from replica b
    head = (await receive(ws))["revision"]
    while head and (await next_changes(ws))["revision"] < head:
        pass
    await ws.send(json.dumps({"type": "ack", "revision": head}))

    async def ack_after(delay: float) -> int:
        msg = await next_changes(ws)
        await asyncio.sleep(delay)
        await ws.send(json.dumps({"type": "ack", "revision": msg["revision"]}))
        return int(msg["revision"])

    # Replica a hears of the edge on b (NOTIFY) before it can wait for it.
    await asyncio.sleep(2 * INTERVAL)
    acker = asyncio.create_task(ack_after(0.4))
    took = await rule(a, "198.51.100.9/32")
    await acker
    assert 0.4 <= took < 1.0, f"the call returned after {took:.3f} s: did it wait for the edge?"

    acker = asyncio.create_task(ack_after(0.0))
    took = await rule(a, "198.51.100.10/32")
    await acker
    assert took < 0.4, took  # a prompt ack: a prompt return

    never = asyncio.create_task(next_changes(ws))  # received, never acknowledged
    took = await rule(a, "198.51.100.11/32")
    await never
    assert 0.9 <= took < 1.6, f"bounded at 1 s, took {took:.3f} s"

    await ws.close()  # a closed stream stops counting at once
    await asyncio.sleep(0.3)
    took = await rule(a, "198.51.100.12/32")
    assert took < 0.4, took
