"""Running a Typer app the way ``eg`` does, for ``entryguard`` and ``eg-agent`` too: a usage
error is one line on stderr (exit 2) instead of Click's boxed, multi-line message."""

from __future__ import annotations

import sys

import typer

from entryguard.cli.output import print_error, print_line

try:
    from typer._click import exceptions as click_errors
except ImportError:  # Typer before it vendored Click
    from click import exceptions as click_errors  # type: ignore[no-redef]


def run_app(app: typer.Typer, prog_name: str, args: list[str]) -> int:
    """Run ``app`` with ``args``; return the exit code."""
    command = typer.main.get_command(app)
    try:
        rc = command.main(args=args, prog_name=prog_name, standalone_mode=False)
    except click_errors.NoArgsIsHelpError as exc:
        # The message is the help text; with Rich help it was printed already and is empty.
        if exc.format_message():
            print_line(exc.format_message())
        return 0
    except click_errors.UsageError as exc:
        where = exc.ctx.command_path if exc.ctx is not None else prog_name
        print_error(f"{exc.format_message()} (see `{where} --help`)")
        return 2
    except click_errors.ClickException as exc:
        print_error(exc.format_message())
        return exc.exit_code
    except (typer.Abort, KeyboardInterrupt):
        sys.stderr.write("\n")
        return 130
    return rc if isinstance(rc, int) else 0
