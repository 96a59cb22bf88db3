"""Passwords (Argon2) and bearer secrets (random, shown once, stored as SHA-256).

API keys, login tokens and edge tokens are 32 random bytes: far too much entropy to
brute-force, so a fast hash is the right store (Argon2 per request would cost ~50 ms).
Each secret starts with a public prefix that is indexed, so lookup is one row and
the comparison of the hash is constant-time.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
from dataclasses import dataclass

from argon2 import PasswordHasher
from argon2.exceptions import InvalidHashError, VerificationError, VerifyMismatchError

_hasher = PasswordHasher()
# Compared against when the user does not exist, so a login takes as long either way.
_DUMMY_HASH = _hasher.hash("entryguard-dummy-password")

PREFIX_CHARS = 8
MIN_PASSWORD = 8


def hash_password(password: str) -> str:
    return _hasher.hash(password)


def verify_password(password_hash: str | None, password: str) -> bool:
    try:
        return _hasher.verify(password_hash or _DUMMY_HASH, password) and password_hash is not None
    except (VerifyMismatchError, VerificationError, InvalidHashError):
        return False


def generate_password() -> str:
    return secrets.token_urlsafe(15)


@dataclass(frozen=True)
class NewSecret:
    secret: str  # shown once
    prefix: str  # stored, indexed
    digest: str  # stored


def new_secret(kind: str) -> NewSecret:
    """``kind`` is the visible type marker: ``eg`` (API key), ``egs`` (login), ``ege`` (edge)."""
    public = secrets.token_urlsafe(6)[:PREFIX_CHARS].replace("_", "x").replace("-", "y")
    body = secrets.token_urlsafe(32)
    secret = f"{kind}_{public}_{body}"
    return NewSecret(secret=secret, prefix=f"{kind}_{public}", digest=digest(secret))


def digest(secret: str) -> str:
    return hashlib.sha256(secret.encode()).hexdigest()


def split_prefix(secret: str) -> str | None:
    """The indexed prefix of a presented secret, or None when it is not shaped like one."""
    parts = secret.split("_", 2)
    if len(parts) != 3 or not parts[0] or len(parts[1]) != PREFIX_CHARS or not parts[2]:
        return None
    return f"{parts[0]}_{parts[1]}"


def matches(secret: str, stored_digest: str) -> bool:
    return hmac.compare_digest(digest(secret), stored_digest)
