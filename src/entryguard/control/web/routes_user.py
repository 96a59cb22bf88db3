"""Every user's pages: my resources and session, my session history."""

from __future__ import annotations

from fastapi import APIRouter, Depends, Request
from fastapi.responses import HTMLResponse, Response
from sqlalchemy import func, select

from entryguard.control.api.deps import ClientIp, CtxDep, client_ip, edges_apply, get_ctx
from entryguard.control.auth.principal import Principal
from entryguard.control.db.models import RoleUser
from entryguard.control.http_errors import error_status
from entryguard.control.services import sessions
from entryguard.control.services.grants import user_resources
from entryguard.control.services.views import resource_view, session_view
from entryguard.control.web.auth import checked_form, signed_in
from entryguard.control.web.render import Flash, FormState, redirect, render_page, text_values
from entryguard.durations import DurationError, format_duration, parse_duration
from entryguard.errors import EntryGuardError

router = APIRouter(include_in_schema=False)


async def _home(request: Request, p: Principal, form: FormState, status: int = 200) -> HTMLResponse:
    c = get_ctx(request)
    async with c.db.read() as s:
        sess = await sessions.active_session(s, p.user.id)
        resources = [resource_view(r, c.settings) for r in await user_resources(s, p.user.id)]
        cap = await sessions.max_duration_for(s, p.user, c.settings)
        roles = (
            await s.execute(
                select(func.count()).select_from(RoleUser).where(RoleUser.user_id == p.user.id)
            )
        ).scalar_one()
    return render_page(
        request,
        "home.html",
        p=p,
        title="My access",
        nav="home",
        status=status,
        session=session_view(sess, p.user.email, c.db.clock.now()) if sess else None,
        resources=resources,
        in_a_role=bool(roles),
        max_duration=format_duration(cap),
        your_ip=client_ip(request),
        form=form,
    )


@router.get("/")
async def home(request: Request, p: Principal = Depends(signed_in)) -> Response:
    return await _home(request, p, FormState(values={"duration": "4"}))


@router.post("/session/start")
async def start_session(request: Request, p: Principal = Depends(signed_in)) -> Response:
    values = text_values(await checked_form(request, p))
    form = FormState(values={"duration": values.get("duration", "")[:32]})
    try:
        seconds = parse_duration(form.values["duration"])
    except DurationError as exc:
        form.errors["duration"] = str(exc)
        return await _home(request, p, form, 400)
    c = get_ctx(request)
    try:
        async with (tx := c.db.write()) as s:
            out = await sessions.start_session(s, p.user, client_ip(request), seconds, c.settings)
    except EntryGuardError as exc:
        form.errors["duration"] = exc.message
        return await _home(request, p, form, error_status(exc))
    await edges_apply(request, tx.revision)
    sess = out.session
    text = f"Session started for {sess.ip}: {format_duration(seconds)}."
    if out.capped:
        text = (
            f"Session started for {sess.ip}, capped at your roles' maximum of "
            f"{format_duration(out.max_duration_seconds)}."
        )
    return redirect(request, "/", Flash("success", text))


@router.post("/session/stop")
async def stop_session(
    request: Request, c: CtxDep, ip: ClientIp, p: Principal = Depends(signed_in)
) -> Response:
    await checked_form(request, p)
    try:
        async with (tx := c.db.write()) as s:
            await sessions.stop_session(s, p.user, ip)
    except EntryGuardError as exc:
        return redirect(request, "/", Flash("warning", exc.message))
    await edges_apply(request, tx.revision)
    return redirect(request, "/", Flash("success", "Session stopped: your IP is revoked."))


@router.get("/history")
async def history(request: Request, c: CtxDep, p: Principal = Depends(signed_in)) -> Response:
    # The service behind the REST API's history too: the same rows and views as
    # `eg session history`, and one query to maintain.
    async with c.db.read() as s:
        items = await sessions.session_history(s, p.user)
    return render_page(
        request, "history.html", p=p, title="Session history", nav="history", items=items
    )
