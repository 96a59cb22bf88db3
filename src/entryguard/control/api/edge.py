"""The edge's sync endpoints (edge token); see docs/sync.md."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Literal

from fastapi import APIRouter, Query, Request, WebSocket
from pydantic import BaseModel, Field

from entryguard.control.api import edge_stream
from entryguard.control.api.deps import ClientIp, Ctx, CtxDep, bearer, get_ctx
from entryguard.control.api.models import ChangesOut
from entryguard.control.services import edge_sync
from entryguard.errors import Unauthorized

router = APIRouter(prefix="/edge", tags=["edge"])


async def _check(request: Request) -> int:
    token = bearer(request)
    if token is None:
        raise Unauthorized("missing edge token", code="invalid_edge_token")
    async with get_ctx(request).db.read() as s:
        return (await edge_sync.check_edge_token(s, token)).id


@router.get("/snapshot")
async def snapshot(request: Request, c: CtxDep) -> edge_sync.Snapshot:
    await _check(request)
    async with c.db.read() as s:
        return await edge_sync.snapshot(s)


@router.get("/changes")
async def changes(
    request: Request,
    c: CtxDep,
    since: int = Query(ge=0),
    wait: float = Query(default=25.0, ge=0, le=60),
    limit: int = Query(default=500, ge=1, le=5000),
) -> ChangesOut:
    edge_id = await _check(request)
    notifier: edge_sync.ChangeNotifier = request.app.state.notifier
    notifier.edge_polled(edge_id, since)
    deadline = c.db.clock.monotonic() + wait
    woken = False
    while True:
        seen = notifier.changes  # before the query: a commit after it wakes the wait below
        if woken:
            await _check(request)  # a token revoked meanwhile ends this stream (401)
        async with c.db.read() as s:
            rows = await edge_sync.changes_since(s, since, limit)
            rev = rows[-1].revision if rows else since
        left = deadline - c.db.clock.monotonic()
        if rows or left <= 0 or notifier.closing or await request.is_disconnected():
            return ChangesOut(revision=rev, changes=rows)
        await notifier.wait_change(seen, left)
        woken = True


class EdgeEventIn(BaseModel):
    """Something an edge lived through that belongs in the audit trail."""

    type: Literal["fail_closed"]
    since: float = Field(ge=0, le=1e11, description="Unix time it began (the edge's clock)")
    until: float = Field(ge=0, le=1e11, description="Unix time it ended")
    name: str | None = Field(default=None, max_length=64, description="The edge's --name")


class EdgeEventOut(BaseModel):
    recorded: bool


@router.post("/events", status_code=201)
async def event(body: EdgeEventIn, request: Request, c: CtxDep, ip: ClientIp) -> EdgeEventOut:
    """An edge reports an episode, e.g. the time it failed closed without a control plane
    (``--offline-grace``); the control plane audits it as ``edge.fail_closed``."""
    token_id = await _check(request)
    async with c.db.write() as s:
        await edge_sync.record_fail_closed(
            s,
            token_id,
            datetime.fromtimestamp(body.since, UTC),
            datetime.fromtimestamp(max(body.until, body.since), UTC),
            body.name,
            ip,
        )
    return EdgeEventOut(recorded=True)


@router.websocket("/stream")
async def stream(ws: WebSocket) -> None:
    """The pushed change stream (docs/sync.md, "Delivery"): ``hello``, then whole
    batches as they commit, heartbeats when idle; the edge acknowledges each."""
    await edge_stream.serve(
        ws,
        db=get_ctx_ws(ws).db,
        tail=ws.app.state.tail,
        hub=ws.app.state.hub,
    )


def get_ctx_ws(ws: WebSocket) -> Ctx:
    ctx: Ctx = ws.app.state.ctx
    return ctx
