"""The one root of EntryGuard's errors, split by what went wrong (h11's model: one root,
the class says whose fault it was, the error carries the code to send).

::

    EntryGuardError        .code (a stable snake_case word) and .message (plain text)
    ├── Invalid            bad input: a malformed name, CIDR, duration, config key
    ├── NotFound           the thing named does not exist
    ├── Conflict           the request clashes with the current state
    ├── Unauthorized       no credential, or one that is wrong, expired or revoked
    ├── Forbidden          a valid credential that may not do this
    ├── Gone               what was asked for existed but has been dropped
    ├── TooLarge           the request is bigger than allowed
    └── Unavailable        a dependency (a socket, the schema, the server) is not usable

Messages are plain sentences, for any front end: they never name a CLI command. The
``eg`` CLI adds its own hints by ``code`` (``cli/hints.py``); the API maps the class to
an HTTP status (``control/app.py``). This module imports nothing, so every layer,
down to ``net/``, may use it.
"""

from __future__ import annotations


class EntryGuardError(Exception):
    """Root of every EntryGuard error: a ``code`` for programs, a ``message`` for people."""

    code = "error"

    def __init__(self, message: str, *, code: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        if code:
            self.code = code


class Invalid(EntryGuardError):
    """The input is wrong (the caller's fault): fix it and try again."""

    code = "bad_request"


class NotFound(EntryGuardError):
    code = "not_found"


class Conflict(EntryGuardError):
    code = "conflict"


class Unauthorized(EntryGuardError):
    code = "unauthorized"


class Forbidden(EntryGuardError):
    code = "forbidden"


class Gone(EntryGuardError):
    code = "gone"


class TooLarge(EntryGuardError):
    code = "too_large"


class Unavailable(EntryGuardError):
    code = "unavailable"
