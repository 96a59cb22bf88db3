"""Admin: users, roles, API keys."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Depends, Request
from sqlalchemy import select

from entryguard.control.api.deps import ctx
from entryguard.control.api.deps import principal as get_principal
from entryguard.control.api.schemas import (
    ApiKeyCreateIn,
    RoleCreateIn,
    RoleResourceIn,
    RoleUserIn,
    UserCreateIn,
)
from entryguard.control.auth.principal import Principal
from entryguard.control.db.models import ApiKey, Role, User
from entryguard.control.services import apikeys, roles, users
from entryguard.control.services.resources import get_resource
from entryguard.control.services.views import apikey_view, user_view
from entryguard.durations import DurationError, parse_duration
from entryguard.errors import Invalid


def admin(p: Principal = Depends(get_principal)) -> Principal:
    p.require("admin")
    return p


router = APIRouter(prefix="/admin", tags=["admin"])


def duration_or_400(text: str, what: str) -> int:
    try:
        return parse_duration(text)
    except DurationError as exc:
        raise Invalid(f"{what}: {exc}", code="invalid_duration") from exc


@router.get("/users")
async def list_users(request: Request, p: Principal = Depends(admin)) -> dict[str, Any]:
    async with ctx(request).db.read() as s:
        return {
            "items": [
                user_view(u) for u in (await s.execute(select(User).order_by(User.email))).scalars()
            ]
        }


@router.post("/users", status_code=201)
async def create_user(
    body: UserCreateIn, request: Request, p: Principal = Depends(admin)
) -> dict[str, Any]:
    async with ctx(request).db.write() as s:
        u, generated = await users.create_user(
            s, p.user.org_id, body.email, body.password, body.is_admin, p.actor
        )
        out: dict[str, Any] = {"user": user_view(u)}
        if generated:
            out["password"] = generated
        return out


@router.post("/users/{email}/disable")
async def disable_user(
    email: str, request: Request, p: Principal = Depends(admin)
) -> dict[str, Any]:
    if email.strip().lower() == p.user.email:
        raise Invalid("you cannot disable yourself", code="self_disable")
    async with ctx(request).db.write() as s:
        return {"user": user_view(await users.disable_user(s, email, p.actor))}


@router.get("/roles")
async def list_roles(request: Request, p: Principal = Depends(admin)) -> dict[str, Any]:
    async with ctx(request).db.read() as s:
        rs = (await s.execute(select(Role).order_by(Role.name))).scalars()
        return {"items": [await roles.role_view(s, r) for r in list(rs)]}


@router.post("/roles", status_code=201)
async def create_role(
    body: RoleCreateIn, request: Request, p: Principal = Depends(admin)
) -> dict[str, Any]:
    seconds = duration_or_400(body.max_duration, "max duration")
    async with ctx(request).db.write() as s:
        r = await roles.create_role(s, p.user.org_id, body.name, seconds, p.actor)
        return {"role": await roles.role_view(s, r)}


@router.post("/roles/{role}/resources")
async def role_add_resource(
    role: str, body: RoleResourceIn, request: Request, p: Principal = Depends(admin)
) -> dict[str, Any]:
    async with ctx(request).db.write() as s:
        r = await roles.get_role(s, role)
        await roles.add_resource(s, r, await get_resource(s, body.resource), p.actor)
        return {"role": await roles.role_view(s, r)}


@router.delete("/roles/{role}/resources/{resource}")
async def role_remove_resource(
    role: str, resource: str, request: Request, p: Principal = Depends(admin)
) -> dict[str, Any]:
    async with ctx(request).db.write() as s:
        r = await roles.get_role(s, role)
        await roles.remove_resource(s, r, await get_resource(s, resource), p.actor)
        return {"role": await roles.role_view(s, r)}


@router.post("/roles/{role}/users")
async def role_add_user(
    role: str, body: RoleUserIn, request: Request, p: Principal = Depends(admin)
) -> dict[str, Any]:
    async with ctx(request).db.write() as s:
        r = await roles.get_role(s, role)
        await roles.add_user(s, r, await users.get_user(s, body.email), p.actor)
        return {"role": await roles.role_view(s, r)}


@router.delete("/roles/{role}/users/{email}")
async def role_remove_user(
    role: str, email: str, request: Request, p: Principal = Depends(admin)
) -> dict[str, Any]:
    async with ctx(request).db.write() as s:
        r = await roles.get_role(s, role)
        await roles.remove_user(s, r, await users.get_user(s, email), p.actor)
        return {"role": await roles.role_view(s, r)}


@router.get("/apikeys")
async def list_keys(request: Request, p: Principal = Depends(admin)) -> dict[str, Any]:
    async with ctx(request).db.read() as s:
        return {
            "items": [
                apikey_view(k)
                for k in (await s.execute(select(ApiKey).order_by(ApiKey.name))).scalars()
            ]
        }


@router.post("/apikeys", status_code=201)
async def create_key(
    body: ApiKeyCreateIn, request: Request, p: Principal = Depends(admin)
) -> dict[str, Any]:
    expires = duration_or_400(body.expires_in, "expires_in") if body.expires_in else None
    async with ctx(request).db.write() as s:
        k, secret = await apikeys.create_key(s, p.user, body.name, body.scopes, expires, p.actor)
        return {"apikey": apikey_view(k), "key": secret}


@router.delete("/apikeys/{name}")
async def revoke_key(name: str, request: Request, p: Principal = Depends(admin)) -> dict[str, Any]:
    async with ctx(request).db.write() as s:
        return {"apikey": apikey_view(await apikeys.revoke_key(s, name, p.actor))}
