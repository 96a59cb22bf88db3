"""The edges: who streams from this replica, how far every edge in the cluster has
applied the change log, and the registry behind ``eg admin edges`` (docs/sync.md).

An access change returns once every *live* edge has applied it, whichever replica that
edge streams from, bounded at one second:

- edges on this replica acknowledge over their stream (:meth:`EdgeHub.ack`);
- each replica tells the others what its edges acknowledged with one NOTIFY on
  ``entryguard_edges`` per burst of acks (coalesced while one is in flight), and once per
  stream interval lists its live edges, so a replica knows every edge of the cluster;
- an edge unheard of for :data:`~entryguard.sync.stream.SILENCE_INTERVALS` intervals no
  longer counts.

Database cost per replica: one NOTIFY per burst of acks and one transaction per interval
(registry refresh, token re-check, liveness NOTIFY), however many edges stream from it.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import socket
import uuid
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from functools import partial
from typing import Any

from sqlalchemy import func, select, update
from sqlalchemy.ext.asyncio import AsyncSession

from entryguard.control.db.clocked import clock_of
from entryguard.control.db.database import DATABASE_ERRORS, Database
from entryguard.control.db.models import Edge, EdgeToken
from entryguard.control.services.edge_sync import ChangeNotifier
from entryguard.control.services.journal import iso
from entryguard.control.services.views import View
from entryguard.errors import Conflict
from entryguard.sync.stream import DEFAULT_INTERVAL, SILENCE_INTERVALS, Close

log = logging.getLogger("entryguard.sync")

CHANNEL = "entryguard_edges"
ACK_GATHER = 0.025
"""Seconds an ack may wait for this replica's other edges before it is told alone."""


@dataclass(eq=False)
class EdgeLink:
    """One edge streaming from this replica."""

    edge_id: int
    token_id: int
    name: str
    instance: str
    address: str | None
    revision: int
    health: str = "ok"
    heard: float = 0.0  # monotonic time of its last message
    kicked: asyncio.Event = field(default_factory=asyncio.Event)
    kick_code: Close = Close.SHUTDOWN
    kick_reason: str = ""

    def kick(self, code: Close, reason: str) -> None:
        """End this edge's stream (its handler closes the WebSocket)."""
        self.kick_code, self.kick_reason = code, reason
        self.kicked.set()


class EdgeView(View):
    """An edge as ``eg admin edges`` and the dashboard show it."""

    id: int
    name: str
    token: str
    version: str
    replica: str
    address: str | None
    revision: int
    lag: int
    """Revisions behind the newest (0: it has applied everything)."""
    health: str
    live: bool
    """Streaming now: seen within three stream intervals."""
    first_seen: str | None
    last_seen: str | None


