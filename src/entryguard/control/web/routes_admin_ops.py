"""Admin: live sessions (revoke), agents and edges."""

from __future__ import annotations

from fastapi import APIRouter, Depends, Request
from fastapi.responses import Response

from entryguard.control.api.deps import CtxDep, edges_apply
from entryguard.control.auth.principal import Principal
from entryguard.control.services import agents, sessions
from entryguard.control.services.edge_hub import list_edges
from entryguard.control.web.auth import admin, checked_form
from entryguard.control.web.render import Flash, redirect, render_page
from entryguard.errors import EntryGuardError

router = APIRouter(prefix="/admin", include_in_schema=False)

RECENT = 50


@router.get("/sessions")
async def list_sessions(request: Request, c: CtxDep, p: Principal = Depends(admin)) -> Response:
    async with c.db.read() as s:
        active = await sessions.list_sessions(s, active=True)
        latest = await sessions.list_sessions(s, active=False)
    ended = [x for x in latest if not x.active][:RECENT]
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
    session_id: int, request: Request, c: CtxDep, p: Principal = Depends(admin)
) -> Response:
    await checked_form(request, p)
    try:
        async with (tx := c.db.write()) as s:
            out = await sessions.revoke_session(s, session_id, p.actor)
    except EntryGuardError as exc:
        return redirect(request, "/admin/sessions", Flash("error", exc.message))
    await edges_apply(request, tx.revision)  # the edges cut the IP before we answer
    text = f"Session {session_id} of {out.user.email} revoked: {out.session.ip} is cut off."
    return redirect(request, "/admin/sessions", Flash("success", text))


@router.get("/agents")
async def list_agents(request: Request, c: CtxDep, p: Principal = Depends(admin)) -> Response:
    async with c.db.read() as s:
        items = await agents.list_agents(s, c.settings.agent_offline_after)
    return render_page(
        request,
        "admin/agents.html",
        p=p,
        title="Agents",
        nav="agents",
        items=items,
        offline_after=int(c.settings.agent_offline_after),
    )


@router.get("/edges")
async def edges(request: Request, c: CtxDep, p: Principal = Depends(admin)) -> Response:
    head: int = request.app.state.tail.head
    async with c.db.read() as s:
        items = await list_edges(s, head, c.settings.stream_interval)
    return render_page(
        request,
        "admin/edges.html",
        p=p,
        title="Edges",
        nav="edges",
        items=items,
        head=head,
        interval=f"{c.settings.stream_interval:g}",
    )
