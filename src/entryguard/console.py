"""What ``entryguard``, ``eg`` and ``eg-agent`` share on a terminal: safe one-line
messages, JSON for scripts, one help style and one way to run (exit codes).

Everything a server or a config file sent is passed through :func:`clean` or
:func:`one_line` before it reaches a terminal, so a name cannot carry escape sequences
that rewrite the screen; and nothing is printed as Rich markup, so ``[brackets]`` in a
name are shown as they are.

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

import json
import os
import re
import sys
from collections.abc import Callable
from typing import Any, TextIO

import typer
import typer.core
from rich.console import Console
from rich.text import Text

try:
    from typer._click import core as click_core
    from typer._click import exceptions as click_errors
except ImportError:  # Typer before it vendored Click
    from click import core as click_core  # type: ignore[no-redef]
    from click import exceptions as click_errors  # type: ignore[no-redef]

__all__ = [
    "EXIT_FAILED",
    "EXIT_INTERRUPTED",
    "EXIT_OK",
    "EXIT_USAGE",
    "build_command",
    "clean",
    "click_core",
    "click_errors",
    "console_for",
    "new_app",
    "one_line",
    "print_error",
    "print_json",
    "print_json_line",
    "print_line",
    "print_ok",
    "print_warning",
    "run_app",
    "stdout",
    "walk",
]

EXIT_OK = 0
EXIT_FAILED = 1
EXIT_USAGE = 2
EXIT_INTERRUPTED = 130

HELP_OPTIONS = ["-h", "--help"]

_CONTROL = re.compile(r"[\x00-\x08\x0b-\x1f\x7f-\x9f\u2028\u2029]")
_NEWLINES = re.compile(r"\s*[\r\n]+\s*")


# --- printing ------------------------------------------------------------------------


def clean(value: object) -> str:
    """Text that is safe to print: no control characters, ``-`` for nothing."""
    if value is None or value == "":
        return "-"
    return _CONTROL.sub("?", str(value))


def one_line(message: str) -> str:
    return _CONTROL.sub("?", _NEWLINES.sub(" ", message.strip()))


def console_for(stream: TextIO) -> Console:
    # Piped output keeps whole lines: Rich would otherwise wrap at 80 columns.
    wide = not stream.isatty() and not os.environ.get("COLUMNS")
    return Console(
        file=stream,
        highlight=False,
        soft_wrap=True,
        width=240 if wide else None,
        emoji=False,
        markup=False,
    )


def stdout() -> Console:
    return console_for(sys.stdout)


def print_line(text: str | Text = "") -> None:
    stdout().print(text)


def print_ok(message: str) -> None:
    """``✓ message``, the check in green on a terminal."""
    stdout().print(Text.assemble(("✓", "green"), " ", message))


def print_warning(message: str) -> None:
    sys.stdout.flush()  # keep the order of stdout and stderr when both go to one place
    console_for(sys.stderr).print(Text.assemble(("warning:", "yellow"), " ", one_line(message)))


def print_error(message: str) -> None:
    sys.stdout.flush()
    console_for(sys.stderr).print(Text.assemble(("error:", "red"), " ", one_line(message)))


def print_json(data: Any) -> None:
    sys.stdout.write(json.dumps(data, indent=2, ensure_ascii=False) + "\n")
    sys.stdout.flush()


def print_json_line(data: Any) -> None:
    sys.stdout.write(json.dumps(data, ensure_ascii=False, separators=(",", ":")) + "\n")
    sys.stdout.flush()


# --- apps ----------------------------------------------------------------------------


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
    except (typer.Abort, KeyboardInterrupt):
        sys.stderr.write("\n")
        return EXIT_INTERRUPTED
    return rc if isinstance(rc, int) else EXIT_OK
