"""A replica whose database is down or hung says so (issue 11, B8: bounded waits).

A real `entryguard server` process talks to the machine's PostgreSQL through a TCP
proxy this test controls: "down" refuses connections and drops the open ones (a dead
server), "hung" keeps every socket open but forwards nothing (a SIGSTOPped server).
Health must answer 503 within 5 s of the fault, an API call 503 `database_unavailable`
within the timeouts (connect 3 s, statement 10 s, pool 5 s) instead of hanging, and
both must recover within 5 s of the proxy's repair.
"""

from __future__ import annotations

import asyncio
import contextlib
import threading
import time
from collections.abc import Iterator
from concurrent.futures import Future
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.conftest import (
    PG_ADMIN_URL,
    ControlPlane,
    free_port,
    make_control_plane,
    pg_create_database,
    pg_drop_database,
)

pytestmark = pytest.mark.timeout(120)

HEALTH_WITHIN = 5.0
API_WITHIN = 13.0  # statement timeout (10 s) + a reconnect's connect timeout (3 s) at worst


class FaultProxy:
    """A loopback TCP forwarder to PostgreSQL, on its own event loop in a thread.

    ``up``: forwards. ``down``: not listening (connections refused) and every open
    connection closed. ``hung``: accepts, keeps sockets open, forwards nothing (bytes
    already read are held, and delivered when it is ``up`` again, as after SIGCONT).
    """

    def __init__(self, upstream: tuple[str, int]) -> None:
        self.upstream = upstream
        self.port = free_port()
        self.loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self._server: asyncio.Server | None = None
        self._flowing: asyncio.Event | None = None
        self._writers: set[asyncio.StreamWriter] = set()
        self._tasks: set[asyncio.Task[None]] = set()

    def _call(self, coro: Any) -> Any:
        fut: Future[Any] = asyncio.run_coroutine_threadsafe(coro, self.loop)
        return fut.result(timeout=10)

    def start(self) -> None:
        self._thread.start()
        self._call(self._init())

    async def _init(self) -> None:
        self._flowing = asyncio.Event()
        self._flowing.set()
        await self._listen()

    async def _listen(self) -> None:
        self._server = await asyncio.start_server(
            self._handle, "127.0.0.1", self.port, reuse_address=True
        )

    async def _handle(self, cr: asyncio.StreamReader, cw: asyncio.StreamWriter) -> None:
        assert self._flowing is not None
        self._writers.add(cw)
        try:
            await self._flowing.wait()  # a hung server accepts, then says nothing
            sr, sw = await asyncio.open_connection(*self.upstream)
        except (OSError, asyncio.CancelledError):
            self._writers.discard(cw)
            cw.close()
            return
        self._writers.add(sw)
        a = asyncio.create_task(self._pipe(cr, sw))
        b = asyncio.create_task(self._pipe(sr, cw))
        self._tasks |= {a, b}
        await asyncio.wait({a, b}, return_when=asyncio.FIRST_COMPLETED)
        for t in (a, b):
            t.cancel()
        for w in (cw, sw):
            self._writers.discard(w)
            w.close()
        self._tasks -= {a, b}

    async def _pipe(self, r: asyncio.StreamReader, w: asyncio.StreamWriter) -> None:
        assert self._flowing is not None
        with contextlib.suppress(OSError, asyncio.IncompleteReadError):
            while data := await r.read(65536):
                await self._flowing.wait()
                w.write(data)
                await w.drain()

    def hang(self) -> None:
        async def go() -> None:
            assert self._flowing is not None
            self._flowing.clear()

        self._call(go())

    def down(self) -> None:
        async def go() -> None:
            assert self._server is not None
            self._server.close()
            for w in list(self._writers):
                w.transport.abort()
            self._writers.clear()
            await self._server.wait_closed()
            self._server = None

        self._call(go())

    def up(self) -> None:
        async def go() -> None:
            assert self._flowing is not None
            if self._server is None:
                await self._listen()
            self._flowing.set()

        self._call(go())

    def close(self) -> None:
        with contextlib.suppress(Exception):
            self.down()
        self.loop.call_soon_threadsafe(self.loop.stop)
        self._thread.join(5)


