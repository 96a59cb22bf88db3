"""Sessions: start (replacing the active one), stop, expire."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import timedelta
from typing import Any

from sqlalchemy import func, select
from sqlalchemy.ext.asyncio import AsyncSession

from entryguard.control.db.clocked import clock_of
from entryguard.control.db.models import Resource, Role, RoleUser, Session, User
from entryguard.control.services.grants import (
    move_session_grants,
    reconcile_session,
    remove_source_grants,
    session_description,
    user_resources,
)
from entryguard.control.services.journal import audit
from entryguard.control.services.views import SessionView, session_view
from entryguard.control.settings import Settings
from entryguard.errors import NotFound


@dataclass(frozen=True)
class SessionStart:
    """A session started (or the active one replaced)."""

    session: Session
    resources: list[Resource]
    """What the user's roles give them now: the new session's grants."""
    capped: bool
    """The request was longer than the user's roles allow."""
    requested_seconds: int
    max_duration_seconds: int


@dataclass(frozen=True)
class SessionRevoke:
    session: Session
    user: User
    revoked: bool
    """Whether this call ended it (False: it had already ended)."""


async def max_duration_for(s: AsyncSession, user: User, settings: Settings) -> int:
    """The most restrictive maximum of the user's roles (as Teleport's max_session_ttl)."""
    value = (
        await s.execute(
            select(func.min(Role.max_duration_seconds))
            .join(RoleUser, RoleUser.role_id == Role.id)
            .where(RoleUser.user_id == user.id)
        )
    ).scalar_one_or_none()
    return int(value) if value else settings.default_max_duration_seconds


async def active_session(s: AsyncSession, user_id: int) -> Session | None:
    return (
        await s.execute(
            select(Session).where(Session.user_id == user_id, Session.ended_at.is_(None))
        )
    ).scalar_one_or_none()


async def end_session(
    s: AsyncSession, sess: Session, user: User, reason: str, actor: str, ip: str | None = None
) -> None:
    sess.ended_at = clock_of(s).now()
    sess.end_reason = reason
    await s.flush()
    n = await remove_source_grants(s, "session", sess.id, reason, session_description(sess, user))
    action = "session.expire" if reason == "expired" else "session.stop"
    await audit(
        s,
        actor,
        action,
        f"session {sess.id}",
        details={"user": user.email, "ip": sess.ip, "reason": reason, "grants_removed": n},
        ip=ip,
        org_id=user.org_id,
    )


async def start_session(
    s: AsyncSession, user: User, ip: str, requested_seconds: int, settings: Settings
) -> SessionStart:
    """Start a session, or replace the active one as a diff (one transaction).

    Grants whose (resource, CIDR) stay the same move to the new session with its new
    expiry: no cut at the edge, no ``revoke``/``apply`` for script resources. Grants the
    user's roles no longer give, and every grant of the old IP when the IP changed, go.
    """
    cap = await max_duration_for(s, user, settings)
    seconds = min(requested_seconds, cap)
    old = await active_session(s, user.id)
    now = clock_of(s).now()
    if old is not None:
        # Ended before the new row exists: one active session per user is a unique index.
        old.ended_at = now
        old.end_reason = "replaced"
        await s.flush()
    sess = Session(
        user_id=user.id, ip=ip, started_at=now, expires_at=now + timedelta(seconds=seconds)
    )
    s.add(sess)
    await s.flush()
    moved = 0
    if old is not None:
        moved = await _hand_over(s, old, sess, user, ip)
    added, removed = await reconcile_session(s, sess, user, "session_started")
    details: dict[str, Any] = {
        "ip": ip,
        "seconds": seconds,
        "requested_seconds": requested_seconds,
        "capped": seconds < requested_seconds,
        "grants_added": added,
    }
    if old is not None:
        details.update(
            replaces=old.id, previous_ip=old.ip, grants_moved=moved, grants_removed=removed
        )
    await audit(
        s,
        user.email,
        "session.start",
        f"session {sess.id}",
        details=details,
        ip=ip,
        org_id=user.org_id,
    )
    return SessionStart(
        session=sess,
        resources=await user_resources(s, user.id),
        capped=seconds < requested_seconds,
        requested_seconds=requested_seconds,
        max_duration_seconds=cap,
    )


