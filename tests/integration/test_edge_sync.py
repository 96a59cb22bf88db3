"""The edge's snapshot and change stream: every change exactly once, in order, resumable."""

from __future__ import annotations

import asyncio

import httpx
import pytest

from entryguard.control.services.apikeys import create_edge_token
from tests.integration.conftest import Api
from tests.integration.test_api_access import setup_tunnel


async def edge_token(api: Api) -> str:
    async with api.db.write() as s:
        return await create_edge_token(s, "test-edge")


def edge_client(api: Api, token: str) -> httpx.AsyncClient:
    return httpx.AsyncClient(
        base_url=f"{api.url}/api/v1/edge", headers={"Authorization": f"Bearer {token}"}, timeout=60
    )


async def test_edge_token_required(api: Api) -> None:
    async with edge_client(api, "ege_AAAAAAAA_wrong") as c:
        r = await c.get("/snapshot")
    assert r.status_code == 401 and r.json()["error"]["code"] == "invalid_edge_token"
    r = await api.call("GET", "/edge/snapshot")  # an admin login token is not an edge token
    assert r.status_code == 401


async def test_change_stream_exactly_once_in_order_and_resumable(api: Api) -> None:
    await setup_tunnel(api)
    token = await edge_token(api)
    async with edge_client(api, token) as c:
        snap = (await c.get("/snapshot")).json()
        assert [t["name"] for t in snap["tunnels"]] == ["production-db"]
        assert [a["name"] for a in snap["agents"]] == ["prod-agent"]
        start = snap["revision"]

        seen: list[dict] = []
        done = asyncio.Event()

        async def follow(since: int, stop_after: int | None) -> int:
            while True:
                r = await c.get("/changes", params={"since": since, "wait": 5, "limit": 7})
                r.raise_for_status()
                for ch in r.json()["changes"]:
                    assert ch["revision"] > since
                    seen.append(ch)
                    since = ch["revision"]
                    if stop_after is not None and len(seen) >= stop_after:
                        return since
                if done.is_set() and not r.json()["changes"]:
                    return since

        # 100 grant changes: 50 rules added then removed, while the follower runs.
        async def produce() -> None:
            ids = []
            for i in range(50):
                ids.append(
                    (
                        await api.ok(
                            "POST",
                            "/admin/rules",
                            json={"resource": "production-db", "cidr": f"10.{i}.0.0/16"},
                        )
                    )["rule"]["id"]
                )
            for rid in ids:
                await api.ok("DELETE", f"/admin/rules/{rid}")
            done.set()

        # Follow until 40 changes, "disconnect", then resume from a middle revision.
        producer = asyncio.create_task(produce())
        mid = await follow(start, stop_after=40)
        await asyncio.sleep(0.3)  # changes keep coming while we are away
        await follow(mid, stop_after=None)
        await producer
        await follow(seen[-1]["revision"], stop_after=None) if len(seen) < 100 else None

    revs = [ch["revision"] for ch in seen]
    assert len(seen) == 100, len(seen)
    assert revs == sorted(set(revs)), "gap, repeat or reorder"
    assert revs == list(range(start + 1, start + 101))
    assert [ch["op"] for ch in seen] == ["grant.add"] * 50 + ["grant.remove"] * 50
    assert [ch["data"]["cidr"] for ch in seen[:50]] == [f"10.{i}.0.0/16" for i in range(50)]


async def test_long_poll_wakes_on_change(api: Api) -> None:
    await setup_tunnel(api)
    token = await edge_token(api)
    async with edge_client(api, token) as c:
        rev = (await c.get("/snapshot")).json()["revision"]
        poll = asyncio.create_task(c.get("/changes", params={"since": rev, "wait": 20}))
        await asyncio.sleep(0.3)
        assert not poll.done()
        loop = asyncio.get_running_loop()
        t0 = loop.time()
        await api.ok(
            "POST", "/admin/rules", json={"resource": "production-db", "cidr": "10.9.0.0/16"}
        )
        r = await poll
        assert loop.time() - t0 < 2.5
        assert [ch["op"] for ch in r.json()["changes"]] == ["grant.add"]


async def test_revision_gone_when_ahead_of_log(api: Api) -> None:
    token = await edge_token(api)
    async with edge_client(api, token) as c:
        r = await c.get("/changes", params={"since": 10**9, "wait": 0})
    assert r.status_code == 410 and r.json()["error"]["code"] == "revision_gone"


@pytest.mark.parametrize("bad", ["-1", "abc"])
async def test_bad_since_is_422(api: Api, bad: str) -> None:
    token = await edge_token(api)
    async with edge_client(api, token) as c:
        r = await c.get("/changes", params={"since": bad})
    assert r.status_code == 422 and "error" in r.json()


async def test_a_transaction_is_one_batch_and_never_split_by_the_limit(api: Api) -> None:
    for name in ("db-a", "db-b", "db-c"):
        await setup_tunnel(api, name)
    tok = await api.make_user("batch@example.com")
    await api.ok("POST", "/admin/roles/developers/users", json={"email": "batch@example.com"})
    token = await edge_token(api)
    async with edge_client(api, token) as c:
        rev = (await c.get("/snapshot")).json()["revision"]
        # One session start writes three grants in one transaction.
        await api.ok("POST", "/sessions", tok, json={"duration": "1h"}, source="127.0.0.2")
        r = (await c.get("/changes", params={"since": rev, "wait": 0, "limit": 1})).json()
    rows = r["changes"]
    assert [ch["op"] for ch in rows] == ["grant.add"] * 3, "limit=1 split the batch"
    assert {ch["batch"] for ch in rows} == {rows[0]["revision"]}
    assert r["revision"] == rows[-1]["revision"]
