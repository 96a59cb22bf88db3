"""My resources and my session (scope ``sessions``)."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Depends, Request
from sqlalchemy import select

from entryguard.control.api.deps import client_ip, ctx, edges_apply
from entryguard.control.api.deps import principal as get_principal
from entryguard.control.api.schemas import SessionStartIn
from entryguard.control.auth.principal import Principal
from entryguard.control.db.models import Session
from entryguard.control.services import sessions
from entryguard.control.services.grants import user_resources
from entryguard.control.services.views import resource_view, session_view
from entryguard.durations import DurationError, parse_duration
from entryguard.errors import Invalid

router = APIRouter(tags=["sessions"])


def _sessions_principal(p: Principal = Depends(get_principal)) -> Principal:
    p.require("sessions")
    return p


@router.get("/me/resources")
async def my_resources(
    request: Request, p: Principal = Depends(_sessions_principal)
) -> dict[str, Any]:
    c = ctx(request)
    async with c.db.read() as s:
        return {"items": [resource_view(r, c.settings) for r in await user_resources(s, p.user.id)]}


@router.post("/sessions", status_code=201)
async def start(
    body: SessionStartIn, request: Request, p: Principal = Depends(_sessions_principal)
) -> dict[str, Any]:
    c = ctx(request)
    try:
        seconds = parse_duration(body.duration)
    except DurationError as exc:
        raise Invalid(str(exc), code="invalid_duration") from exc
    async with c.db.write() as s:
        out = await sessions.start_session(s, p.user, client_ip(request), seconds, c.settings)
        result = {
            "session": session_view(out["session"], p.user.email, ctx(request).db.clock.now()),
            "resources": [resource_view(r, c.settings) for r in out["resources"]],
            "capped": out["capped"],
            "requested_seconds": out["requested_seconds"],
            "max_duration_seconds": out["max_duration_seconds"],
        }
    await edges_apply(request, s.info.get("revision"))
    return result


@router.get("/sessions/current")
async def current(request: Request, p: Principal = Depends(_sessions_principal)) -> dict[str, Any]:
    c = ctx(request)
    async with c.db.read() as s:
        sess = await sessions.active_session(s, p.user.id)
        res = await user_resources(s, p.user.id)
    return {
        "session": session_view(sess, p.user.email, ctx(request).db.clock.now()) if sess else None,
        "resources": [resource_view(r, c.settings) for r in res],
    }


@router.delete("/sessions/current")
async def stop(request: Request, p: Principal = Depends(_sessions_principal)) -> dict[str, Any]:
    async with ctx(request).db.write() as s:
        sess = await sessions.stop_session(s, p.user, client_ip(request))
    await edges_apply(request, s.info.get("revision"))
    return {"session": session_view(sess, p.user.email, ctx(request).db.clock.now())}


@router.get("/sessions/history")
async def history(request: Request, p: Principal = Depends(_sessions_principal)) -> dict[str, Any]:
    async with ctx(request).db.read() as s:
        rows = (
            await s.execute(
                select(Session)
                .where(Session.user_id == p.user.id)
                .order_by(Session.id.desc())
                .limit(100)
            )
        ).scalars()
        return {"items": [session_view(x, p.user.email, ctx(request).db.clock.now()) for x in rows]}
