"""/auth: login, logout, whoami."""

from __future__ import annotations

from fastapi import APIRouter, Depends, Request, Response

from entryguard.control.api.deps import Caller, ClientIp, CtxDep, client_ip, get_ctx
from entryguard.control.api.deps import principal as get_principal
from entryguard.control.api.models import LoginOut, OrganizationOut, WhoamiOut
from entryguard.control.api.schemas import LoginIn
from entryguard.control.auth.principal import Principal
from entryguard.control.db.models import Organization
from entryguard.control.services import users
from entryguard.control.services.journal import iso
from entryguard.control.services.views import user_view
from entryguard.errors import Unauthorized

router = APIRouter(prefix="/auth", tags=["auth"])


@router.post("/login")
async def login(body: LoginIn, c: CtxDep, ip: ClientIp) -> LoginOut:
    async with c.db.write() as s:
        result = await users.login(s, body.email, body.password, ip, c.settings.login_ttl_seconds)
    if result is None:
        raise Unauthorized("wrong email or password", code="invalid_credentials")
    secret, tok, user = result
    return LoginOut(token=secret, expires_at=iso(tok.expires_at), user=user_view(user))


# web/auth.py calls this in-process to sign out, hence the plain (request, p) signature.
@router.post("/logout", status_code=204)
async def logout(request: Request, p: Principal = Depends(get_principal)) -> Response:
    if p.login_token is not None:
        async with get_ctx(request).db.write() as s:
            await users.logout(s, p.login_token.id, p.user, p.actor, client_ip(request))
    return Response(status_code=204)


@router.get("/whoami")
async def whoami(c: CtxDep, ip: ClientIp, p: Caller) -> WhoamiOut:
    async with c.db.read() as s:
        org = await s.get(Organization, p.user.org_id)
    return WhoamiOut(
        user=user_view(p.user),
        organization=OrganizationOut(id=org.id, name=org.name) if org else None,
        scopes=sorted(p.scopes),
        credential=p.credential,
        api_key=p.api_key.name if p.api_key else None,
        ip=ip,
    )
