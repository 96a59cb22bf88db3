"""Admin: resources (list, Add Resource, delete)."""

from __future__ import annotations

from fastapi import APIRouter, Depends, Request
from fastapi.responses import HTMLResponse, Response
from sqlalchemy import select

from entryguard.control.api.deps import CtxDep, edges_apply, get_ctx
from entryguard.control.auth.principal import Principal
from entryguard.control.db.models import ApiKey
from entryguard.control.http_errors import error_status
from entryguard.control.services import resources
from entryguard.control.services.views import AdminResourceView, admin_resource_view
from entryguard.control.web.auth import admin, checked_form
from entryguard.control.web.render import (
    Flash,
    FormState,
    field_errors,
    redirect,
    render_page,
    text_values,
)
from entryguard.errors import EntryGuardError

router = APIRouter(prefix="/admin/resources", include_in_schema=False)

PROVIDERS = ("AGENT",)
TYPES = (("tunnel", "Tunnel"), ("script", "Script"))
CREATE_FIELDS = {
    "invalid_name": "name",
    "resource_exists": "name",
    "invalid_type": "type",
    "invalid_provider": "provider",
    "apikey_not_found": "agent",
    "invalid_agent": "agent",
    "invalid_script_dir": "script_dir",
    "too_long": "script_dir",
    "invalid_text": "script_dir",
}


async def agent_credentials(request: Request) -> list[ApiKey]:
    """Live API keys an agent can connect with: the choices for "Agent credential"."""
    async with get_ctx(request).db.read() as s:
        keys = (
            await s.execute(select(ApiKey).where(ApiKey.revoked_at.is_(None)).order_by(ApiKey.name))
        ).scalars()
        return [k for k in keys if "agent:connect" in k.scope_list]


@router.get("")
async def list_resources(request: Request, c: CtxDep, p: Principal = Depends(admin)) -> Response:
    async with c.db.read() as s:
        items = await resources.list_resources(s, c.settings)
    return render_page(
        request, "admin/resources.html", p=p, title="Resources", nav="resources", items=items
    )


async def _new_page(
    request: Request, p: Principal, form: FormState, status: int = 200
) -> HTMLResponse:
    return render_page(
        request,
        "admin/resource_new.html",
        p=p,
        title="Add Resource",
        nav="resources",
        status=status,
        form=form,
        providers=[(x, x) for x in PROVIDERS],
        types=TYPES,
        agents=[(k.name, f"{k.name} ({k.prefix}…)") for k in await agent_credentials(request)],
    )


@router.get("/new")
async def new_resource(request: Request, p: Principal = Depends(admin)) -> Response:
    return await _new_page(request, p, FormState(values={"provider": "AGENT", "type": "tunnel"}))


def _port(text: str, form: FormState) -> int | None:
    if not text.strip():
        form.errors["target_port"] = "Enter the target port, e.g. 5432."
        return None
    if not text.strip().isdigit() or len(text.strip()) > 5:
        form.errors["target_port"] = "Target port must be a number from 1 to 65535."
        return None
    return int(text)


@router.post("/new")
async def create_resource(request: Request, p: Principal = Depends(admin)) -> Response:
    form = FormState(values=text_values(await checked_form(request, p)))
    v = form.values
    type_ = v.get("type", "")
    port = _port(v.get("target_port", ""), form) if type_ == "tunnel" else None
    if v.get("provider", "").upper() not in PROVIDERS:
        form.errors["provider"] = "Provider must be AGENT."
    if not v.get("agent"):
        form.errors["agent"] = "Choose the agent credential (an API key with agent:connect)."
    if form.failed:
        return await _new_page(request, p, form, 400)
    c = get_ctx(request)
    try:
        async with c.db.write() as s:
            r = await resources.create_resource(
                s,
                p.user.org_id,
                name=v.get("name", "")[:256],
                type_=type_,
                agent=v.get("agent", "")[:256],
                target_host=v.get("target_host", "")[:300] if type_ == "tunnel" else None,
                target_port=port,
                script_dir=v.get("script_dir", "")[:1100] if type_ == "script" else None,
                ports=c.settings.tunnel_ports,
                actor=p.actor,
            )
            view = admin_resource_view(r, c.settings, v.get("agent", ""))
    except EntryGuardError as exc:
        form.errors = field_errors(exc, _with_target_field(exc))
        return await _new_page(request, p, form, error_status(exc))
    return redirect(request, "/admin/resources", Flash("success", _created_text(view)))


def _with_target_field(exc: EntryGuardError) -> dict[str, str]:
    # One error code covers both halves of the target; the message says which.
    where = "target_port" if "port" in exc.message else "target_host"
    return {**CREATE_FIELDS, "invalid_target": where}


def _created_text(view: AdminResourceView) -> str:
    if view.type == "tunnel":
        return f"Resource {view.name} created: {view.connection} → {view.target}."
    return f"Resource {view.name} created: scripts in {view.script_dir}."


@router.post("/{name}/delete")
async def delete_resource(name: str, request: Request, p: Principal = Depends(admin)) -> Response:
    await checked_form(request, p)
    try:
        async with (tx := get_ctx(request).db.write()) as s:
            r = await resources.get_resource(s, name)
            await resources.delete_resource(s, r, p.actor)
    except EntryGuardError as exc:
        return redirect(request, "/admin/resources", Flash("error", exc.message))
    await edges_apply(request, tx.revision)
    return redirect(
        request, "/admin/resources", Flash("success", f"Resource {name} deleted; its grants ended.")
    )
