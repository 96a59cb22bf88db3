"""The edge's sync endpoints (edge token); see docs/sync.md."""

from __future__ import annotations

import time

from fastapi import APIRouter, Query, Request

from entryguard.control.api.deps import CtxDep, bearer, get_ctx
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
    deadline = time.monotonic() + wait
    while True:
        async with c.db.read() as s:
            rows = await edge_sync.changes_since(s, since, limit)
            rev = rows[-1].revision if rows else since
        left = deadline - time.monotonic()
        if rows or left <= 0 or notifier.closing or await request.is_disconnected():
            return ChangesOut(revision=rev, changes=rows)
        await notifier.wait(left)
