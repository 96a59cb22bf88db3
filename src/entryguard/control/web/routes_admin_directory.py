"""Admin: roles (and their resources and users), users, API keys."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any, TypeVar
from urllib.parse import quote

from fastapi import APIRouter, Depends, Request
from fastapi.responses import HTMLResponse, Response
from sqlalchemy.ext.asyncio import AsyncSession

from entryguard.control.api.deps import edges_apply, get_ctx
from entryguard.control.auth.principal import Principal
from entryguard.control.http_errors import error_status
from entryguard.control.services import apikeys, resources, roles, users
from entryguard.control.services.apikeys import SCOPES
from entryguard.control.services.journal import iso
from entryguard.control.services.resources import get_resource
from entryguard.control.services.views import apikey_view, user_view
from entryguard.control.web.auth import admin, checked_form
from entryguard.control.web.render import (
    Flash,
    FormState,
    field_errors,
    redirect,
    render_page,
    text_values,
)
from entryguard.durations import DurationError, parse_duration
from entryguard.errors import EntryGuardError

router = APIRouter(prefix="/admin", include_in_schema=False)
T = TypeVar("T")

ROLE_FIELDS = {"invalid_name": "name", "role_exists": "name"}
USER_FIELDS = {
    "invalid_email": "email",
    "user_exists": "email",
    "weak_password": "password",
    "too_long": "password",
}
KEY_FIELDS = {"invalid_name": "name", "apikey_exists": "name", "invalid_scope": "scope"}


def _duration(form: FormState, key: str, what: str) -> int | None:
    text = form.values.get(key, "")[:32]
    if not text.strip():
        return None
    try:
        return parse_duration(text)
    except DurationError as exc:
        form.errors[key] = f"{what}: {exc}"
        return None


async def _read(request: Request, query: Callable[[AsyncSession], Awaitable[list[T]]]) -> list[T]:
    """One list for a page, read by the same service function as the REST API's."""
    async with get_ctx(request).db.read() as s:
        return await query(s)


def role_url(name: str) -> str:
    return f"/admin/roles/{quote(name, safe='')}"


# ---- roles ---------------------------------------------------------------------------


async def _roles_page(
    request: Request, p: Principal, form: FormState, status: int = 200
) -> HTMLResponse:
    return render_page(
        request,
        "admin/roles.html",
        p=p,
        title="Roles",
        nav="roles",
        status=status,
        items=await _read(request, roles.list_roles),
        form=form,
    )


@router.get("/roles")
async def list_roles(request: Request, p: Principal = Depends(admin)) -> Response:
    return await _roles_page(request, p, FormState(values={"max_duration": "8h"}))


@router.post("/roles")
async def create_role(request: Request, p: Principal = Depends(admin)) -> Response:
    form = FormState(values=text_values(await checked_form(request, p)))
    if not form.values.get("max_duration", "").strip():
        form.errors["max_duration"] = "Enter the longest session this role allows, e.g. 8h."
    seconds = _duration(form, "max_duration", "max duration")
    if form.failed or seconds is None:
        return await _roles_page(request, p, form, 400)
    name = form.values.get("name", "")[:256]
    try:
        async with get_ctx(request).db.write() as s:
            await roles.create_role(s, p.user.org_id, name, seconds, p.actor)
    except EntryGuardError as exc:
        form.errors = field_errors(exc, ROLE_FIELDS)
        return await _roles_page(request, p, form, error_status(exc))
    return redirect(
        request,
        role_url(name),
        Flash("success", f"Role {name} created. Add its resources and users below."),
    )


async def _role_page(
    request: Request, p: Principal, name: str, form: FormState, status: int = 200
) -> HTMLResponse:
    c = get_ctx(request)
    async with c.db.read() as s:
        role = await roles.role_view(s, await roles.get_role(s, name))
        all_resources = await resources.list_resources(s, c.settings)
        all_users = await users.list_users(s)
    return render_page(
        request,
        "admin/role_edit.html",
        p=p,
        title=f"Role {role.name}",
        nav="roles",
        status=status,
        role=role,
        role_url=role_url(role.name),
        resource_pairs=[
            (r.name, f"{r.name} ({r.type})") for r in all_resources if r.name not in role.resources
        ],
        user_pairs=[
            (u.email, u.email) for u in all_users if u.email not in role.users and not u.disabled
        ],
        form=form,
    )


@router.get("/roles/{name}")
async def edit_role(name: str, request: Request, p: Principal = Depends(admin)) -> Response:
    return await _role_page(request, p, name, FormState())


async def _link(request: Request, p: Principal, name: str, kind: str, add: bool) -> Response:
    """Add or remove one resource or user of a role; live sessions are re-evaluated."""
    form = FormState(values=text_values(await checked_form(request, p)))
    member = form.values.get(kind, "")[:256]
    if not member:
        form.errors[kind] = f"Choose a {kind} to add."
        return await _role_page(request, p, name, form, 400)
    try:
        async with (tx := get_ctx(request).db.write()) as s:
            role = await roles.get_role(s, name)
            if kind == "resource":
                res = await get_resource(s, member)
                await (roles.add_resource if add else roles.remove_resource)(s, role, res, p.actor)
            else:
                user = await users.get_user(s, member)
                await (roles.add_user if add else roles.remove_user)(s, role, user, p.actor)
    except EntryGuardError as exc:
        if exc.code == "role_not_found":
            raise  # the page itself is gone: the 404 page
        form.errors[kind] = exc.message
        return await _role_page(request, p, name, form, error_status(exc))
    await edges_apply(request, tx.revision)
    done = f"{member} added to {name}." if add else f"{member} removed from {name}."
    return redirect(request, role_url(name), Flash("success", done))


