"""Input rules shared by the API and the dashboard."""

from __future__ import annotations

import re
import unicodedata

from entryguard.errors import Invalid
from entryguard.net import CidrError, parse_cidr

_EMAIL = re.compile(r"^[^@\s]{1,64}@[^@\s]{1,190}$")


def check_name(value: str, what: str = "name") -> str:
    """1–64 characters, Unicode allowed, no control or separator characters at the ends."""
    if not isinstance(value, str) or not value.strip():
        raise Invalid(f"{what} must not be empty", code="invalid_name")
    if value != value.strip():
        raise Invalid(f"{what} must not start or end with spaces", code="invalid_name")
    if len(value) > 64:
        raise Invalid(f"{what} is longer than 64 characters", code="invalid_name")
    if any(unicodedata.category(c) in ("Cc", "Cf", "Zl", "Zp") for c in value):
        raise Invalid(f"{what} contains control characters", code="invalid_name")
    if "/" in value:
        raise Invalid(f"{what} must not contain '/'", code="invalid_name")
    return value


def check_email(value: str) -> str:
    value = value.strip().lower() if isinstance(value, str) else ""
    if not _EMAIL.match(value):
        raise Invalid(f"invalid email address {value!r}", code="invalid_email")
    return value


def check_cidr(value: str, allow_any: bool = False) -> str:
    try:
        return str(parse_cidr(value, allow_any=allow_any))
    except CidrError as exc:
        raise Invalid(str(exc), code="invalid_cidr") from exc


def check_text(value: str | None, what: str, limit: int = 256) -> str:
    value = value or ""
    if len(value) > limit:
        raise Invalid(f"{what} is longer than {limit} characters", code="too_long")
    if any(unicodedata.category(c) == "Cc" and c not in "\t" for c in value):
        raise Invalid(f"{what} contains control characters", code="invalid_text")
    return value
