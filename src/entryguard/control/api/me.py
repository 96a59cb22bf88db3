"""My resources and my session (scope ``sessions``)."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Depends, Request

from entryguard.control.api.deps import Caller, ClientIp, CtxDep, edges_apply
from entryguard.control.api.models import CurrentSessionOut, Items, SessionOut, SessionStartOut
from entryguard.control.api.schemas import SessionStartIn
from entryguard.control.auth.principal import Principal
from entryguard.control.services import sessions
from entryguard.control.services.grants import user_resources
from entryguard.control.services.views import (
    ResourceView,
    SessionView,
    resource_view,
    session_view,
)
from entryguard.durations import DurationError, parse_duration
from entryguard.errors import Invalid

router = APIRouter(tags=["sessions"])


def _sessions_principal(p: Caller) -> Principal:
    p.require("sessions")
    return p


Me = Annotated[Principal, Depends(_sessions_principal)]


@router.get("/me/resources")
async def my_resources(c: CtxDep, p: Me) -> Items[ResourceView]:
    async with c.db.read() as s:
        res = await user_resources(s, p.user.id)
    return Items(items=[resource_view(r, c.settings) for r in res])


@router.post("/sessions", status_code=201)
async def start(
    body: SessionStartIn, request: Request, c: CtxDep, ip: ClientIp, p: Me
) -> SessionStartOut:
    try:
        seconds = parse_duration(body.duration)
    except DurationError as exc:
        raise Invalid(str(exc), code="invalid_duration") from exc
    async with (tx := c.db.write()) as s:
        out = await sessions.start_session(s, p.user, ip, seconds, c.settings)
        result = SessionStartOut(
            session=session_view(out.session, p.user.email, c.db.clock.now()),
            resources=[resource_view(r, c.settings) for r in out.resources],
            capped=out.capped,
            requested_seconds=out.requested_seconds,
            max_duration_seconds=out.max_duration_seconds,
        )
    await edges_apply(request, tx.revision)
    return result


@router.get("/sessions/current")
async def current(c: CtxDep, p: Me) -> CurrentSessionOut:
    async with c.db.read() as s:
        sess = await sessions.active_session(s, p.user.id)
        res = await user_resources(s, p.user.id)
    return CurrentSessionOut(
        session=session_view(sess, p.user.email, c.db.clock.now()) if sess else None,
        resources=[resource_view(r, c.settings) for r in res],
    )


@router.delete("/sessions/current")
async def stop(request: Request, c: CtxDep, ip: ClientIp, p: Me) -> SessionOut:
    async with (tx := c.db.write()) as s:
        sess = await sessions.stop_session(s, p.user, ip)
    await edges_apply(request, tx.revision)
    return SessionOut(session=session_view(sess, p.user.email, c.db.clock.now()))


@router.get("/sessions/history")
async def history(c: CtxDep, p: Me) -> Items[SessionView]:
    async with c.db.read() as s:
        return Items(items=await sessions.session_history(s, p.user))
