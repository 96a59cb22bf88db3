"""The one exception ``eg`` commands raise: a message for a person and an exit code."""

from __future__ import annotations


class CliError(Exception):
    """An error shown to the user as one line on stderr (never a traceback)."""

    def __init__(self, message: str, exit_code: int = 1, *, transient: bool = False) -> None:
        super().__init__(message)
        self.message = message
        self.exit_code = exit_code
        self.transient = transient  # the server was unreachable or failed: worth retrying


class UsageError(CliError):
    """The command line itself is wrong (exit 2, as Typer does for usage errors)."""

    def __init__(self, message: str) -> None:
        super().__init__(message, exit_code=2)
