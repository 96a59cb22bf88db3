"""The background job that ends due sessions and guest grants.

It runs on every replica. A cheap unlocked probe finds out whether anything is due;
only then does it take the write transaction, where rows are claimed with
``FOR UPDATE SKIP LOCKED`` so no session is expired twice.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging

from sqlalchemy import func, select

from entryguard.control.db.database import Database
from entryguard.control.db.models import GuestAccess, Session
from entryguard.control.services.access_rules import due_guests, end_guest
from entryguard.control.services.sessions import any_due, due_sessions, end_session

log = logging.getLogger("entryguard.expiry")


async def _guests_due(db: Database) -> bool:
    async with db.read() as s:
        return (
            await s.execute(
                select(GuestAccess.id)
                .where(GuestAccess.ended_at.is_(None), GuestAccess.expires_at <= db.clock.now())
                .limit(1)
            )
        ).first() is not None


async def expire_once(db: Database) -> int:
    async with db.read() as s:
        sessions_due = await any_due(s)
    guests_due = await _guests_due(db)
    if not sessions_due and not guests_due:
        return 0
    n = 0
    async with db.write() as s:
        for sess, user in await due_sessions(s, lock=db.is_postgres):
            await end_session(s, sess, user, "expired", "system")
            n += 1
        for g, r in await due_guests(s, lock=db.is_postgres):
            await end_guest(s, g, r, "expired", "system")
            n += 1
    return n


async def next_due(db: Database) -> float | None:
    """Seconds until the earliest active session or guest grant expires (None: nothing)."""
    async with db.read() as s:
        a = (
            await s.execute(select(func.min(Session.expires_at)).where(Session.ended_at.is_(None)))
        ).scalar()
        b = (
            await s.execute(
                select(func.min(GuestAccess.expires_at)).where(GuestAccess.ended_at.is_(None))
            )
        ).scalar()
    due = [t for t in (a, b) if t is not None]
    if not due:
        return None
    return (min(due) - db.clock.now()).total_seconds()


async def run_expiry(db: Database, interval: float, wake: asyncio.Event | None = None) -> None:
    """Sleep until the next expiry (at most ``max(interval, 1 s)``, or until ``wake`` is set
    by a commit that may have added an earlier one), then end what is due.

    The longest sleep bounds how late a row written by *another* replica can expire.
    """
    longest = max(interval, 1.0)
    while True:
        try:
            if wake is not None:
                wake.clear()  # before reading: a commit from here on wakes the sleep below
            delay = await next_due(db)
            if delay is not None and delay <= 0:
                n = await expire_once(db)
                if n:
                    log.info("expired %d session(s)/guest grant(s)", n)
                continue
            sleep = longest if delay is None else min(longest, delay + 0.005)
            if wake is None:
                await asyncio.sleep(sleep)
            else:
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(sleep):  # not wait_for (3.11: a lost cancel)
                        await wake.wait()
        except asyncio.CancelledError:
            raise
        except Exception:  # keep the job alive through a database blip
            log.exception("expiry pass failed; retrying")
            await asyncio.sleep(2)
