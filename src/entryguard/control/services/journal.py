"""The audit trail (append-only, hash-chained) and the change log edges follow.

Both are written inside the caller's serialised write transaction (``Database.write``),
so an access change, its audit event and its change-log row commit together or not at all.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession

from entryguard.control.db.clocked import clock_of
from entryguard.control.db.database import tx_changes
from entryguard.control.db.models import AuditEvent, Change
from entryguard.sync.changes import Payload, payload_json

GENESIS = "0" * 64


def _canonical(ev: AuditEvent) -> bytes:
    body = {
        "ts": ev.ts.isoformat(timespec="microseconds"),
        "actor": ev.actor,
        "action": ev.action,
        "target": ev.target,
        "ip": ev.ip,
        "details": ev.details,
        "org_id": ev.org_id,
    }
    return json.dumps(body, sort_keys=True, separators=(",", ":")).encode()


def chain_hash(prev_hash: str, ev: AuditEvent) -> str:
    return hashlib.sha256(prev_hash.encode() + b"\n" + _canonical(ev)).hexdigest()


async def audit(
    s: AsyncSession,
    actor: str,
    action: str,
    target: str = "",
    *,
    details: dict[str, Any] | None = None,
    ip: str | None = None,
    org_id: int | None = None,
) -> AuditEvent:
    prev = (
        await s.execute(select(AuditEvent.hash).order_by(AuditEvent.id.desc()).limit(1))
    ).scalar_one_or_none() or GENESIS
    ts = clock_of(s).now()
    ev = AuditEvent(
        ts=ts,
        org_id=org_id,
        actor=actor[:254],
        action=action,
        target=target[:512],
        ip=ip,
        details=json.dumps(details or {}, sort_keys=True, default=str),
        prev_hash=prev,
        hash="",
    )
    ev.hash = chain_hash(prev, ev)
    s.add(ev)
    await s.flush()
    return ev


@dataclass(frozen=True)
class ChainCheck:
    ok: bool
    checked: int
    bad_id: int | None
    message: str


async def verify_chain(s: AsyncSession, batch: int = 2000) -> ChainCheck:
    prev = GENESIS
    checked = 0
    last_id = 0
    while True:
        rows = (
            (
                await s.execute(
                    select(AuditEvent)
                    .where(AuditEvent.id > last_id)
                    .order_by(AuditEvent.id)
                    .limit(batch)
                )
            )
            .scalars()
            .all()
        )
        if not rows:
            break
        for ev in rows:
            if ev.prev_hash != prev:
                return ChainCheck(
                    False,
                    checked,
                    ev.id,
                    f"audit event {ev.id}: chain broken before it (an earlier event was deleted or altered)",
                )
            if chain_hash(prev, ev) != ev.hash:
                return ChainCheck(
                    False,
                    checked,
                    ev.id,
                    f"audit event {ev.id} was altered: its hash does not match",
                )
            prev = ev.hash
            checked += 1
            last_id = ev.id
    return ChainCheck(True, checked, None, f"audit chain intact ({checked} events)")


async def log_change(s: AsyncSession, payload: Payload) -> int:
    """Append one change-log row. Every row of one transaction carries the same batch
    number (the first row's revision): edges apply a batch whole and only then cut the
    connections the new state no longer covers, so a grant that is removed and re-added
    (or moved to a new session) in one transaction cuts nobody."""
    tx = tx_changes(s)
    data = json.dumps(payload_json(payload), sort_keys=True)
    ch = Change(op=payload.op.value, data=data, batch=tx.batch)
    s.add(ch)
    await s.flush()
    if tx.batch is None:
        ch.batch = tx.batch = ch.revision  # flushed with the next statement or commit
    tx.wake = True  # Database.write notifies followers after commit
    tx.revision = ch.revision
    return ch.revision


def iso(dt: datetime | None) -> str | None:
    if dt is None:
        return None
    return dt.isoformat(timespec="milliseconds").replace("+00:00", "Z")
