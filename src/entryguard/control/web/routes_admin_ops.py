"""Admin: live sessions (revoke) and agents."""

from __future__ import annotations

from fastapi import APIRouter, Depends, Request
from fastapi.responses import Response

from entryguard.control.api import admin_access as access_api
from entryguard.control.api.deps import ctx
from entryguard.control.auth.principal import Principal
from entryguard.control.web.auth import admin, checked_form
from entryguard.control.web.render import Flash, redirect, render_page
from entryguard.errors import EntryGuardError

router = APIRouter(prefix="/admin", include_in_schema=False)

RECENT = 50


@router.get("/sessions")
async def list_sessions(request: Request, p: Principal = Depends(admin)) -> Response:
    active = (await access_api.list_sessions(request, active=True, p=p))["items"]
    latest = (await access_api.list_sessions(request, active=False, p=p))["items"]
    ended = [x for x in latest if not x["active"]][:RECENT]
    return render_page(
        request,
        "admin/sessions.html",
        p=p,
        title="Sessions",
        nav="sessions",
        active=active,
        ended=ended,
    )


@router.post("/sessions/{session_id}/revoke")
async def revoke_session(
    session_id: int, request: Request, p: Principal = Depends(admin)
) -> Response:
    await checked_form(request, p)
    # The REST handler holds the lookup and the "already ended" rule; it also waits
    # for the edges to cut the IP.
    try:
        sess = (await access_api.revoke_session(session_id, request, p))["session"]
    except EntryGuardError as exc:
        return redirect(request, "/admin/sessions", Flash("error", exc.message))
    text = f"Session {session_id} of {sess['user_email']} revoked: {sess['ip']} is cut off."
    return redirect(request, "/admin/sessions", Flash("success", text))


@router.get("/agents")
async def list_agents(request: Request, p: Principal = Depends(admin)) -> Response:
    items = (await access_api.agents(request, p))["items"]
    return render_page(
        request,
        "admin/agents.html",
        p=p,
        title="Agents",
        nav="agents",
        items=items,
        offline_after=int(ctx(request).settings.agent_offline_after),
    )