@dataclass
class Stack:
    cp: ControlPlane
    proxy: FaultProxy
    token: str

    def health(self, timeout: float = 8.0) -> tuple[int, dict[str, Any]]:
        r = httpx.get(f"{self.cp.url}/api/v1/health", timeout=timeout)
        return r.status_code, r.json()

    def users(self, timeout: float = 30.0) -> httpx.Response:
        return httpx.get(
            f"{self.cp.url}/api/v1/admin/users",
            headers={"Authorization": f"Bearer {self.token}"},
            timeout=timeout,
        )


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    db_url = pg_create_database()
    host_port = PG_ADMIN_URL.split("@", 1)[1].split("/", 1)[0]
    host, _, port = host_port.partition(":")
    proxy = FaultProxy((host, int(port or 5432)))
    proxy.start()
    name = db_url.rsplit("/", 1)[1]
    user = PG_ADMIN_URL.split("//", 1)[1].split("@", 1)[0]
    cp = make_control_plane(
        Path(tmp_path_factory.mktemp("outage")),
        f"postgresql://{user}@127.0.0.1:{proxy.port}/{name}",
        command="server",
    )
    try:
        cp.start()
        yield Stack(cp, proxy, cp.login_token())
    finally:
        proxy.up()  # let the server close its connections cleanly
        cp.stop()
        proxy.close()
        pg_drop_database(db_url)


def wait_health(stack: Stack, status: int, within: float) -> tuple[float, dict[str, Any]]:
    """Poll /health until it answers ``status``; the time it took and the last body."""
    t0 = time.monotonic()
    body: dict[str, Any] = {}
    while time.monotonic() - t0 < within + 3:  # bounded; the assertion says by how much
        try:
            code, body = stack.health()
        except httpx.HTTPError as exc:
            code, body = 0, {"error": repr(exc)}
        if code == status:
            return time.monotonic() - t0, body
        time.sleep(0.2)
    pytest.fail(f"/health never answered {status} (last: {body}); log:\n{stack.cp.log()[-3000:]}")


def check_fault_and_recovery(stack: Stack, fault: str) -> None:
    assert stack.health()[0] == 200
    assert stack.users().status_code == 200
    getattr(stack.proxy, fault)()
    try:
        took, body = wait_health(stack, 503, HEALTH_WITHIN)
        print(f"{fault}: /health 503 after {took:.2f} s: {body}")
        assert took < HEALTH_WITHIN, f"/health took {took:.1f} s to say not ready"
        assert body["status"] == "not ready" and body["database"], body

        t0 = time.monotonic()
        r = stack.users()
        took = time.monotonic() - t0
        print(f"{fault}: API {r.status_code} after {took:.2f} s: {r.text}")
        assert r.status_code == 503, r.text
        assert r.json()["error"]["code"] == "database_unavailable", r.text
        assert took < API_WITHIN, f"the API call took {took:.1f} s"
    finally:
        stack.proxy.up()
    took, body = wait_health(stack, 200, HEALTH_WITHIN)
    print(f"{fault}: /health 200 again after {took:.2f} s")
    assert took < HEALTH_WITHIN, f"/health took {took:.1f} s to say ready again"
    assert body["status"] == "ok" and body["version"], body
    r = stack.users()
    assert r.status_code == 200, r.text
    assert any(u["email"] == stack.cp.admin_email for u in r.json()["items"]), r.text


def test_healthy_replica_is_ready(stack: Stack) -> None:
    code, body = stack.health()
    assert code == 200 and body["status"] == "ok", body


def test_hung_database(stack: Stack) -> None:
    check_fault_and_recovery(stack, "hang")


def test_database_down(stack: Stack) -> None:
    check_fault_and_recovery(stack, "down")


def test_readiness_changes_are_logged_once_each(stack: Stack) -> None:
    log = stack.cp.log()
    assert log.count("not ready: the database cannot serve") == 2, log[-3000:]
    assert log.count("ready: the database answers again") == 2, log[-3000:]
