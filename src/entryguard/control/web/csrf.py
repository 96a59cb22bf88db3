"""CSRF tokens for the dashboard's forms.

Signed in, the token is an HMAC of the session secret (the ``egs_`` login token in the
HttpOnly cookie): one token per session, nothing stored, and useless without the cookie
a cross-site page can neither read nor compute. Before sign-in there is no session, so
the sign-in form uses a double-submit cookie (a random value in a cookie and in the
form) against login CSRF, where a third-party page signs the victim into its account.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets

FIELD = "csrf"
"""Name of the hidden form field."""
HEADER = "x-csrf-token"
"""Header that dashboard scripts send on non-GET calls to the REST API with the cookie."""
PRESESSION_COOKIE = "eg_signin_csrf"


def session_token(session_secret: str) -> str:
    return hmac.new(
        session_secret.encode(), b"entryguard-dashboard-csrf", hashlib.sha256
    ).hexdigest()


def new_presession_token() -> str:
    return secrets.token_urlsafe(24)


def valid(expected: str | None, given: str | None) -> bool:
    if not expected or not given:
        return False
    return hmac.compare_digest(expected.encode(), given.encode())
