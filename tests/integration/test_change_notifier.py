"""The replica's change listener on the real PostgreSQL: NOTIFY from another replica wakes
it, and a lost LISTEN connection is re-established (with a catch-up), not left for
good; a commit between a long-poll's query and its wait is not lost."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import asyncpg
import pytest

from entryguard.control.db.database import Database
from entryguard.control.services.edge_sync import ChangeNotifier
from tests.conftest import pg_create_database, pg_drop_database


@pytest.fixture
async def pg_url() -> AsyncIterator[str]:
    url = await asyncio.to_thread(pg_create_database)
    try:
        yield url
    finally:
        await asyncio.to_thread(pg_drop_database, url)


async def until(cond: object, timeout: float = 10.0) -> None:
    for _ in range(int(timeout / 0.02)):
        if cond():  # type: ignore[operator]
            return
        await asyncio.sleep(0.02)
    raise AssertionError("condition never held")


async def test_notify_wakes_and_a_lost_listen_connection_comes_back(pg_url: str) -> None:
    db = Database(pg_url)
    notifier = ChangeNotifier(db)
    other = await asyncpg.connect(pg_url)  # "another replica"
    try:
        await notifier.start()
        await until(lambda: notifier.listening)
        before = notifier.changes
        await other.execute("NOTIFY entryguard_changes")
        await until(lambda: notifier.changes > before)

        # The LISTEN connection dies (a database blip, a proxy, an admin's kill).
        pid = notifier._listener.get_server_pid()
        await other.execute("SELECT pg_terminate_backend($1)", pid)
        await until(lambda: not notifier.listening or notifier._listener.get_server_pid() != pid)
        await until(lambda: notifier.listening)
        assert notifier._listener.get_server_pid() != pid
        before = notifier.changes
        await other.execute("NOTIFY entryguard_changes")
        await until(lambda: notifier.changes > before)
    finally:
        await other.close()
        await notifier.stop()
        await db.dispose()


async def test_a_change_between_the_query_and_the_wait_is_not_lost(pg_url: str) -> None:
    db = Database(pg_url)
    notifier = ChangeNotifier(db)
    try:
        seen = notifier.changes  # a long-poll reads this, then queries the log...
        notifier.notify()  # ...and a commit lands before it starts to wait
        loop = asyncio.get_running_loop()
        t0 = loop.time()
        await notifier.wait_change(seen, 5.0)
        assert loop.time() - t0 < 0.5, "the wake-up was lost until the re-check"
    finally:
        await db.dispose()
