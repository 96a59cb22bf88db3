"""``eg``: the EntryGuard command line for users and admins.

Every failure leaves as one line on stderr and a non-zero exit code: :class:`CliError`
from the commands (1), usage errors from Typer/Click (2), Ctrl-C (130). No traceback
reaches the user.
"""

from __future__ import annotations

import sys

import typer

from entryguard import __version__
from entryguard.cli import commands_admin_access as access
from entryguard.cli import commands_admin_directory as directory
from entryguard.cli import commands_auth, commands_session
from entryguard.cli.commands_admin_commands import commands_app
from entryguard.cli.commands_audit import audit
from entryguard.cli.errors import CliError
from entryguard.cli.options import examples
from entryguard.cli.output import print_error, print_line

try:
    from typer._click import exceptions as click_errors
except ImportError:  # Typer before it vendored Click
    from click import exceptions as click_errors  # type: ignore[no-redef]

HELP = """EntryGuard: just-in-time access to private resources.

Log in, start a session, connect to your resources; the session ends by itself.

\b
  eg login --server http://127.0.0.1:8080
  eg session start --duration 2h
  eg resources

The server and the token can also come from EG_SERVER and EG_TOKEN (a login token or an API key).
"""

app = typer.Typer(
    help=HELP,
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
    rich_markup_mode=None,
    context_settings={"help_option_names": ["-h", "--help"]},
)
admin_app = typer.Typer(
    help="Admin commands (need an admin login or a key with the admin scope).",
    short_help="Admin commands: users, roles, keys, resources, rules, audit…",
    no_args_is_help=True,
)

app.command(
    epilog=examples(
        "eg login",
        "eg login --server https://eg.example.com --email me@example.com",
        "eg login --email me@example.com --password-stdin < pw.txt",
    )
)(commands_auth.login)
app.command(epilog=examples("eg logout"))(commands_auth.logout)
app.command(epilog=examples("eg whoami", "EG_TOKEN=eg_… eg whoami --json"))(commands_auth.whoami)
app.add_typer(commands_session.app, name="session")
app.command(epilog=examples("eg resources", "eg resources --json"))(commands_session.resources)
app.add_typer(admin_app, name="admin")

admin_app.add_typer(directory.user_app, name="user")
admin_app.add_typer(directory.role_app, name="role")
admin_app.add_typer(directory.apikey_app, name="apikey")
admin_app.add_typer(access.resource_app, name="resource")
admin_app.add_typer(access.rule_app, name="rule")
admin_app.add_typer(access.guest_app, name="guest")
admin_app.add_typer(access.session_app, name="session")
admin_app.command(epilog=examples("eg admin agents"))(access.agents)
admin_app.add_typer(commands_app, name="commands")
admin_app.command(
    epilog=examples(
        "eg admin audit --since 1h", "eg admin audit --follow", "eg admin audit --verify"
    )
)(audit)


def _version(value: bool) -> None:
    if value:
        print_line(f"eg {__version__}")
        raise typer.Exit()


@app.callback()
def _root(
    version: bool = typer.Option(
        False, "--version", callback=_version, is_eager=True, help="Print the version."
    ),
) -> None:
    pass


def _usage_line(exc: click_errors.UsageError) -> str:
    where = exc.ctx.command_path if exc.ctx is not None else "eg"
    return f"{exc.format_message()} (see `{where} --help`)"


def run(args: list[str]) -> int:
    """Run ``eg`` with ``args``; return the exit code."""
    command = typer.main.get_command(app)
    try:
        rc = command.main(args=args, prog_name="eg", standalone_mode=False)
    except click_errors.NoArgsIsHelpError as exc:
        print_line(exc.ctx.get_help())
        return 0
    except click_errors.UsageError as exc:
        print_error(_usage_line(exc))
        return 2
    except click_errors.ClickException as exc:
        print_error(exc.format_message())
        return exc.exit_code
    except CliError as exc:
        print_error(exc.message)
        return exc.exit_code
    except typer.Abort:
        sys.stderr.write("\n")
        return 130
    except KeyboardInterrupt:
        sys.stderr.write("\n")
        return 130
    return rc if isinstance(rc, int) else 0


def main() -> None:
    sys.exit(run(sys.argv[1:]))


if __name__ == "__main__":
    main()
