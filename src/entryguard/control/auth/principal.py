"""Who is calling: resolve a bearer secret to a principal with scopes."""

from __future__ import annotations

from dataclasses import dataclass

from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession

from entryguard.control.auth.secrets import matches, split_prefix
from entryguard.control.db.clocked import clock_of
from entryguard.control.db.models import ApiKey, LoginToken, User
from entryguard.errors import Forbidden, Unauthorized


@dataclass
class Principal:
    user: User
    scopes: frozenset[str]
    credential: str  # "login" | "api_key" | "cookie"
    api_key: ApiKey | None = None
    login_token: LoginToken | None = None

    @property
    def actor(self) -> str:
        if self.api_key is not None:
            return f"{self.user.email} (key {self.api_key.name})"
        return self.user.email

    def require(self, scope: str) -> None:
        if scope in self.scopes:
            return
        if scope == "admin":
            raise Forbidden(
                "this needs an admin: ask an EntryGuard admin, or use a key with the admin scope",
                code="admin_required",
            )
        raise Forbidden(f"this credential lacks the {scope!r} scope", code="missing_scope")


def login_scopes(user: User) -> frozenset[str]:
    return frozenset({"sessions", "admin"} if user.is_admin else {"sessions"})


async def authenticate(s: AsyncSession, secret: str) -> Principal:
    bad = Unauthorized("not logged in or the login expired", code="unauthorized")
    prefix = split_prefix(secret)
    if prefix is None:
        raise bad
    now = clock_of(s).now()
    if prefix.startswith("egs_"):
        tok = (
            await s.execute(select(LoginToken).where(LoginToken.prefix == prefix))
        ).scalar_one_or_none()
        if (
            tok is None
            or not matches(secret, tok.token_hash)
            or tok.revoked_at
            or tok.expires_at <= now
        ):
            raise bad
        user = await s.get(User, tok.user_id)
        if user is None or user.disabled_at is not None:
            raise bad
        return Principal(user, login_scopes(user), "login", login_token=tok)
    if prefix.startswith("eg_"):
        key = (await s.execute(select(ApiKey).where(ApiKey.prefix == prefix))).scalar_one_or_none()
        if key is None or not matches(secret, key.key_hash):
            raise Unauthorized("invalid API key", code="invalid_api_key")
        if key.revoked_at is not None:
            raise Unauthorized("this API key was revoked", code="invalid_api_key")
        if key.expires_at is not None and key.expires_at <= now:
            raise Unauthorized("this API key has expired", code="invalid_api_key")
        user = await s.get(User, key.user_id)
        if user is None or user.disabled_at is not None:
            raise Unauthorized("the owner of this API key is disabled", code="invalid_api_key")
        scopes = set(key.scope_list)
        if "admin" in scopes and not user.is_admin:
            scopes.discard("admin")  # a key never carries more than its owner has
        return Principal(user, frozenset(scopes), "api_key", api_key=key)
    raise bad