async def _hand_over(s: AsyncSession, old: Session, new: Session, user: User, ip: str) -> int:
    """``old`` (already ended as replaced) hands its grants to ``new``; returns how many
    moved."""
    if old.ip == new.ip:
        moved = await move_session_grants(s, old, new)
        removed = 0
    else:
        # Another IP: the old one loses its grants (and, at the edge, its connections).
        moved = 0
        removed = await remove_source_grants(
            s, "session", old.id, "session_replaced", session_description(old, user)
        )
    await audit(
        s,
        user.email,
        "session.stop",
        f"session {old.id}",
        details={
            "user": user.email,
            "ip": old.ip,
            "reason": "replaced",
            "replaced_by": new.id,
            "new_ip": new.ip,
            "grants_moved": moved,
            "grants_removed": removed,
        },
        ip=ip,
        org_id=user.org_id,
    )
    return moved


async def stop_session(s: AsyncSession, user: User, ip: str | None) -> Session:
    sess = await active_session(s, user.id)
    if sess is None:
        raise NotFound(
            "you have no active session",
            code="no_active_session",
        )
    await end_session(s, sess, user, "stopped", user.email, ip)
    return sess


async def revoke_session(s: AsyncSession, session_id: int, actor: str) -> SessionRevoke:
    """An admin ends a user's session (a no-op when it has already ended)."""
    row = (
        await s.execute(
            select(Session, User)
            .join(User, User.id == Session.user_id)
            .where(Session.id == session_id)
        )
    ).first()
    if row is None:
        raise NotFound(f"no session {session_id}", code="session_not_found")
    sess, user = row
    was_active = sess.ended_at is None
    if was_active:
        await end_session(s, sess, user, "revoked", actor)
    return SessionRevoke(sess, user, was_active)


async def list_sessions(s: AsyncSession, *, active: bool, limit: int = 500) -> list[SessionView]:
    """Newest first; ``active``: only those still running."""
    q = (
        select(Session, User.email)
        .join(User, User.id == Session.user_id)
        .order_by(Session.id.desc())
        .limit(limit)
    )
    if active:
        q = q.where(Session.ended_at.is_(None), Session.expires_at > clock_of(s).now())
    return [session_view(x, email, clock_of(s).now()) for x, email in (await s.execute(q)).all()]


async def session_history(s: AsyncSession, user: User, limit: int = 100) -> list[SessionView]:
    """The user's own sessions, newest first."""
    rows = (
        await s.execute(
            select(Session)
            .where(Session.user_id == user.id)
            .order_by(Session.id.desc())
            .limit(limit)
        )
    ).scalars()
    return [session_view(x, user.email, clock_of(s).now()) for x in rows]


async def due_sessions(
    s: AsyncSession, limit: int = 200, *, lock: bool = False
) -> list[tuple[Session, User]]:
    q = (
        select(Session, User)
        .join(User, User.id == Session.user_id)
        .where(Session.ended_at.is_(None), Session.expires_at <= clock_of(s).now())
        .order_by(Session.expires_at)
        .limit(limit)
    )
    if lock:
        # Several replicas may run the expiry job; each session is taken by one.
        q = q.with_for_update(skip_locked=True, of=Session)
    return [(a, b) for a, b in (await s.execute(q)).all()]


async def any_due(s: AsyncSession) -> bool:
    return (
        await s.execute(
            select(Session.id)
            .where(Session.ended_at.is_(None), Session.expires_at <= clock_of(s).now())
            .limit(1)
        )
    ).first() is not None


async def end_user_sessions(s: AsyncSession, user: User, reason: str, actor: str) -> None:
    sess = await active_session(s, user.id)
    if sess is not None:
        await end_session(s, sess, user, reason, actor)
