"""Serves one edge's pushed change stream over a WebSocket (docs/sync.md, "Delivery").

The rows come from the replica's :class:`ChangeTail` (memory), not from a query per
edge; only an edge that resumes from further back than the tail keeps reads the
database, once, to catch up.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging

from starlette.websockets import WebSocket, WebSocketDisconnect

from entryguard.control.api.deps import bearer_value
from entryguard.control.db.database import DATABASE_ERRORS, Database
from entryguard.control.services import edge_sync
from entryguard.control.services.change_tail import RECHECK, ChangeTail
from entryguard.control.services.edge_hub import EdgeHub, EdgeLink
from entryguard.errors import Conflict, Gone, Unauthorized
from entryguard.sync.stream import (
    Changes,
    Close,
    Heartbeat,
    Hello,
    StreamError,
    StreamFailure,
    encode,
    parse_edge,
)

log = logging.getLogger("entryguard.sync")

BATCH_ROWS = 500
KICK_CODES = {
    Close.UNAUTHORIZED: "invalid_edge_token",
    Close.NAME_TAKEN: "edge_name_taken",
    Close.SILENT: "edge_silent",
    Close.SHUTDOWN: "replica_stopping",
}


class _Refused(Exception):
    def __init__(self, code: str, message: str, close: int) -> None:
        super().__init__(message)
        self.code, self.message, self.close = code, message, close


async def serve(ws: WebSocket, *, db: Database, tail: ChangeTail, hub: EdgeHub) -> None:
    await ws.accept()
    link: EdgeLink | None = None
    try:
        link, since = await _open(ws, db, tail, hub)
        await _pump(ws, db, tail, hub, link, since)
    except _Refused as r:
        with contextlib.suppress(Exception):
            await ws.send_text(encode(StreamFailure(code=r.code, message=r.message)))
            await ws.close(r.close)
    except (WebSocketDisconnect, OSError):
        pass
    except DATABASE_ERRORS as exc:
        log.warning("edge stream ended: database unavailable (%s)", exc)
        with contextlib.suppress(Exception):
            await ws.close(Close.SHUTDOWN)
    finally:
        if link is not None:
            await hub.unregister(link)


async def _open(
    ws: WebSocket, db: Database, tail: ChangeTail, hub: EdgeHub
) -> tuple[EdgeLink, int]:
    q = ws.query_params
    token = bearer_value(ws.headers.get("authorization"))
    try:
        since = int(q.get("since", ""))
        if since < 0:
            raise ValueError
    except ValueError:
        raise _Refused("invalid_request", "'since' must be a non-negative integer", 1008) from None
    name = q.get("name", "")
    instance = q.get("instance", "")
    if not 1 <= len(name) <= 64 or not 1 <= len(instance) <= 64:
        raise _Refused("invalid_request", "'name' and 'instance' must be 1-64 characters", 1008)
    try:
        if token is None:
            raise Unauthorized("missing edge token", code="invalid_edge_token")
        async with db.read() as s:
            row = await edge_sync.check_edge_token(s, token)
    except Unauthorized as exc:
        raise _Refused(exc.code, exc.message, Close.UNAUTHORIZED) from None
    if since > tail.head:
        # The edge applied rows this replica has not read yet (it came from a replica
        # that was ahead by a few milliseconds): read, then judge.
        tail.poke()
        await tail.wait_beyond(since - 1, 2.0)
        if since > tail.head:
            raise _Refused(
                "revision_gone",
                f"revision {since} is ahead of this control plane's log: fetch the snapshot",
                Close.GONE,
            )
    client = ws.client.host if ws.client else None
    try:
        link = await hub.register(row, name, instance, q.get("version", "")[:32], client, since)
    except Conflict as exc:
        raise _Refused(exc.code, exc.message, Close.NAME_TAKEN) from None
    await ws.send_text(
        encode(Hello(revision=tail.head, interval=hub.interval, edge_id=link.edge_id))
    )
    log.info("edge %s (%s) streaming from revision %d", name, client, since)
    return link, since


async def _pump(
    ws: WebSocket, db: Database, tail: ChangeTail, hub: EdgeHub, link: EdgeLink, since: int
) -> None:
    """Send rows as the tail grows and heartbeats when idle, while a reader takes acks."""
    reader = asyncio.ensure_future(_read_acks(ws, hub, link))
    kicked = asyncio.ensure_future(link.kicked.wait())
    sent = since
    try:
        while True:
            rows = tail.after(sent, BATCH_ROWS)
            if rows is None:  # further back than the tail keeps: catch up from the database
                try:
                    async with db.read() as s:
                        rows = await edge_sync.changes_since(s, sent, BATCH_ROWS)
                except Gone as exc:
                    raise _Refused(exc.code, exc.message, Close.GONE) from None
            if rows:
                msg = Changes(revision=rows[-1].revision, changes=[r.model_dump() for r in rows])
                await ws.send_text(encode(msg))
                sent = rows[-1].revision
                if not kicked.done() and not reader.done():
                    continue
            else:
                grown = asyncio.ensure_future(tail.wait_beyond(sent, hub.interval))
                await asyncio.wait({grown, reader, kicked}, return_when=asyncio.FIRST_COMPLETED)
                if not grown.done():
                    grown.cancel()
                    with contextlib.suppress(asyncio.CancelledError):
                        await grown
                elif (
                    tail.head <= sent
                    and not tail.closing
                    and tail.fresh(RECHECK + 2 * hub.interval)
                ):
                    # Only a replica that can still read the log may say "nothing new":
                    # without its database it falls silent, so the edge moves on, and
                    # with every replica so, the edge's offline grace runs out.
                    await ws.send_text(encode(Heartbeat(revision=sent)))
            if kicked.done():
                code = KICK_CODES.get(link.kick_code, "stream_ended")
                raise _Refused(code, link.kick_reason, link.kick_code)
            if tail.closing:
                raise _Refused("stream_ended", "the replica is stopping", Close.SHUTDOWN)
            if reader.done():
                reader.result()  # the edge went away (raises), or sent garbage
                return
    finally:
        for t in (reader, kicked):
            t.cancel()
        await asyncio.gather(reader, kicked, return_exceptions=True)


async def _read_acks(ws: WebSocket, hub: EdgeHub, link: EdgeLink) -> None:
    while True:
        text = await ws.receive_text()
        try:
            ack = parse_edge(text)
        except StreamError as exc:
            # One broken edge ends its own stream, nobody else's.
            log.warning("edge %s sent a bad stream message: %s", link.name, exc)
            raise _Refused(exc.code, exc.message, 1008) from None
        hub.ack(link, ack.revision, ack.health)