class EdgeHub:
    def __init__(
        self,
        db: Database,
        notifier: ChangeNotifier,
        *,
        interval: float = DEFAULT_INTERVAL,
    ) -> None:
        self.db = db
        self.notifier = notifier
        self.interval = interval
        self.replica = f"{socket.gethostname()}:{os.getpid()}"
        self._id = uuid.uuid4().hex[:12]  # this process, in NOTIFY payloads
        self.local: dict[int, EdgeLink] = {}
        # Edges streaming from other replicas: edge id -> (revision, monotonic time heard).
        self.remote: dict[int, tuple[int, float]] = {}
        self._cond = asyncio.Condition()
        self.positions = 0  # generation: moves whenever a position does
        self._pending: dict[int, int] = {}  # acks not yet told to the other replicas
        self._gone: set[int] = set()
        self._sending = False
        self._acked = asyncio.Event()  # an ack arrived (the NOTIFY gatherer waits on it)
        self._task: asyncio.Task[None] | None = None
        self.notifies = 0  # NOTIFYs sent (the bench and /metrics count them)
        notifier.channels[CHANNEL] = self._heard_remote

    # -- lifecycle -----------------------------------------------------------------

    async def start(self) -> None:
        self._task = asyncio.get_running_loop().create_task(self._refresh_loop(), name="edge-hub")

    def close_streams(self) -> None:
        """The server is stopping: end every stream now (edges move to another replica)."""
        for link in list(self.local.values()):
            link.kick(Close.SHUTDOWN, "the control-plane replica is stopping")

    async def stop(self) -> None:
        self.close_streams()
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task

    # -- edges on this replica -------------------------------------------------------

    async def register(
        self,
        token: EdgeToken,
        name: str,
        instance: str,
        version: str,
        address: str | None,
        since: int,
    ) -> EdgeLink:
        """Record an edge starting its stream; :class:`Conflict` when another live edge
        holds the same token and name."""
        now_mono = self.db.clock.monotonic()
        async with self.db.write() as s:
            now = clock_of(s).now()
            row = (
                await s.execute(select(Edge).where(Edge.token_id == token.id, Edge.name == name))
            ).scalar_one_or_none()
            if row is not None and row.instance != instance and self._live(row, now):
                raise Conflict(
                    f"an edge named {name!r} is already streaming with edge token "
                    f"{token.name!r} (from {row.address or 'unknown'}): give each edge its "
                    "own --name, or stop the other one",
                    code="edge_name_taken",
                )
            if row is None:
                row = Edge(token_id=token.id, name=name, first_seen=now)
                s.add(row)
            row.instance, row.version, row.address = instance, version[:32], address
            row.replica, row.revision, row.health = self.replica, since, "ok"
            row.connected, row.last_seen = True, now
            await s.flush()
            edge_id = row.id
        stale = self.local.get(edge_id)
        if stale is not None:  # the same process again (a reconnect the old socket missed)
            stale.kick(Close.NAME_TAKEN, "replaced by a new stream from the same edge")
        link = EdgeLink(edge_id, token.id, name, instance, address, since, heard=now_mono)
        self.local[edge_id] = link
        self._moved()
        return link

    def _live(self, row: Edge, now: datetime) -> bool:
        if row.id in self.local:
            return True
        horizon = timedelta(seconds=SILENCE_INTERVALS * self.interval)
        return row.connected and now - row.last_seen < horizon

    def ack(self, link: EdgeLink, revision: int, health: str) -> None:
        link.heard = self.db.clock.monotonic()
        link.health = health
        if revision > link.revision:
            link.revision = revision
            self._pending[link.edge_id] = revision
            self._moved()
            self._tell_others()

    def heard(self, link: EdgeLink) -> None:
        link.heard = self.db.clock.monotonic()

    async def unregister(self, link: EdgeLink) -> None:
        if self.local.get(link.edge_id) is link:
            del self.local[link.edge_id]
            self._gone.add(link.edge_id)
            self._moved()
            self._tell_others()
        with contextlib.suppress(*DATABASE_ERRORS):
            async with self.db.read() as s, s.begin():
                await s.execute(
                    update(Edge)
                    .where(Edge.id == link.edge_id, Edge.instance == link.instance)
                    .values(
                        connected=False,
                        revision=link.revision,
                        health=link.health,
                        last_seen=self.db.clock.now(),
                    )
                )

    # -- the other replicas ------------------------------------------------------------

    def _tell_others(self) -> None:
        if not self.db.is_postgres:
            return
        self._acked.set()
        if not self._sending:
            self._sending = True
            asyncio.get_running_loop().create_task(self._send_acks())

    def _all_caught_up(self) -> bool:
        newest = max(self._pending.values(), default=0)
        return all(link.revision >= newest for link in self.local.values())

    async def _send_acks(self) -> None:
        """One NOTIFY per change, not per edge: acks are gathered until every edge here
        has acknowledged the newest revision acked, or for :data:`ACK_GATHER` at most
        (a slow edge then goes in the next). Each NOTIFY costs a transaction on every
        listening replica, so this is what keeps a change's cost flat in edges."""
        loop = asyncio.get_running_loop()
        try:
            while self._pending or self._gone:
                deadline = loop.time() + ACK_GATHER
                while not self._gone and not self._all_caught_up():
                    left = deadline - loop.time()
                    if left <= 0:
                        break
                    self._acked.clear()
                    with contextlib.suppress(TimeoutError):
                        async with asyncio.timeout(left):
                            await self._acked.wait()
                payload: dict[str, Any] = {"r": self._id, "a": self._pending}
                if self._gone:
                    payload["g"] = sorted(self._gone)
                self._pending, self._gone = {}, set()
                self.notifies += 1
                await self.notifier.send(CHANNEL, json.dumps(payload, separators=(",", ":")))
        finally:
            self._sending = False

    def _heard_remote(self, payload: str) -> None:
        try:
            d = json.loads(payload)
            if d.get("r") == self._id:
                return
            now = self.db.clock.monotonic()
            for key, rev in dict(d.get("a", {})).items():
                self.remote[int(key)] = (int(rev), now)
            for key in d.get("g", []):
                self.remote.pop(int(key), None)
        except (ValueError, TypeError, AttributeError) as exc:
            log.warning("ignoring a malformed %s notification: %s", CHANNEL, exc)
            return
        self._moved()

    # -- waiting for the edges ---------------------------------------------------------

    def _moved(self) -> None:
        self.positions += 1
        asyncio.get_running_loop().create_task(self._wake())

    async def _wake(self) -> None:
        async with self._cond:
            self._cond.notify_all()

    def behind(self, revision: int) -> list[int]:
        """The live edges (here and on other replicas) that have not applied ``revision``."""
        now = self.db.clock.monotonic()
        horizon = SILENCE_INTERVALS * self.interval
        out = [e for e, link in self.local.items() if link.revision < revision]
        out += [
            e
            for e, (rev, at) in self.remote.items()
            if rev < revision and now - at < horizon and e not in self.local
        ]
        return out

    async def caught_up(self, revision: int, timeout: float) -> bool:
        """Wait (bounded) until every live edge has applied ``revision``."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while True:
            seen = self.positions
            behind = self.behind(revision)
            left = deadline - loop.time()
            if not behind or left <= 0 or self.notifier.closing:
                return not behind
            async with self._cond:
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(min(left, 0.25)):  # not wait_for: ChangeTail
                        await self._cond.wait_for(partial(self._moved_since, seen))

    def _moved_since(self, seen: int) -> bool:
        return self.positions != seen or self.notifier.closing

    # -- once per interval -------------------------------------------------------------

    async def _refresh_loop(self) -> None:
        failing = False
        while True:
            await asyncio.sleep(self.interval)
            try:
                await self.refresh()
            except DATABASE_ERRORS as exc:
                if not failing:
                    log.warning("refreshing the edge registry failed: %s", exc)
                failing = True
                continue
            failing = False

    async def refresh(self) -> None:
        """Drop silent edges, end revoked tokens' streams, refresh the registry and tell
        the other replicas which edges stream here: one transaction."""
        now_mono = self.db.clock.monotonic()
        horizon = SILENCE_INTERVALS * self.interval
        for e, (_rev, at) in list(self.remote.items()):
            if now_mono - at >= horizon:
                del self.remote[e]
        for link in list(self.local.values()):
            if now_mono - link.heard >= horizon:
                link.kick(Close.SILENT, f"no message for {horizon:.0f} s")
        links = list(self.local.values())
        async with self.db.read() as s, s.begin():
            if links:
                await self._refresh_rows(s, links)
            if self.db.is_postgres and links:
                payload = {"r": self._id, "a": {str(k.edge_id): k.revision for k in links}}
                self.notifies += 1
                await s.execute(
                    select(_pg_notify(CHANNEL, json.dumps(payload, separators=(",", ":"))))
                )
        self._moved()

    async def _refresh_rows(self, s: AsyncSession, links: list[EdgeLink]) -> None:
        now = clock_of(s).now()
        tokens = {k.token_id for k in links}
        live = set(
            (
                await s.execute(
                    select(EdgeToken.id).where(
                        EdgeToken.id.in_(tokens), EdgeToken.revoked_at.is_(None)
                    )
                )
            ).scalars()
        )
        for link in links:
            if link.token_id not in live:
                link.kick(Close.UNAUTHORIZED, "the edge token was revoked")
                continue
            await s.execute(
                update(Edge)
                .where(Edge.id == link.edge_id, Edge.instance == link.instance)
                .values(revision=link.revision, health=link.health, last_seen=now, connected=True)
            )


def _pg_notify(channel: str, payload: str) -> Any:
    return func.pg_notify(channel, payload)


async def list_edges(
    s: AsyncSession, head: int, interval: float = DEFAULT_INTERVAL
) -> list[EdgeView]:
    """Every edge that ever streamed, by name, with its lag behind ``head``."""
    now = clock_of(s).now()
    horizon = timedelta(seconds=SILENCE_INTERVALS * interval + 1)
    rows = (
        await s.execute(
            select(Edge, EdgeToken.name)
            .join(EdgeToken, EdgeToken.id == Edge.token_id)
            .order_by(Edge.name, Edge.id)
        )
    ).all()
    out = []
    for e, token in rows:
        live = e.connected and now - e.last_seen < horizon
        out.append(
            EdgeView(
                id=e.id,
                name=e.name,
                token=token,
                version=e.version,
                replica=e.replica,
                address=e.address,
                revision=e.revision,
                lag=max(0, head - e.revision),
                health=e.health if live else "offline",
                live=live,
                first_seen=iso(e.first_seen),
                last_seen=iso(e.last_seen),
            )
        )
    return out
