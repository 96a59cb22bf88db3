"""Users, logins and the first-start bootstrap."""

from __future__ import annotations

from datetime import timedelta

from sqlalchemy import select, update
from sqlalchemy.ext.asyncio import AsyncSession

from entryguard.control.auth.secrets import (
    MIN_PASSWORD,
    generate_password,
    hash_password,
    new_secret,
    verify_password,
)
from entryguard.control.db.clocked import clock_of
from entryguard.control.db.models import LoginToken, Organization, User
from entryguard.control.services.journal import audit
from entryguard.control.services.sessions import end_user_sessions
from entryguard.control.services.validation import check_email
from entryguard.control.services.views import UserView, user_view
from entryguard.errors import Conflict, Invalid, NotFound


async def list_users(s: AsyncSession) -> list[UserView]:
    return [user_view(u) for u in (await s.execute(select(User).order_by(User.email))).scalars()]


async def get_user(s: AsyncSession, email: str) -> User:
    u = (
        await s.execute(select(User).where(User.email == email.strip().lower()))
    ).scalar_one_or_none()
    if u is None:
        raise NotFound(f"no user {email!r}", code="user_not_found")
    return u


async def create_user(
    s: AsyncSession, org_id: int, email: str, password: str | None, is_admin: bool, actor: str
) -> tuple[User, str | None]:
    email = check_email(email)
    generated = None
    if password is None:
        password = generated = generate_password()
    if len(password) < MIN_PASSWORD:
        raise Invalid(f"password must be at least {MIN_PASSWORD} characters", code="weak_password")
    if len(password) > 1024:
        raise Invalid("password is longer than 1024 characters", code="too_long")
    if (await s.execute(select(User.id).where(User.email == email))).first():
        raise Conflict(f"a user {email} already exists", code="user_exists")
    u = User(org_id=org_id, email=email, password_hash=hash_password(password), is_admin=is_admin)
    s.add(u)
    await s.flush()
    await audit(s, actor, "user.create", email, details={"is_admin": is_admin}, org_id=org_id)
    return u, generated


async def disable_user(s: AsyncSession, email: str, actor: str, *, by: User | None = None) -> User:
    """Disable a user: their session ends and their sign-ins are revoked.

    ``by``: the admin asking, who may not disable themselves (nobody could undo it
    when they are the only admin).
    """
    if by is not None and email.strip().lower() == by.email:
        raise Invalid("you cannot disable yourself", code="self_disable")
    u = await get_user(s, email)
    if u.disabled_at is not None:
        return u
    u.disabled_at = clock_of(s).now()
    await end_user_sessions(s, u, "user_disabled", actor)
    await s.execute(
        update(LoginToken)
        .where(LoginToken.user_id == u.id, LoginToken.revoked_at.is_(None))
        .values(revoked_at=clock_of(s).now())
    )
    await audit(s, actor, "user.disable", u.email, org_id=u.org_id)
    return u


async def login(
    s: AsyncSession, email: str, password: str, ip: str, ttl_seconds: int
) -> tuple[str, LoginToken, User] | None:
    """None for a failed login, which is audited: the caller commits, then refuses."""
    u = (
        await s.execute(select(User).where(User.email == email.strip().lower()))
    ).scalar_one_or_none()
    ok = verify_password(u.password_hash if u else None, password)
    if u is None or not ok or u.disabled_at is not None:
        await audit(
            s,
            email[:254],
            "auth.login_failed",
            email[:254],
            ip=ip,
            details={"reason": "disabled" if (u and ok) else "bad_credentials"},
        )
        return None
    sec = new_secret("egs")
    tok = LoginToken(
        user_id=u.id,
        prefix=sec.prefix,
        token_hash=sec.digest,
        expires_at=clock_of(s).now() + timedelta(seconds=ttl_seconds),
    )
    s.add(tok)
    await s.flush()
    await audit(s, u.email, "auth.login", u.email, ip=ip, org_id=u.org_id)
    return sec.secret, tok, u


async def logout(s: AsyncSession, token_id: int, user: User, actor: str, ip: str) -> None:
    """Revoke one login token (the caller's own), audited as ``auth.logout``."""
    tok = await s.get(LoginToken, token_id)
    if tok is not None and tok.revoked_at is None:
        tok.revoked_at = clock_of(s).now()
    await audit(s, actor, "auth.logout", user.email, ip=ip, org_id=user.org_id)


async def bootstrap(
    s: AsyncSession, email: str, password: str | None
) -> tuple[User, str | None] | None:
    """On first start: the organisation and its admin. Returns None when already set up."""
    if (await s.execute(select(Organization.id).limit(1))).first():
        return None
    org = Organization(name="default")
    s.add(org)
    await s.flush()
    await audit(s, "system", "org.create", org.name, org_id=org.id)
    return await create_user(s, org.id, email, password, True, "system")
