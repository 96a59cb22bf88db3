"""One reader of the change log per replica, and the recent rows it keeps in memory.

Every edge streaming from this replica is served from here, so a change costs one
query on this replica however many edges follow it (docs/sync.md, "Delivery"). The
tail reads when the :class:`~entryguard.control.services.edge_sync.ChangeNotifier` says
the log may have grown (a local commit, a NOTIFY from another replica, a LISTEN
re-established) and every :data:`RECHECK` seconds as a safety net. Revisions commit in
order (writers hold one lock), so "rows after the head" never misses a row that
commits later.
"""

from __future__ import annotations

import asyncio
import bisect
import contextlib
import logging

from entryguard.backoff import Backoff
from entryguard.control.db.database import DATABASE_ERRORS, Database
from entryguard.control.services.edge_sync import ChangeRow, changes_since, current_revision
from entryguard.errors import Gone

log = logging.getLogger("entryguard.sync")

RECHECK = 2.0
"""Seconds between reads when nothing pokes the tail (a NOTIFY can be lost)."""
READ_LIMIT = 2000


class ChangeTail:
    """The newest rows of the change log: ``rows`` cover revisions (``floor``, ``head``]."""

    def __init__(self, db: Database, capacity: int = 20_000) -> None:
        self.db = db
        self.capacity = capacity
        self.head = 0
        self.floor = 0
        self.rows: list[ChangeRow] = []
        self._revs: list[int] = []  # rows' revisions, for bisect
        self._dirty = asyncio.Event()
        self._grown = asyncio.Condition()
        self._task: asyncio.Task[None] | None = None
        self.reads = 0  # queries run: what /metrics and the bench count
        self.last_ok = float("-inf")  # monotonic time of the last read that succeeded
        self.healthy = False
        self.closing = False

    async def start(self) -> None:
        async with self.db.read() as s:
            self.head = self.floor = await current_revision(s)
        self.healthy = True
        self.last_ok = self.db.clock.monotonic()
        self._task = asyncio.get_running_loop().create_task(self._run(), name="change-tail")

    async def stop(self) -> None:
        self.closing = True
        await self._wake_readers()
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task

    def poke(self) -> None:
        """The log may have grown: read it soon (cheap; many pokes make one read)."""
        self._dirty.set()

    async def _run(self) -> None:
        backoff = Backoff(0.2, 5.0)
        while True:
            # asyncio.timeout, not wait_for: on Python 3.11 wait_for can swallow a
            # cancellation that meets the awaited result (bpo-42130), leaving a task
            # that ignores its cancel.
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(RECHECK):
                    await self._dirty.wait()
            self._dirty.clear()
            try:
                while await self._read():
                    pass
            except DATABASE_ERRORS as exc:
                if self.healthy:
                    log.warning("reading the change log failed (%s); retrying", exc)
                self.healthy = False
                self._dirty.set()
                await asyncio.sleep(backoff.next())
                continue
            if not self.healthy:
                log.info("reading the change log again")
            self.healthy = True
            backoff.reset()

    async def _read(self) -> bool:
        """Read what follows the head; True when there may be more."""
        self.reads += 1
        async with self.db.read() as s:
            try:
                rows = await changes_since(s, self.head, READ_LIMIT)
            except Gone:
                # The log was pruned past our head (we were cut off for longer than the
                # retention) or reset: start over at its end; streams behind the new
                # floor are sent to the snapshot.
                newest = await current_revision(s)
                log.warning(
                    "change log moved past revision %d: tail restarts at %d", self.head, newest
                )
                self._reset(newest)
                return False
        self.last_ok = self.db.clock.monotonic()
        if rows:
            self.rows += rows
            self._revs += [r.revision for r in rows]
            self.head = rows[-1].revision
            if len(self.rows) > 2 * self.capacity:
                cut = len(self.rows) - self.capacity
                self.floor = self._revs[cut - 1]
                del self.rows[:cut], self._revs[:cut]
            await self._wake_readers()
        return len(rows) >= READ_LIMIT

    def _reset(self, revision: int) -> None:
        self.rows, self._revs = [], []
        self.head = self.floor = revision

    async def _wake_readers(self) -> None:
        async with self._grown:
            self._grown.notify_all()

    def fresh(self, within: float) -> bool:
        """Whether the log was read successfully within the last ``within`` seconds: a
        heartbeat ("nothing new") is only true of a log this replica can still read."""
        return self.db.clock.monotonic() - self.last_ok <= within

    def after(self, since: int, limit: int = 500) -> list[ChangeRow] | None:
        """Rows with revision > ``since`` (whole batches, about ``limit``), or None when
        ``since`` is below what is kept in memory (the caller reads the database)."""
        if since < self.floor:
            return None
        i = bisect.bisect_right(self._revs, since)
        out = self.rows[i : i + limit]
        j = i + len(out)
        # Never split a batch: finish the last one past the limit.
        while out and j < len(self.rows) and self.rows[j].batch == out[-1].batch:
            out.append(self.rows[j])
            j += 1
        return out

    async def wait_beyond(self, revision: int, timeout: float) -> None:
        """Return once the head is past ``revision``, on shutdown, or after ``timeout``."""
        async with self._grown:
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(timeout):
                    await self._grown.wait_for(lambda: self.head > revision or self.closing)
