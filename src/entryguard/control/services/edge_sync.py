"""The edge's view: snapshot and the change log from a revision (docs/sync.md)."""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
from collections.abc import Callable
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import delete, func, select
from sqlalchemy.ext.asyncio import AsyncSession

from entryguard.backoff import Backoff
from entryguard.control.auth.secrets import matches, split_prefix
from entryguard.control.db.clocked import clock_of
from entryguard.control.db.database import Database
from entryguard.control.db.models import ApiKey, Change, EdgeToken, Grant, Resource
from entryguard.control.services.apikeys import agent_data
from entryguard.control.services.grants import grant_data
from entryguard.control.services.journal import audit, iso
from entryguard.control.services.resources import tunnel_data
from entryguard.control.services.views import View
from entryguard.errors import Gone, Unauthorized
from entryguard.sync.changes import AgentUpsert, GrantAdd, TunnelUpsert

log = logging.getLogger("entryguard.sync")


class Snapshot(View):
    """The edge's whole state at ``revision`` (docs/sync.md); rows as in the change log."""

    revision: int
    server_time: str | None
    tunnels: list[TunnelUpsert]
    agents: list[AgentUpsert]
    grants: list[GrantAdd]


class ChangeRow(View):
    revision: int
    batch: int
    op: str
    data: dict[str, Any]
    """The payload of ``op`` (entryguard.sync.changes), parsed by the edge."""


async def check_edge_token(s: AsyncSession, token: str) -> EdgeToken:
    """The edge token's row, or 401."""
    prefix = split_prefix(token)
    row = None
    if prefix and prefix.startswith("ege_"):
        row = (
            await s.execute(select(EdgeToken).where(EdgeToken.prefix == prefix))
        ).scalar_one_or_none()
    if row is None or row.revoked_at is not None or not matches(token, row.token_hash):
        raise Unauthorized(
            "invalid edge token",
            code="invalid_edge_token",
        )
    return row


async def current_revision(s: AsyncSession) -> int:
    return int((await s.execute(select(func.max(Change.revision)))).scalar_one_or_none() or 0)


async def snapshot(s: AsyncSession) -> Snapshot:
    # One read transaction: on PostgreSQL REPEATABLE READ would be stricter, but every
    # writer holds the global write lock, so reading the revision first and the rows
    # after can only show rows of a *later* revision, which replaying is idempotent for.
    revision = await current_revision(s)
    tunnels = (
        await s.execute(select(Resource).where(Resource.type == "tunnel").order_by(Resource.id))
    ).scalars()
    keys = (
        await s.execute(select(ApiKey).where(ApiKey.revoked_at.is_(None)).order_by(ApiKey.id))
    ).scalars()
    grants = (
        await s.execute(
            select(Grant)
            .join(Resource, Resource.id == Grant.resource_id)
            .where(Resource.type == "tunnel")
            .order_by(Grant.id)
        )
    ).scalars()
    return Snapshot(
        revision=revision,
        server_time=iso(clock_of(s).now()),
        tunnels=[tunnel_data(r) for r in tunnels],
        agents=[agent_data(k) for k in keys if "agent:connect" in k.scope_list],
        grants=[grant_data(g) for g in grants],
    )


async def changes_since(s: AsyncSession, since: int, limit: int) -> list[ChangeRow]:
    oldest = (await s.execute(select(func.min(Change.revision)))).scalar_one_or_none()
    newest = await current_revision(s)
    if since > newest or (oldest is not None and since < oldest - 1):
        raise Gone(
            f"revision {since} is no longer available: fetch /edge/snapshot again",
            code="revision_gone",
        )
    rows = list(
        (
            await s.execute(
                select(Change).where(Change.revision > since).order_by(Change.revision).limit(limit)
            )
        ).scalars()
    )
    if len(rows) == limit and rows[-1].batch is not None:
        # Never split a batch across answers: finish the last one past the limit.
        rows += (
            await s.execute(
                select(Change)
                .where(Change.batch == rows[-1].batch, Change.revision > rows[-1].revision)
                .order_by(Change.revision)
            )
        ).scalars()
    return [change_row(c) for c in rows]


def change_row(c: Change) -> ChangeRow:
    return ChangeRow(
        revision=c.revision,
        batch=c.batch if c.batch is not None else c.revision,
        op=c.op,
        data=json.loads(c.data),
    )