@router.post("/roles/{name}/resources")
async def role_add_resource(name: str, request: Request, p: Principal = Depends(admin)) -> Response:
    return await _link(request, p, name, "resource", add=True)


@router.post("/roles/{name}/resources/remove")
async def role_remove_resource(
    name: str, request: Request, p: Principal = Depends(admin)
) -> Response:
    return await _link(request, p, name, "resource", add=False)


@router.post("/roles/{name}/users")
async def role_add_user(name: str, request: Request, p: Principal = Depends(admin)) -> Response:
    return await _link(request, p, name, "user", add=True)


@router.post("/roles/{name}/users/remove")
async def role_remove_user(name: str, request: Request, p: Principal = Depends(admin)) -> Response:
    return await _link(request, p, name, "user", add=False)


# ---- users ---------------------------------------------------------------------------


async def _users_page(
    request: Request,
    p: Principal,
    form: FormState,
    status: int = 200,
    created: dict[str, Any] | None = None,
) -> HTMLResponse:
    return render_page(
        request,
        "admin/users.html",
        p=p,
        title="Users",
        nav="users",
        status=status,
        items=await _read(request, users.list_users),
        form=form,
        created=created,
    )


@router.get("/users")
async def list_users(request: Request, p: Principal = Depends(admin)) -> Response:
    return await _users_page(request, p, FormState())


@router.post("/users")
async def create_user(request: Request, p: Principal = Depends(admin)) -> Response:
    form = FormState(values=text_values(await checked_form(request, p)))
    v = form.values
    try:
        async with get_ctx(request).db.write() as s:
            u, generated = await users.create_user(
                s,
                p.user.org_id,
                v.get("email", "")[:254],
                v.get("password") or None,
                bool(v.get("is_admin")),
                p.actor,
            )
            view = user_view(u)
    except EntryGuardError as exc:
        form.values.pop("password", None)  # never echo a password back into the page
        form.errors = field_errors(exc, USER_FIELDS)
        return await _users_page(request, p, form, error_status(exc))
    if generated is None:
        return redirect(request, "/admin/users", Flash("success", f"User {view.email} created."))
    # A generated password is shown once, in this response, and stored nowhere in clear.
    return await _users_page(
        request, p, FormState(), 201, created={"email": view.email, "password": generated}
    )


@router.post("/users/{email}/disable")
async def disable_user(email: str, request: Request, p: Principal = Depends(admin)) -> Response:
    await checked_form(request, p)
    try:
        async with get_ctx(request).db.write() as s:
            u = await users.disable_user(s, email, p.actor, by=p.user)
    except EntryGuardError as exc:
        return redirect(request, "/admin/users", Flash("error", exc.message))
    text = f"{u.email} disabled: their session ended and their sign-ins are revoked."
    return redirect(request, "/admin/users", Flash("success", text))


# ---- API keys ------------------------------------------------------------------------


async def _keys_page(
    request: Request,
    p: Principal,
    form: FormState,
    status: int = 200,
    new_key: dict[str, Any] | None = None,
) -> HTMLResponse:
    return render_page(
        request,
        "admin/apikeys.html",
        p=p,
        title="API keys",
        nav="apikeys",
        status=status,
        items=await _read(request, apikeys.list_keys),
        scopes=SCOPES,
        form=form,
        new_key=new_key,
        control_url=str(request.base_url).rstrip("/"),
        now_iso=iso(get_ctx(request).db.clock.now()),
    )


@router.get("/apikeys")
async def list_keys(request: Request, p: Principal = Depends(admin)) -> Response:
    return await _keys_page(request, p, FormState(values={"scope": "agent:connect"}))


@router.post("/apikeys")
async def create_key(request: Request, p: Principal = Depends(admin)) -> Response:
    raw = await checked_form(request, p)
    form = FormState(values=text_values(raw))
    scopes = [sc for sc in raw.getlist("scope") if isinstance(sc, str)][:8]
    form.values["scope"] = ",".join(scopes)
    expires = _duration(form, "expires_in", "expires in")
    if form.failed:
        return await _keys_page(request, p, form, 400)
    try:
        async with get_ctx(request).db.write() as s:
            k, secret = await apikeys.create_key(
                s, p.user, form.values.get("name", "")[:256], scopes, expires, p.actor
            )
            view = apikey_view(k)
    except EntryGuardError as exc:
        form.errors = field_errors(exc, KEY_FIELDS)
        return await _keys_page(request, p, form, error_status(exc))
    # The key exists in clear only in this response: it is stored hashed.
    return await _keys_page(
        request,
        p,
        FormState(values={"scope": "agent:connect"}),
        201,
        new_key={**view.model_dump(), "key": secret},
    )


@router.post("/apikeys/{name}/revoke")
async def revoke_key(name: str, request: Request, p: Principal = Depends(admin)) -> Response:
    await checked_form(request, p)
    try:
        async with (tx := get_ctx(request).db.write()) as s:
            await apikeys.revoke_key(s, name, p.actor)
    except EntryGuardError as exc:
        return redirect(request, "/admin/apikeys", Flash("error", exc.message))
    await edges_apply(request, tx.revision)
    return redirect(request, "/admin/apikeys", Flash("success", f"API key {name} revoked."))
