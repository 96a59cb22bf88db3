"""/auth: login, logout, whoami."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Depends, Request, Response

from entryguard.control.api.deps import client_ip, ctx
from entryguard.control.api.deps import principal as get_principal
from entryguard.control.api.schemas import LoginIn
from entryguard.control.auth.principal import Principal
from entryguard.control.db.clocked import clock_of
from entryguard.control.db.models import LoginToken, Organization
from entryguard.control.services import users
from entryguard.control.services.journal import audit, iso
from entryguard.control.services.views import user_view
from entryguard.errors import Unauthorized

router = APIRouter(prefix="/auth", tags=["auth"])


@router.post("/login")
async def login(body: LoginIn, request: Request) -> dict[str, Any]:
    c = ctx(request)
    async with c.db.write() as s:
        result = await users.login(
            s, body.email, body.password, client_ip(request), c.settings.login_ttl_seconds
        )
    if result is None:
        raise Unauthorized("wrong email or password", code="invalid_credentials")
    secret, tok, user = result
    return {"token": secret, "expires_at": iso(tok.expires_at), "user": user_view(user)}


@router.post("/logout", status_code=204)
async def logout(request: Request, p: Principal = Depends(get_principal)) -> Response:
    if p.login_token is not None:
        async with ctx(request).db.write() as s:
            tok = await s.get(LoginToken, p.login_token.id)
            if tok is not None and tok.revoked_at is None:
                tok.revoked_at = clock_of(s).now()
            await audit(
                s, p.actor, "auth.logout", p.user.email, ip=client_ip(request), org_id=p.user.org_id
            )
    return Response(status_code=204)


@router.get("/whoami")
async def whoami(request: Request, p: Principal = Depends(get_principal)) -> dict[str, Any]:
    async with ctx(request).db.read() as s:
        org = await s.get(Organization, p.user.org_id)
    return {
        "user": user_view(p.user),
        "organization": {"id": org.id, "name": org.name} if org else None,
        "scopes": sorted(p.scopes),
        "credential": p.credential,
        "api_key": p.api_key.name if p.api_key else None,
        "ip": client_ip(request),
    }
