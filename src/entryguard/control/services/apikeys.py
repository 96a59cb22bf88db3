"""API keys (also the agents' credentials) and edge tokens."""

from __future__ import annotations

from datetime import timedelta

from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession

from entryguard.control.auth.secrets import new_secret
from entryguard.control.db.clocked import clock_of
from entryguard.control.db.models import ApiKey, EdgeToken, User
from entryguard.control.services.journal import audit, iso, log_change
from entryguard.control.services.validation import check_name
from entryguard.control.services.views import ApiKeyView, apikey_view
from entryguard.errors import Conflict, Invalid, NotFound
from entryguard.sync.changes import AgentRemove, AgentUpsert

SCOPES = ("agent:connect", "admin", "sessions")


def agent_data(k: ApiKey, name: str | None = None) -> AgentUpsert:
    return AgentUpsert(k.id, name or k.name, k.prefix, k.key_hash, iso(k.expires_at))


async def list_keys(s: AsyncSession) -> list[ApiKeyView]:
    return [
        apikey_view(k) for k in (await s.execute(select(ApiKey).order_by(ApiKey.name))).scalars()
    ]


async def get_key(s: AsyncSession, name: str) -> ApiKey:
    k = (await s.execute(select(ApiKey).where(ApiKey.name == name))).scalar_one_or_none()
    if k is None:
        raise NotFound(f"no API key {name!r}", code="apikey_not_found")
    return k


async def create_key(
    s: AsyncSession,
    owner: User,
    name: str,
    scopes: list[str],
    expires_seconds: int | None,
    actor: str,
) -> tuple[ApiKey, str]:
    check_name(name, "API key name")
    clean = sorted(set(scopes))
    if not clean:
        raise Invalid(f"give at least one scope: {', '.join(SCOPES)}", code="invalid_scope")
    bad = [sc for sc in clean if sc not in SCOPES]
    if bad:
        raise Invalid(
            f"unknown scope {bad[0]!r}: choose from {', '.join(SCOPES)}", code="invalid_scope"
        )
    if (await s.execute(select(ApiKey.id).where(ApiKey.name == name))).first():
        raise Conflict(f"an API key named {name!r} already exists", code="apikey_exists")
    sec = new_secret("eg")
    k = ApiKey(
        org_id=owner.org_id,
        user_id=owner.id,
        name=name,
        prefix=sec.prefix,
        key_hash=sec.digest,
        scopes=",".join(clean),
        expires_at=clock_of(s).now() + timedelta(seconds=expires_seconds)
        if expires_seconds
        else None,
    )
    s.add(k)
    await s.flush()
    if "agent:connect" in clean:
        await log_change(s, agent_data(k))
    await audit(
        s,
        actor,
        "apikey.create",
        name,
        details={"scopes": clean, "prefix": k.prefix},
        org_id=owner.org_id,
    )
    return k, sec.secret


async def revoke_key(s: AsyncSession, name: str, actor: str) -> ApiKey:
    k = await get_key(s, name)
    if k.revoked_at is None:
        k.revoked_at = clock_of(s).now()
        if "agent:connect" in k.scope_list:
            await log_change(s, AgentRemove(k.id))
        await audit(s, actor, "apikey.revoke", name, org_id=k.org_id)
    return k


async def create_edge_token(s: AsyncSession, name: str) -> str:
    check_name(name, "edge token name")
    sec = new_secret("ege")
    s.add(EdgeToken(name=name, prefix=sec.prefix, token_hash=sec.digest))
    await s.flush()
    await audit(s, "system", "edge_token.create", name, details={"prefix": sec.prefix})
    return sec.secret
