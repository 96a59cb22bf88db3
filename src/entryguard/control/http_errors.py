"""How an :class:`~entryguard.errors.EntryGuardError` looks over HTTP: the one table of
statuses, and the ``{"error": {"code", "message"}}`` body.

The API's handler (``control/app.py``) and the dashboard's error pages both read it, so
a service error has the same status whichever front end met it.
"""

from __future__ import annotations

from typing import Any

from entryguard.errors import (
    Conflict,
    EntryGuardError,
    Forbidden,
    Gone,
    Invalid,
    NotFound,
    TooLarge,
    Unauthorized,
    Unavailable,
)

STATUS: dict[type[EntryGuardError], int] = {
    Invalid: 400,
    Unauthorized: 401,
    Forbidden: 403,
    NotFound: 404,
    Conflict: 409,
    Gone: 410,
    TooLarge: 413,
    Unavailable: 503,
}
"""The HTTP status of each kind of error; anything else under the root is a 500."""


def error_status(exc: EntryGuardError) -> int:
    """The status of the nearest class in ``exc``'s ancestry that has one."""
    for cls in type(exc).__mro__:
        if cls in STATUS:
            return STATUS[cls]
    return 500


def error_body(code: str, message: str) -> dict[str, Any]:
    return {"error": {"code": code, "message": message}}