class ChangeNotifier:
    """Wakes long-polls when the change log grows: in-process callbacks, and on
    PostgreSQL a LISTEN connection so commits on other replicas wake us too.

    Two generations, two kinds of waiter: ``changes`` moves when the log grows (edges'
    and agents' long-polls wait on it), ``positions`` when an edge reports how far it
    has applied (an access change waiting for the edges). An edge's poll therefore
    wakes only the callers waiting for edges, never the other edges' long-polls.
    """

    def __init__(self, db: Database) -> None:
        self.db = db
        # edge token id -> (revision it asked from, monotonic time): an edge that asks
        # for changes since R has applied everything up to R.
        self.edge_positions: dict[int, tuple[int, float]] = {}
        self._cond = asyncio.Condition()
        self.changes = 0  # generation of the change log, as this replica knows it
        self.positions = 0
        self._listener: Any = None
        self._listen_task: asyncio.Task[None] | None = None
        self.listening = False
        # Set when the server begins to shut down: long-polls answer at once instead of
        # holding the graceful shutdown until they are cancelled.
        self.closing = False
        # Called on every notify(): the change tail reads the log once for all edges.
        self.on_change: list[Callable[[], None]] = []
        # Further LISTEN channels (name -> callback with the payload), e.g. edge acks.
        self.channels: dict[str, Callable[[str], None]] = {}
        db.on_commit_changes.append(self.notify)

    def close_polls(self) -> None:
        self.closing = True
        self.notify()

    def _heard_change(self, _conn: Any, _pid: int, _channel: str, payload: str) -> None:
        # Our own commits woke us already (Database.on_commit_changes).
        if payload != self.db.instance:
            self.notify()

    def notify(self) -> None:
        """The change log may have grown (a commit here, a NOTIFY, a reconnect)."""
        self.changes += 1
        for cb in self.on_change:
            cb()
        asyncio.get_running_loop().create_task(self._wake())

    async def _wake(self) -> None:
        async with self._cond:
            self._cond.notify_all()

    async def wait_change(self, seen: int, timeout: float) -> None:
        """Return once ``changes`` differs from ``seen`` (read *before* the caller's
        query, so a commit between that query and this wait is not lost), on shutdown,
        or after ``timeout``; at most 2 s, as a safety net should a NOTIFY go missing."""
        async with self._cond:
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(min(timeout, 2.0)):  # not wait_for: see ChangeTail
                    await self._cond.wait_for(lambda: self.changes != seen or self.closing)

    async def wait(self, timeout: float) -> None:
        await self.wait_change(self.changes, timeout)

    def edge_polled(self, edge_id: int, since: int) -> None:
        self.edge_positions[edge_id] = (since, self.db.clock.monotonic())
        self.positions += 1
        asyncio.get_running_loop().create_task(self._wake())

    async def edges_caught_up(self, revision: int, timeout: float) -> bool:
        """Wait (bounded) until every edge polling this replica has applied ``revision``.

        So `eg session start` returns when the edges admit the new IP, and
        `eg session stop` when they have cut it. Edges silent for 60 s are ignored.
        """
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while True:
            seen = self.positions
            now = self.db.clock.monotonic()
            behind = [
                e
                for e, (rev, at) in self.edge_positions.items()
                if now - at < 60 and rev < revision
            ]
            left = deadline - loop.time()
            if not behind or left <= 0 or self.closing:
                return not behind
            await self._wait_positions(seen, min(left, 0.25))

    async def _wait_positions(self, seen: int, timeout: float) -> None:
        async with self._cond:
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(timeout):
                    await self._cond.wait_for(lambda: self.positions != seen or self.closing)

    async def start(self) -> None:
        if self.db.is_postgres:
            self._listen_task = asyncio.get_running_loop().create_task(
                self._listen(), name="change-listener"
            )

    async def _listen(self) -> None:
        """LISTEN for other replicas' commits; re-established after any loss of the
        connection, followed by a catch-up (every long-poll re-reads the log)."""
        import asyncpg

        url = self.db.engine.url.set(drivername="postgresql").render_as_string(hide_password=False)
        backoff = Backoff(0.5, 10.0)
        failures = 0  # in a row; the first is logged, and the first after a success
        while True:
            lost = asyncio.Event()
            try:
                conn = await asyncpg.connect(url, timeout=5)
                conn.add_termination_listener(lambda _c, lost=lost: lost.set())
                await conn.add_listener("entryguard_changes", self._heard_change)
                for channel, callback in self.channels.items():
                    await conn.add_listener(
                        channel, lambda _c, _p, _ch, payload, cb=callback: cb(payload)
                    )
            except (OSError, TimeoutError, asyncpg.PostgresError) as exc:
                if failures == 0:
                    log.warning(
                        "LISTEN for change notifications failed (%s); retrying, and "
                        "re-reading the log every 2 s meanwhile",
                        exc,
                    )
                self.listening = False
                failures += 1
                await asyncio.sleep(backoff.next())
                continue
            self._listener = conn
            if failures:
                log.info("LISTEN for change notifications re-established")
            self.listening = True
            backoff.reset()
            failures = 0
            self.notify()  # catch up on what was committed while not listening
            await lost.wait()
            self.listening = False
            self._listener = None
            log.warning("LISTEN connection lost; re-establishing it")
            failures = 1  # so the re-establishment is logged

    async def send(self, channel: str, payload: str) -> bool:
        """NOTIFY ``channel`` on the LISTEN connection (no pool checkout, one statement);
        False when there is none right now (the receivers' own timeouts cover it)."""
        conn = self._listener
        if conn is None:
            return False
        try:
            await conn.execute("SELECT pg_notify($1, $2)", channel, payload)
        except Exception as exc:  # a lost connection: the LISTEN task re-establishes it
            log.debug("NOTIFY %s failed: %s", channel, exc)
            return False
        return True

    async def stop(self) -> None:
        if self._listen_task is not None:
            self._listen_task.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await self._listen_task
        if self._listener is not None:
            with contextlib.suppress(Exception):
                await self._listener.close()


async def prune_changes(db: Database, retention_seconds: int) -> int:
    async with db.write() as s:
        res = await s.execute(
            delete(Change).where(
                Change.created_at < db.clock.now() - timedelta(seconds=retention_seconds),
                Change.revision < await current_revision(s),  # keep the newest row
            )
        )
        return int(res.rowcount or 0)  # type: ignore[attr-defined]


async def record_fail_closed(
    s: AsyncSession,
    token_id: int,
    since: datetime,
    until: datetime,
    edge_name: str | None,
    ip: str,
) -> None:
    """Audit an edge's fail-closed episode: it had no change stream for longer than its
    offline grace and refused session and guest grants from ``since`` to ``until``."""
    token = await s.get(EdgeToken, token_id)
    await audit(
        s,
        f"edge {edge_name or (token.name if token else token_id)}",
        "edge.fail_closed",
        f"edge-token {token.name if token else token_id}",
        details={
            "since": iso(since),
            "until": iso(until),
            "seconds": round((until - since).total_seconds(), 1),
        },
        ip=ip,
    )
