"""What ``entryguard``, ``eg`` and ``eg-agent`` share: one help style and one way to run.

Every Typer app of the three is made by :func:`new_app` (plain Click help, ``-h`` as
well as ``--help``, help when a group is called without a command), and every run goes
through :func:`run_app`, which holds the exit-code convention (README "Exit codes"):

- 0: success (and help);
- 1: refused or failed: the server said no, the server was unreachable, a check failed;
- 2: usage error: bad flags or arguments, caught by Click or by our own validation;
- 130: interrupted (Ctrl-C).

A usage error is one line on stderr instead of Click's boxed, multi-line message.
"""

from __future__ import annotations

import sys
from collections.abc import Callable
from typing import Any

import typer
import typer.core

from entryguard.cli.errors import CliError
from entryguard.cli.output import print_error, print_line

try:
    from typer._click import core as click_core
    from typer._click import exceptions as click_errors
except ImportError:  # Typer before it vendored Click
    from click import core as click_core  # type: ignore[no-redef]
    from click import exceptions as click_errors  # type: ignore[no-redef]

__all__ = ["click_core", "click_errors", "new_app", "run_app", "walk"]

EXIT_OK = 0
EXIT_FAILED = 1
EXIT_USAGE = 2
EXIT_INTERRUPTED = 130

HELP_OPTIONS = ["-h", "--help"]


def new_app(
    help: str,
    *,
    short_help: str | None = None,
    epilog: str | None = None,
    no_args_is_help: bool = True,
) -> typer.Typer:
    """A Typer app (or sub-app) in the style all three CLIs share. ``no_args_is_help=False``
    only for a group whose callback does something on its own (``eg admin commands``)."""
    extra: dict[str, Any] = {}
    if short_help is not None:
        extra["short_help"] = short_help
    if epilog is not None:
        extra["epilog"] = epilog
    return typer.Typer(
        help=help,
        no_args_is_help=no_args_is_help,
        pretty_exceptions_enable=False,
        add_completion=False,
        rich_markup_mode=None,
        context_settings={"help_option_names": HELP_OPTIONS, "max_content_width": 100},
        **extra,
    )


class _PlainArgument(typer.core.TyperArgument):
    """An argument with a metavar is listed as just that (``EMAIL``), as Click does and as
    Typer does for options, instead of ``EMAIL <str>``."""

    def display_type_rich(self, ctx: Any) -> str | None:
        return None


def walk(command: click_core.Command) -> list[click_core.Command]:
    """The command and every command below it."""
    found = [command]
    for sub in (getattr(command, "commands", None) or {}).values():
        found.extend(walk(sub))
    return found


def build_command(app: typer.Typer) -> click_core.Command:
    """The Click command tree of ``app``, its arguments shown plainly (Typer has no
    setting for it, so the arguments it built become :class:`_PlainArgument`)."""
    root = typer.main.get_command(app)
    for command in walk(root):
        for param in command.params:
            if isinstance(param, typer.core.TyperArgument) and param.metavar:
                param.__class__ = _PlainArgument
    return root


def run_app(
    app: typer.Typer,
    prog_name: str,
    args: list[str],
    prepare: Callable[[click_core.Command], None] | None = None,
) -> int:
    """Run ``app`` with ``args``; return the exit code (see the module's docstring).

    ``prepare`` may add to the command tree first (``eg`` adds ``--profile`` everywhere).
    """
    command = build_command(app)
    if prepare is not None:
        prepare(command)
    try:
        rc = command.main(args=args, prog_name=prog_name, standalone_mode=False)
    except click_errors.NoArgsIsHelpError as exc:
        print_line(exc.ctx.get_help())
        return EXIT_OK
    except click_errors.UsageError as exc:
        where = exc.ctx.command_path if exc.ctx is not None else prog_name
        print_error(f"{exc.format_message()} (see `{where} --help`)")
        return EXIT_USAGE
    except click_errors.ClickException as exc:
        print_error(exc.format_message())
        return exc.exit_code
    except CliError as exc:
        print_error(exc.message)
        return exc.exit_code
    except (typer.Abort, KeyboardInterrupt):
        sys.stderr.write("\n")
        return EXIT_INTERRUPTED
    return rc if isinstance(rc, int) else EXIT_OK
