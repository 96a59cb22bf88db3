"""API keys (also the agents' credentials) and edge tokens."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import timedelta

from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession

from entryguard.control.auth.secrets import new_secret
from entryguard.control.db.clocked import clock_of
from entryguard.control.db.database import tx_changes
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


@dataclass(frozen=True)
class EdgeTokenView:
    name: str
    prefix: str
    created_at: str | None
    revoked_at: str | None


async def list_edge_tokens(s: AsyncSession) -> list[EdgeTokenView]:
    rows = (await s.execute(select(EdgeToken).order_by(EdgeToken.name, EdgeToken.id))).scalars()
    return [EdgeTokenView(t.name, t.prefix, iso(t.created_at), iso(t.revoked_at)) for t in rows]


async def revoke_edge_tokens(s: AsyncSession, name_or_prefix: str) -> list[EdgeTokenView]:
    """Revoke every live edge token with this name (or this prefix, ``ege_…``); returns
    them. Long-polls wake on the commit and re-check their token, so an edge using one
    loses its change stream within moments, on every replica."""
    rows = list(
        (
            await s.execute(
                select(EdgeToken).where(
                    EdgeToken.revoked_at.is_(None),
                    (EdgeToken.name == name_or_prefix) | (EdgeToken.prefix == name_or_prefix),
                )
            )
        ).scalars()
    )
    if not rows:
        raise NotFound(f"no live edge token named {name_or_prefix!r}", code="edge_token_not_found")
    now = clock_of(s).now()
    for row in rows:
        row.revoked_at = now
        await audit(s, "system", "edge_token.revoke", row.name, details={"prefix": row.prefix})
    await s.flush()
    tx_changes(s).wake = True  # NOTIFY: every replica's long-polls re-check their token
    return [EdgeTokenView(r.name, r.prefix, iso(r.created_at), iso(r.revoked_at)) for r in rows]
