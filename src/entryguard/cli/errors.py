"""The one exception ``eg`` commands raise: a message for a person and an exit code."""

from __future__ import annotations

from entryguard.errors import EntryGuardError


class CliError(EntryGuardError):
    """An error shown to the user as one line on stderr (never a traceback)."""

    code = "cli_error"

    def __init__(
        self,
        message: str,
        exit_code: int = 1,
        *,
        transient: bool = False,
        code: str | None = None,
    ) -> None:
        super().__init__(message, code=code)  # code: the server's error code, if it sent one
        self.exit_code = exit_code
        self.transient = transient  # the server was unreachable or failed: worth retrying


class UsageError(CliError):
    """The command line itself is wrong (exit 2, as Typer does for usage errors)."""

    code = "usage"

    def __init__(self, message: str) -> None:
        super().__init__(message, exit_code=2)
