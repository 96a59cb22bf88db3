"""Grants: the one model behind sessions, static rules and guest access.

Each function here runs inside a serialised write transaction and keeps three things
in step with the ``grants`` table: the change log (edges), and for script resources
the agent's command queue. A script's ``apply``/``revoke`` is only queued when the
CIDR's coverage of the resource really changes: two users behind one NAT address hold
two grants for the same /32, and the first one's stop must not revoke the second's access.
"""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import func, select
from sqlalchemy.ext.asyncio import AsyncSession

from entryguard.control.db.models import (
    AgentCommand,
    Grant,
    Resource,
    RoleResource,
    RoleUser,
    Session,
    User,
)
from entryguard.control.services.journal import iso, log_change
from entryguard.errors import Invalid
from entryguard.net import CidrError, parse_cidr
from entryguard.sync.changes import GrantAdd, GrantRemove


def grant_data(g: Grant) -> GrantAdd:
    return GrantAdd(g.id, g.resource_id, g.cidr, g.source, g.source_id, iso(g.expires_at))


async def _same_cidr_grants(s: AsyncSession, resource_id: int, cidr: str) -> int:
    return (
        await s.execute(
            select(func.count())
            .select_from(Grant)
            .where(Grant.resource_id == resource_id, Grant.cidr == cidr)
        )
    ).scalar_one()


def _queue(s: AsyncSession, resource: Resource, action: str, cidr: str, description: str) -> None:
    s.add(
        AgentCommand(
            agent_key_id=resource.agent_key_id,
            resource_id=resource.id,
            resource_name=resource.name,
            script_dir=resource.script_dir or "",
            action=action,
            cidr=cidr,
            description=description[:512],
        )
    )


async def add_grant(
    s: AsyncSession,
    resource: Resource,
    cidr: str,
    source: str,
    source_id: int,
    expires_at: datetime | None,
    description: str,
) -> Grant:
    # One canonical form from request to edge: a grant the edge could not parse is
    # refused here, before it reaches the change log.
    try:
        canonical = str(parse_cidr(cidr, allow_any=True))
    except CidrError as exc:
        raise Invalid(f"cannot grant {cidr!r}: {exc}", code="invalid_cidr") from exc
    if canonical != cidr:
        raise Invalid(f"grant CIDR {cidr!r} is not canonical ({canonical})", code="invalid_cidr")
    first = resource.type == "script" and await _same_cidr_grants(s, resource.id, cidr) == 0
    g = Grant(
        resource_id=resource.id,
        cidr=cidr,
        source=source,
        source_id=source_id,
        expires_at=expires_at,
    )
    s.add(g)
    await s.flush()
    await log_change(s, grant_data(g))
    if first:
        _queue(s, resource, "apply", cidr, description)
    return g


async def remove_grant(
    s: AsyncSession, g: Grant, resource: Resource, reason: str, description: str
) -> None:
    await s.delete(g)
    await s.flush()
    await log_change(s, GrantRemove(g.id, g.resource_id, reason))
    if resource.type == "script" and await _same_cidr_grants(s, resource.id, g.cidr) == 0:
        _queue(s, resource, "revoke", g.cidr, description)


async def remove_source_grants(
    s: AsyncSession, source: str, source_id: int, reason: str, description: str
) -> int:
    rows = (
        await s.execute(
            select(Grant, Resource)
            .join(Resource, Resource.id == Grant.resource_id)
            .where(Grant.source == source, Grant.source_id == source_id)
            .order_by(Grant.id)
        )
    ).all()
    for g, r in rows:
        await remove_grant(s, g, r, reason, description)
    return len(rows)


async def user_resources(s: AsyncSession, user_id: int) -> list[Resource]:
    return list(
        (
            await s.execute(
                select(Resource)
                .join(RoleResource, RoleResource.resource_id == Resource.id)
                .join(RoleUser, RoleUser.role_id == RoleResource.role_id)
                .where(RoleUser.user_id == user_id)
                .distinct()
                .order_by(Resource.name)
            )
        )
        .scalars()
        .all()
    )


def session_cidr(ip: str) -> str:
    return f"{ip}/128" if ":" in ip else f"{ip}/32"


def session_description(session: Session, user: User) -> str:
    return f"session {session.id} {user.email}"


async def move_session_grants(s: AsyncSession, old: Session, new: Session) -> int:
    """Hand the grants of ``old`` to ``new`` (same IP) with ``new``'s expiry.

    The grant ids stay, so the edge upserts them in place and nothing is cut; script
    resources get no command because the CIDR's coverage does not change.
    """
    grants = (
        (
            await s.execute(
                select(Grant)
                .where(Grant.source == "session", Grant.source_id == old.id)
                .order_by(Grant.id)
            )
        )
        .scalars()
        .all()
    )
    for g in grants:
        g.source_id = new.id
        g.expires_at = new.expires_at
        await s.flush()
        await log_change(s, grant_data(g))
    return len(grants)


async def reconcile_session(
    s: AsyncSession, session: Session, user: User, reason: str
) -> tuple[int, int]:
    """Make the session's grants match the user's current roles; returns (added, removed)."""
    wanted = {r.id: r for r in ([] if user.disabled_at else await user_resources(s, user.id))}
    have = (
        await s.execute(
            select(Grant, Resource)
            .join(Resource, Resource.id == Grant.resource_id)
            .where(Grant.source == "session", Grant.source_id == session.id)
        )
    ).all()
    desc = session_description(session, user)
    removed = 0
    held: set[int] = set()
    for g, r in have:
        if r.id in wanted:
            held.add(r.id)
        else:
            await remove_grant(s, g, r, reason, desc)
            removed += 1
    added = 0
    for rid, r in wanted.items():
        if rid not in held:
            await add_grant(
                s, r, session_cidr(session.ip), "session", session.id, session.expires_at, desc
            )
            added += 1
    return added, removed


async def reconcile_users(s: AsyncSession, user_ids: list[int], reason: str) -> None:
    """Re-evaluate the live sessions of these users after a role or resource change."""
    if not user_ids:
        return
    rows = (
        await s.execute(
            select(Session, User)
            .join(User, User.id == Session.user_id)
            .where(Session.ended_at.is_(None), Session.user_id.in_(user_ids))
        )
    ).all()
    for sess, user in rows:
        await reconcile_session(s, sess, user, reason)
