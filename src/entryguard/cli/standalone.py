"""How ``eg`` runs: the shared app style and exit codes of :mod:`entryguard.console`,
plus ``eg``'s own :class:`~entryguard.cli.errors.CliError` shown as one line with its
exit code (README "Exit codes")."""

from __future__ import annotations

from collections.abc import Callable

import typer

from entryguard.cli.errors import CliError
from entryguard.console import (
    EXIT_FAILED,
    EXIT_INTERRUPTED,
    EXIT_OK,
    EXIT_USAGE,
    build_command,
    click_core,
    click_errors,
    new_app,
    print_error,
    walk,
)
from entryguard.console import run_app as _run_console_app

__all__ = [
    "EXIT_FAILED",
    "EXIT_INTERRUPTED",
    "EXIT_OK",
    "EXIT_USAGE",
    "build_command",
    "click_core",
    "click_errors",
    "new_app",
    "run_app",
    "walk",
]


def run_app(
    app: typer.Typer,
    prog_name: str,
    args: list[str],
    prepare: Callable[[click_core.Command], None] | None = None,
) -> int:
    """:func:`entryguard.console.run_app`, and a :class:`CliError` becomes its one line
    on stderr and its exit code."""
    try:
        return _run_console_app(app, prog_name, args, prepare)
    except CliError as exc:
        print_error(exc.message)
        return exc.exit_code
