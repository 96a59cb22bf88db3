"""Admin: users, roles, API keys."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Depends

from entryguard.control.api.deps import Caller, CtxDep
from entryguard.control.api.models import (
    ApiKeyCreatedOut,
    ApiKeyOut,
    Items,
    RoleOut,
    UserCreatedOut,
    UserOut,
)
from entryguard.control.api.schemas import (
    ApiKeyCreateIn,
    RoleCreateIn,
    RoleResourceIn,
    RoleUserIn,
    UserCreateIn,
)
from entryguard.control.auth.principal import Principal
from entryguard.control.services import apikeys, roles, users
from entryguard.control.services.resources import get_resource
from entryguard.control.services.roles import RoleView
from entryguard.control.services.views import ApiKeyView, UserView, apikey_view, user_view
from entryguard.durations import DurationError, parse_duration
from entryguard.errors import Invalid


def admin(p: Caller) -> Principal:
    p.require("admin")
    return p


Admin = Annotated[Principal, Depends(admin)]

router = APIRouter(prefix="/admin", tags=["admin"])


def duration_or_400(text: str, what: str) -> int:
    try:
        return parse_duration(text)
    except DurationError as exc:
        raise Invalid(f"{what}: {exc}", code="invalid_duration") from exc


@router.get("/users")
async def list_users(c: CtxDep, p: Admin) -> Items[UserView]:
    async with c.db.read() as s:
        return Items(items=await users.list_users(s))


# password is left out of the answer unless one was generated.
@router.post("/users", status_code=201, response_model_exclude_unset=True)
async def create_user(body: UserCreateIn, c: CtxDep, p: Admin) -> UserCreatedOut:
    async with c.db.write() as s:
        u, generated = await users.create_user(
            s, p.user.org_id, body.email, body.password, body.is_admin, p.actor
        )
        view = user_view(u)
    if generated:
        return UserCreatedOut(user=view, password=generated)
    return UserCreatedOut(user=view)


@router.post("/users/{email}/disable")
async def disable_user(email: str, c: CtxDep, p: Admin) -> UserOut:
    async with c.db.write() as s:
        return UserOut(user=user_view(await users.disable_user(s, email, p.actor, by=p.user)))


@router.get("/roles")
async def list_roles(c: CtxDep, p: Admin) -> Items[RoleView]:
    async with c.db.read() as s:
        return Items(items=await roles.list_roles(s))


@router.post("/roles", status_code=201)
async def create_role(body: RoleCreateIn, c: CtxDep, p: Admin) -> RoleOut:
    seconds = duration_or_400(body.max_duration, "max duration")
    async with c.db.write() as s:
        r = await roles.create_role(s, p.user.org_id, body.name, seconds, p.actor)
        return RoleOut(role=await roles.role_view(s, r))


@router.post("/roles/{role}/resources")
async def role_add_resource(role: str, body: RoleResourceIn, c: CtxDep, p: Admin) -> RoleOut:
    async with c.db.write() as s:
        r = await roles.get_role(s, role)
        await roles.add_resource(s, r, await get_resource(s, body.resource), p.actor)
        return RoleOut(role=await roles.role_view(s, r))


@router.delete("/roles/{role}/resources/{resource}")
async def role_remove_resource(role: str, resource: str, c: CtxDep, p: Admin) -> RoleOut:
    async with c.db.write() as s:
        r = await roles.get_role(s, role)
        await roles.remove_resource(s, r, await get_resource(s, resource), p.actor)
        return RoleOut(role=await roles.role_view(s, r))


@router.post("/roles/{role}/users")
async def role_add_user(role: str, body: RoleUserIn, c: CtxDep, p: Admin) -> RoleOut:
    async with c.db.write() as s:
        r = await roles.get_role(s, role)
        await roles.add_user(s, r, await users.get_user(s, body.email), p.actor)
        return RoleOut(role=await roles.role_view(s, r))


@router.delete("/roles/{role}/users/{email}")
async def role_remove_user(role: str, email: str, c: CtxDep, p: Admin) -> RoleOut:
    async with c.db.write() as s:
        r = await roles.get_role(s, role)
        await roles.remove_user(s, r, await users.get_user(s, email), p.actor)
        return RoleOut(role=await roles.role_view(s, r))


@router.get("/apikeys")
async def list_keys(c: CtxDep, p: Admin) -> Items[ApiKeyView]:
    async with c.db.read() as s:
        return Items(items=await apikeys.list_keys(s))


@router.post("/apikeys", status_code=201)
async def create_key(body: ApiKeyCreateIn, c: CtxDep, p: Admin) -> ApiKeyCreatedOut:
    expires = duration_or_400(body.expires_in, "expires_in") if body.expires_in else None
    async with c.db.write() as s:
        k, secret = await apikeys.create_key(s, p.user, body.name, body.scopes, expires, p.actor)
        return ApiKeyCreatedOut(apikey=apikey_view(k), key=secret)


@router.delete("/apikeys/{name}")
async def revoke_key(name: str, c: CtxDep, p: Admin) -> ApiKeyOut:
    async with c.db.write() as s:
        return ApiKeyOut(apikey=apikey_view(await apikeys.revoke_key(s, name, p.actor)))
