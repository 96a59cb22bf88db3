"""Static IP rules (no expiry) and guest access (expires)."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import timedelta

from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession

from entryguard.control.db.clocked import clock_of
from entryguard.control.db.models import GuestAccess, Resource, StaticRule
from entryguard.control.services.grants import add_grant, remove_source_grants
from entryguard.control.services.journal import audit
from entryguard.control.services.resources import get_resource
from entryguard.control.services.validation import check_cidr, check_text
from entryguard.control.services.views import GuestView, RuleView, guest_view, rule_view
from entryguard.errors import NotFound


@dataclass(frozen=True)
class GuestRevoke:
    guest: GuestAccess
    resource: Resource
    revoked: bool
    """Whether this call ended it (False: it had already ended)."""


async def list_rules(s: AsyncSession, resource: str | None = None) -> list[RuleView]:
    """All static rules, or one resource's (404 when it does not exist)."""
    q = (
        select(StaticRule, Resource.name)
        .join(Resource, Resource.id == StaticRule.resource_id)
        .order_by(StaticRule.id)
    )
    if resource is not None:
        q = q.where(Resource.id == (await get_resource(s, resource)).id)
    return [rule_view(rule, name) for rule, name in (await s.execute(q)).all()]


async def list_guests(s: AsyncSession, *, active: bool = False) -> list[GuestView]:
    q = (
        select(GuestAccess, Resource.name)
        .join(Resource, Resource.id == GuestAccess.resource_id)
        .order_by(GuestAccess.id)
    )
    if active:
        q = q.where(GuestAccess.ended_at.is_(None), GuestAccess.expires_at > clock_of(s).now())
    return [guest_view(g, name, clock_of(s).now()) for g, name in (await s.execute(q)).all()]


async def add_rule(
    s: AsyncSession, r: Resource, cidr: str, description: str | None, allow_any: bool, actor: str
) -> StaticRule:
    cidr = check_cidr(cidr, allow_any)
    desc = check_text(description, "description")
    rule = StaticRule(resource_id=r.id, cidr=cidr, description=desc, created_by=actor)
    s.add(rule)
    await s.flush()
    await add_grant(s, r, cidr, "rule", rule.id, None, f"rule {rule.id} {desc}".strip())
    await audit(
        s,
        actor,
        "rule.add",
        r.name,
        details={"rule_id": rule.id, "cidr": cidr, "description": desc},
        org_id=r.org_id,
    )
    return rule


async def remove_rule(s: AsyncSession, rule_id: int, actor: str) -> tuple[StaticRule, Resource]:
    row = (
        await s.execute(
            select(StaticRule, Resource)
            .join(Resource, Resource.id == StaticRule.resource_id)
            .where(StaticRule.id == rule_id)
        )
    ).first()
    if row is None:
        raise NotFound(f"no static rule {rule_id}", code="rule_not_found")
    rule, r = row
    await remove_source_grants(
        s, "rule", rule.id, "rule_removed", f"rule {rule.id} {rule.description}".strip()
    )
    await audit(
        s,
        actor,
        "rule.remove",
        r.name,
        details={"rule_id": rule.id, "cidr": rule.cidr},
        org_id=r.org_id,
    )
    await s.delete(rule)
    await s.flush()
    return rule, r


async def grant_guest(
    s: AsyncSession,
    r: Resource,
    cidr: str,
    seconds: int,
    note: str | None,
    allow_any: bool,
    actor: str,
) -> GuestAccess:
    cidr = check_cidr(cidr, allow_any)
    note = check_text(note, "note")
    g = GuestAccess(
        resource_id=r.id,
        cidr=cidr,
        note=note,
        created_by=actor,
        expires_at=clock_of(s).now() + timedelta(seconds=seconds),
    )
    s.add(g)
    await s.flush()
    await add_grant(s, r, cidr, "guest", g.id, g.expires_at, f"guest {g.id} {note}".strip())
    await audit(
        s,
        actor,
        "guest.grant",
        r.name,
        details={"guest_id": g.id, "cidr": cidr, "seconds": seconds, "note": note},
        org_id=r.org_id,
    )
    return g


async def end_guest(s: AsyncSession, g: GuestAccess, r: Resource, reason: str, actor: str) -> None:
    g.ended_at = clock_of(s).now()
    g.end_reason = reason
    await remove_source_grants(s, "guest", g.id, reason, f"guest {g.id} {g.note}".strip())
    action = "guest.expire" if reason == "expired" else "guest.revoke"
    await audit(
        s, actor, action, r.name, details={"guest_id": g.id, "cidr": g.cidr}, org_id=r.org_id
    )


async def revoke_guest(s: AsyncSession, guest_id: int, actor: str) -> GuestRevoke:
    row = (
        await s.execute(
            select(GuestAccess, Resource)
            .join(Resource, Resource.id == GuestAccess.resource_id)
            .where(GuestAccess.id == guest_id)
        )
    ).first()
    if row is None:
        raise NotFound(f"no guest access {guest_id}", code="guest_not_found")
    g, r = row
    was_active = g.ended_at is None
    if was_active:
        await end_guest(s, g, r, "revoked", actor)
    return GuestRevoke(g, r, was_active)


async def due_guests(s: AsyncSession, *, lock: bool) -> list[tuple[GuestAccess, Resource]]:
    q = (
        select(GuestAccess, Resource)
        .join(Resource, Resource.id == GuestAccess.resource_id)
        .where(GuestAccess.ended_at.is_(None), GuestAccess.expires_at <= clock_of(s).now())
        .limit(200)
    )
    if lock:
        q = q.with_for_update(skip_locked=True, of=GuestAccess)
    return [(a, b) for a, b in (await s.execute(q)).all()]
